//! The one backoff rule used for restarts, reconnects and retries.

use std::time::Duration;

/// The delay before the `attempt`-th retry (attempt ≥ 1): `min`, doubling each attempt,
/// capped at `max`.
pub fn exponential(min: Duration, max: Duration, attempt: u32) -> Duration {
    min.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max)
}
