//! The command line contract: Go-style flags, one-line errors, `queue`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{BIN, Daemon, onion};

/// Runs pluto2 to its end and returns its exit status and stderr. A run
/// that outlives PATIENCE (a start that hangs, or one that should have been
/// refused and serves instead) is killed and fails the test.
fn run(args: &[&str]) -> (i32, String) {
    run_with(&[], args)
}

/// Like [`run`], under a wrapper command such as `setpriv …`.
fn run_with(wrapper: &[&str], args: &[&str]) -> (i32, String) {
    let (code, text) = common::refused(common::pluto2_under(wrapper).args(args));
    (code.unwrap_or(-1), text)
}

/// Longest refusal line accepted: room for a path, the reason and the
/// advice, far below a schema dump folded into one line.
const MAX_LINE: usize = 400;

/// A refused start prints exactly one line: `pluto2: ` and the message,
/// one newline at its end and none inside (clap's own report would add a
/// tip and the usage below it), and short enough to be read as one.
fn assert_one_line(args: &[&str], text: &str) {
    assert!(
        text.starts_with("pluto2: ") && text.ends_with('\n') && text.matches('\n').count() == 1,
        "{args:?}: not one line: {text:?}"
    );
    assert!(!text.contains('\r'), "{args:?}: {text:?}");
    assert!(
        text.chars().count() <= MAX_LINE,
        "{args:?}: {} characters: {text:?}",
        text.chars().count()
    );
}

/// Runs a start that must be refused and checks the refusal: its exit
/// status, one line, and the words it must contain (the flag or file, and
/// what to do). Returns the line.
fn refused(args: &[&str], status: i32, needles: &[&str]) -> String {
    refused_with(&[], args, status, needles)
}

fn refused_with(wrapper: &[&str], args: &[&str], status: i32, needles: &[&str]) -> String {
    let (code, text) = run_with(wrapper, args);
    assert_eq!(code, status, "{args:?}: {text}");
    assert_one_line(args, &text);
    for needle in needles {
        assert!(text.contains(needle), "{args:?}: no {needle:?} in {text}");
    }
    text
}

#[test]
fn unknown_flags_and_bad_values_stop_startup_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let name = onion(1);
    let cases: &[(&[&str], &str)] = &[
        (&["-frobnicate"], "--frobnicate"),
        (&["-name", &name, "-rate-window", "soon"], "--rate-window"),
        (
            &["-name", &name, "-max-recipients=lots"],
            "--max-recipients",
        ),
        (&["-name", &name, "-addr", "nowhere"], "--addr"),
        (
            &[
                "-name",
                &name,
                "-rate-limit",
                "0",
                "-data-dir",
                data.to_str().unwrap(),
            ],
            "-rate-limit",
        ),
        (&["-name", "example.onion"], "56"),
        (&[], "-hs-hostname-file"),
    ];
    for (args, needle) in cases {
        let (code, text) = run(args);
        assert_eq!(code, 64, "{args:?}: {text}");
        assert_one_line(args, &text);
        assert!(text.contains(needle), "{args:?}: {text}");
    }
}

#[test]
fn a_name_with_a_wrong_checksum_is_rejected_as_such() {
    let good = onion(5);
    let bad = format!(
        "{}{}",
        if good.starts_with('a') { "b" } else { "a" },
        &good[1..]
    );
    let (code, text) = run(&["-name", &bad]);
    assert_eq!(code, 64);
    assert_one_line(&["-name", &bad], &text);
    assert!(text.contains("checksum"), "{text}");
}

#[test]
fn an_unusable_data_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let args = ["-name", &onion(1), "-data-dir", file.to_str().unwrap()];
    let (code, text) = run(&args);
    assert_eq!(code, 64, "{text}");
    assert_one_line(&args, &text);
    assert!(
        text.contains("-data-dir") && text.contains("not a directory"),
        "{text}"
    );
}

#[tokio::test]
async fn the_name_can_come_from_tors_hostname_file() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("hostname");
    std::fs::write(&host, format!("{}\n", onion(7))).unwrap();
    // Every address the daemon could dial belongs to the test.
    let dead_end = common::DeadEnd::start();
    let dead = dead_end.addr.to_string();
    let mut child = Command::new(BIN)
        .args([
            "-hs-hostname-file",
            host.to_str().unwrap(),
            "-tor-socks",
            &dead,
            "-dns-server",
            &dead,
            "-cover-interval",
            "0",
            "-addr",
            "127.0.0.1:0",
            "-data-dir",
        ])
        .arg(dir.path().join("data"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The greeting carries the name read from the file.
    let stderr = child.stderr.take().unwrap();
    let addr = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("listening on ")
                .nth(1)
                .map(|a| a.trim().to_string())
        })
        .unwrap();
    let mut c = common::Client::connect(addr.parse().unwrap()).await;
    let (code, text) = c.reply().await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(code, 220);
    assert!(text.contains(&onion(7)), "{text}");
}

