//! One daemon per data directory.
//!
//! Two daemons on one spool would each release the other's leases at start
//! and deliver the same message twice. The daemon therefore holds an
//! exclusive lock (`flock`, through `std::fs::File::try_lock`) on the file
//! `lock` in the data directory for as long as it runs; the kernel drops it
//! when the process ends, however it ends, so a crash never leaves a stale
//! lock behind. The holder writes its pid into the file, only so that the
//! second daemon can say which process to look at.
//!
//! `pluto2 queue` only reads the spool and never takes this lock, so it
//! keeps working beside a running daemon.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// File name of the lock inside `-data-dir`.
pub const LOCK_FILE: &str = "lock";

/// Holds the data directory while it lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock: a daemon is running on this spool.
    #[error(
        "-data-dir {path}: another pluto2 ({}) is running on this data directory; stop it first, or give this one its own -data-dir",
        holder_text(*.pid)
    )]
    Held { path: String, pid: Option<u32> },
    /// The lock file cannot be created, read or locked at all.
    #[error("-data-dir {path}: cannot lock {LOCK_FILE} in it: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid not known yet".into(),
    }
}

/// Takes the lock on `data_dir` (which must exist) or says who holds it.
/// Never waits: a second daemon should stop at once, not queue up behind
/// the first.
pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
    let shown = || data_dir.display().to_string();
    let io = |source| LockError::Io {
        path: shown(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(data_dir.join(LOCK_FILE))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LockError::Held {
                path: shown(),
                pid: read_pid(&mut file),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DataDirLock { _file: file })
}

/// The holder's pid, if it has written one yet (it writes right after
/// locking, so a reader can come in between and find the file empty).
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_refuses_a_second_holder_and_names_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path()).unwrap();
        let err = acquire(dir.path()).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(err, LockError::Held { pid: Some(p), .. } if p == pid),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.starts_with("-data-dir "), "{text}");
        assert!(text.contains(&format!("pid {pid}")), "{text}");
        assert!(!text.contains('\n'), "{text}");
        drop(first);
        // Released with its holder: the next daemon may start.
        acquire(dir.path()).unwrap();
    }

    #[test]
    fn it_replaces_an_old_pid_with_its_own() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "4194304999\n").unwrap();
        let _held = acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }
}
