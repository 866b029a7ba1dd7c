//! `-metrics` with the real binary: scrapes over TCP loopback and over a
//! unix socket, counters that count exactly what they name (cover apart
//! from `sent`), refusals by reason, readiness across a stop, refusals of a
//! non-loopback address and of a path that is not a socket, and a request
//! reader that cuts off oversized and trickling requests. Nothing scraped
//! names the mail it counts.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::smtp_sink::{Behaviour, Sink};
use common::socks_proxy::SocksProxy;
use common::{
    BIN, Daemon, DeadEnd, PATIENCE, http_exchange, http_get, metric_value, onion, refused,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// The metrics endpoint's head deadline (admin::HEAD_DEADLINE).
const HEAD_DEADLINE: Duration = Duration::from_secs(3);

const SENDER: &str = "alice-metrics-sender@example.net";
const SUBJECT: &str = "metrics-test-subject-7q2";

fn must(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Scrapes until `done` holds (bounded by PATIENCE) and returns the text.
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, text) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn flags<'a>(proxy: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        "-tor-socks",
        proxy,
        "-batch-window",
        "0",
        "-delivery-timeout",
        "5s",
        "-retry-base",
        "1s",
        // Loop cover comes back from 127.0.0.1 like the test's own client.
        "-rate-limit",
        "1000",
    ];
    all.extend_from_slice(extra);
    all
}

async fn send(d: &Daemon, to: &str, n: usize) {
    let mut c = d.ehlo_client().await;
    for i in 0..n {
        let body = format!("Subject: {SUBJECT}\r\n\r\nmessage {i}\r\n");
        assert_eq!(c.send_mail(SENDER, &[to], &body).await, 250);
    }
    c.code("QUIT").await;
}

#[tokio::test]
async fn counters_over_tcp_equal_what_was_sent_and_cover_is_counted_apart() {
    const N: usize = 3;
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour::default()).await;
    let dest = onion(2);
    proxy.route(&dest, 25, sink.addr);
    let socks = proxy.addr.to_string();
    let d = Daemon::start(&flags(
        &socks,
        &[
            "-metrics",
            "127.0.0.1:0",
            "-cover-interval",
            "200ms",
            "-stats-interval",
            "1s",
        ],
    ));
    // Our own onion name leads back to our own listener, as through Tor.
    proxy.route(&d.name, 25, d.addr);
    let addr = d.metrics_addr().await;
    let to = format!("bob-metrics@{dest}");
    send(&d, &to, N).await;
    sink.wait_for(N).await;
    let text = scrape_until(addr, "all mail and some cover delivered", |t| {
        metric_value(t, "pluto2_recipients_delivered_total") >= Some(N as f64)
            && metric_value(t, "pluto2_cover_delivered_total") >= Some(1.0)
            && metric_value(t, "pluto2_cover_received_total") >= Some(1.0)
    })
    .await;
    assert_eq!(must(&text, "pluto2_recipients_delivered_total"), N as f64);
    assert_eq!(
        must(&text, "pluto2_messages_total{outcome=\"queued\"}"),
        N as f64,
        "cover coming back is not received mail"
    );
    assert_eq!(must(&text, "pluto2_recipients_failed_total"), 0.0);
    assert!(must(&text, "pluto2_cover_sent_total") >= 1.0);
    assert!(must(&text, "pluto2_padding_bytes_total") > 0.0);
    assert!(must(&text, "pluto2_spool_commit_seconds_count") >= N as f64);
    assert_eq!(sink.received().len(), N, "cover never reached the sink");
    assert!(text.contains("# TYPE pluto2_queue_recipients gauge"));
    // The [STATS] line reads the same counters.
    let line = d
        .until_log("[STATS] with cover delivered", |l| {
            l.contains("[STATS]") && !l.contains(" cover_delivered=0")
        })
        .await;
    assert!(line.contains(&format!(" sent={N} ")), "{line}");
    assert!(line.contains(&format!(" received={N} ")), "{line}");
    // Nothing served names the mail: not the sender, recipient or subject.
    for secret in [SENDER, "bob-metrics", dest.as_str(), SUBJECT, "example.net"] {
        assert!(!text.contains(secret), "{secret} in the scrape");
    }
}

