//! The Mix group: when direct-mode mail leaves (batches with jitter, or the
//! long delay pool), cover messages and padding. It turns the flags into a
//! `MixPolicy`; which of the two timing schemes applies is decided here and
//! nowhere else.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, bad, parse_duration};
use crate::release::{DelayStrategy, MixPolicy};

/// When mail leaves, and what hides its timing and size.
#[derive(Debug, Args)]
#[command(next_help_heading = "Mix")]
pub struct MixArgs {
    /// Mix batch window: mail accepted in a window leaves after it ends (0 = no batching).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub batch_window: Duration,
    /// Smallest random per-message delay inside a batch.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub jitter_min: Duration,
    /// Largest random per-message delay inside a batch.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub jitter_max: Duration,
    /// Use the long delay pool instead of batches.
    #[arg(long)]
    pub delay: bool,
    /// Shortest delay in the pool.
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    pub min_delay: Duration,
    /// Longest delay in the pool.
    #[arg(long, default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub max_delay: Duration,
    /// Pool delay distribution: exponential, constant or poisson.
    #[arg(long, default_value = "exponential", value_name = "STRATEGY")]
    pub delay_strategy: DelayStrategy,
    /// Mean interval of cover messages, a Poisson process (0 = no cover).
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub cover_interval: Duration,
    /// Pad every outgoing DATA to a multiple of this many bytes (0 = off).
    #[arg(long, default_value_t = 8192, value_name = "BYTES")]
    pub pad_block: usize,
}

/// Settings of release timing, cover traffic and padding.
#[derive(Debug, Clone)]
pub struct MixConfig {
    pub policy: MixPolicy,
    /// Mean gap between cover messages; `None` = no cover.
    pub cover_interval: Option<Duration>,
    /// Zero turns padding off.
    pub pad_block: usize,
}

impl MixArgs {
    pub(super) fn validate(self) -> Result<MixConfig, ConfigError> {
        if self.pad_block != 0 && self.pad_block < 512 {
            return Err(bad(
                "-pad-block",
                &self.pad_block.to_string(),
                "must be 0 (off) or at least 512 bytes",
            ));
        }
        Ok(MixConfig {
            policy: self.policy()?,
            cover_interval: (!self.cover_interval.is_zero()).then_some(self.cover_interval),
            pad_block: self.pad_block,
        })
    }

    /// -delay wins over the batch flags; a zero -batch-window without it
    /// means no mixing at all.
    fn policy(&self) -> Result<MixPolicy, ConfigError> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.delay {
            if self.min_delay > self.max_delay {
                return Err(bad(
                    "-min-delay",
                    &show(self.min_delay),
                    &format!("must not exceed -max-delay ({})", show(self.max_delay)),
                ));
            }
            return Ok(MixPolicy::Pool {
                min: self.min_delay,
                max: self.max_delay,
                strategy: self.delay_strategy,
            });
        }
        if self.batch_window.is_zero() {
            return Ok(MixPolicy::Immediate);
        }
        if self.jitter_min > self.jitter_max {
            return Err(bad(
                "-jitter-min",
                &show(self.jitter_min),
                &format!("must not exceed -jitter-max ({})", show(self.jitter_max)),
            ));
        }
        Ok(MixPolicy::Batch {
            window: self.batch_window,
            jitter_min: self.jitter_min,
            jitter_max: self.jitter_max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::validated;

    fn policy(extra: &[&str]) -> Result<MixPolicy, String> {
        validated(extra)
            .map(|c| c.mix.policy)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn it_batches_by_default_and_lets_the_pool_win_over_batches() {
        let ms = Duration::from_millis;
        assert_eq!(
            policy(&[]).unwrap(),
            MixPolicy::Batch {
                window: ms(30_000),
                jitter_min: ms(100),
                jitter_max: ms(2_000),
            }
        );
        assert_eq!(
            policy(&["-batch-window", "0"]).unwrap(),
            MixPolicy::Immediate
        );
        let pool = [
            "-delay",
            "-batch-window",
            "0",
            "-min-delay",
            "1m",
            "-max-delay",
            "1m",
            "-delay-strategy",
            "constant",
        ];
        assert_eq!(
            policy(&pool).unwrap(),
            MixPolicy::Pool {
                min: ms(60_000),
                max: ms(60_000),
                strategy: DelayStrategy::Constant,
            }
        );
    }

    #[test]
    fn it_refuses_a_lower_bound_above_its_upper_bound() {
        assert_eq!(
            policy(&["-delay", "-min-delay", "2h", "-max-delay", "1h"]).unwrap_err(),
            "-min-delay 2h: must not exceed -max-delay (1h)"
        );
        assert_eq!(
            policy(&["-jitter-min", "3s", "-jitter-max", "1s"]).unwrap_err(),
            "-jitter-min 3s: must not exceed -jitter-max (1s)"
        );
    }

    #[test]
    fn it_pads_to_no_block_or_one_of_at_least_512_bytes_and_cover_is_optional() {
        let mix = |extra: &[&str]| validated(extra).map(|c| c.mix);
        assert_eq!(mix(&[]).unwrap().pad_block, 8192);
        assert_eq!(mix(&["-pad-block", "0"]).unwrap().pad_block, 0);
        assert_eq!(mix(&["-pad-block", "512"]).unwrap().pad_block, 512);
        assert_eq!(
            mix(&["-pad-block", "511"]).unwrap_err().to_string(),
            "-pad-block 511: must be 0 (off) or at least 512 bytes"
        );
        assert_eq!(
            mix(&[]).unwrap().cover_interval,
            Some(Duration::from_secs(15))
        );
        assert_eq!(mix(&["-cover-interval", "0"]).unwrap().cover_interval, None);
    }
}
