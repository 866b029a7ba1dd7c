//! Links and replays on a 5-node network of real `pluto2 -sphinx`
//! processes (tests/common/mixnet.rs): every packet frame has one size,
//! a frame that is one byte off or of an unknown type closes the link,
//! a replayed packet is acknowledged as a duplicate and never forwarded
//! (also after the node restarts), a tampered header is rejected and
//! counted, a peer with other network parameters is refused, and no log
//! line names a node, an address or a subject without `-debug`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::PATIENCE;
use common::link_tap::{
    Action, Direction, FrameKind, InjectError, LinkTap, Rule, TapConn, TapFrame,
};
use common::mixnet::identity_key;
use common::mixnet::{LINK_PORT, MixNet, TEST_PARAMS};
use ed25519_dalek::SigningKey;
use pluto2::address::OnionName;
use pluto2::wire::fragment::{Fragment, Kind};
use pluto2::wire::frame::{self, AckStatus, Frame, Hello, MAX_FRAME, PROTOCOL_VERSION, Role};
use pluto2::wire::hello::{self, Side};
use pluto2::wire::packet::{RouteHop, build};
use pluto2::wire::pki::Directory;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest a hop may hold a packet under TEST_PARAMS is 240 ms (a hop
/// refuses longer delays). Waiting several times that for a forward that
/// must not happen bounds the check without guessing at scheduling.
const NO_FORWARD_WINDOW: Duration = Duration::from_millis(1500);

/// Where a PACKET frame's Sphinx packet starts (type, sequence, epoch).
const PACKET_AT: usize = 1 + 8 + 4;

/// Recognisable in logs: none of these may appear without `-debug`.
const SENDER: &str = "secret-sender@client.example";
const SUBJECT: &str = "secret subject";

/// A MIME message of exactly `size` bytes (at least ~250) with a
/// base64-looking attachment.
fn mail(size: usize, tag: &str) -> String {
    let mut text = format!(
        "Subject: {SUBJECT} {tag}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=sep\r\n\r\n\
         --sep\r\nContent-Type: text/plain\r\n\r\nhello {tag}\r\n--sep\r\n\
         Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    );
    let end = "\r\n--sep--";
    let mut n = 1u64;
    while text.len() + 78 + end.len() <= size {
        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        text.push_str(&format!("{n:076}\r\n"));
    }
    while text.len() + end.len() < size {
        text.push('A');
    }
    text.push_str(end);
    assert!(size < 250 || text.len() == size, "{} != {size}", text.len());
    text
}

fn rcpt(net: &MixNet) -> String {
    format!("secret-rcpt@{}", net.sink_onion)
}

/// Sends one message to the entry (node 0) and checks it was accepted.
async fn send(net: &MixNet, text: &str) {
    net.send_as(0, SENDER, &rcpt(net), text).await;
}

/// Waits until the entry holds no message (each one acknowledged by its
/// exit) and the sink has `n`; returns what the sink has.
async fn delivered(net: &MixNet, n: usize) -> Vec<common::smtp_sink::Received> {
    net.daemon(0)
        .until_queue("every message acknowledged by its exit", |q| {
            q["messages"] == 0
        })
        .await;
    let got = net.sink.wait_for(n).await;
    assert_eq!(got.len(), n, "each message delivered exactly once");
    got
}

/// The value of `field=` in a [STATS] line.
fn stat(line: &str, field: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(field)?.strip_prefix('=')?.parse().ok())
}

/// Waits until node `i` logs a [STATS] line whose `field` is at least
/// `at_least` (counters only grow within one process).
async fn until_stat(net: &MixNet, i: usize, field: &str, at_least: u64) -> String {
    net.daemon(i)
        .until_log(&format!("[STATS] {field}>={at_least}"), |l| {
            l.contains("[STATS]") && stat(l, field).is_some_and(|v| v >= at_least)
        })
        .await
}

/// The index of the node whose onion name is `host`.
fn node_of(net: &MixNet, host: &str) -> usize {
    net.nodes
        .iter()
        .position(|n| n.onion == host)
        .expect("a node's onion")
}

/// PACKET frames node `i` sent on its outbound links so far.
fn sent_packets(frames: &[TapFrame]) -> usize {
    frames
        .iter()
        .filter(|f| f.kind == FrameKind::Packet && f.dir == Direction::ToTarget)
        .count()
}

/// Waits until the node behind `tap` forwarded a packet to `next_onion`
/// after the first `before` frames it saw.
async fn forwarded(tap: &LinkTap, before: usize, next_onion: &str) {
    tap.wait_until(
        |f| {
            f.iter().skip(before).any(|f| {
                f.host == next_onion && f.kind == FrameKind::Packet && f.dir == Direction::ToTarget
            })
        },
        PATIENCE,
    )
    .await
    .expect("the packet forwarded");
}

/// Checks that node `i` forwards nothing more than the `before` packets
/// its tap saw, for longer than any hop delay allows.
async fn forwards_nothing(tap: &LinkTap, before: usize, why: &str) {
    let more = tap
        .wait_until(|f| sent_packets(f) > before, NO_FORWARD_WINDOW)
        .await;
    if let Ok(frames) = more {
        let extra: Vec<_> = frames
            .iter()
            .filter(|f| f.kind == FrameKind::Packet && f.dir == Direction::ToTarget)
            .skip(before)
            .map(|f| (&f.host, f.len))
            .collect();
        panic!("{why}: the node forwarded {extra:?}");
    }
}

/// The network as node `i` reads it from nodes.json.
fn directory(net: &MixNet, i: usize) -> Directory {
    let own = OnionName::parse(&net.nodes[i].onion).unwrap();
    Directory::parse(&std::fs::read(&net.pki).unwrap(), &own).unwrap()
}

/// What a link the test opens says it is: its HELLO, and the key it
/// proves it with (none: it never sends AUTH).
struct Claim {
    hello: Hello,
    key: Option<SigningKey>,
}

/// A HELLO claiming `identity`, with these parameters and version.
fn claim(
    identity: [u8; 32],
    params_hash: [u8; 32],
    version: u16,
    key: Option<SigningKey>,
) -> Claim {
    Claim {
        hello: Hello {
            version,
            params_hash,
            role: Role::Node,
            identity,
            nonce: rand::random(),
            clock_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        },
        key,
    }
}

/// Node `i` as it is listed, proving it with its own identity key.
fn as_node(net: &MixNet, i: usize) -> Claim {
    let dir = directory(net, i);
    claim(
        dir.own().id.0,
        dir.params().hash(),
        PROTOCOL_VERSION,
        Some(identity_key(&net.nodes[i].data)),
    )
}

/// What a node did on a link the test opened itself.
#[derive(Debug)]
struct Answer {
    /// It answered with a HELLO of its own.
    hello_back: bool,
    /// Every other whole frame it sent but its AUTH.
    frames: Vec<Frame>,
    /// Bytes after the last whole frame.
    left: usize,
    /// It closed the connection (within PATIENCE).
    closed: bool,
}

impl Answer {
    fn acks(&self) -> Vec<AckStatus> {
        self.frames
            .iter()
            .filter_map(|f| match f {
                Frame::Ack { status, .. } => Some(*status),
                _ => None,
            })
            .collect()
    }
}

/// Connects straight to a node's link listener and says `who`'s HELLO;
/// if `who` has a key, waits for the node's HELLO and sends the proof.
/// Then sends `bytes` as they are, optionally ends its own sending half,
/// and reads whatever the node answers until it closes. A reset counts as
/// a close: a node that closes with unread bytes in its buffer resets.
async fn raw_link(to: SocketAddr, who: &Claim, bytes: &[u8], end_sending: bool) -> Answer {
    let mut stream = TcpStream::connect(to).await.unwrap();
    let _ = stream.set_nodelay(true);
    let mut got = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut out = Vec::new();
        Frame::Hello(who.hello).encode(&mut out);
        // The node may close before taking every byte; that is an answer.
        if stream.write_all(&out).await.is_err() {
            return;
        }
        let mut out = Vec::new();
        if let Some(key) = &who.key {
            let theirs = loop {
                if let Ok(Some((Frame::Hello(h), _))) = frame::decode(&got) {
                    break h;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            };
            Frame::Auth {
                signature: hello::prove(key, Side::Dialler, &who.hello, &theirs),
            }
            .encode(&mut out);
        }
        out.extend_from_slice(bytes);
        if stream.write_all(&out).await.is_err() {
            return;
        }
        if end_sending {
            let _ = stream.shutdown().await;
        }
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    let mut frames = Vec::new();
    let mut at = 0;
    while let Ok(Some((f, used))) = frame::decode(&got[at..]) {
        frames.push(f);
        at += used;
    }
    let hello_back = matches!(frames.first(), Some(Frame::Hello(_)));
    frames.retain(|f| !matches!(f, Frame::Hello(_) | Frame::Auth { .. }));
    Answer {
        hello_back,
        frames,
        left: got.len() - at,
        closed,
    }
}

/// A fresh packet for node `hop` to forward to node `next` (who drops it:
/// DROP cover), as a PACKET frame. No node has seen it before.
fn fresh_packet_frame(net: &MixNet, hop: usize, next: usize, seq: u64) -> Vec<u8> {
    delayed_packet_frame(net, hop, next, seq, Duration::from_millis(5))
}

/// Like [`fresh_packet_frame`], with `delay` at each hop.
fn delayed_packet_frame(
    net: &MixNet,
    hop: usize,
    next: usize,
    seq: u64,
    delay: Duration,
) -> Vec<u8> {
    let dir = directory(net, 0);
    let node = |i: usize| {
        let onion = OnionName::parse(&net.nodes[i].onion).unwrap();
        dir.nodes()
            .iter()
            .find(|n| n.onion == onion)
            .unwrap()
            .clone()
    };
    let epoch = net.epoch_now();
    let route: Vec<RouteHop> = [hop, next]
        .iter()
        .map(|&i| RouteHop {
            id: node(i).id,
            mix_key: net.mix_key(i, epoch),
            delay,
        })
        .collect();
    let drop = Fragment {
        kind: Kind::Drop,
        message_id: [7; 16],
        index: 0,
        count: 1,
        blob_len: 0,
        blob_hash: [0; 32],
        reply_block: None,
        data: Vec::new(),
    };
    let packet = build(&drop.encode(), &route).unwrap();
    let mut out = Vec::new();
    Frame::Packet { seq, epoch, packet }.encode(&mut out);
    out
}

fn is_close(e: &InjectError) -> bool {
    match e {
        InjectError::Closed => true,
        InjectError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

/// No node's log names a node, the sink, the sender, a recipient or a
/// subject: `-sphinx` mode keeps the rule of direct mode. Every running
/// node is first waited for until it logged `[STATS]` (a node restarted
/// late in a test on a busy machine may not have yet), so the check also
/// covers what its counters say.
async fn assert_logs_hold_no_identities(net: &MixNet) {
    for n in &net.nodes {
        if let Some(d) = n.daemon.as_ref() {
            d.until_log("[STATS]", |l| l.contains("[STATS]")).await;
        }
    }
    let mut needles = vec![
        "secret".to_string(),
        "client.example".to_string(),
        net.sink_onion.clone(),
    ];
    for n in &net.nodes {
        needles.push(n.onion.clone());
        // The onion name without its suffix (its key, base32).
        needles.push(n.onion.trim_end_matches(".onion").to_string());
    }
    // Identity keys as HELLO carries them, in hex.
    for n in directory(net, 0).nodes() {
        let hex: String = n
            .identity
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        needles.push(hex);
    }
    for (i, n) in net.nodes.iter().enumerate() {
        let Some(d) = n.daemon.as_ref() else { continue };
        let logs = d.log_text();
        assert!(logs.contains("[STATS]"), "node {i} logged no [STATS]");
        for needle in &needles {
            assert!(
                !logs.contains(needle.as_str()),
                "node {i} logged {needle}:\n{logs}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_packet_frame_has_one_size_and_a_frame_one_byte_off_closes_the_link() {
    let net = MixNet::start(5, TEST_PARAMS).await;
    net.until_healthy(0, 4).await;

    // The network's maximum, as the entry advertises it.
    let mut c = net.daemon(0).client().await;
    let (code, ehlo) = c.cmd("EHLO client.example").await;
    assert_eq!(code, 250);
    let max: usize = ehlo
        .lines()
        .find_map(|l| l.split("SIZE ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .expect("SIZE in EHLO");
    drop(c);
    // send_mail ends the data with CRLF before the dot: that CRLF counts.
    let sizes = [100, 8 * 1024, 60 * 1024, max - 2];
    for (i, &size) in sizes.iter().enumerate() {
        send(&net, &mail(size, &format!("m{i}"))).await;
    }
    let got = delivered(&net, sizes.len()).await;
    for i in 0..sizes.len() {
        let hello = format!("hello m{i}\r\n");
        assert!(
            got.iter()
                .any(|r| r.data.windows(hello.len()).any(|w| w == hello.as_bytes())),
            "message m{i} missing"
        );
    }

    // Every frame on every link, both directions: a PACKET is always
    // MAX_FRAME bytes, and no other kind varies either.
    let frames: Vec<TapFrame> = net.nodes.iter().flat_map(|n| n.tap.frames()).collect();
    for f in &frames {
        assert_eq!(Some(f.len), f.kind.fixed_len(), "{f:?}");
    }
    // Three hops for each fragment (one for 100 B, ~35 for the maximum).
    let packets = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Packet)
        .count();
    let fragments = sizes.iter().map(|s| s / 7_000 + 1).sum::<usize>();
    assert!(packets >= 3 * fragments, "{packets} packet frames");
    // Acknowledgements (COMPLETE through reply blocks) are packets of the
    // same size, arriving at the entry.
    let onion0 = &net.nodes[0].onion;
    let acks_in = frames
        .iter()
        .filter(|f| &f.host == onion0 && f.kind == FrameKind::Packet)
        .count();
    assert!(
        acks_in >= sizes.len(),
        "{acks_in} packets reached the entry"
    );

    // A packet no node has seen, for node 2 to forward to node 3.
    let (hop, next) = (2, 3);
    let to = ([127, 0, 0, 1], net.nodes[hop].link_port.unwrap()).into();
    let good = as_node(&net, 0);
    let packet = fresh_packet_frame(&net, hop, next, 1);
    assert_eq!(packet.len(), MAX_FRAME);
    let tap = &net.nodes[hop].tap;
    let before = sent_packets(&tap.frames());

    // An unknown type byte: closed at once, nothing acknowledged.
    let mut bad_type = packet.clone();
    bad_type[0] = 0;
    let host = &net.nodes[hop].onion;
    let e = net.nodes[0]
        .tap
        .inject(host, LINK_PORT, &bad_type)
        .await
        .expect_err("a frame of unknown type acknowledged");
    assert!(is_close(&e), "{e:?}");
    bad_type[0] = 9;
    let a = raw_link(to, &good, &bad_type, false).await;
    assert!(a.hello_back && a.closed, "{a:?}");
    assert!(a.frames.is_empty(), "answered a bad type: {a:?}");
    // A stray byte before a valid PING: the node neither skips it nor
    // guesses a length for it (either would answer or wait for more).
    let mut stray = vec![9];
    Frame::Ping {
        nonce: 0x0404_0404_0404_0404,
        subject: [4; 32],
        epoch: 4,
    }
    .encode(&mut stray);
    let a = raw_link(to, &good, &stray, false).await;
    assert!(a.hello_back && a.closed, "{a:?}");
    assert!(a.frames.is_empty(), "answered after a stray byte: {a:?}");

    // One byte short, then the peer stops sending: no acknowledgement, the
    // node closes.
    let a = raw_link(to, &good, &packet[..packet.len() - 1], true).await;
    assert!(a.hello_back && a.closed, "{a:?}");
    assert!(a.acks().is_empty() && a.left == 0, "{a:?}");

    // Neither stored anything: the packet itself is still new here, and
    // the node forwards it like any other.
    let a = raw_link(to, &good, &packet, true).await;
    assert_eq!(a.acks(), [AckStatus::Stored], "{a:?}");
    forwarded(tap, before, &net.nodes[next].onion).await;

    // One byte long: the whole frame before it is answered (a duplicate
    // now), the stray byte closes the link without anything else.
    let mut long = packet.clone();
    long.push(0xff);
    let a = raw_link(to, &good, &long, false).await;
    assert!(a.hello_back && a.closed, "{a:?}");
    assert_eq!(a.acks(), [AckStatus::Duplicate], "{a:?}");
    assert_eq!((a.frames.len(), a.left), (1, 0), "{a:?}");

    // The network still carries mail.
    send(&net, &mail(500, "after")).await;
    delivered(&net, sizes.len() + 1).await;
    assert_logs_hold_no_identities(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_packet_is_a_duplicate_even_after_a_restart_and_a_bad_mac_is_rejected() {
    let mut net = MixNet::start(5, TEST_PARAMS).await;
    net.until_healthy(0, 4).await;
    // Keep the first packet the entry sends to its first hop.
    net.nodes[0].tap.add_rule(
        Rule::new(Action::ReplayLater)
            .dir(Direction::ToTarget)
            .kind(FrameKind::Packet),
    );
    send(&net, &mail(300, "once")).await;
    delivered(&net, 1).await;
    let captured = net.nodes[0].tap.captured();
    assert_eq!(captured.len(), 1);
    let cap = &captured[0];
    assert_eq!(cap.bytes.len(), MAX_FRAME);
    let hop = node_of(&net, &cap.host);
    assert_ne!(hop, 0);

    // The replay: acknowledged as a duplicate, not forwarded, counted.
    let before = sent_packets(&net.nodes[hop].tap.frames());
    let status = net.nodes[0]
        .tap
        .inject(&cap.host, cap.port, &cap.bytes)
        .await;
    assert_eq!(status.unwrap(), AckStatus::Duplicate);
    forwards_nothing(&net.nodes[hop].tap, before, "a replay").await;
    until_stat(&net, hop, "mix_replays", 1).await;

    // One header byte changed (inside the routing information, after the
    // group element): the MAC fails, rejected and counted.
    let mut tampered = cap.bytes.clone();
    tampered[PACKET_AT + 40] ^= 0x01;
    let status = net.nodes[0]
        .tap
        .inject(&cap.host, cap.port, &tampered)
        .await;
    assert_eq!(status.unwrap(), AckStatus::Rejected);
    until_stat(&net, hop, "rejected", 1).await;
    forwards_nothing(&net.nodes[hop].tap, before, "a bad MAC").await;
    assert_eq!(net.sink.received().len(), 1, "delivered again");

    // The replay tag is on disk: after SIGKILL and a restart the same
    // packet is still a duplicate.
    net.nodes[hop].daemon.as_mut().unwrap().kill9();
    net.start_node(hop, &[]);
    let status = net.nodes[0]
        .tap
        .inject(&cap.host, cap.port, &cap.bytes)
        .await;
    assert_eq!(status.unwrap(), AckStatus::Duplicate, "tag lost in restart");
    until_stat(&net, hop, "mix_replays", 1).await;
    forwards_nothing(&net.nodes[hop].tap, before, "a replay after restart").await;
    assert_eq!(net.sink.received().len(), 1, "delivered again");
    assert_logs_hold_no_identities(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_other_network_parameters_is_refused_without_a_hello() {
    let mut net = MixNet::start(5, TEST_PARAMS).await;
    let target = 1;
    let to: SocketAddr = ([127, 0, 0, 1], net.nodes[target].link_port.unwrap()).into();
    let params = directory(&net, target).params().hash();

    // The right parameters get a HELLO back and a link that stays open.
    let a = raw_link(to, &as_node(&net, 0), &[], true).await;
    assert!(a.hello_back, "{a:?}");
    // Other parameters, or another protocol version: closed unanswered.
    let mut other = params;
    other[0] ^= 1;
    let node0 = |params, version| {
        let good = as_node(&net, 0);
        claim(good.hello.identity, params, version, good.key)
    };
    for h in [
        node0(other, PROTOCOL_VERSION),
        node0(params, PROTOCOL_VERSION + 1),
        node0(params, PROTOCOL_VERSION - 1),
    ] {
        let a = raw_link(to, &h, &[], false).await;
        assert!(a.closed && a.frames.is_empty() && a.left == 0, "{a:?}");
    }
    // A flood of such connections is counted, and logged at most once a
    // minute per kind with its count: the log cannot be grown from outside
    // and still shows the refusals.
    let began = Instant::now();
    for _ in 0..1_000 {
        let a = raw_link(to, &node0(other, PROTOCOL_VERSION), &[], false).await;
        assert!(a.closed && a.frames.is_empty(), "{a:?}");
    }
    let minutes = began.elapsed().as_secs() / 60;
    let lines = net
        .daemon(target)
        .log_text()
        .lines()
        .filter(|l| l.contains("inbound link refused (params)"))
        .count() as u64;
    assert!(
        (1..=2 + minutes).contains(&lines),
        "{lines} log lines for 1,001 refused links in {minutes} min"
    );

    // A node started with other parameters (an operator's stale
    // nodes.json): its peers refuse its links without a HELLO, and say why.
    let odd = 4;
    net.nodes[odd].daemon.as_mut().unwrap().signal("TERM");
    assert!(net.nodes[odd].daemon.as_mut().unwrap().wait().success());
    let right = std::fs::read_to_string(&net.pki).unwrap();
    let stale = right.replace(r#""hop_delay_mean": "20ms""#, r#""hop_delay_mean": "30ms""#);
    assert_ne!(stale, right);
    std::fs::write(&net.pki, stale).unwrap();
    // Only what the restarted node dials counts.
    let first_new = net.nodes[odd].tap.connections().len() as u64;
    net.start_node(odd, &[]);
    std::fs::write(&net.pki, right).unwrap();
    let tap = &net.nodes[odd].tap;
    // Every link the odd node opens is closed by its peer first...
    let closed_by_peer =
        |c: &TapConn| c.id >= first_new && c.link && c.first_eof == Some(Direction::FromTarget);
    let conns = tap
        .wait_connections(|conns| conns.iter().any(closed_by_peer), PATIENCE)
        .await
        .unwrap_or_else(|c| panic!("no link closed by a peer: {c:?} {:?}", tap.frames()));
    let conn = conns.iter().find(|c| closed_by_peer(c)).unwrap();
    // ...after the odd node's HELLO, which it never answered.
    let frames = tap.frames();
    assert!(
        frames.iter().any(|f| f.conn == conn.id
            && f.kind == FrameKind::Hello
            && f.dir == Direction::ToTarget),
        "{conn:?} {frames:?}"
    );
    let answered: Vec<_> = frames
        .iter()
        .filter(|f| f.conn >= first_new && f.dir == Direction::FromTarget)
        .collect();
    assert!(
        answered.is_empty(),
        "a peer answered a node with other parameters: {answered:?}"
    );
    let refuser = node_of(&net, &conn.host);
    // The refusing node says why (identities are checked for below).
    net.daemon(refuser)
        .until_log("a refused link", |l| l.contains("network parameters"))
        .await;
    // The odd node never counts a peer as usable.
    until_stat(&net, odd, "packets_in", 0).await;
    let logs = net.daemon(odd).log_text();
    for line in logs.lines().filter(|l| l.contains("[STATS]")) {
        assert!(line.contains("healthy=0/4"), "{line}");
    }
    assert_logs_hold_no_identities(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_cannot_prove_a_listed_identity_gets_nothing_and_mail_flows() {
    let net = MixNet::start(5, TEST_PARAMS).await;
    net.until_healthy(0, 4).await;
    let (hop, next) = (2, 3);
    let to: SocketAddr = ([127, 0, 0, 1], net.nodes[hop].link_port.unwrap()).into();
    let dir = directory(&net, hop);
    let params = dir.params().hash();
    // Everything a peer may ask for: a packet to forward, the node's keys,
    // a ping.
    let mut asks = fresh_packet_frame(&net, hop, next, 1);
    Frame::GetKeys {
        subject: dir.own().id.0,
    }
    .encode(&mut asks);
    Frame::Ping {
        nonce: 77,
        subject: dir.own().id.0,
        epoch: net.epoch_now(),
    }
    .encode(&mut asks);
    let tap = &net.nodes[hop].tap;
    let before = sent_packets(&tap.frames());

    // Node 0's identity (public, in nodes.json) without its secret key:
    // the node proves itself, refuses the proof it gets, serves nothing.
    let node0 = directory(&net, 0).own().id.0;
    let wrong = SigningKey::from_bytes(&rand::random());
    let a = raw_link(
        to,
        &claim(node0, params, PROTOCOL_VERSION, Some(wrong)),
        &asks,
        false,
    )
    .await;
    assert!(a.hello_back && a.closed, "{a:?}");
    assert!(
        a.frames.is_empty() && a.left == 0,
        "served an impostor: {a:?}"
    );
    // A process with a fresh key of its own: not even a HELLO back.
    let fresh = SigningKey::from_bytes(&rand::random());
    let id = fresh.verifying_key().to_bytes();
    let a = raw_link(
        to,
        &claim(id, params, PROTOCOL_VERSION, Some(fresh)),
        &asks,
        false,
    )
    .await;
    assert!(!a.hello_back && a.closed, "{a:?}");
    assert!(
        a.frames.is_empty() && a.left == 0,
        "served a stranger: {a:?}"
    );
    forwards_nothing(tap, before, "a packet from an unauthenticated peer").await;
    for kind in ["bad_proof", "unlisted"] {
        let line = format!("inbound link refused ({kind})");
        net.daemon(hop)
            .until_log(&line, |l| l.contains(&line))
            .await;
    }

    // The same asks from node 0 with its own key are all answered, and
    // the packet is forwarded: what the two links got is the refusal.
    let a = raw_link(to, &as_node(&net, 0), &asks, true).await;
    assert_eq!(a.acks(), [AckStatus::Stored], "{a:?}");
    assert!(
        a.frames.iter().any(|f| matches!(
            f,
            Frame::Keys {
                bundle: Some(_),
                ..
            }
        )),
        "{a:?}"
    );
    assert!(
        a.frames
            .iter()
            .any(|f| matches!(f, Frame::Pong { nonce: 77, .. })),
        "{a:?}"
    );
    forwarded(tap, before, &net.nodes[next].onion).await;

    send(&net, &mail(500, "after")).await;
    delivered(&net, 1).await;
    assert_logs_hold_no_identities(&net).await;
}

/// Raises this test process's soft limit on open files to the hard one:
/// the test holds several hundred sockets at once.
fn more_files() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

/// A stranger that opens a connection to `to`, sends `first` and waits
/// until the node closes it, then opens another a second later, until
/// `stop` (or `until` at the latest). Returns how many it opened.
async fn stranger(
    to: SocketAddr,
    first: Vec<u8>,
    stop: tokio_util::sync::CancellationToken,
    until: tokio::time::Instant,
) -> usize {
    let mut opened = 0;
    while !stop.is_cancelled() && tokio::time::Instant::now() < until && opened < 400 {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(to)).await
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        opened += 1;
        let _ = s.write_all(&first).await;
        let mut sink = [0u8; 1024];
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep_until(until) => {}
            _ = async {
                while let Ok(n) = s.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            } => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_holding_connections_do_not_keep_restarting_nodes_out() {
    more_files();
    let mut net = MixNet::start(5, TEST_PARAMS).await;
    net.until_healthy(0, 4).await;
    let target = 1;
    let to: SocketAddr = ([127, 0, 0, 1], net.nodes[target].link_port.unwrap()).into();
    let params = directory(&net, target).params().hash();
    // 500 strangers that never finish a HELLO (they send half of one),
    // and 300 that say a whole HELLO as an unlisted node and then PING;
    // each reconnects a second after the node closes it, for 60 s at
    // least (until the checks below are done).
    let began = tokio::time::Instant::now();
    let until = began + Duration::from_secs(300);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut half = Vec::new();
    Frame::Hello(as_node(&net, 0).hello).encode(&mut half);
    half.truncate(half.len() / 2);
    let mut unlisted = Vec::new();
    let fresh = SigningKey::from_bytes(&[0x55; 32])
        .verifying_key()
        .to_bytes();
    Frame::Hello(claim(fresh, params, PROTOCOL_VERSION, None).hello).encode(&mut unlisted);
    Frame::Ping {
        nonce: 1,
        subject: fresh,
        epoch: 0,
    }
    .encode(&mut unlisted);
    let mut strangers = tokio::task::JoinSet::new();
    for i in 0..800 {
        let first = if i < 500 {
            half.clone()
        } else {
            unlisted.clone()
        };
        strangers.spawn(stranger(to, first, stop.clone(), until));
    }
    // Let them fill the node's places, then restart two nodes that link
    // to it: each must be served by it again within its normal redial
    // time (its first dial is at once; later ones at most 30 s apart).
    net.daemon(target)
        .until_log("refused (no_slot)", |l| {
            l.contains("inbound link refused (no_slot)")
        })
        .await;
    eprintln!("filled after {:?}", began.elapsed());
    // Served means answered: the first PING of a link goes out one ping
    // interval (30 s on these parameters) after it came up, so its PONG
    // proves the link got through and stayed.
    let onion = net.nodes[target].onion.clone();
    let restarted = [2, 3];
    for &r in &restarted {
        net.nodes[r].daemon.as_mut().unwrap().kill9();
    }
    let at = tokio::time::Instant::now();
    for &r in &restarted {
        net.start_node(r, &[]);
    }
    for &r in &restarted {
        net.nodes[r]
            .tap
            .wait_until(
                |f| {
                    f.iter().any(|f| {
                        f.host == onion
                            && f.kind == FrameKind::Pong
                            && f.dir == Direction::FromTarget
                            && f.at > at
                    })
                },
                Duration::from_secs(50),
            )
            .await
            .unwrap_or_else(|_| panic!("node {r} not served by node {target} again"));
        eprintln!("node {r} served {:?} after its restart", at.elapsed());
    }
    eprintln!("restarts served after {:?}", began.elapsed());
    // Mail crosses the network, once, while the strangers are still at it.
    net.until_healthy(0, 4).await;
    eprintln!("healthy after {:?}", began.elapsed());
    send(&net, &mail(500, "held")).await;
    delivered(&net, 1).await;
    eprintln!("delivered after {:?}", began.elapsed());
    tokio::time::sleep_until(began + Duration::from_secs(60)).await;
    stop.cancel();
    let mut opened = 0;
    while let Some(n) = strangers.join_next().await {
        opened += n.unwrap();
    }
    eprintln!("joined after {:?}", began.elapsed());
    assert!(opened >= 800, "{opened} connections");
    // The refusals are in the log as a few counted lines, not one each.
    let minutes = began.elapsed().as_secs() / 60;
    let lines = net
        .daemon(target)
        .log_text()
        .lines()
        .filter(|l| l.contains("inbound link refused"))
        .count() as u64;
    assert!(
        lines <= 3 * (2 + minutes),
        "{lines} refusal lines for {opened} connections"
    );
    assert_eq!(net.sink.received().len(), 1, "delivered once");
    assert_logs_hold_no_identities(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_over_the_maximum_is_refused_and_a_listed_peers_flood_is_counted_not_logged() {
    let mut net = MixNet::start(5, TEST_PARAMS).await;
    net.until_healthy(0, 4).await;
    // The test speaks as node 4, stopped: a node has one link at a peer,
    // and its own redial would replace the test's link.
    let me = 4;
    net.nodes[me].daemon.as_mut().unwrap().signal("TERM");
    assert!(net.nodes[me].daemon.as_mut().unwrap().wait().success());
    let (hop, next) = (2, 3);
    let to: SocketAddr = ([127, 0, 0, 1], net.nodes[hop].link_port.unwrap()).into();
    let max = directory(&net, hop).params().hop_delay_max;
    assert_eq!(max, Duration::from_millis(240));

    // A delay just over the network's maximum is refused by the hop it is
    // meant for; the maximum itself is taken.
    let over = delayed_packet_frame(&net, hop, next, 1, max + Duration::from_millis(1));
    let a = raw_link(to, &as_node(&net, me), &over, true).await;
    assert_eq!(a.acks(), [AckStatus::Rejected], "{a:?}");
    let at_max = delayed_packet_frame(&net, hop, next, 2, max);
    let a = raw_link(to, &as_node(&net, me), &at_max, true).await;
    assert_eq!(a.acks(), [AckStatus::Stored], "{a:?}");

    // A listed peer gone bad floods packets that do not open, and asks
    // for keys over and over, on one link.
    const FLOOD: usize = 3_000;
    let lines_before = net.daemon(hop).log_text().lines().count();
    // Each is a valid packet with its routing information damaged: it
    // costs the hop the key exchange before the MAC fails.
    let valid = fresh_packet_frame(&net, hop, next, 0);
    let mut flood = Vec::with_capacity(FLOOD * MAX_FRAME);
    for seq in 0..FLOOD as u64 {
        let mut frame = valid.clone();
        frame[1..9].copy_from_slice(&seq.to_be_bytes());
        frame[PACKET_AT + 40] ^= 0x01;
        frame[PACKET_AT + 41..PACKET_AT + 43].copy_from_slice(&(seq as u16).to_be_bytes());
        flood.extend_from_slice(&frame);
        if seq % 30 == 0 {
            Frame::GetKeys { subject: [0; 32] }.encode(&mut flood);
        }
    }
    let a = raw_link(to, &as_node(&net, me), &flood, true).await;
    let acks = a.acks();
    assert_eq!(acks.len(), FLOOD, "every packet answered");
    assert!(acks.iter().all(|s| *s == AckStatus::Rejected));
    // Counted (one over the maximum, then the flood)...
    until_stat(&net, hop, "rejected", 1 + FLOOD as u64).await;
    // ...not logged one by one: what the node wrote meanwhile is its
    // [STATS] lines and a few others.
    let logs = net.daemon(hop).log_text();
    let new_lines: Vec<&str> = logs.lines().skip(lines_before).collect();
    let other: Vec<&&str> = new_lines
        .iter()
        .filter(|l| !l.contains("[STATS]"))
        .collect();
    assert!(other.len() < 20, "{} lines: {other:?}", other.len());

    // The rest of the network carries mail as before.
    send(&net, &mail(500, "flood")).await;
    delivered(&net, 1).await;
    assert_logs_hold_no_identities(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custody_is_busy_under_the_free_space_floor_and_past_a_peers_share_and_loses_nothing() {
    let mut net = MixNet::start(5, TEST_PARAMS).await;
    net.until_healthy(0, 4).await;
    // With node 4 stopped every route from node 0 is 1, 2 and 3 in some
    // order: mail must cross node 2.
    let stop = |net: &mut MixNet, i: usize| {
        net.nodes[i].daemon.as_mut().unwrap().signal("TERM");
        assert!(net.nodes[i].daemon.as_mut().unwrap().wait().success());
    };
    stop(&mut net, 4);
    // Node 2's disk is "full": its free space is under a floor no disk
    // reaches. It takes no packet; whoever holds one keeps it.
    stop(&mut net, 2);
    net.start_node(2, &["-min-free-space", "1000000000000000000"]);
    net.until_healthy(0, 3).await;
    for tag in ["first", "second"] {
        send(&net, &mail(400, tag)).await;
    }
    until_stat(&net, 2, "custody_busy", 1).await;
    assert!(
        net.sink.received().is_empty(),
        "delivered across a busy hop"
    );
    let busy_log = net.daemon(2).log_text();
    assert!(
        busy_log.contains("custody answers busy (free_space)"),
        "{busy_log}"
    );
    // Space again: the packets the previous hops kept get through, and
    // each message arrives once.
    stop(&mut net, 2);
    net.start_node(2, &[]);
    delivered(&net, 2).await;

    // Node 2 with a small cap (1 MiB: 121 packets, 30 per previous hop),
    // its next hop down so what it takes stays: node 4's identity (the
    // node is stopped, the test speaks for it) fills its share, then is
    // answered busy; what was stored stays stored.
    stop(&mut net, 3);
    stop(&mut net, 2);
    net.start_node(2, &["-custody-max", "1048576"]);
    let (hop, next, me) = (2, 3, 4);
    let to: SocketAddr = ([127, 0, 0, 1], net.nodes[hop].link_port.unwrap()).into();
    let mut packets = Vec::new();
    for seq in 0..40 {
        packets.extend_from_slice(&fresh_packet_frame(&net, hop, next, seq));
    }
    let a = raw_link(to, &as_node(&net, me), &packets, true).await;
    let acks = a.acks();
    let stored = acks.iter().filter(|s| **s == AckStatus::Stored).count();
    let busy = acks.iter().filter(|s| **s == AckStatus::Busy).count();
    assert_eq!((stored, busy), (30, 10), "{acks:?}");
    until_stat(&net, hop, "custody_busy", 10).await;
    let counts = net.mixnet_counts(hop);
    assert!(
        counts["packets_forward"].as_u64().unwrap() >= 30,
        "{counts}"
    );
}
