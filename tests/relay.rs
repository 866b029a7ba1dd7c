//! Delivery through Tor, end to end over 127.0.0.1: the real binary, an
//! in-test SOCKS5 proxy standing in for Tor, a DNS server answering MX over
//! TCP, and SMTP sinks as next hops.

mod common;

use common::dns_server::{DnsServer, Zone};
use common::smtp_sink::{Behaviour, Sink};
use common::socks_proxy::SocksProxy;
use common::{Daemon, onion};

/// The resolver the daemon is told to use; never contacted directly (the
/// proxy maps it to the local DNS server), which proves DNS goes via SOCKS.
const DNS: &str = "192.0.2.53";

/// Flags every relay test uses: the test proxy and resolver, fast retries,
/// and no mixing (batching has its own tests); `extra` may override the
/// delivery timeout.
fn flags(socks: std::net::SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = [
        "-batch-window",
        "0",
        "-tor-socks",
        &socks.to_string(),
        "-dns-server",
        &format!("{DNS}:53"),
        "-retry-base",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"-delivery-timeout") {
        all.extend(["-delivery-timeout", "5s"].map(String::from));
    }
    if !extra.contains(&"-pad-block") {
        // Exact byte comparisons below; padding has its own tests.
        all.extend(["-pad-block", "0"].map(String::from));
    }
    all.extend(extra.iter().map(|s| s.to_string()));
    all
}

fn start(proxy: &SocksProxy, extra: &[&str]) -> Daemon {
    let all = flags(proxy.addr, extra);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Daemon::start(&refs)
}

async fn send(d: &Daemon, to: &[&str], body: &str) {
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    assert_eq!(c.send_mail("alice@example.net", to, body).await, 250);
    c.code("QUIT").await;
}

async fn empty(d: &Daemon) {
    d.until_queue("empty", |q| q["messages"] == 0).await;
}

#[tokio::test]
async fn onion_mail_goes_through_the_proxy_by_name() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour::default()).await;
    let dest = onion(2);
    proxy.route(&dest, 25, sink.addr);
    let d = start(&proxy, &[]);
    // The test client sends the body as is, so it stuffs the dot itself.
    send(
        &d,
        &[&format!("bob@{dest}")],
        "Subject: hi\r\n\r\n..dot line\r\nend",
    )
    .await;
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].rcpt_to, [format!("bob@{dest}")]);
    assert_eq!(
        got[0].mail_from,
        format!("nobody@{}", d.name),
        "sanitize hides the sender"
    );
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(
        body, ".dot line\r\nend\r\n",
        "body byte for byte, dots round-tripped"
    );
    assert!(
        head.contains("Subject: hi") && head.starts_with("From: Anonymous <nobody@"),
        "{head}"
    );
    assert!(!got[0].tls, "no STARTTLS needed inside an onion circuit");
    empty(&d).await;
    let reqs = proxy.requests();
    assert!(
        reqs.iter()
            .all(|r| r.host == dest && r.by_name && r.port == 25),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().all(|r| r.username.len() >= 8),
        "random SOCKS credentials: {reqs:?}"
    );
}

