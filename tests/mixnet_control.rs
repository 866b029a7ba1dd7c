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
use pluto2::mixnet::bundle::{Bundle, SLOTS};
use pluto2::mixnet::frame::{AckStatus, Frame, MAX_FRAME};
use pluto2::mixnet::packet::NodeId;
use pluto2::mixnet::pki::Directory;

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
    let rcpt = format!("someone@{}", net.sink_onion);
    let mut c = net.daemon(entry).ehlo_client().await;
    let body = format!("Subject: {tag}\r\n\r\nbody of {tag}\r\n");
    assert_eq!(c.send_mail("a@b.example", &[&rcpt], &body).await, 250);
    // Closed properly, so sessions never pile up against the per-client
    // limit while a test sends one message after another.
    assert_eq!(c.cmd("QUIT").await.0, 221);
    assert!(c.closed().await);
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

    // Each node logged its rotations and shows the epoch in [STATS].
    for i in 0..5 {
        let logs = net.daemon(i).log_text();
        let rotations = logs.matches("[MIXNET] epoch ").count();
        assert!(rotations >= 2, "node {i} logged {rotations} rotation(s)");
        until_stat(net.daemon(i), "epoch", |e| e >= start as u64 + 2).await;
    }
    // Keys older than the previous epoch are gone from every data dir (a
    // node rotates a moment after the boundary: looked at until then).
    for i in 0..5 {
        let deadline = Instant::now() + Duration::from_secs(2);
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
    let Ok(Some((Frame::Packet { epoch, .. }, _))) = pluto2::mixnet::frame::decode(&first.bytes)
    else {
        panic!("not a packet frame");
    };
    assert!(epoch + 2 <= net.epoch_now(), "captured in epoch {epoch}");
    let target = net
        .nodes
        .iter()
        .position(|n| n.onion == first.host)
        .unwrap();
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
    let tags: Vec<String> = (0..5).map(|i| format!("around-{i}")).collect();
    for t in &tags {
        send_from(&net, 0, t).await;
    }
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
    let tags: Vec<String> = (0..3).map(|i| format!("faces-{i}")).collect();
    for t in &tags {
        send_from(&net, 0, t).await;
    }
    delivered_once(&net, &tags).await;
}
