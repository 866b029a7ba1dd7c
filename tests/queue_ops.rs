//! The operator's queue operations (`pluto2 queue list|flush|hold|release|delete`)
//! with the real binary, run beside a running daemon: the in-test SOCKS
//! proxy stands in for Tor, an SMTP sink is the next hop, and retries are
//! an hour away, so mail that leaves within seconds left because of the
//! operation, not because its retry came.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::smtp_sink::{Behaviour, Sink};
use common::socks_proxy::SocksProxy;
use common::{BIN, Daemon, onion};

const SENDER: &str = "queue-ops-sender@example.net";
const SUBJECT: &str = "queue-ops-subject";

/// Bound on "the daemon noticed at once": it checks for outside changes
/// every 250 ms; the next retry is at least half an hour away.
const AT_ONCE: Duration = Duration::from_secs(5);

fn recipient(dest: &str, local: &str) -> String {
    format!("{local}@{dest}")
}

/// A daemon whose retries are an hour away (`-retry-base 1h`: the first
/// retry comes after at least 30 minutes) unless `extra` says otherwise,
/// delivering through `proxy`.
fn start(proxy: std::net::SocketAddr, extra: &[&str]) -> Daemon {
    let proxy = proxy.to_string();
    let retry_base = if extra.contains(&"-retry-base") {
        &[][..]
    } else {
        &["-retry-base", "1h"][..]
    };
    let mut flags = vec![
        "-batch-window",
        "0",
        "-tor-socks",
        &proxy,
        "-dns-server",
        "192.0.2.53:53",
        "-delivery-timeout",
        "10s",
    ];
    flags.extend(retry_base);
    flags.extend(extra);
    Daemon::start(&flags)
}

async fn send(d: &Daemon, to: &str, tag: &str) {
    let mut c = d.ehlo_client().await;
    let body = format!("Subject: {SUBJECT}\r\n\r\n{tag}\r\n");
    assert_eq!(c.send_mail(SENDER, &[to], &body).await, 250);
    c.code("QUIT").await;
}

/// What one `pluto2 queue …` run printed.
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        assert_eq!(self.status, 0, "stderr: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", self.stdout))
    }
}

