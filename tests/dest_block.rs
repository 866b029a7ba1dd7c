//! `-dest-block`: destinations that asked not to receive anonymous mail,
//! refused by the real binary at RCPT (and at the end of DATA for a post to
//! a listed newsgroup) with one neutral reply, counted, never logged with
//! the address unless `-debug`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;

use common::{BIN, Daemon, PATIENCE, onion};

/// The one reply every listed recipient gets, whatever pattern matched.
const REFUSED: &str = "550 5.7.1 recipient refused by this relay's policy\r\n";

fn write_list(dir: &Path, text: &str) -> String {
    let path = dir.join("dest.blk");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn list_text() -> String {
    format!(
        "# people and groups who asked\n\
         Victim@Example.org\n\
         \n\
         blocked.example   # the whole domain\n\
         .sub.example\n\
         newsgroup:alt.test\n\
         {}\n",
        onion(7)
    )
}

/// Starts a daemon with the standard list and `extra` flags.
fn start(dir: &Path, extra: &[&str]) -> Daemon {
    let list = write_list(dir, &list_text());
    let mut flags = vec!["-dest-block", list.as_str(), "-stats-interval", "1s"];
    flags.extend(extra);
    Daemon::start(&flags)
}

#[tokio::test]
async fn listed_recipients_get_one_neutral_refusal_at_rcpt_and_others_pass() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let blocked = [
        "victim@example.org".to_string(),
        "VICTIM@EXAMPLE.ORG".to_string(),
        "anyone@blocked.example".into(),
        "a@mail.sub.example".into(),
        "alt.test@mail2news.example".into(),
        format!("x@{}", onion(7)),
        format!("x@mail.{}", onion(7)),
    ];
    let allowed = [
        "other@example.org".to_string(),
        "a@mail.blocked.example".into(),
        "a@sub.example".into(),
        "mail2news@mail2news.example".into(),
        format!("x@{}", onion(8)),
    ];
    let mut c = d.ehlo_client().await;
    assert_eq!(c.code("MAIL FROM:<a@example.net>").await, 250);
    for to in &blocked {
        let (code, text) = c.cmd(&format!("RCPT TO:<{to}>")).await;
        assert_eq!((code, text.as_str()), (550, REFUSED), "{to}");
    }
    for to in &allowed {
        let (code, text) = c.cmd(&format!("RCPT TO:<{to}>")).await;
        assert_eq!(code, 250, "{to}: {text}");
    }
    assert_eq!(c.code("DATA").await, 354);
    c.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    let q = d.queue_json();
    assert_eq!(q["messages"], 1, "{q}");
    assert_eq!(q["recipients"], allowed.len() as u64, "{q}");

    // Counted, and logged without the address or the pattern.
    let stats = d
        .until_log("counting the refusals", |l| {
            l.contains(&format!("dest_blocked={}", blocked.len()))
        })
        .await;
    assert!(stats.contains("[STATS]"), "{stats}");
    let logs = d.log_text();
    assert_eq!(logs.matches("[POLICY]").count(), blocked.len(), "{logs}");
    for word in [
        "victim",
        "VICTIM",
        "blocked.example",
        "sub.example",
        "alt.test",
    ] {
        assert!(!logs.contains(word), "{word} in the log:\n{logs}");
    }
    assert!(!logs.contains(&onion(7)), "{logs}");
}

#[tokio::test]
async fn with_debug_the_refusal_line_names_the_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &["-debug"]);
    let mut c = d.ehlo_client().await;
    c.code("MAIL FROM:<a@example.net>").await;
    assert_eq!(c.code("RCPT TO:<anyone@blocked.example>").await, 550);
    let line = d.until_log("the refusal", |l| l.contains("[POLICY]")).await;
    assert!(line.contains("anyone@blocked.example"), "{line}");
}

#[tokio::test]
async fn a_post_to_a_listed_newsgroup_is_refused_after_data_and_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let mut c = d.ehlo_client().await;
    c.start_data("a@example.net", &["mail2news@mail2news.example"])
        .await;
    c.send(b"Newsgroups: misc.test,\r\n ALT.TEST\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "550 5.7.1 message refused by this relay's policy; nothing was queued\r\n"
        )
    );
    // The session goes on, and a post to another group passes.
    c.start_data("a@example.net", &["mail2news@mail2news.example"])
        .await;
    c.send(b"Newsgroups: misc.test\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(d.queue_json()["messages"], 1);
    let line = d.until_log("the refusal", |l| l.contains("[POLICY]")).await;
    assert!(!line.contains("alt.test"), "{line}");
}

#[test]
fn a_bad_line_stops_the_start_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path(), "example.org\n# fine\nnot a pattern\n");
    let mut child = Command::new(BIN)
        .args(["-name", &onion(1), "-addr", "127.0.0.1:0", "-data-dir"])
        .arg(dir.path().join("data"))
        .args(["-dest-block", &list])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read until stderr closes (the process ended) or the daemon says it
    // listens (it started instead of refusing: kill it and fail).
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut err = Vec::new();
    loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(line) if line.contains("listening on") => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pluto2 started despite the bad list: {err:?}");
            }
            Ok(line) => err.push(line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pluto2 neither refused nor started: {err:?}");
            }
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(64), "{err:?}");
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].starts_with(&format!("pluto2: -dest-block {list}: line 3: ")),
        "{err:?}"
    );
    // Nothing was started: no spool.
    assert!(!dir.path().join("data").join("spool.sqlite").exists());
}
