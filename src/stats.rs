//! Counters and gauges: one registry that both the `[STATS]` log line and
//! the Prometheus endpoint (`-metrics`, see `admin`) read.
//!
//! Every number here is a `prometheus-client` metric registered once in
//! [`Stats`]'s registry; the `[STATS]` fields are handles on the same
//! atomics (a labelled child of a family shares its counter with the field),
//! so the log line and a scrape can never disagree.
//!
//! Counts only: nothing here identifies a message, a sender, a client or
//! the time of a particular message. Labels come from small fixed sets
//! (an outcome, a reply class, a failure class), never from what a client
//! sent; there are no per-message timestamps, and the one histogram (spool
//! commit latency) keeps bucket counts, not samples.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::envelope::EnqueueOutcome;
use crate::smtp::server::{Refusal, SessionEnd, SessionEvents};
use crate::spool::{QueueReader, QueueReport, Spool};

/// One label from a fixed set.
type Label = [(&'static str, &'static str); 1];
/// Two labels, each from a fixed set.
type Labels = [(&'static str, &'static str); 2];

/// The states a recipient can be in in the spool, as `pluto2 queue` counts
/// them (a new state is one more entry here and in [`Stats::set_queue`]).
const QUEUE_STATES: [&str; 4] = ["queued", "deferred", "held", "leased"];

/// Kinds of packets the mixnet keeps in custody.
const CUSTODY_KINDS: [&str; 3] = ["forward", "fragment", "ack"];

/// What became of a recipient that was not delivered, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// A permanent failure: the recipient leaves the spool.
    Dropped,
    /// A temporary failure with attempts left: deferred for a retry.
    Retry,
    /// A temporary failure on the last allowed attempt: dropped.
    GaveUp,
}

impl Undelivered {
    fn label(self) -> &'static str {
        match self {
            Undelivered::Dropped => "dropped",
            Undelivered::Retry => "retry",
            Undelivered::GaveUp => "gave_up",
        }
    }
}

/// The label of an intake outcome in `pluto2_messages_total`.
fn outcome_label(outcome: EnqueueOutcome) -> &'static str {
    match outcome {
        EnqueueOutcome::Queued => "queued",
        EnqueueOutcome::OwnTraffic => "own_cover",
        EnqueueOutcome::Replay => "replay",
        EnqueueOutcome::Loop => "loop",
        EnqueueOutcome::TooManyHops => "too_many_hops",
        EnqueueOutcome::Blocked => "blocked",
        EnqueueOutcome::Failed => "failed",
        EnqueueOutcome::NoSpace => "no_space",
        EnqueueOutcome::ShuttingDown => "shutting_down",
    }
}

const ENQUEUE_OUTCOMES: [EnqueueOutcome; 9] = [
    EnqueueOutcome::Queued,
    EnqueueOutcome::OwnTraffic,
    EnqueueOutcome::Replay,
    EnqueueOutcome::Loop,
    EnqueueOutcome::TooManyHops,
    EnqueueOutcome::Blocked,
    EnqueueOutcome::Failed,
    EnqueueOutcome::NoSpace,
    EnqueueOutcome::ShuttingDown,
];

