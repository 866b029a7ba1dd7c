//! This node's mixnet keys, kept in the data directory.
//!
//! * The **identity key** (`identity.key`): an ed25519 key that other
//!   operators pin in `nodes.json`. It signs this node's key bundles,
//!   so it is made once and never changed by pluto2: losing or replacing
//!   it makes the node a stranger to the network.
//! * The **mix keys** (`mixkey-<epoch>`): one X25519 secret per epoch,
//!   which Sphinx headers are built for. [`KeyRing`] keeps the current
//!   epoch's key and [`AHEAD`] more, made in advance so that peers can
//!   fetch them (as a bundle signed by the identity key) before they are
//!   needed, and the previous epoch's key for one epoch of grace (packets
//!   built just before a boundary are still on their way). Older keys are
//!   overwritten with zeros, synced and deleted: once a key is gone, no
//!   packet ever built for it can be opened here, which is the point of
//!   rotating (forward secrecy), and its replay tags can go too.
//!
//! Both files hold a 32-byte secret, mode 0600. A missing file is created
//! without ever overwriting one (written to a temporary file, flushed to
//! disk, then linked into place, which fails if the name exists), so two
//! processes starting at once or a crash halfway leave either no key or a
//! whole one. A file of another size is refused with what to do; pluto2
//! never repairs a key file on its own.
//!
//! The node's address in packet headers is neither of these: it is the key
//! inside its onion name (`wire::packet::NodeId`), which Tor holds.
//!
//! A client (`-client`) has neither: it is listed nowhere. It keeps one
//! **client seed** (`client-seed`, 32 random bytes, the same file rules),
//! and derives from it its key at each gateway ([`ClientSeed::key_for`]).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;

/// File name of the identity key in the data directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// Prefix of the per-epoch mix key files (`mixkey-19000`).
pub const MIX_KEY_PREFIX: &str = "mixkey-";
/// The one static mix key of earlier versions: deleted at start.
pub const LEGACY_MIX_KEY_FILE: &str = "mixkey";
/// Epochs after the current one whose keys exist already.
pub const AHEAD: u32 = 2;
/// File name of a client's seed in its data directory.
pub const CLIENT_SEED_FILE: &str = "client-seed";
/// Domain label of the derivation of a client's key at a gateway, so the
/// hash can never coincide with any other use of the seed.
const CLIENT_KEY_LABEL: &[u8] = b"pluto2 client key v1\0";

const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}; check that -data-dir is this node's own directory and writable")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds {len} bytes, not a {KEY_LEN}-byte key; {fix}")]
    Size {
        path: String,
        len: u64,
        fix: &'static str,
    },
    #[error("{path} may be read by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed { path: String, mode: u32 },
}

const IDENTITY_FIX: &str = "restore this node's identity.key from a backup (only for a node not yet in any nodes.json: delete it, and pluto2 makes a new identity)";
const CLIENT_SEED_FIX: &str = "restore this client's client-seed from a backup; if it is lost, delete it and pluto2 makes a new one, but replies held for the old one at the gateway are lost and the client's queued mail is retransmitted end to end";
const MIX_KEY_FIX: &str = "restore it from a backup; if it is lost, delete it and pluto2 makes a new one, but peers that fetched the old one see two keys for one epoch and exclude this node until they restart";

/// The node's long-term ed25519 signing key.
pub struct IdentityKey(ed25519_dalek::SigningKey);

impl fmt::Debug for IdentityKey {
    /// Only the public half: secrets never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey(public {:02x?})", self.public().as_bytes())
    }
}

impl IdentityKey {
    /// Reads `identity.key` from `data_dir`, creating it if missing.
    pub fn load_or_create(data_dir: &Path) -> Result<IdentityKey, KeyError> {
        let seed = load_or_create(&data_dir.join(IDENTITY_FILE), IDENTITY_FIX)?;
        Ok(IdentityKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> ed25519_dalek::VerifyingKey {
        self.0.verifying_key()
    }

    /// Signs `message` (key bundles).
    pub fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        use ed25519_dalek::Signer;
        self.0.sign(message)
    }

    /// The signing key itself, for codecs that sign (bundles).
    /// A client's key at its gateway, held as its identity there (it
    /// signs that link's proofs and nothing else).
    pub fn of_client(key: ed25519_dalek::SigningKey) -> IdentityKey {
        IdentityKey(key)
    }

    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.0
    }
}

