//! The metrics and health endpoint (`-metrics`): `/metrics` (Prometheus
//! text from `stats`'s registry), `/live` and `/ready`, over HTTP/1.1 on a
//! loopback address or a unix socket.
//!
//! It is an edge of the process, not a transport of mail, and every way in
//! is bounded: at most [`MAX_CONNECTIONS`] connections at once (more are
//! told 503 and closed), a request head within [`HEAD_DEADLINE`] and
//! [`MAX_HEAD`] bytes of at most [`MAX_HEADERS`] fields (a slow or
//! oversized client is told 408 or 431 and closed), no request body, a
//! response written within [`WRITE_DEADLINE`], and at most
//! [`MAX_REQUESTS`] requests per connection. The readiness it reports
//! comes from the daemon: ready once the spool is open and the listeners
//! are bound, not ready again as soon as shutdown begins, while `/live`
//! answers 200 for as long as the server runs (until the very end of a
//! stop).
//!
//! HTTP/1 itself is hyper's (`server::conn::http1`, as in linkerd2-proxy's
//! admin server): its parser and writer are used by far more servers than
//! ours would ever be, and its builder holds most of the bounds (buffer
//! size, field count, head deadline). What hyper does not do is here, in
//! the stream and the service around it: the connection limit, the count
//! of requests per connection, the 408 for a head that did not arrive in
//! time (hyper closes without a word), the deadline for a client that does
//! not read, and the lingering close after a refusal.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{MetricsAddr, sysexits};
use crate::listen::{Accept, accept_until};
use crate::stats::Stats;

/// Connections served at once. A scraper uses one; a few more leave room
/// for a health checker and a human with curl, and nothing more can make
/// the daemon render metrics in parallel.
pub const MAX_CONNECTIONS: usize = 8;

/// Time for a whole request head, from when the server starts waiting for
/// it (also the idle time allowed between keep-alive requests). A scraper
/// on this host sends its head at once; a client that trickles bytes is
/// cut off here, however slowly it keeps sending.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(3);

/// Longest request head (request line and header fields) read: hyper's
/// read buffer is capped here, so a head that has not ended when the
/// buffer is full is refused (431). A scrape's head is a few hundred
/// bytes; 8 KiB is what common servers allow, and the smallest buffer
/// hyper takes.
pub const MAX_HEAD: usize = 8 * 1024;

/// Most header fields accepted in one request (431 beyond).
pub const MAX_HEADERS: usize = 32;

/// Time for writing one response to a client that does not read.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Requests served on one connection before it is closed.
pub const MAX_REQUESTS: usize = 100;

/// The longest `/metrics` waits for the spool's counts before it answers
/// with the last ones it has.
const QUEUE_READ_DEADLINE: Duration = Duration::from_secs(2);

const TEXT: &str = "text/plain; charset=utf-8";

/// How long, and how many bytes, a refused client's remaining input is
/// read and dropped before the close (see `linger`).
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
    /// Also reads the queue gauges, through the spool's reader, on every
    /// scrape.
    pub stats: Arc<Stats>,
    ready: AtomicBool,
    /// The daemon's shutdown: once cancelled, `/ready` says 503.
    shutdown: CancellationToken,
}

/// A response whose body is in memory: every body here is small and whole.
type HttpReply = Response<Full<Bytes>>;

impl Endpoint {
    pub fn new(stats: Arc<Stats>, shutdown: CancellationToken) -> Endpoint {
        Endpoint {
            stats,
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

    /// The response to one request, and whether it refuses the request
    /// (the connection then closes). A scraper sends a bodiless `GET` in
    /// origin form; a body or another form of target is refused, as before
    /// hyper, since nothing here would read it. HEAD gets GET's headers:
    /// hyper leaves the body out and keeps its length.
    async fn respond(&self, request: &Request<Incoming>) -> (HttpReply, bool) {
        if !request.body().is_end_stream() {
            let refusal = reply(
                StatusCode::BAD_REQUEST,
                TEXT,
                "requests with a body are not accepted\n",
            );
            return (refusal, true);
        }
        let uri = request.uri();
        if uri.scheme().is_some() || uri.authority().is_some() || !uri.path().starts_with('/') {
            let refusal = reply(StatusCode::BAD_REQUEST, TEXT, "malformed request: target\n");
            return (refusal, true);
        }
        let path = uri.path();
        if !matches!(path, "/metrics" | "/live" | "/ready") {
            let r = reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: try /metrics, /live or /ready\n",
            );
            return (r, false);
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return (r, false);
        }
        let r = match path {
            "/metrics" => {
                let read = self.stats.read_queue();
                if tokio::time::timeout(QUEUE_READ_DEADLINE, read)
                    .await
                    .is_err()
                {
                    debug!("[METRICS] the spool's counts took too long: the last ones are served");
                }
                reply(
                    StatusCode::OK,
                    prometheus_text::CONTENT_TYPE,
                    self.stats.encode(),
                )
            }
            "/live" => reply(StatusCode::OK, TEXT, "live\n"),
            _ if self.is_ready() => reply(StatusCode::OK, TEXT, "ready\n"),
            _ if self.shutdown.is_cancelled() => {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "stopping\n")
            }
            _ => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "starting\n"),
        };
        (r, false)
    }
}

