//! The metrics and health endpoint (`-metrics`): `/metrics` (Prometheus
//! text from `stats`'s registry), `/live` and `/ready`, over HTTP/1.1 on a
//! loopback address or a unix socket.
//!
//! It is an edge of the process, not a transport of mail, and every way in
//! is bounded: at most [`MAX_CONNECTIONS`] connections at once (more are
//! told 503 and closed), a request head within [`HEAD_DEADLINE`] and
//! [`http::MAX_HEAD`] bytes (a slow or oversized client is told 408 or
//! 431 and closed), a response written within [`WRITE_DEADLINE`], and at
//! most [`MAX_REQUESTS`] requests per connection. The readiness it reports
//! comes from the daemon: ready once the spool is open and the listeners
//! are bound, not ready again as soon as shutdown begins, while `/live`
//! answers 200 for as long as the server runs (until the very end of a
//! stop).

pub mod http;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{MetricsAddr, sysexits};
use crate::stats::Stats;
use http::{Method, Request, Status};

/// Connections served at once. A scraper uses one; a few more leave room
/// for a health checker and a human with curl, and nothing more can make
/// the daemon render metrics in parallel.
pub const MAX_CONNECTIONS: usize = 8;

/// Time for a whole request head, from when the server starts waiting for
/// it (also the idle time allowed between keep-alive requests). A scraper
/// on this host sends its head at once; a client that trickles bytes is
/// cut off here, however slowly it keeps sending.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(3);

/// Time for writing one response to a client that does not read.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Requests served on one connection before it is closed.
pub const MAX_REQUESTS: usize = 100;

/// The longest `/metrics` waits for the spool's counts before it answers
/// with the last ones it has.
const QUEUE_READ_DEADLINE: Duration = Duration::from_secs(2);

const TEXT: &str = "text/plain; charset=utf-8";

/// How long, and how many bytes, a refused client's remaining input is
/// read and dropped before the close (see `refuse`).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Why the metrics endpoint could not be set up; each names `-metrics` and
/// the fix, in one line.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("-metrics {addr}: cannot listen: {source}; choose another port")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("-metrics {path}: exists and is not a socket; move it away or choose another path")]
    NotASocket { path: String },
    #[error(
        "-metrics {path}: another process is listening on this socket; stop it or choose another path"
    )]
    InUse { path: String },
    #[error(
        "-metrics {path}: cannot create the socket: {source}; check that its directory exists and pluto2 may write there"
    )]
    Create {
        path: String,
        source: std::io::Error,
    },
}

impl MetricsError {
    /// The process exit status (sysexits), in line with `-addr`'s.
    pub fn exit_status(&self) -> u8 {
        match self {
            MetricsError::Bind { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                sysexits::NOPERM
            }
            MetricsError::Bind { .. } | MetricsError::InUse { .. } => sysexits::UNAVAILABLE,
            MetricsError::NotASocket { .. } => sysexits::USAGE,
            MetricsError::Create { .. } => sysexits::CANTCREAT,
        }
    }
}

/// The bound endpoint, before it serves.
pub enum MetricsListener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
        /// The socket file's identity, so a stop removes only our own.
        id: (u64, u64),
    },
}

impl MetricsListener {
    /// Binds `addr`. A unix socket path that holds a socket nobody listens
    /// on (left by a crash) is replaced; anything else there is refused.
    /// The socket is made 0660: the daemon's user and group may connect.
    pub fn bind(addr: &MetricsAddr) -> Result<MetricsListener, MetricsError> {
        match addr {
            MetricsAddr::Tcp(a) => {
                let std = std::net::TcpListener::bind(a)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| MetricsError::Bind { addr: *a, source })?;
                let listener = TcpListener::from_std(std)
                    .map_err(|source| MetricsError::Bind { addr: *a, source })?;
                Ok(MetricsListener::Tcp(listener))
            }
            MetricsAddr::Unix(path) => bind_unix(path),
        }
    }

    /// Where it listens, for the log.
    pub fn local(&self) -> String {
        match self {
            MetricsListener::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
            MetricsListener::Unix { path, .. } => path.display().to_string(),
        }
    }
}

