//! The SMTP dialogue of the real binary over 127.0.0.1.

mod common;

use common::{Daemon, onion};

#[tokio::test]
async fn swaks_delivers_a_message_into_the_spool() {
    let d = Daemon::start(&[]);
    let to = format!("someone@{}", onion(2));
    let out = std::process::Command::new("swaks")
        .args([
            "--server",
            &d.addr.ip().to_string(),
            "--port",
            &d.addr.port().to_string(),
        ])
        .args(["--from", "sender@example.org", "--to", &to])
        .args([
            "--header",
            "Subject: hello",
            "--body",
            "a line\n.leading dot\n",
        ])
        .output()
        .expect("swaks must be installed (the README's test command installs it)");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{transcript}");
    assert!(
        transcript.contains("<-  250 2.0.0 Ok: queued"),
        "{transcript}"
    );
    let q = d.queue_json();
    assert_eq!(q["messages"], 1, "{q}");
    assert_eq!(q["recipients"], 1, "{q}");
}

#[tokio::test]
async fn pipelined_commands_get_replies_in_order() {
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    let ehlo = c.cmd("EHLO client.example").await.1;
    assert!(ehlo.contains("PIPELINING"));
    let batch = format!(
        "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@{}>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n",
        onion(3)
    );
    c.send(batch.as_bytes()).await;
    let codes = [
        c.reply().await.0,
        c.reply().await.0,
        c.reply().await.0,
        c.reply().await.0,
    ];
    assert_eq!(codes, [250, 250, 250, 354]);
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\nRSET\r\nQUIT\r\n")
        .await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 221);
    assert!(c.closed().await);
    assert_eq!(d.queue_json()["recipients"], 2);
}

#[tokio::test]
async fn smuggled_end_of_data_is_not_honoured() {
    let d = Daemon::start(&[]);
    let mut c = d.ehlo_client().await;
    c.start_data("a@example.org", &["b@example.org"]).await;
    // A classic smuggling attempt: the bare-LF dot would end the message on
    // a lenient server, and the rest would become a second transaction.
    // The bare LF ends the session instead (521), before the dot.
    c.send(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nforged\r\n.\r\n")
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 521, "{text}");
    assert!(text.contains("5.5.2") && text.contains("bare"), "{text}");
    // The refusal tells a netcat user what to do.
    assert!(text.contains("nc -C"), "{text}");
    // Nothing after the bare LF was treated as a command.
    assert!(c.closed().await);
    assert_eq!(d.queue_json()["messages"], 0);
}

#[tokio::test]
async fn a_bare_cr_in_data_is_refused_after_the_real_terminator() {
    let d = Daemon::start(&[]);
    let mut c = d.ehlo_client().await;
    c.start_data("a@example.org", &["b@example.org"]).await;
    c.send(b"Subject: x\r\n\r\nhi\r.\rMAIL FROM:<evil@example.org>\r\n.\r\n")
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.5.2") && text.contains("bare CR"), "{text}");
    assert_eq!(c.code("NOOP").await, 250, "the session goes on");
    assert_eq!(d.queue_json()["messages"], 0);
}

#[tokio::test]
async fn oversized_data_is_read_to_the_end_and_refused() {
    let d = Daemon::start(&["-max-message-size", "20000"]);
    let mut c = d.ehlo_client().await;
    let (code, text) = c.cmd("MAIL FROM:<a@example.org> SIZE=20001").await;
    assert_eq!((code, &text[4..9]), (552, "5.3.4"));
    c.start_data("a@example.org", &["b@example.org"]).await;
    let line = "x".repeat(998) + "\r\n";
    for _ in 0..100 {
        c.send(line.as_bytes()).await;
    }
    c.send(b".\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4"));
    assert_eq!(c.code("NOOP").await, 250, "session continues after 552");
    assert_eq!(d.queue_json()["messages"], 0);
}

#[tokio::test]
async fn recipients_beyond_the_limit_get_452() {
    let d = Daemon::start(&["-max-recipients", "2"]);
    let mut c = d.ehlo_client().await;
    c.code("MAIL FROM:<>").await;
    assert_eq!(c.code("RCPT TO:<a@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<b@example.org>").await, 250);
    let (code, text) = c.cmd("RCPT TO:<c@example.org>").await;
    assert_eq!(code, 452);
    assert!(text.contains("4.5.3"));
}

#[tokio::test]
async fn bad_onion_recipients_are_refused_with_the_reason() {
    let d = Daemon::start(&[]);
    let mut c = d.ehlo_client().await;
    c.code("MAIL FROM:<a@example.org>").await;
    let good = onion(4);
    let bad = format!(
        "{}{}",
        if good.starts_with('a') { "b" } else { "a" },
        &good[1..]
    );
    let (code, text) = c.cmd(&format!("RCPT TO:<x@{bad}>")).await;
    assert_eq!(code, 553, "{text}");
    assert!(text.contains("checksum"), "{text}");
    assert_eq!(c.code(&format!("RCPT TO:<x@{good}>")).await, 250);
}

#[tokio::test]
async fn long_lines_unknown_commands_and_too_many_errors() {
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    let long = format!("NOOP {}", "x".repeat(10_000));
    let (code, text) = c.cmd(&long).await;
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("5.5.2"));
    let (code, text) = c.cmd("WIBBLE").await;
    assert_eq!((code, &text[4..9]), (500, "5.5.1"));
    for _ in 0..7 {
        c.cmd("WIBBLE").await;
    }
    let (code, text) = c.cmd("WIBBLE").await;
    assert_eq!(code, 421, "{text}");
    assert!(c.closed().await);
}
