//! The Mixnet group (`-sphinx`): the link listener, `nodes.json` and the
//! operators' keys that must sign it, and what this node publishes about
//! itself there. The `-pki-trust` / `-pki-threshold` rule is here and is
//! also what `pluto2 pki verify` uses, so both read the keys alike.
//!
//! Two roles beside a plain node: a gateway (`-gateway`, a listed node
//! that serves clients, with its limits) and a client (`-client -via
//! NAME`, the sender's own machine, listed nowhere). A client refuses
//! every flag of this group that only a listed node has, when given, so
//! an operator who copied a node's command line learns at once which
//! flags mean nothing here (the flags of other groups that a client
//! refuses are `config::client_mode_rules`').

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{CommandLine, ConfigError, bad};
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
    /// This node serves clients (published in nodes.json as "gateway": true).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub gateway: bool,
    /// Most clients with a mailbox at this gateway at once; past it a new client is refused.
    #[arg(long, default_value_t = DEFAULT_GATEWAY_CLIENTS as i64, value_name = "N",
          allow_negative_numbers = true)]
    pub gateway_clients: i64,
    /// Replies held for one client until it fetches them; past it a reply is dropped (its sender retransmits).
    #[arg(long, default_value_t = DEFAULT_GATEWAY_HELD as i64, value_name = "N",
          allow_negative_numbers = true)]
    pub gateway_held: i64,
    /// Bytes of replies held for all clients together.
    #[arg(long, default_value_t = DEFAULT_GATEWAY_HELD_BYTES, value_name = "BYTES")]
    pub gateway_held_bytes: u64,
    /// Client mode: wrap mail on this machine and send it through the gateway -via (needs -sphinx, -pki-file).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub client: bool,
    /// The gateway a client sends through: its short name (or onion name) in nodes.json.
    #[arg(long, value_name = "NAME")]
    pub via: Option<String>,
}

/// A thousand clients: what one gateway's disk and links bear at the
/// default caps below (a thousand links through Tor, and at most 2 MiB
/// held for each, though the total is capped lower).
pub const DEFAULT_GATEWAY_CLIENTS: u32 = 1000;
/// 256 replies of 8 KiB (the Sphinx payload a gateway holds): about 2
/// MiB per client, the acknowledgements of some 250 messages, far more
/// than a client offline for a day is owed by an ordinary sender.
pub const DEFAULT_GATEWAY_HELD: u32 = 256;
/// 256 MiB for all clients: 32,768 replies, so at most 128 clients can
/// be at their own cap at once; past it replies are dropped and counted,
/// and their senders' end-to-end retransmission recovers them.
pub const DEFAULT_GATEWAY_HELD_BYTES: u64 = 256 * 1024 * 1024;
/// What one held reply costs: the Sphinx payload the gateway keeps.
const HELD_REPLY_BYTES: u64 = crate::wire::packet::PAYLOAD_SIZE as u64;

/// What a gateway (`-gateway`) gives its clients at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Clients with a mailbox at once (`-gateway-clients`).
    pub clients: u32,
    /// Replies held for one client (`-gateway-held`).
    pub held_per_client: u32,
    /// Bytes of replies held for all clients (`-gateway-held-bytes`); at
    /// least one client's cap.
    pub held_bytes: u64,
}

/// Client mode (`-client`): this process is the sender's own entry, not
/// a listed node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The gateway (`-via`): a short name or onion name in `nodes.json`,
    /// resolved by `wire::pki::Directory::parse_for_client`.
    pub via: String,
}