#[derive(Debug)]
pub struct Stats {
    /// Messages handed to intake, by what became of them.
    messages: Family<Label, Counter>,
    /// Real messages queued (`outcome="queued"` of `messages`).
    pub received: Counter,
    /// Exact duplicates inside the replay window: answered 250, not queued
    /// (`outcome="replay"`).
    pub replays: Counter,
    /// Our own loop cover come back (`outcome="own_cover"`).
    pub cover_received: Counter,
    /// SMTP sessions by how they ended.
    sessions: Family<Label, Counter>,
    /// 4xx/5xx replies to SMTP clients by class and reason.
    refusals: Family<Labels, Counter>,
    /// Recipients of real mail delivered (cover is counted apart).
    pub sent: Counter,
    /// Recipients of real mail dropped for good (permanent failure or the
    /// last attempt).
    pub failed: Counter,
    /// Deferrals: temporary failures that scheduled another attempt.
    pub retries: Counter,
    /// Recipients not delivered, by disposition and failure class.
    failures: Family<Labels, Counter>,
    pub batches: Counter,
    /// Padding bytes added to outgoing messages (every attempt).
    pub padding_bytes: Counter,
    /// Cover messages generated and queued here.
    pub cover_sent: Counter,
    /// Cover recipients delivered to the next hop.
    pub cover_delivered: Counter,
    /// Cover that failed to leave: dropped, never retried.
    pub cover_dropped: Counter,
    /// Cover not generated because deliveries were failing (Tor down).
    pub cover_paused: Counter,
    /// Recipients in the spool by state, as the spool last said.
    queue: Family<Label, Gauge>,
    /// Messages in the spool, as the spool last said.
    queue_messages: Gauge,
    /// Whether the last read of the spool's counts worked (else the
    /// `[STATS]` line says `?`).
    queue_known: AtomicBool,
    /// Recipients delivered by SMTP from here for mail that did not leave
    /// the mixnet here (fog's `direct`). In mixnet mode it must stay 0; it
    /// is counted, not printed as a constant, so a leak would show.
    pub direct: Counter,
    /// Mixnet mode is on: the line and the scrape carry the mixnet metrics.
    pub mixnet: AtomicBool,
    /// Messages sent into the mixnet from here (fog's `sphinx`).
    pub mix_messages_in: Counter,
    /// Messages whose exit said COMPLETE.
    pub mix_messages_acked: Counter,
    /// Messages dropped after the end-to-end horizon.
    pub mix_messages_failed: Counter,
    /// Rounds in which mail waited because no route could be built.
    pub mix_no_route: Counter,
    pub mix_fragments_sent: Counter,
    pub mix_fragments_retransmitted: Counter,
    /// Packets received on links (fog's `mix received`).
    pub mix_packets_in: Counter,
    /// Packets handed to links (fog's `mix forwarded`; retries included).
    pub mix_packets_out: Counter,
    /// Packets whose replay tag was known (this and the three below are
    /// the children of `pluto2_mixnet_packets_refused_total`).
    pub mix_replays: Counter,
    /// Packets refused here: bad MAC, version, delay, next hop.
    pub mix_rejected: Counter,
    pub mix_unknown_epoch: Counter,
    pub mix_bad_payloads: Counter,
    /// Packets the next hop refused.
    pub mix_rejected_by_peer: Counter,
    /// Packets dropped when their custody horizon passed.
    pub mix_expired: Counter,
    /// Messages completed at this exit and handed to delivery (this and
    /// the next are the children of `pluto2_mixnet_exit_messages_total`).
    pub mix_exit_completions: Counter,
    /// Messages that arrived again after completion (re-acknowledged).
    pub mix_exit_duplicates: Counter,
    /// Packets in custody here by kind, as the spool last said.
    mix_custody: Family<Label, Gauge>,
    mix_awaiting_ack: Gauge,
    mix_exit_partial: Gauge,
    /// Usable other nodes now, and all other nodes in nodes.json.
    pub mix_healthy: Gauge,
    pub mix_nodes: Gauge,
    /// The mix-key epoch now.
    pub mix_epoch: Gauge,
    /// Loop cover sent, back in time, and given up as lost.
    pub mix_loops_sent: Counter,
    pub mix_loops_back: Counter,
    pub mix_loops_lost: Counter,
    /// Drop cover sent from here, and dropped here as its last hop.
    pub mix_drops_sent: Counter,
    pub mix_drops_received: Counter,
    /// Bundles that showed a node signing two keys for one epoch.
    pub mix_two_faces: Counter,
    /// Recipients and posts refused (direct mode) or dropped (mixnet exit)
    /// because their destination is on the `-dest-block` list.
    pub dest_blocked: Counter,
    /// The spool's reader of the queue counts (none in unit tests without
    /// a spool). A reader, not a `Spool`: a spool handle here would keep
    /// the committer open at shutdown.
    spool: Option<QueueReader>,
    /// Everything above but the mixnet metrics.
    registry: Registry,
    /// The mixnet metrics, encoded only in mixnet mode.
    mixnet_registry: Registry,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new(None)
    }
}

