//! `pluto2 check`: is this node's setup right, before it goes live?
//!
//! It takes exactly the daemon's flags and validates them through the same
//! code (`config::DaemonArgs::validate`), then looks at what the daemon
//! would meet at start, one line per check: `ok <what>` or
//! `problem <what>: <fix>`. It changes nothing: the data directory, the
//! cover key, a client's seed and the spool are only read (the spool
//! through a read-only open that creates no `-wal`/`-shm` file, see
//! `spool::inspect_read_only`); the only I/O beyond reading files is SOCKS
//! connections to `-tor-socks`, closed at once, and in client mode
//! (`-client`) one link to the gateway that asks it for nothing but one
//! FETCH (`link::probe_gateway`): no packet, no CONFIRM.
//!
//! Tor's `ExtendedErrors` is found out by asking for a well-formed v3
//! onion name whose embedded key is not an ed25519 point: Tor refuses it
//! before building any circuit, with 0xF6 when ExtendedErrors is on and a
//! generic code when it is off. Without those codes pluto2 cannot tell a
//! dead onion name (drop) from an unreachable one (retry).

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::address::{OnionError, OnionName};
use crate::config::{Config, DaemonArgs};
use crate::link::{LinkConfig, ProbeOutcome};
use crate::mixnet::keys::ClientSeed;
use crate::relay::socks::{SocksDialer, SocksError};
use crate::wire::pki::{Directory, Reader};

/// Bound on the SOCKS handshake with Tor for the ExtendedErrors probe:
/// Tor refuses a bad onion name locally, at once.
const TOR_DEADLINE: Duration = Duration::from_secs(10);

/// Bound on reaching one mixnet node through Tor (a cold onion service
/// connection takes a few seconds; all nodes are tried at once).
const NODE_DEADLINE: Duration = Duration::from_secs(20);

/// Bound on a client's handshake and FETCH with its gateway once Tor
/// connected: about two round trips over the onion service.
const GATEWAY_DEADLINE: Duration = Duration::from_secs(20);

/// The port asked for in the ExtendedErrors probe; Tor never gets as far
/// as using it.
const PROBE_PORT: u16 = 25;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked, starting with the flag or file it is about.
    pub what: String,
    /// `None` when fine; otherwise what to do about it.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding {
            what: what.into(),
            fix: None,
        }
    }

    fn problem(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.fix.is_none()
    }
}

impl fmt::Display for Finding {
    /// One line: line breaks a library error might carry are folded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fold = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        match &self.fix {
            None => write!(f, "ok {}", fold(&self.what)),
            Some(fix) => write!(f, "problem {}: {}", fold(&self.what), fold(fix)),
        }
    }
}

/// Runs every check that applies to these flags, in a fixed order.
pub async fn run(args: DaemonArgs) -> Vec<Finding> {
    let name_flag = args.node.name.is_some();
    let hostname_file = args.node.hs_hostname_file.clone();
    let config = match args.validate() {
        Ok(config) => config,
        Err(e) => return vec![Finding::problem("flags", e.to_string())],
    };
    let via = (config.mixnet.as_ref())
        .and_then(|m| m.client.as_ref())
        .map(|c| c.via.clone());
    let mut findings = vec![Finding::ok("flags")];
    let data_dir = &config.spool.data_dir;
    // A client has no onion name; what names it (at its gateway) is the
    // key its seed gives it there.
    let seed = match via {
        Some(_) => {
            let (finding, seed) = client_seed(data_dir);
            findings.push(finding);
            seed
        }
        None => {
            findings.push(hostname(&config, name_flag, hostname_file.as_deref()));
            None
        }
    };
    findings.push(data_dir_finding(data_dir));
    findings.push(cover_key(data_dir));
    findings.push(spool(data_dir));
    let tor = tor_socks(&config).await;
    let tor_works = tor.is_ok();
    findings.push(tor);
    match (&config.mixnet, via) {
        (Some(mixnet), Some(via)) => {
            let pki_file = &mixnet.pki_file;
            findings.extend(gateway(&config, pki_file, &via, seed.as_ref(), tor_works).await);
        }
        (Some(mixnet), None) => {
            findings.extend(mixnet_nodes(&config, &mixnet.pki_file, tor_works).await)
        }
        (None, _) => {}
    }
    findings
}

