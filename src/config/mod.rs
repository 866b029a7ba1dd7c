//! Command line: the four commands (the daemon, `check`, `queue`, `pki`),
//! their clap definitions, and validation into typed settings.
//!
//! The daemon's flags come in groups, one per part of the node: its name,
//! the listener, the spool, the relay, the mix, sanitizing, operations and
//! the mixnet. Each group has a file of its own holding its clap [`Args`]
//! struct (with its own help heading, so `pluto2 --help` shows sections),
//! its `validate`, which looks at its own flags only, the typed settings
//! struct that [`Config`] holds, and its tests. The few settings that
//! depend on more than one group are derived in `apply_cross_group_rules`
//! here, and nowhere else; client mode's refusals of other groups' flags
//! are `client_mode_rules`, here too. Adding a group takes four steps: a `foo.rs` with
//! a `FooArgs` struct carrying `#[command(next_help_heading = "Foo")]` and
//! its `validate` into a `FooConfig`, a `#[command(flatten)]` field in
//! [`DaemonArgs`], and a field in [`Config`].
//!
//! Beside the groups: `command_line` turns `argv` into a [`Cli`] (Go-style
//! `-flag` rewriting by [`normalize_args`], the `-flags-file` merged in by
//! `flags_file`), `metrics` holds the rule for where `-metrics` may listen,
//! `queue` and `pki` the flags of those subcommands, and [`sysexits`] the
//! exit statuses every edge of the program uses. Everything public is
//! re-exported here, so the rest of the crate names `config::Foo` only.
//!
//! Validation only reads (the flags and, with `-hs-hostname-file`, Tor's
//! hostname file): it creates, changes and writes nothing, so it can check a
//! command line without touching the node. The daemon prepares the data
//! directory when it starts.

mod command_line;
mod flags_file;
mod identity;
mod listener;
mod metrics;
mod mixing;
mod ops;
mod pki;
mod queue;
mod relay;
mod sanitize;
mod sphinx;
mod spool;
pub mod sysexits;
mod testnet;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use command_line::{normalize_args, one_line, parse};
pub use identity::{NodeArgs, name_from_hostname_file};
pub use listener::{ListenerArgs, ListenerConfig};
pub use metrics::MetricsAddr;
pub use mixing::{MixArgs, MixConfig};
pub use ops::{LogLevel, OpsArgs, OpsConfig};
pub use pki::{PkiCommand, PkiKeyArgs, PkiSignArgs, PkiVerifyArgs};
pub use queue::{DeleteTargets, QueueArgs, QueueOp, QueueTargets};
pub use relay::{RelayArgs, RelayConfig};
pub use sanitize::{SanitizeArgs, SanitizePolicy};
pub use sphinx::{
    ClientConfig, DEFAULT_EXIT_PARTIAL_BYTES, DEFAULT_GATEWAY_CLIENTS, DEFAULT_GATEWAY_HELD,
    DEFAULT_GATEWAY_HELD_BYTES, GatewayConfig, MixnetArgs, MixnetConfig, NodeInfo,
};
pub use spool::{SpoolArgs, SpoolConfig};
pub use testnet::{MAX_TESTNET_NODES, MIN_TESTNET_NODES, TestnetArgs, TestnetNode, TestnetOp};

use crate::address::OnionName;

/// Exit status for a bad command line or unusable setting (sysexits EX_USAGE),
/// so systemd and scripts can tell "fix your config" from a runtime failure.
pub const EX_USAGE: i32 = sysexits::USAGE as i32;

/// Why the daemon's flags are refused: one line naming the flag, the value
/// and what to give instead.
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
    /// Run a whole mixnet on this machine (nodes, a client, a mail sink) until Ctrl-C.
    Testnet(TestnetArgs),
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
    pub origin: CommandLine,
}

/// The command line the daemon was started with, and every flag's value as
/// clap saw it (defaults included) after the `-flags-file` was merged in.
/// A reload parses `argv` again (rereading the flags file) and compares the
/// values, to name the flags that changed.
#[derive(Debug, Clone, Default)]
pub struct CommandLine {
    pub argv: Vec<String>,
    /// Long flag name → its values as written.
    pub values: std::collections::BTreeMap<String, Vec<String>>,
    /// The long names of the flags given (on the command line or in the
    /// flags file), as opposed to left at their defaults: client mode
    /// refuses node flags given, whatever their value.
    pub given: std::collections::BTreeSet<String>,
}

