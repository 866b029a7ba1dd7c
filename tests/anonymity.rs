//! The anonymity properties end to end over 127.0.0.1: batching reorders,
//! padding fixes sizes, loop cover comes back and is swallowed, headers are
//! sanitized, a restart inside the delay pool neither loses nor releases
//! early, and the logs hold no addresses.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::smtp_sink::{Behaviour, Sink};
use common::socks_proxy::SocksProxy;
use common::{Daemon, onion};

fn args(proxy: &SocksProxy, extra: &[&str]) -> Vec<String> {
    let mut all = vec![
        "-tor-socks".to_string(),
        proxy.addr.to_string(),
        // Loop cover comes back from 127.0.0.1 like the test's own client.
        "-rate-limit".into(),
        "1000".into(),
    ];
    all.extend(extra.iter().map(|s| s.to_string()));
    all
}

fn start(proxy: &SocksProxy, extra: &[&str]) -> Daemon {
    let all = args(proxy, extra);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Daemon::start(&refs)
}

/// Sends `bodies` in order over one session; returns when all got 250.
async fn send_all(d: &Daemon, to: &str, bodies: &[String]) {
    let mut c = d.ehlo_client().await;
    for body in bodies {
        assert_eq!(c.send_mail("alice@example.net", &[to], body).await, 250);
    }
    c.code("QUIT").await;
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Batch window of the test below; windows are aligned to multiples of it
/// in unix time, as in the daemon.
const WINDOW_MS: u64 = 2000;

/// End of the window that holds unix time `t`.
fn window_end(t: u64) -> u64 {
    (t / WINDOW_MS + 1) * WINDOW_MS
}

#[tokio::test]
async fn a_batch_leaves_reordered_after_the_window_in_whole_pad_blocks() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour::default()).await;
    let dest = onion(20);
    proxy.route(&dest, 25, sink.addr);
    let window = format!("{WINDOW_MS}ms");
    let d = start(
        &proxy,
        &[
            "-batch-window",
            &window,
            "-jitter-min",
            "100ms",
            "-jitter-max",
            "500ms",
            "-workers",
            "12",
        ],
    );
    let n = 12;
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "Subject: seq {i:02}\r\n\r\n{}\r\n",
                "x".repeat(100 + i * 700)
            )
        })
        .collect();
    // Start early in a window, so that a mix releasing at "acceptance +
    // jitter" (no window) would deliver the first message well before the
    // window ends: this waits for the wall clock, not for the daemon.
    let left = window_end(unix_ms()) - unix_ms();
    if left < 1500 {
        tokio::time::sleep(Duration::from_millis(left + 20)).await;
    }
    // Wall-clock bounds become Instants (what the sink records) through
    // one anchor.
    let (anchor, anchor_ms) = (Instant::now(), unix_ms());
    let mut not_before = Vec::new();
    let mut c = d.ehlo_client().await;
    for body in &bodies {
        // The daemon accepts the message after this moment, so its window
        // ends no earlier than this one.
        not_before.push(anchor + Duration::from_millis(window_end(unix_ms()) - anchor_ms));
        let to = format!("r@{dest}");
        assert_eq!(c.send_mail("alice@example.net", &[&to], body).await, 250);
    }
    c.code("QUIT").await;
    let got = sink.wait_for(n).await;

    let order: Vec<usize> = got
        .iter()
        .map(|r| {
            let text = String::from_utf8_lossy(&r.data);
            let i = text.find("Subject: seq ").unwrap() + 13;
            text[i..i + 2].parse().unwrap()
        })
        .collect();
    // Even if the 12 straddle two windows, keeping arrival order by chance
    // has probability below 1/(6!)^2.
    assert_ne!(
        order,
        (0..n).collect::<Vec<_>>(),
        "batch left in arrival order"
    );
    for (r, &i) in got.iter().zip(&order) {
        assert_eq!(
            r.wire_len % 8192,
            0,
            "DATA of {} bytes is not whole pad blocks",
            r.wire_len
        );
        assert!(
            r.at >= not_before[i],
            "message {i} released {:?} before its window ended",
            not_before[i] - r.at
        );
        let text = String::from_utf8_lossy(&r.data);
        assert!(
            text.starts_with("X-Padding: "),
            "the sink is not pluto2, so the padding header is still there"
        );
    }
}

