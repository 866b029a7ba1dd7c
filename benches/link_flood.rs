//! What one flooding peer costs a node, and what everyone else sees
//! meanwhile: this tree's node beside an older release, in one run.
//!
//!     cargo bench --bench link_flood                       # this tree only
//!     OLD_BIN=/path/to/old/pluto2 cargo bench --bench link_flood
//!     OLD_BIN=… RUNS=3 SECS=10 cargo bench --bench link_flood
//!
//! (`scripts/bench-link-flood.sh` builds the pre-authentication release
//! 9e2de62 in a worktree of its own and runs this with it.)
//!
//! Each run, for each binary in turn (old, new, old, new, …, so both see
//! the same machine): three nodes are exported by that binary into a
//! fresh `nodes.json` (production parameters but two hops); only node A
//! runs, on 127.0.0.1 with a fresh data directory, its Tor port a dead end
//! (nothing leaves it: valid packets and mail stay queued). Then, on A's
//! `-node` port:
//!
//! * **probe link**, as listed node B: one valid packet (routed A → C)
//!   every 50 ms for the whole run; its latency is the time from writing
//!   the PACKET frame to reading its ACK (`Stored`).
//! * **SMTP probe**: every 200 ms a new session to A's SMTP port: EHLO,
//!   MAIL, RCPT, DATA of a 300-byte message; its latency is the time from
//!   connect to the `250` after the final dot.
//! * **flood link**, one at a time: on the old binary a stranger (a
//!   protocol-2 HELLO with the public parameter hash and a random
//!   identity, which that release served), on the new one listed node C
//!   (a protocol-3 HELLO, proven with C's identity key: the new node
//!   serves nobody else). It floods for `SECS` in each phase, on a fresh
//!   link per phase:
//!   - `packets`: damaged packets (a valid packet for A with one byte of
//!     its routing information flipped: the node does the key exchange,
//!     then the header MAC fails and it answers ACK `Rejected`), as fast
//!     as the node's window (64 unacknowledged) allows;
//!   - `control`: GETKEYS and PING frames, alternately, as fast as the
//!     socket takes them;
//!   - `both`: the two at once on the one link.
//!
//!   A `quiet` phase (`SECS / 2`, no flood) comes first, for the
//!   probes' baseline, after a warm-up of 3 s while the node settles;
//!   a second passes between phases so one phase's stragglers do not
//!   count in the next.
//!
//! Per phase it reports A's CPU (utime + stime from `/proc/PID/stat`, and
//! the busiest threads and their context switches from `/proc/PID/task`),
//! the flood's rejected packets and its control frames written and
//! answered per second, the probe link's and SMTP's latency (median,
//! p99), the generator's own CPU and how busy the machine was. Alone,
//! once: the cost of opening a damaged packet and a valid one
//! (`wire::packet::process` on one thread).
//!
//! Bounded: a fixed time per phase, a deadline on every wait, loopback
//! only. Under `cargo test` (no `--bench`) one short run of this tree
//! checks the path.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use pluto2::wire::frame::{self, AckStatus, Frame, Hello, PROTOCOL_VERSION, Role};
use pluto2::wire::hello::{self, Side};
use pluto2::wire::packet::{self, RouteHop, WirePacket};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;
use x25519_dalek::{PublicKey, StaticSecret};

use support::{BIN, HZ, Network, cpu_ticks, env_or, machine_ticks, median, quantile};