#[tokio::test]
async fn clearnet_mail_uses_mx_through_tor_falls_back_and_uses_starttls() {
    let proxy = SocksProxy::start().await;
    let dns = DnsServer::start(&[(
        "example.org",
        Zone::Mx(vec![(20, "mx2.example.org."), (10, "mx1.example.org.")]),
    )])
    .await;
    let sink = Sink::start(Behaviour {
        starttls: true,
        ..Behaviour::default()
    })
    .await;
    proxy.route(DNS, 53, dns.addr);
    proxy.refuse("mx1.example.org", 25, 0x05);
    proxy.route("mx2.example.org", 25, sink.addr);
    let d = start(&proxy, &[]);
    send(&d, &["carol@example.org"], "hello").await;
    let got = sink.wait_for(1).await;
    assert!(got[0].tls, "STARTTLS offered and used");
    assert_eq!(got[0].rcpt_to, ["carol@example.org"]);
    empty(&d).await;

    let reqs = proxy.requests();
    let dns_req = reqs
        .iter()
        .find(|r| r.port == 53)
        .expect("DNS went through the proxy");
    assert_eq!((dns_req.host.as_str(), dns_req.by_name), (DNS, false));
    let smtp: Vec<&str> = reqs
        .iter()
        .filter(|r| r.port == 25)
        .map(|r| r.host.as_str())
        .collect();
    assert_eq!(
        &smtp[..2],
        ["mx1.example.org", "mx2.example.org"],
        "preference order, then fallback"
    );
    assert!(
        reqs.iter().filter(|r| r.port == 25).all(|r| r.by_name),
        "MX host names are never resolved locally"
    );
    let users: std::collections::HashSet<_> = reqs.iter().map(|r| r.username.clone()).collect();
    assert_eq!(users.len(), reqs.len(), "fresh credentials per connection");
    assert!(dns.queries().iter().any(|(n, _)| n == "example.org"));

    // A second message: the MX answer comes from the cache (TTL 300 s).
    send(&d, &["dan@example.org"], "again").await;
    sink.wait_for(2).await;
    let mx_queries = dns
        .queries()
        .iter()
        .filter(|(n, _)| n == "example.org")
        .count();
    assert_eq!(mx_queries, 1, "answers are cached for their TTL");
}

#[tokio::test]
async fn a_domain_without_mx_is_its_own_mail_host_and_helo_still_works() {
    let proxy = SocksProxy::start().await;
    let dns = DnsServer::start(&[("plain.example", Zone::NoData)]).await;
    let sink = Sink::start(Behaviour {
        refuse_ehlo: true,
        ..Behaviour::default()
    })
    .await;
    proxy.route(DNS, 53, dns.addr);
    proxy.route("plain.example", 25, sink.addr);
    let d = start(&proxy, &[]);
    send(&d, &["erin@plain.example"], "implicit MX, HELO only").await;
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].rcpt_to, ["erin@plain.example"]);
    empty(&d).await;
}

#[tokio::test]
async fn domains_without_mail_service_are_refused_at_rcpt() {
    let proxy = SocksProxy::start().await;
    let dns = DnsServer::start(&[
        ("null.example", Zone::Mx(vec![(0, ".")])),
        ("live.example", Zone::Mx(vec![(10, "mx.live.example.")])),
    ])
    .await;
    proxy.route(DNS, 53, dns.addr);
    let d = start(&proxy, &[]);
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    c.code("MAIL FROM:<a@example.net>").await;
    let (code, text) = c.cmd("RCPT TO:<u@null.example>").await;
    assert_eq!(code, 550, "null MX: {text}");
    assert!(text.contains("5.1.2"));
    let (code, _) = c.cmd("RCPT TO:<u@nowhere.example>").await;
    assert_eq!(code, 550, "NXDOMAIN");
    assert_eq!(c.code("RCPT TO:<u@live.example>").await, 250);
}

#[tokio::test]
async fn a_dns_timeout_does_not_refuse_at_rcpt() {
    let proxy = SocksProxy::start().await;
    let dns = DnsServer::start(&[("slow.example", Zone::Silent)]).await;
    proxy.route(DNS, 53, dns.addr);
    let d = start(&proxy, &[]);
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    c.code("MAIL FROM:<a@example.net>").await;
    assert_eq!(c.code("RCPT TO:<u@slow.example>").await, 250);
    let asked = dns.queries().len();
    assert!(asked >= 1, "the check went to the resolver");
    // A second recipient there is accepted without waiting again.
    assert_eq!(c.code("RCPT TO:<v@slow.example>").await, 250);
    assert_eq!(
        dns.queries().len(),
        asked,
        "a domain that just timed out is not asked again"
    );
}

