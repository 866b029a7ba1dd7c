//! Mixnet mode when the network is not all there: mail waits in the spool
//! (never leaving directly) while too few nodes are reachable, is sent once
//! they come back, and stays counted until the exit's COMPLETE reaches the
//! entry. Plus "Tor only" for a `-sphinx` node, observed with strace.
//! Networks of 5 real `pluto2 -sphinx` processes (tests/common/mixnet.rs).

mod common;

use std::time::Duration;

use common::mixnet::{LINK_PORT, MixNet, TEST_PARAMS};
use common::{Daemon, PATIENCE};

/// Where the next log line of `d` will land: a [STATS] line at or after
/// this index was computed after everything the test did before.
fn mark(d: &Daemon) -> usize {
    d.logs.lock().unwrap().len()
}

/// One `key=value` field of a `[STATS]` line, as text.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// A numeric `[STATS]` field; a missing field is a failure, not a zero.
fn num(line: &str, key: &str) -> u64 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key}= in {line}"))
}

/// `healthy=H/N` as (H, N).
fn healthy(line: &str) -> (u64, u64) {
    field(line, "healthy")
        .and_then(|v| v.split_once('/'))
        .and_then(|(h, n)| Some((h.parse().ok()?, n.parse().ok()?)))
        .unwrap_or_else(|| panic!("no healthy=H/N in {line}"))
}