/// A response with its type; never cached (every answer is of the moment).
/// hyper adds the length.
fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpReply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A whole response written by hand, for the two moments hyper is not
/// reading a request: a client over [`MAX_CONNECTIONS`] is answered at
/// once, unread, and a head that missed [`HEAD_DEADLINE`] is answered
/// after hyper has given the connection up.
fn canned(status: StatusCode, body: &str) -> String {
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {TEXT}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    )
}

/// Serves until `stop`; then waits for the connections it has (each is
/// cut off at `stop`) and removes its unix socket.
pub async fn serve(listener: MetricsListener, endpoint: Arc<Endpoint>, stop: CancellationToken) {
    match listener {
        MetricsListener::Tcp(mut l) => run(&mut l, &endpoint, &stop).await,
        MetricsListener::Unix {
            listener: mut l,
            path,
            id,
        } => {
            run(&mut l, &endpoint, &stop).await;
            // Only the socket bound here: another daemon may have replaced it.
            let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == id);
            if ours && let Err(e) = std::fs::remove_file(&path) {
                warn!("[METRICS] cannot remove {}: {e}", path.display());
            }
        }
    }
    debug!("[METRICS] stopped");
}

/// The accept loop and the connections it starts, until `stop` and the
/// last connection has ended.
async fn run<L: Accept>(listener: &mut L, endpoint: &Arc<Endpoint>, stop: &CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    accept_until(listener, "metrics", stop, |stream, _| {
        admit(stream, &permits, &tracker, endpoint, stop)
    })
    .await;
    tracker.close();
    tracker.wait().await;
}

/// Starts a connection task if a permit is free; otherwise says 503 and
/// closes without reading.
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
        // A fresh socket's send buffer takes a short reply at once; if it
        // does not, the client only loses the explanation.
        tracker.spawn(async move {
            let busy = canned(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many metrics connections\n",
            );
            let mut stream = stream;
            let _ = tokio::time::timeout(
                Duration::from_millis(100),
                stream.write_all(busy.as_bytes()),
            )
            .await;
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

/// hyper's HTTP/1 server with this endpoint's bounds.
fn http1() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEAD_DEADLINE)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(true)
        // A client may shut its side once it has asked: it is answered.
        .half_close(true)
        .title_case_headers(true)
        .auto_date_header(false);
    b
}

/// One connection's bookkeeping, shared by the service and the stream.
#[derive(Default)]
struct HttpSession {
    /// Requests handed to the service so far.
    served: AtomicUsize,
    /// Bytes arrived since the last request was handed over: a head was
    /// begun, so a missed deadline is a slow client (408), not an idle
    /// keep-alive connection (closed without a word).
    head_begun: AtomicBool,
    /// A request was refused: the connection closes lingering.
    refused: AtomicBool,
}

