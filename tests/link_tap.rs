//! The link tap on its own, without the daemon: a small frame server
//! stands in for a node's `-node` listener and a client connects through
//! the tap with pluto2's own SOCKS dialer, so the 5-node tests can trust
//! what the tap records and does.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::PATIENCE;
use common::link_tap::{Action, Direction, FrameKind, LinkTap, Rule};
use pluto2::relay::socks::{SocksDialer, SocksError};
use pluto2::wire::frame::{
    self, AckStatus, Frame, HELLO_FRAME, Hello, MAX_FRAME, PROTOCOL_VERSION, Role,
};
use pluto2::wire::packet::{PACKET_SIZE, WirePacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PORT: u16 = 4711;
const CLIENT_ID: [u8; 32] = [7; 32];
const SERVER_ID: [u8; 32] = [9; 32];

fn hello(identity: [u8; 32]) -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        params_hash: [3; 32],
        role: Role::Node,
        identity,
        nonce: [4; 32],
        clock_secs: 1_700_000_000,
    })
}

fn packet(seq: u64) -> Frame {
    Frame::Packet {
        seq,
        epoch: 19_000,
        packet: WirePacket::from_slice(&[0u8; PACKET_SIZE]).unwrap(),
    }
}

fn encode(f: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    f.encode(&mut out);
    out
}

/// What the frame server saw.
#[derive(Default)]
struct ServerLog {
    /// Sequence numbers of PACKETs, in arrival order, all connections.
    packets: Vec<u64>,
    /// Connections that sent a HELLO.
    hellos: usize,
    /// Decode errors that made the server close a connection (or, for a
    /// draining server, stop parsing).
    closed_on: Vec<String>,
    /// Bytes that were not part of a whole frame: after a decode error
    /// (draining server) or left over at the sender's close.
    raw_bytes: usize,
}

/// Answers like a node's link listener: HELLO with HELLO, each PACKET
/// with an ACK (Stored, or Duplicate for a sequence number seen before on
/// any connection), PING with PONG; closes on a frame it cannot decode,
/// or, if draining, counts what follows until the sender closes.
struct FrameServer {
    addr: SocketAddr,
    log: Arc<Mutex<ServerLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FrameServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FrameServer {
    async fn start() -> FrameServer {
        FrameServer::start_with(false).await
    }

    async fn start_with(drain: bool) -> FrameServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<ServerLog>> = Arc::default();
        let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let shared = log.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(serve(stream, shared.clone(), seen.clone(), drain));
            }
        });
        FrameServer { addr, log, task }
    }

    fn packets(&self) -> Vec<u64> {
        self.log.lock().unwrap().packets.clone()
    }
}

async fn serve(
    mut s: TcpStream,
    log: Arc<Mutex<ServerLog>>,
    seen: Arc<Mutex<HashSet<u64>>>,
    drain: bool,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut parsing = true;
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                log.lock().unwrap().raw_bytes += buf.len();
                return;
            }
            Ok(n) => n,
        };
        if !parsing {
            log.lock().unwrap().raw_bytes += n;
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (f, used) = match frame::decode(&buf) {
                Ok(Some(pair)) => pair,
                Ok(None) => break,
                Err(e) => {
                    let mut log = log.lock().unwrap();
                    log.closed_on.push(e.to_string());
                    if !drain {
                        return;
                    }
                    log.raw_bytes += std::mem::take(&mut buf).len();
                    parsing = false;
                    break;
                }
            };
            buf.drain(..used);
            let answer = match f {
                Frame::Hello { .. } => {
                    log.lock().unwrap().hellos += 1;
                    hello(SERVER_ID)
                }
                Frame::Packet { seq, .. } => {
                    log.lock().unwrap().packets.push(seq);
                    let status = if seen.lock().unwrap().insert(seq) {
                        AckStatus::Stored
                    } else {
                        AckStatus::Duplicate
                    };
                    Frame::Ack { seq, status }
                }
                Frame::Ping {
                    nonce,
                    subject,
                    epoch,
                } => Frame::Pong {
                    nonce,
                    subject,
                    epoch,
                    key: [0; 32],
                },
                // The frame server stands in for a node without proving
                // anything: the tap neither checks nor needs proofs.
                Frame::Auth { .. }
                | Frame::Ack { .. }
                | Frame::Pong { .. }
                | Frame::Fetch { .. }
                | Frame::Held { .. }
                | Frame::Confirm { .. }
                | Frame::GetKeys { .. }
                | Frame::Keys { .. } => continue,
            };
            if s.write_all(&encode(&answer)).await.is_err() {
                return;
            }
        }
    }
}

