//! MX lookup through Tor: hickory-resolver with a runtime whose only
//! transport is a TCP tunnel through the SOCKS proxy.
//!
//! The resolver never reads /etc/resolv.conf or /etc/hosts, never opens a
//! UDP socket (binding one fails), and reaches exactly one name server,
//! `-dns-server`, whose IP is handed to the proxy. Answers are cached by
//! hickory for their TTL, so a busy destination costs one lookup per TTL.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::net::runtime::{
    RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime,
};
use hickory_resolver::proto::rr::{RData, RecordType};
use rand::seq::SliceRandom;
use tokio::net::{TcpStream, UdpSocket};

use hickory_resolver::net::{DnsError, NetError};

use super::failure::{DnsProblem, Failure, FailureKind, Stage};
use super::socks::SocksDialer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// Hosts in preference order (ties shuffled, RFC 5321 §5.1). A domain
    /// without MX records yields itself (the implicit MX); its address is
    /// then resolved by Tor when we connect, not here.
    Hosts(Vec<String>),
    /// RFC 7505 null MX: the domain takes no mail.
    NullMx,
    /// NXDOMAIN.
    NoSuchDomain,
}

/// Runtime for hickory whose TCP connections go through the SOCKS proxy.
#[derive(Clone)]
struct TorRuntime {
    base: TokioRuntimeProvider,
    dialer: SocksDialer,
}

impl RuntimeProvider for TorRuntime {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = UdpSocket;
    type Tcp = AsyncIoTokioAsStd<TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.base.create_handle()
    }

    fn connect_tcp(
        &self,
        server: SocketAddr,
        _bind: Option<SocketAddr>,
        _timeout: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Tcp>>>> {
        let dialer = self.dialer.clone();
        Box::pin(async move {
            dialer
                .connect(&server.ip().to_string(), server.port())
                .await
                .map(AsyncIoTokioAsStd)
                .map_err(io::Error::other)
        })
    }

    fn bind_udp(
        &self,
        _local: SocketAddr,
        _server: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Udp>>>> {
        // Tor carries no UDP; a datagram here would leave the host in clear.
        Box::pin(async {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "UDP is never used",
            ))
        })
    }
}

/// How long a domain whose RCPT-time check timed out is accepted without
/// asking again. Without it, every RCPT to that domain would wait the full
/// bound while Tor is slow (50 recipients: minutes).
const DOUBT_TTL: Duration = Duration::from_secs(60);
/// Bound on the doubt table; a flood of distinct domains just resets it.
const MAX_DOUBTS: usize = 4096;

pub struct MxResolver {
    resolver: Resolver<TorRuntime>,
    timeout: Duration,
    /// Domains whose RCPT-time check recently failed to answer in time.
    doubts: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl MxResolver {
    pub fn new(dialer: SocksDialer, dns_server: SocketAddr, timeout: Duration) -> MxResolver {
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = dns_server.port();
        let server = NameServerConfig::new(dns_server.ip(), true, vec![tcp]);
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![server]);
        let runtime = TorRuntime {
            base: TokioRuntimeProvider::default(),
            dialer,
        };
        let mut builder = Resolver::builder_with_config(config, runtime);
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.ndots = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.try_tcp_on_error = false;
        let resolver = builder
            .build()
            .expect("a resolver with one TCP name server always builds");
        MxResolver {
            resolver,
            timeout,
            doubts: Default::default(),
        }
    }

    /// Bounded by twice the configured timeout: hickory makes one retry.
    pub async fn lookup(&self, domain: &str) -> Result<MxAnswer, Failure> {
        let domain = domain.trim_end_matches('.').to_lowercase();
        let domain = domain.as_str();
        // Fully qualified: no search list, no local suffixes.
        let fqdn = format!("{domain}.");
        let lookup =
            tokio::time::timeout(self.timeout * 2, self.resolver.lookup(fqdn, RecordType::MX))
                .await;
        let records = match lookup {
            Err(_) => {
                return Err(Failure::temporary(FailureKind::Timeout {
                    stage: Stage::Mx,
                }));
            }
            Ok(Err(e)) if e.is_nx_domain() => return Ok(MxAnswer::NoSuchDomain),
            Ok(Err(e)) if e.is_no_records_found() => {
                return Ok(MxAnswer::Hosts(vec![domain.to_string()]));
            }
            Ok(Err(e)) => return Err(Failure::temporary(lookup_failure(&e))),
            Ok(Ok(lookup)) => lookup,
        };
        let mut mx: Vec<(u16, String)> = records
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        Ok(order(&mut mx, domain))
    }

