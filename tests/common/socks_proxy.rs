//! An in-test SOCKS5 proxy standing in for Tor: it maps requested
//! `host:port` targets to local listeners, records every request, and can
//! be told to refuse with a given reply code (one target, or every target
//! it has no route for: Tor's 0xF0–0xF7 with ExtendedErrors, or a generic
//! failure without) or to be "down".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One CONNECT request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksRequest {
    /// The target exactly as sent: a name for ATYP 3, an IP literal otherwise.
    pub host: String,
    pub port: u16,
    /// True if the target came as a name (not resolved by the client).
    pub by_name: bool,
    pub username: String,
}

#[derive(Default)]
struct State {
    routes: HashMap<(String, u16), SocketAddr>,
    refusals: HashMap<(String, u16), u8>,
    /// The reply for a target without route or refusal (None: 0x04).
    unknown: Option<u8>,
    requests: Vec<SocksRequest>,
}

pub struct SocksProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl SocksProxy {
    pub async fn start() -> SocksProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::default())
    }

    /// Starts on a given address (used to bring a "down" proxy back up).
    pub async fn start_on(addr: SocketAddr) -> SocksProxy {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, Arc::default())
    }

    fn serve(listener: TcpListener, state: Arc<Mutex<State>>) -> SocksProxy {
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = handle(stream, state).await;
                });
            }
        });
        SocksProxy { addr, state, task }
    }

    /// Routes `host:port` to a local address.
    pub fn route(&self, host: &str, port: u16, to: SocketAddr) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert((host.to_string(), port), to);
    }

    /// Answers CONNECT to `host:port` with this SOCKS reply code.
    pub fn refuse(&self, host: &str, port: u16, code: u8) {
        self.state
            .lock()
            .unwrap()
            .refusals
            .insert((host.to_string(), port), code);
    }

    /// Answers CONNECT to every target without a route or refusal of its
    /// own with this code (0x04 "host unreachable" until set).
    pub fn unknown_reply(&self, code: u8) {
        self.state.lock().unwrap().unknown = Some(code);
    }

    pub fn requests(&self) -> Vec<SocksRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Stops listening and waits until the listener is closed, so the
    /// port refuses connections from then on ("Tor is down").
    pub async fn stop(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

/// Reads a client's greeting, optional username/password (accepted, only
/// the username is kept) and CONNECT request, leaving the stream right
/// where the tunnelled bytes begin. Shared with the link tap.
pub async fn read_request(c: &mut TcpStream) -> std::io::Result<SocksRequest> {
    let mut head = [0u8; 2];
    c.read_exact(&mut head).await?;
    let mut methods = vec![0u8; head[1] as usize];
    c.read_exact(&mut methods).await?;
    let mut username = String::new();
    if methods.contains(&2) {
        c.write_all(&[5, 2]).await?;
        let mut ver_len = [0u8; 2];
        c.read_exact(&mut ver_len).await?;
        let mut user = vec![0u8; ver_len[1] as usize];
        c.read_exact(&mut user).await?;
        let mut plen = [0u8; 1];
        c.read_exact(&mut plen).await?;
        let mut pass = vec![0u8; plen[0] as usize];
        c.read_exact(&mut pass).await?;
        username = String::from_utf8_lossy(&user).into_owned();
        c.write_all(&[1, 0]).await?;
    } else {
        c.write_all(&[5, 0]).await?;
    }
    let mut req = [0u8; 4];
    c.read_exact(&mut req).await?;
    let (host, by_name) = match req[3] {
        1 => {
            let mut ip = [0u8; 4];
            c.read_exact(&mut ip).await?;
            (std::net::Ipv4Addr::from(ip).to_string(), false)
        }
        4 => {
            let mut ip = [0u8; 16];
            c.read_exact(&mut ip).await?;
            (std::net::Ipv6Addr::from(ip).to_string(), false)
        }
        _ => {
            let mut len = [0u8; 1];
            c.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            c.read_exact(&mut name).await?;
            (String::from_utf8_lossy(&name).into_owned(), true)
        }
    };
    let mut port = [0u8; 2];
    c.read_exact(&mut port).await?;
    Ok(SocksRequest {
        host,
        port: u16::from_be_bytes(port),
        by_name,
        username,
    })
}

/// A SOCKS5 reply with this code and a zero IPv4 bound address.
pub fn reply(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

async fn handle(mut c: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let request = read_request(&mut c).await?;
    let key = (request.host.clone(), request.port);
    let (route, refusal, unknown) = {
        let mut s = state.lock().unwrap();
        s.requests.push(request);
        (
            s.routes.get(&key).copied(),
            s.refusals.get(&key).copied(),
            s.unknown,
        )
    };
    if let Some(code) = refusal {
        c.write_all(&reply(code)).await?;
        return Ok(());
    }
    let Some(target) = route else {
        c.write_all(&reply(unknown.unwrap_or(4))).await?; // host unreachable
        return Ok(());
    };
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        c.write_all(&reply(5)).await?;
        return Ok(());
    };
    c.write_all(&reply(0)).await?;
    tokio::io::copy_bidirectional(&mut c, &mut upstream).await?;
    Ok(())
}
