//! Counters and the periodic `[STATS]` line remailer operators expect.
//!
//! Counts only: nothing here identifies a message, a sender or a time of
//! a particular message.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub deferred: AtomicU64,
    pub cover_sent: AtomicU64,
    pub cover_received: AtomicU64,
    pub batches: AtomicU64,
    /// Exact duplicates inside the replay window: answered 250, not queued.
    pub replays: AtomicU64,
    /// Cover that failed to leave: dropped, never retried.
    pub cover_dropped: AtomicU64,
    /// Cover not generated because deliveries were failing (Tor down).
    pub cover_paused: AtomicU64,
    /// Recipients and posts refused (direct mode) or dropped (mixnet exit)
    /// because their destination is on the `-dest-block` list.
    pub dest_blocked: AtomicU64,
    /// Recipients delivered by SMTP from here for mail that did not leave
    /// the mixnet here (fog's `direct`). In mixnet mode it must stay 0; it
    /// is counted, not printed as a constant, so a leak would show.
    pub direct: AtomicU64,
    /// Mixnet mode is on: the line carries the mixnet fields below.
    pub mixnet: std::sync::atomic::AtomicBool,
    /// Messages sent into the mixnet from here (fog's `sphinx`).
    pub mix_messages_in: AtomicU64,
    /// Messages whose exit said COMPLETE.
    pub mix_messages_acked: AtomicU64,
    /// Messages dropped after the end-to-end horizon.
    pub mix_messages_failed: AtomicU64,
    /// Rounds in which mail waited because no route could be built.
    pub mix_no_route: AtomicU64,
    pub mix_fragments_sent: AtomicU64,
    pub mix_fragments_retransmitted: AtomicU64,
    /// Packets received on links (fog's `mix received`).
    pub mix_packets_in: AtomicU64,
    /// Packets handed to links (fog's `mix forwarded`; retries included).
    pub mix_packets_out: AtomicU64,
    /// Packets whose replay tag was known.
    pub mix_replays: AtomicU64,
    /// Packets refused here: bad MAC, version, delay, next hop.
    pub mix_rejected: AtomicU64,
    /// Packets the next hop refused.
    pub mix_rejected_by_peer: AtomicU64,
    pub mix_unknown_epoch: AtomicU64,
    /// Packets dropped when their custody horizon passed.
    pub mix_expired: AtomicU64,
    pub mix_bad_payloads: AtomicU64,
    /// Messages completed at this exit and handed to delivery.
    pub mix_exit_completions: AtomicU64,
    /// Messages that arrived again after completion (re-acknowledged).
    pub mix_exit_duplicates: AtomicU64,
    /// Packets in custody here (all kinds), as the spool last said.
    pub mix_packets_queued: AtomicU64,
    /// Usable other nodes now, and all other nodes in nodes.json.
    pub mix_healthy: AtomicU64,
    pub mix_nodes: AtomicU64,
    /// The mix-key epoch now.
    pub mix_epoch: AtomicU64,
    /// Loop cover sent, back in time, and given up as lost.
    pub mix_loops_sent: AtomicU64,
    pub mix_loops_back: AtomicU64,
    pub mix_loops_lost: AtomicU64,
    /// Drop cover sent from here, and dropped here as its last hop.
    pub mix_drops_sent: AtomicU64,
    pub mix_drops_received: AtomicU64,
    /// Bundles that showed a node signing two keys for one epoch.
    pub mix_two_faces: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_healthy(&self, usable: u64, nodes: u64) {
        self.mix_healthy.store(usable, Ordering::Relaxed);
        self.mix_nodes.store(nodes, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// One line, `key=value` pairs in a fixed order so scripts can parse it.
    pub fn line(&self, uptime: Duration, queued: Option<u64>) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let uptime = humantime::format_duration(Duration::from_secs(uptime.as_secs()));
        let queued = queued.map_or_else(|| "?".to_string(), |q| q.to_string());
        format!(
            "[STATS] uptime={uptime} received={} sent={} failed={} deferred={} queued={queued} cover_sent={} cover_received={} batches={} replays={} cover_dropped={} cover_paused={} dest_blocked={}",
            get(&self.received),
            get(&self.sent),
            get(&self.failed),
            get(&self.deferred),
            get(&self.cover_sent),
            get(&self.cover_received),
            get(&self.batches),
            get(&self.replays),
            get(&self.cover_dropped),
            get(&self.cover_paused),
            get(&self.dest_blocked),
        ) + &self.mixnet_fields()
    }

    /// The mixnet part of the line (empty in direct mode). `direct` stays 0
    /// in mixnet mode: mail accepted here never leaves directly.
    fn mixnet_fields(&self) -> String {
        if !self.mixnet.load(Ordering::Relaxed) {
            return String::new();
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            " sphinx={} direct={} acked={} e2e_failed={} no_route={} fragments={} retransmitted={} packets_in={} packets_out={} packets_queued={} mix_replays={} rejected={} rejected_by_peer={} unknown_epoch={} expired={} bad_payloads={} exit_completed={} exit_duplicates={} healthy={}/{} epoch={} loops_sent={} loops_back={} loops_lost={} drops_sent={} drops_received={} two_faces={}",
            get(&self.mix_messages_in),
            get(&self.direct),
            get(&self.mix_messages_acked),
            get(&self.mix_messages_failed),
            get(&self.mix_no_route),
            get(&self.mix_fragments_sent),
            get(&self.mix_fragments_retransmitted),
            get(&self.mix_packets_in),
            get(&self.mix_packets_out),
            get(&self.mix_packets_queued),
            get(&self.mix_replays),
            get(&self.mix_rejected),
            get(&self.mix_rejected_by_peer),
            get(&self.mix_unknown_epoch),
            get(&self.mix_expired),
            get(&self.mix_bad_payloads),
            get(&self.mix_exit_completions),
            get(&self.mix_exit_duplicates),
            get(&self.mix_healthy),
            get(&self.mix_nodes),
            get(&self.mix_epoch),
            get(&self.mix_loops_sent),
            get(&self.mix_loops_back),
            get(&self.mix_loops_lost),
            get(&self.mix_drops_sent),
            get(&self.mix_drops_received),
            get(&self.mix_two_faces),
        )
    }

    /// Logs the line every `interval` until shutdown. `queued` is read from
    /// the spool (recipients waiting), so it is right across restarts.
    pub async fn report(
        self: std::sync::Arc<Self>,
        data_dir: PathBuf,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let started = Instant::now();
        let clock = crate::time::system_clock();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let dir = data_dir.clone();
            let clock = clock.clone();
            let report =
                tokio::task::spawn_blocking(move || crate::spool::queue_report(&dir, &clock))
                    .await
                    .ok()
                    .and_then(Result::ok);
            if let Some(r) = &report {
                let m = &r.mixnet;
                let packets = m.packets_forward + m.packets_fragment + m.packets_ack;
                self.mix_packets_queued.store(packets, Ordering::Relaxed);
            }
            info!(
                "{}",
                self.line(started.elapsed(), report.map(|r| r.recipients))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_prints_every_counter_in_a_stable_order() {
        let s = Stats::default();
        Stats::add(&s.received, 3);
        Stats::add(&s.cover_sent, 2);
        Stats::add(&s.replays, 4);
        let line = s.line(Duration::from_secs(3725), Some(7));
        assert_eq!(
            line,
            "[STATS] uptime=1h 2m 5s received=3 sent=0 failed=0 deferred=0 queued=7 cover_sent=2 cover_received=0 batches=0 replays=4 cover_dropped=0 cover_paused=0 dest_blocked=0"
        );
    }
}
