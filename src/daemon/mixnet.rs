//! Mixnet mode at start: this node's keys and the network's `nodes.json`.
//!
//! Everything here runs before the daemon opens the spool or binds a
//! socket, so a bad file or key stops startup with one line (exit 64) and
//! nothing else has happened. The checks that need the file itself (JSON,
//! entries, params) are `mixnet::pki`'s; this adds reading the file and
//! comparing this node's entry with its own keys and flags: a stale entry
//! would have peers build packets this node cannot open.

use std::io::Read;
use std::path::Path;

use crate::address::OnionName;
use crate::config::{MixnetConfig, NodeInfo};
use crate::mixnet::keys::{IdentityKey, KeyError, MixKey};
use crate::mixnet::pki::{self, Directory, NodeEntry};

/// What the mixnet tasks start from: the settings, the checked directory
/// and this node's keys.
#[derive(Debug)]
pub struct MixnetNode {
    pub config: MixnetConfig,
    pub directory: Directory,
    pub identity: IdentityKey,
    pub mix_key: MixKey,
}

#[derive(Debug, thiserror::Error)]
pub enum MixnetStartError {
    #[error("-data-dir: this node's mixnet key: {0}")]
    Keys(#[from] KeyError),
    #[error("-pki-file {path}: {reason}")]
    Pki { path: String, reason: String },
}

/// This node's `nodes.json` entry, exactly as `-export-node-info` prints
/// it and as the other operators must list it.
pub fn node_entry(
    name: &OnionName,
    info: &NodeInfo,
    identity: &IdentityKey,
    mix_key: &MixKey,
) -> NodeEntry {
    NodeEntry {
        name: info.short_name.clone(),
        onion: name.to_string(),
        port: info.port,
        identity: pki::encode_key(identity.public().as_bytes()),
        exit: info.exit,
        family: info.family.clone(),
        mix_key: pki::encode_key(mix_key.public().as_bytes()),
    }
}

/// Loads (or creates) the keys in `data_dir`, which must be prepared.
pub fn load_keys(data_dir: &Path) -> Result<(IdentityKey, MixKey), KeyError> {
    Ok((
        IdentityKey::load_or_create(data_dir)?,
        MixKey::load_or_create(data_dir)?,
    ))
}

/// Reads and checks `nodes.json`, then this node's entry in it.
pub fn start(
    data_dir: &Path,
    name: &OnionName,
    config: MixnetConfig,
) -> Result<MixnetNode, MixnetStartError> {
    let (identity, mix_key) = load_keys(data_dir)?;
    let path = config.pki_file.display().to_string();
    let pki_error = |reason: String| MixnetStartError::Pki {
        path: path.clone(),
        reason,
    };
    let bytes = read_capped(&config.pki_file).map_err(|e| {
        pki_error(format!(
            "cannot read it: {e}; assemble nodes.json from every node's -export-node-info output (README, \"Run a mixnet node\")"
        ))
    })?;
    let directory = Directory::parse(&bytes, name).map_err(|e| pki_error(e.to_string()))?;
    let listed = directory.own();
    let mine = node_entry(name, &config.info, &identity, &mix_key);
    let differs = [
        ("name", listed.short_name != mine.name),
        ("port", listed.port != mine.port),
        ("exit", listed.exit != mine.exit),
        ("family", listed.family != mine.family),
        (
            "identity",
            pki::encode_key(listed.identity.as_bytes()) != mine.identity,
        ),
        (
            "mix_key",
            pki::encode_key(listed.mix_key.as_bytes()) != mine.mix_key,
        ),
    ];
    if let Some((field, _)) = differs.iter().find(|(_, d)| *d) {
        return Err(pki_error(format!(
            "this node's entry ({:?}) has another \"{field}\" than this node's keys and flags; replace it with the output of `pluto2 -export-node-info` run with this node's flags",
            listed.short_name
        )));
    }
    Ok(MixnetNode {
        config,
        directory,
        identity,
        mix_key,
    })
}

/// Reads at most one byte more than `nodes.json` may hold, so a wrong
/// path is refused by size instead of read whole.
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(pki::MAX_FILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}
