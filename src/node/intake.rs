//! Intake: what the node does with a message a transport has finished
//! receiving, before it is durable.
//!
//! One place owns the order of these steps, so every way mail enters (SMTP
//! today, the mixnet exit later) treats it alike:
//!
//! 1. strip the padding a sending pluto2 added (it is not the author's);
//! 2. drop our own loop cover coming back (counted, never spooled);
//! 3. draw the message's release time from the mix policy;
//! 4. enqueue durably in the spool;
//! 5. count it.
//!
//! Transports hand messages in through traits they define themselves
//! (`smtp::server::MessageSink`), so they never import
//! this module.

use std::sync::Arc;

use crate::BoxFuture;
use crate::envelope::{EnqueueOutcome, Message};
use crate::mix::{MixPolicy, padding};
use crate::node::cover::CoverKey;
use crate::smtp::server::MessageSink;
use crate::spool::Spool;
use crate::stats::Stats;
use crate::time::Clock;

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
}

impl Intake {
    /// Runs the intake steps for one message; the outcome is what the
    /// transport reports to its client.
    pub async fn ingest(&self, mut message: Message) -> EnqueueOutcome {
        let stripped = padding::strip(&message.body);
        if stripped.len() != message.body.len() {
            message.body = stripped.to_vec();
        }
        if self.cover_key.is_cover(&message.body) {
            Stats::add(&self.stats.cover_received, 1);
            return EnqueueOutcome::OwnTraffic;
        }
        let outcome = self.spool.enqueue(message, self.release_time()).await;
        if outcome == EnqueueOutcome::Queued {
            Stats::add(&self.stats.received, 1);
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