#[tokio::test]
async fn a_451_is_retried_and_delivered_exactly_once() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        data_replies: vec![451],
        ..Behaviour::default()
    })
    .await;
    let dest = onion(3);
    proxy.route(&dest, 25, sink.addr);
    let d = start(&proxy, &[]);
    send(&d, &[&format!("x@{dest}")], "retry me").await;
    sink.wait_for(1).await;
    empty(&d).await;
    assert_eq!(sink.received().len(), 1);
    assert_eq!(sink.connections(), 2, "one failed attempt, one success");
}

#[tokio::test]
async fn permanent_refusals_drop_only_that_recipient() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        refuse_rcpt: vec![("reject".into(), 550)],
        ..Behaviour::default()
    })
    .await;
    let dest = onion(4);
    proxy.route(&dest, 25, sink.addr);
    let d = start(&proxy, &[]);
    send(
        &d,
        &[&format!("reject@{dest}"), &format!("ok@{dest}")],
        "one of two",
    )
    .await;
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].rcpt_to, [format!("ok@{dest}")]);
    empty(&d).await;
    assert_eq!(sink.connections(), 1, "a 550 is not retried");
}

#[tokio::test]
async fn a_connection_lost_mid_data_is_retried() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        drop_mid_data: 1,
        ..Behaviour::default()
    })
    .await;
    let dest = onion(5);
    proxy.route(&dest, 25, sink.addr);
    let d = start(&proxy, &[]);
    send(&d, &[&format!("x@{dest}")], "line one\r\nline two").await;
    sink.wait_for(1).await;
    empty(&d).await;
    assert_eq!(sink.connections(), 2);
}

#[tokio::test]
async fn a_stalled_server_is_cut_off_by_the_delivery_timeout() {
    let proxy = SocksProxy::start().await;
    let stalled = Sink::start(Behaviour {
        stall: true,
        ..Behaviour::default()
    })
    .await;
    let good = Sink::start(Behaviour::default()).await;
    let (slow, fast) = (onion(6), onion(7));
    proxy.route(&slow, 25, stalled.addr);
    proxy.route(&fast, 25, good.addr);
    let d = start(&proxy, &["-workers", "1", "-delivery-timeout", "1s"]);
    send(&d, &[&format!("x@{slow}")], "to the stalled one").await;
    send(&d, &[&format!("y@{fast}")], "to the good one").await;
    // With one worker, the second message only goes out if the first
    // delivery was abandoned at its timeout.
    good.wait_for(1).await;
    d.until_queue("the stalled recipient deferred", |q| q["deferred"] == 1)
        .await;
}

#[tokio::test]
async fn mail_waits_while_the_proxy_is_down_and_leaves_when_it_returns() {
    let down = SocksProxy::start().await;
    let addr = down.stop().await;
    let sink = Sink::start(Behaviour::default()).await;
    let dest = onion(8);
    let all = flags(addr, &["-retries", "20"]);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let d = Daemon::start(&refs);
    send(&d, &[&format!("x@{dest}")], "patience").await;
    d.until_queue("deferred", |q| q["deferred"] == 1).await;
    let up = SocksProxy::start_on(addr).await;
    up.route(&dest, 25, sink.addr);
    sink.wait_for(1).await;
    empty(&d).await;
    assert!(
        d.log_text().contains("temporary failure"),
        "the log says why"
    );
}

#[tokio::test]
async fn deferred_mail_survives_a_restart() {
    let proxy = SocksProxy::start().await;
    let dest = onion(9);
    proxy.refuse(&dest, 25, 0xF2); // introduction failed: temporary
    let mut d = start(&proxy, &[]);
    send(&d, &[&format!("x@{dest}")], "later").await;
    let q = d.until_queue("deferred", |q| q["deferred"] == 1).await;
    assert!(q["next_retry_in_seconds"].is_u64());
    d.signal("TERM");
    assert!(d.wait().success());
    let dir = d.take_dir().unwrap();

    let proxy2 = SocksProxy::start().await;
    let sink = Sink::start(Behaviour::default()).await;
    proxy2.route(&dest, 25, sink.addr);
    let all = flags(proxy2.addr, &[]);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let d2 = Daemon::start_in(&d.data_dir.clone(), &refs);
    sink.wait_for(1).await;
    empty(&d2).await;
    drop(dir);
}

