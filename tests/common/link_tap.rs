//! A SOCKS5 proxy for tests that sees inside mixnet links.
//!
//! It stands in for Tor like [`super::socks_proxy::SocksProxy`] (same
//! handshake code): CONNECT targets are mapped to local addresses, every
//! request is recorded, targets can be refused or taken down and brought
//! back. Targets routed with [`LinkTap::route_link`] are mixnet links: the
//! tap cuts both directions of the byte stream into link frames with the
//! crate's own `frame::decode`, records each frame (kind, exact encoded
//! length, sequence number, status, time) and applies the rules the test
//! set: drop, duplicate, delay, drop-and-close, keep for a later replay.
//!
//! Everything is bounded and deterministic: a rule applies to the frames
//! it matches in the order they arrive, a given number of times; waits are
//! on observable conditions with a deadline. Every task the tap starts is
//! aborted when the tap is dropped, so no connection outlives a test.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use pluto2::wire::frame::{self, AckStatus, Frame, Hello};
use pluto2::wire::hello::{self, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::socks_proxy::{SocksRequest, read_request, reply};

/// SOCKS reply "connection refused": what a target that is down answers.
pub const REFUSED: u8 = 5;
/// SOCKS reply "host unreachable": what a target without a route answers.
pub const UNREACHABLE: u8 = 4;

/// Which way a frame went, seen from the connecting side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the connecting node to the target (HELLO, PACKET, PING).
    ToTarget,
    /// From the target back (HELLO, ACK, PONG).
    FromTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Hello,
    Packet,
    Ack,
    Ping,
    Pong,
    GetKeys,
    Keys,
    Auth,
    /// A client's FETCH, the gateway's HELD answer, the client's CONFIRM.
    Fetch,
    Held,
    Confirm,
    /// Bytes `frame::decode` refused (bad type or status). The stream
    /// is forwarded raw from here on, so the receiver sees exactly what
    /// was sent and the test can watch it close the link.
    Malformed,
    /// Bytes left over when the sender closed: an unfinished frame,
    /// forwarded as they are.
    Partial,
}

impl FrameKind {
    /// The one length every frame of this kind has on the wire, type byte
    /// included (the protocol's table, written out again here so a test
    /// catches a frame that changes size).
    pub fn fixed_len(self) -> Option<usize> {
        use pluto2::wire::frame::MAX_FRAME;
        Some(match self {
            FrameKind::Packet => MAX_FRAME,
            FrameKind::Ack => 1 + 8 + 1,
            FrameKind::Hello => 1 + 2 + 32 + 1 + 32 + 32 + 8,
            FrameKind::Auth => 1 + 64,
            FrameKind::Ping => 1 + 8 + 32 + 4,
            FrameKind::Pong => 1 + 8 + 32 + 4 + 32,
            FrameKind::GetKeys => 1 + 32,
            FrameKind::Keys => 1 + 32 + 1 + pluto2::wire::bundle::BUNDLE_SIZE,
            FrameKind::Fetch => 1 + 8,
            FrameKind::Held => 1 + 8 + 1 + 16 + 16 + pluto2::wire::packet::PAYLOAD_SIZE,
            FrameKind::Confirm => 1 + 16,
            FrameKind::Malformed | FrameKind::Partial => return None,
        })
    }
}

/// What a rule does to a frame it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Swallow the frame.
    Drop,
    /// Forward it twice, back to back.
    Duplicate,
    /// Hold it this long; frames behind it in the same stream wait too,
    /// so order is kept.
    Delay(Duration),
    /// Swallow it and close both sides: a link breaking with the frame in
    /// flight.
    DropThenClose,
    /// Forward it with the byte at this offset of the encoded frame
    /// flipped (all bits): a packet damaged in flight, which the receiving
    /// hop refuses (bad MAC) and acknowledges as rejected, so its sender's
    /// custody ends and the packet is gone for good. An offset past the
    /// frame's end forwards it unchanged.
    Corrupt(usize),
    /// Forward it and keep a copy for [`LinkTap::inject`]. Matches PACKET
    /// frames only, whatever the rule's kind says.
    ReplayLater,
}

