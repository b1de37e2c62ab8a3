//! Orders routes → store worker calls → JSON or problem+json.

use std::sync::Arc;
use std::time::Duration;

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use actors::http::{
    HttpRequest, ListParams, Page, Problem, RouteFuture, Routed, Routes, call_worker,
    json_response, path_uuid,
};
use actors::supervision::WorkerPool;

use crate::domain::{self, NewOrder, OrderStatus};
use crate::order_body;
use crate::store::{CreateRequest, Created, ListFilter, StoreError};
use crate::worker::{SingleJob, StoreMsg};

#[derive(Clone)]
pub struct OrderRoutes {
    pub workers: WorkerPool<StoreMsg>,
    pub timeout: Duration,
}

impl Routes for OrderRoutes {
    fn route(&self, request: HttpRequest) -> RouteFuture {
        let this = self.clone();
        Box::pin(async move { this.dispatch(request).await })
    }
}

/// The one place where store errors become HTTP answers.
fn problem(e: StoreError) -> Problem {
    match e {
        StoreError::NotFound => Problem::not_found("no order with this id"),
        StoreError::PaidCannotCancel => {
            Problem::conflict("the order is paid and can no longer be canceled")
        }
        StoreError::KeyReused => Problem::unprocessable("idempotency-key-reused", e.to_string()),
        StoreError::KeyInFlight => Problem::conflict(e.to_string()),
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

impl OrderRoutes {
    async fn dispatch(&self, req: HttpRequest) -> Routed {
        let method = req.method.as_str();
        let (route, result) = match req.segments().as_slice() {
            ["orders"] => (
                "/orders",
                match method {
                    "POST" => self.create(&req).await,
                    "GET" | "HEAD" => self.list(&req).await,
                    _ => Err(Problem::method_not_allowed("GET, POST")),
                },
            ),
            ["orders", id] => (
                "/orders/{id}",
                match method {
                    "GET" | "HEAD" => self.get(id).await,
                    _ => Err(Problem::method_not_allowed("GET")),
                },
            ),
            ["orders", id, "cancel"] => (
                "/orders/{id}/cancel",
                match method {
                    "POST" => self.cancel(&req, id).await,
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

    async fn create(&self, req: &HttpRequest) -> Result<Response, Problem> {
        let key = match req.headers.get("idempotency-key") {
            None => None,
            Some(v) => match v.to_str() {
                Ok(k) if domain::is_idempotency_key(k) => Some(k.to_owned()),
                _ => {
                    return Err(Problem::bad_request(
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    ));
                }
            },
        };
        req.expect_json()?;
        let order = match order_body::read_valid(&req.body) {
            Some(order) => order,
            None => NewOrder::from_json(&req.json()?).map_err(Problem::validation)?,
        };
        let cause = req.causation();
        let created = self
            .ask(|reply| StoreMsg::Create {
                request: CreateRequest {
                    order,
                    key,
                    cause,
                    span: tracing::Span::current(),
                },
                reply,
            })
            .await?;
        let (mut response, id, replayed) = match created {
            Created::New(order) => (
                json_response(StatusCode::CREATED, &order),
                Some(order.id.to_string()),
                false,
            ),
            Created::Replayed { status, body } => {
                let id = body.get("id").and_then(|id| id.as_str()).map(str::to_owned);
                (
                    json_response(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED),
                        &body,
                    ),
                    id,
                    true,
                )
            }
        };
        let headers = response.headers_mut();
        if let Some(location) =
            id.and_then(|id| HeaderValue::from_str(&format!("/orders/{id}")).ok())
        {
            headers.insert("location", location);
        }
        if replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        Ok(response)
    }

    async fn get(&self, id: &str) -> Result<Response, Problem> {
        let id = path_uuid(id)?;
        let order = self
            .ask(|reply| StoreMsg::Single(SingleJob::Get { id, reply }))
            .await?;
        Ok(json_response(StatusCode::OK, &order))
    }

    async fn list(&self, req: &HttpRequest) -> Result<Response, Problem> {
        let params = ListParams::parse(req.query_params()?, &["customer_id", "status"])?;
        let mut errors = Vec::new();
        let customer_id = params.filter(
            "customer_id",
            |v| uuid::Uuid::parse_str(v).ok(),
            "must be a UUID",
            &mut errors,
        );
        let status = params.filter(
            "status",
            OrderStatus::parse,
            "must be one of pending, invoiced, paid, canceled",
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(Problem::validation(errors));
        }
        let filter = ListFilter {
            customer_id,
            status,
            after: params.cursor,
            limit: params.limit,
        };
        let rows = self
            .ask(|reply| StoreMsg::Single(SingleJob::List { filter, reply }))
            .await?;
        let page = Page::from_rows(rows, params.limit, |o| actors::http::Cursor {
            at: o.created_at,
            id: o.id,
        });
        Ok(json_response(StatusCode::OK, &page))
    }

    async fn cancel(&self, req: &HttpRequest, id: &str) -> Result<Response, Problem> {
        let id = path_uuid(id)?;
        let reason = if req.body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            domain::cancel_reason(&req.json()?).map_err(Problem::validation)?
        };
        let cause = req.causation();
        let order = self
            .ask(|reply| {
                StoreMsg::Single(SingleJob::Cancel {
                    id,
                    reason,
                    cause,
                    reply,
                })
            })
            .await?;
        Ok(json_response(StatusCode::OK, &order))
    }
}

pub fn routes(workers: WorkerPool<StoreMsg>, timeout: Duration) -> Arc<dyn Routes> {
    Arc::new(OrderRoutes { workers, timeout })
}
