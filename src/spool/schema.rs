//! Connection settings and table layout of the spool database.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::SpoolError;

/// File name of the spool inside `-data-dir`.
pub const SPOOL_FILE: &str = "spool.sqlite";

/// Bumped whenever the layout below changes; older spools are migrated
/// forward in [`migrate`], newer ones are refused.
const SCHEMA_VERSION: i64 = 8;

/// Readers (`pluto2 queue`) and the writer share the file; a short busy
/// wait covers the moment of a checkpoint instead of failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating if needed) the spool for the daemon.
///
/// WAL lets `pluto2 queue` read while the daemon writes; `synchronous=FULL`
/// makes every COMMIT fsync the log, which is what lets us answer 250;
/// `secure_delete` overwrites delivered mail instead of leaving it in free pages.
pub fn open_writer(data_dir: &Path) -> Result<Connection, SpoolError> {
    let conn = Connection::open(data_dir.join(SPOOL_FILE)).map_err(opening)?;
    configure(&conn).map_err(opening)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(opening)?;
    match identify(&conn)? {
        Found::Ours => {}
        Found::Old(version) => migrate_from(&conn, version).map_err(opening)?,
        Found::Empty => {
            create_v1(&conn).map_err(opening)?;
            migrate_from(&conn, 1).map_err(opening)?;
        }
    }
    Ok(conn)
}

/// One step per schema version, in order: `MIGRATIONS[v - 1]` takes a
/// spool from version `v` to `v + 1`. Each step is one transaction that
/// also sets `user_version`, so a crash between steps leaves a spool of a
/// known version that the next start carries on from.
const MIGRATIONS: [Migration; 7] = [
    migrate_v1_to_v2,
    migrate_v2_to_v3,
    migrate_v3_to_v4,
    migrate_v4_to_v5,
    migrate_v5_to_v6,
    migrate_v6_to_v7,
    migrate_v7_to_v8,
];

/// One migration step (one transaction).
type Migration = fn(&Connection) -> Result<(), rusqlite::Error>;

fn migrate_from(conn: &Connection, version: i64) -> Result<(), rusqlite::Error> {
    let first = usize::try_from(version.max(1) - 1).unwrap_or(0);
    for step in MIGRATIONS.iter().skip(first) {
        step(conn)?;
    }
    Ok(())
}

/// The `user_version` of an open spool.
pub(super) fn version(conn: &Connection) -> Result<i64, SpoolError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// The layout version this pluto2 writes (the `queue` operations refuse a
/// spool an older daemon still uses instead of migrating it under it).
pub(super) const CURRENT_VERSION: i64 = SCHEMA_VERSION;

/// Opens an existing spool without creating one (for `pluto2 queue`),
/// after the same checks as the daemon's, so it refuses a foreign, newer
/// or damaged file with the same words.
pub fn open_reader(data_dir: &Path) -> Result<Connection, SpoolError> {
    let path = data_dir.join(SPOOL_FILE);
    if !path.exists() {
        return Err(SpoolError::Missing);
    }
    let conn =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(opening)?;
    configure(&conn).map_err(opening)?;
    match identify(&conn)? {
        Found::Ours | Found::Old(_) => Ok(conn),
        Found::Empty => Err(SpoolError::Missing),
    }
}

/// Opens the daemon's own reader (see `reader`) of the spool its writer
/// has just opened: read-only, so that it can never take the write lock
/// from the committer, and with the same busy wait as every other
/// connection for the moment of a checkpoint. The writer has identified
/// and migrated the file already.
pub(super) fn open_daemon_reader(data_dir: &Path) -> Result<Connection, SpoolError> {
    let conn = Connection::open_with_flags(
        data_dir.join(SPOOL_FILE),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(opening)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(opening)?;
    Ok(conn)
}

/// What `pluto2 check` learns from an existing spool without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolInspection {
    /// The schema version found (`user_version`).
    pub version: i64,
    /// The version this pluto2 writes; an older spool is migrated at start.
    pub current: i64,
    /// `PRAGMA quick_check`'s findings; empty when it said `ok`.
    pub damage: Vec<String>,
}

