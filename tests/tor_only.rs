//! "Tor only", observed from outside: the real binary runs under
//! `strace -f`, delivers to an onion and to a clearnet domain (MX lookup
//! included), and every connect() it made must go to the SOCKS port, with no
//! UDP socket and no datagram sent anywhere. The suite itself stays off the
//! network too: a daemon started without a proxy dials only the test's
//! dead end.

mod common;

use common::dns_server::{DnsServer, Zone};
use common::smtp_sink::{Behaviour, Sink};
use common::socks_proxy::SocksProxy;
use common::{Daemon, onion};

#[tokio::test]
async fn every_outgoing_connection_goes_to_the_socks_port() {
    let proxy = SocksProxy::start().await;
    let dns = DnsServer::start(&[("example.org", Zone::Mx(vec![(10, "mx.example.org.")]))]).await;
    let sink = Sink::start(Behaviour::default()).await;
    let dest = onion(12);
    proxy.route("192.0.2.53", 53, dns.addr);
    proxy.route(&dest, 25, sink.addr);
    proxy.route("mx.example.org", 25, sink.addr);

    let proxy_arg = proxy.addr.to_string();
    let mut d = Daemon::start_traced(
        &["-e", "trace=socket,connect,sendto,sendmsg"],
        &[
            "-batch-window",
            "0",
            "-tor-socks",
            &proxy_arg,
            "-dns-server",
            "192.0.2.53:53",
        ],
    );
    let mut c = d.ehlo_client().await;
    let to_onion = format!("a@{dest}");
    assert_eq!(
        c.send_mail("s@example.net", &[&to_onion, "b@example.org"], "x")
            .await,
        250
    );
    c.code("QUIT").await;
    sink.wait_for(2).await;
    d.until_queue("empty", |q| q["messages"] == 0).await;

    let text = d.stop_traced();
    let inet_connects = common::assert_only_socks(&text, proxy.addr.port());
    // Onion SMTP, the DNS query, and clearnet SMTP at least.
    assert!(inet_connects >= 3, "too few connections traced:\n{text}");
}

#[tokio::test]
async fn a_daemon_started_without_a_proxy_dials_only_the_tests_dead_end() {
    // The fixture's defaults keep the suite off a real Tor on 9050 and off
    // public resolvers. An RCPT to a clearnet domain makes the daemon look
    // for its MX through "Tor".
    let mut d = Daemon::start_traced(&["-e", "trace=connect"], &[]);
    let mut c = d.ehlo_client().await;
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<b@example.org>").await, 250);
    c.code("QUIT").await;
    let text = d.stop_traced();
    let dead_end = format!("sin_port=htons({})", d.dead_end.addr.port());
    let connects: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("connect(") && l.contains("AF_INET"))
        .collect();
    assert!(
        !connects.is_empty(),
        "the MX check made no connection:\n{text}"
    );
    for line in connects {
        assert!(
            line.contains(&dead_end) && line.contains("127.0.0.1"),
            "connection outside the test's dead end: {line}"
        );
    }
}
