//! SIGHUP: read the settings again and put in force what can change
//! without a restart.
//!
//! The daemon's settings come from its command line plus an optional
//! `-flags-file`. A reload parses the original command line again, which
//! rereads the flags file (the `main.cf` of pluto2, as `postfix reload`
//! rereads `main.cf`) and every file a flag names, validates the result
//! exactly as at start, and then:
//!
//! * each [`Reloadable`] part prepares its change from the old and the new
//!   settings without applying anything: the rate limit, the log level and
//!   `-debug`, the `-dest-block` list (reread even when its flag did not
//!   change, since the file may have); the mixnet adds its `nodes.json`;
//! * only if every part prepared well are all changes applied, one after
//!   the other, so a bad new file or flag leaves every setting as it was
//!   and the log line says why;
//! * flags that changed but that no part takes care of are named in the
//!   log line as needing a restart; the daemon keeps running with their
//!   old values.
//!
//! Nothing here touches a session or a delivery: sessions keep their
//! recipients and their rate-limit admission, deliveries are not looked at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::level_filters::LevelFilter;

use crate::config::{self, Config, LogLevel};
use crate::node::policy::{BlockList, BlockListError, DestBlock};
use crate::smtp::rate_limit::SessionRateLimiter;
use crate::smtp::server::ServerContext;

/// Largest `-dest-block` file: a few hundred thousand patterns.
const MAX_DEST_BLOCK: u64 = 16 * 1024 * 1024;

/// Why a reload keeps the old settings: a file that a reloadable flag names
/// cannot be put in force. Each variant names the flag and the file, so the
/// `[RELOAD]` log line says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The `-dest-block` file cannot be read or holds a bad line.
    #[error(transparent)]
    DestBlock(#[from] DestBlockError),
    /// A part added with [`Reloader::add`] refuses the file its flag names
    /// (the mixnet's `nodes.json`). That part's own error is the source:
    /// this module sits below the parts in ARCHITECTURE.md's table, so it
    /// cannot name their types.
    #[error("{flag} {}: {source}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A `-dest-block` file that cannot be used, at start (the daemon refuses
/// to start) or on reload (the old list stays in force).
#[derive(Debug, thiserror::Error)]
#[error("-dest-block {}: {fault}", path.display())]
pub struct DestBlockError {
    pub path: PathBuf,
    pub fault: DestBlockFault,
}

/// What is wrong with a `-dest-block` file.
#[derive(Debug, thiserror::Error)]
pub enum DestBlockFault {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A FIFO or a device would block or never end.
    #[error("is not a regular file")]
    NotRegular,
    #[error("is larger than {} bytes", MAX_DEST_BLOCK)]
    TooLarge,
    /// A line is no pattern; the error holds its number.
    #[error("{0}")]
    Pattern(#[from] BlockListError),
}

/// One change, checked and ready to apply.
pub struct Staged {
    /// What changes, for the log line (`-rate-limit 20 per 1m`).
    pub what: String,
    pub apply: Box<dyn FnOnce() + Send>,
}

/// A part of the running daemon that can take new settings. The mixnet's
/// `nodes.json` reload is one more implementation, added with
/// [`Reloader::add`].
pub trait Reloadable: Send + Sync {
    /// The flags (long names) this part puts in force; a change to any
    /// other flag needs a restart.
    fn flags(&self) -> &'static [&'static str];

    /// Reads and checks what `new` asks for, applying nothing. `Ok(None)`
    /// when nothing changes; `Err` names the flag and the file that cannot
    /// be used and why, and then no part's change is applied.
    fn prepare(&self, old: &Config, new: &Config) -> Result<Option<Staged>, ReloadError>;
}

/// Rereads the settings on SIGHUP; see the module doc.
pub struct Reloader {
    /// The settings in force (reloadable parts updated by each reload).
    running: Mutex<Config>,
    /// Every flag's value at start: what the non-reloadable parts still use.
    started: BTreeMap<String, Vec<String>>,
    parts: Vec<Box<dyn Reloadable>>,
}

impl Reloader {
    pub fn new(config: &Config) -> Self {
        Self {
            started: config.origin.values.clone(),
            running: Mutex::new(config.clone()),
            parts: Vec::new(),
        }
    }

    pub fn add(&mut self, part: Box<dyn Reloadable>) {
        self.parts.push(part);
    }

    /// Reads everything again and applies what changed, all or nothing.
    /// Returns the log line's text: `Ok` when the new settings are in
    /// force, `Err` when the old ones were kept. Blocking (reads files).
    pub fn reload(&self) -> Result<String, String> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let parsed = config::parse(running.origin.argv.clone())
            .map_err(|e| config::one_line(&e))
            .and_then(|cli| cli.daemon.validate().map_err(|e| e.to_string()));
        let new = match parsed {
            Ok(new) => new,
            Err(e) => return Err(format!("kept the old settings: {e}")),
        };
        let restart = self.needs_restart(&new);
        let mut staged = Vec::new();
        for part in &self.parts {
            match part.prepare(&running, &new) {
                Ok(Some(change)) => staged.push(change),
                Ok(None) => {}
                Err(e) => return Err(format!("kept the old settings: {e}{restart}")),
            }
        }
        let applied: Vec<String> = staged
            .into_iter()
            .map(|change| {
                (change.apply)();
                change.what
            })
            .collect();
        *running = new;
        if applied.is_empty() {
            Ok(format!("reloaded, nothing to change{restart}"))
        } else {
            Ok(format!("reloaded: {}{restart}", applied.join(", ")))
        }
    }

    /// `; needs restart: -addr, -workers` for flags whose value differs
    /// from the start and that no part reloads, or nothing.
    fn needs_restart(&self, new: &Config) -> String {
        let reloadable: Vec<&str> = self.parts.iter().flat_map(|p| p.flags()).copied().collect();
        let changed: Vec<String> = new
            .origin
            .values
            .iter()
            .filter(|(flag, values)| {
                !reloadable.contains(&flag.as_str()) && self.started.get(*flag) != Some(values)
            })
            .map(|(flag, _)| format!("-{flag}"))
            .collect();
        if changed.is_empty() {
            String::new()
        } else {
            format!(
                "; needs restart (old values stay in force): {}",
                changed.join(", ")
            )
        }
    }
}