/// A client's one secret: the seed its keys at gateways are derived from.
///
/// One key per gateway rather than one key for all: a client that uses
/// two gateways (one after another, or one per network) must not be
/// linkable by them comparing the keys it authenticated with. Derived
/// rather than stored per gateway, so moving to a new gateway needs no
/// new file and a backup of one file restores every mailbox.
pub struct ClientSeed([u8; KEY_LEN]);

impl fmt::Debug for ClientSeed {
    /// Nothing of the secret: not even a public key, which a gateway
    /// could match against a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSeed(..)")
    }
}

impl ClientSeed {
    /// Reads `client-seed` from `data_dir`, creating it if missing (mode
    /// 0600, never overwritten). A file of another size or readable by
    /// others is refused, as the identity key is.
    pub fn load_or_create(data_dir: &Path) -> Result<ClientSeed, KeyError> {
        let seed = load_or_create(&data_dir.join(CLIENT_SEED_FILE), CLIENT_SEED_FIX)?;
        Ok(ClientSeed(seed))
    }

    /// Reads `client-seed` from `data_dir` as `load_or_create` does, but
    /// never creates it: `None` when it does not exist (`pluto2 check`,
    /// which writes nothing).
    pub fn read(data_dir: &Path) -> Result<Option<ClientSeed>, KeyError> {
        Ok(read(&data_dir.join(CLIENT_SEED_FILE), CLIENT_SEED_FIX)?.map(ClientSeed))
    }

    /// The client's ed25519 key at `gateway`: SHA-256 over a domain label,
    /// the seed and the gateway's 32-byte id, taken as the key's secret.
    /// The same for every start (the mailbox is named by it), unrelated
    /// between two gateways and between two seeds.
    pub fn key_for(&self, gateway: &crate::wire::packet::NodeId) -> ed25519_dalek::SigningKey {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(CLIENT_KEY_LABEL);
        h.update(self.0);
        h.update(gateway.0);
        let secret: [u8; KEY_LEN] = h.finalize().into();
        ed25519_dalek::SigningKey::from_bytes(&secret)
    }
}

/// An X25519 mix key with the epoch it serves.
pub struct MixKey {
    pub epoch: u32,
    secret: x25519_dalek::StaticSecret,
}

impl fmt::Debug for MixKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MixKey(epoch {}, public {:02x?})",
            self.epoch,
            self.public().as_bytes()
        )
    }
}

impl MixKey {
    pub fn public(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(&self.secret)
    }

    /// The secret a hop unwraps packets with.
    pub fn secret(&self) -> &x25519_dalek::StaticSecret {
        &self.secret
    }

    fn from_secret(epoch: u32, secret: [u8; KEY_LEN]) -> MixKey {
        MixKey {
            epoch,
            secret: x25519_dalek::StaticSecret::from(secret),
        }
    }
}

/// What one rotation did, for the log line and the replay-tag purge.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub created: Vec<u32>,
    pub deleted: Vec<u32>,
    /// Tags of epochs below this can go: no key for them is left.
    pub purge_below: u32,
}

/// This node's mix keys by epoch, mirrored in `mixkey-<epoch>` files.
///
/// The files are the truth across restarts: a node that was down over a
/// boundary finds its keys for the epochs it announced and makes the
/// missing ones; a key file is never replaced, only deleted once past its
/// grace.
pub struct KeyRing {
    dir: PathBuf,
    keys: std::sync::RwLock<std::collections::BTreeMap<u32, Arc<MixKey>>>,
    current: std::sync::atomic::AtomicU32,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRing(epochs {:?})", self.epochs())
    }
}

impl KeyRing {
    /// Loads the key files in `data_dir` and rotates to `current`.
    pub fn open(data_dir: &Path, current: u32) -> Result<(KeyRing, Rotation), KeyError> {
        let legacy = data_dir.join(LEGACY_MIX_KEY_FILE);
        if legacy.exists() {
            destroy(&legacy).map_err(|e| io(&legacy, e))?;
        }
        let mut keys = std::collections::BTreeMap::new();
        let listing = std::fs::read_dir(data_dir).map_err(|e| io(data_dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io(data_dir, e))?;
            let name = entry.file_name();
            let Some(epoch) = name
                .to_str()
                .and_then(|n| n.strip_prefix(MIX_KEY_PREFIX))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(secret) = read(&entry.path(), MIX_KEY_FIX)? {
                keys.insert(epoch, Arc::new(MixKey::from_secret(epoch, secret)));
            }
        }
        let ring = KeyRing {
            dir: data_dir.to_path_buf(),
            keys: std::sync::RwLock::new(keys),
            current: std::sync::atomic::AtomicU32::new(current),
        };
        let rotation = ring.rotate(current)?;
        Ok((ring, rotation))
    }

