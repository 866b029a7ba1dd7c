//! One byte budget for the message bodies all sessions hold in memory.
//!
//! A body is kept in RAM from DATA until the spool has committed it. Without
//! a bound, every session may hold a whole `-max-message-size` body, so 300
//! clients that stop just before the final dot pin 3 GB. The rule here:
//!
//! * each session holds up to [`SESSION_ALLOWANCE`] of body without asking,
//!   so ordinary mail (and all cover traffic) never touches the shared pool
//!   and can always be accepted;
//! * beyond that a session draws from one pool of `-data-memory` bytes for
//!   the whole daemon, in the steps its buffer grows;
//! * when the pool cannot cover the next step the transaction is refused:
//!   the session frees its body at once, reads the rest of DATA without
//!   keeping it and answers `452 4.3.1` after the terminator.
//!
//! So the bodies of all sessions together never exceed
//! `-max-connections × SESSION_ALLOWANCE + -data-memory`. The alternative,
//! spilling large bodies to a file in the data dir, bounds memory without
//! refusing anyone, but adds a second copy on disk (one more fsync'd write,
//! and plaintext mail outside SQLite's `secure_delete`) for the rare large
//! message; a temporary refusal is what a full Postfix queue answers too,
//! and the client retries later.
//!
//! The count is of allocated capacity, not of bytes received: that is what
//! the allocator really holds, so the bound is a bound on memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Body bytes a session may hold without drawing from the shared pool.
/// Most mail is smaller; a cover message is a few KiB before padding.
pub const SESSION_ALLOWANCE: usize = 64 * 1024;

/// The daemon-wide pool; shared by every session through an `Arc`.
#[derive(Debug)]
pub struct MemoryBudget {
    total: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes currently drawn by all sessions.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&after| after <= self.total)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One session's share of the pool; given back when dropped, so a session
/// that ends in any way (error, timeout, shed) cannot leak budget.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    held: usize,
}

impl Reservation {
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self { budget, held: 0 }
    }

    /// Matches the reservation to a session now holding `buffered` body
    /// bytes: draws what is needed above the allowance, or gives back what
    /// is no longer needed. False (holding nothing) if the pool cannot
    /// cover it; the caller must then drop the body.
    pub fn cover(&mut self, buffered: usize) -> bool {
        let needed = buffered.saturating_sub(SESSION_ALLOWANCE);
        if needed > self.held {
            if !self.budget.try_take(needed - self.held) {
                self.release();
                return false;
            }
        } else {
            self.budget.give_back(self.held - needed);
        }
        self.held = needed;
        true
    }

    pub fn release(&mut self) {
        self.budget.give_back(self.held);
        self.held = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_lets_a_session_hold_its_allowance_without_the_pool() {
        let budget = MemoryBudget::new(0);
        let mut r = Reservation::new(budget.clone());
        assert!(r.cover(SESSION_ALLOWANCE));
        assert_eq!(budget.used(), 0);
        assert!(!r.cover(SESSION_ALLOWANCE + 1));
    }

    #[test]
    fn it_refuses_the_session_that_would_overdraw_the_pool() {
        let budget = MemoryBudget::new(1000);
        let mut a = Reservation::new(budget.clone());
        let mut b = Reservation::new(budget.clone());
        assert!(a.cover(SESSION_ALLOWANCE + 600));
        assert!(!b.cover(SESSION_ALLOWANCE + 600));
        // The refused session holds nothing, the other keeps its share.
        assert_eq!(budget.used(), 600);
        assert!(b.cover(SESSION_ALLOWANCE + 400));
        assert_eq!(budget.used(), 1000);
    }

    #[test]
    fn it_gives_the_budget_back_when_a_body_shrinks_or_a_session_ends() {
        let budget = MemoryBudget::new(1000);
        let mut a = Reservation::new(budget.clone());
        assert!(a.cover(SESSION_ALLOWANCE + 800));
        assert!(a.cover(SESSION_ALLOWANCE + 100));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 0);
    }
}
