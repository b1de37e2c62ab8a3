//! invoices-node configuration: the shared variables (see `actors::config`) with this
//! node's defaults, plus the payment terms.

use std::time::Duration;

use actors::config::{CommonConfig, ConfigError, Vars};

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:3334";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/invoices";
pub const DEFAULT_PAYMENT_TERMS: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct InvoicesConfig {
    pub common: CommonConfig,
    /// `PAYMENT_TERMS` (default 30d): `due_at` = `issued_at` + this.
    pub payment_terms: Duration,
}

impl InvoicesConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_vars(
                vars,
                crate::NODE_NAME,
                DEFAULT_HTTP_ADDR,
                DEFAULT_DATABASE_URL,
            )?,
            payment_terms: vars.duration("PAYMENT_TERMS", DEFAULT_PAYMENT_TERMS)?,
        })
    }
}
