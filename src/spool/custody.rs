//! Spool side of the mixnet: packets in custody, replay tags, fragments at
//! the exit, and the entry's messages waiting for their acknowledgement.
//!
//! Custody rule: a node acknowledges a packet to the previous hop only after
//! the transaction holding its replay tag and whatever it must keep (the
//! packet for the next hop, or the fragment) has committed. A packet leaves
//! `mix_packets` only when the next hop acknowledged it (or its custody
//! deadline passed, which is counted).
//!
//! Everything here is bytes and numbers; the codecs that give them meaning
//! live in `mixnet::{packet, fragment}` and are applied by the node.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::SpoolError;
use super::held;
pub use super::held::{Fetched, HeldReply, HeldTotals, HoldCaps, HoldDrop, MailboxKey};
use crate::envelope::Message;
use crate::time::UnixMillis;

/// A 32-byte node identity as stored.
pub type NodeBytes = [u8; 32];
/// A 16-byte mixnet message id.
pub type MixId = [u8; 16];

/// Why a packet is kept (for counting; nothing identifying).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// A hop forwarding someone else's packet.
    Forward,
    /// An entry sending a fragment of its own message.
    Fragment,
    /// An exit sending an acknowledgement through a reply block.
    Ack,
}

impl PacketKind {
    fn as_str(self) -> &'static str {
        match self {
            PacketKind::Forward => "forward",
            PacketKind::Fragment => "fragment",
            PacketKind::Ack => "ack",
        }
    }
}

/// A packet to keep until its next hop acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutPacket {
    pub next_hop: NodeBytes,
    pub epoch: u32,
    pub bytes: Vec<u8>,
    pub kind: PacketKind,
    /// Not sent before this time (the hop's delay).
    pub release_at: UnixMillis,
    /// Given up (and counted) if still unacknowledged at this time.
    pub deadline: UnixMillis,
}

/// A fragment as the exit keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFragment {
    pub mix_id: MixId,
    pub index: u16,
    pub count: u16,
    pub blob_len: u32,
    pub blob_hash: [u8; 32],
    pub reply_block: Option<Vec<u8>>,
    pub data: Vec<u8>,
}

/// One custody decision, committed in a group with others.
#[derive(Debug)]
pub enum Custody {
    /// A hop: remember the tag, keep the packet for the next hop.
    Forward {
        tag: [u8; 32],
        epoch: u32,
        /// The previous hop (the authenticated link it came on): custody
        /// is shared out per previous hop ([`CustodyCaps`]).
        from: NodeBytes,
        packet: OutPacket,
    },
    /// An exit: remember the tag, keep the fragment (unless its message is
    /// already done, the fragment disagrees with those of its message
    /// stored before, or the partial messages here would hold more than
    /// `partial_cap` bytes with it and it does not complete its message).
    Fragment {
        tag: [u8; 32],
        epoch: u32,
        fragment: StoredFragment,
        partial_cap: u64,
    },
    /// A final hop with nothing to keep: remember the tag only.
    Tag { tag: [u8; 32], epoch: u32 },
    /// A gateway: remember the tag, hold a reply for a client's mailbox
    /// until the client fetches and confirms it (`spool::held`), unless
    /// a cap says no ([`CustodyOutcome::HeldDropped`]: the tag is kept,
    /// the reply is not).
    Hold {
        tag: [u8; 32],
        epoch: u32,
        mailbox: MailboxKey,
        reply_id: [u8; 16],
        /// Opaque (a Sphinx payload only the client can open), at most
        /// 8,192 bytes.
        payload: Vec<u8>,
        caps: HoldCaps,
    },
}

/// The answer to a custody request; the link acknowledges accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustodyOutcome {
    /// Committed.
    Stored,
    /// The fragment is committed; `have` of its message's fragments are
    /// now stored.
    FragmentStored { have: u16 },
    /// The tag was known: nothing done (a replay, or a retry after a lost
    /// acknowledgement).
    Duplicate,
    /// The fragment's message was completed here before: nothing stored,
    /// but the tag is remembered (the sender needs a fresh acknowledgement).
    AlreadyDone,
    /// The fragment's count, blob length or hash differ from those of the
    /// fragments of its message stored before: not stored (the tag is
    /// remembered, so the same packet is a duplicate).
    Inconsistent,
    /// The partial messages here hold their cap of bytes: nothing stored,
    /// not even the tag, so the previous hop's retry of the same packet
    /// is taken once room is made.
    Full,
    /// A reply for a client's mailbox met a cap (`HoldCaps`): not kept,
    /// but its tag is remembered (the same packet again is a duplicate).
    /// The previous hop is acknowledged all the same; the client's
    /// end-to-end retransmission recovers what the reply carried.
    HeldDropped(HoldDrop),
    /// Storage failed: nothing committed, the sender will retry.
    Failed,
    /// Not taken now: custody is full or the disk is short (nothing
    /// committed, not even the tag; the sender keeps its packet and
    /// retries later).
    Busy(BusyReason),
}

/// Why custody answered busy (a metric label; never who sent it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyReason {
    /// The data dir's file system is under `-min-free-space`.
    FreeSpace,
    /// Custody holds `-custody-max` worth of packets from other nodes.
    Cap,
    /// This previous hop holds its share of `-custody-max` already.
    PeerCap,
}

impl BusyReason {
    pub const ALL: [BusyReason; 3] = [BusyReason::FreeSpace, BusyReason::Cap, BusyReason::PeerCap];

    pub fn label(self) -> &'static str {
        match self {
            BusyReason::FreeSpace => "free_space",
            BusyReason::Cap => "cap",
            BusyReason::PeerCap => "peer_cap",
        }
    }
}

