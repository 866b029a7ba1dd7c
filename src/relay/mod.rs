//! Outbound delivery: every byte leaves through the Tor SOCKS5 proxy.

pub mod client;
pub mod failure;
pub mod mx_lookup;
pub(crate) mod route;
pub mod socks;