    /// The ring of a client, which unwraps no packet and so holds no mix
    /// key (and writes none: it is never rotated).
    pub fn empty(current: u32) -> KeyRing {
        KeyRing {
            dir: PathBuf::new(),
            keys: Default::default(),
            current: std::sync::atomic::AtomicU32::new(current),
        }
    }

    fn path(&self, epoch: u32) -> PathBuf {
        self.dir.join(format!("{MIX_KEY_PREFIX}{epoch}"))
    }

    /// Makes the keys of `current` and the [`AHEAD`] epochs after it,
    /// deletes every key older than the previous epoch. Idempotent.
    pub fn rotate(&self, current: u32) -> Result<Rotation, KeyError> {
        self.current
            .store(current, std::sync::atomic::Ordering::Relaxed);
        let mut rotation = Rotation {
            purge_below: current.saturating_sub(1),
            ..Rotation::default()
        };
        for epoch in current..=current.saturating_add(AHEAD) {
            if self.keys.read().unwrap().contains_key(&epoch) {
                continue;
            }
            let secret = load_or_create(&self.path(epoch), MIX_KEY_FIX)?;
            self.keys
                .write()
                .unwrap()
                .insert(epoch, Arc::new(MixKey::from_secret(epoch, secret)));
            rotation.created.push(epoch);
        }
        let stale: Vec<u32> = self
            .keys
            .read()
            .unwrap()
            .keys()
            .copied()
            .filter(|e| *e < rotation.purge_below)
            .collect();
        for epoch in stale {
            let path = self.path(epoch);
            destroy(&path).map_err(|e| io(&path, e))?;
            self.keys.write().unwrap().remove(&epoch);
            rotation.deleted.push(epoch);
        }
        Ok(rotation)
    }

    /// The key a packet built for `epoch` is opened with, if that epoch is
    /// the current one, the previous one (grace) or one made ahead.
    pub fn get(&self, epoch: u32) -> Option<Arc<MixKey>> {
        let current = self.current.load(std::sync::atomic::Ordering::Relaxed);
        if epoch.saturating_add(1) < current || epoch > current.saturating_add(AHEAD) {
            return None;
        }
        self.keys.read().unwrap().get(&epoch).cloned()
    }

    /// Public keys of `first` and the next [`crate::wire::bundle::SLOTS`]
    /// − 1 epochs, zero where there is none (for a bundle).
    pub fn publics_from(&self, first: u32, n: usize) -> Vec<[u8; 32]> {
        let keys = self.keys.read().unwrap();
        (0..n as u32)
            .map(|i| {
                keys.get(&first.saturating_add(i))
                    .map(|k| k.public().to_bytes())
                    .unwrap_or([0; 32])
            })
            .collect()
    }

