//! One supervisor for every long-lived task of the daemon, and one
//! shutdown for all of them.
//!
//! The daemon starts in three steps: build (bind, open, check; start
//! nothing), spawn (every task under a name, in the phase of the shutdown
//! that stops it), and on shutdown stop the phases one after another, each
//! within a deadline. One token says "stop" (SIGTERM, SIGINT, or a task
//! that failed); the supervisor derives from it when each phase is told.
//!
//! A task that panics, or ends while nothing asked it to, is logged by its
//! name and stops the daemon with a non-zero exit status: a half-running
//! mail relay (no dispatcher, no links, no commits) is worse than a
//! restart, and systemd restarts it (`Restart=on-failure`); the spool is
//! crash-safe, so nothing accepted is lost. A phase that does not finish
//! in time is named in the log, with the tasks still running, and the stop
//! goes on (`TimeoutStopSec` would end the process anyway; a task cut off
//! here loses nothing that was acknowledged, for the same reason).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// The phases of a shutdown, in the order they are stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopPhase {
    /// The SMTP listener and its sessions: stop taking mail first. Open
    /// sessions are told `421` at their next command, new connections get
    /// `421` at once until the last session ended.
    Intake,
    /// Deliveries, cover, the mixnet (links, hops, sender, maintenance):
    /// what is in flight finishes or is left to the spool's leases.
    Work,
    /// `[STATS]`, systemd notifications, SIGHUP reloads.
    Reporting,
    /// The metrics endpoint: `/live` answers until the very end.
    Admin,
}

impl StopPhase {
    const ALL: [StopPhase; 4] = [
        StopPhase::Intake,
        StopPhase::Work,
        StopPhase::Reporting,
        StopPhase::Admin,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            StopPhase::Intake => "listeners and sessions",
            StopPhase::Work => "dispatcher and mixnet",
            StopPhase::Reporting => "stats and notify",
            StopPhase::Admin => "metrics",
        }
    }
}

/// How long each phase may take to stop. The sum stays under the unit's
/// `TimeoutStopSec=30s`, so the log, not systemd's SIGKILL, says what hung.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub intake: Duration,
    pub work: Duration,
    pub reporting: Duration,
    pub spool: Duration,
    pub admin: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            // A session mid-DATA finishes its message (the client gets its
            // 250 or 421) well within this.
            intake: Duration::from_secs(10),
            // Deliveries already talking to a server get their own grace
            // (node::dispatch); links and hops stop at their next frame.
            work: Duration::from_secs(10),
            reporting: Duration::from_secs(3),
            // The committer drains what is queued and checkpoints.
            spool: Duration::from_secs(5),
            admin: Duration::from_secs(1),
        }
    }
}

impl Deadlines {
    fn of(&self, phase: StopPhase) -> Duration {
        match phase {
            StopPhase::Intake => self.intake,
            StopPhase::Work => self.work,
            StopPhase::Reporting => self.reporting,
            StopPhase::Admin => self.admin,
        }
    }
}

/// Why the daemon stopped on its own: a task died.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "task {name} {how}; stopping so that systemd can restart a whole daemon (nothing acknowledged is lost); if it recurs, report it with the log lines before this one"
)]
pub struct TaskFailure {
    pub name: &'static str,
    pub how: &'static str,
}

struct PhaseTasks {
    /// Cancelled when the shutdown reaches this phase.
    token: CancellationToken,
    tracker: TaskTracker,
    /// Names of the named tasks still running, with a count each.
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

pub struct Supervisor {
    stop: CancellationToken,
    phases: Vec<PhaseTasks>,
    failure: Arc<Mutex<Option<TaskFailure>>>,
}

impl Supervisor {
    /// `stop` is the one shutdown signal; a failed task cancels it too.
    pub fn new(stop: CancellationToken) -> Supervisor {
        Supervisor {
            stop,
            phases: StopPhase::ALL
                .iter()
                .map(|_| PhaseTasks {
                    token: CancellationToken::new(),
                    tracker: TaskTracker::new(),
                    running: Arc::default(),
                })
                .collect(),
            failure: Arc::default(),
        }
    }

