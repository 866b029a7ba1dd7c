//! Client mode (`-client`): this process is the entry of its own mail,
//! on the sender's machine, and reaches the mixnet through one gateway.
//!
//! What differs from an entry node is small and lives where it applies:
//! routes start at the gateway and reply blocks end there for this
//! client's mailbox (`sender`), the one link is a client's (`link`, with
//! the key derived for that gateway) and fetches replies at the network's
//! rate and sends at the network's rate. This module is the client's side
//! of both: a fetched reply is opened and applied like an entry node's
//! acknowledgement, and confirmed only once what it said is committed
//! here; and the cover its link sends on the ticks with no mail.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::context::MixContext;
use super::hop::{ReplyApplied, apply_reply, random_id};
use super::path::{hop_delay, pick_nodes};
use super::sender::usable_peers;
use crate::BoxFuture;
use crate::link::{CoverKind, Mailbox};
use crate::stats::Stats;
use crate::wire::fragment::{Fragment, Kind};
use crate::wire::frame::HeldReply;
use crate::wire::packet::{self, FinalPayload, MAX_HOPS, ReplyBlock, RouteHop, WirePacket};

/// Applies the replies a client fetches from its gateway.
pub struct ClientMailbox {
    pub ctx: Arc<MixContext>,
}

impl Mailbox for ClientMailbox {
    fn held(&self, reply: HeldReply) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            Stats::add(&self.ctx.stats.mix_replies_fetched, 1);
            let Ok(payload) = FinalPayload::from_bytes(&reply.payload) else {
                // Never openable: confirmed, so the gateway forgets it.
                Stats::add(&self.ctx.stats.mix_bad_payloads, 1);
                return true;
            };
            match apply_reply(&self.ctx, reply.reply_id, payload).await {
                // Applied, or one it has nothing to do with (a reply that
                // came twice, a message already complete): either way the
                // gateway may delete it.
                Ok(ReplyApplied::Applied | ReplyApplied::Unknown | ReplyApplied::Bad) => true,
                Err(e) => {
                    // Not confirmed: the gateway keeps it and hands it over
                    // again at the next fetch.
                    warn!("[MIXNET] cannot apply a fetched reply: {e}");
                    false
                }
            }
        })
    }

    fn cover(&self, kind: CoverKind) -> BoxFuture<'_, Option<(u32, WirePacket)>> {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            // Wrapping is CPU work (about half a millisecond): off the
            // async executor.
            let built = tokio::task::spawn_blocking(move || {
                let kind = match kind {
                    CoverKind::Loop => Kind::Loop,
                    CoverKind::Drop => Kind::Drop,
                };
                let packet = cover_packet(&ctx, kind);
                if packet.is_some() {
                    let counter = match kind {
                        Kind::Loop => &ctx.stats.mix_loops_sent,
                        _ => &ctx.stats.mix_drops_sent,
                    };
                    Stats::add(counter, 1);
                }
                packet
            });
            built.await.ok().flatten()
        })
    }
}

/// A client's cover. A loop is made as a reply block to the client's own
/// mailbox and sent through it, `[gateway, mixes…, gateway]`, so that at
/// the gateway it leaves as any packet of the client's does and comes back
/// as any reply does (up to `hops` mixes, as Sphinx's five hops allow
/// around the gateway twice). A drop takes a message's route,
/// `[gateway, hops mixes]`, and its last hop discards it. Delays are drawn
/// like a message's. Nothing of either is kept: a loop fetched back is a
/// reply no message waits for.
fn cover_packet(ctx: &MixContext, kind: Kind) -> Option<(u32, WirePacket)> {
    let client = ctx.client?;
    let epoch = ctx.epoch();
    let params = ctx.directory.params();
    let mut rng = rand::rng();
    let usable = usable_peers(ctx, epoch);
    let n = match kind {
        Kind::Loop => params.hops.min(MAX_HOPS - 2),
        _ => params.hops,
    };
    let mixes = pick_nodes(
        &ctx.directory.get(),
        &usable,
        n,
        &[client.gateway],
        &mut rng,
    )?;
    let hop = |id, delay| {
        Some(RouteHop {
            id,
            mix_key: ctx.mix_key(&id, epoch)?,
            delay,
        })
    };
    let delay = |rng: &mut _| hop_delay(params.hop_delay_mean, params.hop_delay_max, rng);
    let mut route = vec![hop(client.gateway, delay(&mut rng))?];
    for id in mixes {
        route.push(hop(id, delay(&mut rng))?);
    }
    let id = random_id();
    let fragment = Fragment::cover(kind, id);
    if kind != Kind::Loop {
        if let Some(last) = route.last_mut() {
            last.delay = Duration::ZERO;
        }
        return Some((epoch, packet::build(&fragment.encode(), &route).ok()?));
    }
    route.push(hop(client.gateway, Duration::ZERO)?);
    let (block, _) = ReplyBlock::create_to(&route, client.mailbox, id, epoch).ok()?;
    let (packet, first) = block.send(&fragment.encode()).ok()?;
    (first == client.gateway).then_some((epoch, packet))
}
