//! The daemon's own reader of the queue counts, beside the single writer.
//!
//! `[STATS]`, `/metrics` and systemd STATUS ask for the counts every few
//! seconds, and a scraper as often as it likes. They share one read-only
//! connection the spool opens at start, instead of opening the file by
//! path on every line, scrape and status (which cost a file open, the
//! schema read and a `-shm` mapping each time). WAL lets it read beside the
//! writer without waiting for it: the committer is never asked.
//!
//! The committer closes this connection before its final checkpoint, so
//! the writer is the last connection to the file and SQLite removes the
//! `-wal` and `-shm` files at a clean close, however long a [`QueueReader`]
//! handle lives on; a read after that says [`SpoolError::Closed`].

use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::Mutex;

use super::report::{self, QueueReport};
use super::{SpoolError, schema};
use crate::time::Clock;

/// The one reader connection, or nothing once the spool closed. A tokio
/// mutex, taken before the blocking read is handed to a blocking thread:
/// callers that wait for it wait as tasks (and a caller that gives up,
/// as a scrape does after its deadline, just stops waiting), not as
/// blocked threads.
pub(super) type ReaderSlot = Arc<Mutex<Option<Connection>>>;

/// Opens the reader beside a writer that has just opened (and, if need
/// be, migrated) the spool.
pub(super) fn open(data_dir: &std::path::Path) -> Result<ReaderSlot, SpoolError> {
    let conn = schema::open_daemon_reader(data_dir)?;
    Ok(Arc::new(Mutex::new(Some(conn))))
}

/// Closes the reader for good (the committer calls this on its own
/// thread, before the final checkpoint). Waits for a read in progress.
pub(super) fn close(slot: &ReaderSlot) {
    if let Some(conn) = slot.blocking_lock().take()
        && let Err((_, e)) = conn.close()
    {
        tracing::error!("[SPOOL] closing the reader failed: {e}");
    }
}

/// A cheap, cloneable handle on the spool's reader (see the module
/// comment). It does not keep the committer running: the spool closes
/// when the last [`super::Spool`] goes, whatever readers remain.
#[derive(Clone)]
pub struct QueueReader {
    slot: ReaderSlot,
    clock: Clock,
}

impl std::fmt::Debug for QueueReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueReader").finish_non_exhaustive()
    }
}

impl QueueReader {
    pub(super) fn new(slot: ReaderSlot, clock: Clock) -> QueueReader {
        QueueReader { slot, clock }
    }

    /// The queue counts, as `pluto2 queue` prints them, read in one
    /// transaction off the executor.
    pub async fn report(&self) -> Result<QueueReport, SpoolError> {
        let mut conn = self.slot.clone().lock_owned().await;
        let clock = self.clock.clone();
        tokio::task::spawn_blocking(move || match conn.as_mut() {
            Some(conn) => report::read(conn, clock()),
            None => Err(SpoolError::Closed),
        })
        .await
        .unwrap_or_else(|e| match e.try_into_panic() {
            // A bug in the read: the caller's task fails as loudly.
            Ok(panic) => std::panic::resume_unwind(panic),
            // The runtime is shutting down.
            Err(_) => Err(SpoolError::Closed),
        })
    }
}