/// How much of other nodes' traffic this node keeps in custody at most.
///
/// Shares: each previous hop may hold a quarter of the total. So one peer,
/// even a listed one gone bad, fills at most a quarter of what custody may
/// take, and it takes four of them together to fill it; an honest peer
/// sending a large message at once (a 10 MiB message is about 1,400
/// packets, 12 MB) stays far within its share of the default 1 GiB. Past a
/// cap the node answers busy: the previous hop keeps the packet and
/// retries with backoff, so backpressure reaches the entry, whose spool
/// holds the mail; nothing is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustodyCaps {
    /// Forward packets in custody at most.
    pub total: u64,
    /// Forward packets from one previous hop at most.
    pub per_peer: u64,
}

impl CustodyCaps {
    /// Caps for `bytes` of custody (each packet is kept as its 8,540
    /// bytes plus a row); zero means no cap.
    pub fn of_bytes(bytes: u64) -> Option<CustodyCaps> {
        if bytes == 0 {
            return None;
        }
        let total = (bytes / ROW_BYTES).max(4);
        Some(CustodyCaps {
            total,
            per_peer: total / 4,
        })
    }
}

/// What one packet in custody costs on disk, about: the packet (8,540
/// bytes on every link; the spool stores bytes and does not name the
/// codec) and its row.
const ROW_BYTES: u64 = 8_540 + 64;

/// Forward packets in custody, in all and per previous hop: counted up as
/// they are stored, and recounted from the table now and then (deletes
/// are not tracked one by one, so between recounts the counts can only be
/// too high, which makes the node busy early, never over its cap).
#[derive(Debug, Default)]
pub struct CustodyCounts {
    total: u64,
    per_peer: std::collections::HashMap<NodeBytes, u64>,
    /// When the table was last counted.
    counted_at: Option<UnixMillis>,
}

/// How often the counts are taken again from the table.
pub const RECOUNT_EVERY_MS: u64 = 5_000;