fn queue(data_dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .arg("queue")
        .args(args)
        .arg("-data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The listing's messages.
fn listed(data_dir: &Path) -> Vec<serde_json::Value> {
    queue(data_dir, &["list", "-json"]).json()["messages"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits (bounded) until the listing satisfies `done`; the listing is the
/// spool's own record, so this waits for an outcome, not for a delay.
async fn until_listed(
    data_dir: &Path,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let messages = listed(data_dir);
        if done(&messages) {
            return messages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listing never showed {what}: {messages:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn only_id(messages: &[serde_json::Value]) -> String {
    assert_eq!(messages.len(), 1, "{messages:?}");
    messages[0]["queue_id"].as_str().unwrap().to_string()
}

async fn arrives_at_once(sink: &Sink, n: usize, what: &str) {
    tokio::time::timeout(AT_ONCE, sink.wait_for(n))
        .await
        .unwrap_or_else(|_| panic!("{what} not delivered within {AT_ONCE:?}"));
}

/// The next hop answers 451 once: the message is deferred for half an
/// hour or more; `flush` while the daemon runs makes it leave within
/// seconds.
#[tokio::test]
async fn flush_sends_mail_refused_with_4xx_at_once() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        data_replies: vec![451],
        ..Behaviour::default()
    })
    .await;
    let dest = onion(2);
    proxy.route(&dest, 25, sink.addr);
    let d = start(proxy.addr, &[]);
    send(&d, &recipient(&dest, "bob"), "deferred").await;
    let messages = until_listed(&d.data_dir, "the message deferred", |m| {
        m.len() == 1 && m[0]["state"] == "deferred"
    })
    .await;
    assert_eq!(messages[0]["attempts"], 1);
    assert!(messages[0]["next_attempt_in_seconds"].as_u64().unwrap() >= 1500);
    let flushed = queue(&d.data_dir, &["flush", "-json"]).json();
    assert_eq!(flushed["operation"], "flush");
    assert_eq!(
        (flushed["messages"].as_u64(), flushed["recipients"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        flushed["queue_ids"][0].as_str().unwrap(),
        only_id(&messages)
    );
    arrives_at_once(&sink, 1, "flushed mail").await;
    d.until_queue("empty", |q| q["messages"] == 0).await;
}

/// Tor down at the first attempt (the proxy's port refuses), back up
/// later: `flush` sends the deferred mail at once instead of at its retry.
#[tokio::test]
async fn flush_sends_mail_deferred_by_a_proxy_outage_at_once() {
    let proxy = SocksProxy::start().await;
    let addr = proxy.stop().await;
    let d = start(addr, &[]);
    let dest = onion(2);
    send(&d, &recipient(&dest, "bob"), "outage").await;
    until_listed(&d.data_dir, "the message deferred", |m| {
        m.len() == 1 && m[0]["state"] == "deferred"
    })
    .await;
    let proxy = SocksProxy::start_on(addr).await;
    let sink = Sink::start(Behaviour::default()).await;
    proxy.route(&dest, 25, sink.addr);
    let text = queue(&d.data_dir, &["flush"]);
    assert_eq!(text.status, 0, "{}", text.stderr);
    assert!(
        text.stdout
            .starts_with("flush: 1 message(s), 1 recipient(s) due now"),
        "{}",
        text.stdout
    );
    arrives_at_once(&sink, 1, "flushed mail").await;
}

/// Hold while the first attempt is in flight (the sink sits on the final
/// dot, then answers 451): the attempt ends, the message stays, held. Its
/// retry time comes (`-retry-base 1s`) and passes, and mail sent after
/// that is delivered while the held message is not; released, it leaves
/// at once.
#[tokio::test]
async fn held_mail_stays_even_when_due_and_leaves_when_released() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        data_replies: vec![451],
        dot_delay: Some(Duration::from_millis(500)),
        ..Behaviour::default()
    })
    .await;
    let dest = onion(2);
    proxy.route(&dest, 25, sink.addr);
    let d = start(proxy.addr, &["-retry-base", "1s"]);
    send(&d, &recipient(&dest, "bob"), "first-held").await;
    sink.wait_for_dots(1).await;
    let id = only_id(&listed(&d.data_dir));
    let held = queue(&d.data_dir, &["hold", &id, "-json"]).json();
    assert_eq!(held["queue_ids"][0].as_str(), Some(id.as_str()));
    let messages = until_listed(&d.data_dir, "the held message due", |m| {
        m.len() == 1 && m[0]["state"] == "held" && m[0]["next_attempt_in_seconds"] == 0
    })
    .await;
    assert_eq!(messages[0]["attempts"], 1);
    let report = queue(&d.data_dir, &["-json"]).json();
    assert_eq!(
        (report["held"].as_u64(), report["deferred"].as_u64()),
        (Some(1), Some(0))
    );
    let text = queue(&d.data_dir, &[]).stdout;
    assert!(text.contains("1 held"), "{text}");

    // Due and held: mail sent now is leased and delivered, the held
    // message (due earlier, so first in line) is not.
    send(&d, &recipient(&dest, "carol"), "second-free").await;
    let got = sink.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("second-free"));
    d.until_queue("the second message gone", |q| q["messages"] == 1)
        .await;
    assert_eq!(sink.received().len(), 1, "held mail was delivered");
    assert_eq!(listed(&d.data_dir)[0]["state"], "held");

    let released = queue(&d.data_dir, &["release", "-all", "-json"]).json();
    assert_eq!(released["messages"], 1);
    arrives_at_once(&sink, 2, "released mail").await;
    assert!(String::from_utf8_lossy(&sink.received()[1].data).contains("first-held"));
}

/// Delete a message while its first attempt is in flight (the sink sits on
/// the final dot, then answers 451), and one that waits deferred: the
/// in-flight attempt ends without bringing it back, nothing deleted is
/// ever delivered, each deletion is logged with its queue id and class
/// `operator` and counted, and the daemon logs the count.
#[tokio::test]
async fn deleted_mail_is_gone_logged_and_counted_never_delivered() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        data_replies: vec![451, 451],
        dot_delay: Some(Duration::from_millis(500)),
        ..Behaviour::default()
    })
    .await;
    let dest = onion(2);
    proxy.route(&dest, 25, sink.addr);
    let d = start(proxy.addr, &[]);
    send(&d, &recipient(&dest, "bob"), "waits-deferred").await;
    until_listed(&d.data_dir, "the first message deferred", |m| {
        m.len() == 1 && m[0]["state"] == "deferred"
    })
    .await;
    let deferred = only_id(&listed(&d.data_dir));
    send(&d, &recipient(&dest, "carol"), "in-flight").await;
    sink.wait_for_dots(2).await;
    let messages = listed(&d.data_dir);
    let in_flight = messages
        .iter()
        .find(|m| m["state"] == "in_delivery")
        .expect("the second message in delivery")["queue_id"]
        .as_str()
        .unwrap()
        .to_string();

    let run = queue(&d.data_dir, &["delete", &in_flight, &deferred, "-json"]);
    let deleted = run.json();
    assert_eq!(deleted["messages"], 2);
    for id in [&in_flight, &deferred] {
        let line = format!("[QUEUE] deleted {id} [class=operator]");
        assert!(run.stderr.contains(&line), "no {line:?} in {}", run.stderr);
    }
    assert!(listed(&d.data_dir).is_empty(), "listed after deletion");
    // The in-flight attempt ends (451: it would be retried) and must not
    // bring the message back.
    let q = d
        .until_queue("the in-flight attempt settled", |q| q["leased"] == 0)
        .await;
    assert_eq!(
        (q["messages"].as_u64(), q["recipients"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(q["deleted_by_operator"], 2);
    d.until_log("of the operator's deletions", |l| {
        l.contains("[QUEUE] 2 message(s) deleted by the operator [class=operator]")
    })
    .await;
    // Nothing deleted leaves later: a flush finds nothing, and mail sent
    // afterwards is the only mail delivered.
    assert_eq!(
        queue(&d.data_dir, &["flush", "-json"]).json()["messages"],
        0
    );
    send(&d, &recipient(&dest, "dave"), "after").await;
    sink.wait_for(1).await;
    d.until_queue("empty", |q| q["messages"] == 0).await;
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].data).contains("after"));
}

