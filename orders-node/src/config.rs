//! orders-node configuration: the shared variables (see `actors::config`) with this node's
//! defaults.

use actors::config::{CommonConfig, ConfigError, Vars};

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:3333";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/orders";

#[derive(Debug, Clone)]
pub struct OrdersConfig {
    pub common: CommonConfig,
}

impl OrdersConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_vars(
                vars,
                crate::NODE_NAME,
                DEFAULT_HTTP_ADDR,
                DEFAULT_DATABASE_URL,
            )?,
        })
    }

    /// Every variable this node reads.
    pub fn variables() -> Vec<String> {
        CommonConfig::variables()
    }
}