impl CustodyCounts {
    /// Counts the table again if it was not counted for a while.
    pub fn refresh(&mut self, conn: &Connection, now: UnixMillis) -> Result<(), SpoolError> {
        if self
            .counted_at
            .is_some_and(|at| now.saturating_sub(at) < RECOUNT_EVERY_MS)
        {
            return Ok(());
        }
        let mut stmt = conn.prepare_cached(
            "SELECT prev_hop, COUNT(*) FROM mix_packets
             WHERE prev_hop IS NOT NULL GROUP BY prev_hop",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        self.per_peer.clear();
        self.total = 0;
        for row in rows {
            let (hop, n) = row?;
            if let Ok(hop) = NodeBytes::try_from(hop.as_slice()) {
                self.per_peer.insert(hop, n as u64);
                self.total += n as u64;
            }
        }
        self.counted_at = Some(now);
        Ok(())
    }

    /// Whether one more packet from `from` fits under `caps`.
    pub fn admits(&self, caps: &CustodyCaps, from: &NodeBytes) -> Result<(), BusyReason> {
        if self.total >= caps.total {
            return Err(BusyReason::Cap);
        }
        if self.per_peer.get(from).copied().unwrap_or(0) >= caps.per_peer {
            return Err(BusyReason::PeerCap);
        }
        Ok(())
    }

    /// A packet from `from` was stored.
    pub fn stored(&mut self, from: NodeBytes) {
        self.total += 1;
        *self.per_peer.entry(from).or_insert(0) += 1;
    }
}

/// The statements one fragment costs on the exit's receive path, each a
/// lookup or a write of one row by its key, whatever was stored before.
/// Listed together so a test can read their work from SQLite
/// (`spool::tests`); a statement added to the path belongs here.
pub(super) mod fragment_sql {
    pub const REMEMBER_TAG: &str =
        "INSERT INTO mix_tags (tag, epoch, seen_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING";
    pub const FORGET_TAG: &str = "DELETE FROM mix_tags WHERE tag = ?1";
    pub const IS_DONE: &str = "SELECT 1 FROM mix_done WHERE mix_id = ?1";
    pub const PARTIAL_OF: &str =
        "SELECT count, blob_len, blob_hash, have FROM mix_partial WHERE mix_id = ?1";
    pub const HELD: &str = "SELECT 1 FROM mix_fragments WHERE mix_id = ?1 AND idx = ?2";
    pub const TOTAL: &str = "SELECT value FROM counters WHERE name = 'exit_partial_bytes'";
    pub const INSERT: &str = "INSERT INTO mix_fragments
             (mix_id, idx, count, blob_len, blob_hash, reply_block, data, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
    pub const NEW_PARTIAL: &str = "INSERT INTO mix_partial
             (mix_id, count, blob_len, blob_hash, have, bytes, replies, first_at, last_at)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?7)";
    pub const GROW_PARTIAL: &str = "UPDATE mix_partial
         SET have = have + 1, bytes = bytes + ?2, replies = replies + ?3, last_at = ?4
         WHERE mix_id = ?1";
    pub const ADD_TOTAL: &str =
        "UPDATE counters SET value = value + ?1 WHERE name = 'exit_partial_bytes'";
    /// Every statement above.
    #[cfg(test)]
    pub const ALL: [&str; 10] = [
        REMEMBER_TAG,
        FORGET_TAG,
        IS_DONE,
        PARTIAL_OF,
        HELD,
        TOTAL,
        INSERT,
        NEW_PARTIAL,
        GROW_PARTIAL,
        ADD_TOTAL,
    ];
}

/// Writes a group of custody requests in the caller's transaction.
pub(super) fn custody_refs(
    tx: &Transaction<'_>,
    now: UnixMillis,
    requests: &[&Custody],
) -> Result<Vec<CustodyOutcome>, SpoolError> {
    let mut remember = tx.prepare_cached(fragment_sql::REMEMBER_TAG)?;
    let mut outcomes = Vec::with_capacity(requests.len());
    for &request in requests {
        let (tag, epoch) = match request {
            Custody::Forward { tag, epoch, .. }
            | Custody::Fragment { tag, epoch, .. }
            | Custody::Tag { tag, epoch }
            | Custody::Hold { tag, epoch, .. } => (tag, epoch),
        };
        if remember.execute(params![&tag[..], epoch, now as i64])? == 0 {
            outcomes.push(CustodyOutcome::Duplicate);
            continue;
        }
        outcomes.push(match request {
            Custody::Forward { packet, from, .. } => {
                insert_packet(tx, packet, Some(from))?;
                CustodyOutcome::Stored
            }
            Custody::Fragment {
                fragment,
                partial_cap,
                ..
            } => {
                let outcome = store_fragment(tx, now, fragment, *partial_cap)?;
                if outcome == CustodyOutcome::Full {
                    tx.prepare_cached(fragment_sql::FORGET_TAG)?
                        .execute(params![&tag[..]])?;
                }
                outcome
            }
            Custody::Tag { .. } => CustodyOutcome::Stored,
            Custody::Hold {
                mailbox,
                reply_id,
                payload,
                caps,
                ..
            } => held::hold(tx, now, mailbox, reply_id, payload, caps)?,
        });
    }
    Ok(outcomes)
}

/// The bytes a stored fragment occupies, for the caps.
fn fragment_bytes(f: &StoredFragment) -> u64 {
    (f.data.len() + f.reply_block.as_ref().map_or(0, Vec::len)) as u64
}

/// The exit's share of a custody decision (its tag is already recorded):
/// one lookup or write of one row by its key per step, so the cost is the
/// same for the first fragment of a message and its thousandth.
fn store_fragment(
    tx: &Transaction<'_>,
    now: UnixMillis,
    f: &StoredFragment,
    partial_cap: u64,
) -> Result<CustodyOutcome, SpoolError> {
    if tx
        .prepare_cached(fragment_sql::IS_DONE)?
        .exists(params![&f.mix_id[..]])?
    {
        return Ok(CustodyOutcome::AlreadyDone);
    }
    let partial: Option<(u16, u32, Vec<u8>, i64)> = tx
        .prepare_cached(fragment_sql::PARTIAL_OF)?
        .query_row(params![&f.mix_id[..]], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    if let Some((count, blob_len, hash, have)) = &partial {
        if (*count, *blob_len, hash.as_slice()) != (f.count, f.blob_len, &f.blob_hash[..]) {
            return Ok(CustodyOutcome::Inconsistent);
        }
        if tx
            .prepare_cached(fragment_sql::HELD)?
            .exists(params![&f.mix_id[..], f.index])?
        {
            // The entry sent this fragment again (a retransmission): kept
            // once.
            return Ok(CustodyOutcome::FragmentStored {
                have: (*have).clamp(0, u16::MAX as i64) as u16,
            });
        }
    }
    let bytes = fragment_bytes(f);
    // The fragment that completes its message passes the cap: its
    // completion frees the whole message right after, so partial
    // messages at the cap cannot hold each other back for ever. The cap
    // is passed by at most one fragment per message one fragment short.
    let completes = partial
        .as_ref()
        .map_or(f.count == 1, |p| p.3 + 1 >= p.0 as i64);
    let total: i64 = tx
        .prepare_cached(fragment_sql::TOTAL)?
        .query_row([], |r| r.get(0))?;
    if !completes && (total.max(0) as u64).saturating_add(bytes) > partial_cap {
        return Ok(CustodyOutcome::Full);
    }
    tx.prepare_cached(fragment_sql::INSERT)?.execute(params![
        &f.mix_id[..],
        f.index,
        f.count,
        f.blob_len,
        &f.blob_hash[..],
        f.reply_block,
        f.data,
        now as i64
    ])?;
    let reply = f.reply_block.is_some() as i64;
    let have = match partial {
        None => {
            tx.prepare_cached(fragment_sql::NEW_PARTIAL)?
                .execute(params![
                    &f.mix_id[..],
                    f.count,
                    f.blob_len,
                    &f.blob_hash[..],
                    bytes as i64,
                    reply,
                    now as i64
                ])?;
            1
        }
        Some((_, _, _, have)) => {
            tx.prepare_cached(fragment_sql::GROW_PARTIAL)?
                .execute(params![&f.mix_id[..], bytes as i64, reply, now as i64])?;
            have + 1
        }
    };
    tx.prepare_cached(fragment_sql::ADD_TOTAL)?
        .execute(params![bytes as i64])?;
    Ok(CustodyOutcome::FragmentStored {
        have: have.clamp(0, u16::MAX as i64) as u16,
    })
}

/// Deletes a partial message: its fragments, its row, and its bytes from
/// the total. Returns how many fragments went.
fn forget_partial(conn: &Connection, mix_id: &[u8]) -> Result<u64, SpoolError> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached("SELECT have, bytes FROM mix_partial WHERE mix_id = ?1")?
        .query_row(params![mix_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let fragments = conn
        .prepare_cached("DELETE FROM mix_fragments WHERE mix_id = ?1")?
        .execute(params![mix_id])?;
    if let Some((_, bytes)) = row {
        conn.prepare_cached("DELETE FROM mix_partial WHERE mix_id = ?1")?
            .execute(params![mix_id])?;
        conn.prepare_cached(
            "UPDATE counters SET value = MAX(value - ?1, 0) WHERE name = 'exit_partial_bytes'",
        )?
        .execute(params![bytes])?;
    }
    Ok(fragments as u64)
}

fn insert_packet(
    conn: &Connection,
    p: &OutPacket,
    prev_hop: Option<&NodeBytes>,
) -> Result<(), SpoolError> {
    // `shuffle`: the packet's random place among packets due at the same
    // time (see `LEASE_DUE`).
    conn.prepare_cached(
        "INSERT INTO mix_packets
             (next_hop, epoch, bytes, kind, release_at, deadline, prev_hop, shuffle)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, random())",
    )?
    .execute(params![
        &p.next_hop[..],
        p.epoch,
        p.bytes,
        p.kind.as_str(),
        p.release_at as i64,
        p.deadline as i64,
        prev_hop.map(|h| &h[..])
    ])?;
    Ok(())
}

/// Queues packets outside a custody decision (an exit's re-acknowledgement).
pub(super) fn queue_packets(
    conn: &mut Connection,
    packets: &[OutPacket],
) -> Result<(), SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for p in packets {
        insert_packet(&tx, p, None)?;
    }
    tx.commit()?;
    Ok(())
}

/// A packet handed to a link for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedPacket {
    pub id: i64,
    pub epoch: u32,
    pub bytes: Vec<u8>,
    pub attempts: u32,
}

