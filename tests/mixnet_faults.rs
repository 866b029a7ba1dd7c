//! Loss and crashes on the 5-node mixnet (tests/common/mixnet.rs): a
//! fragment lost for good, a lost COMPLETE, SIGKILL of a node holding
//! packets in custody, SIGKILL of the exit. In every case each message
//! reaches the sink exactly once.
//!
//! "Exactly once" is checked after [`MixNet::until_quiet`]: once no node
//! holds a message, a packet or a fragment, nothing more can be delivered,
//! so the sink's count is final rather than a snapshot.
//!
//! The tests of this file share the machine's two cores with 5 node
//! processes each, so they run one at a time ([`SERIAL`]).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::PATIENCE;
use common::link_tap::{Action, Direction, FrameKind, Rule, TapFrame};
use common::mixnet::{LINK_PORT, MixNet, TEST_PARAMS, last_stat, mail, until_stat};
use pluto2::wire::frame::AckStatus;
use tokio::time::Instant;

/// One test at a time: each starts five daemons.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Offset in a PACKET frame (type 1, sequence 8, epoch 4, then the Sphinx
/// packet) of a byte of the Sphinx header's group element: flipping it
/// changes the shared secret the hop derives, so the header MAC fails and
/// the hop rejects the packet.
const IN_HEADER: usize = 1 + 8 + 4 + 8;

/// Test delays, but an acknowledgement timeout no test outlasts: whatever
/// recovers here is custody (links, spool, restart), never the entry's
/// end-to-end retransmission.
const NO_E2E_PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "20ms", "hop_delay_max": "240ms",
    "max_message_size": 262144, "ack_timeout": "120s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "loop_cover_mean": "0s", "drop_cover_mean": "0s"}"#;

/// Hop delays long enough that packets sit in custody for seconds.
const SLOW_PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "1s", "hop_delay_max": "4s",
    "max_message_size": 262144, "ack_timeout": "120s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "loop_cover_mean": "0s", "drop_cover_mean": "0s"}"#;

/// The one exit of the networks started with middles 1, 2 and 3. Being
/// the exit it is never a middle hop (routes and reply routes leave it
/// out), so every PACKET it sends is a COMPLETE or PARTIAL acknowledgement.
const EXIT: usize = 4;

/// Sends a message of about `size` bytes tagged `tag` from node 0.
async fn send(net: &MixNet, size: usize, tag: &str) {
    net.send(0, &mail(size, tag)).await;
}

/// How many copies of each tagged message the sink holds, once the net is
/// quiet (so the count is final).
async fn deliveries(net: &MixNet, tags: &[String]) -> HashMap<String, usize> {
    net.until_quiet().await;
    let got = net.sink.received();
    tags.iter()
        .map(|t| {
            let subject = format!("Subject: {t}\r\n");
            let n = got
                .iter()
                .filter(|r| String::from_utf8_lossy(&r.data).contains(&subject))
                .count();
            (t.clone(), n)
        })
        .collect()
}

async fn assert_each_delivered_once(net: &MixNet, tags: &[String]) {
    let got = deliveries(net, tags).await;
    assert!(
        got.values().all(|&n| n == 1),
        "each message must arrive exactly once: {got:?}"
    );
    assert_eq!(
        net.sink.received().len(),
        tags.len(),
        "nothing else arrived"
    );
}

/// The PACKET frame a rule acted on with `action`, and the status of the
/// ACK the receiving hop sent back for it (same connection, same seq).
async fn acted_on_and_answer(
    net: &MixNet,
    node: usize,
    action: Action,
) -> (TapFrame, Option<AckStatus>) {
    let tap = &net.nodes[node].tap;
    let frames = tap
        .wait_until(|fs| fs.iter().any(|f| f.action == Some(action)), PATIENCE)
        .await
        .expect("the rule acted");
    let hit = frames
        .iter()
        .find(|f| f.action == Some(action))
        .unwrap()
        .clone();
    let answered = |fs: &[TapFrame]| {
        fs.iter().find_map(|f| {
            (f.conn == hit.conn
                && f.dir == Direction::FromTarget
                && f.kind == FrameKind::Ack
                && f.seq == hit.seq)
                .then_some(f.status)
                .flatten()
        })
    };
    let status = match action {
        // A dropped frame gets no answer.
        Action::Drop => None,
        _ => tap
            .wait_until(|fs| answered(fs).is_some(), PATIENCE)
            .await
            .ok()
            .and_then(|fs| answered(&fs)),
    };
    (hit, status)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn spool(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join("spool.sqlite")).unwrap()
}

