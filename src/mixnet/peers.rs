//! What this node knows of its peers' mix keys: their signed bundles,
//! kept in memory and in `peer-keys/` in the data directory, and the nodes
//! caught signing two different keys for one epoch.
//!
//! Node policy: decides which bundle to believe (only one that verifies
//! with the identity `nodes.json` pins, and only a newer one replaces an
//! older one) and when to ask a peer for keys. A node is asked for its own
//! bundle when the one held does not cover the next epoch, so that keys
//! are fetched ahead of need; a sender that finds no key for the epoch it
//! builds for asks at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::wire::bundle::Bundle;
use crate::wire::packet::NodeId;
use crate::wire::pki::Directory;

/// Sub-directory of the data directory holding peers' bundles.
pub const PEER_KEYS_DIR: &str = "peer-keys";

/// How often one peer is asked for one subject's keys at most.
const ASK_AGAIN: Duration = Duration::from_secs(2);

/// What became of a bundle a peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Newer than what was held: kept (and saved).
    Accepted,
    /// Nothing new.
    Known,
    /// Does not verify with the subject's identity, or names a node that
    /// is not listed: ignored.
    Invalid,
    /// Verifies, yet names another key for an epoch than the bundle held:
    /// the subject shows different keys to different peers. Excluded.
    TwoFaces { epoch: u32 },
}

#[derive(Default)]
struct State {
    bundles: HashMap<NodeId, Bundle>,
    /// Nodes caught with two faces, and the epoch it was seen for.
    excluded: HashMap<NodeId, u32>,
    asked: HashMap<(NodeId, NodeId), Instant>,
    /// Round-robin position for PING subjects, per peer.
    probe: HashMap<NodeId, usize>,
}

pub struct PeerKeys {
    dir: PathBuf,
    params_hash: [u8; 32],
    state: Mutex<State>,
    /// Held for a client: every listed node's keys, its gateway's too (a
    /// client's directory names the gateway as its own entry).
    client: bool,
}

