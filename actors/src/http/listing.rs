//! Keyset pagination shared by both nodes' list endpoints: `limit`, an opaque `cursor`
//! (the position after the last item: its timestamp and id), newest first.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::problem::{FieldError, Problem};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// The position after which the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

/// The cursor format's version, the first two characters of every cursor.
const CURSOR_VERSION: &str = "c1";

impl Cursor {
    /// Opaque to clients: `c1` then hex of the position (microseconds since the epoch,
    /// 8 bytes big-endian, then the 16 bytes of the id). The version prefix lets a later
    /// format refuse — or still read — these.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&self.at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.id.as_bytes());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{CURSOR_VERSION}{hex}")
    }

    /// The position a cursor stands for; `None` for anything this API did not hand out —
    /// including a well-formed cursor whose time lies outside the years 1 to 9999, which
    /// PostgreSQL could not compare against (that used to be a 500).
    pub fn decode(s: &str) -> Option<Cursor> {
        let hex = s.strip_prefix(CURSOR_VERSION)?;
        if hex.len() != 48 {
            return None;
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        let micros = i64::from_be_bytes(bytes[..8].try_into().ok()?);
        let at = DateTime::from_timestamp_micros(micros)?;
        if !(1..=9999).contains(&at.year()) {
            return None;
        }
        Some(Cursor {
            at,
            id: Uuid::from_slice(&bytes[8..]).ok()?,
        })
    }
}

/// `{"items": [...], "next_cursor": "..." | null}`
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows (the extra one proves there is a next page).
    pub fn from_rows(mut rows: Vec<T>, limit: i64, position: impl Fn(&T) -> Cursor) -> Self {
        let more = rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        let next_cursor = if more {
            rows.last().map(|r| position(r).encode())
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

/// Parsed list parameters; the node reads its own filters from `filters`.
pub struct ListParams {
    pub limit: i64,
    pub cursor: Option<Cursor>,
    pub filters: HashMap<String, String>,
}

impl ListParams {
    /// The optional filter `name`, parsed by `parse`; a value it refuses is recorded in
    /// `errors` (for one 422 listing every bad parameter).
    pub fn filter<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Option<T>,
        expected: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<T> {
        let raw = self.filters.get(name)?;
        let parsed = parse(raw);
        if parsed.is_none() {
            errors.push(FieldError::new(name, expected));
        }
        parsed
    }

    /// `allowed` are the node's filter names; any other parameter is a 422 like any
    /// schema violation. A bad limit is 422, a bad cursor 400 (api.md).
    pub fn parse(mut query: HashMap<String, String>, allowed: &[&str]) -> Result<Self, Problem> {
        let mut errors = Vec::new();
        let limit = match query.remove("limit") {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    errors.push(FieldError::new(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    ));
                    DEFAULT_LIMIT
                }
            },
        };
        let cursor = query.remove("cursor");
        for key in query.keys() {
            if !allowed.contains(&key.as_str()) {
                errors.push(FieldError::new(key.clone(), "unknown query parameter"));
            }
        }
        if !errors.is_empty() {
            return Err(Problem::validation(errors));
        }
        let cursor =
            match cursor {
                None => None,
                Some(raw) => Some(Cursor::decode(&raw).ok_or_else(|| {
                    Problem::bad_request("cursor is not a cursor this API returned")
                })?),
            };
        Ok(ListParams {
            limit,
            cursor,
            filters: query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            at: DateTime::from_timestamp_micros(1_790_000_000_123_456).expect("ts"),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "zz", "abc", "6869", &"00".repeat(150)] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn limit_and_unknown_parameters_are_422_and_cursor_400() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(ListParams::parse(q(&[]), &[]).expect("defaults").limit, 50);
        assert_eq!(
            ListParams::parse(q(&[("limit", "0")]), &[])
                .err()
                .map(|p| p.status),
            Some(422)
        );
        assert_eq!(
            ListParams::parse(q(&[("limit", "201")]), &[])
                .err()
                .map(|p| p.status),
            Some(422)
        );
        assert_eq!(
            ListParams::parse(q(&[("color", "red")]), &["status"])
                .err()
                .map(|p| p.status),
            Some(422)
        );
        assert_eq!(
            ListParams::parse(q(&[("cursor", "nope")]), &[])
                .err()
                .map(|p| p.status),
            Some(400)
        );
    }

    #[test]
    fn crafted_cursors_are_refused_not_passed_to_the_database() {
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let out_of_range = |micros: i64| {
            let mut bytes = micros.to_be_bytes().to_vec();
            bytes.extend_from_slice(Uuid::nil().as_bytes());
            format!(
                "c1{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        };
        for crafted in [
            // The old format's hex of a timestamp PostgreSQL cannot store (was a 500).
            hex("-400000000000000000_00000000-0000-0000-0000-000000000000"),
            out_of_range(-400_000_000_000_000_000),
            out_of_range(i64::MAX),
            out_of_range(300_000_000_000_000_000),
            "c1".to_owned(),
            format!("c2{}", "0".repeat(48)),
            format!("c1{}", "z".repeat(48)),
            format!("c1{}", "0".repeat(50)),
        ] {
            assert_eq!(Cursor::decode(&crafted), None, "{crafted}");
        }
        let c = Cursor {
            at: DateTime::from_timestamp_micros(1_790_000_000_123_456).expect("ts"),
            id: Uuid::now_v7(),
        };
        assert!(c.encode().starts_with("c1"));
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
    }
}
