//! `nodes.json` on disk: the file and its signatures (`nodes.json.sig`,
//! beside it), the highest serial this node accepted (`pki-serial` in the
//! data directory), and the decision between them, which is
//! `wire::pki_sig::accept`'s.
//!
//! [`load`] is what a node does with the file at start, and what a reload
//! does again: a refusal leaves the caller with what it had (at start,
//! nothing: startup stops). `pluto2 pki verify` uses the same reading
//! functions and the same decision, and never writes.
//!
//! The serial is saved only after a file was accepted, replaced atomically
//! (temporary file, fsync, rename, fsync of the directory), so a crash
//! leaves the old serial or the new one, never a torn file that would
//! stop the next start.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::address::OnionName;
use crate::time::UnixMillis;
use crate::wire::pki::{self, Directory, Reader};
use crate::wire::pki_sig::{self, Candidate, Trust};

/// File name of the highest accepted serial in the data directory.
pub const SERIAL_FILE: &str = "pki-serial";

/// Longest `pki-serial` read: a u64 in decimal and a newline fit many times.
const MAX_SERIAL_FILE: u64 = 64;

/// Why a node does not take a `nodes.json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The file (or its signatures) is refused: the caller names the file.
    #[error("{0}")]
    Refused(String),
    /// The saved serial cannot be read or written.
    #[error("-data-dir {path}: {what}")]
    State { path: String, what: String },
}

/// The signature file of `file`: the same path with `.sig` added.
pub fn sig_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// `nodes.json` and its signature file as bytes, as they are on disk.
#[derive(Debug, Clone)]
pub struct Files {
    pub file: Vec<u8>,
    /// `None`: there is no signature file.
    pub signatures: Option<Vec<u8>>,
}

/// Reads at most one byte more than `limit`, so a wrong path is refused by
/// size instead of read whole.
fn read_capped(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads `file` and, if it exists, its signature file. Sizes beyond the
/// limits are read one byte past them and refused by the codecs.
pub fn read_files(file: &Path) -> Result<Files, String> {
    let bytes = read_capped(file, pki::MAX_FILE_SIZE).map_err(|e| {
        format!(
            "cannot read it: {e}; assemble nodes.json from every node's -export-node-info output (README, \"Run a mixnet node\")"
        )
    })?;
    let sig = sig_path(file);
    let signatures = match read_capped(&sig, pki_sig::MAX_SIG_FILE) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(format!(
                "cannot read its signature file {}: {e}",
                sig.display()
            ));
        }
    };
    Ok(Files {
        file: bytes,
        signatures,
    })
}

fn state(data_dir: &Path, what: String) -> LoadError {
    LoadError::State {
        path: data_dir.display().to_string(),
        what,
    }
}

/// The highest serial this node accepted, `None` if it never saved one.
pub fn read_serial(data_dir: &Path) -> Result<Option<u64>, LoadError> {
    let path = data_dir.join(SERIAL_FILE);
    let bytes = match read_capped(&path, MAX_SERIAL_FILE as usize) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state(data_dir, format!("cannot read {SERIAL_FILE}: {e}"))),
    };
    let text = String::from_utf8_lossy(&bytes);
    text.trim().parse::<u64>().map(Some).map_err(|_| {
        state(
            data_dir,
            format!(
                "{SERIAL_FILE} holds {:?}, not a serial; it keeps the highest nodes.json serial this node accepted: restore it, or delete it to accept any serial again",
                text.chars().take(20).collect::<String>()
            ),
        )
    })
}

/// Replaces the saved serial atomically and durably.
pub fn save_serial(data_dir: &Path, serial: u64) -> std::io::Result<()> {
    let path = data_dir.join(SERIAL_FILE);
    let temp = data_dir.join(format!(".{SERIAL_FILE}.tmp"));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(format!("{serial}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// What the log must say about an accepted file: the unsigned-mode
/// warnings, or which signed file was taken. Kept apart from [`load`] so
/// that a start logs it only once the node runs: a start refused later
/// (a taken port) still prints its one line and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    pub warnings: Vec<&'static str>,
    /// `serial 5, signed by 2 of 3 trusted keys (2 needed), expires …`.
    pub accepted: Option<String>,
}

impl Notes {
    pub fn log(&self) {
        for warning in &self.warnings {
            tracing::warn!("[MIXNET] {warning}");
        }
        if let Some(accepted) = &self.accepted {
            tracing::info!("[MIXNET] nodes.json accepted: {accepted}");
        }
    }
}

/// Reads `pki_file` with its signatures, decides with the saved serial and
/// `now`, and saves a higher serial. Returns the directory and what to log
/// about it ([`Notes::log`]).
pub fn load(
    data_dir: &Path,
    own: &OnionName,
    pki_file: &Path,
    trust: Option<&Trust>,
    now: UnixMillis,
) -> Result<(Directory, Notes), LoadError> {
    load_as(data_dir, Reader::Node(own), pki_file, trust, now)
}

/// [`load`] for any reader: a node, or a client of one gateway (`-via`),
/// which is held to the same signatures, serial and expiry (its serial is
/// kept in its own data directory).
pub fn load_as(
    data_dir: &Path,
    reader: Reader<'_>,
    pki_file: &Path,
    trust: Option<&Trust>,
    now: UnixMillis,
) -> Result<(Directory, Notes), LoadError> {
    let files = read_files(pki_file).map_err(LoadError::Refused)?;
    let saved = read_serial(data_dir)?;
    let accepted = pki_sig::accept(&Candidate {
        file: &files.file,
        signatures: files.signatures.as_deref(),
        trust,
        saved_serial: saved,
        now,
        reader: Some(reader),
    })
    .map_err(|e| LoadError::Refused(e.to_string()))?;
    if let Some(serial) = accepted.serial_to_save(saved) {
        save_serial(data_dir, serial).map_err(|e| {
            state(
                data_dir,
                format!("cannot save the accepted nodes.json serial in {SERIAL_FILE}: {e}"),
            )
        })?;
    }
    let notes = Notes {
        warnings: accepted.warnings,
        accepted: accepted
            .signed
            .map(|tally| describe(&accepted.directory, &tally)),
    };
    Ok((accepted.directory, notes))
}

/// `serial 5, signed by 2 of 3 trusted keys (2 needed), expires …`.
pub fn describe(directory: &Directory, tally: &pki_sig::Tally) -> String {
    let v = directory.validity();
    let expires = v
        .expires
        .and_then(|e| {
            e.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "never".into());
    format!(
        "serial {}, signed by {} of {} trusted keys ({} needed), expires {expires}",
        v.serial.map_or("none".into(), |s| s.to_string()),
        tally.valid,
        tally.trusted,
        tally.needed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_the_highest_serial_across_saves() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_serial(dir.path()).unwrap(), None);
        save_serial(dir.path(), 5).unwrap();
        assert_eq!(read_serial(dir.path()).unwrap(), Some(5));
        save_serial(dir.path(), u64::MAX).unwrap();
        assert_eq!(read_serial(dir.path()).unwrap(), Some(u64::MAX));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [SERIAL_FILE]);
    }

    #[test]
    fn it_refuses_a_damaged_serial_file_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SERIAL_FILE), "five\n").unwrap();
        let e = read_serial(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("-data-dir "), "{e}");
        assert!(e.contains("pki-serial holds \"five\\n\""), "{e}");
    }

    #[test]
    fn it_puts_the_signatures_beside_the_file() {
        assert_eq!(
            sig_path(Path::new("/etc/pluto2/nodes.json")),
            PathBuf::from("/etc/pluto2/nodes.json.sig")
        );
    }
}