#[tokio::test]
async fn sanitized_headers_carry_nothing_from_the_drop_list() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour::default()).await;
    let dest = onion(21);
    proxy.route(&dest, 25, sink.addr);
    let d = start(&proxy, &["-batch-window", "0", "-pad-block", "0"]);
    let original = "Received: from secret-host.example ([10.1.2.3])\r\nFrom: Real Name <real@example.net>\r\nReply-To: real@example.net\r\nX-Mailer: TellTale 1.0\r\nUser-Agent: TellTale\r\nMessage-ID: <unique@secret-host.example>\r\nDate: Mon, 23 Nov 2026 08:00:00 +0100\r\nOrganization: Secret Org\r\nSubject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\r\n continued subject\r\nNewsgroups: alt.privacy.anon-server\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nFrom: this line is body text\r\nReceived: so is this";
    send_all(&d, &format!("r@{dest}"), &[original.to_string()]).await;
    let got = sink.wait_for(1).await;
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    for leak in [
        "secret-host",
        "10.1.2.3",
        "real@example.net",
        "Real Name",
        "TellTale",
        "Secret Org",
        "+0100",
    ] {
        assert!(!head.contains(leak), "{leak} survived in:\n{head}");
    }
    assert!(head.contains("Subject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\r\n continued subject"));
    assert!(head.contains("Newsgroups: alt.privacy.anon-server"));
    assert!(head.contains("Message-ID: <") && head.contains(&format!("@{}>", d.name)));
    assert_eq!(
        body, "From: this line is body text\r\nReceived: so is this\r\n",
        "body untouched"
    );
}

#[tokio::test]
async fn loop_cover_comes_back_and_is_dropped_and_counted() {
    let proxy = SocksProxy::start().await;
    let d = start(
        &proxy,
        &[
            "-batch-window",
            "0",
            "-cover-interval",
            "100ms",
            "-stats-interval",
            "1s",
        ],
    );
    // Our own onion name leads back to our own listener, as through Tor.
    proxy.route(&d.name, 25, d.addr);
    let line = wait_for_stats(&d, |l| counter(l, "cover_received") >= 3).await;
    assert!(counter(&line, "cover_sent") >= counter(&line, "cover_received"));
    assert_eq!(
        counter(&line, "received"),
        0,
        "cover never enters the spool as mail"
    );
    let reqs = proxy.requests();
    assert!(
        reqs.iter().all(|r| r.host == d.name),
        "cover went elsewhere: {reqs:?}"
    );

    // A forged marker does not make real mail disappear.
    let other = onion(22);
    let forged =
        "X-Pluto2-Cover: 00112233445566778899aabbccddeeff.00\r\nSubject: real\r\n\r\nreal mail\r\n";
    send_all(&d, &format!("r@{other}"), &[forged.to_string()]).await;
    wait_for_stats(&d, |l| counter(l, "received") == 1).await;
}

fn counter(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits for a `[STATS]` line that satisfies `done` (bounded by PATIENCE).
async fn wait_for_stats(d: &Daemon, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let last = d
            .logs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.contains("[STATS]"))
            .cloned();
        if let Some(line) = last
            && done(&line)
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no matching [STATS] line:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_restart_inside_the_delay_pool_loses_nothing_and_releases_nothing_early() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour::default()).await;
    let dest = onion(23);
    proxy.route(&dest, 25, sink.addr);
    let pool = [
        "-delay",
        "-min-delay",
        "3s",
        "-max-delay",
        "4s",
        "-delay-strategy",
        "constant",
    ];
    let mut d = start(&proxy, &pool);
    let sent = Instant::now();
    send_all(
        &d,
        &format!("r@{dest}"),
        &["Subject: pooled\r\n\r\nwait\r\n".to_string()],
    )
    .await;
    d.signal("TERM");
    assert!(d.wait().success());
    let dir = d.take_dir().unwrap();
    assert_eq!(
        common::queue_json(&d.data_dir)["messages"],
        1,
        "kept across the stop"
    );

    let all = args(&proxy, &pool);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let d2 = Daemon::start_in(&d.data_dir.clone(), &refs);
    let got = sink.wait_for(1).await;
    assert!(
        got[0].at.duration_since(sent) >= Duration::from_secs(3),
        "released before -min-delay"
    );
    d2.until_queue("empty", |q| q["messages"] == 0).await;
    drop(dir);
}

#[tokio::test]
async fn logs_of_a_full_run_hold_no_addresses() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        data_replies: vec![451],
        ..Behaviour::default()
    })
    .await;
    let dest = onion(24);
    proxy.route(&dest, 25, sink.addr);
    let mut d = start(
        &proxy,
        &[
            "-batch-window",
            "0",
            "-retry-base",
            "1s",
            "-cover-interval",
            "200ms",
            "-stats-interval",
            "1s",
        ],
    );
    proxy.route(&d.name, 25, d.addr);
    send_all(
        &d,
        &format!("secret-rcpt@{dest}"),
        &["Subject: secret subject\r\n\r\nx\r\n".to_string()],
    )
    .await;
    sink.wait_for(1).await;
    wait_for_stats(&d, |l| counter(l, "cover_received") >= 1).await;
    d.signal("TERM");
    assert!(d.wait().success());
    let logs = d.log_text();
    for needle in [
        "secret",
        dest.as_str(),
        d.name.as_str(),
        "alice",
        "example.net",
        "client.example",
    ] {
        assert!(!logs.contains(needle), "{needle} in logs:\n{logs}");
    }
}
