//! What every mix node shares: its context, the health view of its links,
//! and the custody side of outbound links ([`Forwarder`]).
//!
//! Node policy: decides when a packet may be retried, when custody ends,
//! which peers count as usable. Storage is the spool; links are
//! `mixnet::link`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tracing::{info, warn};

use super::bundle::{Bundle, SLOTS};
use super::frame::AckStatus;
use super::keys::{IdentityKey, KeyRing};
use super::link::{Outgoing, PacketSource};
use super::packet::{NodeId, WirePacket};
use super::peers::{Offer, PeerKeys};
use super::pki::Directory;
use crate::BoxFuture;
use crate::mix::MixPolicy;
use crate::spool::Spool;
use crate::spool::mixnet::PacketSettle;
use crate::stats::Stats;
use crate::time::{Clock, UnixMillis};

/// `nodes.json` as in force now: replaced whole by a reload (SIGHUP),
/// never edited. The network parameters and this node's own entry cannot
/// change without a restart (a reload that would change them is refused),
/// so they are kept apart and read without a lock.
pub struct DirectoryCell {
    params: super::pki::Params,
    own: super::pki::Node,
    current: std::sync::RwLock<Arc<Directory>>,
}

impl DirectoryCell {
    pub fn new(directory: Directory) -> DirectoryCell {
        DirectoryCell {
            params: directory.params().clone(),
            own: directory.own().clone(),
            current: std::sync::RwLock::new(Arc::new(directory)),
        }
    }

    /// The whole directory in force now.
    pub fn get(&self) -> Arc<Directory> {
        self.current.read().unwrap().clone()
    }

    pub fn params(&self) -> &super::pki::Params {
        &self.params
    }

    pub fn own(&self) -> &super::pki::Node {
        &self.own
    }

    /// Whether `id` is listed now (on the hot path: no copy).
    pub fn lists(&self, id: &NodeId) -> bool {
        self.current.read().unwrap().node(id).is_some()
    }

    pub fn node(&self, id: &NodeId) -> Option<super::pki::Node> {
        self.current.read().unwrap().node(id).cloned()
    }

    /// Every node but this one, as listed now.
    pub fn others(&self) -> Vec<super::pki::Node> {
        self.current.read().unwrap().others().cloned().collect()
    }

    pub fn nodes(&self) -> Vec<super::pki::Node> {
        self.current.read().unwrap().nodes().to_vec()
    }

    /// Why `next` cannot replace the directory in force, if it cannot.
    pub fn refuses(&self, next: &Directory) -> Option<String> {
        if next.params() != &self.params {
            return Some(
                "its params differ from those in force; network parameters change only with a restart (of every node, together)".into(),
            );
        }
        if next.own() != &self.own {
            return Some(
                "this node's own entry changed; that needs a restart with matching flags".into(),
            );
        }
        None
    }

    pub fn replace(&self, next: Directory) {
        *self.current.write().unwrap() = Arc::new(next);
    }
}

/// Everything the mixnet policy modules need, shared read-only.
pub struct MixContext {
    pub spool: Spool,
    pub directory: DirectoryCell,
    /// This node's mix keys by epoch.
    pub keys: Arc<KeyRing>,
    /// Signs this node's bundles.
    pub identity: Arc<IdentityKey>,
    /// Peers' bundles, and nodes caught with two faces.
    pub peers: Arc<PeerKeys>,
    /// This node's bundle as last signed: any peer that says HELLO may ask
    /// for it, so it is signed once per rotation, not once per GETKEYS.
    pub own_bundle: Mutex<Option<Bundle>>,
    /// This node delivers mail out of the mixnet (`-exit`).
    pub exit: bool,
    /// Destinations that asked not to receive anonymous mail: dropped at
    /// this exit (counted and logged by it), never delivered.
    pub dest_block: Option<Arc<crate::node::policy::DestBlock>>,
    /// Release times of mail that leaves the mixnet here.
    pub mix: MixPolicy,
    pub stats: Arc<Stats>,
    pub clock: Clock,
    pub health: Arc<Health>,
}

impl MixContext {
    pub fn now(&self) -> UnixMillis {
        (self.clock)()
    }

    pub fn own(&self) -> NodeId {
        self.directory.own().id
    }

    /// When custody of a packet queued now ends.
    pub fn custody_deadline(&self) -> UnixMillis {
        self.now() + self.directory.params().custody_horizon.as_millis() as u64
    }

