//! This node's mixnet keys, kept in the data directory.
//!
//! * The **identity key** (`identity.key`): an ed25519 key that other
//!   operators pin in `nodes.json`. It will sign this node's key bundles,
//!   so it is made once and never changed by pluto2: losing or replacing
//!   it makes the node a stranger to the network.
//! * The **mix key** (`mixkey`): the X25519 secret that Sphinx headers are
//!   built for. In this version there is one, made once, at epoch
//!   [`STATIC_EPOCH`]; rotation per epoch comes with signed bundles, and
//!   the epoch number is already part of [`MixKey`] so that callers carry
//!   it from the start.
//!
//! Both files hold a 32-byte secret, mode 0600. A missing file is created
//! without ever overwriting one (written to a temporary file, flushed to
//! disk, then linked into place, which fails if the name exists), so two
//! processes starting at once or a crash halfway leave either no key or a
//! whole one. A file of another size is refused with what to do; pluto2
//! never repairs a key file on its own.
//!
//! The node's address in packet headers is neither of these: it is the key
//! inside its onion name (`mixnet::packet::NodeId`), which Tor holds.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;

/// File name of the identity key in the data directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// File name of the mix key in the data directory.
pub const MIX_KEY_FILE: &str = "mixkey";
/// The epoch of the one static mix key of this version.
pub const STATIC_EPOCH: u32 = 0;

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
const MIX_KEY_FIX: &str = "restore it from a backup, or delete it so that pluto2 makes a new one and give the other operators this node's new -export-node-info entry";

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

    /// Signs `message` (key bundles, in the next version).
    pub fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        use ed25519_dalek::Signer;
        self.0.sign(message)
    }
}

/// An X25519 mix key with the epoch it serves.
pub struct MixKey {
    /// [`STATIC_EPOCH`] for the one static key of this version.
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
    /// Reads `mixkey` from `data_dir`, creating it if missing.
    pub fn load_or_create(data_dir: &Path) -> Result<MixKey, KeyError> {
        let secret = load_or_create(&data_dir.join(MIX_KEY_FILE), MIX_KEY_FIX)?;
        Ok(MixKey {
            epoch: STATIC_EPOCH,
            secret: x25519_dalek::StaticSecret::from(secret),
        })
    }

    pub fn public(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(&self.secret)
    }

    /// The secret a hop unwraps packets with.
    pub fn secret(&self) -> &x25519_dalek::StaticSecret {
        &self.secret
    }
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
    let dir = path.parent().unwrap_or(Path::new("."));
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

    #[test]
    fn it_creates_the_keys_once_with_mode_0600_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let identity = IdentityKey::load_or_create(dir.path()).unwrap();
        let mix = MixKey::load_or_create(dir.path()).unwrap();
        assert_eq!(mix.epoch, STATIC_EPOCH);
        for file in [IDENTITY_FILE, MIX_KEY_FILE] {
            let path = dir.path().join(file);
            assert_eq!(mode(&path), 0o600, "{file}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 32, "{file}");
        }
        // Nothing else is left behind (no temporary files).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let again = IdentityKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.public(), identity.public());
        let mix_again = MixKey::load_or_create(dir.path()).unwrap();
        assert_eq!(mix_again.public(), mix.public());
        // Identity and mix key are independent secrets.
        assert_ne!(identity.public().as_bytes(), mix.public().as_bytes());
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
        for (file, len) in [(IDENTITY_FILE, 0usize), (MIX_KEY_FILE, 64)] {
            let path = dir.path().join(file);
            std::fs::write(&path, vec![1u8; len]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = if file == IDENTITY_FILE {
                IdentityKey::load_or_create(dir.path()).unwrap_err()
            } else {
                MixKey::load_or_create(dir.path()).unwrap_err()
            }
            .to_string();
            assert!(e.contains(&format!("holds {len} bytes")), "{e}");
            assert!(e.contains("restore"), "{e}");
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
    fn it_never_replaces_a_key_that_appears_while_creating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MIX_KEY_FILE);
        let first = create(&path).unwrap();
        let second = create(&path).unwrap_err();
        assert_eq!(second.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), first);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
