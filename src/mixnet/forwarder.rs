//! The outbound custody side of links ([`Forwarder`]): leases due packets
//! from the spool for a peer, settles them on acknowledgement, and takes
//! what the link learns of peers' keys and clocks.
//!
//! Node policy: decides when a packet may be retried and when custody
//! ends. Storage is the spool; the link (`link`) moves the bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tracing::{info, warn};

use super::context::MixContext;
use super::peers::Offer;
use crate::BoxFuture;
use crate::link::{Admission, KeyGossip, LinkHealth, OutboundPacket, Outbox};
use crate::spool::custody::PacketSettle;
use crate::stats::Stats;
use crate::wire::bundle::Bundle;
use crate::wire::frame::AckStatus;
use crate::wire::packet::{NodeId, WirePacket};

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

/// Custody: due packets leased from the spool, settled on ACK.
impl Outbox for Forwarder {
    fn take(
        &self,
        peer: NodeId,
        max: usize,
    ) -> BoxFuture<'_, (Vec<OutboundPacket>, Option<Duration>)> {
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
                        out.push(OutboundPacket {
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
            // Not waiting for the COMMIT: the link goes on reading ACKs,
            // and the committer settles all that came meanwhile in one
            // transaction. Nothing depends on the settle but our copy: a
            // lost one means the packet goes again, a duplicate the next
            // hop acknowledges as such.
            self.ctx
                .spool
                .settle_packets_later(vec![(id, settle)])
                .await;
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

    fn events(&self) -> watch::Receiver<u64> {
        self.ctx.spool.packet_events()
    }
}

/// What links learn of peers' health: up or down (path selection reads
/// it) and their clocks.
/// A peer is dialled only while listed, and must prove the identity key
/// listed for it.
impl Admission for Forwarder {
    fn node_key(&self, id: &NodeId) -> Option<ed25519_dalek::VerifyingKey> {
        self.ctx.directory.identity_of(id)
    }
}

impl LinkHealth for Forwarder {
    fn link_state(&self, peer: NodeId, up: bool) {
        if up != self.ctx.health.is_up(&peer) {
            let name = self.ctx.directory.short_name(&peer);
            info!("[MIXNET] link to {name} {}", if up { "up" } else { "down" });
        }
        self.ctx.health.set(peer, up);
        if self.ctx.client.is_some() {
            // A client reaches every node through its gateway: with the
            // gateway's link, all are reachable or none is (loops through
            // them are what tells them apart).
            for node in self.ctx.directory.nodes() {
                self.ctx.health.set(node.id, up);
            }
        }
    }

    fn hello(&self, peer: NodeId, clock_secs: u64) {
        let own = self.ctx.now() / 1000;
        let skew = super::peers::clock_skew(own, clock_secs, MAX_CLOCK_SKEW);
        if let Some(skew) = skew {
            let name = self.ctx.directory.short_name(&peer);
            super::peers::log_skew(&name, skew);
        }
        if self.ctx.client.is_some_and(|c| c.gateway == peer) {
            // A client takes the network's epoch from its gateway when its
            // own clock is off (a laptop's often is).
            self.ctx.clock_offset_ms.store(
                skew.unwrap_or(0).saturating_mul(1000),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

/// Key gossip over links: which bundles to fetch from a peer, what to
/// compare in a PING, and what comes back.
impl KeyGossip for Forwarder {
    fn keys_wanted(&self, peer: NodeId) -> Vec<NodeId> {
        if self.ctx.client.is_some() {
            let directory = self.ctx.directory.get();
            return self
                .ctx
                .peers
                .wanted_via(peer, &directory, self.ctx.epoch());
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::address::OnionName;
    use crate::mixnet::context::testing::{self, BASE};

    /// A client whose clock is off takes the epoch its gateway's HELLO
    /// says; a node never does, and a small skew changes nothing.
    #[tokio::test(start_paused = true)]
    async fn a_client_takes_the_epoch_from_its_gateways_clock() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = NodeId(OnionName::from_seed(2).public_key());
        let side = crate::mixnet::context::ClientSide {
            gateway,
            mailbox: [9; 32],
        };
        let (ctx, _spool) = testing::node_as(dir.path(), "0s", "0s", Some(side));
        let day = 24 * 3600;
        let own = ctx.epoch();
        let forwarder = Forwarder::new(ctx.clone(), Duration::from_secs(1));
        // The gateway is a day ahead: the client builds for its epoch.
        forwarder.hello(gateway, BASE / 1000 + day);
        assert_eq!(ctx.epoch(), own + 1);
        // Another node's clock is not the gateway's.
        forwarder.hello(NodeId(OnionName::from_seed(3).public_key()), BASE / 1000);
        assert_eq!(ctx.epoch(), own + 1);
        // Within the tolerated skew, the client's own clock again.
        forwarder.hello(gateway, BASE / 1000 + 10);
        assert_eq!(ctx.epoch(), own);
        let dir = tempfile::tempdir().unwrap();
        let (node, _spool) = testing::node(dir.path(), "0s", "0s");
        let forwarder = Forwarder::new(node.clone(), Duration::from_secs(1));
        forwarder.hello(gateway, BASE / 1000 + day);
        assert_eq!(node.epoch(), own, "a node keeps its own clock");
    }
}