/// `-rate-limit` and `-rate-window`: a new limiter replaces the old one.
/// Counts start afresh: every client gets its full burst under the new
/// limit, which is the reading an operator who changed the limit expects.
pub struct RateLimits(pub Arc<ServerContext>);

impl Reloadable for RateLimits {
    fn flags(&self) -> &'static [&'static str] {
        &["rate-limit", "rate-window"]
    }

    fn prepare(&self, old: &Config, new: &Config) -> Result<Option<Staged>, ReloadError> {
        let (limit, window) = (new.listener.rate_limit, new.listener.rate_window);
        if (limit, window) == (old.listener.rate_limit, old.listener.rate_window) {
            return Ok(None);
        }
        let ctx = self.0.clone();
        Ok(Some(Staged {
            what: format!(
                "-rate-limit {limit} per {}",
                humantime::format_duration(window)
            ),
            apply: Box::new(move || ctx.set_rate_limiter(SessionRateLimiter::new(limit, window))),
        }))
    }
}

/// `-log-level` and `-debug` (level and redaction together).
pub struct LogSettings;

impl Reloadable for LogSettings {
    fn flags(&self) -> &'static [&'static str] {
        &["log-level", "debug"]
    }

    fn prepare(&self, old: &Config, new: &Config) -> Result<Option<Staged>, ReloadError> {
        let (level, debug) = (new.ops.log_level, new.ops.debug);
        if (level, debug) == (old.ops.log_level, old.ops.debug) {
            return Ok(None);
        }
        let what = format!(
            "-log-level {}{}",
            level_name(level),
            if debug {
                " with -debug (addresses shown)"
            } else {
                ""
            }
        );
        let ops = new.ops.clone();
        Ok(Some(Staged {
            what,
            apply: Box::new(move || apply_log_settings(&ops)),
        }))
    }
}

/// Puts `-log-level` and `-debug` in force (at start and on reload). The
/// only failure is a missing subscriber (tests that run the daemon in
/// process), where there is no level to set; the redaction switch is set
/// regardless.
pub fn apply_log_settings(ops: &crate::config::OpsConfig) {
    let _ = crate::logging::apply(level_filter(ops.log_level), ops.debug);
}

/// `-dest-block`: the file is read again on every reload.
pub struct DestBlockFile(pub Arc<DestBlock>);

impl Reloadable for DestBlockFile {
    fn flags(&self) -> &'static [&'static str] {
        &["dest-block"]
    }

    fn prepare(&self, _old: &Config, new: &Config) -> Result<Option<Staged>, ReloadError> {
        let (list, what) = match &new.relay.dest_block {
            Some(path) => {
                let list = read_dest_block(path)?;
                let what = format!("-dest-block {} ({} patterns)", path.display(), list.len());
                (list, what)
            }
            None => (BlockList::default(), "no -dest-block".to_string()),
        };
        if *self.0.current() == list {
            return Ok(None);
        }
        let holder = self.0.clone();
        Ok(Some(Staged {
            what,
            apply: Box::new(move || holder.replace(list)),
        }))
    }
}

