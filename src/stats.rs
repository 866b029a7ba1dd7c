//! Counters and gauges: one registry that both the `[STATS]` log line and
//! the Prometheus endpoint (`-metrics`, see `admin`) read.
//!
//! Every number here is a `prometheus-client` metric registered once in
//! [`Stats`]'s registry; the `[STATS]` fields are handles on the same
//! atomics (a labelled child of a family shares its counter with the field),
//! so the log line and a scrape can never disagree.
//!
//! Each metric is declared once, in the `metrics!` table below: its
//! field, how it is made, its name and help, and its `[STATS]` key. A new
//! counter is one entry there.
//!
//! Counts only: nothing here identifies a message, a sender, a client or
//! the time of a particular message. Labels come from small fixed sets
//! (an outcome, a reply class, a failure class) or name a mix node by its
//! short name, public in `nodes.json` (the pinger's per-node view), never
//! from what a client sent; there are no per-message timestamps, and the one histogram (spool
//! commit latency) keeps bucket counts, not samples.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::envelope::EnqueueOutcome;
use crate::link::{LinkEvents, LinkRefusal};
use crate::smtp::server::{Refusal, SessionEnd, SessionEvents};
use crate::spool::custody::{BusyReason, HeldTotals, HoldDrop};
use crate::spool::loop_hours::NodeLoops;
use crate::spool::{QueueReader, QueueReport, Spool};

