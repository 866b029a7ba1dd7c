//! An SMTP server for tests that records what arrives and misbehaves on
//! request: scripted replies to DATA, refused recipients, a connection
//! dropped in the middle of DATA, a server that never greets, STARTTLS with
//! a throwaway self-signed certificate.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::PATIENCE;

/// How the sink should behave.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Offer STARTTLS.
    pub starttls: bool,
    /// Answer STARTTLS with this code instead of going ahead.
    pub starttls_refusal: Option<u16>,
    /// Go ahead with STARTTLS, then send plain text instead of a handshake.
    pub starttls_garbage: bool,
    /// Replies to successive final dots; 250 once the list is used up.
    pub data_replies: Vec<u16>,
    /// Recipients containing this text get this code at RCPT.
    pub refuse_rcpt: Vec<(String, u16)>,
    /// Close the connection in the middle of DATA this many times.
    pub drop_mid_data: usize,
    /// Accept connections but never send the greeting.
    pub stall: bool,
    /// Answer EHLO with 500, as an old HELO-only server would.
    pub refuse_ehlo: bool,
    /// Do not advertise SMTPUTF8.
    pub ascii_only: bool,
    /// Announce this EHLO SIZE (default 100000000) and refuse with 552 a
    /// MAIL whose SIZE= or a message whose length exceeds it, as Postfix's
    /// message_size_limit does.
    pub size_limit: Option<usize>,
    /// Wait this long after the final dot before answering it.
    pub dot_delay: Option<std::time::Duration>,
    /// Answer each final dot only once a permit is added here: holds a
    /// delivery open for exactly as long as a test needs.
    pub dot_gate: Option<Arc<tokio::sync::Semaphore>>,
}

/// A message the sink accepted with 250.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Dot-unstuffed body without the terminator.
    pub data: Vec<u8>,
    /// Bytes of DATA as sent, dot-stuffing and the final ".\r\n" included.
    pub wire_len: usize,
    /// When the final dot arrived.
    pub at: std::time::Instant,
    pub tls: bool,
}

#[derive(Default)]
struct State {
    script: Mutex<(VecDeque<u16>, usize)>,
    refuse: Vec<(String, u16)>,
    starttls: bool,
    starttls_refusal: Option<u16>,
    starttls_garbage: bool,
    stall: bool,
    refuse_ehlo: bool,
    ascii_only: bool,
    size_limit: usize,
    dot_delay: Option<std::time::Duration>,
    dot_gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Final dots read, answered or not.
    dots: AtomicUsize,
    received: Mutex<Vec<Received>>,
    mail_commands: AtomicUsize,
    arrived: Notify,
    connections: AtomicUsize,
}

pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<State>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Sink {
    pub async fn start(b: Behaviour) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            script: Mutex::new((b.data_replies.into(), b.drop_mid_data)),
            refuse: b.refuse_rcpt,
            starttls: b.starttls,
            starttls_refusal: b.starttls_refusal,
            starttls_garbage: b.starttls_garbage,
            stall: b.stall,
            refuse_ehlo: b.refuse_ehlo,
            ascii_only: b.ascii_only,
            size_limit: b.size_limit.unwrap_or(100_000_000),
            dot_delay: b.dot_delay,
            dot_gate: b.dot_gate,
            ..State::default()
        });
        let acceptor = tls_acceptor();
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if state.stall {
                        // Hold the socket open without a word until the
                        // client gives up (the task ends with the runtime).
                        let _keep = stream;
                        std::future::pending::<()>().await;
                    } else {
                        let _ = session(Box::new(stream), state, acceptor).await;
                    }
                });
            }
        });
        Sink { addr, state }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until `n` final dots were read (answered or not yet).
    pub async fn wait_for_dots(&self, n: usize) {
        let wait = async {
            loop {
                let notified = self.state.arrived.notified();
                if self.state.dots.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("sink did not read {n} final dot(s)"));
    }

    /// MAIL commands seen, accepted or not.
    pub fn mail_commands(&self) -> usize {
        self.state.mail_commands.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages were accepted (bounded by PATIENCE).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let wait = async {
            loop {
                let notified = self.state.arrived.notified();
                if self.state.received.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "sink did not receive {n} message(s); got {:?}",
                    self.received()
                )
            });
        self.received()
    }
}

fn tls_acceptor() -> TlsAcceptor {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![key.cert.der().clone()], der)
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

