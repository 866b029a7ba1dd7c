//! Mixnet node policy (`-sphinx`): what a node does with packets between
//! its links and its spool. The wire formats are `wire`, the links are
//! `link`, the tables are `spool::custody`; this folder decides.
//!
//! * [`context`]: the directory in force and what every part shares.
//! * [`keys`]: this node's identity and its mix keys per epoch.
//! * [`peers`]: peers' signed key bundles, and nodes caught with two faces.
//! * [`health`]: which peers are usable (links up, loops back).
//! * [`path`]: routes (uniform, one node per family) and per-hop delays.
//! * [`forwarder`]: the outbound custody side of links.
//! * [`hop`]: the inbound side: replay tag, unwrap, custody, and at the
//!   exit the fragments and the completed message.
//! * [`sender`]: the entry: messages cut into packets and launched.
//! * [`packet_cover`]: loop and drop packets at the network's rates.
//!
//! None of these open sockets or speak SQL: they call the link through
//! its traits and the spool through its methods.

pub mod client;
pub mod context;
pub mod forwarder;
pub mod health;
pub mod hop;
pub mod keys;
pub mod packet_cover;
pub mod path;
pub mod peers;
pub mod sender;