fn bind_unix(path: &Path) -> Result<MetricsListener, MetricsError> {
    let shown = || path.display().to_string();
    let create = |source| MetricsError::Create {
        path: shown(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(MetricsError::InUse { path: shown() });
            }
            std::fs::remove_file(path).map_err(create)?;
        }
        Ok(_) => return Err(MetricsError::NotASocket { path: shown() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(create(e)),
    }
    let listener = UnixListener::bind(path).map_err(create)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(create)?;
    let meta = std::fs::symlink_metadata(path).map_err(create)?;
    Ok(MetricsListener::Unix {
        listener,
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
    })
}

/// What the endpoint reports from.
pub struct Endpoint {
    pub stats: Arc<Stats>,
    /// For the queue gauges, read from the spool on every scrape.
    pub data_dir: PathBuf,
    ready: AtomicBool,
    /// The daemon's shutdown: once cancelled, `/ready` says 503.
    shutdown: CancellationToken,
}

impl Endpoint {
    pub fn new(stats: Arc<Stats>, data_dir: PathBuf, shutdown: CancellationToken) -> Endpoint {
        Endpoint {
            stats,
            data_dir,
            ready: AtomicBool::new(false),
            shutdown,
        }
    }

    /// The spool is open and the listeners are bound.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.shutdown.is_cancelled()
    }

    /// The response to one request.
    async fn respond(&self, request: &Request, keep_alive: bool) -> Vec<u8> {
        let head_only = request.method == Method::Head;
        let reply = |status, content_type, body: &[u8]| {
            http::response(status, content_type, body, head_only, keep_alive)
        };
        let known = matches!(request.path.as_str(), "/metrics" | "/live" | "/ready");
        if !known {
            return reply(
                Status::NotFound,
                TEXT,
                b"not found: try /metrics, /live or /ready\n",
            );
        }
        if request.method == Method::Other {
            return reply(Status::MethodNotAllowed, TEXT, b"only GET and HEAD\n");
        }
        match request.path.as_str() {
            "/metrics" => {
                let read = self.stats.read_queue(&self.data_dir);
                if tokio::time::timeout(QUEUE_READ_DEADLINE, read)
                    .await
                    .is_err()
                {
                    debug!("[METRICS] the spool's counts took too long: the last ones are served");
                }
                let body = self.stats.encode();
                reply(Status::Ok, prometheus_text::CONTENT_TYPE, body.as_bytes())
            }
            "/live" => reply(Status::Ok, TEXT, b"live\n"),
            _ if self.is_ready() => reply(Status::Ok, TEXT, b"ready\n"),
            _ if self.shutdown.is_cancelled() => {
                reply(Status::ServiceUnavailable, TEXT, b"stopping\n")
            }
            _ => reply(Status::ServiceUnavailable, TEXT, b"starting\n"),
        }
    }
}

/// Serves until `stop`; then waits for the connections it has (each is
/// cut off at `stop`) and removes its unix socket.
pub async fn serve(listener: MetricsListener, endpoint: Arc<Endpoint>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    match &listener {
        MetricsListener::Tcp(l) => loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = l.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => admit(stream, &permits, &tracker, &endpoint, &stop),
                Err(e) => accept_failed(e, &stop).await,
            }
        },
        MetricsListener::Unix { listener: l, .. } => loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = l.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => admit(stream, &permits, &tracker, &endpoint, &stop),
                Err(e) => accept_failed(e, &stop).await,
            }
        },
    }
    tracker.close();
    tracker.wait().await;
    if let MetricsListener::Unix { path, id, .. } = &listener {
        // Only the socket bound here: another daemon may have replaced it.
        let ours = std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *id);
        if ours && let Err(e) = std::fs::remove_file(path) {
            warn!("[METRICS] cannot remove {}: {e}", path.display());
        }
    }
    debug!("[METRICS] stopped");
}

/// An `accept` error (out of descriptors): pause instead of spinning.
async fn accept_failed(e: std::io::Error, stop: &CancellationToken) {
    debug!("[METRICS] accept failed: {e}");
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
}