/// (id, release_at) of every packet in the node's custody.
fn packets_in_custody(data: &Path) -> Vec<(i64, i64)> {
    custody_with_heads(data)
        .into_iter()
        .map(|(id, release, _)| (id, release))
        .collect()
}

/// (row, release time, the packet's first 32 bytes) of every packet held:
/// the head finds the packet on the wire (sequence numbers are random).
fn custody_with_heads(data: &Path) -> Vec<(i64, i64, [u8; 32])> {
    let conn = spool(data);
    let mut stmt = conn
        .prepare("SELECT id, release_at, substr(bytes, 1, 32) FROM mix_packets ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        let head: Vec<u8> = r.get(2)?;
        Ok((r.get(0)?, r.get(1)?, head.try_into().unwrap()))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// (fragments stored, fragments the message has) at an exit holding one
/// incomplete message.
fn fragments_at_exit(data: &Path) -> (u64, u64) {
    spool(data)
        .query_row(
            "SELECT COUNT(*), COALESCE(MAX(count), 0) FROM mix_fragments",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .unwrap()
}

/// Polls `check` (every 20 ms, bounded by PATIENCE) until it gives a value.
async fn poll<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_lost_for_good_is_retransmitted_end_to_end_and_delivered_once() {
    let _one = SERIAL.lock().await;
    let net = MixNet::start(5, TEST_PARAMS).await;
    net.until_healthy(0, 4).await;
    // The entry's first packet arrives damaged: the first hop rejects it,
    // which ends the entry's custody (link custody cannot help), so only
    // the end-to-end retransmission can bring the message through.
    net.nodes[0].tap.add_rule(
        Rule::new(Action::Corrupt(IN_HEADER))
            .dir(Direction::ToTarget)
            .kind(FrameKind::Packet),
    );
    send(&net, 2_000, "lost-fragment").await;
    let (hit, status) = acted_on_and_answer(&net, 0, Action::Corrupt(IN_HEADER)).await;
    assert_eq!(
        status,
        Some(AckStatus::Rejected),
        "the first hop must refuse the damaged packet {hit:?}"
    );
    let entry = net.daemon(0);
    until_stat(entry, "retransmitted", |n| n >= 1).await;
    entry
        .until_queue("the message acknowledged after its retransmission", |q| {
            q["messages"] == 0 && q["mixnet"]["awaiting_ack"] == 0
        })
        .await;
    assert_each_delivered_once(&net, &["lost-fragment".to_string()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_complete_brings_a_retransmission_that_the_exit_acknowledges_without_delivering_again()
 {
    let _one = SERIAL.lock().await;
    let net = MixNet::start_with_middles(5, TEST_PARAMS, &[1, 2, 3]).await;
    net.until_healthy(0, 4).await;
    // The exit's first packet out is the COMPLETE: damaged, the first hop
    // of the reply route rejects it and the acknowledgement is gone.
    net.nodes[EXIT].tap.add_rule(
        Rule::new(Action::Corrupt(IN_HEADER))
            .dir(Direction::ToTarget)
            .kind(FrameKind::Packet),
    );
    send(&net, 2_000, "lost-complete").await;
    let (hit, status) = acted_on_and_answer(&net, EXIT, Action::Corrupt(IN_HEADER)).await;
    assert_eq!(status, Some(AckStatus::Rejected), "{hit:?}");
    let entry = net.daemon(0);
    until_stat(entry, "retransmitted", |n| n >= 1).await;
    entry
        .until_queue("the message acknowledged at last", |q| {
            q["messages"] == 0 && q["mixnet"]["awaiting_ack"] == 0
        })
        .await;
    assert_each_delivered_once(&net, &["lost-complete".to_string()]).await;
    // The retransmitted fragment reached the exit, which answered it
    // again instead of delivering it again.
    until_stat(net.daemon(EXIT), "exit_duplicates", |n| n >= 1).await;
    until_stat(net.daemon(EXIT), "exit_completed", |n| n >= 1).await;
    assert_eq!(last_stat(net.daemon(EXIT), "exit_completed"), Some(1));
}

/// What this test asserts about time, precisely:
/// - every packet the killed node held is still held after the restart
///   (custody is on disk), and leaves it afterwards;
/// - a packet whose release time had passed while the node was down gets
///   a new release time at or after the restart (a fresh delay, so the
///   backlog does not leave in one burst the moment links come up); every
///   other packet keeps its release time or a later one;
/// - no packet leaves the restarted node (first PACKET frame with its
///   sequence number on the node's outbound links, as the tap saw it)
///   before its release time as stored after the restart.
///
/// The restarted node's outbound links are held down while the spool is
/// read back, so nothing can leave (and be deleted) before it is looked
/// at. The node stays down until at least one of its packets is overdue.
/// The acknowledgement timeout is longer than the test, so nothing is
/// rescued by an end-to-end retransmission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middle_node_killed_with_packets_in_custody_loses_nothing_and_releases_nothing_early() {
    let _one = SERIAL.lock().await;
    let mut net = MixNet::start(5, SLOW_PARAMS).await;
    net.until_healthy(0, 4).await;
    let tags: Vec<String> = (0..6).map(|i| format!("custody-{i}")).collect();
    for t in &tags {
        send(&net, 1_000, t).await;
    }
    // A node other than the entry holding at least two packets.
    let m = poll("a node holding two packets for later", || {
        (1..5).find(|&i| {
            net.mixnet_counts(i)["packets_forward"]
                .as_u64()
                .is_some_and(|n| n >= 2)
        })
    })
    .await;
    net.nodes[m].daemon.as_mut().unwrap().kill9();
    let held = packets_in_custody(&net.nodes[m].data);
    assert!(!held.is_empty(), "node {m} held nothing at its death");
    // Down until the earliest release time has passed.
    let earliest = held.iter().map(|p| p.1).min().unwrap();
    let wait = (earliest + 20 - unix_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;

    let peers: Vec<String> = (0..5)
        .filter(|&i| i != m)
        .map(|i| net.nodes[i].onion.clone())
        .collect();
    for p in &peers {
        net.nodes[m].tap.down(p, LINK_PORT);
    }
    let (restart_ms, restart_at) = (unix_ms(), Instant::now());
    net.start_node(m, &[]);
    let custody = custody_with_heads(&net.nodes[m].data);
    let heads: HashMap<i64, [u8; 32]> = custody.iter().map(|(id, _, h)| (*id, *h)).collect();
    let after: HashMap<i64, i64> = custody.iter().map(|(id, r, _)| (*id, *r)).collect();
    let mut overdue = 0;
    for (id, before) in &held {
        let Some(&now) = after.get(id) else {
            panic!(
                "packet {id} of node {m} was lost in the restart: held {held:?}, after {after:?}"
            );
        };
        if *before < restart_ms {
            overdue += 1;
            assert!(
                now >= restart_ms,
                "overdue packet {id} kept its old release time ({before}, restart at {restart_ms}): it would leave at once"
            );
        } else {
            assert!(
                now >= *before,
                "packet {id} moved earlier: {before} -> {now}"
            );
        }
    }
    assert!(overdue >= 1, "the node was down past a release time");
    net.daemon(m)
        .until_log("about the fresh delays", |l| {
            l.contains("overdue packet(s) got a fresh delay after the restart")
        })
        .await;
    for p in &peers {
        net.nodes[m].tap.up(p, LINK_PORT);
    }

    let entry = net.daemon(0);
    entry
        .until_queue("every message acknowledged", |q| q["messages"] == 0)
        .await;
    assert_each_delivered_once(&net, &tags).await;
    assert_eq!(
        last_stat(entry, "retransmitted"),
        Some(0),
        "custody alone must carry the messages"
    );

    // On the wire: each held packet left after the restart, not before its
    // release time.
    let frames = net.nodes[m].tap.frames();
    for (id, release) in &after {
        if !held.iter().any(|h| h.0 == *id) {
            continue;
        }
        let first = frames
            .iter()
            .find(|f| {
                f.kind == FrameKind::Packet
                    && f.dir == Direction::ToTarget
                    && f.at > restart_at
                    && f.head == Some(heads[id])
            })
            .unwrap_or_else(|| panic!("packet {id} never left node {m} after the restart"));
        let sent_ms = restart_ms + (first.at - restart_at).as_millis() as i64;
        // A few ms for reading the two clocks one after the other.
        assert!(
            sent_ms + 5 >= *release,
            "packet {id} left at {sent_ms}, {} ms before its release time {release}",
            release - sent_ms
        );
    }
}

/// The exit dies holding some fragments of a message while the hops
/// before it still hold the others (their frames were lost on the wire,
/// so they were never acknowledged). After the restart the hops send the
/// rest again, the stored fragments are still there, and the message is
/// completed and delivered once, without any end-to-end retransmission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_killed_between_fragments_completes_the_message_once_after_its_restart() {
    let _one = SERIAL.lock().await;
    let mut net = MixNet::start_with_middles(5, NO_E2E_PARAMS, &[1, 2, 3]).await;
    net.until_healthy(0, 4).await;
    let exit_onion = net.nodes[EXIT].onion.clone();
    for i in 1..=3 {
        net.nodes[i].tap.add_rule(
            Rule::new(Action::Drop)
                .link(&exit_onion)
                .dir(Direction::ToTarget)
                .kind(FrameKind::Packet),
        );
    }
    send(&net, 60_000, "exit-killed-early").await;
    let dropped = |net: &MixNet| -> u64 {
        (1..=3)
            .map(|i| {
                net.nodes[i]
                    .tap
                    .frames()
                    .iter()
                    .filter(|f| f.action == Some(Action::Drop))
                    .count() as u64
            })
            .sum()
    };
    // Every fragment either stored at the exit or lost on its way there.
    let (have, count) = poll("every fragment stored or lost", || {
        let (have, count) = fragments_at_exit(&net.nodes[EXIT].data);
        let lost = dropped(&net);
        (count > 0 && lost >= 1 && have + lost == count).then_some((have, count))
    })
    .await;
    assert!(have >= 1 && have < count, "{have} of {count}");
    assert_eq!(net.mixnet_counts(EXIT)["exit_partial"], 1);
    net.nodes[EXIT].daemon.as_mut().unwrap().kill9();
    net.start_node(EXIT, &[]);

    let entry = net.daemon(0);
    entry
        .until_queue("the message acknowledged", |q| q["messages"] == 0)
        .await;
    assert_each_delivered_once(&net, &["exit-killed-early".to_string()]).await;
    assert_eq!(last_stat(entry, "retransmitted"), Some(0));
}

/// The exit completes a message (delivered, COMPLETE queued) but its
/// COMPLETE is lost on the wire, so the exit still holds it, and dies.
/// After the restart it sends the COMPLETE again: the entry stops, and
/// nothing is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_killed_before_its_complete_got_through_sends_it_after_the_restart() {
    let _one = SERIAL.lock().await;
    let mut net = MixNet::start_with_middles(5, NO_E2E_PARAMS, &[1, 2, 3]).await;
    net.until_healthy(0, 4).await;
    net.nodes[EXIT].tap.add_rule(
        Rule::new(Action::Drop)
            .dir(Direction::ToTarget)
            .kind(FrameKind::Packet),
    );
    send(&net, 2_000, "exit-killed-late").await;
    acted_on_and_answer(&net, EXIT, Action::Drop).await;
    // Delivered, and the COMPLETE still in the exit's custody.
    net.daemon(EXIT)
        .until_queue("delivered, COMPLETE held", |q| {
            q["messages"] == 0 && q["mixnet"]["packets_ack"] == 1
        })
        .await;
    net.sink.wait_for(1).await;
    assert_eq!(net.mixnet_counts(0)["awaiting_ack"], 1);
    net.nodes[EXIT].daemon.as_mut().unwrap().kill9();
    net.start_node(EXIT, &[]);

    let entry = net.daemon(0);
    entry
        .until_queue("the message acknowledged", |q| q["messages"] == 0)
        .await;
    assert_each_delivered_once(&net, &["exit-killed-late".to_string()]).await;
    assert_eq!(last_stat(entry, "retransmitted"), Some(0));
}
