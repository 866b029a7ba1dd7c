//! Intake: what the node does with a message a transport has finished
//! receiving, before it is durable.
//!
//! One place owns the order of these steps, so every way mail enters (SMTP
//! today, the mixnet exit later) treats it alike:
//!
//! 1. strip the padding a sending pluto2 added (it is not the author's);
//! 2. drop our own loop cover coming back (counted, never spooled), and
//!    refuse anything else addressed to this node's own name (a loop);
//! 3. refuse a post to a newsgroup on the `-dest-block` list (its
//!    recipients were checked at RCPT; the `Newsgroups:` header shows only
//!    now);
//! 4. refuse a message whose header records [`HOP_LIMIT`] hops or more
//!    (a mail loop between relays; see [`sanitize::hops`]);
//! 5. draw the message's release time from the mix policy;
//! 6. enqueue durably in the spool;
//! 7. count what became of it, whatever the step that decided
//!    (`pluto2_messages_total` by outcome).
//!
//! Transports hand messages in through traits they define themselves
//! (`smtp::server::MessageSink`), so they never import
//! this module.

use std::sync::Arc;

use tracing::info;

use crate::BoxFuture;
use crate::envelope::{EnqueueOutcome, Message};
use crate::message::padding;
use crate::node::mail_cover::CoverKey;
use crate::node::policy::DestBlock;
use crate::release::MixPolicy;
use crate::sanitize;
use crate::smtp::server::MessageSink;
use crate::spool::Spool;
use crate::stats::Stats;
use crate::time::Clock;

/// Hops after which a message is taken to be looping and refused, as with
/// Postfix's `hopcount_limit` (same default, and counting the same
/// `Received:` and `Delivered-To:` fields, plus pluto2's own `X-Hop-Count`).
/// Real paths are a handful of hops; fifty leaves room for long remailer
/// chains and still ends a loop between two nodes within seconds.
pub const HOP_LIMIT: u32 = 50;

/// Node intake shared by every connection task.
pub struct Intake {
    pub spool: Spool,
    /// Decides when an accepted message may leave.
    pub mix: MixPolicy,
    /// Recognises this node's own cover messages coming back.
    pub cover_key: CoverKey,
    pub stats: Arc<Stats>,
    /// Where "now" comes from for release times (injected for tests).
    pub clock: Clock,
    /// The `-dest-block` list, for newsgroup posts; `None` where this node
    /// does not decide (a mixnet entry: the exit does).
    pub dest_block: Option<Arc<DestBlock>>,
}

impl Intake {
    /// Runs the intake steps for one message; the outcome is what the
    /// transport reports to its client.
    pub async fn ingest(&self, message: Message) -> EnqueueOutcome {
        let outcome = self.steps(message).await;
        self.stats.message(outcome);
        outcome
    }

    async fn steps(&self, mut message: Message) -> EnqueueOutcome {
        let stripped = padding::strip(&message.body);
        if stripped.len() != message.body.len() {
            message.body = stripped.to_vec();
        }
        if self.cover_key.is_cover(&message.body) {
            return EnqueueOutcome::OwnTraffic;
        }
        if message.envelope.to_own_name {
            // Not our cover, yet addressed to us: relaying it would loop.
            info!("[SMTP] refused a message to this node's own name that is not its cover");
            return EnqueueOutcome::Loop;
        }
        if self
            .dest_block
            .as_ref()
            .is_some_and(|block| block.blocks_post(&message.body))
        {
            return EnqueueOutcome::Blocked;
        }
        let hops = sanitize::hops(&message.body);
        if hops >= HOP_LIMIT {
            info!("[LOOP] refused a message with {hops} hops (limit {HOP_LIMIT})");
            return EnqueueOutcome::TooManyHops;
        }
        let outcome = self.spool.enqueue(message, self.release_time()).await;
        if outcome == EnqueueOutcome::Replay {
            info!(
                "[SPOOL] a message identical to one accepted within the replay window: answered as accepted, not queued again"
            );
        }
        outcome
    }

    /// Release time for a message accepted now, from the thread-local
    /// CSPRNG (ChaCha, reseeded from the OS). Synchronous so the RNG never
    /// lives across an await.
    fn release_time(&self) -> u64 {
        self.mix.release_at((self.clock)(), &mut rand::rng())
    }
}

impl MessageSink for Intake {
    fn accept(&self, message: Message) -> BoxFuture<'_, EnqueueOutcome> {
        Box::pin(self.ingest(message))
    }
}
