//! The Spool group: the data directory and what is kept in it (the replay
//! window, the free space held in reserve). Validation refuses nothing and
//! touches nothing: whether the directory is usable is only known by trying,
//! which the daemon does at start (`daemon::data_dir`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// Where accepted mail is kept until it leaves.
#[derive(Debug, Args)]
#[command(next_help_heading = "Spool")]
pub struct SpoolArgs {
    /// Spool database and node state (created with mode 0700 at start).
    #[arg(long, default_value = "pluto2-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// How long identical messages are refused as replays (0 = no replay check).
    #[arg(long, default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub replay_window: Duration,
    /// Free space kept in reserve on the data dir's file system: below it
    /// new mail gets 452 4.3.1 while queued mail still drains (0 = off).
    #[arg(long, default_value_t = 100 * 1024 * 1024, value_name = "BYTES")]
    pub min_free_space: u64,
}

/// Settings of the spool.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Not yet checked: the daemon creates and checks it at start.
    pub data_dir: PathBuf,
    /// Zero turns the replay check off.
    pub replay_window: Duration,
    /// Bytes of free space below which new mail is refused (0: never).
    pub min_free_space: u64,
}

impl SpoolArgs {
    /// Nothing to refuse: any window is meaningful, and whether the data
    /// directory is usable is only known by trying, at daemon start.
    pub(super) fn validate(self) -> SpoolConfig {
        SpoolConfig {
            data_dir: self.data_dir,
            replay_window: self.replay_window,
            min_free_space: self.min_free_space,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::address::OnionName;
    use crate::config::parse;
    use crate::config::testing::args;

    #[test]
    fn it_validates_without_creating_or_changing_the_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let name = OnionName::from_seed(2).to_string();
        let listing = || {
            let mut names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            names
        };

        let missing = dir.path().join("missing").join("spool");
        let cli = parse(args(&[
            "-name",
            &name,
            "-data-dir",
            missing.to_str().unwrap(),
        ]))
        .unwrap();
        let cfg = cli.daemon.validate().unwrap();
        assert_eq!(cfg.spool.data_dir, missing);
        assert!(listing().is_empty(), "validate created {:?}", listing());

        // An existing directory open to others keeps its mode and gains no file.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cli = parse(args(&["-name", &name, "-data-dir", open.to_str().unwrap()])).unwrap();
        cli.daemon.validate().unwrap();
        let mode = std::fs::metadata(&open).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    }
}
