//! The mixnet control plane on a 5-node network of real `pluto2 -sphinx`
//! processes (tests/common/mixnet.rs): mix keys rotating under traffic,
//! a node down across epoch boundaries, a black hole found by its loops,
//! a node showing one peer another key bundle.
//!
//! Each test runs five daemons, so they run one at a time ([`SERIAL`]).
//! Epochs are 5 s (the shortest a network may choose), so rotations
//! happen while the tests run; waits are on log lines, [STATS] and the
//! files the nodes keep, each bounded.

mod common;

use std::time::{Duration, Instant};

use common::PATIENCE;
use common::link_tap::{Action, Direction, FrameKind, Rule};
use common::mixnet::{LINK_PORT, MixNet, last_stat, until_stat};
use pluto2::address::OnionName;
use pluto2::wire::bundle::{Bundle, SLOTS};
use pluto2::wire::frame::{AckStatus, Frame, MAX_FRAME};
use pluto2::wire::packet::NodeId;
use pluto2::wire::pki::Directory;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Test delays, five-second epochs, no cover.
const EPOCH_PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "20ms", "hop_delay_max": "240ms",
    "max_message_size": 262144, "ack_timeout": "4s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "epoch": "5s", "loop_cover_mean": "0s", "drop_cover_mean": "0s"}"#;

/// Test delays and fast loop and drop cover: loops are the health probe.
const COVER_PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "20ms", "hop_delay_max": "240ms",
    "max_message_size": 262144, "ack_timeout": "4s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "loop_cover_mean": "100ms", "drop_cover_mean": "250ms"}"#;

async fn send_from(net: &MixNet, entry: usize, tag: &str) {
    let body = format!("Subject: {tag}\r\n\r\nbody of {tag}\r\n");
    net.send(entry, &body).await.quit().await;
}

