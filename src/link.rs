//! Links between mix nodes: the `-node` listener and one persistent
//! outbound stream per peer, through the Tor SOCKS dialer.
//!
//! Transport only: frames in, frames out, deadlines and bounds. What a
//! packet means, when it may leave and what to do with an acknowledgement
//! is node policy, reached through [`PacketHandler`] (inbound) and, on an
//! outbound link, one small trait per concern ([`PeerPolicy`]): custody
//! ([`Outbox`]), key gossip ([`KeyGossip`]) and health ([`LinkHealth`]).
//!
//! Both sides start with HELLO (protocol version, hash of the network
//! parameters, identity, clock); a peer with another version or other
//! parameters is refused, because a node that mixes with other delays or
//! sizes would stand out. After that the sender keeps at most `window`
//! packets unacknowledged; each PACKET carries a random sequence number
//! the sender maps to its spool row, so an ACK names exactly what may be
//! deleted without telling the peer in which order rows were stored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::BoxFuture;
use crate::listen::LogThrottle;
use crate::listen::accept_until;
use crate::redact::Sensitive;
use crate::relay::socks::SocksDialer;
use crate::smtp::proxy_header::ProxySource;
use crate::wire::bundle::Bundle;
use crate::wire::frame::{
    self, AckStatus, Frame, FrameError, HeldReply, Hello, MAX_FRAME, PROTOCOL_VERSION, Role,
};
use crate::wire::hello::{self, Side};
use crate::wire::packet::{NodeId, WirePacket};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Settings shared by both directions.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This node's id (the key in its onion name), said in HELLO; for a
    /// client, its key at the gateway it dials.
    pub me: NodeId,
    /// This node's identity key, pinned in `nodes.json`: it signs the
    /// proof in every handshake (a client's: the key derived for its
    /// gateway).
    pub signing: SigningKey,
    /// What this side says it is in HELLO: a node, or a client.
    pub role: Role,
    /// Hash of the network parameters; peers must match.
    pub params_hash: [u8; 32],
    /// Unacknowledged packets allowed per link.
    pub window: usize,
    /// A link that shows no frame for this long is closed (peers ping
    /// well within it).
    pub idle_timeout: Duration,
    /// Interval of PINGs on an idle outbound link.
    pub ping_interval: Duration,
    /// Bound on connecting (SOCKS and HELLO).
    pub connect_timeout: Duration,
    /// Outbound links are closed and reopened (a new Tor circuit) after
    /// this long.
    pub max_age: Duration,
    /// Inbound connections still in their handshake, at once: when a new
    /// one arrives with the pool full, the oldest is closed.
    pub max_handshakes: usize,
    /// Of those, at most this many from one Tor circuit (known from the
    /// PROXY line): more from the same circuit are closed at once.
    pub handshakes_per_circuit: usize,
    /// An inbound connection must have finished its handshake within this.
    pub hello_timeout: Duration,
    /// PING and GETKEYS an inbound link may send per second, and in one
    /// burst; past it the link is read no faster than that.
    pub control_rate: f64,
    pub control_burst: f64,
    /// At a gateway: clients linked at once (each with one link); a client
    /// past it is closed in its handshake (a known client's newer link
    /// always replaces its older one).
    pub max_clients: usize,
    /// At a gateway: packets one client may send per second, and in one
    /// burst; past it the gateway answers busy (the client keeps the
    /// packet and sends it again).
    pub client_rate: f64,
    pub client_burst: f64,
    /// At a gateway: FETCH and CONFIRM frames one client may send per
    /// second, and in one burst; past it its link is read no faster. Kept
    /// apart from the control budget so a network's fetch rate is never
    /// slowed by it.
    pub fetch_rate: f64,
    pub fetch_burst: f64,
    /// On a client's link: the mean gap between two FETCHes (drawn from
    /// an exponential law, so fetches form a Poisson process whose rate
    /// is the same for every client of the network).
    pub fetch_mean: Duration,
    /// On a client's link: the mean gap between two PACKETs, real or
    /// cover (Poisson too, the network's `client_send_mean`).
    pub send_mean: Duration,
    /// On a client's link: the share of send ticks that carry a loop
    /// whatever is waiting; the others carry mail if any is due, else a
    /// drop. Loops thus come back to the client's mailbox at a steady rate
    /// that mail does not change, so the gateway cannot see mail go out
    /// as a dip in returning loops.
    pub loop_share: f64,
    /// Seeds the gaps of a client's sends and fetches (tests only: a
    /// debug build's `PLUTO2_PACING_SEED`); `None`: the OS's randomness.
    pub pacing_seed: Option<u64>,
}

impl LinkConfig {
    /// The settings every node uses, for this node's identity and the
    /// network's parameters.
    pub fn new(
        me: NodeId,
        signing: SigningKey,
        params_hash: [u8; 32],
        epoch: Duration,
    ) -> LinkConfig {
        LinkConfig {
            me,
            signing,
            params_hash,
            // 64 packets of 8,540 bytes (~550 KB) in flight per link: more
            // than a Tor circuit's bandwidth-delay product at onion-service
            // round trips of about a second, and a bounded loss if a
            // link breaks (each is resent; the next hop knows its tag).
            window: 64,
            // Peers ping at most every 30 s; four missed pings is a dead
            // circuit, not a slow one.
            idle_timeout: Duration::from_secs(120),
            // Pings also compare peers' keys (two faces) and pace bundle
            // fetches: a tenth of an epoch, at most half a minute.
            ping_interval: (epoch / 10).clamp(Duration::from_millis(200), Duration::from_secs(30)),
            // Building a circuit to an onion service takes seconds, up to
            // tens of seconds on a loaded Tor; a minute leaves room.
            connect_timeout: Duration::from_secs(60),
            // A new circuit every three hours, as Tor's own clients rotate
            // theirs, so no single circuit carries a link for days.
            max_age: Duration::from_secs(3 * 3600),
            // Authenticated links have room of their own (one per listed
            // node), so this pool only holds handshakes in progress: an
            // honest one lasts about one onion-service round trip. 64
            // leaves room for a whole network restarting at once.
            max_handshakes: 64,
            // A node dials each link on a circuit of its own; two allow
            // for a rotation overlapping a redial.
            handshakes_per_circuit: 2,
            // The dialler sends its HELLO as soon as the circuit stands;
            // the listener's clock starts only then (at the accept). The
            // handshake is one and a half round trips over the onion
            // service (a second or two, more on a loaded Tor); ten seconds
            // leave a margin and keep what a stranger can hold short.
            hello_timeout: Duration::from_secs(10),
            // A peer pings once per ping interval (at most 5 a second, in
            // tests) and asks for a few bundles an epoch; 20 a second with
            // a burst of 40 never slows an honest node, and makes a flood
            // of them cost next to nothing.
            control_rate: 20.0,
            control_burst: 40.0,
            role: Role::Node,
            // Set by a gateway (`-gateway-clients`) and a client
            // (`client_fetch_mean`); a node that is neither never uses them.
            max_clients: 0,
            client_rate: 0.0,
            client_burst: 0.0,
            fetch_rate: 0.0,
            fetch_burst: 0.0,
            fetch_mean: Duration::from_secs(60),
            send_mean: Duration::from_secs(30),
            // A quarter: replies come back at a quarter of the send rate
            // (plus one COMPLETE per message), well within the fetch rate,
            // which is at least the send rate; mail gets three ticks of four.
            loop_share: 0.25,
            pacing_seed: None,
        }
    }

    /// A client's settings for its link to its gateway: its derived key,
    /// and the network's fetch rate.
    pub fn client(
        key: SigningKey,
        params_hash: [u8; 32],
        epoch: Duration,
        send_mean: Duration,
        fetch_mean: Duration,
    ) -> LinkConfig {
        let mut cfg = LinkConfig::new(
            NodeId(key.verifying_key().to_bytes()),
            key,
            params_hash,
            epoch,
        );
        cfg.role = Role::Client;
        cfg.fetch_mean = fetch_mean;
        cfg.send_mean = send_mean;
        cfg
    }

    /// A gateway's settings: room for `max_clients` clients, each sending
    /// at most `client_rate` packets a second (bursts of `client_burst`),
    /// and FETCH and CONFIRM frames at `fetch_rate` (bursts of
    /// `fetch_burst`).
    pub fn serving_clients(
        mut self,
        max_clients: usize,
        (client_rate, client_burst): (f64, f64),
        (fetch_rate, fetch_burst): (f64, f64),
    ) -> Self {
        self.max_clients = max_clients;
        self.client_rate = client_rate;
        self.client_burst = client_burst;
        self.fetch_rate = fetch_rate;
        self.fetch_burst = fetch_burst;
        self
    }
}

/// Receives packets from inbound links. The returned status is sent back
/// as ACK, so it must come only once the packet's fate is durable.
pub trait PacketHandler: Send + Sync {
    /// A packet from `from`, the authenticated previous hop (its link is
    /// the only one it has here, so per-peer shares are per-link shares).
    fn receive(&self, from: NodeId, epoch: u32, packet: WirePacket) -> BoxFuture<'_, AckStatus>;
    /// The bundle this node holds for `subject` (its own, when it is this
    /// node), for a peer's GETKEYS.
    fn bundle(&self, _subject: NodeId) -> Option<Bundle> {
        None
    }
    /// The mix key this node holds for `subject` in `epoch`, zero if
    /// none, for a peer's PING.
    fn key_of(&self, _subject: NodeId, _epoch: u32) -> [u8; 32] {
        [0; 32]
    }
    /// At a gateway: a packet from client `client` (authenticated with its
    /// own key). Only a packet this node forwards may be taken.
    fn receive_from_client(
        &self,
        _client: NodeId,
        _epoch: u32,
        _packet: WirePacket,
    ) -> BoxFuture<'_, AckStatus> {
        Box::pin(async { AckStatus::Rejected })
    }
    /// At a gateway: client `client` linked (its mailbox was seen now).
    fn client_linked(&self, _client: NodeId) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// At a gateway: the reply to hand client `client` now, if any (the
    /// same one until it is confirmed).
    fn fetch(&self, _client: NodeId) -> BoxFuture<'_, Option<HeldReply>> {
        Box::pin(async { None })
    }
    /// At a gateway: the client committed what `delivery` said.
    fn confirm(&self, _client: NodeId, _delivery: [u8; 16]) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A client's side of its gateway link: what a fetched reply does. A trait
/// so the transport does not depend on node policy (the mixnet's client
/// implements it).
pub trait Mailbox: Send + Sync {
    /// A reply fetched from the gateway. True once what it says is
    /// committed (or it can never mean anything): only then is it
    /// confirmed, and the gateway deletes it; false keeps it there, and it
    /// comes again.
    fn held(&self, reply: HeldReply) -> BoxFuture<'_, bool>;
    /// A cover packet of `kind`: its epoch and bytes (nothing is kept of
    /// it; its ACK is ignored). `None`: no route for one now (nothing is
    /// sent).
    fn cover(&self, kind: CoverKind) -> BoxFuture<'_, Option<(u32, WirePacket)>>;
}

/// What a client's send tick sends when it sends no mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoverKind {
    /// Comes back to the client's own mailbox (a loop tick's packet,
    /// whether or not mail is waiting).
    Loop,
    /// Taken by its last hop (a mail tick with no mail due).
    Drop,
}

/// A packet an outbound link may send now.
#[derive(Debug, Clone)]
pub struct OutboundPacket {
    /// The spool row (the link sends it under a random sequence number).
    pub id: i64,
    pub epoch: u32,
    pub packet: WirePacket,
}

/// The packets waiting for one peer and their settlement: what an
/// outbound link sends and what it reports back (custody, node policy).
pub trait Outbox: Send + Sync {
    /// Up to `max` packets due for `peer` now; `None` in the second slot
    /// when nothing else is waiting, otherwise when to ask again.
    fn take(
        &self,
        peer: NodeId,
        max: usize,
    ) -> BoxFuture<'_, (Vec<OutboundPacket>, Option<Duration>)>;
    /// The peer answered for packet `id`.
    fn acked(&self, peer: NodeId, id: i64, status: AckStatus) -> BoxFuture<'_, ()>;
    /// These packets were sent but not acknowledged before the link broke.
    fn unacked(&self, peer: NodeId, ids: Vec<i64>) -> BoxFuture<'_, ()>;
    /// Changes whenever new packets may be waiting. The link keeps its
    /// receiver across checks, so a change between a `take` that found
    /// nothing and the wait is never missed.
    fn events(&self) -> watch::Receiver<u64>;
}

