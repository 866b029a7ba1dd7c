//! Fixtures shared by unit tests across modules.

use std::sync::Arc;

use crate::time::{Clock, UnixMillis};

/// A clock that follows tokio's time, so tests on paused time move it with
/// `tokio::time::advance` or auto-advance; starts at `base`. It enters the
/// runtime on every read because the spool's committer calls it from its
/// own OS thread, where tokio's `Instant::now` would otherwise be real time.
pub(crate) fn tokio_clock(base: UnixMillis) -> Clock {
    let runtime = tokio::runtime::Handle::current();
    let start = tokio::time::Instant::now();
    Arc::new(move || {
        let _inside = runtime.enter();
        base + start.elapsed().as_millis() as u64
    })
}

/// The Kolmogorov–Smirnov statistic of `xs` against a continuous `cdf`.
pub(crate) fn ks_statistic(mut xs: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len() as f64;
    xs.iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = cdf(x);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max)
}

/// The KS critical value at the 0.1 % level for `n` samples (1.95 / √n).
pub(crate) fn ks_critical(n: usize) -> f64 {
    1.95 / (n as f64).sqrt()
}
