//! The SMTP listener: sockets, limits and timeouts around the pure session.
//!
//! Each accepted connection gets its own task, so a slow client only ever
//! delays itself. What one client can take is bounded:
//!
//! * **Connections**: a client over its rate limit is told `421` and closed
//!   without spawning anything; a full table of `-max-connections` sheds its
//!   slowest session to make room (`smtp::connections`).
//! * **Time**: `-idle-timeout` between reads and writes; `-session-timeout`
//!   for the whole session, however busy, so trickling a byte every few
//!   seconds cannot hold a slot for ever; and in DATA an average of at least
//!   `-min-data-rate` bytes per second after a grace period of
//!   `-idle-timeout` (at most [`DATA_GRACE`]): DATA must be done by
//!   `start + grace + bytes / rate`, the way Postfix's per-request deadline
//!   with `smtpd_min_data_rate` works. All three end in `421 4.4.2`.
//! * **Memory**: message bodies draw from one budget (`smtp::memory_budget`),
//!   checked after every read; a session it cannot cover gets `452 4.3.1`.
//! * **File descriptors**: a failing `accept` backs off and logs once per
//!   episode (`listen`, the accept loop every listener shares).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::sync::RwLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::connections::{ConnectionTable, Slot};
use super::memory_budget::{MemoryBudget, Reservation};
use super::proxy_header::{self, ProxySource};
use super::rate_limit::SessionRateLimiter;
use super::reply::Reply;
use super::session::{Session, SessionConfig, Step};
use crate::BoxFuture;
use crate::envelope::{EnqueueOutcome, Message};
use crate::listen::accept_until;
use crate::redact::Sensitive;

/// Read size per syscall; DATA is decoded as it arrives, so this is also
/// roughly the per-session buffer in steady state.
const READ_CHUNK: usize = 16 * 1024;

/// Longest grace before `-min-data-rate` applies to a DATA phase.
pub const DATA_GRACE: Duration = Duration::from_secs(30);

use crate::listen::LogThrottle;

/// Everything a connection task needs, shared read-only.
pub struct ServerContext {
    pub session: Arc<SessionConfig>,
    /// Swapped whole on SIGHUP ([`ServerContext::set_rate_limiter`]); a
    /// connection takes the current one when it is admitted.
    pub rate_limiter: RwLock<Arc<SessionRateLimiter>>,
    pub idle_timeout: Duration,
    /// Whole-session deadline, counted from the accept.
    pub session_timeout: Duration,
    /// Bytes per second DATA must average after its grace; 0 = no minimum.
    pub min_data_rate: u64,
    pub proxy_protocol: bool,
    pub connections: Arc<ConnectionTable>,
    /// Shared by all sessions for the message bodies they hold.
    pub memory: Arc<MemoryBudget>,
    /// Throttles the log line about transactions refused for memory.
    pub memory_refusals: LogThrottle,
    /// Answers RCPT-time "does this domain have a mail server?" questions.
    pub domain_check: Option<Arc<dyn DomainCheck>>,
    /// Answers RCPT-time "does node policy refuse this recipient?"
    /// (`-dest-block`); `None` refuses nothing.
    pub recipient_check: Option<Arc<dyn RecipientCheck>>,
    /// Takes every finished message; the listener knows nothing of what
    /// happens to it (padding, cover, mixing, counting are node policy).
    pub sink: Arc<dyn MessageSink>,
    /// Told how sessions end and which refusals they get, for counting.
    pub events: Arc<dyn SessionEvents>,
}

/// What the listener reports for counting. A trait so the listener does
/// not depend on node policy; every value is from a small fixed set, so
/// nothing reported can identify a client.
pub trait SessionEvents: Send + Sync {
    fn session_ended(&self, end: SessionEnd);
    /// A 4xx or 5xx reply went to a client.
    fn refused(&self, refusal: Refusal);
}

/// How an SMTP connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The dialogue ended: QUIT, or a closing reply after too many errors.
    Closed,
    /// The client closed the connection.
    ClientClosed,
    /// An idle, session or DATA-rate time limit ran out (421 4.4.2).
    Timeout,
    /// Shed to admit a newcomer (-max-connections).
    Shed,
    /// The daemon stopped (421 4.3.0).
    Shutdown,
    /// A socket error.
    Error,
    /// Over -rate-limit: told 421 4.7.0 before any dialogue.
    RateLimited,
    /// With -proxy-protocol: no usable PROXY header.
    ProxyHeader,
}

