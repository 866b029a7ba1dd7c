//! `nodes.json`: the operators' contract, parsed and checked.
//!
//! The file is a JSON object with two keys:
//!
//! * `nodes`: one object per node, exactly as `pluto2 -export-node-info`
//!   prints it ([`NodeEntry`]): short name, onion name, the onion's virtual
//!   port for links, the base64 ed25519 identity key, whether it is an
//!   exit, an optional operator family and, for a node that serves
//!   clients, `"gateway": true` (left out when false, so files written
//!   before client mode read and verify as they did). Mix keys are not here: they
//!   change every epoch and travel as bundles signed by the identity key
//!   (`wire::bundle`), fetched over the links.
//! * `params`: the network parameters ([`Params`]), each optional with its
//!   production default. They are network-wide: every node must use the
//!   same ones, and [`Params::hash`] goes into the link HELLO so that two
//!   nodes with different parameters refuse each other.
//! * `serial`, `issued`, `expires` ([`Validity`]): where the file stands in
//!   the sequence of directories the operators publish, and when it stops
//!   being valid (RFC 3339 in UTC, `"2026-11-25T00:00:00Z"`). Optional
//!   here; a node that trusts operator keys requires them
//!   (`wire::pki_sig`, which also checks the signatures over the bytes).
//!
//! Unknown keys are refused everywhere: a misspelt parameter must not
//! silently fall back to its default. Every other mistake is reported as
//! one [`PkiError`] naming the entry (`nodes[2] "carol"`) and what to fix.
//!
//! Pure: bytes in, a [`Directory`] out. Reading the file is the daemon's
//! business.

use std::collections::HashMap;
use std::time::Duration;

use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fragment::{MAX_DATA, MAX_FRAGMENTS};
use super::packet::{MAX_HOPS, NodeId};
use crate::address::OnionName;

/// Largest `nodes.json` accepted, so a wrong path (a log file, a disk
/// image) is refused before it is read into memory.
pub const MAX_FILE_SIZE: usize = 1 << 20;
/// Most nodes in one file; far above any network this design serves.
pub const MAX_NODES: usize = 1000;
/// Longest short name and family: they appear in logs and must stay short.
pub const MAX_LABEL: usize = 32;

/// Fewest and most hops after the entry. Two is the least that keeps the
/// exit from learning the entry; the most is what a Sphinx header holds.
pub const MIN_HOPS: usize = 2;
pub const MAX_ROUTE_HOPS: usize = 5;
const _: () = assert!(MAX_ROUTE_HOPS <= MAX_HOPS);
/// Most hops after the gateway on a client's route: the gateway is a
/// Sphinx hop of its own (the client, not the gateway, builds the
/// header), so it takes one of the header's places.
pub const MAX_CLIENT_HOPS: usize = MAX_HOPS - 1;
const _: () = assert!(MAX_CLIENT_HOPS >= MIN_HOPS);

/// Room kept in a message's blob for its envelope (sender, recipients,
/// length prefixes), so that [`Params::max_message_size`] counts the body
/// the client sends, as SMTP `SIZE` does.
pub const ENVELOPE_ALLOWANCE: usize = 1 << 20;
/// The largest `max_message_size`: what [`MAX_FRAGMENTS`] fragments carry,
/// less the envelope allowance.
pub const MAX_MESSAGE_SIZE: usize = MAX_FRAGMENTS * MAX_DATA - ENVELOPE_ALLOWANCE;
// An exit takes a blob up to `max_message_size` plus the largest honest
// envelope (`fragment::max_blob_len`): that must fit the fragments too.
const _: () =
    assert!(MAX_MESSAGE_SIZE + crate::wire::fragment::MAX_ENVELOPE <= MAX_FRAGMENTS * MAX_DATA);
/// The smallest `max_message_size` (the same floor as `-max-message-size`).
pub const MIN_MESSAGE_SIZE: usize = 1024;
/// Longest per-hop delay a network may choose: a day. Longer delays only
/// make packets outlive their keys and custody.
pub const MAX_HOP_DELAY: Duration = Duration::from_secs(24 * 3600);

/// One node as `nodes.json` lists it and `-export-node-info` prints it.
/// Keys are base64 (standard alphabet, padded) of their 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The short name (`-short-name`), used in logs.
    pub name: String,
    /// The v3 onion name (`-name`).
    pub onion: String,
    /// The onion's virtual port for links (`-node-port`).
    pub port: u16,
    /// The ed25519 identity public key.
    pub identity: String,
    /// Whether the node delivers mail out of the mixnet.
    pub exit: bool,
    /// The operator family: a route never holds two nodes of one family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Whether the node serves clients (`-gateway`). Written only when
    /// true: a node that is no gateway prints the entry it printed before
    /// client mode existed, byte for byte, and files without the key stay
    /// valid (signatures are over the file's bytes, `wire::pki_sig`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub gateway: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The file as written; `params` may be left out entirely, and so may the
/// validity fields (see [`Validity`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    nodes: Vec<NodeEntry>,
    #[serde(default)]
    params: RawParams,
    #[serde(default)]
    serial: Option<u64>,
    #[serde(default)]
    issued: Option<String>,
    #[serde(default)]
    expires: Option<String>,
}

/// What the file says about its own validity. The serial orders the
/// directories a network publishes, so a node can refuse an older one
/// replayed to it; `expires` bounds how long a captured file can be
/// replayed at all. Each is optional in the file: a node that checks
/// signatures requires all three (`wire::pki_sig`), an unsigned test
/// network may leave them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Validity {
    pub serial: Option<u64>,
    pub issued: Option<time::OffsetDateTime>,
    pub expires: Option<time::OffsetDateTime>,
}

/// Parameters as written: numbers, and durations as strings ("5m").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParams {
    hops: Option<u64>,
    hop_delay_mean: Option<String>,
    hop_delay_max: Option<String>,
    max_message_size: Option<u64>,
    ack_timeout: Option<String>,
    custody_horizon: Option<String>,
    e2e_horizon: Option<String>,
    epoch: Option<String>,
    loop_cover_mean: Option<String>,
    drop_cover_mean: Option<String>,
    client_send_mean: Option<String>,
    client_fetch_mean: Option<String>,
}

/// The network parameters, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Mix nodes on a route after the entry; the last one is an exit.
    pub hops: usize,
    /// Mean of the per-hop delay, Exp(mean) truncated at `hop_delay_max`.
    pub hop_delay_mean: Duration,
    pub hop_delay_max: Duration,
    /// Largest message body accepted (SMTP `SIZE` in `-sphinx` mode).
    pub max_message_size: usize,
    /// How long an entry first waits for COMPLETE before retransmitting.
    pub ack_timeout: Duration,
    /// How long a hop retries handing a packet to the next hop.
    pub custody_horizon: Duration,
    /// How long an entry retries a message end to end.
    pub e2e_horizon: Duration,
    /// Length of a mix-key epoch; epoch number = unix time ÷ this.
    pub epoch: Duration,
    /// Mean gap between two loop cover packets from one node (Poisson);
    /// zero turns loop cover off.
    pub loop_cover_mean: Duration,
    /// The same for drop cover.
    pub drop_cover_mean: Duration,
    /// Mean gap between two packets a client sends to its gateway, real
    /// or loop (Poisson, so its traffic says nothing about when it has
    /// mail). Network-wide, so all clients look alike.
    pub client_send_mean: Duration,
    /// Mean gap between two fetches of a client from its gateway.
    pub client_fetch_mean: Duration,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

