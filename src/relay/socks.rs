//! SOCKS5 CONNECT through Tor (RFC 1928, RFC 1929, Tor's socks-extensions).
//!
//! A small client of our own, on purpose, rather than `tokio-socks`: that
//! crate folds Tor's extended reply codes 0xF0–0xF7 into one generic error,
//! and those codes are exactly what tells "no such onion service" (0xF6,
//! drop the mail) from "descriptor not reachable yet" (0xF0–0xF3, 0xF7,
//! try later). Every reply is checked byte for byte (versions, the reserved
//! byte, the address type), so a broken proxy is reported as such instead
//! of being read as a success.
//!
//! Host names are always sent to the proxy as names (ATYP 3); nothing is
//! resolved locally. Every connection uses fresh random credentials, so
//! Tor's IsolateSOCKSAuth puts unrelated deliveries on separate circuits.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::failure::{Failure, FailureKind, ProxyProblem, Stage, socks_reply_meaning};

const VERSION: u8 = 5;
const METHOD_NONE: u8 = 0;
const METHOD_USER_PASS: u8 = 2;
/// Version of the username/password sub-negotiation (RFC 1929).
const AUTH_VERSION: u8 = 1;
const CMD_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_NAME: u8 = 3;
const ATYP_V6: u8 = 4;

/// Connects to destinations through one SOCKS5 proxy.
#[derive(Debug, Clone)]
pub struct SocksDialer {
    proxy: SocketAddr,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("cannot reach the Tor SOCKS proxy: {0}")]
    ProxyUnreachable(std::io::Error),
    #[error("SOCKS proxy I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("SOCKS handshake timed out")]
    Timeout,
    /// The proxy answered something SOCKS5 does not allow.
    #[error("{0}")]
    Protocol(ProxyProblem),
    #[error("destination name longer than 255 bytes")]
    NameTooLong,
    #[error("SOCKS reply {code:#04x}: {}", socks_reply_meaning(*.code))]
    Reply { code: u8 },
}

impl SocksError {
    /// Sorts a SOCKS problem into retry-later or give-up.
    ///
    /// Permanent: the address itself is wrong (0xF6), or the service wants
    /// client authorization we will never have (0xF4, 0xF5), or the proxy
    /// cannot do what we ask (0x07, 0x08). Everything else (network trouble,
    /// descriptors not yet published, refused ports, a down proxy) can heal.
    pub fn into_failure(self) -> Failure {
        match self {
            SocksError::Reply {
                code: code @ (0x07 | 0x08 | 0xF4 | 0xF5 | 0xF6),
            } => Failure::permanent(FailureKind::SocksReply { code }),
            SocksError::Reply { code } => Failure::temporary(FailureKind::SocksReply { code }),
            SocksError::NameTooLong => Failure::permanent(FailureKind::UnusableHostName),
            SocksError::ProxyUnreachable(e) => {
                Failure::temporary(FailureKind::Proxy(ProxyProblem::Unreachable(e.kind())))
            }
            SocksError::Io(e) => Failure::temporary(FailureKind::Io {
                stage: Stage::Connect,
                kind: e.kind(),
            }),
            SocksError::Timeout => Failure::temporary(FailureKind::Timeout {
                stage: Stage::Connect,
            }),
            SocksError::Protocol(p) => Failure::temporary(FailureKind::Proxy(p)),
        }
    }
}

impl SocksDialer {
    pub fn new(proxy: SocketAddr, timeout: Duration) -> Self {
        Self { proxy, timeout }
    }

    /// Opens a tunnel to `host:port`. `host` is a name or an IP literal;
    /// names go to the proxy unresolved.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, SocksError> {
        let mut stream = TcpStream::connect(self.proxy)
            .await
            .map_err(SocksError::ProxyUnreachable)?;
        let _ = stream.set_nodelay(true);
        match tokio::time::timeout(self.timeout, handshake(&mut stream, host, port)).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SocksError::Timeout),
        }
    }
}

/// Random printable credentials; only their distinctness matters to Tor.
fn fresh_credential() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