/// A client's `client-seed`: read as the daemon reads it (32 bytes, not
/// readable by others), never created. Returns the seed when it is usable.
fn client_seed(dir: &Path) -> (Finding, Option<ClientSeed>) {
    let path = dir.join(crate::mixnet::keys::CLIENT_SEED_FILE);
    let what = format!("client seed {}", path.display());
    match ClientSeed::read(dir) {
        Ok(Some(seed)) => (
            Finding::ok(format!("{what} is 32 bytes, readable by its owner only")),
            Some(seed),
        ),
        Ok(None) => (
            Finding::ok(format!(
                "{what} does not exist yet; the daemon creates it with mode 0600 (back it up: it holds this client's mailbox at its gateway)"
            )),
            None,
        ),
        Err(e) => (Finding::problem(what, e.to_string()), None),
    }
}

/// `-hs-hostname-file` against `-name` when both are given.
fn hostname(config: &Config, name_flag: bool, file: Option<&Path>) -> Finding {
    let Some(path) = file else {
        return Finding::ok("-name is a valid v3 onion name");
    };
    if !name_flag {
        return Finding::ok(format!(
            "-hs-hostname-file {} holds a valid v3 onion name",
            path.display()
        ));
    }
    let what = format!("-hs-hostname-file {}", path.display());
    match crate::config::name_from_hostname_file(path) {
        Err(e) => Finding::problem(what, e.to_string()),
        Ok(name) if name != config.name => Finding::problem(
            format!("{what} holds another onion name than -name"),
            "drop -name so the file's name is used, or fix -name (copy it from that file)",
        ),
        Ok(_) => Finding::ok(format!("{what} matches -name")),
    }
}

/// The data directory: private (no access for group or others, as the
/// daemon leaves it) and writable, or creatable when missing.
fn data_dir_finding(dir: &Path) -> Finding {
    let what = format!("-data-dir {}", dir.display());
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir
                .ancestors()
                .skip(1)
                .find(|p| p.exists())
                .unwrap_or(Path::new("."));
            return if writable(parent) {
                Finding::ok(format!(
                    "{what} does not exist yet; the daemon creates it with mode 0700"
                ))
            } else {
                Finding::problem(
                    format!(
                        "{what} does not exist and {} is not writable",
                        parent.display()
                    ),
                    "create it (mode 0700) owned by the daemon's user, or choose another -data-dir",
                )
            };
        }
        Err(e) => {
            return Finding::problem(
                what,
                format!("cannot read it ({e}); fix its path or permissions"),
            );
        }
    };
    if !meta.is_dir() {
        return Finding::problem(
            format!("{what} is not a directory"),
            "point -data-dir at a directory of pluto2's own",
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Finding::problem(
            format!("{what} has mode {mode:04o}, open to other users"),
            format!(
                "chmod 700 {} (it holds mail and keys; the daemon narrows it at start only if it owns it)",
                dir.display()
            ),
        );
    }
    if !writable(dir) {
        return Finding::problem(
            format!("{what} is not writable"),
            "run pluto2 as the directory's owner, or fix its ownership",
        );
    }
    Finding::ok(format!("{what} is private (mode {mode:04o}) and writable"))
}

/// Whether this process may create files in `dir` (asked of the kernel,
/// not tried).
fn writable(dir: &Path) -> bool {
    use rustix::fs::{Access, access};
    access(dir, Access::WRITE_OK | Access::EXEC_OK).is_ok()
}

