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
        check_recipients: true,
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

    /// Sends raw bytes and returns the replies they produced. Enqueue,
    /// CheckDomain and CheckRecipient requests are answered (with
    /// `outcome`, "nx." domains as undeliverable, "blocked" local parts as
    /// refused by policy) and their reply handled like any other step.
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
                Step::CheckRecipient(recipient) => {
                    let refused = recipient.starts_with("blocked");
                    follow_up = Some(self.session.recipient_checked(refused));
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
fn it_closes_at_the_first_bare_lf_in_data_and_keeps_nothing() {
    for data in [
        &b"one\ntwo\r\n.\r\n"[..],
        b"one\n.\n",
        b"one\r\n.\nQUIT\r\n",
    ] {
        let mut c = Client::greeted();
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n");
        let r = c.send(data);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].starts_with("521 5.5.2"), "{r:?}");
        assert!(r[0].contains("CRLF") && r[0].contains("nc -C"), "{r:?}");
        assert!(c.closed);
        assert!(c.queued.is_empty());
        // Closed: nothing more is read, not even a well-formed command.
        assert!(c.send(b"NOOP\r\n").is_empty());
    }
}

#[test]
fn it_never_takes_bytes_after_lf_dot_lf_as_commands() {
    let mut c = Client::greeted();
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n");
    let r =
        c.send(b"x\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n");
    assert_eq!(r.len(), 1, "smuggled commands were answered: {r:?}");
    assert!(r[0].starts_with("521"), "{r:?}");
    assert!(c.queued.is_empty());
}

#[test]
fn it_closes_on_a_command_line_ending_in_bare_lf() {
    for input in [&b"EHLO x.example\n"[..], b"\n", b"NOOP\nNOOP\r\n"] {
        let mut c = Client::new();
        let r = c.send(input);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].starts_with("521 5.5.2"), "{r:?}");
        assert!(r[0].contains("nc -C"), "{r:?}");
        assert!(c.closed);
    }
}

#[test]
fn it_refuses_bare_cr_and_nul_in_data_after_the_terminator() {
    for (data, prefix) in [
        (&b"a\rb\r\n.\r\n"[..], "550 5.5.2"),
        (b"a\0b\r\n.\r\n", "550 5.6.0"),
    ] {
        let mut c = Client::greeted();
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n");
        let r = c.send(data);
        assert!(r[0].starts_with(prefix), "{r:?}");
        assert!(c.queued.is_empty());
        assert_eq!(c.codes(b"NOOP\r\n"), [250], "the session goes on");
    }
}

#[test]
fn it_refuses_a_bare_cr_inside_a_command_line() {
    let mut c = Client::greeted();
    c.send(b"MAIL FROM:<a@example.org>\r\n");
    let r = c.send(b"RCPT TO:<us\rer@example.org>\r\n");
    assert!(r[0].starts_with("500 5.5.2"), "{r:?}");
    assert_eq!(c.codes(b"DATA\r\n"), [503], "no recipient was taken");
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
    // Too big for 64 bits is still just too big (smtp-proto wraps it).
    for digits in [20, 21, 40] {
        let line = format!("MAIL FROM:<a@example.org> SIZE={}\r\n", "9".repeat(digits));
        let r = c.send(line.as_bytes());
        assert!(r[0].starts_with("552 5.3.4"), "{digits}: {r:?}");
    }
    let r = c.send(b"MAIL FROM:<a@example.org> size=100000000000000000000000 BODY=8BITMIME\r\n");
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
    // smtp-proto refuses the bracket as address syntax; the reply is the
    // one for every literal, as the README says.
    for literal in ["[127.0.0.1]", "[IPv6:::1]"] {
        let r = c.send(format!("RCPT TO:<x@{literal}>\r\n").as_bytes());
        assert!(r[0].starts_with("553 5.1.3"), "{r:?}");
        assert!(r[0].contains("literal"), "{r:?}");
    }
    let r = c.send("RCPT TO:<jörg@example.org>\r\n".as_bytes());
    assert!(r[0].starts_with("553 5.6.7"), "{r:?}");
}

#[test]
fn it_keeps_onion_subdomains_in_the_recipient() {
    let mut c = Client::greeted();
    let to = format!("user@mail.{}", onion(2));
    c.send(format!("MAIL FROM:<a@example.org>\r\nRCPT TO:<{to}>\r\nDATA\r\nx\r\n.\r\n").as_bytes());
    assert_eq!(c.queued[0].envelope.recipients, [to]);
}