/// Waits (bounded by PATIENCE) for a `[STATS]` line logged at or after
/// `from` that satisfies `ok`, and returns it.
async fn until_stats(d: &Daemon, from: usize, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = d.logs.lock().unwrap()[from..]
            .iter()
            .find(|l| l.contains("[STATS]") && ok(l))
            .cloned();
        if let Some(line) = found {
            return line;
        }
        if tokio::time::Instant::now() >= deadline {
            // Copied first: panicking with the lock held would poison it
            // for the thread that reads the daemon's logs.
            let last: Vec<String> = d.logs.lock().unwrap()[from..]
                .iter()
                .rev()
                .take(8)
                .cloned()
                .collect();
            panic!(
                "no [STATS] line with {what}; last lines:\n{}",
                last.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every CONNECT the entry made went to a node's link port, none to port
/// 25 or anywhere else: nothing left the entry directly.
fn assert_only_links(net: &MixNet, i: usize) {
    let peers: Vec<&str> = net.nodes.iter().map(|n| n.onion.as_str()).collect();
    let requests = net.nodes[i].tap.requests();
    assert!(!requests.is_empty(), "the entry dialled nothing");
    for r in &requests {
        assert!(
            r.port == LINK_PORT && peers.contains(&r.host.as_str()),
            "the entry dialled something other than a link: {}:{} (all: {:?})",
            r.host,
            r.port,
            requests
                .iter()
                .map(|r| format!("{}:{}", r.host, r.port))
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_too_few_reachable_nodes_mail_waits_then_crosses_the_mixnet_when_they_return() {
    let net = MixNet::start(5, TEST_PARAMS).await;
    net.until_healthy(0, 4).await;
    let entry = net.daemon(0);
    let tap = &net.nodes[0].tap;
    // A route needs 3 distinct usable nodes besides the entry. With two of
    // the four unreachable from the entry (refused, open links cut), two
    // remain: one short.
    let gone = [1, 2];
    let from = mark(entry);
    for &i in &gone {
        tap.down(&net.nodes[i].onion, LINK_PORT);
    }
    until_stats(entry, from, "healthy=2/4", |l| healthy(l) == (2, 4)).await;

    let from = mark(entry);
    let _held = net.send(0, "Subject: wait\r\n\r\nheld").await;
    // The sender looked, found no route, and said so.
    let line = until_stats(entry, from, "no_route >= 1", |l| num(l, "no_route") >= 1).await;
    let (h, n) = healthy(&line);
    assert!(h < 3 && n == 4, "healthy={h}/{n} while two nodes are gone");
    assert_eq!(
        num(&line, "sphinx"),
        0,
        "nothing entered the mixnet: {line}"
    );
    assert_eq!(num(&line, "direct"), 0, "{line}");
    // The mail waits in the spool: counted, not sent anywhere.
    let q = entry.queue_json();
    assert_eq!(q["messages"], 1, "{q}");
    // Another round still finds no route (the sender looks again at least
    // every few seconds while mail waits), and still nothing left.
    let again = num(&line, "no_route") + 1;
    let from = mark(entry);
    let line = until_stats(entry, from, "a second no_route round", |l| {
        num(l, "no_route") >= again
    })
    .await;
    assert_eq!(num(&line, "sphinx"), 0, "{line}");
    // Rounds come from the retry timer and from links changing state, not
    // from a loop that spins while the mail is due.
    assert!(
        num(&line, "no_route") <= 4,
        "the sender spins while no route exists: {line}"
    );
    assert_eq!(entry.queue_json()["messages"], 1);
    assert!(
        net.sink.received().is_empty(),
        "mail left while no route existed"
    );
    assert_only_links(&net, 0);

    // The nodes come back: the entry dials them again, builds a route and
    // the exit's COMPLETE ends the entry's custody.
    let back = std::time::Instant::now();
    for &i in &gone {
        tap.up(&net.nodes[i].onion, LINK_PORT);
    }
    entry
        .until_queue("the waiting message acknowledged by its exit", |q| {
            q["messages"] == 0
        })
        .await;
    let got = net.sink.wait_for(1).await;
    eprintln!(
        "delivered and acknowledged {:?} after the nodes came back",
        back.elapsed()
    );
    assert_eq!(got.len(), 1, "one delivery");
    assert!(
        String::from_utf8_lossy(&got[0].data).contains("held"),
        "the waiting mail arrived"
    );
    // Both nodes are dialled again (the second may still be in its
    // reconnect pause when the first suffices for a route).
    let from = mark(entry);
    let line = until_stats(entry, from, "healthy=4/4 and acked=1", |l| {
        healthy(l) == (4, 4) && num(l, "acked") >= 1
    })
    .await;
    eprintln!(
        "both nodes usable again {:?} after they came back",
        back.elapsed()
    );
    assert_eq!(num(&line, "sphinx"), 1, "{line}");
    assert_eq!(num(&line, "direct"), 0, "{line}");
    assert_only_links(&net, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sphinx_node_connects_only_to_its_socks_port_and_opens_no_udp_socket() {
    let mut net = MixNet::start(5, TEST_PARAMS).await;
    // The entry again, traced from its first instruction.
    net.restart_node_traced(0, &["-e", "trace=socket,connect,sendto,sendmsg"]);
    net.until_healthy(0, 4).await;
    let entry = net.daemon(0);
    let mut c = net.send(0, "Subject: traced\r\n\r\nhi").await;
    c.code("QUIT").await;
    net.sink.wait_for(1).await;
    entry
        .until_queue("acknowledged by its exit", |q| q["messages"] == 0)
        .await;
    let text = net.daemon_mut(0).stop_traced();
    let inet_connects = common::assert_only_socks(&text, net.nodes[0].tap.addr.port());
    // One link to each of the four other nodes at least.
    assert!(inet_connects >= 4, "too few connections traced:\n{text}");
    assert_only_links(&net, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_counts_a_message_until_its_complete_arrives_even_after_the_exit_delivered() {
    let net = MixNet::start(5, TEST_PARAMS).await;
    net.until_healthy(0, 4).await;
    let entry = net.daemon(0);
    let onion0 = net.nodes[0].onion.clone();
    // Nothing reaches the entry: every other node's link to it is refused.
    // The entry's own links stay up, so the mail goes in, crosses, and is
    // delivered; only the COMPLETE cannot come back.
    for n in &net.nodes[1..] {
        n.tap.down(&onion0, LINK_PORT);
    }
    let from = mark(entry);
    let _c = net.send(0, "Subject: count\r\n\r\ncounted").await;
    let got = net.sink.wait_for(1).await;
    assert_eq!(got.len(), 1);
    // The exit delivered, yet the entry has no COMPLETE: it keeps the
    // message, and once the acknowledgement is overdue it retransmits.
    let line = until_stats(entry, from, "a retransmission", |l| {
        num(l, "retransmitted") >= 1
    })
    .await;
    assert_eq!(num(&line, "acked"), 0, "{line}");
    let q = entry.queue_json();
    assert_eq!(q["messages"], 1, "counted until COMPLETE: {q}");

    // The way back opens: COMPLETE arrives and the message is gone.
    for n in &net.nodes[1..] {
        n.tap.up(&onion0, LINK_PORT);
    }
    entry
        .until_queue("the COMPLETE at the entry", |q| q["messages"] == 0)
        .await;
    let from = mark(entry);
    let line = until_stats(entry, from, "acked=1", |l| num(l, "acked") >= 1).await;
    assert!(num(&line, "sphinx") >= 1, "{line}");
    assert_eq!(num(&line, "direct"), 0, "{line}");
    // Retransmitted fragments reached an exit that had finished: it
    // acknowledged them again and delivered nothing twice.
    assert_eq!(net.sink.received().len(), 1, "one delivery");
    assert_only_links(&net, 0);
}
