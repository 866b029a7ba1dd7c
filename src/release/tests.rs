//! Statistical checks of the mix, with fixed seeds: each would fail if the
//! property it names were broken (e.g. jitter not independent, a strategy
//! sampling the wrong distribution, bounds ignored).

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::testkit::ks_statistic;

fn batch() -> MixPolicy {
    MixPolicy::Batch {
        window: Duration::from_secs(30),
        jitter_min: Duration::from_millis(100),
        jitter_max: Duration::from_secs(2),
    }
}

/// Release order of `n` messages accepted in input order during one window.
fn release_order(policy: &MixPolicy, n: usize, rng: &mut StdRng) -> Vec<usize> {
    let accepted_at = 1_700_000_000_000u64;
    let mut times: Vec<(u64, usize)> = (0..n)
        .map(|i| (policy.release_at(accepted_at + i as u64 * 10, rng), i))
        .collect();
    times.sort();
    times.into_iter().map(|(_, i)| i).collect()
}

/// Messages per batch in the shuffle test.
const SHUFFLE_N: usize = 8;

/// Chi-square over (input index, output position) with 8×8 cells, 49
/// degrees of freedom: the 0.999 quantile.
const SHUFFLE_CRITICAL: f64 = 85.4;

/// Chi-square statistic of the release positions of `SHUFFLE_N` inputs
/// over `batches` batches, against "every input equally likely at every
/// position".
fn shuffle_chi_square(policy: &MixPolicy, batches: usize, rng: &mut StdRng) -> f64 {
    let mut counts = vec![vec![0u32; SHUFFLE_N]; SHUFFLE_N];
    for _ in 0..batches {
        for (pos, input) in release_order(policy, SHUFFLE_N, rng)
            .into_iter()
            .enumerate()
        {
            counts[input][pos] += 1;
        }
    }
    let expected = batches as f64 / SHUFFLE_N as f64;
    counts
        .iter()
        .flatten()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

#[test]
fn batch_release_order_is_a_uniform_shuffle() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let chi2 = shuffle_chi_square(&batch(), 8000, &mut rng);
    assert!(
        chi2 < SHUFFLE_CRITICAL,
        "chi-square {chi2:.1}: release order depends on input order"
    );
}

#[test]
fn a_fixed_order_policy_would_fail_the_shuffle_test() {
    // The same statistic, threshold and sample size on an order-preserving
    // policy: the test above can fail.
    let mut rng = StdRng::seed_from_u64(1);
    let chi2 = shuffle_chi_square(&MixPolicy::Immediate, 8000, &mut rng);
    assert!(
        chi2 >= SHUFFLE_CRITICAL,
        "chi-square {chi2:.1} accepts a fixed order as a shuffle"
    );
}

#[test]
fn a_batch_leaves_within_one_window_plus_one_jitter() {
    let mut rng = StdRng::seed_from_u64(2);
    let window_start = 1_700_000_010_000u64 / 30_000 * 30_000;
    let window_end = window_start + 30_000;
    for i in 0..500u64 {
        let accepted = window_start + i * 59; // spread over the window
        let t = batch().release_at(accepted, &mut rng);
        assert!(
            t >= window_end + 100 && t <= window_end + 2000,
            "{t} outside [end+100ms, end+2s]"
        );
    }
}

/// One-sample Kolmogorov–Smirnov statistic against `cdf`.
#[test]
fn delay_strategies_match_their_distributions_and_bounds() {
    let min = Duration::from_secs(3600);
    let max = Duration::from_secs(24 * 3600);
    let width = (max - min).as_millis() as f64;
    let n = 20_000;
    // Critical value at alpha = 0.001: 1.95 / sqrt(n).
    let critical = 1.95 / (n as f64).sqrt();
    for (seed, strategy) in [
        (10, DelayStrategy::Exponential),
        (11, DelayStrategy::Constant),
        (12, DelayStrategy::Poisson),
    ] {
        let policy = MixPolicy::Pool { min, max, strategy };
        let mut rng = StdRng::seed_from_u64(seed);
        let offsets: Vec<f64> = (0..n)
            .map(|_| {
                let t = policy.release_at(0, &mut rng);
                assert!(
                    t >= min.as_millis() as u64 && t <= max.as_millis() as u64,
                    "{strategy:?} out of bounds: {t}"
                );
                t as f64 - min.as_millis() as f64
            })
            .collect();
        let d = ks_statistic(offsets.clone(), |x| strategy.cdf(x, width));
        assert!(d < critical, "{strategy:?}: KS {d:.4} >= {critical:.4}");
        // And each is distinguishable from the others: the test has teeth.
        for other in [
            DelayStrategy::Exponential,
            DelayStrategy::Constant,
            DelayStrategy::Poisson,
        ] {
            if other != strategy {
                let d = ks_statistic(offsets.clone(), |x| other.cdf(x, width));
                assert!(d > critical, "{strategy:?} samples also fit {other:?}");
            }
        }
    }
}

#[test]
fn immediate_release_is_now() {
    let mut rng = StdRng::seed_from_u64(3);
    assert_eq!(MixPolicy::Immediate.release_at(42, &mut rng), 42);
}