/// One label from a fixed set.
type Label = [(&'static str, &'static str); 1];
/// A mix node's short name (public in `nodes.json`).
type NodeLabel = [(&'static str, String); 1];
/// A node's short name and a label from a fixed set.
type NodeLabels = [(&'static str, String); 2];
/// A gauge of a fraction or of seconds.
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
/// Two labels, each from a fixed set.
type Labels = [(&'static str, &'static str); 2];

/// The states a recipient can be in in the spool, as `pluto2 queue` counts
/// them (a new state is one more entry here and in [`Stats::set_queue`]).
const QUEUE_STATES: [&str; 4] = ["queued", "deferred", "held", "leased"];

/// Kinds of packets the mixnet keeps in custody.
const CUSTODY_KINDS: [&str; 3] = ["forward", "fragment", "ack"];

/// Why the mixnet sender dropped a message it could never launch (see
/// `mixnet::sender`).
const LAUNCH_DROP_CODES: [&str; 4] = ["too_large", "fragment", "packet", "internal"];

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
        EnqueueOutcome::TooManyRecipients => "too_many_recipients",
        EnqueueOutcome::Blocked => "blocked",
        EnqueueOutcome::Failed => "failed",
        EnqueueOutcome::NoSpace => "no_space",
        EnqueueOutcome::ShuttingDown => "shutting_down",
    }
}

const ENQUEUE_OUTCOMES: [EnqueueOutcome; 10] = [
    EnqueueOutcome::Queued,
    EnqueueOutcome::OwnTraffic,
    EnqueueOutcome::Replay,
    EnqueueOutcome::Loop,
    EnqueueOutcome::TooManyHops,
    EnqueueOutcome::TooManyRecipients,
    EnqueueOutcome::Blocked,
    EnqueueOutcome::Failed,
    EnqueueOutcome::NoSpace,
    EnqueueOutcome::ShuttingDown,
];

/// A family whose series for `key` = each of `values` exist from the
/// start, so a scrape shows them at 0 before the first event instead of
/// leaving them out.
fn family<M: Default + Clone>(
    key: &'static str,
    values: impl IntoIterator<Item = &'static str>,
) -> Family<Label, M> {
    let f = Family::default();
    for value in values {
        let _ = f.get_or_create(&[(key, value)]);
    }
    f
}

/// A family whose HELP and TYPE lines are in every scrape, even before
/// its first series (prometheus-client leaves an empty family out): a
/// dashboard or an alert can name it from the start, and a name misspelt
/// in one shows at once (`tests/grafana.rs`). Used like the family.
#[derive(Debug)]
struct Declared<S, M>(Family<S, M>);

impl<S, M> Default for Declared<S, M>
where
    S: Clone + std::hash::Hash + Eq,
    M: Default,
{
    fn default() -> Self {
        Declared(Family::default())
    }
}

impl<S: Clone + std::hash::Hash + Eq, M> Clone for Declared<S, M> {
    fn clone(&self) -> Self {
        Declared(self.0.clone())
    }
}

impl<S, M> std::ops::Deref for Declared<S, M> {
    type Target = Family<S, M>;

    fn deref(&self) -> &Family<S, M> {
        &self.0
    }
}

impl<S, M> EncodeMetric for Declared<S, M>
where
    Family<S, M>: EncodeMetric,
{
    fn encode(&self, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// The series `key="value"` of `family`: the returned handle shares its
/// atomic with the family, so a field and a labelled series are one number.
fn child<M: Default + Clone>(
    family: &Family<Label, M>,
    key: &'static str,
    value: &'static str,
) -> M {
    family.get_or_create_owned(&[(key, value)])
}

/// Declares the metrics of [`Stats`], each in one entry, and builds from
/// the entries the struct's fields, `Stats::build` (makes each metric
/// and registers it, in entry order) and `Stats::metric_fields` (the
/// `[STATS]` fields, in entry order). Two blocks: `core` metrics are always
/// scraped and logged, `mixnet` ones only in mixnet mode.
///
/// An entry, in this order:
/// - doc comments, visibility, the field and its type; or `let` and a name
///   for a family used only through its children (no field);
/// - `= expr` to make it (default: `Default::default()`); it may name any
///   entry above it, as a child names its family;
/// - `, "name", "help"` to register it; absent for a family's child, which
///   the family's registration already exposes;
/// - `=> "key"` once per `[STATS]` field it shows, with `by Stats::f` when
///   the value is not just the metric's own (`fn(&Stats) -> String`).
///
/// The `[STATS]` fields follow the entry order, so scripts can parse the
/// line: a new field goes at the end of its block. The scrape follows the
/// same order (Prometheus does not care).
macro_rules! metrics {
    (core { $($core:tt)* } mixnet { $($mixnet:tt)* }) => {
        metrics!(@entries false { $($core)* } { $($mixnet)* }
            fields[] lets[] registered[] inits[] shown[]);
    };
    // The core block is done: the mixnet block follows.
    (@entries false {} { $($mixnet:tt)* } $($done:tt)*) => {
        metrics!(@entries true { $($mixnet)* } {} $($done)*);
    };
    // A family used only through its children: a local, not a field.
    (@entries $mix:tt {
        let $name:ident: $ty:ty $(= $make:expr)?, $metric:literal, $help:literal;
        $($rest:tt)*
    } $next:tt
        fields[$($f:tt)*] lets[$($l:tt)*] registered[$($r:tt)*] inits[$($i:tt)*] shown[$($s:tt)*]
    ) => {
        metrics!(@entries $mix { $($rest)* } $next
            fields[$($f)*]
            lets[$($l)* let $name: $ty = metrics!(@make $($make)?);]
            registered[$($r)* ($mix, $metric, $help, $name)]
            inits[$($i)*]
            shown[$($s)*]);
    };
    // A metric with a field.
    (@entries $mix:tt {
        $(#[$meta:meta])* $vis:vis $name:ident: $ty:ty $(= $make:expr)?
            $(, $metric:literal, $help:literal)? $(=> $key:literal $(by $show:path)?)*;
        $($rest:tt)*
    } $next:tt
        fields[$($f:tt)*] lets[$($l:tt)*] registered[$($r:tt)*] inits[$($i:tt)*] shown[$($s:tt)*]
    ) => {
        metrics!(@entries $mix { $($rest)* } $next
            fields[$($f)* $(#[$meta])* $vis $name: $ty,]
            lets[$($l)* let $name: $ty = metrics!(@make $($make)?);]
            registered[$($r)* $(($mix, $metric, $help, $name))?]
            inits[$($i)* $name,]
            shown[$($s)* $(($mix, $key, $name $(, $show)?))*]);
    };
    (@entries true {} {}
        fields[$($f:tt)*]
        lets[$($l:tt)*]
        registered[$(($rmix:tt, $metric:tt, $help:tt, $rname:ident))*]
        inits[$($i:tt)*]
        shown[$(($smix:tt, $key:tt, $sname:ident $(, $show:path)?))*]
    ) => {
        #[derive(Debug)]
        pub struct Stats {
            $($f)*
            /// Whether the last read of the spool's counts worked (else
            /// the `[STATS]` line says `?`).
            queue_known: AtomicBool,
            /// Mixnet mode is on: the line and the scrape carry the
            /// mixnet metrics.
            pub mixnet: AtomicBool,
            /// The spool's reader of the queue counts (none in unit tests
            /// without a spool). A reader, not a `Spool`: a spool handle
            /// here would keep the committer open at shutdown.
            spool: Option<QueueReader>,
            /// The `core` metrics.
            registry: Registry,
            /// The `mixnet` metrics, encoded only in mixnet mode.
            mixnet_registry: Registry,
            /// Paces the log line about busy answers (`mixnet::hop`).
            pub custody_busy_log: crate::listen::LogThrottle,
            /// Paces the log line about replies a gateway did not keep.
            pub held_dropped_log: crate::listen::LogThrottle,
            /// The nodes whose day the per-node loop gauges show now
            /// (a node that leaves the day loses its series).
            node_loops_shown: std::sync::Mutex<Vec<String>>,
        }

        impl Stats {
            /// Makes every metric and registers it, in entry order.
            fn build() -> Stats {
                $($l)*
                let mut registry = Registry::default();
                let mut mixnet_registry = Registry::default();
                $(
                    metrics!(@registry $rmix, registry, mixnet_registry)
                        .register($metric, $help, $rname.clone());
                )*
                Stats {
                    $($i)*
                    queue_known: AtomicBool::new(false),
                    mixnet: AtomicBool::new(false),
                    spool: None,
                    registry,
                    mixnet_registry,
                    custody_busy_log: Default::default(),
                    held_dropped_log: Default::default(),
                    node_loops_shown: Default::default(),
                }
            }

            /// The `[STATS]` fields of the entries, in entry order; the
            /// mixnet ones only in mixnet mode.
            fn metric_fields(&self) -> Vec<(&'static str, String)> {
                let mixnet = self.mixnet.load(Ordering::Relaxed);
                [$(
                    metrics!(@shown $smix, mixnet,
                        ($key, metrics!(@value self, $sname $(, $show)?)))
                ),*]
                .into_iter()
                .flatten()
                .collect()
            }
        }
    };
    (@make) => { Default::default() };
    (@make $make:expr) => { $make };
    (@registry false, $core:ident, $mixnet:ident) => { $core };
    (@registry true, $core:ident, $mixnet:ident) => { $mixnet };
    (@shown false, $on:ident, $field:expr) => { Some($field) };
    (@shown true, $on:ident, $field:expr) => { $on.then(|| $field) };
    (@value $stats:ident, $name:ident) => { $stats.$name.get().to_string() };
    (@value $stats:ident, $name:ident, $show:path) => { $show($stats) };
}

metrics! {
    core {
        /// Messages handed to intake, by what became of them.
        messages: Family<Label, Counter> = family("outcome", ENQUEUE_OUTCOMES.map(outcome_label)),
            "pluto2_messages",
            "Messages handed to intake by a transport, by outcome: queued; replay (answered 250, not queued again); own_cover (our loop cover come back); loop, too_many_hops (refused); failed, no_space, shutting_down (not stored, client told to retry)";
        /// SMTP sessions by how they ended.
        sessions: Family<Label, Counter> = family("outcome", SessionEnd::ALL.map(SessionEnd::label)),
            "pluto2_smtp_sessions", "SMTP connections by how they ended";
        /// 4xx/5xx replies to SMTP clients by class and reason.
        refusals: Family<Labels, Counter>,
            "pluto2_smtp_refusals",
            "4xx and 5xx replies sent to SMTP clients, by class (temporary, permanent) and reason (the enhanced status code's subject, RFC 3463)";
        /// Real messages queued (`outcome="queued"` of `messages`).
        pub received: Counter = child(&messages, "outcome", "queued") => "received";
        /// Recipients of real mail delivered (cover is counted apart).
        pub sent: Counter,
            "pluto2_recipients_delivered",
            "Recipients of real mail (not cover) delivered to the next hop"
            => "sent";
        /// Recipients of real mail dropped for good (permanent failure or
        /// the last attempt).
        pub failed: Counter,
            "pluto2_recipients_failed",
            "Recipients of real mail dropped for good: a permanent failure, or a temporary one on the last attempt"
            => "failed";
        /// Recipients in the spool by state, as the spool last said.
        queue: Family<Label, Gauge> = family("state", QUEUE_STATES),
            "pluto2_queue_recipients", "Recipients in the spool by state, read from the spool"
            => "deferred" by Stats::deferred => "queued" by Stats::waiting;
        /// Cover messages generated and queued here.
        pub cover_sent: Counter,
            "pluto2_cover_sent", "Loop cover messages generated and queued here"
            => "cover_sent";
        /// Our own loop cover come back (`outcome="own_cover"`).
        pub cover_received: Counter = child(&messages, "outcome", "own_cover"),
            "pluto2_cover_received",
            "Our own loop cover messages come back (also outcome=\"own_cover\" of pluto2_messages_total)"
            => "cover_received";
        /// Times the dispatcher leased due work.
        pub batches: Counter,
            "pluto2_delivery_batches", "Times the dispatcher leased due work from the spool"
            => "batches";
        /// Exact duplicates inside the replay window: answered 250, not
        /// queued (`outcome="replay"`).
        pub replays: Counter = child(&messages, "outcome", "replay") => "replays";
        /// Cover that failed to leave: dropped, never retried.
        pub cover_dropped: Counter,
            "pluto2_cover_dropped", "Loop cover that failed to leave: dropped, never retried"
            => "cover_dropped";
        /// Cover not generated because deliveries were failing (Tor down).
        pub cover_paused: Counter,
            "pluto2_cover_paused", "Cover messages not generated because deliveries were failing"
            => "cover_paused";
        /// Deferrals: temporary failures that scheduled another attempt.
        pub retries: Counter,
            "pluto2_delivery_retries",
            "Temporary delivery failures of real mail that deferred the recipient for another attempt"
            => "retries";
        /// Recipients not delivered, by disposition and failure class.
        failures: Declared<Labels, Counter>,
            "pluto2_delivery_failures",
            "Recipients of real mail not delivered, by disposition (retry, dropped, gave_up) and failure class";
        /// Cover recipients delivered to the next hop.
        pub cover_delivered: Counter,
            "pluto2_cover_delivered", "Loop cover recipients delivered to the next hop"
            => "cover_delivered";
        /// Recipients and posts refused (direct mode) or dropped (mixnet
        /// exit) because their destination is on the `-dest-block` list.
        pub dest_blocked: Counter,
            "pluto2_dest_blocked",
            "Recipients and posts refused (direct mode) or dropped (mixnet exit) for a -dest-block destination"
            => "dest_blocked";
        /// Padding bytes added to outgoing messages (every attempt).
        pub padding_bytes: Counter,
            "pluto2_padding_bytes", "Padding bytes added to outgoing messages, every attempt counted";
        // Hashcash stamps the sanitizer dropped, by class (every attempt
        // counted, like padding: egress runs once per connection).
        let hashcash_dropped: Family<Label, Counter> = family("class", ["time_of_day", "malformed"]),
            "pluto2_hashcash_dropped",
            "Hashcash stamps dropped by the sanitizer, by class: time_of_day (the date says when the mail was written), malformed (not a version 1 stamp); every delivery attempt counted";
        /// Stamps dropped because their date carries a time of day.
        pub hashcash_time_of_day: Counter = child(&hashcash_dropped, "class", "time_of_day");
        /// Stamps dropped because they could not be read.
        pub hashcash_malformed: Counter = child(&hashcash_dropped, "class", "malformed");
        /// Stamps minted at the exit (`-hashcash-bits`).
        pub hashcash_minted: Counter,
            "pluto2_hashcash_minted", "Hashcash stamps minted at the exit for a -hashcash-for recipient, every delivery attempt counted";
        /// Stamps not minted because the work bound ran out.
        pub hashcash_gave_up: Counter,
            "pluto2_hashcash_gave_up", "Hashcash stamps not minted because the per-message work bound ran out (the message left without one)";
        /// Messages in the spool, as the spool last said.
        queue_messages: Gauge,
            "pluto2_queue_messages", "Messages in the spool, read from the spool";
    }
    mixnet {
        /// Messages sent into the mixnet from here (fog's `sphinx`).
        pub mix_messages_in: Counter,
            "pluto2_mixnet_messages_sent", "Messages sent into the mixnet from this entry"
            => "sphinx";
        /// Recipients delivered by SMTP from here for mail that did not
        /// leave the mixnet here (fog's `direct`). In mixnet mode it must
        /// stay 0; it is counted, not printed as a constant, so a leak
        /// would show.
        pub direct: Counter,
            "pluto2_mixnet_direct_deliveries",
            "Recipients delivered by SMTP here of mail that did not leave the mixnet here: must stay 0"
            => "direct";
        /// Messages whose exit said COMPLETE.
        pub mix_messages_acked: Counter,
            "pluto2_mixnet_messages_acked", "Messages sent from here whose exit said COMPLETE"
            => "acked";
        /// Messages dropped after the end-to-end horizon.
        pub mix_messages_failed: Counter,
            "pluto2_mixnet_messages_failed",
            "Messages sent from here given up after the end-to-end horizon"
            => "e2e_failed";
        /// Rounds in which mail waited because no route could be built.
        pub mix_no_route: Counter,
            "pluto2_mixnet_no_route", "Rounds in which mail waited because no route could be built"
            => "no_route";
        pub mix_fragments_sent: Counter,
            "pluto2_mixnet_fragments_sent", "Fragments sent into the mixnet from this entry"
            => "fragments";
        pub mix_fragments_retransmitted: Counter,
            "pluto2_mixnet_fragments_retransmitted",
            "Fragments sent again because their acknowledgement did not come"
            => "retransmitted";
        /// Packets received on links (fog's `mix received`).
        pub mix_packets_in: Counter,
            "pluto2_mixnet_packets_received", "Packets received on links"
            => "packets_in";
        /// Packets handed to links (fog's `mix forwarded`; retries included).
        pub mix_packets_out: Counter,
            "pluto2_mixnet_packets_forwarded", "Packets handed to links, retries included"
            => "packets_out";
        /// Packets in custody here by kind, as the spool last said.
        mix_custody: Family<Label, Gauge> = family("kind", CUSTODY_KINDS),
            "pluto2_mixnet_custody_packets",
            "Packets in custody here until the next hop acknowledges them, by kind, read from the spool"
            => "packets_queued" by Stats::in_custody;
        let mix_refused: Family<Label, Counter>,
            "pluto2_mixnet_packets_refused",
            "Packets received and not kept, by reason: replay (known tag), rejected (bad MAC, version, delay, next hop), unknown_epoch, bad_payload";
        /// Packets whose replay tag was known.
        pub mix_replays: Counter = child(&mix_refused, "reason", "replay") => "mix_replays";
        /// Packets refused here: bad MAC, version, delay, next hop.
        pub mix_rejected: Counter = child(&mix_refused, "reason", "rejected") => "rejected";
        /// Packets the next hop refused.
        pub mix_rejected_by_peer: Counter,
            "pluto2_mixnet_packets_refused_by_peer", "Packets the next hop refused"
            => "rejected_by_peer";
        pub mix_unknown_epoch: Counter = child(&mix_refused, "reason", "unknown_epoch")
            => "unknown_epoch";
        /// Packets dropped when their custody horizon passed.
        pub mix_expired: Counter,
            "pluto2_mixnet_packets_expired",
            "Packets dropped when their custody horizon passed unacknowledged"
            => "expired";
        pub mix_bad_payloads: Counter = child(&mix_refused, "reason", "bad_payload")
            => "bad_payloads";
        let mix_exit: Family<Label, Counter>,
            "pluto2_mixnet_exit_messages",
            "Messages at this exit: completed (handed to delivery) or duplicate (arrived again, re-acknowledged)";
        /// Messages completed at this exit and handed to delivery.
        pub mix_exit_completions: Counter = child(&mix_exit, "outcome", "completed")
            => "exit_completed";
        /// Messages that arrived again after completion (re-acknowledged).
        pub mix_exit_duplicates: Counter = child(&mix_exit, "outcome", "duplicate")
            => "exit_duplicates";
        /// Usable other nodes now (shown over all other nodes).
        pub mix_healthy: Gauge,
            "pluto2_mixnet_peers_usable", "Other nodes with a working link now"
            => "healthy" by Stats::healthy;
        /// All other nodes in nodes.json.
        pub mix_nodes: Gauge, "pluto2_mixnet_peers", "Other nodes in nodes.json";
        /// The mix-key epoch now.
        pub mix_epoch: Gauge,
            "pluto2_mixnet_epoch", "The mix-key epoch now (unix time / params.epoch)"
            => "epoch";
        let loops: Family<Label, Counter>,
            "pluto2_mixnet_loops",
            "Loop cover packets by fate: sent, back (in time), lost (given up)";
        /// Loop cover sent, back in time, and given up as lost.
        pub mix_loops_sent: Counter = child(&loops, "fate", "sent") => "loops_sent";
        pub mix_loops_back: Counter = child(&loops, "fate", "back") => "loops_back";
        pub mix_loops_lost: Counter = child(&loops, "fate", "lost") => "loops_lost";
        let drops: Family<Label, Counter>,
            "pluto2_mixnet_drop_cover",
            "Drop cover packets sent from here, and received here as their last hop";
        /// Drop cover sent from here, and dropped here as its last hop.
        pub mix_drops_sent: Counter = child(&drops, "direction", "sent") => "drops_sent";
        pub mix_drops_received: Counter = child(&drops, "direction", "received")
            => "drops_received";
        /// Inbound link connections refused before any service, by why.
        link_refusals: Family<Label, Counter> = family("kind", LinkRefusal::ALL.map(LinkRefusal::label)),
            "pluto2_mixnet_link_refusals",
            "Inbound link connections refused before any service, by kind: no_slot (closed in its handshake to make room), version (another link protocol), params (another nodes.json), no_hello (the first frame was not a HELLO), slow_hello (no whole handshake in time), unlisted (the HELLO names no listed node), bad_proof (its signature does not verify with the key nodes.json pins)";
        /// Packets answered busy, by why (the previous hop keeps them).
        mix_busy: Family<Label, Counter> = family("why", BusyReason::ALL.map(BusyReason::label)),
            "pluto2_mixnet_custody_busy",
            "Packets answered busy (not kept now; the previous hop keeps and retries them), by why: free_space (under -min-free-space), cap (-custody-max reached), peer_cap (the previous hop holds its share of -custody-max)"
            => "custody_busy" by Stats::custody_busy;
        /// Bundles that showed a node signing two keys for one epoch.
        pub mix_two_faces: Counter,
            "pluto2_mixnet_two_faces",
            "Bundles showing a node signing two different mix keys for one epoch (the node is excluded)"
            => "two_faces";
        /// Messages sent from here waiting for their exit's COMPLETE.
        mix_awaiting_ack: Gauge,
            "pluto2_mixnet_awaiting_ack_messages",
            "Messages sent from here waiting for their exit's COMPLETE";
        /// Messages with some fragments stored at this exit.
        mix_exit_partial: Gauge,
            "pluto2_mixnet_exit_partial_messages", "Messages with some fragments stored at this exit";
        /// Messages accepted here that could never enter the mixnet,
        /// dropped at their first attempt, by code.
        mix_launch_dropped: Family<Label, Counter> = family("code", LAUNCH_DROP_CODES),
            "pluto2_mixnet_launch_dropped",
            "Messages accepted here and dropped because they can never enter the mixnet, by code: too_large (over what the network carries), fragment, packet (refused by the codec), internal (the build failed)"
            => "launch_dropped" by Stats::launch_dropped_total;
        /// The bytes those fragments hold (the exit's cap counts them).
        mix_exit_partial_bytes: Gauge,
            "pluto2_mixnet_exit_partial_bytes",
            "Bytes of fragments stored at this exit for messages not complete yet";
        let exit_fragments_refused: Family<Label, Counter>,
            "pluto2_mixnet_exit_fragments_refused",
            "Data fragments this exit did not keep, by reason: too_large (the message would pass the network's max_message_size, or a fragment is not shaped as split makes it), inconsistent (count, length or hash differ from its message's other fragments), full (partial messages at -exit-partial-bytes: busy, the previous hop retries)";
        /// Fragments refused by the network's size contract.
        pub mix_exit_too_large: Counter = child(&exit_fragments_refused, "reason", "too_large")
            => "exit_too_large";
        /// Fragments disagreeing with those of their message stored before.
        pub mix_exit_inconsistent: Counter =
            child(&exit_fragments_refused, "reason", "inconsistent") => "exit_inconsistent";
        /// Fragments answered busy: partial messages at their cap.
        pub mix_exit_full: Counter = child(&exit_fragments_refused, "reason", "full")
            => "exit_full";
        /// Replies held here (a gateway) for clients' mailboxes.
        pub mix_held_stored: Counter,
            "pluto2_mixnet_held_stored",
            "Replies stored at this gateway for a client's mailbox until the client fetches them";
        /// Replies held here for clients now, as the spool last said
        /// (`Stats::set_held`).
        mix_held_replies: Gauge,
            "pluto2_mixnet_held_replies", "Replies held here for clients, read from the spool"
            => "held_replies";
        /// Replies for clients' mailboxes not kept, by which cap.
        mix_held_dropped: Family<Label, Counter> = family("why", HoldDrop::ALL.map(HoldDrop::label)),
            "pluto2_mixnet_held_dropped",
            "Replies for a client's mailbox not kept (the previous hop is acknowledged; the client's retransmission recovers), by why: mailbox (its mailbox holds its cap of replies), total (the held bytes would pass their cap), mailboxes (a new mailbox past the cap on mailboxes), damaged (a held reply of the wrong size, deleted when its mailbox was fetched)"
            => "held_dropped" by Stats::held_dropped_total;
        /// Held replies handed to their clients (again after a lost
        /// confirmation).
        pub mix_held_fetched: Counter,
            "pluto2_mixnet_held_fetched",
            "Held replies handed to their client, counted again when handed again (a confirmation lost)";
        /// Held replies their clients confirmed: deleted.
        pub mix_held_confirmed: Counter,
            "pluto2_mixnet_held_confirmed",
            "Held replies their client confirmed, deleted";
        /// Held replies deleted with their idle mailbox.
        pub mix_held_expired: Counter,
            "pluto2_mixnet_held_expired",
            "Held replies deleted unfetched with their mailbox, idle past e2e_horizon + custody_horizon";
        /// Mailboxes holding replies and their bytes, as the spool last
        /// said (`Stats::set_held`).
        mix_held_mailboxes: Gauge,
            "pluto2_mixnet_held_mailboxes", "Clients' mailboxes holding replies here, read from the spool";
        mix_held_bytes: Gauge,
            "pluto2_mixnet_held_bytes", "Payload bytes of the replies held here for clients, read from the spool";
        /// A client's: replies fetched from its gateway (loops among them).
        pub mix_replies_fetched: Counter,
            "pluto2_mixnet_replies_fetched",
            "Replies this client fetched from its gateway's mailbox (acknowledgements and its own loops; again after a lost confirmation)"
            => "fetched";
        /// The pinger's view of each other node over the last day, read
        /// from the spool (`Stats::set_node_loops`): loops through it
        /// back and lost, their ratio, the median latency.
        node_loops: Declared<NodeLabels, Gauge>,
            "pluto2_mixnet_node_loops",
            "Loops sent from here through each other node (by short name) whose fate became known in the last 24 h, by fate: back, lost (a lost loop counts against every node on its route)";
        node_loop_success: Declared<NodeLabel, FloatGauge>,
            "pluto2_mixnet_node_loop_success_ratio",
            "Of the loops through each other node in the last 24 h, the share that came back: back / (back + lost); a lower bound of the node's own success, since a loss counts against every node on the route";
        node_loop_latency: Declared<NodeLabel, FloatGauge>,
            "pluto2_mixnet_node_loop_latency_median_seconds",
            "Median time from sending a loop to its return, hop delays included, of the loops through each other node that came back in the last 24 h";
    }
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
        let mut stats = Stats::build();
        if let Some(spool) = spool {
            stats.spool = Some(spool.reader());
            let times = spool.commit_times();
            stats.registry.register(
                "pluto2_spool_commit_seconds",
                "Time of the fsync'd COMMIT of one group of enqueued messages",
                times.enqueue,
            );
            stats.registry.register(
                "pluto2_spool_custody_commit_seconds",
                "Time of the fsync'd COMMIT of one group of mixnet custody decisions",
                times.custody,
            );
            stats.registry.register(
                "pluto2_spool_settle_commit_seconds",
                "Time of the fsync'd COMMIT of one group of settlements of packets sent on links (their ACKs)",
                times.settle,
            );
        }
        stats
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
        self.mix_exit_partial_bytes.set(m.exit_partial_bytes as i64);
        self.set_node_loops(&report.node_loops);
        self.queue_known.store(true, Ordering::Relaxed);
    }

    /// Takes each node's day (as the spool read it) into the per-node
    /// gauges. A node that left the day loses its series; the ratio
    /// appears with the first outcome, the median with the first loop
    /// back (a series is absent, never a made-up 0).
    fn set_node_loops(&self, nodes: &[NodeLoops]) {
        let mut shown = self.node_loops_shown.lock().unwrap();
        let node = |name: &str| [("node", name.to_string())];
        let fate =
            |name: &str, fate: &str| [("node", name.to_string()), ("fate", fate.to_string())];
        for gone in shown
            .iter()
            .filter(|s| !nodes.iter().any(|n| &n.node == *s))
        {
            self.node_loops.remove(&fate(gone, "back"));
            self.node_loops.remove(&fate(gone, "lost"));
            self.node_loop_success.remove(&node(gone));
            self.node_loop_latency.remove(&node(gone));
        }
        for n in nodes {
            let set = |family: &Family<NodeLabel, FloatGauge>, value: Option<f64>| match value {
                Some(v) => {
                    family.get_or_create(&node(&n.node)).set(v);
                }
                None => {
                    family.remove(&node(&n.node));
                }
            };
            self.node_loops
                .get_or_create(&fate(&n.node, "back"))
                .set(n.back.min(i64::MAX as u64) as i64);
            self.node_loops
                .get_or_create(&fate(&n.node, "lost"))
                .set(n.lost.min(i64::MAX as u64) as i64);
            set(&self.node_loop_success, n.success_ratio);
            set(&self.node_loop_latency, n.latency_median_seconds);
        }
        *shown = nodes.iter().map(|n| n.node.clone()).collect();
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

    /// A count read from the spool, or `?` when the last read failed.
    fn spool_count(&self, n: u64) -> String {
        if self.queue_known.load(Ordering::Relaxed) {
            n.to_string()
        } else {
            "?".to_string()
        }
    }

    /// `deferred=`: recipients waiting for a retry.
    fn deferred(&self) -> String {
        self.spool_count(self.queue_gauge("deferred"))
    }

    /// `queued=`: every recipient in the spool, whatever its state.
    fn waiting(&self) -> String {
        self.spool_count(QUEUE_STATES.iter().map(|s| self.queue_gauge(s)).sum())
    }

    /// `packets_queued=`: packets in custody, all kinds.
    fn in_custody(&self) -> String {
        let custody: i64 = CUSTODY_KINDS
            .iter()
            .map(|k| self.mix_custody.get_or_create(&[("kind", k)]).get())
            .sum();
        custody.max(0).to_string()
    }

    fn custody_busy(&self) -> String {
        BusyReason::ALL
            .iter()
            .map(|w| self.mix_busy.get_or_create(&[("why", w.label())]).get())
            .sum::<u64>()
            .to_string()
    }

    /// A packet was answered busy for `why`.
    pub fn custody_busy_for(&self, why: BusyReason) {
        self.mix_busy.get_or_create(&[("why", why.label())]).inc();
    }

    /// A reply for a client's mailbox was not kept for `why`.
    pub fn held_dropped_for(&self, why: HoldDrop) {
        self.mix_held_dropped
            .get_or_create(&[("why", why.label())])
            .inc();
    }

    /// `held_dropped=`: all reasons.
    fn held_dropped_total(&self) -> String {
        HoldDrop::ALL
            .iter()
            .map(|w| {
                self.mix_held_dropped
                    .get_or_create(&[("why", w.label())])
                    .get()
            })
            .sum::<u64>()
            .to_string()
    }

    /// Takes the spool's mailbox totals (`Spool::held_totals`) into the
    /// gauges.
    pub fn set_held(&self, totals: HeldTotals) {
        self.mix_held_mailboxes.set(totals.mailboxes as i64);
        self.mix_held_replies.set(totals.replies as i64);
        self.mix_held_bytes.set(totals.bytes as i64);
    }

    /// Counts a message the mixnet sender dropped because it can never
    /// enter the mixnet; `code` is one of [`LAUNCH_DROP_CODES`].
    pub fn launch_dropped(&self, code: &'static str) {
        self.mix_launch_dropped
            .get_or_create(&[("code", code)])
            .inc();
    }

    /// `launch_dropped=`: all codes.
    fn launch_dropped_total(&self) -> String {
        LAUNCH_DROP_CODES
            .iter()
            .map(|c| self.mix_launch_dropped.get_or_create(&[("code", c)]).get())
            .sum::<u64>()
            .to_string()
    }
    /// `healthy=usable/all` other nodes.
    fn healthy(&self) -> String {
        format!("{}/{}", self.mix_healthy.get(), self.mix_nodes.get())
    }

    /// One line, `key=value` pairs in a fixed order so scripts can parse
    /// it: the uptime, then the entries' fields (the mixnet ones only in
    /// mixnet mode; `direct` stays 0 there).
    pub fn line(&self, uptime: Duration) -> String {
        let uptime = humantime::format_duration(Duration::from_secs(uptime.as_secs()));
        let mut line = format!("[STATS] uptime={uptime}");
        for (key, value) in self.metric_fields() {
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
impl LinkEvents for Stats {
    fn refused(&self, refusal: LinkRefusal) {
        self.link_refusals
            .get_or_create(&[("kind", refusal.label())])
            .inc();
    }
}

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
            node_loops: Vec::new(),
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

    /// Scripts parse the line by key and position: the keys of both modes,
    /// in order, each once (the entry order of `metrics!` sets them).
    #[test]
    fn it_keeps_the_stats_keys_in_their_order() {
        let keys = |s: &Stats| -> Vec<String> {
            s.line(Duration::ZERO)
                .split(' ')
                .skip(1)
                .map(|kv| kv.split_once('=').unwrap().0.to_string())
                .collect()
        };
        let direct = [
            "uptime",
            "received",
            "sent",
            "failed",
            "deferred",
            "queued",
            "cover_sent",
            "cover_received",
            "batches",
            "replays",
            "cover_dropped",
            "cover_paused",
            "retries",
            "cover_delivered",
            "dest_blocked",
        ];
        let mixnet = [
            "sphinx",
            "direct",
            "acked",
            "e2e_failed",
            "no_route",
            "fragments",
            "retransmitted",
            "packets_in",
            "packets_out",
            "packets_queued",
            "mix_replays",
            "rejected",
            "rejected_by_peer",
            "unknown_epoch",
            "expired",
            "bad_payloads",
            "exit_completed",
            "exit_duplicates",
            "healthy",
            "epoch",
            "loops_sent",
            "loops_back",
            "loops_lost",
            "drops_sent",
            "drops_received",
            "custody_busy",
            "two_faces",
            "launch_dropped",
            "exit_too_large",
            "exit_inconsistent",
            "exit_full",
            "held_replies",
            "held_dropped",
            "fetched",
        ];
        let s = Stats::default();
        assert_eq!(keys(&s), direct);
        s.mixnet.store(true, Ordering::Relaxed);
        let all: Vec<&str> = direct.iter().chain(&mixnet).copied().collect();
        assert_eq!(keys(&s), all);
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
        assert!(
            line.ends_with(" exit_full=0 held_replies=0 held_dropped=0 fetched=0"),
            "{line}"
        );
        assert!(line.contains(" two_faces=0 launch_dropped=0 "), "{line}");
        s.launch_dropped("too_large");
        s.launch_dropped("too_large");
        s.launch_dropped("packet");
        let text = s.encode();
        assert!(
            text.contains("pluto2_mixnet_launch_dropped_total{code=\"too_large\"} 2"),
            "{text}"
        );
        assert!(s.line(Duration::ZERO).contains(" launch_dropped=3 "));
    }

    /// A gateway's drops are counted by cap, each in its own series and
    /// all in `held_dropped`; the totals the spool reports reach the
    /// gauges and `held_replies`.
    #[test]
    fn it_counts_held_replies_and_their_drops_by_why() {
        let s = Stats::default();
        s.mixnet.store(true, Ordering::Relaxed);
        s.held_dropped_for(HoldDrop::Mailbox);
        s.held_dropped_for(HoldDrop::Mailbox);
        s.held_dropped_for(HoldDrop::Mailboxes);
        Stats::add(&s.mix_held_stored, 4);
        Stats::add(&s.mix_held_fetched, 3);
        Stats::add(&s.mix_held_confirmed, 2);
        Stats::add(&s.mix_held_expired, 1);
        s.set_held(HeldTotals {
            mailboxes: 1,
            replies: 2,
            bytes: 300,
        });
        let text = s.encode();
        for expected in [
            "pluto2_mixnet_held_dropped_total{why=\"mailbox\"} 2",
            "pluto2_mixnet_held_dropped_total{why=\"total\"} 0",
            "pluto2_mixnet_held_dropped_total{why=\"mailboxes\"} 1",
            "pluto2_mixnet_held_stored_total 4",
            "pluto2_mixnet_held_fetched_total 3",
            "pluto2_mixnet_held_confirmed_total 2",
            "pluto2_mixnet_held_expired_total 1",
            "pluto2_mixnet_held_mailboxes 1",
            "pluto2_mixnet_held_replies 2",
            "pluto2_mixnet_held_bytes 300",
        ] {
            assert!(text.contains(expected), "no {expected:?} in\n{text}");
        }
        let line = s.line(Duration::ZERO);
        assert!(
            line.ends_with(" held_replies=2 held_dropped=3 fetched=0"),
            "{line}"
        );
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

    /// The pinger's day reaches per-node series from the spool's report:
    /// declared (HELP and TYPE) before any loop, counts for every node,
    /// a ratio from the first outcome, a median from the first loop
    /// back, and a node that left the day loses its series.
    #[test]
    fn it_shows_each_nodes_day_and_forgets_nodes_that_left_it() {
        let s = Stats::default();
        s.mixnet.store(true, Ordering::Relaxed);
        let text = s.encode();
        for family in [
            "pluto2_mixnet_node_loops gauge",
            "pluto2_mixnet_node_loop_success_ratio gauge",
            "pluto2_mixnet_node_loop_latency_median_seconds gauge",
        ] {
            assert!(text.contains(&format!("# TYPE {family}")), "{text}");
        }
        let node = |name: &str, back, lost, ratio, median| NodeLoops {
            node: name.into(),
            back,
            lost,
            success_ratio: ratio,
            latency_median_seconds: median,
        };
        let mut r = report(0, 0, 0);
        r.node_loops = vec![
            node("bob", 3, 1, Some(0.75), Some(1.5)),
            node("carol", 0, 2, Some(0.0), None),
        ];
        s.set_queue(&r);
        let text = s.encode();
        for expected in [
            "pluto2_mixnet_node_loops{node=\"bob\",fate=\"back\"} 3",
            "pluto2_mixnet_node_loops{node=\"bob\",fate=\"lost\"} 1",
            "pluto2_mixnet_node_loops{node=\"carol\",fate=\"lost\"} 2",
            "pluto2_mixnet_node_loop_success_ratio{node=\"bob\"} 0.75",
            "pluto2_mixnet_node_loop_success_ratio{node=\"carol\"} 0.0",
            "pluto2_mixnet_node_loop_latency_median_seconds{node=\"bob\"} 1.5",
        ] {
            assert!(text.contains(expected), "no {expected:?} in\n{text}");
        }
        assert!(
            !text.contains("pluto2_mixnet_node_loop_latency_median_seconds{node=\"carol\"}"),
            "{text}"
        );
        r.node_loops = vec![node("carol", 1, 2, Some(1.0 / 3.0), Some(0.25))];
        s.set_queue(&r);
        let text = s.encode();
        assert!(!text.contains("node=\"bob\""), "{text}");
        assert!(
            text.contains("pluto2_mixnet_node_loop_latency_median_seconds{node=\"carol\"} 0.25"),
            "{text}"
        );
        // Direct mode shows none of it.
        s.mixnet.store(false, Ordering::Relaxed);
        assert!(!s.encode().contains("pluto2_mixnet_node_"));
    }
}
