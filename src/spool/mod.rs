//! The durable queue: SQLite in `-data-dir`, the only module that knows SQL.
//!
//! [`Spool::open`] starts the committer thread and hands out a cheap,
//! cloneable handle. [`Spool::enqueue`] returns only after the message is on
//! stable storage (or with the reason it is not), which is the condition for
//! answering `250` after DATA. [`Spool::reader`] reads the queue counts
//! beside the writer, for `[STATS]`, `/metrics` and systemd STATUS.

mod committer;
pub mod custody;
mod delivery;
mod held;
pub mod loop_hours;
pub mod ops;
mod reader;
pub mod report;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

pub use delivery::{Disposition, Lease, LeaseBatch, LeaseScope, LeasedRecipient};
pub use ops::{QueueOpError, QueueOps, Selection};
pub use reader::QueueReader;
pub use report::QueueReport;
pub use schema::{SPOOL_FILE, SpoolInspection, inspect_read_only};

use crate::envelope::EnqueueOutcome;
use crate::envelope::Message;
use crate::time::Clock;
use crate::time::UnixMillis;
pub use committer::Origin;
use committer::{Committer, CustodyRequest, EnqueueRequest, Job, SettleRequest};
use custody::{
    Custody, CustodyOutcome, EntryAck, Fetched, HeldTotals, Launch, MailboxKey, MixId,
    MixnetCounts, MixnetLease, NodeBytes, OutPacket, Overdue, PacketBatch, PacketSettle,
    PartialHeader, Stalled,
};

/// Requests waiting for the committer. Bounded so that a storage stall
/// pushes back on sessions (they wait before their 250) instead of piling
/// messages up in memory; 1024 covers the largest group several times.
const QUEUE_DEPTH: usize = 1024;

/// What went wrong with the spool. The variants met when opening it say in
/// their own words what the operator should do, in one line, so that the
/// daemon and `pluto2 queue` can print them after `-data-dir DIR: `.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// `pluto2 queue` found no spool (the daemon creates it).
    #[error("no {SPOOL_FILE} in it; is -data-dir right, and has the daemon run there?")]
    Missing,
    /// The file was written by a newer pluto2, whose layout this one does
    /// not know; opening it anyway could lose mail.
    #[error(
        "{SPOOL_FILE} has schema version {found}, newer than this pluto2 knows ({known}); run the pluto2 release that wrote it"
    )]
    SchemaVersion { found: i64, known: i64 },
    /// An SQLite database of some other program sits where the spool goes.
    #[error(
        "{SPOOL_FILE} is not a pluto2 spool ({what}); point -data-dir at a directory of pluto2's own, or move that file away"
    )]
    Foreign { what: String },
    /// SQLite cannot read the file as a database.
    #[error(
        "{SPOOL_FILE} is damaged ({detail}); move it aside, with its -wal and -shm files if any (e.g. to {SPOOL_FILE}.damaged), and start pluto2 again for an empty spool"
    )]
    Corrupt { detail: String },
    /// Any other failure while opening: permissions, disk, locks.
    #[error(
        "cannot open {SPOOL_FILE}: {0}; check that the directory is writable and the disk is not full"
    )]
    Open(rusqlite::Error),
    #[error("cannot start the spool thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the spool is closed")]
    Closed,
    /// A row of the loop statistics holds bytes pluto2 did not write.
    #[error("mix_loop_hours holds an unreadable latency histogram: {0}")]
    LoopHours(#[from] crate::loop_day::LoopDayError),
    /// A grouped transaction failed; the committer logged why.
    #[error("the spool could not commit it (its log says why)")]
    NotCommitted,
}