impl SessionEnd {
    pub const ALL: [SessionEnd; 8] = [
        SessionEnd::Closed,
        SessionEnd::ClientClosed,
        SessionEnd::Timeout,
        SessionEnd::Shed,
        SessionEnd::Shutdown,
        SessionEnd::Error,
        SessionEnd::RateLimited,
        SessionEnd::ProxyHeader,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SessionEnd::Closed => "closed",
            SessionEnd::ClientClosed => "client_closed",
            SessionEnd::Timeout => "timeout",
            SessionEnd::Shed => "shed",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Error => "error",
            SessionEnd::RateLimited => "rate_limited",
            SessionEnd::ProxyHeader => "proxy_header",
        }
    }
}

/// A 4xx or 5xx reply, reduced to what may be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub class: ReplyClass,
    pub reason: RefusalReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    /// 4xx: try again later.
    Temporary,
    /// 5xx: do not try again.
    Permanent,
}

impl ReplyClass {
    pub fn label(self) -> &'static str {
        match self {
            ReplyClass::Temporary => "temporary",
            ReplyClass::Permanent => "permanent",
        }
    }
}

/// Why a client was refused: the subject of the reply's enhanced status
/// code (RFC 3463 §3: `class.subject.detail`). A fixed set, so it can
/// label a counter; a reason that needs its own label (say, a blocked
/// destination) is a new variant, with its label, reported where the
/// refusal is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// X.1.X: a bad or unacceptable address (no such domain, our own name).
    Addressing,
    /// X.2.X: the mailbox (message too large for it).
    Mailbox,
    /// X.3.X: the mail system (storage full, memory budget, shutting down).
    MailSystem,
    /// X.4.X: network and routing (time limits, loops, too many connections).
    Network,
    /// X.5.X: the protocol (syntax, sequence, too many recipients).
    Protocol,
    /// X.6.X: the content (bare LF, bad encoding).
    Content,
    /// X.7.X: security or policy (rate limit).
    Policy,
    /// No enhanced status code, or a subject RFC 3463 does not define.
    Other,
}

impl RefusalReason {
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::Addressing => "addressing",
            RefusalReason::Mailbox => "mailbox",
            RefusalReason::MailSystem => "mail_system",
            RefusalReason::Network => "network",
            RefusalReason::Protocol => "protocol",
            RefusalReason::Content => "content",
            RefusalReason::Policy => "policy",
            RefusalReason::Other => "other",
        }
    }
}

impl Refusal {
    /// The refusal a reply is, or `None` for a 2xx or 3xx reply.
    pub fn of(reply: &Reply) -> Option<Refusal> {
        let class = match reply.code() / 100 {
            4 => ReplyClass::Temporary,
            5 => ReplyClass::Permanent,
            _ => return None,
        };
        // `4.7.0 text`: the subject is the number between the dots.
        let status = reply.first_line().split(' ').next().unwrap_or("");
        let mut parts = status.split('.');
        let subject = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(c), Some(s), Some(d), None)
                if c.len() == 1
                    && [c, s, d]
                        .iter()
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                s
            }
            _ => "",
        };
        let reason = match subject {
            "1" => RefusalReason::Addressing,
            "2" => RefusalReason::Mailbox,
            "3" => RefusalReason::MailSystem,
            "4" => RefusalReason::Network,
            "5" => RefusalReason::Protocol,
            "6" => RefusalReason::Content,
            "7" => RefusalReason::Policy,
            _ => RefusalReason::Other,
        };
        Some(Refusal { class, reason })
    }
}