#[tokio::test]
async fn a_refused_rcpt_is_counted_under_its_class_and_reason() {
    let d = Daemon::start(&["-metrics", "127.0.0.1:0"]);
    let addr = d.metrics_addr().await;
    let mut c = d.ehlo_client().await;
    assert_eq!(c.code(&format!("MAIL FROM:<{SENDER}>")).await, 250);
    // Not a valid v3 onion name: 553 5.1.2.
    assert_eq!(c.code("RCPT TO:<bob@notanonion.onion>").await, 553);
    c.code("QUIT").await;
    let text = scrape_until(addr, "the session counted", |t| {
        metric_value(t, "pluto2_smtp_sessions_total{outcome=\"closed\"}") == Some(1.0)
    })
    .await;
    assert_eq!(
        must(
            &text,
            "pluto2_smtp_refusals_total{class=\"permanent\",reason=\"addressing\"}"
        ),
        1.0
    );
    let refusals: f64 = text
        .lines()
        .filter(|l| l.starts_with("pluto2_smtp_refusals_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(refusals, 1.0, "one refusal in all:\n{text}");
    assert!(!text.contains("notanonion"), "the address in the scrape");
}

// Multi-threaded: the sink must answer while this thread waits for the
// daemon to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_200_once_listening_and_503_as_soon_as_a_stop_begins() {
    let proxy = SocksProxy::start().await;
    // The next hop answers the final dot late (within -delivery-timeout),
    // so the stop waits for it.
    let sink = Sink::start(Behaviour {
        dot_delay: Some(Duration::from_secs(4)),
        ..Behaviour::default()
    })
    .await;
    let dest = onion(3);
    proxy.route(&dest, 25, sink.addr);
    let socks = proxy.addr.to_string();
    let mut d = Daemon::start(&flags(
        &socks,
        &["-metrics", "127.0.0.1:0", "-cover-interval", "0"],
    ));
    let addr = d.metrics_addr().await;
    // Start has logged "listening": ready (before that moment the endpoint
    // may not be serving yet, so "503 before ready" is unit-tested only).
    assert_eq!(http_get(addr, "/ready").await, (200, "ready\n".into()));
    assert_eq!(http_get(addr, "/live").await.0, 200);
    send(&d, &format!("carol@{dest}"), 1).await;
    sink.wait_for_dots(1).await;
    d.signal("TERM");
    // The daemon now waits for the next hop's answer: not ready, still live.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let Ok(stream) = TcpStream::connect(addr).await else {
            panic!("the daemon stopped without /ready ever saying 503");
        };
        let (status, body) = http_exchange(stream, "/ready").await;
        if status == 503 {
            assert_eq!(body, "stopping\n");
            break;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "/ready never said 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(addr, "/live").await.0, 200);
    assert_eq!(http_get(addr, "/metrics").await.0, 200);
    assert!(d.wait().success());
    assert_eq!(sink.received().len(), 1, "the delivery finished");
}

#[tokio::test]
async fn scrapes_over_a_unix_socket_that_is_removed_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("metrics.sock");
    let mut d = Daemon::start(&["-metrics", sock.to_str().unwrap()]);
    d.until_log("metrics on the socket", |l| l.contains("[METRICS] serving"))
        .await;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let (status, text) = http_exchange(UnixStream::connect(&sock).await.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        must(&text, "pluto2_queue_recipients{state=\"queued\"}"),
        0.0
    );
    let (status, _) = http_exchange(UnixStream::connect(&sock).await.unwrap(), "/ready").await;
    assert_eq!(status, 200);
    d.signal("TERM");
    assert!(d.wait().success());
    assert!(!sock.exists(), "the socket outlived the daemon");
}

/// Starts the daemon with `-metrics value`, expecting a refusal; returns
/// the exit status and stderr.
fn refused_start(value: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let dead_end = DeadEnd::start();
    let dead = dead_end.addr.to_string();
    refused(
        Command::new(BIN)
            .args([
                "-name",
                &onion(1),
                "-addr",
                "127.0.0.1:0",
                "-cover-interval",
                "0",
            ])
            .args(["-tor-socks", &dead, "-dns-server", &dead, "-data-dir"])
            .arg(dir.path().join("data"))
            .args(["-metrics", value]),
    )
}

