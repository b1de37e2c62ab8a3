//! The orders domain: types and rules, no I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use actors::http::FieldError;
use contracts::LineItem;

use contracts::rules;
pub use contracts::rules::{
    MAX_ITEMS, MAX_QUANTITY, MAX_REASON_CHARS, MAX_SKU_CHARS, MAX_UNIT_PRICE_CENTS, is_currency,
};

/// An order's status. It only moves forward: pending → invoiced → paid, and pending or
/// invoiced → canceled (terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Invoiced,
    Paid,
    Canceled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 4] = [
        OrderStatus::Pending,
        OrderStatus::Invoiced,
        OrderStatus::Paid,
        OrderStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Invoiced => "invoiced",
            OrderStatus::Paid => "paid",
            OrderStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// What a cancel request does in this status.
    pub fn on_cancel(self) -> CancelDecision {
        match self {
            OrderStatus::Pending | OrderStatus::Invoiced => CancelDecision::Cancel,
            OrderStatus::Canceled => CancelDecision::AlreadyCanceled,
            OrderStatus::Paid => CancelDecision::Refuse,
        }
    }

    /// The status after an invoice was issued (forward only).
    pub fn on_invoice_issued(self) -> OrderStatus {
        match self {
            OrderStatus::Pending => OrderStatus::Invoiced,
            other => other,
        }
    }

    /// The status after the invoice was paid (forward only; canceled is terminal).
    pub fn on_invoice_paid(self) -> OrderStatus {
        match self {
            OrderStatus::Pending | OrderStatus::Invoiced => OrderStatus::Paid,
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelDecision {
    Cancel,
    AlreadyCanceled,
    Refuse,
}

/// An order as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub currency: String,
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    pub status: OrderStatus,
    pub invoice_id: Option<Uuid>,
    #[serde(serialize_with = "contracts::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "contracts::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

/// A validated `POST /orders` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewOrder {
    pub customer_id: Uuid,
    pub currency: String,
    pub items: Vec<LineItem>,
}

impl NewOrder {
    /// The server-computed total. Bounds on items keep it far below `i64::MAX`.
    pub fn total_cents(&self) -> i64 {
        self.items
            .iter()
            .map(|i| i64::from(i.quantity) * i.unit_price_cents)
            .sum()
    }

    /// Validates a JSON body against the schema of api.md, reporting every problem with
    /// its field path at once.
    pub fn from_json(body: &Value) -> Result<NewOrder, Vec<FieldError>> {
        let mut errors = Vec::new();
        let Some(obj) = body.as_object() else {
            return Err(vec![FieldError::new("", "must be a JSON object")]);
        };
        reject_unknown(obj, &["customer_id", "currency", "items"], "", &mut errors);
        let customer_id = required(obj, "customer_id", "customer_id", &mut errors)
            .and_then(|v| uuid_field(v, "customer_id", &mut errors));
        let currency = required(obj, "currency", "currency", &mut errors)
            .and_then(|v| currency_field(v, "currency", &mut errors));
        let items =
            required(obj, "items", "items", &mut errors).and_then(|v| items_field(v, &mut errors));
        match (customer_id, currency, items) {
            (Some(customer_id), Some(currency), Some(items)) if errors.is_empty() => Ok(NewOrder {
                customer_id,
                currency,
                items,
            }),
            _ => Err(errors),
        }
    }
}

fn reject_unknown(
    obj: &Map<String, Value>,
    known: &[&str],
    prefix: &str,
    errors: &mut Vec<FieldError>,
) {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(FieldError::new(format!("{prefix}{key}"), "unknown field"));
    }
}

fn required<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a Value> {
    let value = obj.get(key);
    if value.is_none() {
        errors.push(FieldError::new(path, "is required"));
    }
    value
}

fn uuid_field(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Uuid> {
    let parsed = value.as_str().and_then(|s| Uuid::parse_str(s).ok());
    if parsed.is_none() {
        errors.push(FieldError::new(path, "must be a UUID string"));
    }
    parsed
}

fn currency_field(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match value.as_str() {
        Some(s) if is_currency(s) => Some(s.to_owned()),
        _ => {
            errors.push(FieldError::new(path, rules::CURRENCY_RULE));
            None
        }
    }
}

fn integer_field(
    value: &Value,
    path: &str,
    min: i64,
    max: i64,
    errors: &mut Vec<FieldError>,
) -> Option<i64> {
    match value.as_i64() {
        Some(n) if (min..=max).contains(&n) => Some(n),
        Some(_) => {
            errors.push(FieldError::new(
                path,
                format!("must be from {min} to {max}"),
            ));
            None
        }
        None => {
            errors.push(FieldError::new(
                path,
                format!("must be an integer from {min} to {max}"),
            ));
            None
        }
    }
}

fn items_field(value: &Value, errors: &mut Vec<FieldError>) -> Option<Vec<LineItem>> {
    let Some(list) = value.as_array() else {
        errors.push(FieldError::new("items", "must be an array"));
        return None;
    };
    if list.is_empty() || list.len() > MAX_ITEMS {
        errors.push(FieldError::new(
            "items",
            format!("must hold 1 to {MAX_ITEMS} items"),
        ));
        return None;
    }
    let mut items = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let prefix = format!("items[{i}].");
        let Some(obj) = item.as_object() else {
            errors.push(FieldError::new(format!("items[{i}]"), "must be an object"));
            continue;
        };
        reject_unknown(
            obj,
            &["sku", "quantity", "unit_price_cents"],
            &prefix,
            errors,
        );
        let sku_path = format!("{prefix}sku");
        let sku = required(obj, "sku", &sku_path, errors).and_then(|v| match v.as_str() {
            Some(s) if rules::is_sku(s) => Some(s.to_owned()),
            _ => {
                errors.push(FieldError::new(&sku_path, rules::sku_rule()));
                None
            }
        });
        let q_path = format!("{prefix}quantity");
        let quantity = required(obj, "quantity", &q_path, errors)
            .and_then(|v| integer_field(v, &q_path, 1, MAX_QUANTITY, errors));
        let p_path = format!("{prefix}unit_price_cents");
        let price = required(obj, "unit_price_cents", &p_path, errors)
            .and_then(|v| integer_field(v, &p_path, 0, MAX_UNIT_PRICE_CENTS, errors));
        if let (Some(sku), Some(quantity), Some(unit_price_cents)) = (sku, quantity, price) {
            // quantity ≤ MAX_QUANTITY fits i32.
            items.push(LineItem {
                sku,
                quantity: quantity as i32,
                unit_price_cents,
            });
        }
    }
    Some(items)
}

/// The optional body of `POST /orders/{id}/cancel`: `{"reason": "..."}`.
pub fn cancel_reason(body: &Value) -> Result<Option<String>, Vec<FieldError>> {
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new("", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    reject_unknown(obj, &["reason"], "", &mut errors);
    let reason = match obj.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if (1..=MAX_REASON_CHARS).contains(&s.chars().count()) => {
            Some(s.clone())
        }
        Some(_) => {
            errors.push(FieldError::new(
                "reason",
                format!("must be a string of 1 to {MAX_REASON_CHARS} characters, or null"),
            ));
            None
        }
    };
    if errors.is_empty() {
        Ok(reason)
    } else {
        Err(errors)
    }
}

/// `Idempotency-Key`: 1..=255 visible ASCII characters.
pub fn is_idempotency_key(s: &str) -> bool {
    (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({"customer_id": "5b3f8f3e-8a4e-4a49-9b63-0c8f7f4d2a11", "currency": "BRL",
               "items": [{"sku": "BOOK-42", "quantity": 2, "unit_price_cents": 1500}]})
    }

    fn fields(body: Value) -> Vec<String> {
        NewOrder::from_json(&body)
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_order_parses_and_totals() {
        let order = NewOrder::from_json(&valid()).expect("valid");
        assert_eq!(order.total_cents(), 3000);
    }

    #[test]
    fn every_rule_reports_its_field_path() {
        let mut b = valid();
        b["customer_id"] = json!("nope");
        b["currency"] = json!("brl");
        b["extra"] = json!(1);
        assert_eq!(fields(b), vec!["extra", "customer_id", "currency"]);

        for (field, value) in [
            ("sku", json!("")),
            ("sku", json!("has space")),
            ("sku", json!("x".repeat(65))),
            ("quantity", json!(0)),
            ("quantity", json!(10_001)),
            ("quantity", json!(1.5)),
            ("quantity", json!("2")),
            ("unit_price_cents", json!(-1)),
            ("unit_price_cents", json!(100_000_001)),
        ] {
            let mut b = valid();
            b["items"][0][field] = value.clone();
            assert_eq!(
                fields(b),
                vec![format!("items[0].{field}")],
                "{field}={value}"
            );
        }
        let mut b = valid();
        b["items"] = json!([]);
        assert_eq!(fields(b), vec!["items"]);
        let mut b = valid();
        b["items"] = json!(vec![valid()["items"][0].clone(); 101]);
        assert_eq!(fields(b), vec!["items"]);
        assert_eq!(fields(json!({})), vec!["customer_id", "currency", "items"]);
        assert_eq!(fields(json!([1])), vec![""]);
    }

    #[test]
    fn boundaries_are_inclusive() {
        let mut b = valid();
        b["items"][0] =
            json!({"sku": "x".repeat(64), "quantity": 10_000, "unit_price_cents": 100_000_000});
        let order = NewOrder::from_json(&b).expect("valid at the limits");
        assert_eq!(order.total_cents(), 1_000_000_000_000);
        b["items"][0]["unit_price_cents"] = json!(0);
        assert!(NewOrder::from_json(&b).is_ok());
    }

    #[test]
    fn status_only_moves_forward() {
        use OrderStatus::*;
        assert_eq!(Pending.on_invoice_issued(), Invoiced);
        assert_eq!(Paid.on_invoice_issued(), Paid);
        assert_eq!(Canceled.on_invoice_issued(), Canceled);
        assert_eq!(Invoiced.on_invoice_paid(), Paid);
        assert_eq!(Canceled.on_invoice_paid(), Canceled);
        assert_eq!(Paid.on_cancel(), CancelDecision::Refuse);
        assert_eq!(Canceled.on_cancel(), CancelDecision::AlreadyCanceled);
        assert_eq!(Invoiced.on_cancel(), CancelDecision::Cancel);
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(is_idempotency_key("abc-123"));
        assert!(!is_idempotency_key(""));
        assert!(!is_idempotency_key("with space"));
        assert!(!is_idempotency_key(&"k".repeat(256)));
    }
}
