//! The operator's queue operations, `pluto2 queue list|flush|hold|release|delete`,
//! the ones Postfix operators know from `mailq`, `postqueue -f` and
//! `postsuper -h/-H/-d`.
//!
//! They run in the `pluto2 queue` process, on a connection of its own, while
//! the daemon may be running: SQLite (WAL) serializes their short write
//! transactions with the daemon's committer, and the daemon's dispatcher
//! notices another connection's commit through `PRAGMA data_version` (see
//! `node::dispatch`) and leases again at once. No socket, no signal.
//!
//! Messages are named by their queue id, 16 random hex digits given to
//! each message when it is stored (`schema::migrate_v2_to_v3`): nothing in
//! it depends on the message, its time or how many came before. Nothing
//! here reads or returns an address, a subject or a body.
//!
//! What each operation does to mail a delivery holds right now (leased):
//! - hold marks it at once; the attempt in flight finishes; delivered, it
//!   is gone; otherwise it stays, held, instead of being retried.
//! - delete removes what no delivery holds at once and leaves a tombstone
//!   (`mark = 'deleted'`) on the leased recipients: their settle removes
//!   them whatever the outcome (a completion cannot bring them back), and
//!   so do the next start and the end of the lease. A message already on
//!   its way may still reach the next hop, as in Postfix.
//! - release keeps each recipient's stored next attempt: the mix's release
//!   time for mail never tried, the retry time for deferred mail; held
//!   mail whose time has passed is due at once. `flush` afterwards sends
//!   deferred mail at once (Postfix: `postsuper -H` then `postqueue -f`).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;

use super::report::{self, QueueReport};
use super::{SPOOL_FILE, SpoolError, schema};

/// Name of the durable counter of operator deletions in `counters`.
const DELETED_COUNTER: &str = "deleted_by_operator";

/// Length of a queue id in hex digits (8 random bytes).
const QUEUE_ID_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum QueueOpError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// One of the given ids names no message (all or nothing: the
    /// operation changed nothing).
    #[error(
        "no message with queue id {} in the spool (delivered or deleted already?); nothing was changed; `pluto2 queue list` shows the ids",
        .0.join(", ")
    )]
    UnknownIds(Vec<String>),
    /// A spool an older pluto2 still uses: migrating it under that daemon
    /// would break it, and it has no queue ids yet.
    #[error(
        "{SPOOL_FILE} has schema version {found}, older than this pluto2's ({known}); start this release's daemon on it once to upgrade it"
    )]
    OldSpool { found: i64, known: i64 },
}

/// Which messages an operation is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every message in the spool (`-all`).
    All,
    /// These queue ids, as `pluto2 queue list` prints them.
    Ids(Vec<String>),
}

/// What an operation changed: one shape for all of them, so a script reads
/// the same fields whatever it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpReport {
    /// `flush`, `hold`, `release` or `delete`.
    pub operation: &'static str,
    /// Messages the operation changed.
    pub messages: u64,
    /// Their recipients it changed.
    pub recipients: u64,
    /// The changed messages' queue ids.
    pub queue_ids: Vec<String>,
}

impl std::fmt::Display for OpReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.operation {
            "flush" => "due now",
            "hold" => "held",
            "release" => "released",
            "delete" => "deleted",
            other => other,
        };
        write!(
            f,
            "{}: {} message(s), {} recipient(s) {what}",
            self.operation, self.messages, self.recipients
        )?;
        for id in &self.queue_ids {
            write!(f, "\n  {id}")?;
        }
        writeln!(f)
    }
}

/// A message's state as `pluto2 queue list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Never tried; due at its release time.
    Queued,
    /// Tried and waiting for its retry time.
    Deferred,
    /// Held by the operator: never leased until released.
    Held,
    /// A delivery holds (some of) its recipients now.
    InDelivery,
    /// Sent into the mixnet from here; waits for the exit's COMPLETE.
    InMixnet,
}

impl MessageState {
    fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Deferred => "deferred",
            MessageState::Held => "held",
            MessageState::InDelivery => "in delivery",
            MessageState::InMixnet => "in mixnet",
        }
    }
}

/// One message of the listing: nothing that identifies it beyond its
/// queue id, which only the spool can map back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedMessage {
    pub queue_id: String,
    pub state: MessageState,
    /// Held by the operator (also while `in_delivery`: held after it).
    pub held: bool,
    pub age_seconds: u64,
    /// Stored body size in bytes (before padding).
    pub size_bytes: u64,
    pub recipients: u64,
    /// Most delivery attempts made for any of its recipients.
    pub attempts: u64,
    /// Seconds until its next attempt (0: due); for held mail, when it
    /// would be due once released; `null` while in delivery or in the
    /// mixnet.
    pub next_attempt_in_seconds: Option<u64>,
}

/// The listing, oldest message first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    pub messages: Vec<ListedMessage>,
}

impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<16}  {:<16}  {:>10}  {:>9}  {:>5}  {:>8}  next",
            "queue id", "state", "age", "size", "rcpts", "attempts"
        )?;
        let span = |s: u64| humantime::format_duration(std::time::Duration::from_secs(s));
        for m in &self.messages {
            let state = match (m.state, m.held) {
                (MessageState::InDelivery, true) => "in delivery+held".to_string(),
                (s, _) => s.as_str().to_string(),
            };
            let next = match m.next_attempt_in_seconds {
                Some(0) => "now".to_string(),
                Some(s) => format!("in {}", span(s)),
                None => "-".to_string(),
            };
            writeln!(
                f,
                "{:<16}  {:<16}  {:>10}  {:>9}  {:>5}  {:>8}  {next}",
                m.queue_id,
                state,
                span(m.age_seconds).to_string(),
                m.size_bytes,
                m.recipients,
                m.attempts
            )?;
        }
        writeln!(f, "{} message(s)", self.messages.len())
    }
}

/// The spool opened for the operator's commands.
pub struct QueueOps {
    conn: Connection,
}

impl QueueOps {
    /// Opens the existing spool in `data_dir` (never creates one) with the
    /// daemon's checks; refuses a spool of an older layout.
    pub fn open(data_dir: &Path) -> Result<QueueOps, QueueOpError> {
        let conn = schema::open_reader(data_dir)?;
        let found = schema::version(&conn).map_err(schema::still_opening)?;
        if found < schema::CURRENT_VERSION {
            return Err(QueueOpError::OldSpool {
                found,
                known: schema::CURRENT_VERSION,
            });
        }
        Ok(QueueOps { conn })
    }

    /// The counts of `pluto2 queue`.
    pub fn report(&mut self, now: u64) -> Result<QueueReport, QueueOpError> {
        Ok(report::read(&mut self.conn, now).map_err(schema::still_opening)?)
    }

    /// Every message with its state, oldest first.
    pub fn list(&mut self, now: u64) -> Result<Listing, QueueOpError> {
        Ok(list(&mut self.conn, now)?)
    }

    /// Makes every deferred recipient that is not held due now.
    pub fn flush(&mut self, now: u64) -> Result<OpReport, QueueOpError> {
        Ok(flush(&mut self.conn, now)?)
    }

    pub fn hold(&mut self, which: &Selection) -> Result<OpReport, QueueOpError> {
        change(&mut self.conn, which, Change::Hold)
    }

    pub fn release(&mut self, which: &Selection) -> Result<OpReport, QueueOpError> {
        change(&mut self.conn, which, Change::Release)
    }

    /// Deletes the messages and counts them (`deleted_by_operator`).
    pub fn delete(&mut self, which: &Selection) -> Result<OpReport, QueueOpError> {
        change(&mut self.conn, which, Change::Delete)
    }
}

/// Messages the operator has deleted, kept across restarts.
pub(super) fn deleted_by_operator(conn: &Connection) -> Result<u64, SpoolError> {
    let n: Option<i64> = conn
        .query_row(
            "SELECT value FROM counters WHERE name = ?1",
            params![DELETED_COUNTER],
            |r| r.get(0),
        )
        .optional()?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

fn list(conn: &mut Connection, now: u64) -> Result<Listing, SpoolError> {
    let tx = conn.transaction()?;
    let mut messages = Vec::new();
    {
        // A message with a tombstone is deleted as far as the operator is
        // concerned; it only waits for its delivery to end.
        let mut stmt = tx.prepare(
            "SELECT q.queue_id, m.received_at, length(m.body), COUNT(r.id),
                    COALESCE(MAX(r.attempts), 0),
                    COALESCE(SUM(r.state = 'leased'), 0),
                    COALESCE(SUM(r.mark = 'held'), 0),
                    COALESCE(SUM(r.state = 'deferred'), 0),
                    MIN(CASE WHEN r.state != 'leased' THEN r.next_attempt END),
                    EXISTS (SELECT 1 FROM mix_outbound o WHERE o.message = m.id)
             FROM messages m
             JOIN queue_ids q ON q.message_id = m.id
             LEFT JOIN recipients r ON r.message_id = m.id
             WHERE NOT EXISTS (SELECT 1 FROM recipients d
                               WHERE d.message_id = m.id AND d.mark = 'deleted')
             GROUP BY m.id ORDER BY m.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, bool>(9)?,
            ))
        })?;
        let unsigned = |v: i64| v.max(0) as u64;
        for row in rows {
            let (queue_id, received, size, rcpts, attempts, leased, held, deferred, next, mixnet) =
                row?;
            let state = if mixnet {
                MessageState::InMixnet
            } else if leased > 0 {
                MessageState::InDelivery
            } else if held > 0 {
                MessageState::Held
            } else if deferred > 0 {
                MessageState::Deferred
            } else {
                MessageState::Queued
            };
            let next_attempt_in_seconds = match state {
                MessageState::Queued | MessageState::Deferred | MessageState::Held => {
                    next.map(|t| unsigned(t).saturating_sub(now).div_ceil(1000))
                }
                _ => None,
            };
            messages.push(ListedMessage {
                queue_id,
                state,
                held: held > 0,
                age_seconds: now.saturating_sub(unsigned(received)) / 1000,
                size_bytes: unsigned(size),
                recipients: unsigned(rcpts),
                attempts: unsigned(attempts),
                next_attempt_in_seconds,
            });
        }
    }
    tx.finish()?;
    Ok(Listing { messages })
}