impl Stats {
    /// Builds every metric and registers it; `spool` brings the spool's
    /// commit latency histograms, which the spool declares and fills, and
    /// its reader of the queue counts (absent in unit tests).
    pub fn new(spool: Option<&Spool>) -> Stats {
        let mut r = Registry::default();
        let messages = Family::<Label, Counter>::default();
        for outcome in ENQUEUE_OUTCOMES {
            let _ = messages.get_or_create(&[("outcome", outcome_label(outcome))]);
        }
        let child = |f: &Family<Label, Counter>, key: &'static str, value: &'static str| {
            f.get_or_create(&[(key, value)]).clone()
        };
        let received = child(&messages, "outcome", "queued");
        let replays = child(&messages, "outcome", "replay");
        let cover_received = child(&messages, "outcome", "own_cover");
        r.register(
            "pluto2_messages",
            "Messages handed to intake by a transport, by outcome: queued; replay (answered 250, not queued again); own_cover (our loop cover come back); loop, too_many_hops (refused); failed, no_space, shutting_down (not stored, client told to retry)",
            messages.clone(),
        );
        let sessions = Family::<Label, Counter>::default();
        for end in SessionEnd::ALL {
            let _ = sessions.get_or_create(&[("outcome", end.label())]);
        }
        r.register(
            "pluto2_smtp_sessions",
            "SMTP connections by how they ended",
            sessions.clone(),
        );
        let refusals = Family::<Labels, Counter>::default();
        r.register(
            "pluto2_smtp_refusals",
            "4xx and 5xx replies sent to SMTP clients, by class (temporary, permanent) and reason (the enhanced status code's subject, RFC 3463)",
            refusals.clone(),
        );
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let sent = counter(
            &mut r,
            "pluto2_recipients_delivered",
            "Recipients of real mail (not cover) delivered to the next hop",
        );
        let failed = counter(
            &mut r,
            "pluto2_recipients_failed",
            "Recipients of real mail dropped for good: a permanent failure, or a temporary one on the last attempt",
        );
        let retries = counter(
            &mut r,
            "pluto2_delivery_retries",
            "Temporary delivery failures of real mail that deferred the recipient for another attempt",
        );
        let failures = Family::<Labels, Counter>::default();
        r.register(
            "pluto2_delivery_failures",
            "Recipients of real mail not delivered, by disposition (retry, dropped, gave_up) and failure class",
            failures.clone(),
        );
        let batches = counter(
            &mut r,
            "pluto2_delivery_batches",
            "Times the dispatcher leased due work from the spool",
        );
        let padding_bytes = counter(
            &mut r,
            "pluto2_padding_bytes",
            "Padding bytes added to outgoing messages, every attempt counted",
        );
        let cover_sent = counter(
            &mut r,
            "pluto2_cover_sent",
            "Loop cover messages generated and queued here",
        );
        r.register(
            "pluto2_cover_received",
            "Our own loop cover messages come back (also outcome=\"own_cover\" of pluto2_messages_total)",
            cover_received.clone(),
        );
        let cover_delivered = counter(
            &mut r,
            "pluto2_cover_delivered",
            "Loop cover recipients delivered to the next hop",
        );
        let cover_dropped = counter(
            &mut r,
            "pluto2_cover_dropped",
            "Loop cover that failed to leave: dropped, never retried",
        );
        let cover_paused = counter(
            &mut r,
            "pluto2_cover_paused",
            "Cover messages not generated because deliveries were failing",
        );
        let queue = Family::<Label, Gauge>::default();
        for state in QUEUE_STATES {
            let _ = queue.get_or_create(&[("state", state)]);
        }
        r.register(
            "pluto2_queue_recipients",
            "Recipients in the spool by state, read from the spool",
            queue.clone(),
        );
        let queue_messages = gauge(
            &mut r,
            "pluto2_queue_messages",
            "Messages in the spool, read from the spool",
        );
        if let Some(spool) = spool {
            let times = spool.commit_times();
            r.register(
                "pluto2_spool_commit_seconds",
                "Time of the fsync'd COMMIT of one group of enqueued messages",
                times.enqueue,
            );
            r.register(
                "pluto2_spool_custody_commit_seconds",
                "Time of the fsync'd COMMIT of one group of mixnet custody decisions",
                times.custody,
            );
        }

        let mut m = Registry::default();
        let direct = counter(
            &mut m,
            "pluto2_mixnet_direct_deliveries",
            "Recipients delivered by SMTP here of mail that did not leave the mixnet here: must stay 0",
        );
        let mix_messages_in = counter(
            &mut m,
            "pluto2_mixnet_messages_sent",
            "Messages sent into the mixnet from this entry",
        );
        let mix_messages_acked = counter(
            &mut m,
            "pluto2_mixnet_messages_acked",
            "Messages sent from here whose exit said COMPLETE",
        );
        let mix_messages_failed = counter(
            &mut m,
            "pluto2_mixnet_messages_failed",
            "Messages sent from here given up after the end-to-end horizon",
        );
        let mix_no_route = counter(
            &mut m,
            "pluto2_mixnet_no_route",
            "Rounds in which mail waited because no route could be built",
        );
        let mix_fragments_sent = counter(
            &mut m,
            "pluto2_mixnet_fragments_sent",
            "Fragments sent into the mixnet from this entry",
        );
        let mix_fragments_retransmitted = counter(
            &mut m,
            "pluto2_mixnet_fragments_retransmitted",
            "Fragments sent again because their acknowledgement did not come",
        );
        let mix_packets_in = counter(
            &mut m,
            "pluto2_mixnet_packets_received",
            "Packets received on links",
        );
        let mix_packets_out = counter(
            &mut m,
            "pluto2_mixnet_packets_forwarded",
            "Packets handed to links, retries included",
        );
        let mix_refused = Family::<Label, Counter>::default();
        let mix_replays = child(&mix_refused, "reason", "replay");
        let mix_rejected = child(&mix_refused, "reason", "rejected");
        let mix_unknown_epoch = child(&mix_refused, "reason", "unknown_epoch");
        let mix_bad_payloads = child(&mix_refused, "reason", "bad_payload");
        m.register(
            "pluto2_mixnet_packets_refused",
            "Packets received and not kept, by reason: replay (known tag), rejected (bad MAC, version, delay, next hop), unknown_epoch, bad_payload",
            mix_refused.clone(),
        );
        let mix_rejected_by_peer = counter(
            &mut m,
            "pluto2_mixnet_packets_refused_by_peer",
            "Packets the next hop refused",
        );
        let mix_expired = counter(
            &mut m,
            "pluto2_mixnet_packets_expired",
            "Packets dropped when their custody horizon passed unacknowledged",
        );
        let mix_exit = Family::<Label, Counter>::default();
        let mix_exit_completions = child(&mix_exit, "outcome", "completed");
        let mix_exit_duplicates = child(&mix_exit, "outcome", "duplicate");
        m.register(
            "pluto2_mixnet_exit_messages",
            "Messages at this exit: completed (handed to delivery) or duplicate (arrived again, re-acknowledged)",
            mix_exit.clone(),
        );
        let mix_custody = Family::<Label, Gauge>::default();
        for kind in CUSTODY_KINDS {
            let _ = mix_custody.get_or_create(&[("kind", kind)]);
        }
        m.register(
            "pluto2_mixnet_custody_packets",
            "Packets in custody here until the next hop acknowledges them, by kind, read from the spool",
            mix_custody.clone(),
        );
        let mix_awaiting_ack = gauge(
            &mut m,
            "pluto2_mixnet_awaiting_ack_messages",
            "Messages sent from here waiting for their exit's COMPLETE",
        );
        let mix_exit_partial = gauge(
            &mut m,
            "pluto2_mixnet_exit_partial_messages",
            "Messages with some fragments stored at this exit",
        );
        let mix_healthy = gauge(
            &mut m,
            "pluto2_mixnet_peers_usable",
            "Other nodes with a working link now",
        );
        let mix_nodes = gauge(&mut m, "pluto2_mixnet_peers", "Other nodes in nodes.json");
        let mix_epoch = gauge(
            &mut m,
            "pluto2_mixnet_epoch",
            "The mix-key epoch now (unix time / params.epoch)",
        );
        let loops = Family::<Label, Counter>::default();
        m.register(
            "pluto2_mixnet_loops",
            "Loop cover packets by fate: sent, back (in time), lost (given up)",
            loops.clone(),
        );
        let mix_loops_sent = child(&loops, "fate", "sent");
        let mix_loops_back = child(&loops, "fate", "back");
        let mix_loops_lost = child(&loops, "fate", "lost");
        let drops = Family::<Label, Counter>::default();
        m.register(
            "pluto2_mixnet_drop_cover",
            "Drop cover packets sent from here, and received here as their last hop",
            drops.clone(),
        );
        let mix_drops_sent = child(&drops, "direction", "sent");
        let mix_drops_received = child(&drops, "direction", "received");
        let mix_two_faces = counter(
            &mut m,
            "pluto2_mixnet_two_faces",
            "Bundles showing a node signing two different mix keys for one epoch (the node is excluded)",
        );
        let dest_blocked = counter(
            &mut r,
            "pluto2_dest_blocked",
            "Recipients and posts refused (direct mode) or dropped (mixnet exit) for a -dest-block destination",
        );
        Stats {
            messages,
            received,
            replays,
            cover_received,
            sessions,
            refusals,
            sent,
            failed,
            retries,
            failures,
            batches,
            padding_bytes,
            cover_sent,
            cover_delivered,
            cover_dropped,
            cover_paused,
            queue,
            queue_messages,
            queue_known: AtomicBool::new(false),
            direct,
            mixnet: AtomicBool::new(false),
            mix_messages_in,
            mix_messages_acked,
            mix_messages_failed,
            mix_no_route,
            mix_fragments_sent,
            mix_fragments_retransmitted,
            mix_packets_in,
            mix_packets_out,
            mix_replays,
            mix_rejected,
            mix_unknown_epoch,
            mix_bad_payloads,
            mix_rejected_by_peer,
            mix_expired,
            mix_exit_completions,
            mix_exit_duplicates,
            mix_custody,
            mix_awaiting_ack,
            mix_exit_partial,
            mix_healthy,
            mix_nodes,
            mix_epoch,
            mix_loops_sent,
            mix_loops_back,
            mix_loops_lost,
            mix_drops_sent,
            mix_drops_received,
            mix_two_faces,
            dest_blocked,
            spool: spool.map(Spool::reader),
            registry: r,
            mixnet_registry: m,
        }
    }