/// Due packets for one next hop, in the order they are to leave (see
/// [`lease_packets`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PacketBatch {
    pub packets: Vec<LeasedPacket>,
    /// When the next packet for this hop becomes due, if any is waiting.
    pub next_due: Option<UnixMillis>,
}

/// The due packets of one next hop, in the order they leave: by the time
/// each became due (`due_at`: its release time, or the end of a lease that
/// ran out), and among packets due at the same millisecond by a random
/// key drawn when the packet was stored (`shuffle`).
///
/// Why the key: the release times are what mixes (arrival plus an
/// independent random delay), so the order by release time alone says
/// nothing of the order packets were stored in, except where release
/// times are equal, and they often are: every packet of a batch leased
/// together gets the same lease end, so a link that broke gives them
/// back all due at the same moment; with no delay (or a delay under a
/// millisecond) packets stored in one group share one time. Among equal
/// times an index would otherwise give row ids, the storage order. The
/// key used to be `random()` in the `ORDER BY`, which made SQLite read and
/// sort every due packet of the hop at each lease; as a column of the
/// index (`mix_packets_due`: next_hop, due_at, shuffle) the order is the
/// index's, and a lease reads only the packets it takes.
const LEASE_DUE: &str = "SELECT id, epoch, bytes, attempts FROM mix_packets
     WHERE next_hop = ?1 AND due_at <= ?2 ORDER BY due_at, shuffle LIMIT ?3";
/// Marks a packet leased; its `due_at` moves to the lease end.
const LEASE_MARK: &str = "UPDATE mix_packets SET lease_until = ?2 WHERE id = ?1";
/// When the hop's next packet becomes due (leased ones included: a lease
/// that runs out makes its packet due again): the first entry of the hop
/// in `mix_packets_due`.
const LEASE_NEXT_DUE: &str = "SELECT MIN(due_at) FROM mix_packets WHERE next_hop = ?1";

/// Every statement a lease runs, so a test can count what they cost.
#[cfg(test)]
pub(super) const LEASE_STATEMENTS: [&str; 3] = [LEASE_DUE, LEASE_MARK, LEASE_NEXT_DUE];

/// Leases up to `max` due packets for `next_hop` until `now + lease_ms`.
///
/// Runs after every link ACK (the link refills its window), on the
/// spool's single writer, so its cost must not grow with the packets that
/// wait for the hop (thousands after the hop was down): every statement
/// is a range read of `mix_packets_due` of about `max` entries, plus the
/// rows taken.
pub(super) fn lease_packets(
    conn: &mut Connection,
    now: UnixMillis,
    next_hop: &NodeBytes,
    max: usize,
    lease_ms: u64,
) -> Result<PacketBatch, SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut packets = Vec::new();
    {
        let mut due = tx.prepare_cached(LEASE_DUE)?;
        let rows = due.query_map(params![&next_hop[..], now as i64, max as i64], |r| {
            Ok(LeasedPacket {
                id: r.get(0)?,
                epoch: r.get(1)?,
                bytes: r.get(2)?,
                attempts: r.get::<_, i64>(3)?.max(0) as u32,
            })
        })?;
        for row in rows {
            packets.push(row?);
        }
        let mut mark = tx.prepare_cached(LEASE_MARK)?;
        for p in &packets {
            mark.execute(params![p.id, (now + lease_ms) as i64])?;
        }
    }
    let next_due: Option<i64> = tx
        .prepare_cached(LEASE_NEXT_DUE)?
        .query_row(params![&next_hop[..]], |r| r.get(0))?;
    tx.commit()?;
    Ok(PacketBatch {
        packets,
        next_due: next_due.map(|t| t.max(0) as u64),
    })
}

/// What became of a leased packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketSettle {
    /// The next hop has it (stored, duplicate, rejected, unknown epoch):
    /// our custody ends.
    Done,
    /// Not acknowledged: send the same bytes again at this time.
    Retry { at: UnixMillis },
}

/// Applies settlements in the caller's transaction (the committer groups
/// them: one COMMIT for every link ACK waiting). A packet already gone (a
/// settle repeated after a lease ran out) is no error.
pub(super) fn settle_packets(
    tx: &Transaction<'_>,
    outcomes: &[(i64, PacketSettle)],
) -> Result<(), SpoolError> {
    let mut remove = tx.prepare_cached("DELETE FROM mix_packets WHERE id = ?1")?;
    let mut retry = tx.prepare_cached(
        "UPDATE mix_packets SET attempts = attempts + 1, release_at = ?2, lease_until = 0
         WHERE id = ?1",
    )?;
    for (id, settle) in outcomes {
        match settle {
            PacketSettle::Done => remove.execute(params![id])?,
            PacketSettle::Retry { at } => retry.execute(params![id, *at as i64])?,
        };
    }
    Ok(())
}

