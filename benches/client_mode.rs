//! Client mode's figures (issue 19), each against its non-client twin in
//! the same run:
//!
//!     cargo bench --bench client_mode                  # everything
//!     PARTS=latency,idle N=30 LAT_MEANS=10ms,100ms IDLE_MEAN=100ms,10ms IDLE_SECS=30 cargo bench --bench client_mode
//!     PARTS=held,gateway REPLIES=1000 RUNS=5 PACKETS=8000 CLIENTS=100 NODE_LINKS=4 cargo bench --bench client_mode
//!
//! (`scripts/bench-client-mode.sh` runs it with these defaults under a
//! time limit.)
//!
//! * **latency** (tests/common/mixnet.rs: five real `pluto2 -sphinx`
//!   nodes on 127.0.0.1 behind frame-recording taps, node 0 a gateway,
//!   one client of it, an SMTP sink as the exits' destination), once per
//!   mean in `LAT_MEANS`, a fresh network each. Network parameters:
//!   `hop_delay_mean` and `hop_delay_max` `"0s"` (no mixing delay),
//!   `client_send_mean` and `client_fetch_mean` the mean (10 ms is the
//!   smallest `wire::pki` allows), no node cover. `N` messages of 4 KiB
//!   (one packet each) handed in alternately to the client and, by SMTP,
//!   to node 0 as an entry (the client's route: gateway, two mixes, the
//!   exit; the entry's: two mixes, the exit). Per message: the time from
//!   the `250` to the sink reading the final dot. For the client's, also
//!   where it went: `250` → the first PACKET on the client's link after it
//!   (the next send tick: the client sends one packet per tick, a loop on
//!   a quarter of them whatever is waiting, else the next real packet or a
//!   drop; the tap cannot tell which, so this is the real packet's tick
//!   three times in four), and that PACKET → the sink. The fetch tick is
//!   not on this path: it delays only the client's acknowledgement (the
//!   COMPLETE waits at the gateway for the next FETCH), which the tap
//!   cannot tell apart from the client's loops coming back. Each message
//!   waits for the one before it to be delivered.
//! * **idle** (a fresh network at each mean in `IDLE_MEAN`, a comma list):
//!   `IDLE_SECS` with no mail.
//!   The client's CPU (utime + stime, `/proc/PID/stat`), its RSS
//!   (`/proc/PID/status`), the frames and bytes on its link (the tap) per
//!   kind and direction, and each FETCH's round trip to its HELD; the
//!   cost per packet and per fetch scaled to a day at the default rates
//!   (a packet and a fetch every 30 s). Alone: the CPU of wrapping one
//!   cover packet as the client does (a drop: `packet::build` over
//!   gateway + 3 mixes; a loop: `ReplyBlock::create_to` over gateway + 3
//!   mixes + gateway, then `ReplyBlock::send`), mixed as an idle client
//!   sends them (a quarter loops, the rest drops).
//! * **held**: a gateway's disk per held reply: a fresh spool
//!   (`Spool::open`), `REPLIES` replies of 8,192 random bytes (a Sphinx
//!   payload) held (`Custody::Hold`, 16 concurrent tasks) for one
//!   mailbox, then on another fresh spool one reply for each of `REPLIES`
//!   mailboxes; the database's pages in use after a checkpoint
//!   (`PRAGMA page_count - freelist_count`) against a fresh spool's; then
//!   everything fetched and confirmed, and what stays (the replay tags).
//! * **gateway**: a real `pluto2 -sphinx -gateway` (benches/support: its
//!   Tor a dead end, so every packet stays in its custody) taking
//!   `PACKETS` valid packets routed gateway → B, once over `CLIENTS`
//!   client links (role client, each its own key, proven in the
//!   handshake) and once over `NODE_LINKS` links of listed nodes, a fresh
//!   node each time, alternating which goes first, `RUNS` times. Each
//!   link keeps up to the window (64) of PACKET frames unacknowledged;
//!   the rate is ACK `Stored` over the time from the first PACKET to the
//!   last ACK, with the gateway's CPU per packet. `client_send_mean` is
//!   10 ms in this network so a client's rate limit at the gateway (four
//!   times the send rate, bursts of 64) is 400 packets/s per client, out
//!   of the way; any other status fails the run.
//!
//! Bounded: a fixed count of messages and packets, a deadline on every
//! wait, 127.0.0.1 only. Under `cargo test` (no `--bench`) one tiny pass
//! checks the path.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::link_tap::{Direction, FrameKind};
use common::mixnet::{MixNet, mail};
use ed25519_dalek::SigningKey;
use pluto2::spool::Spool;
use pluto2::spool::custody::{Custody, CustodyOutcome, HoldCaps};
use pluto2::wire::frame::{self, AckStatus, Frame, Hello, PROTOCOL_VERSION, Role};
use pluto2::wire::hello::{self, Side};
use pluto2::wire::packet::{self, NodeId, ReplyBlock, RouteHop, WirePacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use x25519_dalek::{PublicKey, StaticSecret};

use support::{HZ, cpu_ticks, env_or, median, quantile};

/// Bound on any single wait.
const PATIENCE: Duration = Duration::from_secs(30);
/// The gateway's per-link window (src/link.rs `LinkConfig::new`).
const WINDOW: usize = 64;
/// A day at the production defaults (`wire::pki`): a packet and a fetch
/// every 30 s.
const DEFAULT_MEAN_SECS: f64 = 30.0;
const DAY_SECS: f64 = 86_400.0;

/// The test network's parameters with no mixing delay and the client
/// means `mean` (a duration such as "10ms").
fn params(mean: &str) -> String {
    format!(
        r#"{{"hops": 3, "hop_delay_mean": "0s", "hop_delay_max": "0s",
    "max_message_size": 262144, "ack_timeout": "4s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "loop_cover_mean": "0s", "drop_cover_mean": "0s",
    "client_send_mean": "{mean}", "client_fetch_mean": "{mean}"}}"#
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn line(name: &str, xs: &[f64]) -> String {
    format!(
        "{name}: median {:.1} ms, p90 {:.1} ms (n={})",
        median(xs),
        quantile(xs, 0.9),
        xs.len()
    )
}

/// Waits (bounded) until the sink holds `n` messages; when the last came.
async fn until_delivered(net: &MixNet, n: usize) -> std::time::Instant {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = net.sink.received();
        if got.len() >= n {
            return got[n - 1].at;
        }
        assert!(Instant::now() < deadline, "{} of {n} delivered", got.len());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Frames of `kind` on client `c`'s link in `dir` since `since`.
fn client_frames(
    net: &MixNet,
    c: usize,
    kind: FrameKind,
    dir: Direction,
    since: std::time::Instant,
) -> Vec<common::link_tap::TapFrame> {
    net.clients[c]
        .tap
        .frames()
        .into_iter()
        .filter(|f| f.kind == kind && f.dir == dir && f.at.into_std() >= since)
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Parts 1 and 2: latency through a client and through an entry, then
/// the idle client's cost.
async fn latency_and_idle(mean: &str, n: usize, idle: Option<Duration>) {
    // Node 0 and the client take one SMTP session per message: their
    // per-address session limit out of the way.
    let unlimited = ["-rate-limit", "1000000"];
    let flags = vec![
        vec!["-gateway", unlimited[0], unlimited[1]],
        vec![],
        vec![],
        vec![],
        vec![],
    ];
    let mut net = MixNet::start_with_flags(&params(mean), &flags).await;
    net.until_healthy(0, 4).await;
    let c = net.add_client(0, &unlimited).await;
    net.client(c)
        .until_log("client ready", |l| l.contains("healthy=4/"))
        .await;
    let mut delivered = 0;
    if n > 0 {
        // One message each way first, not counted: the first routes,
        // the first connections from the exits to the sink.
        for warm in 0..2 {
            let text = mail(4 * 1024, &format!("warm{warm}"));
            if warm == 0 {
                net.send_by_client(c, &text).await;
            } else {
                net.send(0, &text).await;
            }
            delivered += 1;
            until_delivered(&net, delivered).await;
        }
        let (mut client, mut entry) = (Vec::new(), Vec::new());
        let (mut tick, mut network) = (Vec::new(), Vec::new());
        for i in 0..n {
            for by_client in [i % 2 == 0, i % 2 != 0] {
                let text = mail(4 * 1024, &format!("lat{i}{}", u8::from(by_client)));
                if by_client {
                    let s = net.send_by_client(c, &text).await;
                    let accepted = std::time::Instant::now();
                    drop(s);
                    delivered += 1;
                    let at = until_delivered(&net, delivered).await;
                    client.push(ms(at - accepted));
                    if let Some(p) =
                        client_frames(&net, c, FrameKind::Packet, Direction::ToTarget, accepted)
                            .first()
                    {
                        let sent = p.at.into_std();
                        tick.push(ms(sent.saturating_duration_since(accepted)));
                        network.push(ms(at.saturating_duration_since(sent)));
                    }
                } else {
                    let s = net.send(0, &text).await;
                    let accepted = std::time::Instant::now();
                    drop(s);
                    delivered += 1;
                    let at = until_delivered(&net, delivered).await;
                    entry.push(ms(at - accepted));
                }
            }
        }
        println!("latency, 4 KiB, hop delays 0, client means {mean}, 250 -> sink:");
        println!("  {}", line("client", &client));
        println!("  {}", line("entry (SMTP to node 0)", &entry));
        println!(
            "  client / entry: median {:.2}x, p90 {:.2}x",
            median(&client) / median(&entry),
            quantile(&client, 0.9) / quantile(&entry, 0.9)
        );
        println!("  client parts:");
        println!(
            "    {}",
            line(
                "250 -> the next PACKET on its link (send tick, any kind)",
                &tick
            )
        );
        println!("    {}", line("that PACKET -> sink", &network));
    }
    if let Some(idle) = idle {
        idle_client(&net, c, mean, idle).await;
    }
    println!("load average {:.2}", support::load_average());
}

/// Part 2: the client's cost with no mail, per tick and per day.
async fn idle_client(net: &MixNet, c: usize, mean: &str, secs: Duration) {
    let pid = net.client(c).pid();
    let gateway = net.daemon(0).pid();
    // The last reply of the messages before settles first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let since = std::time::Instant::now();
    let (cpu0, _) = cpu_ticks(pid);
    let (gw0, _) = cpu_ticks(gateway);
    tokio::time::sleep(secs).await;
    let (cpu1, threads) = cpu_ticks(pid);
    let (gw1, _) = cpu_ticks(gateway);
    let elapsed = since.elapsed().as_secs_f64();
    let frames: Vec<_> = net.clients[c]
        .tap
        .frames()
        .into_iter()
        .filter(|f| f.at.into_std() >= since)
        .collect();
    let count = |k: FrameKind, d: Direction| {
        let fs: Vec<_> = frames
            .iter()
            .filter(|f| f.kind == k && f.dir == d)
            .collect();
        (fs.len(), fs.iter().map(|f| f.len).sum::<usize>())
    };
    let up = Direction::ToTarget;
    let down = Direction::FromTarget;
    let (packets, packet_bytes) = count(FrameKind::Packet, up);
    let (fetches, fetch_bytes) = count(FrameKind::Fetch, up);
    let (helds, held_bytes) = count(FrameKind::Held, down);
    let (acks, ack_bytes) = count(FrameKind::Ack, down);
    let (confirms, confirm_bytes) = count(FrameKind::Confirm, up);
    let all_bytes: usize = frames.iter().map(|f| f.len).sum();
    let cpu = (cpu1 - cpu0) as f64 / HZ;
    let gw_cpu = (gw1 - gw0) as f64 / HZ;
    println!(
        "idle client, {elapsed:.1} s at {mean} means: CPU {cpu:.2} s ({:.1} %), RSS {} KiB; gateway CPU {gw_cpu:.2} s",
        cpu / elapsed * 100.0,
        rss_kib(pid)
    );
    let mut busy: Vec<_> = threads.into_iter().filter(|(_, t)| *t > 0).collect();
    busy.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    println!("  client threads (ticks since start): {busy:?}");
    println!(
        "  frames: PACKET up {packets} ({packet_bytes} B), FETCH up {fetches} ({fetch_bytes} B), HELD down {helds} ({held_bytes} B), ACK down {acks} ({ack_bytes} B), CONFIRM up {confirms} ({confirm_bytes} B); all frames {all_bytes} B"
    );
    // A FETCH's round trip: to the HELD that answers it (one fetch is in
    // flight at a time, so the next FETCH waits for it).
    let mut trips = Vec::new();
    let mut asked: Option<std::time::Instant> = None;
    for f in &frames {
        match (f.kind, f.dir) {
            (FrameKind::Fetch, Direction::ToTarget) => asked = Some(f.at.into_std()),
            (FrameKind::Held, Direction::FromTarget) => {
                if let Some(at) = asked.take() {
                    trips.push(ms(f.at.into_std().saturating_duration_since(at)));
                }
            }
            _ => {}
        }
    }
    // A PACKET's round trip: to the gateway's ACK of its sequence number.
    let mut written = std::collections::HashMap::new();
    let mut acked = Vec::new();
    for f in &frames {
        match (f.kind, f.dir, f.seq) {
            (FrameKind::Packet, Direction::ToTarget, Some(seq)) => {
                written.insert(seq, f.at.into_std());
            }
            (FrameKind::Ack, Direction::FromTarget, Some(seq)) => {
                if let Some(at) = written.remove(&seq) {
                    acked.push(ms(f.at.into_std().saturating_duration_since(at)));
                }
            }
            _ => {}
        }
    }
    println!(
        "  {}; {}; fetches {:.1}/s, packets {:.1}/s",
        line("FETCH -> HELD", &trips),
        line("PACKET -> ACK", &acked),
        fetches as f64 / elapsed,
        packets as f64 / elapsed
    );
    // Per day at the defaults: each packet and each fetch costs what it
    // cost here. CPU is shared out by the mix of the window: a packet and
    // a fetch per pair (equal rates at the defaults).
    let pairs = ((packets + fetches) as f64 / 2.0).max(1.0);
    let per_pair = cpu / pairs;
    let per_day = DAY_SECS / DEFAULT_MEAN_SECS;
    let each = |bytes: usize, n: usize| bytes as f64 / n.max(1) as f64;
    let up = per_day * (each(packet_bytes, packets) + each(fetch_bytes, fetches))
        + per_day * each(confirm_bytes, packets);
    let down = per_day * (each(ack_bytes, packets) + each(held_bytes, helds));
    println!(
        "  CPU per packet + fetch pair {:.0} µs; a day at the defaults (30 s, 30 s: {per_day:.0} packets, {per_day:.0} fetches): CPU {:.1} s, link bytes up {:.2} MB, down {:.2} MB (CONFIRMs per packet {:.2})",
        per_pair * 1e6,
        per_pair * per_day,
        up / 1e6,
        down / 1e6,
        confirms as f64 / packets.max(1) as f64
    );
    // The wrapping alone, as `mixnet::client::cover_packet` does it.
    let reps = if std::env::args().any(|a| a == "--bench") {
        400
    } else {
        4
    };
    let key = |s: u8| PublicKey::from(&StaticSecret::from([s; 32]));
    let hop = |s: u8| RouteHop {
        id: NodeId([s; 32]),
        mix_key: key(s),
        delay: Duration::ZERO,
    };
    let drop_route: Vec<RouteHop> = (1..=4).map(hop).collect();
    let loop_route: Vec<RouteHop> = [1, 2, 3, 4, 1].into_iter().map(hop).collect();
    let plaintext = vec![0u8; 200];
    let start = Instant::now();
    for _ in 0..reps {
        packet::build(&plaintext, &drop_route).unwrap();
    }
    let drop_us = start.elapsed().as_secs_f64() * 1e6 / reps as f64;
    let start = Instant::now();
    for _ in 0..reps {
        let (block, _) = ReplyBlock::create_to(&loop_route, [9; 32], [5; 16], 0).unwrap();
        block.send(&plaintext).unwrap();
    }
    let loop_us = start.elapsed().as_secs_f64() * 1e6 / reps as f64;
    // An idle client's ticks: a quarter loops (`LinkConfig::loop_share`),
    // the rest drops (no real packet waiting).
    println!(
        "  wrapping one cover packet on one thread: drop {drop_us:.0} µs, loop {loop_us:.0} µs (a quarter loops: {:.0} µs per packet)",
        0.25 * loop_us + 0.75 * drop_us
    );
}

/// Pages in use in the spool database after a checkpoint, in bytes, and
/// the file's size.
fn spool_used(dir: &std::path::Path) -> (u64, u64) {
    let path = dir.join(pluto2::spool::SPOOL_FILE);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let get = |p: &str| -> u64 {
        conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    };
    let used = (get("page_count") - get("freelist_count")) * get("page_size");
    drop(conn);
    (used, std::fs::metadata(&path).unwrap().len())
}

/// Part 3: a fresh spool holding `replies` replies spread over
/// `mailboxes` mailboxes; (used, file) bytes after holding them, and
/// after fetching and confirming them all.
async fn held_spool(replies: usize, mailboxes: usize) -> ((u64, u64), (u64, u64)) {
    let dir = tempfile::tempdir().unwrap();
    let (spool, closer) = Spool::open(
        dir.path(),
        Duration::from_secs(24 * 3600),
        pluto2::time::system_clock(),
    )
    .unwrap();
    let caps = HoldCaps {
        per_mailbox: u32::MAX,
        total_bytes: u64::MAX / 2,
        mailboxes: u32::MAX,
    };
    let mailbox = move |i: usize| {
        let mut m = [0u8; 32];
        m[..8].copy_from_slice(&((i % mailboxes) as u64).to_be_bytes());
        m[8..].copy_from_slice(&[0xAB; 24]);
        m
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (spool, next) = (spool.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= replies {
                    return;
                }
                let outcome = spool
                    .custody(Custody::Hold {
                        tag: rand::random(),
                        epoch: 0,
                        mailbox: mailbox(i),
                        reply_id: rand::random(),
                        payload: (0..packet::PAYLOAD_SIZE).map(|_| rand::random()).collect(),
                        caps,
                    })
                    .await;
                assert_eq!(outcome, CustodyOutcome::Stored);
            }
        });
    }
    while let Some(r) = tokio::time::timeout(PATIENCE, tasks.join_next())
        .await
        .expect("holding within its deadline")
    {
        r.unwrap();
    }
    let totals = spool.held_totals().await.unwrap();
    assert_eq!(totals.replies, replies as u64);
    assert_eq!(totals.mailboxes, mailboxes.min(replies) as u64);
    let held = spool_used(dir.path());
    for m in 0..mailboxes {
        while let Some(r) = spool
            .fetch_held(mailbox(m), packet::PAYLOAD_SIZE)
            .await
            .unwrap()
            .reply
        {
            assert!(spool.confirm_held(mailbox(m), r.delivery).await.unwrap());
        }
    }
    assert_eq!(spool.held_totals().await.unwrap().replies, 0);
    let after = spool_used(dir.path());
    drop(spool);
    closer.closed().await;
    (held, after)
}

async fn held_figures(replies: usize) {
    let ((empty, empty_file), _) = held_spool(0, 1).await;
    let ((one, one_file), (one_after, _)) = held_spool(replies, 1).await;
    let ((many, many_file), (many_after, _)) = held_spool(replies, replies).await;
    let r = replies as f64;
    println!(
        "held replies (payload {} B each), bytes of pages in use after a checkpoint (file size):",
        packet::PAYLOAD_SIZE
    );
    println!("  fresh spool: {empty} ({empty_file})");
    println!(
        "  {replies} replies, one mailbox: {one} ({one_file}): {:.0} B per held reply ({:.3}x its payload)",
        (one - empty) as f64 / r,
        (one - empty) as f64 / r / packet::PAYLOAD_SIZE as f64
    );
    println!(
        "  {replies} replies, one each in {replies} mailboxes: {many} ({many_file}): {:.0} B more per mailbox row",
        (many as f64 - one as f64) / (r - 1.0).max(1.0)
    );
    println!(
        "  after all fetched and confirmed: one mailbox {one_after}, {replies} mailboxes {many_after}: {:.0} B per reply stays (its replay tag, until the replay window passes)",
        (one_after as f64 - empty as f64) / r
    );
}

/// Who the generator speaks as on a link to the gateway.
struct Speaker {
    role: Role,
    /// A node's id (its onion key) for a node; a client's verifying key.
    identity: [u8; 32],
    key: SigningKey,
}

/// Opens and proves a link to `port` as `who`.
async fn open_link(
    port: u16,
    params_hash: [u8; 32],
    who: &Speaker,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
    Vec<u8>,
) {
    let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect in time")
        .expect("connect");
    stream.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let ours = Hello {
        version: PROTOCOL_VERSION,
        params_hash,
        role: who.role,
        identity: who.identity,
        nonce: rand::random(),
        clock_secs: support::unix_secs(),
    };
    let mut out = Vec::new();
    Frame::Hello(ours).encode(&mut out);
    wr.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let Frame::Hello(theirs) = read_frame(&mut rd, &mut buf).await else {
        panic!("expected the gateway's HELLO");
    };
    let Frame::Auth { .. } = read_frame(&mut rd, &mut buf).await else {
        panic!("expected the gateway's AUTH");
    };
    out.clear();
    Frame::Auth {
        signature: hello::prove(&who.key, Side::Dialler, &ours, &theirs),
    }
    .encode(&mut out);
    wr.write_all(&out).await.unwrap();
    (rd, wr, buf)
}

async fn read_frame(rd: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut Vec<u8>) -> Frame {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some((f, used)) = frame::decode(buf).expect("a frame") {
            buf.drain(..used);
            return f;
        }
        let got = tokio::time::timeout(PATIENCE, rd.read(&mut chunk))
            .await
            .expect("a frame in time")
            .expect("read");
        assert!(got > 0, "the gateway closed a link");
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// Part 4, one phase: a fresh gateway, `packets` packets over one link
/// per speaker; packets per second and the gateway's CPU per packet (µs).
async fn gateway_phase(
    packets: usize,
    speakers: Vec<Speaker>,
    node_links: usize,
    seed: u8,
) -> (f64, f64) {
    let mut net = support::Network::export(support::BIN, 2 + node_links, seed);
    net.make_gateway(
        0,
        serde_json::json!({"hops": 2, "client_send_mean": "10ms", "client_fetch_mean": "10ms"}),
    );
    let node = net.start(support::BIN, 0, &["-gateway"]);
    let epoch = support::epoch_now();
    let (a, b) = (net.node(0), net.node(1));
    let route = [
        RouteHop {
            id: a.id,
            mix_key: net.mix_key(0, epoch),
            delay: Duration::ZERO,
        },
        RouteHop {
            id: b.id,
            mix_key: PublicKey::from(&StaticSecret::from([7u8; 32])),
            delay: Duration::ZERO,
        },
    ];
    let built: Vec<WirePacket> = (0..packets)
        .map(|_| packet::build(&[7u8; 1_000], &route).unwrap())
        .collect();
    // Node links speak as nodes 2.. (listed, their identity keys).
    let speakers: Vec<Speaker> = if speakers.is_empty() {
        (0..node_links)
            .map(|i| Speaker {
                role: Role::Node,
                identity: net.node(2 + i).id.0,
                key: net.identity_key(2 + i),
            })
            .collect()
    } else {
        speakers
    };
    let params_hash = net.view.params().hash();
    let mut links = Vec::new();
    for s in &speakers {
        links.push(open_link(node.link_port, params_hash, s).await);
    }
    let n = links.len();
    let mut shares: Vec<Vec<WirePacket>> = (0..n).map(|_| Vec::new()).collect();
    for (i, p) in built.into_iter().enumerate() {
        shares[i % n].push(p);
    }
    let (cpu0, _) = cpu_ticks(node.pid());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for ((mut rd, mut wr, mut buf), share) in links.into_iter().zip(shares) {
        tasks.spawn(async move {
            let want = share.len();
            let credits = Arc::new(Semaphore::new(WINDOW));
            let returned = credits.clone();
            let reader = tokio::spawn(async move {
                let mut stored = 0;
                while stored < want {
                    match read_frame(&mut rd, &mut buf).await {
                        Frame::Ack { status, .. } => {
                            assert_eq!(status, AckStatus::Stored);
                            stored += 1;
                            returned.add_permits(1);
                        }
                        _ => continue,
                    }
                }
            });
            let mut out = Vec::with_capacity(frame::MAX_FRAME);
            for (seq, packet) in share.into_iter().enumerate() {
                credits.acquire().await.unwrap().forget();
                out.clear();
                Frame::Packet {
                    seq: seq as u64,
                    epoch,
                    packet,
                }
                .encode(&mut out);
                wr.write_all(&out).await.unwrap();
            }
            tokio::time::timeout(PATIENCE, reader)
                .await
                .expect("every ACK in time")
                .unwrap();
            drop(wr);
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            panic!("a link failed: {e}\n{}", node.log_text());
        }
    }
    let rate = packets as f64 / start.elapsed().as_secs_f64();
    let (cpu1, _) = cpu_ticks(node.pid());
    (rate, (cpu1 - cpu0) as f64 / HZ / packets as f64 * 1e6)
}

async fn gateway_figures(runs: usize, packets: usize, clients: usize, node_links: usize) {
    let (mut with_clients, mut with_nodes) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for clients_first in [run % 2 == 0, run % 2 != 0] {
            let seed = 10 + (run * 2 + usize::from(clients_first)) as u8 * 8;
            if clients_first {
                let speakers = (0..clients)
                    .map(|_| {
                        let key = SigningKey::from_bytes(&rand::random());
                        Speaker {
                            role: Role::Client,
                            identity: key.verifying_key().to_bytes(),
                            key,
                        }
                    })
                    .collect();
                let (r, cpu) = gateway_phase(packets, speakers, node_links, seed).await;
                println!(
                    "  run {run}: {clients} client links: {r:.0} packets/s, gateway CPU {cpu:.0} µs per packet"
                );
                with_clients.push(r);
            } else {
                let (r, cpu) = gateway_phase(packets, Vec::new(), node_links, seed).await;
                println!(
                    "  run {run}: {node_links} node links: {r:.0} packets/s, gateway CPU {cpu:.0} µs per packet"
                );
                with_nodes.push(r);
            }
        }
    }
    println!(
        "gateway, {packets} packets per phase, medians of {runs}: {clients} client links {:.0}/s, {node_links} node links {:.0}/s, ratio {:.2}; load average {:.2}",
        median(&with_clients),
        median(&with_nodes),
        median(&with_clients) / median(&with_nodes),
        support::load_average()
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "latency,idle,held,gateway".into());
    let has = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("client mode: load average {:.2}", support::load_average());
    rt.block_on(async {
        let (n, idle) = if bench {
            (env_or("N", 30), env_or("IDLE_SECS", 30))
        } else {
            (1, 1)
        };
        let idle = Duration::from_secs(idle as u64);
        if has("latency") {
            let means = std::env::var("LAT_MEANS").unwrap_or_else(|_| "10ms,100ms".into());
            for mean in means.split(',') {
                latency_and_idle(mean.trim(), n, None).await;
            }
        }
        if has("idle") {
            let means = std::env::var("IDLE_MEAN").unwrap_or_else(|_| "100ms".into());
            for mean in means.split(',') {
                latency_and_idle(mean.trim(), 0, Some(idle)).await;
            }
        }
        if has("held") {
            held_figures(if bench { env_or("REPLIES", 1_000) } else { 10 }).await;
        }
        if has("gateway") {
            if bench {
                gateway_figures(
                    env_or("RUNS", 5),
                    env_or("PACKETS", 8_000),
                    env_or("CLIENTS", 100),
                    env_or("NODE_LINKS", 4),
                )
                .await;
            } else {
                gateway_figures(1, 40, 4, 2).await;
            }
        }
    });
}
