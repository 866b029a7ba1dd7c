//! The exit holds the network's contract, on a 5-node network of real
//! `pluto2 -sphinx` processes (tests/common/mixnet.rs). Packets are built
//! here with the nodes' mix keys and injected over an authenticated link
//! as a listed node (the tap proves node 0's identity), with a route of
//! one hop straight into the exit: what a listed node gone bad can do.
//!
//! - an honest message of exactly `max_message_size` is delivered;
//! - fragments of a message larger than the network carries, or claiming
//!   65,535 fragments, are rejected before anything is stored, and
//!   fragments of one message that disagree are refused;
//! - a message with more recipients than the exit's `-max-recipients` is
//!   refused, recorded as done and counted; one at the limit is delivered;
//! - past `-exit-partial-bytes` fragments are answered busy and nothing
//!   is kept, the fragment that completes a message still passes, and
//!   the busy packet sent again is taken once room is made;
//! - completing a maximum-size message keeps the exit's peak RSS within
//!   the bound `hop::complete` states;
//! - fragments of one message claiming the most fragments the network
//!   allows are all stored, and the rate of the first and the last
//!   thousand is printed with the exit's SMTP latency meanwhile (the
//!   figures in BENCHMARKS.md: `PLUTO2_EXIT_FRAGMENTS=20000`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::mixnet::{LINK_PORT, MixNet, TEST_PARAMS, last_stat, mail, until_stat};
use pluto2::address::OnionName;
use pluto2::envelope::{Envelope, Message};
use pluto2::wire::fragment::{
    Fragment, Kind, MAX_DATA, encode_blob, fragments_for, max_blob_len, split,
};
use pluto2::wire::frame::{AckStatus, Frame};
use pluto2::wire::packet::{RouteHop, build};
use pluto2::wire::pki::{Directory, MAX_MESSAGE_SIZE};
use sha2::{Digest, Sha256};

/// `max_message_size` in TEST_PARAMS.
const MAX: usize = 262_144;
/// The node whose link the test injects into, as node 0.
const EXIT: usize = 1;

/// A PACKET frame carrying `fragment` on a route of one hop, straight
/// into node `exit`: the exit cannot tell it from the last hop of a
/// longer route.
fn frame(net: &MixNet, exit: usize, fragment: &Fragment, seq: u64) -> Vec<u8> {
    frame_on(&into(net, exit), net.epoch_now(), fragment, seq)
}

/// The one-hop route into node `exit`, for this epoch.
fn into(net: &MixNet, exit: usize) -> [RouteHop; 1] {
    let own = OnionName::parse(&net.nodes[0].onion).unwrap();
    let dir = Directory::parse(&std::fs::read(&net.pki).unwrap(), &own).unwrap();
    let onion = OnionName::parse(&net.nodes[exit].onion).unwrap();
    let id = dir.nodes().iter().find(|n| n.onion == onion).unwrap().id;
    [RouteHop {
        id,
        mix_key: net.mix_key(exit, net.epoch_now()),
        delay: Duration::ZERO,
    }]
}

fn frame_on(route: &[RouteHop], epoch: u32, fragment: &Fragment, seq: u64) -> Vec<u8> {
    let packet = build(&fragment.encode(), route).unwrap();
    let mut out = Vec::new();
    Frame::Packet { seq, epoch, packet }.encode(&mut out);
    out
}

async fn inject(net: &MixNet, fragment: &Fragment) -> AckStatus {
    let bytes = frame(net, EXIT, fragment, 1);
    inject_frame(net, &bytes).await
}

async fn inject_frame(net: &MixNet, bytes: &[u8]) -> AckStatus {
    net.nodes[0]
        .tap
        .inject(&net.nodes[EXIT].onion, LINK_PORT, bytes)
        .await
        .unwrap()
}

fn message(to: &[String], body: Vec<u8>) -> Message {
    Message {
        envelope: Envelope {
            sender: "a@b.example".into(),
            recipients: to.to_vec(),
            smtputf8: false,
            eight_bit: false,
            to_own_name: false,
        },
        body,
    }
}

/// The fragments an honest entry makes of `m`.
fn fragments(m: &Message, id: u8) -> Vec<Fragment> {
    split(&encode_blob(m), [id; 16]).unwrap()
}

