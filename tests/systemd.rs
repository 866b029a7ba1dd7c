//! systemd's notification protocol, driven through the real binary: the
//! test binds its own unix datagram socket, starts pluto2 with
//! `NOTIFY_SOCKET` pointing at it (and a small `WATCHDOG_USEC`), and reads
//! what systemd would read. Plus `systemd-analyze verify` and `security`
//! on contrib/pluto2.service.
//!
//! Order proofs: READY must come after the spool is open and after every
//! listener is bound. A daemon that cannot open its spool, bind `-addr` or
//! bind `-node` exits; every datagram it sent is in the socket by then, so
//! "no READY among them" is exact, and a READY sent any earlier than its
//! place is caught by one of these.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::mixnet::{alice_and_four, alice_flags};
use common::{BIN, Daemon, DeadEnd, PATIENCE, onion};

/// Half a second between pings (systemd's WatchdogSec=1s).
const WATCHDOG_USEC: &str = "1000000";

/// The test's stand-in for systemd's notification socket.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The wrapper that starts pluto2 with systemd's variables.
    fn env(&self) -> Vec<String> {
        vec![
            "env".into(),
            format!("NOTIFY_SOCKET={}", self.path.display()),
            format!("WATCHDOG_USEC={WATCHDOG_USEC}"),
        ]
    }

    /// The next datagram, waiting at most `wait`.
    fn next(&self, wait: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).unwrap()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Every datagram already in the socket.
    fn drain(&self) -> Vec<String> {
        self.socket.set_nonblocking(true).unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            all.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        self.socket.set_nonblocking(false).unwrap();
        all
    }

    /// Reads datagrams until one satisfies `wanted` (bounded by PATIENCE);
    /// returns it and everything read before it.
    fn until(&self, what: &str, wanted: impl Fn(&str) -> bool) -> (String, Vec<String>) {
        let deadline = Instant::now() + PATIENCE;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what}; got {before:?}");
            if let Some(msg) = self.next(left) {
                if wanted(&msg) {
                    return (msg, before);
                }
                before.push(msg);
            }
        }
    }
}

fn start(socket: &NotifySocket, data: &Path, extra: &[&str]) -> Daemon {
    let env = socket.env();
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    Daemon::start_wrapped(&env, data, extra)
}

#[tokio::test]
async fn ready_comes_once_listening_then_status_and_pings_and_stopping_at_sigterm() {
    let socket = NotifySocket::bind();
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(
        &socket,
        &dir.path().join("data"),
        &["-stats-interval", "1s", "-batch-window", "0"],
    );
    let (ready, before) = socket.until("READY=1", |m| m.lines().any(|l| l == "READY=1"));
    assert!(before.is_empty(), "sent before READY: {before:?}");
    assert_eq!(ready, "READY=1\n");
    // At READY the listener takes connections.
    let mut c = d.client().await;
    assert_eq!(c.code("QUIT").await, 221);

    let (status, _) = socket.until("first STATUS", |m| m.starts_with("STATUS="));
    assert_eq!(status, "STATUS=queued=0 deferred=0\n");
    // One message; its delivery through the dead-end proxy fails, so it is
    // deferred, and STATUS says so.
    let rcpt = format!("someone@{}", onion(9));
    let mut c = d.ehlo_client().await;
    let code = c
        .send_mail("a@example.org", &[&rcpt], "Subject: t\r\n\r\nhi\r\n")
        .await;
    assert_eq!(code, 250);
    let (status, seen) = socket.until("STATUS with the deferred message", |m| {
        m == "STATUS=queued=0 deferred=1\n"
    });
    let all: Vec<&String> = seen.iter().chain([&status]).collect();
    for msg in &all {
        assert!(!msg.contains('@') && !msg.contains(".onion"), "{msg}");
    }
    // Pings keep coming, half a WatchdogSec apart.
    for _ in 0..3 {
        socket.until("WATCHDOG=1", |m| m == "WATCHDOG=1\n");
    }

    d.signal("TERM");
    socket.until("STOPPING=1", |m| m.lines().any(|l| l == "STOPPING=1"));
    assert!(d.wait().success());
    let after = socket.drain();
    assert!(
        !after.iter().any(|m| m.contains("WATCHDOG=1")),
        "pings after STOPPING: {after:?}"
    );
}