/// Queues `reply` for the client, counting it if it refuses something.
fn answer(ctx: &ServerContext, reply: &Reply, out: &mut Vec<u8>) {
    if let Some(refusal) = Refusal::of(reply) {
        ctx.events.refused(refusal);
    }
    reply.encode(out);
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

/// RCPT-time recipient policy, implemented by node policy (the
/// `-dest-block` list). A trait so the server does not depend on it; the
/// implementation counts and logs what it refuses.
pub trait RecipientCheck: Send + Sync {
    /// True if mail to `recipient` (`local@domain`) must be refused.
    fn refuses(&self, recipient: &str) -> bool;
}

impl ServerContext {
    /// The rate limiter in force now.
    pub fn rate_limiter(&self) -> Arc<SessionRateLimiter> {
        self.rate_limiter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a new rate limiter in force (reload). Sessions already open
    /// are not affected; the new one starts with full quotas for everyone.
    pub fn set_rate_limiter(&self, limiter: SessionRateLimiter) {
        *self.rate_limiter.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(limiter);
    }
}

/// Accepts until `shutdown` fires; connection tasks are spawned on `tracker`
/// so the caller can wait for them to drain.
pub async fn serve(
    mut listener: TcpListener,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let sheds = LogThrottle::default();
    accept_until(&mut listener, "SMTP", &shutdown, |stream, peer| {
        // The rate limit comes first, so a refused client cannot shed anyone.
        if !ctx.proxy_protocol && !admit(&ctx, peer.ip(), &stream) {
            return;
        }
        let admission = ctx.connections.admit(Instant::now());
        if admission.shed_another
            && let Some(n) = sheds.note(Instant::now())
        {
            info!(
                "[CONN] -max-connections reached: shed {n} slowest session(s) to admit newcomers"
            );
        }
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            connection(stream, peer, ctx, shutdown, admission.slot).await;
        });
    })
    .await;
    drain(&listener, &ctx, &tracker).await;
    debug!("[CONN] listener stopped");
}

/// The stop has begun: no new session starts, and until the open ones
/// ended a newcomer is told `421` at once (a client retries later, as
/// RFC 5321 asks of a 4xx greeting) instead of waiting in the backlog of a
/// listener that is about to close, or being reset by it.
async fn drain(listener: &TcpListener, ctx: &ServerContext, tracker: &TaskTracker) {
    tracker.close();
    let reply = Reply::new(
        421,
        "4.3.0",
        format!("{} shutting down, try again later", ctx.session.hostname),
    );
    loop {
        tokio::select! {
            _ = tracker.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => refuse(ctx, &stream, &reply),
                // Out of descriptors: the sessions' end frees them.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
        }
    }
}

/// Applies the per-identity rate limit; tells a refused client why.
fn admit(ctx: &ServerContext, identity: IpAddr, stream: &TcpStream) -> bool {
    if ctx.rate_limiter().admit(identity) {
        return true;
    }
    info!("[CONN] rate limit exceeded by {}", Sensitive(identity));
    refuse(
        ctx,
        stream,
        &Reply::new(421, "4.7.0", "too many sessions from you, try again later"),
    );
    ctx.events.session_ended(SessionEnd::RateLimited);
    false
}

/// Best-effort one-shot reply on a fresh socket. Its send buffer is empty,
/// so a non-blocking write of one short line succeeds without a task.
fn refuse(ctx: &ServerContext, stream: &TcpStream, reply: &Reply) {
    let mut out = Vec::new();
    answer(ctx, reply, &mut out);
    let _ = stream.try_write(&out);
}

/// Why a connection ended early, for the debug log.
enum Ended {
    Done,
    PeerClosed,
    Timeout(Limit),
    Shed,
    Shutdown,
    Io(std::io::Error),
}

