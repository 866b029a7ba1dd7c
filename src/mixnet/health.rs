//! The health view of the network: which peers' links are up and whose
//! loops come back. Path selection reads it; links and packet cover write it.
//!
//! Beside the judgement (the newest [`LOOP_WINDOW`] outcomes, for path
//! selection), every outcome also goes into the pinger's day
//! (`loop_day`): hour buckets per node, waiting here only until the
//! maintenance round saves them to the spool ([`Health::take_loop_hours`]),
//! where `/metrics` and `pluto2 queue` read the last day.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::watch;

use crate::loop_day::{HourCounts, LoopDay, Outcome};
use crate::time::UnixMillis;
use crate::wire::packet::NodeId;

/// Loop outcomes kept per node's view of the network (the newest count).
pub const LOOP_WINDOW: usize = 64;
/// Fewer loop samples than this through a node: its link state decides.
pub const LOOP_MIN_SAMPLES: usize = 4;
/// A node whose loops come back less often than this is not used.
pub const LOOP_THRESHOLD: f64 = 0.5;

/// Which peers may carry traffic now: their link is up and their loops
/// come back. Path selection reads it; links and loop cover write it.
///
/// A lost loop says only that some node on its route failed. The nodes
/// to blame are found greedily: the node whose loops fail most (with
/// enough samples) is set aside if below [`LOOP_THRESHOLD`], then every
/// other node is judged only by loops that avoided the nodes set aside,
/// and so on. An honest node that shared routes with a black hole is thus
/// cleared, and the black hole is not.
#[derive(Default)]
pub struct Health {
    up: Mutex<HashMap<NodeId, bool>>,
    loops: Mutex<Loops>,
    changed: Option<watch::Sender<u64>>,
}

#[derive(Default)]
struct Loops {
    outcomes: VecDeque<(Vec<NodeId>, bool)>,
    /// Loops on their way.
    pending: HashMap<[u8; 16], Pending>,
    failing: HashSet<NodeId>,
    /// Outcomes not saved to the spool yet, by node and hour (bounded:
    /// hours that left the day are forgotten even if never saved).
    unsaved: LoopDay<NodeId>,
}

/// A loop on its way.
struct Pending {
    route: Vec<NodeId>,
    sent_at: UnixMillis,
    /// When it counts as lost.
    lost_at: UnixMillis,
}

