//! The one accept loop of the daemon, shared by the SMTP listener
//! (`smtp::server`), the link listener (`link`) and the metrics endpoint
//! (`admin`, TCP and unix socket): [`accept_until`] over a small
//! [`Accept`] trait. Each caller keeps its own admission (the SMTP
//! connection table, the link's inbound slots, the metrics' connection
//! limit) in the closure it hands over; what happens when `accept` itself
//! fails is decided here, once, for all of them.
//!
//! Out of file descriptors (or kernel memory), `accept` fails at once every
//! time it is called while the condition lasts; a fixed short pause logged
//! ten lines a second for as long as the node was saturated. Here a failure
//! starts an *episode*: it is logged once, naming the listener, accepting
//! pauses for a time that doubles with every further failure (from
//! [`FIRST_PAUSE`] up to [`MAX_PAUSE`]), and the first successful accept
//! ends the episode with one more line saying how many attempts failed.
//! Connections that arrive meanwhile wait in the listen backlog; none is
//! lost to the pause. A stop cuts a pause short.
//!
//! A connection reset or aborted by its client before it was accepted is
//! that client's business, not a condition of the node: it is skipped
//! without pause or log.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub const FIRST_PAUSE: Duration = Duration::from_millis(10);
pub const MAX_PAUSE: Duration = Duration::from_secs(1);

/// A source of connections, so one accept loop serves every kind of
/// listener (and tests can hand it in-memory streams).
pub trait Accept {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Who connected, as far as the listener knows.
    type Peer: Send + 'static;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    type Peer = SocketAddr;
    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    async fn accept(&mut self) -> io::Result<(UnixStream, Self::Peer)> {
        UnixListener::accept(self).await
    }
}

/// Accepts from `listener` until `stop`, handing each connection to
/// `admit`, which decides whether it is served (and spawns its task).
/// `name` says which listener it is in the log ("SMTP", "link",
/// "metrics"). A failed `accept` pauses by [`AcceptBackoff`] instead of
/// spinning; a stop cuts the pause short. Returns at `stop`, without
/// waiting for the connections it started: that is the caller's shutdown.
pub async fn accept_until<L: Accept>(
    listener: &mut L,
    name: &'static str,
    stop: &CancellationToken,
    mut admit: impl FnMut(L::Stream, L::Peer),
) {
    let mut backoff = AcceptBackoff::new(name);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                admit(stream, peer);
            }
            Err(e) => {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = backoff.failed(&e) => {}
                }
            }
        }
    }
}

/// What the accept loop does when `accept` fails: one episode, logged
/// once at its start and once at its end, with pauses doubling between.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// The listener, for the log.
    name: &'static str,
    /// Failures in the current episode (0 = accepting normally).
    failures: u64,
    pause: Duration,
}

