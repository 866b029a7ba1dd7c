//! SIGHUP with the real binary: what reloads (the `-dest-block` list, the
//! rate limit, the log level) applies to what comes next, a bad new file
//! keeps the old settings and says where, flags that cannot change are
//! named, and nothing in progress (a session in DATA, a delivery) is cut.
//! Every step waits for the daemon's own `[RELOAD]` line, never a delay.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::smtp_sink::{Behaviour, Sink};
use common::socks_proxy::SocksProxy;
use common::{Daemon, onion};

/// A daemon with a `-dest-block` list and a `-flags-file` in `dir`.
struct Setup {
    _dir: tempfile::TempDir,
    list: PathBuf,
    flags: PathBuf,
}

impl Setup {
    fn new(list: &str, flags: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup {
            list: dir.path().join("dest.blk"),
            flags: dir.path().join("flags"),
            _dir: dir,
        };
        std::fs::write(&s.list, list).unwrap();
        std::fs::write(&s.flags, flags).unwrap();
        s
    }

    fn start(&self, extra: &[&str]) -> Daemon {
        let mut all = vec![
            "-dest-block",
            path(&self.list),
            "-flags-file",
            path(&self.flags),
        ];
        all.extend(extra);
        Daemon::start(&all)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Sends SIGHUP and returns the `[RELOAD]` line it produced.
async fn reload(d: &Daemon) -> String {
    let before = reload_lines(d).len();
    d.signal("HUP");
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        if let Some(line) = reload_lines(d).get(before) {
            return line.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no [RELOAD] line:\n{}",
            d.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn reload_lines(d: &Daemon) -> Vec<String> {
    let logs = d.logs.lock().unwrap();
    logs.iter()
        .filter(|l| l.contains("[RELOAD]"))
        .cloned()
        .collect()
}

async fn rcpt(d: &Daemon, to: &str) -> u16 {
    let mut c = d.ehlo_client().await;
    assert_eq!(c.code("MAIL FROM:<a@example.net>").await, 250);
    c.code(&format!("RCPT TO:<{to}>")).await
}

#[tokio::test]
async fn a_new_list_applies_to_the_next_session_and_a_session_in_data_completes() {
    let s = Setup::new("first.example\n", "");
    let d = s.start(&[]);
    assert_eq!(rcpt(&d, "a@first.example").await, 550);
    assert_eq!(rcpt(&d, "a@second.example").await, 250);

    // A session in the middle of DATA, to a recipient the new list holds.
    let mut open = d.ehlo_client().await;
    open.start_data("a@example.net", &["a@second.example"])
        .await;
    open.send(b"Subject: across the reload\r\n\r\nfirst half\r\n")
        .await;

    std::fs::write(&s.list, "second.example\n").unwrap();
    let line = reload(&d).await;
    assert!(
        line.contains("reloaded: -dest-block") && line.contains("(1 patterns)"),
        "{line}"
    );
    assert!(!line.contains("needs restart"), "{line}");

    assert_eq!(rcpt(&d, "a@second.example").await, 550);
    assert_eq!(rcpt(&d, "a@first.example").await, 250);
    open.send(b"second half\r\n.\r\n").await;
    assert_eq!(open.reply().await.0, 250, "the open session completes");
    assert_eq!(d.queue_json()["messages"], 1);
}

#[tokio::test]
async fn a_bad_new_list_keeps_the_old_one_and_the_log_names_file_and_line() {
    let s = Setup::new("blocked.example\n", "");
    let d = s.start(&[]);
    std::fs::write(&s.list, "other.example\n# ok\nno good\n").unwrap();
    let line = reload(&d).await;
    assert!(
        line.contains(&format!(
            "kept the old settings: -dest-block {}: line 3:",
            path(&s.list)
        )),
        "{line}"
    );
    assert_eq!(rcpt(&d, "a@blocked.example").await, 550, "old list kept");
    assert_eq!(rcpt(&d, "a@other.example").await, 250);
    // Nothing else of that reload was applied either: a rate limit in
    // the same reload stays as it was.
    std::fs::write(&s.flags, "-rate-limit 1\n").unwrap();
    let line = reload(&d).await;
    assert!(line.contains("kept the old settings"), "{line}");
    for _ in 0..3 {
        assert_eq!(rcpt(&d, "a@other.example").await, 250);
    }
    // Mended, it applies.
    std::fs::write(&s.list, "other.example\n").unwrap();
    std::fs::write(&s.flags, "").unwrap();
    let line = reload(&d).await;
    assert!(line.contains("reloaded: -dest-block"), "{line}");
    assert_eq!(rcpt(&d, "a@other.example").await, 550);
    assert_eq!(rcpt(&d, "a@blocked.example").await, 250);
}

#[tokio::test]
async fn a_rate_limit_change_applies_after_sighup() {
    let s = Setup::new("", "-rate-limit 1\n-rate-window 1h\n");
    let d = s.start(&[]);
    let _first = d.client().await;
    let mut refused = common::Client::connect(d.addr).await;
    assert_eq!(refused.reply().await.0, 421);

    std::fs::write(&s.flags, "-rate-limit 3\n-rate-window 1h\n").unwrap();
    let line = reload(&d).await;
    assert!(line.contains("reloaded: -rate-limit 3 per 1h"), "{line}");
    for _ in 0..3 {
        let mut c = common::Client::connect(d.addr).await;
        assert_eq!(c.reply().await.0, 220, "admitted under the new limit");
    }
    let mut c = common::Client::connect(d.addr).await;
    assert_eq!(c.reply().await.0, 421, "and refused past it");
}

#[tokio::test]
async fn the_log_level_and_debug_change_after_sighup() {
    let s = Setup::new("blocked.example\n", "");
    // The wait for the reload below asks in a new session each time, as
    // often as it can: the default -rate-limit (10 a minute) would refuse
    // those sessions on a machine where the reload takes a while.
    let d = s.start(&["-rate-limit", "100000"]);
    // At info: a refusal is logged, redacted.
    assert_eq!(rcpt(&d, "a@blocked.example").await, 550);
    d.until_log("the first refusal", |l| l.contains("[POLICY]"))
        .await;

    // -log-level warn, with a new list in the same reload. The reload
    // line itself is info and so not shown; the list (applied after the
    // log settings, all in one reload) shows when it is in force: asked
    // until b2 is refused, which is then a refusal at warn level.
    std::fs::write(&s.flags, "-log-level warn\n").unwrap();
    std::fs::write(&s.list, "blocked.example\nb2.example\n").unwrap();
    d.signal("HUP");
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while rcpt(&d, "a@b2.example").await != 550 {
        assert!(tokio::time::Instant::now() < deadline, "reload not applied");
    }
    // A warning (a broken list) marks the point up to which the log is in.
    std::fs::write(&s.list, "bad pattern\n").unwrap();
    let warned = reload(&d).await;
    assert!(warned.contains("kept the old settings"), "{warned}");
    let logs = d.log_text();
    assert_eq!(logs.matches("[POLICY]").count(), 1, "info hidden:\n{logs}");
    assert_eq!(logs.matches("[RELOAD]").count(), 1, "{logs}");

    // -debug: debug lines, and addresses shown.
    std::fs::write(&s.list, "blocked.example\n").unwrap();
    std::fs::write(&s.flags, "-debug\n").unwrap();
    let line = reload(&d).await;
    assert!(
        line.contains("-log-level debug with -debug (addresses shown)"),
        "{line}"
    );
    assert_eq!(rcpt(&d, "c@blocked.example").await, 550);
    let shown = d
        .until_log("the refusal with -debug", |l| {
            l.contains("[POLICY]") && l.contains("c@blocked.example")
        })
        .await;
    assert!(shown.contains("[POLICY]"));
    d.until_log("a debug line", |l| l.contains("[CONN] accepted 127.0.0.1"))
        .await;
}

#[tokio::test]
async fn a_change_that_needs_a_restart_is_named_and_not_applied() {
    let s = Setup::new("", "-workers 5\n");
    let d = s.start(&[]);
    std::fs::write(&s.flags, "-workers 7\n-max-recipients 2\n-rate-limit 20\n").unwrap();
    let line = reload(&d).await;
    assert!(line.contains("reloaded: -rate-limit 20 per 1m"), "{line}");
    assert!(
        line.ends_with("needs restart (old values stay in force): -max-recipients, -workers"),
        "{line}"
    );
    // -max-recipients is still 50.
    let mut c = d.ehlo_client().await;
    c.code("MAIL FROM:<a@example.net>").await;
    for i in 0..3 {
        assert_eq!(c.code(&format!("RCPT TO:<r{i}@{}>", onion(3))).await, 250);
    }
    // The next reload still names them: they still differ from the start.
    let line = reload(&d).await;
    assert!(line.contains("nothing to change; needs restart"), "{line}");
    assert!(line.contains("-workers"), "{line}");
}

#[tokio::test]
async fn a_delivery_in_flight_is_not_interrupted_by_a_reload() {
    let proxy = SocksProxy::start().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let sink = Sink::start(Behaviour {
        dot_gate: Some(gate.clone()),
        ..Behaviour::default()
    })
    .await;
    let dest = onion(2);
    proxy.route(&dest, 25, sink.addr);
    let s = Setup::new("", "");
    let socks = proxy.addr.to_string();
    let d = s.start(&["-batch-window", "0", "-tor-socks", &socks]);
    let to = format!("bob@{dest}");
    let mut c = d.ehlo_client().await;
    assert_eq!(
        c.send_mail("a@example.net", &[&to], "Subject: x\r\n\r\nbody")
            .await,
        250
    );

    // The message is on the wire and the sink holds its answer.
    sink.wait_for_dots(1).await;
    // The reload lists the very recipient being delivered to and lowers
    // the rate limit: neither reaches back into the delivery.
    std::fs::write(&s.list, format!("{dest}\n")).unwrap();
    std::fs::write(&s.flags, "-rate-limit 1\n").unwrap();
    let line = reload(&d).await;
    assert!(line.contains("reloaded:"), "{line}");
    gate.add_permits(1);
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].rcpt_to, vec![to.clone()]);
    d.until_queue("empty", |q| q["messages"] == 0).await;
    assert_eq!(sink.mail_commands(), 1, "delivered once, not retried");
    assert_eq!(rcpt(&d, &to).await, 550, "new mail to it is refused");
}
