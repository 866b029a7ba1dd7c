//! What a node does with a packet that arrives on a link: as a hop it keeps
//! it for the next hop; as the exit it keeps the fragment and, once a
//! message is whole, moves it into the spool and acknowledges it end to
//! end; as an entry it applies the acknowledgement of its own message.
//!
//! The order on the receive path is fixed: the link checked the exact size;
//! here the replay tag and the unwrap run off the async executor; then one
//! group-committed transaction records the tag together with what must be
//! kept; only then does the link acknowledge. A known tag is acknowledged
//! as a duplicate and nothing is forwarded, so a retry after a lost
//! acknowledgement is safe and a replay is never amplified.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::context::MixContext;
use crate::BoxFuture;
use crate::envelope::EnqueueOutcome;
use crate::link::{Admission, PacketHandler};
use crate::spool::custody::{
    Custody, CustodyOutcome, EntryAck, ExitRows, HoldCaps, HoldDrop, MixId, OutPacket, PacketKind,
    PartialHeader, StoredFragment,
};
use crate::stats::Stats;
use crate::wire::bundle::Bundle;
use crate::wire::fragment::{self, AckBody, Contract, Fragment, FragmentError, Joiner, Kind};
use crate::wire::frame::{AckStatus, HeldReply};
use crate::wire::packet::{
    self, NodeId, Processed, ReplayTag, ReplyBlock, ReplyRecovery, WirePacket,
};
use crate::wire::pki::Params;

/// The inbound side of every link.
pub struct Hop {
    pub ctx: Arc<MixContext>,
    /// Completions of messages whose last fragment just arrived run here,
    /// apart from the link that brought it (its ACK must not wait for the
    /// join), and the daemon's shutdown waits for them.
    pub completions: tokio_util::task::TaskTracker,
    /// Who may be unwrapping a packet now.
    pub shares: UnwrapShares,
    /// `-exit-partial-bytes`: what this exit keeps at most for messages
    /// not complete yet (past it: busy).
    pub partial_cap: u64,
    /// With `-gateway`: the caps on the replies held for clients. `None`:
    /// this node keeps no replies for others and takes no clients.
    pub gateway: Option<HoldCaps>,
}

/// Unwrap shares kept before idle ones are swept (each a few dozen bytes).
const SHARES_KEPT: usize = 4096;

/// The CPU a previous hop may take: at most one of its packets is being
/// unwrapped at a time, and at most one per core in all. Unwrapping (the
/// Sphinx step, ~140 µs for a valid packet; a damaged one fails its MAC
/// after the key exchange, at a third to a half of that) is most of what a
/// packet costs, and a link's reader waits for its window, which these
/// turns drain; so a peer that floods, even a listed one gone bad, gets
/// about one core however much it sends (measured: 104 % of a 2-core
/// machine against 134 % before; BENCHMARKS.md), and while other links
/// have packets too they take turns with it (the semaphores are fair). An honest link is never slowed by this:
/// one core unwraps about 7,000 packets a second, several times what a Tor
/// circuit carries. Every previous hop is an authenticated, listed node
/// with one link, or (at a gateway) a client with one link, one share
/// each; shares nobody waits on are swept past [`SHARES_KEPT`].
pub struct UnwrapShares {
    per_peer: std::sync::Mutex<std::collections::HashMap<NodeId, Arc<tokio::sync::Semaphore>>>,
    all: Arc<tokio::sync::Semaphore>,
}

impl UnwrapShares {
    /// Shares for a machine with `cores` cores.
    pub fn new(cores: usize) -> UnwrapShares {
        UnwrapShares {
            per_peer: Default::default(),
            all: Arc::new(tokio::sync::Semaphore::new(cores.max(1))),
        }
    }

    /// Waits for `from`'s turn; the turn ends when the permits drop.
    async fn turn(
        &self,
        from: NodeId,
    ) -> Option<(
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    )> {
        let mine = {
            let mut per_peer = self.per_peer.lock().unwrap();
            // Clients come and go (a gateway's previous hops are not only
            // the listed nodes): past a few thousand entries, those nobody
            // holds a turn of are forgotten.
            if per_peer.len() >= SHARES_KEPT && !per_peer.contains_key(&from) {
                per_peer.retain(|_, s| Arc::strong_count(s) > 1);
            }
            per_peer
                .entry(from)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
                .clone()
        };
        let mine = mine.acquire_owned().await.ok()?;
        let all = self.all.clone().acquire_owned().await.ok()?;
        Some((mine, all))
    }
}

