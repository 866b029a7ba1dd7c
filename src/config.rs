//! Command line: clap definitions, Go-style flag rewriting, and validation.
//!
//! Operators coming from the Go implementation type `-name x` and `-name=x`;
//! clap only knows `--name`, so [`normalize_args`] rewrites single-dash long
//! flags before clap sees them.
//!
//! The daemon's flags come in groups, one per part of the node: its name,
//! the listener, the spool, the relay, the mix, sanitizing and operations.
//! Each group is a clap [`Args`] struct with its own help heading (so
//! `pluto2 --help` shows sections) and validates, on its own flags only, into
//! a typed settings struct that [`Config`] holds. The few settings that
//! depend on more than one group are derived in `apply_cross_group_rules`,
//! and nowhere else. Adding a group takes four steps: a `FooArgs` struct with
//! `#[command(next_help_heading = "Foo")]`, its `validate` into a
//! `FooConfig`, a `#[command(flatten)]` field in [`DaemonArgs`] and a field
//! in [`Config`].
//!
//! Validation only reads (the flags and, with `-hs-hostname-file`, Tor's
//! hostname file): it creates, changes and writes nothing, so it can check a
//! command line without touching the node. The daemon prepares the data
//! directory when it starts.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::address::OnionName;
use crate::release::{DelayStrategy, MixPolicy};
use crate::wire::pki_sig::{Trust, TrustError};

/// Exit status for a bad command line or unusable setting (sysexits EX_USAGE),
/// so systemd and scripts can tell "fix your config" from a runtime failure.
pub const EX_USAGE: i32 = sysexits::USAGE as i32;

/// The exit statuses of `pluto2`, from BSD's `sysexits.h`, so that systemd
/// (`RestartPreventExitStatus=`) and scripts can tell "fix the setting" from
/// "try again later" without reading the message. README.md has the table.
pub mod sysexits {
    /// A flag or its value is wrong.
    pub const USAGE: u8 = 64;
    /// An input file holds something else than expected.
    pub const DATAERR: u8 = 65;
    /// An input file is missing or cannot be read.
    pub const NOINPUT: u8 = 66;
    /// A resource pluto2 needs is not available (the listen address).
    pub const UNAVAILABLE: u8 = 69;
    /// A fault of pluto2 itself or of its runtime.
    pub const SOFTWARE: u8 = 70;
    /// A file in the data directory cannot be created.
    pub const CANTCREAT: u8 = 73;
    /// Reading or writing a file failed.
    pub const IOERR: u8 = 74;
    /// Temporary: trying again later may work (another pluto2 holds the data directory).
    pub const TEMPFAIL: u8 = 75;
    /// The process lacks a privilege it needs (a port below 1024).
    pub const NOPERM: u8 = 77;
    /// The data directory holds state this pluto2 cannot use.
    pub const CONFIG: u8 = 78;
}

/// Tor writes 63 bytes into `hostname`; anything far larger is not that
/// file, and reading it whole could exhaust memory.
const MAX_HOSTNAME_FILE: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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
    /// The file cannot be read as Tor's hostname file (missing, unreadable,
    /// not a regular file, too large).
    #[error(
        "-hs-hostname-file {path}: {reason}; point it at the `hostname` file in Tor's HiddenServiceDir"
    )]
    HostnameFile { path: String, reason: String },
    /// The file was read but holds no valid onion name.
    #[error(
        "-hs-hostname-file {path}: does not hold a valid v3 onion name: {source}; point it at the `hostname` file in Tor's HiddenServiceDir"
    )]
    HostnameContent {
        path: String,
        source: crate::address::OnionError,
    },
    #[error("{flag} {value}: {reason}")]
    BadValue {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    /// The exit status for this error: 66 when Tor's hostname file cannot
    /// be read, 65 when it holds no onion name, 64 for everything else.
    pub fn exit_status(&self) -> u8 {
        match self {
            ConfigError::HostnameFile { .. } => sysexits::NOINPUT,
            ConfigError::HostnameContent { .. } => sysexits::DATAERR,
            _ => sysexits::USAGE,
        }
    }
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
    /// Check the daemon's flags and setup (spool, data dir, Tor, nodes.json) without changing anything.
    Check(Box<DaemonArgs>),
    /// Sign nodes.json as an operator, or check a signed one as a node would.
    #[command(subcommand)]
    Pki(PkiCommand),
}

/// `pluto2 pki …`: the operators' side of the signed directory.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Sign nodes.json with KEYFILE (created, mode 0600, if missing): adds
    /// or replaces this key's line in nodes.json.sig and prints the public key.
    Sign(PkiSignArgs),
    /// Print the public key of KEYFILE (base64), for -pki-trust.
    Pubkey(PkiKeyArgs),
    /// Check nodes.json and its signatures as a node with these flags would.
    Verify(PkiVerifyArgs),
}

#[derive(Debug, Args)]
pub struct PkiKeyArgs {
    /// The operator's signing key: 32 secret bytes, mode 0600.
    #[arg(long, value_name = "KEYFILE")]
    pub key: PathBuf,
}

#[derive(Debug, Args)]
pub struct PkiSignArgs {
    #[command(flatten)]
    pub key: PkiKeyArgs,
    /// The nodes.json to sign (its signatures go to the same path + .sig).
    #[arg(value_name = "NODES_JSON")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct PkiVerifyArgs {
    /// Operator public keys, as a node's -pki-trust.
    #[arg(long, value_name = "KEY,KEY,...")]
    pub pki_trust: String,
    /// Signatures needed, as a node's -pki-threshold.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub pki_threshold: Option<i64>,
    /// A node's data directory: also compare the serial with the one it saved.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The nodes.json to check (its signatures: the same path + .sig).
    #[arg(value_name = "NODES_JSON")]
    pub file: PathBuf,
}

impl PkiVerifyArgs {
    /// The trust a node with the same flags would have.
    pub fn trust(&self) -> Result<Trust, ConfigError> {
        trust(Some(&self.pki_trust), self.pki_threshold).map(|t| t.expect("keys given"))
    }
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Directory holding the spool database.
    #[arg(long, global = true, default_value = "pluto2-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The operation; without one, the counts.
    #[command(subcommand)]
    pub op: Option<QueueOp>,
}