#[tokio::test]
async fn queue_reports_counts_while_the_daemon_runs() {
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    let to = format!("x@{}", onion(9));
    assert_eq!(
        c.send_mail("a@example.org", &[&to, "y@example.net"], "hi")
            .await,
        250
    );
    let q = d.queue_json();
    assert_eq!(q["messages"], 1);
    assert_eq!(q["recipients"], 2);
    let out = Command::new(BIN)
        .args(["queue", "-data-dir"])
        .arg(&d.data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("messages:   1"), "{text}");
    assert!(
        !text.contains("example.net") && !text.contains(&onion(9)),
        "addresses leaked: {text}"
    );
}

#[tokio::test]
async fn logs_hold_no_addresses_without_debug() {
    let mut d = Daemon::start(&[]);
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    let to = format!("secret-rcpt@{}", onion(11));
    assert_eq!(
        c.send_mail(
            "secret-sender@example.org",
            &[&to],
            "Subject: secret subject\r\n\r\nx"
        )
        .await,
        250
    );
    c.code("QUIT").await;
    d.signal("TERM");
    assert!(d.wait().success());
    let logs = d.log_text();
    for needle in ["secret", &onion(11), "127.0.0.1:", "client.example"] {
        let leaked = logs
            .lines()
            .any(|l| l.contains(needle) && !l.contains("listening on"));
        assert!(!leaked, "{needle} in logs:\n{logs}");
    }
}

#[test]
fn a_damaged_spool_stops_startup_and_queue_with_advice_to_move_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let junk = b"this is not a database, just text padding it out";
    std::fs::write(data.join("spool.sqlite"), junk).unwrap();
    let data = data.to_str().unwrap();
    let name = onion(1);
    let daemon = ["-name", &name, "-addr", "127.0.0.1:0", "-data-dir", data];
    for args in [&daemon[..], &["queue", "-data-dir", data]] {
        refused(
            args,
            65,
            &["-data-dir", "spool.sqlite", "damaged", "move it aside"],
        );
    }
    let kept = std::fs::read(Path::new(data).join("spool.sqlite")).unwrap();
    assert_eq!(kept, junk, "the damaged file was changed");
}

/// Makes `data/spool.sqlite` an SQLite database with `sql` run in it.
fn sqlite_file(data: &Path, sql: &str) {
    std::fs::create_dir_all(data).unwrap();
    let conn = rusqlite::Connection::open(data.join("spool.sqlite")).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn tables(data: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(data.join("spool.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn another_programs_database_in_the_data_dir_is_named_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Another program's database, with a table named like one of ours.
    sqlite_file(
        &data,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE messages (id INTEGER PRIMARY KEY, text TEXT);",
    );
    let d = data.to_str().unwrap();
    let name = onion(1);
    let daemon = ["-name", &name, "-addr", "127.0.0.1:0", "-data-dir", d];
    for args in [&daemon[..], &["queue", "-data-dir", d]] {
        let line = refused(args, 78, &["-data-dir", "not a pluto2 spool", "users"]);
        assert!(!line.contains("CREATE"), "{line}");
    }
    assert_eq!(tables(&data), ["messages", "users"], "pluto2 wrote into it");
}

#[test]
fn a_spool_from_a_newer_pluto2_is_refused_without_unrelated_hints() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    sqlite_file(
        &data,
        "CREATE TABLE messages (id INTEGER PRIMARY KEY);
         CREATE TABLE recipients (id INTEGER PRIMARY KEY);
         CREATE TABLE replay (id BLOB PRIMARY KEY);
         CREATE TABLE future (x);
         PRAGMA user_version = 99;",
    );
    let d = data.to_str().unwrap();
    let name = onion(1);
    let daemon = ["-name", &name, "-addr", "127.0.0.1:0", "-data-dir", d];
    for args in [&daemon[..], &["queue", "-data-dir", d]] {
        let line = refused(
            args,
            78,
            &[
                "-data-dir",
                "schema version 99",
                "newer",
                "release that wrote it",
            ],
        );
        assert!(!line.contains("writable"), "{line}");
    }
}

#[test]
fn queue_without_a_spool_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("never-ran");
    refused(
        &["queue", "-data-dir", d.to_str().unwrap()],
        66,
        &["-data-dir", "no spool.sqlite"],
    );
}

#[test]
fn negative_counts_are_refused_with_their_lower_bound() {
    let name = onion(1);
    for (args, needles) in [
        (
            vec!["-max-message-size", "-5"],
            ["-max-message-size -5", "must be at least 1024 bytes"],
        ),
        (
            vec!["-max-message-size=-5"],
            ["-max-message-size -5", "must be at least 1024 bytes"],
        ),
        (
            vec!["--max-connections", "-1"],
            ["-max-connections -1", "must be at least 1"],
        ),
        (
            vec!["-rate-limit", "-3"],
            ["-rate-limit -3", "must be at least 1"],
        ),
    ] {
        let mut all = vec!["-name", name.as_str()];
        all.extend(args);
        refused(&all, 64, &needles);
    }
}

#[test]
fn a_hostname_file_that_is_a_fifo_or_huge_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Nobody ever writes to the FIFO: reading it would wait for ever.
    refused(
        &["-hs-hostname-file", fifo.to_str().unwrap()],
        66,
        &[
            "-hs-hostname-file",
            "not a regular file",
            "HiddenServiceDir",
        ],
    );
    // A real onion name at the start, then 64 GiB (sparse, so it costs no
    // disk): refused for its size after reading at most a small bound. The
    // address space is capped at 1 GiB, so a start that read the file to
    // its end would die of it instead of taking the machine's memory.
    let huge = dir.path().join("huge");
    std::fs::write(&huge, format!("{}\n", onion(3))).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let cap = ["prlimit", "--as=1073741824", "--"];
    let capped = Command::new(cap[0])
        .args(&cap[1..])
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    refused_with(
        if capped { &cap[..] } else { &[] },
        &["-hs-hostname-file", huge.to_str().unwrap()],
        66,
        &["-hs-hostname-file", "larger than 1024 bytes"],
    );
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not an onion name\n").unwrap();
    refused(
        &["-hs-hostname-file", wrong.to_str().unwrap()],
        65,
        &["-hs-hostname-file", "valid v3 onion name"],
    );
    refused(
        &[
            "-hs-hostname-file",
            dir.path().join("absent").to_str().unwrap(),
        ],
        66,
        &["-hs-hostname-file"],
    );
}