#[test]
fn it_refuses_invalid_utf8_addresses_instead_of_rewriting_them() {
    for line in [
        &b"MAIL FROM:<j\xf6rg@example.org> SMTPUTF8\r\n"[..],
        b"MAIL FROM:<a@ex\xc3ample.org> SMTPUTF8\r\n",
    ] {
        let mut c = Client::greeted();
        let r = c.send(line);
        assert!(r[0].starts_with("553 5.6.7"), "{r:?}");
        assert_eq!(
            c.codes(b"RCPT TO:<b@example.org>\r\n"),
            [503],
            "no transaction"
        );
    }
    let mut c = Client::greeted();
    c.send(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n");
    let r = c.send(b"RCPT TO:<j\xf6rg@example.org>\r\n");
    assert!(r[0].starts_with("553 5.6.7"), "{r:?}");
    let r = c.send(b"RCPT TO:<a@b\xfc\xfccher.example>\r\n");
    assert!(r[0].starts_with("553 5.6.7"), "{r:?}");
    assert_eq!(c.codes(b"DATA\r\n"), [503], "no recipient was taken");
}

#[test]
fn it_checks_senders_for_syntax_not_deliverability() {
    for sender in [
        "root@vm".to_string(),
        "sender@test.onion".into(),
        "a@[192.0.2.1]".into(),
        "a@[IPv6:2001:db8::1]".into(),
        "a@my_host".into(),
    ] {
        let mut c = Client::greeted();
        let r = c.send(
            format!("MAIL FROM:<{sender}>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n")
                .as_bytes(),
        );
        assert!(r[0].starts_with("250 2.1.0"), "{sender}: {r:?}");
        assert_eq!(c.queued[0].envelope.sender, sender);
    }
    for (line, prefix) in [
        ("MAIL FROM:<postmaster>", "553 5.1.7"),
        ("MAIL FROM:<Postmaster>", "553 5.1.7"),
        ("MAIL FROM:<a@>", "553 5.1.7"),
        ("MAIL FROM:<a@[1.2.3.4>", "501 5.1.7"),
        ("MAIL FROM:<jörg@example.org>", "553 5.6.7"),
    ] {
        let mut c = Client::greeted();
        let r = c.send(format!("{line}\r\n").as_bytes());
        assert!(r[0].starts_with(prefix), "{line}: {r:?}");
    }
    // Recipients stay strict.
    let mut c = Client::greeted();
    c.send(b"MAIL FROM:<root@vm>\r\n");
    assert_eq!(c.codes(b"RCPT TO:<root@vm>\r\n"), [553]);
    assert_eq!(c.codes(b"RCPT TO:<a@test.onion>\r\n"), [553]);
}

#[test]
fn it_refuses_its_own_name_as_a_destination_except_for_cover() {
    let own = onion(1);
    for to in [
        format!("alice@{own}"),
        format!("cover@mail.{own}"),
        format!("x@sub.{}", own.to_uppercase()),
    ] {
        let mut c = Client::greeted();
        c.send(b"MAIL FROM:<a@example.org>\r\n");
        let r = c.send(format!("RCPT TO:<{to}>\r\n").as_bytes());
        assert!(r[0].starts_with("550 5.7.1"), "{to}: {r:?}");
        assert_eq!(c.codes(b"DATA\r\n"), [503], "{to} was taken");
    }
    // cover@<own> is accepted at RCPT and flagged for intake, which knows
    // cover when it sees it; other recipients are not flagged.
    let mut c = Client::greeted();
    c.send(format!("MAIL FROM:<>\r\nRCPT TO:<cover@{own}>\r\nDATA\r\nx\r\n.\r\n").as_bytes());
    assert!(c.queued[0].envelope.to_own_name);
    c.send(
        format!(
            "MAIL FROM:<>\r\nRCPT TO:<b@{}>\r\nDATA\r\nx\r\n.\r\n",
            onion(2)
        )
        .as_bytes(),
    );
    assert!(!c.queued[1].envelope.to_own_name);
}

/// The own name is recognised from the configured hostname in whatever
/// case it was written, and a hostname that is no onion name makes no
/// recipient "own" (the session compares text instead of parsing the
/// hostname for every connection).
#[test]
fn it_knows_its_own_name_however_the_hostname_is_written() {
    let own = onion(1);
    let other = onion(2);
    let cases = [
        (own.clone(), own.clone(), 550),
        (own.to_uppercase(), own.clone(), 550),
        (own.clone(), format!("x.{}", own.to_uppercase()), 550),
        (own.clone(), other.clone(), 250),
        ("relay.example".to_string(), own.clone(), 250),
        // One base32 digit changed: no onion name, so nothing is "own".
        (format!("b{}", &own[1..]), format!("b{}", &own[1..]), 553),
    ];
    for (hostname, domain, want) in cases {
        let mut config = (*config()).clone();
        config.hostname = hostname.clone();
        let mut c = Client::new();
        c.session = Session::new(Arc::new(config));
        assert_eq!(c.codes(b"EHLO client.example\r\n"), [250]);
        c.send(b"MAIL FROM:<a@example.org>\r\n");
        assert_eq!(
            c.codes(format!("RCPT TO:<alice@{domain}>\r\n").as_bytes()),
            [want],
            "hostname {hostname}, recipient domain {domain}"
        );
    }
}

#[test]
fn it_refuses_a_recipient_policy_refuses_with_one_neutral_reply() {
    let mut c = Client::greeted();
    c.send(b"MAIL FROM:<a@example.org>\r\n");
    let r = c.send(b"RCPT TO:<blocked@example.org>\r\nRCPT TO:<blocked2@example.net>\r\n");
    assert_eq!(
        r[0],
        "550 5.7.1 recipient refused by this relay's policy\r\n"
    );
    assert_eq!(r[0], r[1], "the same words whatever matched");
    assert_eq!(c.codes(b"RCPT TO:<ok@example.org>\r\n"), [250]);
    c.send(b"DATA\r\nx\r\n.\r\n");
    assert_eq!(c.queued[0].envelope.recipients, ["ok@example.org"]);
    // Without the check, nothing is asked and nothing refused.
    let mut cfg = (*config()).clone();
    cfg.check_recipients = false;
    let mut c = Client::new();
    c.session = Session::new(Arc::new(cfg));
    c.send(b"EHLO x.example\r\nMAIL FROM:<a@example.org>\r\n");
    assert_eq!(c.codes(b"RCPT TO:<blocked@example.org>\r\n"), [250]);
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
        // A replay is answered exactly like the first copy.
        (EnqueueOutcome::Replay, "250 2.0.0 Ok: queued\r\n"),
        (EnqueueOutcome::Loop, "550 5.7.1"),
        (EnqueueOutcome::TooManyHops, "554 5.4.6"),
        (
            EnqueueOutcome::Blocked,
            "550 5.7.1 message refused by this relay's policy",
        ),
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
