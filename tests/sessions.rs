//! Connection-level limits of the real binary: timeouts, concurrency,
//! rate limits and the PROXY header.

mod common;

use common::{Client, Daemon};

#[tokio::test]
async fn idle_clients_are_timed_out_with_421() {
    let d = Daemon::start(&["-idle-timeout", "1s"]);
    let mut c = d.client().await;
    // The server speaks first once the timeout passes; the test just waits
    // for that reply (bounded by PATIENCE).
    c.told_421_and_closed("4.4.2").await;
}

#[tokio::test]
async fn a_stalled_client_does_not_block_others() {
    let d = Daemon::start(&[]);
    let mut slow = d.client().await;
    slow.send(b"EHLO half-a-line").await; // no CRLF: the session waits
    let mut slow_data = d.ehlo_client().await;
    slow_data
        .start_data("a@example.org", &["b@example.org"])
        .await;
    slow_data.send(b"partial body").await;
    let mut fast = d.ehlo_client().await;
    assert_eq!(
        fast.send_mail("a@example.org", &["c@example.org"], "hi")
            .await,
        250
    );
    assert_eq!(d.queue_json()["messages"], 1);
}

#[tokio::test]
async fn sessions_over_the_rate_limit_get_421() {
    let d = Daemon::start(&["-rate-limit", "3", "-rate-window", "1h"]);
    for _ in 0..3 {
        let mut c = d.client().await;
        assert_eq!(c.code("QUIT").await, 221);
    }
    let mut c = Client::connect(d.addr).await;
    c.told_421_and_closed("4.7.0").await;
    d.until_log("about the rate limit", is_rate_limit_line)
        .await;
    let logs = d.log_text();
    let leaked = logs
        .lines()
        .any(|l| l.contains("127.0.0.1") && !l.contains("listening on"));
    assert!(!leaked, "client IP logged without -debug:\n{logs}");
}

fn is_rate_limit_line(line: &str) -> bool {
    line.contains("rate limit")
}

/// The source address Tor would announce for circuit `id`.
fn circuit_header(id: &str) -> String {
    format!("PROXY TCP6 fc00:dead:beef:4dad::0:{id} ::1 65535 25\r\n")
}

async fn proxied(d: &Daemon, header: &[u8]) -> Client {
    let mut c = Client::connect(d.addr).await;
    c.send(header).await;
    c
}

#[tokio::test]
async fn proxy_header_identifies_each_tor_circuit() {
    let d = Daemon::start(&["-proxy-protocol", "-rate-limit", "1", "-rate-window", "1h"]);
    let circuit_a = circuit_header("a");
    let mut a1 = proxied(&d, circuit_a.as_bytes()).await;
    assert_eq!(a1.reply().await.0, 220);
    assert_eq!(a1.code("QUIT").await, 221);
    let mut a2 = proxied(&d, circuit_a.as_bytes()).await;
    let (code, text) = a2.reply().await;
    assert_eq!(code, 421, "same circuit again: {text}");
    let mut b = proxied(&d, circuit_header("b").as_bytes()).await;
    assert_eq!(b.reply().await.0, 220, "another circuit has its own budget");
    // Header and first command in one write (Tor sends the header first;
    // a pipelining client may follow immediately).
    let mut c = proxied(&d, format!("{}NOOP\r\n", circuit_header("c")).as_bytes()).await;
    assert_eq!(c.reply().await.0, 220);
    assert_eq!(c.reply().await.0, 250);
}

#[tokio::test]
async fn a_rate_limited_circuit_is_not_named_in_the_logs() {
    // The announced source is the circuit id: as identifying as an IP, and
    // recognisable in any spelling of the address ("4dad").
    let d = Daemon::start(&["-proxy-protocol", "-rate-limit", "1", "-rate-window", "1h"]);
    let circuit = circuit_header("7e57");
    let mut first = proxied(&d, circuit.as_bytes()).await;
    assert_eq!(first.reply().await.0, 220);
    assert_eq!(first.code("QUIT").await, 221);
    let mut again = proxied(&d, circuit.as_bytes()).await;
    assert_eq!(again.reply().await.0, 421);
    d.until_log("about the rate limit", is_rate_limit_line)
        .await;
    let logs = d.log_text();
    for needle in ["4dad", "7e57", "fc00"] {
        assert!(
            !logs.contains(needle),
            "circuit identity logged without -debug:\n{logs}"
        );
    }
}

#[tokio::test]
async fn missing_or_malformed_proxy_header_closes_the_connection() {
    let d = Daemon::start(&["-proxy-protocol"]);
    for header in [
        &b"EHLO client.example\r\n"[..],
        b"PROXY TCP4 not-an-ip 127.0.0.1 1 25\r\n",
    ] {
        let mut c = proxied(&d, header).await;
        assert!(c.try_reply().await.is_none(), "got a reply to {header:?}");
    }
}