/// The operator's queue operations (README.md maps them to Postfix's).
/// They never print addresses; messages are named by queue id.
#[derive(Debug, Subcommand)]
pub enum QueueOp {
    /// List messages: queue id, state, age, size, attempts, next attempt.
    List,
    /// Make all deferred mail due now (postqueue -f).
    Flush,
    /// Keep messages from delivery until released (postsuper -h).
    Hold(QueueTargets),
    /// Let held messages go again at their stored times (postsuper -H).
    Release(QueueTargets),
    /// Delete messages; counted and logged as drops of class operator (postsuper -d).
    Delete(DeleteTargets),
}

#[derive(Debug, Args)]
pub struct QueueTargets {
    /// Queue ids as `pluto2 queue list` prints them.
    #[arg(
        value_name = "ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub ids: Vec<String>,
    /// Every message in the spool.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct DeleteTargets {
    #[command(flatten)]
    pub targets: QueueTargets,
    /// Confirms -all: without it, deleting everything is refused.
    #[arg(long)]
    pub yes: bool,
}

/// The daemon's flags, one flattened struct per group; the order here is
/// the order of the sections in `--help`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub listener: ListenerArgs,
    #[command(flatten)]
    pub spool: SpoolArgs,
    #[command(flatten)]
    pub relay: RelayArgs,
    #[command(flatten)]
    pub mix: MixArgs,
    #[command(flatten)]
    pub sanitize: SanitizeArgs,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub mixnet: MixnetArgs,
    /// Where these flags came from, for a reload (set by [`parse`]).
    #[arg(skip)]
    pub origin: Origin,
}

/// The command line the daemon was started with, and every flag's value as
/// clap saw it (defaults included) after the `-flags-file` was merged in.
/// A reload parses `argv` again (rereading the flags file) and compares the
/// values, to name the flags that changed.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub argv: Vec<String>,
    /// Long flag name → its values as written.
    pub values: std::collections::BTreeMap<String, Vec<String>>,
}

/// Who this node is. A group of its own rather than part of the listener:
/// the name is used by every part (SMTP greeting, HELO, envelope sender,
/// From and Message-ID of sanitized mail, cover traffic).
#[derive(Debug, Args)]
#[command(next_help_heading = "Node")]
pub struct NodeArgs {
    /// This node's v3 onion name (56 base32 characters + ".onion").
    #[arg(long, value_name = "ONION")]
    pub name: Option<String>,
    /// Tor's HiddenServiceDir/hostname file, read when -name is absent.
    #[arg(long, value_name = "FILE")]
    pub hs_hostname_file: Option<PathBuf>,
}

/// The inbound SMTP side: where it listens and what one client may do.
#[derive(Debug, Args)]
#[command(next_help_heading = "Listener")]
pub struct ListenerArgs {
    /// SMTP listen address (-smtp is another name for it, as in fog).
    #[arg(
        long,
        visible_alias = "smtp",
        default_value = "127.0.0.1:2525",
        value_name = "IP:PORT"
    )]
    pub addr: SocketAddr,
    // The counts below are signed and take negative numbers as values, so
    // that `-max-message-size -5` reaches `validate` and is refused with its
    // lower bound, instead of clap reading `-5` as an unknown flag.
    /// Largest message accepted, in bytes (advertised in SIZE).
    #[arg(
        long,
        default_value_t = 10_485_760,
        value_name = "BYTES",
        allow_negative_numbers = true
    )]
    pub max_message_size: i64,
    /// Recipients per message.
    #[arg(
        long,
        default_value_t = 50,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub max_recipients: i64,
    /// Concurrent SMTP sessions; when full, the slowest session is shed (421) for a newcomer.
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub max_connections: i64,
    /// Sessions allowed per client identity in each -rate-window.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub rate_limit: i64,
    /// Window for -rate-limit, e.g. 1m.
    #[arg(long, default_value = "1m", value_parser = parse_duration, value_name = "DURATION")]
    pub rate_window: Duration,
    /// Close a session that sends nothing for this long (RFC 5321 4.5.3.2 suggests 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// Close any session this long after it connected, busy or not.
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub session_timeout: Duration,
    /// Slowest average DATA rate, in bytes per second, after a grace of -idle-timeout (at most 30s) (0 = off).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub min_data_rate: u64,
    /// Memory for message bodies shared by all sessions, beyond 64 KiB each; when spent, 452 4.3.1.
    #[arg(long, default_value_t = 134_217_728, value_name = "BYTES")]
    pub data_memory: usize,
    /// Expect a PROXY v1 header (Tor's HiddenServiceExportCircuitID haproxy).
    #[arg(long)]
    pub proxy_protocol: bool,
}

/// Where accepted mail is kept until it leaves.
#[derive(Debug, Args)]
#[command(next_help_heading = "Spool")]
pub struct SpoolArgs {
    /// Spool database and node state (created with mode 0700 at start).
    #[arg(long, default_value = "pluto2-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// How long identical messages are refused as replays (0 = no replay check).
    #[arg(long, default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub replay_window: Duration,
    /// Free space kept in reserve on the data dir's file system: below it
    /// new mail gets 452 4.3.1 while queued mail still drains (0 = off).
    #[arg(long, default_value_t = 100 * 1024 * 1024, value_name = "BYTES")]
    pub min_free_space: u64,
}

/// Outbound delivery through Tor to the next hop.
#[derive(Debug, Args)]
#[command(next_help_heading = "Relay")]
pub struct RelayArgs {
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
    /// Require a valid certificate for STARTTLS to clearnet hosts.
    #[arg(long)]
    pub tls_verify: bool,
    /// Port of the next hop's SMTP server (25 everywhere; change only for tests).
    #[arg(long, default_value_t = 25, value_name = "PORT")]
    pub smtp_port: u16,
    /// Destinations that asked not to receive anonymous mail: addresses, domains, newsgroups (reloaded on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub dest_block: Option<PathBuf>,
}

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

/// What of the author's identity is removed before mail leaves.
#[derive(Debug, Args)]
#[command(next_help_heading = "Sanitize")]
pub struct SanitizeArgs {
    /// Rewrite identifying headers and hide the client's envelope sender.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub sanitize: bool,
    /// From header that replaces the author's when -sanitize is on (NAME = this node's onion).
    #[arg(long, value_name = "HEADER", default_value = "Anonymous <nobody@NAME>")]
    pub anon_from: String,
}