impl SpoolError {
    /// SQLite found the disk full (SQLITE_FULL).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            SpoolError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// Free space kept in reserve on the data directory's file system (like
/// Postfix's `queue_minfree`): below it new mail is refused, so that
/// leasing, settling and checkpointing, which need a little space, still
/// work and the queue can drain. Checked on every enqueue, so service
/// comes back as soon as space is freed, without a restart.
struct FreeSpaceReserve {
    dir: PathBuf,
    bytes: u64,
    /// Whether the last check found too little, so only changes are logged.
    short: AtomicBool,
}

impl FreeSpaceReserve {
    /// True when free space (for unprivileged users) is under the reserve.
    /// A file system that cannot be asked does not refuse mail: SQLite's
    /// own disk-full error still answers 452 then.
    fn is_short(&self) -> bool {
        let short = match rustix::fs::statvfs(&self.dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize) < self.bytes,
            Err(e) => {
                debug!("[SPOOL] cannot read free space: {e}");
                false
            }
        };
        if self.short.swap(short, Ordering::Relaxed) != short {
            if short {
                warn!(
                    "[SPOOL] free space in -data-dir under -min-free-space ({} bytes): refusing new mail with 452 until space is freed",
                    self.bytes
                );
            } else {
                info!("[SPOOL] free space back above -min-free-space: accepting mail again");
            }
        }
        short
    }
}

/// Upper bounds (seconds) of the commit latency buckets: an fsync on an
/// SSD takes a fraction of a millisecond, on a busy disk or a VPS tens of
/// milliseconds; past a second clients notice.
const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How long the committer's fsync'd COMMITs take, as bucket counts (no
/// samples). The committer observes them; `stats` registers them.
#[derive(Debug, Clone)]
pub struct CommitTimes {
    /// Groups of enqueued messages.
    pub enqueue: Histogram,
    /// Groups of mixnet custody decisions.
    pub custody: Histogram,
    /// Groups of settlements of packets sent on links (their ACKs).
    pub settle: Histogram,
}

impl Default for CommitTimes {
    fn default() -> Self {
        CommitTimes {
            enqueue: Histogram::new(COMMIT_BUCKETS),
            custody: Histogram::new(COMMIT_BUCKETS),
            settle: Histogram::new(COMMIT_BUCKETS),
        }
    }
}

/// Handle to the spool; clones share one committer.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Job>,
    new_mail: Arc<Notify>,
    /// Bumped whenever packets are queued, so link tasks waiting for work
    /// wake up; a watch never loses a change that happened between a
    /// check and the wait.
    packets: Arc<watch::Sender<u64>>,
    reserve: Option<Arc<FreeSpaceReserve>>,
    /// Bumped whenever a message was queued (the mixnet sender waits on
    /// it; a watch, unlike `new_mail`, wakes every waiter and loses nothing).
    mail: Arc<watch::Sender<u64>>,
    times: CommitTimes,
    reader: QueueReader,
    /// `-custody-max`, shared with the committer (set once at start).
    caps: Arc<std::sync::OnceLock<custody::CustodyCaps>>,
}

/// Joins the committer thread once every [`Spool`] handle is dropped.
pub struct SpoolCloser {
    thread: std::thread::JoinHandle<()>,
}