/// The node's per-link window (src/link.rs `LinkConfig::new`; the same in
/// the old release).
const WINDOW: usize = 64;
/// Where the packet starts in a PACKET frame (type, sequence, epoch).
const PACKET_AT: usize = 1 + 8 + 4;
/// A byte of the routing information (after the 32-byte group element and
/// the 16-byte MAC over it).
const ROUTING_BYTE: usize = 32 + 16 + 12;
/// Bound on any single wait (a handshake, a reply, a write).
const PATIENCE: Duration = Duration::from_secs(30);
const PROBE_EVERY: Duration = Duration::from_millis(50);
const SMTP_EVERY: Duration = Duration::from_millis(200);
/// Control frames written at once by the flood.
const CONTROL_BATCH: u64 = 64;
/// Time between phases, not measured.
const SETTLE: Duration = Duration::from_secs(1);
/// Time before the first phase, not measured: the probes run while the
/// node finishes starting (its first commits, key files, first links).
const WARM_UP: Duration = Duration::from_secs(3);

/// Which link protocol the binary under test speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// 9e2de62 and before: HELLO (version, params hash, identity, clock)
    /// each way, nothing proven.
    V2,
    /// This tree: HELLO with role and nonce, then AUTH each way.
    V3,
}

/// Who the generator says it is on a link.
#[derive(Clone)]
struct Speaker {
    identity: [u8; 32],
    key: Arc<SigningKey>,
}

/// Opens a link to the node on `port` as `who` and completes the
/// handshake; returns the halves and any bytes read past it.
async fn open_link(
    proto: Proto,
    port: u16,
    params_hash: [u8; 32],
    who: &Speaker,
) -> Result<(OwnedReadHalf, OwnedWriteHalf, Vec<u8>), String> {
    let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = Vec::new();
    match proto {
        Proto::V2 => {
            // Written by hand: this tree's codec speaks version 3 only.
            let mut hello = vec![1u8];
            hello.extend_from_slice(&2u16.to_be_bytes());
            hello.extend_from_slice(&params_hash);
            hello.extend_from_slice(&who.identity);
            hello.extend_from_slice(&support::unix_secs().to_be_bytes());
            wr.write_all(&hello).await.map_err(|e| e.to_string())?;
            read_at_least(&mut rd, &mut buf, hello.len()).await?;
            if buf[..3] != [1, 0, 2] {
                return Err(format!("expected a version-2 HELLO, got {:?}", &buf[..3]));
            }
            buf.drain(..hello.len());
        }
        Proto::V3 => {
            let ours = Hello {
                version: PROTOCOL_VERSION,
                params_hash,
                role: Role::Node,
                identity: who.identity,
                nonce: rand::random(),
                clock_secs: support::unix_secs(),
            };
            let mut out = Vec::new();
            Frame::Hello(ours).encode(&mut out);
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
            let Frame::Hello(theirs) = read_frame(&mut rd, &mut buf).await? else {
                return Err("expected the node's HELLO".into());
            };
            let Frame::Auth { .. } = read_frame(&mut rd, &mut buf).await? else {
                return Err("expected the node's AUTH".into());
            };
            out.clear();
            Frame::Auth {
                signature: hello::prove(&who.key, Side::Dialler, &ours, &theirs),
            }
            .encode(&mut out);
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
        }
    }
    Ok((rd, wr, buf))
}