impl SanitizeArgs {
    /// -anon-from goes into every sanitized message as the From header, so
    /// it must be one header value: a single line (a CR or LF would start
    /// new headers in every message) holding one address, either alone or
    /// as `Display Name <address>`. `NAME` passes as the domain (it becomes
    /// the onion name later). Checked even with -sanitize=false, so that
    /// turning sanitizing on never meets a broken value.
    fn validate(&self) -> Result<(), ConfigError> {
        let value = self.anon_from.as_str();
        let shown = value.escape_debug().to_string();
        let refuse = |reason: &str| Err(bad("-anon-from", &shown, reason));
        if value.chars().any(|c| c.is_control()) {
            return refuse(
                "must be one line without control characters (a CR or LF would add headers to every message)",
            );
        }
        let address = match (value.find('<'), value.rfind('>')) {
            (None, None) => value.trim(),
            (Some(open), Some(close))
                if open < close
                    && value[close + 1..].trim().is_empty()
                    && value.matches('<').count() == 1
                    && value.matches('>').count() == 1 =>
            {
                &value[open + 1..close]
            }
            _ => return refuse("must be an address or `Display Name <address>`"),
        };
        if address.contains(char::is_whitespace) {
            return refuse("the address in it must not contain spaces");
        }
        if let Err(e) = crate::address::check_sender(address, false) {
            return refuse(&format!(
                "{e}; give one address, e.g. `Anonymous <nobody@NAME>`"
            ));
        }
        Ok(())
    }
}

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

/// The Sphinx mixnet (`-sphinx`) and what this node publishes about itself
/// in `nodes.json`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Mixnet")]
pub struct MixnetArgs {
    /// Mixnet mode: mail accepted here leaves through the mixnet, never directly.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub sphinx: bool,
    /// Mixnet link listener (Tor maps the onion's -node-port here).
    #[arg(long, default_value = "127.0.0.1:9999", value_name = "IP:PORT")]
    pub node: SocketAddr,
    /// The network's nodes.json (required with -sphinx).
    #[arg(long, value_name = "FILE")]
    pub pki_file: Option<PathBuf>,
    /// This node's short name in logs and nodes.json (required with -sphinx).
    #[arg(long, value_name = "NAME")]
    pub short_name: Option<String>,
    /// This node delivers mail out of the mixnet (false = middle node only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub exit: bool,
    /// Operator family published in nodes.json: a route never holds two nodes of one family.
    #[arg(long, value_name = "FAMILY")]
    pub family: Option<String>,
    /// The onion's virtual port for links, published in nodes.json (HiddenServicePort).
    #[arg(long, default_value_t = 9999, value_name = "PORT")]
    pub node_port: u16,
    /// Print this node's nodes.json entry (creating its keys if missing) and exit.
    #[arg(long)]
    pub export_node_info: bool,
    /// Operator public keys (base64, comma-separated): nodes.json must be signed by them.
    #[arg(long, value_name = "KEY,KEY,...")]
    pub pki_trust: Option<String>,
    /// How many distinct -pki-trust keys must sign nodes.json (default 1).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub pki_threshold: Option<i64>,
}

/// Parses `30s`, `1m`, `24h`, `1h30m` and a bare `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e} (expected a duration such as 30s, 1m, 24h)"))
}

/// Validated settings of the daemon, one struct per flag group.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: OnionName,
    pub listener: ListenerConfig,
    pub spool: SpoolConfig,
    pub relay: RelayConfig,
    pub mix: MixConfig,
    pub sanitize: SanitizePolicy,
    pub ops: OpsConfig,
    /// `None` in direct mode (no -sphinx) and for -export-node-info.
    pub mixnet: Option<MixnetConfig>,
    /// `Some` with -export-node-info: print this entry and exit.
    pub export_node_info: Option<NodeInfo>,
    /// How to read these settings again (SIGHUP).
    pub origin: Origin,
}

/// Settings of the SMTP listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub rate_limit: NonZeroU32,
    pub rate_window: Duration,
    pub idle_timeout: Duration,
    pub session_timeout: Duration,
    /// Bytes per second; zero turns the minimum off.
    pub min_data_rate: u64,
    pub data_memory: usize,
    pub proxy_protocol: bool,
}

/// Settings of the spool.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Not yet checked: the daemon creates and checks it at start.
    pub data_dir: PathBuf,
    /// Zero turns the replay check off.
    pub replay_window: Duration,
    /// Bytes of free space below which new mail is refused (0: never).
    pub min_free_space: u64,
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
    /// The `-dest-block` file, read (and reread on SIGHUP) by the daemon.
    pub dest_block: Option<PathBuf>,
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

/// Whether and how mail is sanitized before it leaves.
#[derive(Debug, Clone)]
pub struct SanitizePolicy {
    /// `Some(From header)` when exit headers are sanitized, with `NAME`
    /// already replaced by the node's name; `None` with -sanitize=false.
    pub anon_from: Option<String>,
}

/// What this node publishes about itself in `nodes.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub short_name: String,
    /// The onion's virtual port for links.
    pub port: u16,
    pub exit: bool,
    pub family: Option<String>,
}

/// Settings of mixnet mode (`-sphinx`).
#[derive(Debug, Clone)]
pub struct MixnetConfig {
    /// Where the link listener binds.
    pub node: SocketAddr,
    /// `nodes.json`, read and checked by the daemon at start.
    pub pki_file: PathBuf,
    pub info: NodeInfo,
    /// `-pki-trust` and `-pki-threshold`; `None`: signatures are not
    /// checked (private test networks).
    pub trust: Option<Trust>,
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

/// Where the metrics endpoint listens: never on an address other hosts
/// can reach, since counts of mail and cover are traffic information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    /// An address in 127.0.0.0/8 or `[::1]`.
    Tcp(SocketAddr),
    /// A unix socket at this absolute path.
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "{a}"),
            MetricsAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Reads `-metrics`: a loopback `IP:port` or an absolute unix socket path.