#[tokio::test]
async fn a_dead_onion_address_is_dropped_not_retried() {
    let proxy = SocksProxy::start().await;
    let dest = onion(10);
    proxy.refuse(&dest, 25, 0xF6); // invalid onion address: permanent
    let d = start(&proxy, &[]);
    send(&d, &[&format!("x@{dest}")], "nowhere").await;
    empty(&d).await;
    assert!(
        d.log_text()
            .contains("permanent failure: SOCKS reply 0xf6: invalid onion address"),
        "{}",
        d.log_text()
    );
    assert!(!d.log_text().contains(&dest), "no address in the log");
}

#[tokio::test]
async fn recipients_on_different_domains_get_separate_transactions() {
    let proxy = SocksProxy::start().await;
    let dns = DnsServer::start(&[("example.org", Zone::Mx(vec![(10, "mx.example.org.")]))]).await;
    let onion_sink = Sink::start(Behaviour::default()).await;
    let clear_sink = Sink::start(Behaviour::default()).await;
    let dest = onion(11);
    proxy.route(DNS, 53, dns.addr);
    proxy.route(&dest, 25, onion_sink.addr);
    proxy.route("mx.example.org", 25, clear_sink.addr);
    let d = start(&proxy, &["-sanitize=false"]);
    send(
        &d,
        &[&format!("a@{dest}"), "b@example.org", "c@example.org"],
        "to all",
    )
    .await;
    let o = onion_sink.wait_for(1).await;
    let c = clear_sink.wait_for(1).await;
    assert_eq!(o[0].rcpt_to, [format!("a@{dest}")]);
    let mut clear_rcpts = c[0].rcpt_to.clone();
    clear_rcpts.sort();
    assert_eq!(
        clear_rcpts,
        ["b@example.org", "c@example.org"],
        "one transaction for both"
    );
    assert_eq!(
        c[0].mail_from, "alice@example.net",
        "-sanitize=false keeps the sender"
    );
    empty(&d).await;
}

#[tokio::test]
async fn delivery_works_through_debians_microsocks() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut socks = std::process::Command::new("microsocks")
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("microsocks must be installed (the README's test command installs it)");
    let proxy_addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while tokio::net::TcpStream::connect(&proxy_addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "microsocks did not start"
        );
        tokio::task::yield_now().await;
    }
    // microsocks resolves names itself, so the MX points at an address and
    // the sink listens on the port we tell pluto2 to use.
    let dns = DnsServer::start(&[("example.org", Zone::Mx(vec![(10, "127.0.0.1.")]))]).await;
    let sink = Sink::start(Behaviour::default()).await;
    let d = Daemon::start(&[
        "-batch-window",
        "0",
        "-tor-socks",
        &proxy_addr,
        "-dns-server",
        &dns.addr.to_string(),
        "-smtp-port",
        &sink.addr.port().to_string(),
    ]);
    send(&d, &["dave@example.org"], "via microsocks").await;
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].rcpt_to, ["dave@example.org"]);
    empty(&d).await;
    let _ = socks.kill();
    let _ = socks.wait();
}

