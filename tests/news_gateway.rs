//! Posting to Usenet through a mail-to-news gateway, with the real binary
//! in direct mode and sanitizing on (the default): what the gateway and
//! its readers rely on arrives byte for byte, a stamp dated to the minute
//! does not (and is counted), a stamp is minted for the gateway, and news
//! posts leave unpadded while other mail is still padded.

mod common;

use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use common::smtp_sink::{Behaviour, Received, Sink};
use common::socks_proxy::SocksProxy;
use common::{Daemon, PATIENCE, metric_value, onion, scrape};

const ED_PUB: &str = "X-Ed25519-Pub: 6y1LvnPp8qb6bLQtUMCJFA6WT3tAqkZmBM0q3nq2T3Y=\r\n";
const ED_SIG: &str = "X-Ed25519-Sig: HWHuO5DJm0+lTnBqTPoN3ApXhIkOXZPwUZbtnm2YxvXd\r\n\tkJ7Cz8oqE0sWZ2MWzXp8yu8sLFNTrWv/7hpbCw==\r\n";
/// A day-precision stamp the author made for the group's own address.
const DAY_STAMP: &str = "X-Hashcash: 1:20:261207:alt.test@gw.example::McMybZIhxKXu57jd:1b2c\r\n";
/// A stamp that says when the mail was written, to the minute.
const MINUTE_STAMP: &str = "Hashcash: 1:20:2612071530:alt.test@gw.example::AbCdEf:9z\r\n";

fn by_subject<'a>(got: &'a [Received], subject: &str) -> &'a str {
    let wanted = format!("Subject: {subject}\r\n");
    got.iter()
        .map(|r| std::str::from_utf8(&r.data).unwrap())
        .find(|t| t.contains(&wanted))
        .unwrap_or_else(|| panic!("no message {subject}"))
}

fn head(text: &str) -> &str {
    text.split_once("\r\n\r\n").unwrap().0
}

fn utc_yymmdd() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:02}{:02}{:02}",
        now.year() % 100,
        u8::from(now.month()),
        now.day()
    )
}

#[tokio::test]
async fn a_post_through_a_gateway_keeps_stamps_and_signatures_and_is_not_padded() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour::default()).await;
    let (gw, friend) = (onion(40), onion(41));
    proxy.route(&gw, 25, sink.addr);
    proxy.route(&friend, 25, sink.addr);
    let gateway = format!("mail2news@{gw}");
    let socks = proxy.addr.to_string();
    let d = Daemon::start(&[
        "-tor-socks",
        &socks,
        "-batch-window",
        "0",
        "-metrics",
        "127.0.0.1:0",
        "-hashcash-bits",
        "12",
        "-hashcash-for",
        &gateway,
        "-news-gateway",
        &gw,
    ]);
    let metrics = d.metrics_addr().await;
    let date_before = utc_yymmdd();

    let post = format!(
        "From: Real Name <real@example.net>\r\nNewsgroups: alt.test\r\n\
         {ED_PUB}{ED_SIG}{DAY_STAMP}{MINUTE_STAMP}Subject: post\r\n\r\nhello usenet\r\n"
    );
    // Newsgroups header, to someone who is not a listed gateway.
    let header_post = "Newsgroups: alt.test\r\nSubject: header-post\r\n\r\nhi\r\n";
    let mail = "Subject: mail\r\n\r\nprivate\r\n";
    let mut c = d.ehlo_client().await;
    let to_friend = format!("bob@{friend}");
    assert_eq!(
        c.send_mail("alice@example.net", &[&gateway], &post).await,
        250
    );
    assert_eq!(
        c.send_mail("alice@example.net", &[&to_friend], header_post)
            .await,
        250
    );
    assert_eq!(
        c.send_mail("alice@example.net", &[&to_friend], mail).await,
        250
    );
    c.code("QUIT").await;
    let got = sink.wait_for(3).await;
    let date_after = utc_yymmdd();

    let post = by_subject(&got, "post");
    let post_head = head(post);
    for kept in [ED_PUB, ED_SIG, DAY_STAMP] {
        assert!(
            post.contains(kept),
            "{kept:?} not byte for byte in:\n{post}"
        );
    }
    assert!(
        !post.contains("2612071530"),
        "the minute stamp left:\n{post}"
    );
    assert!(!post.contains("real@example.net"), "{post}");
    // The stamp minted for the gateway: day precision, today, and worth
    // the bits asked for by hashcash's own measure.
    let minted: Vec<&str> = post_head
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("X-Hashcash: "))
        .filter(|s| s.contains(&gateway))
        .collect();
    assert_eq!(minted.len(), 1, "one stamp minted for the gateway:\n{post}");
    let fields: Vec<&str> = minted[0].split(':').collect();
    assert_eq!(fields.len(), 7, "{}", minted[0]);
    assert_eq!(&fields[..2], ["1", "12"]);
    assert!(
        fields[2] == date_before || fields[2] == date_after,
        "{}",
        minted[0]
    );
    assert_eq!(fields[3], gateway);
    let digest = Sha1::digest(minted[0].as_bytes());
    let zeros = digest
        .iter()
        .position(|&b| b != 0)
        .map_or(160, |i| i as u32 * 8 + digest[i].leading_zeros());
    assert!(zeros >= 12, "{} has {zeros} zero bits", minted[0]);

    // News posts leave unpadded; other mail is padded as before.
    for subject in ["post", "header-post"] {
        assert!(
            !by_subject(&got, subject).contains("X-Padding"),
            "{subject} was padded"
        );
    }
    let private = got
        .iter()
        .find(|r| {
            std::str::from_utf8(&r.data)
                .unwrap()
                .contains("Subject: mail\r\n")
        })
        .unwrap();
    assert!(
        std::str::from_utf8(&private.data)
            .unwrap()
            .starts_with("X-Padding: ")
    );
    assert_eq!(private.wire_len % 8192, 0);

    // Counted by class, and logged without the stamp or its address.
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        let text = scrape(metrics).await;
        if metric_value(&text, "pluto2_hashcash_minted_total") == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "never counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dropped = |class: &str| {
        metric_value(
            &text,
            &format!("pluto2_hashcash_dropped_total{{class=\"{class}\"}}"),
        )
    };
    assert_eq!(dropped("time_of_day"), Some(1.0), "{text}");
    assert_eq!(dropped("malformed"), Some(0.0), "{text}");
    assert_eq!(
        metric_value(&text, "pluto2_hashcash_gave_up_total"),
        Some(0.0)
    );
    d.until_log("the drop logged", |l| {
        l.contains("[SANITIZE] dropped 1 hashcash stamp(s): time_of_day")
    })
    .await;
    let logs = d.log_text();
    for secret in ["2612071530", "alt.test@gw.example", "mail2news"] {
        assert!(!logs.contains(secret), "{secret} in the log");
    }
}
