//! Shared fixtures for integration tests: the real `pluto2` binary on
//! 127.0.0.1 with a fresh data directory, and a small SMTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pluto2::address::OnionName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub mod dns_server;
pub mod link_tap;
pub mod mixnet;
pub mod scripted;
pub mod smtp_sink;
pub mod socks_proxy;
pub mod tor_net;

pub const BIN: &str = env!("CARGO_BIN_EXE_pluto2");

/// Upper bound for anything a test waits on; a hang fails instead of
/// blocking CI. Not a synchronization device.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Kolmogorov–Smirnov distance between `samples` (sorted in place) and
/// Exp(`mean`); compare it with 1.95/√n for the 0.1 % level.
pub fn ks_exponential(samples: &mut [f64], mean: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len() as f64;
    samples
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let cdf = 1.0 - (-x / mean).exp();
            (cdf - i as f64 / n)
                .abs()
                .max((cdf - (i + 1) as f64 / n).abs())
        })
        .fold(0.0, f64::max)
}

pub fn onion(seed: u8) -> String {
    OnionName::from_seed(seed).to_string()
}

/// A running daemon with its own temporary data directory.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub name: String,
    pub data_dir: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
    /// Stands in for Tor and the resolver unless the test passed its own.
    pub dead_end: DeadEnd,
    /// Where strace writes, for a daemon started by `start_traced`.
    trace: Option<PathBuf>,
}

/// True if `extra` sets `flag` (as `-flag value` or `-flag=value`, with one
/// or two dashes).
fn has_flag(extra: &[&str], flag: &str) -> bool {
    let bare = flag.trim_start_matches('-');
    extra.iter().any(|arg| {
        let name = arg.trim_start_matches('-');
        arg.starts_with('-') && (name == bare || name.starts_with(&format!("{bare}=")))
    })
}

/// A 127.0.0.1 port owned by the test that accepts connections and closes
/// them at once: a SOCKS proxy (or resolver) that is there but says nothing,
/// so every attempt through it fails fast instead of reaching the network.
pub struct DeadEnd {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl DeadEnd {
    pub fn start() -> DeadEnd {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                drop(stream);
            }
        });
        DeadEnd { addr, stop }
    }
}

impl Drop for DeadEnd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag and lets the port go.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

impl Daemon {
    /// Where its `-metrics` endpoint listens (a TCP address), from its
    /// log line.
    pub async fn metrics_addr(&self) -> SocketAddr {
        let line = self
            .until_log("naming the metrics address", |l| {
                l.contains("[METRICS] serving")
            })
            .await;
        line.rsplit(" on ").next().unwrap().trim().parse().unwrap()
    }