/// How long an exit keeps a partial message after its latest fragment
/// came: `20 × ack_timeout + hops × hop_delay_max` (23 h with the default
/// parameters), and never past `e2e_horizon + custody_horizon` after its
/// first fragment (7 days), whatever comes later.
///
/// Why this much: an entry sends the fragments still missing again after
/// `ack_timeout`, doubling up to 16 × with a jitter of ±25 %
/// (`mixnet::sender`), so the longest gap between two of its rounds is
/// 20 × `ack_timeout`, and one round's packets reach the exit within
/// `hops × hop_delay_max` of each other (more only if a hop holds them in
/// custody through a broken link). A message whose entry still works
/// always has a fragment younger than that. When a partial message is
/// pruned all the same, its entry recovers before `e2e_horizon`: the next
/// round's fragments make a new partial message here, whose PARTIAL
/// (sent once it stalled, through one of their reply blocks) replaces the
/// entry's last bitmap, and the round after sends everything else.
///
/// Why not longer: past `-exit-partial-bytes` the exit answers busy, and
/// the previous hops keep those packets only for `custody_horizon` (2
/// days): junk that fills the cap must go well before that, so honest
/// packets held back by busy are taken once it has gone.
pub fn partial_idle_limit(params: &Params) -> Duration {
    let idle = params.ack_timeout * 20 + params.hop_delay_max * params.hops as u32;
    idle.min(params.e2e_horizon + params.custody_horizon)
}

/// Fragments read from the spool per call while a message is joined:
/// 16 × 7.7 KB, about 123 KB beside the blob.
const JOIN_BATCH: usize = 16;

/// One message is joined at a time, so the memory a completion takes is
/// bounded for the whole node, not per message completing at once.
static JOINS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Inbound links are served only to listed nodes, each proving the
/// identity key `nodes.json` pins for it now.
impl Admission for Hop {
    fn node_key(&self, id: &NodeId) -> Option<ed25519_dalek::VerifyingKey> {
        self.ctx.directory.identity_of(id)
    }

    fn admits_clients(&self) -> bool {
        self.gateway.is_some()
    }
}

impl PacketHandler for Hop {
    fn receive(&self, from: NodeId, epoch: u32, packet: WirePacket) -> BoxFuture<'_, AckStatus> {
        Box::pin(self.handle(Previous::Node(from), epoch, packet))
    }

    fn receive_from_client(
        &self,
        client: NodeId,
        epoch: u32,
        packet: WirePacket,
    ) -> BoxFuture<'_, AckStatus> {
        Box::pin(self.handle(Previous::Client(client), epoch, packet))
    }

    fn client_linked(&self, client: NodeId) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.ctx.spool.touch_mailbox(client.0).await {
                warn!("[MIXNET] cannot record a client's visit: {e}");
            }
        })
    }

    fn fetch(&self, client: NodeId) -> BoxFuture<'_, Option<HeldReply>> {
        Box::pin(async move {
            match self
                .ctx
                .spool
                .fetch_held(client.0, packet::PAYLOAD_SIZE)
                .await
            {
                Ok(fetched) => {
                    for _ in 0..fetched.damaged {
                        self.ctx.stats.held_dropped_for(HoldDrop::Damaged);
                        log_held_dropped(&self.ctx.stats, HoldDrop::Damaged);
                    }
                    let held = fetched.reply?;
                    Stats::add(&self.ctx.stats.mix_held_fetched, 1);
                    Some(HeldReply {
                        delivery: held.delivery,
                        reply_id: held.reply_id,
                        payload: held.payload.into(),
                    })
                }
                Err(e) => {
                    warn!("[MIXNET] cannot read a client's mailbox: {e}");
                    None
                }
            }
        })
    }

    fn confirm(&self, client: NodeId, delivery: [u8; 16]) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match self.ctx.spool.confirm_held(client.0, delivery).await {
                Ok(true) => Stats::add(&self.ctx.stats.mix_held_confirmed, 1),
                Ok(false) => {}
                Err(e) => warn!("[MIXNET] cannot delete a confirmed reply: {e}"),
            }
        })
    }

    fn bundle(&self, subject: NodeId) -> Option<Bundle> {
        if subject == self.ctx.own() {
            Some(self.ctx.own_bundle())
        } else {
            self.ctx.peers.bundle(&subject)
        }
    }

    fn key_of(&self, subject: NodeId, epoch: u32) -> [u8; 32] {
        let key = if subject == self.ctx.own() {
            self.ctx.keys.get(epoch).map(|k| k.public().to_bytes())
        } else {
            self.ctx.peers.seen_key(&subject, epoch)
        };
        key.unwrap_or([0; 32])
    }
}