impl SpoolCloser {
    /// Waits until pending commits are done and the database is closed.
    pub async fn closed(self) {
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

impl Spool {
    pub fn open(
        data_dir: &Path,
        replay_window: Duration,
        clock: Clock,
    ) -> Result<(Spool, SpoolCloser), SpoolError> {
        let conn = schema::open_writer(data_dir)?;
        delivery::release_all_leases(&conn).map_err(schema::still_opening)?;
        let reader = reader::open(data_dir)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let new_mail = Arc::new(Notify::new());
        let times = CommitTimes::default();
        let caps = Arc::new(std::sync::OnceLock::new());
        let committer = Committer::new(
            conn,
            reader.clone(),
            clock.clone(),
            replay_window,
            new_mail.clone(),
            times.clone(),
            caps.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("spool-committer".into())
            .spawn(move || committer.run(rx))?;
        let packets = Arc::new(watch::channel(0).0);
        let mail = Arc::new(watch::channel(0).0);
        Ok((
            Spool {
                tx,
                new_mail,
                packets,
                mail,
                reserve: None,
                times,
                reader: QueueReader::new(reader, clock),
                caps,
            },
            SpoolCloser { thread },
        ))
    }

    /// The spool's reader of the queue counts (one connection, opened
    /// with the spool and closed by the committer before the spool closes).
    pub fn reader(&self) -> QueueReader {
        self.reader.clone()
    }

    /// The commit latency histograms the committer fills.
    pub fn commit_times(&self) -> CommitTimes {
        self.times.clone()
    }

    /// Refuses new mail ([`EnqueueOutcome::NoSpace`]) while the file system
    /// of `data_dir` has less than `bytes` free (0: no reserve). Set once,
    /// before the handle is cloned.
    pub fn with_free_space_reserve(mut self, data_dir: &Path, bytes: u64) -> Spool {
        self.reserve = (bytes > 0).then(|| {
            Arc::new(FreeSpaceReserve {
                dir: data_dir.to_path_buf(),
                bytes,
                short: AtomicBool::new(false),
            })
        });
        self
    }

    /// Caps the packets this node keeps for other nodes (`-custody-max`,
    /// see [`custody::CustodyCaps`]). Set once, at start; without it
    /// custody is bounded only by the free-space reserve.
    pub fn with_custody_caps(self, caps: Option<custody::CustodyCaps>) -> Spool {
        if let Some(caps) = caps {
            let _ = self.caps.set(caps);
        }
        self
    }

    /// Stores a message accepted by SMTP durably, first due for delivery
    /// at `release_at` (unix ms, chosen by the mix policy). The replay id
    /// is hashed here, in the caller's task, so hashing runs in parallel
    /// across sessions and the single committer thread only does I/O.
    pub async fn enqueue(&self, message: Message, release_at: u64) -> EnqueueOutcome {
        let replay_id = message.replay_id();
        self.enqueue_from(message, Origin::Smtp(replay_id), release_at)
            .await
    }

    /// The one insert of a message into the spool, whatever its origin:
    /// the same free-space reserve, the same group commit, the same rows;
    /// an exit's rows join the transaction (see [`Origin`]). `Queued` only
    /// after the COMMIT; `Replay` for a duplicate.
    pub async fn enqueue_from(
        &self,
        message: Message,
        origin: Origin,
        release_at: u64,
    ) -> EnqueueOutcome {
        if self.reserve.as_ref().is_some_and(|r| r.is_short()) {
            return EnqueueOutcome::NoSpace;
        }
        let queues_packet = matches!(&origin, Origin::Exit(rows) if rows.ack.is_some());
        let (reply, answer) = oneshot::channel();
        let request = EnqueueRequest {
            message,
            origin,
            release_at,
            reply,
        };
        if self.tx.send(Job::Enqueue(request)).await.is_err() {
            return EnqueueOutcome::ShuttingDown;
        }
        let outcome = answer.await.unwrap_or(EnqueueOutcome::Failed);
        if outcome == EnqueueOutcome::Queued {
            self.mail.send_modify(|n| *n = n.wrapping_add(1));
        }
        if queues_packet && matches!(outcome, EnqueueOutcome::Queued | EnqueueOutcome::Replay) {
            self.packets_queued();
        }
        outcome
    }

    /// Resolves when new mail was committed since the last call (the
    /// delivery dispatcher waits on this instead of polling).
    pub async fn new_mail(&self) {
        self.new_mail.notified().await
    }

    /// SQLite's `data_version` of the writer's connection: it changes when
    /// another connection (`pluto2 queue flush|hold|release|delete`)
    /// committed, and never for the daemon's own commits. Cheap: no
    /// table is read.
    pub async fn data_version(&self) -> Result<i64, SpoolError> {
        self.call(|conn, _| Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?))
            .await
    }

    /// Messages the operator has deleted since the spool was made.
    pub async fn deleted_by_operator(&self) -> Result<u64, SpoolError> {
        self.call(|conn, _| ops::deleted_by_operator(conn)).await
    }

    /// Hands out up to `max` groups of due recipients for `lease`.
    pub async fn lease(&self, max: usize, lease: Duration) -> Result<LeaseBatch, SpoolError> {
        self.lease_scoped(max, lease, LeaseScope::All).await
    }

    /// Like [`Spool::lease`], limited to `scope` (mixnet mode leases only
    /// mail that left the mixnet here).
    pub async fn lease_scoped(
        &self,
        max: usize,
        lease: Duration,
        scope: LeaseScope,
    ) -> Result<LeaseBatch, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job::Lease {
                max,
                lease_ms: lease.as_millis() as u64,
                scope,
                reply,
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// A round trip through the committer thread that does nothing: it
    /// returns once the writer took it from its queue, which proves the
    /// writer still works its queue off (the systemd watchdog asks this).
    pub async fn ping(&self) -> Result<(), SpoolError> {
        self.call(|_, _| Ok(())).await
    }

    /// Records delivery outcomes; durable when this returns Ok.
    pub async fn settle(&self, outcomes: Vec<(i64, Disposition)>) -> Result<(), SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job::Settle { outcomes, reply })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }
}

/// The mixnet's storage operations. Each runs in its own transaction on
/// the writer thread (custody decisions in groups), so "returned Ok" always
/// means "committed".
impl Spool {
    /// Changes whenever a message was queued.
    pub fn mail_events(&self) -> watch::Receiver<u64> {
        self.mail.subscribe()
    }

