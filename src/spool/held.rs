//! The gateway's mailboxes (client mode): replies that end here for a
//! client, kept until the client has fetched them and confirmed them.
//!
//! A reply block a client makes ends at its gateway, addressed to the
//! client's mailbox (a 32-byte key). The gateway cannot open what it holds
//! (only the client has the reply keys): a held reply is opaque bytes, its
//! reply id and a random delivery id the client confirms it by. It is
//! kept in the custody transaction that records its replay tag
//! (`Custody::Hold`), so the previous hop is acknowledged only once it is
//! durable, and deleted only on the client's confirmation: a lost
//! confirmation means the client is handed the same reply again, which
//! changes nothing at the client. (A reply of the wrong size, which no
//! client could open, is deleted when a fetch finds it: left in place it
//! would be the oldest for ever and hide every reply behind it.)
//!
//! A mailbox row exists while it holds replies (the last confirmation or
//! expiry deletes it), with the time its client was last seen and what it
//! holds; `counters` keeps the totals (`held_mailboxes`, `held_replies`,
//! `held_bytes`). Both change in the transaction that stores or deletes a
//! reply, so the caps read a few rows by key, never the held replies. Less
//! kept is less to lose: a seized gateway's disk names no client that
//! holds nothing, and not when such a client was last online.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::SpoolError;
use super::custody::CustodyOutcome;
use crate::time::UnixMillis;

/// A client's mailbox at its gateway: the key it authenticates with.
pub type MailboxKey = [u8; 32];

/// How much the gateway holds for clients at most. Past a cap the reply
/// is dropped (counted) and its tag recorded, and the previous hop still
/// gets its acknowledgement: the client's end-to-end retransmission
/// recovers what it needs, so a client that never comes back costs at
/// most `per_mailbox` replies until its mailbox expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldCaps {
    /// Replies held for one mailbox at most.
    pub per_mailbox: u32,
    /// Payload bytes held for all mailboxes together at most.
    pub total_bytes: u64,
    /// Mailboxes holding replies at most.
    pub mailboxes: u32,
}

/// Why a reply for a mailbox was not kept (a metric label; never whose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldDrop {
    /// Its mailbox holds `per_mailbox` replies already.
    Mailbox,
    /// It would take the held bytes past `total_bytes`.
    Total,
    /// Its mailbox holds nothing yet and `mailboxes` others hold replies.
    Mailboxes,
    /// Found held with an id or payload of the wrong size when its
    /// client fetched, and deleted: no client could use it, and kept it
    /// would block its mailbox ([`Fetched::damaged`]).
    Damaged,
}

impl HoldDrop {
    pub const ALL: [HoldDrop; 4] = [
        HoldDrop::Mailbox,
        HoldDrop::Total,
        HoldDrop::Mailboxes,
        HoldDrop::Damaged,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HoldDrop::Mailbox => "mailbox",
            HoldDrop::Total => "total",
            HoldDrop::Mailboxes => "mailboxes",
            HoldDrop::Damaged => "damaged",
        }
    }
}

/// A held reply as the client fetches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldReply {
    /// Random, drawn when the reply was stored: what the client confirms.
    pub delivery: [u8; 16],
    /// The reply id the final hop found with the payload.
    pub reply_id: [u8; 16],
    /// The opaque payload (a Sphinx payload only the client can open).
    pub payload: Vec<u8>,
}

/// What the gateway holds for clients, all mailboxes together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldTotals {
    pub mailboxes: u64,
    pub replies: u64,
    pub bytes: u64,
}

/// How fine `last_seen` is kept. A client fetches every few seconds, and
/// each fetch would otherwise be a write and an fsync on the spool's one
/// writer; idle expiry is measured in days, so a minute is plenty. Within
/// it, marking a mailbox seen changes no row and commits nothing.
pub const SEEN_RESOLUTION_MS: u64 = 60_000;

/// Mailboxes expired per transaction (each holds at most its cap of
/// replies), so one expiry never holds the writer for long;
/// `Spool::expire_mailboxes` runs batches until none is left.
pub(super) const EXPIRE_BATCH: usize = 64;

/// The statements storing one reply costs, each a lookup or a write of
/// one row by its key, whatever is held already. Listed together so a
/// test can read their work from SQLite (`spool::tests`); a statement
/// added to the path belongs here.
pub(super) mod hold_sql {
    pub const MAILBOX: &str = "SELECT held FROM mix_mailboxes WHERE mailbox = ?1";
    pub const COUNTER: &str = "SELECT value FROM counters WHERE name = ?1";
    pub const NEW_MAILBOX: &str =
        "INSERT INTO mix_mailboxes (mailbox, last_seen, held, bytes) VALUES (?1, ?2, 1, ?3)";
    pub const GROW_MAILBOX: &str =
        "UPDATE mix_mailboxes SET held = held + 1, bytes = bytes + ?2 WHERE mailbox = ?1";
    pub const INSERT: &str =
        "INSERT INTO mix_held (mailbox, delivery, reply_id, payload, stored_at)
         VALUES (?1, ?2, ?3, ?4, ?5)";
    pub const ADD_COUNTER: &str = "UPDATE counters SET value = value + ?2 WHERE name = ?1";
    /// Every statement above.
    #[cfg(test)]
    pub const ALL: [&str; 6] = [
        MAILBOX,
        COUNTER,
        NEW_MAILBOX,
        GROW_MAILBOX,
        INSERT,
        ADD_COUNTER,
    ];
}

