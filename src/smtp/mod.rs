//! Inbound SMTP: the pure protocol state machine and the socket server.

pub mod connections;
pub mod data_decoder;
pub mod memory_budget;
pub mod proxy_header;
pub mod rate_limit;
pub mod reply;
pub mod server;
pub mod session;
