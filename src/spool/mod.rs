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

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

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
}

/// Handle to the spool; clones share one committer.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Job>,
    new_mail: Arc<Notify>,
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
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let new_mail = Arc::new(Notify::new());
        let committer = Committer::new(conn, clock, replay_window, new_mail.clone());
        let thread = std::thread::Builder::new()
            .name("spool-committer".into())
            .spawn(move || committer.run(rx))?;
        Ok((Spool { tx, new_mail }, SpoolCloser { thread }))
    }

    /// Stores the message durably, first due for delivery at `release_at`
    /// (unix ms, chosen by the mix policy). The replay id is hashed here, in
    /// the caller's task, so hashing runs in parallel across sessions and the
    /// single committer thread only does I/O.
    pub async fn enqueue(&self, message: Message, release_at: u64) -> EnqueueOutcome {
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
    report::read(&mut conn, clock()).map_err(schema::still_opening)
}

#[cfg(test)]
mod tests;
