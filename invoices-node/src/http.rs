//! Invoices routes → store worker calls → JSON or problem+json.

use std::sync::Arc;
use std::time::Duration;

use warp::http::StatusCode;
use warp::reply::Response;

use actors::http::{
    Cursor, HttpRequest, ListParams, Page, Problem, RouteFuture, Routed, Routes, call_worker,
    json_response, path_uuid,
};
use actors::supervision::WorkerPool;

use crate::domain::InvoiceStatus;
use crate::store::{ListFilter, StoreError};
use crate::worker::{SingleJob, StoreMsg};

#[derive(Clone)]
pub struct InvoiceRoutes {
    pub workers: WorkerPool<StoreMsg>,
    pub timeout: Duration,
}

impl Routes for InvoiceRoutes {
    fn route(&self, request: HttpRequest) -> RouteFuture {
        let this = self.clone();
        Box::pin(async move { this.dispatch(request).await })
    }
}

/// The one place where store errors become HTTP answers.
fn problem(e: StoreError) -> Problem {
    match e {
        StoreError::NotFound => Problem::not_found("no invoice with this id"),
        StoreError::VoidCannotBePaid => Problem::conflict("the invoice is void and cannot be paid"),
        StoreError::Unavailable(cause) => {
            tracing::warn!(error = %cause, "database unavailable");
            Problem::unavailable("the database is unavailable; retry shortly")
        }
        other => {
            tracing::error!(error = %other, "unexpected store error");
            Problem::internal()
        }
    }
}

impl InvoiceRoutes {
    async fn dispatch(&self, req: HttpRequest) -> Routed {
        let method = req.method.as_str();
        let (route, result) = match req.segments().as_slice() {
            ["invoices"] => (
                "/invoices",
                match method {
                    "GET" | "HEAD" => self.list(&req).await,
                    _ => Err(Problem::method_not_allowed("GET")),
                },
            ),
            ["invoices", id] => (
                "/invoices/{id}",
                match method {
                    "GET" | "HEAD" => self.get(id).await,
                    _ => Err(Problem::method_not_allowed("GET")),
                },
            ),
            ["invoices", id, "pay"] => (
                "/invoices/{id}/pay",
                match method {
                    "POST" => self.pay(&req, id).await,
                    _ => Err(Problem::method_not_allowed("POST")),
                },
            ),
            _ => ("unmatched", Err(Problem::not_found("no such route"))),
        };
        Routed {
            route,
            response: result.unwrap_or_else(Problem::into_response),
        }
    }

    async fn ask<T: Send + 'static>(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<Result<T, StoreError>>) -> StoreMsg,
    ) -> Result<T, Problem> {
        call_worker(&self.workers, self.timeout, build)
            .await?
            .map_err(problem)
    }

    async fn get(&self, id: &str) -> Result<Response, Problem> {
        let id = path_uuid(id)?;
        let invoice = self
            .ask(|reply| StoreMsg::Single(SingleJob::Get { id, reply }))
            .await?;
        Ok(json_response(StatusCode::OK, &invoice))
    }

    async fn list(&self, req: &HttpRequest) -> Result<Response, Problem> {
        let params = ListParams::parse(req.query_params()?, &["order_id", "status"])?;
        let mut errors = Vec::new();
        let order_id = params.filter(
            "order_id",
            |v| uuid::Uuid::parse_str(v).ok(),
            "must be a UUID",
            &mut errors,
        );
        let status = params.filter(
            "status",
            InvoiceStatus::parse,
            "must be one of issued, paid, void",
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(Problem::validation(errors));
        }
        let filter = ListFilter {
            order_id,
            status,
            after: params.cursor,
            limit: params.limit,
        };
        let rows = self
            .ask(|reply| StoreMsg::Single(SingleJob::List { filter, reply }))
            .await?;
        let page = Page::from_rows(rows, params.limit, |i| Cursor {
            at: i.issued_at,
            id: i.id,
        });
        Ok(json_response(StatusCode::OK, &page))
    }

    async fn pay(&self, req: &HttpRequest, id: &str) -> Result<Response, Problem> {
        let id = path_uuid(id)?;
        let cause = req.causation();
        let invoice = self
            .ask(|reply| StoreMsg::Single(SingleJob::Pay { id, cause, reply }))
            .await?;
        Ok(json_response(StatusCode::OK, &invoice))
    }
}

pub fn routes(workers: WorkerPool<StoreMsg>, timeout: Duration) -> Arc<dyn Routes> {
    Arc::new(InvoiceRoutes { workers, timeout })
}