/// The totals' names in `counters`.
const MAILBOXES: &str = "held_mailboxes";
const REPLIES: &str = "held_replies";
const BYTES: &str = "held_bytes";

fn counter(conn: &Connection, name: &str) -> Result<i64, SpoolError> {
    Ok(conn
        .prepare_cached(hold_sql::COUNTER)?
        .query_row(params![name], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0)
        .max(0))
}

fn add(conn: &Connection, name: &str, n: i64) -> Result<(), SpoolError> {
    conn.prepare_cached(hold_sql::ADD_COUNTER)?
        .execute(params![name, n])?;
    Ok(())
}

/// The gateway's share of a custody decision (the reply's tag is already
/// recorded in the same transaction): keeps the reply for `mailbox`
/// unless a cap says no, in which case nothing but the tag is kept.
pub(super) fn hold(
    tx: &Transaction<'_>,
    now: UnixMillis,
    mailbox: &MailboxKey,
    reply_id: &[u8; 16],
    payload: &[u8],
    caps: &HoldCaps,
) -> Result<CustodyOutcome, SpoolError> {
    let held: Option<i64> = tx
        .prepare_cached(hold_sql::MAILBOX)?
        .query_row(params![&mailbox[..]], |r| r.get(0))
        .optional()?;
    if held.unwrap_or(0) >= i64::from(caps.per_mailbox) {
        return Ok(CustodyOutcome::HeldDropped(HoldDrop::Mailbox));
    }
    if held.is_none() && counter(tx, MAILBOXES)? >= i64::from(caps.mailboxes) {
        return Ok(CustodyOutcome::HeldDropped(HoldDrop::Mailboxes));
    }
    let bytes = payload.len() as u64;
    if (counter(tx, BYTES)? as u64).saturating_add(bytes) > caps.total_bytes {
        return Ok(CustodyOutcome::HeldDropped(HoldDrop::Total));
    }
    let bytes = bytes as i64;
    // The mailbox row first: the held row refers to it.
    match held {
        None => {
            // A new mailbox's life starts now: if its client never
            // comes, it expires `idle` after its first reply.
            tx.prepare_cached(hold_sql::NEW_MAILBOX)?.execute(params![
                &mailbox[..],
                now as i64,
                bytes
            ])?;
            add(tx, MAILBOXES, 1)?;
        }
        // A reply arriving is not its client being seen: a mailbox that
        // keeps receiving still expires if nobody fetches.
        Some(_) => {
            tx.prepare_cached(hold_sql::GROW_MAILBOX)?
                .execute(params![&mailbox[..], bytes])?;
        }
    }
    let delivery: [u8; 16] = rand::random();
    tx.prepare_cached(hold_sql::INSERT)?.execute(params![
        &mailbox[..],
        &delivery[..],
        &reply_id[..],
        payload,
        now as i64
    ])?;
    add(tx, REPLIES, 1)?;
    add(tx, BYTES, bytes)?;
    Ok(CustodyOutcome::Stored)
}

/// Marks `mailbox` seen at `now` (to [`SEEN_RESOLUTION_MS`]) if it holds
/// anything; a mailbox that holds nothing has no row to mark.
fn seen(conn: &Connection, now: UnixMillis, mailbox: &MailboxKey) -> Result<(), SpoolError> {
    conn.prepare_cached(
        "UPDATE mix_mailboxes SET last_seen = ?2 WHERE mailbox = ?1 AND last_seen <= ?3",
    )?
    .execute(params![
        &mailbox[..],
        now as i64,
        now.saturating_sub(SEEN_RESOLUTION_MS) as i64
    ])?;
    Ok(())
}

pub(super) fn touch(
    conn: &mut Connection,
    now: UnixMillis,
    mailbox: &MailboxKey,
) -> Result<(), SpoolError> {
    seen(conn, now, mailbox)
}

/// What a fetch found in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fetched {
    /// The oldest reply fit to hand out, if any.
    pub reply: Option<HeldReply>,
    /// Replies deleted on the way to it because they could never be
    /// handed out (an id or payload of the wrong size): kept, each would
    /// stand first in its mailbox for ever and hide everything behind it.
    pub damaged: u64,
}