    /// True only when the domain provably takes no mail; doubt accepts.
    pub async fn provably_undeliverable(&self, domain: &str, bound: Duration) -> bool {
        let key = domain.trim_end_matches('.').to_lowercase();
        {
            let mut doubts = self.doubts.lock().unwrap_or_else(|e| e.into_inner());
            match doubts.get(&key) {
                Some(since) if since.elapsed() < DOUBT_TTL => return false,
                Some(_) => {
                    doubts.remove(&key);
                }
                None => {}
            }
        }
        match tokio::time::timeout(bound, self.lookup(&key)).await {
            Ok(Ok(answer)) => matches!(answer, MxAnswer::NoSuchDomain | MxAnswer::NullMx),
            Ok(Err(_)) => false,
            Err(_) => {
                let mut doubts = self.doubts.lock().unwrap_or_else(|e| e.into_inner());
                if doubts.len() >= MAX_DOUBTS {
                    doubts.clear();
                }
                doubts.insert(key, std::time::Instant::now());
                false
            }
        }
    }
}

/// The kind of a failed lookup. Only the class is kept: the resolver's
/// error texts can contain the queried name.
fn lookup_failure(e: &NetError) -> FailureKind {
    match e {
        NetError::Timeout => FailureKind::Timeout { stage: Stage::Mx },
        NetError::Dns(DnsError::ResponseCode(code)) => FailureKind::Dns(DnsProblem::ServerError {
            rcode: u16::from(*code),
        }),
        NetError::Io(_) | NetError::NoConnections | NetError::Busy => {
            FailureKind::Dns(DnsProblem::Unreachable)
        }
        _ => FailureKind::Dns(DnsProblem::LookupFailed),
    }
}

/// Sorts by preference with random order among equals, drops the null MX
/// when real ones exist, and strips trailing dots.
fn order(mx: &mut Vec<(u16, String)>, domain: &str) -> MxAnswer {
    let is_null = |(pref, host): &(u16, String)| *pref == 0 && (host == "." || host.is_empty());
    if mx.is_empty() {
        return MxAnswer::Hosts(vec![domain.to_string()]);
    }
    if mx.iter().all(is_null) {
        return MxAnswer::NullMx;
    }
    mx.retain(|r| !is_null(r));
    mx.shuffle(&mut rand::rng());
    mx.sort_by_key(|(pref, _)| *pref);
    MxAnswer::Hosts(
        mx.iter()
            .map(|(_, h)| h.trim_end_matches('.').to_lowercase())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[(u16, &str)]) -> MxAnswer {
        let mut v: Vec<(u16, String)> = list.iter().map(|(p, h)| (*p, h.to_string())).collect();
        order(&mut v, "example.org")
    }

    #[test]
    fn it_orders_by_preference_and_strips_dots() {
        assert_eq!(
            hosts(&[(20, "b.example.org."), (10, "A.example.org.")]),
            MxAnswer::Hosts(vec!["a.example.org".into(), "b.example.org".into()])
        );
    }

    #[test]
    fn it_recognizes_null_mx_and_implicit_mx() {
        assert_eq!(hosts(&[(0, ".")]), MxAnswer::NullMx);
        assert_eq!(hosts(&[]), MxAnswer::Hosts(vec!["example.org".into()]));
        assert_eq!(
            hosts(&[(0, "."), (10, "mx.example.org.")]),
            MxAnswer::Hosts(vec!["mx.example.org".into()])
        );
    }

    #[test]
    fn it_classifies_lookup_errors_by_kind() {
        use hickory_resolver::proto::op::ResponseCode;
        assert_eq!(
            lookup_failure(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            FailureKind::Dns(DnsProblem::ServerError { rcode: 2 })
        );
        assert_eq!(
            lookup_failure(&NetError::Timeout),
            FailureKind::Timeout { stage: Stage::Mx }
        );
        assert_eq!(
            lookup_failure(&NetError::NoConnections),
            FailureKind::Dns(DnsProblem::Unreachable)
        );
        assert_eq!(
            lookup_failure(&NetError::Msg("secret.example: odd".into())),
            FailureKind::Dns(DnsProblem::LookupFailed)
        );
    }

    #[test]
    fn it_shuffles_equal_preferences() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            if let MxAnswer::Hosts(h) = hosts(&[(10, "a."), (10, "b."), (10, "c."), (5, "first.")])
            {
                assert_eq!(h[0], "first");
                seen.insert(h);
            }
        }
        assert!(seen.len() > 1, "ties are not always in the same order");
    }
}
