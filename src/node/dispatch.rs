//! The dispatcher: one task leases due work from the spool and runs up to
//! `-workers` deliveries at once, then settles each outcome (delivered,
//! dropped, or retried at a time the mix chooses).
//!
//! It is node policy, not transport: it decides *when* and *whether* to try
//! again; the transport behind [`Deliver`] only attempts one delivery.
//!
//! The dispatcher sleeps until new mail is committed, the earliest retry
//! falls due, or a worker frees up; it never polls in a tight loop. Each
//! delivery is bounded by `-delivery-timeout` inside the SMTP client, and
//! the lease outlives that bound, so a stalled server cannot stall the pool
//! and an expired lease cannot cause a parallel duplicate.

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

use super::retry::RetryPolicy;
use crate::BoxFuture;
use crate::mix::MixPolicy;
use crate::relay::client::RecipientResult;
use crate::relay::route::Router;
use crate::spool::{Disposition, Lease, Spool};
use crate::stats::Stats;
use crate::time::Clock;

/// Longest the dispatcher sleeps without checking the spool, covering
/// leases that expire and clocks that jump.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// One delivery attempt for one lease: a result per recipient, in lease
/// order. The relay's [`Router`] in production; a fake in tests.
pub trait Deliver: Send + Sync {
    fn deliver<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Vec<RecipientResult>>;
}

impl Deliver for Router {
    fn deliver<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Vec<RecipientResult>> {
        Box::pin(Router::deliver(self, lease))
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
}

impl Dispatcher {
    /// Runs until `shutdown`; deliveries in flight are abandoned at
    /// shutdown and their leases released at the next start (at-least-once).
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.workers));
        // Signalled when a worker has settled its lease: a retry time may now
        // be earlier than what the dispatcher is sleeping towards.
        let settled = Arc::new(Notify::new());
        let tracker = TaskTracker::new();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let want = 1 + permits.available_permits();
            let batch = match this.spool.lease(want, this.lease).await {
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
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = this.spool.new_mail() => {}
                    _ = settled.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
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
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = this.handle(lease) => settled.notify_one(),
                    }
                    drop(permit);
                });
            }
        }
        tracker.close();
        tracker.wait().await;
        debug!("[RELAY] pool stopped");
    }

    async fn handle(&self, lease: Lease) {
        let results = self.transport.deliver(&lease).await;
        let mut rng = StdRng::from_os_rng();
        let now = (self.clock)();
        let (mut delivered, mut dropped, mut deferred) = (0, 0, 0);
        let outcomes: Vec<(i64, Disposition)> = lease
            .recipients
            .iter()
            .zip(results)
            .map(|(r, result)| {
                let d = match result {
                    RecipientResult::Delivered => Disposition::Delivered,
                    RecipientResult::Failed(f) if f.is_permanent() => Disposition::Dropped,
                    RecipientResult::Failed(_) => match self.retry.next_delay(r.attempts, &mut rng)
                    {
                        Some(delay) => Disposition::Retry {
                            at: self
                                .mix
                                .release_at(now + delay.as_millis() as u64, &mut rng),
                        },
                        None => Disposition::Dropped,
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
        Stats::add(&self.stats.sent, delivered);
        Stats::add(&self.stats.failed, dropped);
        Stats::add(&self.stats.deferred, deferred);
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
