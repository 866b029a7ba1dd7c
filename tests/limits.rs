//! What hostile or merely slow clients can take from the real binary:
//! connection slots, time, memory and file descriptors (issue 9, "Denial
//! of service").

mod common;

use std::time::Duration;

use common::{Client, Daemon, PATIENCE};

#[tokio::test]
async fn a_full_table_sheds_its_slowest_session_for_a_newcomer() {
    let d = Daemon::start(&["-max-connections", "3"]);
    // Two silent sessions, the first one older, and one that has talked.
    let mut oldest_silent = d.client().await;
    let mut silent = d.client().await;
    let mut talking = d.ehlo_client().await;
    let mut newcomer = d.client().await; // greeted: it got a slot
    oldest_silent.told_421_and_closed("4.4.2").await;
    assert_eq!(talking.code("NOOP").await, 250);
    assert_eq!(newcomer.code("EHLO late.example").await, 250);
    assert_eq!(silent.code("NOOP").await, 250);
    d.until_log("about shedding", |l| l.contains("shed 1 slowest"))
        .await;
}

/// Sends NOOP at a steady pace until the server says something else;
/// returns that reply.
async fn keep_busy_until_cut(c: &mut Client, pace: Duration) -> (u16, String) {
    let start = tokio::time::Instant::now();
    loop {
        assert!(start.elapsed() < PATIENCE, "never cut off");
        let reply = c.cmd("NOOP").await;
        if reply.0 != 250 {
            return reply;
        }
        // Pacing of the client, not synchronization.
        tokio::time::sleep(pace).await;
    }
}

#[tokio::test]
async fn a_busy_session_still_ends_at_the_session_timeout() {
    let d = Daemon::start(&["-idle-timeout", "5s", "-session-timeout", "2s"]);
    // Timed from before the connection: the session's clock starts at
    // accept, and the greeting and EHLO may take long on a busy machine.
    let start = tokio::time::Instant::now();
    let mut c = d.ehlo_client().await;
    let (code, text) = keep_busy_until_cut(&mut c, Duration::from_millis(100)).await;
    let took = start.elapsed();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.4.2"), "{text}");
    assert!(took >= Duration::from_millis(1500), "cut after {took:?}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn data_slower_than_the_minimum_rate_is_cut_off() {
    let d = Daemon::start(&["-idle-timeout", "1s", "-min-data-rate", "100"]);
    // A client at full speed is unaffected.
    let mut fast = d.ehlo_client().await;
    let body = "x".repeat(500);
    assert_eq!(
        fast.send_mail("a@example.org", &["b@example.org"], &body)
            .await,
        250
    );
    // Ten bytes every 300 ms (33 B/s): every read restarts the idle timer,
    // but DATA must be done by start + 1 s + bytes / 100.
    let mut slow = d.ehlo_client().await;
    // Timed from before DATA: the daemon's clock for the message starts
    // when it reads DATA, before the test sees 354.
    let start = tokio::time::Instant::now();
    slow.start_data("a@example.org", &["b@example.org"]).await;
    let cut = loop {
        assert!(start.elapsed() < PATIENCE, "never cut off");
        slow.send(b"0123456789").await;
        // Pacing of the trickle, not synchronization.
        match tokio::time::timeout(Duration::from_millis(300), slow.try_reply()).await {
            Err(_) => continue,
            Ok(reply) => break reply,
        }
    };
    let (code, text) = cut.expect("a reply before the close");
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.4.2"), "{text}");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(d.queue_json()["messages"], 1);
}

/// 205 lines of 1,000 bytes: 205,000 bytes, so the session's body buffer
/// grows to 256 KiB and draws 192 KiB from the shared budget.
fn large_body() -> Vec<u8> {
    let mut line = vec![b'x'; 998];
    line.extend_from_slice(b"\r\n");
    line.repeat(205)
}

#[tokio::test]
async fn bodies_beyond_the_memory_budget_get_452_and_small_mail_still_passes() {
    // Room for two large bodies (2 × 196,608 bytes), not three.
    let d = Daemon::start(&["-data-memory", "400000"]);
    let mut large = Vec::new();
    for i in 0..3 {
        let mut c = d.ehlo_client().await;
        c.start_data("a@example.org", &[&format!("big{i}@example.org")])
            .await;
        c.send(&large_body()).await;
        large.push(c);
    }
    // Whichever session crossed the budget last has been refused.
    d.until_log("about the memory budget", |l| {
        l.contains("-data-memory spent: 1 message(s) refused")
    })
    .await;
    let mut small = d.ehlo_client().await;
    assert_eq!(
        small
            .send_mail("a@example.org", &["small@example.org"], "hello")
            .await,
        250
    );
    let mut codes = Vec::new();
    for c in &mut large {
        c.send(b".\r\n").await;
        let (code, text) = c.reply().await;
        if code == 452 {
            assert!(text.contains("4.3.1"), "{text}");
        }
        codes.push(code);
    }
    codes.sort_unstable();
    assert_eq!(codes, [250, 250, 452]);
    // The budget came back: the refused client's retry is accepted.
    let mut retry = d.ehlo_client().await;
    retry
        .start_data("a@example.org", &["big-retry@example.org"])
        .await;
    retry.send(&large_body()).await;
    retry.send(b".\r\n").await;
    assert_eq!(retry.reply().await.0, 250);
    assert_eq!(d.queue_json()["messages"], 4);
}

#[tokio::test]
async fn the_listener_has_a_large_backlog() {
    let d = Daemon::start(&[]);
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", d.addr.port())])
        .output()
        .expect("ss (iproute2) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    // State, Recv-Q, Send-Q (the backlog of a listening socket), ...
    let backlog: u32 = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected ss output {text:?}"));
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(backlog, somaxconn.min(4096));
}

#[tokio::test]
async fn out_of_descriptors_the_daemon_warns_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_wrapped(
        &["prlimit", "--nofile=40:40", "--"],
        &dir.path().join("data"),
        &["-rate-limit", "1000"],
    );
    let warning = d
        .until_log("about -max-connections", |l| {
            l.contains("-max-connections 1024 needs")
        })
        .await;
    assert!(warning.contains("the limit is 40"), "{warning}");
    // More clients than descriptors: the first ones are greeted, the rest
    // wait in the backlog while accept fails.
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(tokio::net::TcpStream::connect(d.addr).await.unwrap());
    }
    d.until_log("about failing accepts", |l| l.contains("accept failed"))
        .await;
    // Measurement window: the old loop logged ten lines a second here.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures = |d: &Daemon| {
        d.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("accept failed"))
            .count()
    };
    assert_eq!(failures(&d), 1, "{}", d.log_text());
    drop(clients);
    d.until_log("about recovering", |l| l.contains("accepting again"))
        .await;
    let mut c = d.client().await;
    assert_eq!(c.code("QUIT").await, 221);
    // Draining the backlog may run out briefly once more: a new episode,
    // one more line, never a line per attempt.
    assert!(failures(&d) <= 3, "{}", d.log_text());
}