    /// The epoch by this node's clock.
    pub fn epoch(&self) -> u32 {
        self.directory.params().epoch_at(self.now())
    }

    /// This node's bundle as served now: the previous epoch (grace), the
    /// current one and those made ahead; signed again only when the key
    /// ring has rotated since.
    pub fn own_bundle(&self) -> Bundle {
        let first = self.keys.current().saturating_sub(1);
        let mut cached = self.own_bundle.lock().unwrap();
        if let Some(b) = cached.as_ref().filter(|b| b.first == first) {
            return b.clone();
        }
        let mut keys = [[0u8; 32]; SLOTS];
        for (slot, key) in keys.iter_mut().zip(self.keys.publics_from(first, SLOTS)) {
            *slot = key;
        }
        let bundle = Bundle::sign(
            self.identity.signing_key(),
            &self.directory.params().hash(),
            self.own(),
            first,
            keys,
        );
        *cached = Some(bundle.clone());
        bundle
    }

    /// The mix key of `node` for `epoch`: this node's own, or a peer's
    /// from its verified bundle (never an excluded node's).
    pub fn mix_key(&self, node: &NodeId, epoch: u32) -> Option<x25519_dalek::PublicKey> {
        if *node == self.own() {
            self.keys.get(epoch).map(|k| k.public())
        } else {
            self.peers.key(node, epoch)
        }
    }
}

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

/// Retry pause after a link broke with packets unacknowledged, or a peer
/// said busy: short, with jitter; the custody horizon bounds the total.
fn retry_after(attempts: u32) -> Duration {
    let base = Duration::from_millis(500 << attempts.min(7));
    base.mul_f64(rand::rng().random_range(0.5..1.0))
        .min(Duration::from_secs(60))
}

/// The outbound custody side of links: leases due packets from the spool
/// for a peer and settles them on acknowledgement.
pub struct Forwarder {
    pub ctx: Arc<MixContext>,
    /// How long a sent packet stays reserved for its link.
    pub lease: Duration,
    /// Attempts per packet id (for the retry pause), in memory only.
    attempts: Mutex<HashMap<i64, u32>>,
    /// Per peer: a node whose key that peer reported differently from
    /// ours, to fetch from it and check.
    suspects: Mutex<HashMap<NodeId, NodeId>>,
}

/// A peer clock further off than this is logged at HELLO: keys rotate by
/// the clock, so a large skew makes packets near a boundary unopenable.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

impl Forwarder {
    pub fn new(ctx: Arc<MixContext>, lease: Duration) -> Forwarder {
        Forwarder {
            ctx,
            lease,
            attempts: Mutex::default(),
            suspects: Mutex::default(),
        }
    }

    async fn settle(&self, outcomes: Vec<(i64, PacketSettle)>) {
        if let Err(e) = self.ctx.spool.settle_packets(outcomes).await {
            // The lease expires and the packet is sent again: a duplicate
            // the next hop recognises, never a loss.
            warn!("[MIXNET] cannot record packet acknowledgements: {e}");
        }
    }
}

