//! Spool side of delivery: lease due recipients, settle their outcomes.
//!
//! A recipient is `queued` (never tried), `deferred` (waiting for a retry
//! time) or `leased` (a worker has it). A lease has an expiry, and the
//! daemon resets every lease at start, so a crash mid-delivery leads to a
//! redelivery, never to a loss. Rows leave the spool only in `settle`,
//! or by the operator's `pluto2 queue delete` (see `spool::ops`).
//!
//! The operator's marks (`recipients.mark`) are honoured here: a `held`
//! recipient is never leased, and a leased one that gets held finishes its
//! attempt and is then kept (deferred, still held) instead of retried; a
//! `deleted` one (deleted while leased) is removed by its settle whatever
//! the outcome, or at the next start, or once its lease ran out.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use super::SpoolError;

/// One recipient handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedRecipient {
    pub id: i64,
    pub address: String,
    /// Delivery attempts made before this one.
    pub attempts: u32,
}

/// Recipients of one message that share a destination domain, so they go
/// out in one SMTP transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub message_id: i64,
    pub domain: String,
    pub sender: String,
    pub smtputf8: bool,
    pub eight_bit: bool,
    pub body: Vec<u8>,
    pub recipients: Vec<LeasedRecipient>,
    /// For mail that left the mixnet here: its mixnet message id (the
    /// outgoing Message-ID is derived from it).
    pub mix_id: Option<[u8; 16]>,
}

/// Which messages the direct dispatcher may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseScope {
    /// Direct mode: everything not handed to the mixnet.
    All,
    /// Mixnet mode: only mail that left the mixnet here; mail accepted by
    /// SMTP never leaves directly.
    ExitOnly,
}

impl LeaseScope {
    /// SQL condition on `recipients.message_id` (a constant string, never
    /// built from input).
    fn condition(self) -> &'static str {
        match self {
            LeaseScope::All => {
                "NOT EXISTS (SELECT 1 FROM mix_outbound o WHERE o.message = recipients.message_id)"
            }
            LeaseScope::ExitOnly => {
                "EXISTS (SELECT 1 FROM messages m WHERE m.id = recipients.message_id AND m.origin = 'exit')"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseBatch {
    pub leases: Vec<Lease>,
    /// Earliest time (unix ms) something else becomes due, if anything.
    pub next_due: Option<u64>,
}

/// What happened to one leased recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The next hop accepted it: remove.
    Delivered,
    /// Permanent failure or retries exhausted: remove (no bounce is sent).
    Dropped,
    /// Temporary failure: try again at this time (unix ms).
    Retry { at: u64 },
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default()
}

/// Completes a deletion whose delivery never settled (its lease ran out).
///
/// Only leased recipients are ever marked deleted (`ops::delete`), and
/// saying so lets SQLite find them through the `recipients_due` index
/// instead of reading the whole table: a lease runs after every commit of
/// new mail, so a scan here made accepting mail slower the more mail the
/// spool held.
const FINISH_DELETIONS: &str = "DELETE FROM messages WHERE id IN (SELECT message_id FROM recipients
     WHERE state = 'leased' AND mark = 'deleted' AND lease_until <= ?1)";

/// A held recipient whose delivery never settled waits as it would after a
/// failed attempt, not as "in delivery".
const DEFER_HELD: &str = "UPDATE recipients SET state = 'deferred', lease_until = NULL
     WHERE state = 'leased' AND mark = 'held' AND lease_until <= ?1";

/// Due recipients (`?1` now, `?2` rows at most), earliest first. Ties in
/// release time are broken at random (SQLite's ChaCha20-based random()),
/// never by arrival order, which would leak it.
///
/// `LIMIT ?2 + 0` rather than `LIMIT ?2`: SQLite plans with the value of a
/// bare bound LIMIT, and so compiles the statement again each time it is
/// bound anew, on every lease; the sum is only evaluated when it runs.
fn due_sql(scope: LeaseScope) -> String {
    format!(
        "SELECT id, message_id, address, attempts FROM recipients
         WHERE ((state IN ('queued', 'deferred') AND next_attempt <= ?1)
            OR (state = 'leased' AND lease_until <= ?1)) AND mark IS NULL AND {}
         ORDER BY next_attempt, random() LIMIT ?2 + 0",
        scope.condition()
    )
}

/// When the next recipient in `scope` becomes due or its lease runs out.
fn next_due_sql(scope: LeaseScope) -> String {
    format!(
        "SELECT MIN(t) FROM (
             SELECT MIN(next_attempt) AS t FROM recipients
             WHERE state IN ('queued', 'deferred') AND mark IS NULL AND {c}
             UNION ALL
             SELECT MIN(lease_until) FROM recipients WHERE state = 'leased' AND {c})",
        c = scope.condition()
    )
}