fn metrics_addr(value: &str) -> Result<MetricsAddr, ConfigError> {
    if value.starts_with('/') {
        return Ok(MetricsAddr::Unix(PathBuf::from(value)));
    }
    let addr: SocketAddr = value.parse().map_err(|_| {
        bad(
            "-metrics",
            value,
            "is neither IP:port nor an absolute unix socket path; use e.g. 127.0.0.1:9900 or /run/pluto2/metrics.sock",
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(bad(
            "-metrics",
            value,
            "metrics are served on loopback only (127.0.0.0/8 or [::1]) or on a unix socket, never to the network; use e.g. 127.0.0.1:9900 and scrape it from this host",
        ));
    }
    Ok(MetricsAddr::Tcp(addr))
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

/// Largest `-flags-file`; a flags file is a few dozen lines.
const MAX_FLAGS_FILE: u64 = 64 * 1024;

/// Parses the command line and, with `-flags-file`, the flags in that file
/// after it. Help and version requests come back as `Err(clap::Error)` for
/// the caller to print; everything else is one line.
///
/// A flag may be given in one place only: on the command line or in the
/// file, never both (clap refuses a flag given twice), so no precedence
/// rule has to be remembered.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let argv: Vec<String> = args.into_iter().collect();
    let mut all = normalize_args(argv.clone());
    let mut matches = Cli::command().try_get_matches_from(&all)?;
    let first = Cli::from_arg_matches(&matches)?;
    if first.command.is_none()
        && let Some(path) = &first.daemon.ops.flags_file
    {
        let in_file = |reason: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("-flags-file {}: {reason}\n", path.display()),
            )
        };
        let lines = read_flags_file(path).map_err(|reason| in_file(&reason))?;
        let words = normalize_args(std::iter::once(String::new()).chain(lines));
        all.extend(words.into_iter().skip(1));
        matches = Cli::command()
            .try_get_matches_from(&all)
            .map_err(|e| in_file(&first_line(&e)))?;
    }
    let mut cli = Cli::from_arg_matches(&matches)?;
    cli.daemon.origin = Origin {
        argv,
        values: flag_values(&matches),
    };
    Ok(cli)
}

/// Reads a flags file into command-line words: one flag a line, its value
/// after the first run of spaces (`-rate-limit 20`) or an `=`; blank lines
/// and lines starting with `#` are skipped.
fn read_flags_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut text = String::new();
    file.take(MAX_FLAGS_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FLAGS_FILE {
        return Err(format!("is larger than {MAX_FLAGS_FILE} bytes"));
    }
    let mut words = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with('-') {
            return Err(format!(
                "line {}: a flag must start with - (e.g. -rate-limit 20)",
                i + 1
            ));
        }
        match line.split_once(char::is_whitespace) {
            Some((flag, value)) => words.extend([flag.to_string(), value.trim().to_string()]),
            None => words.push(line.to_string()),
        }
    }
    Ok(words)
}

/// Every daemon flag's values as written (defaults included), by long name.
fn flag_values(matches: &clap::ArgMatches) -> std::collections::BTreeMap<String, Vec<String>> {
    use clap::CommandFactory;
    let command = Cli::command();
    command
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let values = matches
                .try_get_raw(arg.get_id().as_str())
                .ok()
                .flatten()?
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            Some((long.to_string(), values))
        })
        .collect()
}

/// The first line of clap's report, without its `error: `.
fn first_line(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid flag")
        .trim()
        .to_string();
    first
        .strip_prefix("error: ")
        .map(str::to_string)
        .unwrap_or(first)
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
    /// Checks every setting, group by group, then derives the settings that
    /// span groups. Creates and writes nothing (see the module doc).
    pub fn validate(self) -> Result<Config, ConfigError> {
        let name = self.node.resolve_name()?;
        let listener = self.listener.validate()?;
        let spool = self.spool.validate();
        let relay = self.relay.validate()?;
        let mix = self.mix.validate()?;
        let ops = self.ops.validate()?;
        self.sanitize.validate()?;
        let (mixnet, export_node_info) = self.mixnet.validate()?;
        let (relay, sanitize) = apply_cross_group_rules(&name, relay, &self.sanitize);
        Ok(Config {
            name,
            listener,
            spool,
            relay,
            mix,
            sanitize,
            ops,
            mixnet,
            export_node_info,
            origin: self.origin,
        })
    }
}

/// The settings that depend on more than one group (or on the node name),
/// kept in this one place so that no group's `validate` looks at another's
/// flags.
///
/// * Without -envelope-from, relayed mail carries `nobody@<name>` while
///   -sanitize is on (the client's own sender would identify them) and the
///   client's MAIL FROM when it is off.
/// * -anon-from applies only while -sanitize is on; `NAME` in it stands for
///   the node's onion name.
fn apply_cross_group_rules(
    name: &OnionName,
    mut relay: RelayConfig,
    sanitize: &SanitizeArgs,
) -> (RelayConfig, SanitizePolicy) {
    if relay.envelope_from.is_none() && sanitize.sanitize {
        relay.envelope_from = Some(format!("nobody@{name}"));
    }
    let anon_from = sanitize
        .sanitize
        .then(|| sanitize.anon_from.replace("NAME", name.as_str()));
    (relay, SanitizePolicy { anon_from })
}

impl NodeArgs {
    /// Takes -name, or else the first line of Tor's hostname file.
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
        name_from_hostname_file(path)
    }
}

/// The onion name in Tor's hostname file, read and checked as the daemon
/// does when -name is absent (`pluto2 check` compares it with -name).
pub fn name_from_hostname_file(path: &std::path::Path) -> Result<OnionName, ConfigError> {
    let shown = path.display().to_string();
    let text = read_hostname_file(path).map_err(|reason| ConfigError::HostnameFile {
        path: shown.clone(),
        reason,
    })?;
    OnionName::parse(text.trim()).map_err(|source| ConfigError::HostnameContent {
        path: shown,
        source,
    })
}