/// Starts a connection task if a permit is free; otherwise says 503 and
/// closes without a task.
fn admit<S>(
    stream: S,
    permits: &Arc<Semaphore>,
    tracker: &TaskTracker,
    endpoint: &Arc<Endpoint>,
    stop: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        let busy = http::response(
            Status::ServiceUnavailable,
            TEXT,
            b"too many metrics connections\n",
            false,
            false,
        );
        // A fresh socket's send buffer takes a short reply at once; if it
        // does not, the client only loses the explanation.
        tracker.spawn(async move {
            let mut stream = stream;
            let _ = tokio::time::timeout(Duration::from_millis(100), stream.write_all(&busy)).await;
        });
        return;
    };
    let endpoint = endpoint.clone();
    let stop = stop.clone();
    tracker.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = connection(stream, &endpoint) => {}
        }
        drop(permit);
    });
}

/// Serves requests on one connection until the client closes, asks to
/// close, breaks a limit, or [`MAX_REQUESTS`] were served.
async fn connection<S>(mut stream: S, endpoint: &Endpoint)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    for served in 1..=MAX_REQUESTS {
        let deadline = Instant::now() + HEAD_DEADLINE;
        let request = loop {
            match http::parse(&buf) {
                Ok(Some((request, used))) => {
                    buf.drain(..used);
                    break request;
                }
                Ok(None) => {}
                Err(e) => {
                    debug!("[METRICS] refused a request: {e}");
                    let body = format!("{e}\n");
                    let out = http::response(e.status(), TEXT, body.as_bytes(), false, false);
                    refuse(&mut stream, &out).await;
                    return;
                }
            }
            let mut chunk = [0u8; 1024];
            match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Err(_) => {
                    if !buf.is_empty() {
                        let out = http::response(
                            Status::RequestTimeout,
                            TEXT,
                            b"request head not complete in time\n",
                            false,
                            false,
                        );
                        refuse(&mut stream, &out).await;
                    }
                    return;
                }
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let keep_alive = request.keep_alive && served < MAX_REQUESTS;
        let out = endpoint.respond(&request, keep_alive).await;
        if write(&mut stream, &out).await.is_err() || !keep_alive {
            return;
        }
    }
}