async fn read_at_least(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>, n: usize) -> Result<(), String> {
    let mut chunk = vec![0u8; 64 * 1024];
    while buf.len() < n {
        let got = tokio::time::timeout(PATIENCE, rd.read(&mut chunk))
            .await
            .map_err(|_| "read timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if got == 0 {
            return Err("the node closed the link".into());
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(())
}

async fn read_frame(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Result<Frame, String> {
    loop {
        if let Some((f, used)) = frame::decode(buf).map_err(|e| e.to_string())? {
            buf.drain(..used);
            return Ok(f);
        }
        let want = buf.len() + 1;
        read_at_least(rd, buf, want).await?;
    }
}

fn packet_frame(seq: u64, epoch: u32, packet: WirePacket) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame::MAX_FRAME);
    Frame::Packet { seq, epoch, packet }.encode(&mut f);
    f
}

/// What the probes saw, by phase.
#[derive(Default)]
struct Samples {
    /// (phase, latency ms) of the probe link's packets.
    link: Vec<(usize, f64)>,
    /// (phase, latency ms) of SMTP sessions.
    smtp: Vec<(usize, f64)>,
    /// Probe-link ACKs other than `Stored`, and failed SMTP sessions.
    link_failures: Vec<String>,
    smtp_failures: Vec<String>,
}

/// The phase now, shared with the probes (index into the phase list;
/// `usize::MAX` between phases, when samples are not kept).
type PhaseNow = Arc<std::sync::atomic::AtomicUsize>;
const BETWEEN: usize = usize::MAX;

/// The probe link: one valid packet every `PROBE_EVERY` until `stop`.
async fn probe_link(
    (proto, port, params_hash, who): (Proto, u16, [u8; 32], Speaker),
    packets: Vec<Vec<u8>>,
    phase: PhaseNow,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
) -> Result<(), String> {
    let (mut rd, mut wr, mut buf) = open_link(proto, port, params_hash, &who).await?;
    let sent: Arc<Mutex<HashMap<u64, (Instant, usize)>>> = Default::default();
    let pending = sent.clone();
    let reader_samples = samples.clone();
    let reader = tokio::spawn(async move {
        loop {
            let Ok(f) = read_frame(&mut rd, &mut buf).await else {
                return;
            };
            if let Frame::Ack { seq, status } = f
                && let Some((at, phase)) = pending.lock().unwrap().remove(&seq)
            {
                let mut s = reader_samples.lock().unwrap();
                if status != AckStatus::Stored {
                    s.link_failures.push(format!("{status:?}"));
                } else if phase != BETWEEN {
                    s.link.push((phase, at.elapsed().as_secs_f64() * 1e3));
                }
            }
        }
    });
    let mut tick = tokio::time::interval(PROBE_EVERY);
    for (seq, f) in packets.into_iter().enumerate() {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        sent.lock()
            .unwrap()
            .insert(seq as u64, (Instant::now(), phase.load(Ordering::Relaxed)));
        tokio::time::timeout(PATIENCE, wr.write_all(&f))
            .await
            .map_err(|_| "probe write timed out".to_string())?
            .map_err(|e| e.to_string())?;
    }
    // The last ACKs.
    let deadline = Instant::now() + PATIENCE;
    while !sent.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    let lost = sent.lock().unwrap().len();
    if lost > 0 {
        samples
            .lock()
            .unwrap()
            .link_failures
            .push(format!("{lost} without ACK"));
    }
    Ok(())
}

/// Reads one SMTP reply (all its lines); returns its code.
async fn reply(rd: &mut BufReader<OwnedReadHalf>) -> Result<u16, String> {
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(PATIENCE, rd.read_line(&mut line))
            .await
            .map_err(|_| "SMTP reply timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("SMTP session closed".into());
        }
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad reply {line:?}"));
        }
    }
}

/// One SMTP session handing in one small message; the time to its 250.
async fn smtp_once(addr: std::net::SocketAddr, rcpt: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let body = format!("Subject: probe\r\n\r\n{}\r\n.\r\n", "x".repeat(280));
    let steps: [(String, u16); 5] = [
        (String::new(), 220),
        ("EHLO probe.example\r\n".into(), 250),
        ("MAIL FROM:<a@b.example>\r\n".into(), 250),
        (format!("RCPT TO:<{rcpt}>\r\n"), 250),
        ("DATA\r\n".into(), 354),
    ];
    for (command, want) in steps.iter().chain([(body, 250)].iter()) {
        wr.write_all(command.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let code = reply(&mut rd).await?;
        if code != *want {
            return Err(format!("{} answered {code}", command.trim_end()));
        }
    }
    let took = start.elapsed();
    let _ = wr.write_all(b"QUIT\r\n").await;
    Ok(took)
}

async fn smtp_probe(
    addr: std::net::SocketAddr,
    rcpt: String,
    phase: PhaseNow,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
) {
    let mut tick = tokio::time::interval(SMTP_EVERY);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let at = phase.load(Ordering::Relaxed);
        let r = smtp_once(addr, &rcpt).await;
        let mut s = samples.lock().unwrap();
        match r {
            Ok(d) if at != BETWEEN && phase.load(Ordering::Relaxed) == at => {
                s.smtp.push((at, d.as_secs_f64() * 1e3))
            }
            Ok(_) => {}
            Err(e) => s.smtp_failures.push(e),
        }
    }
}