/// A node's outbound link as the test drives it.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(tap: &LinkTap, host: &str) -> Result<Client, SocksError> {
        let stream = SocksDialer::new(tap.addr, PATIENCE)
            .connect(host, PORT)
            .await?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects and exchanges HELLOs.
    async fn linked(tap: &LinkTap, host: &str) -> Client {
        let mut c = Client::connect(tap, host).await.unwrap();
        c.send(&hello(CLIENT_ID)).await;
        assert_eq!(c.next().await, Some(hello(SERVER_ID)));
        c
    }

    async fn send(&mut self, f: &Frame) {
        self.stream.write_all(&encode(f)).await.unwrap();
    }

    /// The next frame, or None when the stream ends (bounded).
    async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some((f, used)) = frame::decode(&self.buf).unwrap() {
                    self.buf.drain(..used);
                    return Some(f);
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("no frame and no close in time")
    }
}

fn ack(seq: u64, status: AckStatus) -> Option<Frame> {
    Some(Frame::Ack { seq, status })
}

async fn tap_to(server: &FrameServer, host: &str) -> LinkTap {
    let tap = LinkTap::start().await;
    tap.set_signer(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    tap.route_link(host, PORT, server.addr);
    tap
}

#[tokio::test]
async fn it_records_every_frame_both_ways_with_its_exact_size() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    let mut c = Client::linked(&tap, &host).await;
    for seq in 1..=3 {
        c.send(&packet(seq)).await;
        assert_eq!(c.next().await, ack(seq, AckStatus::Stored));
    }
    c.send(&Frame::Ping {
        nonce: 5,
        subject: [1; 32],
        epoch: 2,
    })
    .await;
    assert_eq!(
        c.next().await,
        Some(Frame::Pong {
            nonce: 5,
            subject: [1; 32],
            epoch: 2,
            key: [0; 32]
        })
    );

    let frames = tap
        .wait_until(|f| f.iter().any(|f| f.kind == FrameKind::Pong), PATIENCE)
        .await
        .unwrap();
    let seen: Vec<_> = frames
        .iter()
        .map(|f| (f.dir, f.kind, f.len, f.seq, f.status))
        .collect();
    use Direction::{FromTarget as From, ToTarget as To};
    let stored = Some(AckStatus::Stored);
    assert_eq!(
        seen,
        vec![
            (To, FrameKind::Hello, HELLO_FRAME, None, None),
            (From, FrameKind::Hello, HELLO_FRAME, None, None),
            (To, FrameKind::Packet, MAX_FRAME, Some(1), None),
            (From, FrameKind::Ack, 10, Some(1), stored),
            (To, FrameKind::Packet, MAX_FRAME, Some(2), None),
            (From, FrameKind::Ack, 10, Some(2), stored),
            (To, FrameKind::Packet, MAX_FRAME, Some(3), None),
            (From, FrameKind::Ack, 10, Some(3), stored),
            (To, FrameKind::Ping, 45, None, None),
            (From, FrameKind::Pong, 77, None, None),
        ]
    );
    assert_eq!(tap.packet_frame_sizes(), vec![MAX_FRAME; 3]);
    assert_eq!(
        tap.bytes_on_links(),
        2 * HELLO_FRAME + 3 * (MAX_FRAME + 10) + 45 + 77
    );
    assert!(frames.iter().all(|f| f.host == host && f.port == PORT));
    assert!(frames.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(frames[0].identity, Some(CLIENT_ID));
    assert_eq!(frames[1].identity, Some(SERVER_ID));
    assert_eq!(frames[2].epoch, Some(19_000));

    let requests = tap.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[0].host.as_str(), requests[0].port),
        (host.as_str(), PORT)
    );
    assert!(requests[0].by_name);
    assert!(!requests[0].username.is_empty());
}

#[tokio::test]
async fn a_dropped_packet_is_never_acknowledged() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    let rule = tap.add_rule(
        Rule::new(Action::Drop)
            .link(&host)
            .dir(Direction::ToTarget)
            .kind(FrameKind::Packet),
    );
    let mut c = Client::linked(&tap, &host).await;
    c.send(&packet(1)).await;
    c.send(&packet(2)).await;
    // The server answers in order, so ACK 2 first means ACK 1 never comes.
    assert_eq!(c.next().await, ack(2, AckStatus::Stored));
    assert_eq!(server.packets(), vec![2]);
    assert_eq!(tap.applied(rule), 1);
    let dropped: Vec<_> = tap
        .frames()
        .into_iter()
        .filter(|f| f.action == Some(Action::Drop))
        .map(|f| f.seq)
        .collect();
    assert_eq!(dropped, vec![Some(1)]);
}