fn flush(conn: &mut Connection, now: u64) -> Result<OpReport, SpoolError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let queue_ids: Vec<String> = tx
        .prepare(
            "SELECT q.queue_id FROM queue_ids q WHERE EXISTS
                 (SELECT 1 FROM recipients r WHERE r.message_id = q.message_id
                  AND r.state = 'deferred' AND r.mark IS NULL)
             ORDER BY q.message_id",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let recipients = tx.execute(
        "UPDATE recipients SET next_attempt = MIN(next_attempt, ?1)
         WHERE state = 'deferred' AND mark IS NULL",
        params![now as i64],
    )?;
    tx.commit()?;
    Ok(OpReport {
        operation: "flush",
        messages: queue_ids.len() as u64,
        recipients: recipients as u64,
        queue_ids,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Hold,
    Release,
    Delete,
}

fn change(
    conn: &mut Connection,
    which: &Selection,
    change: Change,
) -> Result<OpReport, QueueOpError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(SpoolError::from)?;
    let targets = resolve(&tx, which)?;
    let (mut messages, mut recipients, mut queue_ids) = (0u64, 0u64, Vec::new());
    for (message_id, queue_id) in targets {
        let changed = match change {
            Change::Hold => tx.execute(
                "UPDATE recipients SET mark = 'held' WHERE message_id = ?1 AND mark IS NULL",
                params![message_id],
            ),
            Change::Release => tx.execute(
                "UPDATE recipients SET mark = NULL WHERE message_id = ?1 AND mark = 'held'",
                params![message_id],
            ),
            Change::Delete => delete_message(&tx, message_id),
        }
        .map_err(SpoolError::from)?;
        if changed > 0 || change == Change::Delete {
            messages += 1;
            recipients += changed as u64;
            queue_ids.push(queue_id);
        }
    }
    if change == Change::Delete && messages > 0 {
        tx.execute(
            "UPDATE counters SET value = value + ?2 WHERE name = ?1",
            params![DELETED_COUNTER, messages as i64],
        )
        .map_err(SpoolError::from)?;
    }
    tx.commit().map_err(SpoolError::from)?;
    Ok(OpReport {
        operation: match change {
            Change::Hold => "hold",
            Change::Release => "release",
            Change::Delete => "delete",
        },
        messages,
        recipients,
        queue_ids,
    })
}

/// Removes a message, leaving tombstones on the recipients a delivery
/// holds (see the module doc); returns its recipients.
fn delete_message(tx: &Transaction<'_>, message_id: i64) -> Result<usize, rusqlite::Error> {
    let free = tx.execute(
        "DELETE FROM recipients WHERE message_id = ?1 AND state != 'leased'",
        params![message_id],
    )?;
    let leased = tx.execute(
        "UPDATE recipients SET mark = 'deleted' WHERE message_id = ?1 AND state = 'leased'",
        params![message_id],
    )?;
    if leased == 0 {
        // Cascades to queue_ids and to the mixnet's tables for the message.
        tx.execute("DELETE FROM messages WHERE id = ?1", params![message_id])?;
    }
    Ok(free + leased)
}

/// The messages a selection names, as (row id, queue id); all or nothing:
/// an id that names no message fails the whole operation.
fn resolve(tx: &Transaction<'_>, which: &Selection) -> Result<Vec<(i64, String)>, QueueOpError> {
    const LIVE: &str = "NOT EXISTS (SELECT 1 FROM recipients d
                        WHERE d.message_id = q.message_id AND d.mark = 'deleted')";
    match which {
        Selection::All => {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT q.message_id, q.queue_id FROM queue_ids q WHERE {LIVE}
                     ORDER BY q.message_id"
                ))
                .map_err(SpoolError::from)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(SpoolError::from)?;
            Ok(rows)
        }
        Selection::Ids(ids) => {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT q.message_id FROM queue_ids q WHERE q.queue_id = ?1 AND {LIVE}"
                ))
                .map_err(SpoolError::from)?;
            let (mut found, mut unknown) = (Vec::new(), Vec::new());
            for id in ids {
                let id = id.to_ascii_lowercase();
                if found.iter().any(|(_, f)| *f == id) {
                    continue;
                }
                let row: Option<i64> = if is_queue_id(&id) {
                    stmt.query_row(params![id], |r| r.get(0))
                        .optional()
                        .map_err(SpoolError::from)?
                } else {
                    None
                };
                match row {
                    Some(message_id) => found.push((message_id, id)),
                    None => unknown.push(id),
                }
            }
            if unknown.is_empty() {
                Ok(found)
            } else {
                Err(QueueOpError::UnknownIds(unknown))
            }
        }
    }
}

/// Whether `id` looks like a queue id (so anything else the operator typed
/// is answered as unknown without reaching SQL).
fn is_queue_id(id: &str) -> bool {
    id.len() == QUEUE_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
}