/// What a link asks its peer about other nodes' keys and what it hears
/// back (key gossip, node policy). Every method has a do-nothing default:
/// a link works without gossip, it only learns nothing.
pub trait KeyGossip: Send + Sync {
    /// Subjects whose bundles to ask `peer` for now (GETKEYS).
    fn keys_wanted(&self, _peer: NodeId) -> Vec<NodeId> {
        Vec::new()
    }
    /// The peer answered GETKEYS about `subject`.
    fn keys(&self, _peer: NodeId, _subject: NodeId, _bundle: Option<Bundle>) {}
    /// What the next PING asks about: a subject node and an epoch.
    fn probe(&self, _peer: NodeId) -> Option<(NodeId, u32)> {
        None
    }
    /// The peer's PONG: the key it holds for `subject` in `epoch`.
    fn pong(&self, _peer: NodeId, _subject: NodeId, _epoch: u32, _key: [u8; 32]) {}
}

/// Whether the link to a peer works, and what its handshake said (link
/// health, node policy: path selection avoids peers without a link).
pub trait LinkHealth: Send + Sync {
    /// The link to `peer` came up or went down.
    fn link_state(&self, peer: NodeId, up: bool);
    /// The peer's HELLO said its clock reads `clock_secs`.
    fn hello(&self, _peer: NodeId, _clock_secs: u64) {}
}

/// Node policy as one outbound link sees it, one handle per concern, so
/// each step of the link names the one it uses (and a role that has no
/// key gossip, say, can hand in a different one).
#[derive(Clone)]
pub struct PeerPolicy {
    pub outbox: Arc<dyn Outbox>,
    pub keys: Arc<dyn KeyGossip>,
    pub health: Arc<dyn LinkHealth>,
    /// The key the peer must prove it holds.
    pub admission: Arc<dyn Admission>,
    /// On a client's link to its gateway: fetched replies go here (and
    /// the link fetches at the network's rate). `None` on a node's link.
    pub mailbox: Option<Arc<dyn Mailbox>>,
}

impl PeerPolicy {
    /// All four concerns served by one object (the mixnet's `Forwarder`).
    pub fn of<P: Outbox + KeyGossip + LinkHealth + Admission + 'static>(
        policy: Arc<P>,
    ) -> PeerPolicy {
        PeerPolicy {
            outbox: policy.clone(),
            keys: policy.clone(),
            admission: policy.clone(),
            health: policy,
            mailbox: None,
        }
    }

    /// The same, for a client's link to its gateway.
    pub fn with_mailbox(mut self, mailbox: Arc<dyn Mailbox>) -> PeerPolicy {
        self.mailbox = Some(mailbox);
        self
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("no frame for {0:?}")]
    Idle(Duration),
    #[error("peer closed the link")]
    Closed,
    #[error("expected HELLO first")]
    NoHello,
    #[error("peer speaks link protocol {0}, we speak {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("peer has other network parameters (nodes.json params differ)")]
    Params,
    #[error("SOCKS: {0}")]
    Socks(#[from] crate::relay::socks::SocksError),
    #[error("acknowledgement for a packet that was not sent")]
    StrayAck,
    #[error("timed out connecting")]
    ConnectTimeout,
    #[error("no HELLO within {0:?} of the connection")]
    SlowHello(Duration),
    #[error("the peer is not listed in nodes.json (or is a client, and this node is no gateway)")]
    Unlisted,
    #[error("{0}")]
    BadProof(#[from] hello::BadProof),
    #[error("the peer's HELLO names another node than the one dialled")]
    WrongPeer,
    #[error("closed in its handshake to make room ({0:?})")]
    Evicted(Eviction),
    #[error("a HELD frame that answers no FETCH")]
    StrayHeld,
}

/// Reads whole frames from a stream with a deadline per frame. The buffer
/// never holds more than one frame plus one read.
struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    fn new() -> Self {
        FrameReader {
            buf: Vec::with_capacity(2 * MAX_FRAME),
        }
    }

    /// Skips a PROXY v1 line at the very start of an inbound link: Tor's
    /// `HiddenServiceExportCircuitID haproxy` applies to every port of the
    /// onion service, the link port included. (Frame types never start
    /// with `P`, so the two cannot be confused.) Returns the circuit it
    /// names, if any: the only thing that tells strangers apart before
    /// they proved anything.
    async fn skip_proxy_header<R: AsyncReadExt + Unpin>(
        &mut self,
        stream: &mut R,
        idle: Duration,
    ) -> Result<Option<std::net::IpAddr>, LinkError> {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            if self.buf.first().is_some_and(|&b| b != b'P') {
                return Ok(None);
            }
            if !self.buf.is_empty() {
                match crate::smtp::proxy_header::parse(&self.buf) {
                    Ok(Some((source, used))) => {
                        self.buf.drain(..used);
                        return Ok(match source {
                            ProxySource::Address(ip) => Some(ip),
                            ProxySource::Unknown => None,
                        });
                    }
                    Ok(None) => {}
                    Err(_) => return Err(LinkError::NoHello),
                }
            }
            self.read_more(stream, deadline, idle).await?;
        }
    }

    /// The next whole frame, which must arrive within `idle` of this call:
    /// one deadline for the frame, not one per read, so a peer that sends a
    /// byte now and then cannot hold a read (and its slot) open for ever.
    async fn next<R: AsyncReadExt + Unpin>(
        &mut self,
        stream: &mut R,
        idle: Duration,
    ) -> Result<Frame, LinkError> {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            if let Some((frame, used)) = frame::decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            self.read_more(stream, deadline, idle).await?;
        }
    }

    /// One read of at most 16 KiB, before `deadline` (which is `idle` after
    /// the frame began). Cancel-safe: the bytes join the buffer in the same
    /// poll that read them.
    async fn read_more<R: AsyncReadExt + Unpin>(
        &mut self,
        stream: &mut R,
        deadline: tokio::time::Instant,
        idle: Duration,
    ) -> Result<(), LinkError> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| LinkError::Idle(idle))??;
        if n == 0 {
            return Err(LinkError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

// The handshake: one step on each side, kept apart from what follows it
// (the proof itself is the codec `wire::hello`).

/// Who may use this node's links, and with which key each must prove it.
/// A trait so the transport does not depend on node policy (the mixnet
/// context implements it from the `nodes.json` in force).
pub trait Admission: Send + Sync {
    /// The identity key `nodes.json` pins now for node `id`; `None` when
    /// `id` is not listed (it gets no service, and is not dialled).
    fn node_key(&self, id: &NodeId) -> Option<VerifyingKey>;
    /// Whether clients may link here (a gateway). A client proves the key
    /// its HELLO names; nothing else is known of it.
    fn admits_clients(&self) -> bool {
        false
    }
}

/// Who the peer proved to be, and what its HELLO said.
#[derive(Debug, Clone, Copy)]
struct PeerHello {
    node: NodeId,
    role: Role,
    clock_secs: u64,
}

/// The listening side's handshake: the peer's HELLO, checked and looked
/// up; then our HELLO and proof; then the peer's proof, checked. Nothing
/// is served before it returns: an unlisted peer gets no answer at all, a
/// listed one that cannot sign gets our HELLO and a closed link.
async fn answer_hello<R, W>(
    cfg: &LinkConfig,
    admission: &dyn Admission,
    reader: &mut FrameReader,
    rd: &mut R,
    wr: &mut W,
) -> Result<PeerHello, LinkError>
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let theirs = check_hello(cfg, reader.next(rd, cfg.hello_timeout).await)?;
    let node = NodeId(theirs.identity);
    let key = match theirs.role {
        Role::Node => admission.node_key(&node).ok_or(LinkError::Unlisted)?,
        // A client is its key: it proves that key below, on this link, so
        // nobody can fetch another client's replies. Only a gateway takes
        // clients; elsewhere one is as unknown as an unlisted node.
        Role::Client if admission.admits_clients() => {
            VerifyingKey::from_bytes(&theirs.identity).map_err(|_| LinkError::Unlisted)?
        }
        Role::Client => return Err(LinkError::Unlisted),
    };
    let ours = hello(cfg);
    let proof = hello::prove(&cfg.signing, Side::Listener, &theirs, &ours);
    let mut out = Vec::with_capacity(2 * frame::HELLO_FRAME);
    Frame::Hello(ours).encode(&mut out);
    Frame::Auth { signature: proof }.encode(&mut out);
    wr.write_all(&out).await?;
    let Frame::Auth { signature } = reader.next(rd, cfg.hello_timeout).await? else {
        return Err(LinkError::NoHello);
    };
    hello::check(&key, Side::Dialler, &theirs, &ours, &signature)?;
    Ok(PeerHello {
        node,
        role: theirs.role,
        clock_secs: theirs.clock_secs,
    })
}

/// The dialling side's handshake: our HELLO; the peer's HELLO, which must
/// name the node we meant, and its proof, which must verify with the key
/// `nodes.json` pins for that node; then our proof. Tor already checked
/// that the onion service holds the onion key; this checks that the node
/// behind it holds the identity key too, on this very link.
async fn offer_hello<R, W>(
    cfg: &LinkConfig,
    peer: NodeId,
    key: &VerifyingKey,
    reader: &mut FrameReader,
    rd: &mut R,
    wr: &mut W,
) -> Result<PeerHello, LinkError>
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let ours = hello(cfg);
    write_frame(wr, &Frame::Hello(ours)).await?;
    let theirs = check_hello(cfg, reader.next(rd, cfg.connect_timeout).await)?;
    if theirs.role != Role::Node || theirs.identity != peer.0 {
        return Err(LinkError::WrongPeer);
    }
    let Frame::Auth { signature } = reader.next(rd, cfg.connect_timeout).await? else {
        return Err(LinkError::NoHello);
    };
    hello::check(key, Side::Listener, &ours, &theirs, &signature)?;
    let proof = hello::prove(&cfg.signing, Side::Dialler, &ours, &theirs);
    write_frame(wr, &Frame::Auth { signature: proof }).await?;
    Ok(PeerHello {
        node: peer,
        role: Role::Node,
        clock_secs: theirs.clock_secs,
    })
}

/// Our HELLO, with a fresh nonce.
fn hello(cfg: &LinkConfig) -> Hello {
    let clock_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Hello {
        version: PROTOCOL_VERSION,
        params_hash: cfg.params_hash,
        role: cfg.role,
        identity: cfg.me.0,
        nonce: rand::random(),
        clock_secs,
    }
}

/// Checks that the first frame is a HELLO of our protocol version and
/// network parameters. Another version is named from the HELLO's first
/// bytes (the frame codec refuses it before its body).
fn check_hello(cfg: &LinkConfig, frame: Result<Frame, LinkError>) -> Result<Hello, LinkError> {
    match frame {
        Ok(Frame::Hello(h)) if h.params_hash != cfg.params_hash => Err(LinkError::Params),
        Ok(Frame::Hello(h)) => Ok(h),
        Ok(_) => Err(LinkError::NoHello),
        Err(LinkError::Frame(FrameError::Version(v))) => Err(LinkError::Version(v)),
        Err(LinkError::Frame(FrameError::Role(_))) => Err(LinkError::NoHello),
        Err(e) => Err(e),
    }
}

async fn write_frame(
    stream: &mut (impl AsyncWriteExt + Unpin),
    frame: &Frame,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(MAX_FRAME);
    frame.encode(&mut out);
    stream.write_all(&out).await
}

/// Why the listener turned a connection away before serving it anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// Closed in its handshake to make room: the pool of handshakes was
    /// full (`max_handshakes`, the oldest goes), or its Tor circuit had
    /// `handshakes_per_circuit` already.
    NoSlot,
    /// The peer speaks another link protocol version.
    Version,
    /// The peer has other network parameters (another `nodes.json`).
    Params,
    /// The first frame was not a HELLO.
    Hello,
    /// No whole HELLO within `hello_timeout`.
    SlowHello,
    /// The HELLO names no listed node (or a client, at a node that is no
    /// gateway): closed unanswered.
    Unlisted,
    /// The HELLO names a listed node, but its AUTH does not verify with
    /// that node's pinned identity key.
    BadProof,
}

impl LinkRefusal {
    pub const ALL: [LinkRefusal; 7] = [
        LinkRefusal::NoSlot,
        LinkRefusal::Version,
        LinkRefusal::Params,
        LinkRefusal::Hello,
        LinkRefusal::SlowHello,
        LinkRefusal::Unlisted,
        LinkRefusal::BadProof,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            LinkRefusal::NoSlot => "no_slot",
            LinkRefusal::Version => "version",
            LinkRefusal::Params => "params",
            LinkRefusal::Hello => "no_hello",
            LinkRefusal::SlowHello => "slow_hello",
            LinkRefusal::Unlisted => "unlisted",
            LinkRefusal::BadProof => "bad_proof",
        }
    }

    fn of(e: &LinkError) -> Option<LinkRefusal> {
        match e {
            LinkError::Version(_) => Some(LinkRefusal::Version),
            LinkError::Params => Some(LinkRefusal::Params),
            LinkError::NoHello => Some(LinkRefusal::Hello),
            LinkError::SlowHello(_) => Some(LinkRefusal::SlowHello),
            LinkError::Unlisted => Some(LinkRefusal::Unlisted),
            LinkError::Evicted(_) => Some(LinkRefusal::NoSlot),
            LinkError::BadProof(_) => Some(LinkRefusal::BadProof),
            _ => None,
        }
    }
}

