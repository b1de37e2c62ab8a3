//! The request as node routes see it: method, path segments, query, headers, a bounded
//! body, the request id, and the trace context to carry into events.

use std::collections::HashMap;

use bytes::Bytes;
use uuid::Uuid;
use warp::http::{HeaderMap, Method};

use super::problem::{FieldError, Problem};
use crate::outbox::Causation;
use crate::percent::{PercentError, Plus};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub request_id: String,
}

impl HttpRequest {
    /// Path segments without empty ones: `/orders/1/cancel` → `["orders", "1", "cancel"]`.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// What to carry into events caused by this request: the current span's trace context
    /// (the request span, a child of the caller's `traceparent`) and the request id.
    pub fn causation(&self) -> Causation {
        let from_headers = Causation {
            traceparent: self.header("traceparent").map(str::to_owned),
            tracestate: self.header("tracestate").map(str::to_owned),
            request_id: None,
        };
        Causation::current(Some(self.request_id.clone()), &from_headers.sanitized()).sanitized()
    }

    /// 415 unless the body is declared JSON (`application/json` or `application/*+json`).
    pub fn expect_json(&self) -> Result<(), Problem> {
        let content_type = self.header("content-type").unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        let starts = |prefix: &str| {
            essence
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        };
        let ends = |suffix: &str| {
            essence
                .len()
                .checked_sub(suffix.len())
                .and_then(|at| essence.get(at..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
        };
        if essence.eq_ignore_ascii_case("application/json")
            || (starts("application/") && ends("+json"))
        {
            Ok(())
        } else {
            Err(Problem::unsupported_media_type())
        }
    }

    /// The body as JSON: 415 without `Content-Type: application/json`, 400 when malformed.
    pub fn json(&self) -> Result<serde_json::Value, Problem> {
        self.expect_json()?;
        match serde_json::from_slice::<StrictJson>(&self.body) {
            Ok(StrictJson(value)) => Ok(value),
            // Well-formed JSON that repeats a key: a schema violation, not a syntax error.
            Err(e) if e.is_data() => Err(Problem::validation(vec![FieldError::new(
                "",
                e.to_string(),
            )])),
            Err(e) => Err(Problem::malformed_json(format!(
                "the body is not valid JSON: {e}"
            ))),
        }
    }

    /// Query parameters, percent-decoded. A repeated parameter is a 400.
    pub fn query_params(&self) -> Result<HashMap<String, String>, Problem> {
        let mut params = HashMap::new();
        for pair in self
            .query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k)?, percent_decode(v)?);
            if params.insert(k.clone(), v).is_some() {
                return Err(Problem::bad_request(format!(
                    "query parameter {k} is repeated"
                )));
            }
        }
        Ok(params)
    }
}

/// A JSON value read strictly: an object that repeats a key is refused (serde_json's own
/// `Value` silently keeps the last one, so `"currency":"BRL","currency":"USD"` would pass).
struct StrictJson(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictJson(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears more than once"
                )));
            }
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

/// A path segment that must be a UUID: 400 otherwise.
pub fn path_uuid(segment: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(segment)
        .map_err(|_| Problem::bad_request(format!("{segment:?} is not a valid UUID")))
}

fn percent_decode(s: &str) -> Result<String, Problem> {
    crate::percent::decode(s, Plus::Space).map_err(|e| match e {
        PercentError::Malformed => Problem::bad_request("malformed percent-encoding in the query"),
        PercentError::NotUtf8 => Problem::bad_request("the query is not UTF-8"),
    })
}

/// The request id: the caller's `X-Request-Id`, else Kong's `Kong-Request-Id`, else a new
/// one. Only short visible-ASCII values are echoed, so a header cannot inject into logs.
pub fn request_id(headers: &HeaderMap) -> String {
    ["x-request-id", "kong-request-id"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .find(|v| crate::outbox::is_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_percent_decoded_and_repeats_are_refused() {
        let mut req = HttpRequest {
            method: Method::GET,
            path: "/orders".into(),
            query: Some("status=pending&cursor=a%2Fb+c".into()),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            request_id: "r".into(),
        };
        let q = req.query_params().expect("valid");
        assert_eq!(q["cursor"], "a/b c");
        req.query = Some("limit=1&limit=2".into());
        assert!(req.query_params().is_err());
        req.query = Some("limit=%zz".into());
        assert!(req.query_params().is_err());
    }

    #[test]
    fn a_repeated_json_key_is_a_422_and_broken_json_a_400() {
        let mut req = HttpRequest {
            method: Method::POST,
            path: "/orders".into(),
            query: None,
            headers: HeaderMap::new(),
            body: Bytes::from_static(
                br#"{"currency":"BRL","items":[{"a":1,"b":[true,null,1.5]}]}"#,
            ),
            request_id: "r".into(),
        };
        req.headers
            .insert("content-type", "application/json".parse().expect("header"));
        assert_eq!(req.json().expect("valid")["items"][0]["b"][2], 1.5);
        req.body = Bytes::from_static(br#"{"currency":"BRL","currency":"USD"}"#);
        let problem = req.json().expect_err("duplicate key");
        assert_eq!(problem.status, 422);
        assert!(
            problem.errors[0].message.contains("currency"),
            "{problem:?}"
        );
        req.body = Bytes::from_static(br#"{"items":[{"sku":"A","sku":"B"}]}"#);
        assert_eq!(req.json().expect_err("nested duplicate").status, 422);
        req.body = Bytes::from_static(br#"{"currency":"BRL""#);
        assert_eq!(req.json().expect_err("truncated").status, 400);
    }

    #[test]
    fn request_id_prefers_the_callers_then_kongs() {
        let mut h = HeaderMap::new();
        h.insert("kong-request-id", "kong-1".parse().expect("header"));
        assert_eq!(request_id(&h), "kong-1");
        h.insert("x-request-id", "mine".parse().expect("header"));
        assert_eq!(request_id(&h), "mine");
        h.insert("x-request-id", "has space".parse().expect("header"));
        assert_eq!(request_id(&h), "kong-1");
    }
}
