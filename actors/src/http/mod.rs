//! HTTP plumbing both nodes share: the intake actor that owns the warp server, the request
//! type, problem+json, and the operational routes (`/health`, `/health/ready`, `/metrics`,
//! `/actors`). Nodes implement [`Routes`] for their domain paths only.

pub mod calls;
pub mod connections;
pub mod intake;
pub mod listing;
pub mod ops;
pub mod problem;
pub mod request;

pub use calls::call_worker;
pub use connections::ConnectionLimits;
pub use intake::{
    HttpContext, HttpIntake, IntakeArgs, IntakeMsg, RouteFuture, Routed, Routes, SharedListener,
};
pub use listing::{Cursor, ListParams, Page};
pub use problem::{FieldError, Problem, json_response};
pub use request::{HttpRequest, MAX_BODY_BYTES, path_uuid};
