//! The cost of the authenticated link hello (link protocol 3), on each
//! side, beside the ed25519 operations it is made of; then handshakes per
//! second against a real node.
//!
//!     cargo bench --bench link_hello
//!     HANDSHAKES=3000 CONCURRENCY=4 RUNS=3 cargo bench --bench link_hello
//!
//! * **criterion** (`hello/*`, `ed25519/*`): what each side computes once
//!   the bytes are in: `hello/listener` is the listener's proof
//!   (`wire::hello::prove` as `Listener`) and its check of the dialler's
//!   (`check` as `Dialler`); `hello/dialler` is the dialler's check of the
//!   listener's proof and its own. The reference beside them is one raw
//!   `sign` and one `verify_strict` (what `check` uses) of a message as
//!   long as the signed one: the handshake should cost about one of each
//!   per side.
//! * **node**: per run, `1 + CONCURRENCY` nodes are exported into a fresh
//!   `nodes.json` and only the first (A) is started, a release
//!   `pluto2 -sphinx` on 127.0.0.1. `CONCURRENCY` tasks each speak as
//!   one of the other listed nodes (identity key read from its data
//!   directory, as a node would sign), so no link replaces another's. Each
//!   loops: connect to A's `-node` port, HELLO, read A's HELLO and AUTH,
//!   check that A signed (the dialler's check), send AUTH and one PING,
//!   wait for the PONG (A serves nothing before it verified, so the PONG
//!   says the handshake completed), close. `HANDSHAKES` in all; a run
//!   fails past its deadline. Reported: handshakes per second, A's CPU
//!   per handshake (utime + stime of the whole process), the generator's
//!   own CPU, and how busy the machine was.
//!
//! Under `cargo test` (no `--bench`) criterion runs each function once
//! and the node part makes a few handshakes: a check that the path
//! works, not a measurement.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use pluto2::wire::frame::{self, Frame, Hello, PROTOCOL_VERSION, Role};
use pluto2::wire::hello::{self, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{BIN, HZ, Network, cpu_ticks, env_or, machine_ticks};

/// Bound on one run's handshakes.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn a_hello(identity: u8) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        params_hash: [9; 32],
        role: Role::Node,
        identity: [identity; 32],
        nonce: rand::random(),
        clock_secs: support::unix_secs(),
    }
}

fn micro(c: &mut Criterion) {
    let (dialler_key, listener_key) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    let (dialler_public, listener_public) =
        (dialler_key.verifying_key(), listener_key.verifying_key());
    let (d, l) = (a_hello(1), a_hello(2));
    // What each side receives from the other, made once.
    let from_dialler = hello::prove(&dialler_key, Side::Dialler, &d, &l);
    let from_listener = hello::prove(&listener_key, Side::Listener, &d, &l);

    let mut group = c.benchmark_group("hello");
    group.bench_function("listener", |b| {
        b.iter(|| {
            let ours = hello::prove(&listener_key, Side::Listener, &d, &l);
            hello::check(&dialler_public, Side::Dialler, &d, &l, &from_dialler).unwrap();
            ours
        })
    });
    group.bench_function("dialler", |b| {
        b.iter(|| {
            hello::check(&listener_public, Side::Listener, &d, &l, &from_listener).unwrap();
            hello::prove(&dialler_key, Side::Dialler, &d, &l)
        })
    });
    group.finish();

    // The reference: one signature and one strict verification of a
    // message as long as the one a side signs.
    let message = hello::signed_bytes(Side::Listener, &d, &l);
    let signature: Signature = listener_key.sign(&message);
    let mut group = c.benchmark_group("ed25519");
    group.bench_function("sign", |b| b.iter(|| listener_key.sign(&message)));
    group.bench_function("verify_strict", |b| {
        b.iter(|| listener_public.verify_strict(&message, &signature).unwrap())
    });
    group.finish();
}

/// What a dialler needs to link to A as one listed node.
#[derive(Clone)]
struct Dialler {
    port: u16,
    params_hash: [u8; 32],
    me: [u8; 32],
    key: Arc<SigningKey>,
    node: [u8; 32],
    node_key: VerifyingKey,
}