/// The oldest reply held for `mailbox` whose payload is `payload_len`
/// bytes (the same one until it is confirmed), and the mailbox is marked
/// seen. A reply of the wrong shape before it is deleted as it is found
/// (see [`Fetched::damaged`]); there are at most as many as the mailbox
/// holds.
pub(super) fn fetch(
    conn: &mut Connection,
    now: UnixMillis,
    mailbox: &MailboxKey,
    payload_len: usize,
) -> Result<Fetched, SpoolError> {
    let mut fetched = Fetched::default();
    loop {
        // The oldest row, and the reply in it if it has the shape a
        // client can use.
        let row: Option<(i64, Option<HeldReply>)> = conn
            .prepare_cached(
                "SELECT id, delivery, reply_id, payload FROM mix_held
                 WHERE mailbox = ?1 ORDER BY id LIMIT 1",
            )?
            .query_row(params![&mailbox[..]], |r| {
                let (delivery, reply_id, payload): (Vec<u8>, Vec<u8>, Vec<u8>) =
                    (r.get(1)?, r.get(2)?, r.get(3)?);
                let whole = match (delivery[..].try_into(), reply_id[..].try_into()) {
                    (Ok(delivery), Ok(reply_id)) if payload.len() == payload_len => {
                        Some(HeldReply {
                            delivery,
                            reply_id,
                            payload,
                        })
                    }
                    _ => None,
                };
                Ok((r.get(0)?, whole))
            })
            .optional()?;
        let Some((id, whole)) = row else {
            break;
        };
        if whole.is_some() {
            fetched.reply = whole;
            break;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let bytes: i64 = tx
            .prepare_cached("DELETE FROM mix_held WHERE id = ?1 RETURNING length(payload)")?
            .query_row(params![id], |r| r.get(0))?;
        release(&tx, now, mailbox, bytes)?;
        tx.commit()?;
        fetched.damaged += 1;
    }
    seen(conn, now, mailbox)?;
    Ok(fetched)
}

/// Deletes the reply `delivery` of `mailbox` (of no other mailbox), and
/// the mailbox with its last reply; true if a reply was deleted.
pub(super) fn confirm(
    conn: &mut Connection,
    now: UnixMillis,
    mailbox: &MailboxKey,
    delivery: &[u8; 16],
) -> Result<bool, SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let bytes: Option<i64> = tx
        .prepare_cached(
            "DELETE FROM mix_held WHERE delivery = ?1 AND mailbox = ?2
             RETURNING length(payload)",
        )?
        .query_row(params![&delivery[..], &mailbox[..]], |r| r.get(0))
        .optional()?;
    let Some(bytes) = bytes else {
        return Ok(false);
    };
    release(&tx, now, mailbox, bytes)?;
    tx.commit()?;
    Ok(true)
}

/// The books after one reply of `bytes` left `mailbox` (in `tx`, which
/// deleted it): the mailbox holds one fewer, its client was here at
/// `now`, and the mailbox goes with its last reply.
fn release(
    tx: &Transaction<'_>,
    now: UnixMillis,
    mailbox: &MailboxKey,
    bytes: i64,
) -> Result<(), SpoolError> {
    let left: Option<i64> = tx
        .prepare_cached(
            "UPDATE mix_mailboxes SET held = held - 1, bytes = bytes - ?2, last_seen = ?3
             WHERE mailbox = ?1 RETURNING held",
        )?
        .query_row(params![&mailbox[..], bytes, now as i64], |r| r.get(0))
        .optional()?;
    if left.is_some_and(|n| n <= 0) {
        tx.prepare_cached("DELETE FROM mix_mailboxes WHERE mailbox = ?1")?
            .execute(params![&mailbox[..]])?;
        add(tx, MAILBOXES, -1)?;
    }
    add(tx, REPLIES, -1)?;
    add(tx, BYTES, -bytes)?;
    Ok(())
}

/// Deletes up to [`EXPIRE_BATCH`] mailboxes not seen since `before`,
/// with what they hold; returns (mailboxes, replies) deleted.
pub(super) fn expire(conn: &mut Connection, before: UnixMillis) -> Result<(u64, u64), SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let idle: Vec<(Vec<u8>, i64)> = tx
        .prepare_cached(
            "SELECT mailbox, bytes FROM mix_mailboxes WHERE last_seen < ?1
             ORDER BY last_seen LIMIT ?2",
        )?
        .query_map(params![before as i64, EXPIRE_BATCH as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let (mut replies, mut bytes) = (0, 0);
    for (mailbox, held_bytes) in &idle {
        replies += tx
            .prepare_cached("DELETE FROM mix_held WHERE mailbox = ?1")?
            .execute(params![mailbox])? as i64;
        tx.prepare_cached("DELETE FROM mix_mailboxes WHERE mailbox = ?1")?
            .execute(params![mailbox])?;
        bytes += held_bytes;
    }
    let mailboxes = idle.len() as i64;
    if mailboxes > 0 {
        add(&tx, MAILBOXES, -mailboxes)?;
        add(&tx, REPLIES, -replies)?;
        add(&tx, BYTES, -bytes)?;
    }
    tx.commit()?;
    Ok((mailboxes as u64, replies.max(0) as u64))
}

pub(super) fn totals(conn: &Connection) -> Result<HeldTotals, SpoolError> {
    Ok(HeldTotals {
        mailboxes: counter(conn, MAILBOXES)? as u64,
        replies: counter(conn, REPLIES)? as u64,
        bytes: counter(conn, BYTES)? as u64,
    })
}
