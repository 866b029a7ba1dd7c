//! What every mixnet policy module shares: the directory in force and
//! the node's context (spool, keys, peers' keys, health, clock).
//!
//! Node policy: read-only state handed to the forwarder, the hop, the
//! sender and packet cover. Storage is the spool; links are `link`.

use std::sync::{Arc, Mutex};

use super::health::Health;
use super::keys::{IdentityKey, KeyRing};
use super::peers::PeerKeys;
use crate::node::intake::Intake;
use crate::spool::Spool;
use crate::stats::Stats;
use crate::time::{Clock, UnixMillis};
use crate::wire::bundle::{Bundle, SLOTS};
use crate::wire::packet::NodeId;
use crate::wire::pki::Directory;

/// `nodes.json` as in force now: replaced whole by a reload (SIGHUP),
/// never edited. The network parameters and this node's own entry cannot
/// change without a restart (a reload that would change them is refused),
/// so they are kept apart and read without a lock.
pub struct DirectoryCell {
    params: crate::wire::pki::Params,
    own: crate::wire::pki::Node,
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

    pub fn params(&self) -> &crate::wire::pki::Params {
        &self.params
    }

    pub fn own(&self) -> &crate::wire::pki::Node {
        &self.own
    }

    /// Whether `id` is listed now (on the hot path: no copy).
    pub fn lists(&self, id: &NodeId) -> bool {
        self.current.read().unwrap().node(id).is_some()
    }

    /// The identity key pinned for `id` now, if it is listed: what a link
    /// peer claiming to be `id` must prove it holds.
    pub fn identity_of(&self, id: &NodeId) -> Option<ed25519_dalek::VerifyingKey> {
        self.current.read().unwrap().node(id).map(|n| n.identity)
    }

    pub fn node(&self, id: &NodeId) -> Option<crate::wire::pki::Node> {
        self.current.read().unwrap().node(id).cloned()
    }

    /// The short name `id` is listed under now, for log lines (which name
    /// nodes by it, never by onion); empty if it is not listed.
    pub fn short_name(&self, id: &NodeId) -> String {
        self.current
            .read()
            .unwrap()
            .node(id)
            .map(|n| n.short_name.clone())
            .unwrap_or_default()
    }

    /// Every node but this one, as listed now.
    pub fn others(&self) -> Vec<crate::wire::pki::Node> {
        self.current.read().unwrap().others().cloned().collect()
    }

    pub fn nodes(&self) -> Vec<crate::wire::pki::Node> {
        self.current.read().unwrap().nodes().to_vec()
    }

    /// Why `next` cannot replace the directory in force, if it cannot.
    pub fn refuses(&self, next: &Directory) -> Option<ReplaceRefusal> {
        if next.params() != &self.params {
            return Some(ReplaceRefusal::Params);
        }
        if next.own() != &self.own {
            return Some(ReplaceRefusal::OwnEntry);
        }
        None
    }

    pub fn replace(&self, next: Directory) {
        *self.current.write().unwrap() = Arc::new(next);
    }
}

/// Why a running node does not take a new `nodes.json` (SIGHUP): what
/// only a restart may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplaceRefusal {
    #[error(
        "its params differ from those in force; network parameters change only with a restart (of every node, together)"
    )]
    Params,
    #[error("this node's own entry changed; that needs a restart with matching flags")]
    OwnEntry,
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
    /// Where mail completed at this exit enters the spool: the same
    /// intake as SMTP mail, so the same rules hold for both.
    pub intake: Arc<Intake>,
    pub stats: Arc<Stats>,
    pub clock: Clock,
    pub health: Arc<Health>,
    /// In client mode (`-client`): this process is no node. Its directory
    /// reads `nodes.json` as its gateway's position (`own()` is the
    /// gateway, so routes' other hops are chosen among the others), its
    /// routes start at the gateway, and its replies wait there in its
    /// mailbox.
    pub client: Option<ClientSide>,
    /// A client's: how far its gateway's clock is ahead of its own (ms),
    /// when they disagree by more than `forwarder::MAX_CLOCK_SKEW`; else 0.
    /// A node keeps 0.
    pub clock_offset_ms: std::sync::atomic::AtomicI64,
}

/// What a client is at its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSide {
    pub gateway: NodeId,
    /// Its key at that gateway, which names its mailbox there.
    pub mailbox: [u8; 32],
}

/// Which part a process plays in the mixnet: a listed node, delivering
/// mail out of it (`-exit`) or not, or a client behind its gateway
/// (never an exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixRole {
    Node { exit: bool },
    Client(ClientSide),
}

/// The daemon's parts a mixnet context is built on, the same for a node
/// and a client.
pub struct Services {
    pub spool: Spool,
    pub intake: Arc<Intake>,
    pub stats: Arc<Stats>,
    pub clock: Clock,
}