/// Reads Tor's hostname file, refusing anything that is not a small regular
/// file: a FIFO would block the start for ever and a huge file (a device,
/// a log) would be read until memory runs out. The file is opened
/// non-blocking so that even a FIFO swapped in after a check cannot hang
/// the open; the type is checked on the opened file itself.
fn read_hostname_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_HOSTNAME_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_HOSTNAME_FILE {
        return Err(format!(
            "is larger than {MAX_HOSTNAME_FILE} bytes, so it is not Tor's hostname file"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "is not text".into())
}

impl ListenerArgs {
    fn validate(self) -> Result<ListenerConfig, ConfigError> {
        let max_message_size = count("-max-message-size", self.max_message_size, 1024, " bytes")?;
        let max_recipients = count("-max-recipients", self.max_recipients, 1, "")?;
        let max_connections = count("-max-connections", self.max_connections, 1, "")?;
        let rate_limit: u32 = count("-rate-limit", self.rate_limit, 1, " session per window")?;
        let rate_limit = NonZeroU32::new(rate_limit).expect("checked to be at least 1");
        if self.rate_window.is_zero() {
            return Err(bad(
                "-rate-window",
                "0",
                "must be longer than zero, e.g. 1m",
            ));
        }
        at_least_a_second("-idle-timeout", self.idle_timeout)?;
        at_least_a_second("-session-timeout", self.session_timeout)?;
        Ok(ListenerConfig {
            addr: self.addr,
            max_message_size,
            max_recipients,
            max_connections,
            rate_limit,
            rate_window: self.rate_window,
            idle_timeout: self.idle_timeout,
            session_timeout: self.session_timeout,
            min_data_rate: self.min_data_rate,
            data_memory: self.data_memory,
            proxy_protocol: self.proxy_protocol,
        })
    }
}

/// A count flag's value as the type its setting uses, refused in one line
/// naming the lower bound when it is below `min` (negative values included)
/// and when it does not fit the type.
fn count<T: TryFrom<i64>>(
    flag: &'static str,
    value: i64,
    min: i64,
    unit: &str,
) -> Result<T, ConfigError> {
    if value < min {
        return Err(bad(
            flag,
            &value.to_string(),
            &format!("must be at least {min}{unit}"),
        ));
    }
    T::try_from(value).map_err(|_| bad(flag, &value.to_string(), "is too large"))
}

impl SpoolArgs {
    /// Nothing to refuse: any window is meaningful, and whether the data
    /// directory is usable is only known by trying, at daemon start.
    fn validate(self) -> SpoolConfig {
        SpoolConfig {
            data_dir: self.data_dir,
            replay_window: self.replay_window,
            min_free_space: self.min_free_space,
        }
    }
}

impl RelayArgs {
    /// Leaves `envelope_from` as given (`None` when absent); its default
    /// comes from `apply_cross_group_rules`.
    fn validate(self) -> Result<RelayConfig, ConfigError> {
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
            None => None,
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
            dest_block: self.dest_block,
        })
    }
}

