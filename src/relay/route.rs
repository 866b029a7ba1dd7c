//! One delivery attempt: find the hosts for a domain, dial through Tor,
//! run the SMTP client, and turn the result into per-recipient outcomes.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tracing::{debug, info};

use super::client::{self, ClientConfig, OutgoingMail, RecipientResult, TlsPolicy};
use super::failure::{DnsProblem, Failure, FailureKind};
use super::mx_lookup::{MxAnswer, MxResolver};
use super::socks::SocksDialer;
use crate::redact::Sensitive;
use crate::spool::Lease;

/// What a delivery needs besides the lease itself.
pub struct Router {
    pub dialer: SocksDialer,
    pub mx: Arc<MxResolver>,
    pub client: ClientConfig,
    /// `Some(addr)` replaces the client's MAIL FROM (sanitize on).
    pub envelope_from: Option<String>,
    /// Port of every next hop (25; other values only in tests).
    pub port: u16,
    /// When STARTTLS is refused or its handshake fails, try the same host
    /// again on a new connection without TLS, as Postfix's opportunistic
    /// level does (off with -tls-verify: a certificate that must verify
    /// cannot be skipped).
    pub tls_fallback: bool,
    /// Turns the stored message into the bytes sent after DATA (node
    /// policy: sanitizing and padding).
    pub body: Arc<dyn OutgoingBody>,
}

/// The seam to node policy for the bytes after DATA (defined with the
/// client, which calls it once the next hop's SIZE is known).
pub use super::client::OutgoingBody;

/// Outcome per recipient, in lease order.
pub type Results = Vec<RecipientResult>;

impl Router {
    /// Attempts delivery of every recipient in the lease. `sent_message`
    /// is set once a message went out after DATA (see
    /// [`client::deliver_watched`]).
    pub async fn deliver(&self, lease: &Lease, sent_message: &AtomicBool) -> Results {
        let all = |f: Failure| vec![RecipientResult::Failed(f); lease.recipients.len()];
        let onion = lease.domain.ends_with(".onion");
        let hosts = if onion {
            vec![lease.domain.clone()]
        } else {
            match self.mx.lookup(&lease.domain).await {
                Ok(MxAnswer::Hosts(hosts)) => hosts,
                Ok(MxAnswer::NullMx) => {
                    return all(Failure::permanent(FailureKind::Dns(DnsProblem::NullMx)));
                }
                Ok(MxAnswer::NoSuchDomain) => {
                    return all(Failure::permanent(FailureKind::Dns(
                        DnsProblem::NoSuchDomain,
                    )));
                }
                Err(f) => return all(f),
            }
        };
        let mut config = self.client.clone();
        if onion {
            // The onion circuit is already end-to-end encrypted and
            // authenticated by the onion address itself.
            config.tls = TlsPolicy::Off;
        }
        let recipients: Vec<String> = lease.recipients.iter().map(|r| r.address.clone()).collect();
        let sender = self.envelope_from.as_deref().unwrap_or(&lease.sender);
        let mut last = Failure::temporary(FailureKind::NoHost);
        for (i, host) in hosts.iter().enumerate() {
            let stream = match self.dialer.connect(host, self.port).await {
                Ok(s) => s,
                Err(e) => {
                    let f = e.into_failure();
                    info!(
                        "[RELAY] connection through Tor failed ({}): {}",
                        kind(onion),
                        f
                    );
                    debug!("[RELAY] host {} (MX #{i}) unreachable", Sensitive(host));
                    last = f;
                    // RFC 5321 §5.1: on connection failure try the next MX.
                    continue;
                }
            };
            let outgoing = OutgoingMail {
                server_name: host,
                sender,
                recipients: &recipients,
                original: &lease.body,
                body: self.body.as_ref(),
                message_key: lease.mix_id,
                smtputf8: lease.smtputf8,
                eight_bit: lease.eight_bit,
            };
            let failure =
                match client::deliver_watched(stream, &config, &outgoing, sent_message).await {
                    Ok(results) => return results,
                    Err(f) => f,
                };
            let tls_on = matches!(config.tls, TlsPolicy::Opportunistic(_));
            if !(tls_on && self.tls_fallback && failure.is_tls_negotiation()) {
                // node::dispatch logs the outcome of every recipient.
                return all(failure);
            }
            // A refused or broken STARTTLS says nothing about the mail:
            // deferring it would only drop it after -retries attempts.
            info!(
                "[RELAY] {failure} ({}); trying again without TLS on a new connection",
                kind(onion)
            );
            let stream = match self.dialer.connect(host, self.port).await {
                Ok(s) => s,
                Err(e) => return all(e.into_failure()),
            };
            let plain = ClientConfig {
                tls: TlsPolicy::Off,
                ..config.clone()
            };
            return match client::deliver_watched(stream, &plain, &outgoing, sent_message).await {
                Ok(results) => results,
                Err(f) => all(f),
            };
        }
        all(last)
    }
}

fn kind(onion: bool) -> &'static str {
    if onion { "onion" } else { "clearnet" }
}