    pub fn current(&self) -> u32 {
        self.current.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Epochs with a key on disk, oldest first.
    pub fn epochs(&self) -> Vec<u32> {
        self.keys.read().unwrap().keys().copied().collect()
    }
}

/// Overwrites a key file with zeros, syncs it, then unlinks it and syncs
/// the directory: the secret is gone from the file system, not only its
/// name (as far as the file system lets a program make sure).
fn destroy(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(mut file) => {
            let len = file.metadata()?.len() as usize;
            file.write_all(&vec![0u8; len])?;
            file.sync_all()?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::remove_file(path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a 32-byte secret, or creates it if the file does not exist.
/// Public for `pluto2 pki sign`, whose operator key follows the same rules.
pub fn load_or_create(path: &Path, fix: &'static str) -> Result<[u8; KEY_LEN], KeyError> {
    // Twice at most: a file that appears between the read and the link
    // (another process won the race) is read on the second pass.
    for _ in 0..2 {
        match read(path, fix)? {
            Some(key) => return Ok(key),
            None => match create(path) {
                Ok(key) => return Ok(key),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(io(path, source)),
            },
        }
    }
    read(path, fix)?.ok_or_else(|| io(path, std::io::ErrorKind::NotFound.into()))
}

fn io(path: &Path, source: std::io::Error) -> KeyError {
    KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `Ok(None)` if the file does not exist. Public for `pluto2 pki pubkey`.
pub fn read(path: &Path, fix: &'static str) -> Result<Option<[u8; KEY_LEN]>, KeyError> {
    let shown = || path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, e)),
    };
    if meta.len() != KEY_LEN as u64 {
        return Err(KeyError::Size {
            path: shown(),
            len: meta.len(),
            fix,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: shown(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Size {
        path: shown(),
        len: bytes.len() as u64,
        fix,
    })?;
    Ok(Some(key))
}

/// Writes a fresh random key beside `path`, flushes it, and links it into
/// place; the link fails with `AlreadyExists` rather than replace a key.
fn create(path: &Path) -> std::io::Result<[u8; KEY_LEN]> {
    let key: [u8; KEY_LEN] = rand::rng().random();
    // A bare file name ("op.key") has an empty parent: the current dir.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let suffix: u64 = rand::rng().random();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp: PathBuf = dir.join(format!(".{name}.{suffix:016x}.tmp"));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&key)?;
        file.sync_all()?;
        std::fs::hard_link(&temp, path)
    })();
    let _ = std::fs::remove_file(&temp);
    written?;
    // The new name must survive a crash too.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn it_creates_the_keys_once_with_mode_0600_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let identity = IdentityKey::load_or_create(dir.path()).unwrap();
        let (ring, rotation) = KeyRing::open(dir.path(), 100).unwrap();
        assert_eq!(rotation.created, vec![100, 101, 102]);
        assert!(rotation.deleted.is_empty());
        for file in [IDENTITY_FILE, "mixkey-100", "mixkey-101", "mixkey-102"] {
            let path = dir.path().join(file);
            assert_eq!(mode(&path), 0o600, "{file}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 32, "{file}");
        }
        // Nothing else is left behind (no temporary files).
        assert_eq!(
            files(dir.path()),
            ["identity.key", "mixkey-100", "mixkey-101", "mixkey-102"]
        );
        let again = IdentityKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.public(), identity.public());
        let (ring_again, rotation) = KeyRing::open(dir.path(), 100).unwrap();
        assert_eq!(rotation.created, Vec::<u32>::new());
        for e in 100..=102 {
            assert_eq!(
                ring_again.get(e).unwrap().public(),
                ring.get(e).unwrap().public()
            );
        }
        // Identity and mix keys are independent secrets; epochs differ.
        let mix = ring.get(100).unwrap();
        assert_ne!(identity.public().as_bytes(), mix.public().as_bytes());
        assert_ne!(mix.public(), ring.get(101).unwrap().public());
    }

    #[test]
    fn rotation_keeps_one_epoch_of_grace_then_destroys_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ring, _) = KeyRing::open(dir.path(), 10).unwrap();
        let old = ring.get(10).unwrap().public();
        let rotation = ring.rotate(11).unwrap();
        assert_eq!(rotation.created, vec![13]);
        assert!(rotation.deleted.is_empty());
        assert_eq!(ring.get(10).unwrap().public(), old, "grace");
        assert!(ring.get(14).is_none(), "not made yet");
        let rotation = ring.rotate(12).unwrap();
        assert_eq!(rotation.deleted, vec![10]);
        assert_eq!(rotation.purge_below, 11);
        assert!(ring.get(10).is_none());
        assert_eq!(
            files(dir.path()),
            ["mixkey-11", "mixkey-12", "mixkey-13", "mixkey-14"]
        );
        // Across a restart that skipped several epochs: only what is
        // current, ahead, or in grace survives.
        drop(ring);
        let (ring, rotation) = KeyRing::open(dir.path(), 20).unwrap();
        assert_eq!(rotation.deleted, vec![11, 12, 13, 14]);
        assert_eq!(ring.epochs(), vec![20, 21, 22]);
        assert_eq!(files(dir.path()), ["mixkey-20", "mixkey-21", "mixkey-22"]);
    }

