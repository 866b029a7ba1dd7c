//! The mixnet's wire formats: every byte that crosses between nodes or
//! is signed for them, as pure codecs.
//!
//! * [`packet`]: fixed-size Sphinx packets (8,540 bytes on every link), hop
//!   processing with its replay tag, single-use reply blocks.
//! * [`fragment`]: the plaintext inside a packet (one fragment of a message,
//!   or an acknowledgement) and the message blob it is cut from.
//! * [`frame`]: link frames between two nodes (hello, packet, ack, ping,
//!   keys).
//! * [`hello`]: what each side of a link signs to prove who it is, and the
//!   check of it.
//! * [`bundle`]: a node's mix public keys, signed by its identity.
//! * [`pki`]: `nodes.json` from bytes to a directory.
//! * [`pki_sig`]: the signed directory and the decision to accept one.
//!
//! Bytes in, values out, with hard caps on every length. Nothing here
//! imports tokio, rusqlite or a socket type, or reads a clock
//! (`tests/layers.rs` checks), so each codec can be tested and fuzzed
//! alone; the transport (`link`) and the node policy (`mixnet`) sit on
//! top of them.

pub mod bundle;
pub mod fragment;
pub mod frame;
pub mod hello;
pub mod packet;
pub mod pki;
pub mod pki_sig;
