//! What a running testnet writes about itself in `DIR/testnet.json`, so
//! that `pluto2 testnet kill|start NODE` in another terminal can find its
//! processes, and a testnet started again over the same directory can
//! tell a live one (refused) from one that ended.
//!
//! Processes are named by pid, and a pid is acted on only when
//! `/proc/PID/cmdline` still holds the `-data-dir` the testnet gave that
//! process: a pid the kernel reused for another program is never signalled.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The state file's name inside the testnet's directory.
pub const STATE_FILE: &str = "testnet.json";

/// One process the testnet runs: a node or the client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Its short name (`client` for the client).
    pub name: String,
    /// Its data directory (absolute): its spool, keys and `log`.
    pub data_dir: PathBuf,
    /// Its SMTP address on 127.0.0.1.
    pub smtp: u16,
    /// The arguments it runs with, after the program (reused by `start`).
    pub args: Vec<String>,
    /// Its pid while it runs.
    pub pid: Option<u32>,
}

/// The lock file beside it: every read-modify-write of the state holds it.
pub const LOCK_FILE: &str = "testnet.lock";

/// The testnet as written to [`STATE_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// The `pluto2 testnet` process; `None` once it is stopping.
    pub pid: Option<u32>,
    /// When that process started (clock ticks after boot, from
    /// `/proc/PID/stat`): with the pid it names one process for good,
    /// so a reused pid is never taken for the testnet.
    #[serde(default)]
    pub started: Option<u64>,
    /// Links over a private Tor network.
    pub tor: bool,
    pub members: Vec<Member>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a testnet state file ({source}); give the -dir of a testnet")]
    Format {
        path: String,
        source: serde_json::Error,
    },
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads the state of the testnet in `dir`; `Ok(None)` when it has none.
    pub fn read(dir: &Path) -> Result<Option<State>, StateError> {
        let path = Self::path(dir);
        let shown = path.display().to_string();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StateError::Format {
                        path: shown,
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: shown,
                source,
            }),
        }
    }

    /// Writes the state whole (a temporary file renamed over the old one),
    /// so a reader never sees half of it.
    pub fn write(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::path(dir);
        let tmp = dir.join(format!(".{STATE_FILE}.{}", std::process::id()));
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        let text = serde_json::to_vec_pretty(self).expect("state serializes");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn member_mut(&mut self, name: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.name == name)
    }

    /// The testnet process's pid while it still runs (see [`State::started`]).
    pub fn testnet_alive(&self) -> Option<u32> {
        let pid = self.pid?;
        (self.started.is_some() && process_start(pid) == self.started).then_some(pid)
    }

    /// The names, in order, for messages that list them.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        names.join(", ")
    }
}

/// Holds [`LOCK_FILE`] in `dir` (an exclusive `flock`, waited for) until
/// the returned file is dropped: `testnet kill|start` and the testnet's
/// own stop never interleave their reads and writes of the state.
pub fn lock(dir: &Path) -> Result<std::fs::File, StateError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| StateError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(e.into()))?;
    Ok(file)
}

/// When `pid` started (field 22 of `/proc/PID/stat`, clock ticks after
/// boot), while it is alive and not a zombie.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after its closing one (field 3 is the state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is alive (not a zombie) and its command line holds
/// `needle` as one whole argument.
pub fn runs_with(pid: u32, needle: &str) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
        return false;
    };
    if zombie(&proc) {
        return false;
    }
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == needle.as_bytes())
}

/// `State` in `/proc/PID/status` is `Z`: dead, waiting for its parent.
fn zombie(proc: &Path) -> bool {
    std::fs::read_to_string(proc.join("status"))
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("State:") && l.contains("Z (zombie)"))
        })
        .unwrap_or(true)
}

impl Member {
    /// Whether its recorded pid is still this member (see the module doc).
    pub fn alive(&self) -> Option<u32> {
        let pid = self.pid?;
        runs_with(pid, &self.data_dir.display().to_string()).then_some(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &Path) -> State {
        State {
            pid: Some(1),
            started: None,
            tor: false,
            members: vec![Member {
                name: "alice".into(),
                data_dir: dir.join("alice"),
                smtp: 2525,
                args: vec!["-sphinx".into()],
                pid: None,
            }],
        }
    }

    #[test]
    fn it_round_trips_and_tells_a_missing_file_from_a_foreign_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(State::read(dir.path()).unwrap(), None);
        let s = state(dir.path());
        s.write(dir.path()).unwrap();
        assert_eq!(State::read(dir.path()).unwrap(), Some(s));
        std::fs::write(State::path(dir.path()), "[1,2]").unwrap();
        let e = State::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a testnet state file"), "{e}");
    }

    /// The testnet's own pid counts only with its start time: this very
    /// process with its own, not with another.
    #[test]
    fn a_testnet_pid_counts_only_with_its_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        s.pid = Some(std::process::id());
        assert_eq!(s.testnet_alive(), None);
        s.started = process_start(std::process::id());
        assert!(s.started.is_some());
        assert_eq!(s.testnet_alive(), Some(std::process::id()));
        s.started = s.started.map(|t| t + 1);
        assert_eq!(s.testnet_alive(), None);
    }

    /// A pid is taken for a member only while that process runs with the
    /// member's data directory: this test's own process does not.
    #[test]
    fn a_pid_counts_only_while_it_runs_with_the_members_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = state(dir.path()).members.remove(0);
        m.pid = Some(std::process::id());
        assert_eq!(m.alive(), None);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // `spawn` returns before the child's exec fills its command line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !runs_with(child.id(), "30") {
            assert!(std::time::Instant::now() < deadline, "never seen running");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!runs_with(child.id(), "3"));
        child.kill().unwrap();
        // A zombie (killed, not yet reaped) no longer counts.
        while runs_with(child.id(), "30") {
            assert!(std::time::Instant::now() < deadline, "still running");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
    }
}
