//! One spool, one daemon: a second pluto2 on a data directory in use stops
//! at once, names the process that holds it, and leaves the first one's
//! work alone; `pluto2 queue` keeps working beside the daemon.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{BIN, Daemon, DeadEnd, onion};

/// A SOCKS proxy that accepts connections and never answers: a delivery
/// through it stays leased (until its timeout), which is the state a second
/// daemon would destroy by releasing every lease at its start.
struct Silent {
    addr: String,
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                keep.lock().unwrap().push(stream);
            }
        });
        Silent { addr, _held: held }
    }
}

/// Starts a second daemon on `data_dir` and returns its exit status and
/// stderr. If it starts serving instead, it is killed after PATIENCE and
/// the test fails.
fn second_daemon(data_dir: &Path) -> (i32, String) {
    // Kept until the end: a port the test owns, not one it gave back.
    let dead_end = DeadEnd::start();
    let dead = dead_end.addr.to_string();
    let (code, text) = common::refused(
        Command::new(BIN)
            .args(["-name", &onion(2), "-addr", "127.0.0.1:0"])
            .args(["-tor-socks", &dead, "-dns-server", &dead])
            .args(["-cover-interval", "0", "-data-dir"])
            .arg(data_dir),
    );
    (code.unwrap_or(-1), text)
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_names_the_first_and_stops() {
    let silent = Silent::start();
    let mut first = Daemon::start(&["-tor-socks", &silent.addr, "-batch-window", "0"]);
    let mut c = first.ehlo_client().await;
    let to = format!("x@{}", onion(9));
    assert_eq!(c.send_mail("a@example.org", &[&to], "hi").await, 250);
    // The first daemon is delivering: its recipient is leased.
    first
        .until_queue("the recipient leased", |q| q["leased"] == 1)
        .await;

    let (code, text) = second_daemon(&first.data_dir);
    assert_eq!(code, 75, "{text}");
    assert!(
        text.starts_with("pluto2: ") && text.matches('\n').count() == 1,
        "not one line: {text:?}"
    );
    let pid = first.child.id();
    for needle in ["-data-dir", &format!("pid {pid}"), "another pluto2"] {
        assert!(text.contains(needle), "no {needle:?} in {text}");
    }

    // Nothing of the first daemon's work was undone, and `queue` still
    // reads the spool beside it.
    let q = first.queue_json();
    assert_eq!(
        (q["leased"].as_u64(), q["queued"].as_u64()),
        (Some(1), Some(0)),
        "{q}"
    );
    let mut c = first.ehlo_client().await;
    assert_eq!(c.send_mail("a@example.org", &[&to], "again").await, 250);

    // The lock dies with its holder, however it ends: after SIGKILL the
    // data dir is free for the next daemon.
    let dir = first.take_dir();
    let data = first.data_dir.clone();
    first.kill9();
    let next = Daemon::start_in(&data, &[]);
    let mut c = next.ehlo_client().await;
    assert_eq!(c.code("NOOP").await, 250);
    drop(next);
    drop(dir);
}
