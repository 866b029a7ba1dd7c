//! Links between mix nodes: the `-node` listener and one persistent
//! outbound stream per peer, through the Tor SOCKS dialer.
//!
//! Transport only: frames in, frames out, deadlines and bounds. What a
//! packet means, when it may leave and what to do with an acknowledgement
//! is node policy, reached through [`PacketHandler`] (inbound) and
//! [`PacketSource`] (outbound).
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::BoxFuture;
use crate::listen::accept_until;
use crate::redact::Sensitive;
use crate::relay::socks::SocksDialer;
use crate::wire::bundle::Bundle;
use crate::wire::frame::{self, AckStatus, Frame, FrameError, MAX_FRAME, PROTOCOL_VERSION};
use crate::wire::packet::{NodeId, WirePacket};

/// Settings shared by both directions.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This node's identity (sent in HELLO).
    pub identity: [u8; 32],
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
    /// Inbound connections at once.
    pub max_inbound: usize,
}

/// Receives packets from inbound links. The returned status is sent back
/// as ACK, so it must come only once the packet's fate is durable.
pub trait PacketHandler: Send + Sync {
    fn receive(&self, epoch: u32, packet: WirePacket) -> BoxFuture<'_, AckStatus>;
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
}

/// A packet an outbound link may send now.
#[derive(Debug, Clone)]
pub struct OutboundPacket {
    /// The spool row (the link sends it under a random sequence number).
    pub id: i64,
    pub epoch: u32,
    pub packet: WirePacket,
}

/// Supplies and settles the packets for one peer (node policy).
pub trait PacketSource: Send + Sync {
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
    /// The link to `peer` came up or went down.
    fn link_state(&self, peer: NodeId, up: bool);
    /// Changes whenever new packets may be waiting. The link keeps its
    /// receiver across checks, so a change between a `take` that found
    /// nothing and the wait is never missed.
    fn events(&self) -> watch::Receiver<u64>;
    /// The peer's HELLO said its clock reads `clock_secs`.
    fn hello(&self, _peer: NodeId, _clock_secs: u64) {}
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
    /// with `P`, so the two cannot be confused.)
    async fn skip_proxy_header<R: AsyncReadExt + Unpin>(
        &mut self,
        stream: &mut R,
        idle: Duration,
    ) -> Result<(), LinkError> {
        loop {
            if self.buf.first().is_some_and(|&b| b != b'P') {
                return Ok(());
            }
            if !self.buf.is_empty() {
                match crate::smtp::proxy_header::parse(&self.buf) {
                    Ok(Some((_, used))) => {
                        self.buf.drain(..used);
                        return Ok(());
                    }
                    Ok(None) => {}
                    Err(_) => return Err(LinkError::NoHello),
                }
            }
            self.read_more(stream, idle).await?;
        }
    }

    async fn next<R: AsyncReadExt + Unpin>(
        &mut self,
        stream: &mut R,
        idle: Duration,
    ) -> Result<Frame, LinkError> {
        loop {
            if let Some((frame, used)) = frame::decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            self.read_more(stream, idle).await?;
        }
    }

