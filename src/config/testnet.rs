//! `pluto2 testnet …`: a whole mixnet on this machine in one command, for
//! newcomers and for operators who want to watch custody at work. The
//! flags only name what to start and where; `testnet` does the rest.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// The fewest nodes a testnet runs: a client's route needs its gateway,
/// mixes outside the gateway's family and an exit.
pub const MIN_TESTNET_NODES: usize = 3;
/// The most: one name each from a fixed list, and every node is a process
/// of its own on a 2-core laptop.
pub const MAX_TESTNET_NODES: usize = 9;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TestnetArgs {
    /// How many pluto2 nodes to start.
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u8).range(MIN_TESTNET_NODES as i64..=MAX_TESTNET_NODES as i64))]
    pub nodes: u8,
    /// Where the testnet keeps everything: node data, logs, nodes.json, the sink.
    #[arg(long, default_value = "pluto2-testnet", value_name = "DIR")]
    pub dir: PathBuf,
    /// Links over a private Tor network on 127.0.0.1 (Debian's `tor`) instead
    /// of the testnet's own SOCKS5 server.
    #[arg(long)]
    pub tor: bool,
    /// Fault injection beside a running testnet.
    #[command(subcommand)]
    pub op: Option<TestnetOp>,
}

/// Faults on purpose, beside a running testnet.
#[derive(Debug, Subcommand)]
pub enum TestnetOp {
    /// Kill a node at once (SIGKILL), as a crash or a power cut would.
    Kill(TestnetNode),
    /// Start a killed node again on its data directory.
    Start(TestnetNode),
}

#[derive(Debug, Args)]
pub struct TestnetNode {
    /// The node's short name, as `pluto2 testnet` printed it (or `client`).
    #[arg(value_name = "NODE")]
    pub name: String,
    /// The running testnet's directory.
    #[arg(long, default_value = "pluto2-testnet", value_name = "DIR")]
    pub dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use crate::config::testing::args;
    use crate::config::{Command, parse};

    use super::*;

    #[test]
    fn it_parses_testnet_and_its_faults() {
        let cli = parse(args(&["testnet", "-nodes", "3", "-dir", "/t", "-tor"])).unwrap();
        match cli.command {
            Some(Command::Testnet(a)) => {
                assert_eq!((a.nodes, a.dir, a.tor), (3, PathBuf::from("/t"), true));
                assert!(a.op.is_none());
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(args(&["testnet", "kill", "bob", "-dir", "/t"])).unwrap();
        match cli.command {
            Some(Command::Testnet(TestnetArgs {
                op: Some(TestnetOp::Kill(n)),
                ..
            })) => assert_eq!((n.name.as_str(), n.dir), ("bob", PathBuf::from("/t"))),
            other => panic!("{other:?}"),
        }
        let cli = parse(args(&["testnet"])).unwrap();
        match cli.command {
            Some(Command::Testnet(a)) => {
                assert_eq!((a.nodes, a.tor), (5, false));
                assert_eq!(a.dir, PathBuf::from("pluto2-testnet"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn it_refuses_node_counts_it_cannot_run() {
        for n in ["2", "10", "x"] {
            let e = parse(args(&["testnet", "-nodes", n])).unwrap_err();
            assert!(e.to_string().contains("nodes"), "{e}");
        }
    }
}