#[tokio::test]
async fn rules_skip_and_count_deterministically() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    // A rule for another link never fires; the one for this link lets one
    // packet through, then drops two.
    let other = tap.add_rule(Rule::new(Action::Drop).link(&common::onion(2)));
    let rule = tap.add_rule(
        Rule::new(Action::Drop)
            .kind(FrameKind::Packet)
            .after(1)
            .times(2),
    );
    let mut c = Client::linked(&tap, &host).await;
    for seq in 1..=5 {
        c.send(&packet(seq)).await;
    }
    assert_eq!(c.next().await, ack(1, AckStatus::Stored));
    assert_eq!(c.next().await, ack(4, AckStatus::Stored));
    assert_eq!(c.next().await, ack(5, AckStatus::Stored));
    assert_eq!(server.packets(), vec![1, 4, 5]);
    assert_eq!((tap.applied(other), tap.applied(rule)), (0, 2));
}

#[tokio::test]
async fn a_duplicated_packet_is_answered_duplicate() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    tap.add_rule(Rule::new(Action::Duplicate).kind(FrameKind::Packet));
    let mut c = Client::linked(&tap, &host).await;
    c.send(&packet(1)).await;
    assert_eq!(c.next().await, ack(1, AckStatus::Stored));
    assert_eq!(c.next().await, ack(1, AckStatus::Duplicate));
    assert_eq!(server.packets(), vec![1, 1]);
    // Recorded once, as read, with what was done to it.
    let packets = tap.frames_on(&host, Direction::ToTarget);
    let dup: Vec<_> = packets
        .iter()
        .filter(|f| f.kind == FrameKind::Packet)
        .map(|f| f.action)
        .collect();
    assert_eq!(dup, vec![Some(Action::Duplicate)]);
}

#[tokio::test]
async fn a_delayed_packet_keeps_its_place_in_the_stream() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    let hold = Duration::from_millis(300);
    tap.add_rule(
        Rule::new(Action::Delay(hold))
            .dir(Direction::ToTarget)
            .kind(FrameKind::Packet),
    );
    let mut c = Client::linked(&tap, &host).await;
    let sent = tokio::time::Instant::now();
    c.send(&packet(1)).await;
    c.send(&packet(2)).await;
    assert_eq!(c.next().await, ack(1, AckStatus::Stored));
    assert!(
        sent.elapsed() >= hold,
        "released after {:?}",
        sent.elapsed()
    );
    assert_eq!(c.next().await, ack(2, AckStatus::Stored));
    assert_eq!(server.packets(), vec![1, 2]);
}

#[tokio::test]
async fn drop_then_close_swallows_the_packet_and_closes_both_sides() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    tap.add_rule(Rule::new(Action::DropThenClose).kind(FrameKind::Packet));
    let mut c = Client::linked(&tap, &host).await;
    c.send(&packet(1)).await;
    assert_eq!(c.next().await, None, "the client's stream must close");
    let conns = tap
        .wait_connections(|c| c.iter().all(|c| c.closed.is_some()), PATIENCE)
        .await
        .unwrap();
    assert!(conns[0].cut);
    assert!(server.packets().is_empty());
}

#[tokio::test]
async fn inject_replays_a_kept_packet_on_a_new_connection() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    tap.add_rule(Rule::new(Action::ReplayLater));
    let mut c = Client::linked(&tap, &host).await;
    c.send(&packet(5)).await;
    assert_eq!(c.next().await, ack(5, AckStatus::Stored));
    let kept = tap.captured();
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].seq, kept[0].bytes.len()), (5, MAX_FRAME));
    assert_eq!(kept[0].bytes, encode(&packet(5)));

    let answer = tap.inject(&host, PORT, &kept[0].bytes).await.unwrap();
    assert_eq!(answer, AckStatus::Duplicate);
    let fresh = tap.inject(&host, PORT, &encode(&packet(6))).await.unwrap();
    assert_eq!(fresh, AckStatus::Stored);
    // Two more connections, each with its own HELLO.
    assert_eq!(server.log.lock().unwrap().hellos, 3);
    assert_eq!(server.packets(), vec![5, 5, 6]);
}

#[tokio::test]
async fn inject_needs_a_recorded_hello() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    let err = tap.inject(&host, PORT, &encode(&packet(1))).await;
    assert!(matches!(
        err,
        Err(common::link_tap::InjectError::NoHello(_))
    ));
}

#[tokio::test]
async fn a_malformed_frame_is_recorded_and_forwarded_raw() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    let mut c = Client::linked(&tap, &host).await;
    let mut junk = vec![99u8];
    junk.extend_from_slice(&[0xAB; 20]);
    c.stream.write_all(&junk).await.unwrap();
    // The server saw the bad type byte itself and closed the link.
    assert_eq!(c.next().await, None);
    assert_eq!(
        server.log.lock().unwrap().closed_on,
        vec!["unknown frame type 99".to_string()]
    );
    // The target closed first; the connection ends once the client
    // closes too.
    let conns = tap
        .wait_connections(|c| c[0].first_eof.is_some(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(conns[0].first_eof, Some(Direction::FromTarget));
    drop(c);
    tap.wait_connections(|c| c[0].closed.is_some(), PATIENCE)
        .await
        .unwrap();
    let bad: Vec<_> = tap
        .frames()
        .into_iter()
        .filter(|f| f.kind == FrameKind::Malformed)
        .map(|f| (f.dir, f.len, f.error))
        .collect();
    // One record for the bad bytes, however many of them the first read
    // brought.
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].0, Direction::ToTarget);
    assert!((1..=junk.len()).contains(&bad[0].1));
    assert_eq!(bad[0].2.as_deref(), Some("unknown frame type 99"));
}