/// The cover key: 32 bytes, readable by the daemon's user only. Anyone
/// holding it can mark mail as this node's cover and have it dropped.
fn cover_key(dir: &Path) -> Finding {
    let path = dir.join(crate::node::mail_cover::KEY_FILE);
    let what = format!("cover key {}", path.display());
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Finding::ok(format!(
                "{what} does not exist yet; the daemon creates it with mode 0600"
            ));
        }
        Err(e) => {
            return Finding::problem(what, format!("cannot read it ({e}); fix its permissions"));
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_file() || meta.len() != 32 {
        return Finding::problem(
            format!("{what} is not a 32-byte file"),
            "delete it; the daemon makes a new one at start",
        );
    }
    if mode & 0o077 != 0 {
        return Finding::problem(
            format!("{what} has mode {mode:04o}, readable by other users"),
            format!("chmod 600 {}", path.display()),
        );
    }
    match std::fs::File::open(&path) {
        Ok(_) => Finding::ok(format!("{what} is 32 bytes, mode {mode:04o}")),
        Err(e) => Finding::problem(
            what,
            format!("cannot read it ({e}); run pluto2 as its owner"),
        ),
    }
}

/// The spool, opened read-only: its schema version and SQLite's quick
/// integrity check.
fn spool(dir: &Path) -> Finding {
    let what = format!("spool in {}", dir.display());
    match crate::spool::inspect_read_only(dir) {
        Ok(None) => Finding::ok(format!("{what}: none yet; the daemon creates it at start")),
        Ok(Some(found)) if !found.damage.is_empty() => Finding::problem(
            format!(
                "{what} fails SQLite's quick_check ({} finding(s), first: {})",
                found.damage.len(),
                found.damage[0]
            ),
            format!(
                "stop pluto2, move {} aside with its -wal and -shm files, and start it again for an empty spool",
                crate::spool::SPOOL_FILE
            ),
        ),
        Ok(Some(found)) if found.version < found.current => Finding::ok(format!(
            "{what}: schema version {} (migrated to {} when the daemon starts), quick_check ok",
            found.version, found.current
        )),
        Ok(Some(found)) => Finding::ok(format!(
            "{what}: schema version {}, quick_check ok",
            found.version
        )),
        Err(e) => Finding::problem(what, e.to_string()),
    }
}

/// A well-formed v3 onion name whose key is not a curve point: Tor must
/// refuse it (0xF6 with ExtendedErrors). The first such key of the form
/// `[i; 32]`, so the probe is the same on every run.
pub fn invalid_key_onion() -> OnionName {
    (0u8..=255)
        .map(|i| OnionName::from_public_key(&[i; 32]))
        .find(|name| OnionName::parse(name.as_str()) == Err(OnionError::BadKey))
        .expect("most 32-byte strings are not curve points")
}

/// A SOCKS5 handshake with `-tor-socks` and the ExtendedErrors probe.
async fn tor_socks(config: &Config) -> Finding {
    let proxy = config.relay.tor_socks;
    let what = format!("-tor-socks {proxy}");
    let probe = invalid_key_onion();
    let dialer = SocksDialer::new(proxy, TOR_DEADLINE);
    let attempt = tokio::time::timeout(TOR_DEADLINE, dialer.connect(probe.as_str(), PROBE_PORT));
    match attempt.await {
        Err(_) | Ok(Err(SocksError::Timeout)) => Finding::problem(
            format!(
                "{what} did not finish a SOCKS5 handshake within {}s",
                TOR_DEADLINE.as_secs()
            ),
            "is this Tor's SocksPort? check that Tor runs and listens there",
        ),
        Ok(Err(SocksError::Reply { code })) if code >= 0xF0 => Finding::ok(format!(
            "{what} speaks SOCKS5 with Tor's ExtendedErrors (reply {code:#04x} for an invalid onion name)"
        )),
        Ok(Err(SocksError::Reply { code })) => Finding::problem(
            format!(
                "{what} speaks SOCKS5 but answered an invalid onion name with the generic reply {code:#04x}, so Tor's ExtendedErrors are off"
            ),
            "add ExtendedErrors to the SocksPort line in torrc (e.g. `SocksPort 127.0.0.1:9050 ExtendedErrors`) and reload Tor; without it a dead onion name is retried for hours",
        ),
        Ok(Ok(_)) => Finding::problem(
            format!("{what} connected to an onion name no service can have"),
            "this is not Tor; point -tor-socks at Tor's SocksPort",
        ),
        Ok(Err(SocksError::ProxyUnreachable(e))) => Finding::problem(
            format!("{what} cannot be reached ({e})"),
            "start Tor, or point -tor-socks at its SocksPort",
        ),
        Ok(Err(e)) => Finding::problem(
            format!("{what} did not complete a SOCKS5 handshake ({e})"),
            "point -tor-socks at Tor's SocksPort",
        ),
    }
}

