//! `pluto2 queue …`: the operator's view of and hand on the spool beside
//! a running daemon. Its flags share nothing with the daemon's groups (only
//! `-data-dir`, declared again here with the same default), so they sit
//! apart from them.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Directory holding the spool database.
    #[arg(long, global = true, default_value = "pluto2-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The operation; without one, the counts.
    #[command(subcommand)]
    pub op: Option<QueueOp>,
}

/// The operator's queue operations (README.md maps them to Postfix's).
/// They never print addresses; messages are named by queue id.
#[derive(Debug, Subcommand)]
pub enum QueueOp {
    /// List messages: queue id, state, age, size, attempts, next attempt.
    List,
    /// Make all deferred mail due now (postqueue -f).
    Flush,
    /// Keep messages from delivery until released (postsuper -h).
    Hold(QueueTargets),
    /// Let held messages go again at their stored times (postsuper -H).
    Release(QueueTargets),
    /// Delete messages; counted and logged as drops of class operator (postsuper -d).
    Delete(DeleteTargets),
}

#[derive(Debug, Args)]
pub struct QueueTargets {
    /// Queue ids as `pluto2 queue list` prints them.
    #[arg(
        value_name = "ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub ids: Vec<String>,
    /// Every message in the spool.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct DeleteTargets {
    #[command(flatten)]
    pub targets: QueueTargets,
    /// Confirms -all: without it, deleting everything is refused.
    #[arg(long)]
    pub yes: bool,
}

#[cfg(test)]
mod tests {
    use crate::config::testing::args;
    use crate::config::{Command, parse};

    use super::*;

    #[test]
    fn it_parses_the_queue_subcommand() {
        let cli = parse(args(&["queue", "-data-dir", "/tmp/x", "-json"])).unwrap();
        match cli.command {
            Some(Command::Queue(q)) => {
                assert!(q.json);
                assert_eq!(q.data_dir, PathBuf::from("/tmp/x"));
            }
            other => panic!("{other:?}"),
        }
    }
}