/// What a flood link counted.
#[derive(Default)]
struct FloodCounts {
    rejected: AtomicU64,
    other_acks: AtomicU64,
    /// PONG and KEYS read back (a node drops answers to a peer that
    /// sends faster than it reads them, so this is what it wrote, not
    /// what it read).
    answers: AtomicU64,
    /// Control frames handed to the socket: what the node read, less what
    /// waits in the socket buffers (a few MB, so a bound that holds for
    /// a node reading at its own pace, not for one reading slowly).
    control_sent: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Phase {
    name: &'static str,
    packets: bool,
    control: bool,
}

const PHASES: [Phase; 4] = [
    Phase {
        name: "quiet",
        packets: false,
        control: false,
    },
    Phase {
        name: "packets",
        packets: true,
        control: false,
    },
    Phase {
        name: "control",
        packets: false,
        control: true,
    },
    Phase {
        name: "both",
        packets: true,
        control: true,
    },
];

/// Floods for `secs` on a fresh link as `who`; returns what came back.
async fn flood(
    (proto, port, params_hash, who): (Proto, u16, [u8; 32], Speaker),
    phase: Phase,
    damaged: Arc<Vec<u8>>,
    control: Arc<Vec<u8>>,
    secs: Duration,
) -> Result<Arc<FloodCounts>, String> {
    let counts = Arc::new(FloodCounts::default());
    let (mut rd, wr, mut buf) = open_link(proto, port, params_hash, &who).await?;
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let credits = Arc::new(Semaphore::new(WINDOW));
    let mut tasks = tokio::task::JoinSet::new();
    let (c, returned) = (counts.clone(), credits.clone());
    tasks.spawn(async move {
        while let Ok(f) = read_frame(&mut rd, &mut buf).await {
            match f {
                Frame::Ack { status, .. } => {
                    returned.add_permits(1);
                    let n = if status == AckStatus::Rejected {
                        &c.rejected
                    } else {
                        &c.other_acks
                    };
                    n.fetch_add(1, Ordering::Relaxed);
                }
                Frame::Pong { .. } | Frame::Keys { .. } => {
                    c.answers.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    if phase.packets {
        let wr = wr.clone();
        tasks.spawn(async move {
            let mut f = damaged.to_vec();
            for seq in 0u64.. {
                let Ok(permit) = credits.acquire().await else {
                    return;
                };
                permit.forget();
                f[1..9].copy_from_slice(&seq.to_be_bytes());
                if wr.lock().await.write_all(&f).await.is_err() {
                    return;
                }
            }
        });
    }
    if phase.control {
        let c = counts.clone();
        tasks.spawn(async move {
            loop {
                if wr.lock().await.write_all(&control).await.is_err() {
                    return;
                }
                c.control_sent.fetch_add(CONTROL_BATCH, Ordering::Relaxed);
                // Lets the packet writer take its turn on the socket.
                tokio::task::yield_now().await;
            }
        });
    }
    tokio::time::sleep(secs).await;
    // Dropping the tasks closes the link; on the new node a later link
    // from the same peer would replace it anyway.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(counts)
}

struct PhaseResult {
    node_cpu: f64,
    threads: Vec<(String, f64)>,
    generator_cpu: f64,
    machine_busy: f64,
    secs: f64,
    rejected: u64,
    other_acks: u64,
    answers: u64,
    control_sent: u64,
    /// The node's context switches in the phase.
    switches: u64,
    load: f64,
}

struct BinaryRun {
    phases: Vec<PhaseResult>,
    samples: Samples,
}

/// One run of one binary through every phase.
async fn binary_run(bin: &str, proto: Proto, secs: Duration, seed: u8) -> BinaryRun {
    let net = Network::export(bin, 3, seed);
    let node = net.start(bin, 0, &[]);
    let epoch = support::epoch_now();
    let (a, c) = (net.node(0), net.node(2));
    let params_hash = net.view.params().hash();
    // A's key for this epoch; C never runs, so any key does for its layer.
    let hop = |id, mix_key| RouteHop {
        id,
        mix_key,
        delay: Duration::ZERO,
    };
    let route = [
        hop(a.id, net.mix_key(0, epoch)),
        hop(c.id, PublicKey::from(&StaticSecret::from([7u8; 32]))),
    ];
    let total = secs.as_secs_f64() * (PHASES.len() as f64 - 0.5)
        + SETTLE.as_secs_f64() * PHASES.len() as f64
        + WARM_UP.as_secs_f64();
    let probes = (total / PROBE_EVERY.as_secs_f64()) as usize + 40;
    let valid: Vec<Vec<u8>> = (0..probes)
        .map(|i| {
            let p = packet::build(&[7u8; 1_000], &route).unwrap();
            packet_frame(i as u64, epoch, p)
        })
        .collect();
    let mut damaged = packet_frame(0, epoch, packet::build(&[7u8; 1_000], &route).unwrap());
    damaged[PACKET_AT + ROUTING_BYTE] ^= 0x01;
    let mut control = Vec::new();
    for i in 0..CONTROL_BATCH {
        if i % 2 == 0 {
            Frame::GetKeys { subject: a.id.0 }.encode(&mut control);
        } else {
            Frame::Ping {
                nonce: i,
                subject: a.id.0,
                epoch,
            }
            .encode(&mut control);
        }
    }
    let (damaged, control) = (Arc::new(damaged), Arc::new(control));
    let as_node = |i: usize| Speaker {
        identity: net.node(i).id.0,
        key: Arc::new(net.identity_key(i)),
    };
    let flooder = match proto {
        // The old release served anyone with the parameter hash.
        Proto::V2 => Speaker {
            identity: rand::random(),
            key: Arc::new(SigningKey::from_bytes(&rand::random())),
        },
        Proto::V3 => as_node(2),
    };
    let link = |who: Speaker| (proto, node.link_port, params_hash, who);

    let phase: PhaseNow = Arc::new(BETWEEN.into());
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let probe = tokio::spawn(probe_link(
        link(as_node(1)),
        valid,
        phase.clone(),
        stop.clone(),
        samples.clone(),
    ));
    let smtp = tokio::spawn(smtp_probe(
        node.smtp,
        format!("someone@{}", net.names[1]),
        phase.clone(),
        stop.clone(),
        samples.clone(),
    ));
    tokio::time::sleep(WARM_UP).await;
    let mut results = Vec::new();
    for (i, p) in PHASES.iter().enumerate() {
        tokio::time::sleep(SETTLE).await;
        let length = if p.packets || p.control {
            secs
        } else {
            secs / 2
        };
        let (node_before, threads_before) = cpu_ticks(node.pid());
        let switches_before = support::context_switches(node.pid());
        let (gen_before, _) = cpu_ticks(std::process::id());
        let (busy_before, all_before) = machine_ticks();
        let start = Instant::now();
        phase.store(i, Ordering::Relaxed);
        let counts = if p.packets || p.control {
            flood(
                link(flooder.clone()),
                *p,
                damaged.clone(),
                control.clone(),
                length,
            )
            .await
            .unwrap_or_else(|e| panic!("flood link: {e}\n{}", node.log_text()))
        } else {
            tokio::time::sleep(length).await;
            Arc::default()
        };
        phase.store(BETWEEN, Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        let (node_after, threads_after) = cpu_ticks(node.pid());
        let switches = support::context_switches(node.pid()).saturating_sub(switches_before);
        let (gen_after, _) = cpu_ticks(std::process::id());
        let (busy_after, all_after) = machine_ticks();
        let mut threads: Vec<(String, f64)> = threads_after
            .iter()
            .map(|(name, after)| {
                let before = threads_before
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0, |(_, t)| *t);
                (name.clone(), after.saturating_sub(before) as f64 / HZ)
            })
            .filter(|(_, cpu)| *cpu > 0.0)
            .collect();
        threads.sort_by(|x, y| y.1.total_cmp(&x.1));
        results.push(PhaseResult {
            node_cpu: node_after.saturating_sub(node_before) as f64 / HZ,
            threads,
            generator_cpu: gen_after.saturating_sub(gen_before) as f64 / HZ,
            machine_busy: (busy_after - busy_before) as f64
                / (all_after - all_before).max(1) as f64,
            secs,
            rejected: counts.rejected.load(Ordering::Relaxed),
            other_acks: counts.other_acks.load(Ordering::Relaxed),
            answers: counts.answers.load(Ordering::Relaxed),
            control_sent: counts.control_sent.load(Ordering::Relaxed),
            switches,
            load: support::load_average(),
        });
    }
    stop.store(true, Ordering::Relaxed);
    match tokio::time::timeout(2 * PATIENCE, probe).await {
        Ok(Ok(Ok(()))) => {}
        r => panic!("probe link: {r:?}\n{}", node.log_text()),
    }
    tokio::time::timeout(2 * PATIENCE, smtp)
        .await
        .expect("the SMTP probe stops")
        .unwrap();
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    BinaryRun {
        phases: results,
        samples,
    }
}

/// `packet::process` per second on this thread over `n` packets for a
/// node holding `key`, damaged or not.
fn opening_rate(n: usize, damage: bool) -> f64 {
    let key = StaticSecret::from([3u8; 32]);
    let route = [
        RouteHop {
            id: packet::NodeId([1; 32]),
            mix_key: PublicKey::from(&key),
            delay: Duration::ZERO,
        },
        RouteHop {
            id: packet::NodeId([2; 32]),
            mix_key: PublicKey::from(&StaticSecret::from([4u8; 32])),
            delay: Duration::ZERO,
        },
    ];
    let packets: Vec<WirePacket> = (0..n)
        .map(|_| {
            let p = packet::build(&[7u8; 1_000], &route).unwrap();
            let mut bytes = p.as_bytes().to_vec();
            if damage {
                bytes[ROUTING_BYTE] ^= 0x01;
            }
            WirePacket::from_slice(&bytes).unwrap()
        })
        .collect();
    let start = Instant::now();
    for p in &packets {
        let (_, r) = packet::process(p, &key);
        assert_eq!(r.is_ok(), !damage);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// One binary's figures for one phase over all runs: per run, the node's
/// CPU %, the flood's rejected packets/s, control frames written/s and
/// answers/s; the probes' latencies pooled.
#[derive(Default)]
struct Tally {
    cpu: Vec<f64>,
    rejected: Vec<f64>,
    answers: Vec<f64>,
    control_sent: Vec<f64>,
    link: Vec<f64>,
    smtp: Vec<f64>,
}

fn ms(xs: &[f64]) -> String {
    format!(
        "{:.1}/{:.1} ms (n={})",
        median(xs),
        quantile(xs, 0.99),
        xs.len()
    )
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let old = std::env::var("OLD_BIN").ok().filter(|_| bench);
    let (runs, secs) = if bench {
        (
            env_or("RUNS", 3),
            Duration::from_secs(env_or("SECS", 10) as u64),
        )
    } else {
        (1, Duration::from_secs(1))
    };
    let mut binaries: Vec<(&str, &str, Proto)> = Vec::new();
    if let Some(old) = &old {
        binaries.push(("old", old.as_str(), Proto::V2));
    }
    binaries.push(("new", BIN, Proto::V3));
    let opening = if bench { 2_000 } else { 20 };
    let (valid, damaged) = (opening_rate(opening, false), opening_rate(opening, true));
    println!(
        "link flood: {runs} runs of {:?} per flood phase, binaries {:?}; opening a packet on one thread: valid {valid:.0}/s ({:.0} µs), damaged {damaged:.0}/s ({:.0} µs); load average {:.2}",
        secs,
        binaries.iter().map(|b| b.1).collect::<Vec<_>>(),
        1e6 / valid,
        1e6 / damaged,
        support::load_average(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut table: HashMap<(&str, usize), Tally> = HashMap::new();
    for run in 1..=runs {
        for (label, bin, proto) in &binaries {
            let r = rt.block_on(binary_run(bin, *proto, secs, 130 + run as u8 * 4));
            for (i, (p, res)) in PHASES.iter().zip(&r.phases).enumerate() {
                let link: Vec<f64> = r
                    .samples
                    .link
                    .iter()
                    .filter(|(ph, _)| *ph == i)
                    .map(|(_, v)| *v)
                    .collect();
                let smtp: Vec<f64> = r
                    .samples
                    .smtp
                    .iter()
                    .filter(|(ph, _)| *ph == i)
                    .map(|(_, v)| *v)
                    .collect();
                let threads: Vec<String> = res
                    .threads
                    .iter()
                    .take(3)
                    .map(|(n, c)| format!("{n} {:.0} %", c / res.secs * 100.0))
                    .collect();
                println!(
                    "run {run} {label} {:<8} node CPU {:>4.0} % [{}], {:.0} context switches/s; flood rejected {:>6.0}/s (other ACKs {}), control written {:>7.0}/s, answered {:>6.0}/s; probe link {}; SMTP {}; generator {:.0} %, machine {:.0} % busy, load {:.2}",
                    p.name,
                    res.node_cpu / res.secs * 100.0,
                    threads.join(", "),
                    res.switches as f64 / res.secs,
                    res.rejected as f64 / res.secs,
                    res.other_acks,
                    res.control_sent as f64 / res.secs,
                    res.answers as f64 / res.secs,
                    ms(&link),
                    ms(&smtp),
                    res.generator_cpu / res.secs * 100.0,
                    res.machine_busy * 100.0,
                    res.load,
                );
                let t = table.entry((*label, i)).or_default();
                t.cpu.push(res.node_cpu / res.secs * 100.0);
                t.rejected.push(res.rejected as f64 / res.secs);
                t.answers.push(res.answers as f64 / res.secs);
                t.control_sent.push(res.control_sent as f64 / res.secs);
                t.link.extend(link);
                t.smtp.extend(smtp);
            }
            for f in r.samples.link_failures.iter().take(3) {
                println!("    probe link failure: {f}");
            }
            for f in r.samples.smtp_failures.iter().take(3) {
                println!("    SMTP failure: {f}");
            }
            assert!(
                !bench
                    || (r.samples.link_failures.is_empty() && r.samples.smtp_failures.is_empty()),
                "probes failed"
            );
        }
    }
    println!("medians over runs (CPU, rates) and over all samples (latency median/p99):");
    for (i, p) in PHASES.iter().enumerate() {
        for (label, _, _) in &binaries {
            let Tally {
                cpu,
                rejected,
                answers,
                control_sent,
                link,
                smtp,
            } = &table[&(*label, i)];
            println!(
                "{:<8} {label}: node CPU {:>4.0} %, flood rejected {:>6.0}/s, control written {:>7.0}/s, answered {:>6.0}/s, probe link {}, SMTP {}",
                p.name,
                median(cpu),
                median(rejected),
                median(control_sent),
                median(answers),
                ms(link),
                ms(smtp),
            );
        }
    }
}
