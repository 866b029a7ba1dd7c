//! The dispatcher: one task leases due work from the spool and runs up to
//! `-workers` deliveries at once, then settles each outcome (delivered,
//! dropped, or retried at a time the mix chooses).
//!
//! It is node policy, not transport: it decides *when* and *whether* to try
//! again; the transport behind [`Deliver`] only attempts one delivery.
//!
//! The dispatcher sleeps until new mail is committed, the earliest retry
//! falls due, a worker frees up, or another process changed the spool
//! (`pluto2 queue flush`, `release`, …: seen through SQLite's
//! `data_version`, asked every [`OUTSIDE_CHANGE_INTERVAL`]); it never polls
//! in a tight loop. Each
//! SMTP dialogue is bounded by `-delivery-timeout` inside the client, and
//! a whole delivery (MX lookup and every host) by four fifths of the lease
//! here, so a stalled server cannot stall the pool and an expired lease
//! cannot cause a parallel duplicate. At shutdown, a delivery that already
//! sent its message gets a short grace to read the answer and settle it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::mail_cover::CoverKey;
use super::retry::RetryPolicy;
use crate::BoxFuture;
use crate::node::egress::Stamper;
use crate::relay::client::RecipientResult;
use crate::relay::failure::{Failure, FailureKind};
use crate::relay::route::Router;
use crate::release::MixPolicy;
use crate::spool::{Disposition, Lease, LeaseScope, Spool};
use crate::stats::{Stats, Undelivered};
use crate::time::Clock;

/// Longest the dispatcher sleeps without checking the spool, covering
/// leases that expire and clocks that jump.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// How often an idle dispatcher asks the spool whether another process
/// committed (`PRAGMA data_version` on the writer's connection, which reads
/// no table): short enough that `pluto2 queue flush` or `release` is acted
/// on within a second, as an operator expects, not at the next retry time.
/// The `queue` commands reach the daemon only through the spool (no socket,
/// no signal), so this is how it learns of them.
pub const OUTSIDE_CHANGE_INTERVAL: Duration = Duration::from_millis(250);

/// How long a delivery that already sent its message may still run after
/// shutdown began, to read the next hop's answer and settle it. Cancelled
/// instead, a delivery the next hop accepted would be made again after the
/// restart.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// One delivery attempt for one lease: a result per recipient, in lease
/// order. The relay's [`Router`] in production; a fake in tests. The
/// transport sets `sent_message` once the message itself went out (the
/// dispatcher then lets it finish at shutdown).
pub trait Deliver: Send + Sync {
    fn deliver<'a>(
        &'a self,
        lease: &'a Lease,
        sent_message: &'a AtomicBool,
    ) -> BoxFuture<'a, Vec<RecipientResult>>;
}

impl Deliver for Router {
    fn deliver<'a>(
        &'a self,
        lease: &'a Lease,
        sent_message: &'a AtomicBool,
    ) -> BoxFuture<'a, Vec<RecipientResult>> {
        Box::pin(Router::deliver(self, lease, sent_message))
    }
}

/// Whether deliveries are failing because Tor itself cannot be used,
/// shared by the dispatcher (which sets it from delivery outcomes) and the
/// cover generator (which pauses while it is set). Cover made during an
/// outage would pile up in the spool and leave in a burst on recovery,
/// which would make the recovery, and so the cover, visible.
#[derive(Debug, Default)]
pub struct DeliveryHealth {
    outage: AtomicBool,
}

impl DeliveryHealth {
    pub fn in_outage(&self) -> bool {
        self.outage.load(Ordering::Relaxed)
    }

    /// Records one delivery's outcome: any recipient delivered clears the
    /// outage; every recipient failing because the proxy cannot be used
    /// sets it; anything else (a next hop's refusal) says nothing about Tor.
    pub(crate) fn record(&self, results: &[RecipientResult]) {
        if results.contains(&RecipientResult::Delivered) {
            if self.outage.swap(false, Ordering::Relaxed) {
                info!("[RELAY] deliveries succeed again: cover traffic resumes");
            }
        } else if !results.is_empty()
            && results.iter().all(|r| {
                matches!(r, RecipientResult::Failed(f)
                    if !f.is_permanent() && matches!(f.kind, FailureKind::Proxy(_)))
            })
            && !self.outage.swap(true, Ordering::Relaxed)
        {
            warn!("[RELAY] the Tor SOCKS proxy cannot be used: cover traffic pauses");
        }
    }
}

