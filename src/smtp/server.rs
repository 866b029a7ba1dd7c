//! The SMTP listener: sockets, limits and timeouts around the pure session.
//!
//! Each accepted connection gets its own task, so a slow client only ever
//! delays itself. Load is bounded at the door: a connection beyond
//! `-max-connections` or over its rate limit is told `421` and closed
//! without spawning anything.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::proxy_header::{self, ProxySource};
use super::rate_limit::SessionRateLimiter;
use super::reply::Reply;
use super::session::{Session, SessionConfig, Step};
use crate::BoxFuture;
use crate::envelope::{EnqueueOutcome, Message};
use crate::redact::Sensitive;

/// Read size per syscall; DATA is decoded as it arrives, so this is also
/// roughly the per-session buffer in steady state.
const READ_CHUNK: usize = 16 * 1024;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Everything a connection task needs, shared read-only.
pub struct ServerContext {
    pub session: Arc<SessionConfig>,
    pub rate_limiter: SessionRateLimiter,
    pub idle_timeout: Duration,
    pub proxy_protocol: bool,
    pub connections: Arc<Semaphore>,
    /// Answers RCPT-time "does this domain have a mail server?" questions.
    pub domain_check: Option<Arc<dyn DomainCheck>>,
    /// Takes every finished message; the listener knows nothing of what
    /// happens to it (padding, cover, mixing, counting are node policy).
    pub sink: Arc<dyn MessageSink>,
}

/// Where the listener hands a message whose DATA ended well. The answer
/// becomes the client's reply, so it must come only once the message is
/// durable (or definitely refused). A trait so the server does not depend
/// on node policy or storage.
pub trait MessageSink: Send + Sync {
    fn accept(&self, message: Message) -> BoxFuture<'_, EnqueueOutcome>;
}

/// RCPT-time domain check, implemented by the relay's MX resolver (through
/// Tor). A trait so the server does not depend on the relay module.
pub trait DomainCheck: Send + Sync {
    /// True only if the domain provably cannot receive mail.
    fn undeliverable<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, bool>;
}

/// Accepts until `shutdown` fires; connection tasks are spawned on `tracker`
/// so the caller can wait for them to drain.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!("[CONN] accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            info!("[CONN] refused a connection: -max-connections reached");
            refuse(
                &stream,
                &Reply::new(421, "4.7.0", "too many connections, try again later"),
            );
            continue;
        };
        if !ctx.proxy_protocol && !admit(&ctx, peer.ip(), &stream) {
            continue;
        }
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            connection(stream, peer, ctx, shutdown, permit).await;
        });
    }
    debug!("[CONN] listener stopped");
}

/// Applies the per-identity rate limit; tells a refused client why.
fn admit(ctx: &ServerContext, identity: IpAddr, stream: &TcpStream) -> bool {
    if ctx.rate_limiter.admit(identity) {
        return true;
    }
    info!("[CONN] rate limit exceeded by {}", Sensitive(identity));
    refuse(
        stream,
        &Reply::new(421, "4.7.0", "too many sessions from you, try again later"),
    );
    false
}

/// Best-effort one-shot reply on a fresh socket. Its send buffer is empty,
/// so a non-blocking write of one short line succeeds without a task.
fn refuse(stream: &TcpStream, reply: &Reply) {
    let _ = stream.try_write(reply.to_string().as_bytes());
}

/// Why a connection ended early, for the debug log.
enum Ended {
    Done,
    PeerClosed,
    Timeout,
    Shutdown,
    Io(std::io::Error),
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    debug!("[CONN] accepted {}", Sensitive(peer));
    let _ = stream.set_nodelay(true);
    let mut input = Input::default();
    let mut identity = peer.ip();
    if ctx.proxy_protocol {
        match read_proxy_header(&mut stream, &mut input, ctx.idle_timeout, &shutdown).await {
            Ok(source) => {
                identity = match source {
                    ProxySource::Address(ip) => ip,
                    ProxySource::Unknown => peer.ip(),
                };
                if !admit(&ctx, identity, &stream) {
                    return;
                }
            }
            Err(reason) => {
                info!("[CONN] closed a connection: {reason}");
                return;
            }
        }
    }
    let mut session = Session::new(ctx.session.clone());
    let ended = run_session(
        &mut stream,
        &mut session,
        &mut input,
        &ctx,
        identity,
        &shutdown,
    )
    .await;
    match ended {
        Ended::Done | Ended::PeerClosed => {}
        Ended::Timeout => debug!("[CONN] idle timeout"),
        Ended::Shutdown => debug!("[CONN] closed for shutdown"),
        Ended::Io(e) => debug!("[CONN] connection error: {e}"),
    }
    let _ = stream.shutdown().await;
}

