//! What is accepted stays accepted: replay window across restarts, SIGKILL
//! under load, orderly SIGTERM.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Client, Daemon};
use tokio::sync::Notify;

#[tokio::test]
async fn replays_are_refused_across_a_restart() {
    let mut d = Daemon::start(&[]);
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    assert_eq!(
        c.send_mail("a@example.org", &["b@example.org"], "same body")
            .await,
        250
    );
    let (code, _) = {
        c.code("MAIL FROM:<a@example.org>").await;
        c.code("RCPT TO:<b@example.org>").await;
        c.code("DATA").await;
        c.send(b"same body\r\n.\r\n").await;
        c.reply().await
    };
    assert_eq!(code, 554);
    assert_eq!(
        c.send_mail("a@example.org", &["b@example.org"], "other body")
            .await,
        250
    );
    drop(c);

    d.signal("TERM");
    assert!(d.wait().success());
    let dir = d.take_dir().unwrap();
    let d = Daemon::start_in(&d.data_dir.clone(), &[]);
    let mut c = d.client().await;
    c.code("EHLO client.example").await;
    c.code("MAIL FROM:<a@example.org>").await;
    c.code("RCPT TO:<b@example.org>").await;
    c.code("DATA").await;
    c.send(b"same body\r\n.\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("5.7.1"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    let mut d = Daemon::start(&["-rate-limit", "1000"]);
    let acked = Arc::new(AtomicUsize::new(0));
    let milestone = Arc::new(Notify::new());
    let mut clients = Vec::new();
    for id in 0..16 {
        clients.push(tokio::spawn(load(
            d.addr,
            id,
            acked.clone(),
            milestone.clone(),
        )));
    }
    // Kill once a good number of messages is in, while the load still runs.
    tokio::time::timeout(common::PATIENCE, milestone.notified())
        .await
        .expect("load did not reach 300 messages");
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

#[tokio::test]
async fn sigterm_answers_421_to_open_sessions_and_exits_cleanly() {
    let mut d = Daemon::start(&[]);
    let mut idle = d.client().await;
    idle.code("EHLO client.example").await;
    let mut in_data = d.client().await;
    in_data.code("EHLO client.example").await;
    in_data.code("MAIL FROM:<a@example.org>").await;
    in_data.code("RCPT TO:<b@example.org>").await;
    in_data.code("DATA").await;
    in_data.send(b"Subject: unfinished\r\n").await;
    let mut done = d.client().await;
    done.code("EHLO client.example").await;
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
