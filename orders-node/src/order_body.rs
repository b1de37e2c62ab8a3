//! A `POST /orders` body read straight into [`NewOrder`], for the usual case: a valid order.
//!
//! [`NewOrder::from_json`] reads a JSON tree, so that it can name every problem of a bad
//! body at once; for a good one that tree (a map, a string per key and value, a vector)
//! and the field paths it formats are allocations and work per request that nothing uses.
//! [`read_valid`] takes only a body that is exactly a valid order: every field once, none
//! unknown, every rule met. Anything else — a repeated or unknown key, a wrong type, a
//! broken rule, an escaped UUID, malformed JSON — is `None`, and the caller asks
//! `from_json`, which gives the answer. So the two can never disagree on what is accepted:
//! this one accepts a subset, and for it builds the same `NewOrder` (a test checks both
//! ways).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use uuid::Uuid;

use contracts::LineItem;
use contracts::rules::{self, MAX_ITEMS, MAX_QUANTITY, MAX_UNIT_PRICE_CENTS};

use crate::domain::NewOrder;

/// The order in `body` if it is a valid order and nothing else; `None` for whatever
/// [`NewOrder::from_json`] has to judge.
pub fn read_valid(body: &[u8]) -> Option<NewOrder> {
    serde_json::from_slice::<Valid>(body)
        .ok()
        .map(|Valid(order)| order)
}

struct Valid(NewOrder);

/// Not the usual case: the error text is never shown, `from_json` writes the answer.
fn unusual<E: de::Error>() -> E {
    E::custom("not a plain valid order")
}

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `deserialize_map`, not a derived struct: serde_json would read a struct from an
        // array too, where the schema wants an object.
        deserializer.deserialize_map(OrderVisitor).map(Valid)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum OrderField {
    CustomerId,
    Currency,
    Items,
}

struct OrderVisitor;

impl<'de> Visitor<'de> for OrderVisitor {
    type Value = NewOrder;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an order object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NewOrder, A::Error> {
        let (mut customer_id, mut currency, mut items) = (None, None, None);
        while let Some(field) = map.next_key::<OrderField>()? {
            match field {
                OrderField::CustomerId if customer_id.is_none() => {
                    // Borrowed: an escaped UUID string is unusual (and fails here).
                    let text: &str = map.next_value()?;
                    customer_id = Some(Uuid::parse_str(text).map_err(|_| unusual::<A::Error>())?);
                }
                OrderField::Currency if currency.is_none() => {
                    let text: String = map.next_value()?;
                    if !rules::is_currency(&text) {
                        return Err(unusual());
                    }
                    currency = Some(text);
                }
                OrderField::Items if items.is_none() => {
                    items = Some(map.next_value::<Items>()?.0);
                }
                _ => return Err(unusual()),
            }
        }
        match (customer_id, currency, items) {
            (Some(customer_id), Some(currency), Some(items)) => Ok(NewOrder {
                customer_id,
                currency,
                items,
            }),
            _ => Err(unusual()),
        }
    }
}

struct Items(Vec<LineItem>);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(ItemsVisitor).map(Items)
    }
}

struct ItemsVisitor;

impl<'de> Visitor<'de> for ItemsVisitor {
    type Value = Vec<LineItem>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of line items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<LineItem>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(MAX_ITEMS));
        while let Some(Item(item)) = seq.next_element()? {
            if items.len() == MAX_ITEMS {
                return Err(unusual());
            }
            items.push(item);
        }
        if items.is_empty() {
            return Err(unusual());
        }
        Ok(items)
    }
}

struct Item(LineItem);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ItemVisitor).map(Item)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum ItemField {
    Sku,
    Quantity,
    UnitPriceCents,
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = LineItem;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a line item object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LineItem, A::Error> {
        let (mut sku, mut quantity, mut price) = (None, None, None);
        while let Some(field) = map.next_key::<ItemField>()? {
            match field {
                ItemField::Sku if sku.is_none() => {
                    let text: String = map.next_value()?;
                    if !rules::is_sku(&text) {
                        return Err(unusual());
                    }
                    sku = Some(text);
                }
                ItemField::Quantity if quantity.is_none() => {
                    quantity = Some(within(map.next_value()?, 1, MAX_QUANTITY)?);
                }
                ItemField::UnitPriceCents if price.is_none() => {
                    price = Some(within(map.next_value()?, 0, MAX_UNIT_PRICE_CENTS)?);
                }
                _ => return Err(unusual()),
            }
        }
        match (sku, quantity, price) {
            // quantity ≤ MAX_QUANTITY fits i32.
            (Some(sku), Some(quantity), Some(unit_price_cents)) => Ok(LineItem {
                sku,
                quantity: quantity as i32,
                unit_price_cents,
            }),
            _ => Err(unusual()),
        }
    }
}