#[tokio::test]
async fn smtputf8_mail_to_a_server_without_it_fails_permanently() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        ascii_only: true,
        ..Behaviour::default()
    })
    .await;
    let dest = onion(13);
    proxy.route(&dest, 25, sink.addr);
    let d = start(&proxy, &[]);
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    assert_eq!(c.code("MAIL FROM:<jörg@example.net> SMTPUTF8").await, 250);
    assert_eq!(c.code(&format!("RCPT TO:<jörg@{dest}>")).await, 250);
    assert_eq!(c.code("DATA").await, 354);
    c.send("Subject: grüße\r\n\r\nx\r\n.\r\n".as_bytes()).await;
    assert_eq!(c.reply().await.0, 250);
    empty(&d).await;
    assert!(sink.received().is_empty(), "{:?}", sink.received());
    assert!(
        d.log_text()
            .contains("permanent failure: next hop does not support SMTPUTF8")
    );
}

#[tokio::test]
async fn every_drop_and_retry_is_logged_with_class_stage_and_code_but_no_address() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        refuse_rcpt: vec![("reject".into(), 550)],
        // First final dot: try again later; second: too big for good.
        data_replies: vec![451, 552],
        ..Behaviour::default()
    })
    .await;
    let dest = onion(14);
    proxy.route(&dest, 25, sink.addr);
    let d = start(&proxy, &[]);
    send(
        &d,
        &[&format!("reject@{dest}"), &format!("keep@{dest}")],
        "refused twice",
    )
    .await;
    empty(&d).await;
    let rcpt = d
        .until_log("for the RCPT refusal", |l| {
            l.contains("INFO") && l.contains("dropped 1 recipient(s) (onion)")
        })
        .await;
    assert!(
        rcpt.contains("RCPT refused: 550 5.1.1") && rcpt.contains("class=smtp_reply"),
        "{rcpt}"
    );
    let retry = d
        .until_log("for the retry", |l| l.contains("will retry 1 recipient(s)"))
        .await;
    assert!(
        retry.contains("INFO") && retry.contains("message refused: 451 4.0.0"),
        "{retry}"
    );
    let size = d
        .until_log("for the refusal after DATA", |l| {
            l.contains("dropped") && l.contains("552")
        })
        .await;
    assert!(
        size.contains("INFO") && size.contains("message refused: 552 5.0.0"),
        "{size}"
    );
    assert!(!d.log_text().contains(&dest), "no address in the log");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn an_onion_name_whose_key_tor_refuses_is_refused_at_rcpt() {
    let proxy = SocksProxy::start().await;
    let d = start(&proxy, &[]);
    // Checksum and version are right for these keys, but neither is a key
    // Tor accepts: y = 2 is no curve point, y = 0 has order 4.
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    let bad = [not_a_point, [0u8; 32]]
        .map(|key| pluto2::address::OnionName::from_public_key(&key).to_string());
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    c.code("MAIL FROM:<a@example.net>").await;
    for name in &bad {
        let (code, text) = c.cmd(&format!("RCPT TO:<x@{name}>")).await;
        assert_eq!(code, 553, "{name}: {text}");
        assert!(
            text.contains("5.1.2") && text.contains("valid service key"),
            "{text}"
        );
    }
    assert_eq!(c.code(&format!("RCPT TO:<x@{}>", onion(15))).await, 250);
    assert!(proxy.requests().is_empty(), "nothing was tried through Tor");
}

/// A message of `n` bytes as stored (headers, a blank line, body lines;
/// the trailing CRLF of the last line included).
fn sized_body(n: usize) -> String {
    let head = "Subject: size\r\n\r\n";
    let mut body = String::from(head);
    while body.len() + 2 < n {
        let line = (n - 2 - body.len()).min(70);
        body.push_str(&"x".repeat(line));
        if body.len() + 2 < n {
            body.push_str("\r\n");
        }
    }
    assert_eq!(body.len() + 2, n);
    body
}