/// A reply for a client not kept (or deleted unfetched) for `why`: a
/// line by class, never whose, once a minute at most with the count.
fn log_held_dropped(stats: &Stats, why: HoldDrop) {
    if let Some(n) = stats.held_dropped_log.note(tokio::time::Instant::now()) {
        info!(
            "[MIXNET] a reply for a client was not kept ({}); {n} so since the last such line; the client's retransmission recovers",
            why.label()
        );
    }
}

fn status_of(outcome: CustodyOutcome, stats: &Stats) -> AckStatus {
    match outcome {
        CustodyOutcome::Busy(why) => {
            stats.custody_busy_for(why);
            // Logged at most once a minute with the count: a full custody
            // is worth a line, a line per packet would be a flood.
            if let Some(n) = stats.custody_busy_log.note(tokio::time::Instant::now()) {
                info!(
                    "[MIXNET] custody answers busy ({}); {n} packet(s) so since the last such line; previous hops keep them and retry",
                    why.label()
                );
            }
            AckStatus::Busy
        }
        CustodyOutcome::Stored | CustodyOutcome::FragmentStored { .. } => AckStatus::Stored,
        CustodyOutcome::AlreadyDone => AckStatus::Stored,
        CustodyOutcome::Duplicate => {
            Stats::add(&stats.mix_replays, 1);
            AckStatus::Duplicate
        }
        CustodyOutcome::Inconsistent => {
            Stats::add(&stats.mix_exit_inconsistent, 1);
            AckStatus::Rejected
        }
        CustodyOutcome::Full => {
            Stats::add(&stats.mix_exit_full, 1);
            AckStatus::Busy
        }
        CustodyOutcome::HeldDropped(why) => {
            stats.held_dropped_for(why);
            AckStatus::Stored
        }
        CustodyOutcome::Failed => AckStatus::Busy,
    }
}

/// Where a packet came from: a listed node, or (at a gateway) a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Previous {
    Node(NodeId),
    Client(NodeId),
}

impl Previous {
    /// Whose unwrap turn and custody share the packet takes.
    fn id(self) -> NodeId {
        match self {
            Previous::Node(id) | Previous::Client(id) => id,
        }
    }
}

