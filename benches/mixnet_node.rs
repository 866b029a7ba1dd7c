//! One mix node's packet rate: packets per second through link → unwrap →
//! custody commit → acknowledgement, with the two costs underneath measured
//! alone in the same run.
//!
//!     cargo bench --bench mixnet_node
//!     RUNS=5 PACKETS=8000 LINKS=4 NODE_LINKS=4 cargo bench --bench mixnet_node
//!
//! Each run:
//!
//! * **node**: 2 + `NODE_LINKS` nodes are exported (`-export-node-info`)
//!   into a fresh `nodes.json`; only the first (A) is started, a real
//!   release `pluto2 -sphinx` listening for links on 127.0.0.1. Its Tor
//!   port is a dead end, so it forwards nothing during the run: every
//!   packet stays in custody. The load generator (this process, one
//!   thread) builds `PACKETS` valid packets routed A → B (B listed, not
//!   running), opens `NODE_LINKS` (default `LINKS`) links straight to A's
//!   `-node` port, each as another listed node (A keeps one link per
//!   peer), proves it in the handshake with that node's identity key, and
//!   keeps up to the node's window (64) PACKET frames unacknowledged per
//!   link. The rate is ACK `Stored` frames over the time from the first
//!   PACKET to the last ACK; every other status fails the run. CPU time of A's threads (from
//!   `/proc/PID/task`) and of the generator is read before and after.
//! * **unwrap alone**: `wire::packet::process` (what a hop calls) over
//!   2,000 packets on one thread (the generator's, between node runs).
//! * **custody alone**: `Spool::custody` of `PACKETS` forward packets from
//!   64 × `LINKS` concurrent tasks into a fresh spool (group commit, as
//!   the node's link handlers do).
//! * **settle, sender's side**: what a sending node pays for the ACKs it
//!   gets, before and after settles were grouped, one after the other on
//!   fresh spools holding `PACKETS` packets: `LINKS` tasks, each a link
//!   to its own next hop, does what `link::Outbound::run` does with the
//!   spool: a window (64) of packets leased, then per ACK `Stored` read
//!   the settle (`Outbox::acked`) and a lease of the freed room
//!   (`Outbox::take`), until every packet is settled. *Before*
//!   (one transaction per ACK, as `Forwarder::acked` did): each settle is
//!   waited for, one at a time node-wide (the old code's transactions never
//!   shared a COMMIT). *After*: `Spool::settle_packets_later`, what
//!   `Forwarder::acked` does now. Reported: settle transactions per 1,000
//!   ACKs (the count of `pluto2_spool_settle_commit_seconds`), CPU of this
//!   process per ACK (link tasks and the spool's writer; the refills
//!   included, the same in both) and of the writer thread alone, and ACKs
//!   per second.
//! * **lease alone**: `Spool::lease_packets` of one packet (what
//!   `Outbox::take` asks for after each ACK), `LEASES` times (1,000) for
//!   a hop with 100 packets waiting and again with 10,000, all due (a
//!   backlog); zero-length leases, so the backlog stays the same.
//!   Reported: the writer thread's CPU and the wall time per lease.
//!
//! Everything is on 127.0.0.1 and bounded: a fixed number of packets per
//! run and a deadline on each wait. Under `cargo test` (no `--bench`
//! argument) one tiny run checks that the path works and prints no
//! figures worth quoting.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use pluto2::address::OnionName;
use pluto2::spool::Spool;
use pluto2::spool::custody::{Custody, CustodyOutcome, OutPacket, PacketKind};
use pluto2::wire::frame::{self, AckStatus, Frame, Hello, PROTOCOL_VERSION, Role};
use pluto2::wire::hello::{self, Side};
use pluto2::wire::packet::{self, RouteHop, WirePacket};
use pluto2::wire::pki::Directory;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use x25519_dalek::{PublicKey, StaticSecret};

mod support;
use common::{BIN, Daemon};
use support::{env_or, machine_ticks};