/// Fragments shaped as `split` makes them, of a blob that is not a
/// message (random bytes): they pass every check but the final hash.
fn junk(id: u8, blob_len: usize) -> Vec<Fragment> {
    let blob: Vec<u8> = (0..blob_len).map(|_| rand::random()).collect();
    split(&blob, [id; 16]).unwrap()
}

fn partial_bytes(net: &MixNet) -> u64 {
    net.mixnet_counts(EXIT)["exit_partial_bytes"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_holds_the_networks_size_recipient_and_partial_limits() {
    let mut net = MixNet::start(5, TEST_PARAMS).await;
    // Room for the largest message (518,408 bytes) and a little more.
    let cap = 520_000u64;
    net.nodes[EXIT].daemon = None;
    net.start_node(EXIT, &["-exit-partial-bytes", &cap.to_string()]);
    net.until_healthy(0, 4).await;
    let d = net.daemon(EXIT);

    // An honest message of exactly max_message_size, through SMTP at an
    // entry: every exit takes it.
    // The client adds the CRLF before the dot; no bare CR at the cut.
    let mut body = mail(MAX, "largest")[..MAX - 2].to_string();
    if body.ends_with('\r') {
        body.pop();
        body.push('x');
    }
    net.send(0, &body).await;
    let got = net.sink.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("hello largest"));

    // Over the network's size: refused before anything is stored, by the
    // declared length and by the count alike; the tag is kept.
    let over = junk(2, max_blob_len(MAX) + 1);
    let claim = Fragment {
        count: u16::MAX,
        blob_len: (u16::MAX as usize * MAX_DATA) as u32,
        ..over[0].clone()
    };
    for f in [&over[0], &over[over.len() - 1], &claim] {
        assert_eq!(inject(&net, f).await, AckStatus::Rejected);
    }
    let again = frame(&net, EXIT, &over[0], 1);
    assert_eq!(inject_frame(&net, &again).await, AckStatus::Rejected);
    assert_eq!(inject_frame(&net, &again).await, AckStatus::Duplicate);
    until_stat(d, "exit_too_large", |n| n >= 4).await;
    assert_eq!(
        last_stat(d, "exit_too_large"),
        Some(4),
        "a replay counts as one"
    );
    assert_eq!(partial_bytes(&net), 0, "nothing of them stored");

    // Fragments of one message that disagree: the second is refused.
    let first = junk(3, 3 * MAX_DATA);
    assert_eq!(inject(&net, &first[0]).await, AckStatus::Stored);
    let other_hash = Fragment {
        blob_hash: [9; 32],
        ..first[1].clone()
    };
    assert_eq!(inject(&net, &other_hash).await, AckStatus::Rejected);
    until_stat(d, "exit_inconsistent", |n| n >= 1).await;
    assert_eq!(net.mixnet_counts(EXIT)["exit_partial"], 1);

    // Recipients: 51 is past -max-recipients (50): refused at the exit's
    // intake, recorded as done (a later copy is a duplicate), nothing
    // delivered, the count in the log. 50 is delivered.
    let rcpts =
        |n: usize| -> Vec<String> { (0..n).map(|i| format!("r{i}@{}", net.sink_onion)).collect() };
    let many = fragments(
        &message(&rcpts(51), b"Subject: many\r\n\r\nx\r\n".to_vec()),
        4,
    );
    assert_eq!(inject(&net, &many[0]).await, AckStatus::Stored);
    d.until_log("the refusal", |l| {
        l.contains("refused a message from the mixnet with 51 recipients (-max-recipients 50)")
    })
    .await;
    assert_eq!(inject(&net, &many[0]).await, AckStatus::Stored);
    until_stat(d, "exit_duplicates", |n| n >= 1).await;
    let fifty = fragments(
        &message(&rcpts(50), b"Subject: fifty\r\n\r\nx\r\n".to_vec()),
        5,
    );
    assert_eq!(inject(&net, &fifty[0]).await, AckStatus::Stored);
    let got = net.sink.wait_for(2).await;
    assert_eq!(got.len(), 2, "only the message of 50: {got:?}");
    let delivered: usize = got[1..].iter().map(|r| r.rcpt_to.len()).sum();
    assert_eq!(delivered, 50);
    assert!(!d.log_text().contains(&format!("r50@{}", net.sink_onion)));

    // The cap: a real message but its last fragment, then junk until the
    // exit answers busy. Busy keeps nothing: not even the tag.
    let body = mail(250_000, "held");
    let a = fragments(&message(&[net.rcpt()], body.into_bytes()), 6);
    for f in &a[..a.len() - 1] {
        assert_eq!(inject(&net, f).await, AckStatus::Stored);
    }
    let b = junk(7, 500_000);
    let mut busy = None;
    for f in &b {
        let bytes = frame(&net, EXIT, f, 1);
        match inject_frame(&net, &bytes).await {
            AckStatus::Stored => {}
            AckStatus::Busy => {
                busy = Some(bytes);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let busy = busy.expect("the exit never answered busy");
    assert!(partial_bytes(&net) <= cap);
    assert_eq!(inject_frame(&net, &busy).await, AckStatus::Busy);
    until_stat(d, "exit_full", |n| n >= 2).await;
    // The fragment that completes a message passes the cap, and the
    // message is delivered.
    assert_eq!(inject(&net, &a[a.len() - 1]).await, AckStatus::Stored);
    let got = net.sink.wait_for(3).await;
    assert!(String::from_utf8_lossy(&got[2].data).contains("hello held"));
    // Its bytes are free again: the busy packet, sent again as the
    // previous hop does, is taken.
    assert_eq!(inject_frame(&net, &busy).await, AckStatus::Stored);
}

/// Peak RSS (VmHWM) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Completing a message of the network's largest size raises the exit's
/// peak RSS by at most 3.5 × the largest blob: `hop::complete` holds the
/// blob once (the body is its allocation) and SQLite copies the body
/// twice while storing it (about 3 ×); the half is slack for the
/// allocator, less than one more copy of the message. The recipient cannot be reached (no route at the SOCKS
/// proxy), so the delivery's own copies (its lease, the sanitized and
/// padded body) stay out of the figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_maximum_size_message_keeps_the_exits_rss_within_its_bound() {
    let size: usize = std::env::var("PLUTO2_EXIT_RSS_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(4)
        << 20;
    let params = TEST_PARAMS.replace("262144", &size.to_string());
    let mut net = MixNet::start(5, &params).await;
    net.until_healthy(0, 4).await;
    // The test speaks as node 0 on long-lived links: node 0 itself is
    // stopped, since a node has one link at a peer and its own redial
    // would replace the test's.
    net.nodes[0].daemon.as_mut().unwrap().signal("TERM");
    assert!(net.nodes[0].daemon.as_mut().unwrap().wait().success());
    let nowhere = format!("someone@{}", OnionName::from_seed(201));
    let m = message(&[nowhere], mail(size, "big").as_bytes()[..size].to_vec());
    let fs = fragments(&m, 1);
    let blob = max_blob_len(size) as u64;
    let (route, epoch) = (into(&net, EXIT), net.epoch_now());
    let frames: Vec<Vec<u8>> = fs
        .iter()
        .enumerate()
        .map(|(i, f)| frame_on(&route, epoch, f, i as u64 + 1))
        .collect();
    let tap = &net.nodes[0].tap;
    let host = &net.nodes[EXIT].onion;
    let (last, rest) = frames.split_last().unwrap();
    for (status, _) in tap.inject_stream(host, LINK_PORT, rest, 32).await.unwrap() {
        assert_eq!(status, AckStatus::Stored);
    }
    let d = net.daemon(EXIT);
    let before = peak_rss(d.pid());
    assert_eq!(
        tap.inject(host, LINK_PORT, last).await.unwrap(),
        AckStatus::Stored
    );
    d.until_queue("the message completed", |q| q["messages"] == 1)
        .await;
    until_stat(d, "exit_completed", |n| n >= 1).await;
    let after = peak_rss(d.pid());
    let grew = after.saturating_sub(before);
    println!(
        "exit peak RSS: {} MB before the last fragment, {} MB after completing a {} MB message (+{} MB, {:.2} x the blob)",
        before >> 20,
        after >> 20,
        size >> 20,
        grew >> 20,
        grew as f64 / blob as f64
    );
    assert!(2 * grew <= 7 * blob, "grew by {grew} bytes");
}

/// Sends a small message on one SMTP session (the listener's rate limit
/// counts sessions) every 100 ms until `stop`, timing MAIL to the `250`
/// after DATA (which waits for the spool's writer).
fn smtp_probe(
    addr: std::net::SocketAddr,
    rcpt: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut c = common::Client::connect(addr).await;
        assert_eq!(c.reply().await.0, 220);
        assert_eq!(c.cmd("EHLO client.example").await.0, 250);
        let mut times = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let body = format!("Subject: t{}\r\n\r\nx", rand::random::<u64>());
            assert_eq!(c.send_mail("a@b.example", &[&rcpt], &body).await, 250);
            times.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        times
    })
}

/// Fragments of one message claiming the most fragments the network
/// allows are stored at a steady rate. Performance is a figure, not an
/// assertion: the steady cost is asserted structurally in
/// `spool::tests` (`storing_a_fragment_costs_the_same_whatever_was_stored_before`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_of_the_largest_claim_are_all_stored() {
    let n: usize = std::env::var("PLUTO2_EXIT_FRAGMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let params = TEST_PARAMS.replace("262144", &MAX_MESSAGE_SIZE.to_string());
    // Every exit's cap defaults to one message of this size (504 MB).
    let mut net = MixNet::start(5, &params).await;
    net.until_healthy(0, 4).await;
    // The test speaks as node 0 on long-lived links: node 0 itself is
    // stopped, since a node has one link at a peer and its own redial
    // would replace the test's.
    net.nodes[0].daemon.as_mut().unwrap().signal("TERM");
    assert!(net.nodes[0].daemon.as_mut().unwrap().wait().success());
    // A claim of the most fragments the contract allows (65,432).
    let blob_len = max_blob_len(MAX_MESSAGE_SIZE);
    let count = fragments_for(blob_len) as u16;
    let hash: [u8; 32] = Sha256::digest(b"never").into();
    let started = Instant::now();
    let (route, epoch) = (into(&net, EXIT), net.epoch_now());
    let frames: Vec<Vec<u8>> = std::thread::scope(|s| {
        let route = &route;
        let half = n / 2;
        let build = move |from: usize, to: usize| {
            (from..to)
                .map(|i| {
                    let f = Fragment {
                        kind: Kind::Data,
                        message_id: [1; 16],
                        index: i as u16,
                        count,
                        blob_len: blob_len as u32,
                        blob_hash: hash,
                        reply_block: None,
                        data: vec![i as u8; MAX_DATA],
                    };
                    frame_on(route, epoch, &f, i as u64 + 1)
                })
                .collect::<Vec<_>>()
        };
        let a = s.spawn(move || build(0, half));
        let b = s.spawn(move || build(half, n));
        let mut v = a.join().unwrap();
        v.extend(b.join().unwrap());
        v
    });
    println!("{n} packets built in {:?}", started.elapsed());

    // The exit's SMTP latency: before the fragments come, and meanwhile.
    let d = net.daemon(EXIT);
    let stop = Arc::new(AtomicBool::new(false));
    let probe = smtp_probe(d.addr, net.rcpt(), stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut idle = probe.await.unwrap();
    idle.sort();
    stop.store(false, Ordering::Relaxed);
    let smtp = smtp_probe(d.addr, net.rcpt(), stop.clone());
    let started = Instant::now();
    let acks = net.nodes[0]
        .tap
        .inject_stream(&net.nodes[EXIT].onion, LINK_PORT, &frames, 32)
        .await
        .unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut times = smtp.await.unwrap();
    assert!(acks.iter().all(|(s, _)| *s == AckStatus::Stored));
    let q = net.mixnet_counts(EXIT);
    assert_eq!(q["exit_partial"], 1, "{q}");
    assert_eq!(
        q["exit_partial_bytes"].as_u64().unwrap(),
        (n * MAX_DATA) as u64
    );
    let at = |i: usize| acks[i].1.duration_since(started);
    let thousand = 1_000.min(n / 2);
    let first = at(thousand - 1);
    let last = at(n - 1) - at(n - 1 - thousand);
    times.sort();
    println!(
        "{n} fragments in {took:?}: the first {thousand} in {first:?}, the last {thousand} in {last:?} ({:.2} x); \
         exit SMTP (MAIL to 250 after DATA) before: median {:?}, max {:?}; during it: {} messages, median {:?}, max {:?}",
        last.as_secs_f64() / first.as_secs_f64(),
        idle.get(idle.len() / 2),
        idle.last(),
        times.len(),
        times.get(times.len() / 2),
        times.last()
    );
    assert_eq!(last_stat(net.daemon(EXIT), "exit_full").unwrap_or(0), 0);
}