pub struct Dispatcher {
    pub spool: Spool,
    pub transport: Arc<dyn Deliver>,
    pub retry: RetryPolicy,
    /// Retries re-enter the mix, so a retried message does not leave alone
    /// at a time an observer could predict from the failure.
    pub mix: MixPolicy,
    pub workers: usize,
    pub stats: Arc<Stats>,
    /// How long a leased recipient is reserved for its worker.
    pub lease: Duration,
    /// Where "now" comes from for retry times and sleeps (the spool's
    /// clock; injected for tests).
    pub clock: Clock,
    /// Which mail it may deliver: all of it in direct mode, only mail that
    /// left the mixnet here in mixnet mode.
    pub scope: LeaseScope,
    /// Recognises our own cover, which is dropped on its first failure:
    /// a retried cover message would leave later on top of the normal
    /// stream.
    pub cover_key: CoverKey,
    /// Set and cleared from delivery outcomes; read by the cover generator.
    pub health: Arc<DeliveryHealth>,
    /// Questions from the systemd watchdog (`daemon::notify`): the loop
    /// answers each where it waits, so an answer proves it still turns.
    /// `None` when nobody asks.
    pub pings: Option<mpsc::Receiver<Ping>>,
    /// Mints hashcash stamps before a delivery (`-hashcash-bits`); `None`
    /// when off.
    pub stamper: Option<Arc<Stamper>>,
}

/// One watchdog question: the dispatcher loop answers by sending `()`.
pub type Ping = oneshot::Sender<()>;