/// One frame as the tap saw it.
#[derive(Debug, Clone)]
pub struct TapFrame {
    /// Which TCP connection (see [`LinkTap::connections`]).
    pub conn: u64,
    /// The link: the CONNECT target.
    pub host: String,
    pub port: u16,
    pub dir: Direction,
    pub kind: FrameKind,
    /// Exact encoded length in bytes (type byte included).
    pub len: usize,
    /// PACKET and ACK sequence number.
    pub seq: Option<u64>,
    /// PACKET epoch.
    pub epoch: Option<u32>,
    /// PACKET: the first 32 bytes of the Sphinx packet (its header's group
    /// element), which name one packet on one link as the sender stored
    /// it; sequence numbers are random.
    pub head: Option<[u8; 32]>,
    /// ACK status.
    pub status: Option<AckStatus>,
    /// HELLO sender identity.
    pub identity: Option<[u8; 32]>,
    /// For `Malformed`: what `decode` said.
    pub error: Option<String>,
    /// When the tap read the frame (not when it forwarded it).
    pub at: Instant,
    /// The rule action applied to it, if any.
    pub action: Option<Action>,
}

/// One proxied TCP connection.
#[derive(Debug, Clone)]
pub struct TapConn {
    pub id: u64,
    pub host: String,
    pub port: u16,
    /// Routed with `route_link` (frames parsed) rather than `route`.
    pub link: bool,
    pub opened: Instant,
    pub closed: Option<Instant>,
    /// The side that closed its sending half first, if any did.
    pub first_eof: Option<Direction>,
    /// Closed by the tap (a `DropThenClose` rule, `down` or `cut`).
    pub cut: bool,
}

/// A PACKET frame kept by a `ReplayLater` rule.
#[derive(Debug, Clone)]
pub struct Captured {
    pub host: String,
    pub port: u16,
    pub seq: u64,
    /// The whole encoded frame, ready for [`LinkTap::inject`].
    pub bytes: Vec<u8>,
}

/// Which frames a rule applies to, what it does, and how often.
#[derive(Debug, Clone)]
pub struct Rule {
    host: Option<String>,
    dir: Option<Direction>,
    kind: Option<FrameKind>,
    action: Action,
    skip: usize,
    times: usize,
}

impl Rule {
    /// Applies `action` once to the first frame on any link, any
    /// direction, any kind; narrow it with the builders.
    pub fn new(action: Action) -> Rule {
        Rule {
            host: None,
            dir: None,
            kind: None,
            action,
            skip: 0,
            times: 1,
        }
    }

    /// Only frames on the link to `host` (any port).
    pub fn link(mut self, host: &str) -> Rule {
        self.host = Some(host.to_string());
        self
    }

    pub fn dir(mut self, dir: Direction) -> Rule {
        self.dir = Some(dir);
        self
    }

    pub fn kind(mut self, kind: FrameKind) -> Rule {
        self.kind = Some(kind);
        self
    }

    /// Lets the first `n` matching frames pass untouched.
    pub fn after(mut self, n: usize) -> Rule {
        self.skip = n;
        self
    }

    /// Applies to this many matching frames (default 1), then never again.
    pub fn times(mut self, n: usize) -> Rule {
        self.times = n;
        self
    }

    fn matches(&self, host: &str, dir: Direction, kind: FrameKind) -> bool {
        let kind_ok = match self.action {
            Action::ReplayLater => kind == FrameKind::Packet,
            _ => self.kind.is_none_or(|k| k == kind),
        };
        kind_ok
            && self.host.as_deref().is_none_or(|h| h == host)
            && self.dir.is_none_or(|d| d == dir)
    }
}

