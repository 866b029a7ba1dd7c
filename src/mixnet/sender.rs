//! The entry: mail accepted here by SMTP enters the mixnet once its mix
//! release time has passed, and stays in the spool until the exit says
//! COMPLETE.
//!
//! For each message: a random 16-byte message id, the blob cut into
//! fragments, one exit chosen for all of them, and per fragment a route of
//! `hops` distinct nodes (never this one; the last is the exit) with delays
//! drawn here, plus a single-use reply block whose route ends here. All of
//! it is committed in one transaction with the packets for the first hops.
//!
//! When the acknowledgement is overdue, the missing fragments (all of them
//! unless a PARTIAL said otherwise) go again on new routes with new delays,
//! same message id, same exit, after a randomized, growing wait; after the
//! end-to-end horizon the message is dropped and counted. There is never a
//! direct fallback: without enough usable nodes, mail waits.
//!
//! A message that can never be built (too large for the network, a packet
//! the codec refuses) is dropped and counted at its first attempt, so it
//! cannot take a place in every round and hold newer mail back; a storage
//! failure is not such a reason (it passes, and the message is tried again).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::context::MixContext;
use super::hop::{marked, random_id};
use super::path::{hop_delay, pick_nodes};
use crate::envelope::Message;
use crate::spool::custody::{Launch, MixId, OutPacket, PacketKind};
use crate::stats::Stats;
use crate::wire::fragment::{self, Fragment};
use crate::wire::packet::{self, NodeId, ReplyBlock, RouteHop};

/// Longest the sender sleeps without looking at the spool.
const MAX_IDLE: Duration = Duration::from_secs(30);
/// While no route can be built, how often to look again (a node that comes
/// back is used within this).
const NO_ROUTE_RETRY: Duration = Duration::from_secs(5);
/// Messages handled per round.
const BATCH: usize = 16;
/// Reply routes are at most this many hops before the entry (Sphinx allows
/// five in all, and the entry itself is the last).
const MAX_REPLY_HOPS: usize = 4;

/// Peers a route may use in `epoch`: listed, not this node, link up,
/// loops coming back, not caught with two faces, and their key for that
/// epoch here.
pub fn usable_peers(ctx: &MixContext, epoch: u32) -> Vec<NodeId> {
    let own = ctx.own();
    ctx.health
        .usable()
        .into_iter()
        .filter(|id| *id != own && ctx.directory.lists(id))
        .filter(|id| ctx.mix_key(id, epoch).is_some())
        .collect()
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("fewer usable nodes than a route needs")]
    NoRoute,
    #[error("the message is larger than the network carries")]
    TooLarge,
    #[error("{0}")]
    Packet(#[from] packet::PacketError),
    #[error("{0}")]
    Fragment(#[from] fragment::FragmentError),
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    /// The blocking task that wraps the packets panicked (a bug, met again
    /// each time the same message is built).
    #[error("building the packets panicked")]
    Panicked,
    /// The runtime is stopping: the blocking task was cancelled.
    #[error("stopping")]
    Stopped,
}

impl SendError {
    fn from_join(e: tokio::task::JoinError) -> SendError {
        if e.is_panic() {
            SendError::Panicked
        } else {
            SendError::Stopped
        }
    }

    /// The drop code of an error that every later attempt would meet again
    /// (it depends only on the message and the network's parameters, which
    /// cannot change without a restart); `None` when the message should
    /// wait and be tried again.
    ///
    /// Permanent: the message (its blob: recipients, flags and body) is
    /// over what the network carries, or cut into more fragments than a
    /// message may have; the packet codec refuses a route or a plaintext
    /// (sizes and lengths fixed by the parameters); the build panicked.
    /// Not permanent: no route (nodes come back), a storage error (a full
    /// disk or a busy database passes, and it is no fault of the message),
    /// and a cancelled build (the node is stopping).
    fn permanent(&self) -> Option<&'static str> {
        match self {
            SendError::TooLarge | SendError::Fragment(fragment::FragmentError::TooLarge) => {
                Some("too_large")
            }
            SendError::Fragment(_) => Some("fragment"),
            SendError::Packet(_) => Some("packet"),
            SendError::Panicked => Some("internal"),
            SendError::NoRoute | SendError::Spool(_) | SendError::Stopped => None,
        }
    }
}

/// What `build` makes for one round: the message's fragment count, the
/// recovery material per reply block (by reply id), and the packets.
type Wrapped = (u16, Vec<([u8; 16], Vec<u8>)>, Vec<OutPacket>);

pub struct Sender {
    pub ctx: Arc<MixContext>,
}

