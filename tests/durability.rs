//! What is accepted stays accepted: replay window across restarts, SIGKILL
//! under load, orderly SIGTERM.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Client, Daemon};
use tokio::sync::Notify;

/// Sends "same body" again on a fresh transaction; returns the reply.
async fn resend(c: &mut Client) -> (u16, String) {
    c.start_data("a@example.org", &["b@example.org"]).await;
    c.send(b"same body\r\n.\r\n").await;
    c.reply().await
}

/// A replay inside the window is answered like the first copy (a client
/// that lost its 250 must not bounce a message that was accepted, and a
/// refusal would tell a holder of a copy that it passed here) but is not
/// queued again, also after a restart; it is counted, without details.
#[tokio::test]
async fn replays_are_answered_250_and_not_queued_across_a_restart() {
    let mut d = Daemon::start(&["-stats-interval", "1s"]);
    let mut c = d.ehlo_client().await;
    assert_eq!(
        c.send_mail("a@example.org", &["b@example.org"], "same body")
            .await,
        250
    );
    let (code, text) = resend(&mut c).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(
        text, "250 2.0.0 Ok: queued\r\n",
        "same words as the first copy"
    );
    assert_eq!(
        c.send_mail("a@example.org", &["b@example.org"], "other body")
            .await,
        250
    );
    assert_eq!(d.queue_json()["messages"], 2, "the replay was queued");
    let stats = d
        .until_log("with replays=1", |l| {
            l.contains("[STATS]") && l.contains("replays=1")
        })
        .await;
    assert!(stats.contains("received=2"), "{stats}");
    let logged = d
        .until_log("about the replay", |l| l.contains("replay window"))
        .await;
    assert!(!logged.contains("example.org"), "{logged}");
    drop(c);

    d.signal("TERM");
    assert!(d.wait().success());
    let dir = d.take_dir().unwrap();
    let d = Daemon::start_in(&d.data_dir.clone(), &[]);
    let mut c = d.ehlo_client().await;
    let (code, text) = resend(&mut c).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(d.queue_json()["messages"], 2);
    drop(dir);
}

/// One client that sends unique messages until the server goes away,
/// counting the 250s it received after DATA.
async fn load(
    addr: std::net::SocketAddr,
    id: usize,
    acked: Arc<AtomicUsize>,
    milestone: Arc<Notify>,
) {
    let mut c = Client::connect(addr).await;
    if c.try_reply().await.is_none() {
        return;
    }
    let script = async {
        c.send(b"EHLO load.example\r\n").await;
        c.try_reply().await?;
        for n in 0.. {
            let body = format!("Subject: load {id}/{n}\r\n\r\n{}\r\n", "x".repeat(2000));
            c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
                .await;
            for _ in 0..3 {
                c.try_reply().await?;
            }
            c.send(format!("{body}.\r\n").as_bytes()).await;
            let (code, _) = c.try_reply().await?;
            if code == 250 && acked.fetch_add(1, Ordering::SeqCst) + 1 == 300 {
                milestone.notify_one();
            }
        }
        Some(())
    };
    let _ = script.await;
}