    pub fn add(counter: &Counter, n: u64) {
        counter.inc_by(n);
    }

    pub fn set_healthy(&self, usable: u64, nodes: u64) {
        self.mix_healthy.set(usable as i64);
        self.mix_nodes.set(nodes as i64);
    }

    #[cfg(test)]
    pub fn get(counter: &Counter) -> u64 {
        counter.get()
    }

    /// Counts what intake did with one message.
    pub fn message(&self, outcome: EnqueueOutcome) {
        self.messages
            .get_or_create(&[("outcome", outcome_label(outcome))])
            .inc();
    }

    /// Counts a recipient of real mail that was not delivered; `class` is
    /// the failure's [`crate::relay::failure::Failure::class`].
    pub fn undelivered(&self, what: Undelivered, class: &'static str) {
        match what {
            Undelivered::Retry => self.retries.inc(),
            Undelivered::Dropped | Undelivered::GaveUp => self.failed.inc(),
        };
        self.failures
            .get_or_create(&[("disposition", what.label()), ("class", class)])
            .inc();
    }

    /// Takes the spool's counts into the queue gauges.
    pub fn set_queue(&self, report: &QueueReport) {
        let state = |s: &'static str, n: u64| {
            self.queue.get_or_create(&[("state", s)]).set(n as i64);
        };
        state("queued", report.queued);
        state("deferred", report.deferred);
        state("held", report.held);
        state("leased", report.leased);
        self.queue_messages.set(report.messages as i64);
        let m = &report.mixnet;
        for (kind, n) in [
            ("forward", m.packets_forward),
            ("fragment", m.packets_fragment),
            ("ack", m.packets_ack),
        ] {
            self.mix_custody
                .get_or_create(&[("kind", kind)])
                .set(n as i64);
        }
        self.mix_awaiting_ack.set(m.awaiting_ack as i64);
        self.mix_exit_partial.set(m.exit_partial as i64);
        self.queue_known.store(true, Ordering::Relaxed);
    }

    /// Reads the spool's counts through its reader (one connection the
    /// spool opened at start, not a new one per call) into the queue
    /// gauges, and returns them. When they cannot be read the gauges keep
    /// their last values and the `[STATS]` line says `?` for them.
    pub async fn read_queue(&self) -> Option<QueueReport> {
        let report = match &self.spool {
            Some(reader) => reader.report().await.ok(),
            None => None,
        };
        match &report {
            Some(r) => self.set_queue(r),
            None => self.queue_known.store(false, Ordering::Relaxed),
        }
        report
    }

    /// The registry in the Prometheus text format (version 0.0.4); the
    /// mixnet metrics only in mixnet mode.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        if self.mixnet.load(Ordering::Relaxed) {
            let _ = prometheus_text::encode(&mut out, &self.mixnet_registry);
        }
        out
    }

    fn queue_gauge(&self, state: &'static str) -> u64 {
        self.queue.get_or_create(&[("state", state)]).get().max(0) as u64
    }

    /// The `[STATS]` fields in their fixed order, so scripts can parse the
    /// line: a new field is one more entry at the end of the list.
    fn fields(&self, uptime: Duration) -> Vec<(&'static str, String)> {
        let n = |c: &Counter| c.get().to_string();
        let known = self.queue_known.load(Ordering::Relaxed);
        let from_spool = |v: u64| {
            if known {
                v.to_string()
            } else {
                "?".to_string()
            }
        };
        let uptime = humantime::format_duration(Duration::from_secs(uptime.as_secs()));
        let waiting: u64 = QUEUE_STATES.iter().map(|s| self.queue_gauge(s)).sum();
        vec![
            ("uptime", uptime.to_string()),
            ("received", n(&self.received)),
            ("sent", n(&self.sent)),
            ("failed", n(&self.failed)),
            ("deferred", from_spool(self.queue_gauge("deferred"))),
            ("queued", from_spool(waiting)),
            ("cover_sent", n(&self.cover_sent)),
            ("cover_received", n(&self.cover_received)),
            ("batches", n(&self.batches)),
            ("replays", n(&self.replays)),
            ("cover_dropped", n(&self.cover_dropped)),
            ("cover_paused", n(&self.cover_paused)),
            ("retries", n(&self.retries)),
            ("cover_delivered", n(&self.cover_delivered)),
            ("dest_blocked", n(&self.dest_blocked)),
        ]
    }

    /// The mixnet fields (none in direct mode). `direct` stays 0 in mixnet
    /// mode: mail accepted here never leaves directly.
    fn mixnet_fields(&self) -> Vec<(&'static str, String)> {
        if !self.mixnet.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let n = |c: &Counter| c.get().to_string();
        let custody: i64 = CUSTODY_KINDS
            .iter()
            .map(|k| self.mix_custody.get_or_create(&[("kind", k)]).get())
            .sum();
        vec![
            ("sphinx", n(&self.mix_messages_in)),
            ("direct", n(&self.direct)),
            ("acked", n(&self.mix_messages_acked)),
            ("e2e_failed", n(&self.mix_messages_failed)),
            ("no_route", n(&self.mix_no_route)),
            ("fragments", n(&self.mix_fragments_sent)),
            ("retransmitted", n(&self.mix_fragments_retransmitted)),
            ("packets_in", n(&self.mix_packets_in)),
            ("packets_out", n(&self.mix_packets_out)),
            ("packets_queued", custody.max(0).to_string()),
            ("mix_replays", n(&self.mix_replays)),
            ("rejected", n(&self.mix_rejected)),
            ("rejected_by_peer", n(&self.mix_rejected_by_peer)),
            ("unknown_epoch", n(&self.mix_unknown_epoch)),
            ("expired", n(&self.mix_expired)),
            ("bad_payloads", n(&self.mix_bad_payloads)),
            ("exit_completed", n(&self.mix_exit_completions)),
            ("exit_duplicates", n(&self.mix_exit_duplicates)),
            (
                "healthy",
                format!("{}/{}", self.mix_healthy.get(), self.mix_nodes.get()),
            ),
            ("epoch", self.mix_epoch.get().to_string()),
            ("loops_sent", n(&self.mix_loops_sent)),
            ("loops_back", n(&self.mix_loops_back)),
            ("loops_lost", n(&self.mix_loops_lost)),
            ("drops_sent", n(&self.mix_drops_sent)),
            ("drops_received", n(&self.mix_drops_received)),
            ("two_faces", n(&self.mix_two_faces)),
        ]
    }

    /// One line, `key=value` pairs in a fixed order so scripts can parse it.
    pub fn line(&self, uptime: Duration) -> String {
        let mut line = String::from("[STATS]");
        for (key, value) in self.fields(uptime).into_iter().chain(self.mixnet_fields()) {
            line.push(' ');
            line.push_str(key);
            line.push('=');
            line.push_str(&value);
        }
        line
    }

    /// Logs the line every `interval` until shutdown. The queue gauges are
    /// read from the spool first, so they are right across restarts.
    pub async fn report(
        self: std::sync::Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            self.read_queue().await;
            info!("{}", self.line(started.elapsed()));
        }
    }
}