/// Reads frames from `stream` into `buf` until one is whole.
async fn next_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Frame, String> {
    loop {
        if let Some((f, used)) = frame::decode(buf).map_err(|e| e.to_string())? {
            buf.drain(..used);
            return Ok(f);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the node closed the link".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One handshake as a node dials (plus a PING to see it served); returns
/// the time from connect to PONG.
async fn handshake(d: &Dialler) -> Result<Duration, String> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", d.port))
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let ours = Hello {
        version: PROTOCOL_VERSION,
        params_hash: d.params_hash,
        role: Role::Node,
        identity: d.me,
        nonce: rand::random(),
        clock_secs: support::unix_secs(),
    };
    let mut out = Vec::new();
    Frame::Hello(ours).encode(&mut out);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let Frame::Hello(theirs) = next_frame(&mut stream, &mut buf).await? else {
        return Err("expected the node's HELLO".into());
    };
    if theirs.identity != d.node {
        return Err("HELLO from another node".into());
    }
    let Frame::Auth { signature } = next_frame(&mut stream, &mut buf).await? else {
        return Err("expected the node's AUTH".into());
    };
    hello::check(&d.node_key, Side::Listener, &ours, &theirs, &signature)
        .map_err(|e| e.to_string())?;
    out.clear();
    Frame::Auth {
        signature: hello::prove(&d.key, Side::Dialler, &ours, &theirs),
    }
    .encode(&mut out);
    Frame::Ping {
        nonce: 1,
        subject: d.node,
        epoch: support::epoch_now(),
    }
    .encode(&mut out);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    match next_frame(&mut stream, &mut buf).await? {
        Frame::Pong { nonce: 1, .. } => Ok(start.elapsed()),
        f => Err(format!("expected PONG, got {f:?}")),
    }
}

struct NodeRun {
    rate: f64,
    secs: f64,
    node_cpu: f64,
    generator_cpu: f64,
    machine_busy: f64,
    latencies_ms: Vec<f64>,
}

async fn node_run(handshakes: usize, concurrency: usize) -> NodeRun {
    let net = Network::export(BIN, 1 + concurrency, 120);
    let node = net.start(BIN, 0, &[]);
    let a = net.node(0);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let (node_before, _) = cpu_ticks(node.pid());
    let (gen_before, _) = cpu_ticks(std::process::id());
    let (busy_before, all_before) = machine_ticks();
    let start = Instant::now();
    for i in 1..=concurrency {
        let d = Dialler {
            port: node.link_port,
            params_hash: net.view.params().hash(),
            me: net.node(i).id.0,
            key: Arc::new(net.identity_key(i)),
            node: a.id.0,
            node_key: a.identity,
        };
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < handshakes {
                latencies.push(handshake(&d).await?.as_secs_f64() * 1e3);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies_ms = Vec::new();
    for t in tasks {
        match tokio::time::timeout(RUN_DEADLINE, t).await {
            Ok(Ok(Ok(l))) => latencies_ms.extend(l),
            Ok(Ok(Err(e))) => panic!("handshake failed: {e}\n{}", node.log_text()),
            r => panic!("handshakes did not finish: {r:?}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (node_after, _) = cpu_ticks(node.pid());
    let (gen_after, _) = cpu_ticks(std::process::id());
    let (busy_after, all_after) = machine_ticks();
    assert_eq!(latencies_ms.len(), handshakes);
    NodeRun {
        rate: handshakes as f64 / secs,
        secs,
        node_cpu: (node_after - node_before) as f64 / HZ,
        generator_cpu: (gen_after - gen_before) as f64 / HZ,
        machine_busy: (busy_after - busy_before) as f64 / (all_after - all_before).max(1) as f64,
        latencies_ms,
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    micro(&mut c);
    c.final_summary();

    let (runs, handshakes, concurrency) = if bench {
        (
            env_or("RUNS", 3),
            env_or("HANDSHAKES", 3_000),
            env_or("CONCURRENCY", 4).max(1),
        )
    } else {
        (1, 8, 2)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "node handshakes: {runs} runs of {handshakes} over {concurrency} concurrent dialers, pluto2 = {BIN}; load average {:.2} before",
        support::load_average()
    );
    let mut rates = Vec::new();
    let mut per_handshake = Vec::new();
    for run in 1..=runs {
        let r = rt.block_on(node_run(handshakes, concurrency));
        let cpus = support::cpus() as f64;
        println!(
            "run {run}: {:.0} handshakes/s ({handshakes} in {:.2} s); node CPU {:.2} s = {:.0} µs/handshake; generator CPU {:.2} s = {:.0} µs/handshake; connect to PONG median {:.2} ms, p99 {:.2} ms; all {cpus} CPUs {:.0} % busy ({:.2} CPU-s by others); load average {:.2}",
            r.rate,
            r.secs,
            r.node_cpu,
            r.node_cpu / handshakes as f64 * 1e6,
            r.generator_cpu,
            r.generator_cpu / handshakes as f64 * 1e6,
            support::median(&r.latencies_ms),
            support::quantile(&r.latencies_ms, 0.99),
            r.machine_busy * 100.0,
            (r.machine_busy * cpus * r.secs - r.node_cpu - r.generator_cpu).max(0.0),
            support::load_average(),
        );
        rates.push(r.rate);
        per_handshake.push(r.node_cpu / handshakes as f64 * 1e6);
    }
    println!(
        "medians: {:.0} handshakes/s; node CPU {:.0} µs/handshake",
        support::median(&rates),
        support::median(&per_handshake)
    );
}