impl Default for Params {
    /// Production values: minutes per hop, hours before a retransmission,
    /// days before giving up.
    fn default() -> Params {
        let mean = Duration::from_secs(5 * MINUTE);
        Params {
            hops: 3,
            hop_delay_mean: mean,
            hop_delay_max: mean * 12,
            max_message_size: 10 * 1024 * 1024,
            ack_timeout: Duration::from_secs(HOUR),
            custody_horizon: Duration::from_secs(2 * DAY),
            e2e_horizon: Duration::from_secs(5 * DAY),
            epoch: Duration::from_secs(DAY),
            loop_cover_mean: Duration::from_secs(MINUTE),
            drop_cover_mean: Duration::from_secs(MINUTE),
            client_send_mean: DEFAULT_CLIENT_SEND_MEAN,
            client_fetch_mean: DEFAULT_CLIENT_FETCH_MEAN,
        }
    }
}

/// A client's packet every 30 s on average: about 2,900 packets a day
/// (86,400 s ÷ 30 s), 8 KiB each, so about 24 MiB a day upstream for a
/// client that sends no mail at all, which a laptop on any connection
/// bears. With mail, its packets take the place of drop cover on three
/// ticks of four (the fourth is always a loop): a 4 KiB message (one
/// packet) leaves within 40 s on average, a 200 KiB one (about 26
/// packets) within some 17 minutes, small beside the hops' delays of
/// minutes each. Faster would cost every idle client
/// more traffic for little; slower would make large messages take hours.
pub const DEFAULT_CLIENT_SEND_MEAN: Duration = Duration::from_secs(30);
/// A client's fetch every 30 s on average: about 2,900 fetches a day
/// (about 24 MiB down in fixed-size answers), and a reply waits at the
/// gateway half a minute on average, nothing beside `ack_timeout` (an
/// hour). Each fetch takes one reply, and every reply answers a packet
/// the client sent (a quarter of its send ticks are loops that come back
/// to its mailbox, the rest mail or drop cover; a message's many packets
/// bring back one COMPLETE): fetching at least as often as sending keeps
/// the mailbox draining, about a third as full as the fetches could
/// empty it, so a network must not fetch less often than it sends.
pub const DEFAULT_CLIENT_FETCH_MEAN: Duration = Duration::from_secs(30);

/// The shortest epoch a network may choose (test networks rotate in
/// seconds; production in a day).
pub const MIN_EPOCH: Duration = Duration::from_secs(5);
/// The shortest mean gap between cover packets: 100 per second per node
/// is far beyond what any network needs and bounds the CPU it costs.
pub const MIN_COVER_MEAN: Duration = Duration::from_millis(10);

impl Params {
    /// SHA-256 over a canonical encoding: a label naming the format, then
    /// every parameter in a fixed order, integers big-endian, durations in
    /// nanoseconds. `"5m"` and `"300s"` hash alike; any real difference
    /// does not.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"pluto2 mixnet params v1\0");
        h.update((self.hops as u64).to_be_bytes());
        for d in [self.hop_delay_mean, self.hop_delay_max] {
            h.update(d.as_nanos().to_be_bytes());
        }
        h.update((self.max_message_size as u64).to_be_bytes());
        for d in [self.ack_timeout, self.custody_horizon, self.e2e_horizon] {
            h.update(d.as_nanos().to_be_bytes());
        }
        h.update(b"v2\0");
        for d in [self.epoch, self.loop_cover_mean, self.drop_cover_mean] {
            h.update(d.as_nanos().to_be_bytes());
        }
        h.update(b"v3\0");
        for d in [self.client_send_mean, self.client_fetch_mean] {
            h.update(d.as_nanos().to_be_bytes());
        }
        h.finalize().into()
    }

    /// The epoch `now` falls in.
    pub fn epoch_at(&self, now_ms: u64) -> u32 {
        (now_ms / self.epoch.as_millis().max(1) as u64) as u32
    }

    /// When `epoch` begins, in unix milliseconds.
    pub fn epoch_start(&self, epoch: u32) -> u64 {
        epoch as u64 * self.epoch.as_millis() as u64
    }
}

/// One node, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub short_name: String,
    pub onion: OnionName,
    /// Its address in packet headers: the key inside its onion name.
    pub id: NodeId,
    pub port: u16,
    pub identity: ed25519_dalek::VerifyingKey,
    pub exit: bool,
    pub family: Option<String>,
    /// Whether it serves clients (`"gateway": true`).
    pub gateway: bool,
}

