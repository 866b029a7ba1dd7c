//! `pluto2 pki …`: the operators' side of the signed directory (sign,
//! print a public key, verify as a node would). `verify` reads its
//! `-pki-trust` and `-pki-threshold` with the daemon's own rule (in the
//! Mixnet group), so a file that verifies here is one the node accepts.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::ConfigError;
use crate::wire::pki_sig::Trust;

/// `pluto2 pki …`: the operators' side of the signed directory.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Sign nodes.json with KEYFILE (created, mode 0600, if missing): adds
    /// or replaces this key's line in nodes.json.sig and prints the public key.
    Sign(PkiSignArgs),
    /// Print the public key of KEYFILE (base64), for -pki-trust.
    Pubkey(PkiKeyArgs),
    /// Check nodes.json and its signatures as a node with these flags would.
    Verify(PkiVerifyArgs),
}

#[derive(Debug, Args)]
pub struct PkiKeyArgs {
    /// The operator's signing key: 32 secret bytes, mode 0600.
    #[arg(long, value_name = "KEYFILE")]
    pub key: PathBuf,
}

#[derive(Debug, Args)]
pub struct PkiSignArgs {
    #[command(flatten)]
    pub key: PkiKeyArgs,
    /// The nodes.json to sign (its signatures go to the same path + .sig).
    #[arg(value_name = "NODES_JSON")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct PkiVerifyArgs {
    /// Operator public keys, as a node's -pki-trust.
    #[arg(long, value_name = "KEY,KEY,...")]
    pub pki_trust: String,
    /// Signatures needed, as a node's -pki-threshold.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub pki_threshold: Option<i64>,
    /// A node's data directory: also compare the serial with the one it saved.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The nodes.json to check (its signatures: the same path + .sig).
    #[arg(value_name = "NODES_JSON")]
    pub file: PathBuf,
}

impl PkiVerifyArgs {
    /// The trust a node with the same flags would have.
    pub fn trust(&self) -> Result<Trust, ConfigError> {
        super::sphinx::trust(Some(&self.pki_trust), self.pki_threshold)
            .map(|t| t.expect("keys given"))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{args, operator_key};
    use crate::config::{Command, parse};

    use super::*;

    #[test]
    fn it_parses_the_pki_subcommands() {
        let cli = parse(args(&["pki", "sign", "-key", "/k", "nodes.json"])).unwrap();
        match cli.command {
            Some(Command::Pki(PkiCommand::Sign(a))) => {
                assert_eq!(a.key.key, PathBuf::from("/k"));
                assert_eq!(a.file, PathBuf::from("nodes.json"));
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(args(&["pki", "pubkey", "-key=/k"])).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Pki(PkiCommand::Pubkey(_)))
        ));
        let key = operator_key(1);
        let cli = parse(args(&[
            "pki",
            "verify",
            "-pki-trust",
            &key,
            "-pki-threshold",
            "1",
            "-data-dir",
            "/d",
            "n.json",
        ]))
        .unwrap();
        match cli.command {
            Some(Command::Pki(PkiCommand::Verify(v))) => {
                assert_eq!(v.trust().unwrap().threshold(), 1);
                assert_eq!(v.data_dir, Some(PathBuf::from("/d")));
                assert_eq!(v.file, PathBuf::from("n.json"));
            }
            other => panic!("{other:?}"),
        }
        // verify needs the keys; sign needs a file.
        assert!(parse(args(&["pki", "verify", "n.json"])).is_err());
        assert!(parse(args(&["pki", "sign", "-key", "/k"])).is_err());
    }
}