/// Starts pluto2 with `flags`, expecting it to refuse to start; returns
/// its exit status and every notification it sent.
fn refused(socket: &NotifySocket, flags: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let dead = DeadEnd::start();
    let dead = dead.addr.to_string();
    let (code, stderr) = common::refused(
        Command::new(BIN)
            .env("NOTIFY_SOCKET", &socket.path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            .args([
                "-cover-interval",
                "0",
                "-tor-socks",
                &dead,
                "-dns-server",
                &dead,
            ])
            .args(flags),
    );
    (code, socket.drain(), stderr)
}

#[test]
fn no_ready_when_the_spool_cannot_be_opened() {
    let socket = NotifySocket::bind();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join(pluto2::spool::SPOOL_FILE), vec![0x5a; 8192]).unwrap();
    let (code, sent, err) = refused(
        &socket,
        &[
            "-name",
            &onion(1),
            "-addr",
            "127.0.0.1:0",
            "-data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(65), "{err}");
    assert!(sent.is_empty(), "{sent:?}");
}

#[test]
fn no_ready_when_the_smtp_listener_cannot_bind() {
    let socket = NotifySocket::bind();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, sent, err) = refused(
        &socket,
        &[
            "-name",
            &onion(1),
            "-addr",
            &addr,
            "-data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(69), "{err}");
    // The spool was opened (and closed) before the bind failed.
    assert!(data.join(pluto2::spool::SPOOL_FILE).exists());
    assert!(sent.is_empty(), "{sent:?}");
}

#[tokio::test]
async fn in_mixnet_mode_ready_waits_for_the_link_listener_and_status_shows_health() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pki = alice_and_four(dir.path(), &data);
    let sphinx = |node: &str| -> Vec<String> {
        let mut flags = alice_flags(&pki);
        flags.extend(["-node", node, "-stats-interval", "1s"].map(String::from));
        flags
    };

    let socket = NotifySocket::bind();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut flags = sphinx(&taken.local_addr().unwrap().to_string());
    flags.extend(["-addr", "127.0.0.1:0", "-data-dir", data.to_str().unwrap()].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (code, sent, err) = refused(&socket, &flags);
    assert_eq!(code, Some(69), "{err}");
    assert!(sent.is_empty(), "{sent:?}");

    let flags = sphinx("127.0.0.1:0");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut d = start(&socket, &data, &flags);
    socket.until("READY=1", |m| m == "READY=1\n");
    // No peer is reachable through the dead-end proxy: 0 of 4 usable.
    socket.until("STATUS with mixnet health", |m| {
        m == "STATUS=queued=0 deferred=0 healthy=0/4\n"
    });
    socket.until("WATCHDOG=1", |m| m == "WATCHDOG=1\n");
    d.signal("TERM");
    socket.until("STOPPING=1", |m| m.lines().any(|l| l == "STOPPING=1"));
    assert!(d.wait().success());
}

/// How many log lines so far say a ping was withheld.
fn withheld(d: &Daemon, silent: impl Fn(&str) -> bool) -> usize {
    d.logs.lock().unwrap().iter().filter(|l| silent(l)).count()
}

/// Waits (bounded by PATIENCE) until `n` such lines were logged.
async fn until_withheld(d: &Daemon, silent: impl Fn(&str) -> bool + Copy, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while withheld(d, silent) < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} withheld pings logged:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The watchdog vouches for the committer: while another process holds
/// SQLite's write lock, the committer waits in its busy handler (up to 5 s)
/// and cannot take the watchdog's no-op from its queue, so no WATCHDOG=1
/// may be sent and the log says which part is silent. Between two such
/// log lines, while the test's message is still unanswered (the committer
/// is still waiting), not a single ping may arrive: a ping is always sent
/// before the next round's log line is written, so it would be in the
/// socket by the time the test reads that line.
#[tokio::test]
async fn pings_stop_while_the_committer_is_stuck_and_resume_after() {
    let socket = NotifySocket::bind();
    let dir = tempfile::tempdir().unwrap();
    let d = start(&socket, &dir.path().join("data"), &[]);
    socket.until("READY=1", |m| m == "READY=1\n");
    socket.until("WATCHDOG=1", |m| m == "WATCHDOG=1\n");

    let db = rusqlite::Connection::open(d.data_dir.join(pluto2::spool::SPOOL_FILE)).unwrap();
    let rcpt = format!("someone@{}", onion(9));
    let silent = |l: &str| l.contains("WATCHDOG=1 withheld: the spool committer");
    let mut proven = false;
    for _attempt in 0..3 {
        db.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut c = d.ehlo_client().await;
        c.start_data("a@example.org", &[&rcpt]).await;
        c.send(b"Subject: t\r\n\r\nhi\r\n.\r\n").await;
        // The committer now waits for the lock with this message.
        let reply = tokio::spawn(async move { c.reply().await.0 });
        let seen = withheld(&d, silent);
        until_withheld(&d, silent, seen + 1).await;
        socket.drain();
        let first = withheld(&d, silent);
        until_withheld(&d, silent, first + 1).await;
        let between = socket.drain();
        let still_waiting = !reply.is_finished();
        db.execute_batch("ROLLBACK").unwrap();
        let code = reply.await.unwrap();
        assert!(code == 250 || code == 451, "{code}");
        if still_waiting {
            assert!(
                !between.iter().any(|m| m.contains("WATCHDOG=1")),
                "pinged while the committer was stuck: {between:?}"
            );
            proven = true;
            break;
        }
        // The busy timeout ran out between the two lines (a very slow
        // machine): the committer answered in between, so try again.
    }
    assert!(proven, "the committer never stayed stuck for two rounds");
    // Unstuck: pings come again.
    socket.until("WATCHDOG=1 after the lock is gone", |m| m == "WATCHDOG=1\n");
}

/// contrib/pluto2.service with ExecStart pointing at this build's binary
/// (verify checks that the program exists), written to a temporary file.
fn unit_copy(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/pluto2.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/pluto2 "));
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/pluto2 ",
        &format!("ExecStart={BIN} "),
    );
    let path = dir.join("pluto2.service");
    std::fs::write(&path, unit).unwrap();
    path
}

fn systemd_analyze() -> Option<&'static str> {
    let path = "/usr/bin/systemd-analyze";
    if Path::new(path).exists() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {path} is missing (scripts/test.sh installs the systemd package)");
        None
    }
}

#[test]
fn the_unit_file_verifies_without_a_single_warning() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.trim().is_empty(),
        "systemd-analyze verify warned: {err}"
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.lines().any(|l| l.starts_with(line)), "{line}");
    }
}

/// The exposure score `systemd-analyze security` gives the unit (0 = most
/// locked down, 10 = nothing restricted); README and BENCHMARKS report it.
const EXPOSURE_BOUND: f64 = 1.5;

#[test]
fn the_unit_file_is_locked_down_below_the_exposure_bound() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score: {text}"));
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line}"));
    eprintln!("{line}");
    assert!(score < EXPOSURE_BOUND, "{line}");
}