impl CommandLine {
    /// Whether the flag `long` (without dashes) was given.
    pub fn given(&self, long: &str) -> bool {
        self.given.contains(long)
    }
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
    pub origin: CommandLine,
}

impl DaemonArgs {
    /// Checks every setting, group by group, then derives the settings that
    /// span groups. Creates and writes nothing (see the module doc).
    pub fn validate(self) -> Result<Config, ConfigError> {
        let name = if self.mixnet.client {
            client_mode_rules(&self)?;
            client_name()
        } else {
            self.node.resolve_name()?
        };
        let listener = self.listener.validate()?;
        let spool = self.spool.validate();
        let relay = self.relay.validate()?;
        let mix = self.mix.validate()?;
        let ops = self.ops.validate()?;
        self.sanitize.validate()?;
        let (mixnet, export_node_info) = self.mixnet.validate(&self.origin)?;
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
    (
        relay,
        SanitizePolicy {
            anon_from,
            hashcash_bits: sanitize.hashcash_bits,
            hashcash_for: sanitize.hashcash_for.clone(),
            news_gateway: sanitize.news_gateway.clone(),
        },
    )
}

/// The name a client (`-client`) goes by where the daemon wants a node's
/// name (its SMTP greeting to local mail programs, HELO): a client has no
/// onion service. The same for every client, so nothing it says names it:
/// the onion name of the all-zero key, a point of small order that Tor
/// refuses as an onion service's key, so it is nobody's address.
pub fn client_name() -> OnionName {
    OnionName::from_public_key(&[0; 32])
}

/// What client mode refuses outside the Mixnet group (whose own node
/// flags `MixnetArgs::validate` refuses): a client has no onion name, and
/// its SMTP listener serves this machine's mail programs only. `-client`
/// without `-sphinx` is refused first, since the rest follows from it.
/// `-metrics` needs no rule here: it is loopback-only in every mode.
fn client_mode_rules(args: &DaemonArgs) -> Result<(), ConfigError> {
    if !args.mixnet.sphinx {
        return Err(bad(
            "-client",
            "true",
            "a client sends mail through the mixnet only: add -sphinx (with -pki-file and -via)",
        ));
    }
    for flag in ["-name", "-hs-hostname-file"] {
        if args.origin.given(&flag[1..]) {
            return Err(bad(
                flag,
                &sphinx::shown(&args.origin, flag),
                "a client has no onion service and is not listed in nodes.json; leave it out with -client",
            ));
        }
    }
    let addr = args.listener.addr;
    if !addr.ip().is_loopback() {
        return Err(bad(
            "-addr",
            &addr.to_string(),
            "a client's SMTP listener is for this machine's mail programs only: use a loopback address (127.0.0.0/8 or [::1]), e.g. 127.0.0.1:2525",
        ));
    }
    Ok(())
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

/// Fixtures shared by the groups' tests: a command line, a validated one
/// with a fixed node name, an operator key.
#[cfg(test)]
mod testing {
    use super::*;

    pub fn args(list: &[&str]) -> Vec<String> {
        std::iter::once("pluto2")
            .chain(list.iter().copied())
            .map(String::from)
            .collect()
    }

    pub fn validated(extra: &[&str]) -> Result<Config, ConfigError> {
        let name = OnionName::from_seed(5).to_string();
        let all: Vec<&str> = ["-name", name.as_str()]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        parse(args(&all)).unwrap().daemon.validate()
    }

    pub fn operator_key(seed: u8) -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
        data_encoding::BASE64.encode(key.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::CommandFactory;
    use clap::parser::ValueSource;

    use super::testing::args;
    use super::*;
    use crate::release::{DelayStrategy, MixPolicy};

    /// The flag cells and default cells of README.md's "Command line" table,
    /// one `(flag without dash, default)` per flag; a row such as
    /// `-rate-limit` / `-rate-window` gives two.
    fn readme_flags() -> Vec<(String, String)> {
        let readme = include_str!("../../README.md");
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
                        "via" => "alice".into(),
                        "exit-partial-bytes" => "268435456".into(),
                        "news-gateway" => "mail2news@news.example".into(),
                        "hashcash-for" => "mail2news@news.example".into(),
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
}