/// Opens the spool strictly read-only, identifies it like the daemon does
/// and runs `PRAGMA quick_check`; `Ok(None)` when there is no spool yet.
///
/// A read-only open of a WAL database still creates the `-wal` and `-shm`
/// files next to it, which `pluto2 check` promises not to do. When neither
/// exists no writer has anything un-checkpointed (a clean close removes
/// them), so the file is opened `immutable`, which touches nothing but the
/// file itself. When they exist (a daemon runs, or one crashed) they are
/// used as they are and no file is created.
pub fn inspect_read_only(data_dir: &Path) -> Result<Option<SpoolInspection>, SpoolError> {
    let path = data_dir.join(SPOOL_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let sidecar = |suffix: &str| {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        std::path::PathBuf::from(name).exists()
    };
    let idle = !sidecar("-wal") && !sidecar("-shm");
    let escaped: String = path
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            '%' => "%25".to_string(),
            '?' => "%3f".to_string(),
            '#' => "%23".to_string(),
            c => c.to_string(),
        })
        .collect();
    let uri = format!(
        "file:{escaped}?mode=ro{}",
        if idle { "&immutable=1" } else { "" }
    );
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&uri, flags).map_err(opening)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(opening)?;
    let version = match identify(&conn)? {
        Found::Ours => SCHEMA_VERSION,
        Found::Old(v) => v,
        Found::Empty => 0,
    };
    let damage = conn
        .prepare("PRAGMA quick_check")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(opening)?
        .into_iter()
        .filter(|line| line != "ok")
        .collect();
    Ok(Some(SpoolInspection {
        version,
        current: SCHEMA_VERSION,
        damage,
    }))
}

/// Turns an SQLite error met while opening into the error that says what
/// to do: a file SQLite cannot read as a database is damaged (or not a
/// database at all); anything else is a plain failure to open.
pub(super) fn opening(e: rusqlite::Error) -> SpoolError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match e.sqlite_error_code() {
        Some(NotADatabase | DatabaseCorrupt) => SpoolError::Corrupt {
            detail: one_line(&e.to_string()),
        },
        _ => match e {
            // Keeps the statement text (which can run over many lines) out
            // of the message.
            rusqlite::Error::SqlInputError { error, msg, .. } => {
                SpoolError::Open(rusqlite::Error::SqliteFailure(error, Some(one_line(&msg))))
            }
            e => SpoolError::Open(e),
        },
    }
}

