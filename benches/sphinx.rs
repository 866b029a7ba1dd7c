//! The cost of one hop's Sphinx work, side by side with the crate's own
//! processing and with the primitives underneath, in one run:
//!
//! * `hop/pluto2`: `wire::packet::process` as a hop calls it: exact size
//!   check, parse, shared secret and replay tag, unwrap, re-serialise.
//! * `hop/crate`: `sphinx_packet::SphinxPacket::process` on a parsed packet,
//!   the crate's own path (no replay tag, no serialisation).
//! * `primitives`: two X25519 scalar multiplications (the shared secret and
//!   the blinding of the next hop's group element) plus one payload cipher
//!   pass (Lioness over the 8,192-byte payload).
//!
//!     cargo bench --bench sphinx
//!
//! BENCHMARKS.md reports the medians as ratios to `primitives`.

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pluto2::wire::packet::{self, NodeId, PACKET_SIZE, RouteHop, WirePacket};
use sphinx_packet::SphinxPacket;
use sphinx_packet::payload::Payload;
use x25519_dalek::{PublicKey, StaticSecret};

fn secret(seed: u8) -> StaticSecret {
    StaticSecret::from([seed; 32])
}

fn route() -> Vec<RouteHop> {
    (1..=3)
        .map(|i| RouteHop {
            id: NodeId([i; 32]),
            mix_key: PublicKey::from(&secret(i)),
            delay: Duration::from_millis(10),
        })
        .collect()
}

fn hop(c: &mut Criterion) {
    let wire = packet::build(&[7u8; 7_000], &route()).unwrap();
    assert_eq!(wire.as_bytes().len(), PACKET_SIZE);
    let key = secret(1);
    let mut group = c.benchmark_group("hop");
    group.bench_function("pluto2", |b| {
        b.iter(|| {
            let (tag, processed) = packet::process(&wire, &key);
            assert!(processed.is_ok());
            tag
        })
    });
    group.bench_function("crate", |b| {
        b.iter_batched(
            || SphinxPacket::from_bytes(wire.as_bytes()).unwrap(),
            |p| p.process(&key).is_ok(),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    c.bench_function("primitives", |b| {
        let peer = PublicKey::from(&secret(9));
        let blinding = secret(5);
        let payload_bytes = vec![3u8; packet::PAYLOAD_SIZE];
        let lioness_key = [4u8; 192];
        b.iter_batched(
            || Payload::from_bytes(&payload_bytes).unwrap(),
            |payload| {
                let shared = key.diffie_hellman(&peer);
                let blinded = blinding.diffie_hellman(&PublicKey::from(*shared.as_bytes()));
                let unwrapped = payload.unwrap(lioness_key).unwrap();
                (blinded, unwrapped.len())
            },
            BatchSize::SmallInput,
        )
    });
}

/// Building a 3-hop packet at the entry (one per fragment).
fn build(c: &mut Criterion) {
    let route = route();
    c.bench_function("build/3-hop", |b| {
        b.iter(|| packet::build(&[7u8; 7_000], &route).unwrap())
    });
    let _ = WirePacket::from_slice(&[0; PACKET_SIZE]).unwrap();
}

criterion_group!(benches, hop, build);
criterion_main!(benches);
