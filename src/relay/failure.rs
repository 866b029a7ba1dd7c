//! Delivery failures, classified the way a retry scheduler needs them.

/// Whether trying again later can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// 4xx replies, timeouts, connection and SOCKS trouble: retry with backoff.
    Temporary,
    /// 5xx replies, impossible destinations: drop the recipient.
    Permanent,
}

/// A failed delivery step. `reason` never contains an address, so it can
/// be logged without `-debug`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} failure: {reason}", match .severity { Severity::Temporary => "temporary", Severity::Permanent => "permanent" })]
pub struct Failure {
    pub severity: Severity,
    pub reason: String,
}

impl Failure {
    pub fn temporary(reason: impl Into<String>) -> Self {
        Self {
            severity: Severity::Temporary,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            severity: Severity::Permanent,
            reason: reason.into(),
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.severity == Severity::Permanent
    }
}