/// Sends a refusal and closes gracefully: the client may still be
/// sending, and closing with unread bytes would make the kernel reset the
/// connection and lose the response. So the write side is shut first and
/// what arrives is read and dropped, bounded by [`LINGER`] and
/// [`LINGER_BYTES`].
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, out: &[u8]) {
    if write(stream, out).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut chunk = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_DEADLINE, async {
        stream.write_all(out).await?;
        stream.flush().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Binds the endpoint and logs where it listens (before the spool opens,
/// so a bad `-metrics` stops the start early).
pub fn start(addr: &MetricsAddr) -> Result<MetricsListener, MetricsError> {
    let listener = MetricsListener::bind(addr)?;
    info!(
        "[METRICS] serving /metrics, /live and /ready on {}",
        listener.local()
    );
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> (Arc<Endpoint>, CancellationToken) {
        let shutdown = CancellationToken::new();
        let e = Endpoint::new(
            Arc::new(Stats::default()),
            PathBuf::from("/nonexistent/pluto2-test"),
            shutdown.clone(),
        );
        (Arc::new(e), shutdown)
    }

    async fn exchange(endpoint: &Endpoint, input: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        connection(server, endpoint).await;
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        out
    }

    fn statuses(out: &str) -> Vec<&str> {
        out.lines()
            .filter(|l| l.starts_with("HTTP/1.1 "))
            .map(|l| &l[9..12])
            .collect()
    }

    #[tokio::test]
    async fn it_answers_ready_only_between_start_and_shutdown() {
        let (e, shutdown) = endpoint();
        let ask = b"GET /ready HTTP/1.1\r\n\r\n";
        assert_eq!(statuses(&exchange(&e, ask).await), ["503"]);
        e.set_ready();
        assert_eq!(statuses(&exchange(&e, ask).await), ["200"]);
        shutdown.cancel();
        let out = exchange(&e, ask).await;
        assert_eq!(statuses(&out), ["503"]);
        assert!(out.ends_with("stopping\n"), "{out}");
        assert_eq!(
            statuses(&exchange(&e, b"GET /live HTTP/1.1\r\n\r\n").await),
            ["200"]
        );
    }

    #[tokio::test]
    async fn it_routes_paths_and_methods() {
        let (e, _) = endpoint();
        let out = exchange(
            &e,
            b"GET /live HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\nPOST /metrics HTTP/1.1\r\n\r\nHEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\nGET /live HTTP/1.1\r\n\r\n",
        )
        .await;
        // The last request comes after `Connection: close`: not served.
        assert_eq!(statuses(&out), ["200", "404", "405", "200"]);
        assert!(!out.contains("# TYPE"), "HEAD sent a body: {out}");
    }

    #[tokio::test]
    async fn it_serves_the_registry_as_prometheus_text() {
        let (e, _) = endpoint();
        Stats::add(&e.stats.sent, 2);
        let out = exchange(&e, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("Content-Type: text/plain; version=0.0.4"),
            "{out}"
        );
        assert!(
            out.contains("\npluto2_recipients_delivered_total 2\n"),
            "{out}"
        );
        assert!(
            out.contains("Connection: close"),
            "HTTP/1.0 keeps nothing open"
        );
    }

    #[tokio::test]
    async fn it_closes_with_a_status_on_a_bad_head() {
        let (e, _) = endpoint();
        let out = exchange(&e, b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").await;
        assert_eq!(statuses(&out), ["400"]);
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(http::MAX_HEAD + 10, b'a');
        assert_eq!(statuses(&exchange(&e, &big).await), ["431"]);
    }

    #[tokio::test(start_paused = true)]
    async fn it_cuts_off_a_head_that_trickles_in_past_the_deadline() {
        let (e, _) = endpoint();
        let (client, server) = tokio::io::duplex(1024);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let started = Instant::now();
        let server = tokio::spawn(async move { connection(server, &e).await });
        // The answer, and when it came.
        let answer = tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let n = from_server.read(&mut buf).await.unwrap();
            (
                started.elapsed(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            )
        });
        // One byte every half second: each read is quick, the head never
        // completes.
        let mut written = 0;
        for b in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if server.is_finished() || to_server.write_all(&[*b]).await.is_err() {
                break;
            }
            written += 1;
            assert!(written < 40, "not cut off after {written} bytes");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (at, out) = answer.await.unwrap();
        assert!(at >= HEAD_DEADLINE, "{at:?}");
        assert!(at < HEAD_DEADLINE + Duration::from_millis(100), "{at:?}");
        assert_eq!(statuses(&out), ["408"]);
        server.await.unwrap();
        // After the answer, what the client still sends is drained for at
        // most LINGER before the close.
        let closed = started.elapsed();
        assert!(
            closed <= at + LINGER + Duration::from_millis(500),
            "{closed:?}"
        );
        assert!(written <= 10, "{written} bytes taken");
    }

    #[tokio::test]
    async fn it_refuses_a_path_that_is_not_a_socket_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.sock");
        std::fs::write(&file, b"keep me").unwrap();
        let e = MetricsListener::bind(&MetricsAddr::Unix(file.clone()))
            .err()
            .unwrap();
        assert!(matches!(e, MetricsError::NotASocket { .. }), "{e}");
        assert_eq!(e.exit_status(), sysexits::USAGE);
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        let sock = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let bound = MetricsListener::bind(&MetricsAddr::Unix(sock.clone())).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let again = MetricsListener::bind(&MetricsAddr::Unix(sock.clone()))
            .err()
            .unwrap();
        assert!(matches!(again, MetricsError::InUse { .. }), "{again}");
        let stop = CancellationToken::new();
        stop.cancel();
        let (e, _) = endpoint();
        serve(bound, e, stop).await;
        assert!(!sock.exists(), "the socket is removed at stop");
    }
}
