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
    let (code, text) = c.reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.4.2"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_stalled_client_does_not_block_others() {
    let d = Daemon::start(&[]);
    let mut slow = d.client().await;
    slow.send(b"EHLO half-a-line").await; // no CRLF: the session waits
    let mut slow_data = d.client().await;
    slow_data.code("EHLO s.example").await;
    slow_data.code("MAIL FROM:<a@example.org>").await;
    slow_data.code("RCPT TO:<b@example.org>").await;
    slow_data.code("DATA").await;
    slow_data.send(b"partial body").await;
    let mut fast = d.client().await;
    fast.code("EHLO f.example").await;
    assert_eq!(
        fast.send_mail("a@example.org", &["c@example.org"], "hi")
            .await,
        250
    );
    assert_eq!(d.queue_json()["messages"], 1);
}

#[tokio::test]
async fn connections_over_the_limit_get_421() {
    let d = Daemon::start(&["-max-connections", "2"]);
    let _a = d.client().await;
    let _b = d.client().await;
    let mut c = Client::connect(d.addr).await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.7.0"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn sessions_over_the_rate_limit_get_421() {
    let d = Daemon::start(&["-rate-limit", "3", "-rate-window", "1h"]);
    for _ in 0..3 {
        let mut c = d.client().await;
        assert_eq!(c.code("QUIT").await, 221);
    }
    let mut c = Client::connect(d.addr).await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.7.0"));
    assert!(c.closed().await);
    assert!(
        !d.log_text().contains("127.0.0.1 "),
        "client IP logged without -debug"
    );
}

async fn proxied(d: &Daemon, header: &[u8]) -> Client {
    let mut c = Client::connect(d.addr).await;
    c.send(header).await;
    c
}

#[tokio::test]
async fn proxy_header_identifies_each_tor_circuit() {
    let d = Daemon::start(&["-proxy-protocol", "-rate-limit", "1", "-rate-window", "1h"]);
    let circuit_a = b"PROXY TCP6 fc00:dead:beef:4dad::0:a ::1 65535 25\r\n";
    let circuit_b = b"PROXY TCP6 fc00:dead:beef:4dad::0:b ::1 65535 25\r\n";
    let mut a1 = proxied(&d, circuit_a).await;
    assert_eq!(a1.reply().await.0, 220);
    assert_eq!(a1.code("QUIT").await, 221);
    let mut a2 = proxied(&d, circuit_a).await;
    let (code, text) = a2.reply().await;
    assert_eq!(code, 421, "same circuit again: {text}");
    let mut b = proxied(&d, circuit_b).await;
    assert_eq!(b.reply().await.0, 220, "another circuit has its own budget");
    // Header and first command in one write (Tor sends the header first;
    // a pipelining client may follow immediately).
    let mut c = proxied(
        &d,
        b"PROXY TCP6 fc00:dead:beef:4dad::0:c ::1 65535 25\r\nNOOP\r\n",
    )
    .await;
    assert_eq!(c.reply().await.0, 220);
    assert_eq!(c.reply().await.0, 250);
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
