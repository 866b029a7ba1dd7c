//! Outbound delivery: every byte leaves through the Tor SOCKS5 proxy.

pub mod failure;
pub mod mx;
pub mod retry;
pub mod smtp_client;
pub mod socks;
