//! RFC 9457 problem details: the only shape of an error response, on every route.

use serde::Serialize;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

/// One invalid field of a request body or query, e.g. `items[0].quantity`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A problem+json error response. Kept small (static slug and title) because it travels
/// as the `Err` of every request-handling `Result`.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The last segment of the `type` URL, e.g. `validation`.
    pub slug: &'static str,
    pub status: u16,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub retry_after: Option<u32>,
    pub allow: Option<&'static str>,
}

/// The wire form of a [`Problem`] (RFC 9457 members).
#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        Self {
            slug,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }
    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed-json", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }
    pub fn method_not_allowed(allowed: &'static str) -> Self {
        let mut p = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("this route allows {allowed}"),
        );
        p.allow = Some(allowed);
        p
    }
    /// The client did not send its request (body) in time.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            format!("the request body must arrive within {limit:?}"),
        )
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the body must not exceed {limit} bytes"),
        )
    }
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the body must be sent with Content-Type: application/json",
        )
    }
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "the request does not satisfy the schema",
        );
        p.errors = errors;
        p
    }
    pub fn unprocessable(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, slug, detail)
    }
    /// The database (or another dependency) cannot serve right now.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut p = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail);
        p.retry_after = Some(1);
        p
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an unexpected error occurred; it has been logged",
        )
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_string(&ProblemBody {
            kind: format!("https://errors.orders-invoices.dev/{}", self.slug),
            title: status.canonical_reason().unwrap_or("Error"),
            status: self.status,
            detail: &self.detail,
            errors: &self.errors,
        })
        .unwrap_or_default();
        let mut response = warp::http::Response::new(body).into_response();
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(allow) = self.allow {
            headers.insert("allow", HeaderValue::from_static(allow));
        }
        if let Some(secs) = self.retry_after {
            headers.insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}

/// A JSON response with `status`.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    // Room for an order or an invoice at once: grown from empty (as `warp::reply::json`
    // does), a body of a few hundred bytes took seven reallocations.
    let mut body = Vec::with_capacity(1024);
    if let Err(e) = serde_json::to_writer(&mut body, value) {
        tracing::error!(error = %e, "a response could not be written as JSON");
        return Problem::internal().into_response();
    }
    let mut response = warp::http::Response::new(body).into_response();
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}
