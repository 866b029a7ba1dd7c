//! The mix: when each message may leave. No sockets, no storage.
//!
//! A release time is drawn once, when a message is accepted (and again for
//! each retry), and stored in the spool with the message, so a restart
//! neither loses the schedule nor releases anything early. The relay only
//! ever sees messages whose release time has passed.
//!
//! * Batch mode (`-batch-window`): everything accepted during a window is
//!   released after the window ends, each message after its own independent
//!   uniform jitter in `[-jitter-min, -jitter-max]`. Independent continuous
//!   jitters make the release order a uniformly random permutation of the
//!   batch, drawn from the CSPRNG, and the delays overlap instead of adding
//!   up: a batch of any size leaves within one window plus one jitter.
//! * Pool mode (`-delay`): each message gets its own delay from a
//!   [`DelayStrategy`] between `-min-delay` and `-max-delay`.
//! * Neither (`-batch-window 0`, no `-delay`): immediate release.

pub mod strategy;

use std::time::Duration;

use rand::Rng;

pub use strategy::DelayStrategy;

#[derive(Debug, Clone, PartialEq)]
pub enum MixPolicy {
    Immediate,
    Batch {
        window: Duration,
        jitter_min: Duration,
        jitter_max: Duration,
    },
    Pool {
        min: Duration,
        max: Duration,
        strategy: DelayStrategy,
    },
}

impl MixPolicy {
    /// Release time (unix ms) for something that becomes eligible at `now`.
    pub fn release_at<R: Rng + ?Sized>(&self, now: u64, rng: &mut R) -> u64 {
        match self {
            MixPolicy::Immediate => now,
            MixPolicy::Batch {
                window,
                jitter_min,
                jitter_max,
            } => {
                let w = (window.as_millis() as u64).max(1);
                let window_end = (now / w + 1) * w;
                let lo = jitter_min.as_millis() as u64;
                let hi = (jitter_max.as_millis() as u64).max(lo);
                window_end + rng.random_range(lo..=hi)
            }
            MixPolicy::Pool { min, max, strategy } => {
                let lo = min.as_millis() as f64;
                let width = max.as_millis() as f64 - lo;
                now + (lo + strategy.sample(width, rng)).round() as u64
            }
        }
    }
}

#[cfg(test)]
mod tests;
