//! The rules an order and an invoice obey, wherever they come from: orders-node checks an
//! HTTP body with them, and each consumer checks every event it takes with them, so an
//! event that breaks the contract is dead-lettered instead of invoiced.

use crate::events::{InvoiceIssued, LineItem, OrderCanceled, OrderCreated};

pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: i64 = 10_000;
pub const MAX_UNIT_PRICE_CENTS: i64 = 100_000_000;
pub const MAX_SKU_CHARS: usize = 64;
pub const MAX_REASON_CHARS: usize = 500;

/// One broken rule: the field (`items[3].sku`) and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl Violation {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

/// `^[A-Z]{3}$`
pub fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}

pub const CURRENCY_RULE: &str = "must be three uppercase letters (ISO 4217), e.g. BRL";

/// 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
pub fn is_sku(s: &str) -> bool {
    (1..=MAX_SKU_CHARS).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub fn sku_rule() -> String {
    format!("must be 1 to {MAX_SKU_CHARS} characters of A-Z, a-z, 0-9, '.', '_' or '-'")
}

/// Every broken rule of a list of line items (count, sku, quantity, unit price).
pub fn line_item_violations(items: &[LineItem]) -> Vec<Violation> {
    let mut violations = Vec::new();
    if items.is_empty() || items.len() > MAX_ITEMS {
        violations.push(Violation::new(
            "items",
            format!("must hold 1 to {MAX_ITEMS} items"),
        ));
    }
    for (i, item) in items.iter().take(MAX_ITEMS + 1).enumerate() {
        if !is_sku(&item.sku) {
            violations.push(Violation::new(format!("items[{i}].sku"), sku_rule()));
        }
        if !(1..=MAX_QUANTITY).contains(&i64::from(item.quantity)) {
            violations.push(Violation::new(
                format!("items[{i}].quantity"),
                format!("must be from 1 to {MAX_QUANTITY}"),
            ));
        }
        if !(0..=MAX_UNIT_PRICE_CENTS).contains(&item.unit_price_cents) {
            violations.push(Violation::new(
                format!("items[{i}].unit_price_cents"),
                format!("must be from 0 to {MAX_UNIT_PRICE_CENTS}"),
            ));
        }
    }
    violations
}

/// Σ quantity × unit price; `None` if it overflows (impossible within the rules).
pub fn total_cents(items: &[LineItem]) -> Option<i64> {
    items.iter().try_fold(0i64, |sum, i| {
        i64::from(i.quantity)
            .checked_mul(i.unit_price_cents)
            .and_then(|line| sum.checked_add(line))
    })
}

impl OrderCreated {
    /// The rules of `POST /orders`, plus: the total is the sum of the items.
    pub fn violations(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if !is_currency(&self.currency) {
            v.push(Violation::new("currency", CURRENCY_RULE));
        }
        v.extend(line_item_violations(&self.items));
        if total_cents(&self.items) != Some(self.total_cents) {
            v.push(Violation::new(
                "total_cents",
                "must be the sum of quantity × unit_price_cents over the items",
            ));
        }
        v
    }
}

impl OrderCanceled {
    pub fn violations(&self) -> Vec<Violation> {
        match &self.reason {
            Some(r) if r.is_empty() || r.chars().count() > MAX_REASON_CHARS => {
                vec![Violation::new(
                    "reason",
                    format!("must be 1 to {MAX_REASON_CHARS} characters, or nil"),
                )]
            }
            _ => Vec::new(),
        }
    }
}

impl InvoiceIssued {
    pub fn violations(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if !is_currency(&self.currency) {
            v.push(Violation::new("currency", CURRENCY_RULE));
        }
        if self.amount_cents < 0 {
            v.push(Violation::new("amount_cents", "must not be negative"));
        }
        if self.due_at < self.issued_at {
            v.push(Violation::new("due_at", "must not be before issued_at"));
        }
        v
    }
}

impl crate::Event {
    /// Every contract rule this event breaks (empty when valid). Consumers dead-letter an
    /// event that breaks any.
    pub fn violations(&self) -> Vec<Violation> {
        match self {
            crate::Event::OrderCreated(e) => e.violations(),
            crate::Event::OrderCanceled(e) => e.violations(),
            crate::Event::InvoiceIssued(e) => e.violations(),
            crate::Event::InvoicePaid(_) | crate::Event::InvoiceVoided(_) => Vec::new(),
        }
    }

    /// Why this event breaks the contract (at most five rules named), or `None` if valid:
    /// the reason a consumer gives when it dead-letters it.
    pub fn contract_breach(&self) -> Option<String> {
        let violations = self.violations();
        (!violations.is_empty()).then(|| {
            let rules: Vec<String> = violations.iter().take(5).map(ToString::to_string).collect();
            format!(
                "{} {} breaks the contract: {}",
                self.routing_key(),
                self.event_id(),
                rules.join("; ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn created(items: Vec<LineItem>, total: i64) -> OrderCreated {
        OrderCreated {
            event_id: Uuid::nil(),
            order_id: Uuid::nil(),
            customer_id: Uuid::nil(),
            currency: "BRL".into(),
            items,
            total_cents: total,
            created_at: Utc::now(),
        }
    }

    fn item(sku: &str, quantity: i32, price: i64) -> LineItem {
        LineItem {
            sku: sku.into(),
            quantity,
            unit_price_cents: price,
        }
    }

    #[test]
    fn the_api_rules_hold_for_events_too() {
        assert!(
            created(vec![item("BOOK-42", 2, 1500)], 3000)
                .violations()
                .is_empty()
        );
        let fields = |e: OrderCreated| -> Vec<String> {
            e.violations().into_iter().map(|v| v.field).collect()
        };
        assert_eq!(
            fields(created(vec![item("BOOK-42", 2, 1500)], 2999)),
            ["total_cents"]
        );
        assert_eq!(fields(created(vec![], 0)), ["items"]);
        assert_eq!(
            fields(created(vec![item("A", -1, 100)], -100)),
            ["items[0].quantity"]
        );
        assert_eq!(
            fields(created(vec![item("A", 1, -5)], -5)),
            ["items[0].unit_price_cents"]
        );
        assert_eq!(
            fields(created(vec![item(&"x".repeat(1_000_000), 1, 1)], 1)),
            ["items[0].sku"]
        );
        assert_eq!(
            fields(created(vec![item("A", 1, 1)], i64::MAX)),
            ["total_cents"]
        );
        let mut euro = created(vec![item("A", 1, 1)], 1);
        euro.currency = "euro".into();
        assert_eq!(fields(euro), ["currency"]);
    }
}