/// Next hops that have packets waiting (due or not), so links to them are
/// kept open.
///
/// One index seek per hop (each step asks `mix_packets_due` for the first
/// hop after the last one found), not a read of every packet.
pub(super) fn waiting_hops(conn: &Connection) -> Result<Vec<NodeBytes>, SpoolError> {
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE hops(hop) AS (
             SELECT MIN(next_hop) FROM mix_packets
             UNION ALL
             SELECT (SELECT MIN(next_hop) FROM mix_packets WHERE next_hop > hops.hop)
             FROM hops WHERE hops.hop IS NOT NULL)
         SELECT hop FROM hops WHERE hop IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for row in rows {
        if let Ok(id) = <NodeBytes>::try_from(row?.as_slice()) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Custody deadlines that passed: the packets are deleted; returns how many
/// of each kind, for the counters and the log.
///
/// Runs every maintenance round: both statements are range reads of
/// `mix_packets_deadline` (deadline, kind), which touch only the packets
/// that expire, not the 8.5 KB rows of all the others.
pub(super) fn expire_packets(
    conn: &mut Connection,
    now: UnixMillis,
) -> Result<Vec<(PacketKind, u64)>, SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let by_kind: Vec<(String, i64)> = tx
        .prepare_cached(
            "SELECT kind, COUNT(*) FROM mix_packets WHERE deadline <= ?1 GROUP BY kind",
        )?
        .query_map(params![now as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    tx.prepare_cached("DELETE FROM mix_packets WHERE deadline <= ?1")?
        .execute(params![now as i64])?;
    tx.commit()?;
    Ok([PacketKind::Forward, PacketKind::Fragment, PacketKind::Ack]
        .into_iter()
        .filter_map(|kind| {
            let n = by_kind
                .iter()
                .find(|(k, _)| k == kind.as_str())
                .map_or(0, |(_, n)| *n);
            (n > 0).then_some((kind, n as u64))
        })
        .collect())
}

/// At start: every lease is void, and packets whose release time passed
/// while the node was down get `fresh()` as their new release time, so a
/// restart does not send the backlog in one burst. Once per start, this
/// one reads every packet (any of them may be overdue).
pub(super) fn restart_packets(
    conn: &mut Connection,
    now: UnixMillis,
    mut fresh: impl FnMut() -> UnixMillis,
) -> Result<usize, SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "UPDATE mix_packets SET lease_until = 0 WHERE lease_until != 0",
        [],
    )?;
    let overdue: Vec<i64> = {
        let mut stmt = tx.prepare("SELECT id FROM mix_packets WHERE release_at < ?1")?;
        stmt.query_map(params![now as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    {
        let mut update = tx.prepare("UPDATE mix_packets SET release_at = ?2 WHERE id = ?1")?;
        for id in &overdue {
            update.execute(params![id, fresh() as i64])?;
        }
    }
    tx.commit()?;
    Ok(overdue.len())
}

/// What the exit knows of a message it is collecting, for its
/// completion: what the first fragment declared, how many are here, and
/// a reply block not used yet (for COMPLETE), if one is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialHeader {
    pub mix_id: MixId,
    pub count: u16,
    pub blob_len: u32,
    pub blob_hash: [u8; 32],
    pub have: u16,
    pub reply_block: Option<Vec<u8>>,
}

pub(super) fn partial_header(
    conn: &Connection,
    mix_id: &MixId,
) -> Result<Option<PartialHeader>, SpoolError> {
    let row: Option<(u16, u32, Vec<u8>, i64)> = conn
        .prepare_cached(
            "SELECT count, blob_len, blob_hash, have FROM mix_partial WHERE mix_id = ?1",
        )?
        .query_row(params![&mix_id[..]], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((count, blob_len, hash, have)) = row else {
        return Ok(None);
    };
    let reply_block: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT reply_block FROM mix_fragments
             WHERE mix_id = ?1 AND reply_block IS NOT NULL LIMIT 1",
        )?
        .query_row(params![&mix_id[..]], |r| r.get(0))
        .optional()?;
    Ok(Some(PartialHeader {
        mix_id: *mix_id,
        count,
        blob_len,
        blob_hash: hash.as_slice().try_into().unwrap_or([0; 32]),
        have: have.clamp(0, u16::MAX as i64) as u16,
        reply_block,
    }))
}

/// Up to `max` stored fragments of a message from index `from` on, in
/// index order, data only: a completion reads its message a few
/// fragments at a time instead of all at once.
pub(super) fn fragment_data(
    conn: &Connection,
    mix_id: &MixId,
    from: u16,
    max: usize,
) -> Result<Vec<(u16, Vec<u8>)>, SpoolError> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, data FROM mix_fragments WHERE mix_id = ?1 AND idx >= ?2
         ORDER BY idx LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![&mix_id[..], from, max as i64], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What the exit adds to the insert of a message that left the mixnet
/// here: its id is recorded as done, its fragments go and the
/// acknowledgement is queued, in the transaction that stores the message
/// (`committer`), so a crash leaves either the fragments or the message,
/// never both or neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRows {
    pub mix_id: MixId,
    pub ack: Option<OutPacket>,
}

/// The exit's rows for one message, inside the caller's transaction.
/// Returns whether the message was new here (a message already done is
/// acknowledged again and not stored twice); the caller inserts the
/// message itself only when it was new.
pub(super) fn exit_rows(
    tx: &rusqlite::Transaction<'_>,
    now: UnixMillis,
    rows: &ExitRows,
) -> Result<bool, SpoolError> {
    let fresh = tx.execute(
        "INSERT INTO mix_done (mix_id, done_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![&rows.mix_id[..], now as i64],
    )? == 1;
    forget_partial(tx, &rows.mix_id[..])?;
    if let Some(ack) = &rows.ack {
        insert_packet(tx, ack, None)?;
    }
    Ok(fresh)
}

/// An incomplete message at the exit that has waited long enough for a
/// PARTIAL acknowledgement; `reply_block` is taken (single use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub mix_id: MixId,
    pub count: u16,
    pub have: Vec<u16>,
    pub reply_block: Vec<u8>,
}

/// Takes a reply block of each stalled message, in the caller's
/// transaction (see [`answer_stalled`]).
fn take_stalled(
    tx: &Transaction<'_>,
    now: UnixMillis,
    stall_ms: u64,
    max: usize,
) -> Result<Vec<Stalled>, SpoolError> {
    let received_before = now.saturating_sub(stall_ms);
    let ids: Vec<(Vec<u8>, u16)> = {
        // One row per partial message (their number is bounded by the
        // exit's byte cap), not one per fragment.
        let mut stmt = tx.prepare_cached(
            "SELECT mix_id, count FROM mix_partial
             WHERE replies > 0 AND last_at < ?1 AND stalled_at < ?1 LIMIT ?2",
        )?;
        stmt.query_map(params![received_before as i64, max as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for (id, count) in ids {
        let Ok(mix_id) = MixId::try_from(id.as_slice()) else {
            continue;
        };
        let have: Vec<u16> = tx
            .prepare_cached("SELECT idx FROM mix_fragments WHERE mix_id = ?1")?
            .query_map(params![&id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let block: Option<(i64, Vec<u8>)> = tx
            .query_row(
                "SELECT idx, reply_block FROM mix_fragments
                 WHERE mix_id = ?1 AND reply_block IS NOT NULL LIMIT 1",
                params![&id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((idx, reply_block)) = block else {
            continue;
        };
        let freed = reply_block.len() as i64;
        tx.execute(
            "UPDATE mix_fragments SET reply_block = NULL WHERE mix_id = ?1 AND idx = ?2",
            params![&id, idx],
        )?;
        tx.execute(
            "UPDATE mix_partial SET replies = replies - 1, bytes = bytes - ?2, stalled_at = ?3
             WHERE mix_id = ?1",
            params![&id, freed, now as i64],
        )?;
        tx.execute(
            "UPDATE counters SET value = MAX(value - ?1, 0) WHERE name = 'exit_partial_bytes'",
            params![freed],
        )?;
        out.push(Stalled {
            mix_id,
            count,
            have,
            reply_block,
        });
    }
    Ok(out)
}

/// PARTIAL acknowledgements for stalled messages: the reply blocks are
/// taken and the packets `answer` makes with them are queued in one
/// transaction, so a crash can lose neither (a block taken without its
/// PARTIAL queued would be a single-use block spent for nothing). A block
/// `answer` can make nothing of is taken all the same: it is no use later
/// either. Returns how many acknowledgements were queued.
pub(super) fn answer_stalled(
    conn: &mut Connection,
    now: UnixMillis,
    stall_ms: u64,
    max: usize,
    answer: &mut dyn FnMut(&Stalled) -> Option<OutPacket>,
) -> Result<usize, SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut queued = 0;
    for stalled in take_stalled(&tx, now, stall_ms, max)? {
        if let Some(ack) = answer(&stalled) {
            insert_packet(&tx, &ack, None)?;
            queued += 1;
        }
    }
    tx.commit()?;
    Ok(queued)
}

/// A message accepted here by SMTP and due to enter the mixnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixnetLease {
    pub spool_message: i64,
    pub message: Message,
}

/// Messages from SMTP whose release time has passed and that are not in
/// the mixnet yet, with the time the next one becomes due.
pub(super) fn due_for_mixnet(
    conn: &Connection,
    now: UnixMillis,
    max: usize,
) -> Result<(Vec<MixnetLease>, Option<UnixMillis>), SpoolError> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.id, m.sender, m.smtputf8, m.eight_bit, m.body, MIN(r.next_attempt) AS due
         FROM messages m JOIN recipients r ON r.message_id = m.id
         WHERE m.origin = 'smtp' AND r.mark IS NULL
           AND NOT EXISTS (SELECT 1 FROM mix_outbound o WHERE o.message = m.id)
         GROUP BY m.id HAVING due <= ?1 ORDER BY due, random() LIMIT ?2",
    )?;
    let rows: Vec<(i64, String, bool, bool, Vec<u8>)> = stmt
        .query_map(params![now as i64, max as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut rcpts =
        conn.prepare_cached("SELECT address FROM recipients WHERE message_id = ?1 ORDER BY id")?;
    let mut leases = Vec::with_capacity(rows.len());
    for (id, sender, smtputf8, eight_bit, body) in rows {
        let recipients = rcpts
            .query_map(params![id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        leases.push(MixnetLease {
            spool_message: id,
            message: Message {
                envelope: crate::envelope::Envelope {
                    sender,
                    recipients,
                    smtputf8,
                    eight_bit,
                    to_own_name: false,
                },
                body,
            },
        });
    }
    let next: Option<i64> = conn.query_row(
        "SELECT MIN(due) FROM (SELECT MIN(r.next_attempt) AS due FROM messages m
             JOIN recipients r ON r.message_id = m.id
             WHERE m.origin = 'smtp' AND r.mark IS NULL
               AND NOT EXISTS (SELECT 1 FROM mix_outbound o WHERE o.message = m.id)
             GROUP BY m.id)",
        [],
        |r| r.get(0),
    )?;
    Ok((leases, next.map(|t| t.max(0) as u64)))
}

/// A message's (re)entry into the mixnet: the packets of its fragments and
/// the recovery material of their reply blocks, committed together.
#[derive(Debug)]
pub struct Launch {
    pub spool_message: i64,
    pub mix_id: MixId,
    pub exit: NodeBytes,
    pub fragments: u16,
    pub next_check: UnixMillis,
    pub give_up_at: UnixMillis,
    pub replies: Vec<([u8; 16], Vec<u8>)>,
    pub packets: Vec<OutPacket>,
}

pub(super) fn launch(conn: &mut Connection, l: &Launch) -> Result<(), SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let updated = tx.execute(
        "UPDATE mix_outbound SET next_check = ?2, rounds = rounds + 1 WHERE mix_id = ?1",
        params![&l.mix_id[..], l.next_check as i64],
    )?;
    if updated == 0 {
        tx.execute(
            "INSERT INTO mix_outbound (mix_id, message, exit, fragments, next_check, give_up_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                &l.mix_id[..],
                l.spool_message,
                &l.exit[..],
                l.fragments,
                l.next_check as i64,
                l.give_up_at as i64
            ],
        )?;
    }
    {
        let mut reply = tx.prepare_cached(
            "INSERT INTO mix_replies (reply_id, mix_id, recovery) VALUES (?1, ?2, ?3)",
        )?;
        for (id, recovery) in &l.replies {
            reply.execute(params![&id[..], &l.mix_id[..], recovery])?;
        }
    }
    for p in &l.packets {
        insert_packet(&tx, p, None)?;
    }
    tx.commit()?;
    Ok(())
}

/// Deletes a message accepted by SMTP that can never enter the mixnet
/// (the sender found it too large for the network, or unbuildable), so it
/// takes no place among the due messages again. Only a message that has
/// not entered the mixnet: one with a launch is the acknowledgement's and
/// the horizon's to end. True if it was deleted.
pub(super) fn drop_unlaunched(conn: &mut Connection, message: i64) -> Result<bool, SpoolError> {
    let n = conn.execute(
        "DELETE FROM messages WHERE id = ?1 AND origin = 'smtp'
           AND NOT EXISTS (SELECT 1 FROM mix_outbound o WHERE o.message = ?1)",
        params![message],
    )?;
    Ok(n > 0)
}

/// The recovery material filed under a reply id, with its message.
pub(super) fn reply_recovery(
    conn: &Connection,
    reply_id: &[u8; 16],
) -> Result<Option<(MixId, u16, Vec<u8>)>, SpoolError> {
    Ok(conn
        .query_row(
            "SELECT r.mix_id, o.fragments, r.recovery FROM mix_replies r
             JOIN mix_outbound o ON o.mix_id = r.mix_id WHERE r.reply_id = ?1",
            params![&reply_id[..]],
            |r| {
                let id: Vec<u8> = r.get(0)?;
                Ok((id, r.get::<_, u16>(1)?, r.get::<_, Vec<u8>>(2)?))
            },
        )
        .optional()?
        .and_then(|(id, n, rec)| Some((MixId::try_from(id.as_slice()).ok()?, n, rec))))
}

/// What an acknowledgement does at the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryAck {
    /// The exit has the whole message: the entry's copy is deleted.
    Complete,
    /// The exit has these fragments so far.
    Partial(Vec<u8>),
}

/// Applies an acknowledgement; true if it changed anything (a late second
/// acknowledgement of a finished message changes nothing).
pub(super) fn acknowledge(
    conn: &mut Connection,
    mix_id: &MixId,
    ack: &EntryAck,
) -> Result<bool, SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let changed = match ack {
        EntryAck::Complete => {
            let message: Option<i64> = tx
                .query_row(
                    "SELECT message FROM mix_outbound WHERE mix_id = ?1",
                    params![&mix_id[..]],
                    |r| r.get(0),
                )
                .optional()?;
            match message {
                // Cascades to recipients, mix_outbound and mix_replies.
                Some(id) => tx.execute("DELETE FROM messages WHERE id = ?1", params![id])? > 0,
                None => false,
            }
        }
        EntryAck::Partial(bitmap) => {
            tx.execute(
                "UPDATE mix_outbound SET acked = ?2 WHERE mix_id = ?1",
                params![&mix_id[..], bitmap],
            )? > 0
        }
    };
    tx.commit()?;
    Ok(changed)
}

/// A message whose acknowledgement is overdue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    pub mix_id: MixId,
    pub spool_message: i64,
    pub exit: NodeBytes,
    pub fragments: u16,
    /// The last PARTIAL bitmap, if one came.
    pub acked: Option<Vec<u8>>,
    pub rounds: u32,
    pub give_up_at: UnixMillis,
    pub message: Message,
}

pub(super) fn overdue(
    conn: &Connection,
    now: UnixMillis,
    max: usize,
) -> Result<(Vec<Overdue>, Option<UnixMillis>), SpoolError> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.mix_id, o.message, o.exit, o.fragments, o.acked, o.rounds, o.give_up_at,
                m.sender, m.smtputf8, m.eight_bit, m.body
         FROM mix_outbound o JOIN messages m ON m.id = o.message
         WHERE o.next_check <= ?1 ORDER BY o.next_check LIMIT ?2",
    )?;
    let mut rcpts =
        conn.prepare_cached("SELECT address FROM recipients WHERE message_id = ?1 ORDER BY id")?;
    let rows = stmt.query_map(params![now as i64, max as i64], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, u16>(3)?,
            r.get::<_, Option<Vec<u8>>>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, bool>(8)?,
            r.get::<_, bool>(9)?,
            r.get::<_, Vec<u8>>(10)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, message, exit, fragments, acked, rounds, give_up, sender, utf8, eight, body) =
            row?;
        let (Ok(mix_id), Ok(exit)) = (
            MixId::try_from(id.as_slice()),
            NodeBytes::try_from(exit.as_slice()),
        ) else {
            continue;
        };
        let recipients = rcpts
            .query_map(params![message], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        out.push(Overdue {
            mix_id,
            spool_message: message,
            exit,
            fragments,
            acked,
            rounds: rounds.max(0) as u32,
            give_up_at: give_up.max(0) as u64,
            message: Message {
                envelope: crate::envelope::Envelope {
                    sender,
                    recipients,
                    smtputf8: utf8,
                    eight_bit: eight,
                    to_own_name: false,
                },
                body,
            },
        });
    }
    let next: Option<i64> =
        conn.query_row("SELECT MIN(next_check) FROM mix_outbound", [], |r| r.get(0))?;
    Ok((out, next.map(|t| t.max(0) as u64)))
}