/// Who reads a `nodes.json`: a listed node, by its onion name, or a
/// client, by the gateway it names with `-via` (short or onion name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader<'a> {
    Node(&'a OnionName),
    Client(&'a str),
}

/// The validated `nodes.json` as seen by one node.
#[derive(Debug, Clone)]
pub struct Directory {
    params: Params,
    nodes: Vec<Node>,
    by_id: HashMap<NodeId, usize>,
    own: usize,
    validity: Validity,
}

/// What is wrong with a `nodes.json`, in words an operator can act on.
/// The daemon prefixes the file's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    #[error("{0} bytes; nodes.json is at most {MAX_FILE_SIZE} bytes: is this the right file?")]
    TooLarge(usize),
    #[error("not a valid nodes.json: {0}")]
    Json(String),
    #[error("{0} nodes; at most {MAX_NODES} are supported")]
    TooManyNodes(usize),
    #[error("{entry}: {what}; {fix}")]
    Entry {
        entry: String,
        what: String,
        fix: &'static str,
    },
    #[error(
        "{entry} has the same {field} as {other}: a node may be listed once; remove one of them"
    )]
    Duplicate {
        entry: String,
        other: String,
        field: &'static str,
    },
    #[error("params.{name} {value:?}: {reason}")]
    Param {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "this node ({0}) is not listed; add the output of `pluto2 -export-node-info` run on this node"
    )]
    OwnAbsent(String),
    #[error(
        "a route needs {hops} mix nodes besides this one (params.hops = {hops}), {others} are listed; add nodes or lower params.hops"
    )]
    TooFewNodes { hops: usize, others: usize },
    #[error(
        "no exit node besides this one: a route ends at another node with \"exit\": true; add one"
    )]
    NoExit,
    #[error(
        "-via {0}: no node {0} in nodes.json; name a node listed with \"gateway\": true by its short name or onion name"
    )]
    ViaAbsent(String),
    #[error(
        "-via {0}: its entry lacks \"gateway\": true, so it does not serve clients; choose a node listed as a gateway"
    )]
    NotGateway(String),
    #[error(
        "params.hops = {0}: client mode needs hops ≤ {MAX_CLIENT_HOPS}: the gateway is the first of Sphinx's {MAX_HOPS} hops; use another network or ask its operators to lower params.hops"
    )]
    ClientHops(usize),
    #[error(
        "a client's route needs {hops} mix nodes besides the gateway {via} and its family (params.hops = {hops}), {others} are listed; choose another gateway or add nodes"
    )]
    ClientTooFewNodes {
        via: String,
        hops: usize,
        others: usize,
    },
    #[error(
        "no exit node besides the gateway {0} and its family: a client's route ends at another node with \"exit\": true; choose another gateway or add an exit"
    )]
    ClientNoExit(String),
    #[error("{name} {value:?}: {reason}")]
    Validity {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// `nodes[2] "carol"`: the position finds the line, the name the node.
fn entry_label(index: usize, name: &str) -> String {
    let shown: String = name.chars().take(MAX_LABEL + 8).collect();
    format!("nodes[{index}] {shown:?}")
}

/// Short names and families: 1 to 32 of `a-z A-Z 0-9 - _ .`, so they are
/// safe in logs and file names. Also checks `-short-name` and `-family`.
pub fn check_label(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    if value.len() > MAX_LABEL {
        return Err("is longer than 32 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only hold letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Decodes a base64 32-byte key.
fn key_bytes(value: &str) -> Result<[u8; 32], String> {
    let bytes = BASE64
        .decode(value.as_bytes())
        .map_err(|e| format!("not base64 ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes, a key is 32", bytes.len()))
}

/// Encodes a key the way `nodes.json` carries it.
pub fn encode_key(key: &[u8; 32]) -> String {
    BASE64.encode(key)
}

impl NodeEntry {
    fn validate(&self, index: usize) -> Result<Node, PkiError> {
        let entry = entry_label(index, &self.name);
        let wrong = |what: String, fix: &'static str| PkiError::Entry {
            entry: entry.clone(),
            what,
            fix,
        };
        check_label(&self.name).map_err(|e| {
            wrong(
                format!("\"name\" {e}"),
                "use the node's -short-name (letters, digits, '-', '_', '.')",
            )
        })?;
        let onion = OnionName::parse(self.onion.trim()).map_err(|e| {
            wrong(
                format!("\"onion\" {:?}: {e}", self.onion),
                "copy it from the node's -export-node-info output",
            )
        })?;
        if self.port == 0 {
            return Err(wrong(
                "\"port\" is 0".into(),
                "use the node's -node-port (the HiddenServicePort, 9999 by default)",
            ));
        }
        let identity = key_bytes(&self.identity)
            .map_err(|e| format!("\"identity\" is {e}"))
            .and_then(|k| {
                ed25519_dalek::VerifyingKey::from_bytes(&k)
                    .map_err(|_| "\"identity\" is not an ed25519 public key".to_string())
            })
            .map_err(|what| wrong(what, "copy it from the node's -export-node-info output"))?;
        if let Some(family) = &self.family {
            check_label(family).map_err(|e| {
                wrong(
                    format!("\"family\" {e}"),
                    "use the operator's -family, or leave the key out",
                )
            })?;
        }
        Ok(Node {
            short_name: self.name.clone(),
            id: NodeId(onion.public_key()),
            onion,
            port: self.port,
            identity,
            exit: self.exit,
            family: self.family.clone(),
            gateway: self.gateway,
        })
    }
}

fn duration(
    name: &'static str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, PkiError> {
    match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text.trim()).map_err(|e| PkiError::Param {
            name,
            value: text.clone(),
            reason: format!("{e}; write a duration such as \"20ms\", \"5m\" or \"2d\""),
        }),
    }
}

fn param_error(name: &'static str, value: impl ToString, reason: String) -> PkiError {
    PkiError::Param {
        name,
        value: value.to_string(),
        reason,
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl RawParams {
    fn validate(&self) -> Result<Params, PkiError> {
        let d = Params::default();
        let hops = match self.hops {
            None => d.hops,
            Some(h) if (MIN_HOPS as u64..=MAX_ROUTE_HOPS as u64).contains(&h) => h as usize,
            Some(h) => {
                return Err(param_error(
                    "hops",
                    h,
                    format!("must be {MIN_HOPS} to {MAX_ROUTE_HOPS} (3 is the usual choice)"),
                ));
            }
        };
        let mean = duration(
            "hop_delay_mean",
            self.hop_delay_mean.as_ref(),
            d.hop_delay_mean,
        )?;
        let max = duration("hop_delay_max", self.hop_delay_max.as_ref(), mean * 12)?;
        if max < mean {
            return Err(param_error(
                "hop_delay_max",
                show(max),
                format!("must not be below hop_delay_mean ({})", show(mean)),
            ));
        }
        if max > MAX_HOP_DELAY {
            return Err(param_error(
                "hop_delay_max",
                show(max),
                format!("must be at most {}", show(MAX_HOP_DELAY)),
            ));
        }
        let max_message_size = match self.max_message_size {
            None => d.max_message_size,
            Some(n) if (MIN_MESSAGE_SIZE as u64..=MAX_MESSAGE_SIZE as u64).contains(&n) => {
                n as usize
            }
            Some(n) => {
                return Err(param_error(
                    "max_message_size",
                    n,
                    format!(
                        "must be {MIN_MESSAGE_SIZE} to {MAX_MESSAGE_SIZE} bytes (what {MAX_FRAGMENTS} fragments carry)"
                    ),
                ));
            }
        };
        let ack_timeout = duration("ack_timeout", self.ack_timeout.as_ref(), d.ack_timeout)?;
        let custody_horizon = duration(
            "custody_horizon",
            self.custody_horizon.as_ref(),
            d.custody_horizon,
        )?;
        let e2e_horizon = duration("e2e_horizon", self.e2e_horizon.as_ref(), d.e2e_horizon)?;
        for (name, value) in [
            ("ack_timeout", ack_timeout),
            ("custody_horizon", custody_horizon),
        ] {
            if value.is_zero() {
                return Err(param_error(name, "0", "must be longer than zero".into()));
            }
        }
        if e2e_horizon <= ack_timeout {
            return Err(param_error(
                "e2e_horizon",
                show(e2e_horizon),
                format!(
                    "must be longer than ack_timeout ({}), or no message is ever retransmitted",
                    show(ack_timeout)
                ),
            ));
        }
        let epoch = duration("epoch", self.epoch.as_ref(), d.epoch)?;
        if epoch < MIN_EPOCH {
            return Err(param_error(
                "epoch",
                show(epoch),
                format!("must be at least {}", show(MIN_EPOCH)),
            ));
        }
        if epoch.subsec_millis() != 0 || epoch.as_secs() > u32::MAX as u64 {
            return Err(param_error(
                "epoch",
                show(epoch),
                "must be whole seconds, such as \"24h\" or \"10s\"".into(),
            ));
        }
        if max * (hops as u32) >= epoch {
            return Err(param_error(
                "epoch",
                show(epoch),
                format!(
                    "must be longer than a route's longest delay (hops × hop_delay_max = {}): a packet must cross the network within its key's grace",
                    show(max * hops as u32)
                ),
            ));
        }
        let loop_cover_mean = duration(
            "loop_cover_mean",
            self.loop_cover_mean.as_ref(),
            d.loop_cover_mean,
        )?;
        let drop_cover_mean = duration(
            "drop_cover_mean",
            self.drop_cover_mean.as_ref(),
            d.drop_cover_mean,
        )?;
        let client_send_mean = duration(
            "client_send_mean",
            self.client_send_mean.as_ref(),
            d.client_send_mean,
        )?;
        let client_fetch_mean = duration(
            "client_fetch_mean",
            self.client_fetch_mean.as_ref(),
            d.client_fetch_mean,
        )?;
        // No 0 here: a client's packets and fetches are its only traffic,
        // real or not, so they cannot be switched off.
        for (name, value) in [
            ("client_send_mean", client_send_mean),
            ("client_fetch_mean", client_fetch_mean),
        ] {
            if value < MIN_COVER_MEAN {
                return Err(param_error(
                    name,
                    show(value),
                    format!("must be at least {}", show(MIN_COVER_MEAN)),
                ));
            }
        }
        if client_fetch_mean > client_send_mean {
            return Err(param_error(
                "client_fetch_mean",
                show(client_fetch_mean),
                format!(
                    "must not be longer than client_send_mean ({}): a client fetches one reply at a time, so fetching less often than it sends lets its mailbox at the gateway grow",
                    show(client_send_mean)
                ),
            ));
        }
        for (name, value) in [
            ("loop_cover_mean", loop_cover_mean),
            ("drop_cover_mean", drop_cover_mean),
        ] {
            if !value.is_zero() && value < MIN_COVER_MEAN {
                return Err(param_error(
                    name,
                    show(value),
                    format!("must be 0 (off) or at least {}", show(MIN_COVER_MEAN)),
                ));
            }
        }
        Ok(Params {
            hops,
            hop_delay_mean: mean,
            hop_delay_max: max,
            max_message_size,
            ack_timeout,
            custody_horizon,
            e2e_horizon,
            epoch,
            loop_cover_mean,
            drop_cover_mean,
            client_send_mean,
            client_fetch_mean,
        })
    }
}

impl RawDirectory {
    /// The validity fields, checked: times are RFC 3339 in UTC, and a file
    /// is not issued after it expires.
    fn validity(&self) -> Result<Validity, PkiError> {
        let issued = self
            .issued
            .as_deref()
            .map(|t| timestamp("issued", t))
            .transpose()?;
        let expires = self
            .expires
            .as_deref()
            .map(|t| timestamp("expires", t))
            .transpose()?;
        if let (Some(issued), Some(expires)) = (issued, expires)
            && issued > expires
        {
            return Err(PkiError::Validity {
                name: "expires",
                value: self.expires.clone().unwrap_or_default(),
                reason: format!(
                    "is before \"issued\" ({}); a file cannot expire before it is issued",
                    self.issued.as_deref().unwrap_or_default()
                ),
            });
        }
        Ok(Validity {
            serial: self.serial,
            issued,
            expires,
        })
    }
}

/// An RFC 3339 time in UTC (`Z` or `+00:00`). Other offsets are refused
/// rather than converted: operators compare these strings by eye, and one
/// zone keeps that honest.
fn timestamp(name: &'static str, text: &str) -> Result<time::OffsetDateTime, PkiError> {
    let wrong = |reason: String| PkiError::Validity {
        name,
        value: text.to_string(),
        reason,
    };
    let when = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            wrong(format!(
                "{e}; write an RFC 3339 time in UTC such as \"2026-11-25T00:00:00Z\""
            ))
        })?;
    if !when.offset().is_utc() {
        return Err(wrong(
            "is not in UTC; write it with a Z, such as \"2026-11-25T00:00:00Z\"".into(),
        ));
    }
    Ok(when)
}

/// Everything of the file that does not depend on who reads it: the
/// params, the validity fields and every entry, checked.
struct Listing {
    params: Params,
    validity: Validity,
    nodes: Vec<Node>,
}

impl Listing {
    fn read(bytes: &[u8]) -> Result<Listing, PkiError> {
        if bytes.len() > MAX_FILE_SIZE {
            return Err(PkiError::TooLarge(bytes.len()));
        }
        let raw: RawDirectory =
            serde_json::from_slice(bytes).map_err(|e| PkiError::Json(e.to_string()))?;
        if raw.nodes.len() > MAX_NODES {
            return Err(PkiError::TooManyNodes(raw.nodes.len()));
        }
        let params = raw.params.validate()?;
        let validity = raw.validity()?;
        let mut nodes = Vec::with_capacity(raw.nodes.len());
        for (index, entry) in raw.nodes.iter().enumerate() {
            let node = entry.validate(index)?;
            for (earlier, seen) in nodes.iter().enumerate() {
                let seen: &Node = seen;
                let field = if seen.onion == node.onion {
                    "onion"
                } else if seen.identity == node.identity {
                    "identity"
                } else if seen.short_name == node.short_name {
                    "name"
                } else {
                    continue;
                };
                return Err(PkiError::Duplicate {
                    entry: entry_label(index, &node.short_name),
                    other: entry_label(earlier, &seen.short_name),
                    field,
                });
            }
            nodes.push(node);
        }
        Ok(Listing {
            params,
            validity,
            nodes,
        })
    }

    fn into_directory(self, own: usize) -> Directory {
        let by_id = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id, i))
            .collect();
        Directory {
            params: self.params,
            nodes: self.nodes,
            by_id,
            own,
            validity: self.validity,
        }
    }
}