#[test]
fn a_metrics_address_off_loopback_or_a_path_that_is_no_socket_refuses_to_start() {
    for value in ["0.0.0.0:0", "[::]:0", "10.1.2.3:9900"] {
        let (status, stderr) = refused_start(value);
        assert_eq!(status, Some(64), "{value}: {stderr}");
        let line = stderr.trim();
        assert_eq!(line.lines().count(), 1, "{value}: {stderr}");
        assert!(
            line.starts_with(&format!("pluto2: -metrics {value}: ")),
            "{line}"
        );
        assert!(
            line.contains("loopback") && line.contains("127.0.0.1:9900"),
            "{line}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("not-a-socket");
    std::fs::write(&file, "data").unwrap();
    let (status, stderr) = refused_start(file.to_str().unwrap());
    assert_eq!(status, Some(64), "{stderr}");
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "data",
        "left alone"
    );
    check_no_socket_left(dir.path());
}

fn check_no_socket_left(dir: &Path) {
    use std::os::unix::fs::FileTypeExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        assert!(!entry.file_type().unwrap().is_socket(), "{entry:?}");
    }
}

/// Reads what the server sends until it closes; fails after PATIENCE.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_reader_refuses_an_oversized_head_and_cuts_off_a_slow_one() {
    let d = Daemon::start(&["-metrics", "127.0.0.1:0"]);
    let addr = d.metrics_addr().await;

    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Fill: ".to_vec();
    big.resize(16 * 1024, b'a');
    // The server may close before it has read all of it.
    let _ = s.write_all(&big).await;
    let out = until_closed(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");

    // A slow loris: a byte every 200 ms, never the end of the head.
    // Timed from before the connection: the head deadline runs from accept.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut sent = 0;
    let slow = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
    let closed = loop {
        let byte = slow.get(sent).copied().unwrap_or(b'a');
        if s.write_all(&[byte]).await.is_err() {
            break String::new();
        }
        sent += 1;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(n)) => break String::from_utf8_lossy(&buf[..n]).into_owned(),
            Ok(Err(_)) => break String::new(),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < PATIENCE,
            "still open after {sent} bytes"
        );
    };
    let elapsed = started.elapsed();
    assert!(closed.starts_with("HTTP/1.1 408 "), "{closed:?}");
    assert!(
        elapsed < HEAD_DEADLINE + Duration::from_secs(2),
        "cut off only after {elapsed:?}"
    );
    assert!(
        elapsed >= HEAD_DEADLINE - Duration::from_millis(300),
        "{elapsed:?}"
    );
    // The endpoint still serves.
    assert_eq!(http_get(addr, "/live").await.0, 200);
    assert_eq!(http_get(addr, "/nothing").await.0, 404);
}

#[tokio::test]
async fn deferred_is_the_number_waiting_and_retries_count_the_deferrals() {
    let proxy = SocksProxy::start().await;
    let dest = onion(4);
    proxy.refuse(&dest, 25, 0xF2); // introduction failed: temporary
    let socks = proxy.addr.to_string();
    let d = Daemon::start(&flags(
        &socks,
        &["-metrics", "127.0.0.1:0", "-stats-interval", "1s"],
    ));
    let addr = d.metrics_addr().await;
    send(&d, &format!("dave@{dest}"), 1).await;
    // -retry-base 1s: the one recipient is deferred again and again.
    let text = scrape_until(addr, "two deferrals", |t| {
        metric_value(t, "pluto2_delivery_retries_total") >= Some(2.0)
    })
    .await;
    assert_eq!(
        must(&text, "pluto2_queue_recipients{state=\"deferred\"}")
            + must(&text, "pluto2_queue_recipients{state=\"leased\"}"),
        1.0,
        "one recipient waits, however often it was deferred"
    );
    assert!(
        must(
            &text,
            "pluto2_delivery_failures_total{disposition=\"retry\",class=\"socks_reply\"}"
        ) >= 2.0
    );
    let line = d
        .until_log("[STATS] after two deferrals", |l| {
            l.contains("[STATS]") && !l.contains(" retries=0 ") && !l.contains(" retries=1 ")
        })
        .await;
    assert!(
        line.contains(" deferred=1 ") || line.contains(" deferred=0 queued=1 "),
        "{line}"
    );
    assert!(line.contains(" failed=0 "), "{line}");
}
