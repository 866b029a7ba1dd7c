//! Spool behaviour against a real SQLite file in a temporary directory.

use std::sync::Mutex;
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
            to_own_name: false,
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

/// A spool in its own temporary directory, on a clock the test moves.
struct TestSpool {
    dir: tempfile::TempDir,
    window: Duration,
    clock: Clock,
    now: Arc<AtomicU64>,
    spool: Spool,
    closer: SpoolCloser,
}

impl TestSpool {
    fn open(replay_window: Duration, start: u64) -> TestSpool {
        let (clock, now) = manual_clock(start);
        Self::open_in(tempfile::tempdir().unwrap(), replay_window, clock, now)
    }

    fn open_in(
        dir: tempfile::TempDir,
        window: Duration,
        clock: Clock,
        now: Arc<AtomicU64>,
    ) -> TestSpool {
        let (spool, closer) = Spool::open(dir.path(), window, clock.clone()).unwrap();
        TestSpool {
            dir,
            window,
            clock,
            now,
            spool,
            closer,
        }
    }

    /// Closes the spool (waiting for the committer) and opens the same
    /// directory again, as a restart of the daemon would.
    async fn reopen(self) -> TestSpool {
        drop(self.spool);
        self.closer.closed().await;
        Self::open_in(self.dir, self.window, self.clock, self.now)
    }

    async fn close(self) {
        drop(self.spool);
        self.closer.closed().await;
    }

    fn set_now(&self, now: u64) {
        self.now.store(now, Ordering::SeqCst);
    }

    fn report(&self) -> QueueReport {
        // As `pluto2 queue` reads it: its own connection, by path.
        QueueOps::open(self.dir.path())
            .unwrap()
            .report((self.clock)())
            .unwrap()
    }

    async fn enqueue(&self, body: &str, rcpts: usize) -> EnqueueOutcome {
        self.spool.enqueue(message(body, rcpts), 0).await
    }

    async fn lease_count(&self, lease: Duration) -> usize {
        self.spool.lease(10, lease).await.unwrap().leases.len()
    }
}

#[tokio::test]
async fn it_stores_messages_with_one_row_per_recipient() {
    let t = TestSpool::open(Duration::from_secs(86400), 1000);
    assert_eq!(t.enqueue("one", 2).await, EnqueueOutcome::Queued);
    assert_eq!(t.enqueue("two", 3).await, EnqueueOutcome::Queued);
    let report = t.report();
    assert_eq!(report.messages, 2);
    assert_eq!(report.recipients, 5);
    assert_eq!(report.queued, 5);
    t.close().await;
}

/// The spool's reader sees every commit of the writer (one read
/// transaction per report, no stale snapshot) and agrees with what
/// `pluto2 queue` reads by path.
#[tokio::test]
async fn its_reader_counts_what_the_writer_committed() {
    let t = TestSpool::open(Duration::from_secs(86400), 1000);
    let reader = t.spool.reader();
    assert_eq!(reader.report().await.unwrap().messages, 0);
    assert_eq!(t.enqueue("one", 2).await, EnqueueOutcome::Queued);
    assert_eq!(t.enqueue("two", 3).await, EnqueueOutcome::Queued);
    let report = reader.report().await.unwrap();
    assert_eq!((report.messages, report.queued), (2, 5));
    t.spool.lease(1, Duration::from_secs(60)).await.unwrap();
    let report = reader.report().await.unwrap();
    assert_eq!(report, t.report());
    assert!(report.leased > 0, "{report:?}");
    assert_eq!(report.queued + report.leased, 5);
    t.close().await;
}

/// A reader handle that outlives every `Spool` does not keep the database
/// open: the committer closes the reader before its final checkpoint, so
/// the clean close still removes the `-wal` and `-shm` files (what
/// `pluto2 check` relies on to open the file untouched).
#[tokio::test]
async fn its_reader_is_closed_before_the_spool_closes() {
    let t = TestSpool::open(Duration::from_secs(86400), 1000);
    let reader = t.spool.reader();
    assert_eq!(t.enqueue("one", 1).await, EnqueueOutcome::Queued);
    assert_eq!(reader.report().await.unwrap().messages, 1);
    let dir = t.dir.path().to_path_buf();
    let sidecar = |suffix: &str| dir.join(format!("{SPOOL_FILE}{suffix}"));
    assert!(sidecar("-wal").exists(), "the daemon runs in WAL mode");
    let TestSpool {
        dir: _keep,
        spool,
        closer,
        ..
    } = t;
    drop(spool);
    closer.closed().await;
    assert!(
        !sidecar("-wal").exists(),
        "the -wal file outlived the close"
    );
    assert!(
        !sidecar("-shm").exists(),
        "the -shm file outlived the close"
    );
    assert!(matches!(reader.report().await, Err(SpoolError::Closed)));
}

#[tokio::test]
async fn it_refuses_replays_within_the_window_even_after_reopening() {
    let t = TestSpool::open(Duration::from_secs(86400), 1000);
    assert_eq!(t.enqueue("same", 1).await, EnqueueOutcome::Queued);
    assert_eq!(t.enqueue("same", 1).await, EnqueueOutcome::Replay);
    assert_eq!(t.enqueue("other", 1).await, EnqueueOutcome::Queued);

    let t = t.reopen().await;
    t.set_now(1000 + 86_399_000);
    assert_eq!(t.enqueue("same", 1).await, EnqueueOutcome::Replay);
    t.set_now(1000 + 86_400_000);
    assert_eq!(t.enqueue("same", 1).await, EnqueueOutcome::Queued);
    assert_eq!(t.report().messages, 3);
    t.close().await;
}

#[tokio::test]
async fn it_skips_the_replay_check_when_the_window_is_zero() {
    let t = TestSpool::open(Duration::ZERO, 5);
    assert_eq!(t.enqueue("same", 1).await, EnqueueOutcome::Queued);
    assert_eq!(t.enqueue("same", 1).await, EnqueueOutcome::Queued);
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_commits_concurrent_enqueues_and_answers_each() {
    let t = TestSpool::open(Duration::from_secs(60), 1000);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let spool = t.spool.clone();
        tasks.push(tokio::spawn(async move {
            spool.enqueue(message(&format!("m{i}"), 1), 0).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), EnqueueOutcome::Queued);
    }
    assert_eq!(t.report().messages, 200);
    t.close().await;
}

/// A clock for the committer that counts its readings and holds the first
/// one until the test lets go. The committer reads the clock once per
/// group, before it writes, so the first group stalls there (as behind a
/// slow fsync) while the test queues more requests; every group stamps its
/// messages with its own reading.
struct GatedClock {
    clock: Clock,
    /// Resolves once the committer is held inside its first group.
    entered: tokio::sync::oneshot::Receiver<()>,
    release: std::sync::mpsc::Sender<()>,
}

fn gated_clock() -> GatedClock {
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let entered_tx = Mutex::new(Some(entered_tx));
    let release_rx = Mutex::new(release_rx);
    let readings = AtomicU64::new(0);
    let clock: Clock = Arc::new(move || {
        let n = readings.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(entered) = entered_tx.lock().unwrap().take() {
            let _ = entered.send(());
            let _ = release_rx.lock().unwrap().recv();
        }
        n * 1000
    });
    GatedClock {
        clock,
        entered,
        release,
    }
}

/// Puts an enqueue request straight into the committer's queue; when this
/// returns the request is waiting there.
async fn submit(spool: &Spool, body: &str) -> oneshot::Receiver<EnqueueOutcome> {
    let message = message(body, 1);
    let (reply, answer) = oneshot::channel();
    let request = EnqueueRequest {
        origin: super::Origin::Smtp(message.replay_id()),
        message,
        release_at: 0,
        reply,
    };
    assert!(spool.tx.send(Job::Enqueue(request)).await.is_ok());
    answer
}

#[tokio::test]
async fn it_commits_requests_that_queued_up_during_a_commit_as_one_group() {
    let dir = tempfile::tempdir().unwrap();
    let gate = gated_clock();
    let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, gate.clock).unwrap();
    let first = submit(&spool, "first").await;
    gate.entered.await.unwrap();
    let waiting: i64 = 50;
    let mut answers = Vec::new();
    for i in 0..waiting {
        answers.push(submit(&spool, &format!("m{i}")).await);
    }
    gate.release.send(()).unwrap();
    assert_eq!(first.await.unwrap(), EnqueueOutcome::Queued);
    for answer in answers {
        assert_eq!(answer.await.unwrap(), EnqueueOutcome::Queued);
    }
    drop(spool);
    closer.closed().await;

    // Messages stamped with the same clock reading were committed together.
    let conn = schema::open_reader(dir.path()).unwrap();
    let mut groups = conn
        .prepare("SELECT received_at, COUNT(*) FROM messages GROUP BY received_at ORDER BY 1")
        .unwrap();
    let sizes: Vec<i64> = groups
        .query_map([], |row| row.get(1))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(sizes, [1, waiting], "group sizes");
}

#[test]
fn it_explains_a_missing_spool() {
    let dir = tempfile::tempdir().unwrap();
    let err = QueueOps::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("-data-dir"), "{err}");
}

#[tokio::test]
async fn it_reports_an_empty_spool_with_no_oldest_age() {
    let t = TestSpool::open(Duration::ZERO, 50);
    let report = t.report();
    assert_eq!((report.messages, report.oldest_age_seconds), (0, None));
    t.close().await;
}

#[tokio::test]
async fn it_leases_groups_by_destination_and_settles_outcomes() {
    let t = TestSpool::open(Duration::ZERO, 1000);
    let spool = &t.spool;
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
    assert_eq!(
        t.lease_count(Duration::from_secs(60)).await,
        0,
        "leased rows are not handed out twice"
    );
    assert_eq!(t.report().leased, 3);

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
    let report = t.report();
    assert_eq!(
        (
            report.messages,
            report.deferred,
            report.next_retry_in_seconds
        ),
        (1, 1, Some(100))
    );

    assert_eq!(
        t.lease_count(Duration::from_secs(60)).await,
        0,
        "not due before its retry time"
    );
    t.set_now(101_000);
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
        t.report().messages,
        0,
        "message removed with its last recipient"
    );
    t.close().await;
}

