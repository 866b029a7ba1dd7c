//! The durable queue: SQLite in `-data-dir`, the only module that knows SQL.
//!
//! [`Spool::open`] starts the committer thread and hands out a cheap,
//! cloneable handle. [`Spool::enqueue`] returns only after the message is on
//! stable storage (or with the reason it is not), which is the condition for
//! answering `250` after DATA.

mod committer;
mod delivery;
pub mod report;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};

pub use delivery::{Disposition, Lease, LeaseBatch, LeasedRecipient};
pub use report::QueueReport;
pub use schema::SPOOL_FILE;

use crate::envelope::EnqueueOutcome;
use crate::envelope::Message;
use crate::time::Clock;
use committer::{Committer, EnqueueRequest, Job};

/// Requests waiting for the committer. Bounded so that a storage stall
/// pushes back on sessions (they wait before their 250) instead of piling
/// messages up in memory; 1024 covers the largest group several times.
const QUEUE_DEPTH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("no spool at {0}: is -data-dir right, and has pluto2 run there?")]
    Missing(String),
    #[error("spool schema version {0} is not known to this pluto2; use the matching release")]
    SchemaVersion(i64),
    #[error("cannot start the spool thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the spool is closed")]
    Closed,
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

/// Handle to the spool; clones share one committer.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Job>,
    new_mail: Arc<Notify>,
    reserve: Option<Arc<FreeSpaceReserve>>,
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
        delivery::release_all_leases(&conn)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let new_mail = Arc::new(Notify::new());
        let committer = Committer::new(conn, clock, replay_window, new_mail.clone());
        let thread = std::thread::Builder::new()
            .name("spool-committer".into())
            .spawn(move || committer.run(rx))?;
        Ok((
            Spool {
                tx,
                new_mail,
                reserve: None,
            },
            SpoolCloser { thread },
        ))
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

    /// Stores the message durably, first due for delivery at `release_at`
    /// (unix ms, chosen by the mix policy). The replay id is hashed here, in
    /// the caller's task, so hashing runs in parallel across sessions and the
    /// single committer thread only does I/O.
    pub async fn enqueue(&self, message: Message, release_at: u64) -> EnqueueOutcome {
        if self.reserve.as_ref().is_some_and(|r| r.is_short()) {
            return EnqueueOutcome::NoSpace;
        }
        let replay_id = message.replay_id();
        let (reply, answer) = oneshot::channel();
        let request = EnqueueRequest {
            message,
            replay_id,
            release_at,
            reply,
        };
        if self.tx.send(Job::Enqueue(request)).await.is_err() {
            return EnqueueOutcome::ShuttingDown;
        }
        answer.await.unwrap_or(EnqueueOutcome::Failed)
    }

    /// Resolves when new mail was committed since the last call (the
    /// delivery dispatcher waits on this instead of polling).
    pub async fn new_mail(&self) {
        self.new_mail.notified().await
    }

    /// Hands out up to `max` groups of due recipients for `lease`.
    pub async fn lease(&self, max: usize, lease: Duration) -> Result<LeaseBatch, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job::Lease {
                max,
                lease_ms: lease.as_millis() as u64,
                reply,
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
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

/// Reads the queue summary of the spool in `data_dir` (works while the
/// daemon runs, thanks to WAL).
pub fn queue_report(data_dir: &Path, clock: &Clock) -> Result<QueueReport, SpoolError> {
    let mut conn = schema::open_reader(data_dir)?;
    report::read(&mut conn, clock())
}

#[cfg(test)]
mod tests;
