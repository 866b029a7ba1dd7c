//! The single writer: group commit of enqueue requests.
//!
//! One OS thread owns the write connection. It takes every request that is
//! waiting, writes them all in one transaction and fsyncs once; requests that
//! arrive during that fsync form the next group. Under load the cost of an
//! fsync is shared by all concurrent sessions instead of paid per message,
//! and no reply is sent before the transaction holding it is durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, error, warn};

use super::delivery::{self, Disposition, LeaseBatch, LeaseScope};
use super::reader::{self, ReaderSlot};
use super::{CommitTimes, SpoolError, custody};
use crate::envelope::{EnqueueOutcome, Message, ReplayId};
use crate::time::{Clock, UnixMillis};

/// Upper bound on one group, so one huge burst cannot hold every reply
/// behind a single enormous transaction.
const MAX_GROUP: usize = 256;

/// How often (ms) expired replay ids are deleted.
const REPLAY_PRUNE_INTERVAL: u64 = 60_000;

pub struct EnqueueRequest {
    pub message: Message,
    pub origin: Origin,
    /// When the mix policy lets the message go (unix ms).
    pub release_at: u64,
    pub reply: oneshot::Sender<EnqueueOutcome>,
}

/// Where a message comes from, and so what else its transaction holds.
///
/// Both kinds go through the same group commit and the same INSERTs; a
/// message that left the mixnet at this exit adds its exit rows (done id,
/// fragments gone, COMPLETE queued) to the same transaction.
pub enum Origin {
    /// Accepted by SMTP here. Its replay id is checked against the replay
    /// window: an identical message within it is answered as accepted and
    /// not stored again.
    Smtp(ReplayId),
    /// Completed at this exit. Duplicates are known by the mixnet message
    /// id (the entry retransmits until COMPLETE), not by content: two
    /// senders may send the same text through the mixnet. A message whose
    /// recipients are all gone (refused by intake) is recorded as done and
    /// acknowledged, and never stored.
    Exit(custody::ExitRows),
}

/// Work for the single writer. Enqueues are grouped into one transaction;
/// delivery bookkeeping is rarer and runs in its own.
pub enum Job {
    Enqueue(EnqueueRequest),
    Lease {
        max: usize,
        lease_ms: u64,
        scope: LeaseScope,
        reply: oneshot::Sender<Result<LeaseBatch, SpoolError>>,
    },
    Settle {
        outcomes: Vec<(i64, Disposition)>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    /// Mixnet custody decisions: grouped into one transaction like
    /// enqueues, because a busy hop commits thousands a second.
    Custody(CustodyRequest),
    /// What became of packets sent on links (acknowledged, to retry):
    /// grouped too, because every link ACK brings one, as many a second as
    /// the node forwards packets.
    PacketSettle(SettleRequest),
    /// Any other single-transaction job (mixnet bookkeeping): runs on the
    /// writer thread with the connection and the current time.
    Call(WriterCall),
}

/// A job for the writer thread: the connection and the current time.
pub type WriterCall = Box<dyn FnOnce(&mut Connection, UnixMillis) + Send>;

pub struct CustodyRequest {
    pub custody: custody::Custody,
    pub reply: oneshot::Sender<custody::CustodyOutcome>,
}

pub struct SettleRequest {
    pub outcomes: Vec<(i64, custody::PacketSettle)>,
    /// Told whether the group committed; `None` for a caller that does not
    /// wait (a link's ACK: a lost settle only means the packet is sent
    /// again, and the next hop answers it as a duplicate).
    pub reply: Option<oneshot::Sender<bool>>,
}

pub struct Committer {
    conn: Connection,
    /// The spool's reader, closed here before the final checkpoint.
    reader: ReaderSlot,
    clock: Clock,
    replay_window: Duration,
    last_prune: u64,
    new_mail: Arc<Notify>,
    times: CommitTimes,
    /// `-custody-max` as shares, once the daemon set it.
    caps: Arc<std::sync::OnceLock<custody::CustodyCaps>>,
    counts: custody::CustodyCounts,
}

impl Committer {
    pub fn new(
        conn: Connection,
        reader: ReaderSlot,
        clock: Clock,
        replay_window: Duration,
        new_mail: Arc<Notify>,
        times: CommitTimes,
        caps: Arc<std::sync::OnceLock<custody::CustodyCaps>>,
    ) -> Self {
        Self {
            conn,
            reader,
            clock,
            replay_window,
            last_prune: 0,
            new_mail,
            times,
            caps,
            counts: Default::default(),
        }
    }

    /// Answers busy, at once, the forward packets of `group` that do not
    /// fit under the custody caps, and leaves the others in `group`.
    fn over_caps(&mut self, group: &mut Vec<CustodyRequest>, now: u64) {
        let Some(caps) = self.caps.get().copied() else {
            return;
        };
        if let Err(e) = self.counts.refresh(&self.conn, now) {
            warn!("[SPOOL] cannot count the packets in custody: {e}");
        }
        let mut kept = Vec::with_capacity(group.len());
        for req in group.drain(..) {
            if let custody::Custody::Forward { from, .. } = &req.custody {
                if let Err(why) = self.counts.admits(&caps, from) {
                    let _ = req.reply.send(custody::CustodyOutcome::Busy(why));
                    continue;
                }
                // Counted before the commit: a failed commit or a
                // duplicate leaves the count high until the next recount.
                self.counts.stored(*from);
            }
            kept.push(req);
        }
        *group = kept;
    }

