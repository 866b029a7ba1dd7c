//! Spool behaviour against a real SQLite file in a temporary directory.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::envelope::Envelope;

fn message(body: &str, rcpts: usize) -> Message {
    Message {
        envelope: Envelope {
            sender: "a@example.org".into(),
            recipients: (0..rcpts).map(|i| format!("r{i}@example.net")).collect(),
            smtputf8: false,
            eight_bit: false,
        },
        body: body.as_bytes().to_vec(),
    }
}

/// A clock the test moves by hand.
fn manual_clock(start: u64) -> (Clock, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(start));
    let read = now.clone();
    (Arc::new(move || read.load(Ordering::SeqCst)), now)
}

#[tokio::test]
async fn it_stores_messages_with_one_row_per_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = manual_clock(1000);
    let (spool, closer) =
        Spool::open(dir.path(), Duration::from_secs(86400), clock.clone()).unwrap();
    assert_eq!(
        spool.enqueue(message("one", 2), 0).await,
        EnqueueOutcome::Queued
    );
    assert_eq!(
        spool.enqueue(message("two", 3), 0).await,
        EnqueueOutcome::Queued
    );
    let report = queue_report(dir.path(), &clock).unwrap();
    assert_eq!(report.messages, 2);
    assert_eq!(report.recipients, 5);
    assert_eq!(report.queued, 5);
    drop(spool);
    closer.closed().await;
}

#[tokio::test]
async fn it_refuses_replays_within_the_window_even_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, now) = manual_clock(1000);
    let window = Duration::from_secs(86400);
    let (spool, closer) = Spool::open(dir.path(), window, clock.clone()).unwrap();
    assert_eq!(
        spool.enqueue(message("same", 1), 0).await,
        EnqueueOutcome::Queued
    );
    assert_eq!(
        spool.enqueue(message("same", 1), 0).await,
        EnqueueOutcome::Replay
    );
    assert_eq!(
        spool.enqueue(message("other", 1), 0).await,
        EnqueueOutcome::Queued
    );
    drop(spool);
    closer.closed().await;

    let (spool, closer) = Spool::open(dir.path(), window, clock.clone()).unwrap();
    now.store(1000 + 86_399_000, Ordering::SeqCst);
    assert_eq!(
        spool.enqueue(message("same", 1), 0).await,
        EnqueueOutcome::Replay
    );
    now.store(1000 + 86_400_000, Ordering::SeqCst);
    assert_eq!(
        spool.enqueue(message("same", 1), 0).await,
        EnqueueOutcome::Queued
    );
    assert_eq!(queue_report(dir.path(), &clock).unwrap().messages, 3);
    drop(spool);
    closer.closed().await;
}

#[tokio::test]
async fn it_skips_the_replay_check_when_the_window_is_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = manual_clock(5);
    let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, clock).unwrap();
    assert_eq!(
        spool.enqueue(message("same", 1), 0).await,
        EnqueueOutcome::Queued
    );
    assert_eq!(
        spool.enqueue(message("same", 1), 0).await,
        EnqueueOutcome::Queued
    );
    drop(spool);
    closer.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_commits_concurrent_enqueues_and_answers_each() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = manual_clock(1000);
    let (spool, closer) = Spool::open(dir.path(), Duration::from_secs(60), clock.clone()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            spool.enqueue(message(&format!("m{i}"), 1), 0).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), EnqueueOutcome::Queued);
    }
    assert_eq!(queue_report(dir.path(), &clock).unwrap().messages, 200);
    drop(spool);
    closer.closed().await;
}

#[test]
fn it_explains_a_missing_spool() {
    let dir = tempfile::tempdir().unwrap();
    let err = queue_report(dir.path(), &crate::time::system_clock())
        .unwrap_err()
        .to_string();
    assert!(err.contains("-data-dir"), "{err}");
}

#[tokio::test]
async fn it_reports_an_empty_spool_with_no_oldest_age() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = manual_clock(50);
    let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, clock.clone()).unwrap();
    let report = queue_report(dir.path(), &clock).unwrap();
    assert_eq!((report.messages, report.oldest_age_seconds), (0, None));
    drop(spool);
    closer.closed().await;
}

#[tokio::test]
async fn it_leases_groups_by_destination_and_settles_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, now) = manual_clock(1000);
    let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, clock.clone()).unwrap();
    let mut m = message("multi", 0);
    m.envelope.recipients = vec![
        "a@one.example".into(),
        "b@two.example".into(),
        "c@one.example".into(),
    ];
    assert_eq!(spool.enqueue(m, 0).await, EnqueueOutcome::Queued);

    let batch = spool.lease(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(batch.leases.len(), 2, "one lease per destination domain");
    let one = batch
        .leases
        .iter()
        .find(|l| l.domain == "one.example")
        .unwrap();
    assert_eq!(one.recipients.len(), 2);
    assert_eq!(one.body, b"multi");
    assert!(
        spool
            .lease(10, Duration::from_secs(60))
            .await
            .unwrap()
            .leases
            .is_empty(),
        "leased rows are not handed out twice"
    );
    assert_eq!(queue_report(dir.path(), &clock).unwrap().leased, 3);

    let two = batch
        .leases
        .iter()
        .find(|l| l.domain == "two.example")
        .unwrap();
    let mut outcomes: Vec<_> = one
        .recipients
        .iter()
        .map(|r| (r.id, Disposition::Delivered))
        .collect();
    outcomes.push((two.recipients[0].id, Disposition::Retry { at: 101_000 }));
    spool.settle(outcomes).await.unwrap();
    let report = queue_report(dir.path(), &clock).unwrap();
    assert_eq!(
        (
            report.messages,
            report.deferred,
            report.next_retry_in_seconds
        ),
        (1, 1, Some(100))
    );

    assert!(
        spool
            .lease(10, Duration::from_secs(60))
            .await
            .unwrap()
            .leases
            .is_empty(),
        "not due before its retry time"
    );
    now.store(101_000, Ordering::SeqCst);
    let batch = spool.lease(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(batch.leases[0].recipients[0].attempts, 1);
    spool
        .settle(vec![(
            batch.leases[0].recipients[0].id,
            Disposition::Dropped,
        )])
        .await
        .unwrap();
    assert_eq!(
        queue_report(dir.path(), &clock).unwrap().messages,
        0,
        "message removed with its last recipient"
    );
    drop(spool);
    closer.closed().await;
}

#[tokio::test]
async fn it_releases_leases_of_a_crashed_run_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = manual_clock(1000);
    let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, clock.clone()).unwrap();
    spool.enqueue(message("x", 1), 0).await;
    assert_eq!(
        spool
            .lease(10, Duration::from_secs(3600))
            .await
            .unwrap()
            .leases
            .len(),
        1
    );
    drop(spool);
    closer.closed().await;
    let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, clock.clone()).unwrap();
    assert_eq!(
        spool
            .lease(10, Duration::from_secs(3600))
            .await
            .unwrap()
            .leases
            .len(),
        1,
        "redelivered after restart"
    );
    drop(spool);
    closer.closed().await;
}
