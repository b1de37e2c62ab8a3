//! HTTP plumbing both nodes share: the intake actor that owns the warp server, the request
//! type, problem+json, and the operational routes (`/health`, `/health/ready`, `/metrics`,
//! `/actors`). Nodes implement [`Routes`] for their domain paths only.

pub mod intake;
pub mod ops;
pub mod problem;
pub mod request;

pub use intake::{HttpContext, HttpIntake, IntakeArgs, IntakeMsg, Routed, Routes};
pub use problem::{FieldError, Problem, json_response};
pub use request::{HttpRequest, MAX_BODY_BYTES, path_uuid};
