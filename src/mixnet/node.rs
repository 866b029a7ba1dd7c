//! What every mix node shares: its context, the health view of its links,
//! and the custody side of outbound links ([`Forwarder`]).
//!
//! Node policy: decides when a packet may be retried, when custody ends,
//! which peers count as usable. Storage is the spool; links are
//! `mixnet::link`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tracing::{info, warn};

use super::frame::AckStatus;
use super::keys::MixKey;
use super::link::{Outgoing, PacketSource};
use super::packet::{NodeId, WirePacket};
use super::pki::Directory;
use crate::BoxFuture;
use crate::mix::MixPolicy;
use crate::spool::Spool;
use crate::spool::mixnet::PacketSettle;
use crate::stats::Stats;
use crate::time::{Clock, UnixMillis};

/// Everything the mixnet policy modules need, shared read-only.
pub struct MixContext {
    pub spool: Spool,
    pub directory: Arc<Directory>,
    pub key: Arc<MixKey>,
    /// This node delivers mail out of the mixnet (`-exit`).
    pub exit: bool,
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
}

/// Which peers have a working link now. Path selection reads it; links
/// write it. (The next issue adds loop statistics.)
#[derive(Default)]
pub struct Health {
    up: Mutex<HashMap<NodeId, bool>>,
    changed: Option<watch::Sender<u64>>,
}

impl Health {
    pub fn new() -> Health {
        Health {
            up: Mutex::default(),
            changed: Some(watch::channel(0).0),
        }
    }

    pub fn set(&self, peer: NodeId, up: bool) {
        let before = self.up.lock().unwrap().insert(peer, up);
        if before != Some(up)
            && let Some(tx) = &self.changed
        {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub fn is_up(&self, peer: &NodeId) -> bool {
        self.up.lock().unwrap().get(peer).copied().unwrap_or(false)
    }

    /// Peers whose link is up now.
    pub fn usable(&self) -> Vec<NodeId> {
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

    /// Changes whenever a link comes up or goes down.
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
}

impl Forwarder {
    pub fn new(ctx: Arc<MixContext>, lease: Duration) -> Forwarder {
        Forwarder {
            ctx,
            lease,
            attempts: Mutex::default(),
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
            let name = self
                .ctx
                .directory
                .node(&peer)
                .map(|n| n.short_name.clone())
                .unwrap_or_default();
            info!("[MIXNET] link to {name} {}", if up { "up" } else { "down" });
        }
        self.ctx.health.set(peer, up);
    }

    fn events(&self) -> watch::Receiver<u64> {
        self.ctx.spool.packet_events()
    }
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
}