/// What the link listener reports for counting; a trait so the transport
/// does not depend on node policy (`stats` implements it).
pub trait LinkEvents: Send + Sync {
    fn refused(&self, refusal: LinkRefusal);
}

/// Counts every refusal and logs each kind at most once per
/// [`crate::listen::LOG_PERIOD`] with the count since its last line: a
/// stranger opening connections by the thousand cannot grow the log, and
/// the log still shows that it happens (no longer at debug level only).
struct Refusals {
    events: Arc<dyn LinkEvents>,
    throttles: [LogThrottle; LinkRefusal::ALL.len()],
}

impl Refusals {
    fn note(&self, kind: LinkRefusal, why: &dyn std::fmt::Display) {
        self.events.refused(kind);
        if let Some(n) = self.throttles[kind as usize].note(tokio::time::Instant::now()) {
            info!(
                "[MIXNET] inbound link refused ({}): {why}; {n} refused so since the last such line",
                kind.label()
            );
        }
    }
}

/// The inbound side's room. Connections that have not proven who they are
/// share a small pool: when it is full the oldest is closed to make room
/// (a stranger holding connections open loses them to newcomers, among
/// them the nodes it wanted to keep out, whose handshake takes a round
/// trip), and one Tor circuit may hold only a few places of it.
/// Authenticated links do not count against the pool: each listed node has
/// room for exactly one, and a newer link from the same node replaces the
/// older one (a node that redials after losing its circuit is never locked
/// out by its own stale link).
struct Room {
    max_pending: usize,
    per_circuit: usize,
    max_clients: usize,
    next_id: std::sync::atomic::AtomicU64,
    state: std::sync::Mutex<RoomState>,
}

#[derive(Default)]
struct RoomState {
    /// Handshakes in progress, oldest first: id, circuit once known, and
    /// what closes the connection.
    pending: std::collections::VecDeque<(u64, Option<std::net::IpAddr>, CancellationToken)>,
    /// The one link of each authenticated peer.
    links: HashMap<NodeId, (u64, CancellationToken)>,
    /// The one link of each client (at a gateway), apart from the nodes':
    /// a client's key is whatever it chose, so it must never displace a
    /// node's link, however it is chosen.
    clients: HashMap<NodeId, (u64, CancellationToken)>,
}

/// Why a connection lost its place in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eviction {
    /// Still in its handshake when the pool was full: the oldest goes.
    Pending,
    /// Too many handshakes at once from its circuit.
    Circuit,
    /// A client new here while the gateway has `max_clients` linked.
    Clients,
}

impl Room {
    fn new(cfg: &LinkConfig) -> Room {
        Room {
            max_pending: cfg.max_handshakes.max(1),
            per_circuit: cfg.handshakes_per_circuit.max(1),
            max_clients: cfg.max_clients,
            next_id: Default::default(),
            state: Default::default(),
        }
    }

    /// A new connection's place in the pool; closes the oldest one when
    /// the pool is full (counted by the task that owned it).
    fn enter(self: &Arc<Self>) -> Place {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut st = self.state.lock().unwrap();
        while st.pending.len() >= self.max_pending {
            if let Some((_, _, oldest)) = st.pending.pop_front() {
                oldest.cancel();
            }
        }
        st.pending.push_back((id, None, token.clone()));
        Place {
            room: self.clone(),
            id,
            token,
            peer: None,
        }
    }

    /// Records the circuit a pending connection came on; false when that
    /// circuit already holds its share of the pool.
    fn on_circuit(&self, id: u64, circuit: std::net::IpAddr) -> bool {
        let mut st = self.state.lock().unwrap();
        let already = st
            .pending
            .iter()
            .filter(|(other, c, _)| *other != id && *c == Some(circuit))
            .count();
        if already >= self.per_circuit {
            return false;
        }
        if let Some(entry) = st.pending.iter_mut().find(|(other, _, _)| *other == id) {
            entry.1 = Some(circuit);
        }
        true
    }

    /// Moves a connection that proved to be `peer` out of the pool into
    /// `peer`'s own room, closing the link it replaces. A client new to a
    /// gateway that has its `max_clients` is refused (false).
    fn admit(&self, place: &mut Place, peer: NodeId, role: Role) -> bool {
        let mut st = self.state.lock().unwrap();
        st.pending.retain(|(id, _, _)| *id != place.id);
        let links = match role {
            Role::Node => &mut st.links,
            Role::Client => &mut st.clients,
        };
        if role == Role::Client && !links.contains_key(&peer) && links.len() >= self.max_clients {
            return false;
        }
        if let Some((_, older)) = links.insert(peer, (place.id, place.token.clone())) {
            older.cancel();
        }
        place.peer = Some((peer, role));
        true
    }

    fn leave(&self, id: u64, peer: Option<(NodeId, Role)>) {
        let mut st = self.state.lock().unwrap();
        match peer {
            None => st.pending.retain(|(other, _, _)| *other != id),
            Some((peer, role)) => {
                let links = match role {
                    Role::Node => &mut st.links,
                    Role::Client => &mut st.clients,
                };
                if links.get(&peer).is_some_and(|(other, _)| *other == id) {
                    links.remove(&peer);
                }
            }
        }
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap();
        (st.pending.len(), st.links.len())
    }
}

/// One connection's place in the [`Room`]; gives it back when dropped,
/// whatever way the connection ends.
struct Place {
    room: Arc<Room>,
    id: u64,
    /// Cancelled when the place is taken away (eviction or replacement).
    token: CancellationToken,
    peer: Option<(NodeId, Role)>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.room.leave(self.id, self.peer);
    }
}

/// Accepts links until shutdown; each connection gets its own task on
/// `tracker` and a place in the [`Room`]. Refusals are counted through
/// `events` and logged throttled.
pub async fn serve(
    mut listener: TcpListener,
    cfg: Arc<LinkConfig>,
    handler: Arc<dyn PacketHandler>,
    admission: Arc<dyn Admission>,
    events: Arc<dyn LinkEvents>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let room = Arc::new(Room::new(&cfg));
    let refusals = Arc::new(Refusals {
        events,
        throttles: Default::default(),
    });
    accept_until(&mut listener, "link", &shutdown, |stream, _| {
        let place = room.enter();
        let (cfg, handler, stop) = (cfg.clone(), handler.clone(), shutdown.clone());
        let (admission, refusals) = (admission.clone(), refusals.clone());
        tracker.spawn(async move {
            // The dialling side only sees the link close, so the operator
            // learns here that a peer runs another nodes.json or another
            // version, or is no listed node (which peer: never said).
            if let Err(e) = inbound(stream, &cfg, handler, &*admission, place, stop).await {
                match LinkRefusal::of(&e) {
                    Some(kind) => refusals.note(kind, &e),
                    None => debug!("[MIXNET] inbound link closed: {e}"),
                }
            }
        });
    })
    .await;
}

/// A token bucket for one link's control frames (PING, GETKEYS): how long
/// to wait before the next one may be read.
struct ControlBudget {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl ControlBudget {
    fn new(cfg: &LinkConfig, now: Instant) -> ControlBudget {
        ControlBudget {
            tokens: cfg.control_burst,
            rate: cfg.control_rate.max(0.001),
            burst: cfg.control_burst.max(1.0),
            at: now,
        }
    }

    /// Spends one token; the wait before the frame after this one may be
    /// read (zero while within the budget).
    fn spend(&mut self, now: Instant) -> Duration {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst) - 1.0;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// One inbound link: the handshake within `hello_timeout` (while it has a
/// place in the pool), then packets handled concurrently (at most `window`
/// at once), each acknowledged when its handler answers, and control
/// frames within the link's budget.
async fn inbound(
    stream: TcpStream,
    cfg: &LinkConfig,
    handler: Arc<dyn PacketHandler>,
    admission: &dyn Admission,
    mut place: Place,
    shutdown: CancellationToken,
) -> Result<(), LinkError> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new();
    let evicted = place.token.clone();
    // One deadline for everything before the peer is known: Tor's PROXY
    // line and the handshake come at once from an honest peer, so a
    // connection that has not finished them soon holds a place for nothing.
    let handshake = async {
        if let Some(circuit) = reader.skip_proxy_header(&mut rd, cfg.hello_timeout).await?
            && !place.room.on_circuit(place.id, circuit)
        {
            return Err(LinkError::Evicted(Eviction::Circuit));
        }
        answer_hello(cfg, admission, &mut reader, &mut rd, &mut wr).await
    };
    let peer = tokio::select! {
        _ = evicted.cancelled() => Err(LinkError::Evicted(Eviction::Pending)),
        r = tokio::time::timeout(cfg.hello_timeout, handshake) => {
            r.unwrap_or(Err(LinkError::Idle(cfg.hello_timeout)))
        }
    }
    .map_err(|e| match e {
        LinkError::Idle(_) => LinkError::SlowHello(cfg.hello_timeout),
        e => e,
    })?;
    let room = place.room.clone();
    if !room.admit(&mut place, peer.node, peer.role) {
        return Err(LinkError::Evicted(Eviction::Clients));
    }
    let replaced = place.token.clone();
    let client = peer.role == Role::Client;
    if client {
        handler.client_linked(peer.node).await;
    }
    debug!(
        "[MIXNET] inbound link from {}",
        Sensitive(hex(&peer.node.0))
    );
    // Replies go through one writer task so handlers never share the socket.
    // A peer that stops reading cannot hold it: every write has a deadline,
    // and when the writer gives up the channel closes, so handlers and the
    // reader below stop waiting on it.
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(cfg.window * 2 + 4);
    let write_deadline = cfg.idle_timeout;
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            match tokio::time::timeout(write_deadline, write_frame(&mut wr, &frame)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        drop(out_rx);
        let _ = tokio::time::timeout(write_deadline, wr.shutdown()).await;
    });
    let in_flight = Arc::new(Semaphore::new(cfg.window));
    let handlers = TaskTracker::new();
    let mut control = ControlBudget::new(cfg, Instant::now());
    // A client's packets: past its rate the gateway answers busy at once.
    let mut sending = ControlBudget {
        tokens: cfg.client_burst,
        rate: cfg.client_rate.max(0.001),
        burst: cfg.client_burst.max(1.0),
        at: Instant::now(),
    };
    // A client's FETCH and CONFIRM: past their rate, read more slowly.
    let mut fetching = ControlBudget {
        tokens: cfg.fetch_burst,
        rate: cfg.fetch_rate.max(0.001),
        burst: cfg.fetch_burst.max(1.0),
        at: Instant::now(),
    };
    // A link stays open while it carries something: packets, the pings
    // and key requests of the health protocol, a client's fetches. Frames
    // this side never asked for (PONG, KEYS) do not keep it open.
    let mut last_useful = Instant::now();
    let result = loop {
        let left = (last_useful + cfg.idle_timeout).saturating_duration_since(Instant::now());
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            // The same node linked again: this link is stale.
            _ = replaced.cancelled() => break Ok(()),
            f = reader.next(&mut rd, left) => f,
        };
        if matches!(
            frame,
            Ok(Frame::Packet { .. }
                | Frame::Ping { .. }
                | Frame::GetKeys { .. }
                | Frame::Fetch { .. }
                | Frame::Confirm { .. })
        ) {
            last_useful = Instant::now();
        }
        if out_tx.is_closed() {
            break Err(LinkError::Closed); // the writer gave up on the peer
        }
        let budget = match frame {
            Ok(Frame::Ping { .. } | Frame::GetKeys { .. }) => Some(&mut control),
            Ok(Frame::Fetch { .. } | Frame::Confirm { .. }) if client => Some(&mut fetching),
            _ => None,
        };
        if let Some(budget) = budget {
            // Over its budget a link is read more slowly: the frames wait
            // in the peer's buffers, not in ours, and cost nothing here.
            let wait = budget.spend(Instant::now());
            if !wait.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = replaced.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        match frame {
            Ok(Frame::Packet { seq, .. }) if client && !sending.spend(Instant::now()).is_zero() => {
                // Over its rate a client is told busy; it keeps the packet.
                let _ = out_tx.try_send(Frame::Ack {
                    seq,
                    status: AckStatus::Busy,
                });
            }
            Ok(Frame::Packet { seq, epoch, packet }) => {
                // A peer over its window waits here: backpressure, not loss.
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    p = in_flight.clone().acquire_owned() => p,
                };
                let Ok(permit) = permit else {
                    break Ok(());
                };
                let (handler, out) = (handler.clone(), out_tx.clone());
                handlers.spawn(async move {
                    let status = if client {
                        handler.receive_from_client(peer.node, epoch, packet).await
                    } else {
                        handler.receive(peer.node, epoch, packet).await
                    };
                    let _ = out.send(Frame::Ack { seq, status }).await;
                    drop(permit);
                });
            }
            Ok(Frame::Ping {
                nonce,
                subject,
                epoch,
            }) => {
                // A peer that pings without reading gets no queue of PONGs.
                let key = handler.key_of(NodeId(subject), epoch);
                let _ = out_tx.try_send(Frame::Pong {
                    nonce,
                    subject,
                    epoch,
                    key,
                });
            }
            Ok(Frame::GetKeys { subject }) => {
                // Nor a queue of bundles: one answer per free slot.
                let bundle = handler.bundle(NodeId(subject));
                let _ = out_tx.try_send(Frame::Keys { subject, bundle });
            }
            Ok(Frame::Fetch { request }) if client => {
                // One answer per FETCH, as long whether empty or not.
                let reply = handler.fetch(peer.node).await;
                if out_tx.send(Frame::Held { request, reply }).await.is_err() {
                    break Err(LinkError::Closed);
                }
            }
            Ok(Frame::Confirm { delivery }) if client => {
                handler.confirm(peer.node, delivery).await;
            }
            Ok(Frame::Pong { .. }) | Ok(Frame::Keys { .. }) => {}
            Ok(
                Frame::Hello { .. }
                | Frame::Auth { .. }
                | Frame::Ack { .. }
                | Frame::Fetch { .. }
                | Frame::Confirm { .. }
                | Frame::Held { .. },
            ) => {
                break Err(LinkError::NoHello);
            }
            Err(e) => break Err(e),
        }
    };
    // Packets already being stored finish and are acknowledged if the peer
    // is still there; a lost ACK only means a retry, which is a duplicate.
    handlers.close();
    handlers.wait().await;
    drop(out_tx);
    let _ = writer.await;
    result
}