    /// Runs until every sender is gone, then closes the reader,
    /// checkpoints and closes: the writer is the last connection, so the
    /// close removes the `-wal` and `-shm` files.
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut custody = Vec::with_capacity(MAX_GROUP);
        let mut settles = Vec::with_capacity(MAX_GROUP);
        let mut others = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Enqueue(req) => group.push(req),
                    Job::Custody(req) => custody.push(req),
                    Job::PacketSettle(req) => settles.push(req),
                    other => others.push(other),
                }
                if group.len() < MAX_GROUP && custody.len() < MAX_GROUP && settles.len() < MAX_GROUP
                {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit_group(&mut group);
            }
            if !custody.is_empty() {
                self.commit_custody(&mut custody);
            }
            // Before the bookkeeping, so a lease taken after an ACK's
            // settle was queued never sees the packet as still out.
            if !settles.is_empty() {
                self.commit_settles(&mut settles);
            }
            for job in others.drain(..) {
                self.bookkeeping(job);
            }
        }
        reader::close(&self.reader);
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
                scope,
                reply,
            } => {
                let _ = reply.send(delivery::lease(&mut self.conn, now, max, lease_ms, scope));
            }
            Job::Settle { outcomes, reply } => {
                let _ = reply.send(delivery::settle(&mut self.conn, &outcomes));
            }
            Job::Call(call) => call(&mut self.conn, now),
            Job::Enqueue(_) | Job::Custody(_) | Job::PacketSettle(_) => {
                unreachable!("grouped jobs")
            }
        }
    }

    /// One transaction for a group of custody decisions; every requester
    /// hears its outcome only after the COMMIT (or learns it failed).
    fn commit_custody(&mut self, group: &mut Vec<CustodyRequest>) {
        let now = (self.clock)();
        self.over_caps(group, now);
        if group.is_empty() {
            return;
        }
        let times = &self.times.custody;
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(SpoolError::from)
            .and_then(|tx| {
                let items: Vec<&custody::Custody> = group.iter().map(|r| &r.custody).collect();
                let outcomes = custody::custody_refs(&tx, now, &items)?;
                let started = Instant::now();
                tx.commit()?;
                times.observe(started.elapsed().as_secs_f64());
                Ok(outcomes)
            });
        let outcomes = match result {
            Ok(o) => o,
            Err(e) => {
                error!(
                    "[SPOOL] custody commit of {} packet(s) failed: {e}",
                    group.len()
                );
                vec![custody::CustodyOutcome::Failed; group.len()]
            }
        };
        for (req, outcome) in group.drain(..).zip(outcomes) {
            let _ = req.reply.send(outcome);
        }
    }

    /// One transaction for every packet settlement waiting: a busy link's
    /// ACKs cost one COMMIT per group instead of one each. A failure is
    /// logged here; the packets stay leased until their lease runs out and
    /// are sent again (duplicates the next hop recognises, never a loss).
    fn commit_settles(&mut self, group: &mut Vec<SettleRequest>) {
        let times = &self.times.settle;
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(SpoolError::from)
            .and_then(|tx| {
                for req in group.iter() {
                    custody::settle_packets(&tx, &req.outcomes)?;
                }
                let started = Instant::now();
                tx.commit()?;
                times.observe(started.elapsed().as_secs_f64());
                Ok(())
            });
        if let Err(e) = &result {
            let n: usize = group.iter().map(|r| r.outcomes.len()).sum();
            error!("[SPOOL] cannot record what became of {n} sent packet(s): {e}");
        }
        for req in group.drain(..) {
            if let Some(reply) = req.reply {
                let _ = reply.send(result.is_ok());
            }
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
                "INSERT INTO messages (received_at, sender, smtputf8, eight_bit, body, origin, mix_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut recipient = tx.prepare_cached(
                "INSERT INTO recipients (message_id, address, next_attempt) VALUES (?1, ?2, ?3)",
            )?;
            for req in group {
                let (origin, mix_id) = match &req.origin {
                    Origin::Smtp(replay_id) => {
                        if window > 0 {
                            let cutoff = now.saturating_sub(window) as i64;
                            if seen.exists(params![&replay_id[..], cutoff])? {
                                outcomes.push(EnqueueOutcome::Replay);
                                continue;
                            }
                            remember.execute(params![&replay_id[..], now as i64])?;
                        }
                        ("smtp", None)
                    }
                    Origin::Exit(rows) => {
                        if !custody::exit_rows(&tx, now, rows)? {
                            outcomes.push(EnqueueOutcome::Replay);
                            continue;
                        }
                        ("exit", Some(&rows.mix_id[..]))
                    }
                };
                let env = &req.message.envelope;
                if env.recipients.is_empty() {
                    // Only an exit's refused message gets here: done and
                    // acknowledged above, nothing to deliver.
                    outcomes.push(EnqueueOutcome::Queued);
                    continue;
                }
                message.execute(params![
                    now as i64,
                    env.sender,
                    env.smtputf8,
                    env.eight_bit,
                    req.message.body,
                    origin,
                    mix_id
                ])?;
                let id = tx.last_insert_rowid();
                for address in &env.recipients {
                    recipient.execute(params![id, address, req.release_at as i64])?;
                }
                outcomes.push(EnqueueOutcome::Queued);
            }
        }
        // The COMMIT is where the fsync happens: its time is what every
        // client of the group waits for beyond the inserts.
        let started = Instant::now();
        tx.commit()?;
        self.times.enqueue.observe(started.elapsed().as_secs_f64());
        Ok(outcomes)
    }

    fn prune_replay(&self, now: u64) -> Result<(), SpoolError> {
        let cutoff = now.saturating_sub(self.replay_window.as_millis() as u64) as i64;
        self.conn
            .execute("DELETE FROM replay WHERE seen_at <= ?1", params![cutoff])?;
        Ok(())
    }
}
