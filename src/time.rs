//! Time as the daemon sees it: unix milliseconds from an injectable clock.
//!
//! Release times, retry times, leases and replay windows are all stored and
//! compared as [`UnixMillis`] (mix release times need sub-second precision,
//! and one unit everywhere avoids conversions at every boundary). Code that
//! decides *when* takes a [`Clock`] instead of reading the system time, so
//! tests can run it on a clock they move by hand or on tokio's paused time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = u64;

/// A source of the current time in unix milliseconds. An `Arc` of a
/// closure so it is cheap to clone into every task that needs it.
pub type Clock = Arc<dyn Fn() -> UnixMillis + Send + Sync>;

/// Current system time in unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The real clock.
pub fn system_clock() -> Clock {
    Arc::new(now_ms)
}