/// Handle on a rule: how often it has been applied so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(usize);

struct RuleState {
    rule: Rule,
    seen: usize,
    applied: usize,
}

#[derive(Default)]
struct State {
    routes: HashMap<(String, u16), (SocketAddr, bool)>,
    refusals: HashMap<(String, u16), u8>,
    down: HashSet<(String, u16)>,
    requests: Vec<SocksRequest>,
    frames: Vec<TapFrame>,
    conns: Vec<TapConn>,
    /// Cancels a live connection; removed when it ends.
    live: HashMap<u64, CancellationToken>,
    rules: Vec<RuleState>,
    captured: Vec<Captured>,
    /// The last HELLO the connecting side sent on each link, for inject.
    hellos: HashMap<(String, u16), Hello>,
    /// The identity key of the node this tap serves, for inject's proof.
    signer: Option<SigningKey>,
    /// KEYS frames coming back on links to this host are replaced by
    /// these bytes (a node showing this tap's node another face).
    keys_for: HashMap<String, Vec<u8>>,
}

impl State {
    /// The first rule that matches and still has uses left decides.
    fn apply_rules(&mut self, host: &str, dir: Direction, kind: FrameKind) -> Option<Action> {
        for r in &mut self.rules {
            if r.applied >= r.rule.times || !r.rule.matches(host, dir, kind) {
                continue;
            }
            r.seen += 1;
            if r.seen <= r.rule.skip {
                continue;
            }
            r.applied += 1;
            return Some(r.rule.action);
        }
        None
    }

    fn conn_mut(&mut self, id: u64) -> &mut TapConn {
        // Ids are indices: connections are only ever appended.
        &mut self.conns[id as usize]
    }
}

/// Shared between the handle, the accept loop and every connection.
struct Shared {
    state: Mutex<State>,
    /// Bumped on every recorded event, so waiters wake without polling.
    changed: watch::Sender<u64>,
    /// Every task of the tap; aborted when the tap is dropped.
    tasks: Mutex<JoinSet<()>>,
}

impl Shared {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap();
        // Reap finished tasks so the set does not grow with every connection.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    fn record(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Why [`LinkTap::inject`] got no acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("no route to {0}")]
    NoRoute(String),
    #[error("no HELLO recorded on the link to {0}")]
    NoHello(String),
    #[error("no identity key to prove the HELLO with (set_signer)")]
    NoSigner,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the target closed the connection")]
    Closed,
    #[error("the target sent a frame that does not decode: {0}")]
    Malformed(#[from] frame::FrameError),
    #[error("the target answered {0:?} instead of HELLO")]
    NoHelloBack(Box<Frame>),
    #[error("no acknowledgement in time")]
    Timeout,
}

/// `wait_until` ran out of time; shows a summary, not every frame.
pub struct WaitTimeout {
    pub frames: Vec<TapFrame>,
}

impl std::fmt::Debug for WaitTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut counts: HashMap<(&str, Direction, FrameKind), usize> = HashMap::new();
        for fr in &self.frames {
            *counts.entry((&fr.host, fr.dir, fr.kind)).or_default() += 1;
        }
        let mut lines: Vec<String> = counts
            .iter()
            .map(|((h, d, k), n)| format!("{h} {d:?} {k:?}: {n}"))
            .collect();
        lines.sort();
        write!(
            f,
            "condition not met in time; {} frames seen:\n{}",
            self.frames.len(),
            lines.join("\n")
        )
    }
}

pub struct LinkTap {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// Bound on `inject` (connect, HELLO, ACK).
    patience: Duration,
}

impl Drop for LinkTap {
    fn drop(&mut self) {
        self.shared.tasks.lock().unwrap().abort_all();
    }
}

