//! Outbound delivery: every byte leaves through the Tor SOCKS5 proxy.

pub mod failure;
pub mod socks;
pub mod mx;
pub mod smtp_client;