/// Keeps a link to `peer` open while there is work or health to check, and
/// sends what `policy`'s outbox gives it. Runs until shutdown.
pub async fn run_peer(
    peer: NodeId,
    host: String,
    port: u16,
    dialer: SocksDialer,
    cfg: Arc<LinkConfig>,
    policy: PeerPolicy,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let mut established = false;
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = outbound(peer, &host, port, &dialer, &cfg, &policy, &shutdown, &mut established) => r,
        };
        policy.health.link_state(peer, false);
        match &result {
            // A node a reload removed is not dialled again: it could not
            // be told from an impostor. Said once at reload, not per try.
            Err(LinkError::Unlisted) => debug!("[MIXNET] a peer is no longer listed; not dialled"),
            Err(e) => info!("[MIXNET] link to a peer failed ({e}); retrying"),
            Ok(()) => {}
        }
        failures = failures_after(failures, established, result.is_ok());
        if shutdown.is_cancelled() {
            return;
        }
        let pause = redial_pause(failures, &mut rand::rng());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Longest pause between two attempts to dial a peer: a node that comes
/// back is dialled again within it and, with Tor's connect time, used
/// within a minute.
const MAX_REDIAL: Duration = Duration::from_secs(30);

/// The pause before dialling a peer again after `failures` failures in a
/// row: 1 s, 2 s, 4 s … up to [`MAX_REDIAL`], with jitter so peers that
/// lost a node together do not reconnect in lockstep.
fn redial_pause<R: Rng + ?Sized>(failures: u32, rng: &mut R) -> Duration {
    let base = Duration::from_secs(1 << failures.min(5)).min(MAX_REDIAL);
    base.mul_f64(rng.random_range(0.5..1.0))
}

/// Failures in a row after an attempt. A link that got through HELLO
/// ends the run: its breaking later is a first failure, not the next of
/// the failures before it (which would make a node that was up for hours
/// wait the longest pause after a short outage).
fn failures_after(failures: u32, established: bool, ok: bool) -> u32 {
    match (ok, established) {
        (true, _) => 0,
        (false, true) => 1,
        (false, false) => failures.saturating_add(1),
    }
}

/// One connection to `peer`: dial, handshake, then the link's loop until
/// it ends; sets `established` once HELLO went through.
#[allow(clippy::too_many_arguments)]
async fn outbound(
    peer: NodeId,
    host: &str,
    port: u16,
    dialer: &SocksDialer,
    cfg: &LinkConfig,
    policy: &PeerPolicy,
    shutdown: &CancellationToken,
    established: &mut bool,
) -> Result<(), LinkError> {
    let key = policy
        .admission
        .node_key(&peer)
        .ok_or(LinkError::Unlisted)?;
    let stream = tokio::time::timeout(cfg.connect_timeout, dialer.connect(host, port))
        .await
        .map_err(|_| LinkError::ConnectTimeout)??;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new();
    let hello = offer_hello(cfg, peer, &key, &mut reader, &mut rd, &mut wr).await?;
    *established = true;
    policy.health.hello(peer, hello.clock_secs);
    policy.health.link_state(peer, true);
    let mut link = Outbound::new(peer, cfg, policy, reader, rd, wr);
    let result = link.run(shutdown).await;
    link.close().await;
    result
}

/// One outbound link past its handshake: the socket, the packets in
/// flight, and the times that decide when to ping, when to give up on the
/// peer and when to rotate.
struct Outbound<'a> {
    peer: NodeId,
    cfg: &'a LinkConfig,
    policy: &'a PeerPolicy,
    reader: FrameReader,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    /// In flight: the frame's sequence number → the spool row. Sequence
    /// numbers are random, not the row ids: a row id tells the order in
    /// which this node stored its packets, which the next hop must not
    /// learn.
    sent: InFlight,
    opened: Instant,
    next_ping: Instant,
    /// Any frame from the peer (ACK, PONG) proves it is alive; a peer
    /// silent for `idle_timeout` despite our pings is given up, so its
    /// packets go to other routes' links instead of into a dead socket.
    last_heard: Instant,
    /// The outbox's "new packets may be waiting", kept across turns.
    events: watch::Receiver<u64>,
    /// On a client's link: when the next FETCH goes, and the one whose
    /// answer is awaited (one at a time).
    next_fetch: Instant,
    fetching: Option<u64>,
    /// On a client's link: when the next PACKET goes (real or cover), and
    /// the sequence numbers of cover in flight (no spool row behind them).
    next_send: Instant,
    cover: HashSet<u64>,
    /// Cover built ahead, and cover being built: a tick sends at once, so
    /// the moment a packet leaves never depends on whether it had to be
    /// built (real packets are built long before; cover takes a Sphinx
    /// wrap, half a millisecond, several in a debug build).
    ready: Vec<(CoverKind, u32, WirePacket)>,
    building: tokio::task::JoinSet<Option<(CoverKind, u32, WirePacket)>>,
    /// Draws those gaps.
    pacing: rand::rngs::StdRng,
}

impl<'a> Outbound<'a> {
    fn new(
        peer: NodeId,
        cfg: &'a LinkConfig,
        policy: &'a PeerPolicy,
        reader: FrameReader,
        rd: OwnedReadHalf,
        wr: OwnedWriteHalf,
    ) -> Self {
        let now = Instant::now();
        let mut pacing = match cfg.pacing_seed {
            Some(seed) => <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed),
            None => <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng(),
        };
        Outbound {
            peer,
            cfg,
            policy,
            reader,
            rd,
            wr,
            sent: InFlight::default(),
            opened: now,
            next_ping: now + cfg.ping_interval,
            last_heard: now,
            events: policy.outbox.events(),
            next_fetch: now + poisson_gap(cfg.fetch_mean, &mut pacing),
            fetching: None,
            next_send: now + poisson_gap(cfg.send_mean, &mut pacing),
            cover: HashSet::new(),
            ready: Vec::new(),
            building: tokio::task::JoinSet::new(),
            pacing,
        }
    }

    /// Each turn: ask for keys, fill the window, then wait for whichever
    /// comes first: a frame, new packets, the time to ask again or to
    /// ping. Ends at shutdown (`Ok`), once rotation has drained the
    /// window (`Ok`), or when the peer breaks, falls silent or misbehaves.
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), LinkError> {
        loop {
            // Past its age the link takes no new packets, drains what is
            // in flight, and closes: a new connection, a new circuit.
            let rotating = self.opened.elapsed() >= self.cfg.max_age;
            if rotating && self.sent.is_empty() && self.cover.is_empty() {
                return Ok(());
            }
            self.ask_for_keys().await?;
            // A client sends at its own steady random rate, not as fast as
            // the window allows (see `send_one`).
            let paced = self.policy.mailbox.is_some();
            let hint = if rotating || paced {
                None
            } else {
                self.fill_window().await?
            };
            let wake = self.wake_at(hint);
            let idle = self.cfg.idle_timeout;
            let room = self.has_room();
            let fetch = self.policy.mailbox.is_some() && self.fetching.is_none();
            if paced {
                self.build_ahead();
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(self.last_heard + idle) => {
                    return Err(LinkError::Idle(idle));
                }
                frame = self.reader.next(&mut self.rd, idle) => self.on_frame(frame?).await?,
                _ = self.events.changed(), if room && !paced => {}
                _ = tokio::time::sleep_until(self.next_fetch), if fetch => self.fetch().await?,
                _ = tokio::time::sleep_until(self.next_send), if paced && !rotating => {
                    self.send_one().await?;
                }
                Some(built) = self.building.join_next(), if !self.building.is_empty() => {
                    if let Ok(Some(cover)) = built {
                        self.ready.push(cover);
                    }
                }
                _ = tokio::time::sleep_until(wake) => self.ping_if_due().await?,
            }
        }
    }

    fn has_room(&self) -> bool {
        self.sent.len() + self.cover.len() < self.cfg.window
    }

    /// Asks for the bundles needed soon (the gossip policy paces them:
    /// each subject at most every few seconds).
    async fn ask_for_keys(&mut self) -> Result<(), LinkError> {
        let mut asks = Vec::new();
        for subject in self.policy.keys.keys_wanted(self.peer) {
            Frame::GetKeys { subject: subject.0 }.encode(&mut asks);
        }
        self.write(&asks).await
    }

    /// Sends what the outbox has for the free part of the window; returns
    /// when the outbox wants to be asked again (`None`: not before it
    /// signals, or no room).
    async fn fill_window(&mut self) -> Result<Option<Duration>, LinkError> {
        if !self.has_room() {
            return Ok(None);
        }
        self.events.borrow_and_update();
        let room = self.cfg.window - self.sent.len();
        let (batch, hint) = self.policy.outbox.take(self.peer, room).await;
        let mut out = Vec::with_capacity(batch.len() * MAX_FRAME);
        for o in batch {
            // A lease that ran out while the ACK was on its way hands the
            // same packet back: it is in flight already.
            if self.sent.contains(o.id) {
                continue;
            }
            Frame::Packet {
                seq: self.sent.insert(o.id),
                epoch: o.epoch,
                packet: o.packet,
            }
            .encode(&mut out);
        }
        self.write(&out).await?;
        Ok(hint)
    }

    /// When to look again if nothing arrives: when the outbox asked to (if
    /// the window has room), and no later than the next ping.
    fn wake_at(&self, hint: Option<Duration>) -> Instant {
        let idle_for = match hint {
            Some(d) if self.has_room() => d,
            _ => self.cfg.ping_interval,
        };
        (Instant::now() + idle_for).min(self.next_ping)
    }

    /// A client's send tick: one packet. A loop tick (`loop_share` of
    /// them) sends a loop; any other sends the next real packet if the
    /// outbox has one due, else a drop. The ticks form a Poisson process
    /// of the network's rate, so when a client sends says nothing about
    /// when it has mail. With the window full the tick passes (the
    /// gateway is slow; nothing would leave anyway).
    async fn send_one(&mut self) -> Result<(), LinkError> {
        self.next_send = next_tick(
            self.next_send,
            poisson_gap(self.cfg.send_mean, &mut self.pacing),
        );
        if !self.has_room() {
            return Ok(());
        }
        let loop_tick = self.pacing.random::<f64>() < self.cfg.loop_share;
        let real = if loop_tick {
            None
        } else {
            let (batch, _) = self.policy.outbox.take(self.peer, 1).await;
            batch.into_iter().find(|o| !self.sent.contains(o.id))
        };
        let mut out = Vec::with_capacity(MAX_FRAME);
        match real {
            Some(o) => Frame::Packet {
                seq: self.sent.insert(o.id),
                epoch: o.epoch,
                packet: o.packet,
            }
            .encode(&mut out),
            None => {
                let kind = if loop_tick {
                    CoverKind::Loop
                } else {
                    CoverKind::Drop
                };
                let Some((epoch, packet)) = self.take_cover(kind).await else {
                    return Ok(());
                };
                let seq = loop {
                    let seq: u64 = rand::rng().random();
                    if !self.sent.has_seq(seq) && self.cover.insert(seq) {
                        break seq;
                    }
                };
                Frame::Packet { seq, epoch, packet }.encode(&mut out);
            }
        }
        self.write(&out).await
    }

    /// Keeps [`COVER_AHEAD`] cover packets of each kind built or being
    /// built, in tasks of their own.
    fn build_ahead(&mut self) {
        let Some(mailbox) = &self.policy.mailbox else {
            return;
        };
        let have = self.ready.len() + self.building.len();
        if have >= 2 * COVER_AHEAD {
            return;
        }
        for kind in [CoverKind::Loop, CoverKind::Drop] {
            let ready = self.ready.iter().filter(|(k, _, _)| *k == kind).count();
            // Being built: counted in all, not by kind (a JoinSet does not
            // say); the pool is small, an extra packet costs little.
            if ready + self.building.len() / 2 < COVER_AHEAD {
                let mailbox = mailbox.clone();
                self.building.spawn(async move {
                    let (epoch, packet) = mailbox.cover(kind).await?;
                    Some((kind, epoch, packet))
                });
            }
        }
    }

    /// A cover packet of `kind`: one built ahead if there is one, else
    /// built now.
    async fn take_cover(&mut self, kind: CoverKind) -> Option<(u32, WirePacket)> {
        if let Some(i) = self.ready.iter().position(|(k, _, _)| *k == kind) {
            let (_, epoch, packet) = self.ready.swap_remove(i);
            return Some((epoch, packet));
        }
        self.policy.mailbox.as_ref()?.cover(kind).await
    }

    /// A client asks its gateway for a held reply: at the network's
    /// fetch rate, whether or not it expects one, so when it fetches says
    /// nothing about its mail.
    async fn fetch(&mut self) -> Result<(), LinkError> {
        let request: u64 = rand::rng().random();
        self.fetching = Some(request);
        self.next_fetch = next_tick(
            self.next_fetch,
            poisson_gap(self.cfg.fetch_mean, &mut self.pacing),
        );
        let mut out = Vec::new();
        Frame::Fetch { request }.encode(&mut out);
        self.write(&out).await
    }

    /// One frame from the peer; any frame a dialled peer may send proves
    /// it alive.
    async fn on_frame(&mut self, frame: Frame) -> Result<(), LinkError> {
        let heard = Instant::now();
        match frame {
            Frame::Ack { seq, .. } if self.cover.remove(&seq) => {
                // Cover: nothing kept, nothing to settle.
                self.last_heard = heard;
            }
            Frame::Ack { seq, status } => {
                self.last_heard = heard;
                let id = self.sent.remove(seq).ok_or(LinkError::StrayAck)?;
                self.policy.outbox.acked(self.peer, id, status).await;
            }
            Frame::Pong {
                subject,
                epoch,
                key,
                ..
            } => {
                self.last_heard = heard;
                let subject = NodeId(subject);
                self.policy.keys.pong(self.peer, subject, epoch, key);
            }
            Frame::Keys { subject, bundle } => {
                self.last_heard = heard;
                self.policy.keys.keys(self.peer, NodeId(subject), bundle);
            }
            Frame::Ping {
                nonce,
                subject,
                epoch,
            } => {
                self.last_heard = heard;
                let mut pong = Vec::new();
                let key = [0; 32];
                Frame::Pong {
                    nonce,
                    subject,
                    epoch,
                    key,
                }
                .encode(&mut pong);
                self.write(&pong).await?;
            }
            Frame::Held { request, reply } => {
                self.last_heard = heard;
                let Some(mailbox) = self.policy.mailbox.clone() else {
                    return Err(LinkError::NoHello);
                };
                if self.fetching != Some(request) {
                    return Err(LinkError::StrayHeld);
                }
                self.fetching = None;
                if let Some(reply) = reply {
                    let delivery = reply.delivery;
                    // Confirmed only once the client committed what it
                    // said: a crash before that gets the same reply again.
                    if mailbox.held(reply).await {
                        let mut out = Vec::new();
                        Frame::Confirm { delivery }.encode(&mut out);
                        self.write(&out).await?;
                    }
                }
            }
            Frame::Hello { .. }
            | Frame::Auth { .. }
            | Frame::Packet { .. }
            | Frame::GetKeys { .. }
            | Frame::Fetch { .. }
            | Frame::Confirm { .. } => {
                return Err(LinkError::NoHello);
            }
        }
        Ok(())
    }

    /// Pings if it is time: the PING asks the peer about a node's key
    /// (what the gossip policy wants compared), and keeps the link alive.
    async fn ping_if_due(&mut self) -> Result<(), LinkError> {
        let now = Instant::now();
        if now < self.next_ping {
            return Ok(());
        }
        self.next_ping = now + self.cfg.ping_interval;
        let nonce: u64 = rand::rng().random();
        let (subject, epoch) = self
            .policy
            .keys
            .probe(self.peer)
            .map(|(s, e)| (s.0, e))
            .unwrap_or(([0; 32], 0));
        let mut ping = Vec::new();
        Frame::Ping {
            nonce,
            subject,
            epoch,
        }
        .encode(&mut ping);
        self.write(&ping).await
    }

    /// Writes whole frames within `idle_timeout`; nothing to write is no
    /// write.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        if bytes.is_empty() {
            return Ok(());
        }
        write_within(&mut self.wr, bytes, self.cfg.idle_timeout).await
    }

    /// Hands back what was sent and not acknowledged (the outbox sends it
    /// again, on this link's successor or another route) and closes.
    async fn close(self) {
        let Outbound {
            peer,
            policy,
            sent,
            mut wr,
            ..
        } = self;
        if !sent.is_empty() {
            policy.outbox.unacked(peer, sent.ids()).await;
        }
        let _ = wr.shutdown().await;
    }
}