/// The next watchdog question, or never when nobody asks (or the asker is
/// gone).
async fn next_ping(pings: &mut Option<mpsc::Receiver<Ping>>) -> Ping {
    match pings {
        Some(rx) => match rx.recv().await {
            Some(ping) => ping,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl Dispatcher {
    /// Runs until `shutdown`. Deliveries in flight that have not sent their
    /// message yet are abandoned at shutdown and their leases released at
    /// the next start (at-least-once); those that have get
    /// [`SHUTDOWN_GRACE`] to finish and settle.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut pings = self.pings.take();
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.workers));
        // Signalled when a worker has settled its lease: a retry time may now
        // be earlier than what the dispatcher is sleeping towards.
        let settled = Arc::new(Notify::new());
        let tracker = TaskTracker::new();
        let mut outside = OutsideWatch::default();
        outside.look(&this.spool).await;
        'dispatch: loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                ping = next_ping(&mut pings) => {
                    let _ = ping.send(());
                    continue;
                }
            };
            let want = 1 + permits.available_permits();
            let batch = match this.spool.lease_scoped(want, this.lease, this.scope).await {
                Ok(b) => b,
                Err(e) => {
                    error!("[RELAY] cannot lease from the spool: {e}");
                    drop(first);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if batch.leases.is_empty() {
                drop(first);
                let wait = batch
                    .next_due
                    .map(|due| Duration::from_millis(due.saturating_sub((this.clock)())))
                    .unwrap_or(MAX_IDLE)
                    .min(MAX_IDLE);
                let sleep = tokio::time::sleep(wait);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'dispatch,
                        _ = this.spool.new_mail() => break,
                        _ = settled.notified() => break,
                        _ = outside.changed(&this.spool) => break,
                        _ = &mut sleep => break,
                        ping = next_ping(&mut pings) => {
                            let _ = ping.send(());
                        }
                    }
                }
                continue;
            }
            Stats::add(&this.stats.batches, 1);
            let mut first = Some(first);
            for lease in batch.leases {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match permits.clone().try_acquire_owned() {
                        Ok(p) => p,
                        // Only the dispatcher takes permits, so this cannot
                        // happen; the lease would expire and be retried.
                        Err(_) => break,
                    },
                };
                let this = this.clone();
                let stop = shutdown.clone();
                let settled = settled.clone();
                tracker.spawn(async move {
                    let sent_message = AtomicBool::new(false);
                    let work = this.handle(lease, &sent_message);
                    tokio::pin!(work);
                    tokio::select! {
                        _ = &mut work => settled.notify_one(),
                        _ = stop.cancelled() => {
                            if sent_message.load(Ordering::SeqCst) {
                                let _ = tokio::time::timeout(SHUTDOWN_GRACE, work).await;
                            }
                        }
                    }
                    drop(permit);
                });
            }
        }
        tracker.close();
        tracker.wait().await;
        debug!("[RELAY] pool stopped");
    }

    /// The bound on one whole delivery (MX lookup and every host): well
    /// below the lease, so the lease cannot run out while the delivery
    /// still runs and hand the same recipients to a second worker.
    fn delivery_bound(&self) -> Duration {
        self.lease - self.lease / 5
    }

    async fn handle(&self, mut lease: Lease, sent_message: &AtomicBool) {
        let cover = self.cover_key.is_cover(&lease.body);
        // Minting counts against the bound on the delivery, so a slow
        // stamp cannot outlast the lease.
        let delivery = async {
            if let Some(stamper) = &self.stamper
                && !cover
            {
                let recipients: Vec<String> =
                    lease.recipients.iter().map(|r| r.address.clone()).collect();
                let body = std::mem::take(&mut lease.body);
                lease.body = stamper
                    .stamp(body, &recipients, std::time::SystemTime::now())
                    .await;
            }
            self.transport.deliver(&lease, sent_message).await
        };
        let results = match tokio::time::timeout(self.delivery_bound(), delivery).await {
            Ok(results) => results,
            Err(_) => {
                let f = Failure::temporary(FailureKind::Deadline);
                vec![RecipientResult::Failed(f); lease.recipients.len()]
            }
        };
        let mut rng = StdRng::from_os_rng();
        let now = (self.clock)();
        self.health.record(&results);
        let (mut delivered, mut dropped, mut deferred) = (0, 0, 0);
        let mut notes = OutcomeNotes::default();
        let outcomes: Vec<(i64, Disposition)> = lease
            .recipients
            .iter()
            .zip(results)
            .map(|(r, result)| {
                let d = match &result {
                    RecipientResult::Delivered => Disposition::Delivered,
                    RecipientResult::Failed(_) if cover => {
                        Stats::add(&self.stats.cover_dropped, 1);
                        Disposition::Dropped
                    }
                    RecipientResult::Failed(f) if f.is_permanent() => {
                        notes.add(Note::Dropped, f);
                        self.stats.undelivered(Undelivered::Dropped, f.class());
                        Disposition::Dropped
                    }
                    RecipientResult::Failed(f) => match self.retry.next_delay(r.attempts, &mut rng)
                    {
                        Some(delay) => {
                            notes.add(Note::Retry, f);
                            self.stats.undelivered(Undelivered::Retry, f.class());
                            Disposition::Retry {
                                at: self
                                    .mix
                                    .release_at(now + delay.as_millis() as u64, &mut rng),
                            }
                        }
                        None => {
                            notes.add(Note::GaveUp, f);
                            self.stats.undelivered(Undelivered::GaveUp, f.class());
                            Disposition::Dropped
                        }
                    },
                };
                match d {
                    Disposition::Delivered => delivered += 1,
                    Disposition::Dropped => dropped += 1,
                    Disposition::Retry { .. } => deferred += 1,
                }
                (r.id, d)
            })
            .collect();
        // Cover is not mail: it has its own counters, so `sent` and
        // `failed` count real recipients only (failures were counted above).
        if cover {
            Stats::add(&self.stats.cover_delivered, delivered);
        } else {
            Stats::add(&self.stats.sent, delivered);
            if lease.mix_id.is_none() {
                Stats::add(&self.stats.direct, delivered);
            }
        }
        notes.log(destination_kind(&lease.domain), self.retry.max_attempts);
        // Per-delivery outcomes with their timestamps would be per-message
        // timing: only with -debug. The [STATS] line carries the totals.
        debug!("[RELAY] {delivered} delivered, {deferred} deferred, {dropped} dropped");
        if let Err(e) = self.spool.settle(outcomes).await {
            // The lease expires and the recipients are tried again:
            // a duplicate is possible, a loss is not.
            error!("[RELAY] cannot record delivery results: {e}");
        }
    }
}

