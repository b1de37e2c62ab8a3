//! An OTLP trace receiver inside the test, over OTLP/HTTP (protobuf) or OTLP/gRPC: nodes
//! export to it exactly as they would to Jaeger or a collector, and tests look at the
//! decoded spans.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use warp::Filter;

/// One received span with the service that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    /// 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: HashMap<String, String>,
    pub events: Vec<(String, HashMap<String, String>)>,
    /// The `authorization` header of the export request that carried it (a node sends
    /// what `OTEL_EXPORTER_OTLP_HEADERS` says).
    pub authorization: Option<String>,
}

pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;
pub const PRODUCER: i32 = 4;
pub const CONSUMER: i32 = 5;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

type Sink = Arc<Mutex<Vec<ReceivedSpan>>>;

/// Records the spans of one export request, with the `authorization` header it came with.
fn record(sink: &Sink, request: ExportTraceServiceRequest, authorization: Option<String>) {
    let mut sink = sink.lock().expect("receiver lock not poisoned");
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| attrs(&r.attributes).get("service.name").cloned())
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                sink.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name.clone(),
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attrs(&span.attributes),
                    events: span
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attrs(&e.attributes)))
                        .collect(),
                    authorization: authorization.clone(),
                });
            }
        }
    }
}

struct GrpcSink(Sink);

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        record(&self.0, request.into_inner(), authorization);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Listens on 127.0.0.1 until dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    /// The `OTEL_EXPORTER_OTLP_PROTOCOL` value a node must use to reach it.
    pub protocol: &'static str,
    spans: Sink,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Receiver {
    /// OTLP/gRPC (`TraceService/Export`).
    pub async fn start_grpc() -> Self {
        let spans: Sink = Arc::default();
        let port = crate::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcSink(spans.clone())))
            .serve_with_shutdown(addr, async move {
                let _ = rx.await;
            });
        tokio::spawn(server);
        crate::eventually(
            "the gRPC receiver listening",
            std::time::Duration::from_secs(5),
            || async { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
        )
        .await;
        Self {
            addr,
            protocol: "grpc",
            spans,
            _shutdown: tx,
        }
    }

    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`).
    pub async fn start() -> Self {
        let spans: Sink = Arc::default();
        let sink = spans.clone();
        let route = warp::post()
            .and(warp::path!("v1" / "traces"))
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .map(move |authorization: Option<String>, body: bytes::Bytes| {
                if let Ok(request) = ExportTraceServiceRequest::decode(body) {
                    record(&sink, request, authorization);
                }
                warp::http::Response::builder()
                    .header("content-type", "application/x-protobuf")
                    .body(ExportTraceServiceResponse::default().encode_to_vec())
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the OTLP receiver");
        let addr = listener.local_addr().expect("bound address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run(),
        );
        Self {
            addr,
            protocol: "http/protobuf",
            spans,
            _shutdown: tx,
        }
    }

    /// The endpoint to put in `OTEL_EXPORTER_OTLP_ENDPOINT` (with `protocol`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .expect("receiver lock not poisoned")
            .clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}
