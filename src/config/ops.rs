//! The Operations group: running the node (the `[STATS]` interval, log
//! level and `-debug`, the metrics endpoint, the flags file). Where metrics
//! may listen and how a flags file is read each have a file of their own
//! (`metrics.rs`, `flags_file.rs`); this one only holds the flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::metrics::{MetricsAddr, metrics_addr};
use super::{ConfigError, at_least_a_second, parse_duration};

/// Running the node: logs and their detail.
#[derive(Debug, Args)]
#[command(next_help_heading = "Operations")]
pub struct OpsArgs {
    /// How often the [STATS] line is logged.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub stats_interval: Duration,
    /// Verbose logs, including addresses (never message content); implies -log-level debug.
    #[arg(long)]
    pub debug: bool,
    /// Serve /metrics, /live and /ready over HTTP on a loopback address
    /// (127.0.0.1:9900) or a unix socket (an absolute path). Off when absent.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Detail of pluto2's own log lines: error, warn, info or debug (addresses only with -debug).
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: LogLevel,
    /// More flags, one a line as on the command line; read at start and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub flags_file: Option<PathBuf>,
}

/// How much pluto2 itself logs (dependencies log warnings only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// Settings of logging and metrics.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    pub stats_interval: Duration,
    /// Reveal identifying values in logs (and log at debug level).
    pub debug: bool,
    /// pluto2's own log level; `Debug` whenever `debug` is on.
    pub log_level: LogLevel,
    /// Where `/metrics`, `/live` and `/ready` are served (`-metrics`).
    pub metrics: Option<MetricsAddr>,
}

impl OpsArgs {
    pub(super) fn validate(self) -> Result<OpsConfig, ConfigError> {
        at_least_a_second("-stats-interval", self.stats_interval)?;
        Ok(OpsConfig {
            stats_interval: self.stats_interval,
            debug: self.debug,
            log_level: if self.debug {
                LogLevel::Debug
            } else {
                self.log_level
            },
            metrics: self.metrics.as_deref().map(metrics_addr).transpose()?,
        })
    }
}
