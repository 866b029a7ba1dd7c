//! The data directory, made ready when the daemon starts.
//!
//! This is the daemon's job and not validation's: `config` only reads, so a
//! command line can be checked without creating or changing anything.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Worded like the other setting errors (flag first, then what to do), so
/// `main` reports it as a bad setting (exit 64) in one line.
#[derive(Debug, thiserror::Error)]
#[error("-data-dir {path}: {reason}; pass -data-dir with a directory pluto2 may create and write")]
pub struct DataDirError {
    path: String,
    reason: String,
}

/// Creates the data directory with mode 0700 (the spool holds mail and the
/// replay cache, the cover key sits beside it), narrows a directory open to
/// others to 0700, and checks that files can be written in it, so a
/// read-only mount fails here with advice rather than inside SQLite.
pub fn prepare(path: &Path) -> Result<(), DataDirError> {
    let err = |reason: String| DataDirError {
        path: path.display().to_string(),
        reason,
    };
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| err(format!("cannot create it: {e}")))?;
    }
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("exists and is not a directory".into()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(format!("cannot restrict it to mode 0700: {e}")))?;
    }
    let probe = path.join(".write-probe");
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| err(format!("is not writable: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn it_creates_a_missing_data_dir_with_mode_0700() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a").join("spool");
        prepare(&data).unwrap();
        assert!(data.is_dir());
        assert_eq!(mode(&data), 0o700);
        // Missing parents are created private too, not only the last one.
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "probe left");
    }

    #[test]
    fn it_restricts_a_data_dir_open_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("open");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
    }

    #[test]
    fn it_refuses_a_data_dir_that_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let msg = prepare(&file).unwrap_err().to_string();
        assert!(msg.starts_with("-data-dir"), "{msg}");
        assert!(msg.contains("not a directory"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}
