//! Behaviour of the session on scripted client input, no sockets.

use std::sync::Arc;

use super::*;
use crate::address::OnionName;

fn onion(seed: u8) -> String {
    OnionName::from_seed(seed).to_string()
}

fn config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: onion(1),
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 10,
        check_domains: false,
    })
}

/// Drives a session like a client would and records every reply and
/// enqueued message, answering enqueue requests with `outcome`.
struct Client {
    session: Session,
    outcome: EnqueueOutcome,
    replies: Vec<String>,
    queued: Vec<Message>,
    closed: bool,
}

impl Client {
    fn new() -> Self {
        Self {
            session: Session::new(config()),
            outcome: EnqueueOutcome::Queued,
            replies: Vec::new(),
            queued: Vec::new(),
            closed: false,
        }
    }

    /// Sends raw bytes and returns the replies they produced. Enqueue and
    /// CheckDomain requests are answered (with `outcome`, and "nx." domains
    /// as undeliverable) and their reply handled like any other step.
    fn send(&mut self, input: &[u8]) -> Vec<String> {
        let start = self.replies.len();
        let mut offset = 0;
        let mut follow_up = None;
        loop {
            let step = match follow_up.take() {
                Some(step) => step,
                None => {
                    let (used, step) = self.session.advance(&input[offset..]);
                    offset += used;
                    step
                }
            };
            match step {
                Step::NeedInput => break,
                Step::Reply(r) => self.replies.push(r.to_string()),
                Step::Close(r) => {
                    self.replies.push(r.to_string());
                    self.closed = true;
                    break;
                }
                Step::Enqueue(m) => {
                    self.queued.push(m);
                    follow_up = Some(self.session.enqueued(self.outcome));
                }
                Step::CheckDomain(domain) => {
                    follow_up = Some(self.session.domain_checked(domain.starts_with("nx.")));
                }
            }
        }
        self.replies[start..].to_vec()
    }

    fn codes(&mut self, input: &[u8]) -> Vec<u16> {
        self.send(input)
            .iter()
            .map(|r| r[..3].parse().unwrap())
            .collect()
    }

    fn greeted() -> Self {
        let mut c = Self::new();
        assert_eq!(c.codes(b"EHLO client.example\r\n"), [250]);
        c
    }
}

#[test]
fn it_greets_with_the_onion_name() {
    let s = Session::new(config());
    assert_eq!(
        s.greeting().to_string(),
        format!("220 {} ESMTP\r\n", onion(1))
    );
}

#[test]
fn it_advertises_the_required_extensions() {
    let mut c = Client::new();
    let r = c.send(b"EHLO x.example\r\n").join("");
    for ext in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(r.contains(ext), "{ext} missing in {r}");
    }
    assert!(r.ends_with("250 ENHANCEDSTATUSCODES\r\n"));
}

#[test]
fn it_accepts_a_whole_transaction_and_unstuffs_the_body() {
    let mut c = Client::greeted();
    let rcpt = format!("RCPT TO:<user@{}>\r\n", onion(2));
    assert_eq!(c.codes(b"MAIL FROM:<>\r\n"), [250]);
    assert_eq!(c.codes(rcpt.as_bytes()), [250]);
    assert_eq!(c.codes(b"RCPT TO:<Someone@Example.ORG>\r\n"), [250]);
    assert_eq!(c.codes(b"DATA\r\n"), [354]);
    assert_eq!(c.codes(b"Subject: t\r\n\r\n..dot\r\n.\r\n"), [250]);
    let m = &c.queued[0];
    assert_eq!(m.envelope.sender, "");
    assert_eq!(
        m.envelope.recipients,
        [format!("user@{}", onion(2)), "Someone@example.org".into()]
    );
    assert_eq!(m.body, b"Subject: t\r\n\r\n.dot\r\n");
}

#[test]
fn it_answers_a_pipelined_batch_in_order() {
    let mut c = Client::greeted();
    let batch = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<bad>\r\nRCPT TO:<c@example.net>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n";
    let r = c.send(batch);
    let codes: Vec<&str> = r.iter().map(|r| &r[..3]).collect();
    assert_eq!(codes, ["250", "250", "501", "250", "354", "250", "221"]);
    assert!(c.closed);
    assert_eq!(c.queued[0].envelope.recipients.len(), 2);
}