impl MixContext {
    /// A node's or a client's context, from the parts in which they
    /// differ: their `nodes.json` view, their mix keys (a client has
    /// none), their identity, the peers' keys they know, and their role.
    /// Everything else starts alike: no bundle signed yet, every node's
    /// health unknown, no clock offset.
    pub fn new(
        services: Services,
        directory: Directory,
        keys: KeyRing,
        identity: IdentityKey,
        peers: PeerKeys,
        role: MixRole,
    ) -> MixContext {
        let Services {
            spool,
            intake,
            stats,
            clock,
        } = services;
        let (exit, client) = match role {
            MixRole::Node { exit } => (exit, None),
            MixRole::Client(side) => (false, Some(side)),
        };
        MixContext {
            spool,
            directory: DirectoryCell::new(directory),
            keys: Arc::new(keys),
            identity: Arc::new(identity),
            peers: Arc::new(peers),
            own_bundle: Default::default(),
            exit,
            intake,
            stats,
            clock,
            health: Arc::new(Health::new()),
            client,
            clock_offset_ms: Default::default(),
        }
    }

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

    /// The epoch by this node's clock; for a client whose clock disagrees
    /// with its gateway's, by the gateway's (its packets must be built with
    /// the keys the network uses now, whatever the laptop's clock says).
    pub fn epoch(&self) -> u32 {
        let offset = self
            .clock_offset_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let now = self.now().saturating_add_signed(offset);
        self.directory.params().epoch_at(now)
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
        if *node == self.own() && self.client.is_none() {
            self.keys.get(epoch).map(|k| k.public())
        } else {
            self.peers.key(node, epoch)
        }
    }
}

/// A mixnet context for unit tests of the policy modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::{MixContext, MixRole, Services};
    use crate::address::OnionName;
    use crate::mixnet::keys::{IdentityKey, KeyRing};
    use crate::mixnet::peers::PeerKeys;
    use crate::spool::Spool;
    use crate::stats::Stats;
    use crate::wire::bundle::{Bundle, SLOTS};
    use crate::wire::pki::{Directory, encode_key};

    /// 2026-11-25 at midnight, in unix ms.
    pub(crate) const BASE: u64 = 1_795_564_800_000;

    /// A node (`seed` 1 of 1..=5) with every peer linked and its keys
    /// known, cover at `loop_mean` / `drop_mean`, the spool's clock on
    /// tokio's paused time.
    pub(crate) fn node(
        dir: &std::path::Path,
        loop_mean: &str,
        drop_mean: &str,
    ) -> (Arc<MixContext>, Spool) {
        node_as(dir, loop_mean, drop_mean, None)
    }

    /// Like [`node`], as a client (`client` set) when asked.
    pub(crate) fn node_as(
        dir: &std::path::Path,
        loop_mean: &str,
        drop_mean: &str,
        client: Option<crate::mixnet::context::ClientSide>,
    ) -> (Arc<MixContext>, Spool) {
        let entries: Vec<_> = (1..=5u8)
            .map(|i| {
                let identity = ed25519_dalek::SigningKey::from_bytes(&[i; 32]);
                json!({
                    "name": format!("n{i}"),
                    "onion": OnionName::from_seed(i).to_string(),
                    "port": 9999,
                    "identity": encode_key(identity.verifying_key().as_bytes()),
                    "exit": true,
                })
            })
            .collect();
        let doc = json!({"nodes": entries, "params": {
            "hop_delay_mean": "20ms", "loop_cover_mean": loop_mean, "drop_cover_mean": drop_mean}});
        let directory =
            Directory::parse(doc.to_string().as_bytes(), &OnionName::from_seed(1)).unwrap();
        let clock = crate::testkit::tokio_clock(BASE);
        let epoch = directory.params().epoch_at(BASE);
        let (keys, _) = KeyRing::open(dir, epoch).unwrap();
        let peers = PeerKeys::load(dir, &directory).unwrap();
        let mut linked = Vec::new();
        for n in directory.others() {
            let seed = n.short_name[1..].parse::<u8>().unwrap();
            let identity = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
            let mix = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([seed; 32]));
            let bundle = Bundle::sign(
                &identity,
                &directory.params().hash(),
                n.id,
                epoch - 1,
                [mix.to_bytes(); SLOTS],
            );
            peers.offer(&directory, n.id, bundle);
            linked.push(n.id);
        }
        let (spool, _closer) = Spool::open(dir, Duration::ZERO, clock.clone()).unwrap();
        let stats = Arc::new(Stats::default());
        let intake = crate::node::intake::Intake::for_tests(
            spool.clone(),
            crate::release::MixPolicy::Immediate,
            clock.clone(),
            stats.clone(),
        );
        let services = Services {
            spool: spool.clone(),
            intake: Arc::new(intake),
            stats,
            clock,
        };
        let role = client.map_or(MixRole::Node { exit: true }, MixRole::Client);
        let ctx = Arc::new(MixContext::new(
            services,
            directory,
            keys,
            IdentityKey::load_or_create(dir).unwrap(),
            peers,
            role,
        ));
        for id in linked {
            ctx.health.set(id, true);
        }
        (ctx, spool)
    }
}