async fn handshake(stream: &mut TcpStream, host: &str, port: u16) -> Result<(), SocksError> {
    // Offer both methods: Tor picks username/password when offered (that
    // is what isolates circuits); a plain proxy without authentication
    // (e.g. microsocks) picks "none".
    stream
        .write_all(&[VERSION, 2, METHOD_NONE, METHOD_USER_PASS])
        .await?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await?;
    if choice[0] != VERSION {
        return Err(SocksError::Protocol(ProxyProblem::NotSocks5));
    }
    match choice[1] {
        METHOD_USER_PASS => authenticate(stream).await?,
        METHOD_NONE => {}
        _ => return Err(SocksError::Protocol(ProxyProblem::NoAcceptableMethod)),
    }
    request(stream, host, port).await
}

async fn authenticate(stream: &mut TcpStream) -> Result<(), SocksError> {
    let user = fresh_credential();
    let pass = fresh_credential();
    let mut auth = vec![AUTH_VERSION, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(pass.len() as u8);
    auth.extend_from_slice(pass.as_bytes());
    stream.write_all(&auth).await?;
    let mut status = [0u8; 2];
    stream.read_exact(&mut status).await?;
    // RFC 1929: the reply carries the sub-negotiation's version, not 5.
    if status[0] != AUTH_VERSION {
        return Err(SocksError::Protocol(ProxyProblem::BadAuthVersion));
    }
    if status[1] != 0 {
        return Err(SocksError::Protocol(ProxyProblem::CredentialsRejected));
    }
    Ok(())
}

async fn request(stream: &mut TcpStream, host: &str, port: u16) -> Result<(), SocksError> {
    stream.write_all(&connect_request(host, port)?).await?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(SocksError::Protocol(ProxyProblem::BadReplyVersion));
    }
    // A non-zero reserved byte means we are not reading a SOCKS5 reply
    // where we think we are; its code could not be trusted either.
    if head[2] != 0 {
        return Err(SocksError::Protocol(ProxyProblem::BadReserved));
    }
    if head[1] != 0 {
        return Err(SocksError::Reply { code: head[1] });
    }
    // Skip the bound address; Tor sends zeros, we do not need it.
    let rest = match head[3] {
        ATYP_V4 => 4 + 2,
        ATYP_V6 => 16 + 2,
        ATYP_NAME => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            len[0] as usize + 2
        }
        _ => return Err(SocksError::Protocol(ProxyProblem::BadAddressType)),
    };
    let mut skip = vec![0u8; rest];
    stream.read_exact(&mut skip).await?;
    Ok(())
}