/// Reads and parses a `-dest-block` file; the error names the flag, the
/// file and (for a bad pattern) the line.
pub fn read_dest_block(path: &Path) -> Result<BlockList, DestBlockError> {
    read_block_list(path).map_err(|fault| DestBlockError {
        path: path.to_path_buf(),
        fault,
    })
}

fn read_block_list(path: &Path) -> Result<BlockList, DestBlockFault> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(DestBlockFault::NotRegular);
    }
    let mut text = String::new();
    file.take(MAX_DEST_BLOCK + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_DEST_BLOCK {
        return Err(DestBlockFault::TooLarge);
    }
    Ok(BlockList::parse(&text)?)
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::address::OnionName;

    #[test]
    fn it_says_which_fault_keeps_a_dest_block_file_out() {
        let dir = tempfile::tempdir().unwrap();
        let fault = |path: &Path| read_dest_block(path).unwrap_err();

        let missing = dir.path().join("missing");
        let e = fault(&missing);
        assert!(
            matches!(&e.fault, DestBlockFault::Io(io) if io.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
        assert!(matches!(
            fault(dir.path()).fault,
            DestBlockFault::NotRegular
        ));

        let huge = dir.path().join("huge");
        let file = std::fs::File::create(&huge).unwrap();
        file.set_len(MAX_DEST_BLOCK + 1).unwrap();
        assert!(matches!(fault(&huge).fault, DestBlockFault::TooLarge));

        let bad = dir.path().join("bad");
        std::fs::write(&bad, "a.example\n# fine\nno good\n").unwrap();
        let e = fault(&bad);
        assert!(
            matches!(&e.fault, DestBlockFault::Pattern(p) if p.line == 3),
            "{e:?}"
        );
        // The log line: flag, file, then the line at fault.
        let line = ReloadError::from(e).to_string();
        assert!(
            line.starts_with(&format!("-dest-block {}: line 3: ", bad.display())),
            "{line}"
        );
    }

    /// Stages a change of -rate-limit whose apply is seen in `applied`.
    struct RateLimitProbe(Arc<AtomicBool>);

    impl Reloadable for RateLimitProbe {
        fn flags(&self) -> &'static [&'static str] {
            &["rate-limit"]
        }

        fn prepare(&self, old: &Config, new: &Config) -> Result<Option<Staged>, ReloadError> {
            if old.listener.rate_limit == new.listener.rate_limit {
                return Ok(None);
            }
            let applied = self.0.clone();
            Ok(Some(Staged {
                what: "-rate-limit".into(),
                apply: Box::new(move || applied.store(true, Ordering::SeqCst)),
            }))
        }
    }

    /// Refuses every reload as the mixnet part refuses a bad `nodes.json`.
    struct RefusingPart;

    impl Reloadable for RefusingPart {
        fn flags(&self) -> &'static [&'static str] {
            &["pki-file"]
        }

        fn prepare(&self, _old: &Config, _new: &Config) -> Result<Option<Staged>, ReloadError> {
            Err(ReloadError::File {
                flag: "-pki-file",
                path: PathBuf::from("/etc/pluto2/nodes.json"),
                source: "serial 3 is older than the 5 saved".into(),
            })
        }
    }

    #[test]
    fn a_refusal_from_one_part_leaves_every_change_unapplied() {
        let dir = tempfile::tempdir().unwrap();
        let flags = dir.path().join("flags");
        std::fs::write(&flags, "-rate-limit 10\n").unwrap();
        let name = OnionName::from_seed(1).to_string();
        let argv = [
            "pluto2",
            "-name",
            &name,
            "-flags-file",
            flags.to_str().unwrap(),
        ];
        let config = config::parse(argv.map(String::from))
            .unwrap()
            .daemon
            .validate()
            .unwrap();
        let applied = Arc::new(AtomicBool::new(false));
        let mut reloader = Reloader::new(&config);
        reloader.add(Box::new(RateLimitProbe(applied.clone())));
        reloader.add(Box::new(RefusingPart));

        std::fs::write(&flags, "-rate-limit 20\n").unwrap();
        let line = reloader.reload().unwrap_err();
        assert_eq!(
            line,
            "kept the old settings: -pki-file /etc/pluto2/nodes.json: serial 3 is older than the 5 saved"
        );
        assert!(!applied.load(Ordering::SeqCst), "a change was applied");
    }
}
