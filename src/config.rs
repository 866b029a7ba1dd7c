//! Command line: the flag contract of DESIGN.md, parsed with clap.
//!
//! Operators coming from the Go implementation type `-name x` and `-name=x`;
//! clap only knows `--name`, so [`normalize_args`] rewrites single-dash long
//! flags before clap sees them. Every setting is validated here, once, so the
//! rest of the daemon can trust its [`Config`] and never re-check it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::address::OnionName;

/// Exit status for a bad command line or unusable setting (sysexits EX_USAGE),
/// so systemd and scripts can tell "fix your config" from a runtime failure.
pub const EX_USAGE: i32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Cli(String),
    #[error(
        "-name is missing: pass -name <56 chars>.onion, or -hs-hostname-file pointing at the \
         `hostname` file Tor writes in your HiddenServiceDir (see contrib/torrc.example)"
    )]
    NoName,
    #[error("-name {value:?}: {source}; copy it from your HiddenServiceDir/hostname")]
    BadName {
        value: String,
        source: crate::address::OnionError,
    },
    #[error(
        "-hs-hostname-file {path}: {reason}; point it at the `hostname` file in Tor's HiddenServiceDir"
    )]
    HostnameFile { path: String, reason: String },
    #[error("{flag} {value}: {reason}")]
    BadValue {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "-data-dir {path}: {reason}; pass -data-dir with a directory pluto2 may create and write"
    )]
    DataDir { path: String, reason: String },
}

#[derive(Debug, Parser)]
#[command(
    name = "pluto2",
    version,
    about = "SMTP relay for Tor onion services",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what is waiting in the spool (counts only, never addresses).
    Queue(QueueArgs),
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Directory holding the spool database.
    #[arg(long, default_value = "pluto2-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// This node's v3 onion name (56 base32 characters + ".onion").
    #[arg(long, value_name = "ONION")]
    pub name: Option<String>,
    /// Tor's HiddenServiceDir/hostname file, read when -name is absent.
    #[arg(long, value_name = "FILE")]
    pub hs_hostname_file: Option<PathBuf>,
    /// SMTP listen address.
    #[arg(long, default_value = "127.0.0.1:2525", value_name = "IP:PORT")]
    pub addr: SocketAddr,
    /// Spool database and node state (created with mode 0700).
    #[arg(long, default_value = "pluto2-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Largest message accepted, in bytes (advertised in SIZE).
    #[arg(long, default_value_t = 10_485_760, value_name = "BYTES")]
    pub max_message_size: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_recipients: usize,
    /// Concurrent SMTP sessions; the excess client gets 421.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,
    /// Sessions allowed per client identity in each -rate-window.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub rate_limit: u32,
    /// Window for -rate-limit, e.g. 1m.
    #[arg(long, default_value = "1m", value_parser = parse_duration, value_name = "DURATION")]
    pub rate_window: Duration,
    /// Close a session that sends nothing for this long (RFC 5321 4.5.3.2 suggests 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// How long identical messages are refused as replays (0 = no replay check).
    #[arg(long, default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub replay_window: Duration,
    /// Expect a PROXY v1 header (Tor's HiddenServiceExportCircuitID haproxy).
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Tor SOCKS5 proxy; every outgoing connection goes through it.
    #[arg(long, default_value = "127.0.0.1:9050", value_name = "IP:PORT")]
    pub tor_socks: SocketAddr,
    /// DNS resolver queried for MX over TCP, through Tor.
    #[arg(long, default_value = "9.9.9.9:53", value_name = "IP:53")]
    pub dns_server: SocketAddr,
    /// Concurrent relay workers.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub workers: usize,
    /// Delivery attempts per recipient before giving up (no bounce is sent).
    #[arg(long, default_value_t = 9, value_name = "N")]
    pub retries: u32,
    /// First retry delay; each further retry doubles it (with jitter).
    #[arg(long, default_value = "1m", value_parser = parse_duration, value_name = "DURATION")]
    pub retry_base: Duration,
    /// Bound on one SMTP delivery.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub delivery_timeout: Duration,
    /// Envelope sender for relayed mail (default nobody@<-name>; `<>` for the null sender).
    #[arg(long, value_name = "ADDRESS")]
    pub envelope_from: Option<String>,
    /// Hide the client's envelope sender (and, later, identifying headers).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub sanitize: bool,
    /// Require a valid certificate for STARTTLS to clearnet hosts.
    #[arg(long)]
    pub tls_verify: bool,
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
    pub delay_strategy: crate::mix::DelayStrategy,
    /// Mean interval of cover messages, a Poisson process (0 = no cover).
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub cover_interval: Duration,
    /// Pad every outgoing DATA to a multiple of this many bytes (0 = off).
    #[arg(long, default_value_t = 8192, value_name = "BYTES")]
    pub pad_block: usize,
    /// How often the [STATS] line is logged.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub stats_interval: Duration,
    /// From header that replaces the author's when -sanitize is on.
    #[arg(long, value_name = "HEADER", default_value = "Anonymous <nobody@NAME>")]
    pub anon_from: String,
    /// Port of the next hop's SMTP server (25 everywhere; change only for tests).
    #[arg(long, default_value_t = 25, value_name = "PORT")]
    pub smtp_port: u16,
    /// Verbose logs, including addresses (never message content).
    #[arg(long)]
    pub debug: bool,
}