impl Hop {
    async fn handle(&self, prev: Previous, epoch: u32, packet: WirePacket) -> AckStatus {
        let ctx = &self.ctx;
        let from = prev.id();
        Stats::add(&ctx.stats.mix_packets_in, 1);
        // Only the previous, current and ahead epochs have a key; a packet
        // for any other epoch cannot be opened here (and an old one's tag
        // may be purged already, so it must not be looked at at all).
        let Some(key) = ctx.keys.get(epoch) else {
            Stats::add(&ctx.stats.mix_unknown_epoch, 1);
            return AckStatus::UnknownEpoch;
        };
        let Some(turn) = self.shares.turn(from).await else {
            return AckStatus::Busy;
        };
        let unwrapped =
            tokio::task::spawn_blocking(move || packet::process(&packet, key.secret())).await;
        drop(turn);
        let Ok((tag, processed)) = unwrapped else {
            return AckStatus::Busy;
        };
        let processed = match processed {
            Ok(p) => p,
            Err(e) => {
                debug!("[MIXNET] packet refused: {e}");
                Stats::add(&ctx.stats.mix_rejected, 1);
                return AckStatus::Rejected;
            }
        };
        if let (Previous::Client(_), Processed::Final { .. }) = (prev, &processed) {
            // A client may use its gateway only as the first hop of a
            // route: never as a free exit, nor to fill another mailbox.
            self.remember(tag, epoch).await;
            Stats::add(&ctx.stats.mix_rejected, 1);
            return AckStatus::Rejected;
        }
        match processed {
            Processed::Forward {
                next,
                delay,
                packet,
            } => {
                let params = ctx.directory.params();
                if next == ctx.own() || !ctx.directory.lists(&next) {
                    Stats::add(&ctx.stats.mix_rejected, 1);
                    return AckStatus::Rejected;
                }
                if delay > params.hop_delay_max {
                    Stats::add(&ctx.stats.mix_rejected, 1);
                    return AckStatus::Rejected;
                }
                let now = ctx.now();
                let out = OutPacket {
                    next_hop: next.0,
                    epoch,
                    bytes: packet.as_bytes().to_vec(),
                    kind: PacketKind::Forward,
                    release_at: now + delay.as_millis() as u64,
                    deadline: ctx.custody_deadline(),
                };
                let outcome = ctx
                    .spool
                    .custody(Custody::Forward {
                        tag,
                        epoch,
                        from: from.0,
                        packet: out,
                    })
                    .await;
                status_of(outcome, &ctx.stats)
            }
            Processed::Final { to, id, payload } if to != ctx.own().0 => {
                match &self.gateway {
                    Some(caps) => self.hold(tag, epoch, to, id, payload, *caps).await,
                    None => {
                        // Only a gateway keeps replies for others.
                        self.remember(tag, epoch).await;
                        Stats::add(&ctx.stats.mix_rejected, 1);
                        AckStatus::Rejected
                    }
                }
            }
            Processed::Final { id, payload, .. } if id == [0; 16] => {
                let Ok(plain) = payload.plaintext() else {
                    return self.bad_payload(tag, epoch).await;
                };
                let Ok(fragment) = Fragment::decode(&plain) else {
                    return self.bad_payload(tag, epoch).await;
                };
                match fragment.kind {
                    Kind::Data if ctx.exit => self.exit_fragment(tag, epoch, fragment).await,
                    Kind::Data => {
                        // A middleman was made the last hop of a data route:
                        // the sender's directory is wrong. Refused, counted.
                        self.remember(tag, epoch).await;
                        Stats::add(&ctx.stats.mix_rejected, 1);
                        AckStatus::Rejected
                    }
                    Kind::Loop | Kind::Drop | Kind::Ack => {
                        // Cover ends here; an Ack without a reply id is
                        // malformed. Either way the tag is kept first, so a
                        // replayed loop cannot count twice.
                        let outcome = self.remember(tag, epoch).await;
                        if outcome == CustodyOutcome::Stored {
                            match fragment.kind {
                                Kind::Loop
                                    if ctx
                                        .health
                                        .loop_returned(&fragment.message_id, ctx.now()) =>
                                {
                                    Stats::add(&ctx.stats.mix_loops_back, 1);
                                }
                                Kind::Drop => Stats::add(&ctx.stats.mix_drops_received, 1),
                                _ => {}
                            }
                        }
                        status_of(outcome, &ctx.stats)
                    }
                }
            }
            Processed::Final { id, payload, .. } => self.entry_ack(tag, epoch, id, payload).await,
        }
    }

    /// A gateway keeps a reply for a client's mailbox until the client
    /// fetches it and confirms: with its tag, in one commit, before the
    /// previous hop is acknowledged. Past the caps the reply is dropped
    /// and counted but the packet still acknowledged (its tag is kept):
    /// the client's end-to-end retransmission recovers what it said.
    async fn hold(
        &self,
        tag: ReplayTag,
        epoch: u32,
        mailbox: [u8; 32],
        reply_id: [u8; 16],
        payload: packet::FinalPayload,
        caps: HoldCaps,
    ) -> AckStatus {
        let ctx = &self.ctx;
        let outcome = ctx
            .spool
            .custody(Custody::Hold {
                tag,
                epoch,
                mailbox,
                reply_id,
                payload: payload.into_bytes(),
                caps,
            })
            .await;
        match outcome {
            CustodyOutcome::Stored => Stats::add(&ctx.stats.mix_held_stored, 1),
            // Counted by `status_of`.
            CustodyOutcome::HeldDropped(why) => log_held_dropped(&ctx.stats, why),
            _ => {}
        }
        status_of(outcome, &ctx.stats)
    }