/// Which time limit a client ran into.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Idle,
    Session,
    DataRate,
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
    slot: Slot,
) {
    debug!("[CONN] accepted {}", Sensitive(peer));
    let _ = stream.set_nodelay(true);
    let mut input = Input::default();
    let mut watch = Watch {
        idle: ctx.idle_timeout,
        session_end: Instant::now() + ctx.session_timeout,
        data: None,
        slot,
        shutdown,
    };
    let mut identity = peer.ip();
    if ctx.proxy_protocol {
        match read_proxy_header(&mut stream, &mut input, &watch).await {
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
                ctx.events.session_ended(SessionEnd::ProxyHeader);
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
        &mut watch,
    )
    .await;
    ctx.events.session_ended(match &ended {
        Ended::Done => SessionEnd::Closed,
        Ended::PeerClosed => SessionEnd::ClientClosed,
        Ended::Timeout(_) => SessionEnd::Timeout,
        Ended::Shed => SessionEnd::Shed,
        Ended::Shutdown => SessionEnd::Shutdown,
        Ended::Io(_) => SessionEnd::Error,
    });
    match ended {
        Ended::Done | Ended::PeerClosed => {}
        Ended::Timeout(limit) => debug!("[CONN] closed: {limit:?} time limit"),
        Ended::Shed => debug!("[CONN] shed to admit a newcomer"),
        Ended::Shutdown => debug!("[CONN] closed for shutdown"),
        Ended::Io(e) => debug!("[CONN] connection error: {e}"),
    }
    let _ = stream.shutdown().await;
}

/// The limits one connection runs under while it waits for input.
struct Watch {
    idle: Duration,
    session_end: Instant,
    /// Set while the session is in DATA.
    data: Option<DataClock>,
    slot: Slot,
    shutdown: CancellationToken,
}

/// Progress of one DATA phase, for the minimum rate.
struct DataClock {
    /// When DATA must be complete if no more bytes arrive.
    deadline: Instant,
}

impl Watch {
    /// The earliest hard deadline and which limit it is.
    fn deadline(&self) -> (Instant, Limit) {
        match &self.data {
            Some(data) if data.deadline < self.session_end => (data.deadline, Limit::DataRate),
            _ => (self.session_end, Limit::Session),
        }
    }

    /// Follows the session into and out of DATA; each byte received in
    /// DATA moves its deadline by `1 / -min-data-rate` seconds.
    fn track_data(&mut self, in_data: bool, min_rate: u64) {
        match (in_data, &self.data) {
            (true, None) if min_rate > 0 => {
                self.data = Some(DataClock {
                    deadline: Instant::now() + self.idle.min(DATA_GRACE),
                });
            }
            (false, Some(_)) => self.data = None,
            _ => {}
        }
    }

    fn received(&mut self, n: usize, min_rate: u64) {
        self.slot.received(n);
        if let Some(data) = &mut self.data {
            data.deadline += Duration::from_secs_f64(n as f64 / min_rate as f64);
        }
    }
}

/// Reads the PROXY v1 line before anything else; nothing is sent to the
/// client first, as the PROXY protocol requires.
async fn read_proxy_header(
    stream: &mut TcpStream,
    input: &mut Input,
    watch: &Watch,
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
        match input.fill(stream, watch).await {
            Fill::Data(n) => watch.slot.received(n),
            Fill::Eof => return Err("client closed before the PROXY header".into()),
            Fill::Timeout(_) => return Err("no PROXY header in time".into()),
            Fill::Shed => return Err("shed to admit a newcomer".into()),
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
    watch: &mut Watch,
) -> Ended {
    let mut out = Vec::with_capacity(512);
    answer(ctx, &session.greeting(), &mut out);
    let mut memory = Reservation::new(ctx.memory.clone());
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
        match session.data_buffered() {
            Some(buffered) if !memory.cover(buffered) => {
                session.drop_data_for_memory();
                if let Some(n) = ctx.memory_refusals.note(Instant::now()) {
                    info!(
                        "[SMTP] -data-memory spent: {n} message(s) refused with 452 4.3.1 since the last such line"
                    );
                }
            }
            Some(_) => {}
            // The body of an Enqueue is still held until the sink answers.
            None if !matches!(step, Step::Enqueue(_)) => memory.release(),
            None => {}
        }
        match step {
            Step::Reply(reply) => answer(ctx, &reply, &mut out),
            Step::Close(reply) => {
                answer(ctx, &reply, &mut out);
                let _ = write(stream, &mut out, watch).await;
                return Ended::Done;
            }
            Step::Enqueue(message) => {
                let recipients = message.envelope.recipients.len();
                let outcome = ctx.sink.accept(message).await;
                memory.release();
                if outcome == EnqueueOutcome::OwnTraffic {
                    // The sink recognised this node's own traffic: the
                    // session it came in does not count.
                    ctx.rate_limiter().refund(identity);
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
            Step::CheckRecipient(recipient) => {
                let refused = ctx
                    .recipient_check
                    .as_ref()
                    .is_some_and(|check| check.refuses(&recipient));
                follow_up = Some(session.recipient_checked(refused));
            }
            Step::NeedInput => {
                // Replies to a pipelined group go out together, once the
                // session has consumed everything it was given (RFC 2920).
                if let Err(e) = write(stream, &mut out, watch).await {
                    return match e {
                        WriteError::Shed => shed(ctx, stream),
                        WriteError::Io(e) => Ended::Io(e),
                    };
                }
                watch.track_data(session.data_buffered().is_some(), ctx.min_data_rate);
                match input.fill(stream, watch).await {
                    Fill::Data(n) => watch.received(n, ctx.min_data_rate),
                    Fill::Eof => return Ended::PeerClosed,
                    Fill::Timeout(limit) => {
                        answer(ctx, &session.timed_out(), &mut out);
                        let _ = write(stream, &mut out, watch).await;
                        return Ended::Timeout(limit);
                    }
                    Fill::Shed => return shed(ctx, stream),
                    Fill::Shutdown => {
                        answer(ctx, &session.shutting_down(), &mut out);
                        let _ = write(stream, &mut out, watch).await;
                        return Ended::Shutdown;
                    }
                    Fill::Io(e) => return Ended::Io(e),
                }
            }
        }
    }
}

/// Tells a shed session why, without waiting: its slot already belongs to
/// the newcomer, so a client that does not read must not keep the task.
fn shed(ctx: &ServerContext, stream: &TcpStream) -> Ended {
    refuse(
        ctx,
        stream,
        &Reply::new(
            421,
            "4.4.2",
            "too many connections: closing the slowest, try again later",
        ),
    );
    Ended::Shed
}

enum WriteError {
    Shed,
    Io(std::io::Error),
}

/// Writes and clears `out`; a client that stops reading is cut off after
/// the idle timeout instead of holding the task forever, and at once if
/// it is shed.
async fn write(stream: &mut TcpStream, out: &mut Vec<u8>, watch: &Watch) -> Result<(), WriteError> {
    if out.is_empty() {
        return Ok(());
    }
    let result = tokio::select! {
        _ = watch.slot.shed().cancelled() => Err(WriteError::Shed),
        written = tokio::time::timeout(watch.idle, stream.write_all(out)) => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WriteError::Io(e)),
            Err(_) => Err(WriteError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            ))),
        },
    };
    out.clear();
    result
}