/// The first privileged port (below `ip_unprivileged_port_start`), and a
/// wrapper under which pluto2 may not bind it: as root, `setpriv` drops
/// CAP_NET_BIND_SERVICE from the bounding set, so the program it runs lacks
/// it; any other user lacks it anyway. `None` when this host has no
/// privileged ports.
fn privileged_port() -> Option<(u16, Vec<&'static str>)> {
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if start <= 1 {
        return None;
    }
    let drop_cap = ["setpriv", "--bounding-set=-net_bind_service", "--"];
    let can_drop = Command::new(drop_cap[0])
        .args(&drop_cap[1..])
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let wrapper = if can_drop {
        drop_cap.to_vec()
    } else {
        Vec::new()
    };
    Some((start - 1, wrapper))
}

#[test]
fn a_privileged_port_without_the_right_to_bind_it_is_explained() {
    let Some((port, wrapper)) = privileged_port() else {
        eprintln!("no privileged ports on this host (ip_unprivileged_port_start); skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{port}");
    // The daemon must stop at bind; the dead end only makes sure that, if
    // it did not, nothing it dialled would leave the test.
    let dead_end = common::DeadEnd::start();
    let owned = BindArgs::new(&dir, &addr, &dead_end);
    let args = owned.args();
    let line = refused_with(
        &wrapper,
        &args,
        77,
        &[&format!("-addr {addr}"), "CAP_NET_BIND_SERVICE", "1024"],
    );
    assert!(!line.contains("in use"), "{line}");
}

#[test]
fn an_address_in_use_is_told_apart_from_a_missing_privilege() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    // The daemon must stop at bind; the dead end only makes sure that, if
    // it did not, nothing it dialled would leave the test.
    let dead_end = common::DeadEnd::start();
    let owned = BindArgs::new(&dir, &addr, &dead_end);
    let args = owned.args();
    let line = refused(
        &args,
        69,
        &[
            &format!("-addr {addr}"),
            "already listening",
            "another -addr",
        ],
    );
    assert!(!line.contains("CAP_NET_BIND_SERVICE"), "{line}");
}

/// Flags for a daemon that should stop at bind: its name, `-addr`, a data
/// dir in `dir`, and Tor and DNS pointed at a dead end the test owns.
struct BindArgs {
    name: String,
    addr: String,
    data: String,
    dead: String,
}

impl BindArgs {
    fn new(dir: &tempfile::TempDir, addr: &str, dead_end: &common::DeadEnd) -> BindArgs {
        BindArgs {
            name: onion(1),
            addr: addr.to_string(),
            data: dir.path().join("data").to_str().unwrap().to_string(),
            dead: dead_end.addr.to_string(),
        }
    }

    fn args(&self) -> [&str; 10] {
        [
            "-name",
            &self.name,
            "-addr",
            &self.addr,
            "-data-dir",
            &self.data,
            "-tor-socks",
            &self.dead,
            "-dns-server",
            &self.dead,
        ]
    }
}