    async fn remember(&self, tag: ReplayTag, epoch: u32) -> CustodyOutcome {
        self.ctx.spool.custody(Custody::Tag { tag, epoch }).await
    }

    async fn bad_payload(&self, tag: ReplayTag, epoch: u32) -> AckStatus {
        Stats::add(&self.ctx.stats.mix_bad_payloads, 1);
        self.remember(tag, epoch).await;
        AckStatus::Rejected
    }

    /// The same for a reply whose bad payload was counted already.
    async fn refuse_counted(&self, tag: ReplayTag, epoch: u32) -> AckStatus {
        self.remember(tag, epoch).await;
        AckStatus::Rejected
    }

    /// The exit's share: keep the fragment; when the message is whole,
    /// complete it (after acknowledging this packet to the previous hop,
    /// which needs only the fragment to be durable).
    async fn exit_fragment(&self, tag: ReplayTag, epoch: u32, f: Fragment) -> AckStatus {
        let ctx = &self.ctx;
        // The network's size contract, before anything of it is stored
        // (the tag is, so the same packet again is a duplicate).
        if let Err(e) = Contract::new(ctx.directory.params().max_message_size).check(&f) {
            let outcome = self.remember(tag, epoch).await;
            if outcome != CustodyOutcome::Stored {
                // A replay of a refused packet is a replay.
                return status_of(outcome, &ctx.stats);
            }
            debug!("[MIXNET] fragment refused: {e}");
            Stats::add(&ctx.stats.mix_exit_too_large, 1);
            return AckStatus::Rejected;
        }
        let reply_block = f.reply_block.clone();
        let stored = StoredFragment {
            mix_id: f.message_id,
            index: f.index,
            count: f.count,
            blob_len: f.blob_len,
            blob_hash: f.blob_hash,
            reply_block: f.reply_block.as_ref().map(|b| b.as_bytes().to_vec()),
            data: f.data,
        };
        let outcome = ctx
            .spool
            .custody(Custody::Fragment {
                tag,
                epoch,
                fragment: stored,
                partial_cap: self.partial_cap,
            })
            .await;
        match outcome {
            CustodyOutcome::FragmentStored { have } if have == f.count => {
                let ctx = ctx.clone();
                let mix_id = f.message_id;
                self.completions
                    .spawn(async move { complete(&ctx, mix_id, reply_block).await });
            }
            CustodyOutcome::AlreadyDone => {
                // The entry did not hear our COMPLETE (or sent again before
                // it could): tell it again, deliver nothing twice.
                Stats::add(&ctx.stats.mix_exit_duplicates, 1);
                if let Some(block) = reply_block
                    && let Some(ack) = ack_packet(ctx, &block, f.message_id, &AckBody::Complete)
                    && let Err(e) = ctx.spool.queue_packets(vec![ack]).await
                {
                    warn!("[MIXNET] cannot queue a repeated acknowledgement: {e}");
                }
            }
            _ => {}
        }
        status_of(outcome, &ctx.stats)
    }

    /// An acknowledgement for a message this node sent into the mixnet.
    async fn entry_ack(
        &self,
        tag: ReplayTag,
        epoch: u32,
        reply_id: [u8; 16],
        payload: packet::FinalPayload,
    ) -> AckStatus {
        match apply_reply(&self.ctx, reply_id, payload).await {
            Err(_) => AckStatus::Busy,
            Ok(ReplyApplied::Bad) => self.refuse_counted(tag, epoch).await,
            Ok(ReplyApplied::Applied | ReplyApplied::Unknown) => {
                let outcome = self.remember(tag, epoch).await;
                status_of(outcome, &self.ctx.stats)
            }
        }
    }
}

/// What a reply did at the sender of the message it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyApplied {
    /// COMPLETE or PARTIAL, committed.
    Applied,
    /// No message of ours is waiting for it: already complete (its reply
    /// blocks are gone), a reply delivered twice, or not ours at all.
    Unknown,
    /// It does not open with the block's material, or says nothing an
    /// exit says (counted).
    Bad,
}