impl Loops {
    fn judge(&mut self) -> bool {
        let mut out: HashSet<NodeId> = HashSet::new();
        loop {
            let mut tally: HashMap<NodeId, (usize, usize)> = HashMap::new();
            for (route, ok) in &self.outcomes {
                if route.iter().any(|n| out.contains(n)) {
                    continue;
                }
                for n in route {
                    let t = tally.entry(*n).or_default();
                    t.0 += 1;
                    t.1 += *ok as usize;
                }
            }
            let worst = tally
                .into_iter()
                .filter(|(_, (n, _))| *n >= LOOP_MIN_SAMPLES)
                .map(|(id, (n, ok))| (id, ok as f64 / n as f64))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            match worst {
                Some((id, rate)) if rate < LOOP_THRESHOLD => {
                    out.insert(id);
                }
                _ => break,
            }
        }
        let changed = out != self.failing;
        self.failing = out;
        changed
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            up: Mutex::default(),
            loops: Mutex::default(),
            changed: Some(watch::channel(0).0),
        }
    }

    /// Wakes whoever waits on [`Health::events`] (new keys arrived, so
    /// routes may be possible now).
    pub fn poke(&self) {
        self.notify();
    }

    fn notify(&self) {
        if let Some(tx) = &self.changed {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub fn set(&self, peer: NodeId, up: bool) {
        let before = self.up.lock().unwrap().insert(peer, up);
        if before != Some(up) {
            self.notify();
        }
    }

    pub fn is_up(&self, peer: &NodeId) -> bool {
        self.up.lock().unwrap().get(peer).copied().unwrap_or(false)
    }

    /// Peers whose link is up now, loop statistics aside (loops probe
    /// them all, so a node set aside is measured again and can return).
    pub fn linked(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .up
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, up)| up.then_some(*id))
            .collect();
        v.sort();
        v
    }

    /// Peers a route may use: link up and not failing their loops.
    pub fn usable(&self) -> Vec<NodeId> {
        let failing = self.loops.lock().unwrap().failing.clone();
        let mut v = self.linked();
        v.retain(|id| !failing.contains(id));
        v
    }

    /// Peers set aside by their loop statistics.
    pub fn failing(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.loops.lock().unwrap().failing.iter().copied().collect();
        v.sort();
        v
    }

    /// A loop left at `sent_at` on `route` (the mix nodes, not this
    /// one); it counts as lost unless it is back by `lost_at`.
    pub fn loop_sent(
        &self,
        id: [u8; 16],
        route: Vec<NodeId>,
        sent_at: UnixMillis,
        lost_at: UnixMillis,
    ) {
        self.loops.lock().unwrap().pending.insert(
            id,
            Pending {
                route,
                sent_at,
                lost_at,
            },
        );
    }

    /// A loop came back at `now`; false if it was not ours or already
    /// counted.
    pub fn loop_returned(&self, id: &[u8; 16], now: UnixMillis) -> bool {
        let changed = {
            let mut loops = self.loops.lock().unwrap();
            let Some(p) = loops.pending.remove(id) else {
                return false;
            };
            let latency_ms = now.saturating_sub(p.sent_at);
            loops
                .unsaved
                .record(&p.route, now, Outcome::Back { latency_ms });
            Self::record(&mut loops, p.route, true)
        };
        if changed {
            self.notify();
        }
        true
    }

    /// Loops on their way (tests stand in for the network with it).
    #[cfg(test)]
    pub fn pending_loops(&self) -> Vec<[u8; 16]> {
        self.loops.lock().unwrap().pending.keys().copied().collect()
    }

    /// Counts the loops overdue at `now` as lost; returns how many.
    pub fn expire_loops(&self, now: UnixMillis) -> usize {
        let (lost, changed) = {
            let mut loops = self.loops.lock().unwrap();
            let overdue: Vec<[u8; 16]> = loops
                .pending
                .iter()
                .filter(|(_, p)| p.lost_at <= now)
                .map(|(id, _)| *id)
                .collect();
            let mut changed = false;
            for id in &overdue {
                if let Some(p) = loops.pending.remove(id) {
                    loops.unsaved.record(&p.route, now, Outcome::Lost);
                    changed |= Self::record(&mut loops, p.route, false);
                }
            }
            (overdue.len(), changed)
        };
        if changed {
            self.notify();
        }
        lost
    }

    /// The loop outcomes not saved yet, by node and hour (emptied): the
    /// maintenance round adds them to the spool's day.
    pub fn take_loop_hours(&self) -> Vec<(NodeId, u64, HourCounts)> {
        self.loops.lock().unwrap().unsaved.take()
    }

    /// Puts back outcomes taken but not saved (the spool refused), to
    /// be saved with the next ones.
    pub fn keep_loop_hours(&self, hours: Vec<(NodeId, u64, HourCounts)>) {
        let unsaved = &mut self.loops.lock().unwrap().unsaved;
        for (node, hour, counts) in hours {
            unsaved.add(node, hour, &counts);
        }
    }

    fn record(loops: &mut Loops, route: Vec<NodeId>, ok: bool) -> bool {
        loops.outcomes.push_back((route, ok));
        while loops.outcomes.len() > LOOP_WINDOW {
            loops.outcomes.pop_front();
        }
        loops.judge()
    }

    /// Changes whenever a link comes up or goes down, or a node is set
    /// aside or taken back by its loops.
    pub fn events(&self) -> Option<watch::Receiver<u64>> {
        self.changed.as_ref().map(|tx| tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;

    use super::*;

    #[test]
    fn health_lists_only_peers_whose_link_is_up() {
        let h = Health::new();
        let mut events = h.events().unwrap();
        h.set(NodeId([1; 32]), true);
        h.set(NodeId([2; 32]), false);
        assert!(events.has_changed().unwrap());
        events.borrow_and_update();
        h.set(NodeId([1; 32]), true);
        assert!(!events.has_changed().unwrap(), "no change, no event");
        assert_eq!(h.usable(), vec![NodeId([1; 32])]);
    }

    /// Five nodes 1..=5, loops of three; node 3 drops everything.
    #[test]
    fn loop_statistics_blame_the_black_hole_and_clear_its_neighbours() {
        let h = Health::new();
        let ids: Vec<NodeId> = (1..=5u8).map(|i| NodeId([i; 32])).collect();
        for id in &ids {
            h.set(*id, true);
        }
        let mut rng = StdRng::seed_from_u64(7);
        let mut events = h.events().unwrap();
        events.borrow_and_update();
        for n in 0..LOOP_WINDOW as u64 {
            let mut route = ids.clone();
            route.shuffle(&mut rng);
            route.truncate(3);
            let ok = !route.contains(&ids[2]);
            let id = [n as u8; 16];
            h.loop_sent(id, route, 0, 100);
            if ok {
                assert!(h.loop_returned(&id, 50));
            }
        }
        assert_eq!(h.expire_loops(99), 0, "not yet overdue");
        assert!(h.expire_loops(100) > 0);
        assert_eq!(h.failing(), vec![ids[2]]);
        assert!(!h.usable().contains(&ids[2]));
        assert_eq!(h.usable().len(), 4);
        assert!(events.has_changed().unwrap());
        // Back to health: its loops return again and push the losses out.
        for n in 0..LOOP_WINDOW as u64 {
            let id = [n as u8; 16];
            h.loop_sent(id, vec![ids[2], ids[0], ids[1]], 100, 200);
            assert!(h.loop_returned(&id, 150));
        }
        assert!(h.failing().is_empty());
        assert!(!h.loop_returned(&[0; 16], 150), "counted once");
    }

    /// Six nodes: 1 (this one), 2 and 3 of family "a", 4 and 5 of "b", 6
    /// of none.
    #[test]
    fn too_few_loops_leave_the_decision_to_the_link() {
        let h = Health::new();
        h.set(NodeId([1; 32]), true);
        for n in 0..(LOOP_MIN_SAMPLES as u8 - 1) {
            h.loop_sent([n; 16], vec![NodeId([1; 32])], 0, 10);
        }
        h.expire_loops(10);
        assert_eq!(h.usable(), vec![NodeId([1; 32])]);
    }

    /// Every outcome also goes to the pinger's day, per node on its
    /// route and by the hour it became known, with the loop's latency;
    /// taken once, and put back when the spool could not take it.
    #[test]
    fn loop_outcomes_wait_by_node_and_hour_until_saved() {
        let hour = crate::loop_day::HOUR_MS;
        let (a, b, c) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        let h = Health::new();
        h.loop_sent([1; 16], vec![a, b], 10 * hour, 10 * hour + 500);
        h.loop_sent([2; 16], vec![a, c], 10 * hour, 10 * hour + 500);
        h.loop_sent([3; 16], vec![b, c], 10 * hour + 100, 11 * hour + 5);
        assert!(h.loop_returned(&[1; 16], 10 * hour + 400));
        assert_eq!(h.expire_loops(10 * hour + 500), 1);
        assert!(h.loop_returned(&[3; 16], 11 * hour + 1));
        assert!(!h.loop_returned(&[2; 16], 11 * hour + 2), "too late");
        let hours = h.take_loop_hours();
        let got: Vec<(NodeId, u64, u64, u64, Option<f64>)> = hours
            .iter()
            .map(|(n, hr, c)| (*n, *hr, c.back, c.lost, c.latency.median_ms()))
            .collect();
        let near = |x: Option<f64>, want: f64| x.is_some_and(|x| (x / want - 1.0).abs() < 0.05);
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!((got[0].0, got[0].1, got[0].2, got[0].3), (a, 10, 1, 1));
        assert!(near(got[0].4, 400.0), "{got:?}");
        assert_eq!((got[1].0, got[1].1, got[1].2, got[1].3), (b, 10, 1, 0));
        assert_eq!((got[2].0, got[2].1, got[2].2, got[2].3), (b, 11, 1, 0));
        assert!(near(got[2].4, 3_600_000.0 - 100.0 + 1.0), "{got:?}");
        assert_eq!((got[3].0, got[3].1, got[3].2, got[3].3), (c, 10, 0, 1));
        assert_eq!(got[3].4, None);
        assert_eq!((got[4].0, got[4].1, got[4].2, got[4].3), (c, 11, 1, 0));
        assert!(h.take_loop_hours().is_empty(), "taken once");
        h.keep_loop_hours(hours.clone());
        assert_eq!(h.take_loop_hours(), hours, "put back whole");
    }
}