/// What the dispatcher last saw of commits made by other processes.
#[derive(Debug, Default)]
struct OutsideWatch {
    version: Option<i64>,
    deleted: Option<u64>,
}

impl OutsideWatch {
    /// Resolves once another connection has committed since the last look
    /// (the first look only sets the baseline). Cancel-safe: what it saw
    /// is kept, so a change made while the dispatcher was busy is noticed
    /// at the next idle wait.
    async fn changed(&mut self, spool: &Spool) {
        loop {
            tokio::time::sleep(OUTSIDE_CHANGE_INTERVAL).await;
            if self.look(spool).await {
                return;
            }
        }
    }

    /// True if the spool's `data_version` moved since the last look; then
    /// logs deletions by the operator (their count: the `queue delete`
    /// command itself logged their ids), so that the daemon's log, not only
    /// the operator's terminal, records every drop.
    async fn look(&mut self, spool: &Spool) -> bool {
        let Ok(version) = spool.data_version().await else {
            return false;
        };
        let moved = self.version.replace(version).is_some_and(|v| v != version);
        if (moved || self.deleted.is_none())
            && let Ok(deleted) = spool.deleted_by_operator().await
            && let Some(before) = self.deleted.replace(deleted)
            && deleted > before
        {
            info!(
                "[QUEUE] {} message(s) deleted by the operator [class=operator]",
                deleted - before
            );
        }
        moved
    }
}

/// What became of a recipient that was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Note {
    /// A permanent failure: the recipient leaves the spool.
    Dropped,
    /// A temporary failure with attempts left.
    Retry,
    /// A temporary failure on the last allowed attempt.
    GaveUp,
}

/// The drops and retries of one delivery, grouped by failure, so that a
/// refusal of many recipients of one message makes one line, not one per
/// recipient. What a line holds is the failure's class, stage and codes
/// (never an address or server text: see `relay::failure`), so the
/// operator sees why mail did not leave without `-debug`, as the README
/// promises.
#[derive(Default)]
struct OutcomeNotes(Vec<(Note, Failure, usize)>);

impl OutcomeNotes {
    fn add(&mut self, note: Note, failure: &Failure) {
        match self
            .0
            .iter_mut()
            .find(|(n, f, _)| *n == note && f == failure)
        {
            Some((_, _, count)) => *count += 1,
            None => self.0.push((note, failure.clone(), 1)),
        }
    }

    fn log(&self, destination: &str, max_attempts: u32) {
        for (note, failure, count) in &self.0 {
            let class = failure.class();
            match note {
                Note::Dropped => info!(
                    "[RELAY] dropped {count} recipient(s) ({destination}): {failure} [class={class}]"
                ),
                Note::Retry => info!(
                    "[RELAY] will retry {count} recipient(s) ({destination}): {failure} [class={class}]"
                ),
                Note::GaveUp => info!(
                    "[RELAY] dropped {count} recipient(s) ({destination}) after {max_attempts} attempts: {failure} [class={class}]"
                ),
            }
        }
    }
}

