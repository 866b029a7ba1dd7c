//! Inbound SMTP: the pure protocol state machine and the socket server.

pub mod data_decoder;
pub mod proxy_header;
pub mod rate_limit;
pub mod reply;
pub mod server;
pub mod session;
