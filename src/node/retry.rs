//! When to try a temporarily failed recipient again.
//!
//! Exponential backoff with jitter: the n-th retry waits a random time in
//! [d/2, d] with d = base·2ⁿ, capped. The jitter keeps retries of mail that
//! failed together (same dead host) from marching out in lockstep, which
//! would also make them linkable by timing.

use std::time::Duration;

use rand::Rng;

/// No single wait exceeds this, however many attempts came before.
const MAX_DELAY: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    /// Total delivery attempts, the first one included (`-retries`).
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// Delay before the next attempt, or `None` when the attempt that just
    /// failed was the last one allowed. `attempts_before` counts attempts
    /// made before the one that just failed.
    pub fn next_delay<R: Rng>(&self, attempts_before: u32, rng: &mut R) -> Option<Duration> {
        let made = attempts_before.saturating_add(1);
        if made >= self.max_attempts {
            return None;
        }
        let factor = 1u32 << attempts_before.min(20);
        let full = self.base.saturating_mul(factor).min(MAX_DELAY);
        let half = full / 2;
        let spread = (full - half).as_millis() as u64;
        let extra = if spread == 0 {
            0
        } else {
            rng.random_range(0..=spread)
        };
        Some(half + Duration::from_millis(extra))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn it_doubles_the_window_and_stays_inside_it() {
        let p = RetryPolicy {
            base: Duration::from_secs(60),
            max_attempts: 9,
        };
        let mut rng = StdRng::seed_from_u64(7);
        for n in 0..8 {
            let full = Duration::from_secs(60 << n);
            for _ in 0..200 {
                let d = p.next_delay(n, &mut rng).unwrap();
                assert!(d >= full / 2 && d <= full, "attempt {n}: {d:?}");
            }
        }
    }

    #[test]
    fn it_gives_up_after_the_configured_attempts() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            max_attempts: 3,
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert!(p.next_delay(0, &mut rng).is_some());
        assert!(p.next_delay(1, &mut rng).is_some());
        assert!(p.next_delay(2, &mut rng).is_none());
        let once = RetryPolicy {
            base: Duration::from_secs(1),
            max_attempts: 1,
        };
        assert!(once.next_delay(0, &mut rng).is_none());
    }

    #[test]
    fn it_caps_long_waits_and_spreads_them() {
        let p = RetryPolicy {
            base: Duration::from_secs(3600),
            max_attempts: 100,
        };
        let mut rng = StdRng::seed_from_u64(3);
        let delays: Vec<_> = (0..50)
            .map(|_| p.next_delay(30, &mut rng).unwrap())
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| *d <= MAX_DELAY && *d >= MAX_DELAY / 2)
        );
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 40, "jitter spreads retries");
    }
}