/// The node's per-link window (src/daemon/mixnet.rs).
const WINDOW: usize = 64;
/// Bound on one run's load phase.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
struct Settings {
    runs: usize,
    packets: usize,
    links: usize,
    /// Links of the node run (`NODE_LINKS`, default `LINKS`), each
    /// speaking as a listed node of its own: since the authenticated hello
    /// a newer link from one node replaces its older one, and a node
    /// unwraps one packet per previous hop at a time, so one link would
    /// measure one core, not the node.
    node_links: usize,
    /// Packets for the unwrap-alone measurement.
    unwrap_packets: usize,
    /// Packets waiting for one hop in the lease-alone measurement: few,
    /// many.
    lease_waiting: (usize, usize),
    /// Leases timed in the lease-alone measurement.
    leases: usize,
}

/// CPU ticks (utime + stime) per thread name, and for the whole process.
fn cpu_ticks(pid: u32) -> (HashMap<String, u64>, u64) {
    let parse = |text: &str| -> Option<(String, u64)> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let name = text[open + 1..close].to_string();
        let rest: Vec<&str> = text[close + 2..].split(' ').collect();
        // Fields 14 and 15 of stat; `rest` starts at field 3.
        let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
        Some((name, ticks))
    };
    let mut by_name = HashMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("stat"))
                && let Some((name, ticks)) = parse(&text)
            {
                *by_name.entry(name).or_insert(0) += ticks;
            }
        }
    }
    let total = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse(&t))
        .map_or(0, |(_, t)| t);
    (by_name, total)
}

fn ticks_per_sec() -> f64 {
    // USER_HZ is 100 on Linux for every architecture this runs on.
    100.0
}

fn export(onion: &OnionName, short: &str, data: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "-name",
            &onion.to_string(),
            "-short-name",
            short,
            "-data-dir",
        ])
        .arg(data)
        .arg("-export-node-info")
        .output()
        .expect("run pluto2 -export-node-info");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("node info is JSON")
}

/// The link port the node logged at start.
fn link_port(d: &Daemon) -> u16 {
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let port = d
            .log_text()
            .lines()
            .find_map(|l| l.split("links on ").nth(1).map(str::to_string))
            .and_then(|rest| rest.split([',', ' ']).next().map(str::to_string))
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port());
        if let Some(port) = port {
            return port;
        }
        assert!(Instant::now() < deadline, "no link port: {}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Builds `n` packets for `route` on two threads (the build is the entry's
/// cost, not measured here).
fn build_packets(n: usize, route: &[RouteHop]) -> Vec<WirePacket> {
    let half = n / 2;
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            (0..half)
                .map(|_| packet::build(&[7u8; 7_000], route).unwrap())
                .collect::<Vec<_>>()
        });
        let mut second: Vec<WirePacket> = (half..n)
            .map(|_| packet::build(&[7u8; 7_000], route).unwrap())
            .collect();
        let mut all = first.join().unwrap();
        all.append(&mut second);
        all
    })
}

struct NodeRun {
    rate: f64,
    secs: f64,
    /// CPU seconds per thread name of the node, during the load.
    threads: Vec<(String, f64)>,
    node_cpu: f64,
    generator_cpu: f64,
    /// Share of all CPUs busy during the load, whoever used them.
    machine_busy: f64,
    cpus: usize,
}