/// The packets sent on one outbound link and not yet acknowledged.
#[derive(Default)]
struct InFlight {
    by_seq: HashMap<u64, i64>,
    rows: HashSet<i64>,
}

impl InFlight {
    /// Records spool row `id` as sent; returns its fresh random sequence
    /// number.
    fn insert(&mut self, id: i64) -> u64 {
        loop {
            let seq: u64 = rand::rng().random();
            if let std::collections::hash_map::Entry::Vacant(slot) = self.by_seq.entry(seq) {
                slot.insert(id);
                self.rows.insert(id);
                return seq;
            }
        }
    }

    fn contains(&self, id: i64) -> bool {
        self.rows.contains(&id)
    }

    fn has_seq(&self, seq: u64) -> bool {
        self.by_seq.contains_key(&seq)
    }

    fn remove(&mut self, seq: u64) -> Option<i64> {
        let id = self.by_seq.remove(&seq)?;
        self.rows.remove(&id);
        Some(id)
    }

    fn len(&self) -> usize {
        self.by_seq.len()
    }

    fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    fn ids(self) -> Vec<i64> {
        self.by_seq.into_values().collect()
    }
}

/// The tick after `tick`, `gap` later: counted from when the tick was
/// due, not from when it was served, so a late tick (the link busy with a
/// reply) does not slow the whole process down; but never in the past,
/// so a link that stalled does not make up for it in a burst.
fn next_tick(tick: Instant, gap: Duration) -> Instant {
    (tick + gap).max(Instant::now())
}

/// Cover packets of each kind a client's link keeps built ahead.
const COVER_AHEAD: usize = 2;

/// The gap before a client's next FETCH or PACKET: exponential with mean
/// `mean` (a Poisson process), capped at ten means so a client never goes
/// unusually long without one.
fn poisson_gap<R: Rng + ?Sized>(mean: Duration, rng: &mut R) -> Duration {
    let u: f64 = 1.0 - rng.random::<f64>();
    mean.mul_f64((-u.ln()).min(10.0))
}

/// Writes `bytes`, giving up after `deadline`: a peer that stops reading
/// cannot hold the link (and its packets) for ever.
async fn write_within(
    wr: &mut (impl AsyncWriteExt + Unpin),
    bytes: &[u8],
    deadline: Duration,
) -> Result<(), LinkError> {
    tokio::time::timeout(deadline, wr.write_all(bytes))
        .await
        .map_err(|_| LinkError::Idle(deadline))?
        .map_err(LinkError::from)
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// What a gateway made of a client's probe (`pluto2 check -client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// It proved the key `nodes.json` pins, took ours, and answered a
    /// FETCH: it serves this client. `held`: a reply was waiting (it stays
    /// there, since the probe confirms nothing).
    Serves { held: bool },
    /// It closed the link without a HELLO: it takes no clients (a node
    /// that is no gateway answers a client as it answers a stranger).
    ClosedBeforeHello,
    /// It proved itself, then closed the link after our proof without
    /// answering the FETCH: it has no room for another client
    /// (`-gateway-clients`), or refused our proof.
    ClosedAfterAuth,
}

/// Why a probe of a gateway failed otherwise: the link's own error (the
/// gateway's HELLO names another node, its proof fails against the pinned
/// key, other network parameters, a time-out, …).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(LinkError);

