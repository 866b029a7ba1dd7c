//! The MX resolver on its own, over real sockets on 127.0.0.1: an in-test
//! SOCKS5 proxy stands in for Tor and a DNS server answers over TCP.
//!
//! The resolver is always given a TEST-NET address as its name server. Only
//! the proxy knows that this address leads to the local DNS server, so every
//! answer seen here proves the query went through SOCKS and nothing dialed
//! the name server directly. `tests/relay.rs` covers the same resolver
//! through the daemon; these tests pin down its own contract: the exact
//! answers, the failure classes and the time bound.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::dns_server::{DnsServer, Zone};
use common::socks_proxy::SocksProxy;
use hickory_proto::rr::RecordType;
use pluto2::relay::failure::{DnsProblem, FailureKind, Stage};
use pluto2::relay::mx_lookup::{MxAnswer, MxResolver};
use pluto2::relay::socks::SocksDialer;

/// Reserved for documentation (RFC 5737, TEST-NET-1): no name server lives
/// there, so a query sent to it directly would get no answer.
const DNS_IP: &str = "192.0.2.53";

/// Per-lookup budget for the resolver. Short, so the silent-server test
/// finishes quickly, yet far above a round trip on loopback.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

/// A DNS server with `zones`, a proxy that maps `DNS_IP:53` to it, and a
/// resolver that knows only the proxy and `DNS_IP:53`.
async fn setup(zones: &[(&str, Zone)]) -> (MxResolver, SocksProxy, DnsServer) {
    let dns = DnsServer::start(zones).await;
    let proxy = SocksProxy::start().await;
    proxy.route(DNS_IP, 53, dns.addr);
    let resolver = resolver_via(proxy.addr);
    (resolver, proxy, dns)
}

fn resolver_via(proxy: SocketAddr) -> MxResolver {
    let dialer = SocksDialer::new(proxy, common::PATIENCE);
    let server: SocketAddr = format!("{DNS_IP}:53").parse().unwrap();
    MxResolver::new(dialer, server, LOOKUP_TIMEOUT)
}

fn hosts(list: &[&str]) -> MxAnswer {
    MxAnswer::Hosts(list.iter().map(|h| h.to_string()).collect())
}

/// How often the DNS server was asked about `name`.
fn asked(dns: &DnsServer, name: &str) -> usize {
    dns.queries().iter().filter(|(n, _)| n == name).count()
}

#[tokio::test]
async fn exchanges_come_lowest_preference_first_without_trailing_dots() {
    let (mx, _proxy, _dns) = setup(&[(
        "example.org",
        Zone::Mx(vec![
            (30, "mx3.example.org."),
            (10, "mx1.example.org."),
            (20, "mx2.example.org."),
        ]),
    )])
    .await;
    assert_eq!(
        mx.lookup("example.org").await,
        Ok(hosts(&[
            "mx1.example.org",
            "mx2.example.org",
            "mx3.example.org"
        ]))
    );
}

#[tokio::test]
async fn a_domain_without_mx_records_is_its_own_exchange() {
    let (mx, _proxy, dns) = setup(&[("plain.example", Zone::NoData)]).await;
    assert_eq!(
        mx.lookup("plain.example").await,
        Ok(hosts(&["plain.example"]))
    );
    assert!(
        !mx.provably_undeliverable("plain.example", LOOKUP_TIMEOUT)
            .await
    );
    // Only MX is asked: the proxy resolves the implicit exchange when the
    // SMTP connection is made, so an A/AAAA query here would be wasted.
    let queries = dns.queries();
    assert!(
        queries.iter().all(|(_, t)| *t == RecordType::MX),
        "{queries:?}"
    );
}

#[tokio::test]
async fn a_null_mx_refuses_mail_unless_real_exchanges_stand_beside_it() {
    let (mx, _proxy, _dns) = setup(&[
        ("null.example", Zone::Mx(vec![(0, ".")])),
        (
            "mixed.example",
            Zone::Mx(vec![(0, "."), (10, "mx.mixed.example.")]),
        ),
    ])
    .await;
    assert_eq!(mx.lookup("null.example").await, Ok(MxAnswer::NullMx));
    assert!(
        mx.provably_undeliverable("null.example", LOOKUP_TIMEOUT)
            .await
    );
    assert_eq!(
        mx.lookup("mixed.example").await,
        Ok(hosts(&["mx.mixed.example"]))
    );
    assert!(
        !mx.provably_undeliverable("mixed.example", LOOKUP_TIMEOUT)
            .await
    );
}

