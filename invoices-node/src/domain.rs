//! The invoices domain: types and rules, no I/O.

use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `issued` → `paid` | `void`; both are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Issued,
    Paid,
    Void,
}

impl InvoiceStatus {
    pub const ALL: [InvoiceStatus; 3] = [
        InvoiceStatus::Issued,
        InvoiceStatus::Paid,
        InvoiceStatus::Void,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Issued => "issued",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// What a pay request does in this status.
    pub fn on_pay(self) -> PayDecision {
        match self {
            InvoiceStatus::Issued => PayDecision::Pay,
            InvoiceStatus::Paid => PayDecision::AlreadyPaid,
            InvoiceStatus::Void => PayDecision::Refuse,
        }
    }

    /// Whether the order's cancellation voids the invoice (a paid invoice stays paid).
    pub fn voided_by_cancel(self) -> bool {
        self == InvoiceStatus::Issued
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayDecision {
    Pay,
    AlreadyPaid,
    Refuse,
}

/// An invoice as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub id: Uuid,
    pub number: String,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub currency: String,
    pub amount_cents: i64,
    pub status: InvoiceStatus,
    pub issued_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
}

/// `INV-<year>-<sequence, at least 6 digits>`
pub fn invoice_number(issued_at: DateTime<Utc>, sequence: i64) -> String {
    format!("INV-{}-{:06}", issued_at.year(), sequence)
}

/// `issued_at` + the payment terms.
pub fn due_at(issued_at: DateTime<Utc>, terms: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(terms)
        .ok()
        .and_then(|t| issued_at.checked_add_signed(t))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn numbers_have_year_and_at_least_six_digits() {
        let at = Utc
            .with_ymd_and_hms(2026, 11, 29, 0, 0, 0)
            .single()
            .expect("ts");
        assert_eq!(invoice_number(at, 123), "INV-2026-000123");
        assert_eq!(invoice_number(at, 1_234_567), "INV-2026-1234567");
    }

    #[test]
    fn due_date_adds_the_terms() {
        let at = Utc
            .with_ymd_and_hms(2026, 11, 29, 12, 0, 0)
            .single()
            .expect("ts");
        let due = due_at(at, Duration::from_secs(30 * 86400));
        assert_eq!(
            due,
            Utc.with_ymd_and_hms(2026, 12, 29, 12, 0, 0)
                .single()
                .expect("ts")
        );
    }

    #[test]
    fn paying_and_voiding_follow_the_rules() {
        assert_eq!(InvoiceStatus::Issued.on_pay(), PayDecision::Pay);
        assert_eq!(InvoiceStatus::Paid.on_pay(), PayDecision::AlreadyPaid);
        assert_eq!(InvoiceStatus::Void.on_pay(), PayDecision::Refuse);
        assert!(InvoiceStatus::Issued.voided_by_cancel());
        assert!(!InvoiceStatus::Paid.voided_by_cancel());
    }
}