#[tokio::test]
async fn it_releases_leases_of_a_crashed_run_on_open() {
    let t = TestSpool::open(Duration::ZERO, 1000);
    t.enqueue("x", 1).await;
    assert_eq!(t.lease_count(Duration::from_secs(3600)).await, 1);
    let t = t.reopen().await;
    assert_eq!(
        t.lease_count(Duration::from_secs(3600)).await,
        1,
        "redelivered after restart"
    );
    t.close().await;
}

mod mixnet_storage {
    use super::*;
    use crate::spool::custody::{
        Custody, CustodyOutcome, EntryAck, ExitRows, Launch, OutPacket, PacketKind, PacketSettle,
        StoredFragment,
    };

    fn packet(next: u8, release_at: u64) -> OutPacket {
        OutPacket {
            next_hop: [next; 32],
            epoch: 0,
            bytes: vec![next; 100],
            kind: PacketKind::Forward,
            release_at,
            deadline: release_at + 60_000,
        }
    }

    fn fragment(index: u16, count: u16) -> StoredFragment {
        StoredFragment {
            mix_id: [7; 16],
            index,
            count,
            blob_len: 10,
            blob_hash: [1; 32],
            reply_block: Some(vec![index as u8; 8]),
            data: vec![index as u8],
        }
    }