fn connect_request(host: &str, port: u16) -> Result<Vec<u8>, SocksError> {
    let mut req = vec![VERSION, CMD_CONNECT, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            req.push(ATYP_V4);
            req.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            req.push(ATYP_V6);
            req.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            let name = host.as_bytes();
            if name.len() > 255 {
                return Err(SocksError::NameTooLong);
            }
            req.push(ATYP_NAME);
            req.push(name.len() as u8);
            req.extend_from_slice(name);
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_sends_names_unresolved_and_ips_as_addresses() {
        let req = connect_request("example.org", 25).unwrap();
        assert_eq!(&req[..5], &[5, 1, 0, ATYP_NAME, 11]);
        assert_eq!(&req[5..16], b"example.org");
        assert_eq!(&req[16..], &[0, 25]);
        let req = connect_request("9.9.9.9", 53).unwrap();
        assert_eq!(req, [5, 1, 0, ATYP_V4, 9, 9, 9, 9, 0, 53]);
        assert!(connect_request(&"a".repeat(256), 25).is_err());
    }

    #[test]
    fn it_classifies_tor_onion_reply_codes() {
        let permanent = [0x07, 0x08, 0xF4, 0xF5, 0xF6];
        for code in [
            0x01u8, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5,
            0xF6, 0xF7,
        ] {
            let f = SocksError::Reply { code }.into_failure();
            assert_eq!(f.is_permanent(), permanent.contains(&code), "{code:#x}");
        }
        assert!(!SocksError::Timeout.into_failure().is_permanent());
    }

    /// A one-connection proxy that reads exactly `reads[i]` bytes, then
    /// writes `writes[i]`, in turn. The bytes are whatever the test needs,
    /// including ones a real proxy would never send.
    async fn fake_proxy(steps: Vec<(usize, Vec<u8>)>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            for (read, write) in steps {
                let mut buf = vec![0u8; read];
                if stream.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let _ = stream.write_all(&write).await;
            }
            // Keep the connection open until the client is done with it.
            let _ = stream.read_to_end(&mut Vec::new()).await;
        });
        addr
    }

    /// Method offer (4 bytes), credentials (1 + 1 + 16 + 1 + 16 bytes),
    /// CONNECT to example.org:25 (5 + 11 + 2 bytes).
    const OFFER: usize = 4;
    const AUTH: usize = 35;
    const CONNECT: usize = 18;
    const SUCCESS: [u8; 10] = [5, 0, 0, ATYP_V4, 0, 0, 0, 0, 0, 0];

    async fn dial(proxy: SocketAddr) -> Result<TcpStream, SocksError> {
        SocksDialer::new(proxy, Duration::from_secs(30))
            .connect("example.org", 25)
            .await
    }

    #[tokio::test]
    async fn it_connects_through_a_proxy_that_follows_the_rfcs() {
        let proxy = fake_proxy(vec![
            (OFFER, vec![5, METHOD_USER_PASS]),
            (AUTH, vec![AUTH_VERSION, 0]),
            (CONNECT, SUCCESS.to_vec()),
        ])
        .await;
        dial(proxy).await.expect("a well-behaved proxy");
    }

    #[tokio::test]
    async fn it_refuses_an_authentication_reply_with_the_wrong_version() {
        // Version 5 where RFC 1929 says 1: a proxy (or something posing as
        // one) that does not speak the sub-negotiation it picked. The rest
        // is a valid success, so only the version check can catch it.
        let proxy = fake_proxy(vec![
            (OFFER, vec![5, METHOD_USER_PASS]),
            (AUTH, vec![5, 0]),
            (CONNECT, SUCCESS.to_vec()),
        ])
        .await;
        let e = dial(proxy).await.expect_err("bad auth version");
        assert!(
            matches!(e, SocksError::Protocol(ProxyProblem::BadAuthVersion)),
            "{e:?}"
        );
        assert_eq!(
            e.into_failure(),
            Failure::temporary(FailureKind::Proxy(ProxyProblem::BadAuthVersion))
        );
    }

    #[tokio::test]
    async fn it_refuses_a_connect_reply_with_a_non_zero_reserved_byte() {
        let mut reply = SUCCESS;
        reply[2] = 0x01;
        let proxy = fake_proxy(vec![
            (OFFER, vec![5, METHOD_NONE]),
            (CONNECT, reply.to_vec()),
        ])
        .await;
        let e = dial(proxy).await.expect_err("bad reserved byte");
        assert!(
            matches!(e, SocksError::Protocol(ProxyProblem::BadReserved)),
            "{e:?}"
        );
        assert_eq!(
            e.into_failure().kind,
            FailureKind::Proxy(ProxyProblem::BadReserved)
        );
    }

    #[tokio::test]
    async fn it_keeps_tor_onion_reply_codes_apart() {
        for (code, permanent) in [(0xF6u8, true), (0xF2, false)] {
            let proxy = fake_proxy(vec![
                (OFFER, vec![5, METHOD_NONE]),
                (CONNECT, vec![5, code, 0, ATYP_V4, 0, 0, 0, 0, 0, 0]),
            ])
            .await;
            let f = dial(proxy).await.expect_err("refused").into_failure();
            assert_eq!(f.kind, FailureKind::SocksReply { code });
            assert_eq!(f.is_permanent(), permanent, "{code:#x}");
        }
    }

    #[test]
    fn it_draws_fresh_credentials_each_time() {
        assert_ne!(fresh_credential(), fresh_credential());
        assert_eq!(fresh_credential().len(), 16);
    }
}