#[test]
fn it_rejects_bare_lf_in_data_and_keeps_nothing() {
    let mut c = Client::greeted();
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n");
    let r = c.send(b"one\ntwo\r\n.\r\n");
    assert!(r[0].starts_with("550 5.5.2"), "{r:?}");
    assert!(c.queued.is_empty());
    // The transaction is over: RCPT now is out of sequence.
    assert_eq!(c.codes(b"RCPT TO:<b@example.org>\r\n"), [503]);
}

#[test]
fn it_never_ends_data_at_lf_dot_lf() {
    let mut c = Client::greeted();
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n");
    let r =
        c.send(b"x\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n");
    assert!(r.is_empty(), "smuggled commands were answered: {r:?}");
    let r = c.send(b"\r\n.\r\n");
    assert_eq!(r.len(), 1);
    assert!(r[0].starts_with("550"));
    assert!(c.queued.is_empty());
}

#[test]
fn it_refuses_oversized_data_after_reading_it_all() {
    let mut c = Client::greeted();
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n");
    let mut big = vec![b'a'; 3000];
    big.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
    let r = c.send(&big);
    assert!(r[0].starts_with("552 5.3.4"), "{r:?}");
    assert!(r[1].starts_with("250"), "{r:?}");
    assert!(c.queued.is_empty());
}

#[test]
fn it_refuses_a_declared_size_over_the_limit_at_mail_time() {
    let mut c = Client::greeted();
    let r = c.send(b"MAIL FROM:<a@example.org> SIZE=1001\r\n");
    assert!(r[0].starts_with("552 5.3.4"), "{r:?}");
    assert_eq!(
        c.codes(b"MAIL FROM:<a@example.org> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n"),
        [250]
    );
}

#[test]
fn it_limits_recipients_with_452() {
    let mut c = Client::greeted();
    c.send(b"MAIL FROM:<a@example.org>\r\n");
    for i in 0..3 {
        assert_eq!(
            c.codes(format!("RCPT TO:<r{i}@example.org>\r\n").as_bytes()),
            [250]
        );
    }
    let r = c.send(b"RCPT TO:<r9@example.org>\r\n");
    assert!(r[0].starts_with("452 4.5.3"), "{r:?}");
}

#[test]
fn it_enforces_command_sequence() {
    let mut c = Client::new();
    let r = c.send(b"MAIL FROM:<a@example.org>\r\n");
    assert!(r[0].starts_with("503 5.5.1"), "{r:?}");
    let mut c = Client::greeted();
    assert_eq!(c.codes(b"RCPT TO:<a@example.org>\r\n"), [503]);
    assert_eq!(c.codes(b"DATA\r\n"), [503]);
    c.send(b"MAIL FROM:<a@example.org>\r\n");
    assert_eq!(c.codes(b"MAIL FROM:<a@example.org>\r\n"), [503]);
    assert_eq!(c.codes(b"DATA\r\n"), [503]);
    assert_eq!(c.codes(b"RSET\r\n"), [250]);
    assert_eq!(c.codes(b"RCPT TO:<a@example.org>\r\n"), [503]);
}

#[test]
fn it_answers_the_simple_verbs() {
    let mut c = Client::new();
    let table: &[(&[u8], &str)] = &[
        (b"HELO x.example\r\n", "250 "),
        (b"NOOP\r\n", "250 2.0.0"),
        (b"HELP\r\n", "214 2.0.0"),
        (b"VRFY someone\r\n", "252 2.5.0"),
        (b"EXPN list\r\n", "502 5.5.1"),
        (b"STARTTLS\r\n", "502 5.5.1"),
        (b"FOO bar\r\n", "500 5.5.1"),
        (b"MAIL FROM:<a@example.org> FROB=1\r\n", "555 5.5.4"),
    ];
    for (input, prefix) in table {
        let mut fresh = Client::new();
        fresh.send(b"EHLO x.example\r\n");
        let r = fresh.send(input);
        assert!(
            r[0].starts_with(prefix),
            "{:?} -> {r:?}",
            String::from_utf8_lossy(input)
        );
    }
    let r = c.send(b"QUIT\r\n");
    assert!(r[0].starts_with("221 2.0.0"));
    assert!(c.closed);
}