/// Applies a reply to the message it answers (an entry node's, or a
/// client's fetched from its gateway): COMPLETE ends the message, PARTIAL
/// says what to send again. Both are idempotent, so a reply delivered
/// twice changes nothing. An error is a storage error: nothing changed,
/// and the reply must come again.
pub async fn apply_reply(
    ctx: &MixContext,
    reply_id: [u8; 16],
    payload: packet::FinalPayload,
) -> Result<ReplyApplied, crate::spool::SpoolError> {
    let Some((mix_id, count, recovery)) = ctx.spool.reply_recovery(reply_id).await? else {
        return Ok(ReplyApplied::Unknown);
    };
    let body = payload
        .open(&ReplyRecovery(recovery))
        .ok()
        .and_then(|plain| Fragment::decode(&plain).ok())
        .filter(|f| f.kind == Kind::Ack && f.message_id == mix_id)
        .and_then(|f| AckBody::decode(&f.data, count).ok());
    let Some(body) = body else {
        Stats::add(&ctx.stats.mix_bad_payloads, 1);
        return Ok(ReplyApplied::Bad);
    };
    let ack = match &body {
        AckBody::Complete => EntryAck::Complete,
        AckBody::Partial(bitmap) => EntryAck::Partial(bitmap.clone()),
    };
    if ctx.spool.acknowledge(mix_id, ack).await? && body == AckBody::Complete {
        Stats::add(&ctx.stats.mix_messages_acked, 1);
        debug!("[MIXNET] a message was acknowledged by its exit");
    }
    Ok(ReplyApplied::Applied)
}

/// An end-to-end acknowledgement packet through `block`.
pub fn ack_packet(
    ctx: &MixContext,
    block: &ReplyBlock,
    mix_id: MixId,
    body: &AckBody,
) -> Option<OutPacket> {
    let data = body.encode();
    let fragment = Fragment {
        kind: Kind::Ack,
        message_id: mix_id,
        index: 0,
        count: 1,
        blob_len: data.len() as u32,
        blob_hash: Sha256::digest(&data).into(),
        reply_block: None,
        data,
    };
    let (packet, first) = block.send(&fragment.encode()).ok()?;
    ctx.directory.node(&first)?;
    Some(OutPacket {
        next_hop: first.0,
        epoch: block.epoch(),
        bytes: packet.as_bytes().to_vec(),
        kind: PacketKind::Ack,
        release_at: ctx.now(),
        deadline: ctx.custody_deadline(),
    })
}

/// Completes a message whose fragments are all stored: join and verify,
/// then one transaction puts it in the spool for delivery, records it as
/// done, drops the fragments and queues COMPLETE.
///
/// Memory: the fragments are read from the spool [`JOIN_BATCH`] at a time
/// in index order and hashed as they come ([`Joiner`]); the blob is the
/// one copy of the message, and its envelope is cut off in place, so the
/// body is that same allocation. Storing it, SQLite copies the body once
/// as a bound parameter and once into the row it writes. A completion
/// therefore holds about three times the blob (at most
/// `fragment::max_blob_len(max_message_size)`), plus a batch of
/// fragments, and only one completion runs at a time ([`JOINS`]).
pub async fn complete(ctx: &MixContext, mix_id: MixId, reply_block: Option<ReplyBlock>) {
    let Ok(_one_at_a_time) = JOINS.acquire().await else {
        return;
    };
    let header = match ctx.spool.partial_header(mix_id).await {
        Ok(Some(h)) if h.have >= h.count => h,
        // Gone (another completion got there first, or a prune), or not
        // whole yet.
        Ok(_) => return,
        Err(e) => {
            warn!("[MIXNET] cannot read fragments: {e}");
            return;
        }
    };
    let block = reply_block.or_else(|| {
        header
            .reply_block
            .as_deref()
            .and_then(|b| ReplyBlock::from_slice(b).ok())
    });
    let max_body = ctx.directory.params().max_message_size;
    let message = match join_stored(ctx, &header, fragment::max_blob_len(max_body)).await {
        // The blob's bound leaves room for the largest envelope; a body
        // past the network's size with a short envelope is no honest
        // entry's either.
        Ok(Some(blob)) => fragment::decode_blob_owned(blob).and_then(|m| {
            if m.body.len() > max_body {
                Err(FragmentError::BodyTooLarge)
            } else {
                Ok(m)
            }
        }),
        Ok(None) => return,
        Err(JoinFailure::Spool(e)) => {
            warn!("[MIXNET] cannot read fragments: {e}");
            return;
        }
        Err(JoinFailure::Fragments(e)) => Err(e),
    };
    let message = match message {
        Ok(m) => m,
        Err(e) => {
            info!(
                "[MIXNET] a message's fragments do not form it ({e}); dropped, the entry will retransmit"
            );
            if e == FragmentError::BodyTooLarge {
                Stats::add(&ctx.stats.mix_exit_too_large, 1);
            } else {
                Stats::add(&ctx.stats.mix_bad_payloads, 1);
            }
            let _ = ctx.spool.drop_fragments(mix_id).await;
            return;
        }
    };
    let ack = block.and_then(|b| ack_packet(ctx, &b, mix_id, &AckBody::Complete));
    // The same intake as SMTP mail: a refused message (own name, a blocked
    // destination, too many hops or recipients) is recorded as done with
    // no recipients and acknowledged all the same, so the entry stops
    // sending it.
    match ctx
        .intake
        .ingest_exit(message, ExitRows { mix_id, ack })
        .await
    {
        EnqueueOutcome::Replay => Stats::add(&ctx.stats.mix_exit_duplicates, 1),
        EnqueueOutcome::Failed | EnqueueOutcome::NoSpace | EnqueueOutcome::ShuttingDown => {
            // The fragments stay; maintenance completes the message later.
            warn!("[MIXNET] cannot complete a message now; its fragments are kept");
        }
        _ => Stats::add(&ctx.stats.mix_exit_completions, 1),
    }
}

