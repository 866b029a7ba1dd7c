//! systemd's readiness protocol (`Type=notify`, crate `sd-notify`).
//!
//! * `READY=1` once the spool is open and every listener is bound, so a
//!   unit ordered after pluto2 (or an operator's `systemctl start`) never
//!   meets a refused connection.
//! * `STATUS=` a short summary for `systemctl status`: recipients queued
//!   and deferred, and in mixnet mode how many other nodes have a working
//!   link (`healthy=H/N`). Counts only: never an address.
//! * `WATCHDOG=1` at half of `WATCHDOG_USEC`, but only after the spool's
//!   committer thread and the dispatcher loop both answered a question
//!   within a deadline. A timer alone would keep pinging while the part
//!   that stores and delivers mail hangs; withheld pings let systemd
//!   restart the node (`WatchdogSec=` in contrib/pluto2.service).
//! * `STOPPING=1` as soon as shutdown begins.
//!
//! Without `NOTIFY_SOCKET` in the environment [`Notifier::from_env`] gives
//! `None`, nothing is sent and no task runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::BoxFuture;
use crate::node::dispatch::Ping;
use crate::spool::Spool;
use crate::stats::Stats;

/// Longest gap between two STATUS updates; `-stats-interval` when shorter.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Where notifications go: the service manager's socket in production, a
/// recording in tests.
pub(crate) trait Sink: Send + Sync + 'static {
    fn send(&self, states: &[NotifyState<'_>]);
}

/// The socket named by `NOTIFY_SOCKET`. A failed send is logged at debug
/// level only: the node works on without systemd hearing from it.
struct SystemdSink;

impl Sink for SystemdSink {
    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!("[SYSTEMD] notification not sent: {e}");
        }
    }
}

/// Asks the parts the watchdog vouches for whether they still answer.
pub(crate) trait Probe: Send + Sync + 'static {
    /// The names of the parts that did not answer within `deadline`
    /// (empty: all answered).
    fn silent(&self, deadline: Duration) -> BoxFuture<'_, Vec<&'static str>>;
}

/// The production probe: a no-op round trip through the committer's
/// request queue, and a ping the dispatcher loop answers where it waits
/// (absent when no dispatcher runs, on a mixnet middle node).
pub struct Liveness {
    pub spool: Spool,
    pub dispatcher: Option<mpsc::Sender<Ping>>,
}

impl Probe for Liveness {
    fn silent(&self, deadline: Duration) -> BoxFuture<'_, Vec<&'static str>> {
        Box::pin(async move {
            let committer = tokio::time::timeout(deadline, self.spool.ping());
            let dispatcher = async {
                let Some(tx) = &self.dispatcher else {
                    return true;
                };
                let ask = async {
                    let (reply, answer) = oneshot::channel();
                    tx.send(reply).await.is_ok() && answer.await.is_ok()
                };
                tokio::time::timeout(deadline, ask).await == Ok(true)
            };
            let (committer, dispatcher) = tokio::join!(committer, dispatcher);
            let mut silent = Vec::new();
            if !matches!(committer, Ok(Ok(()))) {
                silent.push("the spool committer");
            }
            if !dispatcher {
                silent.push("the dispatcher");
            }
            silent
        })
    }
}

/// What the STATUS line is made of.
pub struct StatusSource {
    pub stats: Arc<Stats>,
    pub every: Duration,
}

/// Talks to systemd when it asked for notifications.
pub struct Notifier {
    sink: Arc<dyn Sink>,
    /// Half of `WATCHDOG_USEC` when systemd runs a watchdog for us.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// `None` unless systemd (or a test standing in for it) set
    /// `NOTIFY_SOCKET`.
    pub fn from_env() -> Option<Notifier> {
        std::env::var_os("NOTIFY_SOCKET")?;
        Some(Notifier {
            sink: Arc::new(SystemdSink),
            watchdog: sd_notify::watchdog_enabled()
                .filter(|d| !d.is_zero())
                .map(|d| d / 2),
        })
    }

    /// Says the node is ready. Called once the spool is open and every
    /// listener is bound (connections are queued by the kernel from then
    /// on, even before the first accept).
    pub fn ready(&self) {
        self.sink.send(&[NotifyState::Ready]);
    }

    /// Starts the STATUS updates and the watchdog; the task sends
    /// STOPPING=1 when `shutdown` is cancelled and then ends, dropping its
    /// spool handle (the daemon awaits it before the spool closes).
    pub async fn run(self, liveness: Liveness, status: StatusSource, shutdown: CancellationToken) {
        let watchdog = async {
            match self.watchdog {
                Some(interval) => {
                    watchdog(&liveness, self.sink.as_ref(), interval).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = watchdog => {}
            _ = report_status(&status, self.sink.as_ref()) => {}
        }
        self.sink.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: finishing sessions and commits"),
        ]);
        // The supervisor waits for this phase; the stop is under way.
        shutdown.cancelled().await;
    }
}