/// Reads the PROXY v1 line before anything else; nothing is sent to the
/// client first, as the PROXY protocol requires.
async fn read_proxy_header(
    stream: &mut TcpStream,
    input: &mut Input,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<ProxySource, String> {
    loop {
        match proxy_header::parse(input.pending()) {
            Ok(Some((source, len))) => {
                input.consume(len);
                return Ok(source);
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match input.fill(stream, timeout, shutdown).await {
            Fill::Data => {}
            Fill::Eof => return Err("client closed before the PROXY header".into()),
            Fill::Timeout => return Err("no PROXY header before the idle timeout".into()),
            Fill::Shutdown => return Err("shutting down".into()),
            Fill::Io(e) => return Err(e.to_string()),
        }
    }
}

async fn run_session(
    stream: &mut TcpStream,
    session: &mut Session,
    input: &mut Input,
    ctx: &ServerContext,
    identity: IpAddr,
    shutdown: &CancellationToken,
) -> Ended {
    let mut out = Vec::with_capacity(512);
    session.greeting().encode(&mut out);
    // A step that answers an Enqueue or CheckDomain request; it is handled
    // like any other before more input is read.
    let mut follow_up: Option<Step> = None;
    loop {
        let step = match follow_up.take() {
            Some(step) => step,
            None => {
                let (used, step) = session.advance(input.pending());
                input.consume(used);
                step
            }
        };
        match step {
            Step::Reply(reply) => reply.encode(&mut out),
            Step::Close(reply) => {
                reply.encode(&mut out);
                let _ = write(stream, &mut out, ctx.idle_timeout).await;
                return Ended::Done;
            }
            Step::Enqueue(message) => {
                let recipients = message.envelope.recipients.len();
                let outcome = ctx.sink.accept(message).await;
                if outcome == EnqueueOutcome::OwnTraffic {
                    // The sink recognised this node's own traffic: the
                    // session it came in does not count.
                    ctx.rate_limiter.refund(identity);
                }
                debug!("[SMTP] message with {recipients} recipient(s): {outcome:?}");
                follow_up = Some(session.enqueued(outcome));
            }
            Step::CheckDomain(domain) => {
                let undeliverable = match &ctx.domain_check {
                    Some(check) => check.undeliverable(&domain).await,
                    None => false,
                };
                follow_up = Some(session.domain_checked(undeliverable));
            }
            Step::NeedInput => {
                // Replies to a pipelined group go out together, once the
                // session has consumed everything it was given (RFC 2920).
                if let Err(e) = write(stream, &mut out, ctx.idle_timeout).await {
                    return Ended::Io(e);
                }
                match input.fill(stream, ctx.idle_timeout, shutdown).await {
                    Fill::Data => {}
                    Fill::Eof => return Ended::PeerClosed,
                    Fill::Timeout => {
                        session.timed_out().encode(&mut out);
                        let _ = write(stream, &mut out, ctx.idle_timeout).await;
                        return Ended::Timeout;
                    }
                    Fill::Shutdown => {
                        session.shutting_down().encode(&mut out);
                        let _ = write(stream, &mut out, ctx.idle_timeout).await;
                        return Ended::Shutdown;
                    }
                    Fill::Io(e) => return Ended::Io(e),
                }
            }
        }
    }
}

/// Writes and clears `out`; a client that stops reading is cut off after
/// the idle timeout instead of holding the task forever.
async fn write(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let result = match tokio::time::timeout(timeout, stream.write_all(out)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    };
    out.clear();
    result
}

enum Fill {
    Data,
    Eof,
    Timeout,
    Shutdown,
    Io(std::io::Error),
}

/// Bytes read from the client that the session has not consumed yet.
#[derive(Default)]
struct Input {
    buf: Vec<u8>,
    start: usize,
}

impl Input {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    async fn fill(
        &mut self,
        stream: &mut TcpStream,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Fill {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(READ_CHUNK);
        tokio::select! {
            _ = shutdown.cancelled() => Fill::Shutdown,
            read = tokio::time::timeout(timeout, stream.read_buf(&mut self.buf)) => match read {
                Err(_) => Fill::Timeout,
                Ok(Ok(0)) => Fill::Eof,
                Ok(Ok(_)) => Fill::Data,
                Ok(Err(e)) => Fill::Io(e),
            },
        }
    }
}