    /// One read of at most 16 KiB, within `idle`. Cancel-safe: the bytes
    /// join the buffer in the same poll that read them.
    async fn read_more<R: AsyncReadExt + Unpin>(
        &mut self,
        stream: &mut R,
        idle: Duration,
    ) -> Result<(), LinkError> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(idle, stream.read(&mut chunk))
            .await
            .map_err(|_| LinkError::Idle(idle))??;
        if n == 0 {
            return Err(LinkError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn hello(cfg: &LinkConfig) -> Frame {
    let clock_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Frame::Hello {
        version: PROTOCOL_VERSION,
        params_hash: cfg.params_hash,
        identity: cfg.identity,
        clock_secs,
    }
}

/// Checks the peer's HELLO; returns its identity and clock.
fn check_hello(cfg: &LinkConfig, frame: Frame) -> Result<([u8; 32], u64), LinkError> {
    match frame {
        Frame::Hello {
            version,
            params_hash,
            identity,
            clock_secs,
        } => {
            if version != PROTOCOL_VERSION {
                return Err(LinkError::Version(version));
            }
            if params_hash != cfg.params_hash {
                return Err(LinkError::Params);
            }
            Ok((identity, clock_secs))
        }
        _ => Err(LinkError::NoHello),
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

/// Accepts links until shutdown; each connection gets its own task on
/// `tracker`, at most `max_inbound` at once (more are closed unread).
pub async fn serve(
    mut listener: TcpListener,
    cfg: Arc<LinkConfig>,
    handler: Arc<dyn PacketHandler>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_inbound));
    accept_until(&mut listener, "link", &shutdown, |stream, _| {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("[MIXNET] link refused: too many inbound links");
            return;
        };
        let (cfg, handler, stop) = (cfg.clone(), handler.clone(), shutdown.clone());
        tracker.spawn(async move {
            match inbound(stream, &cfg, handler, stop).await {
                // The dialling side only sees the link close, so the
                // operator learns here that a peer runs another nodes.json
                // or another version (without which peer: no identity).
                Err(e @ (LinkError::Params | LinkError::Version(_))) => {
                    info!("[MIXNET] inbound link refused: {e}");
                }
                Err(e) => debug!("[MIXNET] inbound link closed: {e}"),
                Ok(()) => {}
            }
            drop(permit);
        });
    })
    .await;
}

/// One inbound link: HELLO, then packets handled concurrently (at most
/// `window` at once), each acknowledged when its handler answers.
async fn inbound(
    stream: TcpStream,
    cfg: &LinkConfig,
    handler: Arc<dyn PacketHandler>,
    shutdown: CancellationToken,
) -> Result<(), LinkError> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new();
    reader
        .skip_proxy_header(&mut rd, cfg.connect_timeout)
        .await?;
    let first = reader.next(&mut rd, cfg.connect_timeout).await?;
    let (peer, _) = check_hello(cfg, first)?;
    write_frame(&mut wr, &hello(cfg)).await?;
    debug!("[MIXNET] inbound link from {}", Sensitive(hex(&peer)));
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
    let result = loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            f = reader.next(&mut rd, cfg.idle_timeout) => f,
        };
        if out_tx.is_closed() {
            break Err(LinkError::Closed); // the writer gave up on the peer
        }
        match frame {
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
                    let status = handler.receive(epoch, packet).await;
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
            Ok(Frame::Pong { .. }) | Ok(Frame::Keys { .. }) => {}
            Ok(Frame::Hello { .. }) | Ok(Frame::Ack { .. }) => break Err(LinkError::NoHello),
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
/// sends what `source` gives it. Runs until shutdown.
pub async fn run_peer(
    peer: NodeId,
    host: String,
    port: u16,
    dialer: SocksDialer,
    cfg: Arc<LinkConfig>,
    source: Arc<dyn PacketSource>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let mut established = false;
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = outbound(peer, &host, port, &dialer, &cfg, source.as_ref(), &shutdown, &mut established) => r,
        };
        source.link_state(peer, false);
        if let Err(e) = &result {
            info!("[MIXNET] link to a peer failed ({e}); retrying");
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

/// One connection to `peer`; sets `established` once HELLO went through.
#[allow(clippy::too_many_arguments)]
async fn outbound(
    peer: NodeId,
    host: &str,
    port: u16,
    dialer: &SocksDialer,
    cfg: &LinkConfig,
    source: &dyn PacketSource,
    shutdown: &CancellationToken,
    established: &mut bool,
) -> Result<(), LinkError> {
    let stream = tokio::time::timeout(cfg.connect_timeout, dialer.connect(host, port))
        .await
        .map_err(|_| LinkError::ConnectTimeout)??;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    write_frame(&mut wr, &hello(cfg)).await?;
    let mut reader = FrameReader::new();
    let answer = reader.next(&mut rd, cfg.connect_timeout).await?;
    // The peer's identity in HELLO is informative: the onion name we
    // dialled already authenticates it (Tor checks the key).
    let (_, clock_secs) = check_hello(cfg, answer)?;
    *established = true;
    source.hello(peer, clock_secs);
    source.link_state(peer, true);
    let opened = tokio::time::Instant::now();
    // In flight: the frame's sequence number → the spool row. Sequence
    // numbers are random, not the row ids: a row id tells the order in
    // which this node stored its packets, which the next hop must not
    // learn.
    let mut sent = InFlight::default();
    let mut next_ping = tokio::time::Instant::now() + cfg.ping_interval;
    // Any frame from the peer (ACK, PONG) proves it is alive; a peer silent
    // for `idle_timeout` despite our pings is given up, so its packets go
    // to other routes' links instead of into a dead socket.
    let mut last_heard = tokio::time::Instant::now();
    let mut events = source.events();
    let result = loop {
        // Past its age the link takes no new packets, drains what is in
        // flight, and closes: a new connection, a new circuit.
        let rotating = opened.elapsed() >= cfg.max_age;
        if rotating && sent.is_empty() {
            break Ok(());
        }
        // Ask for the keys needed soon (bounded by the source: each subject
        // at most every few seconds).
        let mut asks = Vec::new();
        for subject in source.keys_wanted(peer) {
            Frame::GetKeys { subject: subject.0 }.encode(&mut asks);
        }
        if !asks.is_empty()
            && let Err(e) = write_within(&mut wr, &asks, cfg.idle_timeout).await
        {
            break Err(e);
        }
        // Fill the window.
        let mut wait_hint = None;
        if !rotating && sent.len() < cfg.window {
            events.borrow_and_update();
            let (batch, hint) = source.take(peer, cfg.window - sent.len()).await;
            wait_hint = hint;
            let mut out = Vec::with_capacity(batch.len() * MAX_FRAME);
            for o in batch {
                // A lease that ran out while the ACK was on its way hands
                // the same packet back: it is in flight already.
                if sent.contains(o.id) {
                    continue;
                }
                Frame::Packet {
                    seq: sent.insert(o.id),
                    epoch: o.epoch,
                    packet: o.packet,
                }
                .encode(&mut out);
            }
            if !out.is_empty()
                && let Err(e) = write_within(&mut wr, &out, cfg.idle_timeout).await
            {
                break Err(e);
            }
        }
        let idle_for = match wait_hint {
            Some(d) if sent.len() < cfg.window => d,
            _ => cfg.ping_interval,
        };
        let wake = (tokio::time::Instant::now() + idle_for).min(next_ping);
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep_until(last_heard + cfg.idle_timeout) => {
                break Err(LinkError::Idle(cfg.idle_timeout));
            }
            frame = reader.next(&mut rd, cfg.idle_timeout) => match frame {
                Ok(Frame::Ack { seq, status }) => {
                    last_heard = tokio::time::Instant::now();
                    let Some(id) = sent.remove(seq) else {
                        break Err(LinkError::StrayAck);
                    };
                    source.acked(peer, id, status).await;
                }
                Ok(Frame::Pong { subject, epoch, key, .. }) => {
                    last_heard = tokio::time::Instant::now();
                    source.pong(peer, NodeId(subject), epoch, key);
                }
                Ok(Frame::Keys { subject, bundle }) => {
                    last_heard = tokio::time::Instant::now();
                    source.keys(peer, NodeId(subject), bundle);
                }
                Ok(Frame::Ping { nonce, subject, epoch }) => {
                    last_heard = tokio::time::Instant::now();
                    let mut pong = Vec::new();
                    Frame::Pong { nonce, subject, epoch, key: [0; 32] }.encode(&mut pong);
                    if let Err(e) = write_within(&mut wr, &pong, cfg.idle_timeout).await {
                        break Err(e);
                    }
                }
                Ok(_) => break Err(LinkError::NoHello),
                Err(e) => break Err(e),
            },
            _ = events.changed(), if sent.len() < cfg.window => {}
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= next_ping {
                    next_ping = tokio::time::Instant::now() + cfg.ping_interval;
                    let nonce: u64 = rand::rng().random();
                    let (subject, epoch) = source
                        .probe(peer)
                        .map(|(s, e)| (s.0, e))
                        .unwrap_or(([0; 32], 0));
                    let mut ping = Vec::new();
                    Frame::Ping { nonce, subject, epoch }.encode(&mut ping);
                    if let Err(e) = write_within(&mut wr, &ping, cfg.idle_timeout).await {
                        break Err(e);
                    }
                }
            }
        }
    };
    if !sent.is_empty() {
        source.unacked(peer, sent.ids()).await;
    }
    let _ = wr.shutdown().await;
    result
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

    #[test]
    fn it_starts_the_backoff_afresh_after_a_link_that_came_up() {
        // Dial failures pile up…
        assert_eq!(failures_after(3, false, false), 4);
        // …but a link that was up and then broke is a first failure.
        assert_eq!(failures_after(6, true, false), 1);
        assert_eq!(failures_after(6, true, true), 0);
        assert_eq!(failures_after(u32::MAX, false, false), u32::MAX);
    }

    fn test_config(idle: Duration) -> Arc<LinkConfig> {
        Arc::new(LinkConfig {
            identity: [1; 32],
            params_hash: [2; 32],
            window: 4,
            idle_timeout: idle,
            ping_interval: idle / 3,
            connect_timeout: Duration::from_secs(5),
            max_age: Duration::from_secs(3600),
            max_inbound: 4,
        })
    }

    /// A packet source with nothing to send.
    struct Idle(watch::Sender<u64>);

    impl PacketSource for Idle {
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
        fn link_state(&self, _: NodeId, _: bool) {}
        fn events(&self) -> watch::Receiver<u64> {
            self.0.subscribe()
        }
    }

    /// Plays SOCKS5 (no authentication, CONNECT accepted) and then a peer
    /// that answers HELLO and never says anything again, while reading
    /// whatever it is sent.
    async fn silent_peer(listener: TcpListener, cfg: Arc<LinkConfig>) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut greeting = [0u8; 4];
        s.read_exact(&mut greeting).await.unwrap();
        s.write_all(&[5, 0]).await.unwrap();
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        let mut rest = vec![0u8; head[4] as usize + 2];
        s.read_exact(&mut rest).await.unwrap();
        s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
        let mut reader = FrameReader::new();
        reader.next(&mut s, Duration::from_secs(5)).await.unwrap();
        write_frame(&mut s, &hello(&cfg)).await.unwrap();
        let mut sink = [0u8; 1024];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    }

    #[tokio::test]
    async fn an_outbound_link_to_a_peer_that_falls_silent_is_given_up() {
        let cfg = test_config(Duration::from_millis(300));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        tokio::spawn(silent_peer(listener, cfg.clone()));
        let dialer = SocksDialer::new(proxy, Duration::from_secs(5));
        let source = Idle(watch::channel(0).0);
        let stop = CancellationToken::new();
        let peer = NodeId([3; 32]);
        let mut established = false;
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            outbound(
                peer,
                "peer.onion",
                9999,
                &dialer,
                &cfg,
                &source,
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
        fn receive(&self, _: u32, _: WirePacket) -> BoxFuture<'_, AckStatus> {
            Box::pin(async move {
                if let Some(gate) = self.0.lock().await.take() {
                    let _ = gate.await;
                }
                AckStatus::Stored
            })
        }
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
            stop.clone(),
            tracker.clone(),
        ));
        let mut client = TcpStream::connect(addr).await.unwrap();
        write_frame(&mut client, &hello(&cfg)).await.unwrap();
        let mut reader = FrameReader::new();
        let idle = Duration::from_secs(5);
        assert!(matches!(
            reader.next(&mut client, idle).await.unwrap(),
            Frame::Hello { .. }
        ));
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
}
