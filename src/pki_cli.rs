//! `pluto2 pki`: the operators' side of the signed directory, so that the
//! signing ceremony needs no other tool.
//!
//! * `sign -key KEYFILE nodes.json`: checks the file as a node with
//!   `-pki-trust` would read it (contents, `serial`, `issued`, `expires`,
//!   not expired), creates KEYFILE if missing (32 secret bytes, mode 0600,
//!   never overwriting a file: `mixnet::keys`' rules), puts this key's line
//!   into `nodes.json.sig` (replacing an earlier one by the same key) and
//!   prints the public key for the other operators' `-pki-trust`.
//! * `pubkey -key KEYFILE`: prints that public key again; never creates.
//! * `verify -pki-trust … [-pki-threshold N] [-data-dir DIR] nodes.json`:
//!   the decision a node makes at start (`wire::pki_sig::accept`), for
//!   every node the file lists, with DIR's saved serial when given. Reads
//!   only.
//!
//! Each command returns what to print; `main` prints it and exits with
//! the status (0; 1 for a file `verify` refuses; sysexits otherwise).

use std::io::Write;
use std::path::Path;

use data_encoding::BASE64;
use ed25519_dalek::SigningKey;

use crate::config::{PkiCommand, PkiKeyArgs, PkiSignArgs, PkiVerifyArgs, sysexits};
use crate::daemon::directory;
use crate::mixnet::keys::{self, KeyError};
use crate::wire::pki_sig::{self, Candidate};

/// What a command prints when it succeeds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// One line for stdout.
    pub stdout: String,
    /// Notes for stderr (lines), such as signatures a change voided.
    pub notes: Vec<String>,
}

/// A command that did not do its job: one line and the exit status.
#[derive(Debug, PartialEq, Eq)]
pub struct PkiFailure {
    pub status: u8,
    pub message: String,
}

/// The status of a file `verify` refuses: a plain "no", as scripts expect
/// from a check, unlike the sysexits of a command that could not run.
pub const REFUSED: u8 = 1;

fn failure(status: u8, message: String) -> PkiFailure {
    PkiFailure { status, message }
}

pub fn run(command: &PkiCommand) -> Result<Done, PkiFailure> {
    match command {
        PkiCommand::Sign(args) => sign(args),
        PkiCommand::Pubkey(args) => pubkey(args),
        PkiCommand::Verify(args) => verify(args),
    }
}

const KEY_FIX: &str =
    "restore the operator key from its backup; a new key needs every node's -pki-trust changed";

/// `-key PATH: …`, with the status that fits the key's trouble.
fn key_failure(path: &Path, e: KeyError) -> PkiFailure {
    let shown = path.display();
    match e {
        KeyError::Io { source, .. } => {
            failure(sysexits::CANTCREAT, format!("-key {shown}: {source}"))
        }
        other @ (KeyError::Size { .. } | KeyError::Exposed { .. }) => {
            failure(sysexits::DATAERR, format!("-key {other}"))
        }
    }
}

fn public_key(seed: &[u8; 32]) -> String {
    BASE64.encode(SigningKey::from_bytes(seed).verifying_key().as_bytes())
}

fn pubkey(args: &PkiKeyArgs) -> Result<Done, PkiFailure> {
    match keys::read(&args.key, KEY_FIX) {
        Ok(Some(seed)) => Ok(Done {
            stdout: public_key(&seed),
            notes: Vec::new(),
        }),
        Ok(None) => Err(failure(
            sysexits::NOINPUT,
            format!(
                "-key {}: no such key file; `pluto2 pki sign -key {} nodes.json` creates one",
                args.key.display(),
                args.key.display()
            ),
        )),
        Err(e) => Err(key_failure(&args.key, e)),
    }
}

fn sign(args: &PkiSignArgs) -> Result<Done, PkiFailure> {
    let shown = args.file.display().to_string();
    let files = directory::read_files(&args.file)
        .map_err(|e| failure(sysexits::NOINPUT, format!("{shown}: {e}")))?;
    // Refuse what no node with -pki-trust would take: a signature over it
    // would only move the error to every node's start.
    let refuse = |why: String| failure(sysexits::DATAERR, format!("{shown}: not signed: {why}"));
    let accepted = pki_sig::accept(&Candidate {
        file: &files.file,
        signatures: None,
        trust: None,
        saved_serial: None,
        now: crate::time::now_ms(),
        reader: None,
    })
    .map_err(|e| refuse(e.to_string()))?;
    let v = accepted.directory.validity();
    for (name, present) in [
        ("serial", v.serial.is_some()),
        ("issued", v.issued.is_some()),
        ("expires", v.expires.is_some()),
    ] {
        if !present {
            return Err(refuse(
                pki_sig::DirectoryRefusal::MissingField(name).to_string(),
            ));
        }
    }
    let seed =
        keys::load_or_create(&args.key.key, KEY_FIX).map_err(|e| key_failure(&args.key.key, e))?;
    let key = SigningKey::from_bytes(&seed);
    let sig = directory::sig_path(&args.file);
    let existing = match std::fs::read(&sig) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(failure(
                sysexits::IOERR,
                format!("{}: cannot read it: {e}", sig.display()),
            ));
        }
    };
    let text = pki_sig::add_signature(&existing, &key, &files.file).map_err(|e| {
        failure(
            sysexits::DATAERR,
            format!(
                "{}: {e}; fix or delete that line, then sign again",
                sig.display()
            ),
        )
    })?;
    write_replacing(&sig, text.as_bytes()).map_err(|e| {
        failure(
            sysexits::IOERR,
            format!("{}: cannot write it: {e}", sig.display()),
        )
    })?;
    let mut notes = Vec::new();
    let stale = pki_sig::parse_signatures(text.as_bytes())
        .map(|lines| pki_sig::stale_lines(&files.file, &lines))
        .unwrap_or(0);
    if stale > 0 {
        notes.push(format!(
            "{}: {stale} other signature line(s) do not match this file (it changed after they signed); those operators must sign again",
            sig.display()
        ));
    }
    Ok(Done {
        stdout: public_key(&seed),
        notes,
    })
}

/// Writes `bytes` to `path` through a temporary file in the same
/// directory, fsynced and renamed, so a reader (a node reloading) sees the
/// old signature file or the new one, never half of it.
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

fn verify(args: &PkiVerifyArgs) -> Result<Done, PkiFailure> {
    let trust = args
        .trust()
        .map_err(|e| failure(sysexits::USAGE, e.to_string()))?;
    let saved = match &args.data_dir {
        None => None,
        Some(dir) if !dir.is_dir() => {
            return Err(failure(
                sysexits::USAGE,
                format!(
                    "-data-dir {}: not a directory; give the data directory of a node",
                    dir.display()
                ),
            ));
        }
        Some(dir) => directory::read_serial(dir).map_err(|e| failure(REFUSED, e.to_string()))?,
    };
    let shown = args.file.display().to_string();
    let refused = |why: String| failure(REFUSED, format!("{shown}: {why}"));
    let files = directory::read_files(&args.file).map_err(refused)?;
    let accepted = pki_sig::accept(&Candidate {
        file: &files.file,
        signatures: files.signatures.as_deref(),
        trust: Some(&trust),
        saved_serial: saved,
        now: crate::time::now_ms(),
        reader: None,
    })
    .map_err(|e| refused(e.to_string()))?;
    let tally = accepted.signed.expect("checked with -pki-trust");
    Ok(Done {
        stdout: format!(
            "{shown}: ok: {}",
            directory::describe(&accepted.directory, &tally)
        ),
        notes: Vec::new(),
    })
}