/// The SMTP listener's events, counted (the listener defines the trait so
/// it does not depend on node policy).
impl SessionEvents for Stats {
    fn session_ended(&self, end: SessionEnd) {
        self.sessions
            .get_or_create(&[("outcome", end.label())])
            .inc();
    }

    fn refused(&self, refusal: Refusal) {
        self.refusals
            .get_or_create(&[
                ("class", refusal.class.label()),
                ("reason", refusal.reason.label()),
            ])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::custody::MixnetCounts;

    fn report(queued: u64, deferred: u64, leased: u64) -> QueueReport {
        QueueReport {
            messages: queued + deferred + leased,
            recipients: queued + deferred + leased,
            queued,
            deferred,
            leased,
            held: 0,
            deleted_by_operator: 0,
            oldest_age_seconds: None,
            next_retry_in_seconds: None,
            mixnet: MixnetCounts::default(),
        }
    }

    #[test]
    fn it_prints_every_counter_in_a_stable_order() {
        let s = Stats::default();
        s.message(EnqueueOutcome::Queued);
        s.message(EnqueueOutcome::Queued);
        s.message(EnqueueOutcome::Queued);
        Stats::add(&s.cover_sent, 2);
        Stats::add(&s.replays, 4);
        s.undelivered(Undelivered::Retry, "io");
        s.set_queue(&report(5, 2, 0));
        let line = s.line(Duration::from_secs(3725));
        assert_eq!(
            line,
            "[STATS] uptime=1h 2m 5s received=3 sent=0 failed=0 deferred=2 queued=7 cover_sent=2 cover_received=0 batches=0 replays=4 cover_dropped=0 cover_paused=0 retries=1 cover_delivered=0 dest_blocked=0"
        );
    }

    #[test]
    fn it_says_unknown_for_the_spools_counts_until_they_are_read() {
        let s = Stats::default();
        let line = s.line(Duration::ZERO);
        assert!(line.contains(" deferred=? queued=? "), "{line}");
    }

    #[test]
    fn it_renders_the_line_and_the_scrape_from_the_same_counters() {
        let s = Stats::default();
        s.message(EnqueueOutcome::Queued);
        s.message(EnqueueOutcome::Replay);
        s.message(EnqueueOutcome::OwnTraffic);
        Stats::add(&s.sent, 3);
        s.undelivered(Undelivered::GaveUp, "timeout");
        s.undelivered(Undelivered::Retry, "timeout");
        Stats::add(&s.cover_delivered, 1);
        s.set_queue(&report(1, 1, 1));
        let text = s.encode();
        for expected in [
            "pluto2_messages_total{outcome=\"queued\"} 1",
            "pluto2_messages_total{outcome=\"replay\"} 1",
            "pluto2_messages_total{outcome=\"own_cover\"} 1",
            "pluto2_cover_received_total 1",
            "pluto2_recipients_delivered_total 3",
            "pluto2_recipients_failed_total 1",
            "pluto2_delivery_retries_total 1",
            "pluto2_delivery_failures_total{disposition=\"gave_up\",class=\"timeout\"} 1",
            "pluto2_cover_delivered_total 1",
            "pluto2_queue_recipients{state=\"deferred\"} 1",
            "pluto2_queue_messages 3",
        ] {
            assert!(text.contains(expected), "no {expected:?} in\n{text}");
        }
        let line = s.line(Duration::ZERO);
        assert!(
            line.contains(" received=1 sent=3 failed=1 deferred=1 queued=3 "),
            "{line}"
        );
        assert!(line.contains(" replays=1 "), "{line}");
    }

    #[test]
    fn it_leaves_the_mixnet_metrics_out_in_direct_mode() {
        let s = Stats::default();
        assert!(!s.encode().contains("pluto2_mixnet_"));
        assert!(!s.line(Duration::ZERO).contains("sphinx="));
        s.mixnet.store(true, Ordering::Relaxed);
        Stats::add(&s.mix_replays, 2);
        s.set_healthy(3, 4);
        let text = s.encode();
        assert!(
            text.contains("pluto2_mixnet_packets_refused_total{reason=\"replay\"} 2"),
            "{text}"
        );
        assert!(text.contains("pluto2_mixnet_peers_usable 3"), "{text}");
        let line = s.line(Duration::ZERO);
        assert!(line.contains(" mix_replays=2 "), "{line}");
        assert!(line.contains(" healthy=3/4 "), "{line}");
        assert!(line.ends_with(" two_faces=0"), "{line}");
    }

    #[test]
    fn every_metric_name_has_the_prefix_and_counters_end_in_total() {
        let s = Stats::default();
        s.mixnet.store(true, Ordering::Relaxed);
        let text = s.encode();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("pluto2_"), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
        }
    }
}
