//! Golden vectors: the exact bytes of one sample of each event. If one of these fails,
//! the wire format changed; that is a new contract version, not a test to update.

use super::*;
use crate::events::*;
use chrono::{TimeZone, Utc};
use uuid::Uuid;

fn id(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

fn at(second: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, second)
        .single()
        .expect("valid timestamp")
}

fn samples() -> Vec<(Event, &'static str)> {
    vec![
        (
            Event::OrderCreated(OrderCreated {
                event_id: id(1),
                order_id: id(2),
                customer_id: id(3),
                currency: "BRL".into(),
                items: vec![LineItem {
                    sku: "BOOK-42".into(),
                    quantity: 2,
                    unit_price_cents: 1500,
                }],
                total_cents: 3000,
                created_at: at(0),
            }),
            "87a86576656e745f6964d92430313031303130312d303130312d303130312d303130312d303130313031303130313031a86f726465725f6964d92430323032303230322d303230322d303230322d303230322d303230323032303230323032ab637573746f6d65725f6964d92430333033303330332d303330332d303330332d303330332d303330333033303330333033a863757272656e6379a342524ca56974656d739183a3736b75a7424f4f4b2d3432a87175616e7469747902b0756e69745f70726963655f63656e7473cd05dcab746f74616c5f63656e7473cd0bb8aa637265617465645f6174b4323032362d31312d32395431323a30303a30305a",
        ),
        (
            Event::OrderCanceled(OrderCanceled {
                event_id: id(4),
                order_id: id(2),
                canceled_at: at(1),
                reason: None,
            }),
            "84a86576656e745f6964d92430343034303430342d303430342d303430342d303430342d303430343034303430343034a86f726465725f6964d92430323032303230322d303230322d303230322d303230322d303230323032303230323032ab63616e63656c65645f6174b4323032362d31312d32395431323a30303a30315aa6726561736f6ec0",
        ),
        (
            Event::InvoiceIssued(InvoiceIssued {
                event_id: id(5),
                invoice_id: id(6),
                order_id: id(2),
                number: "INV-2026-000001".into(),
                currency: "BRL".into(),
                amount_cents: 3000,
                issued_at: at(2),
                due_at: Utc
                    .with_ymd_and_hms(2026, 12, 29, 12, 0, 2)
                    .single()
                    .expect("valid"),
            }),
            "88a86576656e745f6964d92430353035303530352d303530352d303530352d303530352d303530353035303530353035aa696e766f6963655f6964d92430363036303630362d303630362d303630362d303630362d303630363036303630363036a86f726465725f6964d92430323032303230322d303230322d303230322d303230322d303230323032303230323032a66e756d626572af494e562d323032362d303030303031a863757272656e6379a342524cac616d6f756e745f63656e7473cd0bb8a96973737565645f6174b4323032362d31312d32395431323a30303a30325aa66475655f6174b4323032362d31322d32395431323a30303a30325a",
        ),
        (
            Event::InvoicePaid(InvoicePaid {
                event_id: id(7),
                invoice_id: id(6),
                order_id: id(2),
                paid_at: at(3),
            }),
            "84a86576656e745f6964d92430373037303730372d303730372d303730372d303730372d303730373037303730373037aa696e766f6963655f6964d92430363036303630362d303630362d303630362d303630362d303630363036303630363036a86f726465725f6964d92430323032303230322d303230322d303230322d303230322d303230323032303230323032a7706169645f6174b4323032362d31312d32395431323a30303a30335a",
        ),
        (
            Event::InvoiceVoided(InvoiceVoided {
                event_id: id(8),
                invoice_id: id(6),
                order_id: id(2),
                voided_at: at(4),
            }),
            "84a86576656e745f6964d92430383038303830382d303830382d303830382d303830382d303830383038303830383038aa696e766f6963655f6964d92430363036303630362d303630362d303630362d303630362d303630363036303630363036a86f726465725f6964d92430323032303230322d303230322d303230322d303230322d303230323032303230323032a9766f696465645f6174b4323032362d31312d32395431323a30303a30345a",
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn encoding_matches_the_golden_vectors() {
    for (event, golden) in samples() {
        assert_eq!(
            hex(&encode(&event)),
            golden,
            "{} changed on the wire",
            event.routing_key()
        );
    }
}

#[test]
fn golden_vectors_decode_to_the_samples() {
    for (event, golden) in samples() {
        let bytes: Vec<u8> = (0..golden.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&golden[i..i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(decode(event.routing_key(), &bytes).expect("decodes"), event);
    }
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    #[derive(serde::Serialize)]
    struct Newer<'a> {
        event_id: &'a str,
        invoice_id: &'a str,
        order_id: &'a str,
        paid_at: &'a str,
        paid_by: &'a str,
    }
    let id = "01010101-0101-0101-0101-010101010101";
    let body = rmp_serde::to_vec_named(&Newer {
        event_id: id,
        invoice_id: id,
        order_id: id,
        paid_at: "2026-11-29T12:00:00Z",
        paid_by: "card",
    })
    .expect("encodes");
    let event = decode(crate::topology::INVOICE_PAID, &body).expect("decodes");
    assert_eq!(event.event_id().to_string(), id);
}

#[test]
fn missing_required_fields_are_rejected() {
    #[derive(serde::Serialize)]
    struct Partial<'a> {
        event_id: &'a str,
    }
    let body = rmp_serde::to_vec_named(&Partial {
        event_id: "01010101-0101-0101-0101-010101010101",
    })
    .expect("encodes");
    let err = decode(crate::topology::ORDER_CANCELED, &body).expect_err("must be rejected");
    assert!(matches!(err, DecodeError::Invalid { .. }), "{err}");
}

#[test]
fn garbage_unknown_types_and_oversized_bodies_are_rejected() {
    assert!(matches!(
        decode("order.created", b"\xc1not msgpack"),
        Err(DecodeError::Invalid { .. })
    ));
    assert!(matches!(
        decode("order.exploded", &[0x80]),
        Err(DecodeError::UnknownType(_))
    ));
    let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        decode("order.created", &big),
        Err(DecodeError::TooLarge(_))
    ));
}
