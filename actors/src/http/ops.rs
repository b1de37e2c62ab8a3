//! Operational routes of both nodes: liveness, readiness, metrics, the supervision tree.

use serde_json::json;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};

use super::intake::{HttpContext, Routed};
use super::problem::{Problem, json_response};
use crate::amqp::BrokerState;
use crate::faults::{FaultInjector, Injected};

/// Serves `path` when it is an operational route; `None` lets the node route it.
pub async fn route(context: &HttpContext, method: &Method, path: &str) -> Option<Routed> {
    if let (Some(faults), Some(actor)) = (&context.faults, path.strip_prefix("/faults/panic/")) {
        return Some(inject_panic(faults, method, actor));
    }
    let route: &'static str = match path {
        "/health" => "/health",
        "/health/ready" => "/health/ready",
        "/metrics" => "/metrics",
        "/actors" => "/actors",
        _ => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        return Some(Routed {
            route,
            response: Problem::method_not_allowed("GET").into_response(),
        });
    }
    let response = match route {
        "/health" => text(StatusCode::OK, "OK".into(), "text/plain; charset=utf-8"),
        "/health/ready" => readiness(context).await,
        "/metrics" => {
            update_pool_metrics(context);
            text(
                StatusCode::OK,
                context.metrics.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        _ => json_response(
            StatusCode::OK,
            &json!({ "node": context.node, "actors": context.tree.render() }),
        ),
    };
    Some(Routed { route, response })
}

/// `POST /faults/panic/{actor}`, only with `FAULT_INJECTION=on`.
fn inject_panic(faults: &FaultInjector, method: &Method, actor: &str) -> Routed {
    let route = "/faults/panic/{actor}";
    if method != Method::POST {
        return Routed {
            route,
            response: Problem::method_not_allowed("POST").into_response(),
        };
    }
    let response = match faults.panic(actor) {
        Injected::Panicked => {
            tracing::warn!(actor, "fault injection: making an actor panic");
            json_response(
                StatusCode::ACCEPTED,
                &json!({ "actor": actor, "injected": "panic" }),
            )
        }
        Injected::NotRunning => {
            Problem::conflict(format!("{actor} is not running (restarting?)")).into_response()
        }
        Injected::UnknownActor => Problem::not_found(format!(
            "no such actor; one of: {}",
            faults.actors().join(", ")
        ))
        .into_response(),
    };
    Routed { route, response }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response {
    let mut response = warp::http::Response::new(body).into_response();
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    response
}

fn update_pool_metrics(context: &HttpContext) {
    let size = i64::from(context.pool.size());
    let idle = context.pool.num_idle() as i64;
    context
        .metrics
        .db_pool
        .with_label_values(&["idle"])
        .set(idle);
    context
        .metrics
        .db_pool
        .with_label_values(&["in_use"])
        .set(size - idle);
}

/// Ready when the database answers and every actor runs. The broker is reported but not
/// required: with it down, the outbox keeps accepting work and drains later. The answer
/// holds the checks only, so a probe stays small and quick; the tree is at `/actors`.
async fn readiness(context: &HttpContext) -> Response {
    let database = crate::db::ping(&context.pool).await;
    let not_running = context.tree.not_running();
    let actors = not_running.is_empty() && context.tree.all_running();
    // The broker is "connected" only when every connection of the node is.
    let broker = context
        .brokers
        .iter()
        .map(|rx| *rx.borrow())
        .max_by_key(|state| match state {
            BrokerState::Connected => 0,
            BrokerState::Connecting => 1,
            BrokerState::Disconnected => 2,
        })
        .unwrap_or(BrokerState::Disconnected);
    let ready = database && actors;
    let mut checks = json!({
        "database": if database { "up" } else { "down" },
        "broker": broker.as_str(),
        "actors": if actors { "running" } else { "degraded" },
    });
    if !not_running.is_empty() {
        checks["not_running"] = json!(not_running);
    }
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}