/// [`opening`] for the first statements after the checks (releasing
/// leases, the `queue` report), which still count as opening the spool.
pub(super) fn still_opening(e: SpoolError) -> SpoolError {
    match e {
        SpoolError::Sqlite(e) => opening(e),
        other => other,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the database file holds.
enum Found {
    /// A pluto2 spool of this schema version.
    Ours,
    /// A pluto2 spool of an older version, migrated forward on open.
    Old(i64),
    /// Nothing yet: a new file.
    Empty,
}

/// The tables a spool of [`SCHEMA_VERSION`] has.
const TABLES: [&str; 3] = ["messages", "recipients", "replay"];

/// Tells a pluto2 spool from an empty file, another program's database and
/// a spool of a newer pluto2, before anything is written: creating our
/// tables beside someone else's would fail half-way (and print the whole
/// schema) or, worse, succeed.
fn identify(conn: &Connection) -> Result<Found, SpoolError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(opening)?;
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(opening)?;
    if version > SCHEMA_VERSION {
        return Err(SpoolError::SchemaVersion {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    let ours = TABLES.iter().all(|t| names.iter().any(|n| n == t));
    match version {
        SCHEMA_VERSION if ours => Ok(Found::Ours),
        1..SCHEMA_VERSION if ours => Ok(Found::Old(version)),
        0 if names.is_empty() => Ok(Found::Empty),
        _ => Err(SpoolError::Foreign {
            what: describe_tables(version, &names),
        }),
    }
}

/// A short, one-line description of a foreign database's tables.
fn describe_tables(version: i64, names: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut shown: Vec<&str> = names.iter().take(SHOWN).map(String::as_str).collect();
    if names.len() > SHOWN {
        shown.push("…");
    }
    match (names.is_empty(), version) {
        (true, v) => format!("no tables, user_version {v}"),
        (false, 0) => format!("tables: {}", shown.join(", ")),
        (false, v) => format!("user_version {v}, tables: {}", shown.join(", ")),
    }
}

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Lays out a new, empty spool at version 1; [`migrate_v1_to_v2`] follows,
/// so a new spool and an upgraded one have the same layout.
fn create_v1(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE messages (
             id          INTEGER PRIMARY KEY,
             received_at INTEGER NOT NULL,
             sender      TEXT    NOT NULL,
             smtputf8    INTEGER NOT NULL,
             eight_bit   INTEGER NOT NULL,
             body        BLOB    NOT NULL
         );
         CREATE TABLE recipients (
             id           INTEGER PRIMARY KEY,
             message_id   INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
             address      TEXT    NOT NULL,
             state        TEXT    NOT NULL DEFAULT 'queued'
                                  CHECK (state IN ('queued', 'deferred', 'leased')),
             attempts     INTEGER NOT NULL DEFAULT 0,
             next_attempt INTEGER NOT NULL,
             lease_until  INTEGER
         );
         CREATE INDEX recipients_message ON recipients(message_id);
         CREATE INDEX recipients_due ON recipients(state, next_attempt);
         CREATE TABLE replay (
             id      BLOB    PRIMARY KEY,
             seen_at INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE INDEX replay_seen ON replay(seen_at);
         PRAGMA user_version = 1;
         COMMIT;",
    )
}

/// The mixnet's custody tables (see `spool::custody`), and two columns on
/// messages: where a message came from (`smtp` at an entry, `exit` when it
/// left the mixnet here) and, for the latter, its mixnet message id.
fn migrate_v1_to_v2(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "BEGIN;
         ALTER TABLE messages ADD COLUMN origin TEXT NOT NULL DEFAULT 'smtp'
             CHECK (origin IN ('smtp', 'exit'));
         ALTER TABLE messages ADD COLUMN mix_id BLOB;
         CREATE TABLE mix_packets (
             id          INTEGER PRIMARY KEY,
             next_hop    BLOB    NOT NULL,
             epoch       INTEGER NOT NULL,
             bytes       BLOB    NOT NULL,
             kind        TEXT    NOT NULL CHECK (kind IN ('forward', 'fragment', 'ack')),
             release_at  INTEGER NOT NULL,
             deadline    INTEGER NOT NULL,
             attempts    INTEGER NOT NULL DEFAULT 0,
             lease_until INTEGER NOT NULL DEFAULT 0
         );
         CREATE INDEX mix_packets_due ON mix_packets(next_hop, release_at);
         CREATE TABLE mix_tags (
             tag     BLOB    PRIMARY KEY,
             epoch   INTEGER NOT NULL,
             seen_at INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE mix_fragments (
             mix_id      BLOB    NOT NULL,
             idx         INTEGER NOT NULL,
             count       INTEGER NOT NULL,
             blob_len    INTEGER NOT NULL,
             blob_hash   BLOB    NOT NULL,
             reply_block BLOB,
             data        BLOB    NOT NULL,
             received_at INTEGER NOT NULL,
             PRIMARY KEY (mix_id, idx)
         ) WITHOUT ROWID;
         CREATE TABLE mix_done (
             mix_id  BLOB    PRIMARY KEY,
             done_at INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE mix_outbound (
             mix_id     BLOB    PRIMARY KEY,
             message    INTEGER NOT NULL UNIQUE REFERENCES messages(id) ON DELETE CASCADE,
             exit       BLOB    NOT NULL,
             fragments  INTEGER NOT NULL,
             acked      BLOB,
             next_check INTEGER NOT NULL,
             give_up_at INTEGER NOT NULL,
             rounds     INTEGER NOT NULL DEFAULT 0
         ) WITHOUT ROWID;
         CREATE TABLE mix_replies (
             reply_id   BLOB    PRIMARY KEY,
             mix_id     BLOB    NOT NULL REFERENCES mix_outbound(mix_id) ON DELETE CASCADE,
             recovery   BLOB    NOT NULL
         ) WITHOUT ROWID;
         CREATE INDEX mix_replies_message ON mix_replies(mix_id);
         PRAGMA user_version = 2;
         COMMIT;",
    )
}

/// What the `pluto2 queue` operations need (see `spool::ops`):
///
/// - `recipients.mark`: `held` keeps a recipient from being leased (for
///   delivery or into the mixnet) until released; `deleted` is the
///   tombstone of a recipient the operator deleted while a delivery had it
///   leased: that delivery's settle removes it whatever its outcome, so a
///   late completion cannot bring the message back (and its row id cannot
///   be reused under the delivery, as an immediate delete would allow).
/// - `queue_ids`: an opaque random id per message (16 hex digits) for the
///   operator to name it by; row ids would tell how many messages passed
///   between two queued ones. A trigger gives every new message one, so
///   code that inserts messages (SMTP intake, the mixnet exit) needs no
///   change.
/// - `counters`: messages deleted by the operator, kept across restarts
///   (the project counts every drop; `pluto2 queue` shows it).
fn migrate_v2_to_v3(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "BEGIN;
         ALTER TABLE recipients ADD COLUMN mark TEXT
             CHECK (mark IN ('held', 'deleted'));
         CREATE TABLE queue_ids (
             queue_id   TEXT    PRIMARY KEY,
             message_id INTEGER NOT NULL UNIQUE REFERENCES messages(id) ON DELETE CASCADE
         ) WITHOUT ROWID;
         INSERT INTO queue_ids (queue_id, message_id)
             SELECT lower(hex(randomblob(8))), id FROM messages;
         CREATE TRIGGER messages_queue_id AFTER INSERT ON messages
         BEGIN
             INSERT INTO queue_ids (queue_id, message_id)
                 VALUES (lower(hex(randomblob(8))), NEW.id);
         END;
         CREATE TABLE counters (
             name  TEXT    PRIMARY KEY,
             value INTEGER NOT NULL
         ) WITHOUT ROWID;
         INSERT INTO counters (name, value) VALUES ('deleted_by_operator', 0);
         PRAGMA user_version = 3;
         COMMIT;",
    )
}

/// One row per message whose fragments the exit is collecting
/// (`mix_partial`), kept in the transaction that stores or deletes its
/// fragments, so storing a fragment reads and writes one row whatever
/// was stored before (instead of counting the message's fragments), and
/// completion, `pluto2 queue` counts, PARTIAL acknowledgements and
/// pruning read these rows instead of grouping every fragment:
///
/// - `count`, `blob_len`, `blob_hash`: what the first fragment declared;
///   later fragments must agree.
/// - `have`, `bytes`: fragments stored and the bytes they hold (data and
///   reply blocks).
/// - `replies`: stored reply blocks not used yet (a PARTIAL takes one).
/// - `first_at`, `last_at`: when the first and the latest fragment came
///   (the age limits); `stalled_at`: when the last PARTIAL went.
///
/// `counters.exit_partial_bytes` is the sum of `bytes`, for the exit's
/// total cap. Spools of version 3 keep their fragments: the rows are
/// built from them here, once.
fn migrate_v3_to_v4(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE mix_partial (
             mix_id     BLOB    PRIMARY KEY,
             count      INTEGER NOT NULL,
             blob_len   INTEGER NOT NULL,
             blob_hash  BLOB    NOT NULL,
             have       INTEGER NOT NULL,
             bytes      INTEGER NOT NULL,
             replies    INTEGER NOT NULL,
             first_at   INTEGER NOT NULL,
             last_at    INTEGER NOT NULL,
             stalled_at INTEGER NOT NULL DEFAULT 0
         ) WITHOUT ROWID;
         CREATE INDEX mix_partial_whole ON mix_partial(mix_id) WHERE have >= count;
         CREATE INDEX mix_partial_last ON mix_partial(last_at);
         CREATE INDEX mix_partial_first ON mix_partial(first_at);
         INSERT INTO mix_partial
             (mix_id, count, blob_len, blob_hash, have, bytes, replies, first_at, last_at)
             SELECT mix_id, MAX(count), MAX(blob_len), MAX(blob_hash), COUNT(*),
                    SUM(length(data) + COALESCE(length(reply_block), 0)),
                    SUM(reply_block IS NOT NULL), MIN(received_at), MAX(received_at)
             FROM mix_fragments GROUP BY mix_id;
         INSERT INTO counters (name, value)
             SELECT 'exit_partial_bytes', COALESCE(SUM(bytes), 0) FROM mix_partial;
         PRAGMA user_version = 4;
         COMMIT;",
    )
}

/// The previous hop of each packet a hop keeps for another node, so
/// custody can be shared out per previous hop (`-custody-max`); NULL for
/// this node's own packets (fragments it sends, acknowledgements) and for
/// packets kept before this version (counted in no one's share).
fn migrate_v4_to_v5(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "BEGIN;
         ALTER TABLE mix_packets ADD COLUMN prev_hop BLOB;
         CREATE INDEX mix_packets_prev ON mix_packets(prev_hop) WHERE prev_hop IS NOT NULL;
         PRAGMA user_version = 5;
         COMMIT;",
    )
}

/// Step 5 → 6, the lease order (issue 18): a lease of packets for a next
/// hop reads only the packets it takes, however many wait
/// (`custody::lease_packets`).
///
/// - `due_at`: when a packet may be sent, the later of its release time
///   and its lease end, as a virtual column so the index below holds it
///   and no code has to keep it up to date.
/// - `shuffle`: a random key per packet, the tie-break among packets due
///   at the same time (it was `random()` in the lease's `ORDER BY`, which
///   sorted every due packet at each lease); packets kept before this
///   version draw theirs here.
/// - `mix_packets_due` becomes (next_hop, due_at, shuffle): "the next `max`
///   due packets" and "when is the next one due" are range reads of it.
///   The old (next_hop, release_at) index served the same queries less
///   well and nothing else.
/// - `mix_packets_deadline` (deadline, kind): the maintenance round's
///   custody expiry reads only the packets that expire.
fn migrate_v5_to_v6(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "BEGIN;
         ALTER TABLE mix_packets ADD COLUMN due_at INTEGER
             GENERATED ALWAYS AS (max(release_at, lease_until)) VIRTUAL;
         ALTER TABLE mix_packets ADD COLUMN shuffle INTEGER NOT NULL DEFAULT 0;
         UPDATE mix_packets SET shuffle = random();
         DROP INDEX mix_packets_due;
         CREATE INDEX mix_packets_due ON mix_packets(next_hop, due_at, shuffle);
         CREATE INDEX mix_packets_deadline ON mix_packets(deadline, kind);
         PRAGMA user_version = 6;
         COMMIT;",
    )
}

/// The gateway's mailboxes (client mode, see `spool::held`): replies
/// that end here for a client, held until the client confirms them.
///
/// - `mix_mailboxes`: one row per mailbox that holds replies: when its
///   client was last seen (`mix_mailboxes_seen` serves idle expiry) and
///   how many replies and payload bytes it holds (the per-mailbox cap
///   reads this row, not the replies).
/// - `mix_held`: the replies, opaque; `delivery` is the random id the
///   client confirms one by; `mix_held_mailbox` (mailbox, id) gives a
///   mailbox's oldest reply and its replies to expire.
/// - `counters`: `held_mailboxes`, `held_replies`, `held_bytes`, the
///   totals the caps read, kept in the transactions that change them.
fn migrate_v6_to_v7(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE mix_mailboxes (
             mailbox   BLOB    PRIMARY KEY,
             last_seen INTEGER NOT NULL,
             held      INTEGER NOT NULL,
             bytes     INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE INDEX mix_mailboxes_seen ON mix_mailboxes(last_seen);
         CREATE TABLE mix_held (
             id        INTEGER PRIMARY KEY,
             mailbox   BLOB    NOT NULL REFERENCES mix_mailboxes(mailbox) ON DELETE CASCADE,
             delivery  BLOB    NOT NULL UNIQUE,
             reply_id  BLOB    NOT NULL,
             payload   BLOB    NOT NULL,
             stored_at INTEGER NOT NULL
         );
         CREATE INDEX mix_held_mailbox ON mix_held(mailbox, id);
         INSERT INTO counters (name, value)
             VALUES ('held_mailboxes', 0), ('held_replies', 0), ('held_bytes', 0);
         PRAGMA user_version = 7;
         COMMIT;",
    )
}

/// The pinger's day (see `spool::loop_hours`): per mix node and clock
/// hour, loops back and lost and their latency histogram (`loop_day`),
/// with the node's short name when saved. `mix_loop_hours_hour` serves
/// the deletion of hours that left the day.
fn migrate_v7_to_v8(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE mix_loop_hours (
             node    BLOB    NOT NULL,
             hour    INTEGER NOT NULL,
             name    TEXT    NOT NULL,
             back    INTEGER NOT NULL,
             lost    INTEGER NOT NULL,
             latency BLOB    NOT NULL,
             PRIMARY KEY (node, hour)
         ) WITHOUT ROWID;
         CREATE INDEX mix_loop_hours_hour ON mix_loop_hours(hour);
         PRAGMA user_version = 8;
         COMMIT;",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings the `250` after DATA relies on, read back from SQLite
    /// rather than from the code that sets them.
    #[test]
    fn the_writer_logs_ahead_syncs_every_commit_and_overwrites_deleted_mail() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(dir.path()).unwrap();
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let synchronous: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        let secure_delete: i64 = conn
            .pragma_query_value(None, "secure_delete", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "synchronous=FULL");
        assert_eq!(secure_delete, 1);
    }

    /// `pluto2 check` promises to create and change nothing: after the
    /// daemon's clean close only the database file is left, and inspecting
    /// it leaves exactly that.
    #[test]
    fn inspecting_a_closed_spool_creates_and_changes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = open_writer(dir.path()).unwrap();
            conn.close().unwrap();
        }
        let listing = |dir: &Path| {
            let mut files: Vec<(String, std::time::SystemTime, u64)> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let meta = e.metadata().unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        meta.modified().unwrap(),
                        meta.len(),
                    )
                })
                .collect();
            files.sort();
            files
        };
        let before = listing(dir.path());
        assert_eq!(before.len(), 1, "{before:?}");
        let found = inspect_read_only(dir.path()).unwrap().unwrap();
        assert_eq!(found.version, SCHEMA_VERSION);
        assert!(found.damage.is_empty(), "{:?}", found.damage);
        assert_eq!(listing(dir.path()), before);
        assert_eq!(inspect_read_only(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn a_version_1_spool_keeps_its_mail_and_gains_the_mixnet_tables() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(SPOOL_FILE)).unwrap();
            create_v1(&conn).unwrap();
            conn.execute(
                "INSERT INTO messages (received_at, sender, smtputf8, eight_bit, body)
                 VALUES (1, 'a@b.example', 0, 0, x'00')",
                [],
            )
            .unwrap();
        }
        let conn = open_writer(dir.path()).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let origin: String = conn
            .query_row("SELECT origin FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(origin, "smtp");
        let packets: i64 = conn
            .query_row("SELECT COUNT(*) FROM mix_packets", [], |r| r.get(0))
            .unwrap();
        assert_eq!(packets, 0);
        let queue_id: String = conn
            .query_row("SELECT queue_id FROM queue_ids", [], |r| r.get(0))
            .unwrap();
        assert_eq!(queue_id.len(), 16);
    }

    /// A v2 spool (what the release before the queue operations wrote)
    /// keeps its mail, and every message gets a queue id, unmarked
    /// recipients and a zero deletion count; new mail gets an id too.
    #[test]
    fn a_version_2_spool_keeps_its_mail_and_gains_queue_ids_and_marks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(SPOOL_FILE)).unwrap();
            create_v1(&conn).unwrap();
            migrate_v1_to_v2(&conn).unwrap();
            conn.execute_batch(
                "INSERT INTO messages (received_at, sender, smtputf8, eight_bit, body)
                     VALUES (1, 'a@b.example', 0, 0, x'00');
                 INSERT INTO recipients (message_id, address, next_attempt)
                     VALUES (1, 'c@d.example', 5);",
            )
            .unwrap();
        }
        let conn = open_writer(dir.path()).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        let (mark, next): (Option<String>, i64) = conn
            .query_row("SELECT mark, next_attempt FROM recipients", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((mark, next), (None, 5));
        conn.execute(
            "INSERT INTO messages (received_at, sender, smtputf8, eight_bit, body)
             VALUES (2, '', 0, 0, x'01')",
            [],
        )
        .unwrap();
        let ids: Vec<String> = conn
            .prepare("SELECT queue_id FROM queue_ids ORDER BY message_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        assert!(
            ids.iter()
                .all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        let deleted: i64 = conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'deleted_by_operator'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(deleted, 0);
    }

    /// A v3 spool keeps the fragments its exit had collected, and each of
    /// their messages gets its row, as if they had been stored now.
    #[test]
    fn a_version_3_spool_keeps_its_fragments_and_gains_a_row_per_message() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(SPOOL_FILE)).unwrap();
            create_v1(&conn).unwrap();
            migrate_v1_to_v2(&conn).unwrap();
            migrate_v2_to_v3(&conn).unwrap();
            conn.execute_batch(
                "INSERT INTO mix_fragments
                     (mix_id, idx, count, blob_len, blob_hash, reply_block, data, received_at)
                 VALUES (x'01', 0, 3, 20, x'aa', x'0102', x'00000000', 10),
                        (x'01', 2, 3, 20, x'aa', NULL, x'000000', 30),
                        (x'02', 0, 1, 5, x'bb', x'03', x'0000000000', 20);",
            )
            .unwrap();
        }
        let conn = open_writer(dir.path()).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        /// mix_id, count, have, bytes, replies, first_at, last_at
        type Row = (Vec<u8>, i64, i64, i64, i64, i64, i64);
        let rows: Vec<Row> = conn
            .prepare(
                "SELECT mix_id, count, have, bytes, replies, first_at, last_at
                 FROM mix_partial ORDER BY mix_id",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![(vec![1], 3, 2, 9, 1, 10, 30), (vec![2], 1, 1, 6, 1, 20, 20)]
        );
        let total: i64 = conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'exit_partial_bytes'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(total, 15);
        let fragments: i64 = conn
            .query_row("SELECT COUNT(*) FROM mix_fragments", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fragments, 3, "no fragment lost");
    }

    /// A v5 spool's packets (kept before the lease order) get a due time
    /// and a tie-break key of their own, and keep their release times.
    #[test]
    fn a_version_5_spool_keeps_its_packets_and_gains_the_lease_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(SPOOL_FILE)).unwrap();
            create_v1(&conn).unwrap();
            migrate_v1_to_v2(&conn).unwrap();
            migrate_v2_to_v3(&conn).unwrap();
            migrate_v3_to_v4(&conn).unwrap();
            migrate_v4_to_v5(&conn).unwrap();
            for (release, lease) in [(5, 0), (7, 0), (7, 9)] {
                conn.execute(
                    "INSERT INTO mix_packets
                         (next_hop, epoch, bytes, kind, release_at, deadline, lease_until)
                     VALUES (x'02', 0, x'00', 'forward', ?1, 100, ?2)",
                    [release, lease],
                )
                .unwrap();
            }
        }
        let conn = open_writer(dir.path()).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        let rows: Vec<(i64, i64, i64)> = conn
            .prepare("SELECT release_at, due_at, shuffle FROM mix_packets ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let times: Vec<(i64, i64)> = rows.iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(times, [(5, 5), (7, 7), (7, 9)]);
        assert!(rows.iter().any(|r| r.2 != 0), "tie-break keys drawn");
    }

    /// A v6 spool keeps its mail and packets and gains empty mailboxes
    /// with zero totals, which the gateway then holds replies in.
    #[test]
    fn a_version_6_spool_keeps_its_mail_and_gains_empty_mailboxes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(SPOOL_FILE)).unwrap();
            create_v1(&conn).unwrap();
            for step in &MIGRATIONS[..5] {
                step(&conn).unwrap();
            }
            assert_eq!(version(&conn).unwrap(), 6);
            conn.execute_batch(
                "INSERT INTO messages (received_at, sender, smtputf8, eight_bit, body)
                     VALUES (1, 'a@b.example', 0, 0, x'00');
                 INSERT INTO mix_packets (next_hop, epoch, bytes, kind, release_at, deadline)
                     VALUES (x'02', 0, x'00', 'forward', 5, 100);",
            )
            .unwrap();
        }
        let mut conn = open_writer(dir.path()).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        let kept: (i64, i64) = conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM mix_packets)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(kept, (1, 1));
        assert_eq!(
            super::super::held::totals(&conn).unwrap(),
            super::super::held::HeldTotals::default()
        );
        let caps = super::super::held::HoldCaps {
            per_mailbox: 1,
            total_bytes: 100,
            mailboxes: 1,
        };
        let tx = conn.transaction().unwrap();
        let outcome = super::super::held::hold(&tx, 10, &[3; 32], &[4; 16], b"reply", &caps);
        assert_eq!(
            outcome.unwrap(),
            super::super::custody::CustodyOutcome::Stored
        );
        tx.commit().unwrap();
        let totals = super::super::held::totals(&conn).unwrap();
        assert_eq!((totals.mailboxes, totals.replies, totals.bytes), (1, 1, 5));
    }

    /// A v7 spool keeps its mail and held replies and gains an empty
    /// pinger's day, which then keeps what is saved into it.
    #[test]
    fn a_version_7_spool_keeps_its_mail_and_gains_an_empty_loop_day() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(SPOOL_FILE)).unwrap();
            create_v1(&conn).unwrap();
            for step in &MIGRATIONS[..6] {
                step(&conn).unwrap();
            }
            assert_eq!(version(&conn).unwrap(), 7);
            conn.execute_batch(
                "INSERT INTO messages (received_at, sender, smtputf8, eight_bit, body)
                     VALUES (1, 'a@b.example', 0, 0, x'00');
                 INSERT INTO mix_mailboxes (mailbox, last_seen, held, bytes)
                     VALUES (x'03', 1, 1, 5);
                 INSERT INTO mix_held (mailbox, delivery, reply_id, payload, stored_at)
                     VALUES (x'03', x'04', x'05', x'0102030405', 1);",
            )
            .unwrap();
        }
        let mut conn = open_writer(dir.path()).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        let kept: (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM mix_held),
                        (SELECT COUNT(*) FROM mix_loop_hours)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(kept, (1, 1, 0));
        let now = 1_704_105_000_000;
        let mut counts = crate::loop_day::HourCounts {
            back: 2,
            lost: 1,
            ..Default::default()
        };
        counts.latency.add(300);
        counts.latency.add(300);
        let hour = super::super::loop_hours::LoopHour {
            node: [7; 32],
            name: "bob".into(),
            hour: crate::loop_day::hour_of(now),
            counts,
        };
        super::super::loop_hours::save(&mut conn, now, &[hour]).unwrap();
        let tx = conn.transaction().unwrap();
        let day = super::super::loop_hours::day(&tx, now).unwrap();
        assert_eq!(day.len(), 1);
        assert_eq!(
            (day[0].node.as_str(), day[0].back, day[0].lost),
            ("bob", 2, 1)
        );
    }
}