impl Sender {
    /// Runs until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut health = self.ctx.health.events();
        let mut mail = self.ctx.spool.mail_events();
        loop {
            self.update_health_stats();
            mail.borrow_and_update();
            let mut wait = MAX_IDLE;
            match self.ctx.spool.due_for_mixnet(BATCH).await {
                Ok((due, next)) => {
                    // A message that could not be sent is still due, so
                    // `next` is already past: honouring it would spin.
                    let mut stuck = false;
                    for lease in due {
                        match self.launch(lease.spool_message, &lease.message).await {
                            Ok(()) => {}
                            Err(SendError::NoRoute) => {
                                Stats::add(&self.ctx.stats.mix_no_route, 1);
                                stuck = true;
                                break;
                            }
                            Err(e) => match e.permanent() {
                                Some(code) => {
                                    if !self.drop_unlaunchable(lease.spool_message, code, &e).await
                                    {
                                        stuck = true;
                                    }
                                }
                                None => {
                                    warn!("[MIXNET] cannot send a message into the mixnet: {e}");
                                    stuck = true;
                                }
                            },
                        }
                    }
                    wait = self.wait_after(wait, stuck, next);
                }
                Err(e) => warn!("[MIXNET] cannot read the spool: {e}"),
            }
            match self.ctx.spool.overdue(BATCH).await {
                Ok((overdue, next)) => {
                    // As above: a retransmission that failed left its check
                    // time in the past, so `next` would make this spin.
                    let mut stuck = false;
                    for o in overdue {
                        if let Err(e) = self.retransmit(o).await {
                            if !matches!(e, SendError::NoRoute) {
                                warn!("[MIXNET] cannot retransmit: {e}");
                            }
                            stuck = true;
                        }
                    }
                    wait = self.wait_after(wait, stuck, next);
                }
                Err(e) => warn!("[MIXNET] cannot read the spool: {e}"),
            }
            let health_changed = async {
                match health.as_mut() {
                    Some(rx) => {
                        let _ = rx.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = mail.changed() => {}
                _ = health_changed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long to sleep after a round: until the next due time, unless
    /// something failed this round (then it is still due, and honouring
    /// its time would spin), in which case a short pause.
    fn wait_after(&self, wait: Duration, stuck: bool, next: Option<u64>) -> Duration {
        match (stuck, next) {
            (true, _) => wait.min(NO_ROUTE_RETRY),
            (false, Some(at)) => wait.min(self.until(at)),
            (false, None) => wait,
        }
    }

    /// Drops a message that can never enter the mixnet (see
    /// [`SendError::permanent`]) and counts it, so it takes no place in
    /// later rounds. The log line says class, stage and code, never an
    /// address. False if the drop itself failed (the message stays due and
    /// is dropped at its next attempt).
    async fn drop_unlaunchable(
        &self,
        spool_message: i64,
        code: &'static str,
        e: &SendError,
    ) -> bool {
        match self.ctx.spool.drop_unlaunched(spool_message).await {
            Ok(dropped) => {
                if dropped {
                    self.ctx.stats.launch_dropped(code);
                    warn!(
                        "[MIXNET] dropped a message that cannot enter the mixnet: class=permanent stage=launch code={code} ({e})"
                    );
                }
                true
            }
            Err(err) => {
                warn!("[MIXNET] cannot drop a message that cannot enter the mixnet: {err}");
                false
            }
        }
    }

    fn until(&self, at: u64) -> Duration {
        Duration::from_millis(at.saturating_sub(self.ctx.now()))
    }

    fn update_health_stats(&self) {
        let others = self.ctx.directory.others().len() as u64;
        let usable = self.usable_peers().len() as u64;
        self.ctx.stats.set_healthy(usable, others);
    }

    /// Peers a route may use now: listed, not this node, link up, loops
    /// coming back, and their key for the current epoch here.
    fn usable_peers(&self) -> Vec<NodeId> {
        usable_peers(&self.ctx, self.ctx.epoch())
    }

    fn pick_exit(&self, usable: &[NodeId]) -> Option<NodeId> {
        let exits: Vec<NodeId> = usable
            .iter()
            .copied()
            .filter(|id| self.ctx.directory.node(id).is_some_and(|n| n.exit))
            .filter(|id| self.beside().iter().all(|b| !self.same_family(id, b)))
            .collect();
        let i = rand::rng().random_range(0..exits.len().max(1));
        exits.get(i).copied()
    }

    fn hop(&self, id: NodeId, epoch: u32, delay: Duration) -> Result<RouteHop, SendError> {
        Ok(RouteHop {
            id,
            mix_key: self.ctx.mix_key(&id, epoch).ok_or(SendError::NoRoute)?,
            delay,
        })
    }

    fn delay(&self) -> Duration {
        let p = self.ctx.directory.params();
        hop_delay(p.hop_delay_mean, p.hop_delay_max, &mut rand::rng())
    }

    /// Nodes every route of this sender holds already: a client's gateway
    /// (the first hop of its routes and the last of its reply routes), so
    /// that no other node of its family is picked; none for a node.
    fn beside(&self) -> Vec<NodeId> {
        self.ctx.client.iter().map(|c| c.gateway).collect()
    }

    fn same_family(&self, a: &NodeId, b: &NodeId) -> bool {
        let family = |id: &NodeId| self.ctx.directory.node(id).and_then(|n| n.family);
        a == b || family(a).is_some_and(|f| family(b) == Some(f))
    }

    /// `hops` distinct usable nodes ending at `exit`, each with its delay;
    /// never two of one operator family. A client's route starts at its
    /// gateway, a real hop with a delay of its own.
    fn forward_route(
        &self,
        usable: &[NodeId],
        exit: NodeId,
        epoch: u32,
    ) -> Result<Vec<RouteHop>, SendError> {
        let hops = self.ctx.directory.params().hops;
        let mut beside = self.beside();
        beside.push(exit);
        let middle = pick_nodes(
            &self.ctx.directory.get(),
            usable,
            hops - 1,
            &beside,
            &mut rand::rng(),
        )
        .ok_or(SendError::NoRoute)?;
        let mut route = Vec::with_capacity(hops + 1);
        if let Some(client) = &self.ctx.client {
            route.push(self.hop(client.gateway, epoch, self.delay())?);
        }
        for id in middle {
            route.push(self.hop(id, epoch, self.delay())?);
        }
        route.push(self.hop(exit, epoch, Duration::ZERO)?);
        Ok(route)
    }

    /// A reply route: distinct usable nodes other than the exit (as many
    /// as families allow, at least one), then this node (which must be
    /// its last hop to read the reply), or for a client its gateway,
    /// where the reply waits in its mailbox.
    fn reply_route(
        &self,
        usable: &[NodeId],
        exit: NodeId,
        epoch: u32,
    ) -> Result<Vec<RouteHop>, SendError> {
        let want = self.ctx.directory.params().hops.min(MAX_REPLY_HOPS);
        let pool: Vec<NodeId> = usable.iter().copied().filter(|id| *id != exit).collect();
        let picked = (1..=want)
            .rev()
            .find_map(|n| {
                pick_nodes(
                    &self.ctx.directory.get(),
                    &pool,
                    n,
                    &self.beside(),
                    &mut rand::rng(),
                )
            })
            .ok_or(SendError::NoRoute)?;
        let mut route = Vec::with_capacity(picked.len() + 1);
        for id in picked {
            route.push(self.hop(id, epoch, self.delay())?);
        }
        route.push(self.hop(self.ctx.own(), epoch, Duration::ZERO)?);
        Ok(route)
    }

    /// Builds the packets for `indices` of the message's fragments.
    fn build(
        &self,
        mix_id: MixId,
        message: &Message,
        exit: NodeId,
        usable: &[NodeId],
        indices: Option<&[u16]>,
    ) -> Result<Wrapped, SendError> {
        // The exits' own lines (the network's contract: at most
        // MAX_RECIPIENTS recipients, a blob within max_blob_len), so an
        // entry never sends what every exit refuses, nor drops what they
        // would take.
        if message.envelope.recipients.len() > fragment::MAX_RECIPIENTS {
            return Err(SendError::TooLarge);
        }
        let blob = fragment::encode_blob(message);
        if blob.len() > fragment::max_blob_len(self.ctx.directory.params().max_message_size) {
            return Err(SendError::TooLarge);
        }
        let fragments: Vec<Fragment> = fragment::split(&blob, mix_id)?;
        let count = fragments.len() as u16;
        // One epoch for every packet and reply block of this round: the
        // hops' keys of the epoch now, by this node's clock.
        let epoch = self.ctx.epoch();
        let mut replies = Vec::new();
        let mut packets = Vec::new();
        for mut f in fragments {
            if indices.is_some_and(|want| !want.contains(&f.index)) {
                continue;
            }
            let route = self.forward_route(usable, exit, epoch)?;
            let reply_id = random_id();
            let reply_route = self.reply_route(usable, exit, epoch)?;
            let (block, recovery) = match &self.ctx.client {
                Some(client) => {
                    ReplyBlock::create_to(&reply_route, client.mailbox, reply_id, epoch)?
                }
                None => ReplyBlock::create(&reply_route, reply_id, epoch)?,
            };
            f.reply_block = Some(block);
            let wire = packet::build(&f.encode(), &route)?;
            replies.push((reply_id, recovery.0));
            packets.push(OutPacket {
                next_hop: route[0].id.0,
                epoch,
                bytes: wire.as_bytes().to_vec(),
                kind: PacketKind::Fragment,
                release_at: self.ctx.now(),
                deadline: self.ctx.custody_deadline(),
            });
        }
        Ok((count, replies, packets))
    }

    fn next_check(&self, rounds: u32) -> u64 {
        let base = self.ctx.directory.params().ack_timeout * (1u32 << rounds.min(4));
        let jitter = rand::rng().random_range(0.75..1.25);
        self.ctx.now() + base.mul_f64(jitter).as_millis() as u64
    }

    async fn launch(&self, spool_message: i64, message: &Message) -> Result<(), SendError> {
        let usable = self.usable_peers();
        let exit = self.pick_exit(&usable).ok_or(SendError::NoRoute)?;
        let mix_id = random_id();
        let building = {
            let message = message.clone();
            let usable = usable.clone();
            let this = Sender {
                ctx: self.ctx.clone(),
            };
            // Sphinx wrapping is CPU work (about half a millisecond per
            // packet): off the async executor.
            tokio::task::spawn_blocking(move || this.build(mix_id, &message, exit, &usable, None))
                .await
                .map_err(SendError::from_join)?
        };
        let (count, replies, packets) = building?;
        let sent = packets.len() as u64;
        let params = self.ctx.directory.params();
        self.ctx
            .spool
            .launch(Launch {
                spool_message,
                mix_id,
                exit: exit.0,
                fragments: count,
                next_check: self.next_check(0),
                give_up_at: self.ctx.now() + params.e2e_horizon.as_millis() as u64,
                replies,
                packets,
            })
            .await?;
        Stats::add(&self.ctx.stats.mix_messages_in, 1);
        Stats::add(&self.ctx.stats.mix_fragments_sent, sent);
        Ok(())
    }

    async fn retransmit(&self, o: crate::spool::custody::Overdue) -> Result<(), SendError> {
        if self.ctx.now() >= o.give_up_at {
            if self.ctx.spool.give_up(o.mix_id).await? {
                Stats::add(&self.ctx.stats.mix_messages_failed, 1);
                info!(
                    "[MIXNET] dropped a message: no acknowledgement within the end-to-end horizon"
                );
            }
            return Ok(());
        }
        let exit = NodeId(o.exit);
        let usable = self.usable_peers();
        let mut missing: Vec<u16> = (0..o.fragments)
            .filter(|i| o.acked.as_deref().is_none_or(|map| !marked(map, *i)))
            .collect();
        // The exit said it has every fragment, yet no COMPLETE came (lost,
        // or its completion failed): one fragment again makes it answer
        // (a finished message is re-acknowledged, an unfinished one is
        // completed).
        if missing.is_empty() {
            missing.push(0);
        }
        let built = if usable.contains(&exit) {
            let this = Sender {
                ctx: self.ctx.clone(),
            };
            let (mix_id, message, missing) = (o.mix_id, o.message.clone(), missing.clone());
            tokio::task::spawn_blocking(move || {
                this.build(mix_id, &message, exit, &usable, Some(&missing))
            })
            .await
            .map_err(SendError::from_join)?
        } else {
            Err(SendError::NoRoute)
        };
        // Without a route now, only the next check moves: same message id,
        // same exit, later.
        let (replies, packets) = match built {
            Ok((_, replies, packets)) => (replies, packets),
            Err(SendError::NoRoute) => (Vec::new(), Vec::new()),
            Err(e) => return Err(e),
        };
        let sent = packets.len() as u64;
        self.ctx
            .spool
            .launch(Launch {
                spool_message: o.spool_message,
                mix_id: o.mix_id,
                exit: o.exit,
                fragments: o.fragments,
                next_check: self.next_check(o.rounds + 1),
                give_up_at: o.give_up_at,
                replies,
                packets,
            })
            .await?;
        Stats::add(&self.ctx.stats.mix_fragments_retransmitted, sent);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only what every later attempt would meet again drops mail; a route
    /// that may come back, a storage failure and a stop keep it.
    #[test]
    fn it_drops_only_mail_that_no_later_attempt_could_send() {
        let table: [(SendError, Option<&str>); 8] = [
            (SendError::NoRoute, None),
            (SendError::Spool(crate::spool::SpoolError::Closed), None),
            (
                SendError::Spool(crate::spool::SpoolError::Sqlite(
                    rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                        None,
                    ),
                )),
                None,
            ),
            (SendError::Stopped, None),
            (SendError::TooLarge, Some("too_large")),
            (
                SendError::Fragment(fragment::FragmentError::TooLarge),
                Some("too_large"),
            ),
            (
                SendError::Packet(packet::PacketError::RouteLength(9)),
                Some("packet"),
            ),
            (SendError::Panicked, Some("internal")),
        ];
        for (error, code) in table {
            assert_eq!(error.permanent(), code, "{error:?}");
        }
    }
}