/// Parses `30s`, `1m`, `24h`, `1h30m` and a bare `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e} (expected a duration such as 30s, 1m, 24h)"))
}

/// Validated settings of the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: OnionName,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub rate_limit: NonZeroU32,
    pub rate_window: Duration,
    pub idle_timeout: Duration,
    pub replay_window: Duration,
    pub proxy_protocol: bool,
    pub debug: bool,
    pub relay: RelayConfig,
    pub mix: crate::mix::MixPolicy,
    /// Mean gap between cover messages; `None` = no cover.
    pub cover_interval: Option<Duration>,
    pub pad_block: usize,
    pub stats_interval: Duration,
    /// `Some(from header)` when exit headers are sanitized.
    pub sanitize_from: Option<String>,
}

/// Settings of outbound delivery.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub tor_socks: SocketAddr,
    pub dns_server: SocketAddr,
    pub workers: usize,
    pub retries: u32,
    pub retry_base: Duration,
    pub delivery_timeout: Duration,
    /// `None`: pass the client's MAIL FROM on (only with -sanitize=false
    /// and no -envelope-from). `Some("")` is the null sender.
    pub envelope_from: Option<String>,
    pub tls_verify: bool,
    pub smtp_port: u16,
}

/// Rewrites Go-style `-flag` and `-flag=value` into `--flag`, leaving `-h`,
/// `--flag`, values and everything after `--` alone.
pub fn normalize_args<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest_literal = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest_literal {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rest_literal = true;
            out.push(arg);
            continue;
        }
        let bytes = arg.as_bytes();
        let is_single_dash_long =
            bytes.len() > 2 && bytes[0] == b'-' && bytes[1].is_ascii_alphabetic();
        if is_single_dash_long {
            out.push(format!("-{arg}"));
        } else {
            out.push(arg);
        }
    }
    out
}

/// Parses the command line. Help and version requests come back as
/// `Err(clap::Error)` for the caller to print; everything else is one line.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(normalize_args(args))
}

/// Reduces clap's multi-line report to its first line, which names the flag.
pub fn one_line(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid command line")
        .trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first}; run `pluto2 --help` for the flags")
}

