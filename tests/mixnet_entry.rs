//! The entry's sender on the 5-node mixnet (tests/common/mixnet.rs): mail
//! that can never enter the mixnet is dropped and counted at its first
//! attempt, and does not hold newer mail back.

mod common;

use std::time::Duration;

use common::PATIENCE;
use common::mixnet::{MixNet, TEST_PARAMS, mail, until_stat};
use tokio::time::Instant;

/// The sender's round takes this many due messages (src/mixnet/sender.rs).
const BATCH: usize = 16;

/// A message the entry accepts by SMTP yet can never send into the
/// mixnet: an entry run with `-max-recipients` over the 1,000 recipients
/// a mixnet message carries (the exits' contract) takes 1,001 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_that_can_never_launch_is_dropped_and_counted_and_holds_no_newer_mail_back() {
    let mut net = MixNet::start(5, TEST_PARAMS).await;
    // The entry may take the recipients that make the blob too large.
    net.nodes[0].daemon = None;
    net.start_node(0, &["-max-recipients", "1001"]);
    net.until_healthy(0, 4).await;
    let marker = "unlaunchable";
    let recipients: Vec<String> = (0..1001)
        .map(|i| format!("{marker}{i}@d.example"))
        .collect();
    // A full round of them first (each due before the next), so that
    // a sender that kept them would take no other message. Each its own
    // text (identical ones would be replays), its commands pipelined, all
    // in one session (the entry's -rate-limit counts sessions).
    let mut c = net.daemon(0).ehlo_client().await;
    for i in 0..BATCH {
        let big = mail(2_000, &format!("too-many-{i}"));
        let mut commands = String::from("MAIL FROM:<a@b.example>\r\n");
        for r in &recipients {
            commands.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        commands.push_str("DATA\r\n");
        c.send(commands.as_bytes()).await;
        for _ in 0..=recipients.len() {
            assert_eq!(c.reply().await.0, 250);
        }
        assert_eq!(c.reply().await.0, 354);
        c.send(big.as_bytes()).await;
        c.send(b"\r\n.\r\n").await;
        assert_eq!(c.reply().await.0, 250);
    }
    let (from, to) = ("a@b.example", net.rcpt());
    assert_eq!(c.send_mail(from, &[&to], &mail(2_000, "newer")).await, 250);
    let entry = net.daemon(0);
    // The newer message is delivered without waiting for anything.
    let deadline = Instant::now() + PATIENCE;
    while !net
        .sink
        .received()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.data).contains("Subject: newer\r\n"))
    {
        assert!(
            Instant::now() < deadline,
            "the newer message was held back:\n{}",
            entry
                .log_text()
                .lines()
                .filter(|l| !l.contains("[STATS]"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each dropped at its first attempt, counted by code.
    assert_eq!(
        until_stat(entry, "launch_dropped", |n| n >= BATCH as u64).await,
        BATCH as u64
    );
    net.until_quiet().await;
    let got = net.sink.received();
    assert_eq!(got.len(), 1, "only the newer message left the mixnet");
    let logs = entry.log_text();
    let drops: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("dropped a message that cannot enter the mixnet"))
        .collect();
    assert_eq!(drops.len(), BATCH, "one line per drop:\n{logs}");
    assert!(
        drops
            .iter()
            .all(|l| l.contains("class=permanent stage=launch code=too_large")),
        "{drops:?}"
    );
    // Never an address, in any line.
    assert!(!logs.contains(marker), "an address in the log:\n{logs}");
    assert!(!logs.contains(&net.sink_onion), "an address in the log");
    let queue = common::queue_json(&net.nodes[0].data);
    assert_eq!(queue["messages"], 0, "the dropped mail left the spool");
}