#[test]
fn it_gives_every_reply_after_ehlo_an_enhanced_code() {
    let mut c = Client::greeted();
    let script = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\nRSET\r\nNOOP\r\nVRFY x\r\nHELP\r\nBOGUS\r\nMAIL FROM:<bad\r\nQUIT\r\n";
    for r in c.send(script) {
        if r.starts_with("354 ") {
            // 3xx has no enhanced class (RFC 3463 knows 2, 4 and 5).
            continue;
        }
        let status = r[4..].split(' ').next().unwrap();
        let parts: Vec<&str> = status.split('.').collect();
        assert_eq!(parts.len(), 3, "no enhanced code in {r:?}");
        assert_eq!(parts[0], &r[..1], "class mismatch in {r:?}");
    }
}

#[test]
fn it_validates_recipient_mailboxes() {
    let mut c = Client::greeted();
    c.send(b"MAIL FROM:<a@example.org>\r\n");
    let mut bad_onion = onion(3);
    bad_onion.replace_range(0..1, if bad_onion.starts_with('a') { "b" } else { "a" });
    let r = c.send(format!("RCPT TO:<x@{bad_onion}>\r\n").as_bytes());
    assert!(r[0].starts_with("553 5.1.2"), "{r:?}");
    let r = c.send(b"RCPT TO:<x@localhost>\r\n");
    assert!(r[0].starts_with("553 5.1.3"), "{r:?}");
    // smtp-proto already refuses the bracket as address syntax.
    let r = c.send(b"RCPT TO:<x@[127.0.0.1]>\r\n");
    assert!(r[0].starts_with("501 5.1.3"), "{r:?}");
}

#[test]
fn it_closes_after_too_many_errors() {
    let mut c = Client::greeted();
    let r = c.send(&b"X\r\n".repeat(12));
    assert_eq!(r.len(), 10);
    assert!(r[9].starts_with("421 4.7.0"), "{r:?}");
    assert!(c.closed);
}

#[test]
fn it_rejects_overlong_command_lines_and_recovers() {
    let mut c = Client::greeted();
    let long = vec![b'N'; MAX_COMMAND_LINE + 10];
    assert!(c.send(&long).is_empty());
    let r = c.send(b"OOP\r\nNOOP\r\n");
    assert!(r[0].starts_with("500 5.5.2"), "{r:?}");
    assert!(r[1].starts_with("250"), "{r:?}");
}

#[test]
fn it_waits_for_a_complete_line() {
    let mut c = Client::greeted();
    assert!(c.send(b"NO").is_empty());
    // The caller re-offers unconsumed bytes with the new ones.
    assert_eq!(c.codes(b"NOOP\r\n"), [250]);
}

#[test]
fn it_reports_replays_and_storage_failures() {
    for (outcome, prefix) in [
        (EnqueueOutcome::Replay, "554 5.7.1"),
        (EnqueueOutcome::Failed, "451 4.3.0"),
        (EnqueueOutcome::NoSpace, "452 4.3.1"),
        (EnqueueOutcome::ShuttingDown, "421 4.3.0"),
    ] {
        let mut c = Client::greeted();
        c.outcome = outcome;
        let r =
            c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n");
        assert!(r[3].starts_with(prefix), "{r:?}");
    }
}

#[test]
fn it_asks_about_clearnet_domains_and_refuses_provably_dead_ones() {
    let mut cfg = (*config()).clone();
    cfg.check_domains = true;
    let mut c = Client::new();
    c.session = Session::new(Arc::new(cfg));
    c.send(b"EHLO x.example\r\nMAIL FROM:<a@example.org>\r\n");
    let r = c.send(b"RCPT TO:<u@nx.example.org>\r\n");
    assert!(r[0].starts_with("550 5.1.2"), "{r:?}");
    assert_eq!(c.codes(b"RCPT TO:<u@live.example.org>\r\n"), [250]);
    // Onion destinations need no lookup (the test hook would refuse "nx.").
    assert_eq!(
        c.codes(format!("RCPT TO:<u@{}>\r\n", onion(5)).as_bytes()),
        [250]
    );
    c.send(b"DATA\r\nx\r\n.\r\n");
    assert_eq!(c.queued[0].envelope.recipients.len(), 2);
}

#[test]
fn it_records_the_smtputf8_parameter() {
    let mut c = Client::greeted();
    c.send(
        "MAIL FROM:<jörg@example.net> SMTPUTF8\r\nRCPT TO:<a@example.org>\r\nDATA\r\nx\r\n.\r\n"
            .as_bytes(),
    );
    assert!(c.queued[0].envelope.smtputf8);
}
