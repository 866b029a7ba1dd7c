//! The health view of the network: which peers' links are up and whose
//! loops come back. Path selection reads it; links and packet cover write it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::watch;

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
    /// Loops on their way: id → (route, when they count as lost).
    pending: HashMap<[u8; 16], (Vec<NodeId>, UnixMillis)>,
    failing: HashSet<NodeId>,
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

    /// A loop left on `route` (the mix nodes, not this one); it counts
    /// as lost unless it is back by `lost_at`.
    pub fn loop_sent(&self, id: [u8; 16], route: Vec<NodeId>, lost_at: UnixMillis) {
        self.loops
            .lock()
            .unwrap()
            .pending
            .insert(id, (route, lost_at));
    }

    /// A loop came back; false if it was not ours or already counted.
    pub fn loop_returned(&self, id: &[u8; 16]) -> bool {
        let changed = {
            let mut loops = self.loops.lock().unwrap();
            let Some((route, _)) = loops.pending.remove(id) else {
                return false;
            };
            Self::record(&mut loops, route, true)
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
                .filter(|(_, (_, at))| *at <= now)
                .map(|(id, _)| *id)
                .collect();
            let mut changed = false;
            for id in &overdue {
                if let Some((route, _)) = loops.pending.remove(id) {
                    changed |= Self::record(&mut loops, route, false);
                }
            }
            (overdue.len(), changed)
        };
        if changed {
            self.notify();
        }
        lost
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
            h.loop_sent(id, route, 100);
            if ok {
                assert!(h.loop_returned(&id));
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
            h.loop_sent(id, vec![ids[2], ids[0], ids[1]], 200);
            assert!(h.loop_returned(&id));
        }
        assert!(h.failing().is_empty());
        assert!(!h.loop_returned(&[0; 16]), "counted once");
    }

    /// Six nodes: 1 (this one), 2 and 3 of family "a", 4 and 5 of "b", 6
    /// of none.
    #[test]
    fn too_few_loops_leave_the_decision_to_the_link() {
        let h = Health::new();
        h.set(NodeId([1; 32]), true);
        for n in 0..(LOOP_MIN_SAMPLES as u8 - 1) {
            h.loop_sent([n; 16], vec![NodeId([1; 32])], 10);
        }
        h.expire_loops(10);
        assert_eq!(h.usable(), vec![NodeId([1; 32])]);
    }
}