impl PacketSource for Forwarder {
    fn take(&self, peer: NodeId, max: usize) -> BoxFuture<'_, (Vec<Outgoing>, Option<Duration>)> {
        Box::pin(async move {
            let batch = match self.ctx.spool.lease_packets(peer.0, max, self.lease).await {
                Ok(b) => b,
                Err(e) => {
                    warn!("[MIXNET] cannot lease packets: {e}");
                    return (Vec::new(), Some(Duration::from_secs(1)));
                }
            };
            let now = self.ctx.now();
            let hint = batch
                .next_due
                .map(|due| Duration::from_millis(due.saturating_sub(now).max(1)));
            let mut out = Vec::with_capacity(batch.packets.len());
            let mut broken = Vec::new();
            for p in batch.packets {
                match WirePacket::from_slice(&p.bytes) {
                    Ok(packet) => {
                        self.attempts.lock().unwrap().insert(p.id, p.attempts);
                        out.push(Outgoing {
                            id: p.id,
                            epoch: p.epoch,
                            packet,
                        });
                    }
                    Err(_) => broken.push((p.id, PacketSettle::Done)),
                }
            }
            if !broken.is_empty() {
                warn!(
                    "[MIXNET] dropped {} stored packet(s) of the wrong size",
                    broken.len()
                );
                self.settle(broken).await;
            }
            Stats::add(&self.ctx.stats.mix_packets_out, out.len() as u64);
            (out, hint)
        })
    }

    fn acked(&self, _peer: NodeId, id: i64, status: AckStatus) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let attempts = self.attempts.lock().unwrap().remove(&id).unwrap_or(0);
            let settle = match status {
                AckStatus::Busy => PacketSettle::Retry {
                    at: self.ctx.now() + retry_after(attempts).as_millis() as u64,
                },
                AckStatus::Rejected => {
                    Stats::add(&self.ctx.stats.mix_rejected_by_peer, 1);
                    PacketSettle::Done
                }
                AckStatus::UnknownEpoch => {
                    Stats::add(&self.ctx.stats.mix_rejected_by_peer, 1);
                    PacketSettle::Done
                }
                AckStatus::Stored | AckStatus::Duplicate => PacketSettle::Done,
            };
            self.settle(vec![(id, settle)]).await;
        })
    }

    fn unacked(&self, _peer: NodeId, ids: Vec<i64>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let now = self.ctx.now();
            let outcomes = {
                let mut attempts = self.attempts.lock().unwrap();
                ids.into_iter()
                    .map(|id| {
                        let n = attempts.remove(&id).unwrap_or(0);
                        let at = now + retry_after(n).as_millis() as u64;
                        (id, PacketSettle::Retry { at })
                    })
                    .collect()
            };
            self.settle(outcomes).await;
        })
    }

    fn link_state(&self, peer: NodeId, up: bool) {
        if up != self.ctx.health.is_up(&peer) {
            let name = self.name(&peer);
            info!("[MIXNET] link to {name} {}", if up { "up" } else { "down" });
        }
        self.ctx.health.set(peer, up);
    }

    fn events(&self) -> watch::Receiver<u64> {
        self.ctx.spool.packet_events()
    }

    fn hello(&self, peer: NodeId, clock_secs: u64) {
        let own = self.ctx.now() / 1000;
        if let Some(skew) = super::peers::clock_skew(own, clock_secs, MAX_CLOCK_SKEW) {
            let name = self.name(&peer);
            super::peers::log_skew(&name, skew);
        }
    }

    fn keys_wanted(&self, peer: NodeId) -> Vec<NodeId> {
        let suspect = self.suspects.lock().unwrap().remove(&peer);
        self.ctx.peers.wanted(peer, self.ctx.epoch(), suspect)
    }

    fn keys(&self, peer: NodeId, subject: NodeId, bundle: Option<Bundle>) {
        let Some(bundle) = bundle.filter(|b| b.node == subject) else {
            return;
        };
        match self
            .ctx
            .peers
            .offer(&self.ctx.directory.get(), peer, bundle)
        {
            Offer::Accepted => {
                // Routes through `subject` may be possible now.
                self.ctx.health.poke();
            }
            Offer::TwoFaces { .. } => {
                Stats::add(&self.ctx.stats.mix_two_faces, 1);
                self.ctx.health.poke();
            }
            Offer::Known | Offer::Invalid => {}
        }
    }

    fn probe(&self, peer: NodeId) -> Option<(NodeId, u32)> {
        self.ctx
            .peers
            .next_probe(&self.ctx.directory.get(), peer)
            .map(|subject| (subject, self.ctx.epoch()))
    }

    fn pong(&self, peer: NodeId, subject: NodeId, epoch: u32, key: [u8; 32]) {
        if self.ctx.peers.compare(&subject, epoch, key) {
            self.suspects.lock().unwrap().insert(peer, subject);
        }
    }
}

impl Forwarder {
    fn name(&self, id: &NodeId) -> String {
        self.ctx
            .directory
            .node(id)
            .map(|n| n.short_name.clone())
            .unwrap_or_default()
    }
}

/// Up to `n` distinct nodes from `pool`, in random order, never two of
/// one operator family and none of the families of `beside` (nodes
/// already on the route). Uniform: every node of the pool is as likely as
/// any other; nothing is weighted.
pub fn pick_nodes<R: Rng + ?Sized>(
    directory: &Directory,
    pool: &[NodeId],
    n: usize,
    beside: &[NodeId],
    rng: &mut R,
) -> Option<Vec<NodeId>> {
    use rand::seq::SliceRandom;
    let family = |id: &NodeId| directory.node(id).and_then(|node| node.family.clone());
    let mut families: HashSet<String> = beside.iter().filter_map(family).collect();
    let mut candidates: Vec<NodeId> = pool
        .iter()
        .copied()
        .filter(|id| !beside.contains(id))
        .collect();
    candidates.sort();
    candidates.dedup();
    candidates.shuffle(rng);
    let mut out = Vec::with_capacity(n);
    for id in candidates {
        if out.len() == n {
            break;
        }
        if let Some(f) = family(&id)
            && !families.insert(f)
        {
            continue;
        }
        out.push(id);
    }
    (out.len() == n).then_some(out)
}