async fn session(
    stream: Box<dyn Io>,
    state: Arc<State>,
    acceptor: TlsAcceptor,
) -> std::io::Result<()> {
    let mut io = BufReader::new(stream);
    let mut tls = false;
    io.get_mut().write_all(b"220 sink.test ESMTP\r\n").await?;
    let (mut from, mut rcpts) = (String::new(), Vec::new());
    // A transaction is open once MAIL was accepted.
    let mut in_transaction = false;
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") && state.refuse_ehlo {
            "500 5.5.1 unknown command\r\n".into()
        } else if upper.starts_with("EHLO") {
            let utf8_line = if state.ascii_only {
                ""
            } else {
                "250-SMTPUTF8\r\n"
            };
            let tls_line = if state.starttls && !tls {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            format!(
                "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n{utf8_line}{tls_line}250 SIZE {}\r\n",
                state.size_limit
            )
        } else if upper.starts_with("HELO") {
            "250 sink.test\r\n".into()
        } else if upper == "STARTTLS" && state.starttls && !tls && state.starttls_refusal.is_some()
        {
            let code = state.starttls_refusal.unwrap_or(454);
            format!("{code} {}.7.0 TLS not available now\r\n", code / 100)
        } else if upper == "STARTTLS" && state.starttls && !tls && state.starttls_garbage {
            io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            // Answer the ClientHello with text: the handshake fails.
            let mut hello = [0u8; 512];
            let _ = io.read(&mut hello).await?;
            io.get_mut()
                .write_all(b"this is no TLS handshake at all\r\n")
                .await?;
            let mut rest = Vec::new();
            let _ = io.read_to_end(&mut rest).await;
            return Ok(());
        } else if upper == "STARTTLS" && state.starttls && !tls {
            io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            let plain = io.into_inner();
            let secured = acceptor.accept(plain).await?;
            io = BufReader::new(Box::new(secured));
            tls = true;
            from.clear();
            rcpts.clear();
            continue;
        } else if upper.starts_with("MAIL FROM:") {
            state.mail_commands.fetch_add(1, Ordering::SeqCst);
            let declared = upper
                .split_whitespace()
                .find_map(|p| p.strip_prefix("SIZE="))
                .and_then(|n| n.parse::<usize>().ok());
            rcpts.clear();
            in_transaction = declared.is_none_or(|n| n <= state.size_limit);
            if !in_transaction {
                "552 5.3.4 message size exceeds fixed limit\r\n".into()
            } else {
                from = path(&cmd);
                rcpts.clear();
                "250 2.1.0 ok\r\n".into()
            }
        } else if upper.starts_with("RCPT TO:") && !in_transaction {
            "503 5.5.1 MAIL first\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let to = path(&cmd);
            match state.refuse.iter().find(|(s, _)| to.contains(s.as_str())) {
                Some((_, code)) => format!("{code} {}.1.1 refused\r\n", code / 100),
                None => {
                    rcpts.push(to);
                    "250 2.1.5 ok\r\n".into()
                }
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                io.get_mut().write_all(b"354 go\r\n").await?;
                let drop_now = {
                    let mut s = state.script.lock().unwrap();
                    if s.1 > 0 {
                        s.1 -= 1;
                        true
                    } else {
                        false
                    }
                };
                if drop_now {
                    // Read a little of the body, then vanish.
                    let mut first = String::new();
                    io.read_line(&mut first).await?;
                    return Ok(());
                }
                let (data, wire_len) = read_data(&mut io).await?;
                state.dots.fetch_add(1, Ordering::SeqCst);
                state.arrived.notify_waiters();
                if let Some(delay) = state.dot_delay {
                    tokio::time::sleep(delay).await;
                }
                if let Some(gate) = &state.dot_gate {
                    gate.acquire().await.unwrap().forget();
                }
                let code = if data.len() > state.size_limit {
                    552
                } else {
                    state.script.lock().unwrap().0.pop_front().unwrap_or(250)
                };
                if code == 250 {
                    state.received.lock().unwrap().push(Received {
                        mail_from: from.clone(),
                        rcpt_to: std::mem::take(&mut rcpts),
                        data,
                        wire_len,
                        at: std::time::Instant::now(),
                        tls,
                    });
                    state.arrived.notify_waiters();
                }
                rcpts.clear();
                in_transaction = false;
                format!("{code} {}.0.0 done\r\n", code / 100)
            }
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 ok\r\n".into()
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "500 5.5.1 what\r\n".into()
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
    }
}

fn path(cmd: &str) -> String {
    let start = cmd.find('<').map(|i| i + 1).unwrap_or(0);
    let end = cmd[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(cmd.len());
    cmd[start..end].to_string()
}

async fn read_data(io: &mut BufReader<Box<dyn Io>>) -> std::io::Result<(Vec<u8>, usize)> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    let mut wire = 0;
    loop {
        line.clear();
        if io.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        wire += line.len();
        if line == b".\r\n" {
            return Ok((data, wire));
        }
        let content = line.strip_prefix(b".").unwrap_or(&line);
        data.extend_from_slice(content);
    }
}
