//! The HTTP server's connections: accepting, limits that hold whatever a client sends, and
//! a graceful drain. warp gives the routes (as a service); this module owns the sockets,
//! because `warp::serve` offers no timeouts, no connection cap, panics on some request
//! lines, answers its own errors with empty bodies logged at ERROR, and keeps its listener
//! open while it drains.
//!
//! - At most `max_connections` connections are served; past it, new ones wait in the
//!   kernel's backlog instead of taking memory and tasks.
//! - A client has `header_timeout` to send a request's head, counted from when the server
//!   starts waiting for it: this closes slowloris clients, and idle keep-alive connections
//!   after the same time (hyper 1 uses one timer for both).
//! - A request target that is not a path (`CONNECT host:port`, `GET orders`), a URI over
//!   `HTTP_MAX_URI_BYTES`, more than `HTTP_MAX_HEADERS` headers or over
//!   `HTTP_MAX_HEADER_BYTES` of them is answered with problem+json here, before any route. Only what hyper itself cannot parse (a broken request line, a head
//!   over its buffer) still gets hyper's bare status; those are logged at DEBUG, as client
//!   mistakes are.
//! - On shutdown the listener closes at once (new connections are refused, not left in a
//!   backlog to be reset at exit), every request already received is answered, idle
//!   keep-alive connections are closed, and in-flight responses carry `Connection: close`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower_service::Service;
use warp::http::Request;

use super::problem::Problem;

/// hyper's own head buffer; our limits must fit well inside it for our answers to be sent.
const HYPER_HEAD_BUFFER: usize = 400 * 1024;

/// What a connection and a request head may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// `HTTP_MAX_CONNECTIONS`
    pub max_connections: usize,
    /// `HTTP_HEADER_TIMEOUT`
    pub header_timeout: Duration,
    /// `HTTP_MAX_URI_BYTES`: the longest request target (path and query).
    pub max_uri_bytes: usize,
    /// `HTTP_MAX_HEADERS`: the most request headers.
    pub max_headers: usize,
    /// `HTTP_MAX_HEADER_BYTES`: the most bytes of request headers (names and values).
    pub max_header_bytes: usize,
}

/// The node's routes as a service (what `warp::service` makes of its filter).
pub trait RouteService:
    Service<Request<Incoming>, Response = warp::reply::Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> RouteService for S where
    S: Service<
            Request<Incoming>,
            Response = warp::reply::Response,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// Why a request is refused before it reaches the routes, as problem+json.
pub fn refusal(request: &Request<Incoming>, limits: &ConnectionLimits) -> Option<Problem> {
    let (max_uri, max_headers, max_bytes) = (
        limits.max_uri_bytes,
        limits.max_headers,
        limits.max_header_bytes,
    );
    let uri = request.uri();
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or_default();
    if !target.starts_with('/') {
        return Some(Problem::bad_request(
            "the request target must be a path, e.g. /orders",
        ));
    }
    if target.len() > max_uri {
        return Some(Problem::new(
            warp::http::StatusCode::URI_TOO_LONG,
            "uri-too-long",
            format!("the request target must not exceed {max_uri} bytes"),
        ));
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > max_headers || header_bytes > max_bytes {
        return Some(Problem::new(
            warp::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format!("at most {max_headers} headers of at most {max_bytes} bytes in all"),
        ));
    }
    None
}

/// Serves connections from `listener` with `routes` until `shutdown` turns true, then
/// closes the listener and waits for the connections to drain.
pub async fn serve<S>(
    listener: TcpListener,
    routes: S,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    S: RouteService,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stopping(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let routes = routes.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, routes, limits, shutdown).await;
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    // Stop accepting at once; the node drops its own copy of the socket too.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<S>(
    stream: tokio::net::TcpStream,
    routes: S,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    S: RouteService,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let mut routes = routes.clone();
        async move {
            match refusal(&request, &limits) {
                Some(problem) => Ok::<_, Infallible>(problem.into_response()),
                None => routes.call(request).await,
            }
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper parses more than we accept, so that "too many" or "too large" gets our
        // problem+json rather than hyper's bare status.
        .max_headers(2 * limits.max_headers)
        .max_buf_size(HYPER_HEAD_BUFFER.max(2 * (limits.max_uri_bytes + limits.max_header_bytes)));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        _ = stopping(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = outcome {
        // Timeouts, resets and unparsable requests are the client's doing.
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Resolves once a shutdown was asked for (or the asking side is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