/// An integer (a JSON number with no fraction or exponent, as `Value::as_i64` reads it)
/// within `min..=max`.
fn within<E: de::Error>(n: i64, min: i64, max: i64) -> Result<i64, E> {
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(unusual())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the route's other way makes of `body`: the strict JSON reader (which refuses a
    /// repeated key anywhere), then `from_json`.
    fn through_the_tree(body: &str) -> Option<NewOrder> {
        let mut headers = warp::http::HeaderMap::new();
        headers.insert("content-type", "application/json".parse().expect("header"));
        let request = actors::http::HttpRequest {
            method: warp::http::Method::POST,
            path: "/orders".into(),
            query: None,
            headers,
            body: body.as_bytes().to_vec().into(),
            request_id: "r".into(),
        };
        request
            .json()
            .ok()
            .and_then(|tree| NewOrder::from_json(&tree).ok())
    }

    /// Whatever `read_valid` takes, the tree takes too and reads the same; and every body
    /// passed here that the tree takes, `read_valid` takes.
    fn agrees(body: &str) -> Option<NewOrder> {
        let direct = read_valid(body.as_bytes());
        assert_eq!(direct, through_the_tree(body), "{body}");
        direct
    }

    const ID: &str = "5b3f8f3e-8a4e-4a49-9b63-0c8f7f4d2a11";

    fn order(items: &str) -> String {
        format!(r#"{{"customer_id":"{ID}","currency":"BRL","items":[{items}]}}"#)
    }

    const ITEM: &str = r#"{"sku":"BOOK-42","quantity":2,"unit_price_cents":1500}"#;

    #[test]
    fn a_valid_order_reads_the_same_both_ways() {
        let read = agrees(&order(ITEM)).expect("valid");
        assert_eq!(read.total_cents(), 3000);
        // Fields in any order, whitespace, two items, the limits.
        let reordered = format!(
            r#" {{ "items" : [ {ITEM}, {{"unit_price_cents":0,"quantity":10000,"sku":"{}"}} ],
                  "currency":"USD", "customer_id":"{}" }} "#,
            "x".repeat(64),
            ID.to_uppercase()
        );
        assert_eq!(agrees(&reordered).expect("valid").items.len(), 2);
        let hundred = vec![ITEM; MAX_ITEMS].join(",");
        assert!(agrees(&order(&hundred)).is_some());
    }

    #[test]
    fn anything_unusual_is_left_to_the_tree() {
        let many = vec![ITEM; MAX_ITEMS + 1].join(",");
        for body in [
            order(&many),
            order(""),
            order(r#"{"sku":"BOOK-42","quantity":2,"unit_price_cents":1500,"sku":"X"}"#),
            order(r#"{"sku":"BOOK-42","quantity":2,"unit_price_cents":1500,"note":1}"#),
            order(r#"{"sku":"BOOK-42","quantity":2}"#),
            order(r#"["BOOK-42",2,1500]"#),
            order(r#"{"sku":"BOOK 42","quantity":2,"unit_price_cents":1500}"#),
            order(r#"{"sku":"BOOK-42","quantity":2.0,"unit_price_cents":1500}"#),
            order(r#"{"sku":"BOOK-42","quantity":0,"unit_price_cents":1500}"#),
            order(r#"{"sku":"BOOK-42","quantity":"2","unit_price_cents":1500}"#),
            order(r#"{"sku":"BOOK-42","quantity":2,"unit_price_cents":-1}"#),
            order(r#"{"sku":"BOOK-42","quantity":2,"unit_price_cents":18446744073709551615}"#),
            order(r#"{"sku":"BOOK-42","quantity":2,"unit_price_cents":1e3}"#),
            order(r#"{"sku":null,"quantity":2,"unit_price_cents":1500}"#),
            format!(
                r#"{{"customer_id":"{ID}","currency":"BRL","currency":"USD","items":[{ITEM}]}}"#
            ),
            format!(
                r#"{{"customer_id":"{ID}","currency":"BRL","items":[{ITEM}],"x":{{"a":1,"a":2}}}}"#
            ),
            format!(r#"{{"customer_id":"{ID}","currency":"brl","items":[{ITEM}]}}"#),
            format!(r#"{{"customer_id":"{ID}","items":[{ITEM}]}}"#),
            format!(r#"{{"customer_id":"not-a-uuid","currency":"BRL","items":[{ITEM}]}}"#),
            format!(r#"{{"customer_id":[1,2],"currency":"BRL","items":[{ITEM}]}}"#),
            format!(r#"{{"customer_id":"{ID}","currency":"BRL","items":{ITEM}}}"#),
            format!(r#"["{ID}","BRL",[{ITEM}]]"#),
            format!(r#"{{"customer_id":"{ID}","currency":"BRL","items":[{ITEM}]}} x"#),
            "null".to_owned(),
            "{".to_owned(),
        ] {
            assert_eq!(read_valid(body.as_bytes()), None, "{body}");
            agrees(&body);
        }
    }

    #[test]
    fn escapes_read_the_same_or_fall_back() {
        // An escaped sku that is valid once read; an escaped (but valid) UUID, which the
        // borrowed read leaves to the tree — where it is accepted.
        let escaped_sku = order(r#"{"sku":"BOOK\u002D42","quantity":2,"unit_price_cents":1500}"#);
        assert_eq!(agrees(&escaped_sku).expect("valid").items[0].sku, "BOOK-42");
        let escaped_id = format!(
            r#"{{"customer_id":"5b3f8f3e\u002d8a4e-4a49-9b63-0c8f7f4d2a11","currency":"BRL","items":[{ITEM}]}}"#
        );
        assert_eq!(read_valid(escaped_id.as_bytes()), None);
        assert!(through_the_tree(&escaped_id).is_some());
    }
}
