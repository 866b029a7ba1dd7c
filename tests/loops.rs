//! Mail loops between relays: every relayed message carries a hop count
//! that says nothing else, and intake refuses a message that has made too
//! many hops, so mail cycling between two nodes (or a node and an MTA that
//! keeps headers) stops.

mod common;

use common::smtp_sink::{Behaviour, Sink};
use common::socks_proxy::SocksProxy;
use common::{Daemon, onion};

/// Postfix's `hopcount_limit` default, which pluto2 follows.
const LIMIT: usize = 50;

fn trace_lines(name: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{name}: from relay{i}.example by relay{}.example\r\n",
                i + 1
            )
        })
        .collect()
}

#[tokio::test]
async fn a_message_that_has_made_the_hop_limit_is_refused_at_data_and_not_queued() {
    let d = Daemon::start(&[]);
    let mut c = d.ehlo_client().await;
    let to = format!("x@{}", onion(9));
    let under = LIMIT - 1;
    // (header block, accepted?): every way of counting a hop, just under
    // and at the limit.
    let cases = [
        (format!("X-Hop-Count: {under}\r\n"), true),
        (format!("X-Hop-Count: {LIMIT}\r\n"), false),
        (trace_lines("Received", under), true),
        (trace_lines("Received", LIMIT), false),
        (
            trace_lines("Received", 20) + &trace_lines("Delivered-To", 20) + "X-Hop-Count: 9\r\n",
            true,
        ),
        (
            trace_lines("Received", 20) + &trace_lines("Delivered-To", 20) + "X-Hop-Count: 10\r\n",
            false,
        ),
    ];
    let mut accepted = 0;
    for (i, (head, ok)) in cases.iter().enumerate() {
        let body = format!("{head}Subject: case {i}\r\n\r\nbody {i}");
        c.start_data("a@example.org", &[&to]).await;
        c.send(body.as_bytes()).await;
        c.send(b"\r\n.\r\n").await;
        let (code, text) = c.reply().await;
        if *ok {
            assert_eq!(code, 250, "case {i}: {text}");
            accepted += 1;
        } else {
            assert!(text.starts_with("554 5.4.6 "), "case {i}: {text}");
            assert!(text.contains("too many hops"), "case {i}: {text}");
        }
    }
    assert_eq!(
        d.queue_json()["messages"],
        accepted,
        "a refused message was queued"
    );
    d.until_log("the loop refusal", |l| {
        l.contains("[LOOP]") && l.contains(&format!("{LIMIT} hops"))
    })
    .await;
}

/// Flags of a node that delivers at once through `proxy`.
fn relay_flags(proxy: &SocksProxy, extra: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = [
        "-batch-window",
        "0",
        "-tor-socks",
        &proxy.addr.to_string(),
        "-dns-server",
        "192.0.2.53:53",
        "-retry-base",
        "1s",
        "-delivery-timeout",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.extend(extra.iter().map(|s| s.to_string()));
    all
}

fn start(proxy: &SocksProxy, extra: &[&str]) -> Daemon {
    let all = relay_flags(proxy, extra);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Daemon::start(&refs)
}

#[tokio::test]
async fn relayed_mail_carries_one_hop_more_and_nothing_else() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour::default()).await;
    let dest = onion(2);
    proxy.route(&dest, 25, sink.addr);
    let to = format!("bob@{dest}");
    for (sanitize, head, expected) in [
        // Arrived from another relay: one more.
        ("true", "X-Hop-Count: 7\r\n".to_string(), 8),
        // The author's own servers: their Received lines are dropped and
        // not counted, so the count does not tell how the author submitted.
        ("true", trace_lines("Received", 3), 1),
        // Headers passed on: the Received lines stay, the counter counts
        // only relays that count.
        (
            "false",
            trace_lines("Received", 2) + "X-Hop-Count: 3\r\nX-Hop-Count: 1\r\n",
            4,
        ),
    ] {
        let d = start(&proxy, &["-pad-block", "0", "-sanitize", sanitize]);
        let before = sink.received().len();
        let mut c = d.ehlo_client().await;
        let body = format!("{head}Subject: hops\r\n\r\nbody\r\n");
        assert_eq!(c.send_mail("alice@example.net", &[&to], &body).await, 250);
        let got = sink.wait_for(before + 1).await;
        let data = String::from_utf8_lossy(&got[before].data).into_owned();
        let counters: Vec<&str> = data
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-hop-count"))
            .collect();
        assert_eq!(
            counters,
            [format!("X-Hop-Count: {expected}")],
            "sanitize={sanitize}: {data}"
        );
        let received = data.matches("Received: ").count();
        let kept = if sanitize == "true" { 0 } else { 2 };
        assert_eq!(received, kept, "sanitize={sanitize}: {data}");
    }
}

#[tokio::test]
async fn mail_looping_between_two_nodes_stops_at_the_hop_limit() {
    // Each node's "Tor" leads to the other for the same onion name, the
    // way two relays that each take the other for the destination would
    // pass a message back and forth for ever. Padding stays on: a node
    // strips the other's padding before counting.
    let proxy_a = SocksProxy::start().await;
    let proxy_b = SocksProxy::start().await;
    // Every session comes from 127.0.0.1 here; behind Tor with
    // -proxy-protocol each would come from its own circuit, and no rate
    // limit would slow the loop down either.
    let a = start(&proxy_a, &["-rate-limit", "1000"]);
    let b = start(&proxy_b, &["-rate-limit", "1000"]);
    let dest = onion(9);
    proxy_a.route(&dest, 25, b.addr);
    proxy_b.route(&dest, 25, a.addr);

    let mut c = a.ehlo_client().await;
    let to = format!("x@{dest}");
    let body = "Subject: round and round\r\n\r\nbody\r\n";
    assert_eq!(c.send_mail("alice@example.net", &[&to], body).await, 250);

    // The message leaves A with count 1, B with 2, …; the node that
    // receives it with count 50 refuses it, the sender drops it as a
    // permanent failure, and both spools empty.
    let refusal = |l: &str| l.contains("[LOOP]") && l.contains(&format!("{LIMIT} hops"));
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let refused_by = loop {
        if let Some(line) = a.logs.lock().unwrap().iter().find(|l| refusal(l)) {
            break ("A", line.clone());
        }
        if let Some(line) = b.logs.lock().unwrap().iter().find(|l| refusal(l)) {
            break ("B", line.clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loop never stopped; A:\n{}\nB:\n{}",
            a.log_text(),
            b.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // Count 50 arrives at A (the even counts go to A).
    assert_eq!(refused_by.0, "A", "{}", refused_by.1);
    a.until_queue("empty", |q| q["messages"] == 0).await;
    b.until_queue("empty", |q| q["messages"] == 0).await;
    // Exactly one refusal: nothing is left circulating.
    let refusals = |d: &Daemon| {
        d.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("[LOOP]"))
            .count()
    };
    assert_eq!(refusals(&a) + refusals(&b), 1);
}
