//! pluto2: an SMTP relay for Tor onion services.
//!
//! Layout, following the mail's path through the daemon:
//!
//! * [`config`]: the command line contract and its validation.
//! * [`smtp`]: inbound SMTP. [`smtp::session`] is the pure protocol state
//!   machine; [`smtp::server`] owns the sockets, limits and timeouts.
//! * [`address`]: mailbox, domain and v3 onion name checks.
//! * [`envelope`]: the accepted message handed from SMTP to the spool.
//! * [`spool`]: the durable SQLite queue with group commit and replay cache.
//! * [`daemon`]: wiring, signals and orderly shutdown.
//! * [`logging`]: tracing setup that keeps identifying data out of logs.
//!
//! See ARCHITECTURE.md for the data flow and the invariants.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod address;
pub mod config;
pub mod daemon;
pub mod envelope;
pub mod logging;
pub(crate) mod message;
pub(crate) mod mix;
pub(crate) mod node;
pub(crate) mod redact;
pub mod relay;
pub(crate) mod sanitize;
pub(crate) mod smtp;
pub mod spool;
pub(crate) mod stats;
pub mod time;

#[cfg(test)]
mod testkit;

/// The boxed future returned by the small traits through which a lower
/// layer calls a higher one (object safe, `Send`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