impl LinkTap {
    /// Listens on a fresh 127.0.0.1 port.
    pub async fn start() -> LinkTap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            changed: watch::channel(0).0,
            tasks: Mutex::new(JoinSet::new()),
        });
        let accepting = shared.clone();
        shared.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = accepting.clone();
                accepting.spawn(async move {
                    let _ = handle(stream, shared).await;
                });
            }
        });
        LinkTap {
            addr,
            shared,
            patience: super::PATIENCE,
        }
    }

    /// Routes `host:port` to a local address; bytes pass unparsed (an SMTP
    /// sink, say).
    pub fn route(&self, host: &str, port: u16, to: SocketAddr) {
        self.state()
            .routes
            .insert((host.to_string(), port), (to, false));
    }

    /// Routes `host:port` to a node's link listener; frames both ways are
    /// parsed, recorded and subject to the rules.
    pub fn route_link(&self, host: &str, port: u16, to: SocketAddr) {
        self.state()
            .routes
            .insert((host.to_string(), port), (to, true));
    }

    /// Answers CONNECT to `host:port` with this SOCKS reply code from now
    /// on (e.g. 0xF6, "no such onion service").
    pub fn refuse(&self, host: &str, port: u16, code: u8) {
        self.state().refusals.insert((host.to_string(), port), code);
    }

    /// Undoes `refuse`.
    pub fn unrefuse(&self, host: &str, port: u16) {
        self.state().refusals.remove(&(host.to_string(), port));
    }

    /// Takes the target down: new CONNECTs get "connection refused" and
    /// open connections to it are closed, as when a node goes away.
    pub fn down(&self, host: &str, port: u16) {
        self.state().down.insert((host.to_string(), port));
        self.cut(host, port);
    }

    /// Brings a target taken `down` back.
    pub fn up(&self, host: &str, port: u16) {
        self.state().down.remove(&(host.to_string(), port));
    }

    /// Closes every open connection to `host:port` (both sides).
    pub fn cut(&self, host: &str, port: u16) {
        let s = self.state();
        for c in s.conns.iter().filter(|c| c.host == host && c.port == port) {
            if let Some(token) = s.live.get(&c.id) {
                token.cancel();
            }
        }
    }

    /// Adds a rule after those already set (the first match decides).
    /// From now on, every KEYS frame that comes back on a link to `host`
    /// is replaced by `frame` (an encoded KEYS frame): `host` showing this
    /// tap's node another bundle than it shows everyone else.
    pub fn substitute_keys(&self, host: &str, frame: Vec<u8>) {
        self.shared.record(|s| {
            s.keys_for.insert(host.to_string(), frame);
        });
    }

    pub fn add_rule(&self, rule: Rule) -> RuleId {
        let mut s = self.state();
        s.rules.push(RuleState {
            rule,
            seen: 0,
            applied: 0,
        });
        RuleId(s.rules.len() - 1)
    }

    /// How many frames the rule has acted on.
    pub fn applied(&self, id: RuleId) -> usize {
        self.state().rules[id.0].applied
    }

    /// Removes all rules (their counts are lost).
    pub fn clear_rules(&self) {
        self.state().rules.clear();
    }

    pub fn requests(&self) -> Vec<SocksRequest> {
        self.state().requests.clone()
    }

    /// Every frame recorded so far, in the order read.
    pub fn frames(&self) -> Vec<TapFrame> {
        self.state().frames.clone()
    }

    pub fn connections(&self) -> Vec<TapConn> {
        self.state().conns.clone()
    }

    /// PACKET frames kept by `ReplayLater` rules.
    pub fn captured(&self) -> Vec<Captured> {
        self.state().captured.clone()
    }

    /// The encoded length of every PACKET frame, both directions, all links.
    pub fn packet_frame_sizes(&self) -> Vec<usize> {
        self.state()
            .frames
            .iter()
            .filter(|f| f.kind == FrameKind::Packet)
            .map(|f| f.len)
            .collect()
    }

    /// Bytes of every recorded frame, both directions, all links (for
    /// "bytes on links per byte of mail").
    pub fn bytes_on_links(&self) -> usize {
        self.state().frames.iter().map(|f| f.len).sum()
    }

    /// Frames on the link to `host` in one direction.
    pub fn frames_on(&self, host: &str, dir: Direction) -> Vec<TapFrame> {
        self.state()
            .frames
            .iter()
            .filter(|f| f.host == host && f.dir == dir)
            .cloned()
            .collect()
    }

    /// Waits until `cond` holds for the frames recorded so far and returns
    /// them; gives up after `timeout`. Wakes on every new frame or
    /// connection event rather than polling.
    pub async fn wait_until(
        &self,
        cond: impl Fn(&[TapFrame]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<TapFrame>, WaitTimeout> {
        self.wait(|s| cond(&s.frames).then(|| s.frames.clone()), timeout)
            .await
            .map_err(|s| WaitTimeout { frames: s.frames })
    }

    /// Like `wait_until`, over connections (to see a link closed).
    pub async fn wait_connections(
        &self,
        cond: impl Fn(&[TapConn]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<TapConn>, Vec<TapConn>> {
        self.wait(|s| cond(&s.conns).then(|| s.conns.clone()), timeout)
            .await
            .map_err(|s| s.conns)
    }

    async fn wait<T>(
        &self,
        check: impl Fn(&State) -> Option<T>,
        timeout: Duration,
    ) -> Result<T, StateCopy> {
        let deadline = Instant::now() + timeout;
        let mut changes = self.shared.changed.subscribe();
        loop {
            // Marks the current version seen before looking, so an event
            // between the check and the wait still wakes us.
            changes.borrow_and_update();
            if let Some(done) = check(&self.state()) {
                return Ok(done);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                let s = self.state();
                return Err(StateCopy {
                    frames: s.frames.clone(),
                    conns: s.conns.clone(),
                });
            }
        }
    }

    /// The identity key of the node whose links this tap carries: what
    /// [`LinkTap::inject`] proves its HELLO with, as that node would.
    pub fn set_signer(&self, key: SigningKey) {
        self.state().signer = Some(key);
    }

    /// Opens a new TCP connection straight to the target of `host:port`
    /// (not through the tap, so nothing is recorded), says HELLO as the
    /// connecting node did on that link (fresh nonce and clock), proves it
    /// with the key from [`LinkTap::set_signer`] once the target answered,
    /// sends `frame_bytes` as they are and returns the status of the first
    /// ACK that comes back. The target's own proof is not checked: the
    /// tap stands in for the network, not for a node.
    pub async fn inject(
        &self,
        host: &str,
        port: u16,
        frame_bytes: &[u8],
    ) -> Result<AckStatus, InjectError> {
        let (mut stream, mut buf) = self.open_link(host, port, frame_bytes).await?;
        tokio::time::timeout(self.patience, async {
            loop {
                if let Frame::Ack { status, .. } = read_frame(&mut stream, &mut buf).await? {
                    return Ok(status);
                }
            }
        })
        .await
        .map_err(|_| InjectError::Timeout)?
    }

    /// Like [`LinkTap::inject`] for many PACKET frames on one link, as a
    /// node sends them: at most `window` unacknowledged at once. Returns
    /// each frame's ACK status and when it came, in the order of the
    /// frames (each frame's sequence number must be its position + 1).
    pub async fn inject_stream(
        &self,
        host: &str,
        port: u16,
        frames: &[Vec<u8>],
        window: usize,
    ) -> Result<Vec<(AckStatus, std::time::Instant)>, InjectError> {
        let first = frames.first().map(Vec::as_slice).unwrap_or(&[]);
        let (stream, mut buf) = self.open_link(host, port, first).await?;
        let (mut reader, mut writer) = stream.into_split();
        let mut acks: Vec<Option<(AckStatus, std::time::Instant)>> = vec![None; frames.len()];
        let (mut sent, mut got) = (frames.len().min(1), 0);
        while got < frames.len() {
            while sent < frames.len() && sent - got < window {
                writer.write_all(&frames[sent]).await?;
                sent += 1;
            }
            let frame = tokio::time::timeout(self.patience, async {
                loop {
                    if let Some((f, used)) = frame::decode(&buf)? {
                        buf.drain(..used);
                        return Ok::<Frame, InjectError>(f);
                    }
                    let mut chunk = [0u8; 4096];
                    let n = reader.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(InjectError::Closed);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            })
            .await
            .map_err(|_| InjectError::Timeout)??;
            if let Frame::Ack { seq, status } = frame
                && let Some(slot) = acks.get_mut((seq as usize).wrapping_sub(1))
                && slot.is_none()
            {
                *slot = Some((status, std::time::Instant::now()));
                got += 1;
            }
        }
        Ok(acks.into_iter().flatten().collect())
    }

    /// Opens a link to the target of `host:port` as the tap's node (see
    /// [`LinkTap::inject`]) and sends `frame_bytes` right after its proof.
    async fn open_link(
        &self,
        host: &str,
        port: u16,
        frame_bytes: &[u8],
    ) -> Result<(TcpStream, Vec<u8>), InjectError> {
        let key = (host.to_string(), port);
        let (to, hello, signer) = {
            let s = self.state();
            let to = s.routes.get(&key).map(|r| r.0);
            (to, s.hellos.get(&key).copied(), s.signer.clone())
        };
        let to = to.ok_or_else(|| InjectError::NoRoute(host.to_string()))?;
        let Some(recorded) = hello else {
            return Err(InjectError::NoHello(host.to_string()));
        };
        let signer = signer.ok_or(InjectError::NoSigner)?;
        let ours = Hello {
            nonce: rand::random(),
            clock_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..recorded
        };
        tokio::time::timeout(self.patience, async {
            let mut stream = TcpStream::connect(to).await?;
            let _ = stream.set_nodelay(true);
            let mut out = Vec::new();
            Frame::Hello(ours).encode(&mut out);
            stream.write_all(&out).await?;
            let mut buf = Vec::new();
            let theirs = match read_frame(&mut stream, &mut buf).await? {
                Frame::Hello(h) => h,
                other => return Err(InjectError::NoHelloBack(Box::new(other))),
            };
            let mut out = Vec::new();
            Frame::Auth {
                signature: hello::prove(&signer, Side::Dialler, &ours, &theirs),
            }
            .encode(&mut out);
            out.extend_from_slice(frame_bytes);
            stream.write_all(&out).await?;
            Ok((stream, buf))
        })
        .await
        .map_err(|_| InjectError::Timeout)?
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }
}

/// What a timed-out wait saw last.
struct StateCopy {
    frames: Vec<TapFrame>,
    conns: Vec<TapConn>,
}

/// Reads one whole frame for `inject`; `buf` keeps what came after it.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Frame, InjectError> {
    loop {
        if let Some((f, used)) = frame::decode(buf)? {
            buf.drain(..used);
            return Ok(f);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(InjectError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn handle(mut client: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let request = read_request(&mut client).await?;
    let key = (request.host.clone(), request.port);
    let (route, refusal) = {
        let mut s = shared.state.lock().unwrap();
        s.requests.push(request);
        let refusal = s
            .refusals
            .get(&key)
            .copied()
            .or(s.down.contains(&key).then_some(REFUSED));
        (s.routes.get(&key).copied(), refusal)
    };
    shared.changed.send_modify(|n| *n += 1);
    if let Some(code) = refusal {
        client.write_all(&reply(code)).await?;
        return Ok(());
    }
    let Some((target, link)) = route else {
        client.write_all(&reply(UNREACHABLE)).await?;
        return Ok(());
    };
    let Ok(upstream) = TcpStream::connect(target).await else {
        client.write_all(&reply(REFUSED)).await?;
        return Ok(());
    };
    client.write_all(&reply(0)).await?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let cancel = CancellationToken::new();
    let id = {
        let mut s = shared.state.lock().unwrap();
        let id = s.conns.len() as u64;
        s.conns.push(TapConn {
            id,
            host: key.0.clone(),
            port: key.1,
            link,
            opened: Instant::now(),
            closed: None,
            first_eof: None,
            cut: false,
        });
        s.live.insert(id, cancel.clone());
        id
    };
    let conn = Conn {
        id,
        host: key.0,
        port: key.1,
        link,
        shared: shared.clone(),
        cancel: cancel.clone(),
    };
    let (crd, cwr) = client.into_split();
    let (urd, uwr) = upstream.into_split();
    let both = async {
        tokio::join!(
            conn.pump(crd, uwr, Direction::ToTarget),
            conn.pump(urd, cwr, Direction::FromTarget)
        )
    };
    let cut = tokio::select! {
        _ = cancel.cancelled() => true,
        _ = both => false,
    };
    // Leaving here drops all four halves: both sockets close.
    shared.record(|s| {
        s.live.remove(&id);
        let c = s.conn_mut(id);
        c.closed = Some(Instant::now());
        c.cut = cut;
    });
    Ok(())
}

/// One proxied connection, as its two pumps see it.
struct Conn {
    id: u64,
    host: String,
    port: u16,
    link: bool,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

/// Bytes to forward, not before the given instant.
type Outgoing = (Instant, Vec<u8>);

impl Conn {
    /// Moves one direction: a reader that records frames and applies the
    /// rules, and a writer that forwards what the reader let through,
    /// holding delayed frames (and everything behind them) until due.
    async fn pump(&self, rd: OwnedReadHalf, mut wr: OwnedWriteHalf, dir: Direction) {
        // Unbounded on purpose: the reader must record frames as they
        // arrive even while the writer holds a delayed one; the test that
        // sends is the bound.
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        let writer = async move {
            while let Some((due, bytes)) = rx.recv().await {
                // Most frames are due at once: skip the timer for them.
                if due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            // The sender closed its half: pass the close on.
            let _ = wr.shutdown().await;
        };
        let reader = self.read_side(rd, tx, dir);
        tokio::pin!(reader, writer);
        tokio::select! {
            _ = &mut reader => writer.await,
            // The writer only ends first when the receiver is gone: stop
            // reading what can no longer be delivered.
            _ = &mut writer => {}
        }
    }

    async fn read_side(
        &self,
        mut rd: OwnedReadHalf,
        tx: mpsc::UnboundedSender<Outgoing>,
        dir: Direction,
    ) {
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        // Set once a frame fails to decode: from then on bytes pass as read.
        let mut raw = !self.link;
        loop {
            let n = match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if raw {
                let _ = tx.send((Instant::now(), chunk[..n].to_vec()));
                continue;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut pos = 0;
            loop {
                match frame::decode(&buf[pos..]) {
                    Ok(Some((f, used))) => {
                        let bytes = &buf[pos..pos + used];
                        if !self.frame(dir, f, bytes, &tx) {
                            // DropThenClose: the connection ends now.
                            self.cancel.cancel();
                            return;
                        }
                        pos += used;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let rest = buf[pos..].to_vec();
                        self.note(dir, FrameKind::Malformed, rest.len(), Some(e.to_string()));
                        let _ = tx.send((Instant::now(), rest));
                        pos = buf.len();
                        raw = true;
                        break;
                    }
                }
            }
            buf.drain(..pos);
        }
        if !buf.is_empty() && !raw {
            self.note(dir, FrameKind::Partial, buf.len(), None);
            let _ = tx.send((Instant::now(), std::mem::take(&mut buf)));
        }
        let id = self.id;
        self.shared.record(|s| {
            s.conn_mut(id).first_eof.get_or_insert(dir);
        });
    }

    /// Records one decoded frame and hands it (or not) to the writer.
    /// False when the connection must be closed.
    fn frame(
        &self,
        dir: Direction,
        f: Frame,
        bytes: &[u8],
        tx: &mpsc::UnboundedSender<Outgoing>,
    ) -> bool {
        let now = Instant::now();
        let mut rec = TapFrame {
            conn: self.id,
            host: self.host.clone(),
            port: self.port,
            dir,
            kind: FrameKind::Hello,
            len: bytes.len(),
            seq: None,
            epoch: None,
            head: None,
            status: None,
            identity: None,
            error: None,
            at: now,
            action: None,
        };
        match &f {
            Frame::Hello(h) => rec.identity = Some(h.identity),
            Frame::Auth { .. } => rec.kind = FrameKind::Auth,
            Frame::Packet { seq, epoch, packet } => {
                rec.kind = FrameKind::Packet;
                rec.seq = Some(*seq);
                rec.epoch = Some(*epoch);
                rec.head = packet.as_bytes()[..32].try_into().ok();
            }
            Frame::Ack { seq, status } => {
                rec.kind = FrameKind::Ack;
                rec.seq = Some(*seq);
                rec.status = Some(*status);
            }
            Frame::Ping { .. } => rec.kind = FrameKind::Ping,
            Frame::Pong { .. } => rec.kind = FrameKind::Pong,
            Frame::GetKeys { .. } => rec.kind = FrameKind::GetKeys,
            Frame::Keys { .. } => rec.kind = FrameKind::Keys,
            Frame::Fetch { .. } => rec.kind = FrameKind::Fetch,
            Frame::Held { .. } => rec.kind = FrameKind::Held,
            Frame::Confirm { .. } => rec.kind = FrameKind::Confirm,
        }
        let mut action = None;
        let mut bytes = bytes.to_vec();
        self.shared.record(|s| {
            if rec.kind == FrameKind::Keys
                && dir == Direction::FromTarget
                && let Some(other) = s.keys_for.get(&self.host)
            {
                bytes = other.clone();
            }
            action = s.apply_rules(&self.host, dir, rec.kind);
            rec.action = action;
            if let (Frame::Hello(h), Direction::ToTarget) = (&f, dir) {
                s.hellos.insert((self.host.clone(), self.port), *h);
            }
            if let (Some(Action::ReplayLater), Some(seq)) = (action, rec.seq) {
                s.captured.push(Captured {
                    host: self.host.clone(),
                    port: self.port,
                    seq,
                    bytes: bytes.to_vec(),
                });
            }
            s.frames.push(rec);
        });
        match action {
            None | Some(Action::ReplayLater) => {
                let _ = tx.send((now, bytes.to_vec()));
            }
            Some(Action::Drop) => {}
            Some(Action::Duplicate) => {
                let _ = tx.send((now, bytes.to_vec()));
                let _ = tx.send((now, bytes.to_vec()));
            }
            Some(Action::Delay(d)) => {
                let _ = tx.send((now + d, bytes.to_vec()));
            }
            Some(Action::DropThenClose) => return false,
            Some(Action::Corrupt(at)) => {
                let mut damaged = bytes.to_vec();
                if let Some(b) = damaged.get_mut(at) {
                    *b ^= 0xff;
                }
                let _ = tx.send((now, damaged));
            }
        }
        true
    }

    fn note(&self, dir: Direction, kind: FrameKind, len: usize, error: Option<String>) {
        let rec = TapFrame {
            conn: self.id,
            host: self.host.clone(),
            port: self.port,
            dir,
            kind,
            len,
            seq: None,
            epoch: None,
            head: None,
            status: None,
            identity: None,
            error,
            at: Instant::now(),
            action: None,
        };
        self.shared.record(|s| s.frames.push(rec));
    }
}