/// The service hyper calls with each request: counts it, and makes the
/// response to the last one allowed (or to a refused one) close the
/// connection.
async fn handle(
    endpoint: &Endpoint,
    session: &HttpSession,
    request: Request<Incoming>,
) -> Result<HttpReply, Infallible> {
    session.head_begun.store(false, Ordering::Relaxed);
    let served = session.served.fetch_add(1, Ordering::Relaxed) + 1;
    let (mut response, refused) = endpoint.respond(&request).await;
    if refused {
        debug!("[METRICS] refused a request ({})", response.status());
        session.refused.store(true, Ordering::Relaxed);
    }
    if refused || served >= MAX_REQUESTS {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// Serves requests on one connection until the client closes, asks to
/// close, breaks a limit, or [`MAX_REQUESTS`] were served.
async fn connection<S>(stream: S, endpoint: &Endpoint)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = HttpSession::default();
    let session = &session;
    let mut io = Guarded {
        stream,
        session,
        stalled: None,
    };
    let served = http1()
        .serve_connection(
            TokioIo::new(&mut io),
            service_fn(move |request| handle(endpoint, session, request)),
        )
        .await;
    let refused = match served {
        Ok(()) => session.refused.load(Ordering::Relaxed),
        Err(e) if e.is_timeout() => {
            if !session.head_begun.load(Ordering::Relaxed) {
                return;
            }
            debug!("[METRICS] refused a request: head not complete in time");
            let late = canned(
                StatusCode::REQUEST_TIMEOUT,
                "request head not complete in time\n",
            );
            if write(&mut io.stream, late.as_bytes()).await.is_err() {
                return;
            }
            true
        }
        // hyper has answered 400 or 431 and shut its side.
        Err(e) if e.is_parse() => {
            debug!("[METRICS] refused a request: {e}");
            true
        }
        Err(e) => {
            debug!("[METRICS] connection ended: {e}");
            false
        }
    };
    if refused {
        linger(&mut io.stream).await;
    }
}

/// Closes gracefully after a refusal: the client may still be sending,
/// and closing with unread bytes would make the kernel reset the
/// connection and lose the response. So the write side is shut first and
/// what arrives is read and dropped, bounded by [`LINGER`] and
/// [`LINGER_BYTES`].
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
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

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8]) -> io::Result<()> {
    match tokio::time::timeout(WRITE_DEADLINE, async {
        stream.write_all(out).await?;
        stream.flush().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// The connection's stream as hyper sees it. It notes when a request head
/// begins to arrive (see [`HttpSession::head_begun`]), and it fails a write
/// that the client has kept waiting for [`WRITE_DEADLINE`]: the clock
/// starts when the socket first takes no more and stops when everything
/// hyper wrote has been flushed, so a response must be out within the
/// deadline however slowly the client reads.
struct Guarded<'a, S> {
    stream: S,
    session: &'a HttpSession,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<'_, S> {
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            return poll;
        }
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_DEADLINE)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.session.head_begun.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.deadline(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = poll {
            this.stalled = None;
        }
        this.deadline(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.deadline(cx, poll)
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
    use tokio::io::DuplexStream;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    fn endpoint() -> (Arc<Endpoint>, CancellationToken) {
        let shutdown = CancellationToken::new();
        let e = Endpoint::new(Arc::new(Stats::default()), shutdown.clone());
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
        let out = exchange(&e, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("Content-Type: text/plain; version=0.0.4"),
            "{out}"
        );
        assert!(out.contains("Cache-Control: no-store\r\n"), "{out}");
        assert!(
            out.contains("\npluto2_recipients_delivered_total 2\n"),
            "{out}"
        );
    }

    /// An HTTP/1.0 client is answered in its version (hyper's rule) and
    /// the connection closes at once, without waiting for the client.
    #[tokio::test(start_paused = true)]
    async fn http_1_0_gets_one_answer_and_the_close() {
        let (e, _) = endpoint();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"GET /live HTTP/1.0\r\n\r\nGET /live HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        connection(server, &e).await;
        assert!(started.elapsed() < HEAD_DEADLINE, "{:?}", started.elapsed());
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        assert_eq!(out.matches("HTTP/1.").count(), 1, "{out}");
    }

    #[tokio::test]
    async fn it_closes_with_a_status_on_a_bad_head() {
        let (e, _) = endpoint();
        for bad in [
            &b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET http://localhost/metrics HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost : x\r\n\r\n",
            b"G(T /x HTTP/1.1\r\n\r\n",
        ] {
            // The request after it is not served.
            let out = exchange(&e, &[bad, b"GET /live HTTP/1.1\r\n\r\n"].concat()).await;
            assert_eq!(statuses(&out), ["400"], "{}", String::from_utf8_lossy(bad));
        }
        let out = exchange(&e, b"POST /live HTTP/1.1\r\nContent-Length: 1\r\n\r\nx").await;
        assert!(
            out.ends_with("\r\n\r\nrequests with a body are not accepted\n"),
            "{out}"
        );
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(statuses(&exchange(&e, &big).await), ["431"]);
        // Just under the cap, the head is read.
        let mut fits = b"GET /live HTTP/1.1\r\nX: ".to_vec();
        fits.resize(MAX_HEAD - 100, b'a');
        fits.extend_from_slice(b"\r\n\r\n");
        assert_eq!(statuses(&exchange(&e, &fits).await), ["200"]);
    }

    #[tokio::test]
    async fn it_refuses_more_header_fields_than_allowed() {
        let (e, _) = endpoint();
        let head = |fields: usize| {
            let mut raw = b"GET /live HTTP/1.1\r\n".to_vec();
            for i in 0..fields {
                raw.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            raw
        };
        assert_eq!(statuses(&exchange(&e, &head(MAX_HEADERS)).await), ["200"]);
        assert_eq!(
            statuses(&exchange(&e, &head(MAX_HEADERS + 1)).await),
            ["431"]
        );
    }

    #[tokio::test]
    async fn it_closes_a_connection_after_its_last_allowed_request() {
        let (e, _) = endpoint();
        let input = b"GET /live HTTP/1.1\r\n\r\n".repeat(MAX_REQUESTS + 5);
        let out = exchange(&e, &input).await;
        assert_eq!(statuses(&out).len(), MAX_REQUESTS);
        // Only the last response says so.
        assert_eq!(out.matches("Connection: close\r\n").count(), 1);
        let last = out.rsplit("HTTP/1.1 ").next().unwrap();
        assert!(last.contains("Connection: close\r\n"), "{last}");
    }

    /// Reads one response to `GET /live` (it ends with its body).
    async fn read_live(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        while !out.ends_with(b"\r\n\r\nlive\n") {
            let mut chunk = [0u8; 512];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_without_a_word_at_the_head_deadline() {
        let (e, _) = endpoint();
        let (mut client, server) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move { connection(server, &e).await });
        client
            .write_all(b"GET /live HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(read_live(&mut client).await.starts_with("HTTP/1.1 200 "));
        let idle = Instant::now();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&rest), "");
        let at = idle.elapsed();
        assert!(at >= HEAD_DEADLINE, "{at:?}");
        assert!(at < HEAD_DEADLINE + Duration::from_millis(100), "{at:?}");
        server.await.unwrap();
    }

    /// A client that asks and asks but never reads: once the responses
    /// fill every buffer, the connection is given up at the write
    /// deadline.
    #[tokio::test(start_paused = true)]
    async fn it_gives_up_on_a_client_that_does_not_read() {
        let (e, _) = endpoint();
        let (client, server) = tokio::io::duplex(1024);
        let (_unread, mut to_server) = tokio::io::split(client);
        // 404s are the longest answers that need no spool.
        let asks = b"GET /x HTTP/1.1\r\n\r\n".repeat(MAX_REQUESTS - 1);
        let writer = tokio::spawn(async move {
            let _ = to_server.write_all(&asks).await;
            to_server
        });
        let started = Instant::now();
        tokio::time::timeout(3 * WRITE_DEADLINE, connection(server, &e))
            .await
            .expect("the connection was never given up");
        let at = started.elapsed();
        assert!(at >= WRITE_DEADLINE, "{at:?}");
        assert!(at < WRITE_DEADLINE + Duration::from_millis(100), "{at:?}");
        drop(writer.await.unwrap());
    }

    /// Hands in-memory connections to the accept loop.
    struct Pipe(mpsc::UnboundedReceiver<DuplexStream>);

    impl Accept for Pipe {
        type Stream = DuplexStream;
        type Peer = ();
        async fn accept(&mut self) -> io::Result<(DuplexStream, ())> {
            match self.0.recv().await {
                Some(stream) => Ok((stream, ())),
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn it_serves_at_most_max_connections_at_once() {
        let (e, _) = endpoint();
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move { run(&mut Pipe(rx), &e, &stop).await }
        });
        let connect = || {
            let (client, server) = tokio::io::duplex(4096);
            tx.send(server).unwrap();
            client
        };
        let ask = b"GET /live HTTP/1.1\r\n\r\n";
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut c = connect();
            c.write_all(ask).await.unwrap();
            assert!(read_live(&mut c).await.starts_with("HTTP/1.1 200 "));
            held.push(c);
        }
        // One more is told so at once, without being read.
        let mut extra = connect();
        let mut out = String::new();
        extra.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{out}"
        );
        assert!(
            out.contains("Content-Length: 29\r\n")
                && out.ends_with("\r\n\r\ntoo many metrics connections\n"),
            "{out}"
        );
        // One leaves: a newcomer is served (once its task has ended).
        drop(held.pop());
        let mut tries = 0;
        loop {
            let mut c = connect();
            c.write_all(b"GET /live HTTP/1.1\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            let _ = c.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200 ") {
                break;
            }
            tries += 1;
            assert!(tries < 100, "{out}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(tries < 10, "{tries} tries");
        stop.cancel();
        server.await.unwrap();
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