#[tokio::test]
async fn bytes_after_a_malformed_frame_pass_unparsed() {
    let server = FrameServer::start_with(true).await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    // Drops every packet it parses: a packet after the bad byte must
    // still arrive whole, since nothing is parsed any more.
    tap.add_rule(Rule::new(Action::Drop).kind(FrameKind::Packet).times(10));
    let mut c = Client::connect(&tap, &host).await.unwrap();
    c.stream.write_all(&[0]).await.unwrap();
    tap.wait_until(
        |f| f.iter().any(|f| f.kind == FrameKind::Malformed),
        PATIENCE,
    )
    .await
    .unwrap();
    c.send(&packet(1)).await;
    c.stream.shutdown().await.unwrap();
    assert_eq!(c.next().await, None);
    assert_eq!(server.log.lock().unwrap().raw_bytes, 1 + MAX_FRAME);
    assert_eq!(tap.frames().len(), 1);
}

#[tokio::test]
async fn an_unfinished_frame_at_close_is_recorded_and_passed_on() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    let mut c = Client::linked(&tap, &host).await;
    let short = &encode(&packet(1))[..MAX_FRAME - 1];
    c.stream.write_all(short).await.unwrap();
    c.stream.shutdown().await.unwrap();
    assert_eq!(c.next().await, None);
    let frames = tap
        .wait_until(|f| f.iter().any(|f| f.kind == FrameKind::Partial), PATIENCE)
        .await
        .unwrap();
    let partial = frames.last().unwrap();
    assert_eq!(
        (partial.dir, partial.len),
        (Direction::ToTarget, MAX_FRAME - 1)
    );
    assert_eq!(server.log.lock().unwrap().raw_bytes, MAX_FRAME - 1);
    assert!(server.packets().is_empty());
}

#[tokio::test]
async fn a_target_goes_down_and_comes_back() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    let mut before = Client::linked(&tap, &host).await;

    tap.down(&host, PORT);
    // The open link breaks, and new ones are refused.
    assert_eq!(before.next().await, None);
    match Client::connect(&tap, &host).await {
        Err(SocksError::Reply { code }) => assert_eq!(code, 5),
        other => panic!("expected connection refused, got {:?}", other.is_ok()),
    }

    tap.up(&host, PORT);
    let mut after = Client::linked(&tap, &host).await;
    after.send(&packet(1)).await;
    assert_eq!(after.next().await, ack(1, AckStatus::Stored));

    tap.refuse(&host, PORT, 0xF6);
    match Client::connect(&tap, &host).await {
        Err(SocksError::Reply { code }) => assert_eq!(code, 0xF6),
        other => panic!("expected 0xF6, got {:?}", other.is_ok()),
    }
    // An unknown target is unreachable.
    match Client::connect(&tap, &common::onion(2)).await {
        Err(SocksError::Reply { code }) => assert_eq!(code, 4),
        other => panic!("expected host unreachable, got {:?}", other.is_ok()),
    }
    assert_eq!(tap.requests().len(), 5);
}

#[tokio::test]
async fn a_plain_route_passes_bytes_unparsed() {
    let server = FrameServer::start().await;
    let tap = LinkTap::start().await;
    tap.route("sink.example", PORT, server.addr);
    let stream = SocksDialer::new(tap.addr, PATIENCE)
        .connect("sink.example", PORT)
        .await
        .unwrap();
    let mut c = Client {
        stream,
        buf: Vec::new(),
    };
    c.send(&hello(CLIENT_ID)).await;
    assert_eq!(c.next().await, Some(hello(SERVER_ID)));
    assert!(tap.frames().is_empty());
    assert!(!tap.connections()[0].link);
}

#[tokio::test]
async fn dropping_the_tap_closes_its_connections() {
    let server = FrameServer::start().await;
    let host = common::onion(1);
    let tap = tap_to(&server, &host).await;
    let addr = tap.addr;
    let mut c = Client::linked(&tap, &host).await;
    drop(tap);
    assert_eq!(c.next().await, None);
    // The listener goes with the aborted accept task: wait (bounded) for
    // the port to refuse.
    tokio::time::timeout(PATIENCE, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the tap's port still accepts");
}