/// Why a stored message could not be joined.
enum JoinFailure {
    /// The spool could not be read: the fragments stay, try later.
    Spool(crate::spool::SpoolError),
    /// The fragments do not form the message: they go.
    Fragments(FragmentError),
}

/// The blob of a message whose fragments are all stored, read in index
/// order a batch at a time; `None` when they went meanwhile.
async fn join_stored(
    ctx: &MixContext,
    header: &PartialHeader,
    max_blob_len: usize,
) -> Result<Option<Vec<u8>>, JoinFailure> {
    let mut joiner = Joiner::new(
        header.count,
        header.blob_len,
        header.blob_hash,
        max_blob_len,
    )
    .map_err(JoinFailure::Fragments)?;
    while !joiner.is_whole() {
        let batch = ctx
            .spool
            .fragment_data(header.mix_id, joiner.next_index(), JOIN_BATCH)
            .await
            .map_err(JoinFailure::Spool)?;
        if batch.is_empty() {
            return match ctx.spool.partial_header(header.mix_id).await {
                Ok(None) => Ok(None),
                Ok(Some(_)) => Err(JoinFailure::Fragments(FragmentError::Reassembly(
                    "not every fragment is there",
                ))),
                Err(e) => Err(JoinFailure::Spool(e)),
            };
        }
        for (index, data) in batch {
            joiner.push(index, &data).map_err(JoinFailure::Fragments)?;
        }
    }
    joiner.finish().map(Some).map_err(JoinFailure::Fragments)
}

/// The bitmap of stored fragment indices for a PARTIAL acknowledgement.
pub fn bitmap(count: u16, have: &[u16]) -> Vec<u8> {
    let mut map = vec![0u8; (count as usize).div_ceil(8)];
    for &i in have {
        if i < count {
            map[i as usize / 8] |= 1 << (i % 8);
        }
    }
    map
}

