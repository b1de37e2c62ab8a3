//! Timestamps written as chrono writes them, for less.
//!
//! chrono's `Serialize` hands the serializer a `Display` value: serde_json writes it piece by
//! piece through its escaping adapter, rmp_serde formats it into a new string one character
//! at a time (~2,300 instructions a timestamp in either). [`serialize`] formats the same
//! RFC 3339 text (`SecondsFormat::AutoSi`, `Z`: what chrono's `Serialize` writes) into a
//! string at once and writes it whole. The events of this crate use it, and so do the
//! nodes' JSON answers: `#[serde(serialize_with = "contracts::timestamp::serialize")]`.

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

    fn instants() -> impl Iterator<Item = DateTime<Utc>> {
        let second = Utc
            .with_ymd_and_hms(2026, 12, 1, 15, 4, 5)
            .single()
            .expect("valid");
        [
            0,
            1_000_000,
            120_000_000,
            123_456_000,
            100_000,
            1,
            999_999_999,
        ]
        .into_iter()
        .map(move |nanos| second + chrono::Duration::nanoseconds(nanos))
    }

    #[test]
    fn writes_in_json_and_messagepack_what_chrono_writes() {
        for at in instants() {
            assert_eq!(
                serde_json::to_string(&Ours(at)).expect("json"),
                serde_json::to_string(&at).expect("json"),
                "{at:?}"
            );
            assert_eq!(
                rmp_serde::to_vec(&Ours(at)).expect("msgpack"),
                rmp_serde::to_vec(&at).expect("msgpack"),
                "{at:?}"
            );
        }
    }
}