/// Onion or clearnet: how much of the destination a log line may say.
fn destination_kind(domain: &str) -> &'static str {
    if domain.ends_with(".onion") {
        "onion"
    } else {
        "clearnet"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::*;
    use crate::envelope::{EnqueueOutcome, Envelope, Message};
    use crate::node::intake::Intake;
    use crate::node::mail_cover::CoverKey;
    use crate::relay::failure::Stage;
    use crate::time::UnixMillis;

    const BASE: UnixMillis = 1_700_000_000_000;
    const WINDOW: u64 = 30_000;

    /// A transport that fails every recipient's first attempt and accepts
    /// the second, reporting each attempt with the clock time it began.
    struct FlakyTransport {
        clock: Clock,
        attempts: mpsc::Sender<(UnixMillis, u32)>,
        seen: Mutex<u32>,
    }

    impl Deliver for FlakyTransport {
        fn deliver<'a>(
            &'a self,
            lease: &'a Lease,
            _sent_message: &'a AtomicBool,
        ) -> BoxFuture<'a, Vec<RecipientResult>> {
            let at = (self.clock)();
            *self.seen.lock().unwrap() += 1;
            let results = lease
                .recipients
                .iter()
                .map(|r| match r.attempts {
                    0 => RecipientResult::Failed(Failure::temporary(FailureKind::Reply {
                        stage: Stage::Rcpt,
                        code: 451,
                        enhanced: None,
                    })),
                    _ => RecipientResult::Delivered,
                })
                .collect();
            let attempt = lease.recipients[0].attempts;
            Box::pin(async move {
                self.attempts.send((at, attempt)).await.unwrap();
                results
            })
        }
    }

    /// A dispatcher over `spool` with the tests' defaults (immediate mix,
    /// two workers, a 10-minute lease, 3 attempts a minute apart); each test
    /// overrides what it is about.
    fn test_dispatcher(
        spool: &Spool,
        clock: &Clock,
        transport: Arc<dyn Deliver>,
        stats: &Arc<Stats>,
    ) -> Dispatcher {
        Dispatcher {
            spool: spool.clone(),
            transport,
            retry: RetryPolicy {
                base: Duration::from_secs(60),
                max_attempts: 3,
            },
            mix: MixPolicy::Immediate,
            workers: 2,
            stats: stats.clone(),
            lease: Duration::from_secs(600),
            clock: clock.clone(),
            scope: LeaseScope::All,
            cover_key: CoverKey::from_bytes([4; 32]),
            health: Arc::default(),
            pings: None,
            stamper: None,
        }
    }

    fn mail(i: usize) -> Message {
        Message {
            envelope: Envelope {
                sender: String::new(),
                recipients: vec![format!("r{i}@example.org")],
                smtputf8: false,
                eight_bit: false,
                to_own_name: false,
            },
            body: format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes(),
        }
    }

    /// On paused time, with the spool's clock following tokio's: nothing is
    /// delivered before its batch window ends, and a retry re-enters the
    /// mix (it leaves at a window end plus jitter, not at failure time plus
    /// backoff, which would make it linkable to the failure).
    #[tokio::test(start_paused = true)]
    async fn it_delivers_after_the_window_and_retries_through_the_mix() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::testkit::tokio_clock(BASE + 1_234);
        let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, clock.clone()).unwrap();
        let mix = MixPolicy::Batch {
            window: Duration::from_millis(WINDOW),
            jitter_min: Duration::from_millis(100),
            jitter_max: Duration::from_secs(2),
        };
        let stats = Arc::new(Stats::default());
        let intake = Intake::for_tests(spool.clone(), mix.clone(), clock.clone(), stats.clone());
        const N: usize = 5;
        for i in 0..N {
            assert_eq!(intake.ingest(mail(i)).await, EnqueueOutcome::Queued);
        }
        let (tx, mut rx) = mpsc::channel(4 * N);
        let transport = Arc::new(FlakyTransport {
            clock: clock.clone(),
            attempts: tx,
            seen: Mutex::new(0),
        });
        let dispatcher = Dispatcher {
            mix,
            workers: N,
            ..test_dispatcher(&spool, &clock, transport.clone(), &stats)
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(dispatcher.run(stop.clone()));

        let first_window_end = (BASE + 1_234) / WINDOW * WINDOW + WINDOW;
        let mut firsts = Vec::new();
        let mut retries = Vec::new();
        while firsts.len() + retries.len() < 2 * N {
            let (at, attempt) = rx.recv().await.unwrap();
            if attempt == 0 {
                firsts.push(at)
            } else {
                retries.push(at)
            }
        }
        for &at in &firsts {
            assert!(
                (first_window_end + 100..=first_window_end + 2_000).contains(&at),
                "first attempt at {at}, window ends {first_window_end}"
            );
        }
        let latest_first = *firsts.iter().max().unwrap();
        for &at in &retries {
            // Backoff is at least base/2 = 30 s, then the mix adds the rest
            // of a window and a jitter.
            assert!(at >= latest_first - 2_000 + 30_000, "retry at {at}");
            assert!(
                (100..=2_000).contains(&(at % WINDOW)),
                "retry at {at} is not a window end plus jitter"
            );
        }
        assert_eq!(*transport.seen.lock().unwrap(), 2 * N as u32);
        assert_eq!(Stats::get(&stats.sent), N as u64);
        stop.cancel();
        task.await.unwrap();
        drop((intake, spool));
        closer.closed().await;
    }

    /// A transport whose deliveries never end; it records how many run at
    /// once (a delivery's future is dropped when it is cut off).
    struct Hanging {
        running: Arc<std::sync::atomic::AtomicUsize>,
        most: Arc<std::sync::atomic::AtomicUsize>,
        started: mpsc::Sender<()>,
    }

    struct Running(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Deliver for Hanging {
        fn deliver<'a>(
            &'a self,
            _lease: &'a Lease,
            _sent_message: &'a AtomicBool,
        ) -> BoxFuture<'a, Vec<RecipientResult>> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let guard = Running(self.running.clone());
            Box::pin(async move {
                let _guard = guard;
                self.started.send(()).await.unwrap();
                std::future::pending().await
            })
        }
    }

    /// On paused time: a delivery that never ends is cut off below its
    /// lease, so the recipient is never leased to a second worker while
    /// the first still runs, and it is retried and finally dropped.
    #[tokio::test(start_paused = true)]
    async fn it_ends_a_delivery_before_its_lease_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::testkit::tokio_clock(BASE);
        let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, clock.clone()).unwrap();
        let stats = Arc::new(Stats::default());
        let intake = Intake::for_tests(
            spool.clone(),
            MixPolicy::Immediate,
            clock.clone(),
            stats.clone(),
        );
        assert_eq!(intake.ingest(mail(0)).await, EnqueueOutcome::Queued);
        let (tx, mut rx) = mpsc::channel(8);
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let transport = Arc::new(Hanging {
            running: Arc::default(),
            most: most.clone(),
            started: tx,
        });
        let dispatcher = Dispatcher {
            retry: RetryPolicy {
                base: Duration::from_secs(1),
                max_attempts: 3,
            },
            workers: 4,
            lease: Duration::from_secs(100),
            ..test_dispatcher(&spool, &clock, transport, &stats)
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(dispatcher.run(stop.clone()));
        for _ in 0..3 {
            rx.recv().await.unwrap();
        }
        // The third attempt is the last: once it is cut off, the recipient
        // is dropped.
        // Virtual time must run (the cut-off is a timer), and it may run
        // ahead while the spool's thread settles: bound the wait in real
        // time, not in a count of virtual seconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while Stats::get(&stats.failed) != 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(
            Stats::get(&stats.failed),
            1,
            "dropped after the last attempt"
        );
        assert_eq!(
            most.load(Ordering::SeqCst),
            1,
            "two deliveries of one lease at once"
        );
        assert_eq!(Stats::get(&stats.retries), 2);
        stop.cancel();
        task.await.unwrap();
        drop((intake, spool));
        closer.closed().await;
    }

    /// A transport behind a dead Tor: every attempt fails at the proxy.
    struct TorDown {
        attempts: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Deliver for TorDown {
        fn deliver<'a>(
            &'a self,
            lease: &'a Lease,
            _sent_message: &'a AtomicBool,
        ) -> BoxFuture<'a, Vec<RecipientResult>> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let f = Failure::temporary(FailureKind::Proxy(
                crate::relay::failure::ProxyProblem::Unreachable(
                    std::io::ErrorKind::ConnectionRefused,
                ),
            ));
            let n = lease.recipients.len();
            Box::pin(async move { vec![RecipientResult::Failed(f); n] })
        }
    }

    /// On paused time: cover that fails is dropped at once (counted), real
    /// mail that fails the same way is kept for a retry, and the failures
    /// mark an outage.
    #[tokio::test(start_paused = true)]
    async fn it_drops_failed_cover_at_once_and_marks_the_outage() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::testkit::tokio_clock(BASE);
        let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, clock.clone()).unwrap();
        let key = CoverKey::from_bytes([4; 32]);
        let own = crate::address::OnionName::from_seed(1);
        let mut rng = StdRng::seed_from_u64(1);
        let cover = crate::node::mail_cover::make_message(&key, &own, &mut rng);
        assert_eq!(spool.enqueue(cover, BASE).await, EnqueueOutcome::Queued);
        assert_eq!(spool.enqueue(mail(1), BASE).await, EnqueueOutcome::Queued);
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stats = Arc::new(Stats::default());
        let health = Arc::new(DeliveryHealth::default());
        let transport = Arc::new(TorDown {
            attempts: attempts.clone(),
        });
        let dispatcher = Dispatcher {
            retry: RetryPolicy {
                base: Duration::from_secs(3600),
                max_attempts: 9,
            },
            cover_key: key,
            health: health.clone(),
            ..test_dispatcher(&spool, &clock, transport, &stats)
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(dispatcher.run(stop.clone()));
        // Wait for both settles without a timer of our own: while the
        // spool's thread works, a pending test timer would let paused time
        // jump ahead of it. Yielding keeps the runtime busy, so virtual time
        // stands still until the outcome is recorded (bounded in real time).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !(Stats::get(&stats.cover_dropped) == 1 && Stats::get(&stats.retries) == 1) {
            assert!(
                std::time::Instant::now() < deadline,
                "attempts {}, cover dropped {}, retries {}",
                attempts.load(Ordering::SeqCst),
                Stats::get(&stats.cover_dropped),
                Stats::get(&stats.retries)
            );
            tokio::task::yield_now().await;
        }
        // A minute later (the first retry is at least 30 min away): nothing
        // more was attempted.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert_eq!(Stats::get(&stats.cover_dropped), 1, "cover dropped");
        assert_eq!(Stats::get(&stats.retries), 1, "real mail kept");
        assert_eq!(Stats::get(&stats.failed), 0);
        assert!(health.in_outage());
        stop.cancel();
        task.await.unwrap();
        drop(spool);
        closer.closed().await;
    }

    /// Asks the loop once and waits for its answer (real time: the spool's
    /// thread does real work, which paused time would skip past).
    async fn answered(pings: &mpsc::Sender<Ping>) -> bool {
        let (reply, answer) = oneshot::channel();
        pings.send(reply).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .is_ok_and(|a| a.is_ok())
    }

    /// The systemd watchdog's question reaches the loop wherever it waits:
    /// idle (no mail) and with every worker busy on a delivery that hangs.
    #[tokio::test]
    async fn it_answers_watchdog_pings_while_idle_and_while_every_worker_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::time::system_clock();
        let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, clock.clone()).unwrap();
        let (started_tx, mut started) = mpsc::channel(4);
        let transport = Arc::new(Hanging {
            running: Arc::default(),
            most: Arc::default(),
            started: started_tx,
        });
        let stats = Arc::new(Stats::default());
        let (pings, rx) = mpsc::channel(1);
        let dispatcher = Dispatcher {
            workers: 1,
            pings: Some(rx),
            stamper: None,
            ..test_dispatcher(&spool, &clock, transport, &stats)
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(dispatcher.run(stop.clone()));
        assert!(answered(&pings).await, "idle loop did not answer");
        assert_eq!(
            spool.enqueue(mail(1), clock()).await,
            crate::envelope::EnqueueOutcome::Queued
        );
        started.recv().await.unwrap();
        assert!(answered(&pings).await, "busy loop did not answer");
        stop.cancel();
        task.await.unwrap();
        drop(spool);
        closer.closed().await;
    }
}