/// Sends WATCHDOG=1 every `interval` for as long as every part answers
/// within half of it, so the longest gap between two pings is 1.5 ×
/// `interval`, three quarters of `WATCHDOG_USEC`. A round in which a part
/// is silent sends nothing and says which part in the log; the next round
/// asks again.
pub(crate) async fn watchdog(probe: &dyn Probe, sink: &dyn Sink, interval: Duration) {
    let deadline = interval / 2;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let silent = probe.silent(deadline).await;
        if silent.is_empty() {
            sink.send(&[NotifyState::Watchdog]);
        } else {
            warn!(
                "[SYSTEMD] WATCHDOG=1 withheld: {} did not answer within {}; systemd restarts pluto2 if this lasts WatchdogSec",
                silent.join(" and "),
                humantime::format_duration(deadline)
            );
        }
    }
}

/// The STATUS text: recipients queued and deferred, and in mixnet mode
/// the usable share of the other nodes.
pub(crate) fn status_text(queued: Option<(u64, u64)>, stats: &Stats) -> String {
    let mut text = match queued {
        Some((queued, deferred)) => format!("queued={queued} deferred={deferred}"),
        None => "queued=? deferred=?".to_string(),
    };
    if stats.mixnet.load(Ordering::Relaxed) {
        text += &format!(
            " healthy={}/{}",
            stats.mix_healthy.get(),
            stats.mix_nodes.get()
        );
    }
    text
}

/// Sends STATUS at once and then every `status.every` (at most
/// [`STATUS_EVERY`] apart), reading the counts through the spool's reader
/// (see [`Stats::read_queue`]) so the committer is not asked.
async fn report_status(status: &StatusSource, sink: &dyn Sink) {
    let mut ticks = tokio::time::interval(status.every.min(STATUS_EVERY));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let counts = status
            .stats
            .read_queue()
            .await
            .map(|r| (r.queued, r.deferred));
        let text = status_text(counts, &status.stats);
        sink.send(&[NotifyState::Status(&text)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;
    use tokio::time::Instant;

    /// Records what would have gone to systemd, with the (paused) time.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<(Instant, String)>>);

    impl Sink for Recorded {
        fn send(&self, states: &[NotifyState<'_>]) {
            let mut seen = self.0.lock().unwrap();
            for state in states {
                seen.push((Instant::now(), state.to_string()));
            }
        }
    }

    impl Recorded {
        fn pings(&self) -> Vec<Instant> {
            let seen = self.0.lock().unwrap();
            seen.iter()
                .filter(|(_, s)| s == "WATCHDOG=1")
                .map(|(at, _)| *at)
                .collect()
        }
    }

    /// A committer that answers or hangs as the test says.
    #[derive(Default)]
    struct Switch {
        hung: AtomicBool,
    }

    impl Probe for Switch {
        fn silent(&self, deadline: Duration) -> BoxFuture<'_, Vec<&'static str>> {
            Box::pin(async move {
                if self.hung.load(Ordering::SeqCst) {
                    tokio::time::sleep(deadline).await;
                    vec!["the spool committer"]
                } else {
                    Vec::new()
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn it_pings_at_half_the_watchdog_period_while_every_part_answers() {
        let sink = Arc::new(Recorded::default());
        let probe = Arc::new(Switch::default());
        let start = Instant::now();
        let task = {
            let (sink, probe) = (sink.clone(), probe.clone());
            tokio::spawn(async move {
                watchdog(probe.as_ref(), sink.as_ref(), Duration::from_millis(500)).await
            })
        };
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        let pings = sink.pings();
        assert_eq!(pings.len(), 5, "{pings:?}");
        for (i, at) in pings.iter().enumerate() {
            assert_eq!(*at - start, Duration::from_millis(500 * i as u64));
        }
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn it_withholds_pings_while_a_part_is_silent_and_resumes_after() {
        let sink = Arc::new(Recorded::default());
        let probe = Arc::new(Switch::default());
        probe.hung.store(true, Ordering::SeqCst);
        let task = {
            let (sink, probe) = (sink.clone(), probe.clone());
            tokio::spawn(async move {
                watchdog(probe.as_ref(), sink.as_ref(), Duration::from_millis(500)).await
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(sink.pings().is_empty(), "{:?}", sink.pings());
        probe.hung.store(false, Ordering::SeqCst);
        let answered = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pings = sink.pings();
        assert!(!pings.is_empty());
        // The first ping after recovery comes within one period.
        assert!(
            pings[0] - answered <= Duration::from_millis(500),
            "{pings:?}"
        );
        task.abort();
    }

    #[test]
    fn status_counts_queue_states_and_mixnet_health_only() {
        let stats = Stats::default();
        assert_eq!(status_text(Some((3, 1)), &stats), "queued=3 deferred=1");
        assert_eq!(status_text(None, &stats), "queued=? deferred=?");
        stats.mixnet.store(true, Ordering::Relaxed);
        stats.set_healthy(2, 4);
        assert_eq!(
            status_text(Some((0, 0)), &stats),
            "queued=0 deferred=0 healthy=2/4"
        );
    }
}
