//! The Node group (`-name`, `-hs-hostname-file`): who this node is. A
//! group of its own because every part uses the name (SMTP greeting, HELO,
//! envelope sender, From and Message-ID of sanitized mail, cover traffic).
//! Reading Tor's hostname file lives here too, with its guards against a
//! file that is not that file, since `pluto2 check` reads it the same way.

use std::path::PathBuf;

use clap::Args;

use super::ConfigError;
use crate::address::OnionName;

/// Tor writes 63 bytes into `hostname`; anything far larger is not that
/// file, and reading it whole could exhaust memory.
const MAX_HOSTNAME_FILE: u64 = 1024;

/// Who this node is. A group of its own rather than part of the listener:
/// the name is used by every part (SMTP greeting, HELO, envelope sender,
/// From and Message-ID of sanitized mail, cover traffic).
#[derive(Debug, Args)]
#[command(next_help_heading = "Node")]
pub struct NodeArgs {
    /// This node's v3 onion name (56 base32 characters + ".onion").
    #[arg(long, value_name = "ONION")]
    pub name: Option<String>,
    /// Tor's HiddenServiceDir/hostname file, read when -name is absent.
    #[arg(long, value_name = "FILE")]
    pub hs_hostname_file: Option<PathBuf>,
}

impl NodeArgs {
    /// Takes -name, or else the first line of Tor's hostname file.
    pub(super) fn resolve_name(&self) -> Result<OnionName, ConfigError> {
        if let Some(value) = &self.name {
            return OnionName::parse(value.trim()).map_err(|source| ConfigError::BadName {
                value: value.clone(),
                source,
            });
        }
        let Some(path) = &self.hs_hostname_file else {
            return Err(ConfigError::NoName);
        };
        name_from_hostname_file(path)
    }
}

/// The onion name in Tor's hostname file, read and checked as the daemon
/// does when -name is absent (`pluto2 check` compares it with -name).
pub fn name_from_hostname_file(path: &std::path::Path) -> Result<OnionName, ConfigError> {
    let shown = path.display().to_string();
    let text = read_hostname_file(path).map_err(|reason| ConfigError::HostnameFile {
        path: shown.clone(),
        reason,
    })?;
    OnionName::parse(text.trim()).map_err(|source| ConfigError::HostnameContent {
        path: shown,
        source,
    })
}

/// Reads Tor's hostname file, refusing anything that is not a small regular
/// file: a FIFO would block the start for ever and a huge file (a device,
/// a log) would be read until memory runs out. The file is opened
/// non-blocking so that even a FIFO swapped in after a check cannot hang
/// the open; the type is checked on the opened file itself.
fn read_hostname_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_HOSTNAME_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_HOSTNAME_FILE {
        return Err(format!(
            "is larger than {MAX_HOSTNAME_FILE} bytes, so it is not Tor's hostname file"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "is not text".into())
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::config::testing::args;

    use super::*;

    #[test]
    fn it_requires_a_name_or_hostname_file() {
        let cli = parse(args(&[])).unwrap();
        assert!(matches!(cli.daemon.validate(), Err(ConfigError::NoName)));
    }

    #[test]
    fn it_reports_a_bad_checksum_in_name() {
        let good = OnionName::from_seed(7).to_string();
        // Swap two characters of the base32 part so the checksum no longer matches.
        let mut chars: Vec<char> = good.chars().collect();
        chars.swap(0, 1);
        if chars[0] == chars[1] {
            chars[0] = if chars[0] == 'a' { 'b' } else { 'a' };
        }
        let bad: String = chars.into_iter().collect();
        let cli = parse(args(&["-name", &bad])).unwrap();
        let msg = cli.daemon.validate().unwrap_err().to_string();
        assert!(msg.contains("checksum"), "{msg}");
    }

    #[test]
    fn it_reads_the_name_from_the_hostname_file() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("hostname");
        let name = OnionName::from_seed(9);
        std::fs::write(&host, format!("{name}\n")).unwrap();
        let cli = parse(args(&["-hs-hostname-file", host.to_str().unwrap()])).unwrap();
        let cfg = cli.daemon.validate().unwrap();
        assert_eq!(cfg.name, name);
    }
}