/// Whether fragment `i` is marked in a PARTIAL bitmap.
pub fn marked(bitmap: &[u8], i: u16) -> bool {
    bitmap
        .get(i as usize / 8)
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// A fresh random id (message ids, reply ids).
pub fn random_id() -> [u8; 16] {
    rand::rng().random()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients that came and went leave no share behind for ever; one
    /// whose turn is held keeps its share (and so its one-at-a-time).
    #[tokio::test]
    async fn shares_of_peers_gone_are_swept() {
        let shares = UnwrapShares::new(2);
        let busy = NodeId([0xff; 32]);
        let held = shares.turn(busy).await.unwrap();
        for i in 0..(SHARES_KEPT as u32 * 2) {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            drop(shares.turn(NodeId(id)).await.unwrap());
        }
        let map = shares.per_peer.lock().unwrap();
        assert!(map.len() <= SHARES_KEPT + 1, "{} shares kept", map.len());
        assert!(map.contains_key(&busy));
        drop(map);
        drop(held);
    }

    // Paused time: a wait that would last for ever ends at once, so
    // "still waiting" is decided by the semaphores, not by the machine.
    #[tokio::test(start_paused = true)]
    async fn a_peer_unwraps_one_packet_at_a_time_and_others_take_their_turn() {
        let shares = UnwrapShares::new(2);
        let (flood, other, third) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        let first = shares.turn(flood).await.unwrap();
        // The same peer's next packet waits for its first…
        let soon = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(soon, shares.turn(flood))
                .await
                .is_err(),
            "a second unwrap for one peer at once"
        );
        // …while another peer's goes ahead.
        let second = shares.turn(other).await.unwrap();
        // Both cores busy: a third peer waits for a core, not for a peer.
        assert!(
            tokio::time::timeout(soon, shares.turn(third))
                .await
                .is_err()
        );
        drop(second);
        let t = tokio::time::timeout(soon, shares.turn(third)).await;
        assert!(t.is_ok(), "a freed core goes to the waiting peer");
        drop(first);
        assert!(tokio::time::timeout(soon, shares.turn(flood)).await.is_ok());
    }

    /// A gateway hands a client the first reply it could use: one held
    /// with a payload of the wrong size is deleted, not handed out nor
    /// left standing before it, and counted as dropped by its class.
    #[tokio::test(start_paused = true)]
    async fn a_gateway_skips_and_counts_a_held_reply_of_the_wrong_size() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, spool) = crate::mixnet::context::testing::node(dir.path(), "0s", "0s");
        let caps = HoldCaps {
            per_mailbox: 8,
            total_bytes: u64::MAX,
            mailboxes: 8,
        };
        let client = NodeId([9; 32]);
        for (tag, len) in [(1u8, packet::PAYLOAD_SIZE - 1), (2, packet::PAYLOAD_SIZE)] {
            let held = spool
                .custody(Custody::Hold {
                    tag: [tag; 32],
                    epoch: 0,
                    mailbox: client.0,
                    reply_id: [tag; 16],
                    payload: vec![tag; len],
                    caps,
                })
                .await;
            assert_eq!(held, CustodyOutcome::Stored);
        }
        let hop = Hop {
            ctx: ctx.clone(),
            completions: Default::default(),
            shares: UnwrapShares::new(1),
            partial_cap: 0,
            gateway: Some(caps),
        };
        let reply = hop.fetch(client).await.expect("the sound reply");
        assert_eq!(reply.reply_id, [2; 16]);
        ctx.stats
            .mixnet
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let text = ctx.stats.encode();
        for counted in [
            "pluto2_mixnet_held_dropped_total{why=\"damaged\"} 1",
            "pluto2_mixnet_held_fetched_total 1",
        ] {
            assert!(text.contains(counted), "no {counted:?} in\n{text}");
        }
        assert_eq!(spool.held_totals().await.unwrap().replies, 1);
    }

    /// 23 h with the production parameters: past an entry's longest wait
    /// between two rounds (20 h) and one route's delays (3 h), inside the
    /// previous hops' custody (2 days); never past both horizons.
    #[test]
    fn a_partial_message_outlives_the_entrys_longest_wait_and_no_horizon() {
        let p = Params::default();
        assert_eq!(partial_idle_limit(&p), Duration::from_secs(23 * 3600));
        assert!(partial_idle_limit(&p) < p.custody_horizon);
        let slow = Params {
            ack_timeout: Duration::from_secs(24 * 3600),
            ..p.clone()
        };
        assert_eq!(partial_idle_limit(&slow), p.e2e_horizon + p.custody_horizon);
    }

    #[test]
    fn bitmaps_mark_exactly_the_stored_fragments() {
        let map = bitmap(10, &[0, 3, 9]);
        assert_eq!(map.len(), 2);
        for i in 0..10 {
            assert_eq!(marked(&map, i), [0, 3, 9].contains(&i), "{i}");
        }
        assert!(!marked(&map, 20));
    }
}