/// `nodes.json` read and checked as the daemon does, then every other
/// node asked for through `-tor-socks`, all at once.
async fn mixnet_nodes(config: &Config, pki_file: &Path, tor_works: bool) -> Vec<Finding> {
    let what = format!("-pki-file {}", pki_file.display());
    let directory = match load_directory(config, pki_file, Reader::Node(&config.name)) {
        Ok(d) => d,
        Err(reason) => return vec![Finding::problem(what, reason)],
    };
    let mut findings = vec![Finding::ok(format!(
        "{what}: {} nodes, this node listed as {:?}",
        directory.nodes().len(),
        directory.own().short_name
    ))];
    if !tor_works {
        findings.push(Finding::problem(
            "mixnet nodes not tried",
            "fix -tor-socks first (see above)",
        ));
        return findings;
    }
    let dialer = SocksDialer::new(config.relay.tor_socks, NODE_DEADLINE);
    let mut attempts = tokio::task::JoinSet::new();
    for (i, node) in directory.others().enumerate() {
        let dialer = dialer.clone();
        let (onion, port) = (node.onion.to_string(), node.port);
        attempts.spawn(async move {
            let result = tokio::time::timeout(NODE_DEADLINE, dialer.connect(&onion, port)).await;
            (i, result.map_err(|_| SocksError::Timeout).and_then(|r| r))
        });
    }
    let mut results = Vec::new();
    while let Some(done) = attempts.join_next().await {
        if let Ok(done) = done {
            results.push(done);
        }
    }
    results.sort_by_key(|(i, _)| *i);
    let others: Vec<_> = directory.others().collect();
    for (i, result) in results {
        let node = &others[i];
        let what = format!("mixnet node {:?} (port {})", node.short_name, node.port);
        findings.push(match result {
            Ok(_) => Finding::ok(format!("{what} reachable through -tor-socks")),
            Err(e) => not_reachable(&what, &e),
        });
    }
    findings
}

/// A client's gateway: `nodes.json` read as a client of `-via` reads it,
/// then the gateway dialled through `-tor-socks` and asked, as this
/// client, whether it serves it (`link::probe_gateway`), with the key
/// `seed` gives it there (`None`: a throwaway key, the client has no seed
/// yet).
async fn gateway(
    config: &Config,
    pki_file: &Path,
    via: &str,
    seed: Option<&ClientSeed>,
    tor_works: bool,
) -> Vec<Finding> {
    let what = format!("-pki-file {}", pki_file.display());
    let directory = match load_directory(config, pki_file, Reader::Client(via)) {
        Ok(d) => d,
        Err(reason) => return vec![Finding::problem(what, reason)],
    };
    let gateway = directory.own();
    let mut findings = vec![Finding::ok(format!(
        "{what}: {} nodes, -via {via} listed as the gateway {:?}",
        directory.nodes().len(),
        gateway.short_name
    ))];
    if !tor_works {
        findings.push(Finding::problem(
            format!("gateway {:?} not tried", gateway.short_name),
            "fix -tor-socks first (see above)",
        ));
        return findings;
    }
    findings.push(ask_gateway(config, &directory, seed).await);
    findings
}

