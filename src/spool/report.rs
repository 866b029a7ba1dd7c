//! What `pluto2 queue` prints: counts and ages, never addresses.

use rusqlite::Connection;
use serde::Serialize;

use super::SpoolError;
use super::custody::MixnetCounts;
use super::loop_hours::{self, NodeLoops};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueReport {
    pub messages: u64,
    pub recipients: u64,
    /// Recipients by state; they add up to `recipients`. `queued` and
    /// `deferred` leave out held mail, which `held` counts (held mail a
    /// delivery still has is `leased` until that attempt ends).
    pub queued: u64,
    pub deferred: u64,
    pub held: u64,
    pub leased: u64,
    /// Messages deleted with `pluto2 queue delete` since the spool was
    /// made (a durable count: the operator's drops, class `operator`).
    pub deleted_by_operator: u64,
    /// Age of the oldest message in seconds, `null` when empty.
    pub oldest_age_seconds: Option<u64>,
    /// Seconds until the earliest deferred retry, `null` if none is deferred.
    pub next_retry_in_seconds: Option<u64>,
    /// Mixnet state (all zero in direct mode): packets in custody by why
    /// they are kept, messages this entry waits to see acknowledged (also
    /// counted in `messages` until their COMPLETE arrives), and messages
    /// with fragments at this exit. Always present, so a script reads the
    /// same shape from every node.
    pub mixnet: MixnetCounts,
    /// The pinger's view (mixnet nodes only; empty in direct mode): per
    /// other node on this node's loop routes, over the last day, the
    /// loops back and lost, their ratio and the median latency, by short
    /// name. Loops only, never mail.
    pub node_loops: Vec<NodeLoops>,
}

/// Reads the counts in one read transaction, so they agree with each other.
pub fn read(conn: &mut Connection, now: u64) -> Result<QueueReport, SpoolError> {
    let tx = conn.transaction()?;
    let messages: i64 = tx.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))?;
    let messages = messages.max(0) as u64;
    let oldest: Option<i64> =
        tx.query_row("SELECT MIN(received_at) FROM messages", [], |r| r.get(0))?;
    let (mut queued, mut deferred, mut held, mut leased) = (0, 0, 0, 0);
    {
        let mut stmt = tx.prepare(
            "SELECT CASE WHEN state != 'leased' AND mark = 'held' THEN 'held' ELSE state END,
                    COUNT(*)
             FROM recipients GROUP BY 1",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?;
        for row in rows {
            let (state, n) = row?;
            match state.as_str() {
                "queued" => queued = n,
                "deferred" => deferred = n,
                "held" => held = n,
                "leased" => leased = n,
                _ => {}
            }
        }
    }
    let next: Option<i64> = tx.query_row(
        "SELECT MIN(next_attempt) FROM recipients WHERE state = 'deferred' AND mark IS NULL",
        [],
        |r| r.get(0),
    )?;
    let mixnet = super::custody::counts(&tx)?;
    let deleted_by_operator = super::ops::deleted_by_operator(&tx)?;
    let node_loops = loop_hours::day(&tx, now)?;
    tx.finish()?;
    // Stored times are unix ms; the report speaks seconds.
    let since = |t: i64| now.saturating_sub(t.max(0) as u64) / 1000;
    Ok(QueueReport {
        messages,
        recipients: queued + deferred + held + leased,
        queued,
        deferred,
        held,
        leased,
        deleted_by_operator,
        oldest_age_seconds: oldest.map(since),
        next_retry_in_seconds: next.map(|t| (t.max(0) as u64).saturating_sub(now).div_ceil(1000)),
        mixnet,
        node_loops,
    })
}

impl std::fmt::Display for QueueReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "messages:   {}", self.messages)?;
        writeln!(
            f,
            "recipients: {} ({} queued, {} deferred, {} held, {} in delivery)",
            self.recipients, self.queued, self.deferred, self.held, self.leased
        )?;
        match self.oldest_age_seconds {
            Some(s) => writeln!(
                f,
                "oldest:     {}",
                humantime::format_duration(std::time::Duration::from_secs(s))
            )?,
            None => writeln!(f, "oldest:     -")?,
        }
        if let Some(s) = self.next_retry_in_seconds {
            writeln!(
                f,
                "next retry: in {}",
                humantime::format_duration(std::time::Duration::from_secs(s))
            )?;
        }
        if self.deleted_by_operator > 0 {
            writeln!(
                f,
                "deleted:    {} by the operator",
                self.deleted_by_operator
            )?;
        }
        let m = &self.mixnet;
        // Direct mode never has mixnet state: its report stays as it was.
        if *m != MixnetCounts::default() {
            writeln!(
                f,
                "mixnet:     {} packets in custody ({} forward, {} fragment, {} ack), {} awaiting acknowledgement, {} incomplete at this exit",
                m.packets_forward + m.packets_fragment + m.packets_ack,
                m.packets_forward,
                m.packets_fragment,
                m.packets_ack,
                m.awaiting_ack,
                m.exit_partial
            )?;
        }
        if !self.node_loops.is_empty() {
            writeln!(
                f,
                "loops:      last 24 h, per node on their route (a lost loop counts against every node on it)"
            )?;
            for n in &self.node_loops {
                let ratio = n
                    .success_ratio
                    .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
                let latency = n.latency_median_seconds.map_or("-".to_string(), |s| {
                    humantime::format_duration(std::time::Duration::from_millis(
                        (s * 1000.0).round() as u64,
                    ))
                    .to_string()
                });
                writeln!(
                    f,
                    "  {:<16} {:>6} back {:>6} lost {:>7} median {latency}",
                    n.node, n.back, n.lost, ratio
                )?;
            }
        }
        Ok(())
    }
}