    /// Changes whenever packets were queued; link tasks wait on it.
    pub fn packet_events(&self) -> watch::Receiver<u64> {
        self.packets.subscribe()
    }

    fn packets_queued(&self) {
        self.packets.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs `f` on the writer thread and waits for its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection, UnixMillis) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Call(Box::new(move |conn, now| {
            let _ = reply.send(f(conn, now));
        }));
        self.tx.send(job).await.map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Records a replay tag and what must be kept with it, in a group
    /// commit; the link acknowledges the packet according to the outcome.
    pub async fn custody(&self, custody: Custody) -> CustodyOutcome {
        // Under the free-space floor nothing new is kept for others (a
        // tag alone, for a packet that ends here, is a few bytes).
        if !matches!(custody, Custody::Tag { .. })
            && self.reserve.as_ref().is_some_and(|r| r.is_short())
        {
            return CustodyOutcome::Busy(custody::BusyReason::FreeSpace);
        }
        // A held reply waits for its client's fetch, not for a link.
        let queues_packet = !matches!(custody, Custody::Hold { .. });
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Job::Custody(CustodyRequest { custody, reply }))
            .await
            .is_err()
        {
            return CustodyOutcome::Failed;
        }
        let outcome = answer.await.unwrap_or(CustodyOutcome::Failed);
        if matches!(outcome, CustodyOutcome::Stored) && queues_packet {
            self.packets_queued();
        }
        outcome
    }

    /// Queues packets outside a custody decision.
    pub async fn queue_packets(&self, packets: Vec<OutPacket>) -> Result<(), SpoolError> {
        self.call(move |conn, _| custody::queue_packets(conn, &packets))
            .await?;
        self.packets_queued();
        Ok(())
    }

    /// Leases up to `max` due packets for `next_hop` for `lease`.
    pub async fn lease_packets(
        &self,
        next_hop: NodeBytes,
        max: usize,
        lease: Duration,
    ) -> Result<PacketBatch, SpoolError> {
        let lease_ms = lease.as_millis() as u64;
        self.call(move |conn, now| custody::lease_packets(conn, now, &next_hop, max, lease_ms))
            .await
    }

    /// Records what became of sent packets; returns once committed (in a
    /// group with every other settlement waiting).
    pub async fn settle_packets(
        &self,
        outcomes: Vec<(i64, PacketSettle)>,
    ) -> Result<(), SpoolError> {
        let (reply, answer) = oneshot::channel();
        let request = SettleRequest {
            outcomes,
            reply: Some(reply),
        };
        self.tx
            .send(Job::PacketSettle(request))
            .await
            .map_err(|_| SpoolError::Closed)?;
        if answer.await.map_err(|_| SpoolError::Closed)? {
            Ok(())
        } else {
            Err(SpoolError::NotCommitted)
        }
    }

    /// Hands settlements to the committer without waiting for the COMMIT:
    /// returns once they are queued (or the spool is closed), and they are
    /// committed with the next group. For a link's ACKs, so the link reads
    /// its next ACK meanwhile and one COMMIT covers every ACK that arrived
    /// during the last one. Nothing is acknowledged to anyone on the
    /// strength of a settle: a lost one (crash, failed commit) leaves the
    /// packet leased until its lease runs out, and it is sent again.
    pub async fn settle_packets_later(&self, outcomes: Vec<(i64, PacketSettle)>) {
        let request = SettleRequest {
            outcomes,
            reply: None,
        };
        if self.tx.send(Job::PacketSettle(request)).await.is_err() {
            debug!("[SPOOL] closed: a packet settlement is left for the next start");
        }
    }

    /// Next hops with packets waiting.
    pub async fn waiting_hops(&self) -> Result<Vec<NodeBytes>, SpoolError> {
        self.call(|conn, _| custody::waiting_hops(conn)).await
    }