impl DaemonArgs {
    /// Checks every setting and prepares the data directory.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let name = self.resolve_name()?;
        if self.max_message_size < 1024 {
            return Err(ConfigError::BadValue {
                flag: "-max-message-size",
                value: self.max_message_size.to_string(),
                reason: "must be at least 1024 bytes".into(),
            });
        }
        if self.max_recipients == 0 {
            return Err(bad("-max-recipients", "0", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(bad("-max-connections", "0", "must be at least 1"));
        }
        let rate_limit = NonZeroU32::new(self.rate_limit)
            .ok_or_else(|| bad("-rate-limit", "0", "must be at least 1 session per window"))?;
        if self.rate_window.is_zero() {
            return Err(bad(
                "-rate-window",
                "0",
                "must be longer than zero, e.g. 1m",
            ));
        }
        at_least_a_second("-idle-timeout", self.idle_timeout)?;
        at_least_a_second("-stats-interval", self.stats_interval)?;
        if self.pad_block != 0 && self.pad_block < 512 {
            return Err(bad(
                "-pad-block",
                &self.pad_block.to_string(),
                "must be 0 (off) or at least 512 bytes",
            ));
        }
        let relay = self.relay_config(&name)?;
        let mix = self.mix_policy()?;
        let sanitize_from = self
            .sanitize
            .then(|| self.anon_from.replace("NAME", name.as_str()));
        prepare_data_dir(&self.data_dir)?;
        Ok(Config {
            name,
            addr: self.addr,
            data_dir: self.data_dir,
            max_message_size: self.max_message_size,
            max_recipients: self.max_recipients,
            max_connections: self.max_connections,
            rate_limit,
            rate_window: self.rate_window,
            idle_timeout: self.idle_timeout,
            replay_window: self.replay_window,
            proxy_protocol: self.proxy_protocol,
            debug: self.debug,
            relay,
            mix,
            cover_interval: (!self.cover_interval.is_zero()).then_some(self.cover_interval),
            pad_block: self.pad_block,
            stats_interval: self.stats_interval,
            sanitize_from,
        })
    }

    fn mix_policy(&self) -> Result<crate::mix::MixPolicy, ConfigError> {
        use crate::mix::MixPolicy;
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

    fn relay_config(&self, name: &OnionName) -> Result<RelayConfig, ConfigError> {
        if self.workers == 0 {
            return Err(bad("-workers", "0", "must be at least 1"));
        }
        if self.retries == 0 {
            return Err(bad(
                "-retries",
                "0",
                "must be at least 1 (the first attempt counts)",
            ));
        }
        at_least_a_second("-delivery-timeout", self.delivery_timeout)?;
        at_least_a_second("-retry-base", self.retry_base)?;
        let envelope_from = match self.envelope_from.as_deref() {
            Some("<>") | Some("") => Some(String::new()),
            Some(addr) => {
                let addr = addr.trim_start_matches('<').trim_end_matches('>');
                crate::address::parse_mailbox(addr, false).map_err(|e| {
                    bad(
                        "-envelope-from",
                        addr,
                        &format!("{e}; give a full address or <>"),
                    )
                })?;
                Some(addr.to_string())
            }
            None if self.sanitize => Some(format!("nobody@{name}")),
            None => None,
        };
        Ok(RelayConfig {
            tor_socks: self.tor_socks,
            dns_server: self.dns_server,
            workers: self.workers,
            retries: self.retries,
            retry_base: self.retry_base,
            delivery_timeout: self.delivery_timeout,
            envelope_from,
            tls_verify: self.tls_verify,
            smtp_port: self.smtp_port,
        })
    }

    fn resolve_name(&self) -> Result<OnionName, ConfigError> {
        if let Some(value) = &self.name {
            return OnionName::parse(value.trim()).map_err(|source| ConfigError::BadName {
                value: value.clone(),
                source,
            });
        }
        let Some(path) = &self.hs_hostname_file else {
            return Err(ConfigError::NoName);
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::HostnameFile {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        OnionName::parse(text.trim()).map_err(|e| ConfigError::HostnameFile {
            path: shown,
            reason: format!("does not hold a valid v3 onion name: {e}"),
        })
    }
}

/// Timeouts and intervals below a second are typos (`1` meant as minutes).
fn at_least_a_second(flag: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value < Duration::from_secs(1) {
        return Err(bad(
            flag,
            &humantime::format_duration(value).to_string(),
            "must be at least 1s",
        ));
    }
    Ok(())
}

fn bad(flag: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::BadValue {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Creates the data directory with mode 0700 (the spool holds mail and the
/// replay cache) and checks that it is a writable directory.
pub fn prepare_data_dir(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |reason: String| ConfigError::DataDir {
        path: path.display().to_string(),
        reason,
    };
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| err(format!("cannot create it: {e}")))?;
    }
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("exists and is not a directory".into()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(format!("cannot restrict it to mode 0700: {e}")))?;
    }
    let probe = path.join(".write-probe");
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| err(format!("is not writable: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        std::iter::once("pluto2")
            .chain(list.iter().copied())
            .map(String::from)
            .collect()
    }

    #[test]
    fn it_accepts_go_style_single_dash_flags() {
        let cli = parse(args(&[
            "-addr",
            "127.0.0.1:1",
            "-rate-window=2m",
            "--max-recipients",
            "3",
        ]))
        .unwrap();
        assert_eq!(cli.daemon.addr.port(), 1);
        assert_eq!(cli.daemon.rate_window, Duration::from_secs(120));
        assert_eq!(cli.daemon.max_recipients, 3);
    }

    #[test]
    fn it_leaves_values_and_short_flags_alone() {
        let out = normalize_args(args(&["-h", "-debug", "--", "-x"]));
        assert_eq!(out, args(&["-h", "--debug", "--", "-x"]));
    }

    #[test]
    fn it_names_the_flag_of_a_bad_duration() {
        let err = parse(args(&["-idle-timeout", "soon"])).unwrap_err();
        let line = one_line(&err);
        assert!(line.contains("--idle-timeout"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn it_rejects_unknown_flags_in_one_line() {
        let err = parse(args(&["-frobnicate"])).unwrap_err();
        let line = one_line(&err);
        assert!(line.contains("--frobnicate"), "{line}");
    }

    #[test]
    fn it_parses_the_queue_subcommand() {
        let cli = parse(args(&["queue", "-data-dir", "/tmp/x", "-json"])).unwrap();
        match cli.command {
            Some(Command::Queue(q)) => {
                assert!(q.json);
                assert_eq!(q.data_dir, PathBuf::from("/tmp/x"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn it_hides_the_envelope_sender_unless_sanitize_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        let name = OnionName::from_public_key(&[3u8; 32]).to_string();
        let base = ["-name", name.as_str(), "-data-dir", data.to_str().unwrap()];
        let cfg = |extra: &[&str]| {
            let all: Vec<&str> = base.iter().chain(extra).copied().collect();
            parse(args(&all))
                .unwrap()
                .daemon
                .validate()
                .unwrap()
                .relay
                .envelope_from
        };
        assert_eq!(cfg(&[]), Some(format!("nobody@{name}")));
        assert_eq!(cfg(&["-sanitize=false"]), None);
        assert_eq!(
            cfg(&["-sanitize", "false", "-envelope-from", "<>"]),
            Some(String::new())
        );
        assert_eq!(
            cfg(&["-envelope-from", "<remailer@example.org>"]),
            Some("remailer@example.org".into())
        );
        let all: Vec<&str> = base
            .iter()
            .chain(&["-envelope-from", "bad"])
            .copied()
            .collect();
        let err = parse(args(&all))
            .unwrap()
            .daemon
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("-envelope-from"), "{err}");
    }

    #[test]
    fn it_requires_a_name_or_hostname_file() {
        let cli = parse(args(&[])).unwrap();
        assert!(matches!(cli.daemon.validate(), Err(ConfigError::NoName)));
    }

    #[test]
    fn it_reports_a_bad_checksum_in_name() {
        let good = OnionName::from_public_key(&[7u8; 32]).to_string();
        // Swap two characters of the base32 part so the checksum no longer matches.
        let mut chars: Vec<char> = good.chars().collect();
        chars.swap(0, 1);
        if chars[0] == chars[1] {
            chars[0] = if chars[0] == 'a' { 'b' } else { 'a' };
        }
        let bad: String = chars.into_iter().collect();
        let cli = parse(args(&["-name", &bad])).unwrap();
        let msg = cli.daemon.validate().unwrap_err().to_string();
        assert!(msg.contains("checksum"), "{msg}");
    }

    #[test]
    fn it_reads_the_name_from_the_hostname_file_and_creates_the_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("hostname");
        let name = OnionName::from_public_key(&[9u8; 32]);
        std::fs::write(&host, format!("{name}\n")).unwrap();
        let data = dir.path().join("spool");
        let cli = parse(args(&[
            "-hs-hostname-file",
            host.to_str().unwrap(),
            "-data-dir",
            data.to_str().unwrap(),
        ]))
        .unwrap();
        let cfg = cli.daemon.validate().unwrap();
        assert_eq!(cfg.name, name);
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn it_refuses_a_data_dir_that_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let name = OnionName::from_public_key(&[1u8; 32]).to_string();
        let cli = parse(args(&["-name", &name, "-data-dir", file.to_str().unwrap()])).unwrap();
        let msg = cli.daemon.validate().unwrap_err().to_string();
        assert!(msg.starts_with("-data-dir"), "{msg}");
    }
}
