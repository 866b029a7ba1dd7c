//! The testnet's stand-in for Tor: a SOCKS5 server on 127.0.0.1 that
//! knows the testnet's onion names and nothing else.
//!
//! pluto2 dials every link and every delivery through SOCKS5 by name, as
//! it does through Tor; this server turns `<node onion>:9999` into that
//! node's link port and any other `<onion>:25` into the mail sink, so no
//! name is resolved and no byte leaves 127.0.0.1. A destination it does
//! not know gets the reply Tor gives for an onion service it cannot find
//! (0xF0, "try later"), an IP address or a clearnet name "not allowed"
//! (0x02): the testnet delivers only to its sink. A node that is down
//! gets 0xF2 (Tor's "introduction failed"), so the dialer retries as it
//! would over Tor. It is a test network: nothing here is anonymous.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections served at once; a testnet of nine nodes opens a few dozen.
const MAX_CONNECTIONS: usize = 512;
/// A client that has not finished its request by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const SUCCEEDED: u8 = 0x00;
const NOT_ALLOWED: u8 = 0x02;
const COMMAND_NOT_SUPPORTED: u8 = 0x07;
const ADDRESS_NOT_SUPPORTED: u8 = 0x08;
/// Tor's extended reply: the onion service's descriptor was not found.
const ONION_NOT_FOUND: u8 = 0xF0;
/// Tor's extended reply: the introduction to the onion service failed.
const INTRO_FAILED: u8 = 0xF2;

/// Where a name:port goes.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Exact `(host, port)` targets: the nodes' links.
    pub exact: HashMap<(String, u16), SocketAddr>,
    /// Where any other onion's port 25 goes: the sink.
    pub other_onions_smtp: Option<SocketAddr>,
}

impl Routes {
    /// The local address for a requested target, or the reply code that
    /// refuses it.
    pub fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, u8> {
        let host = host.to_ascii_lowercase();
        if let Some(addr) = self.exact.get(&(host.clone(), port)) {
            return Ok(*addr);
        }
        if !host.ends_with(".onion") {
            return Err(NOT_ALLOWED);
        }
        match self.other_onions_smtp {
            Some(sink) if port == 25 => Ok(sink),
            _ => Err(ONION_NOT_FOUND),
        }
    }
}

/// Serves SOCKS5 on `listener` until `stop`.
pub async fn serve(listener: TcpListener, routes: Arc<Routes>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: the dialer retries, as with a busy Tor
        };
        let routes = routes.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connect(stream, &routes) => {}
            }
            drop(slot);
        });
    }
}

/// One client: greeting, request, then bytes both ways until either side
/// closes.
async fn connect(mut client: TcpStream, routes: &Routes) -> std::io::Result<()> {
    let target = tokio::time::timeout(HANDSHAKE_TIMEOUT, request(&mut client))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let (host, port) = match target {
        Ok(t) => t,
        Err(code) => return reply(&mut client, code).await,
    };
    let addr = match routes.resolve(&host, port) {
        Ok(a) => a,
        Err(code) => return reply(&mut client, code).await,
    };
    let mut upstream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(_) => return reply(&mut client, INTRO_FAILED).await,
    };
    reply(&mut client, SUCCEEDED).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Reads the greeting (picking "no authentication") and the request;
/// `Err(code)` inside for a request it will not serve.
async fn request(s: &mut TcpStream) -> std::io::Result<Result<(String, u16), u8>> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        s.write_all(&[5, 0xFF]).await?;
        return Err(std::io::ErrorKind::PermissionDenied.into());
    }
    s.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != 5 {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let host = match req[3] {
        1 => {
            let mut skip = [0u8; 4];
            s.read_exact(&mut skip).await?;
            None
        }
        4 => {
            let mut skip = [0u8; 16];
            s.read_exact(&mut skip).await?;
            None
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            s.read_exact(&mut name).await?;
            Some(String::from_utf8_lossy(&name).into_owned())
        }
        _ => return Ok(Err(ADDRESS_NOT_SUPPORTED)),
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await?;
    if req[1] != 1 {
        return Ok(Err(COMMAND_NOT_SUPPORTED));
    }
    Ok(match host {
        Some(h) => Ok((h, u16::from_be_bytes(port))),
        None => Err(NOT_ALLOWED),
    })
}

async fn reply(s: &mut TcpStream, code: u8) -> std::io::Result<()> {
    s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    s.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::socks::SocksDialer;

    fn routes(link: SocketAddr, sink: SocketAddr) -> Routes {
        let mut r = Routes {
            other_onions_smtp: Some(sink),
            ..Routes::default()
        };
        r.exact.insert(("a.onion".into(), 9999), link);
        r
    }

    #[test]
    fn it_maps_nodes_and_sends_other_onions_to_the_sink_only() {
        let (l, k) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let r = routes(l, k);
        assert_eq!(r.resolve("A.onion", 9999), Ok(l));
        assert_eq!(r.resolve("b.onion", 25), Ok(k));
        assert_eq!(r.resolve("b.onion", 9999), Err(ONION_NOT_FOUND));
        assert_eq!(r.resolve("example.org", 25), Err(NOT_ALLOWED));
        assert_eq!(r.resolve("a.onion.example.org", 9999), Err(NOT_ALLOWED));
    }

    /// pluto2's own dialer through the server: a mapped target carries
    /// bytes both ways; the codes of refusals are what the dialer sorts.
    #[tokio::test]
    async fn pluto2s_dialer_reaches_what_is_mapped_and_is_told_why_not() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let link = target.local_addr().unwrap();
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let mut r = routes(link, dead_addr);
        r.exact.insert(("down.onion".into(), 9999), dead_addr);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::new(r), stop.clone()));
        tokio::spawn(async move {
            let (mut s, _) = target.accept().await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let dialer = SocksDialer::new(proxy, Duration::from_secs(10));
        let mut s = dialer.connect("a.onion", 9999).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        for (host, port, code) in [
            ("down.onion", 9999, INTRO_FAILED),
            ("b.onion", 9999, ONION_NOT_FOUND),
            ("example.org", 25, NOT_ALLOWED),
        ] {
            let e = dialer.connect(host, port).await.unwrap_err();
            assert!(
                e.to_string().contains(&format!("{code:#04x}")),
                "{host}: {e}"
            );
        }
        stop.cancel();
    }
}
