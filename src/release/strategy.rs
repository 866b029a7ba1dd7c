//! Delay distributions of the long delay pool (`-delay`).
//!
//! Every strategy draws an offset in `[0, W]` with `W = max − min` and adds
//! it to `min`, so the bounds always hold. Each one also exposes its CDF, so
//! tests can check samples against the distribution they claim
//! (Kolmogorov–Smirnov) instead of trusting the sampling code.

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayStrategy {
    /// Truncated exponential with mean parameter μ = W/3: memoryless, so
    /// the time already spent in the pool says little about the time left.
    /// Most delays are short, a long tail reaches `max`. (Truncation at W
    /// brings the actual mean to about 0.28·W.)
    Exponential,
    /// Uniform over `[min, max]` (what Mixmaster calls a constant pool
    /// delay range): mean at the middle.
    Constant,
    /// Waiting time to the 4th event of a Poisson process (Erlang k = 4),
    /// scaled so its mean is W/2 and truncated to W: delays cluster around
    /// the middle of the range, rarely near the bounds.
    Poisson,
}

impl std::str::FromStr for DelayStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exponential" => Ok(Self::Exponential),
            "constant" => Ok(Self::Constant),
            "poisson" => Ok(Self::Poisson),
            _ => Err("expected exponential, constant or poisson".into()),
        }
    }
}

/// Erlang shape of the Poisson strategy.
const ERLANG_K: u32 = 4;

impl DelayStrategy {
    /// Draws an offset in `[0, width]`.
    pub fn sample<R: Rng + ?Sized>(self, width: f64, rng: &mut R) -> f64 {
        if width <= 0.0 {
            return 0.0;
        }
        match self {
            Self::Constant => rng.random::<f64>() * width,
            Self::Exponential => {
                // Inverse CDF of the exponential truncated at `width`.
                let mu = width / 3.0;
                let u: f64 = rng.random();
                let tail = 1.0 - (-width / mu).exp();
                -mu * (1.0 - u * tail).ln()
            }
            Self::Poisson => {
                // Sum of k exponentials; redraw the rare value past `width`.
                let rate = f64::from(ERLANG_K) / (width / 2.0);
                loop {
                    let x: f64 = (0..ERLANG_K)
                        .map(|_| -(1.0 - rng.random::<f64>()).ln() / rate)
                        .sum();
                    if x <= width {
                        return x;
                    }
                }
            }
        }
    }

    /// P(offset ≤ x) for offsets drawn by `sample(width)`.
    pub fn cdf(self, x: f64, width: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        if x >= width {
            return 1.0;
        }
        match self {
            Self::Constant => x / width,
            Self::Exponential => {
                let mu = width / 3.0;
                (1.0 - (-x / mu).exp()) / (1.0 - (-width / mu).exp())
            }
            Self::Poisson => {
                let rate = f64::from(ERLANG_K) / (width / 2.0);
                erlang_cdf(x, rate) / erlang_cdf(width, rate)
            }
        }
    }
}

fn erlang_cdf(x: f64, rate: f64) -> f64 {
    let lx = rate * x;
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 1..ERLANG_K {
        term *= lx / f64::from(n);
        sum += term;
    }
    1.0 - (-lx).exp() * sum
}