#[tokio::test]
async fn nxdomain_is_no_such_domain_and_provably_undeliverable() {
    let (mx, _proxy, _dns) = setup(&[("gone.example", Zone::NxDomain)]).await;
    assert_eq!(mx.lookup("gone.example").await, Ok(MxAnswer::NoSuchDomain));
    assert!(
        mx.provably_undeliverable("gone.example", LOOKUP_TIMEOUT)
            .await
    );
}

#[tokio::test]
async fn a_silent_server_is_a_temporary_failure_within_the_timeout() {
    let (mx, _proxy, dns) = setup(&[("slow.example", Zone::Silent)]).await;
    let started = Instant::now();
    let failure = mx
        .lookup("slow.example")
        .await
        .expect_err("nobody answered");
    // The resolver's own deadline is LOOKUP_TIMEOUT and its outer guard
    // twice that; the extra second only absorbs a loaded test machine.
    let bound = LOOKUP_TIMEOUT * 2 + Duration::from_secs(1);
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    assert!(!failure.is_permanent(), "{failure}");
    assert_eq!(failure.kind, FailureKind::Timeout { stage: Stage::Mx });
    assert!(!failure.to_string().contains("slow"), "{failure}");
    assert!(asked(&dns, "slow.example") >= 1, "the query did arrive");

    // Doubt never refuses: the RCPT-time check gives up and says "maybe".
    let bound = Duration::from_millis(200);
    let started = Instant::now();
    assert!(!mx.provably_undeliverable("slow.example", bound).await);
    assert!(started.elapsed() < bound + Duration::from_secs(1));
}

#[tokio::test]
async fn servfail_is_temporary_and_proves_nothing() {
    let (mx, _proxy, _dns) = setup(&[("broken.example", Zone::ServFail)]).await;
    let failure = mx
        .lookup("broken.example")
        .await
        .expect_err("SERVFAIL is not an answer");
    assert!(!failure.is_permanent(), "{failure}");
    assert_eq!(
        failure.kind,
        FailureKind::Dns(DnsProblem::ServerError { rcode: 2 })
    );
    assert!(!failure.to_string().contains("broken"), "{failure}");
    assert!(
        !mx.provably_undeliverable("broken.example", LOOKUP_TIMEOUT)
            .await
    );
}

#[tokio::test]
async fn a_proxy_that_is_down_is_a_temporary_failure() {
    // A port that was just free: nothing listens there any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mx = resolver_via(closed);
    let failure = mx
        .lookup("example.org")
        .await
        .expect_err("no proxy, no DNS");
    assert!(!failure.is_permanent(), "{failure}");
    assert_eq!(failure.kind, FailureKind::Dns(DnsProblem::Unreachable));
    assert!(!failure.to_string().contains("example"), "{failure}");
    assert!(
        !mx.provably_undeliverable("example.org", LOOKUP_TIMEOUT)
            .await
    );
}

#[tokio::test]
async fn queries_reach_the_configured_ip_only_through_the_proxy() {
    let (mx, proxy, dns) = setup(&[("example.org", Zone::Mx(vec![(10, "mx.example.org.")]))]).await;
    assert_eq!(
        mx.lookup("example.org").await,
        Ok(hosts(&["mx.example.org"]))
    );
    let requests = proxy.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(
            (r.host.as_str(), r.port, r.by_name),
            (DNS_IP, 53, false),
            "the name server's IP goes to the proxy as an address: {r:?}"
        );
    }
    assert_eq!(dns.queries(), [("example.org".to_string(), RecordType::MX)]);
}

#[tokio::test]
async fn a_repeated_lookup_is_answered_from_the_cache() {
    let (mx, proxy, dns) = setup(&[("example.org", Zone::Mx(vec![(10, "mx.example.org.")]))]).await;
    let first = mx.lookup("example.org").await;
    assert_eq!(first, Ok(hosts(&["mx.example.org"])));
    let tunnels = proxy.requests().len();
    assert_eq!(asked(&dns, "example.org"), 1);

    // The record's TTL is 300 s, far longer than this test.
    assert_eq!(mx.lookup("example.org").await, first);
    assert!(
        !mx.provably_undeliverable("example.org", LOOKUP_TIMEOUT)
            .await
    );
    assert_eq!(asked(&dns, "example.org"), 1, "no second query");
    assert_eq!(proxy.requests().len(), tunnels, "no second tunnel");
}