#[tokio::test]
async fn padding_never_passes_the_next_hops_size_and_too_big_is_a_logged_drop() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        size_limit: Some(5000),
        ..Behaviour::default()
    })
    .await;
    let dest = onion(16);
    proxy.route(&dest, 25, sink.addr);
    let d = start(&proxy, &["-pad-block", "4096", "-sanitize=false"]);
    // Padded to whole blocks it would be 8192 bytes on the wire: over the
    // limit. It goes out padded up to exactly the limit instead.
    send(&d, &[&format!("a@{dest}")], &sized_body(4090)).await;
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].data.len(), 5000);
    assert!(got[0].data.starts_with(b"X-Padding: "));
    empty(&d).await;
    // Over the limit even unpadded: dropped before MAIL, and logged.
    let mails = sink.mail_commands();
    send(&d, &[&format!("b@{dest}")], &sized_body(6000)).await;
    let line = d
        .until_log("for the too-big drop", |l| l.contains("class=too_big"))
        .await;
    assert!(
        line.contains("INFO")
            && line.contains("dropped 1 recipient(s)")
            && line.contains(
                "permanent failure: message larger than the next hop's EHLO SIZE limit (MAIL)"
            ),
        "{line}"
    );
    empty(&d).await;
    assert_eq!(
        sink.mail_commands(),
        mails,
        "no MAIL for a message that cannot fit"
    );
    assert_eq!(sink.received().len(), 1);
    assert!(!d.log_text().contains(&dest));
}

#[tokio::test]
async fn a_refused_or_broken_starttls_goes_on_in_plaintext_on_a_new_connection() {
    let proxy = SocksProxy::start().await;
    let dns = DnsServer::start(&[
        (
            "refuses.example",
            Zone::Mx(vec![(10, "mx.refuses.example.")]),
        ),
        ("broken.example", Zone::Mx(vec![(10, "mx.broken.example.")])),
    ])
    .await;
    let refuses = Sink::start(Behaviour {
        starttls: true,
        starttls_refusal: Some(454),
        ..Behaviour::default()
    })
    .await;
    let broken = Sink::start(Behaviour {
        starttls: true,
        starttls_garbage: true,
        ..Behaviour::default()
    })
    .await;
    proxy.route(DNS, 53, dns.addr);
    proxy.route("mx.refuses.example", 25, refuses.addr);
    proxy.route("mx.broken.example", 25, broken.addr);
    let d = start(&proxy, &[]);
    send(&d, &["a@refuses.example"], "454 to STARTTLS").await;
    send(&d, &["b@broken.example"], "a handshake that breaks").await;
    for sink in [&refuses, &broken] {
        let got = sink.wait_for(1).await;
        assert!(!got[0].tls, "delivered without TLS");
        assert_eq!(sink.connections(), 2, "a new connection for plaintext");
    }
    empty(&d).await;
    d.until_log("for the 454 fallback", |l| {
        l.contains("STARTTLS refused: 454") && l.contains("trying again without TLS")
    })
    .await;
    d.until_log("for the handshake fallback", |l| {
        l.contains("TLS handshake failed") && l.contains("trying again without TLS")
    })
    .await;
    let logs = d.log_text();
    assert!(
        !logs.contains("refuses.example") && !logs.contains("broken.example"),
        "no host or address in the log: {logs}"
    );
}

#[tokio::test]
async fn with_tls_verify_a_refused_starttls_is_deferred_not_sent_in_plaintext() {
    let proxy = SocksProxy::start().await;
    let dns = DnsServer::start(&[(
        "refuses.example",
        Zone::Mx(vec![(10, "mx.refuses.example.")]),
    )])
    .await;
    let sink = Sink::start(Behaviour {
        starttls: true,
        starttls_refusal: Some(454),
        ..Behaviour::default()
    })
    .await;
    proxy.route(DNS, 53, dns.addr);
    proxy.route("mx.refuses.example", 25, sink.addr);
    let d = start(&proxy, &["-tls-verify", "-retries", "20"]);
    send(&d, &["a@refuses.example"], "must not leave in plaintext").await;
    d.until_queue("deferred", |q| q["deferred"] == 1).await;
    assert!(sink.received().is_empty());
    assert_eq!(sink.connections(), 1);
}