    #[tokio::test]
    async fn a_known_tag_is_a_duplicate_and_keeps_nothing_even_after_a_restart() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let forward = |tag: u8| Custody::Forward {
            tag: [tag; 32],
            epoch: 0,
            from: [9; 32],
            packet: packet(2, 1_500),
        };
        assert_eq!(t.spool.custody(forward(1)).await, CustodyOutcome::Stored);
        assert_eq!(t.spool.custody(forward(1)).await, CustodyOutcome::Duplicate);
        let t = t.reopen().await;
        assert_eq!(t.spool.custody(forward(1)).await, CustodyOutcome::Duplicate);
        assert_eq!(t.spool.mixnet_counts().await.unwrap().packets_forward, 1);
        t.close().await;
    }

    /// Each previous hop fills at most its share, all together at most
    /// the cap; past either the answer is busy and nothing is kept (not
    /// even the tag, so the retry is taken once there is room); room comes
    /// back when packets leave, at the next recount.
    #[tokio::test]
    async fn custody_takes_each_peer_up_to_its_share_and_all_up_to_the_cap() {
        use crate::spool::custody::{BusyReason, CustodyCaps, RECOUNT_EVERY_MS};
        let mut t = TestSpool::open(Duration::ZERO, 1_000);
        let caps = CustodyCaps {
            total: 10,
            per_peer: 4,
        };
        t.spool = t.spool.clone().with_custody_caps(Some(caps));
        let forward = |from: u8, tag: u32| Custody::Forward {
            tag: {
                let mut t = [from; 32];
                t[..4].copy_from_slice(&tag.to_be_bytes());
                t
            },
            epoch: 0,
            from: [from; 32],
            // Peer 1's packets go to a next hop of their own, so that the
            // lease below takes exactly them (a lease's order among
            // packets due at once is random).
            packet: packet(if from == 1 { 5 } else { 2 }, 1_500),
        };
        let stored = CustodyOutcome::Stored;
        for tag in 0..4 {
            assert_eq!(t.spool.custody(forward(1, tag)).await, stored);
        }
        let peer_full = CustodyOutcome::Busy(BusyReason::PeerCap);
        assert_eq!(t.spool.custody(forward(1, 4)).await, peer_full);
        // Other peers still have room, up to the cap in all.
        for from in 2..4 {
            for tag in 0..3 {
                assert_eq!(t.spool.custody(forward(from, tag)).await, stored);
            }
        }
        let full = CustodyOutcome::Busy(BusyReason::Cap);
        assert_eq!(t.spool.custody(forward(4, 0)).await, full);
        // Nothing was kept of a busy packet: its retry is new, not a
        // duplicate, and is stored once there is room.
        let counts = t.spool.mixnet_counts().await.unwrap();
        assert_eq!(counts.packets_forward, 10);
        // Packets this node's own (fragments, acknowledgements) are not
        // someone else's share.
        t.spool.queue_packets(vec![packet(3, 1_000)]).await.unwrap();
        // The next hop acknowledges peer 1's four: they leave; after a
        // recount there is room again.
        t.set_now(2_000);
        let leased = t
            .spool
            .lease_packets([5; 32], 4, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(leased.packets.len(), 4);
        let done = leased
            .packets
            .iter()
            .map(|p| (p.id, PacketSettle::Done))
            .collect();
        t.spool.settle_packets(done).await.unwrap();
        assert_eq!(
            t.spool.custody(forward(4, 0)).await,
            full,
            "before a recount"
        );
        t.set_now(1_000 + RECOUNT_EVERY_MS);
        assert_eq!(t.spool.custody(forward(4, 0)).await, stored);
        assert_eq!(t.spool.custody(forward(1, 4)).await, stored);
        t.close().await;
    }

    #[tokio::test]
    async fn packets_leave_only_when_due_and_only_on_acknowledgement() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        t.spool
            .queue_packets(vec![packet(2, 2_000), packet(3, 1_000)])
            .await
            .unwrap();
        let lease = Duration::from_secs(10);
        let none = t.spool.lease_packets([2; 32], 8, lease).await.unwrap();
        assert!(none.packets.is_empty(), "not before its release time");
        assert_eq!(none.next_due, Some(2_000));
        t.set_now(2_000);
        let batch = t.spool.lease_packets([2; 32], 8, lease).await.unwrap();
        assert_eq!(batch.packets.len(), 1);
        let again = t.spool.lease_packets([2; 32], 8, lease).await.unwrap();
        assert!(
            again.packets.is_empty(),
            "a leased packet is not handed out twice"
        );
        let id = batch.packets[0].id;
        t.spool
            .settle_packets(vec![(id, PacketSettle::Retry { at: 5_000 })])
            .await
            .unwrap();
        t.set_now(5_000);
        let retry = t.spool.lease_packets([2; 32], 8, lease).await.unwrap();
        assert_eq!(retry.packets[0].bytes, batch.packets[0].bytes, "same bytes");
        assert_eq!(retry.packets[0].attempts, 1);
        t.spool
            .settle_packets(vec![(id, PacketSettle::Done)])
            .await
            .unwrap();
        assert_eq!(t.spool.waiting_hops().await.unwrap(), vec![[3; 32]]);
        t.close().await;
    }

    /// What one lease of 4 packets for hop 2 costs SQLite when `waiting`
    /// packets are due for hop 2, as many wait for hop 2 that are not due
    /// yet, and as many wait for hop 3: (VM steps, steps of full scans,
    /// sorts), from the statements' own counters (`sqlite3_stmt_status`).
    fn lease_cost(waiting: usize) -> (i64, i64, i64) {
        use rusqlite::StatementStatus::{FullscanStep, Sort, VmStep};
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(dir.path()).unwrap();
        let mut packets = Vec::with_capacity(3 * waiting);
        for i in 0..waiting as u64 {
            // Due at 1,000–1,049 (ties included), leased or not.
            packets.push(packet(2, 1_000 + i % 50));
            packets.push(packet(2, 100_000 + i));
            packets.push(packet(3, 1_000 + i));
        }
        for chunk in packets.chunks(1_000) {
            custody::queue_packets(&mut conn, chunk).unwrap();
        }
        let lease = |conn: &mut rusqlite::Connection| {
            custody::lease_packets(conn, 2_000, &[2; 32], 4, 60_000).unwrap()
        };
        // Prepares (and caches) the statements; some leased packets wait
        // now too.
        assert_eq!(lease(&mut conn).packets.len(), 4);
        for sql in custody::LEASE_STATEMENTS {
            let stmt = conn.prepare_cached(sql).unwrap();
            for counter in [VmStep, FullscanStep, Sort] {
                stmt.reset_status(counter);
            }
        }
        let batch = lease(&mut conn);
        assert_eq!(batch.packets.len(), 4);
        assert!(
            batch.next_due.is_some_and(|due| due <= 2_000),
            "more are due"
        );
        let mut cost = (0, 0, 0);
        for sql in custody::LEASE_STATEMENTS {
            let stmt = conn.prepare_cached(sql).unwrap();
            cost.0 += i64::from(stmt.get_status(VmStep));
            cost.1 += i64::from(stmt.get_status(FullscanStep));
            cost.2 += i64::from(stmt.get_status(Sort));
        }
        cost
    }

    /// A lease runs after every link ACK on the spool's one writer: it
    /// reads the packets it takes and the hop's next due time from the
    /// index, whatever waits for the hop. Before `mix_packets_due` held
    /// the due time and the tie-break, it sorted every due packet of the
    /// hop and read every packet of the hop for the next due time.
    #[test]
    fn a_lease_costs_the_same_with_ten_or_ten_thousand_packets_waiting() {
        let few = lease_cost(10);
        let many = lease_cost(10_000);
        assert_eq!(many.1, 0, "no full scan: {many:?}");
        assert_eq!(many.2, 0, "no sort: {many:?}");
        assert!(
            many.0 <= 2 * few.0,
            "VM steps of a lease: {} with 10 waiting, {} with 10,000",
            few.0,
            many.0
        );
    }

    /// Packets due at the same time (a batch whose lease ran out, packets
    /// stored in one group with no delay) leave in an order that says
    /// nothing of the order they were stored in.
    #[tokio::test]
    async fn packets_due_together_leave_in_random_order_not_stored_order() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let n = 64;
        t.spool
            .queue_packets((0..n).map(|_| packet(2, 1_000)).collect())
            .await
            .unwrap();
        let lease = Duration::from_secs(10);
        let first = t.spool.lease_packets([2; 32], n, lease).await.unwrap();
        let ids: Vec<i64> = first.packets.iter().map(|p| p.id).collect();
        assert_eq!(ids.len(), n);
        let mut stored = ids.clone();
        stored.sort_unstable();
        assert_ne!(ids, stored, "not in the order they were stored");
        stored.reverse();
        assert_ne!(ids, stored, "nor in its reverse");
        // The lease runs out: all 64 are due again at the same moment.
        t.set_now(11_000);
        let again = t.spool.lease_packets([2; 32], n, lease).await.unwrap();
        let mut again_ids: Vec<i64> = again.packets.iter().map(|p| p.id).collect();
        assert_eq!(again.packets.len(), n, "due again when the lease ran out");
        stored.reverse();
        assert_ne!(again_ids, stored, "not in the order they were stored");
        again_ids.sort_unstable();
        assert_eq!(again_ids, stored, "the same packets");
        t.close().await;
    }

    /// Packets past their custody deadline go, counted by kind; the others
    /// stay.
    #[tokio::test]
    async fn expired_packets_go_counted_by_kind_and_the_rest_stay() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let with = |kind, deadline| OutPacket {
            kind,
            deadline,
            ..packet(2, 1_000)
        };
        t.spool
            .queue_packets(vec![
                with(PacketKind::Forward, 5_000),
                with(PacketKind::Forward, 6_000),
                with(PacketKind::Ack, 6_000),
                with(PacketKind::Forward, 6_001),
                with(PacketKind::Fragment, 9_000),
            ])
            .await
            .unwrap();
        t.set_now(6_000);
        let expired = t.spool.expire_packets().await.unwrap();
        assert_eq!(expired, [(PacketKind::Forward, 2), (PacketKind::Ack, 1)]);
        let counts = t.spool.mixnet_counts().await.unwrap();
        assert_eq!(
            (
                counts.packets_forward,
                counts.packets_fragment,
                counts.packets_ack
            ),
            (1, 1, 0)
        );
        assert!(t.spool.expire_packets().await.unwrap().is_empty());
        t.close().await;
    }

    /// `n` packets for next hop 2, queued and leased; their row ids.
    async fn leased_packets(t: &TestSpool, n: usize) -> Vec<i64> {
        t.spool
            .queue_packets((0..n).map(|_| packet(2, 1_000)).collect())
            .await
            .unwrap();
        let lease = Duration::from_secs(60);
        let batch = t.spool.lease_packets([2; 32], n, lease).await.unwrap();
        assert_eq!(batch.packets.len(), n);
        batch.packets.iter().map(|p| p.id).collect()
    }

    /// Settlement transactions so far, as a scrape of
    /// `pluto2_spool_settle_commit_seconds` counts them.
    fn settle_commits(t: &TestSpool) -> u64 {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("settle", "", t.spool.commit_times().settle);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("settle_count "))
            .and_then(|n| n.trim().parse().ok())
            .expect("a count")
    }

    /// Link ACKs that arrive while the writer is busy are settled by one
    /// COMMIT, not one each.
    #[tokio::test]
    async fn settlements_waiting_together_take_one_transaction() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let ids = leased_packets(&t, 200).await;
        let before = settle_commits(&t);
        // The writer is busy (an fsync, a custody group) while the ACKs
        // come in: hold it in a job until every settlement is queued.
        let (release, busy) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let spool = t.spool.clone();
        let held = tokio::spawn(async move {
            spool
                .call(move |_, _| {
                    let _ = started.send(());
                    let _ = busy.recv();
                    Ok(())
                })
                .await
        });
        running.await.unwrap();
        for id in &ids {
            t.spool
                .settle_packets_later(vec![(*id, PacketSettle::Done)])
                .await;
        }
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        // Past every job queued before it.
        t.spool.ping().await.unwrap();
        assert_eq!(settle_commits(&t) - before, 1, "one COMMIT for 200 ACKs");
        assert_eq!(t.spool.mixnet_counts().await.unwrap().packets_forward, 0);
        t.close().await;
    }

    /// A settlement handed over without waiting is committed before the
    /// spool closes, and a packet settled for a retry goes again.
    #[tokio::test]
    async fn settlements_handed_over_before_a_stop_are_committed() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let ids = leased_packets(&t, 2).await;
        t.spool
            .settle_packets_later(vec![(ids[0], PacketSettle::Done)])
            .await;
        t.spool
            .settle_packets_later(vec![(ids[1], PacketSettle::Retry { at: 1_000 })])
            .await;
        let t = t.reopen().await;
        let batch = t
            .spool
            .lease_packets([2; 32], 8, Duration::from_secs(60))
            .await
            .unwrap();
        let left: Vec<(i64, u32)> = batch.packets.iter().map(|p| (p.id, p.attempts)).collect();
        assert_eq!(left, [(ids[1], 1)]);
        t.close().await;
    }

    #[tokio::test]
    async fn a_restart_gives_overdue_packets_fresh_release_times() {
        let t = TestSpool::open(Duration::ZERO, 10_000);
        t.spool
            .queue_packets(vec![packet(2, 1_000), packet(2, 20_000)])
            .await
            .unwrap();
        let mut next = 30_000;
        let moved = t
            .spool
            .restart_packets(move || {
                next += 1;
                next
            })
            .await
            .unwrap();
        assert_eq!(moved, 1);
        let batch = t
            .spool
            .lease_packets([2; 32], 8, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(
            batch.packets.is_empty(),
            "nothing is due right after the restart"
        );
        assert_eq!(batch.next_due, Some(20_000));
        t.close().await;
    }

    #[tokio::test]
    async fn the_exit_moves_a_complete_message_into_the_spool_once() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        for (i, tag) in [(0u16, 10u8), (1, 11)] {
            let outcome = t
                .spool
                .custody(Custody::Fragment {
                    tag: [tag; 32],
                    epoch: 0,
                    fragment: fragment(i, 2),
                    partial_cap: u64::MAX,
                })
                .await;
            assert_eq!(outcome, CustodyOutcome::FragmentStored { have: i + 1 });
        }
        assert_eq!(t.spool.complete_candidates(8).await.unwrap(), vec![[7; 16]]);
        let header = t.spool.partial_header([7; 16]).await.unwrap().unwrap();
        assert_eq!((header.count, header.have), (2, 2));
        assert_eq!(header.reply_block, Some(vec![0; 8]));
        let data = t.spool.fragment_data([7; 16], 1, 8).await.unwrap();
        assert_eq!(data, vec![(1, vec![1])]);
        let complete = || {
            t.spool.enqueue_from(
                message("body", 2),
                super::Origin::Exit(ExitRows {
                    mix_id: [7; 16],
                    ack: Some(OutPacket {
                        kind: PacketKind::Ack,
                        ..packet(4, 1_000)
                    }),
                }),
                1_000,
            )
        };
        assert_eq!(complete().await, EnqueueOutcome::Queued);
        assert_eq!(complete().await, EnqueueOutcome::Replay, "once");
        assert_eq!(t.report().messages, 1);
        let counts = t.spool.mixnet_counts().await.unwrap();
        assert_eq!((counts.exit_partial, counts.packets_ack), (0, 2));
        // A late copy of a fragment is answered, never stored again.
        let late = t
            .spool
            .custody(Custody::Fragment {
                tag: [12; 32],
                epoch: 0,
                fragment: fragment(0, 2),
                partial_cap: u64::MAX,
            })
            .await;
        assert_eq!(late, CustodyOutcome::AlreadyDone);
        let lease = t.spool.lease(8, Duration::from_secs(5)).await.unwrap();
        assert_eq!(lease.leases[0].mix_id, Some([7; 16]));
        t.close().await;
    }

    #[tokio::test]
    async fn the_entry_keeps_a_message_until_complete_and_never_leases_it_directly() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        assert_eq!(
            t.spool.enqueue(message("hello", 1), 1_000).await,
            EnqueueOutcome::Queued
        );
        let exit_only = t
            .spool
            .lease_scoped(8, Duration::from_secs(5), LeaseScope::ExitOnly)
            .await
            .unwrap();
        assert!(exit_only.leases.is_empty() && exit_only.next_due.is_none());
        let (due, _) = t.spool.due_for_mixnet(8).await.unwrap();
        assert_eq!(due.len(), 1);
        t.spool
            .launch(Launch {
                spool_message: due[0].spool_message,
                mix_id: [5; 16],
                exit: [9; 32],
                fragments: 1,
                next_check: 5_000,
                give_up_at: 50_000,
                replies: vec![([6; 16], vec![1, 2, 3])],
                packets: vec![packet(2, 1_000)],
            })
            .await
            .unwrap();
        assert!(t.spool.due_for_mixnet(8).await.unwrap().0.is_empty());
        let direct = t.spool.lease(8, Duration::from_secs(5)).await.unwrap();
        assert!(direct.leases.is_empty(), "in the mixnet: never direct");
        assert_eq!(
            t.spool.reply_recovery([6; 16]).await.unwrap(),
            Some(([5; 16], 1, vec![1, 2, 3]))
        );
        t.set_now(5_000);
        let (overdue, _) = t.spool.overdue(8).await.unwrap();
        assert_eq!(overdue.len(), 1);
        assert_eq!(overdue[0].message.body, b"hello");
        assert!(
            t.spool
                .acknowledge([5; 16], EntryAck::Partial(vec![0]))
                .await
                .unwrap()
        );
        assert_eq!(t.report().messages, 1, "kept until COMPLETE");
        assert!(
            t.spool
                .acknowledge([5; 16], EntryAck::Complete)
                .await
                .unwrap()
        );
        assert!(
            !t.spool
                .acknowledge([5; 16], EntryAck::Complete)
                .await
                .unwrap()
        );
        assert_eq!(t.report().messages, 0);
        assert_eq!(t.spool.reply_recovery([6; 16]).await.unwrap(), None);
        t.close().await;
    }

    #[tokio::test]
    async fn old_fragments_and_done_ids_are_forgotten_young_ones_kept() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let store = |tag: u8, index: u16, mix: u8| Custody::Fragment {
            tag: [tag; 32],
            epoch: 0,
            fragment: StoredFragment {
                mix_id: [mix; 16],
                ..fragment(index, 3)
            },
            partial_cap: u64::MAX,
        };
        t.spool.custody(store(1, 0, 7)).await;
        let outcome = t
            .spool
            .enqueue_from(
                message("b", 1),
                super::Origin::Exit(ExitRows {
                    mix_id: [8; 16],
                    ack: None,
                }),
                1_000,
            )
            .await;
        assert_eq!(outcome, EnqueueOutcome::Queued);
        t.set_now(50_000);
        t.spool.custody(store(2, 0, 9)).await;
        let ten = Duration::from_secs(10);
        let (fragments, done) = t.spool.prune_mixnet(ten, ten).await.unwrap();
        assert_eq!((fragments, done), (1, 1));
        assert_eq!(t.spool.partial_header([7; 16]).await.unwrap(), None);
        assert_eq!(t.spool.fragment_data([7; 16], 0, 8).await.unwrap(), vec![]);
        assert_eq!(
            t.spool.partial_header([9; 16]).await.unwrap().unwrap().have,
            1
        );
        t.close().await;
    }

    /// An acknowledgement made from a stalled message: its reply block as
    /// the packet's bytes, so a test can tell which block it used.
    fn partial(s: &crate::spool::custody::Stalled) -> Option<OutPacket> {
        Some(OutPacket {
            kind: PacketKind::Ack,
            bytes: s.reply_block.clone(),
            ..packet(3, 1_000)
        })
    }

    fn store_with_block(index: u16) -> Custody {
        Custody::Fragment {
            tag: [index as u8 + 1; 32],
            epoch: 0,
            fragment: fragment(index, 3),
            partial_cap: u64::MAX,
        }
    }

    #[tokio::test]
    async fn stalled_messages_yield_each_reply_block_once() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        t.spool.custody(store_with_block(1)).await;
        let stall = Duration::from_secs(10);
        assert_eq!(t.spool.answer_stalled(stall, 8, partial).await.unwrap(), 0);
        t.set_now(20_000);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let queued = t
            .spool
            .answer_stalled(stall, 8, move |s| {
                record.lock().unwrap().push((s.count, s.have.clone()));
                partial(s)
            })
            .await
            .unwrap();
        assert_eq!(queued, 1);
        assert_eq!(*seen.lock().unwrap(), [(3, vec![1])]);
        assert_eq!(t.spool.mixnet_counts().await.unwrap().packets_ack, 1);
        t.set_now(40_000);
        assert_eq!(
            t.spool.answer_stalled(stall, 8, partial).await.unwrap(),
            0,
            "its only reply block is used"
        );
        let counts = t.spool.mixnet_counts().await.unwrap();
        assert_eq!(
            (counts.exit_partial, counts.exit_partial_bytes),
            (1, 1),
            "the used reply block no longer counts"
        );
        t.close().await;
    }

    fn keep(tag: u8, fragment: StoredFragment, partial_cap: u64) -> Custody {
        Custody::Fragment {
            tag: [tag; 32],
            epoch: 0,
            fragment,
            partial_cap,
        }
    }

    /// A fragment that declares another count, length or hash than the
    /// first one stored of its message is refused and keeps nothing; its
    /// tag is remembered like any refused packet's.
    #[tokio::test]
    async fn fragments_of_one_message_that_disagree_are_refused_not_stored() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        assert_eq!(
            t.spool.custody(keep(1, fragment(0, 3), u64::MAX)).await,
            CustodyOutcome::FragmentStored { have: 1 }
        );
        let disagreeing = [
            fragment(1, 4),
            StoredFragment {
                blob_len: 11,
                ..fragment(1, 3)
            },
            StoredFragment {
                blob_hash: [2; 32],
                ..fragment(1, 3)
            },
        ];
        for (i, f) in disagreeing.into_iter().enumerate() {
            let tag = 10 + i as u8;
            assert_eq!(
                t.spool.custody(keep(tag, f.clone(), u64::MAX)).await,
                CustodyOutcome::Inconsistent,
                "{f:?}"
            );
            assert_eq!(
                t.spool.custody(keep(tag, f, u64::MAX)).await,
                CustodyOutcome::Duplicate
            );
        }
        let header = t.spool.partial_header([7; 16]).await.unwrap().unwrap();
        assert_eq!((header.count, header.have), (3, 1));
        // A second copy of a stored index (a retransmission) is kept once.
        assert_eq!(
            t.spool.custody(keep(20, fragment(0, 3), u64::MAX)).await,
            CustodyOutcome::FragmentStored { have: 1 }
        );
        assert_eq!(t.spool.mixnet_counts().await.unwrap().exit_partial_bytes, 9);
        t.close().await;
    }

    /// Past the cap nothing is stored, not even the tag: the previous hop
    /// keeps the packet and its retry is taken once room is made. The
    /// fragment that completes its message passes (its completion frees
    /// the message), so messages at the cap cannot block each other.
    #[tokio::test]
    async fn past_the_partial_cap_a_fragment_is_refused_and_its_retry_taken_later() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let of = |mix: u8, index: u16, count: u16| StoredFragment {
            mix_id: [mix; 16],
            ..fragment(index, count)
        };
        let cap = 18; // two fragments of 9 bytes (1 of data, 8 of reply block)
        assert!(matches!(
            t.spool.custody(keep(1, of(1, 0, 2), cap)).await,
            CustodyOutcome::FragmentStored { .. }
        ));
        assert!(matches!(
            t.spool.custody(keep(2, of(2, 0, 3), cap)).await,
            CustodyOutcome::FragmentStored { .. }
        ));
        assert_eq!(
            t.spool.custody(keep(3, of(3, 0, 3), cap)).await,
            CustodyOutcome::Full
        );
        assert_eq!(
            t.spool.custody(keep(4, of(2, 1, 3), cap)).await,
            CustodyOutcome::Full,
            "a message already here does not pass the cap unless it completes"
        );
        assert_eq!(t.spool.partial_header([3; 16]).await.unwrap(), None);
        assert_eq!(
            t.spool.custody(keep(5, of(1, 1, 2), cap)).await,
            CustodyOutcome::FragmentStored { have: 2 },
            "the last fragment of message 1 passes"
        );
        t.spool.drop_fragments([1; 16]).await.unwrap();
        assert_eq!(
            t.spool.custody(keep(3, of(3, 0, 3), cap)).await,
            CustodyOutcome::FragmentStored { have: 1 },
            "the same packet again, taken now"
        );
        let counts = t.spool.mixnet_counts().await.unwrap();
        assert_eq!((counts.exit_partial, counts.exit_partial_bytes), (2, 18));
        t.close().await;
    }

    /// A partial message goes when its latest fragment is older than the
    /// idle limit, or its first older than the horizon however recent the
    /// latest (a message fed a fragment now and then cannot stay).
    #[tokio::test]
    async fn partial_messages_go_when_idle_or_past_the_horizon() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let of = |mix: u8, index: u16| StoredFragment {
            mix_id: [mix; 16],
            ..fragment(index, 3)
        };
        t.spool.custody(keep(1, of(1, 0), u64::MAX)).await; // idle from 1 s
        t.spool.custody(keep(2, of(2, 0), u64::MAX)).await; // fed until 95 s
        t.set_now(60_000);
        t.spool.custody(keep(3, of(3, 0), u64::MAX)).await; // young
        t.set_now(95_000);
        t.spool.custody(keep(4, of(2, 1), u64::MAX)).await;
        t.set_now(100_000);
        let (idle, horizon) = (Duration::from_secs(60), Duration::from_secs(90));
        let (fragments, _) = t.spool.prune_mixnet(idle, horizon).await.unwrap();
        assert_eq!(fragments, 3, "message 1 (idle) and 2 (past the horizon)");
        for (mix, kept) in [(1, false), (2, false), (3, true)] {
            assert_eq!(
                t.spool.partial_header([mix; 16]).await.unwrap().is_some(),
                kept,
                "message {mix}"
            );
        }
        assert_eq!(t.spool.mixnet_counts().await.unwrap().exit_partial_bytes, 9);
        t.close().await;
    }

    /// Storing a fragment costs the same whatever was stored before: the
    /// SQLite virtual-machine steps of the fragment path (every statement
    /// in `custody::fragment_sql`) for 200 fragments of a message that
    /// already has 5,000 are within 1.5× of those for its first 200
    /// (a count over the message's fragments per insert, as before,
    /// made it 32× here). Steps, not time: deterministic.
    #[test]
    fn storing_a_fragment_costs_the_same_whatever_was_stored_before() {
        use crate::spool::custody::{custody_refs, fragment_sql};
        use rusqlite::StatementStatus;
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::spool::schema::open_writer(dir.path()).unwrap();
        let steps = |conn: &rusqlite::Connection| -> i64 {
            fragment_sql::ALL
                .iter()
                .map(|sql| {
                    conn.prepare_cached(sql)
                        .unwrap()
                        .get_status(StatementStatus::VmStep) as i64
                })
                .sum()
        };
        let store = |conn: &mut rusqlite::Connection, from: u32, n: u32| {
            for i in from..from + n {
                let tx = conn.transaction().unwrap();
                let request = Custody::Fragment {
                    tag: {
                        let mut tag = [0; 32];
                        tag[..4].copy_from_slice(&i.to_be_bytes());
                        tag
                    },
                    epoch: 0,
                    fragment: StoredFragment {
                        mix_id: [7; 16],
                        index: i as u16,
                        count: u16::MAX,
                        blob_len: u16::MAX as u32 * 7_700,
                        blob_hash: [1; 32],
                        reply_block: Some(vec![1; 64]),
                        data: vec![2; 256],
                    },
                    partial_cap: u64::MAX,
                };
                let outcome = custody_refs(&tx, 1_000, &[&request]).unwrap();
                assert_eq!(
                    outcome,
                    vec![CustodyOutcome::FragmentStored { have: i as u16 + 1 }]
                );
                tx.commit().unwrap();
            }
        };
        let at = steps(&conn);
        store(&mut conn, 0, 200);
        let first = steps(&conn) - at;
        store(&mut conn, 200, 4_800);
        let at = steps(&conn);
        store(&mut conn, 5_000, 200);
        let late = steps(&conn) - at;
        assert!(first > 0);
        eprintln!("fragment path: {first} VM steps for the first 200, {late} after 5,000");
        assert!(
            late * 2 <= first * 3,
            "200 fragments cost {first} steps at first and {late} after 5,000"
        );
    }

    /// The running total the cap reads always equals what the fragments
    /// hold, through stores, a PARTIAL, a completion, a drop and a prune.
    #[tokio::test]
    async fn the_partial_byte_total_follows_every_change() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let of = |mix: u8, index: u16| StoredFragment {
            mix_id: [mix; 16],
            ..fragment(index, 3)
        };
        let check = |what: &'static str| {
            let dir = t.dir.path().to_path_buf();
            async move {
                let conn = crate::spool::schema::open_reader(&dir).unwrap();
                let held: i64 = conn
                    .query_row(
                        "SELECT COALESCE(SUM(length(data) + COALESCE(length(reply_block), 0)), 0)
                         FROM mix_fragments",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                let total: i64 = conn
                    .query_row(crate::spool::custody::fragment_sql::TOTAL, [], |r| r.get(0))
                    .unwrap();
                assert_eq!(total, held, "{what}");
            }
        };
        for (tag, mix, index) in [(1, 1, 0), (2, 1, 1), (3, 2, 0), (4, 3, 0), (5, 3, 2)] {
            t.spool.custody(keep(tag, of(mix, index), u64::MAX)).await;
        }
        check("stored").await;
        t.set_now(30_000);
        assert_eq!(
            t.spool
                .answer_stalled(Duration::from_secs(10), 1, partial)
                .await
                .unwrap(),
            1
        );
        check("a reply block taken").await;
        let rows = ExitRows {
            mix_id: [1; 16],
            ack: None,
        };
        t.spool
            .enqueue_from(message("b", 1), super::Origin::Exit(rows), 1_000)
            .await;
        check("completed").await;
        t.spool.drop_fragments([2; 16]).await.unwrap();
        check("dropped").await;
        let s = Duration::from_secs(1);
        t.spool.prune_mixnet(s, s).await.unwrap();
        check("pruned").await;
        assert_eq!(t.spool.mixnet_counts().await.unwrap().exit_partial, 0);
        t.close().await;
    }

    /// A crash between taking the reply block and queueing the PARTIAL is
    /// the queueing failing: then nothing of the first step may stay
    /// committed, so the block is still there for the next round.
    #[tokio::test]
    async fn a_partial_that_cannot_be_queued_leaves_its_reply_block_in_place() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        t.spool.custody(store_with_block(1)).await;
        t.set_now(20_000);
        let stall = Duration::from_secs(10);
        // The second step fails: the writer cannot insert any packet.
        t.spool
            .call(|conn, _| {
                conn.execute_batch(
                    "CREATE TEMP TRIGGER no_packets BEFORE INSERT ON mix_packets
                     BEGIN SELECT RAISE(ABORT, 'disk gone'); END",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        assert!(t.spool.answer_stalled(stall, 8, partial).await.is_err());
        assert_eq!(
            stored_reply_block(&t).await.as_deref(),
            Some(&[1u8; 8][..]),
            "the reply block was taken without its PARTIAL"
        );
        assert_eq!(t.spool.mixnet_counts().await.unwrap().packets_ack, 0);
        t.spool
            .call(|conn, _| Ok(conn.execute_batch("DROP TRIGGER no_packets")?))
            .await
            .unwrap();
        // The next round sends the PARTIAL with that same block.
        assert_eq!(t.spool.answer_stalled(stall, 8, partial).await.unwrap(), 1);
        assert_eq!(t.spool.mixnet_counts().await.unwrap().packets_ack, 1);
        assert_eq!(stored_reply_block(&t).await, None);
        t.close().await;
    }

    /// The reply block stored with fragment 1 of message [7; 16].
    async fn stored_reply_block(t: &TestSpool) -> Option<Vec<u8>> {
        t.spool
            .call(|conn, _| {
                Ok(conn.query_row(
                    "SELECT reply_block FROM mix_fragments WHERE mix_id = ?1 AND idx = 1",
                    [&[7u8; 16][..]],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap()
    }
}

/// The operator's operations (`spool::ops`) on a spool the daemon's
/// committer holds open, as `pluto2 queue` runs beside the daemon.
mod queue_ops {
    use super::*;

    const MINUTE: u64 = 60_000;

    impl TestSpool {
        fn ops(&self) -> QueueOps {
            QueueOps::open(self.dir.path()).unwrap()
        }

        fn ids(&self) -> Vec<String> {
            let now = (self.clock)();
            let listing = self.ops().list(now).unwrap();
            listing.messages.into_iter().map(|m| m.queue_id).collect()
        }
    }

    fn one(id: &str) -> Selection {
        Selection::Ids(vec![id.to_string()])
    }

    #[tokio::test]
    async fn it_never_leases_held_mail_even_when_due_until_released() {
        let t = TestSpool::open(Duration::ZERO, 1000);
        t.enqueue("held", 1).await;
        t.enqueue("free", 1).await;
        let ids = t.ids();
        let held = t.ops().hold(&one(&ids[0])).unwrap();
        assert_eq!((held.messages, held.recipients), (1, 1));
        let batch = t.spool.lease(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(batch.leases.len(), 1);
        assert_eq!(batch.leases[0].body, b"free");
        assert_eq!(
            batch.next_due,
            Some(1000 + MINUTE),
            "only the lease's end is due; held mail never is"
        );
        let r = t.report();
        assert_eq!((r.held, r.leased, r.queued), (1, 1, 0));
        let free = batch.leases[0].recipients[0].id;
        t.spool
            .settle(vec![(free, Disposition::Delivered)])
            .await
            .unwrap();
        t.set_now(1000 + 60 * MINUTE);
        assert_eq!(t.lease_count(Duration::from_secs(60)).await, 0);
        t.ops().release(&one(&ids[0])).unwrap();
        let batch = t.spool.lease(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(batch.leases.len(), 1);
        assert_eq!(batch.leases[0].body, b"held");
        t.close().await;
    }

    /// Hold does not wait for the delivery in flight: the mark is set at
    /// once; a failed attempt leaves the message deferred and held, and the
    /// lease running out does not hand it out again.
    #[tokio::test]
    async fn a_hold_during_delivery_keeps_the_mail_after_a_failed_attempt() {
        let t = TestSpool::open(Duration::ZERO, 1000);
        t.enqueue("m", 1).await;
        let batch = t.spool.lease(10, Duration::from_secs(60)).await.unwrap();
        let id = t.ids().remove(0);
        t.ops().hold(&one(&id)).unwrap();
        let listed = t.ops().list(1000).unwrap().messages.remove(0);
        assert_eq!(
            (listed.state, listed.held),
            (ops::MessageState::InDelivery, true)
        );
        let rcpt = batch.leases[0].recipients[0].id;
        t.spool
            .settle(vec![(rcpt, Disposition::Retry { at: 2000 })])
            .await
            .unwrap();
        t.set_now(1000 + 60 * MINUTE);
        assert_eq!(t.lease_count(Duration::from_secs(60)).await, 0);
        let listed = t.ops().list(1000).unwrap().messages.remove(0);
        assert_eq!(listed.state, ops::MessageState::Held);
        assert_eq!(listed.attempts, 1);
        t.close().await;
    }

    /// Deleting mail a delivery holds: the message is gone for the
    /// operator at once, and the delivery's settle, even a retry, removes
    /// it instead of bringing it back; a message stored meanwhile (which
    /// may get the freed row ids) is untouched by that settle.
    #[tokio::test]
    async fn a_delete_during_delivery_is_not_undone_by_its_settle() {
        let t = TestSpool::open(Duration::ZERO, 1000);
        t.enqueue("doomed", 2).await;
        let batch = t.spool.lease(10, Duration::from_secs(60)).await.unwrap();
        let id = t.ids().remove(0);
        let deleted = t.ops().delete(&one(&id)).unwrap();
        assert_eq!((deleted.messages, deleted.recipients), (1, 2));
        assert!(t.ids().is_empty(), "listed after its deletion");
        assert!(matches!(
            t.ops().hold(&one(&id)),
            Err(QueueOpError::UnknownIds(_))
        ));
        t.enqueue("newcomer", 2).await;
        let settles = batch.leases[0]
            .recipients
            .iter()
            .map(|r| (r.id, Disposition::Retry { at: 2000 }))
            .collect();
        t.spool.settle(settles).await.unwrap();
        let r = t.report();
        assert_eq!((r.messages, r.recipients, r.queued), (1, 2, 2));
        assert_eq!(r.deleted_by_operator, 1);
        let batch = t.spool.lease(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(batch.leases.len(), 1);
        assert_eq!(batch.leases[0].body, b"newcomer");
        t.close().await;
    }

    /// A deletion whose delivery never settles (the daemon died) is
    /// completed at the next start, not turned back into queued mail.
    #[tokio::test]
    async fn a_delete_during_a_delivery_that_never_settles_ends_at_restart() {
        let t = TestSpool::open(Duration::ZERO, 1000);
        t.enqueue("doomed", 1).await;
        assert_eq!(t.lease_count(Duration::from_secs(60)).await, 1);
        let id = t.ids().remove(0);
        t.ops().delete(&one(&id)).unwrap();
        let t = t.reopen().await;
        let r = t.report();
        assert_eq!((r.messages, r.recipients), (0, 0));
        t.close().await;
    }

    /// A deletion whose delivery never settles (the worker hung) is
    /// completed by the first lease after its lease ran out, and not before.
    #[tokio::test]
    async fn a_delete_during_a_delivery_that_never_settles_ends_with_its_lease() {
        let t = TestSpool::open(Duration::ZERO, 1000);
        t.enqueue("doomed", 2).await;
        t.enqueue("kept", 1).await;
        let batch = t.spool.lease(1, Duration::from_secs(60)).await.unwrap();
        assert_eq!(batch.leases.len(), 1);
        // Equal release times are leased in random order: either message
        // may be the one in delivery; the other one stays.
        let doomed = batch.leases[0].body.clone();
        let left = 3 - batch.leases[0].recipients.len() as u64;
        let id = t
            .ops()
            .list(1000)
            .unwrap()
            .messages
            .iter()
            .find(|m| m.size_bytes == doomed.len() as u64)
            .unwrap()
            .queue_id
            .clone();
        t.ops().delete(&one(&id)).unwrap();
        t.set_now(1000 + 59_000);
        t.spool.lease(0, Duration::from_secs(60)).await.unwrap();
        assert_eq!(t.report().messages, 2, "removed while its lease ran");
        t.set_now(1000 + 60_000);
        t.spool.lease(0, Duration::from_secs(60)).await.unwrap();
        let r = t.report();
        assert_eq!((r.messages, r.recipients), (1, left));
        t.close().await;
    }

    #[tokio::test]
    async fn flush_makes_deferred_mail_due_now_and_leaves_the_rest() {
        let t = TestSpool::open(Duration::ZERO, 1000);
        t.enqueue("deferred", 1).await;
        t.enqueue("deferred and held", 1).await;
        let batch = t.spool.lease(10, Duration::from_secs(60)).await.unwrap();
        let later = 1000 + 600 * MINUTE;
        let settles = batch
            .leases
            .iter()
            .map(|l| (l.recipients[0].id, Disposition::Retry { at: later }))
            .collect();
        t.spool.settle(settles).await.unwrap();
        // Mail not tried yet waits for the mix's release time.
        t.spool.enqueue(message("young", 1), later).await;
        let ids = t.ids();
        let held = ids
            .iter()
            .find(|id| {
                let listing = t.ops().list(1000).unwrap();
                let m = listing
                    .messages
                    .iter()
                    .find(|m| &m.queue_id == *id)
                    .unwrap();
                m.size_bytes == "deferred and held".len() as u64
            })
            .unwrap()
            .clone();
        t.ops().hold(&one(&held)).unwrap();
        assert_eq!(t.lease_count(Duration::from_secs(60)).await, 0);
        let flushed = t.ops().flush(2000).unwrap();
        assert_eq!((flushed.messages, flushed.recipients), (1, 1));
        assert!(!flushed.queue_ids.contains(&held));
        t.set_now(2000);
        let batch = t.spool.lease(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(batch.leases.len(), 1);
        assert_eq!(batch.leases[0].body, b"deferred");
        let listing = t.ops().list(2000).unwrap();
        let young = listing
            .messages
            .iter()
            .find(|m| m.size_bytes == "young".len() as u64)
            .unwrap();
        assert_eq!(
            young.next_attempt_in_seconds,
            Some((later - 2000) / 1000),
            "never-tried mail keeps its mix release time"
        );
        t.close().await;
    }

    /// Release keeps the stored next attempt (the mix's release time, or
    /// the retry time): held mail does not leave earlier than it would have.
    #[tokio::test]
    async fn release_keeps_the_stored_release_time() {
        let t = TestSpool::open(Duration::ZERO, 1000);
        let at = 1000 + 30 * MINUTE;
        t.spool.enqueue(message("m", 1), at).await;
        t.ops().hold(&Selection::All).unwrap();
        t.ops().release(&Selection::All).unwrap();
        let listed = t.ops().list(1000).unwrap().messages.remove(0);
        assert_eq!(listed.state, ops::MessageState::Queued);
        assert_eq!(listed.next_attempt_in_seconds, Some(30 * 60));
        t.close().await;
    }

    /// One unknown id among known ones: an error naming it, and nothing
    /// changed (all or nothing).
    #[tokio::test]
    async fn an_unknown_id_changes_nothing() {
        let t = TestSpool::open(Duration::ZERO, 1000);
        t.enqueue("m", 1).await;
        let id = t.ids().remove(0);
        for bogus in ["0123456789abcdef", "not-an-id"] {
            let err = t
                .ops()
                .delete(&Selection::Ids(vec![id.clone(), bogus.into()]))
                .unwrap_err();
            match err {
                QueueOpError::UnknownIds(ids) => assert_eq!(ids, [bogus]),
                other => panic!("{other}"),
            }
        }
        let r = t.report();
        assert_eq!((r.messages, r.deleted_by_operator), (1, 0));
        t.close().await;
    }

    /// Queue ids are random: they say nothing of how many messages came
    /// between two (row ids would).
    #[tokio::test]
    async fn queue_ids_are_opaque() {
        let t = TestSpool::open(Duration::ZERO, 1000);
        for i in 0..20 {
            t.enqueue(&format!("m{i}"), 1).await;
        }
        let ids = t.ids();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        assert_ne!(sorted, ids, "ids sort in arrival order");
        t.close().await;
    }

    /// The listing and its JSON carry no address, subject or body.
    #[tokio::test]
    async fn the_listing_names_no_one() {
        let t = TestSpool::open(Duration::ZERO, 1000);
        t.enqueue("Subject: secret-subject\r\n\r\nsecret-body", 2)
            .await;
        let listing = t.ops().list(1000).unwrap();
        let text = format!("{listing}{}", serde_json::to_string(&listing).unwrap());
        for needle in ["example", "secret", "@"] {
            assert!(!text.contains(needle), "{needle} in {text}");
        }
        t.close().await;
    }
}

/// The gateway's mailboxes (`spool::held`): replies held for clients.
mod held_storage {
    use super::*;
    use crate::spool::custody::{
        Custody, CustodyOutcome, HeldTotals, HoldCaps, HoldDrop, MailboxKey,
    };

    const ROOMY: HoldCaps = HoldCaps {
        per_mailbox: u32::MAX,
        total_bytes: u64::MAX,
        mailboxes: u32::MAX,
    };

    fn key(n: u8) -> MailboxKey {
        [n; 32]
    }

    /// The reply with tag `tag` for mailbox `mailbox`: its reply id and
    /// payload are made from the tag, so a fetch shows which one it is.
    fn hold(tag: u32, mailbox: u8, len: usize, caps: HoldCaps) -> Custody {
        let mut t = [0xee; 32];
        t[..4].copy_from_slice(&tag.to_be_bytes());
        let mut reply_id = [0; 16];
        reply_id[..4].copy_from_slice(&tag.to_be_bytes());
        Custody::Hold {
            tag: t,
            epoch: 0,
            mailbox: key(mailbox),
            reply_id,
            payload: vec![tag as u8; len],
            caps,
        }
    }

    /// Which reply (by tag) a fetch of `mailbox` hands out, and its
    /// delivery id, for replies of [`LEN`] bytes.
    async fn fetch(t: &TestSpool, mailbox: u8) -> Option<(u32, [u8; 16])> {
        fetch_of(t, mailbox, LEN).await
    }

    /// The payload length of most tests' replies.
    const LEN: usize = 10;

    /// Like [`fetch`], for replies of `len` bytes; a fetch here finds no
    /// reply of another length in the mailbox.
    async fn fetch_of(t: &TestSpool, mailbox: u8, len: usize) -> Option<(u32, [u8; 16])> {
        let fetched = t.spool.fetch_held(key(mailbox), len).await.unwrap();
        assert_eq!(fetched.damaged, 0, "a reply deleted as damaged");
        let reply = fetched.reply?;
        let tag = u32::from_be_bytes(reply.reply_id[..4].try_into().unwrap());
        assert!(reply.payload.iter().all(|b| *b == tag as u8));
        Some((tag, reply.delivery))
    }

    fn totals(mailboxes: u64, replies: u64, bytes: u64) -> HeldTotals {
        HeldTotals {
            mailboxes,
            replies,
            bytes,
        }
    }

    /// The totals as kept, and as counted from the tables: they agree.
    async fn held(t: &TestSpool) -> HeldTotals {
        let kept = t.spool.held_totals().await.unwrap();
        let counted = t
            .spool
            .call(|conn, _| {
                let mut per_box = conn
                    .prepare(
                        "SELECT m.held, m.bytes, COUNT(h.id), COALESCE(SUM(length(h.payload)), 0)
                         FROM mix_mailboxes m LEFT JOIN mix_held h ON h.mailbox = m.mailbox
                         GROUP BY m.mailbox",
                    )
                    .unwrap();
                let rows: Vec<(i64, i64, i64, i64)> = per_box
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                for row in &rows {
                    assert_eq!((row.0, row.1), (row.2, row.3), "a mailbox's counts");
                    assert!(row.0 > 0, "an empty mailbox has no row");
                }
                let orphans: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM mix_held
                     WHERE mailbox NOT IN (SELECT mailbox FROM mix_mailboxes)",
                    [],
                    |r| r.get(0),
                )?;
                assert_eq!(orphans, 0);
                Ok(HeldTotals {
                    mailboxes: rows.len() as u64,
                    replies: rows.iter().map(|r| r.2 as u64).sum(),
                    bytes: rows.iter().map(|r| r.3 as u64).sum(),
                })
            })
            .await
            .unwrap();
        assert_eq!(kept, counted, "kept totals against the tables");
        kept
    }

    #[tokio::test]
    async fn a_held_reply_is_kept_once_and_its_tag_makes_it_a_duplicate() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        assert_eq!(
            t.spool.custody(hold(1, 1, 100, ROOMY)).await,
            CustodyOutcome::Stored
        );
        assert_eq!(
            t.spool.custody(hold(1, 1, 100, ROOMY)).await,
            CustodyOutcome::Duplicate
        );
        assert_eq!(held(&t).await, totals(1, 1, 100));
        let reply = t
            .spool
            .fetch_held(key(1), 100)
            .await
            .unwrap()
            .reply
            .unwrap();
        assert_eq!(&reply.reply_id[..4], &1u32.to_be_bytes());
        assert_eq!(reply.payload, vec![1; 100]);
        assert_eq!(
            t.spool.fetch_held(key(2), 100).await.unwrap(),
            Default::default()
        );
        // Nothing for a link to send: no packet was queued.
        assert!(t.spool.waiting_hops().await.unwrap().is_empty());
        t.close().await;
    }

    /// Past its mailbox's cap a reply is not kept, but its tag is: the
    /// same packet again is a duplicate, not a second try.
    #[tokio::test]
    async fn past_its_mailbox_cap_a_reply_is_dropped_and_its_tag_kept() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let caps = HoldCaps {
            per_mailbox: 3,
            ..ROOMY
        };
        for tag in 0..3 {
            assert_eq!(
                t.spool.custody(hold(tag, 1, 10, caps)).await,
                CustodyOutcome::Stored
            );
        }
        let dropped = CustodyOutcome::HeldDropped(HoldDrop::Mailbox);
        assert_eq!(t.spool.custody(hold(3, 1, 10, caps)).await, dropped);
        assert_eq!(
            t.spool.custody(hold(3, 1, 10, caps)).await,
            CustodyOutcome::Duplicate
        );
        // Another mailbox has room of its own.
        assert_eq!(
            t.spool.custody(hold(4, 2, 10, caps)).await,
            CustodyOutcome::Stored
        );
        assert_eq!(held(&t).await, totals(2, 4, 40));
        // A confirmation frees a place.
        let (_, delivery) = fetch(&t, 1).await.unwrap();
        assert!(t.spool.confirm_held(key(1), delivery).await.unwrap());
        assert_eq!(held(&t).await, totals(2, 3, 30));
        assert_eq!(
            t.spool.custody(hold(5, 1, 10, caps)).await,
            CustodyOutcome::Stored
        );
        assert_eq!(t.spool.custody(hold(6, 1, 10, caps)).await, dropped);
        t.close().await;
    }

    #[tokio::test]
    async fn past_the_byte_total_a_reply_is_dropped_and_its_tag_kept() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let caps = HoldCaps {
            total_bytes: 250,
            ..ROOMY
        };
        let stored = CustodyOutcome::Stored;
        assert_eq!(t.spool.custody(hold(0, 1, 100, caps)).await, stored);
        assert_eq!(t.spool.custody(hold(1, 2, 100, caps)).await, stored);
        let dropped = CustodyOutcome::HeldDropped(HoldDrop::Total);
        assert_eq!(t.spool.custody(hold(2, 3, 100, caps)).await, dropped);
        assert_eq!(
            t.spool.custody(hold(2, 3, 100, caps)).await,
            CustodyOutcome::Duplicate
        );
        // Up to the total exactly.
        assert_eq!(t.spool.custody(hold(3, 1, 50, caps)).await, stored);
        assert_eq!(t.spool.custody(hold(4, 1, 1, caps)).await, dropped);
        assert_eq!(held(&t).await, totals(2, 3, 250));
        // Confirming frees its bytes.
        let (tag, delivery) = fetch_of(&t, 2, 100).await.unwrap();
        assert_eq!(tag, 1);
        assert!(t.spool.confirm_held(key(2), delivery).await.unwrap());
        assert_eq!(held(&t).await, totals(1, 2, 150));
        assert_eq!(t.spool.custody(hold(5, 3, 100, caps)).await, stored);
        t.close().await;
    }

    /// Past the cap on mailboxes a reply for a new mailbox is dropped;
    /// mailboxes holding replies still take theirs. A mailbox whose last
    /// reply is confirmed is gone, and its place free.
    #[tokio::test]
    async fn past_the_mailbox_cap_only_a_new_mailbox_is_refused() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let caps = HoldCaps {
            mailboxes: 2,
            ..ROOMY
        };
        let stored = CustodyOutcome::Stored;
        assert_eq!(t.spool.custody(hold(0, 1, 10, caps)).await, stored);
        assert_eq!(t.spool.custody(hold(1, 2, 10, caps)).await, stored);
        let dropped = CustodyOutcome::HeldDropped(HoldDrop::Mailboxes);
        assert_eq!(t.spool.custody(hold(2, 3, 10, caps)).await, dropped);
        assert_eq!(
            t.spool.custody(hold(2, 3, 10, caps)).await,
            CustodyOutcome::Duplicate
        );
        assert_eq!(t.spool.custody(hold(3, 1, 10, caps)).await, stored);
        assert_eq!(held(&t).await, totals(2, 3, 30));
        let (_, delivery) = fetch(&t, 2).await.unwrap();
        assert!(t.spool.confirm_held(key(2), delivery).await.unwrap());
        assert_eq!(held(&t).await, totals(1, 2, 20));
        assert_eq!(t.spool.custody(hold(4, 3, 10, caps)).await, stored);
        assert_eq!(held(&t).await, totals(2, 3, 30));
        t.close().await;
    }

    /// Under `-min-free-space` nothing is kept, not even the tag: the
    /// previous hop's retry is taken once space is back.
    #[tokio::test]
    async fn under_the_free_space_floor_nothing_is_kept_not_even_the_tag() {
        use crate::spool::custody::BusyReason;
        let mut t = TestSpool::open(Duration::ZERO, 1_000);
        let dir = t.dir.path().to_path_buf();
        t.spool = t.spool.clone().with_free_space_reserve(&dir, u64::MAX);
        assert_eq!(
            t.spool.custody(hold(1, 1, 10, ROOMY)).await,
            CustodyOutcome::Busy(BusyReason::FreeSpace)
        );
        assert_eq!(held(&t).await, totals(0, 0, 0));
        t.spool = t.spool.clone().with_free_space_reserve(&dir, 0);
        assert_eq!(
            t.spool.custody(hold(1, 1, 10, ROOMY)).await,
            CustodyOutcome::Stored
        );
        t.close().await;
    }

    /// A fetch hands out the oldest reply, the same one until the client
    /// confirms it (a lost confirmation: the client gets it again); a
    /// confirmation counts once.
    #[tokio::test]
    async fn a_fetch_hands_out_the_oldest_until_it_is_confirmed() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        for tag in [7, 3, 5] {
            t.spool.custody(hold(tag, 1, 10, ROOMY)).await;
        }
        let (first, delivery) = fetch(&t, 1).await.unwrap();
        assert_eq!(first, 7);
        assert_eq!(
            fetch(&t, 1).await,
            Some((7, delivery)),
            "again, unconfirmed"
        );
        assert!(t.spool.confirm_held(key(1), delivery).await.unwrap());
        assert!(!t.spool.confirm_held(key(1), delivery).await.unwrap());
        let (second, next) = fetch(&t, 1).await.unwrap();
        assert_eq!(second, 3);
        assert_ne!(next, delivery);
        assert!(t.spool.confirm_held(key(1), next).await.unwrap());
        assert_eq!(fetch(&t, 1).await.map(|r| r.0), Some(5));
        assert_eq!(held(&t).await, totals(1, 1, 10));
        t.close().await;
    }

    /// A held reply no client could use (a payload or a delivery id of
    /// the wrong size: a bug, or a damaged disk) is deleted with its books
    /// when its mailbox is fetched, and counted: the mailbox hands out the
    /// next reply instead of standing still behind it for ever.
    #[tokio::test]
    async fn a_fetch_deletes_a_damaged_reply_and_serves_the_next() {
        use crate::spool::custody::Fetched;
        let t = TestSpool::open(Duration::ZERO, 1_000);
        // Mailbox 1: a payload a byte too long, a delivery id planted too
        // short below, then a sound reply. Mailbox 2: only a damaged one.
        t.spool.custody(hold(1, 1, LEN + 1, ROOMY)).await;
        t.spool.custody(hold(2, 1, LEN, ROOMY)).await;
        t.spool.custody(hold(3, 1, LEN, ROOMY)).await;
        t.spool.custody(hold(4, 2, LEN - 1, ROOMY)).await;
        let mut second = [0u8; 16];
        second[..4].copy_from_slice(&2u32.to_be_bytes());
        let planted = t
            .spool
            .call(move |conn, _| {
                Ok(conn.execute(
                    "UPDATE mix_held SET delivery = x'0102' WHERE reply_id = ?1",
                    [&second[..]],
                )?)
            })
            .await
            .unwrap();
        assert_eq!(planted, 1);
        assert_eq!(held(&t).await, totals(2, 4, 4 * LEN as u64));
        let fetched = t.spool.fetch_held(key(1), LEN).await.unwrap();
        assert_eq!(fetched.damaged, 2, "{fetched:?}");
        let reply = fetched.reply.expect("the sound reply behind them");
        assert_eq!(&reply.reply_id[..4], &3u32.to_be_bytes());
        assert_eq!(held(&t).await, totals(2, 2, 2 * LEN as u64 - 1));
        // Served as any other: the same until confirmed, then gone.
        assert_eq!(fetch(&t, 1).await, Some((3, reply.delivery)));
        assert!(t.spool.confirm_held(key(1), reply.delivery).await.unwrap());
        assert_eq!(fetch(&t, 1).await, None);
        // A mailbox that held only a damaged reply goes with it.
        assert_eq!(
            t.spool.fetch_held(key(2), LEN).await.unwrap(),
            Fetched {
                reply: None,
                damaged: 1
            }
        );
        assert_eq!(held(&t).await, totals(0, 0, 0));
        t.close().await;
    }

    /// Only the mailbox's own key confirms its reply.
    #[tokio::test]
    async fn a_confirmation_under_another_mailbox_deletes_nothing() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        t.spool.custody(hold(1, 1, 10, ROOMY)).await;
        t.spool.custody(hold(2, 2, 10, ROOMY)).await;
        let (_, delivery) = fetch(&t, 1).await.unwrap();
        assert!(!t.spool.confirm_held(key(2), delivery).await.unwrap());
        assert_eq!(held(&t).await, totals(2, 2, 20));
        assert_eq!(fetch(&t, 1).await, Some((1, delivery)));
        assert_eq!(fetch(&t, 2).await.map(|r| r.0), Some(2));
        assert!(t.spool.confirm_held(key(1), delivery).await.unwrap());
        assert_eq!(held(&t).await, totals(1, 1, 10));
        t.close().await;
    }

    /// Mailboxes not seen (fetched, confirmed, touched) for `idle` go
    /// with what they hold; the others stay, whatever their age.
    #[tokio::test]
    async fn idle_mailboxes_expire_with_their_replies_and_seen_ones_stay() {
        use crate::spool::held::SEEN_RESOLUTION_MS;
        let t = TestSpool::open(Duration::ZERO, 1_000);
        for (tag, mailbox) in [(0, 1), (1, 1), (2, 2), (3, 3), (4, 4)] {
            t.spool.custody(hold(tag, mailbox, 10, ROOMY)).await;
        }
        let hour = 3_600_000;
        t.set_now(1_000 + hour / 2);
        fetch(&t, 2).await.unwrap();
        t.spool.touch_mailbox(key(3)).await.unwrap();
        // A touch makes no mailbox.
        t.spool.touch_mailbox(key(9)).await.unwrap();
        assert_eq!(held(&t).await, totals(4, 5, 50));
        // A reply arriving is not its client seen.
        t.spool.custody(hold(5, 4, 10, ROOMY)).await;
        t.set_now(1_000 + hour + SEEN_RESOLUTION_MS);
        let idle = Duration::from_millis(hour);
        assert_eq!(t.spool.expire_mailboxes(idle).await.unwrap(), (2, 4));
        assert_eq!(held(&t).await, totals(2, 2, 20));
        assert_eq!(fetch(&t, 1).await, None);
        assert_eq!(fetch(&t, 4).await, None);
        assert_eq!(fetch(&t, 2).await.map(|r| r.0), Some(2));
        assert_eq!(fetch(&t, 3).await.map(|r| r.0), Some(3));
        assert_eq!(t.spool.expire_mailboxes(idle).await.unwrap(), (0, 0));
        t.close().await;
    }

    /// More idle mailboxes than one transaction expires: one call still
    /// expires them all.
    #[tokio::test]
    async fn expiry_takes_every_idle_mailbox_however_many() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        let n = crate::spool::held::EXPIRE_BATCH as u32 * 2 + 3;
        for tag in 0..n {
            t.spool
                .custody(hold(tag, (tag % 250) as u8, 1, ROOMY))
                .await;
        }
        let boxes = u64::from(n.min(250));
        assert_eq!(held(&t).await, totals(boxes, n.into(), n.into()));
        t.set_now(100_000);
        let expired = t
            .spool
            .expire_mailboxes(Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(expired, (boxes, n.into()));
        assert_eq!(held(&t).await, totals(0, 0, 0));
        t.close().await;
    }

    /// Held replies, their tags and the totals are on disk: a restart
    /// hands out the same reply and knows the same packet.
    #[tokio::test]
    async fn held_replies_survive_a_restart() {
        let t = TestSpool::open(Duration::ZERO, 1_000);
        t.spool.custody(hold(1, 1, 100, ROOMY)).await;
        t.spool.custody(hold(2, 1, 100, ROOMY)).await;
        let before = fetch_of(&t, 1, 100).await.unwrap();
        let t = t.reopen().await;
        assert_eq!(held(&t).await, totals(1, 2, 200));
        assert_eq!(fetch_of(&t, 1, 100).await, Some(before));
        assert_eq!(
            t.spool.custody(hold(1, 1, 100, ROOMY)).await,
            CustodyOutcome::Duplicate
        );
        assert!(t.spool.confirm_held(key(1), before.1).await.unwrap());
        assert_eq!(fetch_of(&t, 1, 100).await.map(|r| r.0), Some(2));
        t.close().await;
    }

    /// Storing a reply costs the same whatever is held: the SQLite VM
    /// steps of the hold path (every statement in `held::hold_sql`) for
    /// 200 replies, half into a mailbox holding 2,500 and half into new
    /// mailboxes beside 2,500 others, are within 1.5× of those for the
    /// first 200 (a count of the mailbox's replies, or of the mailboxes,
    /// per insert would grow with what is held). Steps, not time. And no
    /// statement of the path scans a table or an index: SQLite counts a
    /// whole table (`COUNT(*)`) in one VM step, so the steps alone would
    /// not show a count of the mailboxes; the query plans do.
    #[test]
    fn holding_a_reply_costs_the_same_whatever_is_held() {
        use crate::spool::custody::custody_refs;
        use crate::spool::held::hold_sql;
        use rusqlite::StatementStatus;
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::spool::schema::open_writer(dir.path()).unwrap();
        let steps = |conn: &rusqlite::Connection| -> i64 {
            hold_sql::ALL
                .iter()
                .map(|sql| {
                    conn.prepare_cached(sql)
                        .unwrap()
                        .get_status(StatementStatus::VmStep) as i64
                })
                .sum()
        };
        // Even tags into mailbox 0, odd ones each into a mailbox of its
        // own; 100 a transaction.
        let store = |conn: &mut rusqlite::Connection, from: u32, n: u32| {
            for chunk in (from..from + n).collect::<Vec<_>>().chunks(100) {
                let tx = conn.transaction().unwrap();
                let requests: Vec<Custody> = chunk
                    .iter()
                    .map(|&i| {
                        let Custody::Hold {
                            tag,
                            epoch,
                            reply_id,
                            payload,
                            caps,
                            ..
                        } = hold(i, 0, 64, ROOMY)
                        else {
                            unreachable!()
                        };
                        let mut mailbox = [0; 32];
                        if i % 2 == 1 {
                            mailbox[..4].copy_from_slice(&i.to_be_bytes());
                        }
                        Custody::Hold {
                            tag,
                            epoch,
                            mailbox,
                            reply_id,
                            payload,
                            caps,
                        }
                    })
                    .collect();
                let refs: Vec<&Custody> = requests.iter().collect();
                let outcomes = custody_refs(&tx, 1_000, &refs).unwrap();
                assert!(outcomes.iter().all(|o| *o == CustodyOutcome::Stored));
                tx.commit().unwrap();
            }
        };
        let at = steps(&conn);
        store(&mut conn, 0, 200);
        let first = steps(&conn) - at;
        store(&mut conn, 200, 4_800);
        let at = steps(&conn);
        store(&mut conn, 5_000, 200);
        let late = steps(&conn) - at;
        assert!(first > 0);
        eprintln!("hold path: {first} VM steps for the first 200, {late} after 5,000");
        assert!(
            late * 2 <= first * 3,
            "200 replies cost {first} steps at first and {late} after 5,000"
        );
        for sql in hold_sql::ALL {
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let nulls = std::iter::repeat_n(rusqlite::types::Null, plan.parameter_count());
            let details: Vec<String> = plan
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                details.iter().all(|d| !d.starts_with("SCAN")),
                "{sql}: {details:?}"
            );
        }
    }
}

/// The pinger's day on disk: saves add up per node and hour, the day
/// survives a restart, `pluto2 queue` (its own connection) and the
/// daemon's reader show the same, hours leave the day 24 h on, and a
/// save forgets the rows that left it.
#[tokio::test]
async fn the_loop_day_adds_up_survives_a_restart_and_slides() {
    use crate::loop_day::{HOUR_MS, HourCounts, hour_of};
    use loop_hours::LoopHour;

    // 10:30 UTC on some day.
    let t0 = 1_704_105_000_000;
    let t = TestSpool::open(Duration::from_secs(86400), t0);
    let hour = |node: u8, name: &str, at: u64, back: u64, lost: u64, ms: &[u64]| {
        let mut counts = HourCounts {
            back,
            lost,
            ..Default::default()
        };
        for m in ms {
            counts.latency.add(*m);
        }
        LoopHour {
            node: [node; 32],
            name: name.into(),
            hour: hour_of(at),
            counts,
        }
    };
    t.spool
        .save_loop_hours(vec![
            hour(1, "bob", t0, 3, 1, &[100, 200, 400]),
            hour(2, "carol", t0, 0, 4, &[]),
        ])
        .await
        .unwrap();
    // The same hour again, and the next one: they add up.
    t.spool
        .save_loop_hours(vec![
            hour(1, "bob", t0, 1, 0, &[300]),
            hour(1, "bob", t0 + HOUR_MS, 1, 1, &[5_000]),
        ])
        .await
        .unwrap();
    t.set_now(t0 + HOUR_MS);
    let shown = |r: &QueueReport| -> Vec<(String, u64, u64)> {
        r.node_loops
            .iter()
            .map(|n| (n.node.clone(), n.back, n.lost))
            .collect()
    };
    let r = t.report();
    assert_eq!(
        shown(&r),
        [("bob".to_string(), 5, 2), ("carol".to_string(), 0, 4)]
    );
    assert_eq!(r.node_loops[0].success_ratio, Some(5.0 / 7.0));
    assert_eq!(r.node_loops[1].success_ratio, Some(0.0));
    assert_eq!(r.node_loops[1].latency_median_seconds, None);
    let median = r.node_loops[0].latency_median_seconds.unwrap();
    assert!((median / 0.3 - 1.0).abs() < 0.045, "median {median}");
    assert_eq!(t.spool.reader().report().await.unwrap(), r, "one view");
    let text = r.to_string();
    assert!(text.contains("bob"), "{text}");
    assert!(text.contains("71.4%"), "{text}");

    // A restart: the day is still there.
    let t = t.reopen().await;
    assert_eq!(shown(&t.report()), shown(&r));

    // 24 h after the first hour it has left the day; the second has not.
    t.set_now(t0 + 24 * HOUR_MS);
    assert_eq!(shown(&t.report()), [("bob".to_string(), 1, 1)]);
    t.set_now(t0 + 25 * HOUR_MS);
    assert!(t.report().node_loops.is_empty());
    // The next save deletes what left the day, and writes nothing old.
    t.spool
        .save_loop_hours(vec![hour(2, "carol", t0, 9, 9, &[])])
        .await
        .unwrap();
    let rows: i64 = rusqlite::Connection::open(t.dir.path().join(SPOOL_FILE))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM mix_loop_hours", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    t.close().await;
}