impl MixArgs {
    fn validate(self) -> Result<MixConfig, ConfigError> {
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

impl MixnetArgs {
    /// Mixnet settings with -sphinx, and the entry to print with
    /// -export-node-info. Exporting needs no -pki-file: operators export
    /// their entries before anyone can assemble the file.
    fn validate(self) -> Result<(Option<MixnetConfig>, Option<NodeInfo>), ConfigError> {
        // Checked whatever the mode, so a bad key never waits for -sphinx.
        let trust = trust(self.pki_trust.as_deref(), self.pki_threshold)?;
        let needs_name = if self.export_node_info {
            Some("-export-node-info")
        } else if self.sphinx {
            Some("-sphinx")
        } else {
            None
        };
        let short_name = match (&self.short_name, needs_name) {
            (Some(n), _) => {
                crate::wire::pki::check_label(n).map_err(|e| {
                    bad(
                        "-short-name",
                        n,
                        &format!(
                            "{e}; pick a short name such as alice (letters, digits, '-', '_', '.')"
                        ),
                    )
                })?;
                n.clone()
            }
            (None, Some(flag)) => {
                return Err(bad(
                    "-short-name",
                    "(missing)",
                    &format!(
                        "{flag} needs this node's short name for nodes.json, e.g. -short-name alice"
                    ),
                ));
            }
            (None, None) => String::new(),
        };
        if let Some(family) = &self.family {
            crate::wire::pki::check_label(family).map_err(|e| {
                bad(
                    "-family",
                    family,
                    &format!("{e}; use one name for all nodes of one operator"),
                )
            })?;
        }
        if self.node_port == 0 {
            return Err(bad(
                "-node-port",
                "0",
                "must be the onion's virtual port for links (HiddenServicePort, 9999 by default)",
            ));
        }
        let info = NodeInfo {
            short_name,
            port: self.node_port,
            exit: self.exit,
            family: self.family,
        };
        if self.export_node_info {
            return Ok((None, Some(info)));
        }
        if !self.sphinx {
            return Ok((None, None));
        }
        let Some(pki_file) = self.pki_file else {
            return Err(bad(
                "-pki-file",
                "(missing)",
                "-sphinx needs the network's nodes.json; assemble it from every node's -export-node-info output (see README)",
            ));
        };
        Ok((
            Some(MixnetConfig {
                node: self.node,
                pki_file,
                info,
                trust,
            }),
            None,
        ))
    }
}

/// `-pki-trust` and `-pki-threshold`, for the daemon and `pluto2 pki verify`.
fn trust(keys: Option<&str>, threshold: Option<i64>) -> Result<Option<Trust>, ConfigError> {
    let Some(keys) = keys else {
        return match threshold {
            None => Ok(None),
            Some(n) => Err(bad(
                "-pki-threshold",
                &n.to_string(),
                "counts signatures by -pki-trust keys; give the operators' keys with -pki-trust",
            )),
        };
    };
    Trust::new(keys, threshold).map(Some).map_err(|e| match e {
        TrustError::Threshold { .. } => bad(
            "-pki-threshold",
            &threshold.map_or("1".into(), |n| n.to_string()),
            &e.to_string(),
        ),
        _ => bad("-pki-trust", keys, &e.to_string()),
    })
}

impl OpsArgs {
    fn validate(self) -> Result<OpsConfig, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::parser::ValueSource;

    fn args(list: &[&str]) -> Vec<String> {
        std::iter::once("pluto2")
            .chain(list.iter().copied())
            .map(String::from)
            .collect()
    }

    /// The flag cells and default cells of README.md's "Command line" table,
    /// one `(flag without dash, default)` per flag; a row such as
    /// `-rate-limit` / `-rate-window` gives two.
    fn readme_flags() -> Vec<(String, String)> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Command line")
            .nth(1)
            .expect("README.md has a Command line section");
        let section = section.split("\n## ").next().unwrap();
        let mut flags = Vec::new();
        for row in section.lines().filter(|l| l.starts_with("| `-")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let names: Vec<&str> = cells[1].split(" / ").collect();
            let defaults: Vec<&str> = cells[2].split(" / ").collect();
            for (i, name) in names.iter().enumerate() {
                let name = name.trim_matches('`').strip_prefix('-').unwrap();
                let default = defaults.get(i).unwrap_or(&defaults[0]).trim_matches('`');
                flags.push((name.to_string(), default.to_string()));
            }
        }
        flags
    }

    /// The daemon's flags as clap knows them (help and version left out).
    fn daemon_flags() -> Vec<clap::Arg> {
        // Built, so that switches such as -debug carry their implicit default.
        let mut command = Cli::command();
        command.build();
        command
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
            .cloned()
            .collect()
    }

    fn flag(long: &str) -> clap::Arg {
        daemon_flags()
            .into_iter()
            .find(|a| a.get_long() == Some(long))
            .unwrap_or_else(|| panic!("README names -{long}, which pluto2 does not know"))
    }

    #[test]
    fn it_parses_every_flag_of_the_readme_table_with_a_single_dash() {
        let flags = readme_flags();
        assert!(flags.len() >= 34, "only {} flags read", flags.len());
        for (long, _) in flags {
            let arg = flag(&long);
            let forms: Vec<Vec<String>> = if arg.get_action().takes_values() {
                let value = match arg.get_default_values().first() {
                    Some(d) => d.to_string_lossy().into_owned(),
                    None => match long.as_str() {
                        "name" => OnionName::from_seed(4).to_string(),
                        "hs-hostname-file" => "/var/lib/tor/pluto2/hostname".into(),
                        "envelope-from" => "<>".into(),
                        "pki-file" => "/etc/pluto2/nodes.json".into(),
                        "short-name" => "alice".into(),
                        "family" => "ops-1".into(),
                        "dest-block" => "/etc/pluto2/dest.blk".into(),
                        "flags-file" => "/etc/pluto2/flags".into(),
                        "pki-trust" => "kwgmzEUqp0VTg5XOYHIcseEL1uIbbL9fJ+cJxfO1AdU=".into(),
                        "pki-threshold" => "1".into(),
                        "metrics" => "127.0.0.1:9900".into(),
                        other => panic!("no sample value for -{other}; add one here"),
                    },
                };
                vec![
                    args(&[&format!("-{long}"), &value]),
                    args(&[&format!("-{long}={value}")]),
                ]
            } else {
                vec![args(&[&format!("-{long}")])]
            };
            for form in forms {
                let matches = Cli::command()
                    .try_get_matches_from(normalize_args(form.clone()))
                    .unwrap_or_else(|e| panic!("{form:?}: {}", one_line(&e)));
                assert_eq!(
                    matches.value_source(arg.get_id().as_str()),
                    Some(ValueSource::CommandLine),
                    "{form:?}"
                );
            }
        }
    }

    #[test]
    fn it_keeps_the_readme_table_and_the_flags_in_step() {
        let documented = readme_flags();
        let mut names: Vec<&str> = documented.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let known = daemon_flags();
        let mut longs: Vec<&str> = known.iter().filter_map(|a| a.get_long()).collect();
        longs.sort_unstable();
        assert_eq!(names, longs, "README table and clap disagree on the flags");
        for (long, readme_default) in &documented {
            let arg = flag(long);
            let Some(default) = arg.get_default_values().first() else {
                continue; // -name, -envelope-from: derived, described in words
            };
            let default = default.to_string_lossy();
            let readme_default = if readme_default == "off" {
                "false"
            } else {
                readme_default
            };
            assert_eq!(default, readme_default, "default of -{long}");
        }
    }

    #[test]
    fn it_shows_the_flags_in_sections() {
        let help = Cli::command().render_help().to_string();
        let mut at = 0;
        for heading in [
            "Node:",
            "Listener:",
            "Spool:",
            "Relay:",
            "Mix:",
            "Sanitize:",
            "Operations:",
            "Mixnet:",
        ] {
            let found = help[at..]
                .find(&format!("\n{heading}\n"))
                .unwrap_or_else(|| panic!("no {heading} section after byte {at}:\n{help}"));
            at += found + 1;
        }
        let relay = help.find("\nRelay:\n").unwrap();
        let mix = help.find("\nMix:\n").unwrap();
        assert!(help[relay..mix].contains("--envelope-from"), "{help}");
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
        assert_eq!(cli.daemon.listener.addr.port(), 1);
        assert_eq!(cli.daemon.listener.rate_window, Duration::from_secs(120));
        assert_eq!(cli.daemon.listener.max_recipients, 3);
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
        // clap's own report runs over several lines (tip, usage); only its
        // first line, which names the flag, may reach the operator.
        assert!(err.to_string().trim_end().contains('\n'));
        let line = one_line(&err);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        assert_eq!(
            line,
            "unexpected argument '--frobnicate' found; run `pluto2 --help` for the flags"
        );
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
        let name = OnionName::from_seed(3).to_string();
        let base = ["-name", name.as_str()];
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
    fn it_puts_the_node_name_into_anon_from_only_when_sanitizing() {
        let name = OnionName::from_seed(6);
        let from = |extra: &[&str]| {
            let shown = name.to_string();
            let all: Vec<&str> = ["-name", shown.as_str()]
                .iter()
                .chain(extra)
                .copied()
                .collect();
            parse(args(&all))
                .unwrap()
                .daemon
                .validate()
                .unwrap()
                .sanitize
                .anon_from
        };
        assert_eq!(from(&[]), Some(format!("Anonymous <nobody@{name}>")));
        assert_eq!(
            from(&["-anon-from", "Relay of NAME <x@NAME>"]),
            Some(format!("Relay of {name} <x@{name}>"))
        );
        assert_eq!(from(&["-sanitize=false"]), None);
    }

    fn validated(extra: &[&str]) -> Result<Config, ConfigError> {
        let name = OnionName::from_seed(5).to_string();
        let all: Vec<&str> = ["-name", name.as_str()]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        parse(args(&all)).unwrap().daemon.validate()
    }

    #[test]
    fn it_takes_metrics_on_loopback_or_a_unix_socket_only() {
        assert_eq!(validated(&[]).unwrap().ops.metrics, None);
        for (value, want) in [
            (
                "127.0.0.1:9900",
                MetricsAddr::Tcp("127.0.0.1:9900".parse().unwrap()),
            ),
            (
                "127.3.2.1:0",
                MetricsAddr::Tcp("127.3.2.1:0".parse().unwrap()),
            ),
            (
                "[::1]:9900",
                MetricsAddr::Tcp("[::1]:9900".parse().unwrap()),
            ),
            (
                "/run/pluto2/m.sock",
                MetricsAddr::Unix("/run/pluto2/m.sock".into()),
            ),
        ] {
            let cfg = validated(&["-metrics", value]).unwrap();
            assert_eq!(cfg.ops.metrics, Some(want), "{value}");
        }
        for value in [
            "0.0.0.0:9900",
            "[::]:9900",
            "192.168.1.5:9900",
            "[::ffff:127.0.0.1]:9900",
            "localhost:9900",
            "metrics.sock",
            "9900",
        ] {
            let e = validated(&["-metrics", value]).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("-metrics "), "{value}: {text}");
            assert!(
                text.contains("127.0.0.1:9900"),
                "{value} names no fix: {text}"
            );
            assert_eq!(e.exit_status(), sysexits::USAGE);
        }
    }

    #[test]
    fn it_leaves_mixnet_mode_off_unless_sphinx_is_given() {
        let cfg = validated(&[]).unwrap();
        assert!(cfg.mixnet.is_none());
        assert!(cfg.export_node_info.is_none());
        let cfg = validated(&["-sphinx=false", "-short-name", "alice"]).unwrap();
        assert!(cfg.mixnet.is_none());
    }

    #[test]
    fn it_takes_the_mixnet_flags_go_style() {
        let cfg = validated(&[
            "-sphinx",
            "-pki-file=/etc/pluto2/nodes.json",
            "-short-name",
            "alice",
            "-exit=false",
            "-family",
            "ops-1",
            "-node",
            "127.0.0.1:7000",
            "-node-port=7001",
        ])
        .unwrap();
        let m = cfg.mixnet.unwrap();
        assert_eq!(m.pki_file, PathBuf::from("/etc/pluto2/nodes.json"));
        assert_eq!(m.node, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(
            m.info,
            NodeInfo {
                short_name: "alice".into(),
                port: 7001,
                exit: false,
                family: Some("ops-1".into()),
            }
        );
        // Defaults: exit on, port 9999, link listener on 127.0.0.1:9999.
        let m = validated(&["-sphinx", "-pki-file", "n.json", "-short-name", "bob"])
            .unwrap()
            .mixnet
            .unwrap();
        assert!(m.info.exit);
        assert_eq!(m.info.port, 9999);
        assert_eq!(m.node, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(m.info.family, None);
        let m = validated(&[
            "-sphinx",
            "-pki-file",
            "n.json",
            "-short-name",
            "b",
            "-exit",
        ])
        .unwrap()
        .mixnet
        .unwrap();
        assert!(m.info.exit);
    }

    #[test]
    fn it_requires_a_short_name_and_a_pki_file_with_sphinx() {
        let e = validated(&["-sphinx", "-pki-file", "n.json"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("-short-name"), "{e}");
        assert!(e.contains("-sphinx"), "{e}");
        let e = validated(&["-sphinx", "-short-name", "alice"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("-pki-file"), "{e}");
        assert!(e.contains("-export-node-info"), "{e}");
        let e = validated(&["-export-node-info"]).unwrap_err().to_string();
        assert!(e.starts_with("-short-name"), "{e}");
        assert!(e.contains("-export-node-info"), "{e}");
    }

    fn operator_key(seed: u8) -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
        data_encoding::BASE64.encode(key.as_bytes())
    }

    #[test]
    fn it_takes_the_trusted_operator_keys_and_their_threshold() {
        let keys = format!("{},{}", operator_key(1), operator_key(2));
        let base = ["-sphinx", "-pki-file", "n.json", "-short-name", "alice"];
        let trust = |extra: &[&str]| {
            let all: Vec<&str> = base.iter().chain(extra).copied().collect();
            validated(&all).unwrap().mixnet.unwrap().trust
        };
        assert_eq!(trust(&[]), None);
        let t = trust(&["-pki-trust", &keys]).unwrap();
        assert_eq!((t.keys().len(), t.threshold()), (2, 1));
        let t = trust(&["-pki-trust", &keys, "-pki-threshold=2"]).unwrap();
        assert_eq!(t.threshold(), 2);
    }

    #[test]
    fn it_refuses_bad_trust_flags_naming_the_flag() {
        let two = format!("{},{}", operator_key(1), operator_key(2));
        let bad_key = format!("{},not-a-key", operator_key(1));
        let cases: [(&[&str], &str, &str); 6] = [
            (&["-pki-trust", &bad_key], "-pki-trust", "key 2"),
            (&["-pki-trust", "AAAA"], "-pki-trust", "3 bytes"),
            (
                &["-pki-trust", &two, "-pki-threshold", "3"],
                "-pki-threshold 3",
                "1 to 2",
            ),
            (
                &["-pki-trust", &two, "-pki-threshold", "0"],
                "-pki-threshold 0",
                "1 to 2",
            ),
            (
                &["-pki-trust", &two, "-pki-threshold", "-1"],
                "-pki-threshold -1",
                "1 to 2",
            ),
            (&["-pki-threshold", "1"], "-pki-threshold 1", "-pki-trust"),
        ];
        for (flags, starts, said) in cases {
            // With and without -sphinx: a bad key never waits for the mode.
            for sphinx in [true, false] {
                let mut all = if sphinx {
                    vec!["-sphinx", "-pki-file", "n.json", "-short-name", "a"]
                } else {
                    vec![]
                };
                all.extend(flags);
                let e = validated(&all).unwrap_err();
                assert_eq!(e.exit_status(), sysexits::USAGE);
                let e = e.to_string();
                assert!(e.starts_with(starts), "{flags:?}: {e}");
                assert!(e.contains(said), "{flags:?}: {e}");
            }
        }
    }

    #[test]
    fn it_parses_the_pki_subcommands() {
        let cli = parse(args(&["pki", "sign", "-key", "/k", "nodes.json"])).unwrap();
        match cli.command {
            Some(Command::Pki(PkiCommand::Sign(a))) => {
                assert_eq!(a.key.key, PathBuf::from("/k"));
                assert_eq!(a.file, PathBuf::from("nodes.json"));
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(args(&["pki", "pubkey", "-key=/k"])).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Pki(PkiCommand::Pubkey(_)))
        ));
        let key = operator_key(1);
        let cli = parse(args(&[
            "pki",
            "verify",
            "-pki-trust",
            &key,
            "-pki-threshold",
            "1",
            "-data-dir",
            "/d",
            "n.json",
        ]))
        .unwrap();
        match cli.command {
            Some(Command::Pki(PkiCommand::Verify(v))) => {
                assert_eq!(v.trust().unwrap().threshold(), 1);
                assert_eq!(v.data_dir, Some(PathBuf::from("/d")));
                assert_eq!(v.file, PathBuf::from("n.json"));
            }
            other => panic!("{other:?}"),
        }
        // verify needs the keys; sign needs a file.
        assert!(parse(args(&["pki", "verify", "n.json"])).is_err());
        assert!(parse(args(&["pki", "sign", "-key", "/k"])).is_err());
    }

    #[test]
    fn it_exports_without_a_pki_file() {
        let cfg = validated(&["-sphinx", "-short-name", "alice", "-export-node-info"]).unwrap();
        assert!(cfg.mixnet.is_none());
        assert_eq!(cfg.export_node_info.unwrap().short_name, "alice");
    }

    #[test]
    fn it_refuses_bad_short_names_families_and_ports() {
        for (flags, said) in [
            (&["-short-name", "al ice"][..], "-short-name"),
            (&["-short-name", ""][..], "-short-name"),
            (&["-short-name", "a", "-family", "x/y"][..], "-family"),
            (&["-short-name", "a", "-node-port", "0"][..], "-node-port"),
        ] {
            let mut all = vec!["-export-node-info"];
            all.extend(flags);
            let e = validated(&all).unwrap_err().to_string();
            assert!(e.starts_with(said), "{flags:?}: {e}");
        }
    }

    #[test]
    fn it_takes_smtp_as_another_name_for_addr() {
        for form in [&["-smtp", "127.0.0.1:2626"][..], &["-smtp=127.0.0.1:2626"]] {
            let cfg = validated(form).unwrap();
            assert_eq!(cfg.listener.addr, "127.0.0.1:2626".parse().unwrap());
        }
    }

    /// The flags of fog's systemd unit (its README), as a fog operator has
    /// them: swapping the binary must keep the unit working.
    #[test]
    fn it_parses_the_flags_of_fogs_systemd_unit() {
        let name = OnionName::from_seed(8).to_string();
        let line = format!(
            "-name {name} -short-name fog1 -smtp 127.0.0.1:2525 -node 127.0.0.1:9999 -sphinx \
             -delay -min-delay 1h0m0s -max-delay 24h -delay-strategy exponential \
             -pki-file /etc/fog/nodes.json -data-dir /var/lib/fog -debug"
        );
        let words: Vec<&str> = line.split_whitespace().collect();
        let cli = parse(args(&words)).unwrap_or_else(|e| panic!("{}", one_line(&e)));
        let cfg = cli.daemon.validate().unwrap();
        let m = cfg.mixnet.unwrap();
        assert_eq!(m.info.short_name, "fog1");
        assert_eq!(m.pki_file, PathBuf::from("/etc/fog/nodes.json"));
        assert_eq!(cfg.listener.addr.port(), 2525);
        assert_eq!(cfg.spool.data_dir, PathBuf::from("/var/lib/fog"));
        assert!(cfg.ops.debug);
        assert_eq!(
            cfg.mix.policy,
            MixPolicy::Pool {
                min: Duration::from_secs(3600),
                max: Duration::from_secs(86400),
                strategy: DelayStrategy::Exponential,
            }
        );
    }

    #[test]
    fn it_refuses_an_anon_from_that_is_not_one_address_on_one_line() {
        let name = OnionName::from_seed(6).to_string();
        let check = |value: &str| {
            parse(args(&["-name", &name, "-anon-from", value]))
                .unwrap()
                .daemon
                .validate()
                .map(|c| c.sanitize.anon_from)
                .map_err(|e| e.to_string())
        };
        for good in [
            "Anonymous <nobody@NAME>",
            "nobody@NAME",
            "\"Relay, NAME\" <x@example.org>",
            "<x@example.org>",
        ] {
            assert!(check(good).is_ok(), "{good}: {:?}", check(good));
        }
        for bad in [
            "Anonymous <nobody@NAME>\r\nBcc: victim@example.org",
            "Anonymous <nobody@NAME>\n",
            "Anon\0 <nobody@NAME>",
            "Anonymous",
            "Anonymous <>",
            "Anonymous <nobody@NAME",
            "A <x@y> <z@w>",
            "A <x@y> trailing",
            "two words@example.org",
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.starts_with("-anon-from "), "{bad:?}: {err}");
            assert!(!err.contains(['\r', '\n', '\0']), "{bad:?}: {err}");
        }
    }

    #[test]
    fn it_requires_a_name_or_hostname_file() {
        let cli = parse(args(&[])).unwrap();
        assert!(matches!(cli.daemon.validate(), Err(ConfigError::NoName)));
    }

    #[test]
    fn it_reports_a_bad_checksum_in_name() {
        let good = OnionName::from_seed(7).to_string();
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
    fn it_reads_the_name_from_the_hostname_file() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("hostname");
        let name = OnionName::from_seed(9);
        std::fs::write(&host, format!("{name}\n")).unwrap();
        let cli = parse(args(&["-hs-hostname-file", host.to_str().unwrap()])).unwrap();
        let cfg = cli.daemon.validate().unwrap();
        assert_eq!(cfg.name, name);
    }

    #[test]
    fn it_validates_without_creating_or_changing_the_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let name = OnionName::from_seed(2).to_string();
        let listing = || {
            let mut names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            names
        };

        let missing = dir.path().join("missing").join("spool");
        let cli = parse(args(&[
            "-name",
            &name,
            "-data-dir",
            missing.to_str().unwrap(),
        ]))
        .unwrap();
        let cfg = cli.daemon.validate().unwrap();
        assert_eq!(cfg.spool.data_dir, missing);
        assert!(listing().is_empty(), "validate created {:?}", listing());

        // An existing directory open to others keeps its mode and gains no file.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cli = parse(args(&["-name", &name, "-data-dir", open.to_str().unwrap()])).unwrap();
        cli.daemon.validate().unwrap();
        let mode = std::fs::metadata(&open).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    }
}