/// A client's handshake with its gateway on `stream` (already through
/// Tor), then one FETCH, all within `timeout`; nothing is sent that
/// changes anything at the gateway: no packet, no CONFIRM. For `pluto2
/// check`, which says what the outcome means.
pub async fn probe_gateway(
    mut stream: TcpStream,
    cfg: &LinkConfig,
    gateway: NodeId,
    key: &VerifyingKey,
    timeout: Duration,
) -> Result<ProbeOutcome, ProbeError> {
    /// The peer hung up (an orderly close or a reset) rather than broke
    /// the protocol.
    fn hung_up(e: &LinkError) -> bool {
        match e {
            LinkError::Closed => true,
            LinkError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
    let probe = async {
        let (mut rd, mut wr) = stream.split();
        let mut reader = FrameReader::new();
        match offer_hello(cfg, gateway, key, &mut reader, &mut rd, &mut wr).await {
            Ok(_) => {}
            Err(e) if hung_up(&e) => return Ok(ProbeOutcome::ClosedBeforeHello),
            Err(e) => return Err(e),
        }
        let request: u64 = rand::rng().random();
        let answer = match write_frame(&mut wr, &Frame::Fetch { request }).await {
            Ok(()) => reader.next(&mut rd, cfg.connect_timeout).await,
            Err(e) => Err(e.into()),
        };
        match answer {
            Ok(Frame::Held { request: r, reply }) if r == request => Ok(ProbeOutcome::Serves {
                held: reply.is_some(),
            }),
            Ok(Frame::Held { .. }) => Err(LinkError::StrayHeld),
            Ok(_) => Err(LinkError::NoHello),
            Err(e) if hung_up(&e) => Ok(ProbeOutcome::ClosedAfterAuth),
            Err(e) => Err(e),
        }
    };
    let outcome = tokio::time::timeout(timeout, probe)
        .await
        .unwrap_or(Err(LinkError::Idle(timeout)))
        .map_err(ProbeError);
    let _ = stream.shutdown().await;
    outcome
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn ping(nonce: u64) -> Frame {
        Frame::Ping {
            nonce,
            subject: [0; 32],
            epoch: 0,
        }
    }

    /// What a fresh inbound reader makes of `prefix` followed by a PING.
    async fn first_frame_after(prefix: &[u8]) -> Result<Frame, LinkError> {
        let idle = Duration::from_secs(1);
        let mut bytes = prefix.to_vec();
        ping(7).encode(&mut bytes);
        let mut stream = &bytes[..];
        let mut reader = FrameReader::new();
        reader.skip_proxy_header(&mut stream, idle).await?;
        reader.next(&mut stream, idle).await
    }

    #[tokio::test]
    async fn it_skips_the_proxy_line_tor_sends_before_the_first_frame() {
        let proxy = b"PROXY TCP6 fc00:dead:beef:4dad::0:7e57 ::1 6543 9999\r\n";
        assert_eq!(first_frame_after(proxy).await.unwrap(), ping(7));
        // Without a PROXY line the first frame is untouched.
        assert_eq!(first_frame_after(b"").await.unwrap(), ping(7));
        // A broken PROXY line ends the link.
        assert!(first_frame_after(b"PROXY nonsense\r\n").await.is_err());
    }

    #[test]
    fn it_redials_a_peer_within_half_a_minute_however_often_it_failed() {
        let mut rng = StdRng::seed_from_u64(10);
        for failures in [0, 1, 5, 6, 40, u32::MAX] {
            for _ in 0..200 {
                let pause = redial_pause(failures, &mut rng);
                assert!(pause < MAX_REDIAL, "{failures} failures: {pause:?}");
                assert!(pause >= Duration::from_millis(500), "{pause:?}");
            }
        }
        // After a first failure it is quick.
        assert!(redial_pause(1, &mut rng) < Duration::from_secs(2));
    }

    /// Kolmogorov–Smirnov distance between `samples` and Exp(`mean`).
    fn ks_exponential(samples: &mut [f64], mean: f64) -> f64 {
        crate::testkit::ks_statistic(samples.to_vec(), |x| 1.0 - (-x / mean).exp())
    }

    /// A late tick does not delay the ticks after it; a stall is not made
    /// up for in a burst.
    #[tokio::test(start_paused = true)]
    async fn the_next_tick_counts_from_when_the_last_was_due() {
        let due = Instant::now();
        tokio::time::advance(Duration::from_millis(30)).await;
        let gap = Duration::from_millis(50);
        assert_eq!(next_tick(due, gap), due + gap, "served 30 ms late");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(next_tick(due, gap), Instant::now(), "after a stall");
    }

    /// A client's sends and fetches form Poisson processes: their gaps
    /// follow the exponential law of the network's mean (the cap at ten
    /// means cuts off a tail of e^-10, invisible here). Seeded.
    #[test]
    fn a_clients_gaps_follow_the_exponential_law_of_their_mean() {
        let mut rng = StdRng::seed_from_u64(19);
        let mean = Duration::from_millis(30_000);
        let mut gaps: Vec<f64> = (0..4_000)
            .map(|_| poisson_gap(mean, &mut rng).as_secs_f64())
            .collect();
        // Critical value at the 0.1 % level for n = 4,000: 1.95 / sqrt(n).
        let d = ks_exponential(&mut gaps, 30.0);
        assert!(d < 1.95 / 4_000f64.sqrt(), "D = {d}");
        // A constant gap, or the law of another mean, is told apart.
        let mut fixed = vec![30.0; 4_000];
        assert!(ks_exponential(&mut fixed, 30.0) > 0.3);
        let mut slower: Vec<f64> = gaps.iter().map(|g| g * 1.2).collect();
        assert!(ks_exponential(&mut slower, 30.0) > 1.95 / 4_000f64.sqrt());
        assert!(gaps.iter().all(|&g| g <= 300.0));
    }

    #[test]
    fn it_starts_the_backoff_afresh_after_a_link_that_came_up() {
        // Dial failures pile up…
        assert_eq!(failures_after(3, false, false), 4);
        // …but a link that was up and then broke is a first failure.
        assert_eq!(failures_after(6, true, false), 1);
        assert_eq!(failures_after(6, true, true), 0);
        assert_eq!(failures_after(u32::MAX, false, false), u32::MAX);
    }

    /// The node the tests' links dial or serve as (id 1, key seed 1).
    const A: NodeId = NodeId([1; 32]);
    /// Its peer (id 3, key seed 3).
    const B: NodeId = NodeId([3; 32]);

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// Settings for node `me` signing with the key of `seed`.
    fn config_of(me: NodeId, seed: u8, idle: Duration) -> Arc<LinkConfig> {
        Arc::new(LinkConfig {
            me,
            signing: key(seed),
            params_hash: [2; 32],
            window: 4,
            idle_timeout: idle,
            ping_interval: idle / 3,
            connect_timeout: Duration::from_secs(5),
            max_age: Duration::from_secs(3600),
            max_handshakes: 4,
            handshakes_per_circuit: 2,
            hello_timeout: Duration::from_secs(5),
            control_rate: 20.0,
            control_burst: 40.0,
            role: Role::Node,
            max_clients: 2,
            client_rate: 0.01,
            client_burst: 3.0,
            fetch_rate: 100.0,
            fetch_burst: 100.0,
            fetch_mean: Duration::from_millis(50),
            send_mean: Duration::from_millis(50),
            loop_share: 0.25,
            pacing_seed: None,
        })
    }

    /// A client's settings: its key of `seed`, its id that key.
    fn client_config(seed: u8, idle: Duration) -> Arc<LinkConfig> {
        let mut cfg =
            (*config_of(NodeId(key(seed).verifying_key().to_bytes()), seed, idle)).clone();
        cfg.role = Role::Client;
        Arc::new(cfg)
    }

    /// Node A as a gateway: A and B listed, clients admitted; each client's
    /// mailbox holds one reply (under its own key) until it is confirmed,
    /// and every client packet is stored.
    struct Gateway {
        confirmed: std::sync::Mutex<Vec<(NodeId, [u8; 16])>>,
    }

    impl Admission for Gateway {
        fn node_key(&self, id: &NodeId) -> Option<VerifyingKey> {
            Listed.node_key(id)
        }
        fn admits_clients(&self) -> bool {
            true
        }
    }

    impl PacketHandler for Gateway {
        fn receive(&self, _: NodeId, _: u32, _: WirePacket) -> BoxFuture<'_, AckStatus> {
            Box::pin(async { AckStatus::Rejected })
        }
        fn receive_from_client(
            &self,
            _: NodeId,
            _: u32,
            _: WirePacket,
        ) -> BoxFuture<'_, AckStatus> {
            Box::pin(async { AckStatus::Stored })
        }
        fn fetch(&self, client: NodeId) -> BoxFuture<'_, Option<HeldReply>> {
            let gone = self
                .confirmed
                .lock()
                .unwrap()
                .iter()
                .any(|(c, _)| *c == client);
            Box::pin(async move {
                (!gone).then(|| HeldReply {
                    delivery: client.0[..16].try_into().unwrap(),
                    reply_id: [7; 16],
                    payload: vec![client.0[0]; crate::wire::packet::PAYLOAD_SIZE].into(),
                })
            })
        }
        fn confirm(&self, client: NodeId, delivery: [u8; 16]) -> BoxFuture<'_, ()> {
            if client.0[..16] == delivery {
                self.confirmed.lock().unwrap().push((client, delivery));
            }
            Box::pin(async {})
        }
    }

    async fn ask(s: &mut TcpStream, reader: &mut FrameReader, frame: Frame) -> Frame {
        write_frame(s, &frame).await.unwrap();
        reader.next(s, Duration::from_secs(5)).await.unwrap()
    }

    #[tokio::test]
    async fn a_gateway_serves_a_client_its_own_mailbox_and_nobody_else() {
        let idle = Duration::from_secs(5);
        let gateway = Arc::new(Gateway {
            confirmed: Default::default(),
        });
        let (addr, _events, stop, server) =
            listen_as(test_config(idle), gateway.clone(), gateway.clone()).await;
        let a_key = key(1).verifying_key();
        let alice = client_config(20, idle);
        let (mut s, mut reader, shaken) = dial(addr, &alice, A, &a_key).await;
        assert_eq!(shaken.unwrap().node, A);
        // Its reply, as long as an empty answer; again until confirmed.
        let Frame::Held {
            request: 1,
            reply: Some(r),
        } = ask(&mut s, &mut reader, Frame::Fetch { request: 1 }).await
        else {
            panic!("no reply held");
        };
        assert_eq!(r.payload[0], alice.me.0[0]);
        assert!(matches!(
            ask(&mut s, &mut reader, Frame::Fetch { request: 2 }).await,
            Frame::Held {
                request: 2,
                reply: Some(_)
            }
        ));
        write_frame(
            &mut s,
            &Frame::Confirm {
                delivery: r.delivery,
            },
        )
        .await
        .unwrap();
        let Frame::Held {
            request: 3,
            reply: None,
        } = ask(&mut s, &mut reader, Frame::Fetch { request: 3 }).await
        else {
            panic!("a confirmed reply came again");
        };
        // Its packets are taken as a client's, up to its burst; past it: busy.
        let packet = || Frame::Packet {
            seq: 1,
            epoch: 0,
            packet: WirePacket::from_slice(&[0; crate::wire::packet::PACKET_SIZE]).unwrap(),
        };
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let Frame::Ack { status, .. } = ask(&mut s, &mut reader, packet()).await else {
                panic!("no ACK");
            };
            statuses.push(status);
        }
        assert_eq!(&statuses[..3], [AckStatus::Stored; 3]);
        assert!(statuses[3..].contains(&AckStatus::Busy), "{statuses:?}");

        // Someone claiming alice's key without its secret: not served.
        let mut thief = (*client_config(21, idle)).clone();
        thief.me = alice.me;
        let (mut t, mut treader, shaken) = dial(addr, &thief, A, &a_key).await;
        assert!(shaken.is_ok(), "the gateway proved itself");
        let mut asks = Vec::new();
        Frame::Fetch { request: 9 }.encode(&mut asks);
        t.write_all(&asks).await.unwrap();
        let got = frames_until_close(&mut t, &mut treader).await;
        assert!(got.is_empty(), "served a thief: {got:?}");
        // A recorded handshake of alice's, replayed: the gateway's HELLO
        // has a fresh nonce, so her old proof does not verify for it.
        let first = hello(&alice);
        let recorded = {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut r = FrameReader::new();
            write_frame(&mut s, &Frame::Hello(first)).await.unwrap();
            let Frame::Hello(theirs) = r.next(&mut s, idle).await.unwrap() else {
                panic!("no HELLO");
            };
            hello::prove(&alice.signing, Side::Dialler, &first, &theirs)
        };
        let mut s2 = TcpStream::connect(addr).await.unwrap();
        let mut r2 = FrameReader::new();
        write_frame(&mut s2, &Frame::Hello(first)).await.unwrap();
        assert!(matches!(
            r2.next(&mut s2, idle).await.unwrap(),
            Frame::Hello(_)
        ));
        assert!(matches!(
            r2.next(&mut s2, idle).await.unwrap(),
            Frame::Auth { .. }
        ));
        let mut replay = Vec::new();
        Frame::Auth {
            signature: recorded,
        }
        .encode(&mut replay);
        Frame::Fetch { request: 10 }.encode(&mut replay);
        s2.write_all(&replay).await.unwrap();
        let got = frames_until_close(&mut s2, &mut r2).await;
        assert!(got.is_empty(), "a replayed handshake was served: {got:?}");
        // A client may not claim to be node B (the node check fails), nor
        // does a client that names B's id as its key take B's room.
        let mut as_node = (*client_config(22, idle)).clone();
        as_node.role = Role::Node;
        as_node.me = B;
        let (mut t, mut treader, _) = dial(addr, &as_node, A, &a_key).await;
        let got = frames_until_close(&mut t, &mut treader).await;
        assert!(got.is_empty(), "a client passed as a node: {got:?}");
        let b = config_of(B, 3, idle);
        let (mut node_b, mut breader, shaken) = dial(addr, &b, A, &a_key).await;
        assert!(shaken.is_ok());
        assert!(served(&mut node_b, &mut breader, 5).await, "B's link");
        // A node may not fetch.
        write_frame(&mut node_b, &Frame::Fetch { request: 4 })
            .await
            .unwrap();
        let got = frames_until_close(&mut node_b, &mut breader).await;
        assert!(got.is_empty(), "a node fetched: {got:?}");
        // Room for two clients: alice and a second are served, a third
        // is closed; alice's newer link replaces her older one.
        let (mut second, mut sreader, _) = dial(addr, &client_config(30, idle), A, &a_key).await;
        assert!(served(&mut second, &mut sreader, 6).await);
        let (mut third, mut treader, _) = dial(addr, &client_config(31, idle), A, &a_key).await;
        assert!(!served(&mut third, &mut treader, 7).await, "a third client");
        let (mut again, mut areader, _) = dial(addr, &alice, A, &a_key).await;
        assert!(
            served(&mut again, &mut areader, 8).await,
            "alice's newer link"
        );
        let got = frames_until_close(&mut s, &mut reader).await;
        assert!(got.is_empty(), "alice's older link still open: {got:?}");
        stop.cancel();
        server.await.unwrap();
    }

    /// Node A's settings.
    fn test_config(idle: Duration) -> Arc<LinkConfig> {
        config_of(A, 1, idle)
    }

    /// The tests' nodes.json: A and B, each with the key of its seed.
    struct Listed;

    impl Admission for Listed {
        fn node_key(&self, id: &NodeId) -> Option<VerifyingKey> {
            match *id {
                A => Some(key(1).verifying_key()),
                B => Some(key(3).verifying_key()),
                _ => None,
            }
        }
    }

    /// The listening side of a handshake as node B, on a stream the test
    /// holds.
    async fn answer_as_b(s: &mut TcpStream, reader: &mut FrameReader) -> PeerHello {
        let cfg = config_of(B, 3, Duration::from_secs(5));
        let (mut rd, mut wr) = s.split();
        answer_hello(&cfg, &Listed, reader, &mut rd, &mut wr)
            .await
            .unwrap()
    }

    /// Dials `addr` as `cfg`'s node and runs the dialling handshake,
    /// expecting node `peer` holding `peer_key`.
    async fn dial(
        addr: std::net::SocketAddr,
        cfg: &LinkConfig,
        peer: NodeId,
        peer_key: &VerifyingKey,
    ) -> (TcpStream, FrameReader, Result<PeerHello, LinkError>) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut reader = FrameReader::new();
        let (mut rd, mut wr) = s.split();
        let r = offer_hello(cfg, peer, peer_key, &mut reader, &mut rd, &mut wr).await;
        (s, reader, r)
    }

    /// Node policy with nothing to send and no gossip.
    struct Idle(watch::Sender<u64>);

    impl Outbox for Idle {
        fn take(
            &self,
            _: NodeId,
            _: usize,
        ) -> BoxFuture<'_, (Vec<OutboundPacket>, Option<Duration>)> {
            Box::pin(async { (Vec::new(), None) })
        }
        fn acked(&self, _: NodeId, _: i64, _: AckStatus) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn unacked(&self, _: NodeId, _: Vec<i64>) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn events(&self) -> watch::Receiver<u64> {
            self.0.subscribe()
        }
    }

    impl KeyGossip for Idle {}

    impl LinkHealth for Idle {
        fn link_state(&self, _: NodeId, _: bool) {}
    }

    impl Admission for Idle {
        fn node_key(&self, id: &NodeId) -> Option<VerifyingKey> {
            Listed.node_key(id)
        }
    }

    /// Plays SOCKS5 for the first connection to `listener` (no
    /// authentication, CONNECT accepted) and hands over the stream.
    async fn socks_accept(listener: &TcpListener) -> TcpStream {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut greeting = [0u8; 4];
        s.read_exact(&mut greeting).await.unwrap();
        s.write_all(&[5, 0]).await.unwrap();
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        let mut rest = vec![0u8; head[4] as usize + 2];
        s.read_exact(&mut rest).await.unwrap();
        s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
        s
    }

    /// Reads and drops whatever comes until the other side closes.
    async fn drain(s: &mut TcpStream) {
        let mut sink = [0u8; 1024];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    }

    /// A peer (node B) that answers HELLO and never says anything again,
    /// while reading whatever it is sent.
    async fn silent_peer(listener: TcpListener) {
        let mut s = socks_accept(&listener).await;
        let mut reader = FrameReader::new();
        answer_as_b(&mut s, &mut reader).await;
        drain(&mut s).await;
    }

    #[tokio::test]
    async fn an_outbound_link_to_a_peer_that_falls_silent_is_given_up() {
        let cfg = test_config(Duration::from_millis(300));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        tokio::spawn(silent_peer(listener));
        let dialer = SocksDialer::new(proxy, Duration::from_secs(5));
        let policy = PeerPolicy::of(Arc::new(Idle(watch::channel(0).0)));
        let stop = CancellationToken::new();
        let peer = B;
        let mut established = false;
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            outbound(
                peer,
                "peer.onion",
                9999,
                &dialer,
                &cfg,
                &policy,
                &stop,
                &mut established,
            ),
        )
        .await
        .expect("a silent peer must not hold the link for ever");
        assert!(established, "HELLO was exchanged");
        assert!(matches!(result, Err(LinkError::Idle(_))), "{result:?}");
    }

    /// A handler that answers only when the test opens its gate, like a
    /// hop whose custody commit has not returned yet.
    struct Gated(tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

    impl PacketHandler for Gated {
        fn receive(&self, _: NodeId, _: u32, _: WirePacket) -> BoxFuture<'_, AckStatus> {
            Box::pin(async move {
                if let Some(gate) = self.0.lock().await.take() {
                    let _ = gate.await;
                }
                AckStatus::Stored
            })
        }
    }

    /// Counts refusals by kind.
    #[derive(Default)]
    struct Counted(std::sync::Mutex<Vec<LinkRefusal>>);

    impl LinkEvents for Counted {
        fn refused(&self, refusal: LinkRefusal) {
            self.0.lock().unwrap().push(refusal);
        }
    }

    /// A HELLO that arrives a byte at a time, each byte well within any
    /// per-read deadline, is cut off at the deadline for the whole hello
    /// (and counted), long before its last byte: the slot it held is free
    /// again.
    #[tokio::test]
    async fn a_hello_dripped_a_byte_at_a_time_is_cut_off_at_the_hello_deadline() {
        // Only the hello deadline is short: neither the idle timeout nor
        // the per-frame read deadline would end this connection in time.
        let cfg = Arc::new(LinkConfig {
            hello_timeout: Duration::from_millis(400),
            connect_timeout: Duration::from_secs(30),
            ..(*test_config(Duration::from_secs(30))).clone()
        });
        let (addr, events, stop, server) = listen_as_a(cfg.clone()).await;
        let mut bytes = Vec::new();
        Frame::Hello(hello(&cfg)).encode(&mut bytes);
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        let drip = tokio::spawn(async move {
            for b in bytes {
                if wr.write_all(&[b]).await.is_err() {
                    return;
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf))
            .await
            .expect("the listener must close a dripping hello")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        let at = sent.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            at < frame::HELLO_FRAME,
            "cut off after {at} of {} bytes",
            frame::HELLO_FRAME
        );
        drip.abort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while events.0.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "not counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*events.0.lock().unwrap(), [LinkRefusal::SlowHello]);
        stop.cancel();
        server.await.unwrap();
    }

    /// Takes no packet (a listener test that never gets that far).
    struct NoHandler;

    impl PacketHandler for NoHandler {
        fn receive(&self, _: NodeId, _: u32, _: WirePacket) -> BoxFuture<'_, AckStatus> {
            Box::pin(async { AckStatus::Rejected })
        }
    }

    struct NoEvents;

    impl LinkEvents for NoEvents {
        fn refused(&self, _refusal: LinkRefusal) {}
    }

    #[tokio::test]
    async fn a_packet_is_acknowledged_only_after_its_handler_answered() {
        let cfg = test_config(Duration::from_secs(5));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, gate) = tokio::sync::oneshot::channel();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let server = tokio::spawn(serve(
            listener,
            cfg.clone(),
            Arc::new(Gated(tokio::sync::Mutex::new(Some(gate)))),
            Arc::new(Listed),
            Arc::new(NoEvents),
            stop.clone(),
            tracker.clone(),
        ));
        // B dials A.
        let b = config_of(B, 3, Duration::from_secs(5));
        let (mut client, mut reader, shaken) = dial(addr, &b, A, &key(1).verifying_key()).await;
        assert_eq!(shaken.unwrap().node, A);
        let idle = Duration::from_secs(5);
        let packet = WirePacket::from_slice(&[0; crate::wire::packet::PACKET_SIZE]).unwrap();
        let frame = Frame::Packet {
            seq: 41,
            epoch: 0,
            packet,
        };
        write_frame(&mut client, &frame).await.unwrap();
        // The link answers a PING while the packet's handler is still busy,
        // and no ACK has come before the PONG.
        write_frame(&mut client, &ping(9)).await.unwrap();
        assert_eq!(
            reader.next(&mut client, idle).await.unwrap(),
            Frame::Pong {
                nonce: 9,
                subject: [0; 32],
                epoch: 0,
                key: [0; 32]
            }
        );
        open.send(()).unwrap();
        assert_eq!(
            reader.next(&mut client, idle).await.unwrap(),
            Frame::Ack {
                seq: 41,
                status: AckStatus::Stored
            }
        );
        stop.cancel();
        drop(client);
        server.await.unwrap();
        tracker.close();
        tracker.wait().await;
    }

    /// What a link the test dialled got after its handshake: the frames
    /// the listener sent until it closed (a reset counts as a close).
    async fn frames_until_close(s: &mut TcpStream, reader: &mut FrameReader) -> Vec<Frame> {
        let mut got = Vec::new();
        loop {
            match reader.next(s, Duration::from_secs(5)).await {
                Ok(f) => got.push(f),
                Err(LinkError::Closed) => return got,
                Err(LinkError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return got;
                }
                Err(e) => panic!("the listener neither answered nor closed: {e}"),
            }
        }
    }

    /// The requests of an unauthenticated peer that wants service: keys,
    /// a ping and a packet.
    fn requests() -> Vec<u8> {
        let mut out = Vec::new();
        Frame::GetKeys { subject: A.0 }.encode(&mut out);
        ping(5).encode(&mut out);
        Frame::Packet {
            seq: 1,
            epoch: 0,
            packet: WirePacket::from_slice(&[0; crate::wire::packet::PACKET_SIZE]).unwrap(),
        }
        .encode(&mut out);
        out
    }

    #[tokio::test]
    async fn only_a_listed_node_that_proves_its_key_is_served() {
        let cfg = test_config(Duration::from_secs(5));
        let (addr, events, stop, server) = listen_as_a(cfg.clone()).await;
        let a_key = key(1).verifying_key();
        let idle = Duration::from_secs(5);

        // B with its own key: served (a PING is answered).
        let b = config_of(B, 3, idle);
        let (mut s, mut reader, shaken) = dial(addr, &b, A, &a_key).await;
        assert_eq!(shaken.unwrap().node, A);
        write_frame(&mut s, &ping(1)).await.unwrap();
        assert!(matches!(
            reader.next(&mut s, idle).await.unwrap(),
            Frame::Pong { nonce: 1, .. }
        ));
        drop(s);

        // Someone claiming to be B without B's key: the listener proves
        // itself, refuses the proof it gets, and answers nothing else.
        let impostor = config_of(B, 9, idle);
        let (mut s, mut reader, shaken) = dial(addr, &impostor, A, &a_key).await;
        assert!(shaken.is_ok(), "the listener proved itself: {shaken:?}");
        s.write_all(&requests()).await.unwrap();
        let got = frames_until_close(&mut s, &mut reader).await;
        assert!(got.is_empty(), "served an impostor: {got:?}");

        // A node that is not listed, with a key of its own: not even a
        // HELLO back.
        let stranger = config_of(NodeId([9; 32]), 9, idle);
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        Frame::Hello(hello(&stranger)).encode(&mut out);
        out.extend_from_slice(&requests());
        s.write_all(&out).await.unwrap();
        let got = frames_until_close(&mut s, &mut FrameReader::new()).await;
        assert!(got.is_empty(), "answered a stranger: {got:?}");

        // A client (this listener is no gateway), and a node speaking the
        // protocol before authentication: refused the same way.
        let mut client = hello(&b);
        client.role = Role::Client;
        let mut s = TcpStream::connect(addr).await.unwrap();
        write_frame(&mut s, &Frame::Hello(client)).await.unwrap();
        let got = frames_until_close(&mut s, &mut FrameReader::new()).await;
        assert!(got.is_empty(), "answered a client: {got:?}");
        let mut old = vec![1u8, 0, 2];
        old.extend_from_slice(&[0; 72]);
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&old).await.unwrap();
        let got = frames_until_close(&mut s, &mut FrameReader::new()).await;
        assert!(got.is_empty(), "answered version 2: {got:?}");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while events.0.lock().unwrap().len() < 4 {
            assert!(tokio::time::Instant::now() < deadline, "not counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut seen = events.0.lock().unwrap().clone();
        seen.sort_by_key(|k| *k as u8);
        assert_eq!(
            seen,
            [
                LinkRefusal::Version,
                LinkRefusal::Unlisted,
                LinkRefusal::Unlisted,
                LinkRefusal::BadProof
            ]
        );
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_dialler_refuses_a_listener_that_is_not_the_node_it_meant() {
        let idle = Duration::from_secs(5);
        // Node A listens.
        let (addr, _events, stop, server) = listen_as_a(test_config(idle)).await;
        let b = config_of(B, 3, idle);
        // B meant to reach node C: A's HELLO names A.
        let (_, _, r) = dial(addr, &b, NodeId([4; 32]), &key(1).verifying_key()).await;
        assert!(matches!(r, Err(LinkError::WrongPeer)), "{r:?}");
        // B meant A, but A's listed key is another one (an impostor
        // behind A's onion name, or a stale nodes.json): A's proof fails.
        let (_, _, r) = dial(addr, &b, A, &key(7).verifying_key()).await;
        assert!(matches!(r, Err(LinkError::BadProof(_))), "{r:?}");
        stop.cancel();
        server.await.unwrap();
    }

    /// A listener the test started: its address, the refusals it counts,
    /// what stops it and its task.
    type Listening = (
        std::net::SocketAddr,
        Arc<Counted>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    );

    /// Starts node A's listener with `cfg`, no packet handler and the
    /// tests' nodes.json; see [`listen_as`].
    async fn listen_as_a(cfg: Arc<LinkConfig>) -> Listening {
        listen_as(cfg, Arc::new(NoHandler), Arc::new(Listed)).await
    }

    /// Starts a listener as `cfg`'s node, taking packets, fetches and
    /// confirmations to `handler` and asking `admission` who may link;
    /// returns its address, the refusals it counts and what stops it.
    async fn listen_as(
        cfg: Arc<LinkConfig>,
        handler: Arc<dyn PacketHandler>,
        admission: Arc<dyn Admission>,
    ) -> Listening {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Counted::default());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            cfg,
            handler,
            admission,
            events.clone(),
            stop.clone(),
            TaskTracker::new(),
        ));
        (addr, events, stop, server)
    }

    /// Whether a link B opened to A is served: a PING gets its PONG.
    async fn served(s: &mut TcpStream, reader: &mut FrameReader, nonce: u64) -> bool {
        if write_frame(s, &ping(nonce)).await.is_err() {
            return false;
        }
        matches!(
            reader.next(s, Duration::from_secs(5)).await,
            Ok(Frame::Pong { nonce: n, .. }) if n == nonce
        )
    }

    /// Waits (bounded) until `events` counted `n` refusals of `kind`.
    async fn until_counted(events: &Counted, kind: LinkRefusal, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = events
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|k| **k == kind)
                .count();
            if seen >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{seen} of {n} {kind:?} counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn strangers_holding_every_handshake_place_give_way_to_a_node() {
        // Four places; the strangers' connections never say anything, and
        // no deadline would end them during the test.
        let cfg = Arc::new(LinkConfig {
            hello_timeout: Duration::from_secs(60),
            ..(*test_config(Duration::from_secs(60))).clone()
        });
        let (addr, events, stop, server) = listen_as_a(cfg).await;
        let mut strangers = Vec::new();
        for _ in 0..10 {
            strangers.push(TcpStream::connect(addr).await.unwrap());
        }
        // Six of the ten were closed to make room for the last four.
        until_counted(&events, LinkRefusal::NoSlot, 6).await;
        // B still gets in (its handshake evicts the oldest stranger left)
        // and is served.
        let b = config_of(B, 3, Duration::from_secs(5));
        let (mut s, mut reader, shaken) = dial(addr, &b, A, &key(1).verifying_key()).await;
        assert_eq!(shaken.unwrap().node, A);
        assert!(served(&mut s, &mut reader, 1).await);
        until_counted(&events, LinkRefusal::NoSlot, 7).await;
        // The strangers that made way see their connection closed.
        let mut closed = 0;
        for mut st in strangers {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(50), st.read(&mut byte)).await
            {
                closed += 1;
            }
        }
        assert_eq!(closed, 7, "closed strangers");
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn one_tor_circuit_holds_only_its_share_of_the_handshake_places() {
        let cfg = Arc::new(LinkConfig {
            hello_timeout: Duration::from_secs(60),
            ..(*test_config(Duration::from_secs(60))).clone()
        });
        let (addr, events, stop, server) = listen_as_a(cfg).await;
        let proxy = |circuit: u32| {
            format!("PROXY TCP6 fc00:dead:beef:4dad::{circuit:x} ::1 6543 9999\r\n").into_bytes()
        };
        // Two from circuit 7 stay; the third is closed at once.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&proxy(7)).await.unwrap();
            held.push(s);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        third.write_all(&proxy(7)).await.unwrap();
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut byte))
            .await
            .expect("a third handshake from one circuit must be closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        until_counted(&events, LinkRefusal::NoSlot, 1).await;
        // Another circuit is not affected: B, on circuit 8, is served.
        let b = config_of(B, 3, Duration::from_secs(5));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&proxy(8)).await.unwrap();
        let mut reader = FrameReader::new();
        let (mut rd, mut wr) = s.split();
        let shaken = offer_hello(
            &b,
            A,
            &key(1).verifying_key(),
            &mut reader,
            &mut rd,
            &mut wr,
        )
        .await;
        assert_eq!(shaken.unwrap().node, A);
        assert!(served(&mut s, &mut reader, 2).await);
        assert_eq!(events.0.lock().unwrap().len(), 1);
        drop(held);
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_newer_link_from_the_same_node_replaces_the_older_one() {
        let (addr, _events, stop, server) = listen_as_a(test_config(Duration::from_secs(30))).await;
        let b = config_of(B, 3, Duration::from_secs(5));
        let a_key = key(1).verifying_key();
        let (mut old, mut old_reader, _) = dial(addr, &b, A, &a_key).await;
        assert!(served(&mut old, &mut old_reader, 1).await);
        let (mut new, mut new_reader, _) = dial(addr, &b, A, &a_key).await;
        assert!(served(&mut new, &mut new_reader, 2).await);
        // The older link is closed by the listener (B lost its circuit and
        // redialled: the stale link must not keep B's room).
        let end = old_reader.next(&mut old, Duration::from_secs(10)).await;
        assert!(
            matches!(end, Err(LinkError::Closed | LinkError::Io(_))),
            "{end:?}"
        );
        assert!(served(&mut new, &mut new_reader, 3).await);
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_link_that_carries_only_frames_nobody_asked_for_is_closed_when_idle() {
        let cfg = test_config(Duration::from_millis(500));
        let (addr, _events, stop, server) = listen_as_a(cfg).await;
        let b = config_of(B, 3, Duration::from_secs(5));
        let (mut s, _, shaken) = dial(addr, &b, A, &key(1).verifying_key()).await;
        shaken.unwrap();
        // Unasked PONGs every 50 ms, far more often than the idle timeout,
        // for up to 20 s: the link is closed all the same.
        let pong = Frame::Pong {
            nonce: 1,
            subject: [0; 32],
            epoch: 0,
            key: [0; 32],
        };
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if write_frame(&mut s, &pong).await.is_err() {
                    return;
                }
                let mut byte = [0u8; 1];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(50), s.read(&mut byte)).await
                {
                    return;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a link kept open by unasked frames");
        stop.cancel();
        server.await.unwrap();
    }

    #[test]
    fn the_room_holds_one_link_per_node_and_gives_places_back() {
        let room = Arc::new(Room::new(&test_config(Duration::from_secs(5))));
        let mut first = room.enter();
        let mut second = room.enter();
        assert_eq!(room.counts(), (2, 0));
        room.admit(&mut first, B, Role::Node);
        assert_eq!(room.counts(), (1, 1));
        room.admit(&mut second, B, Role::Node);
        assert!(first.token.is_cancelled(), "the older link of B is closed");
        assert_eq!(room.counts(), (0, 1));
        // The replaced link ending does not take the newer one's room.
        drop(first);
        assert_eq!(room.counts(), (0, 1));
        drop(second);
        assert_eq!(room.counts(), (0, 0));
        // Places of connections that end in their handshake come back.
        let places: Vec<Place> = (0..4).map(|_| room.enter()).collect();
        assert_eq!(room.counts(), (4, 0));
        drop(places);
        assert_eq!(room.counts(), (0, 0));
    }

    #[test]
    fn control_frames_past_the_budget_are_read_only_at_its_rate() {
        let cfg = test_config(Duration::from_secs(5));
        let t0 = Instant::now();
        let mut budget = ControlBudget::new(&cfg, t0);
        // The burst passes at once…
        for _ in 0..40 {
            assert_eq!(budget.spend(t0), Duration::ZERO);
        }
        // …then each frame waits its turn at 20 a second.
        let near = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() < 0.001;
        assert!(near(budget.spend(t0), 50.0));
        assert!(near(budget.spend(t0), 100.0));
        // Time earns tokens back, up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(budget.spend(later), Duration::ZERO);
        assert!(budget.tokens <= 39.0);
        // An honest peer's pace (a ping every 200 ms) never waits.
        let mut honest = ControlBudget::new(&cfg, t0);
        for i in 0..1_000u32 {
            assert_eq!(
                honest.spend(t0 + Duration::from_millis(200) * i),
                Duration::ZERO
            );
        }
    }

    /// An outbox of packets that records what the link reports back.
    struct Recording {
        waiting: std::sync::Mutex<Vec<OutboundPacket>>,
        acked: std::sync::Mutex<Vec<(i64, AckStatus)>>,
        unacked: std::sync::Mutex<Vec<i64>>,
        states: std::sync::Mutex<Vec<bool>>,
        events: watch::Sender<u64>,
    }

    impl Outbox for Recording {
        fn take(
            &self,
            _: NodeId,
            max: usize,
        ) -> BoxFuture<'_, (Vec<OutboundPacket>, Option<Duration>)> {
            let mut waiting = self.waiting.lock().unwrap();
            let n = max.min(waiting.len());
            let batch = waiting.drain(..n).collect();
            Box::pin(async move { (batch, None) })
        }
        fn acked(&self, _: NodeId, id: i64, status: AckStatus) -> BoxFuture<'_, ()> {
            self.acked.lock().unwrap().push((id, status));
            Box::pin(async {})
        }
        fn unacked(&self, _: NodeId, ids: Vec<i64>) -> BoxFuture<'_, ()> {
            self.unacked.lock().unwrap().extend(ids);
            Box::pin(async {})
        }
        fn events(&self) -> watch::Receiver<u64> {
            self.events.subscribe()
        }
    }

    impl KeyGossip for Recording {}

    impl Admission for Recording {
        fn node_key(&self, id: &NodeId) -> Option<VerifyingKey> {
            Listed.node_key(id)
        }
    }

    impl LinkHealth for Recording {
        fn link_state(&self, _: NodeId, up: bool) {
            self.states.lock().unwrap().push(up);
        }
    }

    #[tokio::test]
    async fn a_link_that_breaks_hands_back_exactly_what_was_not_acknowledged() {
        let cfg = test_config(Duration::from_secs(5));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        // The peer takes three packets, acknowledges the second and closes.
        let peer_side = tokio::spawn(async move {
            let mut s = socks_accept(&listener).await;
            let mut reader = FrameReader::new();
            let idle = Duration::from_secs(5);
            assert_eq!(answer_as_b(&mut s, &mut reader).await.node, A);
            let mut seqs = Vec::new();
            while seqs.len() < 3 {
                if let Frame::Packet { seq, .. } = reader.next(&mut s, idle).await.unwrap() {
                    seqs.push(seq);
                }
            }
            let ack = Frame::Ack {
                seq: seqs[1],
                status: AckStatus::Stored,
            };
            write_frame(&mut s, &ack).await.unwrap();
            s.shutdown().await.unwrap();
            drain(&mut s).await;
        });
        let packet = WirePacket::from_slice(&[0; crate::wire::packet::PACKET_SIZE]).unwrap();
        let outbox = Arc::new(Recording {
            waiting: std::sync::Mutex::new(
                (10..13)
                    .map(|id| OutboundPacket {
                        id,
                        epoch: 0,
                        packet: packet.clone(),
                    })
                    .collect(),
            ),
            acked: Default::default(),
            unacked: Default::default(),
            states: Default::default(),
            events: watch::channel(0).0,
        });
        let policy = PeerPolicy::of(outbox.clone());
        let dialer = SocksDialer::new(proxy, Duration::from_secs(5));
        let stop = CancellationToken::new();
        let mut established = false;
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            outbound(
                B,
                "peer.onion",
                9999,
                &dialer,
                &cfg,
                &policy,
                &stop,
                &mut established,
            ),
        )
        .await
        .expect("a closed link ends");
        assert!(matches!(result, Err(LinkError::Closed)), "{result:?}");
        assert!(established);
        assert_eq!(*outbox.states.lock().unwrap(), [true]);
        // Packets go out in the order taken: the second frame was id 11.
        assert_eq!(*outbox.acked.lock().unwrap(), [(11, AckStatus::Stored)]);
        let mut unacked = outbox.unacked.lock().unwrap().clone();
        unacked.sort();
        assert_eq!(unacked, [10, 12]);
        peer_side.await.unwrap();
    }

    /// A client's probe is served by a gateway and changes nothing there
    /// (the held reply stays); a gateway with no room, a node that is no
    /// gateway and a gateway with another key than the pinned one are
    /// each told apart.
    #[tokio::test]
    async fn a_probe_tells_a_gateway_that_serves_from_one_that_does_not() {
        let idle = Duration::from_secs(5);
        let gateway = Arc::new(Gateway {
            confirmed: Default::default(),
        });
        let (addr, _events, stop, server) =
            listen_as(test_config(idle), gateway.clone(), gateway.clone()).await;
        let a_key = key(1).verifying_key();
        let probe = |cfg: Arc<LinkConfig>, pinned: VerifyingKey| async move {
            let s = TcpStream::connect(addr).await.unwrap();
            probe_gateway(s, &cfg, A, &pinned, idle).await
        };
        let alice = client_config(40, idle);
        for _ in 0..2 {
            let got = probe(alice.clone(), a_key).await.unwrap();
            assert_eq!(got, ProbeOutcome::Serves { held: true });
        }
        assert!(gateway.confirmed.lock().unwrap().is_empty(), "confirmed");
        // Another key behind A's address: not A.
        let e = probe(alice.clone(), key(7).verifying_key())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        // Two clients hold the gateway's room: a third is closed after its
        // proof.
        let (mut one, mut r1, _) = dial(addr, &client_config(41, idle), A, &a_key).await;
        assert!(served(&mut one, &mut r1, 1).await);
        let (mut two, mut r2, _) = dial(addr, &client_config(42, idle), A, &a_key).await;
        assert!(served(&mut two, &mut r2, 2).await);
        let got = probe(alice.clone(), a_key).await.unwrap();
        assert_eq!(got, ProbeOutcome::ClosedAfterAuth);
        stop.cancel();
        server.await.unwrap();

        // A node that is no gateway: no HELLO for a client.
        let (addr, _events, stop, server) = listen_as_a(test_config(idle)).await;
        let s = TcpStream::connect(addr).await.unwrap();
        let got = probe_gateway(s, &alice, A, &a_key, idle).await.unwrap();
        assert_eq!(got, ProbeOutcome::ClosedBeforeHello);
        stop.cancel();
        server.await.unwrap();
    }
}
