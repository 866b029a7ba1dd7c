//! The outbound SMTP client on its own, over plain TCP to 127.0.0.1 (no
//! SOCKS, no daemon): what reaches the next hop and how every reply maps to
//! per-recipient results or a failure for the whole delivery.
//!
//! Most cases use the shared recording sink. A few need to see or shape the
//! exact bytes on the wire (MAIL parameters, lock-step versus pipelining,
//! hostile replies); those use a scripted one-connection server
//! (tests/common/scripted.rs) that follows a fixed list of steps and hands
//! back what it read.

mod common;

use std::time::{Duration, Instant};

use common::PATIENCE;
use common::scripted::{Script, Transcript};
use common::smtp_sink::{Behaviour, Sink};
use pluto2::relay::client::{
    AsIs, ClientConfig, OutgoingMail, RecipientResult, TlsPolicy, deliver, tls_config,
};
use pluto2::relay::failure::{
    BadReply, EnhancedCode, Failure, FailureKind, Severity, Stage, TlsProblem,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HELO: &str = "relay.test";
const SENDER: &str = "alice@sender.test";

fn config(tls: TlsPolicy) -> ClientConfig {
    ClientConfig {
        helo_name: HELO.to_string(),
        tls,
        // Generous: only a hang should ever reach it, except in the test
        // that is about the timeout itself.
        timeout: PATIENCE,
    }
}

fn plain() -> ClientConfig {
    config(TlsPolicy::Off)
}

/// STARTTLS when offered; `verify` as with `-tls-verify`.
fn opportunistic(verify: bool) -> ClientConfig {
    config(TlsPolicy::Opportunistic(tls_config(verify)))
}

/// The kind of failure a refusal with `code` and `enhanced` at `stage` is.
fn refused(stage: Stage, code: u16, (class, subject, detail): (u8, u8, u8)) -> FailureKind {
    FailureKind::Reply {
        stage,
        code,
        enhanced: Some(EnhancedCode {
            class,
            subject,
            detail,
        }),
    }
}

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn message<'a>(recipients: &'a [String], body: &'a [u8]) -> OutgoingMail<'a> {
    OutgoingMail {
        message_key: None,
        server_name: "localhost",
        sender: SENDER,
        recipients,
        original: body,
        body: &AsIs,
        smtputf8: false,
        eight_bit: false,
    }
}

async fn send(
    addr: std::net::SocketAddr,
    config: &ClientConfig,
    msg: &OutgoingMail<'_>,
) -> Result<Vec<RecipientResult>, Failure> {
    let stream = TcpStream::connect(addr).await.unwrap();
    deliver(stream, config, msg).await
}

/// Failures are logged without `-debug`, so none may carry an address,
/// whatever the server echoed.
fn assert_loggable(f: &Failure) {
    assert!(
        !f.to_string().contains('@'),
        "failure leaks an address: {f}"
    );
}

fn failed(r: &RecipientResult) -> &Failure {
    match r {
        RecipientResult::Failed(f) => {
            assert_loggable(f);
            f
        }
        RecipientResult::Delivered => panic!("expected a failure, got Delivered"),
    }
}

fn whole(result: Result<Vec<RecipientResult>, Failure>) -> Failure {
    match result {
        Err(f) => {
            assert_loggable(&f);
            f
        }
        Ok(r) => panic!("expected a failure for the whole delivery, got {r:?}"),
    }
}

const EHLO_PLAIN: &str = "250-scripted.test\r\n250 SIZE 1000000\r\n";
const EHLO_PIPELINING: &str = "250-scripted.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n";
const EHLO_STARTTLS: &str = "250-scripted.test\r\n250 STARTTLS\r\n";
/// The reply to a message the server takes.
const QUEUED: &str = "250 queued\r\n";

/// Sends one small message for bob@dest.test to `addr`: the delivery as
/// a whole must fail; returns the failure.
async fn failure_of_one(addr: std::net::SocketAddr, config: &ClientConfig) -> Failure {
    let to = rcpts(&["bob@dest.test"]);
    whole(send(addr, config, &message(&to, b"x\r\n")).await)
}

/// Serves `script` and sends it one small message for bob@dest.test: the
/// delivery as a whole must fail; returns the failure and what the server
/// read.
async fn failure_against(script: Script, config: &ClientConfig) -> (Failure, Transcript) {
    let server = script.serve().await;
    let f = failure_of_one(server.addr, config).await;
    (f, server.transcript().await)
}

/// [`failure_against`] a server that offers STARTTLS and answers it with
/// `reply`, from a client that uses STARTTLS when offered.
async fn starttls_answered(reply: &str) -> (Failure, Transcript) {
    let script = Script::greeting().ehlo(EHLO_STARTTLS).starttls(reply);
    failure_against(script, &opportunistic(false)).await
}

/// [`failure_against`] a pipelining server that answers the envelope for
/// one recipient with `replies` and then waits for QUIT.
async fn envelope_answered(replies: &str) -> (Failure, Transcript) {
    let script = Script::greeting()
        .ehlo(EHLO_PIPELINING)
        .pipelined(1, replies)
        .quit();
    failure_against(script, &plain()).await
}

/// `f` is of `severity` and `kind`.
fn assert_failure(f: &Failure, severity: Severity, kind: FailureKind) {
    assert_eq!(f.severity, severity, "{f}");
    assert_eq!(f.kind, kind, "{f}");
}

// ---------------------------------------------------------------------------
// Against the recording sink.

#[tokio::test]
async fn several_recipients_share_one_transaction() {
    let sink = Sink::start(Behaviour::default()).await;
    let to = rcpts(&["bob@dest.test", "carol@dest.test", "dave@dest.test"]);
    let results = send(
        sink.addr,
        &plain(),
        &message(&to, b"Subject: hi\r\n\r\nhello\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(results, vec![RecipientResult::Delivered; 3]);
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1, "one message, not one per recipient");
    assert_eq!(got[0].mail_from, SENDER);
    assert_eq!(got[0].rcpt_to, to);
    assert_eq!(got[0].data, b"Subject: hi\r\n\r\nhello\r\n");
    assert!(!got[0].tls);
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn the_null_sender_goes_out_as_empty_brackets() {
    let sink = Sink::start(Behaviour::default()).await;
    let to = rcpts(&["bob@dest.test"]);
    let msg = OutgoingMail {
        sender: "",
        ..message(&to, b"bounce\r\n")
    };
    send(sink.addr, &plain(), &msg).await.unwrap();
    assert_eq!(sink.wait_for(1).await[0].mail_from, "");
}

#[tokio::test]
async fn lines_starting_with_a_dot_survive_the_round_trip() {
    let sink = Sink::start(Behaviour::default()).await;
    let to = rcpts(&["bob@dest.test"]);
    let body: &[u8] = b".\r\n.leading\r\n..two\r\nmid.dle\r\n.\r\n.";
    send(sink.addr, &plain(), &message(&to, body))
        .await
        .unwrap();
    let got = sink.wait_for(1).await;
    // The last line had no CRLF; the client completes it before the dot.
    assert_eq!(got[0].data, [body, b"\r\n"].concat());
}

#[tokio::test]
async fn an_empty_body_is_still_a_message() {
    let sink = Sink::start(Behaviour::default()).await;
    let to = rcpts(&["bob@dest.test"]);
    send(sink.addr, &plain(), &message(&to, b"")).await.unwrap();
    assert_eq!(sink.wait_for(1).await[0].data, b"");
}

#[tokio::test]
async fn a_refused_recipient_does_not_hold_back_the_others() {
    let sink = Sink::start(Behaviour {
        refuse_rcpt: vec![("unknown".into(), 550), ("busy".into(), 451)],
        ..Behaviour::default()
    })
    .await;
    let to = rcpts(&["unknown@dest.test", "bob@dest.test", "busy@dest.test"]);
    let results = send(sink.addr, &plain(), &message(&to, b"x\r\n"))
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    let gone = failed(&results[0]);
    assert_eq!(gone.severity, Severity::Permanent);
    assert_eq!(gone.kind, refused(Stage::Rcpt, 550, (5, 1, 1)));
    assert_eq!(results[1], RecipientResult::Delivered);
    let later = failed(&results[2]);
    assert_eq!(later.severity, Severity::Temporary);
    assert_eq!(later.kind, refused(Stage::Rcpt, 451, (4, 1, 1)));
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].rcpt_to, ["bob@dest.test"]);
}

#[tokio::test]
async fn when_every_recipient_is_refused_nothing_is_sent() {
    let sink = Sink::start(Behaviour {
        refuse_rcpt: vec![("dest.test".into(), 550)],
        ..Behaviour::default()
    })
    .await;
    let to = rcpts(&["a@dest.test", "b@dest.test"]);
    // The sink pipelines, answers DATA with 554 (RFC 2920), and the
    // outcome is still per recipient rather than a DATA failure.
    let results = send(sink.addr, &plain(), &message(&to, b"x\r\n"))
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(failed(r).kind, refused(Stage::Rcpt, 550, (5, 1, 1)));
    }
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn a_451_after_data_fails_every_recipient_temporarily() {
    let sink = Sink::start(Behaviour {
        data_replies: vec![451],
        ..Behaviour::default()
    })
    .await;
    let to = rcpts(&["bob@dest.test", "carol@dest.test"]);
    let msg = message(&to, b"x\r\n");
    let results = send(sink.addr, &plain(), &msg).await.unwrap();
    for r in &results {
        let kind = refused(Stage::Dot, 451, (4, 0, 0));
        assert_failure(failed(r), Severity::Temporary, kind);
    }
    assert!(sink.received().is_empty());
    // The sink's script is used up: the retry goes through.
    let again = send(sink.addr, &plain(), &msg).await.unwrap();
    assert_eq!(again, vec![RecipientResult::Delivered; 2]);
    assert_eq!(sink.wait_for(1).await.len(), 1);
}

#[tokio::test]
async fn a_554_after_data_fails_every_recipient_permanently() {
    let sink = Sink::start(Behaviour {
        data_replies: vec![554],
        ..Behaviour::default()
    })
    .await;
    let to = rcpts(&["bob@dest.test", "carol@dest.test"]);
    let results = send(sink.addr, &plain(), &message(&to, b"x\r\n"))
        .await
        .unwrap();
    for r in &results {
        let kind = refused(Stage::Dot, 554, (5, 0, 0));
        assert_failure(failed(r), Severity::Permanent, kind);
    }
}

#[tokio::test]
async fn a_connection_lost_in_data_is_a_temporary_failure_for_all() {
    let sink = Sink::start(Behaviour {
        drop_mid_data: 1,
        ..Behaviour::default()
    })
    .await;
    let to = rcpts(&["bob@dest.test", "carol@dest.test"]);
    let body = b"line one\r\nline two\r\n".repeat(1000);
    let f = whole(send(sink.addr, &plain(), &message(&to, &body)).await);
    assert_eq!(f.severity, Severity::Temporary);
    assert!(
        matches!(
            f.kind,
            FailureKind::Io {
                stage: Stage::Dot,
                ..
            }
        ),
        "{f:?}"
    );
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn a_server_that_never_greets_is_cut_off_by_the_timeout() {
    let sink = Sink::start(Behaviour {
        stall: true,
        ..Behaviour::default()
    })
    .await;
    let short = ClientConfig {
        timeout: Duration::from_millis(500),
        ..plain()
    };
    let started = Instant::now();
    let f = failure_of_one(sink.addr, &short).await;
    assert_failure(
        &f,
        Severity::Temporary,
        FailureKind::Timeout {
            stage: Stage::Greeting,
        },
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < PATIENCE);
}

#[tokio::test]
async fn starttls_is_used_when_offered() {
    let sink = Sink::start(Behaviour {
        starttls: true,
        ..Behaviour::default()
    })
    .await;
    let to = rcpts(&["bob@dest.test"]);
    let tls = opportunistic(false);
    let results = send(sink.addr, &tls, &message(&to, b"secret\r\n"))
        .await
        .unwrap();
    assert_eq!(results, [RecipientResult::Delivered]);
    let got = sink.wait_for(1).await;
    assert!(got[0].tls, "the transaction must run inside TLS");
    assert_eq!(got[0].data, b"secret\r\n");
}

#[tokio::test]
async fn starttls_is_not_used_when_the_policy_is_off() {
    let sink = Sink::start(Behaviour {
        starttls: true,
        ..Behaviour::default()
    })
    .await;
    let to = rcpts(&["bob@dest.test"]);
    send(sink.addr, &plain(), &message(&to, b"x\r\n"))
        .await
        .unwrap();
    assert!(!sink.wait_for(1).await[0].tls);
}

#[tokio::test]
async fn opportunistic_tls_without_an_offer_stays_in_plaintext() {
    let sink = Sink::start(Behaviour::default()).await;
    let to = rcpts(&["bob@dest.test"]);
    let tls = opportunistic(false);
    send(sink.addr, &tls, &message(&to, b"x\r\n"))
        .await
        .unwrap();
    assert!(!sink.wait_for(1).await[0].tls);
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_fails_temporarily_when_checked() {
    let sink = Sink::start(Behaviour {
        starttls: true,
        ..Behaviour::default()
    })
    .await;
    // The sink's certificate is self-signed: no system CA vouches for it.
    let strict = opportunistic(true);
    let f = failure_of_one(sink.addr, &strict).await;
    assert_failure(
        &f,
        Severity::Temporary,
        FailureKind::Tls(TlsProblem::Certificate),
    );
    assert!(sink.received().is_empty(), "no fallback to plaintext");
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn a_server_refusing_ehlo_is_spoken_to_with_helo() {
    let sink = Sink::start(Behaviour {
        refuse_ehlo: true,
        ..Behaviour::default()
    })
    .await;
    let to = rcpts(&["bob@dest.test", "carol@dest.test"]);
    let results = send(sink.addr, &plain(), &message(&to, b"old school\r\n"))
        .await
        .unwrap();
    assert_eq!(results, vec![RecipientResult::Delivered; 2]);
    assert_eq!(sink.wait_for(1).await[0].rcpt_to, to);
}

#[tokio::test]
async fn smtputf8_mail_to_a_server_without_it_fails_permanently() {
    let sink = Sink::start(Behaviour {
        ascii_only: true,
        ..Behaviour::default()
    })
    .await;
    let to = rcpts(&["bob@dest.test"]);
    let msg = OutgoingMail {
        smtputf8: true,
        ..message(&to, "Subject: grüße\r\n\r\n".as_bytes())
    };
    let f = whole(send(sink.addr, &plain(), &msg).await);
    assert_failure(&f, Severity::Permanent, FailureKind::NoSmtpUtf8);
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn smtputf8_mail_to_a_server_with_it_is_delivered() {
    let sink = Sink::start(Behaviour::default()).await;
    let to = rcpts(&["bob@dest.test"]);
    let body = "Subject: grüße\r\n\r\n".as_bytes();
    let msg = OutgoingMail {
        smtputf8: true,
        eight_bit: true,
        ..message(&to, body)
    };
    send(sink.addr, &plain(), &msg).await.unwrap();
    assert_eq!(sink.wait_for(1).await[0].data, body);
}

// ---------------------------------------------------------------------------
// Against scripted servers: the bytes on the wire.

#[tokio::test]
async fn without_pipelining_commands_go_one_at_a_time_with_the_offered_parameters() {
    let server = Script::greeting()
        .ask("EHLO ", EHLO_PLAIN)
        .lockstep_envelope(2)
        .message(QUEUED)
        .quit()
        .serve()
        .await;
    let to = rcpts(&["bob@dest.test", "carol@dest.test"]);
    let body = b"8bit \xc3\xa9\r\n.dot\r\n";
    let msg = OutgoingMail {
        eight_bit: true,
        ..message(&to, body)
    };
    let results = send(server.addr, &plain(), &msg).await.unwrap();
    assert_eq!(results, vec![RecipientResult::Delivered; 2]);
    let seen = server.transcript().await;
    assert_eq!(
        seen.lines,
        [
            format!("EHLO {HELO}"),
            // SIZE is offered, 8BITMIME is not: no BODY parameter.
            format!("MAIL FROM:<{SENDER}> SIZE={}", body.len()),
            "RCPT TO:<bob@dest.test>".to_string(),
            "RCPT TO:<carol@dest.test>".to_string(),
            "DATA".to_string(),
            "QUIT".to_string(),
        ]
    );
    assert_eq!(seen.bodies, [b"8bit \xc3\xa9\r\n..dot\r\n.\r\n".to_vec()]);
}

#[tokio::test]
async fn with_pipelining_the_envelope_goes_out_before_any_reply() {
    // The server reads MAIL, both RCPTs and DATA before it answers: a
    // lock-step client would wait for the MAIL reply and hit the timeout.
    let server = Script::greeting()
        .ehlo("250-scripted.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE\r\n")
        .pipelined(
            2,
            "250 ok\r\n250 ok\r\n550 5.1.1 <carol@dest.test> unknown\r\n354 go\r\n",
        )
        .message(QUEUED)
        .quit()
        .serve()
        .await;
    let to = rcpts(&["bob@dest.test", "carol@dest.test"]);
    let msg = OutgoingMail {
        eight_bit: true,
        smtputf8: true,
        ..message(&to, b"x\r\n")
    };
    let results = send(server.addr, &plain(), &msg).await.unwrap();
    assert_eq!(results[0], RecipientResult::Delivered);
    // The server's text echoed the address; the failure must not.
    assert_eq!(
        failed(&results[1]).kind,
        refused(Stage::Rcpt, 550, (5, 1, 1))
    );
    let seen = server.transcript().await;
    assert_eq!(
        seen.lines[1],
        format!("MAIL FROM:<{SENDER}> SIZE=3 BODY=8BITMIME SMTPUTF8")
    );
}

#[tokio::test]
async fn helo_fallback_uses_the_configured_name() {
    let server = Script::greeting()
        .ehlo("502 5.5.2 what\r\n")
        .expect("HELO ")
        .say("250 scripted.test\r\n")
        .lockstep_envelope(1)
        .message(QUEUED)
        .quit()
        .serve()
        .await;
    let to = rcpts(&["bob@dest.test"]);
    // A HELO server offers no extensions: no SIZE, no BODY, lock-step.
    let msg = OutgoingMail {
        eight_bit: true,
        ..message(&to, b"x\r\n")
    };
    send(server.addr, &plain(), &msg).await.unwrap();
    let seen = server.transcript().await;
    assert_eq!(seen.lines[0], format!("EHLO {HELO}"));
    assert_eq!(seen.lines[1], format!("HELO {HELO}"));
    assert_eq!(seen.lines[2], format!("MAIL FROM:<{SENDER}>"));
}

#[tokio::test]
async fn a_refused_sender_fails_the_whole_delivery() {
    let replies = "550 5.7.1 <alice@sender.test> not welcome\r\n\
                   503 5.5.1 no sender\r\n503 5.5.1 no recipients\r\n";
    let (f, seen) = envelope_answered(replies).await;
    let kind = refused(Stage::Mail, 550, (5, 7, 1));
    assert_failure(&f, Severity::Permanent, kind);
    assert!(seen.bodies.is_empty());
}

#[tokio::test]
async fn a_354_after_every_rcpt_failed_gets_an_empty_message() {
    // RFC 2920 §3.1: a server should refuse DATA when no RCPT succeeded;
    // when one says 354 anyway, the client ends the data at once.
    let server = Script::greeting()
        .ehlo(EHLO_PIPELINING)
        .pipelined(1, "250 ok\r\n450 4.2.1 full\r\n354 go\r\n")
        .message("554 5.5.1 no recipients\r\n")
        .quit()
        .serve()
        .await;
    let to = rcpts(&["bob@dest.test"]);
    let results = send(server.addr, &plain(), &message(&to, b"not this\r\n"))
        .await
        .unwrap();
    let f = failed(&results[0]);
    assert_failure(f, Severity::Temporary, refused(Stage::Rcpt, 450, (4, 2, 1)));
    assert_eq!(server.transcript().await.bodies, [b".\r\n".to_vec()]);
}

#[tokio::test]
async fn a_data_refusal_with_accepted_recipients_fails_them_all() {
    let (f, seen) = envelope_answered("250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n").await;
    let kind = refused(Stage::Data, 451, (4, 3, 0));
    assert_failure(&f, Severity::Temporary, kind);
    assert!(seen.bodies.is_empty());
}

#[tokio::test]
async fn greetings_are_classified_by_their_code() {
    for (greeting, severity, kind) in [
        (
            "554 5.3.2 no service\r\n",
            Severity::Permanent,
            refused(Stage::Greeting, 554, (5, 3, 2)),
        ),
        (
            "421 4.3.2 busy\r\n",
            Severity::Temporary,
            refused(Stage::Greeting, 421, (4, 3, 2)),
        ),
    ] {
        let (f, seen) = failure_against(Script::new().say(greeting), &plain()).await;
        assert_eq!(f.severity, severity, "{greeting:?}");
        assert_eq!(f.kind, kind, "{greeting:?}");
        assert!(seen.lines.is_empty(), "no EHLO after a refused greeting");
    }
}

#[tokio::test]
async fn a_temporary_ehlo_refusal_does_not_fall_back_to_helo() {
    let (f, seen) = failure_against(
        Script::greeting().ehlo("421 4.3.0 going down\r\n"),
        &plain(),
    )
    .await;
    assert_failure(
        &f,
        Severity::Temporary,
        refused(Stage::Ehlo, 421, (4, 3, 0)),
    );
    assert_eq!(seen.lines.len(), 1);
}

#[tokio::test]
async fn a_refused_starttls_is_a_temporary_failure_not_a_plaintext_delivery() {
    let (f, seen) = starttls_answered("454 4.7.0 TLS not available\r\n").await;
    assert_failure(
        &f,
        Severity::Temporary,
        refused(Stage::StartTls, 454, (4, 7, 0)),
    );
    assert!(
        !seen.lines.iter().any(|l| l.starts_with("MAIL")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_permanent_starttls_refusal_does_not_drop_the_mail() {
    // Opportunistic TLS is a bonus, not a condition of delivery: a broken
    // STARTTLS must not bounce the message.
    let (f, _) = starttls_answered("554 5.7.0 TLS broken\r\n").await;
    assert_failure(
        &f,
        Severity::Temporary,
        refused(Stage::StartTls, 554, (5, 7, 0)),
    );
}

#[tokio::test]
async fn bytes_sent_along_with_the_starttls_go_ahead_end_the_delivery() {
    // Anything the client reads after "220" but before the handshake was
    // sent in the clear and may be injected by a man in the middle
    // (CVE-2011-0411). The go-ahead and the injected line leave in one
    // write, so the client reads them together and must say so at once.
    // Without the check it would drop the extra bytes, start the handshake
    // and wait for a server that never answers: a timeout, not this kind.
    let server = Script::greeting()
        .ehlo(EHLO_STARTTLS)
        .starttls("220 go ahead\r\n250 injected\r\n")
        .serve()
        .await;
    // The timeout is PATIENCE: only detection ends this in time, however
    // slow the machine.
    let tls = opportunistic(false);
    let started = Instant::now();
    let f = failure_of_one(server.addr, &tls).await;
    assert_failure(
        &f,
        Severity::Temporary,
        FailureKind::Tls(TlsProblem::PlaintextInjection),
    );
    assert!(
        started.elapsed() < tls.timeout,
        "detected, not timed out: {:?}",
        started.elapsed()
    );
    server.transcript().await;
}

#[tokio::test]
async fn an_endless_reply_line_is_refused_without_waiting_for_its_end() {
    // The line never ends and the server never closes: only the length
    // limit can end this before the (long) timeout.
    let (f, _) = failure_against(
        Script::new().say_bytes([b"220 ".as_slice(), &[b'x'; 10_000]].concat()),
        &plain(),
    )
    .await;
    assert_failure(
        &f,
        Severity::Temporary,
        FailureKind::BadReply {
            stage: Stage::Greeting,
            problem: BadReply::TooLong,
        },
    );
}

#[tokio::test]
async fn an_endless_multiline_reply_is_refused() {
    let (f, _) = failure_against(
        Script::new().say_bytes(b"220-more\r\n".repeat(1_000)),
        &plain(),
    )
    .await;
    assert_eq!(
        f.kind,
        FailureKind::BadReply {
            stage: Stage::Greeting,
            problem: BadReply::TooLong
        }
    );
}

#[tokio::test]
async fn a_malformed_reply_is_a_temporary_failure() {
    let (f, _) = failure_against(Script::new().say("hello there\r\n"), &plain()).await;
    assert_failure(
        &f,
        Severity::Temporary,
        FailureKind::BadReply {
            stage: Stage::Greeting,
            problem: BadReply::Malformed,
        },
    );
}

#[tokio::test]
async fn a_server_closing_after_the_greeting_is_a_temporary_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"220 hi\r\n").await.unwrap();
        stream.shutdown().await.unwrap();
        // Keep reading so our close never resets the connection.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let f = failure_of_one(addr, &plain()).await;
    assert_failure(
        &f,
        Severity::Temporary,
        FailureKind::Io {
            stage: Stage::Ehlo,
            kind: std::io::ErrorKind::UnexpectedEof,
        },
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_server_that_accepts_the_message_and_then_goes_silent_still_counts_as_delivered() {
    // After the 250 to the final dot the message is the next hop's
    // responsibility (RFC 5321 §4.1.1.4); a QUIT that is never answered
    // must not turn it into a failure, or it would be sent again.
    let server = Script::greeting()
        .ehlo(EHLO_PIPELINING)
        .pipelined(1, "250 ok\r\n250 ok\r\n354 go\r\n")
        .message(QUEUED)
        .expect("QUIT")
        .serve()
        .await;
    let to = rcpts(&["bob@dest.test"]);
    // Long enough that the replies that do come are never late, even on
    // a busy machine; the test waits it out once, for the QUIT.
    let short = ClientConfig {
        timeout: Duration::from_secs(3),
        ..plain()
    };
    let results = send(server.addr, &short, &message(&to, b"x\r\n")).await;
    assert_eq!(results, Ok(vec![RecipientResult::Delivered]));
    server.transcript().await;
}
