//! Bytes on the links per byte of mail, and the time one message takes
//! across the 5-node loopback mixnet of the integration tests
//! (tests/common/mixnet.rs: real release `pluto2 -sphinx` processes, each
//! behind its frame-recording SOCKS tap).
//!
//!     cargo bench --bench mixnet_bytes
//!     REPS=5 SIZES=4096,65536,1048576 cargo bench --bench mixnet_bytes
//!
//! Network parameters: 3 hops, zero hop delay (`hop_delay_mean` and
//! `hop_delay_max` "0ms"), `max_message_size` 2 MiB, and an `ack_timeout`
//! of 60 s so that no retransmission happens during a measurement (one
//! would be counted as overhead). For each size, `REPS` messages are sent
//! one at a time by SMTP to node 0 for a recipient behind the exits' sink.
//! Before each message the network is quiet: every PACKET frame on every
//! link has had its ACK and node 0's queue is empty. After it, the same is
//! waited for again (the exit's COMPLETE has come back through its reply
//! block and been acknowledged hop by hop). The bytes are every frame the
//! taps recorded in between, both directions, all links: PACKET, ACK,
//! HELLO, PING and PONG. "Mail bytes" is the text sent after DATA.
//!
//! Times, from `MAIL FROM` on an open session: to node 0's `250`
//! ("accepted"), to the sink's receipt of the final dot ("delivered"; also
//! shown from the `250`), and to node 0's queue showing the message gone
//! ("acknowledged", polled every 50 ms, so up to 50 ms late).
//!
//! Bounded: every wait has a deadline (the harness's PATIENCE, 30 s); at
//! most `REPS` × 3 messages. Under `cargo test` (no `--bench` argument)
//! nothing runs: five daemons are too much for the test suite, and
//! tests/mixnet.rs covers the path.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::link_tap::FrameKind;
use common::mixnet::MixNet;
use common::{Client, PATIENCE};
use pluto2::wire::fragment::MAX_DATA;

/// Links every mail byte crosses: entry → hop → hop → exit (`hops` in
/// [`PARAMS`]).
const HOPS: usize = 3;

const PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "0ms", "hop_delay_max": "0ms",
    "max_message_size": 2097152, "ack_timeout": "60s", "custody_horizon": "10m", "e2e_horizon": "1h"}"#;

/// A message of exactly `size` bytes: headers and base64-looking lines.
fn mail(size: usize, tag: &str) -> String {
    let mut text = format!("Subject: {tag}\r\nMIME-Version: 1.0\r\n\r\n");
    let mut i = 0u64;
    // Stop one to two lines short; the last line takes up the rest.
    while text.len() + 2 * 78 <= size {
        i += 1;
        text.push_str(&format!(
            "{:076}\r\n",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ));
    }
    while text.len() + 2 < size {
        text.push('x');
    }
    text.push_str("\r\n");
    assert_eq!(text.len(), size);
    text
}

/// Waits until every PACKET frame on every link has its ACK and node 0
/// holds no message.
async fn quiet(net: &MixNet) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (mut packets, mut acks) = (0, 0);
        for n in &net.nodes {
            for f in n.tap.frames() {
                match f.kind {
                    FrameKind::Packet => packets += 1,
                    FrameKind::Ack => acks += 1,
                    _ => {}
                }
            }
        }
        if packets == acks && net.daemon(0).queue_json()["messages"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the network did not go quiet: {packets} packets, {acks} acks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Sample {
    ratio: f64,
    accepted: Duration,
    delivered: Duration,
    acknowledged: Duration,
    /// Frame kind → (frames, bytes).
    kinds: BTreeMap<String, (usize, usize)>,
}

async fn one(
    net: &MixNet,
    c: &mut Client,
    size: usize,
    tag: &str,
    received_before: usize,
) -> Sample {
    quiet(net).await;
    let marks: Vec<usize> = net.nodes.iter().map(|n| n.tap.frames().len()).collect();
    let before = net.bytes_on_links();
    let rcpt = format!("someone@{}", net.sink_onion);
    let text = mail(size, tag);
    let entry = net.daemon(0);
    let t0 = Instant::now();
    assert_eq!(c.send_mail("a@b.example", &[&rcpt], &text).await, 250);
    let accepted = t0.elapsed();
    let got = net.sink.wait_for(received_before + 1).await;
    let delivered = got.last().unwrap().at.duration_since(t0);
    entry
        .until_queue("the message acknowledged by its exit", |q| {
            q["messages"] == 0
        })
        .await;
    let acknowledged = t0.elapsed();
    quiet(net).await;
    let bytes = net.bytes_on_links() - before;
    let mut kinds = BTreeMap::new();
    for (n, mark) in net.nodes.iter().zip(marks) {
        for f in &n.tap.frames()[mark..] {
            let e = kinds.entry(format!("{:?}", f.kind)).or_insert((0, 0));
            e.0 += 1;
            e.1 += f.len;
        }
    }
    Sample {
        ratio: bytes as f64 / size as f64,
        accepted,
        delivered,
        acknowledged,
        kinds,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("mixnet_bytes: measured only under `cargo bench --bench mixnet_bytes`");
        return;
    }
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let sizes: Vec<usize> = std::env::var("SIZES")
        .unwrap_or_else(|_| "4096,65536,1048576".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SIZES: comma-separated byte counts")
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let net = MixNet::start(5, PARAMS).await;
        net.until_healthy(0, 4).await;
        println!(
            "mixnet bytes: 5 nodes, 3 hops, zero hop delay, {reps} messages per size, one at a time"
        );
        // One SMTP session for every message (the daemon limits sessions
        // per minute from one address).
        let mut c = net.daemon(0).ehlo_client().await;
        let mut received = 0;
        for &size in &sizes {
            let mut samples = Vec::new();
            for r in 0..reps {
                let s = one(&net, &mut c, size, &format!("s{size}r{r}"), received).await;
                received += 1;
                let shown: Vec<String> = s
                    .kinds
                    .iter()
                    .map(|(k, (n, b))| format!("{k} {n} ({b} B)"))
                    .collect();
                println!(
                    "{size} B #{}: {:.3} link bytes per mail byte ({:.3} per hop); accepted {:.0} ms, delivered {:.0} ms ({:.0} ms after the 250), acknowledged {:.0} ms; {}",
                    r + 1,
                    s.ratio,
                    s.ratio / HOPS as f64,
                    s.accepted.as_secs_f64() * 1e3,
                    s.delivered.as_secs_f64() * 1e3,
                    (s.delivered - s.accepted).as_secs_f64() * 1e3,
                    s.acknowledged.as_secs_f64() * 1e3,
                    shown.join(", ")
                );
                samples.push(s);
            }
            let ratio = common::median(samples.iter().map(|s| s.ratio).collect());
            println!(
                "{size} B median: {:.3} link bytes per mail byte ({:.3} per hop); accepted {:.0} ms; delivered {:.0} ms ({:.0} ms after the 250); acknowledged {:.0} ms (fragment data {} B each)",
                ratio,
                ratio / HOPS as f64,
                common::median(samples.iter().map(|s| s.accepted.as_secs_f64() * 1e3).collect()),
                common::median(samples.iter().map(|s| s.delivered.as_secs_f64() * 1e3).collect()),
                common::median(
                    samples
                        .iter()
                        .map(|s| (s.delivered - s.accepted).as_secs_f64() * 1e3)
                        .collect()
                ),
                common::median(
                    samples
                        .iter()
                        .map(|s| s.acknowledged.as_secs_f64() * 1e3)
                        .collect()
                ),
                MAX_DATA
            );
        }
    });
}
