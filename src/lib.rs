//! pluto2: an SMTP relay for Tor onion services.
//!
//! Layout by layer (lower layers never import higher ones; ARCHITECTURE.md
//! holds the import table and `tests/layers.rs` enforces it):
//!
//! * values: [`address`] (mailbox, domain, v3 onion checks), [`envelope`]
//!   (the accepted message and its enqueue outcome), [`time`] (unix ms and
//!   the injectable clock), `redact` (identifying values hidden in logs).
//! * codecs, pure: `message` (header tokenizer, dot-stuffing, padding),
//!   `release` (release times), `sanitize`, `smtp::session` and its parts;
//!   [`wire`], the mixnet's formats (packets, fragments, link frames, key
//!   bundles, `nodes.json` and its signatures).
//! * storage: [`spool`], the durable SQLite queue with group commit, and
//!   its mixnet tables (`spool::custody`).
//! * transport: `smtp::server` (the listener), [`relay`] (SOCKS5, MX through
//!   Tor, the SMTP client), [`link`] (links between mixnet nodes), `listen`
//!   (the one accept loop and its backoff, for every listener).
//! * node policy: `node` (intake, egress, dispatch, mail cover), `stats`,
//!   and [`mixnet`] (forwarder, hop, sender, packet cover, keys, health).
//! * edges: [`config`], [`daemon`], [`logging`], [`pki_cli`] (`pluto2 pki`),
//!   [`check`] (`pluto2 check`), `admin` (the metrics and health endpoint,
//!   HTTP through hyper), [`testnet`] (`pluto2 testnet`: a local network,
//!   over a private Tor network with `-tor`).
//!
//! See ARCHITECTURE.md for the data flow and the invariants.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod address;
pub(crate) mod admin;
pub mod check;
pub mod config;
pub mod daemon;
pub mod envelope;
pub mod link;
pub(crate) mod listen;
pub mod logging;
pub mod loop_day;
pub(crate) mod message;
pub mod mixnet;
pub(crate) mod node;
pub mod pki_cli;
pub(crate) mod redact;
pub mod relay;
pub(crate) mod release;
pub(crate) mod sanitize;
pub(crate) mod smtp;
pub mod spool;
pub(crate) mod stats;
pub mod testnet;
pub mod time;
pub mod wire;

#[cfg(test)]
mod testkit;

/// The boxed future returned by the small traits through which a lower
/// layer calls a higher one (object safe, `Send`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
