//! The pinger's day on disk: per mix node and clock hour, the loops
//! through it that came back and were lost and their latency histogram
//! (`loop_day`), so that `pluto2 queue`, a separate process, can show the
//! last day, and a restart keeps it (the last day is the last day, not
//! the time since the start).
//!
//! The daemon's maintenance round adds what its `mixnet::health` counted
//! since the round before ([`save`], one short transaction on the writer
//! thread) and deletes the hours that left the day. Readers take only the
//! hours of the day ending at their `now` ([`day`]), so a spool left
//! alone still shows a sliding day. Loops only: nothing here is about
//! mail (no messages, no addresses); node ids and short names are the
//! public ones of `nodes.json`.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::SpoolError;
use crate::loop_day::{self, HourCounts, Latencies, LoopDay};
use crate::time::UnixMillis;

/// One node's loop outcomes of one clock hour, as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopHour {
    /// The node's identity key (its `NodeId`).
    pub node: [u8; 32],
    /// Its short name in `nodes.json` when saved.
    pub name: String,
    /// Hours since the unix epoch (`loop_day::hour_of`).
    pub hour: u64,
    pub counts: HourCounts,
}

/// One node's last day, as `pluto2 queue -json` prints it (`node_loops`)
/// and `/metrics` publishes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeLoops {
    /// The node's short name in `nodes.json`.
    pub node: String,
    /// Loops through it that came back in time.
    pub back: u64,
    /// Loops through it given up as lost (held against every node on
    /// their route: an upper bound on this node's own losses).
    pub lost: u64,
    /// back / (back + lost); `null` before the first outcome.
    pub success_ratio: Option<f64>,
    /// Median time from sending a loop to its return, hop delays
    /// included; `null` if none came back.
    pub latency_median_seconds: Option<f64>,
}

/// Adds `hours` to the day on disk and deletes the hours that left the
/// day ending at `now`, in one transaction. Hours already out of the day
/// are not written.
pub(super) fn save(
    conn: &mut Connection,
    now: UnixMillis,
    hours: &[LoopHour],
) -> Result<(), SpoolError> {
    let first = loop_day::first_hour(now);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for h in hours.iter().filter(|h| h.hour >= first) {
        let stored: Option<(i64, i64, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT back, lost, latency FROM mix_loop_hours WHERE node = ?1 AND hour = ?2",
            )?
            .query_row(params![&h.node[..], h.hour as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let mut counts = match stored {
            Some((back, lost, latency)) => HourCounts {
                back: back.max(0) as u64,
                lost: lost.max(0) as u64,
                latency: latencies(&latency)?,
            },
            None => HourCounts::default(),
        };
        counts.merge(&h.counts);
        tx.prepare_cached(
            "INSERT OR REPLACE INTO mix_loop_hours (node, hour, name, back, lost, latency)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            &h.node[..],
            h.hour as i64,
            h.name,
            counts.back.min(i64::MAX as u64) as i64,
            counts.lost.min(i64::MAX as u64) as i64,
            counts.latency.encode(),
        ])?;
    }
    tx.prepare_cached("DELETE FROM mix_loop_hours WHERE hour < ?1")?
        .execute(params![first as i64])?;
    tx.commit()?;
    Ok(())
}

/// Each node's day ending at `now`, by short name (a node renamed in
/// `nodes.json` within the day shows under its latest name).
pub(super) fn day(tx: &Transaction<'_>, now: UnixMillis) -> Result<Vec<NodeLoops>, SpoolError> {
    let mut stmt = tx.prepare_cached(
        "SELECT node, hour, name, back, lost, latency FROM mix_loop_hours
         WHERE hour >= ?1 AND hour <= ?2",
    )?;
    let rows = stmt.query_map(
        params![
            loop_day::first_hour(now) as i64,
            loop_day::hour_of(now) as i64
        ],
        |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Vec<u8>>(5)?,
            ))
        },
    )?;
    let mut day: LoopDay<Vec<u8>> = LoopDay::new();
    // The name of each node's newest hour.
    let mut names: HashMap<Vec<u8>, (i64, String)> = HashMap::new();
    for row in rows {
        let (node, hour, name, back, lost, latency) = row?;
        let counts = HourCounts {
            back: back.max(0) as u64,
            lost: lost.max(0) as u64,
            latency: latencies(&latency)?,
        };
        day.add(node.clone(), hour.max(0) as u64, &counts);
        let newest = names.entry(node).or_insert((hour, name.clone()));
        if hour > newest.0 {
            *newest = (hour, name);
        }
    }
    let mut out: Vec<NodeLoops> = day
        .summary(now)
        .into_iter()
        .map(|(node, d)| NodeLoops {
            node: names.remove(&node).map(|n| n.1).unwrap_or_default(),
            back: d.back,
            lost: d.lost,
            success_ratio: d.success_ratio(),
            latency_median_seconds: d.latency_median_ms.map(|ms| ms / 1000.0),
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

/// Stored latencies; bytes this code did not write are an error.
fn latencies(bytes: &[u8]) -> Result<Latencies, SpoolError> {
    Ok(Latencies::decode(bytes)?)
}
