//! SOCKS5 CONNECT through Tor (RFC 1928, RFC 1929, Tor's socks-extensions).
//!
//! A small client of our own rather than `tokio-socks`: that crate folds
//! Tor's extended reply codes 0xF0–0xF7 into one generic error, and those
//! codes are exactly what tells a dead onion service (permanent) from a
//! descriptor that is not yet reachable (temporary).
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

use super::failure::Failure;

const VERSION: u8 = 5;
const METHOD_NONE: u8 = 0;
const METHOD_USER_PASS: u8 = 2;
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
    #[error("SOCKS protocol violation: {0}")]
    Protocol(&'static str),
    #[error("destination name longer than 255 bytes")]
    NameTooLong,
    #[error("SOCKS reply {code:#04x}: {}", reply_text(*.code))]
    Reply { code: u8 },
}

/// Meaning of a SOCKS5 reply code, including Tor's extensions.
fn reply_text(code: u8) -> &'static str {
    match code {
        0x01 => "general failure",
        0x02 => "not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired (timeout)",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        0xF0 => "onion service descriptor not found",
        0xF1 => "onion service descriptor invalid",
        0xF2 => "onion service introduction failed",
        0xF3 => "onion service rendezvous failed",
        0xF4 => "onion service missing client authorization",
        0xF5 => "onion service wrong client authorization",
        0xF6 => "invalid onion address",
        0xF7 => "onion service introduction timed out",
        _ => "unknown reply code",
    }
}

impl SocksError {
    /// Sorts a SOCKS problem into retry-later or give-up.
    ///
    /// Permanent: the address itself is wrong (0xF6), or the service wants
    /// client authorization we will never have (0xF4, 0xF5), or the proxy
    /// cannot do what we ask (0x07, 0x08). Everything else (network trouble,
    /// descriptors not yet published, refused ports, a down proxy) can heal.
    pub fn into_failure(self) -> Failure {
        match &self {
            SocksError::Reply {
                code: 0x07 | 0x08 | 0xF4 | 0xF5 | 0xF6,
            }
            | SocksError::NameTooLong => Failure::permanent(self.to_string()),
            _ => Failure::temporary(self.to_string()),
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
        return Err(SocksError::Protocol("proxy is not SOCKS5"));
    }
    match choice[1] {
        METHOD_USER_PASS => authenticate(stream).await?,
        METHOD_NONE => {}
        _ => {
            return Err(SocksError::Protocol(
                "proxy accepts none of our authentication methods",
            ));
        }
    }
    request(stream, host, port).await
}

async fn authenticate(stream: &mut TcpStream) -> Result<(), SocksError> {
    let user = fresh_credential();
    let pass = fresh_credential();
    let mut auth = vec![1, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(pass.len() as u8);
    auth.extend_from_slice(pass.as_bytes());
    stream.write_all(&auth).await?;
    let mut status = [0u8; 2];
    stream.read_exact(&mut status).await?;
    if status[1] != 0 {
        return Err(SocksError::Protocol("proxy rejected the credentials"));
    }
    Ok(())
}

async fn request(stream: &mut TcpStream, host: &str, port: u16) -> Result<(), SocksError> {
    stream.write_all(&connect_request(host, port)?).await?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(SocksError::Protocol("bad reply version"));
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
        _ => return Err(SocksError::Protocol("bad address type in reply")),
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

    #[test]
    fn it_draws_fresh_credentials_each_time() {
        assert_ne!(fresh_credential(), fresh_credential());
        assert_eq!(fresh_credential().len(), 16);
    }
}