/// The flags of this group that only a listed node has, with why a
/// client refuses each (it is not listed, has no onion service and
/// listens on nothing but SMTP on loopback).
const NODE_ONLY: [(&str, &str); 12] = [
    (
        "-short-name",
        "a client is not listed in nodes.json, so it has no short name",
    ),
    (
        "-node",
        "a client has no link listener: it listens on nothing but SMTP on loopback",
    ),
    (
        "-exit",
        "a client is not listed in nodes.json and delivers nothing out of the mixnet",
    ),
    ("-family", "a client is not listed in nodes.json"),
    ("-node-port", "a client has no onion service"),
    ("-gateway", "a client is no gateway: it uses one (-via)"),
    (
        "-gateway-clients",
        "a client is no gateway: it uses one (-via)",
    ),
    (
        "-gateway-held",
        "a client is no gateway: it uses one (-via)",
    ),
    (
        "-gateway-held-bytes",
        "a client is no gateway: it uses one (-via)",
    ),
    (
        "-export-node-info",
        "a client is not listed in nodes.json, so it has no entry to export",
    ),
    (
        "-custody-max",
        "a client keeps no other node's packets in custody",
    ),
    (
        "-exit-partial-bytes",
        "a client is no exit and keeps no partial messages",
    ),
];

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub short_name: String,
    /// The onion's virtual port for links.
    pub port: u16,
    pub exit: bool,
    pub family: Option<String>,
    /// Whether it serves clients (`-gateway`).
    pub gateway: bool,
}

/// Settings of mixnet mode (`-sphinx`).
#[derive(Debug, Clone)]
pub struct MixnetConfig {
    /// Where the link listener binds.
    pub node: SocketAddr,
    /// `nodes.json`, read and checked by the daemon at start.
    pub pki_file: PathBuf,
    /// This node's entry; empty (the default) for a client.
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
    /// `Some` with `-gateway` only.
    pub gateway: Option<GatewayConfig>,
    /// `Some` with `-client` only; then `info` is empty, and the node's
    /// own settings (`node`, `custody_max`, `exit_partial_bytes`,
    /// `gateway`) are their defaults and mean nothing.
    pub client: Option<ClientConfig>,
}

impl MixnetArgs {
    /// Mixnet settings with -sphinx, and the entry to print with
    /// -export-node-info. Exporting needs no -pki-file: operators export
    /// their entries before anyone can assemble the file.
    ///
    /// `origin` tells a flag given from one left at its default: a client
    /// refuses node flags given, and the gateway's limits are refused
    /// without -gateway.
    pub(super) fn validate(
        self,
        origin: &CommandLine,
    ) -> Result<(Option<MixnetConfig>, Option<NodeInfo>), ConfigError> {
        // Checked whatever the mode, so a bad key never waits for -sphinx.
        let trust = trust(self.pki_trust.as_deref(), self.pki_threshold)?;
        if self.client {
            return self.validate_client(trust, origin).map(|m| (Some(m), None));
        }
        if let Some(via) = &self.via {
            return Err(bad(
                "-via",
                via,
                "names the gateway of a client; add -client, or leave -via out on a node",
            ));
        }
        let gateway = self.gateway(origin)?;
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
            gateway: self.gateway,
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
                gateway,
                client: None,
            }),
            None,
        ))
    }

    /// The gateway's limits with -gateway; without it, giving one is a
    /// mistake worth a line (the operator meant to run a gateway).
    fn gateway(&self, origin: &CommandLine) -> Result<Option<GatewayConfig>, ConfigError> {
        if !self.gateway {
            for flag in ["-gateway-clients", "-gateway-held", "-gateway-held-bytes"] {
                if origin.given(&flag[1..]) {
                    return Err(bad(
                        flag,
                        &shown(origin, flag),
                        "limits what a gateway holds for its clients; add -gateway, or leave it out",
                    ));
                }
            }
            return Ok(None);
        }
        let clients = at_least_one(
            "-gateway-clients",
            self.gateway_clients,
            &format!("most clients with a mailbox at once (default {DEFAULT_GATEWAY_CLIENTS})"),
        )?;
        let held_per_client = at_least_one(
            "-gateway-held",
            self.gateway_held,
            &format!(
                "replies held for one client; a client offline for a while needs room (default {DEFAULT_GATEWAY_HELD})"
            ),
        )?;
        let one_client = u64::from(held_per_client) * HELD_REPLY_BYTES;
        if self.gateway_held_bytes < one_client {
            return Err(bad(
                "-gateway-held-bytes",
                &self.gateway_held_bytes.to_string(),
                &format!(
                    "must hold at least one client's -gateway-held replies of {HELD_REPLY_BYTES} bytes ({one_client} bytes); default {DEFAULT_GATEWAY_HELD_BYTES}"
                ),
            ));
        }
        Ok(Some(GatewayConfig {
            clients,
            held_per_client,
            held_bytes: self.gateway_held_bytes,
        }))
    }

    /// Client mode: -pki-file and -via, and none of the flags only a
    /// listed node has.
    fn validate_client(
        self,
        trust: Option<Trust>,
        origin: &CommandLine,
    ) -> Result<MixnetConfig, ConfigError> {
        // -client without -sphinx is refused before this, with the flags of
        // other groups (`config::client_mode_rules`).
        let refused = NODE_ONLY.iter().find(|(flag, _)| origin.given(&flag[1..]));
        if let Some((flag, why)) = refused {
            return Err(bad(
                flag,
                &shown(origin, flag),
                &format!("{why}; leave it out with -client"),
            ));
        }
        let Some(via) = self.via else {
            return Err(bad(
                "-via",
                "(missing)",
                "-client needs the gateway it sends through: the short name of a node listed with \"gateway\": true, e.g. -via alice",
            ));
        };
        if crate::wire::pki::check_label(&via).is_err()
            && crate::address::OnionName::parse(&via).is_err()
        {
            return Err(bad(
                "-via",
                &via,
                "is neither a short name (letters, digits, '-', '_', '.') nor an onion name; copy the gateway's \"name\" from nodes.json",
            ));
        }
        let Some(pki_file) = self.pki_file else {
            return Err(bad(
                "-pki-file",
                "(missing)",
                "-client needs the network's nodes.json, as its operators publish it (see README)",
            ));
        };
        Ok(MixnetConfig {
            node: self.node,
            pki_file,
            info: NodeInfo::default(),
            trust,
            custody_max: self.custody_max,
            exit_partial_bytes: None,
            gateway: None,
            client: Some(ClientConfig { via }),
        })
    }
}

