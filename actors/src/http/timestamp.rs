//! Timestamps in JSON answers, written as chrono writes them, for less.
//!
//! chrono's `Serialize` hands serde_json a `Display` value, which serde_json writes piece by
//! piece through its escaping adapter: ~2,300 instructions a timestamp, two per order
//! answered (~3% of a `POST /orders`). [`serialize`] formats the same RFC 3339 text
//! (`SecondsFormat::AutoSi`, `Z`: what chrono's `Serialize` calls) into a string first and
//! writes it whole. Use it with `#[serde(serialize_with = "actors::http::timestamp::serialize")]`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[derive(serde::Serialize)]
    struct Ours(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    #[test]
    fn writes_what_chrono_writes() {
        let second = Utc
            .with_ymd_and_hms(2026, 12, 1, 15, 4, 5)
            .single()
            .expect("valid");
        for nanos in [
            0,
            1_000_000,
            120_000_000,
            123_456_000,
            100_000,
            1,
            999_999_999,
        ] {
            let at = second + chrono::Duration::nanoseconds(nanos);
            assert_eq!(
                serde_json::to_string(&Ours(at)).expect("json"),
                serde_json::to_string(&at).expect("json"),
                "{nanos} ns"
            );
        }
    }
}