/// Every operation's `-json` is one JSON document with the documented
/// fields, and none carries an address, a subject or a body.
#[tokio::test]
async fn json_output_parses_and_names_no_one() {
    let d = Daemon::start(&["-batch-window", "1h"]);
    let dest = onion(2);
    send(&d, &recipient(&dest, "json-rcpt"), "json-body").await;
    let mut outputs = Vec::new();
    for args in [
        &["-json"][..],
        &["list", "-json"],
        &["hold", "-all", "-json"],
        &["list", "-json"],
        &["release", "-all", "-json"],
        &["flush", "-json"],
        &["delete", "-all", "-yes", "-json"],
    ] {
        let run = queue(&d.data_dir, args);
        let doc = run.json();
        outputs.push(format!("{args:?} {} {}", run.stdout, run.stderr));
        match args[0] {
            "list" => {
                let m = &doc["messages"][0];
                for field in [
                    "queue_id",
                    "state",
                    "held",
                    "age_seconds",
                    "size_bytes",
                    "recipients",
                    "attempts",
                    "next_attempt_in_seconds",
                ] {
                    assert!(m.get(field).is_some(), "{field} missing: {doc}");
                }
            }
            "-json" => assert_eq!(doc["messages"], 1),
            op => {
                assert_eq!(doc["operation"], op);
                for field in ["messages", "recipients", "queue_ids"] {
                    assert!(doc.get(field).is_some(), "{field} missing: {doc}");
                }
            }
        }
    }
    let all = outputs.join("\n");
    for needle in [
        "json-rcpt",
        dest.as_str(),
        SENDER,
        "example.net",
        SUBJECT,
        "json-body",
        "@",
    ] {
        assert!(!all.contains(needle), "{needle} in {all}");
    }
    assert!(all.contains("\"state\":\"held\""), "{all}");
}

/// An unknown queue id is refused with one line naming it and exit 65
/// (EX_DATAERR), changing nothing; `delete -all` without `-yes` is refused
/// with 64; an id and `-all` together are a usage error.
#[tokio::test]
async fn unknown_ids_and_unconfirmed_delete_all_are_refused() {
    let d = Daemon::start(&["-batch-window", "1h"]);
    send(&d, &recipient(&onion(2), "bob"), "kept").await;
    let id = only_id(&listed(&d.data_dir));
    for op in ["hold", "release", "delete"] {
        let run = queue(&d.data_dir, &[op, &id, "00000000deadbeef"]);
        assert_eq!(run.status, 65, "{op}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr
                .contains("no message with queue id 00000000deadbeef")
                && run.stderr.contains("nothing was changed"),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty());
    }
    let run = queue(&d.data_dir, &["delete", "-all"]);
    assert_eq!(run.status, 64, "{}", run.stderr);
    assert!(run.stderr.contains("-yes"), "{}", run.stderr);
    let run = queue(&d.data_dir, &["hold", "-all", &id]);
    assert_eq!(run.status, 64, "{}", run.stderr);
    let run = queue(&d.data_dir, &["hold"]);
    assert_eq!(run.status, 64, "{}", run.stderr);
    let q = d.queue_json();
    assert_eq!(
        (q["messages"].as_u64(), q["held"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(q["deleted_by_operator"], 0);
    assert_eq!(listed(&d.data_dir)[0]["state"], "queued");
}