    /// Deletes packets past their custody deadline; counts by kind.
    pub async fn expire_packets(&self) -> Result<Vec<(custody::PacketKind, u64)>, SpoolError> {
        self.call(custody::expire_packets).await
    }

    /// At start: voids packet leases and gives overdue packets a fresh
    /// release time from `fresh`.
    pub async fn restart_packets(
        &self,
        fresh: impl FnMut() -> UnixMillis + Send + 'static,
    ) -> Result<usize, SpoolError> {
        self.call(move |conn, now| custody::restart_packets(conn, now, fresh))
            .await
    }

    /// What the exit holds of a message it collects (none: not here).
    pub async fn partial_header(&self, mix_id: MixId) -> Result<Option<PartialHeader>, SpoolError> {
        self.call(move |conn, _| custody::partial_header(conn, &mix_id))
            .await
    }

    /// Up to `max` stored fragments of a message from index `from` on, in
    /// index order (a completion streams its message through this).
    pub async fn fragment_data(
        &self,
        mix_id: MixId,
        from: u16,
        max: usize,
    ) -> Result<Vec<(u16, Vec<u8>)>, SpoolError> {
        self.call(move |conn, _| custody::fragment_data(conn, &mix_id, from, max))
            .await
    }

    /// For up to `max` incomplete messages idle for `stall`: a reply block
    /// is taken and the acknowledgement `answer` makes with it queued, both
    /// in one transaction. `answer` runs on the writer thread (one Sphinx
    /// wrap per message, a handful per maintenance round). Returns how many
    /// acknowledgements were queued.
    pub async fn answer_stalled(
        &self,
        stall: Duration,
        max: usize,
        mut answer: impl FnMut(&Stalled) -> Option<OutPacket> + Send + 'static,
    ) -> Result<usize, SpoolError> {
        let stall_ms = stall.as_millis() as u64;
        let queued = self
            .call(move |conn, now| custody::answer_stalled(conn, now, stall_ms, max, &mut answer))
            .await?;
        if queued > 0 {
            self.packets_queued();
        }
        Ok(queued)
    }

    /// SMTP messages due to enter the mixnet, and when the next one is due.
    pub async fn due_for_mixnet(
        &self,
        max: usize,
    ) -> Result<(Vec<MixnetLease>, Option<UnixMillis>), SpoolError> {
        self.call(move |conn, now| custody::due_for_mixnet(conn, now, max))
            .await
    }

    pub async fn launch(&self, launch: Launch) -> Result<(), SpoolError> {
        self.call(move |conn, _| custody::launch(conn, &launch))
            .await?;
        self.packets_queued();
        Ok(())
    }

    /// Deletes an SMTP message that can never enter the mixnet (and has
    /// not); true if it was there.
    pub async fn drop_unlaunched(&self, message: i64) -> Result<bool, SpoolError> {
        self.call(move |conn, _| custody::drop_unlaunched(conn, message))
            .await
    }

    pub async fn reply_recovery(
        &self,
        reply_id: [u8; 16],
    ) -> Result<Option<(MixId, u16, Vec<u8>)>, SpoolError> {
        self.call(move |conn, _| custody::reply_recovery(conn, &reply_id))
            .await
    }

    pub async fn acknowledge(&self, mix_id: MixId, ack: EntryAck) -> Result<bool, SpoolError> {
        self.call(move |conn, _| custody::acknowledge(conn, &mix_id, &ack))
            .await
    }

    pub async fn overdue(
        &self,
        max: usize,
    ) -> Result<(Vec<Overdue>, Option<UnixMillis>), SpoolError> {
        self.call(move |conn, now| custody::overdue(conn, now, max))
            .await
    }

    pub async fn give_up(&self, mix_id: MixId) -> Result<bool, SpoolError> {
        self.call(move |conn, _| custody::give_up(conn, &mix_id))
            .await
    }

    pub async fn complete_candidates(&self, max: usize) -> Result<Vec<MixId>, SpoolError> {
        self.call(move |conn, _| custody::complete_candidates(conn, max))
            .await
    }

    pub async fn drop_fragments(&self, mix_id: MixId) -> Result<(), SpoolError> {
        self.call(move |conn, _| custody::drop_fragments(conn, &mix_id))
            .await
    }