    /// Starts `pluto2` on an ephemeral port with extra flags.
    pub fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut d = Self::start_in(&data, extra);
        d._dir = Some(dir);
        d
    }

    /// Starts on an existing data directory (restart tests).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_wrapped(&[], data_dir, extra)
    }

    /// Starts the binary under `strace -f -qq` with `options` (which
    /// syscalls, how to print them) in a fresh data directory;
    /// [`Daemon::stop_traced`] returns the trace.
    pub fn start_traced(options: &[&str], extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace");
        let trace_arg = trace.to_str().unwrap();
        let mut wrapper = vec!["strace", "-f", "-qq", "-o", trace_arg];
        wrapper.extend(options);
        let mut d = Self::start_wrapped(&wrapper, &dir.path().join("data"), extra);
        d.trace = Some(trace);
        d._dir = Some(dir);
        d
    }

    /// Starts the binary under a wrapper command such as `strace -f -o F`.
    pub fn start_wrapped(wrapper: &[&str], data_dir: &Path, extra: &[&str]) -> Daemon {
        // A test that names its node (several nodes at once) passes -name.
        let given = extra
            .iter()
            .position(|f| *f == "-name")
            .and_then(|i| extra.get(i + 1));
        let name = given.map_or_else(|| onion(1), |n| n.to_string());
        // A client (`-client`) has no name: it is no node.
        let name_args: Vec<&str> = if given.is_some() || extra.contains(&"-client") {
            Vec::new()
        } else {
            vec!["-name", &name]
        };
        let mut command = pluto2_under(wrapper);
        // Cover traffic would add messages at random moments; tests that
        // want it ask for it. Tor and the resolver default to a port this
        // test owns and that answers nothing, so a machine running Tor on
        // 9050 never sees a connection from the suite; tests that want a
        // proxy pass their own.
        let dead_end = DeadEnd::start();
        let dead = dead_end.addr.to_string();
        let mut defaults: Vec<&str> = Vec::new();
        for (flag, value) in [
            ("-cover-interval", "0"),
            ("-tor-socks", dead.as_str()),
            ("-dns-server", dead.as_str()),
        ] {
            if !has_flag(extra, flag) {
                defaults.extend([flag, value]);
            }
        }
        // A test whose listener must be on a port known in advance (a
        // torrc's HiddenServicePort names it) passes its own -addr.
        if !has_flag(extra, "-addr") {
            defaults.extend(["-addr", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(&name_args)
            .arg("-data-dir")
            .arg(data_dir)
            .args(&defaults)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pluto2");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("[CONN] listening on ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(PATIENCE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("pluto2 did not start; logs: {:?}", logs.lock().unwrap());
            }
        };
        Daemon {
            child,
            addr,
            name,
            data_dir: data_dir.to_path_buf(),
            logs,
            _dir: None,
            dead_end,
            trace: None,
        }
    }

    pub async fn client(&self) -> Client {
        let mut c = Client::connect(self.addr).await;
        let (code, text) = c.reply().await;
        assert_eq!(code, 220, "greeting: {text}");
        c
    }

    /// A client past the greeting and `EHLO client.example`.
    pub async fn ehlo_client(&self) -> Client {
        let mut c = self.client().await;
        let (code, text) = c.cmd("EHLO client.example").await;
        assert_eq!(code, 250, "EHLO: {text}");
        c
    }

    /// The daemon's process id (for /proc readings in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, failing the test after PATIENCE.
    pub fn wait(&mut self) -> ExitStatus {
        let pid = self.child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        // The blocking wait runs on a scoped thread so the test can give up
        // (and kill the process, which also ends that wait) after PATIENCE.
        std::thread::scope(|scope| {
            let child = &mut self.child;
            scope.spawn(move || {
                let _ = tx.send(child.wait());
            });
            match rx.recv_timeout(PATIENCE) {
                Ok(status) => status.unwrap(),
                Err(_) => {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                    panic!("pluto2 did not exit within {PATIENCE:?}");
                }
            }
        })
    }

    /// Stops a daemon started by [`Daemon::start_traced`] with SIGTERM to
    /// pluto2 itself (strace's child); strace exits with it and has then
    /// written its whole trace, which this returns.
    pub fn stop_traced(&mut self) -> String {
        let strace_pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
                .unwrap();
        let pid = children
            .split_whitespace()
            .next()
            .expect("pluto2 runs under strace");
        let status = Command::new("kill").args(["-TERM", pid]).status().unwrap();
        assert!(status.success());
        self.wait();
        let trace = self.trace.as_ref().expect("started by start_traced");
        std::fs::read_to_string(trace).unwrap()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn queue_json(&self) -> serde_json::Value {
        queue_json(&self.data_dir)
    }

    /// Waits until the spool satisfies `done` (bounded by PATIENCE). The
    /// spool is the daemon's own record of progress, so this observes an
    /// outcome rather than guessing a delay.
    pub async fn until_queue(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.until_queue_within(what, PATIENCE, done).await
    }

    /// [`Daemon::until_queue`] with a bound of its own, for what waits on
    /// a timer longer than [`PATIENCE`] (a retransmission's backoff).
    pub async fn until_queue_within(
        &self,
        what: &str,
        patience: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let q = self.queue_json();
            if done(&q) {
                return q;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "spool never reached {what}: {q}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a log line satisfies `wanted` and returns it (bounded
    /// by PATIENCE). Log lines reach the test through a reader thread, so a
    /// check for what a line must *not* say first waits for the line.
    pub async fn until_log(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.logs.lock().unwrap().iter().find(|l| wanted(l)) {
                return line.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line {what}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Keeps the temporary directory alive after the daemon is gone, so a
    /// restart can reuse it.
    pub fn take_dir(&mut self) -> Option<tempfile::TempDir> {
        self._dir.take()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn queue_json(data_dir: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["queue", "-json", "-data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "queue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The binary as a command, run under `wrapper` (such as `strace -f -o F`
/// or `prlimit --nofile=40:40 --`) when one is given.
pub fn pluto2_under(wrapper: &[&str]) -> Command {
    match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(BIN);
            c
        }
        None => Command::new(BIN),
    }
}

/// A line-oriented SMTP client for tests.
pub struct Client {
    reader: TokioBufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        Client {
            reader: TokioBufReader::new(r),
            writer: w,
        }
    }

    /// A client on a stream that is already connected (e.g. through a
    /// SOCKS proxy).
    pub fn from_stream(stream: TcpStream) -> Client {
        let (r, w) = stream.into_split();
        Client {
            reader: TokioBufReader::new(r),
            writer: w,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Reads one (possibly multi-line) reply; returns code and full text.
    pub async fn reply(&mut self) -> (u16, String) {
        self.try_reply()
            .await
            .expect("connection closed while waiting for a reply")
    }

    /// Like `reply`, but `None` if the server closed the connection first.
    pub async fn try_reply(&mut self) -> Option<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(PATIENCE, self.reader.read_line(&mut line))
                .await
                .expect("no reply in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            text.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .expect("reply code");
                return Some((code, text));
            }
        }
    }

    /// Sends one command line and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    pub async fn code(&mut self, line: &str) -> u16 {
        self.cmd(line).await.0
    }

    /// True once the server has closed the connection (reads EOF).
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        matches!(
            tokio::time::timeout(PATIENCE, self.reader.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// The next reply is 421 with `enhanced`, and the server then hangs up.
    pub async fn told_421_and_closed(&mut self, enhanced: &str) {
        let (code, text) = self.reply().await;
        assert_eq!(code, 421, "{text}");
        assert!(text.contains(enhanced), "{text}");
        assert!(self.closed().await);
    }

    /// QUIT is answered with 221 and the server hangs up: the session
    /// ended properly, so sessions never pile up against a per-client
    /// limit while a test sends one message after another.
    pub async fn quit(&mut self) {
        assert_eq!(self.cmd("QUIT").await.0, 221);
        assert!(self.closed().await);
    }

    /// MAIL, RCPT for each of `to`, DATA; each must be accepted. The
    /// session is then reading the message.
    pub async fn start_data(&mut self, from: &str, to: &[&str]) {
        let (code, text) = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(code, 250, "MAIL: {text}");
        for r in to {
            let (code, text) = self.cmd(&format!("RCPT TO:<{r}>")).await;
            assert_eq!(code, 250, "RCPT {r}: {text}");
        }
        let (code, text) = self.cmd("DATA").await;
        assert_eq!(code, 354, "DATA: {text}");
    }

    /// A full transaction; returns the reply code to the final dot.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> u16 {
        self.start_data(from, to).await;
        self.send(body.as_bytes()).await;
        self.send(b"\r\n.\r\n").await;
        self.reply().await.0
    }
}

/// Checks an strace of the daemon (`-e trace=network`): every AF_INET
/// connect goes to 127.0.0.1 on `socks_port`, no UDP socket is opened and
/// no datagram is sent to an address. Returns how many connects it saw.
pub fn assert_only_socks(trace: &str, socks_port: u16) -> usize {
    let socks = format!("sin_port=htons({socks_port})");
    let mut inet_connects = 0;
    for line in trace.lines() {
        let inet = line.contains("AF_INET");
        if line.contains("connect(") && inet {
            inet_connects += 1;
            assert!(
                line.contains(&socks) && line.contains("127.0.0.1"),
                "connection outside the SOCKS proxy: {line}"
            );
        }
        if line.contains("socket(AF_INET") {
            assert!(!line.contains("SOCK_DGRAM"), "UDP socket: {line}");
        }
        if (line.contains("sendto(") || line.contains("sendmsg(")) && inet {
            panic!("datagram with an address: {line}");
        }
    }
    inet_connects
}

/// The median of measurements (the benches report medians: the machines
/// are noisy).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Runs `command`, a pluto2 start that is expected to refuse, with
/// stderr piped; returns its exit status and stderr. A daemon that starts
/// instead would run for ever: it is killed after PATIENCE and the test
/// fails with what it said.
pub fn refused(command: &mut Command) -> (Option<i32>, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut said = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
        said
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PATIENCE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "pluto2 started instead of refusing: {}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().unwrap())
}

/// One HTTP GET on a fresh connection to `addr` (the `-metrics`
/// endpoint): the status and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_exchange(TcpStream::connect(addr).await.unwrap(), path).await
}

/// [`http_get`] over a stream already open (TCP or a unix socket).
pub async fn http_exchange<S>(mut s: S, path: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut out))
        .await
        .expect("an HTTP response in time")
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a whole response");
    let status = head[9..12].parse().unwrap();
    (status, body.to_string())
}

/// The text of `/metrics` at `addr`, which must answer 200.
pub async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series (`name{labels}` exactly as exposed) in a
/// scrape's text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}