impl AcceptBackoff {
    pub fn new(name: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            name,
            failures: 0,
            pause: Duration::ZERO,
        }
    }

    /// Handles one failed `accept`: logs if this starts an episode, then
    /// sleeps. Returns true if it logged.
    pub async fn failed(&mut self, error: &io::Error) -> bool {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
        ) {
            debug!(
                "[CONN] {} listener: a client left before it was accepted: {error}",
                self.name
            );
            return false;
        }
        let first = self.failures == 0;
        self.failures += 1;
        if first {
            self.pause = FIRST_PAUSE;
            // Descriptors are the process's, not the listener's: SMTP
            // sessions hold most of them whichever listener ran out.
            let hint = if is_out_of_descriptors(error) {
                " (out of file descriptors: raise LimitNOFILE or lower -max-connections)"
            } else {
                ""
            };
            warn!(
                "[CONN] {} listener: accept failed: {error}{hint}; pausing accepts, waiting clients stay in the backlog",
                self.name
            );
        } else {
            self.pause = (self.pause * 2).min(MAX_PAUSE);
        }
        tokio::time::sleep(self.pause).await;
        first
    }

    /// Records a successful `accept`; ends an episode with one line.
    /// Returns true if it logged.
    pub fn succeeded(&mut self) -> bool {
        if self.failures == 0 {
            return false;
        }
        info!(
            "[CONN] {} listener: accepting again after {} failed attempt(s)",
            self.name, self.failures
        );
        self.failures = 0;
        true
    }
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(error),
        Some(Errno::MFILE) | Some(Errno::NFILE)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use tokio::io::DuplexStream;
    use tokio::time::Instant;

    fn emfile() -> io::Error {
        rustix::io::Errno::MFILE.into()
    }

    #[tokio::test(start_paused = true)]
    async fn it_logs_once_per_episode_and_backs_off() {
        let mut backoff = AcceptBackoff::new("test");
        let start = Instant::now();
        let (mut attempts, mut logged) = (0, 0);
        while start.elapsed() < Duration::from_secs(10) {
            attempts += 1;
            logged += u32::from(backoff.failed(&emfile()).await);
        }
        assert_eq!(logged, 1);
        // 10 ms doubling to 1 s: 7 steps to reach the cap, then one a second.
        assert!(attempts <= 18, "{attempts} attempts in 10 s");
        assert!(backoff.succeeded());
        assert!(!backoff.succeeded());
        // A new episode is logged again and starts from the short pause.
        let before = Instant::now();
        assert!(backoff.failed(&emfile()).await);
        assert_eq!(before.elapsed(), FIRST_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn it_skips_clients_that_left_without_pausing() {
        let mut backoff = AcceptBackoff::new("test");
        let before = Instant::now();
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert!(!backoff.failed(&reset).await);
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert!(!backoff.succeeded());
    }

    /// A listener that plays a script: failures, then connections, then
    /// nothing (pending for ever).
    struct Script(VecDeque<io::Result<DuplexStream>>);

    impl Accept for Script {
        type Stream = DuplexStream;
        type Peer = ();
        async fn accept(&mut self) -> io::Result<(DuplexStream, ())> {
            match self.0.pop_front() {
                Some(next) => next.map(|s| (s, ())),
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_pauses_after_failures_admits_after_them_and_stops_at_once() {
        let mut script = VecDeque::new();
        for _ in 0..3 {
            script.push_back(Err(emfile()));
        }
        script.push_back(Ok(tokio::io::duplex(8).0));
        let mut listener = Script(script);
        let stop = CancellationToken::new();
        let started = Instant::now();
        let mut admitted_at = None;
        let run = accept_until(&mut listener, "test", &stop, |_, ()| {
            admitted_at = Some(started.elapsed());
            stop.cancel();
        });
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the loop ends at stop");
        // Three failures: 10 + 20 + 40 ms of pauses before the connection.
        assert_eq!(admitted_at, Some(FIRST_PAUSE * 7));

        // A stop during a long pause ends the loop at once, not at the
        // pause's end.
        let mut failing = Script((0..20).map(|_| Err(emfile())).collect());
        let stop = CancellationToken::new();
        let stopper = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                stop.cancel();
            })
        };
        let started = Instant::now();
        accept_until(&mut failing, "test", &stop, |_, ()| unreachable!()).await;
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        stopper.await.unwrap();
    }
}

/// Events that can come in floods (SMTP sheds and memory refusals, refused
/// links) are logged at most once per this period, with their count, so an
/// attacker cannot grow the log and the log still shows the attack.
pub const LOG_PERIOD: Duration = Duration::from_secs(60);

/// Counts an event that can come in floods and says when to log it: the
/// first time, then at most once per [`LOG_PERIOD`], with the count since
/// the last line.
#[derive(Debug, Default)]
pub struct LogThrottle(Mutex<(Option<Instant>, u64)>);

impl LogThrottle {
    pub fn note(&self, now: Instant) -> Option<u64> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (last, count) = &mut *state;
        *count += 1;
        if last.is_some_and(|at| now.duration_since(at) < LOG_PERIOD) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    }
}