/// Sixteen [`load`] clients, returned once 300 of their messages got a
/// 250 (the load still runs): the count of 250s and the client tasks.
async fn under_load(d: &Daemon) -> (Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let acked = Arc::new(AtomicUsize::new(0));
    let milestone = Arc::new(Notify::new());
    let clients = (0..16)
        .map(|id| tokio::spawn(load(d.addr, id, acked.clone(), milestone.clone())))
        .collect();
    tokio::time::timeout(common::PATIENCE, milestone.notified())
        .await
        .expect("load did not reach 300 messages");
    (acked, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    let mut d = Daemon::start(&["-rate-limit", "1000"]);
    // Kill once a good number of messages is in, while the load still runs.
    let (acked, clients) = under_load(&d).await;
    d.kill9();
    for c in clients {
        let _ = tokio::time::timeout(common::PATIENCE, c).await;
    }
    let acknowledged = acked.load(Ordering::SeqCst);
    let dir = d.take_dir().unwrap();
    let stored = common::queue_json(&d.data_dir)["messages"]
        .as_u64()
        .unwrap() as usize;
    assert!(
        stored >= acknowledged,
        "{stored} stored < {acknowledged} acknowledged"
    );
    // The daemon starts again on the same spool and still holds everything.
    let d2 = Daemon::start_in(&d.data_dir.clone(), &[]);
    let again = d2.queue_json()["messages"].as_u64().unwrap() as usize;
    assert!(again >= acknowledged);
    drop(dir);
}

/// An orderly stop under load: the clients' open sessions and every new
/// connection are told `421 4.3.0` (at the greeting, or at the first
/// command if it raced the signal) or find the port closed once the last
/// session ended; nothing else. The daemon exits 0 after closing the
/// spool, and every message that got its 250 is stored (an orderly stop
/// loses nothing either). That a newcomer is answered while sessions
/// finish is shown deterministically in `smtp::server`'s drain test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_421_to_new_sessions_and_loses_nothing() {
    let mut d = Daemon::start(&["-rate-limit", "1000"]);
    let (acked, clients) = under_load(&d).await;
    d.signal("TERM");
    d.until_log("the stop began", |l| l.contains("received SIGTERM"))
        .await;
    // Newcomers until the port closes (bounded: the drain ends when the
    // load's sessions have been told 421).
    let mut told = 0;
    for _ in 0..200 {
        let Ok(stream) = tokio::net::TcpStream::connect(d.addr).await else {
            break;
        };
        let mut c = Client::from_stream(stream);
        let (mut code, mut text) = c.try_reply().await.expect("a reply, not a reset");
        if code == 220 {
            c.send(b"EHLO late.example\r\n").await;
            (code, text) = c.try_reply().await.expect("a reply, not a reset");
        }
        assert_eq!(code, 421, "{text}");
        assert!(text.starts_with("421 4.3.0"), "{text}");
        told += 1;
    }
    for c in clients {
        let _ = tokio::time::timeout(common::PATIENCE, c).await;
    }
    let status = d.wait();
    assert!(status.success(), "{status:?}");
    assert!(d.log_text().contains("[SPOOL] closed cleanly"));
    let acknowledged = acked.load(Ordering::SeqCst);
    let stored = d.queue_json()["messages"].as_u64().unwrap() as usize;
    assert!(
        stored >= acknowledged,
        "{stored} stored < {acknowledged} acknowledged ({told} newcomers told 421)"
    );
}

/// A task that dies takes the daemon down loudly: logged by name, exit
/// status 70 (EX_SOFTWARE, so systemd's `Restart=on-failure` starts a
/// whole daemon again), and still an orderly stop of everything else
/// (the spool closed). `PLUTO2_FAIL_TASK` is a debug-build test hook.
#[test]
fn a_task_that_panics_stops_the_daemon_with_a_status_naming_it() {
    for task in ["dispatcher", "stats", "smtp listener"] {
        let dir = tempfile::tempdir().unwrap();
        let hook = format!("PLUTO2_FAIL_TASK={task}");
        let mut d = Daemon::start_wrapped(&["env", &hook], &dir.path().join("data"), &[]);
        let status = d.wait();
        assert_eq!(status.code(), Some(70), "{task}: {status:?}");
        let log = d.log_text();
        assert!(
            log.contains(&format!("task {task} panicked")),
            "{task}: {log}"
        );
        assert!(log.contains("[SPOOL] closed cleanly"), "{task}: {log}");
    }
}

#[tokio::test]
async fn sigterm_answers_421_to_open_sessions_and_exits_cleanly() {
    let mut d = Daemon::start(&[]);
    let mut idle = d.ehlo_client().await;
    let mut in_data = d.ehlo_client().await;
    in_data
        .start_data("a@example.org", &["b@example.org"])
        .await;
    in_data.send(b"Subject: unfinished\r\n").await;
    let mut done = d.ehlo_client().await;
    assert_eq!(
        done.send_mail("a@example.org", &["b@example.org"], "kept")
            .await,
        250
    );

    d.signal("TERM");
    for c in [&mut idle, &mut in_data] {
        let (code, text) = c.reply().await;
        assert_eq!(code, 421, "{text}");
        assert!(text.contains("4.3.0"));
    }
    let status = d.wait();
    assert!(status.success(), "{status:?}");
    assert!(d.log_text().contains("[SPOOL] closed cleanly"));
    assert_eq!(d.queue_json()["messages"], 1);
}

