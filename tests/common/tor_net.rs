//! The private Tor network for tests: [`pluto2::testnet::tor`] (three
//! authorities, two relays, an exit, a client tor and a service tor on
//! 127.0.0.1 from Debian's `tor`) in a temporary directory, with
//! conveniences that panic with the library's error (what was waited for
//! and the end of that tor's log), and a SOCKS client whose credentials
//! and reply codes a test chooses and reads.

use std::net::SocketAddr;
use std::time::Duration;

use pluto2::testnet::tor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// Not every test binary that includes `common` names them.
#[allow(unused_imports)]
pub use pluto2::testnet::tor::{Plan, Service};

/// A running network in its own temporary directory.
pub struct TorNet {
    /// Declared before `_dir`: dropping it stops the tors, then the
    /// directory goes.
    pub net: tor::TorNet,
    _dir: tempfile::TempDir,
    /// The client tor's SocksPort (`IsolateSOCKSAuth ExtendedErrors`).
    pub socks: SocketAddr,
    /// Another SocksPort of the client tor, without `ExtendedErrors`
    /// (never given to pluto2).
    pub plain_socks: SocketAddr,
    /// Time from the first tor started to the client and the service tor
    /// both at bootstrap 100 %.
    pub bootstrap: Duration,
}

/// A port on 127.0.0.1 below 32768, free right now, never handed out
/// twice in this process.
pub fn free_port() -> u16 {
    tor::free_port().unwrap_or_else(|e| panic!("{e}"))
}

impl TorNet {
    /// Starts the network and waits until the client and the service tor
    /// have bootstrapped.
    pub async fn start(plan: Plan) -> TorNet {
        let dir = tempfile::Builder::new()
            .prefix("pluto2-tor-")
            .tempdir()
            .unwrap();
        let net = tor::TorNet::start(dir.path(), plan)
            .await
            .unwrap_or_else(|e| panic!("the private Tor network did not start: {e}"));
        TorNet {
            socks: net.socks(),
            plain_socks: net.plain_socks(),
            bootstrap: net.bootstrap_time(),
            net,
            _dir: dir,
        }
    }

    /// The onion name of service `name`.
    pub fn onion(&self, name: &str) -> String {
        self.net.onion(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until `onion:port` greets with `220` through the client tor
    /// (`proxy_header` only says, on failure, whether the service reads a
    /// PROXY header first).
    pub async fn until_onion_answers(&self, onion: &str, port: u16, proxy_header: bool) {
        if let Err(e) = self.net.until_onion_answers(onion, port).await {
            panic!(
                "{e}
(PROXY header expected: {proxy_header})"
            );
        }
    }

    /// Waits until a SOCKS CONNECT to `onion:port` succeeds.
    pub async fn until_onion_connects(&self, onion: &str, port: u16) {
        self.net
            .until_onion_connects(onion, port)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops one tor and waits until it is gone.
    pub async fn stop(&self, name: &str) {
        self.net.stop(name).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts a stopped tor again and waits for its bootstrap.
    pub async fn restart(&self, name: &str) {
        self.net
            .restart(name)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops every tor and checks that none is left.
    pub async fn shutdown(&mut self) {
        self.net.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A SOCKS5 failure seen by [`socks_connect`].
#[derive(Debug)]
pub enum SocksFailure {
    Io(std::io::Error),
    /// The proxy's reply code (0xF0–0xF7 are Tor's extended errors).
    Reply(u8),
}

impl std::fmt::Display for SocksFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocksFailure::Io(e) => write!(f, "SOCKS I/O: {e}"),
            SocksFailure::Reply(c) => write!(f, "SOCKS reply {c:#04x}"),
        }
    }
}

impl From<std::io::Error> for SocksFailure {
    fn from(e: std::io::Error) -> Self {
        SocksFailure::Io(e)
    }
}

/// A SOCKS5 CONNECT to `host:port` with the given username and password
/// (Tor's IsolateSOCKSAuth gives each pair its own circuit), bounded by
/// 60 s.
pub async fn socks_connect(
    proxy: SocketAddr,
    user: &str,
    pass: &str,
    host: &str,
    port: u16,
) -> Result<TcpStream, SocksFailure> {
    let go = async {
        let mut s = TcpStream::connect(proxy).await?;
        s.write_all(&[5, 1, 2]).await?;
        let mut choice = [0u8; 2];
        s.read_exact(&mut choice).await?;
        if choice != [5, 2] {
            return Err(SocksFailure::Io(std::io::Error::other(format!(
                "proxy chose method {choice:?}"
            ))));
        }
        let mut auth = vec![1, user.len() as u8];
        auth.extend_from_slice(user.as_bytes());
        auth.push(pass.len() as u8);
        auth.extend_from_slice(pass.as_bytes());
        s.write_all(&auth).await?;
        let mut status = [0u8; 2];
        s.read_exact(&mut status).await?;
        let mut req = vec![5, 1, 0, 3, host.len() as u8];
        req.extend_from_slice(host.as_bytes());
        req.extend_from_slice(&port.to_be_bytes());
        s.write_all(&req).await?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await?;
        if head[1] != 0 {
            return Err(SocksFailure::Reply(head[1]));
        }
        let rest = match head[3] {
            1 => 6,
            4 => 18,
            _ => {
                let mut len = [0u8; 1];
                s.read_exact(&mut len).await?;
                len[0] as usize + 2
            }
        };
        let mut skip = vec![0u8; rest];
        s.read_exact(&mut skip).await?;
        Ok(s)
    };
    tokio::time::timeout(Duration::from_secs(60), go)
        .await
        .unwrap_or_else(|_| {
            Err(SocksFailure::Io(std::io::Error::other(
                "SOCKS handshake took over 60 s",
            )))
        })
}