    /// The one shutdown signal (for tasks that must see it at once, such
    /// as readiness and systemd's STOPPING, whatever their phase).
    pub fn stop(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Cancelled when the shutdown reaches `phase`: the signal a task of
    /// that phase watches.
    pub fn token(&self, phase: StopPhase) -> CancellationToken {
        self.phases[phase.index()].token.clone()
    }

    /// The tracker for tasks of `phase` that come and go (sessions, links):
    /// the phase waits for them, and their ending is not a failure.
    pub fn tracker(&self, phase: StopPhase) -> TaskTracker {
        self.phases[phase.index()].tracker.clone()
    }

    /// Spawns a long-lived task under `name`. It must run until its phase
    /// is stopped: ending earlier, or panicking, stops the daemon.
    pub fn spawn<F>(&self, phase: StopPhase, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let p = &self.phases[phase.index()];
        *p.running.lock().unwrap().entry(name).or_default() += 1;
        let running = p.running.clone();
        let token = p.token.clone();
        let stop = self.stop.clone();
        let failure = self.failure.clone();
        let task = failpoint(name, task);
        p.tracker.spawn(async move {
            // Its own task, so a panic is caught as a JoinError here
            // instead of unwinding through the supervisor.
            let outcome = tokio::spawn(task).await;
            let how = match outcome {
                Err(e) if e.is_panic() => Some("panicked"),
                Err(_) => Some("was cancelled"),
                Ok(()) if !token.is_cancelled() && !stop.is_cancelled() => {
                    Some("ended unexpectedly")
                }
                Ok(()) => None,
            };
            {
                let mut running = running.lock().unwrap();
                if let Some(n) = running.get_mut(name) {
                    *n -= 1;
                    if *n == 0 {
                        running.remove(name);
                    }
                }
            }
            if let Some(how) = how {
                let f = TaskFailure { name, how };
                error!("[STOP] {f}");
                failure.lock().unwrap().get_or_insert(f);
                stop.cancel();
            }
        });
    }

    /// Resolves once the daemon is asked to stop (or a task failed).
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// Stops every phase up to and including `last`, in order, each within
    /// its deadline.
    pub async fn stop_through(&self, last: StopPhase, deadlines: &Deadlines) {
        self.stop.cancel();
        for phase in StopPhase::ALL.into_iter().filter(|p| *p <= last) {
            let p = &self.phases[phase.index()];
            if p.token.is_cancelled() {
                continue;
            }
            p.token.cancel();
            p.tracker.close();
            let deadline = deadlines.of(phase);
            if tokio::time::timeout(deadline, p.tracker.wait())
                .await
                .is_err()
            {
                let names: Vec<String> = p
                    .running
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(name, n)| format!("{name} ×{n}"))
                    .collect();
                warn!(
                    "[STOP] phase \"{}\" did not finish within {deadline:?} ({} task(s) left: {}); going on",
                    phase.name(),
                    p.tracker.len(),
                    if names.is_empty() {
                        "sessions or links".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            } else {
                info!("[STOP] {} stopped", phase.name());
            }
        }
    }

    /// The first task failure, if a task died (the exit status says so).
    pub fn failure(&self) -> Option<TaskFailure> {
        self.failure.lock().unwrap().clone()
    }
}

/// Test hook, in debug builds only: `PLUTO2_FAIL_TASK=<name>` makes the
/// task of that name panic once it has started, so the integration tests
/// can show that a dying task stops the daemon loudly. Release builds do
/// not read the variable.
fn failpoint<F>(name: &'static str, task: F) -> impl Future<Output = ()> + Send + 'static
where
    F: Future<Output = ()> + Send + 'static,
{
    #[cfg(debug_assertions)]
    let fail = std::env::var("PLUTO2_FAIL_TASK").is_ok_and(|v| v == name);
    #[cfg(not(debug_assertions))]
    let fail = false;
    async move {
        if fail {
            tokio::time::sleep(Duration::from_millis(200)).await;
            panic!("PLUTO2_FAIL_TASK={name}");
        }
        task.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_on_its_own_stops_everything_and_is_named() {
        let stop = CancellationToken::new();
        let sup = Supervisor::new(stop.clone());
        let work = sup.token(StopPhase::Work);
        sup.spawn(
            StopPhase::Work,
            "waits",
            async move { work.cancelled().await },
        );
        sup.spawn(StopPhase::Intake, "quits", async {});
        sup.stopped().await;
        sup.stop_through(StopPhase::Admin, &Deadlines::default())
            .await;
        assert_eq!(
            sup.failure(),
            Some(TaskFailure {
                name: "quits",
                how: "ended unexpectedly"
            })
        );
    }

    #[tokio::test]
    async fn a_panic_is_a_failure_with_the_task_name() {
        let sup = Supervisor::new(CancellationToken::new());
        sup.spawn(StopPhase::Reporting, "boom", async { panic!("test") });
        sup.stopped().await;
        assert_eq!(sup.failure().unwrap().name, "boom");
        assert_eq!(sup.failure().unwrap().how, "panicked");
    }

    #[tokio::test]
    async fn phases_stop_in_order_and_an_asked_stop_is_no_failure() {
        let sup = Supervisor::new(CancellationToken::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        for phase in [
            StopPhase::Admin,
            StopPhase::Work,
            StopPhase::Intake,
            StopPhase::Reporting,
        ] {
            let token = sup.token(phase);
            let order = order.clone();
            sup.spawn(phase, phase.name(), async move {
                token.cancelled().await;
                order.lock().unwrap().push(phase);
            });
        }
        sup.stop_through(StopPhase::Admin, &Deadlines::default())
            .await;
        assert_eq!(*order.lock().unwrap(), StopPhase::ALL.to_vec());
        assert_eq!(sup.failure(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_phase_past_its_deadline_does_not_hold_the_stop() {
        let sup = Supervisor::new(CancellationToken::new());
        sup.spawn(StopPhase::Intake, "stuck", std::future::pending());
        let later = sup.token(StopPhase::Work);
        sup.spawn(
            StopPhase::Work,
            "after",
            async move { later.cancelled().await },
        );
        sup.stop_through(StopPhase::Work, &Deadlines::default())
            .await;
        assert!(
            sup.token(StopPhase::Work).is_cancelled(),
            "went on past Intake"
        );
    }
}