/// A count of at least 1 that fits a `u32`; `what` says what it counts.
fn at_least_one(flag: &'static str, value: i64, what: &str) -> Result<u32, ConfigError> {
    if value < 1 {
        return Err(bad(
            flag,
            &value.to_string(),
            &format!("must be at least 1: {what}"),
        ));
    }
    u32::try_from(value)
        .map_err(|_| bad(flag, &value.to_string(), &format!("is too large: {what}")))
}

/// What was given for `-flag`, for the one line that refuses it.
pub(super) fn shown(origin: &CommandLine, flag: &str) -> String {
    let long = flag.trim_start_matches('-');
    origin
        .values
        .get(long)
        .map(|v| v.join(","))
        .unwrap_or_default()
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
    use crate::config::testing::{args, operator_key, validated};
    use crate::config::{Config, parse, sysexits};

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
                gateway: false,
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

    const NODE: [&str; 5] = ["-sphinx", "-pki-file", "n.json", "-short-name", "alice"];

    fn node_with(extra: &[&str]) -> Result<MixnetConfig, String> {
        let all: Vec<&str> = NODE.iter().chain(extra).copied().collect();
        validated(&all)
            .map(|c| c.mixnet.unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_gateway_takes_its_limits_with_defaults_an_operator_can_reason_about() {
        assert_eq!(node_with(&[]).unwrap().gateway, None);
        assert!(!node_with(&[]).unwrap().info.gateway);
        let m = node_with(&["-gateway"]).unwrap();
        assert!(m.info.gateway);
        assert_eq!(
            m.gateway,
            Some(GatewayConfig {
                clients: 1000,
                held_per_client: 256,
                held_bytes: 256 << 20,
            })
        );
        // 256 replies of 8 KiB: 2 MiB per client.
        assert_eq!(u64::from(DEFAULT_GATEWAY_HELD) * HELD_REPLY_BYTES, 2 << 20);
        let m = node_with(&[
            "-gateway=true",
            "-gateway-clients",
            "5",
            "-gateway-held=2",
            "-gateway-held-bytes",
            "16384",
        ])
        .unwrap();
        assert_eq!(
            m.gateway,
            Some(GatewayConfig {
                clients: 5,
                held_per_client: 2,
                held_bytes: 16384,
            })
        );
        assert_eq!(node_with(&["-gateway=false"]).unwrap().gateway, None);
        // -export-node-info publishes it.
        let cfg = validated(&["-export-node-info", "-short-name", "a", "-gateway"]).unwrap();
        assert!(cfg.export_node_info.unwrap().gateway);
    }

    #[test]
    fn it_refuses_gateway_limits_that_are_zero_or_nonsense() {
        let cases: [(&[&str], &str); 8] = [
            (
                &["-gateway", "-gateway-clients", "0"],
                "-gateway-clients 0: must be at least 1",
            ),
            (
                &["-gateway", "-gateway-clients", "-3"],
                "-gateway-clients -3: must be at least 1",
            ),
            (
                &["-gateway", "-gateway-clients", "4294967296"],
                "-gateway-clients 4294967296: is too large",
            ),
            (
                &["-gateway", "-gateway-held", "0"],
                "-gateway-held 0: must be at least 1",
            ),
            (
                &["-gateway", "-gateway-held-bytes", "0"],
                "-gateway-held-bytes 0: must hold at least one client's",
            ),
            (
                &[
                    "-gateway",
                    "-gateway-held",
                    "3",
                    "-gateway-held-bytes",
                    "24575",
                ],
                "-gateway-held-bytes 24575: must hold at least one client's -gateway-held replies of 8192 bytes (24576 bytes)",
            ),
            (
                &["-gateway-clients", "10"],
                "-gateway-clients 10: limits what a gateway holds for its clients; add -gateway",
            ),
            (
                &["-gateway=false", "-gateway-held-bytes", "268435456"],
                "-gateway-held-bytes 268435456: limits what a gateway",
            ),
        ];
        for (flags, starts) in cases {
            let e = node_with(flags).unwrap_err();
            assert!(e.starts_with(starts), "{flags:?}: {e}");
            assert!(!e.contains('\n'));
        }
        node_with(&[
            "-gateway",
            "-gateway-held",
            "3",
            "-gateway-held-bytes",
            "24576",
        ])
        .unwrap();
    }

    /// A client's command line: no -name (a client has none).
    fn client(extra: &[&str]) -> Result<Config, ConfigError> {
        let all: Vec<&str> = [
            "-sphinx",
            "-client",
            "-via",
            "alice",
            "-pki-file",
            "nodes.json",
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect();
        parse(args(&all)).unwrap().daemon.validate()
    }

    #[test]
    fn a_client_needs_no_name_and_keeps_the_node_settings_empty() {
        let cfg = client(&["-addr", "127.0.0.1:2525"]).unwrap();
        let m = cfg.mixnet.unwrap();
        assert_eq!(
            m.client,
            Some(ClientConfig {
                via: "alice".into()
            })
        );
        assert_eq!(m.pki_file, PathBuf::from("nodes.json"));
        assert_eq!(m.info, NodeInfo::default());
        assert_eq!(m.gateway, None);
        assert_eq!(m.exit_partial_bytes, None);
        assert_eq!(cfg.name, crate::config::client_name());
        assert!(cfg.export_node_info.is_none());
        assert_eq!(cfg.listener.addr, "127.0.0.1:2525".parse().unwrap());
        // Any loopback address; the gateway by its onion name; operator keys.
        let onion = crate::address::OnionName::from_seed(3).to_string();
        let keys = operator_key(1);
        for extra in [
            &["-addr", "[::1]:2525"][..],
            &["-smtp", "127.8.9.1:25"],
            &["-pki-trust", &keys, "-metrics", "127.0.0.1:9900"],
        ] {
            client(extra).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        }
        let all = ["-sphinx", "-client", "-via", &onion, "-pki-file", "n.json"];
        let m = parse(args(&all))
            .unwrap()
            .daemon
            .validate()
            .unwrap()
            .mixnet
            .unwrap();
        assert_eq!(m.client.unwrap().via, onion);
        assert!(m.trust.is_none());
    }

    #[test]
    fn a_client_refuses_every_flag_only_a_node_has_even_at_its_default() {
        let name = crate::address::OnionName::from_seed(5).to_string();
        let cases: [(&[&str], &str); 16] = [
            (&["-name", &name], "-name "),
            (
                &["-hs-hostname-file", "/var/lib/tor/hs/hostname"],
                "-hs-hostname-file ",
            ),
            (
                &["-node", "127.0.0.1:9999"],
                "-node 127.0.0.1:9999: a client has no link listener",
            ),
            (
                &["-short-name", "alice"],
                "-short-name alice: a client is not listed",
            ),
            (&["-exit"], "-exit true: "),
            (&["-exit=false"], "-exit false: "),
            (&["-family", "ops"], "-family ops: "),
            (
                &["-node-port", "9999"],
                "-node-port 9999: a client has no onion service",
            ),
            (
                &["-gateway=false"],
                "-gateway false: a client is no gateway",
            ),
            (&["-gateway-clients", "1000"], "-gateway-clients 1000: "),
            (&["-gateway-held", "256"], "-gateway-held 256: "),
            (&["-gateway-held-bytes", "1"], "-gateway-held-bytes 1: "),
            (&["-export-node-info"], "-export-node-info true: "),
            (&["-custody-max", "0"], "-custody-max 0: a client keeps no"),
            (
                &["-exit-partial-bytes", "268435456"],
                "-exit-partial-bytes 268435456: ",
            ),
            (
                &["-addr", "0.0.0.0:2525"],
                "-addr 0.0.0.0:2525: a client's SMTP listener is for this machine's mail programs only",
            ),
        ];
        for (flags, starts) in cases {
            let e = client(flags).unwrap_err();
            assert_eq!(e.exit_status(), sysexits::USAGE);
            let e = e.to_string();
            assert!(e.starts_with(starts), "{flags:?}: {e}");
            assert!(!e.contains('\n'));
            if !starts.starts_with("-addr") {
                assert!(e.ends_with("leave it out with -client"), "{e}");
            }
        }
        for addr in ["[::]:2525", "192.168.1.5:2525", "[::ffff:127.0.0.1]:2525"] {
            let e = client(&["-addr", addr]).unwrap_err().to_string();
            assert!(e.starts_with("-addr "), "{addr}: {e}");
            assert!(e.contains("127.0.0.1:2525"), "{addr}: {e}");
        }
        let e = client(&["-metrics", "0.0.0.0:9900"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("-metrics "), "{e}");
    }

    #[test]
    fn a_client_needs_sphinx_a_gateway_and_a_pki_file() {
        let refused = |all: &[&str]| {
            parse(args(all))
                .unwrap()
                .daemon
                .validate()
                .unwrap_err()
                .to_string()
        };
        let e = refused(&["-client", "-via", "alice", "-pki-file", "n.json"]);
        assert!(e.starts_with("-client true: "), "{e}");
        assert!(e.contains("add -sphinx"), "{e}");
        let e = refused(&["-sphinx", "-client", "-pki-file", "n.json"]);
        assert!(
            e.starts_with("-via (missing): -client needs the gateway"),
            "{e}"
        );
        let e = refused(&["-sphinx", "-client", "-via", "alice"]);
        assert!(e.starts_with("-pki-file (missing): -client needs"), "{e}");
        let e = refused(&[
            "-sphinx",
            "-client",
            "-via",
            "al ice",
            "-pki-file",
            "n.json",
        ]);
        assert!(e.starts_with("-via al ice: is neither a short name"), "{e}");
        // -via alone means a client was meant.
        let e = validated(&[
            "-sphinx",
            "-via",
            "alice",
            "-pki-file",
            "n.json",
            "-short-name",
            "b",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("-via alice: names the gateway of a client; add -client"),
            "{e}"
        );
    }

    #[test]
    fn a_client_tells_a_flag_given_in_the_flags_file_or_to_check_from_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flags");
        std::fs::write(&file, "-exit=true\n").unwrap();
        let e = client(&["-flags-file", file.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("-exit true: "), "{e}");
        // `pluto2 check` validates the same way.
        let words = [
            "check",
            "-sphinx",
            "-client",
            "-via",
            "alice",
            "-pki-file",
            "n.json",
            "-node-port",
            "9999",
        ];
        let Some(crate::config::Command::Check(daemon)) = parse(args(&words)).unwrap().command
        else {
            panic!("not check");
        };
        let e = daemon.validate().unwrap_err().to_string();
        assert!(e.starts_with("-node-port 9999: "), "{e}");
        let Some(crate::config::Command::Check(daemon)) = parse(args(&words[..7])).unwrap().command
        else {
            panic!("not check");
        };
        daemon.validate().unwrap();
    }
}
