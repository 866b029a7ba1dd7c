//! The single writer: group commit of enqueue requests.
//!
//! One OS thread owns the write connection. It takes every request that is
//! waiting, writes them all in one transaction and fsyncs once; requests that
//! arrive during that fsync form the next group. Under load the cost of an
//! fsync is shared by all concurrent sessions instead of paid per message,
//! and no reply is sent before the transaction holding it is durable.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, error};

use super::SpoolError;
use super::delivery::{self, Disposition, LeaseBatch};
use crate::envelope::{EnqueueOutcome, Message, ReplayId};
use crate::time::Clock;

/// Upper bound on one group, so one huge burst cannot hold every reply
/// behind a single enormous transaction.
const MAX_GROUP: usize = 256;

/// How often (ms) expired replay ids are deleted.
const REPLAY_PRUNE_INTERVAL: u64 = 60_000;

pub struct EnqueueRequest {
    pub message: Message,
    pub replay_id: ReplayId,
    /// When the mix policy lets the message go (unix ms).
    pub release_at: u64,
    pub reply: oneshot::Sender<EnqueueOutcome>,
}

/// Work for the single writer. Enqueues are grouped into one transaction;
/// delivery bookkeeping is rarer and runs in its own.
pub enum Job {
    Enqueue(EnqueueRequest),
    Lease {
        max: usize,
        lease_ms: u64,
        reply: oneshot::Sender<Result<LeaseBatch, SpoolError>>,
    },
    Settle {
        outcomes: Vec<(i64, Disposition)>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
}

pub struct Committer {
    conn: Connection,
    clock: Clock,
    replay_window: Duration,
    last_prune: u64,
    new_mail: Arc<Notify>,
}

impl Committer {
    pub fn new(
        conn: Connection,
        clock: Clock,
        replay_window: Duration,
        new_mail: Arc<Notify>,
    ) -> Self {
        Self {
            conn,
            clock,
            replay_window,
            last_prune: 0,
            new_mail,
        }
    }

    /// Runs until every sender is gone, then checkpoints and closes.
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut others = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Enqueue(req) => group.push(req),
                    other => others.push(other),
                }
                if group.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit_group(&mut group);
            }
            for job in others.drain(..) {
                self.bookkeeping(job);
            }
        }
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            error!("[SPOOL] final checkpoint failed: {e}");
        }
        if let Err((_, e)) = self.conn.close() {
            error!("[SPOOL] closing the database failed: {e}");
        }
        debug!("[SPOOL] closed");
    }

    fn bookkeeping(&mut self, job: Job) {
        let now = (self.clock)();
        match job {
            Job::Lease {
                max,
                lease_ms,
                reply,
            } => {
                let _ = reply.send(delivery::lease(&mut self.conn, now, max, lease_ms));
            }
            Job::Settle { outcomes, reply } => {
                let _ = reply.send(delivery::settle(&mut self.conn, &outcomes));
            }
            Job::Enqueue(_) => unreachable!("enqueues are grouped"),
        }
    }

    fn commit_group(&mut self, group: &mut Vec<EnqueueRequest>) {
        let now = (self.clock)();
        let outcomes = match self.write(group, now) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                error!("[SPOOL] commit of {} message(s) failed: {e}", group.len());
                let outcome = if e.is_disk_full() {
                    EnqueueOutcome::NoSpace
                } else {
                    EnqueueOutcome::Failed
                };
                vec![outcome; group.len()]
            }
        };
        let queued = outcomes
            .iter()
            .filter(|o| **o == EnqueueOutcome::Queued)
            .count();
        debug!(
            "[SPOOL] group commit: {} request(s), {queued} queued",
            group.len()
        );
        if queued > 0 {
            self.new_mail.notify_one();
        }
        for (req, outcome) in group.drain(..).zip(outcomes) {
            // The session may have gone away; the message is stored anyway
            // and will be delivered (at-least-once).
            let _ = req.reply.send(outcome);
        }
        if now >= self.last_prune + REPLAY_PRUNE_INTERVAL {
            self.last_prune = now;
            if let Err(e) = self.prune_replay(now) {
                error!("[SPOOL] pruning the replay cache failed: {e}");
            }
        }
    }

    fn write(
        &mut self,
        group: &[EnqueueRequest],
        now: u64,
    ) -> Result<Vec<EnqueueOutcome>, SpoolError> {
        let window = self.replay_window.as_millis() as u64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(group.len());
        {
            let mut seen =
                tx.prepare_cached("SELECT 1 FROM replay WHERE id = ?1 AND seen_at > ?2")?;
            let mut remember =
                tx.prepare_cached("INSERT OR REPLACE INTO replay (id, seen_at) VALUES (?1, ?2)")?;
            let mut message = tx.prepare_cached(
                "INSERT INTO messages (received_at, sender, smtputf8, eight_bit, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut recipient = tx.prepare_cached(
                "INSERT INTO recipients (message_id, address, next_attempt) VALUES (?1, ?2, ?3)",
            )?;
            for req in group {
                if window > 0 {
                    let cutoff = now.saturating_sub(window) as i64;
                    if seen.exists(params![&req.replay_id[..], cutoff])? {
                        outcomes.push(EnqueueOutcome::Replay);
                        continue;
                    }
                    remember.execute(params![&req.replay_id[..], now as i64])?;
                }
                let env = &req.message.envelope;
                message.execute(params![
                    now as i64,
                    env.sender,
                    env.smtputf8,
                    env.eight_bit,
                    req.message.body
                ])?;
                let id = tx.last_insert_rowid();
                for address in &env.recipients {
                    recipient.execute(params![id, address, req.release_at as i64])?;
                }
                outcomes.push(EnqueueOutcome::Queued);
            }
        }
        tx.commit()?;
        Ok(outcomes)
    }

    fn prune_replay(&self, now: u64) -> Result<(), SpoolError> {
        let cutoff = now.saturating_sub(self.replay_window.as_millis() as u64) as i64;
        self.conn
            .execute("DELETE FROM replay WHERE seen_at <= ?1", params![cutoff])?;
        Ok(())
    }
}
