//! Identifying values in logs, redacted unless the operator asked for them.
//!
//! Addresses, HELO names, client identities and onion hosts are wrapped in
//! [`Sensitive`] wherever they are formatted into a log line. Its `Display`
//! prints `[redacted]` unless `-debug` switched revealing on at start, so
//! no call site decides on its own whether a value may appear, and a new
//! log line cannot leak by forgetting an `if debug`.
//!
//! The switch is process-wide because logging is: there is one subscriber,
//! configured once by the daemon before any task starts.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static REVEAL: AtomicBool = AtomicBool::new(false);

/// What a hidden value prints as.
pub const REDACTED: &str = "[redacted]";

/// Lets [`Sensitive`] values print themselves (`-debug`). Called once at
/// start, before logging begins.
pub fn reveal(on: bool) {
    REVEAL.store(on, Ordering::Relaxed);
}

/// Whether identifying values are printed.
pub fn revealing() -> bool {
    REVEAL.load(Ordering::Relaxed)
}

/// A value that identifies someone: shown only with `-debug`.
#[derive(Clone, Copy)]
pub struct Sensitive<T>(pub T);

impl<T: fmt::Display> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if revealing() {
            self.0.fmt(f)
        } else {
            f.write_str(REDACTED)
        }
    }
}

/// `{:?}` is redacted the same way, so a struct deriving `Debug` cannot
/// leak its wrapped field through a debug format either.
impl<T: fmt::Display> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test, because the switch is process-wide and tests run in parallel.
    #[test]
    fn it_hides_values_unless_revealing_is_on() {
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(format!("{}", Sensitive(ip)), REDACTED);
        assert_eq!(format!("{:?}", Sensitive("a@b.onion")), REDACTED);
        reveal(true);
        let shown = format!("{} {:?}", Sensitive(ip), Sensitive("a@b.onion"));
        reveal(false);
        assert_eq!(shown, "192.0.2.7 a@b.onion");
        assert_eq!(format!("{}", Sensitive(ip)), REDACTED);
    }
}