/// The end-to-end horizon passed without COMPLETE: the message is dropped.
pub(super) fn give_up(conn: &mut Connection, mix_id: &MixId) -> Result<bool, SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let n = tx.execute(
        "DELETE FROM messages WHERE id = (SELECT message FROM mix_outbound WHERE mix_id = ?1)",
        params![&mix_id[..]],
    )?;
    tx.commit()?;
    Ok(n > 0)
}

/// Mixnet counts for `pluto2 queue`: never identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MixnetCounts {
    /// Packets in custody, by why they are kept.
    pub packets_forward: u64,
    pub packets_fragment: u64,
    pub packets_ack: u64,
    /// Messages sent into the mixnet and waiting for COMPLETE.
    pub awaiting_ack: u64,
    /// Messages with fragments stored at this exit, not complete yet.
    pub exit_partial: u64,
    /// The bytes those fragments hold (what the exit's cap counts).
    pub exit_partial_bytes: u64,
}

pub(super) fn counts(conn: &Connection) -> Result<MixnetCounts, SpoolError> {
    let mut c = MixnetCounts::default();
    let mut stmt = conn.prepare("SELECT kind, COUNT(*) FROM mix_packets GROUP BY kind")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (kind, n) = row?;
        let n = n.max(0) as u64;
        match kind.as_str() {
            "forward" => c.packets_forward = n,
            "fragment" => c.packets_fragment = n,
            "ack" => c.packets_ack = n,
            _ => {}
        }
    }
    c.awaiting_ack = conn
        .query_row("SELECT COUNT(*) FROM mix_outbound", [], |r| {
            r.get::<_, i64>(0)
        })?
        .max(0) as u64;
    c.exit_partial = conn
        .query_row("SELECT COUNT(*) FROM mix_partial", [], |r| {
            r.get::<_, i64>(0)
        })?
        .max(0) as u64;
    c.exit_partial_bytes = conn
        .query_row(fragment_sql::TOTAL, [], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0)
        .max(0) as u64;
    Ok(c)
}