enum Fill {
    /// This many bytes arrived.
    Data(usize),
    Eof,
    Timeout(Limit),
    Shed,
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

    /// Reads once, unless a limit of `watch` comes first.
    async fn fill(&mut self, stream: &mut TcpStream, watch: &Watch) -> Fill {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(READ_CHUNK);
        let (deadline, limit) = watch.deadline();
        tokio::select! {
            _ = watch.shutdown.cancelled() => Fill::Shutdown,
            _ = watch.slot.shed().cancelled() => Fill::Shed,
            _ = tokio::time::sleep_until(deadline) => Fill::Timeout(limit),
            read = tokio::time::timeout(watch.idle, stream.read_buf(&mut self.buf)) => match read {
                Err(_) => Fill::Timeout(Limit::Idle),
                Ok(Ok(0)) => Fill::Eof,
                Ok(Ok(n)) => Fill::Data(n),
                Ok(Err(e)) => Fill::Io(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_classifies_refusals_by_reply_class_and_enhanced_code_subject() {
        let cases = [
            (
                Reply::new(550, "5.1.2", "no"),
                Some((ReplyClass::Permanent, RefusalReason::Addressing)),
            ),
            (
                Reply::new(452, "4.5.3", "x"),
                Some((ReplyClass::Temporary, RefusalReason::Protocol)),
            ),
            (
                Reply::new(421, "4.7.0", "x"),
                Some((ReplyClass::Temporary, RefusalReason::Policy)),
            ),
            (
                Reply::new(554, "5.4.6", "x"),
                Some((ReplyClass::Permanent, RefusalReason::Network)),
            ),
            (
                Reply::new(452, "4.3.1", "x"),
                Some((ReplyClass::Temporary, RefusalReason::MailSystem)),
            ),
            (
                Reply::new(552, "5.3.4", "x"),
                Some((ReplyClass::Permanent, RefusalReason::MailSystem)),
            ),
            (
                Reply::plain(500, "5.x.1 odd"),
                Some((ReplyClass::Permanent, RefusalReason::Other)),
            ),
            (
                Reply::plain(554, "no code"),
                Some((ReplyClass::Permanent, RefusalReason::Other)),
            ),
            (
                Reply::plain(554, "5.12.1.1 too many parts"),
                Some((ReplyClass::Permanent, RefusalReason::Other)),
            ),
            (Reply::new(250, "2.1.0", "ok"), None),
            (Reply::plain(354, "go on"), None),
        ];
        for (reply, want) in cases {
            let got = Refusal::of(&reply).map(|r| (r.class, r.reason));
            assert_eq!(got, want, "{reply}");
        }
    }
}

#[cfg(test)]
mod drain_tests {
    use std::num::NonZeroU32;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::sync::Notify;

    use super::*;

    /// Holds every message until the test lets it go: a session stuck in
    /// its commit, as under load.
    struct HeldSink {
        arrived: Notify,
        release: Notify,
    }

    impl MessageSink for HeldSink {
        fn accept(&self, _message: Message) -> BoxFuture<'_, EnqueueOutcome> {
            Box::pin(async {
                self.arrived.notify_one();
                self.release.notified().await;
                EnqueueOutcome::Queued
            })
        }
    }

    struct NoEvents;

    impl SessionEvents for NoEvents {
        fn session_ended(&self, _end: SessionEnd) {}
        fn refused(&self, _refusal: Refusal) {}
    }

    fn context(sink: Arc<HeldSink>) -> Arc<ServerContext> {
        Arc::new(ServerContext {
            session: Arc::new(SessionConfig {
                hostname: "test.invalid".into(),
                max_message_size: 1 << 20,
                max_recipients: 10,
                max_errors: 10,
                check_domains: false,
                check_recipients: false,
            }),
            rate_limiter: RwLock::new(Arc::new(SessionRateLimiter::new(
                NonZeroU32::new(100).unwrap(),
                Duration::from_secs(60),
            ))),
            idle_timeout: Duration::from_secs(60),
            session_timeout: Duration::from_secs(60),
            min_data_rate: 0,
            proxy_protocol: false,
            connections: ConnectionTable::new(16),
            memory: MemoryBudget::new(1 << 20),
            memory_refusals: LogThrottle::default(),
            domain_check: None,
            recipient_check: None,
            sink,
            events: Arc::new(NoEvents),
        })
    }

    async fn line(reader: &mut BufReader<TcpStream>) -> String {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        line
    }

    /// While a session still finishes its message after the stop began,
    /// the listener stays open and tells every newcomer `421` at once;
    /// it closes only after the last session ended, whose message was
    /// answered, not dropped.
    #[tokio::test]
    async fn a_stopping_listener_answers_421_until_its_last_session_ended() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Arc::new(HeldSink {
            arrived: Notify::new(),
            release: Notify::new(),
        });
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            context(sink.clone()),
            stop.clone(),
            TaskTracker::new(),
        ));
        let mut busy = BufReader::new(TcpStream::connect(addr).await.unwrap());
        assert!(line(&mut busy).await.starts_with("220"));
        busy.get_mut()
            .write_all(b"HELO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
            .await
            .unwrap();
        for _ in 0..4 {
            line(&mut busy).await;
        }
        busy.get_mut()
            .write_all(b"Subject: x\r\n\r\nbody\r\n.\r\n")
            .await
            .unwrap();
        sink.arrived.notified().await;

        stop.cancel();
        for _ in 0..3 {
            let mut newcomer = BufReader::new(TcpStream::connect(addr).await.unwrap());
            let greeting = line(&mut newcomer).await;
            assert!(greeting.starts_with("421 4.3.0"), "{greeting:?}");
        }
        assert!(!server.is_finished(), "the listener waits for the session");

        sink.release.notify_one();
        let reply = line(&mut busy).await;
        assert!(reply.starts_with("250"), "{reply:?}");
        server.await.unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "closed once the last session ended"
        );
    }
}