/// One link: HELLO, then `frames` with at most WINDOW unacknowledged;
/// returns how many ACK Stored came back. Waits on `go` after HELLO so all
/// links start together.
async fn one_link(
    port: u16,
    (hello, key): (Hello, Arc<SigningKey>),
    frames: Vec<Vec<u8>>,
    ready: Arc<Semaphore>,
    go: Arc<tokio::sync::Notify>,
) -> Result<usize, String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = stream.into_split();
    // A fresh nonce per link, as a node dials.
    let ours = Hello {
        nonce: rand::random(),
        ..hello
    };
    let mut out = Vec::new();
    Frame::Hello(ours).encode(&mut out);
    wr.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    // The node's HELLO and its proof (not checked: the bench measures the
    // node), then ours.
    let mut theirs = None;
    loop {
        if let Some((f, used)) = frame::decode(&buf).map_err(|e| e.to_string())? {
            buf.drain(..used);
            match (f, theirs) {
                (Frame::Hello(h), None) => theirs = Some(h),
                (Frame::Auth { .. }, Some(h)) => {
                    let mut out = Vec::new();
                    Frame::Auth {
                        signature: hello::prove(&key, Side::Dialler, &ours, &h),
                    }
                    .encode(&mut out);
                    wr.write_all(&out).await.map_err(|e| e.to_string())?;
                    break;
                }
                (f, _) => return Err(format!("expected HELLO and AUTH, got {f:?}")),
            }
            continue;
        }
        let n = rd.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("node closed the link after our HELLO".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let go_wait = go.notified();
    ready.add_permits(1);
    go_wait.await;
    let total = frames.len();
    let credits = Arc::new(Semaphore::new(WINDOW));
    let writer_credits = credits.clone();
    let writer = tokio::spawn(async move {
        for f in frames {
            writer_credits.acquire().await.unwrap().forget();
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        // Keep the write half open until the reader is done.
        std::future::pending::<()>().await;
    });
    let mut stored = 0;
    let mut acked = 0;
    while acked < total {
        while let Some((f, used)) = frame::decode(&buf).map_err(|e| e.to_string())? {
            buf.drain(..used);
            match f {
                Frame::Ack { status, .. } => {
                    acked += 1;
                    credits.add_permits(1);
                    if status == AckStatus::Stored {
                        stored += 1;
                    } else {
                        writer.abort();
                        return Err(format!("ACK {status:?}"));
                    }
                }
                Frame::Ping { .. } | Frame::Pong { .. } | Frame::Keys { .. } => {}
                other => return Err(format!("unexpected {other:?}")),
            }
        }
        if acked == total {
            break;
        }
        let n = rd.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            writer.abort();
            return Err(format!("node closed the link after {acked} ACKs"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    writer.abort();
    Ok(stored)
}

async fn node_run(s: &Settings) -> NodeRun {
    let dir = tempfile::tempdir().unwrap();
    // A, B, and one listed node per link: a node holds one link from each
    // peer (a newer link from the same node replaces the older one).
    let names: Vec<OnionName> = (0..2 + s.node_links)
        .map(|i| OnionName::from_seed(150 + i as u8))
        .collect();
    let entries: Vec<serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| export(n, &format!("b{i}"), &dir.path().join(format!("b{i}"))))
        .collect();
    // Production parameters except two hops (three nodes suffice); the
    // packets ask for no delay, so the hop delay does not matter here.
    let doc = serde_json::json!({"nodes": entries, "params": {"hops": 2}});
    let pki = dir.path().join("nodes.json");
    std::fs::write(&pki, doc.to_string()).unwrap();
    // The generator's view of the network: the third node's directory.
    let view = Directory::parse(&std::fs::read(&pki).unwrap(), &names[2]).unwrap();
    let node = |short: &str| {
        view.nodes()
            .iter()
            .find(|n| n.short_name == short)
            .unwrap()
            .clone()
    };
    let (a, b) = (node("b0"), node("b1"));
    let pki_arg = pki.to_str().unwrap().to_string();
    let name_a = names[0].to_string();
    let daemon = Daemon::start_in(
        &dir.path().join("b0"),
        &[
            "-name",
            &name_a,
            "-short-name",
            "b0",
            "-sphinx",
            "-pki-file",
            &pki_arg,
            "-node",
            "127.0.0.1:0",
            "-batch-window",
            "0",
        ],
    );
    let port = link_port(&daemon);
    // A's key for this epoch (default epoch length: a day), from its key
    // file as its bundle would carry it; B never runs, so any key does for
    // B's layer, which A does not open.
    let epoch = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400) as u32;
    let secret: [u8; 32] = std::fs::read(dir.path().join("b0").join(format!("mixkey-{epoch}")))
        .unwrap()
        .try_into()
        .unwrap();
    let keys = [
        PublicKey::from(&StaticSecret::from(secret)),
        PublicKey::from(&StaticSecret::from([7u8; 32])),
    ];
    let route: Vec<RouteHop> = [&a, &b]
        .iter()
        .zip(keys)
        .map(|(n, mix_key)| RouteHop {
            id: n.id,
            mix_key,
            delay: Duration::ZERO,
        })
        .collect();
    let packets = build_packets(s.packets, &route);

    // Link i speaks as node b{2+i}, proving it with that node's identity
    // key.
    let speaker = |i: usize| {
        let short = format!("b{}", 2 + i);
        let key: [u8; 32] = std::fs::read(dir.path().join(&short).join("identity.key"))
            .unwrap()
            .try_into()
            .unwrap();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            params_hash: view.params().hash(),
            role: Role::Node,
            identity: node(&short).id.0,
            nonce: [0; 32],
            clock_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        };
        (hello, Arc::new(SigningKey::from_bytes(&key)))
    };
    // Deal the packets out to the links, pre-encoded as PACKET frames.
    let mut per_link: Vec<Vec<Vec<u8>>> = vec![Vec::new(); s.node_links];
    for (i, p) in packets.into_iter().enumerate() {
        let mut f = Vec::with_capacity(frame::MAX_FRAME);
        Frame::Packet {
            seq: i as u64,
            epoch,
            packet: p,
        }
        .encode(&mut f);
        per_link[i % s.node_links].push(f);
    }
    let ready = Arc::new(Semaphore::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for (i, frames) in per_link.into_iter().enumerate() {
        tasks.push(tokio::spawn(one_link(
            port,
            speaker(i),
            frames,
            ready.clone(),
            go.clone(),
        )));
    }
    tokio::time::timeout(common::PATIENCE, ready.acquire_many(s.node_links as u32))
        .await
        .expect("every link said HELLO")
        .unwrap()
        .forget();

    let pid = daemon.child.id();
    let (threads_before, node_before) = cpu_ticks(pid);
    let (_, gen_before) = cpu_ticks(std::process::id());
    let (busy_before, all_before) = machine_ticks();
    let start = Instant::now();
    go.notify_waiters();
    let mut stored = 0;
    for t in tasks {
        let r = tokio::time::timeout(RUN_DEADLINE, t)
            .await
            .expect("the run finished within its deadline")
            .unwrap();
        match r {
            Ok(n) => stored += n,
            Err(e) => panic!("link failed: {e}\n{}", daemon.log_text()),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (threads_after, node_after) = cpu_ticks(pid);
    let (_, gen_after) = cpu_ticks(std::process::id());
    let (busy_after, all_after) = machine_ticks();
    assert_eq!(stored, s.packets, "every packet acknowledged Stored");
    let hz = ticks_per_sec();
    let mut threads: Vec<(String, f64)> = threads_after
        .iter()
        .map(|(name, after)| {
            let before = threads_before.get(name).copied().unwrap_or(0);
            (name.clone(), after.saturating_sub(before) as f64 / hz)
        })
        .filter(|(_, cpu)| *cpu > 0.0)
        .collect();
    threads.sort_by(|x, y| y.1.total_cmp(&x.1));
    drop(daemon);
    NodeRun {
        rate: stored as f64 / secs,
        secs,
        threads,
        node_cpu: (node_after - node_before) as f64 / hz,
        generator_cpu: (gen_after - gen_before) as f64 / hz,
        machine_busy: (busy_after - busy_before) as f64 / (all_after - all_before).max(1) as f64,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Packets per second through `packet::process` on this thread.
fn unwrap_rate(n: usize) -> f64 {
    let keys: Vec<StaticSecret> = (1..=2).map(|i| StaticSecret::from([i; 32])).collect();
    let route: Vec<RouteHop> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| RouteHop {
            id: packet::NodeId([i as u8 + 1; 32]),
            mix_key: PublicKey::from(k),
            delay: Duration::ZERO,
        })
        .collect();
    let packets = build_packets(n, &route);
    let start = Instant::now();
    for p in &packets {
        let (_, processed) = packet::process(p, &keys[0]);
        assert!(processed.is_ok());
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// What settling the ACKs of one batch of sent packets cost.
struct SettleRun {
    acks_per_sec: f64,
    /// Settle transactions per 1,000 ACKs.
    commits_per_1000: f64,
    /// CPU of this process (every thread) per ACK, µs.
    cpu_us: f64,
    /// CPU of the spool's writer thread per ACK, µs.
    writer_us: f64,
}

/// Settle transactions so far: the count of the spool's settle commit
/// histogram (`pluto2_spool_settle_commit_seconds`), read from a scrape.
fn settle_commits(spool: &Spool) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("settle", "", spool.commit_times().settle);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("settle_count "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the histogram's count")
}

/// A spool in a fresh temporary directory on the system clock, and the
/// time now in unix milliseconds.
fn fresh_spool() -> (tempfile::TempDir, Spool, pluto2::spool::SpoolCloser, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (spool, closer) = Spool::open(
        dir.path(),
        Duration::from_secs(24 * 3600),
        pluto2::time::system_clock(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    (dir, spool, closer, now)
}

/// Settles `packets` sent packets over `links` links, one transaction per
/// ACK (`grouped` false: the old forwarder) or handed to the writer's
/// groups (`grouped` true: the forwarder now).
async fn settle_run(packets: usize, links: usize, grouped: bool) -> SettleRun {
    use pluto2::spool::custody::PacketSettle;
    let (_dir, spool, closer, now) = fresh_spool();
    let bytes = vec![9u8; packet::PACKET_SIZE];
    for link in 0..links {
        let share = packets / links + usize::from(link < packets % links);
        let batch: Vec<OutPacket> = (0..share)
            .map(|_| OutPacket {
                next_hop: [link as u8 + 1; 32],
                epoch: 0,
                bytes: bytes.clone(),
                kind: PacketKind::Forward,
                release_at: now,
                deadline: now + 2 * 24 * 3600 * 1000,
            })
            .collect();
        for chunk in batch.chunks(500) {
            spool.queue_packets(chunk.to_vec()).await.unwrap();
        }
    }
    let commits_before = settle_commits(&spool);
    let (threads_before, cpu_before) = cpu_ticks(std::process::id());
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for link in 0..links {
        let (spool, one_at_a_time) = (spool.clone(), one_at_a_time.clone());
        tasks.push(tokio::spawn(async move {
            // As `link::Outbound::run` does: a window of packets out,
            // then per ACK frame read, `Outbox::acked` and a refill of the
            // free room (`Outbox::take`).
            let lease = |room: usize| {
                let spool = spool.clone();
                async move {
                    let batch = spool
                        .lease_packets([link as u8 + 1; 32], room, Duration::from_secs(120))
                        .await
                        .unwrap();
                    batch
                        .packets
                        .into_iter()
                        .map(|p| p.id)
                        .collect::<Vec<i64>>()
                }
            };
            let mut in_flight: std::collections::VecDeque<i64> = lease(WINDOW).await.into();
            let mut settled = 0;
            while let Some(id) = in_flight.pop_front() {
                let outcome = vec![(id, PacketSettle::Done)];
                if grouped {
                    spool.settle_packets_later(outcome).await;
                } else {
                    let _one = one_at_a_time.lock().await;
                    spool.settle_packets(outcome).await.unwrap();
                }
                settled += 1;
                in_flight.extend(lease(WINDOW - in_flight.len()).await);
            }
            settled
        }));
    }
    let mut settled = 0;
    for t in tasks {
        settled += tokio::time::timeout(RUN_DEADLINE, t)
            .await
            .expect("settling finished within its deadline")
            .unwrap();
    }
    // Every settle handed over is committed past this.
    spool.ping().await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let (threads_after, cpu_after) = cpu_ticks(std::process::id());
    let commits = settle_commits(&spool) - commits_before;
    assert_eq!(settled, packets, "every packet settled");
    let writer = |m: &HashMap<String, u64>| m.get("spool-committer").copied().unwrap_or(0);
    let hz = ticks_per_sec();
    let per_ack = |ticks: u64| ticks as f64 / hz / packets as f64 * 1e6;
    let run = SettleRun {
        acks_per_sec: packets as f64 / secs,
        commits_per_1000: commits as f64 * 1000.0 / packets as f64,
        cpu_us: per_ack(cpu_after - cpu_before),
        writer_us: per_ack(writer(&threads_after).saturating_sub(writer(&threads_before))),
    };
    drop(spool);
    closer.closed().await;
    run
}

/// What one lease of due packets for a next hop costs, with `waiting`
/// packets held for that hop (all due: a backlog after the hop was down).
struct LeaseRun {
    /// CPU of the spool's writer thread per lease, µs.
    writer_us: f64,
    /// Wall time per lease, µs (a write transaction: its fsync included).
    wall_us: f64,
}

/// `leases` leases of one packet each for a hop holding `waiting` due
/// packets, as `Outbox::take` asks after each ACK. Leases of zero length,
/// so the leased packet is due again at once and the hop's backlog stays
/// at `waiting` throughout.
async fn lease_run(waiting: usize, leases: usize) -> LeaseRun {
    let (_dir, spool, closer, now) = fresh_spool();
    let bytes = vec![9u8; packet::PACKET_SIZE];
    let batch: Vec<OutPacket> = (0..waiting)
        .map(|i| OutPacket {
            next_hop: [1; 32],
            epoch: 0,
            bytes: bytes.clone(),
            kind: PacketKind::Forward,
            // Release times spread over the last minute, as a backlog's are.
            release_at: now - 60_000 + (i as u64 * 7_919) % 60_000,
            deadline: now + 2 * 24 * 3600 * 1000,
        })
        .collect();
    for chunk in batch.chunks(500) {
        spool.queue_packets(chunk.to_vec()).await.unwrap();
    }
    let writer = |m: &HashMap<String, u64>| m.get("spool-committer").copied().unwrap_or(0);
    let (threads_before, _) = cpu_ticks(std::process::id());
    let start = Instant::now();
    for _ in 0..leases {
        let got = spool
            .lease_packets([1; 32], 1, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.packets.len(), 1, "a packet is due");
    }
    let wall = start.elapsed().as_secs_f64();
    let (threads_after, _) = cpu_ticks(std::process::id());
    let ticks = writer(&threads_after).saturating_sub(writer(&threads_before));
    drop(spool);
    closer.closed().await;
    LeaseRun {
        writer_us: ticks as f64 / ticks_per_sec() / leases as f64 * 1e6,
        wall_us: wall / leases as f64 * 1e6,
    }
}

/// Custody commits per second from `tasks` concurrent callers.
async fn custody_rate(packets: usize, tasks: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (spool, closer) = Spool::open(
        dir.path(),
        Duration::from_secs(24 * 3600),
        pluto2::time::system_clock(),
    )
    .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let bytes = vec![9u8; packet::PACKET_SIZE];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (spool, next, bytes) = (spool.clone(), next.clone(), bytes.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= packets {
                    return;
                }
                let mut tag = [0u8; 32];
                tag[..8].copy_from_slice(&(i as u64).to_be_bytes());
                tag[8..16].copy_from_slice(&now.to_be_bytes());
                let outcome = spool
                    .custody(Custody::Forward {
                        tag,
                        epoch: 0,
                        from: [3; 32],
                        packet: OutPacket {
                            next_hop: [2; 32],
                            epoch: 0,
                            bytes: bytes.clone(),
                            kind: PacketKind::Forward,
                            release_at: now,
                            deadline: now + 2 * 24 * 3600 * 1000,
                        },
                    })
                    .await;
                assert_eq!(outcome, CustodyOutcome::Stored);
            }
        }));
    }
    for h in handles {
        tokio::time::timeout(RUN_DEADLINE, h)
            .await
            .expect("custody finished within its deadline")
            .unwrap();
    }
    let rate = packets as f64 / start.elapsed().as_secs_f64();
    drop(spool);
    closer.closed().await;
    rate
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let s = if bench {
        Settings {
            runs: env_or("RUNS", 5),
            packets: env_or("PACKETS", 8_000),
            links: env_or("LINKS", 4).max(1),
            node_links: env_or("NODE_LINKS", env_or("LINKS", 4)).max(1),
            unwrap_packets: 2_000,
            lease_waiting: (100, 10_000),
            leases: env_or("LEASES", 1_000),
        }
    } else {
        // `cargo test --all-targets`: one small run, to keep it compiling
        // and working, not to measure.
        Settings {
            runs: 1,
            packets: 100,
            links: 2,
            node_links: 2,
            unwrap_packets: 20,
            lease_waiting: (10, 100),
            leases: 10,
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "mixnet node: {} runs, {} packets over {} links (window {WINDOW}), pluto2 = {}",
        s.runs, s.packets, s.links, BIN
    );
    let (mut node, mut unwrap, mut custody) = (Vec::new(), Vec::new(), Vec::new());
    let (mut before, mut after, mut leases) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=s.runs {
        let r = rt.block_on(node_run(&s));
        let u = unwrap_rate(s.unwrap_packets);
        let c = rt.block_on(custody_rate(s.packets, WINDOW * s.links));
        let old = rt.block_on(settle_run(s.packets, s.links, false));
        let new = rt.block_on(settle_run(s.packets, s.links, true));
        println!(
            "       settle, sender's side, {} ACKs over {} links: one transaction per ACK {:.0} transactions/1,000 ACKs, {:.0} µs CPU/ACK (writer {:.0} µs), {:.0} ACKs/s; grouped {:.1} transactions/1,000 ACKs, {:.0} µs CPU/ACK (writer {:.0} µs), {:.0} ACKs/s",
            s.packets,
            s.links,
            old.commits_per_1000,
            old.cpu_us,
            old.writer_us,
            old.acks_per_sec,
            new.commits_per_1000,
            new.cpu_us,
            new.writer_us,
            new.acks_per_sec,
        );
        before.push(old);
        after.push(new);
        let (few, many) = (
            rt.block_on(lease_run(s.lease_waiting.0, s.leases)),
            rt.block_on(lease_run(s.lease_waiting.1, s.leases)),
        );
        println!(
            "       lease alone, {} leases of 1 packet: {} waiting for the hop {:.0} µs writer CPU/lease ({:.0} µs wall); {} waiting {:.0} µs writer CPU/lease ({:.0} µs wall)",
            s.leases,
            s.lease_waiting.0,
            few.writer_us,
            few.wall_us,
            s.lease_waiting.1,
            many.writer_us,
            many.wall_us,
        );
        leases.push((few, many));
        println!(
            "run {run}: node {:.0} packets/s ({} in {:.2} s; node CPU {:.2} s = {:.0} µs/packet, generator CPU {:.2} s, all {} CPUs {:.0} % busy, {:.2} CPU-s by others); unwrap alone {:.0}/s; custody alone {:.0}/s",
            r.rate,
            s.packets,
            r.secs,
            r.node_cpu,
            r.node_cpu / s.packets as f64 * 1e6,
            r.generator_cpu,
            r.cpus,
            r.machine_busy * 100.0,
            (r.machine_busy * r.cpus as f64 * r.secs - r.node_cpu - r.generator_cpu).max(0.0),
            u,
            c
        );
        // tokio's blocking threads (the unwrap) carry the workers' name
        // and may exit within a run, so only the committer is shown apart.
        let committer = r
            .threads
            .iter()
            .find(|(name, _)| name == "spool-committer")
            .map_or(0.0, |(_, cpu)| *cpu);
        println!(
            "       node CPU: spool-committer {committer:.2} s ({:.0} µs/packet, {:.0} % of the run), all other threads {:.2} s ({:.0} µs/packet)",
            committer / s.packets as f64 * 1e6,
            committer / r.secs * 100.0,
            r.node_cpu - committer,
            (r.node_cpu - committer) / s.packets as f64 * 1e6,
        );
        node.push(r.rate);
        unwrap.push(u);
        custody.push(c);
    }
    let (n, u, c) = (
        common::median(node),
        common::median(unwrap),
        common::median(custody),
    );
    println!(
        "medians: node {n:.0} packets/s; unwrap alone (one core) {u:.0}/s; custody alone {c:.0}/s; node / unwrap {:.2}, node / custody {:.2}",
        n / u,
        n / c
    );
    let median_of =
        |runs: &[SettleRun], f: fn(&SettleRun) -> f64| common::median(runs.iter().map(f).collect());
    for (name, runs) in [("one transaction per ACK", &before), ("grouped", &after)] {
        println!(
            "medians, settle ({name}): {:.1} transactions/1,000 ACKs, {:.0} µs CPU/ACK, writer {:.0} µs/ACK, {:.0} ACKs/s",
            median_of(runs, |r| r.commits_per_1000),
            median_of(runs, |r| r.cpu_us),
            median_of(runs, |r| r.writer_us),
            median_of(runs, |r| r.acks_per_sec),
        );
    }
    let lease_median =
        |f: fn(&(LeaseRun, LeaseRun)) -> f64| common::median(leases.iter().map(f).collect());
    println!(
        "medians, lease alone: {} waiting {:.0} µs writer CPU/lease ({:.0} µs wall); {} waiting {:.0} µs writer CPU/lease ({:.0} µs wall)",
        s.lease_waiting.0,
        lease_median(|r| r.0.writer_us),
        lease_median(|r| r.0.wall_us),
        s.lease_waiting.1,
        lease_median(|r| r.1.writer_us),
        lease_median(|r| r.1.wall_us),
    );
}