/// Spool files whose writes must be on disk before a `250` (not the
/// `-shm` index, which SQLite rebuilds and never syncs).
fn spool_file(path: &str) -> bool {
    ["spool.sqlite", "spool.sqlite-wal", "spool.sqlite-journal"]
        .iter()
        .any(|name| path.ends_with(&format!("/{name}")))
}

/// The syscall name and the path strace decoded for its first argument
/// (`-y`), for lines like `123 12:00:00.000000 fsync(11</d/spool.sqlite-wal>) = 0`.
fn call_and_path(line: &str) -> Option<(&str, &str)> {
    let (head, args) = line.split_once('(')?;
    let call = head.rsplit(' ').next()?;
    let path = args.split_once('<')?.1.split_once('>')?.0;
    Some((call, path))
}

/// Records that a completed sync of `file` covers its first `writes` writes.
fn cover<'a>(synced: &mut HashMap<&'a str, usize>, file: &'a str, writes: usize) {
    let n = synced.entry(file).or_default();
    *n = (*n).max(writes);
}

#[tokio::test]
async fn the_250_after_data_follows_the_fsync_of_the_spool() {
    // SIGKILL keeps the page cache, so only the order of system calls shows
    // that an acknowledged message is on disk: after DATA, every write to a
    // spool file must be followed by a completed fsync/fdatasync of that
    // file before "250" is written to the client. strace -f prints events of
    // all threads (the committer has its own) in the order they happen.
    let mut d = Daemon::start_traced(
        &[
            "-tt",
            "-y",
            "-s",
            "64",
            "-e",
            "trace=write,writev,pwrite64,pwritev,sendto,sendmsg,fsync,fdatasync",
        ],
        // Held by the mix, so no delivery writes to the spool meanwhile.
        &["-batch-window", "1h"],
    );
    let mut c = d.ehlo_client().await;
    let body = "Subject: durable\r\n\r\nkept";
    assert_eq!(
        c.send_mail("a@example.org", &["b@example.org"], body).await,
        250
    );
    c.code("QUIT").await;
    let text = d.stop_traced();

    // Per spool file: writes seen so far, and how many of them a completed
    // sync covers. A sync covers the writes made before it started.
    let mut written: HashMap<&str, usize> = HashMap::new();
    let mut synced: HashMap<&str, usize> = HashMap::new();
    // Syncs in flight per thread: (file, writes it covers).
    let mut in_flight: HashMap<&str, (&str, usize)> = HashMap::new();
    let mut in_data = false;
    let mut acknowledged = false;
    for line in text.lines() {
        let thread = line.split_whitespace().next().unwrap_or("");
        if line.contains("\"354 ") {
            in_data = true;
            continue;
        }
        if line.contains("\"250 2.0.0 Ok: queued") {
            assert!(in_data, "250 before DATA?\n{text}");
            assert!(
                !written.is_empty(),
                "no write to the spool before the 250:\n{text}"
            );
            for (file, &n) in &written {
                assert_eq!(
                    synced.get(file).copied().unwrap_or(0),
                    n,
                    "{file} written but not synced before the 250:\n{text}"
                );
            }
            acknowledged = true;
            break;
        }
        if !in_data {
            continue;
        }
        if let Some(rest) = line.split_once("<... ").map(|(_, r)| r) {
            // `<... fsync resumed>) = 0`: the end of a call begun earlier.
            if (rest.starts_with("fsync resumed") || rest.starts_with("fdatasync resumed"))
                && let Some((file, covers)) = in_flight.remove(thread)
                && line.trim_end().ends_with("= 0")
            {
                cover(&mut synced, file, covers);
            }
            continue;
        }
        let Some((call, path)) = call_and_path(line) else {
            continue;
        };
        if !spool_file(path) {
            continue;
        }
        match call {
            "write" | "writev" | "pwrite64" | "pwritev" => *written.entry(path).or_default() += 1,
            "fsync" | "fdatasync" => {
                let covers = written.get(path).copied().unwrap_or(0);
                if line.trim_end().ends_with("<unfinished ...>") {
                    in_flight.insert(thread, (path, covers));
                } else if line.trim_end().ends_with("= 0") {
                    cover(&mut synced, path, covers);
                }
            }
            _ => {}
        }
    }
    assert!(acknowledged, "no 250 for the message in the trace:\n{text}");
    assert_eq!(d.queue_json()["messages"], 1);
}
