//! The HTTP intake actor.
//!
//! Owns: the HTTP server on the node's listening socket (connections in [`super::connections`],
//! routes as a warp filter). Takes: `ServerExited` from its own server task, which it turns
//! into a failure so that its supervisor restarts it (the socket stays bound across
//! restarts: the node keeps the listener, the actor serves a clone; only a shutdown closes
//! it). Requests are served concurrently; each becomes calls to the node's actors. A
//! semaphore bounds the requests in flight — taken only once the body is read, so slow
//! senders cannot hold the slots — past it, 503 rather than an unbounded queue.

use std::convert::Infallible;
use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Method};
use warp::reply::Response;

use super::connections::{self, ConnectionLimits};
use super::problem::Problem;
use super::request::{HttpRequest, MAX_BODY_BYTES, request_id};
use crate::amqp::BrokerState;
use crate::metrics::Metrics;
use crate::supervision::ActorTree;

/// A node's response, labelled with its route template for metrics (never the raw path,
/// which would explode label cardinality).
pub struct Routed {
    pub route: &'static str,
    pub response: Response,
}

pub type RouteFuture = Pin<Box<dyn Future<Output = Routed> + Send>>;

/// The node's domain routes.
pub trait Routes: Send + Sync + 'static {
    fn route(&self, request: HttpRequest) -> RouteFuture;
}

/// Everything the shared request path needs.
pub struct HttpContext {
    pub node: String,
    pub pool: PgPool,
    pub tree: ActorTree,
    pub metrics: Metrics,
    /// The state of each broker connection (publishing, consuming).
    pub brokers: Vec<watch::Receiver<BrokerState>>,
    pub in_flight: Semaphore,
    /// `HTTP_BODY_TIMEOUT`: the longest a client may take to send a request's body.
    pub body_timeout: Duration,
    pub routes: Arc<dyn Routes>,
    /// `FAULT_INJECTION=on` only: the actors `POST /faults/panic/{actor}` can crash.
    pub faults: Option<Arc<crate::faults::FaultInjector>>,
}

/// The node's listening socket, kept across intake restarts and closed on shutdown.
pub type SharedListener = Arc<Mutex<Option<TcpListener>>>;

#[derive(Clone)]
pub struct IntakeArgs {
    pub listener: SharedListener,
    pub context: Arc<HttpContext>,
    pub limits: ConnectionLimits,
    pub shutdown_grace: Duration,
}

pub enum IntakeMsg {
    ServerExited,
    /// Fault injection (`FAULT_INJECTION=on`): panic, as a bug would.
    Panic,
}

pub struct HttpIntake;

pub struct IntakeState {
    listener: SharedListener,
    stop: watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<()>>,
    grace: Duration,
    /// The server stopped by itself: a restart will serve the same socket again.
    failed: bool,
}

impl Actor for HttpIntake {
    type Msg = IntakeMsg;
    type State = IntakeState;
    type Arguments = IntakeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<IntakeMsg>,
        args: IntakeArgs,
    ) -> Result<IntakeState, ActorProcessingErr> {
        let std_listener = args
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .ok_or("the listening socket is closed")?
            .try_clone()?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let (stop, stopped) = watch::channel(false);
        let routes = warp::service(filter(args.context.clone()));
        let limits = args.limits;
        let server = tokio::spawn(async move {
            connections::serve(listener, routes, limits, stopped).await;
            let _ = myself.cast(IntakeMsg::ServerExited);
        });
        Ok(IntakeState {
            listener: args.listener,
            stop,
            server: Some(server),
            grace: args.shutdown_grace,
            failed: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<IntakeMsg>,
        state: &mut IntakeState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop accepting and close the socket now (unless a restart is to serve it again),
        // then let the requests already received finish within the grace period.
        if !state.failed {
            drop(
                state
                    .listener
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
        }
        state.stop.send_replace(true);
        if let Some(server) = state.server.take()
            && tokio::time::timeout(state.grace, server).await.is_err()
        {
            tracing::warn!("HTTP requests still in flight after the grace period");
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<IntakeMsg>,
        msg: IntakeMsg,
        state: &mut IntakeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IntakeMsg::ServerExited if !*state.stop.borrow() => {
                state.failed = true;
                Err("the HTTP server stopped unexpectedly".into())
            }
            IntakeMsg::ServerExited => Ok(()),
            IntakeMsg::Panic => {
                // The restart serves the same socket; this server lets its requests finish.
                state.failed = true;
                state.stop.send_replace(true);
                panic!("injected fault: HTTP intake panic")
            }
        }
    }
}

fn filter(
    context: Arc<HttpContext>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let query = warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: Option<String>,
                  headers: HeaderMap,
                  body| {
                let context = context.clone();
                async move {
                    serve(
                        context,
                        method,
                        path.as_str().to_owned(),
                        query,
                        headers,
                        body,
                    )
                    .await
                }
            },
        )
        .or(warp::any().map(|| Problem::bad_request("unreadable request").into_response()))
        .unify()
        .boxed()
        .recover(|_| async {
            Ok::<_, Infallible>(Problem::bad_request("unreadable request").into_response())
        })
        .unify()
}

async fn read_body<S, B>(headers: &HeaderMap, body: S) -> Result<Bytes, Problem>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(Problem::payload_too_large(MAX_BODY_BYTES));
    }
    let mut buf = BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| Problem::bad_request(format!("could not read the body: {e}")))?;
        if buf.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(Problem::payload_too_large(MAX_BODY_BYTES));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

async fn serve<S, B>(
    context: Arc<HttpContext>,
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let started = Instant::now();
    let request_id = request_id(&headers);
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
    );
    // Continue the caller's trace (Kong sends traceparent); before the span is entered.
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    crate::telemetry::set_remote_parent(&span, header("traceparent"), header("tracestate"));
    let metrics = context.metrics.clone();
    let method_label = method.as_str().to_owned();
    let routed = async {
        // Operational routes bypass the in-flight limit so probes answer under load.
        if let Some(routed) = super::ops::route(&context, &method, &path).await {
            return routed;
        }
        // The body first: a slow sender must not hold an in-flight slot while it trickles.
        let body = match tokio::time::timeout(context.body_timeout, read_body(&headers, body)).await
        {
            Ok(Ok(body)) => body,
            Ok(Err(problem)) => {
                return Routed {
                    route: "unmatched",
                    response: problem.into_response(),
                };
            }
            Err(_) => {
                return Routed {
                    route: "unmatched",
                    response: Problem::request_timeout(context.body_timeout).into_response(),
                };
            }
        };
        let Ok(_permit) = context.in_flight.try_acquire() else {
            return Routed {
                route: "overloaded",
                response: Problem::unavailable("too many requests in flight; retry shortly")
                    .into_response(),
            };
        };
        metrics.http_in_flight.inc();
        let request = HttpRequest {
            method,
            path,
            query,
            headers,
            body,
            request_id: request_id.clone(),
        };
        let routed = context.routes.route(request).await;
        metrics.http_in_flight.dec();
        routed
    }
    .instrument(span.clone())
    .await;
    let Routed {
        route,
        mut response,
    } = routed;
    let status = response.status();
    span.record("http.route", route);
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        tracing::warn!(parent: &span, status = status.as_u16(), "request failed");
    }
    metrics
        .http_requests
        .with_label_values(&[route, method_label.as_str(), status.as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[route, method_label.as_str()])
        .observe(started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