/// A per-hop delay as the sender draws it: exponential with mean `mean`,
/// truncated at `max` by drawing again (so the distribution above the cap
/// is not piled up at the cap, which would be a recognisable spike).
pub fn hop_delay<R: Rng + ?Sized>(mean: Duration, max: Duration, rng: &mut R) -> Duration {
    if mean.is_zero() {
        return Duration::ZERO;
    }
    loop {
        let u: f64 = 1.0 - rng.random::<f64>();
        let d = mean.mul_f64(-u.ln());
        if d <= max {
            return d;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;

    use super::*;

    #[test]
    fn hop_delays_are_exponential_below_the_cap() {
        let mut rng = StdRng::seed_from_u64(3);
        let mean = Duration::from_millis(100);
        let max = mean * 12;
        let xs: Vec<f64> = (0..20_000)
            .map(|_| hop_delay(mean, max, &mut rng).as_secs_f64())
            .collect();
        assert!(xs.iter().all(|&x| x <= max.as_secs_f64()));
        // Exp(0.1 s) conditioned on ≤ 1.2 s.
        let cap = 1.0 - (-12.0f64).exp();
        let d = crate::testkit::ks_statistic(xs.clone(), |x| (1.0 - (-x / 0.1).exp()) / cap);
        assert!(d < crate::testkit::ks_critical(xs.len()), "KS D = {d}");
    }

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
    fn families() -> Directory {
        use crate::address::OnionName;
        let family = |i: u8| match i {
            2 | 3 => Some("a"),
            4 | 5 => Some("b"),
            _ => None,
        };
        let nodes: Vec<_> = (1..=6u8)
            .map(|i| {
                let identity = ed25519_dalek::SigningKey::from_bytes(&[i; 32]);
                let mut n = serde_json::json!({
                    "name": format!("n{i}"),
                    "onion": OnionName::from_seed(i).to_string(),
                    "port": 9999,
                    "identity": super::super::pki::encode_key(identity.verifying_key().as_bytes()),
                    "exit": true,
                });
                if let Some(f) = family(i) {
                    n["family"] = serde_json::json!(f);
                }
                n
            })
            .collect();
        let doc = serde_json::json!({ "nodes": nodes });
        Directory::parse(doc.to_string().as_bytes(), &OnionName::from_seed(1)).unwrap()
    }

    #[test]
    fn routes_never_hold_two_nodes_of_one_family_and_pick_uniformly() {
        let dir = families();
        let pool: Vec<NodeId> = dir.others().map(|n| n.id).collect();
        let fam = |id: &NodeId| dir.node(id).unwrap().family.clone();
        let mut rng = StdRng::seed_from_u64(5);
        let mut seen: HashMap<NodeId, usize> = HashMap::new();
        for _ in 0..3_000 {
            let route = pick_nodes(&dir, &pool, 3, &[], &mut rng).unwrap();
            let named: Vec<String> = route.iter().filter_map(fam).collect();
            let distinct: HashSet<&String> = named.iter().collect();
            assert_eq!(distinct.len(), named.len(), "two of one family");
            for id in route {
                *seen.entry(id).or_default() += 1;
            }
        }
        // Three of a family-free node, "a" and "b": every route holds n6,
        // and one of each family, each member half the time.
        let n6 = pool[4];
        assert_eq!(seen[&n6], 3_000);
        for id in &pool[..4] {
            let share = seen[id] as f64 / 3_000.0;
            assert!((share - 0.5).abs() < 0.05, "{share}");
        }
        // Four nodes of distinct families cannot be found here.
        assert_eq!(pick_nodes(&dir, &pool, 4, &[], &mut rng), None);
        // Nor a node of the family of one already on the route.
        let beside = pick_nodes(&dir, &pool, 2, &[pool[0]], &mut rng).unwrap();
        assert!(beside.iter().all(|id| fam(id) != fam(&pool[0])));
    }

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
