//! invoices-node configuration: the shared variables (see `actors::config`) with this
//! node's defaults, plus the payment terms.

use std::time::Duration;

use serde::Deserialize;

use actors::config::{CommonConfig, ConfigError, Human, Setting, Vars, variables_of};

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:3334";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/invoices";
pub const DEFAULT_PAYMENT_TERMS: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct InvoicesConfig {
    pub common: CommonConfig,
    /// `PAYMENT_TERMS` (default 30d): `due_at` = `issued_at` + this.
    pub payment_terms: Duration,
}

/// This node's own variables, as envy fills them in.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InvoicesEnv {
    payment_terms: Setting<Human>,
}

impl InvoicesConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let own: InvoicesEnv = vars.read()?;
        Ok(Self {
            common: CommonConfig::from_vars(
                vars,
                crate::NODE_NAME,
                DEFAULT_HTTP_ADDR,
                DEFAULT_DATABASE_URL,
            )?,
            payment_terms: own.payment_terms.duration(DEFAULT_PAYMENT_TERMS),
        })
    }

    /// Every variable this node reads.
    pub fn variables() -> Vec<String> {
        let mut names = CommonConfig::variables();
        names.extend(variables_of::<InvoicesEnv>());
        names
    }
}