/// Waits (bounded) until every tag arrived at the sink, and checks each
/// arrived exactly once.
async fn delivered_once(net: &MixNet, tags: &[String]) {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let got = net.sink.received();
        let count = |t: &str| {
            got.iter()
                .filter(|r| {
                    let text = String::from_utf8_lossy(&r.data);
                    text.contains(&format!("body of {t}\r\n"))
                })
                .count()
        };
        if tags.iter().all(|t| count(t) >= 1) {
            for t in tags {
                assert_eq!(count(t), 1, "{t} delivered more than once");
            }
            assert_eq!(got.len(), tags.len(), "something else was delivered");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never delivered: {:?}",
            tags.iter().filter(|t| count(t) == 0).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends messages `prefix-first` … `prefix-(last-1)` from node `entry`;
/// returns their tags.
async fn send_tags(
    net: &MixNet,
    entry: usize,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let mut tags = Vec::new();
    for i in range {
        let tag = format!("{prefix}-{i}");
        send_from(net, entry, &tag).await;
        tags.push(tag);
    }
    tags
}

/// Waits (bounded) until the wall clock is in epoch `epoch` or later.
async fn until_epoch(net: &MixNet, epoch: u32) {
    let deadline = Instant::now() + Duration::from_secs(net.epoch_secs * 4) + PATIENCE;
    while net.epoch_now() < epoch {
        assert!(Instant::now() < deadline, "epoch {epoch} never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) for a [STATS] line of node `i`, logged after its first
/// `skip` lines, that shows exactly `h` usable peers.
async fn until_healthy_exactly(net: &MixNet, i: usize, skip: usize, h: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = net.daemon(i).log_text();
        let seen = text
            .lines()
            .skip(skip)
            .filter(|l| l.contains("[STATS]"))
            .filter_map(|l| l.split("healthy=").nth(1))
            .filter_map(|v| v.split('/').next()?.parse::<u64>().ok())
            .any(|got| got == h);
        if seen {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {i} never showed healthy={h}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_lines(net: &MixNet, i: usize) -> usize {
    net.daemon(i).log_text().lines().count()
}

fn directory(net: &MixNet) -> Directory {
    let bytes = std::fs::read(&net.pki).unwrap();
    Directory::parse(&bytes, &OnionName::parse(&net.nodes[0].onion).unwrap()).unwrap()
}

/// Mail keeps flowing while every node rotates its keys twice; every
/// message arrives once; only the current, ahead and grace keys remain on
/// disk; a packet captured before is a duplicate within its epoch and
/// refused as of an unknown epoch once its key is past its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_under_traffic_and_an_old_packet_is_refused_after_its_grace() {
    let _one = SERIAL.lock().await;
    let mut net = MixNet::start(5, EPOCH_PARAMS).await;
    net.set_epoch_secs(5);
    net.until_healthy(0, 4).await;
    net.nodes[0].tap.add_rule(
        Rule::new(Action::ReplayLater)
            .dir(Direction::ToTarget)
            .kind(FrameKind::Packet),
    );
    let start = net.epoch_now();
    let mut tags = Vec::new();
    // One message every 600 ms, from each node in turn (within every
    // entry's session rate limit), until two boundaries have passed.
    while net.epoch_now() < start + 2 || tags.len() < 6 {
        let tag = format!("rot-{}", tags.len());
        send_from(&net, tags.len() % 5, &tag).await;
        tags.push(tag);
        assert!(tags.len() < 100, "the epochs never moved");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    delivered_once(&net, &tags).await;

    // Each node shows the epoch in [STATS] and logged its rotations. A
    // node rotates a moment after the boundary (later on a busy machine):
    // its [STATS] is waited for first, and that line comes after the
    // rotation's own.
    for i in 0..5 {
        until_stat(net.daemon(i), "epoch", |e| e >= start as u64 + 2).await;
        let logs = net.daemon(i).log_text();
        let rotations = logs.matches("[MIXNET] epoch ").count();
        assert!(rotations >= 2, "node {i} logged {rotations} rotation(s)");
    }
    // Keys older than the previous epoch are gone from every data dir
    // (looked at until the node has rotated, bounded).
    for i in 0..5 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = net.epoch_now();
            let files = net.key_files(i);
            let ok = files.iter().all(|&e| e + 1 >= now) && files.contains(&(now + 2));
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} keeps {files:?} in epoch {now}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // The packet captured in the first epoch: past its key's grace it is
    // refused without being opened (its replay tag is purged already).
    let captured = net.nodes[0].tap.captured();
    let first = captured.first().expect("a packet was captured");
    let Ok(Some((Frame::Packet { epoch, .. }, _))) = pluto2::wire::frame::decode(&first.bytes)
    else {
        panic!("not a packet frame");
    };
    // On a busy machine the first packet may leave an epoch later than the
    // test began: its key's grace ends two boundaries after its own epoch,
    // waited for (bounded), at the wall clock and at the node that would
    // open it.
    until_epoch(&net, epoch + 2).await;
    assert!(epoch + 2 <= net.epoch_now(), "captured in epoch {epoch}");
    let target = net
        .nodes
        .iter()
        .position(|n| n.onion == first.host)
        .unwrap();
    until_stat(net.daemon(target), "epoch", |e| e >= epoch as u64 + 2).await;
    let before = last_stat(net.daemon(target), "unknown_epoch").unwrap_or(0);
    let status = net.nodes[0]
        .tap
        .inject(&first.host, LINK_PORT, &first.bytes)
        .await
        .unwrap();
    assert_eq!(status, AckStatus::UnknownEpoch);
    until_stat(net.daemon(target), "unknown_epoch", |n| n > before).await;
    // Nothing was delivered twice meanwhile.
    delivered_once(&net, &tags).await;
}

/// A packet replayed within its epoch is recognised by its tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_replayed_within_its_epoch_is_a_duplicate() {
    let _one = SERIAL.lock().await;
    let net = MixNet::start(5, EPOCH_PARAMS).await;
    net.until_healthy(0, 4).await;
    net.nodes[0].tap.add_rule(
        Rule::new(Action::ReplayLater)
            .dir(Direction::ToTarget)
            .kind(FrameKind::Packet),
    );
    // Sent right after a boundary, so the replay is in the same epoch or
    // the next (grace): either way its tag is known.
    let start = net.epoch_now();
    until_epoch(&net, start + 1).await;
    send_from(&net, 0, "dup").await;
    let frames = net.nodes[0]
        .tap
        .wait_until(
            |f| f.iter().any(|f| f.action == Some(Action::ReplayLater)),
            PATIENCE,
        )
        .await
        .unwrap();
    assert!(!frames.is_empty());
    let first = net.nodes[0].tap.captured().remove(0);
    // Only once the original is acknowledged (its tag on disk at the hop)
    // is the copy a replay rather than a race with the original.
    net.nodes[0]
        .tap
        .wait_until(
            |f| {
                f.iter().any(|f| {
                    f.kind == FrameKind::Ack && f.host == first.host && f.seq == Some(first.seq)
                })
            },
            PATIENCE,
        )
        .await
        .unwrap();
    let status = net.nodes[0]
        .tap
        .inject(&first.host, LINK_PORT, &first.bytes)
        .await
        .unwrap();
    assert_eq!(status, AckStatus::Duplicate);
    delivered_once(&net, &["dup".to_string()]).await;
}

/// A node down for two boundaries comes back: its old keys are destroyed,
/// it fetches its peers' new bundles, counts them all usable again, and
/// mail it accepts (and mail routed through it) arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_across_epoch_boundaries_fetches_what_it_missed_and_carries_on() {
    let _one = SERIAL.lock().await;
    let mut net = MixNet::start(5, EPOCH_PARAMS).await;
    net.set_epoch_secs(5);
    net.until_healthy(2, 4).await;
    let before = net.key_files(2);
    net.nodes[2].daemon.as_mut().unwrap().signal("TERM");
    net.nodes[2].daemon.as_mut().unwrap().wait();
    let down = net.epoch_now();
    until_epoch(&net, down + 3).await;
    net.start_node(2, &[]);
    net.daemon(2)
        .until_log("the rotation at restart", |l| {
            l.contains("[MIXNET] epoch ") && l.contains("destroyed for [")
        })
        .await;
    let after = net.key_files(2);
    assert!(
        before
            .iter()
            .all(|e| !after.contains(e) || *e + 1 >= down + 3),
        "old keys survived the restart: {before:?} -> {after:?}"
    );
    // Usable peers need their keys for the epoch now: fetched afresh.
    net.until_healthy(2, 4).await;
    net.until_healthy(0, 4).await;
    let tags: Vec<String> = (0..4).map(|i| format!("back-{i}")).collect();
    for (i, t) in tags.iter().enumerate() {
        send_from(&net, if i % 2 == 0 { 2 } else { 0 }, t).await;
    }
    delivered_once(&net, &tags).await;
}

/// A node that takes every packet (and acknowledges it) but never
/// forwards one still answers pings; its loops never return, so every
/// other node sets it aside, and mail flows around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_is_set_aside_by_its_loops_and_mail_flows_around_it() {
    let _one = SERIAL.lock().await;
    let net = MixNet::start(5, COVER_PARAMS).await;
    net.until_healthy(0, 4).await;
    until_stat(net.daemon(0), "loops_back", |n| n >= 10).await;
    // Node 3 forwards nothing from now on: every PACKET it sends is
    // swallowed (its links stay up; PINGs pass).
    net.nodes[3].tap.add_rule(
        Rule::new(Action::Drop)
            .dir(Direction::ToTarget)
            .kind(FrameKind::Packet)
            .times(usize::MAX),
    );
    let began = Instant::now();
    net.daemon(0)
        .until_log("n3 set aside by node 0", |l| {
            l.contains("[MIXNET] n3 set aside")
        })
        .await;
    let took = began.elapsed();
    eprintln!("black hole set aside after {took:?}");
    let mark = log_lines(&net, 0);
    for honest in ["n1", "n2", "n4"] {
        assert!(
            !net.daemon(0)
                .log_text()
                .contains(&format!("[MIXNET] {honest} set aside")),
            "{honest} blamed"
        );
    }
    until_stat(net.daemon(0), "loops_lost", |n| n >= 4).await;
    until_healthy_exactly(&net, 0, mark, 3).await;
    let tags = send_tags(&net, 0, "around", 0..5).await;
    delivered_once(&net, &tags).await;
    // Cover and data alike: one size on every link.
    let sizes = net.packet_frame_sizes();
    assert!(sizes.len() > 100, "{} packets", sizes.len());
    assert!(sizes.iter().all(|&n| n == MAX_FRAME));
    // Drop cover reached its last hops (somewhere).
    let drops: u64 = (0..5)
        .map(|i| last_stat(net.daemon(i), "drops_received").unwrap_or(0))
        .sum();
    assert!(drops > 0, "no drop cover arrived");
}

/// Node 4 shows node 0 other keys for its future epochs than it shows
/// everyone else (a bundle properly signed by node 4): the peers' PONGs
/// disagree with node 0, node 0 fetches their copy, sees two signed keys
/// for one epoch, and excludes node 4; mail still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_showing_one_peer_another_face_is_detected_and_excluded() {
    let _one = SERIAL.lock().await;
    let mut net = MixNet::start(5, EPOCH_PARAMS).await;
    net.set_epoch_secs(5);
    net.until_healthy(0, 4).await;
    let dir = directory(&net);
    let four = OnionName::parse(&net.nodes[4].onion).unwrap();
    let node4 = dir.nodes().iter().find(|n| n.onion == four).unwrap();
    let seed: [u8; 32] = std::fs::read(net.nodes[4].data.join("identity.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let identity = ed25519_dalek::SigningKey::from_bytes(&seed);
    assert_eq!(identity.verifying_key(), node4.identity);
    // Real keys for the epochs node 0 may hold already, other ones after.
    let now = net.epoch_now();
    let first = now + 1;
    let mut keys = [[0u8; 32]; SLOTS];
    for (i, k) in keys.iter_mut().enumerate() {
        let epoch = first + i as u32;
        *k = if epoch <= now + 2 {
            net.mix_key(4, epoch).to_bytes()
        } else {
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([i as u8 + 1; 32]))
                .to_bytes()
        };
    }
    let forged = Bundle::sign(
        &identity,
        &dir.params().hash(),
        NodeId(node4.id.0),
        first,
        keys,
    );
    let mut frame = Vec::new();
    Frame::Keys {
        subject: node4.id.0,
        bundle: Some(forged),
    }
    .encode(&mut frame);
    net.nodes[0].tap.substitute_keys(&net.nodes[4].onion, frame);

    let line = net
        .daemon(0)
        .until_log("node 0 catching n4", |l| {
            l.contains("n4 signed two different mix keys")
        })
        .await;
    assert!(line.contains("excluded"), "{line}");
    let mark = log_lines(&net, 0);
    until_stat(net.daemon(0), "two_faces", |n| n >= 1).await;
    until_healthy_exactly(&net, 0, mark, 3).await;
    let tags = send_tags(&net, 0, "faces", 0..3).await;
    delivered_once(&net, &tags).await;
}

/// SIGHUP rereads `nodes.json`: a file that does not parse, or that would
/// change the network parameters, is refused and the directory in force
/// stays; a file without node 4 takes node 4 out of this node's routes;
/// the full file brings it back. Mail sent across the reloads arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_nodes_json_and_keeps_the_old_one_when_refused() {
    let _one = SERIAL.lock().await;
    let net = MixNet::start(5, EPOCH_PARAMS).await;
    net.until_healthy(0, 4).await;
    let good = std::fs::read_to_string(&net.pki).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&good).unwrap();
    let d0 = net.daemon(0);
    let reloads =
        |want: &'static str| move |l: &str| l.contains("[RELOAD] SIGHUP:") && l.contains(want);
    // Waits (bounded) for the `n`th reload line that says `want`.
    let nth = |want: &'static str, n: usize| async move {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = d0.log_text().lines().filter(|l| reloads(want)(l)).count();
            if seen >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "reload line {n} \"{want}\" never logged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    std::fs::write(&net.pki, "{\"nodes\": [").unwrap();
    d0.signal("HUP");
    let line = d0
        .until_log("a refused reload", reloads("kept the old settings"))
        .await;
    assert!(line.contains("-pki-file"), "{line}");
    assert!(line.contains("not a valid nodes.json"), "{line}");

    let mut other_params = doc.clone();
    other_params["params"]["hop_delay_mean"] = serde_json::json!("30ms");
    std::fs::write(&net.pki, other_params.to_string()).unwrap();
    d0.signal("HUP");
    nth("kept the old settings", 2).await;
    assert!(d0.log_text().contains("params differ"), "{}", d0.log_text());

    let mut without_four = doc.clone();
    let four = net.nodes[4].onion.clone();
    without_four["nodes"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["onion"] != four.as_str());
    std::fs::write(&net.pki, without_four.to_string()).unwrap();
    let mark = log_lines(&net, 0);
    d0.signal("HUP");
    let line = d0
        .until_log("the reload without node 4", reloads("reloaded"))
        .await;
    assert!(
        line.contains("-pki-file") && line.contains("4 nodes"),
        "{line}"
    );
    until_healthy_exactly(&net, 0, mark, 3).await;
    let since = tokio::time::Instant::now();
    let tags = send_tags(&net, 0, "reload", 0..3).await;
    delivered_once(&net, &tags).await;
    let to_four = net.nodes[0]
        .tap
        .frames_on(&four, Direction::ToTarget)
        .into_iter()
        .filter(|f| f.kind == FrameKind::Packet && f.at >= since)
        .count();
    assert_eq!(to_four, 0, "node 0 still routes through node 4");

    std::fs::write(&net.pki, &good).unwrap();
    let mark = log_lines(&net, 0);
    d0.signal("HUP");
    nth("reloaded", 2).await;
    until_healthy_exactly(&net, 0, mark, 4).await;
    let more = send_tags(&net, 0, "reload", 3..5).await;
    let all: Vec<String> = tags.iter().chain(&more).cloned().collect();
    delivered_once(&net, &all).await;
}

/// At an exit, a recipient on `-dest-block` is dropped and counted; the
/// others of the message are delivered; a message left with no recipient
/// is acknowledged all the same (the entry stops sending it) and never
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_drops_blocked_destinations_and_still_acknowledges() {
    let _one = SERIAL.lock().await;
    // Nodes 1–3 are middles: every message from node 0 leaves at node 4.
    let mut net = MixNet::start_with_middles(5, EPOCH_PARAMS, &[1, 2, 3]).await;
    let list = net.nodes[4].data.with_file_name("dest.blk");
    std::fs::write(
        &list,
        format!(
            "# asked not to get anonymous mail\nblocked@{}\n",
            net.sink_onion
        ),
    )
    .unwrap();
    let d4 = net.nodes[4].daemon.as_mut().unwrap();
    d4.signal("TERM");
    d4.wait();
    net.start_node(4, &["-dest-block", list.to_str().unwrap()]);
    net.until_healthy(0, 4).await;
    let ok = format!("ok@{}", net.sink_onion);
    let blocked = format!("blocked@{}", net.sink_onion);
    let mut c = net.daemon(0).ehlo_client().await;
    let body = "Subject: two\r\n\r\nbody of two\r\n";
    assert_eq!(
        c.send_mail("a@b.example", &[&ok, &blocked], body).await,
        250
    );
    let body = "Subject: none\r\n\r\nbody of none\r\n";
    assert_eq!(c.send_mail("a@b.example", &[&blocked], body).await, 250);
    // Both acknowledged by the exit: nothing waits at the entry.
    net.daemon(0)
        .until_queue("both messages acknowledged", |q| q["messages"] == 0)
        .await;
    until_stat(net.daemon(4), "dest_blocked", |n| n >= 2).await;
    let got = net.sink.wait_for(1).await;
    assert_eq!(got[0].rcpt_to, vec![ok.clone()]);
    // Nothing was left in the exit's queue for the blocked-only message,
    // and nothing more arrived.
    net.daemon(4)
        .until_queue("the exit's queue empty", |q| q["messages"] == 0)
        .await;
    assert_eq!(
        net.sink.received().len(),
        1,
        "a blocked-only message was delivered"
    );
    assert!(
        !net.daemon(4).log_text().contains(&blocked),
        "address logged"
    );
}

/// CPU time (utime + stime, in clock ticks) and resident memory (KiB) of a
/// process, from /proc.
fn cpu_and_rss(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

/// Figures for BENCHMARKS.md (run by scripts/bench-mixnet-cover.sh, not by
/// the test command): a 5-node network idle with the default cover (one
/// loop and one drop a minute per node) for `IDLE_SECS`, CPU and RSS per
/// node; then a network with cover `FAST` times faster, whose bytes on the
/// links per node are scaled back to the default rates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_cover_cost() {
    let _one = SERIAL.lock().await;
    let secs: u64 = std::env::var("IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let default_cover = r#"{"hops": 3, "hop_delay_mean": "20ms", "hop_delay_max": "240ms",
        "max_message_size": 262144, "ack_timeout": "4s", "custody_horizon": "10m", "e2e_horizon": "1h"}"#;
    let net = MixNet::start(5, default_cover).await;
    net.until_healthy(0, 4).await;
    let before: Vec<(u64, u64)> = (0..5).map(|i| cpu_and_rss(net.daemon(i).pid())).collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after: Vec<(u64, u64)> = (0..5).map(|i| cpu_and_rss(net.daemon(i).pid())).collect();
    let tick = 100.0; // USER_HZ on Linux
    let mut cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0) as f64 / tick / secs as f64 * 100.0)
        .collect();
    let mut rss: Vec<f64> = after.iter().map(|a| a.1 as f64 / 1024.0).collect();
    cpu.sort_by(f64::total_cmp);
    rss.sort_by(f64::total_cmp);
    println!(
        "idle, default cover, {secs} s: CPU per node median {:.3} % (min {:.3}, max {:.3}); RSS median {:.1} MiB (min {:.1}, max {:.1})",
        cpu[2], cpu[0], cpu[4], rss[2], rss[0], rss[4]
    );
    let loops: u64 = (0..5)
        .map(|i| last_stat(net.daemon(i), "loops_sent").unwrap_or(0))
        .sum();
    println!("loops sent by the five nodes meanwhile: {loops}");
    drop(net);

    // Bandwidth: cover 60x faster (one loop and one drop a second per node).
    let fast = r#"{"hops": 3, "hop_delay_mean": "20ms", "hop_delay_max": "240ms",
        "max_message_size": 262144, "ack_timeout": "4s", "custody_horizon": "10m", "e2e_horizon": "1h",
        "loop_cover_mean": "1s", "drop_cover_mean": "1s"}"#;
    let net = MixNet::start(5, fast).await;
    net.until_healthy(0, 4).await;
    let start: usize = net.nodes.iter().map(|n| n.tap.bytes_on_links()).sum();
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs.min(60))).await;
    let bytes: usize = net
        .nodes
        .iter()
        .map(|n| n.tap.bytes_on_links())
        .sum::<usize>()
        - start;
    let elapsed = began.elapsed().as_secs_f64();
    // Every link byte is counted once, by the tap of the node that dialled
    // (both directions), and each is sent by one node and received by
    // another: per node, the total over five is what it sends (and about
    // as much it receives).
    let per_node_per_s = bytes as f64 / 5.0 / elapsed;
    let per_day_default = per_node_per_s / 60.0 * 86_400.0;
    println!(
        "cover at 1/s loop + 1/s drop: {per_node_per_s:.0} bytes/s sent per node (as much received); at the default 1/min each: {:.1} MB sent per node per day",
        per_day_default / 1e6
    );
}