    #[test]
    fn a_key_is_only_served_for_its_window_even_before_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let (ring, _) = KeyRing::open(dir.path(), 10).unwrap();
        // The clock moved on but the rotation has not run yet.
        ring.current.store(12, std::sync::atomic::Ordering::Relaxed);
        assert!(ring.get(10).is_none());
        assert!(ring.get(11).is_some());
    }

    #[test]
    fn it_destroys_the_static_key_of_earlier_versions() {
        let dir = tempfile::tempdir().unwrap();
        create(&dir.path().join(LEGACY_MIX_KEY_FILE)).unwrap();
        KeyRing::open(dir.path(), 1).unwrap();
        assert!(!dir.path().join(LEGACY_MIX_KEY_FILE).exists());
    }

    #[test]
    fn it_uses_the_stored_seed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(&[7; 32])
            .unwrap();
        let key = IdentityKey::load_or_create(dir.path()).unwrap();
        let expected = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert_eq!(key.public(), expected);
        use ed25519_dalek::Verifier;
        let signature = key.sign(b"bundle");
        assert!(expected.verify(b"bundle", &signature).is_ok());
    }

    #[test]
    fn it_refuses_a_key_file_of_the_wrong_size_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        for (file, len) in [(IDENTITY_FILE, 0usize), ("mixkey-5", 64)] {
            let path = dir.path().join(file);
            std::fs::write(&path, vec![1u8; len]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = if file == IDENTITY_FILE {
                IdentityKey::load_or_create(dir.path()).unwrap_err()
            } else {
                KeyRing::open(dir.path(), 5).unwrap_err()
            }
            .to_string();
            assert!(e.contains(&format!("holds {len} bytes")), "{e}");
            assert!(e.contains("restore") || e.contains("delete it"), "{e}");
            assert!(!e.contains('\n'));
            assert_eq!(std::fs::read(&path).unwrap(), vec![1u8; len]);
        }
    }

    #[test]
    fn it_refuses_a_key_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        IdentityKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = IdentityKey::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn a_client_seed_is_made_once_0600_and_gives_the_same_key_after_a_reload() {
        use crate::wire::packet::NodeId;
        let dir = tempfile::tempdir().unwrap();
        let seed = ClientSeed::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(CLIENT_SEED_FILE);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(files(dir.path()), [CLIENT_SEED_FILE]);
        let stored = std::fs::read(&path).unwrap();
        let gateway = NodeId([3; 32]);
        let again = ClientSeed::load_or_create(dir.path()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), stored, "never overwritten");
        assert_eq!(
            again.key_for(&gateway).verifying_key(),
            seed.key_for(&gateway).verifying_key()
        );
        assert_eq!(format!("{seed:?}"), "ClientSeed(..)", "no secret in logs");
    }

    #[test]
    fn reading_a_client_seed_never_creates_one() {
        use crate::wire::packet::NodeId;
        let dir = tempfile::tempdir().unwrap();
        assert!(ClientSeed::read(dir.path()).unwrap().is_none());
        assert!(files(dir.path()).is_empty(), "read created a file");
        let made = ClientSeed::load_or_create(dir.path()).unwrap();
        let read = ClientSeed::read(dir.path()).unwrap().expect("the seed");
        let gateway = NodeId([3; 32]);
        assert_eq!(
            read.key_for(&gateway).verifying_key(),
            made.key_for(&gateway).verifying_key()
        );
    }

    #[test]
    fn a_client_has_unrelated_keys_at_two_gateways_and_with_two_seeds() {
        use crate::wire::packet::NodeId;
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        let one = ClientSeed([7; 32]);
        let other = ClientSeed([8; 32]);
        let keys = [
            one.key_for(&a),
            one.key_for(&b),
            other.key_for(&a),
            other.key_for(&b),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x.verifying_key(), y.verifying_key());
            }
        }
        // Derived from the seed and the gateway, not taken from either.
        assert_ne!(one.key_for(&a).to_bytes(), [7; 32]);
        assert_ne!(one.key_for(&a).to_bytes(), [1; 32]);
        // The same inputs give the same key: a fixed derivation.
        assert_eq!(
            ClientSeed([7; 32]).key_for(&a).verifying_key(),
            one.key_for(&a).verifying_key()
        );
    }

    #[test]
    fn it_refuses_a_client_seed_others_can_read_or_of_the_wrong_size() {
        let dir = tempfile::tempdir().unwrap();
        ClientSeed::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(CLIENT_SEED_FILE);
        let stored = std::fs::read(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClientSeed::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("client-seed") && e.contains("chmod 600"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), stored);
        std::fs::write(&path, [1u8; 31]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = ClientSeed::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds 31 bytes"), "{e}");
        assert!(e.contains("restore this client's client-seed"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), [1u8; 31]);
    }

    #[test]
    fn it_never_replaces_a_key_that_appears_while_creating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixkey-1");
        let first = create(&path).unwrap();
        let second = create(&path).unwrap_err();
        assert_eq!(second.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), first);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
