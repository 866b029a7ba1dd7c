//! The Relay group: outbound delivery through Tor (the SOCKS proxy, DNS,
//! workers, retries and timeouts, the envelope sender, TLS, the
//! `-dest-block` file). The envelope sender's default depends on the
//! Sanitize group, so it is left open here and set in
//! `apply_cross_group_rules`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{ConfigError, at_least_a_second, bad, parse_duration};

/// Outbound delivery through Tor to the next hop.
#[derive(Debug, Args)]
#[command(next_help_heading = "Relay")]
pub struct RelayArgs {
    /// Tor SOCKS5 proxy; every outgoing connection goes through it.
    #[arg(long, default_value = "127.0.0.1:9050", value_name = "IP:PORT")]
    pub tor_socks: SocketAddr,
    /// DNS resolver queried for MX over TCP, through Tor.
    #[arg(long, default_value = "9.9.9.9:53", value_name = "IP:53")]
    pub dns_server: SocketAddr,
    /// Concurrent relay workers.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub workers: usize,
    /// Delivery attempts per recipient before giving up (no bounce is sent).
    #[arg(long, default_value_t = 9, value_name = "N")]
    pub retries: u32,
    /// First retry delay; each further retry doubles it (with jitter).
    #[arg(long, default_value = "1m", value_parser = parse_duration, value_name = "DURATION")]
    pub retry_base: Duration,
    /// Bound on one SMTP delivery.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub delivery_timeout: Duration,
    /// Envelope sender for relayed mail (default nobody@<-name>; `<>` for the null sender).
    #[arg(long, value_name = "ADDRESS")]
    pub envelope_from: Option<String>,
    /// Require a valid certificate for STARTTLS to clearnet hosts.
    #[arg(long)]
    pub tls_verify: bool,
    /// Port of the next hop's SMTP server (25 everywhere; change only for tests).
    #[arg(long, default_value_t = 25, value_name = "PORT")]
    pub smtp_port: u16,
    /// Destinations that asked not to receive anonymous mail: addresses, domains, newsgroups (reloaded on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub dest_block: Option<PathBuf>,
}

/// Settings of outbound delivery.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub tor_socks: SocketAddr,
    pub dns_server: SocketAddr,
    pub workers: usize,
    pub retries: u32,
    pub retry_base: Duration,
    pub delivery_timeout: Duration,
    /// `None`: pass the client's MAIL FROM on (only with -sanitize=false
    /// and no -envelope-from). `Some("")` is the null sender.
    pub envelope_from: Option<String>,
    pub tls_verify: bool,
    pub smtp_port: u16,
    /// The `-dest-block` file, read (and reread on SIGHUP) by the daemon.
    pub dest_block: Option<PathBuf>,
}

impl RelayArgs {
    /// Leaves `envelope_from` as given (`None` when absent); its default
    /// comes from `apply_cross_group_rules`.
    pub(super) fn validate(self) -> Result<RelayConfig, ConfigError> {
        if self.workers == 0 {
            return Err(bad("-workers", "0", "must be at least 1"));
        }
        if self.retries == 0 {
            return Err(bad(
                "-retries",
                "0",
                "must be at least 1 (the first attempt counts)",
            ));
        }
        at_least_a_second("-delivery-timeout", self.delivery_timeout)?;
        at_least_a_second("-retry-base", self.retry_base)?;
        let envelope_from = match self.envelope_from.as_deref() {
            None => None,
            Some("<>") | Some("") => Some(String::new()),
            Some(addr) => {
                let addr = addr.trim_start_matches('<').trim_end_matches('>');
                crate::address::parse_mailbox(addr, false).map_err(|e| {
                    bad(
                        "-envelope-from",
                        addr,
                        &format!("{e}; give a full address or <>"),
                    )
                })?;
                Some(addr.to_string())
            }
        };
        Ok(RelayConfig {
            tor_socks: self.tor_socks,
            dns_server: self.dns_server,
            workers: self.workers,
            retries: self.retries,
            retry_base: self.retry_base,
            delivery_timeout: self.delivery_timeout,
            envelope_from,
            tls_verify: self.tls_verify,
            smtp_port: self.smtp_port,
            dest_block: self.dest_block,
        })
    }
}
