//! The Sphinx mixnet (`-sphinx`): pure codecs for now.
//!
//! * [`packet`]: fixed-size Sphinx packets (8,540 bytes on every link), hop
//!   processing with its replay tag, single-use reply blocks.
//! * [`fragment`]: the plaintext inside a packet (one fragment of a message,
//!   or an acknowledgement) and the message blob it is cut from.
//! * [`frame`]: link frames between two nodes (hello, packet, ack, ping).
//!
//! None of these touch sockets, SQL or clocks; the transport (`link`) and the
//! node policy (sender, hop, exit) come on top of them.

pub mod bundle;
pub mod cover;
pub mod fragment;
pub mod frame;
pub mod hop;
pub mod keys;
pub mod link;
pub mod node;
pub mod packet;
pub mod peers;
pub mod pki;
pub mod pki_sig;
pub mod sender;
