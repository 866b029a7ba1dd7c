//! The connection table: at most `-max-connections` sessions, and when it
//! is full, room for a newcomer is made by shedding the slowest session.
//!
//! Refusing every newcomer once the table is full hands the service to
//! whoever fills it first: a thousand sockets that trickle a byte every few
//! seconds would keep every real client out for as long as they like. So
//! a full table sheds the session that has made the least progress, measured
//! as its average input rate since it connected: bytes received divided by
//! its age, with the age counted as at least [`MIN_AGE`] so a session that
//! has just been greeted is not judged on a few microseconds. Ties go to the
//! older session. A real client sends its EHLO within a round trip of the
//! greeting and finishes its transaction at full speed, so it is never the
//! slowest while tricklers are present; sockets that trickle compete with
//! each other for the slots they hold.
//!
//! The shed session is told `421 4.4.2` by its own task (which watches its
//! slot's token) and closed; its slot is freed at once, so the table never
//! counts more than `-max-connections` live sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Shortest age used when computing a session's rate.
pub const MIN_AGE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct ConnectionTable {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    slots: HashMap<u64, Arc<SlotState>>,
}

/// What the table knows about one live session.
#[derive(Debug)]
struct SlotState {
    id: u64,
    started: Instant,
    bytes: AtomicU64,
    shed: CancellationToken,
}

/// A session's place in the table; leaving it (drop) frees the place.
#[derive(Debug)]
pub struct Slot {
    table: Arc<ConnectionTable>,
    state: Arc<SlotState>,
}

/// The outcome of [`ConnectionTable::admit`].
#[derive(Debug)]
pub struct Admission {
    pub slot: Slot,
    /// True if another session was shed to make room.
    pub shed_another: bool,
}

impl ConnectionTable {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Live sessions.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Gives the newcomer a slot, shedding the slowest session if the table
    /// is full (O(n) scan, only when full).
    pub fn admit(self: &Arc<Self>, now: Instant) -> Admission {
        let mut inner = self.lock();
        let mut shed_another = false;
        if inner.slots.len() >= self.capacity
            && let Some(victim) = slowest(inner.slots.values(), now)
        {
            let victim = inner.slots.remove(&victim).expect("victim is in the table");
            victim.shed.cancel();
            shed_another = true;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let state = Arc::new(SlotState {
            id,
            started: now,
            bytes: AtomicU64::new(0),
            shed: CancellationToken::new(),
        });
        inner.slots.insert(id, state.clone());
        Admission {
            slot: Slot {
                table: self.clone(),
                state,
            },
            shed_another,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent (every
        // mutation is a single insert or remove), so poison is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The id of the session with the lowest rate; the oldest on a tie.
fn slowest<'a>(slots: impl Iterator<Item = &'a Arc<SlotState>>, now: Instant) -> Option<u64> {
    let rate = |s: &SlotState| {
        let age = now.saturating_duration_since(s.started).max(MIN_AGE);
        s.bytes.load(Ordering::Relaxed) as f64 / age.as_secs_f64()
    };
    slots
        .map(|s| (rate(s), s.started, s.id))
        .min_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
        .map(|(_, _, id)| id)
}

impl Slot {
    /// Counts input received, the measure of progress.
    pub fn received(&self, n: usize) {
        self.state.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Fires when a newcomer shed this session.
    pub fn shed(&self) -> &CancellationToken {
        &self.state.shed
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        // A shed slot was removed already (and its id is never reused).
        inner.slots.remove(&self.state.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn it_admits_up_to_capacity_without_shedding() {
        let table = ConnectionTable::new(2);
        let a = table.admit(Instant::now());
        let b = table.admit(Instant::now());
        assert!(!a.shed_another && !b.shed_another);
        assert_eq!(table.len(), 2);
        drop(a);
        assert_eq!(table.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn it_sheds_the_slowest_session_when_full() {
        let table = ConnectionTable::new(3);
        let trickler = table.admit(Instant::now()).slot;
        let busy = table.admit(Instant::now()).slot;
        tokio::time::advance(Duration::from_secs(10)).await;
        let fresh = table.admit(Instant::now()).slot;
        trickler.received(5); // 0.5 B/s over 10 s
        busy.received(50_000);
        fresh.received(20); // 20 B/s: its age counts as MIN_AGE
        let newcomer = table.admit(Instant::now());
        assert!(newcomer.shed_another);
        assert!(trickler.shed().is_cancelled());
        assert!(!busy.shed().is_cancelled() && !fresh.shed().is_cancelled());
        assert_eq!(table.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn it_sheds_the_oldest_of_equally_slow_sessions() {
        let table = ConnectionTable::new(2);
        let old = table.admit(Instant::now()).slot;
        tokio::time::advance(Duration::from_millis(10)).await;
        let young = table.admit(Instant::now()).slot;
        let _newcomer = table.admit(Instant::now());
        assert!(old.shed().is_cancelled());
        assert!(!young.shed().is_cancelled());
        // The shed slot is gone already; dropping it changes nothing.
        drop(old);
        assert_eq!(table.len(), 2);
    }
}