/// Leases up to `max` groups of due recipients until `now + lease_ms`
/// (all times unix ms). Runs whenever new mail was committed, so every
/// statement is cached and none reads the whole `recipients` table.
pub fn lease(
    conn: &mut Connection,
    now: u64,
    max: usize,
    lease_ms: u64,
    scope: LeaseScope,
) -> Result<LeaseBatch, SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now_i = now as i64;
    tx.prepare_cached(FINISH_DELETIONS)?
        .execute(params![now_i])?;
    tx.prepare_cached(DEFER_HELD)?.execute(params![now_i])?;
    let mut groups: BTreeMap<(i64, String), Vec<LeasedRecipient>> = BTreeMap::new();
    let mut order: Vec<(i64, String)> = Vec::new();
    {
        let mut due = tx.prepare_cached(&due_sql(scope))?;
        // Enough rows for `max` full groups; a message has at most
        // -max-recipients rows, so this bounds the scan.
        let rows = due.query_map(params![now_i, (max * 64) as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (id, message_id, address, attempts) = row?;
            let key = (message_id, domain_of(&address));
            if !groups.contains_key(&key) {
                if order.len() == max {
                    continue;
                }
                order.push(key.clone());
            }
            groups.entry(key).or_default().push(LeasedRecipient {
                id,
                address,
                attempts: attempts.max(0) as u32,
            });
        }
    }
    let mut leases = Vec::with_capacity(order.len());
    {
        let mut mark = tx.prepare_cached(
            "UPDATE recipients SET state = 'leased', lease_until = ?2 WHERE id = ?1",
        )?;
        let mut load = tx.prepare_cached(
            "SELECT sender, smtputf8, eight_bit, body, mix_id FROM messages WHERE id = ?1",
        )?;
        for key in order {
            let recipients = groups.remove(&key).unwrap_or_default();
            for r in &recipients {
                mark.execute(params![r.id, (now + lease_ms) as i64])?;
            }
            let (sender, smtputf8, eight_bit, body, mix_id) =
                load.query_row(params![key.0], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Option<Vec<u8>>>(4)?,
                    ))
                })?;
            leases.push(Lease {
                message_id: key.0,
                domain: key.1,
                sender,
                smtputf8,
                eight_bit,
                body,
                recipients,
                mix_id: mix_id.and_then(|id| id.as_slice().try_into().ok()),
            });
        }
    }
    let next_due: Option<i64> = tx
        .prepare_cached(&next_due_sql(scope))?
        .query_row([], |r| r.get(0))?;
    tx.commit()?;
    Ok(LeaseBatch {
        leases,
        next_due: next_due.map(|t| t.max(0) as u64),
    })
}

/// Records outcomes and removes messages that have no recipient left.
pub fn settle(conn: &mut Connection, outcomes: &[(i64, Disposition)]) -> Result<(), SpoolError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut message_of = tx
            .prepare_cached("SELECT message_id, mark IS 'deleted' FROM recipients WHERE id = ?1")?;
        let mut remove = tx.prepare_cached("DELETE FROM recipients WHERE id = ?1")?;
        let mut defer = tx.prepare_cached(
            "UPDATE recipients SET state = 'deferred', attempts = attempts + 1,
                    next_attempt = ?2, lease_until = NULL WHERE id = ?1",
        )?;
        let mut orphan = tx.prepare_cached(
            "DELETE FROM messages WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = ?1)",
        )?;
        let mut touched = Vec::new();
        for (id, disposition) in outcomes {
            // Gone: deleted by the operator while not leased (cannot
            // happen to a leased row, but a settle must never recreate it).
            let Ok((message_id, deleted)) = message_of.query_row(params![id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?))
            }) else {
                continue;
            };
            touched.push(message_id);
            match disposition {
                _ if deleted => {
                    remove.execute(params![id])?;
                }
                Disposition::Delivered | Disposition::Dropped => {
                    remove.execute(params![id])?;
                }
                Disposition::Retry { at } => {
                    defer.execute(params![id, *at as i64])?;
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for message_id in touched {
            orphan.execute(params![message_id])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// After a restart no worker holds anything: make leased rows due again,
/// and finish deletions that waited for a delivery that will never settle.
pub fn release_all_leases(conn: &Connection) -> Result<usize, SpoolError> {
    conn.execute(
        "DELETE FROM messages WHERE id IN
             (SELECT message_id FROM recipients WHERE mark = 'deleted')",
        [],
    )?;
    Ok(conn.execute(
        "UPDATE recipients SET state = 'queued', lease_until = NULL WHERE state = 'leased'",
        [],
    )?)
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    /// Every statement a lease runs, with the scope's condition filled in.
    fn lease_statements() -> Vec<String> {
        let mut all = vec![FINISH_DELETIONS.to_string(), DEFER_HELD.to_string()];
        for scope in [LeaseScope::All, LeaseScope::ExitOnly] {
            all.push(due_sql(scope));
            all.push(next_due_sql(scope));
        }
        all
    }

    /// A lease follows every commit of new mail: a statement that reads the
    /// whole `recipients` table would make accepting mail slower the more
    /// the spool holds.
    #[test]
    fn no_lease_statement_reads_the_whole_recipients_table() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::schema::open_writer(dir.path()).unwrap();
        for sql in lease_statements() {
            let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = explain.raw_query();
            let mut plan = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                plan.push(row.get::<_, String>(3).unwrap());
            }
            assert!(
                !plan.iter().any(|step| step.starts_with("SCAN recipients")),
                "{sql}\n{plan:?}"
            );
        }
    }

    /// A cached statement that SQLite compiles again on every run is no
    /// cheaper than an uncached one.
    #[test]
    fn lease_statements_are_not_recompiled_when_bound_anew() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::schema::open_writer(dir.path()).unwrap();
        for sql in lease_statements() {
            let mut stmt = conn.prepare(&sql).unwrap();
            for n in 1..=3i64 {
                for (i, value) in [n * 1000, n * 64].into_iter().enumerate() {
                    if i < stmt.parameter_count() {
                        stmt.raw_bind_parameter(i + 1, value).unwrap();
                    }
                }
                let mut rows = stmt.raw_query();
                while rows.next().unwrap().is_some() {}
            }
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "{sql}");
        }
    }
}