// Multi-threaded: the sink must answer while this thread waits for the
// daemon to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_past_data_at_sigterm_settles_and_is_not_made_again() {
    let proxy = SocksProxy::start().await;
    let sink = Sink::start(Behaviour {
        dot_delay: Some(std::time::Duration::from_millis(1500)),
        ..Behaviour::default()
    })
    .await;
    let dest = onion(17);
    proxy.route(&dest, 25, sink.addr);
    let mut d = start(&proxy, &[]);
    send(&d, &[&format!("x@{dest}")], "only once").await;
    // The message is out; the next hop has not answered yet.
    sink.wait_for_dots(1).await;
    d.signal("TERM");
    assert!(d.wait().success());
    let dir = d.take_dir().unwrap();
    assert_eq!(
        common::queue_json(&d.data_dir)["messages"],
        0,
        "its settle was committed before the spool closed: {}",
        d.log_text()
    );
    sink.wait_for(1).await;
    let all = flags(proxy.addr, &[]);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let d2 = Daemon::start_in(&d.data_dir.clone(), &refs);
    empty(&d2).await;
    assert_eq!(sink.received().len(), 1, "not delivered a second time");
    assert_eq!(sink.connections(), 1);
    drop(dir);
}

#[tokio::test]
async fn under_the_free_space_reserve_new_mail_gets_452_and_queued_mail_still_leaves() {
    let proxy = SocksProxy::start().await;
    let dest = onion(18);
    proxy.refuse(&dest, 25, 0xF2); // introduction failed: temporary
    let mut d = start(&proxy, &[]);
    send(&d, &[&format!("x@{dest}")], "queued before the disk filled").await;
    d.until_queue("deferred", |q| q["deferred"] == 1).await;
    d.signal("TERM");
    assert!(d.wait().success());
    let dir = d.take_dir().unwrap();

    // No file system has an exabyte free: every enqueue is under the
    // reserve.
    let proxy2 = SocksProxy::start().await;
    let sink = Sink::start(Behaviour::default()).await;
    proxy2.route(&dest, 25, sink.addr);
    let all = flags(proxy2.addr, &["-min-free-space", "1000000000000000000"]);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let d2 = Daemon::start_in(&d.data_dir.clone(), &refs);
    let mut c = d2.client().await;
    c.code("EHLO client.example").await;
    c.start_data("alice@example.net", &[&format!("y@{dest}")])
        .await;
    c.send(b"Subject: refused\r\n\r\nno room\r\n.\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 452, "{text}");
    assert!(text.starts_with("452 4.3.1"), "{text}");
    // Leasing and settling still work: the earlier message leaves.
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].rcpt_to, [format!("x@{dest}")]);
    empty(&d2).await;
    d2.until_log("for the reserve warning", |l| l.contains("-min-free-space"))
        .await;
    drop(dir);
}

#[tokio::test]
async fn own_cover_coming_back_through_tor_does_not_spend_the_rate_limit() {
    let proxy = SocksProxy::start().await;
    let d = start(
        &proxy,
        &[
            "-cover-interval",
            "50ms",
            "-rate-limit",
            "2",
            "-rate-window",
            "1h",
            "-stats-interval",
            "1s",
            // One delivery at a time: cover sessions never overlap, so
            // each is refunded before the next one is admitted.
            "-workers",
            "1",
        ],
    );
    // Tor hands our own onion's port 25 back to our listener, from
    // 127.0.0.1 like every client without -proxy-protocol.
    proxy.route(&d.name, 25, d.addr);
    d.until_log("for cover to come back five times", |l| {
        l.split("cover_received=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|n| n >= 5)
    })
    .await;
    // Cover used five sessions from 127.0.0.1; a client there still has
    // the whole budget of two.
    let mut first = d.client().await;
    assert_eq!(first.code("QUIT").await, 221);
    assert!(d.log_text().contains("shared by the whole onion service"));
    assert!(
        !d.log_text().contains("rate limit exceeded"),
        "{}",
        d.log_text()
    );
}
