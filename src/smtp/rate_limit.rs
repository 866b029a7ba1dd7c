//! Sessions per client identity per window, with `governor`.
//!
//! The quota is a burst of `limit` sessions that refills at `limit` per
//! `window` (GCRA), so a client gets `limit` sessions at once and then one
//! more every `window / limit`, matching "N per minute" as operators read it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// Most identities holding refunded sessions at once.
const MAX_CREDIT_KEYS: usize = 4096;

/// How often (in checks) idle keys are dropped, so a stream of distinct
/// circuits cannot grow the table without bound.
const RETAIN_EVERY: u64 = 1024;

type Keyed<C> =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Generic over the clock so tests can move time by hand.
pub struct SessionRateLimiter<C: Clock = DefaultClock> {
    limiter: Keyed<C>,
    checks: AtomicU64,
    /// Sessions given back by [`SessionRateLimiter::refund`], spent before
    /// the quota; at most `limit` per identity.
    credits: DashMap<IpAddr, u32>,
    limit: u32,
}

impl SessionRateLimiter<DefaultClock> {
    pub fn new(limit: NonZeroU32, window: Duration) -> Self {
        Self::with_clock(limit, window, DefaultClock::default())
    }
}

impl<C: Clock> SessionRateLimiter<C> {
    pub fn with_clock(limit: NonZeroU32, window: Duration, clock: C) -> Self {
        let period = (window / limit.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("period is non-zero")
            .allow_burst(limit);
        Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock),
            checks: AtomicU64::new(0),
            credits: DashMap::new(),
            limit: limit.get(),
        }
    }

    /// True if the client may open another session now.
    pub fn admit(&self, client: IpAddr) -> bool {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            self.limiter.retain_recent();
        }
        if let Some(mut credit) = self.credits.get_mut(&client)
            && *credit > 0
        {
            *credit -= 1;
            return true;
        }
        self.limiter.check_key(&client).is_ok()
    }

    /// Gives back the session `client` was charged for: it carried this
    /// node's own traffic (cover coming back through Tor, which without
    /// `-proxy-protocol` shares 127.0.0.1 with every client). The table of
    /// credits is bounded: past [`MAX_CREDIT_KEYS`] identities it starts
    /// afresh, which at worst charges a later cover session.
    pub fn refund(&self, client: IpAddr) {
        if self.credits.len() >= MAX_CREDIT_KEYS && !self.credits.contains_key(&client) {
            self.credits.clear();
        }
        let mut credit = self.credits.entry(client).or_insert(0);
        *credit = (*credit + 1).min(self.limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_admits_the_limit_then_refuses_per_client() {
        let l = SessionRateLimiter::new(NonZeroU32::new(3).unwrap(), Duration::from_secs(3600));
        let a: IpAddr = "fc00:dead:beef:4dad::1".parse().unwrap();
        let b: IpAddr = "fc00:dead:beef:4dad::2".parse().unwrap();
        assert!((0..3).all(|_| l.admit(a)));
        assert!(!l.admit(a));
        assert!(l.admit(b), "another circuit has its own budget");
    }

    #[test]
    fn it_refills_one_session_per_window_share() {
        let clock = governor::clock::FakeRelativeClock::default();
        let l = SessionRateLimiter::with_clock(
            NonZeroU32::new(10).unwrap(),
            Duration::from_secs(60),
            clock.clone(),
        );
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        assert!((0..10).all(|_| l.admit(a)));
        assert!(!l.admit(a));
        clock.advance(Duration::from_secs(5));
        assert!(!l.admit(a), "a refill takes window/limit = 6s");
        clock.advance(Duration::from_secs(1));
        assert!(l.admit(a));
        assert!(!l.admit(a));
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            (0..20).filter(|_| l.admit(a)).count(),
            10,
            "burst never exceeds the limit"
        );
    }
}