/// Messages whose fragments are all stored but that are not complete yet
/// (the node stopped between the last fragment and completion).
pub(super) fn complete_candidates(conn: &Connection, max: usize) -> Result<Vec<MixId>, SpoolError> {
    // The partial index `mix_partial_whole` holds exactly these rows.
    let mut stmt =
        conn.prepare_cached("SELECT mix_id FROM mix_partial WHERE have >= count LIMIT ?1")?;
    let ids: Vec<Vec<u8>> = stmt
        .query_map(params![max as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids
        .into_iter()
        .filter_map(|id| MixId::try_from(id.as_slice()).ok())
        .collect())
}

/// Fragments that cannot form their message (hash or format wrong) are
/// thrown away; the entry retransmits.
pub(super) fn drop_fragments(conn: &mut Connection, mix_id: &MixId) -> Result<(), SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    forget_partial(&tx, &mix_id[..])?;
    tx.commit()?;
    Ok(())
}

/// When the exit forgets what it keeps for senders (see `prune`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneBefore {
    /// Partial messages whose latest fragment came before this.
    pub partial_idle: UnixMillis,
    /// Partial messages whose first fragment came before this, however
    /// recent their latest, and done ids recorded before this.
    pub horizon: UnixMillis,
}

/// Partial messages pruned per statement, so one prune cannot hold the
/// writer for long; the maintenance loop comes back for the rest.
const PRUNE_BATCH: usize = 256;