/// Dials the gateway (`directory.own()`) through `-tor-socks` and asks it,
/// as this client (its key from `seed`, or a throwaway one), whether it
/// serves it: one line naming the gateway.
async fn ask_gateway(config: &Config, directory: &Directory, seed: Option<&ClientSeed>) -> Finding {
    let gateway = directory.own();
    let what = format!("gateway {:?} (port {})", gateway.short_name, gateway.port);
    let dialer = SocksDialer::new(config.relay.tor_socks, NODE_DEADLINE);
    let connect = dialer.connect(gateway.onion.as_str(), gateway.port);
    let stream = match tokio::time::timeout(NODE_DEADLINE, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return not_reachable(&what, &e),
        Err(_) => return not_reachable(&what, &SocksError::Timeout),
    };
    let key = match seed {
        Some(seed) => seed.key_for(&gateway.id),
        None => ed25519_dalek::SigningKey::from_bytes(&rand::random()),
    };
    let params = directory.params();
    let cfg = LinkConfig::client(
        key,
        params.hash(),
        params.epoch,
        params.client_send_mean,
        params.client_fetch_mean,
    );
    let outcome = crate::link::probe_gateway(
        stream,
        &cfg,
        gateway.id,
        &gateway.identity,
        GATEWAY_DEADLINE,
    )
    .await;
    let not_accepting = format!("{what} is reachable through -tor-socks but not accepting clients");
    match outcome {
        Ok(ProbeOutcome::Serves { held }) => Finding::ok(format!(
            "{what} reachable through -tor-socks and accepting this client ({})",
            match (seed, held) {
                (None, _) => "asked with a throwaway key: this client has no seed yet",
                (Some(_), true) => "replies wait in its mailbox",
                (Some(_), false) => "its mailbox is empty",
            }
        )),
        Ok(ProbeOutcome::ClosedBeforeHello) => Finding::problem(
            format!("{not_accepting}: it closed the link at a client's HELLO"),
            "it runs without -gateway although nodes.json lists it as one: ask its operator, or choose another gateway with -via",
        ),
        Ok(ProbeOutcome::ClosedAfterAuth) => Finding::problem(
            format!("{not_accepting}: it closed the link after this client's proof"),
            "it has no room for another client now (-gateway-clients): try again later, or choose another gateway with -via",
        ),
        Err(e) => Finding::problem(
            format!("{what} failed the link handshake ({e})"),
            "its key or network parameters differ from this nodes.json: make sure both sides use the network's current nodes.json",
        ),
    }
}

/// A node (or gateway) Tor could not connect to.
fn not_reachable(what: &str, e: &SocksError) -> Finding {
    Finding::problem(
        format!("{what} not reachable through -tor-socks ({e})"),
        "check its entry in nodes.json with its operator; a node just started needs a minute to publish its onion service",
    )
}

/// `nodes.json` read (at most one byte past its size limit) and checked
/// for `reader` (this node, or a client of its gateway), exactly as at
/// daemon start.
/// The daemon's own decision (contents, signatures against `-pki-trust`,
/// the serial this data dir saved, expiry), without saving anything.
fn load_directory(config: &Config, path: &Path, reader: Reader<'_>) -> Result<Directory, String> {
    use crate::daemon::directory;
    let files = directory::read_files(path)?;
    let saved = directory::read_serial(&config.spool.data_dir).map_err(|e| e.to_string())?;
    let trust = config.mixnet.as_ref().and_then(|m| m.trust.as_ref());
    crate::wire::pki_sig::accept(&crate::wire::pki_sig::Candidate {
        file: &files.file,
        signatures: files.signatures.as_deref(),
        trust,
        saved_serial: saved,
        now: crate::time::now_ms(),
        reader: Some(reader),
    })
    .map(|accepted| accepted.directory)
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_a_well_formed_name_tor_must_refuse() {
        let probe = invalid_key_onion();
        assert_eq!(probe.as_str().len(), 62);
        assert!(probe.as_str().ends_with(".onion"));
        assert_eq!(OnionName::parse(probe.as_str()), Err(OnionError::BadKey));
        assert_eq!(invalid_key_onion(), probe, "the same probe every run");
    }

    #[test]
    fn each_finding_is_one_line_saying_ok_or_the_problem_and_its_fix() {
        assert_eq!(Finding::ok("flags").to_string(), "ok flags");
        assert_eq!(
            Finding::problem("-data-dir x", "chmod\n700 x").to_string(),
            "problem -data-dir x: chmod 700 x"
        );
    }
}
