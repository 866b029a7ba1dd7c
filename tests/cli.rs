//! The command line contract: Go-style flags, one-line errors, `queue`.

mod common;

use std::process::Command;

use common::{BIN, Daemon, onion};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

/// A refused start prints exactly one line: `pluto2: ` and the message,
/// one newline at its end and none inside (clap's own report would add a
/// tip and the usage below it).
fn assert_one_line(args: &[&str], text: &str) {
    assert!(
        text.starts_with("pluto2: ") && text.ends_with('\n') && text.matches('\n').count() == 1,
        "{args:?}: not one line: {text:?}"
    );
    assert!(!text.contains('\r'), "{args:?}: {text:?}");
}

#[test]
fn unknown_flags_and_bad_values_stop_startup_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let name = onion(1);
    let cases: &[(&[&str], &str)] = &[
        (&["-frobnicate"], "--frobnicate"),
        (&["-name", &name, "-rate-window", "soon"], "--rate-window"),
        (
            &["-name", &name, "-max-recipients=lots"],
            "--max-recipients",
        ),
        (&["-name", &name, "-addr", "nowhere"], "--addr"),
        (
            &[
                "-name",
                &name,
                "-rate-limit",
                "0",
                "-data-dir",
                data.to_str().unwrap(),
            ],
            "-rate-limit",
        ),
        (&["-name", "example.onion"], "56"),
        (&[], "-hs-hostname-file"),
    ];
    for (args, needle) in cases {
        let (code, text) = run(args);
        assert_eq!(code, 64, "{args:?}: {text}");
        assert_one_line(args, &text);
        assert!(text.contains(needle), "{args:?}: {text}");
    }
}

#[test]
fn a_name_with_a_wrong_checksum_is_rejected_as_such() {
    let good = onion(5);
    let bad = format!(
        "{}{}",
        if good.starts_with('a') { "b" } else { "a" },
        &good[1..]
    );
    let (code, text) = run(&["-name", &bad]);
    assert_eq!(code, 64);
    assert_one_line(&["-name", &bad], &text);
    assert!(text.contains("checksum"), "{text}");
}

#[test]
fn an_unusable_data_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let args = ["-name", &onion(1), "-data-dir", file.to_str().unwrap()];
    let (code, text) = run(&args);
    assert_eq!(code, 64, "{text}");
    assert_one_line(&args, &text);
    assert!(
        text.contains("-data-dir") && text.contains("not a directory"),
        "{text}"
    );
}

#[tokio::test]
async fn the_name_can_come_from_tors_hostname_file() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("hostname");
    std::fs::write(&host, format!("{}\n", onion(7))).unwrap();
    // Every address the daemon could dial belongs to the test.
    let dead_end = common::DeadEnd::start();
    let dead = dead_end.addr.to_string();
    let mut child = Command::new(BIN)
        .args([
            "-hs-hostname-file",
            host.to_str().unwrap(),
            "-tor-socks",
            &dead,
            "-dns-server",
            &dead,
            "-cover-interval",
            "0",
            "-addr",
            "127.0.0.1:0",
            "-data-dir",
        ])
        .arg(dir.path().join("data"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The greeting carries the name read from the file.
    let stderr = child.stderr.take().unwrap();
    let addr = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("listening on ")
                .nth(1)
                .map(|a| a.trim().to_string())
        })
        .unwrap();
    let mut c = common::Client::connect(addr.parse().unwrap()).await;
    let (code, text) = c.reply().await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(code, 220);
    assert!(text.contains(&onion(7)), "{text}");
}

#[tokio::test]
async fn queue_reports_counts_while_the_daemon_runs() {
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    let to = format!("x@{}", onion(9));
    assert_eq!(
        c.send_mail("a@example.org", &[&to, "y@example.net"], "hi")
            .await,
        250
    );
    let q = d.queue_json();
    assert_eq!(q["messages"], 1);
    assert_eq!(q["recipients"], 2);
    let out = Command::new(BIN)
        .args(["queue", "-data-dir"])
        .arg(&d.data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("messages:   1"), "{text}");
    assert!(
        !text.contains("example.net") && !text.contains(&onion(9)),
        "addresses leaked: {text}"
    );
}

#[tokio::test]
async fn logs_hold_no_addresses_without_debug() {
    let mut d = Daemon::start(&[]);
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    let to = format!("secret-rcpt@{}", onion(11));
    assert_eq!(
        c.send_mail(
            "secret-sender@example.org",
            &[&to],
            "Subject: secret subject\r\n\r\nx"
        )
        .await,
        250
    );
    c.code("QUIT").await;
    d.signal("TERM");
    assert!(d.wait().success());
    let logs = d.log_text();
    for needle in ["secret", &onion(11), "127.0.0.1:", "client.example"] {
        let leaked = logs
            .lines()
            .any(|l| l.contains(needle) && !l.contains("listening on"));
        assert!(!leaked, "{needle} in logs:\n{logs}");
    }
}

#[test]
fn an_unreadable_spool_stops_startup_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        data.join("spool.sqlite"),
        b"this is not a database, just text padding it out",
    )
    .unwrap();
    let (code, text) = run(&[
        "-name",
        &onion(1),
        "-addr",
        "127.0.0.1:0",
        "-data-dir",
        data.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        text.contains("-data-dir") && text.contains("cannot open the spool"),
        "{text}"
    );
}