impl Directory {
    /// Parses and checks `nodes.json` for `reader`.
    pub fn parse_as(bytes: &[u8], reader: Reader<'_>) -> Result<Directory, PkiError> {
        match reader {
            Reader::Node(own) => Directory::parse(bytes, own),
            Reader::Client(via) => Directory::parse_for_client(bytes, via),
        }
    }

    /// Parses and checks `nodes.json` for the node named `own`.
    pub fn parse(bytes: &[u8], own: &OnionName) -> Result<Directory, PkiError> {
        let listing = Listing::read(bytes)?;
        let (params, nodes) = (&listing.params, &listing.nodes);
        let own = nodes
            .iter()
            .position(|n| n.onion == *own)
            .ok_or_else(|| PkiError::OwnAbsent(own.to_string()))?;
        let others = nodes.len() - 1;
        if others < params.hops {
            return Err(PkiError::TooFewNodes {
                hops: params.hops,
                others,
            });
        }
        if !nodes.iter().enumerate().any(|(i, n)| i != own && n.exit) {
            return Err(PkiError::NoExit);
        }
        Ok(listing.into_directory(own))
    }

    /// Parses and checks `nodes.json` as a client of the gateway `via`
    /// (its short name or onion name) sees it: [`Directory::own`] is the
    /// gateway's entry, so [`Directory::others`] are the candidates for
    /// the rest of a route, as for a node. The gateway must be listed as
    /// one, and the network must leave room for it on a route: at most
    /// [`MAX_CLIENT_HOPS`] hops, and enough nodes (and an exit) outside
    /// the gateway's family, which never appears again on its routes.
    pub fn parse_for_client(bytes: &[u8], via: &str) -> Result<Directory, PkiError> {
        let listing = Listing::read(bytes)?;
        let (params, nodes) = (&listing.params, &listing.nodes);
        let as_onion = OnionName::parse(via.trim()).ok();
        let gateway = nodes
            .iter()
            .position(|n| n.short_name == via || as_onion.as_ref() == Some(&n.onion))
            .ok_or_else(|| PkiError::ViaAbsent(via.to_string()))?;
        let entry = &nodes[gateway];
        let shown = entry.short_name.clone();
        if !entry.gateway {
            return Err(PkiError::NotGateway(shown));
        }
        if params.hops > MAX_CLIENT_HOPS {
            return Err(PkiError::ClientHops(params.hops));
        }
        let usable: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|&(i, n)| i != gateway && (entry.family.is_none() || n.family != entry.family))
            .map(|(_, n)| n)
            .collect();
        if usable.len() < params.hops {
            return Err(PkiError::ClientTooFewNodes {
                via: shown,
                hops: params.hops,
                others: usable.len(),
            });
        }
        if !usable.iter().any(|n| n.exit) {
            return Err(PkiError::ClientNoExit(shown));
        }
        Ok(listing.into_directory(gateway))
    }

    /// Parses and checks `nodes.json` as every node it lists would, for a
    /// tool that is none of them (`pluto2 pki verify`). The returned
    /// directory is the one a listed middle node (or, without one, the
    /// first node) reads; every check that depends on the reader is made
    /// for all of them: the number of other nodes is the same for each,
    /// and only an exit can lack another exit.
    pub fn parse_for_every_node(bytes: &[u8]) -> Result<Directory, PkiError> {
        /// Just enough of an entry to pick a reader; everything else is
        /// checked by [`Directory::parse`].
        #[derive(Deserialize)]
        struct Listed {
            onion: String,
            exit: bool,
        }
        #[derive(Deserialize)]
        struct Listing {
            nodes: Vec<Listed>,
        }
        if bytes.len() > MAX_FILE_SIZE {
            return Err(PkiError::TooLarge(bytes.len()));
        }
        let listed: Vec<(OnionName, bool)> = serde_json::from_slice::<Listing>(bytes)
            .map(|l| l.nodes)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| Some((OnionName::parse(n.onion.trim()).ok()?, n.exit)))
            .collect();
        let reader = listed
            .iter()
            .find(|(_, exit)| !exit)
            .or(listed.first())
            .map(|(onion, _)| onion.clone());
        // Without a readable entry, the file holds an error that parsing
        // names, whoever reads it; an empty list is the one exception.
        let any = OnionName::from_public_key(&[0; 32]);
        let directory = match Directory::parse(bytes, reader.as_ref().unwrap_or(&any)) {
            Err(PkiError::OwnAbsent(_)) => {
                return Err(PkiError::Json("\"nodes\" lists no node".into()));
            }
            other => other?,
        };
        let exits: Vec<usize> = (0..directory.nodes.len())
            .filter(|&i| directory.nodes[i].exit)
            .collect();
        if let [only] = exits[..] {
            let node = &directory.nodes[only];
            return Err(PkiError::Entry {
                entry: entry_label(only, &node.short_name),
                what: "is the only exit node, and a route from it must end at another one".into(),
                fix: "add a second node with \"exit\": true",
            });
        }
        Ok(directory)
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The file's serial, issue and expiry times, as far as it has them.
    pub fn validity(&self) -> &Validity {
        &self.validity
    }

    /// This node's own entry.
    pub fn own(&self) -> &Node {
        &self.nodes[self.own]
    }

    /// Every node, this one included, in file order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every node but this one: the candidates for a route.
    pub fn others(&self) -> impl Iterator<Item = &Node> {
        let own = self.own;
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != own)
            .map(|(_, n)| n)
    }

    /// The node a packet header names, if it is listed (a hop forwards
    /// only to listed nodes).
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.by_id.get(id).map(|&i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{Value, json};

    /// A node's entry built from a seed: onion key and identity both
    /// derived from it, so entries differ in every field.
    fn entry(seed: u8, name: &str, exit: bool) -> Value {
        let onion = OnionName::from_seed(seed);
        let identity = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
        json!({
            "name": name,
            "onion": onion.to_string(),
            "port": 9999,
            "identity": encode_key(identity.as_bytes()),
            "exit": exit,
        })
    }

    fn own() -> OnionName {
        OnionName::from_seed(1)
    }

    /// Four nodes (this one and three others, all exits): the smallest
    /// network for the default three hops.
    fn network() -> Value {
        json!({
            "nodes": [
                entry(1, "alice", true),
                entry(2, "bob", true),
                entry(3, "carol", true),
                entry(4, "dave", true),
            ]
        })
    }

    fn parse(doc: &Value) -> Result<Directory, PkiError> {
        Directory::parse(doc.to_string().as_bytes(), &own())
    }

    fn error(doc: &Value) -> String {
        let e = parse(doc).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn it_numbers_epochs_from_the_unix_epoch() {
        let p = Params {
            epoch: Duration::from_secs(10),
            ..Default::default()
        };
        assert_eq!(p.epoch_at(0), 0);
        assert_eq!(p.epoch_at(9_999), 0);
        assert_eq!(p.epoch_at(10_000), 1);
        assert_eq!(p.epoch_start(7), 70_000);
        assert_eq!(p.epoch_at(p.epoch_start(123_456)), 123_456);
    }

    #[test]
    fn loop_and_drop_cover_may_be_switched_off() {
        let mut doc = network();
        doc["params"] = json!({"loop_cover_mean": "0s", "drop_cover_mean": "0s"});
        let dir = parse(&doc).unwrap();
        assert!(dir.params().loop_cover_mean.is_zero());
        assert!(dir.params().drop_cover_mean.is_zero());
    }

    #[test]
    fn it_reads_a_minimal_network_with_production_defaults() {
        let dir = parse(&network()).unwrap();
        let p = dir.params();
        assert_eq!(*p, Params::default());
        assert_eq!(p.hops, 3);
        assert_eq!(p.hop_delay_mean, Duration::from_secs(300));
        assert_eq!(p.hop_delay_max, Duration::from_secs(3600));
        assert_eq!(p.max_message_size, 10 * 1024 * 1024);
        assert_eq!(p.ack_timeout, Duration::from_secs(3600));
        assert_eq!(p.custody_horizon, Duration::from_secs(2 * 86400));
        assert_eq!(p.e2e_horizon, Duration::from_secs(5 * 86400));
        assert_eq!(dir.own().short_name, "alice");
        assert_eq!(dir.nodes().len(), 4);
        let others: Vec<&str> = dir.others().map(|n| n.short_name.as_str()).collect();
        assert_eq!(others, ["bob", "carol", "dave"]);
    }

    #[test]
    fn it_reads_params_and_derives_the_delay_cap_from_the_mean() {
        let mut doc = network();
        doc["params"] = json!({
            "hops": 2,
            "hop_delay_mean": "20ms",
            "max_message_size": 65536,
            "ack_timeout": "2s",
            "custody_horizon": "1m",
            "e2e_horizon": "5m",
        });
        let p = parse(&doc).unwrap().params().clone();
        assert_eq!(p.hops, 2);
        assert_eq!(p.hop_delay_mean, Duration::from_millis(20));
        assert_eq!(p.hop_delay_max, Duration::from_millis(240));
        assert_eq!(p.max_message_size, 65536);
        assert_eq!(p.ack_timeout, Duration::from_secs(2));
        assert_eq!(p.custody_horizon, Duration::from_secs(60));
        assert_eq!(p.e2e_horizon, Duration::from_secs(300));
        doc["params"]["hop_delay_max"] = json!("100ms");
        assert_eq!(
            parse(&doc).unwrap().params().hop_delay_max,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn it_finds_nodes_by_their_header_address() {
        let dir = parse(&network()).unwrap();
        let carol = OnionName::from_seed(3);
        let node = dir.node(&NodeId(carol.public_key())).unwrap();
        assert_eq!(node.short_name, "carol");
        assert_eq!(node.onion, carol);
        assert_eq!(node.port, 9999);
        assert!(dir.node(&NodeId([9; 32])).is_none());
    }

    #[test]
    fn it_prints_entries_that_it_reads_back_unchanged() {
        let mut e = entry(2, "bob", false);
        e["family"] = json!("ops-1");
        let parsed: NodeEntry = serde_json::from_value(e.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), e);
        // Without a family the key is left out, not written as null.
        let bare: NodeEntry = serde_json::from_value(entry(2, "bob", false)).unwrap();
        assert!(!serde_json::to_string(&bare).unwrap().contains("family"));
    }

    #[test]
    fn it_refuses_unknown_keys_at_every_level() {
        let mut doc = network();
        doc["params"] = json!({"hop": 3});
        let e = error(&doc);
        assert!(e.contains("unknown field `hop`"), "{e}");

        let mut doc = network();
        doc["nodes"][2]["exitt"] = json!(true);
        assert!(error(&doc).contains("unknown field `exitt`"));

        let mut doc = network();
        doc["version"] = json!(1);
        assert!(error(&doc).contains("unknown field `version`"));
    }

    #[test]
    fn it_reads_serial_issued_and_expires_and_leaves_them_optional() {
        assert_eq!(*parse(&network()).unwrap().validity(), Validity::default());
        let mut doc = network();
        doc["serial"] = json!(7);
        doc["issued"] = json!("2026-11-18T00:00:00Z");
        doc["expires"] = json!("2026-11-25T12:30:00+00:00");
        let v = *parse(&doc).unwrap().validity();
        assert_eq!(v.serial, Some(7));
        assert_eq!(v.issued.unwrap().unix_timestamp(), 1_794_960_000);
        assert_eq!(
            v.expires.unwrap().unix_timestamp(),
            1_794_960_000 + 7 * 86400 + 12 * 3600 + 1800
        );
        // Issued and expiring at the same moment is a (useless) valid file.
        doc["expires"] = doc["issued"].clone();
        parse(&doc).unwrap();
    }

    #[test]
    fn it_refuses_bad_validity_fields_naming_them() {
        let cases = [
            ("serial", json!(-1), "invalid value"),
            ("serial", json!("7"), "invalid type"),
            ("serial", json!(1.5), "invalid type"),
            ("issued", json!("2026-11-18"), "RFC 3339"),
            ("expires", json!("tomorrow"), "RFC 3339"),
            ("expires", json!("2026-11-25T00:00:00+01:00"), "not in UTC"),
            ("issued", json!(1795046400), "invalid type"),
        ];
        for (field, value, said) in cases {
            let mut doc = network();
            doc[field] = value.clone();
            let e = error(&doc);
            assert!(e.contains(said), "{field} {value}: {e}");
            if said != "invalid type" && said != "invalid value" {
                assert!(e.starts_with(&format!("{field} ")), "{e}");
            }
        }
    }

    #[test]
    fn it_refuses_a_file_that_expires_before_it_is_issued() {
        let mut doc = network();
        doc["issued"] = json!("2026-11-25T00:00:01Z");
        doc["expires"] = json!("2026-11-25T00:00:00Z");
        let e = error(&doc);
        assert!(e.starts_with("expires \"2026-11-25T00:00:00Z\""), "{e}");
        assert!(e.contains("before \"issued\""), "{e}");
    }

    #[test]
    fn it_checks_a_file_as_every_listed_node_would() {
        // Any valid network reads alike for a tool that is none of its nodes.
        let dir = Directory::parse_for_every_node(network().to_string().as_bytes()).unwrap();
        assert_eq!(dir.nodes().len(), 4);
        // Alice, the only exit, has no route: every other node would start,
        // she would not, and the check says so naming her.
        let lone = json!({"nodes": [
            entry(1, "alice", true),
            entry(2, "bob", false),
            entry(3, "carol", false),
            entry(4, "dave", false),
        ]});
        let e = Directory::parse_for_every_node(lone.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("nodes[0] \"alice\": is the only exit"), "{e}");
        // Entry errors come out as for a node.
        let mut bad = network();
        bad["nodes"][2]["port"] = json!(0);
        let e = Directory::parse_for_every_node(bad.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("nodes[2] \"carol\": \"port\" is 0"), "{e}");
        let e = Directory::parse_for_every_node(br#"{"nodes": []}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lists no node"), "{e}");
        for bytes in [&b"{nodes"[..], b"[]", b"{}"] {
            let e = Directory::parse_for_every_node(bytes).unwrap_err();
            assert!(matches!(e, PkiError::Json(_)), "{e}");
        }
    }

    #[test]
    fn it_refuses_an_entry_missing_a_key() {
        let mut doc = network();
        doc["nodes"][1].as_object_mut().unwrap().remove("identity");
        assert!(error(&doc).contains("missing field `identity`"));
        // A mix key is no longer part of an entry (it rotates, in bundles).
        let mut doc = network();
        doc["nodes"][1]["mix_key"] = json!(BASE64.encode(&[1u8; 32]));
        assert!(error(&doc).contains("unknown field `mix_key`"));
    }

    #[test]
    fn it_names_the_entry_with_a_bad_onion_checksum() {
        let mut doc = network();
        let good = doc["nodes"][2]["onion"].as_str().unwrap().to_string();
        let mut chars: Vec<char> = good.chars().collect();
        chars[0] = if chars[0] == 'a' { 'b' } else { 'a' };
        doc["nodes"][2]["onion"] = json!(chars.into_iter().collect::<String>());
        let e = error(&doc);
        assert!(e.starts_with("nodes[2] \"carol\": \"onion\""), "{e}");
        assert!(e.contains("checksum"), "{e}");
        assert!(e.contains("-export-node-info"), "{e}");
    }

    #[test]
    fn it_refuses_bad_keys_naming_the_field() {
        let cases = [
            ("identity", json!("not base64!"), "not base64"),
            ("identity", json!(BASE64.encode(&[1u8; 31])), "31 bytes"),
            ("identity", json!("AAAA"), "3 bytes"),
        ];
        for (field, value, said) in cases {
            let mut doc = network();
            doc["nodes"][3][field] = value;
            let e = error(&doc);
            assert!(
                e.starts_with(&format!("nodes[3] \"dave\": \"{field}\"")),
                "{e}"
            );
            assert!(e.contains(said), "{e}");
        }
        // 32 bytes that are not a point on the curve.
        let mut not_a_point = None;
        for b in 0..=255u8 {
            let mut k = [b; 32];
            k[31] = 0xff;
            if ed25519_dalek::VerifyingKey::from_bytes(&k).is_err() {
                not_a_point = Some(k);
                break;
            }
        }
        let mut doc = network();
        doc["nodes"][3]["identity"] = json!(BASE64.encode(&not_a_point.unwrap()));
        assert!(error(&doc).contains("not an ed25519 public key"));
    }

    #[test]
    fn it_refuses_a_bad_short_name_family_or_port() {
        let mut doc = network();
        doc["nodes"][1]["name"] = json!("bob smith");
        assert!(error(&doc).contains("\"name\" may only hold"));
        let mut doc = network();
        doc["nodes"][1]["name"] = json!("");
        assert!(error(&doc).contains("\"name\" is empty"));
        let mut doc = network();
        doc["nodes"][1]["family"] = json!("x".repeat(33));
        assert!(error(&doc).contains("\"family\" is longer"));
        let mut doc = network();
        doc["nodes"][1]["port"] = json!(0);
        assert!(error(&doc).contains("\"port\" is 0"));
        let mut doc = network();
        doc["nodes"][1]["port"] = json!(70000);
        assert!(error(&doc).starts_with("not a valid nodes.json"));
    }

    #[test]
    fn it_refuses_a_node_listed_twice_by_any_of_its_names() {
        // Same onion, different everything else.
        let mut doc = network();
        let mut copy = entry(5, "erin", true);
        copy["onion"] = doc["nodes"][2]["onion"].clone();
        doc["nodes"].as_array_mut().unwrap().push(copy);
        let e = error(&doc);
        assert_eq!(
            e,
            "nodes[4] \"erin\" has the same onion as nodes[2] \"carol\": a node may be listed once; remove one of them"
        );
        for (field, from) in [("identity", 3usize), ("name", 1)] {
            let mut doc = network();
            let mut copy = entry(5, "erin", true);
            copy[field] = doc["nodes"][from][field].clone();
            doc["nodes"].as_array_mut().unwrap().push(copy);
            let e = error(&doc);
            assert!(
                e.contains(&format!("same {field} as nodes[{from}]")),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn it_refuses_hops_out_of_range() {
        for hops in [0, 1, 6, 300] {
            let mut doc = network();
            doc["params"] = json!({ "hops": hops });
            let e = error(&doc);
            assert!(e.starts_with("params.hops"), "{e}");
            assert!(e.contains("must be 2 to 5"), "{e}");
        }
        for hops in [2, 3] {
            let mut doc = network();
            doc["params"] = json!({ "hops": hops });
            assert_eq!(parse(&doc).unwrap().params().hops, hops);
        }
    }

    #[test]
    fn it_refuses_bad_durations_and_sizes() {
        let cases = [
            (json!({"hop_delay_mean": "soon"}), "params.hop_delay_mean"),
            (
                json!({"hop_delay_mean": "5m", "hop_delay_max": "1m"}),
                "must not be below",
            ),
            (json!({"hop_delay_max": "2d"}), "must be at most 1day"),
            (json!({"ack_timeout": "0s"}), "params.ack_timeout"),
            (json!({"custody_horizon": "0"}), "params.custody_horizon"),
            (
                json!({"ack_timeout": "2h", "e2e_horizon": "1h"}),
                "params.e2e_horizon",
            ),
            (json!({"max_message_size": 100}), "params.max_message_size"),
            (
                json!({ "max_message_size": MAX_MESSAGE_SIZE as u64 + 1 }),
                "params.max_message_size",
            ),
            (json!({"hops": "3"}), "invalid type"),
            (
                json!({"epoch": "1s"}),
                "params.epoch \"1s\": must be at least 5s",
            ),
            (json!({"epoch": "5500ms"}), "must be whole seconds"),
            (
                json!({"hop_delay_mean": "10m", "epoch": "5h"}),
                "longer than a route's longest delay",
            ),
            (json!({"loop_cover_mean": "1ms"}), "params.loop_cover_mean"),
            (
                json!({"drop_cover_mean": "often"}),
                "params.drop_cover_mean",
            ),
        ];
        for (params, said) in cases {
            let mut doc = network();
            doc["params"] = params.clone();
            let e = error(&doc);
            assert!(e.contains(said), "{params}: {e}");
        }
        let mut doc = network();
        doc["params"] = json!({ "max_message_size": MAX_MESSAGE_SIZE });
        parse(&doc).unwrap();
    }

    #[test]
    fn it_caps_the_message_size_at_what_the_fragments_can_carry() {
        let largest_blob = MAX_MESSAGE_SIZE + ENVELOPE_ALLOWANCE;
        assert!(super::super::fragment::fragments_for(largest_blob) <= MAX_FRAGMENTS);
        assert!(super::super::fragment::fragments_for(largest_blob + 1) > MAX_FRAGMENTS);
        assert!(Params::default().max_message_size <= MAX_MESSAGE_SIZE);
    }

    #[test]
    fn it_refuses_a_file_without_this_node() {
        let doc = network();
        let other = OnionName::from_seed(9);
        let e = Directory::parse(doc.to_string().as_bytes(), &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains(other.as_str()), "{e}");
        assert!(e.contains("-export-node-info"), "{e}");
    }

    #[test]
    fn it_refuses_fewer_nodes_than_a_route_needs() {
        let mut doc = network();
        doc["nodes"].as_array_mut().unwrap().pop();
        let e = error(&doc);
        assert!(
            e.contains("a route needs 3 mix nodes besides this one"),
            "{e}"
        );
        assert!(e.contains("2 are listed"), "{e}");
        // Two hops fit in the same file.
        doc["params"] = json!({"hops": 2});
        parse(&doc).unwrap();
        // Five hops need six nodes.
        let mut doc = network();
        doc["params"] = json!({"hops": 5});
        for (seed, name) in [(5, "erin"), (6, "frank")] {
            doc["nodes"]
                .as_array_mut()
                .unwrap()
                .push(entry(seed, name, false));
        }
        parse(&doc).unwrap();
        doc["nodes"].as_array_mut().unwrap().pop();
        assert!(error(&doc).contains("a route needs 5"));
    }

    #[test]
    fn it_refuses_a_network_whose_only_exit_is_this_node() {
        let doc = json!({
            "nodes": [
                entry(1, "alice", true),
                entry(2, "bob", false),
                entry(3, "carol", false),
                entry(4, "dave", false),
            ]
        });
        assert!(error(&doc).starts_with("no exit node besides this one"));
        let mut doc = doc;
        doc["nodes"][3]["exit"] = json!(true);
        doc["nodes"][0]["exit"] = json!(false);
        parse(&doc).unwrap();
    }

    #[test]
    fn it_refuses_an_oversized_file_before_parsing() {
        let big = vec![b' '; MAX_FILE_SIZE + 1];
        assert_eq!(
            Directory::parse(&big, &own()).unwrap_err(),
            PkiError::TooLarge(MAX_FILE_SIZE + 1)
        );
    }

    #[test]
    fn it_hashes_equal_params_alike_and_any_change_differently() {
        let base = Params::default();
        let mut spelled = network();
        spelled["params"] = json!({"hop_delay_mean": "300s", "e2e_horizon": "120h"});
        assert_eq!(parse(&spelled).unwrap().params().hash(), base.hash());
        let changes: [fn(&mut Params); 12] = [
            |p| p.client_send_mean += Duration::from_millis(1),
            |p| p.client_fetch_mean += Duration::from_millis(1),
            |p| p.epoch += Duration::from_secs(1),
            |p| p.loop_cover_mean += Duration::from_millis(1),
            |p| p.drop_cover_mean += Duration::from_millis(1),
            |p| p.hops += 1,
            |p| p.hop_delay_mean += Duration::from_nanos(1),
            |p| p.hop_delay_max += Duration::from_millis(1),
            |p| p.max_message_size += 1,
            |p| p.ack_timeout += Duration::from_secs(1),
            |p| p.custody_horizon += Duration::from_secs(1),
            |p| p.e2e_horizon += Duration::from_secs(1),
        ];
        let mut seen = vec![base.hash()];
        for change in changes {
            let mut p = base.clone();
            change(&mut p);
            let h = p.hash();
            assert!(!seen.contains(&h), "{p:?}");
            seen.push(h);
        }
        // Swapping two durations is a change too (fixed order).
        let mut swapped = base.clone();
        std::mem::swap(&mut swapped.ack_timeout, &mut swapped.custody_horizon);
        assert_ne!(swapped.hash(), base.hash());
        let mut apart = base.clone();
        apart.client_fetch_mean = Duration::from_secs(7);
        let mut swapped = apart.clone();
        swapped.client_fetch_mean = apart.client_send_mean;
        swapped.client_send_mean = apart.client_fetch_mean;
        assert_ne!(swapped.hash(), apart.hash());
    }

    #[test]
    fn it_reads_the_example_in_the_readme() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Run a mixnet node")
            .nth(1)
            .expect("README has a \"Run a mixnet node\" section");
        let example = section
            .split("```json\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the section has a json example");
        let doc: Value = serde_json::from_str(example).unwrap();
        let alice = OnionName::parse(doc["nodes"][0]["onion"].as_str().unwrap()).unwrap();
        let dir = Directory::parse(example.as_bytes(), &alice).unwrap();
        assert_eq!(*dir.params(), Params::default());
        assert_eq!(dir.nodes().len(), 4);
    }

    /// A random JSON value, biased towards the shapes of nodes.json so
    /// that parsing gets past the first checks.
    fn random_value(rng: &mut StdRng, depth: u32) -> Value {
        let keys = [
            "nodes",
            "params",
            "name",
            "onion",
            "port",
            "identity",
            "exit",
            "family",
            "gateway",
            "mix_key",
            "hops",
            "hop_delay_mean",
            "hop_delay_max",
            "max_message_size",
            "ack_timeout",
            "custody_horizon",
            "e2e_horizon",
            "epoch",
            "loop_cover_mean",
            "client_send_mean",
            "client_fetch_mean",
            "x",
        ];
        let strings = [
            "",
            "5m",
            "0",
            "-1s",
            "99999999999999999999d",
            "20ms",
            "AAAA",
            "é",
            "\u{0}",
            "aaaa.onion",
            "alice",
        ];
        match rng.random_range(0..if depth > 3 { 5 } else { 8 }) {
            0 => Value::Null,
            1 => json!(rng.random::<bool>()),
            2 => json!(rng.random::<i64>() >> rng.random_range(0..63)),
            3 => json!(rng.random::<f64>() * 1e20),
            4 => json!(strings[rng.random_range(0..strings.len())]),
            5 => json!(entry(rng.random(), "n", rng.random())),
            6 => Value::Array(
                (0..rng.random_range(0..6))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.random_range(0..6))
                    .map(|_| {
                        (
                            keys[rng.random_range(0..keys.len())].to_string(),
                            random_value(rng, depth + 1),
                        )
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn it_never_panics_on_random_or_mangled_input() {
        let mut rng = StdRng::seed_from_u64(0x6e6f_6465_732e_6a73);
        let valid = network().to_string().into_bytes();
        for _ in 0..3000 {
            let doc = random_value(&mut rng, 0);
            let _ = Directory::parse(doc.to_string().as_bytes(), &own());
            let _ = Directory::parse_for_client(doc.to_string().as_bytes(), "alice");
            // A valid file with a few bytes changed, cut or inserted.
            let mut bytes = valid.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = rng.random(),
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, rng.random()),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let _ = Directory::parse(&bytes, &own());
            let _ = Directory::parse_for_client(&bytes, "alice");
        }
    }

    /// [`network`] with alice as a gateway: what a client of alice reads.
    fn gateway_network() -> Value {
        let mut doc = network();
        doc["nodes"][0]["gateway"] = json!(true);
        doc
    }

    fn client_error(doc: &Value, via: &str) -> String {
        let e = Directory::parse_for_client(doc.to_string().as_bytes(), via)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn it_reads_the_gateway_flag_and_leaves_it_out_when_false() {
        let dir = parse(&gateway_network()).unwrap();
        let flags: Vec<bool> = dir.nodes().iter().map(|n| n.gateway).collect();
        assert_eq!(flags, [true, false, false, false]);
        // An entry without the key prints exactly as before client mode:
        // the same bytes, so what operators signed stays what they sign.
        let bare = entry(2, "bob", true);
        let parsed: NodeEntry = serde_json::from_value(bare.clone()).unwrap();
        assert!(!parsed.gateway);
        let before = format!(
            r#"{{"name":"bob","onion":"{}","port":9999,"identity":"{}","exit":true}}"#,
            bare["onion"].as_str().unwrap(),
            bare["identity"].as_str().unwrap()
        );
        assert_eq!(serde_json::to_string(&parsed).unwrap(), before);
        let mut gateway = bare.clone();
        gateway["gateway"] = json!(true);
        let parsed: NodeEntry = serde_json::from_value(gateway.clone()).unwrap();
        assert!(parsed.gateway);
        assert_eq!(serde_json::to_value(&parsed).unwrap(), gateway);
        let mut doc = network();
        doc["nodes"][1]["gateway"] = json!("yes");
        assert!(error(&doc).contains("invalid type"));
    }

    #[test]
    fn it_reads_the_client_rates_with_production_defaults() {
        let p = parse(&network()).unwrap().params().clone();
        assert_eq!(p.client_send_mean, Duration::from_secs(30));
        assert_eq!(p.client_fetch_mean, Duration::from_secs(30));
        let mut doc = network();
        doc["params"] = json!({"client_send_mean": "1s", "client_fetch_mean": "20ms"});
        let p = parse(&doc).unwrap().params().clone();
        assert_eq!(p.client_send_mean, Duration::from_secs(1));
        assert_eq!(p.client_fetch_mean, Duration::from_millis(20));
        for (params, said) in [
            (
                json!({"client_send_mean": "9ms"}),
                "params.client_send_mean \"9ms\": must be at least 10ms",
            ),
            (json!({"client_send_mean": "0s"}), "params.client_send_mean"),
            (
                json!({"client_fetch_mean": "0"}),
                "params.client_fetch_mean",
            ),
            (
                json!({"client_fetch_mean": "often"}),
                "params.client_fetch_mean",
            ),
            // Fetching less often than sending lets the mailbox grow.
            (
                json!({"client_send_mean": "20ms", "client_fetch_mean": "1s"}),
                "params.client_fetch_mean \"1s\": must not be longer than client_send_mean (20ms)",
            ),
        ] {
            let mut doc = network();
            doc["params"] = params.clone();
            let e = error(&doc);
            assert!(e.contains(said), "{params}: {e}");
        }
    }

    #[test]
    fn a_client_sees_its_gateway_as_own_and_routes_over_the_others() {
        let doc = gateway_network();
        let alice = OnionName::from_seed(1);
        for via in ["alice", alice.as_str()] {
            let dir = Directory::parse_for_client(doc.to_string().as_bytes(), via).unwrap();
            assert_eq!(dir.own().short_name, "alice");
            assert!(dir.own().gateway);
            let others: Vec<&str> = dir.others().map(|n| n.short_name.as_str()).collect();
            assert_eq!(others, ["bob", "carol", "dave"]);
            assert_eq!(*dir.params(), Params::default());
        }
        let dir = Directory::parse_as(doc.to_string().as_bytes(), Reader::Client("alice")).unwrap();
        assert_eq!(dir.own().short_name, "alice");
        let dir = Directory::parse_as(
            doc.to_string().as_bytes(),
            Reader::Node(&OnionName::from_seed(2)),
        )
        .unwrap();
        assert_eq!(dir.own().short_name, "bob");
    }

    #[test]
    fn a_client_refuses_a_gateway_that_is_absent_or_no_gateway() {
        let doc = gateway_network();
        let e = client_error(&doc, "zoe");
        assert_eq!(
            e,
            "-via zoe: no node zoe in nodes.json; name a node listed with \"gateway\": true by its short name or onion name"
        );
        let e = client_error(&doc, OnionName::from_seed(9).as_str());
        assert!(e.contains("no node"), "{e}");
        let e = client_error(&doc, "bob");
        assert!(
            e.starts_with("-via bob: its entry lacks \"gateway\": true"),
            "{e}"
        );
        let mut doc = doc;
        doc["nodes"][0]["gateway"] = json!(false);
        assert!(client_error(&doc, "alice").contains("lacks \"gateway\": true"));
    }

    #[test]
    fn a_client_needs_room_for_its_gateway_on_a_route() {
        // Four hops after the gateway fit Sphinx's five; five do not.
        let mut doc = gateway_network();
        for (seed, name) in [(5, "erin"), (6, "frank")] {
            doc["nodes"]
                .as_array_mut()
                .unwrap()
                .push(entry(seed, name, true));
        }
        doc["params"] = json!({"hops": 4});
        Directory::parse_for_client(doc.to_string().as_bytes(), "alice").unwrap();
        doc["params"] = json!({"hops": 5});
        parse(&doc).unwrap();
        let e = client_error(&doc, "alice");
        assert!(e.starts_with("params.hops = 5: client mode needs hops ≤ 4: the gateway is the first of Sphinx's 5 hops"), "{e}");
    }

    #[test]
    fn a_client_counts_neither_the_gateway_nor_its_family_for_a_route() {
        let mut doc = gateway_network();
        doc["nodes"][0]["family"] = json!("ops-a");
        doc["nodes"][1]["family"] = json!("ops-a");
        // A node reads this file; a client of alice has two usable nodes.
        parse(&doc).unwrap();
        let e = client_error(&doc, "alice");
        assert!(
            e.starts_with(
                "a client's route needs 3 mix nodes besides the gateway alice and its family"
            ),
            "{e}"
        );
        assert!(e.contains("2 are listed"), "{e}");
        doc["params"] = json!({"hops": 2});
        Directory::parse_for_client(doc.to_string().as_bytes(), "alice").unwrap();
        // Without a family of its own, the gateway shares none.
        let mut doc = gateway_network();
        doc["nodes"][1]["family"] = json!("ops-b");
        doc["nodes"][2]["family"] = json!("ops-b");
        Directory::parse_for_client(doc.to_string().as_bytes(), "alice").unwrap();
        let mut doc = gateway_network();
        doc["nodes"].as_array_mut().unwrap().pop();
        assert!(client_error(&doc, "alice").contains("2 are listed"));
    }

    #[test]
    fn a_client_needs_an_exit_outside_the_gateways_family() {
        let mut doc = json!({
            "nodes": [
                entry(1, "alice", true),
                entry(2, "bob", false),
                entry(3, "carol", false),
                entry(4, "dave", true),
            ]
        });
        doc["nodes"][0]["gateway"] = json!(true);
        Directory::parse_for_client(doc.to_string().as_bytes(), "alice").unwrap();
        doc["nodes"][3]["exit"] = json!(false);
        let e = client_error(&doc, "alice");
        assert!(
            e.starts_with("no exit node besides the gateway alice and its family"),
            "{e}"
        );
        doc["nodes"][3]["exit"] = json!(true);
        doc["nodes"][0]["family"] = json!("ops-a");
        doc["nodes"][3]["family"] = json!("ops-a");
        doc["params"] = json!({"hops": 2});
        assert!(client_error(&doc, "alice").starts_with("no exit node besides the gateway"));
    }
}