    /// Deletes partial messages at the exit whose latest fragment is
    /// older than `partial_idle` or whose first is older than `horizon`,
    /// and done ids older than `horizon` (see `custody::prune`); returns
    /// (fragments, done ids).
    pub async fn prune_mixnet(
        &self,
        partial_idle: Duration,
        horizon: Duration,
    ) -> Result<(u64, u64), SpoolError> {
        let (idle_ms, horizon_ms) = (partial_idle.as_millis() as u64, horizon.as_millis() as u64);
        self.call(move |conn, now| {
            custody::prune(
                conn,
                custody::PruneBefore {
                    partial_idle: now.saturating_sub(idle_ms),
                    horizon: now.saturating_sub(horizon_ms),
                },
            )
        })
        .await
    }

    /// Drops replay tags and stranded packets of epochs below `below`
    /// (see `custody::purge_epochs`); returns (tags, packets).
    pub async fn purge_epochs(&self, below: u32) -> Result<(u64, u64), SpoolError> {
        self.call(move |conn, _| custody::purge_epochs(conn, below))
            .await
    }

    pub async fn mixnet_counts(&self) -> Result<MixnetCounts, SpoolError> {
        self.call(|conn, _| custody::counts(conn)).await
    }
}

/// The gateway's mailboxes (client mode, see `spool::held`). Replies are
/// stored by [`Custody::Hold`] in the custody group commit; these run on
/// the writer thread, each in its own transaction.
impl Spool {
    /// The oldest reply held for `mailbox`, the same one until it is
    /// confirmed (a lost confirmation hands the client the same reply
    /// again); marks the mailbox seen now. The spool does not know the
    /// packet format: the caller says how long a payload is, and a held
    /// reply of another shape is deleted and counted in
    /// [`Fetched::damaged`] instead of blocking the mailbox.
    pub async fn fetch_held(
        &self,
        mailbox: MailboxKey,
        payload_len: usize,
    ) -> Result<Fetched, SpoolError> {
        self.call(move |conn, now| held::fetch(conn, now, &mailbox, payload_len))
            .await
    }

    /// Deletes the reply `delivery` if `mailbox` holds it (another
    /// mailbox's confirmation deletes nothing); true if it was deleted.
    pub async fn confirm_held(
        &self,
        mailbox: MailboxKey,
        delivery: [u8; 16],
    ) -> Result<bool, SpoolError> {
        self.call(move |conn, now| held::confirm(conn, now, &mailbox, &delivery))
            .await
    }

    /// Marks `mailbox` seen now (its client's link authenticated), if it
    /// holds anything: creates nothing, so it cannot pass a cap.
    pub async fn touch_mailbox(&self, mailbox: MailboxKey) -> Result<(), SpoolError> {
        self.call(move |conn, now| held::touch(conn, now, &mailbox))
            .await
    }

    /// Deletes mailboxes not seen for `idle`, with everything they hold;
    /// returns (mailboxes, replies) deleted. Runs in transactions of a
    /// bounded size, so other writes go between them.
    pub async fn expire_mailboxes(&self, idle: Duration) -> Result<(u64, u64), SpoolError> {
        let idle_ms = idle.as_millis() as u64;
        let mut total = (0, 0);
        loop {
            let (mailboxes, replies) = self
                .call(move |conn, now| held::expire(conn, now.saturating_sub(idle_ms)))
                .await?;
            total = (total.0 + mailboxes, total.1 + replies);
            if (mailboxes as usize) < held::EXPIRE_BATCH {
                return Ok(total);
            }
        }
    }

    /// What the mailboxes hold in all (for the gauges).
    pub async fn held_totals(&self) -> Result<HeldTotals, SpoolError> {
        self.call(|conn, _| held::totals(conn)).await
    }

    /// Adds loop outcomes to the pinger's day on disk and forgets the
    /// hours that left it (see `spool::loop_hours`).
    pub async fn save_loop_hours(
        &self,
        hours: Vec<loop_hours::LoopHour>,
    ) -> Result<(), SpoolError> {
        self.call(move |conn, now| loop_hours::save(conn, now, &hours))
            .await
    }
}

#[cfg(test)]
mod tests;