fn hex(id: &NodeId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

impl PeerKeys {
    /// Loads the saved bundles that still verify against `directory`.
    pub fn load(data_dir: &Path, directory: &Directory) -> std::io::Result<PeerKeys> {
        PeerKeys::load_as(data_dir, directory, false)
    }

    /// The same for a client, which needs every node's keys.
    pub fn load_for_client(data_dir: &Path, directory: &Directory) -> std::io::Result<PeerKeys> {
        PeerKeys::load_as(data_dir, directory, true)
    }

    fn load_as(data_dir: &Path, directory: &Directory, client: bool) -> std::io::Result<PeerKeys> {
        let dir = data_dir.join(PEER_KEYS_DIR);
        std::fs::create_dir_all(&dir)?;
        let params_hash = directory.params().hash();
        let mut state = State::default();
        let own = directory.own().id;
        for node in directory.nodes().iter().filter(|n| client || n.id != own) {
            let Ok(bytes) = std::fs::read(dir.join(hex(&node.id))) else {
                continue;
            };
            match Bundle::decode(&bytes) {
                Ok(b) if b.node == node.id && b.verify(&node.identity, &params_hash).is_ok() => {
                    state.bundles.insert(node.id, b);
                }
                _ => warn!(
                    "[MIXNET] ignored the saved keys of {}: they do not verify (fetched again)",
                    node.short_name
                ),
            }
        }
        Ok(PeerKeys {
            dir,
            params_hash,
            state: Mutex::new(state),
            client,
        })
    }

    /// Takes a bundle `from` a peer about `subject` (often the peer
    /// itself).
    pub fn offer(&self, directory: &Directory, from: NodeId, bundle: Bundle) -> Offer {
        let Some(node) = directory.node(&bundle.node) else {
            return Offer::Invalid;
        };
        if (bundle.node == directory.own().id && !self.client)
            || bundle.verify(&node.identity, &self.params_hash).is_err()
        {
            return Offer::Invalid;
        }
        let mut state = self.state.lock().unwrap();
        if let Some(held) = state.bundles.get(&bundle.node) {
            if let Some(epoch) = held.conflict(&bundle) {
                let first = state.excluded.insert(bundle.node, epoch).is_none();
                if first {
                    let via = directory
                        .node(&from)
                        .map(|n| n.short_name.as_str())
                        .unwrap_or("?");
                    warn!(
                        "[MIXNET] {} signed two different mix keys for epoch {epoch} (the second seen via {via}): it shows peers different faces; excluded from routes",
                        node.short_name
                    );
                }
                return Offer::TwoFaces { epoch };
            }
            if bundle.first <= held.first {
                return Offer::Known;
            }
        }
        if let Err(e) = self.save(&bundle) {
            warn!("[MIXNET] cannot save the keys of {}: {e}", node.short_name);
        }
        state.bundles.insert(bundle.node, bundle);
        Offer::Accepted
    }

    /// Written beside, synced, renamed: a crash leaves the old bundle or
    /// the new one.
    fn save(&self, bundle: &Bundle) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.dir.join(hex(&bundle.node));
        let temp = self.dir.join(format!(".{}.tmp", hex(&bundle.node)));
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&bundle.encode())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The key to build a packet for `node` in `epoch`, unless the node
    /// is excluded or its keys for that epoch are not here.
    pub fn key(&self, node: &NodeId, epoch: u32) -> Option<x25519_dalek::PublicKey> {
        let state = self.state.lock().unwrap();
        if state.excluded.contains_key(node) {
            return None;
        }
        state
            .bundles
            .get(node)?
            .key(epoch)
            .map(x25519_dalek::PublicKey::from)
    }

    /// The key held for `node` in `epoch`, excluded or not (what a PONG
    /// reports: the truth as seen here).
    pub fn seen_key(&self, node: &NodeId, epoch: u32) -> Option<[u8; 32]> {
        self.state.lock().unwrap().bundles.get(node)?.key(epoch)
    }

    /// The bundle held for `node`, to serve to a peer that asks.
    pub fn bundle(&self, node: &NodeId) -> Option<Bundle> {
        self.state.lock().unwrap().bundles.get(node).cloned()
    }

    pub fn is_excluded(&self, node: &NodeId) -> bool {
        self.state.lock().unwrap().excluded.contains_key(node)
    }

    /// Nodes excluded for showing two faces.
    pub fn excluded_count(&self) -> usize {
        self.state.lock().unwrap().excluded.len()
    }

    /// Subjects to ask `peer` about now: the peer itself when the bundle
    /// held does not cover `epoch` + 1, and any third node whose key the
    /// peer reported differently (see [`PeerKeys::compare`]). Each at
    /// most every [`ASK_AGAIN`].
    pub fn wanted(&self, peer: NodeId, epoch: u32, suspect: Option<NodeId>) -> Vec<NodeId> {
        let mut state = self.state.lock().unwrap();
        let stale = state
            .bundles
            .get(&peer)
            .is_none_or(|b| b.last() < epoch.saturating_add(1) || b.key(epoch).is_none());
        let mut want = Vec::new();
        if stale {
            want.push(peer);
        }
        want.extend(suspect);
        let now = Instant::now();
        want.retain(|subject| {
            let asked = state.asked.get(&(peer, *subject));
            if asked.is_some_and(|t| now.duration_since(*t) < ASK_AGAIN) {
                return false;
            }
            state.asked.insert((peer, *subject), now);
            true
        });
        want
    }

    /// For a client, whose one link is to its gateway: every listed node
    /// whose bundle does not cover `epoch` + 1, to ask the gateway for
    /// (each at most every [`ASK_AGAIN`]). The gateway can withhold a
    /// bundle, never forge one: each verifies with the identity pinned in
    /// `nodes.json`.
    pub fn wanted_via(&self, gateway: NodeId, directory: &Directory, epoch: u32) -> Vec<NodeId> {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        let mut want = Vec::new();
        for node in directory.nodes() {
            let stale = state
                .bundles
                .get(&node.id)
                .is_none_or(|b| b.last() < epoch.saturating_add(1) || b.key(epoch).is_none());
            let asked = state.asked.get(&(gateway, node.id));
            if stale && asked.is_none_or(|t| now.duration_since(*t) >= ASK_AGAIN) {
                state.asked.insert((gateway, node.id), now);
                want.push(node.id);
            }
        }
        want
    }

    /// The subject of the next PING to `peer`: every listed node but the
    /// peer and this one, in turn.
    pub fn next_probe(&self, directory: &Directory, peer: NodeId) -> Option<NodeId> {
        let candidates: Vec<NodeId> = directory
            .others()
            .map(|n| n.id)
            .filter(|id| *id != peer)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let mut state = self.state.lock().unwrap();
        let i = state.probe.entry(peer).or_insert(0);
        let subject = candidates[*i % candidates.len()];
        *i = i.wrapping_add(1);
        Some(subject)
    }

    /// A PONG said `peer` holds `key` for `subject` in `epoch`: `true`
    /// when that differs from the key held here, so the peer's copy of
    /// the bundle should be fetched and checked (the peer may be lying,
    /// so nothing is concluded before the signature is seen).
    pub fn compare(&self, subject: &NodeId, epoch: u32, key: [u8; 32]) -> bool {
        if key == [0; 32] {
            return false;
        }
        let state = self.state.lock().unwrap();
        if state.excluded.contains_key(subject) {
            return false;
        }
        state
            .bundles
            .get(subject)
            .and_then(|b| b.key(epoch))
            .is_some_and(|held| held != key)
    }
}

/// Logs once how far a peer's clock is from ours when it exceeds `bound`.
/// Returns the skew in seconds (peer minus here) when it does.
pub fn clock_skew(own_secs: u64, peer_secs: u64, bound: Duration) -> Option<i64> {
    let skew = peer_secs as i64 - own_secs as i64;
    (skew.unsigned_abs() > bound.as_secs()).then_some(skew)
}

/// The log line for a skewed peer.
pub fn log_skew(name: &str, skew: i64) {
    info!(
        "[MIXNET] the clock of {name} is {skew:+} s off ours: mix keys rotate by the clock, so packets near an epoch boundary may be refused; check NTP on both"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_is_reported_only_beyond_the_bound() {
        let bound = Duration::from_secs(30);
        assert_eq!(clock_skew(1000, 1030, bound), None);
        assert_eq!(clock_skew(1000, 1031, bound), Some(31));
        assert_eq!(clock_skew(1000, 900, bound), Some(-100));
    }
}
