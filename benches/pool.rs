//! Mix pool throughput: how fast the relay side can take released mail out
//! of a spool holding 10,000 queued messages (lease, then settle as
//! delivered), i.e. the pool's own cost with delivery itself taken away.
//!
//!     cargo bench --bench pool

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pluto2::envelope::{Envelope, Message};
use pluto2::spool::{Disposition, Spool};
use pluto2::time::system_clock;

const QUEUED: usize = 10_000;

fn message(i: usize) -> Message {
    Message {
        envelope: Envelope {
            sender: "a@example.net".into(),
            recipients: vec![format!("r{i}@example.org")],
            smtputf8: false,
            eight_bit: false,
            to_own_name: false,
        },
        body: format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(4000)).into_bytes(),
    }
}

/// A spool with `QUEUED` messages, all already released.
fn filled(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, Spool, pluto2::spool::SpoolCloser) {
    let dir = tempfile::tempdir().unwrap();
    let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, system_clock()).unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..QUEUED {
            let spool = spool.clone();
            tasks.push(tokio::spawn(
                async move { spool.enqueue(message(i), 0).await },
            ));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    (dir, spool, closer)
}

fn drain(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("pool");
    group.sample_size(10);
    group.throughput(criterion::Throughput::Elements(QUEUED as u64));
    group.bench_function("drain 10k released messages (lease 64 + settle)", |b| {
        b.iter_batched(
            || filled(&rt),
            |(dir, spool, closer)| {
                rt.block_on(async {
                    loop {
                        let batch = spool.lease(64, Duration::from_secs(600)).await.unwrap();
                        if batch.leases.is_empty() {
                            break;
                        }
                        let outcomes = batch
                            .leases
                            .iter()
                            .flat_map(|l| {
                                l.recipients.iter().map(|r| (r.id, Disposition::Delivered))
                            })
                            .collect();
                        spool.settle(outcomes).await.unwrap();
                    }
                });
                drop(spool);
                rt.block_on(closer.closed());
                drop(dir);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, drain);
criterion_main!(benches);
