//! Protocol edges of the real binary over 127.0.0.1: LF-only clients, NUL
//! bytes, invalid UTF-8 and odd addresses, senders as mail clients write
//! them, onion subdomains, and this node's own name as a destination.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::smtp_sink::{Behaviour, Sink};
use common::socks_proxy::SocksProxy;
use common::{BIN, Daemon, PATIENCE, onion};

/// Runs `nc` (netcat-openbsd, `scripts/test.sh` installs it) with `args`
/// against the daemon, feeding `script` on stdin as `printf ... | nc` does;
/// returns what the server said. Fails if nc is still waiting after
/// PATIENCE, which is what an unanswered LF-only client looks like.
fn netcat(d: &Daemon, args: &[&str], script: &str) -> String {
    let mut child = Command::new("nc")
        .args(args)
        .args([d.addr.ip().to_string(), d.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nc must be installed (scripts/test.sh installs netcat-openbsd)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "nc still waiting after {PATIENCE:?}; server said:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The README's example session, lines ending in LF as `printf` writes them.
fn lf_script() -> String {
    format!(
        "EHLO client.example\nMAIL FROM:<a@example.org>\nRCPT TO:<b@{}>\nDATA\nSubject: hi\n\nbody\n.\nQUIT\n",
        onion(2)
    )
}

#[tokio::test]
async fn an_lf_only_netcat_client_is_told_to_use_crlf_at_once() {
    let d = Daemon::start(&[]);
    let said = netcat(&d, &[], &lf_script());
    assert!(said.contains("521 5.5.2"), "{said}");
    assert!(said.contains("CRLF") && said.contains("nc -C"), "{said}");
    assert!(!said.contains("354"), "got as far as DATA:\n{said}");
    assert_eq!(d.queue_json()["messages"], 0);
}

#[tokio::test]
async fn the_readme_netcat_form_with_dash_c_delivers() {
    let d = Daemon::start(&[]);
    let said = netcat(&d, &["-C"], &lf_script());
    assert!(said.contains("250 2.0.0 Ok: queued"), "{said}");
    assert!(said.contains("221 2.0.0"), "{said}");
    assert_eq!(d.queue_json()["messages"], 1);
}

#[tokio::test]
async fn nul_bytes_in_data_are_refused_and_nothing_is_kept() {
    let d = Daemon::start(&[]);
    let mut c = d.ehlo_client().await;
    c.start_data("a@example.org", &["b@example.org"]).await;
    c.send(b"Subject: x\r\n\r\nbefore\0after\r\n.\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.6.0") && text.contains("NUL"), "{text}");
    assert_eq!(c.code("NOOP").await, 250, "the session goes on");
    assert_eq!(d.queue_json()["messages"], 0);
}

#[tokio::test]
async fn invalid_utf8_in_an_address_is_refused_not_rewritten() {
    let d = Daemon::start(&[]);
    let mut c = d.ehlo_client().await;
    assert_eq!(c.code("MAIL FROM:<a@example.org> SMTPUTF8").await, 250);
    c.send(b"RCPT TO:<j\xf6rg@example.org>\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!((code, &text[4..9]), (553, "5.6.7"), "{text}");
    assert_eq!(c.code("DATA").await, 503, "the address was taken");
    c.code("RSET").await;
    c.send(b"MAIL FROM:<j\xf6rg@example.org> SMTPUTF8\r\n")
        .await;
    let (code, text) = c.reply().await;
    assert_eq!((code, &text[4..9]), (553, "5.6.7"), "{text}");
}

#[tokio::test]
async fn postmaster_huge_sizes_and_literals_get_one_documented_answer() {
    let d = Daemon::start(&[]);
    let mut c = d.ehlo_client().await;
    let (code, text) = c.cmd("MAIL FROM:<postmaster>").await;
    assert_eq!((code, &text[4..9]), (553, "5.1.7"), "{text}");
    for digits in [20, 21, 30] {
        let line = format!("MAIL FROM:<a@example.org> SIZE={}", "7".repeat(digits));
        let (code, text) = c.cmd(&line).await;
        assert_eq!((code, &text[4..9]), (552, "5.3.4"), "{digits}: {text}");
    }
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    for literal in ["[127.0.0.1]", "[IPv6:::1]"] {
        let (code, text) = c.cmd(&format!("RCPT TO:<x@{literal}>")).await;
        assert_eq!((code, &text[4..9]), (553, "5.1.3"), "{literal}: {text}");
    }
}

#[tokio::test]
async fn senders_are_checked_for_syntax_not_deliverability() {
    let d = Daemon::start(&[]);
    // No --from: swaks's own default, user@<this host's name>, which is
    // single-label on many machines (the README's command).
    for from in ["", "root@vm", "sender@test.onion", "someone@[192.0.2.7]"] {
        let mut swaks = Command::new("swaks");
        swaks
            .args(["--server", &d.addr.ip().to_string()])
            .args(["--port", &d.addr.port().to_string()])
            .args(["--to", "someone@example.org"]);
        if !from.is_empty() {
            swaks.args(["--from", from]);
        }
        let out = swaks.output().expect("swaks must be installed");
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(
            transcript.contains("<-  250 2.0.0 Ok: queued"),
            "{from}:\n{transcript}"
        );
    }
    assert_eq!(d.queue_json()["messages"], 4);
    // Recipients stay strict.
    let mut c = d.ehlo_client().await;
    c.code("MAIL FROM:<root@vm>").await;
    assert_eq!(c.code("RCPT TO:<root@vm>").await, 553);
}

#[tokio::test]
async fn onion_subdomains_are_kept_in_the_spool_and_on_the_wire() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour::default()).await;
    let dest = onion(2);
    let sub = format!("mail.{dest}");
    proxy.route(&sub, 25, sink.addr);
    proxy.route(&dest, 25, sink.addr);
    let socks = proxy.addr.to_string();
    let d = Daemon::start(&["-batch-window", "0", "-tor-socks", &socks]);
    let mut c = d.ehlo_client().await;
    // The same body to the service and to a subdomain of it: two mailboxes,
    // so the second is no replay of the first.
    for to in [format!("bob@{sub}"), format!("bob@{dest}")] {
        assert_eq!(c.send_mail("a@example.org", &[&to], "same").await, 250);
    }
    let got = sink.wait_for(2).await;
    let mut rcpts: Vec<String> = got.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    let mut want = vec![format!("bob@{sub}"), format!("bob@{dest}")];
    want.sort();
    assert_eq!(rcpts, want);
    let hosts: Vec<String> = proxy.requests().into_iter().map(|r| r.host).collect();
    assert!(hosts.contains(&sub), "{hosts:?}");
}

#[tokio::test]
async fn its_own_name_is_no_destination_and_only_cover_may_go_there() {
    let d = Daemon::start(&[]);
    let own = &d.name;
    let mut c = d.ehlo_client().await;
    c.code("MAIL FROM:<a@example.org>").await;
    for to in [format!("alice@{own}"), format!("alice@mail.{own}")] {
        let (code, text) = c.cmd(&format!("RCPT TO:<{to}>")).await;
        assert_eq!((code, &text[4..9]), (550, "5.7.1"), "{to}: {text}");
    }
    c.code("RSET").await;
    // cover@<own> passes RCPT (cover goes there), but what is not our
    // cover is refused at the end of DATA and not queued.
    c.start_data("a@example.org", &[&format!("cover@{own}")])
        .await;
    c.send(b"Subject: not cover\r\n\r\nloop me\r\n.\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!((code, &text[4..9]), (550, "5.7.1"), "{text}");
    assert_eq!(d.queue_json()["messages"], 0);
    assert!(
        d.log_text().contains("own name that is not its cover"),
        "{}",
        d.log_text()
    );
}

#[test]
fn an_anon_from_with_a_line_break_stops_startup_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for value in [
        "Anonymous <nobody@NAME>\r\nBcc: victim@example.org",
        "Anonymous <nobody@NAME>\n",
        "no address here",
    ] {
        let mut child = Command::new(BIN)
            .args(["-name", &onion(1), "-addr", "127.0.0.1:0", "-data-dir"])
            .arg(dir.path().join("data"))
            .args(["-cover-interval", "0", "-anon-from", value])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("pluto2 started with -anon-from {value:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned();
        assert_eq!(status.code(), Some(64), "{value:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{value:?}: {err}");
        assert!(lines[0].contains("-anon-from"), "{value:?}: {err}");
    }
}