/// Forgets what no sender can still need: partial messages idle past
/// their limit or older than the horizon, and done ids older than the
/// horizon (nobody sends those again). Returns (fragments, done ids)
/// deleted.
pub(super) fn prune(conn: &mut Connection, before: PruneBefore) -> Result<(u64, u64), SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let stale: Vec<Vec<u8>> = tx
        .prepare_cached(
            "SELECT mix_id FROM mix_partial WHERE last_at < ?1
             UNION SELECT mix_id FROM mix_partial WHERE first_at < ?2 LIMIT ?3",
        )?
        .query_map(
            params![
                before.partial_idle as i64,
                before.horizon as i64,
                PRUNE_BATCH as i64
            ],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    let mut fragments = 0;
    for id in &stale {
        fragments += forget_partial(&tx, id)?;
    }
    let done = tx.execute(
        "DELETE FROM mix_done WHERE done_at < ?1",
        params![before.horizon as i64],
    )?;
    tx.commit()?;
    Ok((fragments, done as u64))
}

/// Forgets what belongs to epochs below `below`, whose mix keys are gone:
/// their replay tags (no packet for those epochs can be opened any more,
/// so none can be replayed) and packets still waiting for a next hop that
/// can no longer open them. Returns (tags, packets).
pub(super) fn purge_epochs(conn: &mut Connection, below: u32) -> Result<(u64, u64), SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let tags = tx.execute(
        "DELETE FROM mix_tags WHERE epoch < ?1",
        params![below as i64],
    )?;
    let packets = tx.execute(
        "DELETE FROM mix_packets WHERE epoch < ?1",
        params![below as i64],
    )?;
    tx.commit()?;
    Ok((tags as u64, packets as u64))
}
