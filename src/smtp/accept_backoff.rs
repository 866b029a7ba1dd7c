//! What the accept loop does when `accept` fails.
//!
//! Out of file descriptors (or kernel memory), `accept` fails at once every
//! time it is called while the condition lasts; a fixed short pause logged
//! ten lines a second for as long as the node was saturated. Here a failure
//! starts an *episode*: it is logged once, accepting pauses for a time that
//! doubles with every further failure (from [`FIRST_PAUSE`] up to
//! [`MAX_PAUSE`]), and the first successful accept ends the episode with
//! one more line saying how many attempts failed. Connections that arrive
//! meanwhile wait in the listen backlog; none is lost to the pause.
//!
//! A connection reset or aborted by its client before it was accepted is
//! that client's business, not a condition of the node: it is skipped
//! without pause or log.

use std::io;
use std::time::Duration;

use tracing::{debug, info, warn};

pub const FIRST_PAUSE: Duration = Duration::from_millis(10);
pub const MAX_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct AcceptBackoff {
    /// Failures in the current episode (0 = accepting normally).
    failures: u64,
    pause: Duration,
}

impl AcceptBackoff {
    /// Handles one failed `accept`: logs if this starts an episode, then
    /// sleeps. Returns true if it logged.
    pub async fn failed(&mut self, error: &io::Error) -> bool {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
        ) {
            debug!("[CONN] a client left before it was accepted: {error}");
            return false;
        }
        let first = self.failures == 0;
        self.failures += 1;
        if first {
            self.pause = FIRST_PAUSE;
            let hint = if is_out_of_descriptors(error) {
                " (out of file descriptors: raise LimitNOFILE or lower -max-connections)"
            } else {
                ""
            };
            warn!(
                "[CONN] accept failed: {error}{hint}; pausing accepts, waiting clients stay in the backlog"
            );
        } else {
            self.pause = (self.pause * 2).min(MAX_PAUSE);
        }
        tokio::time::sleep(self.pause).await;
        first
    }

    /// Records a successful `accept`; ends an episode with one line.
    /// Returns true if it logged.
    pub fn succeeded(&mut self) -> bool {
        if self.failures == 0 {
            return false;
        }
        info!(
            "[CONN] accepting again after {} failed attempt(s)",
            self.failures
        );
        self.failures = 0;
        true
    }
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(error),
        Some(Errno::MFILE) | Some(Errno::NFILE)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn emfile() -> io::Error {
        rustix::io::Errno::MFILE.into()
    }

    #[tokio::test(start_paused = true)]
    async fn it_logs_once_per_episode_and_backs_off() {
        let mut backoff = AcceptBackoff::default();
        let start = Instant::now();
        let (mut attempts, mut logged) = (0, 0);
        while start.elapsed() < Duration::from_secs(10) {
            attempts += 1;
            logged += u32::from(backoff.failed(&emfile()).await);
        }
        assert_eq!(logged, 1);
        // 10 ms doubling to 1 s: 7 steps to reach the cap, then one a second.
        assert!(attempts <= 18, "{attempts} attempts in 10 s");
        assert!(backoff.succeeded());
        assert!(!backoff.succeeded());
        // A new episode is logged again and starts from the short pause.
        let before = Instant::now();
        assert!(backoff.failed(&emfile()).await);
        assert_eq!(before.elapsed(), FIRST_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn it_skips_clients_that_left_without_pausing() {
        let mut backoff = AcceptBackoff::default();
        let before = Instant::now();
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert!(!backoff.failed(&reset).await);
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert!(!backoff.succeeded());
    }
}
