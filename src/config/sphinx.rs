//! The Mixnet group (`-sphinx`): the link listener, `nodes.json` and the
//! operators' keys that must sign it, and what this node publishes about
//! itself there. The `-pki-trust` / `-pki-threshold` rule is here and is
//! also what `pluto2 pki verify` uses, so both read the keys alike.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{ConfigError, bad};
use crate::wire::pki_sig::{Trust, TrustError};

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
    /// Bytes of other nodes' packets kept in custody at most; one previous hop may fill a quarter (0 = no cap).
    #[arg(long, default_value_t = DEFAULT_CUSTODY_MAX, value_name = "BYTES")]
    pub custody_max: u64,
    /// Bytes an exit keeps for messages whose fragments have not all come; past it new fragments get busy and the previous hop retries [default: 268435456, or one message of the network's largest size if more].
    #[arg(long, value_name = "BYTES")]
    pub exit_partial_bytes: Option<u64>,
}

/// 1 GiB: about 125,000 packets, hours of a busy network's traffic at a
/// hop, and a quarter of it per previous hop is still some 30,000 packets
/// (a 10 MiB message is about 1,400).
const DEFAULT_CUSTODY_MAX: u64 = 1 << 30;

/// The smallest cap that is not 0 (a test network's; an operator's cap
/// should hold hours of traffic).
const MIN_CUSTODY_MAX: u64 = 1 << 20;

/// 256 MiB: room for about 25 messages of the default network size (10
/// MiB) in progress at once, or tens of thousands of ordinary ones, on a
/// disk the operator sizes for the spool anyway. On a network whose
/// largest message is larger, the default is that message (the cap
/// must hold one; see `daemon::sphinx`).
pub const DEFAULT_EXIT_PARTIAL_BYTES: u64 = 256 * 1024 * 1024;

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
    /// `-custody-max` in bytes (0: no cap).
    pub custody_max: u64,
    /// `-exit-partial-bytes`: the exit's cap on fragments of incomplete
    /// messages (checked against the network's message size at start);
    /// `None`: the default.
    pub exit_partial_bytes: Option<u64>,
}

impl MixnetArgs {
    /// Mixnet settings with -sphinx, and the entry to print with
    /// -export-node-info. Exporting needs no -pki-file: operators export
    /// their entries before anyone can assemble the file.
    pub(super) fn validate(self) -> Result<(Option<MixnetConfig>, Option<NodeInfo>), ConfigError> {
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
        if self.custody_max != 0 && self.custody_max < MIN_CUSTODY_MAX {
            return Err(bad(
                "-custody-max",
                &self.custody_max.to_string(),
                &format!(
                    "must be 0 (no cap) or at least {MIN_CUSTODY_MAX} bytes; it should hold hours of traffic (default {DEFAULT_CUSTODY_MAX})"
                ),
            ));
        }
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
                custody_max: self.custody_max,
                exit_partial_bytes: self.exit_partial_bytes,
            }),
            None,
        ))
    }
}

/// `-pki-trust` and `-pki-threshold`, for the daemon and `pluto2 pki verify`.
pub(super) fn trust(
    keys: Option<&str>,
    threshold: Option<i64>,
) -> Result<Option<Trust>, ConfigError> {
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

#[cfg(test)]
mod tests {
    use crate::config::sysexits;
    use crate::config::testing::{operator_key, validated};

    use super::*;

    #[test]
    fn it_leaves_mixnet_mode_off_unless_sphinx_is_given() {
        let cfg = validated(&[]).unwrap();
        assert!(cfg.mixnet.is_none());
        assert!(cfg.export_node_info.is_none());
        let cfg = validated(&["-sphinx=false", "-short-name", "alice"]).unwrap();
        assert!(cfg.mixnet.is_none());
    }

    #[test]
    fn custody_is_capped_at_a_gibibyte_unless_told_otherwise() {
        let base = ["-sphinx", "-pki-file", "n.json", "-short-name", "bob"];
        let m = validated(&base).unwrap().mixnet.unwrap();
        assert_eq!(m.custody_max, 1 << 30);
        for ok in ["0", "1048576", "5000000000"] {
            let mut args = base.to_vec();
            args.extend(["-custody-max", ok]);
            let m = validated(&args).unwrap().mixnet.unwrap();
            assert_eq!(m.custody_max.to_string(), ok);
        }
        let mut args = base.to_vec();
        args.extend(["-custody-max", "4096"]);
        let e = validated(&args).unwrap_err().to_string();
        assert!(
            e.contains("-custody-max") && e.contains("at least 1048576"),
            "{e}"
        );
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
}
