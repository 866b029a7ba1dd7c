//! Delivery failures, classified the way the retry scheduler, the logs and
//! the metrics (`pluto2_delivery_failures_total{class}`) need them.
//!
//! A failure is a severity (may trying again help?) and a typed kind (what
//! went wrong, where). Kinds hold codes and stages only: never an address,
//! a host name or text from the other side, which may echo addresses. So a
//! failure can be logged without `-debug`, and [`Failure::class`] gives a
//! fixed label to count failures by.

use std::fmt;
use std::io;

/// Whether trying again later can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// 4xx replies, timeouts, connection and SOCKS trouble: retry with backoff.
    Temporary,
    /// 5xx replies, impossible destinations: drop the recipient.
    Permanent,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Temporary => "temporary",
            Severity::Permanent => "permanent",
        })
    }
}

/// A failed delivery step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{severity} failure: {kind}")]
pub struct Failure {
    pub severity: Severity,
    pub kind: FailureKind,
}

impl Failure {
    pub fn temporary(kind: FailureKind) -> Self {
        Self {
            severity: Severity::Temporary,
            kind,
        }
    }

    pub fn permanent(kind: FailureKind) -> Self {
        Self {
            severity: Severity::Permanent,
            kind,
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.severity == Severity::Permanent
    }

    /// True if TLS negotiation failed: STARTTLS refused or unanswered, or
    /// the handshake after it broke. Such a failure says nothing about the
    /// mail, and opportunistic TLS may go on without encryption.
    pub fn is_tls_negotiation(&self) -> bool {
        match &self.kind {
            FailureKind::Reply { stage, .. }
            | FailureKind::BadReply { stage, .. }
            | FailureKind::Io { stage, .. }
            | FailureKind::Timeout { stage } => {
                matches!(stage, Stage::StartTls | Stage::TlsHandshake)
            }
            FailureKind::Tls(TlsProblem::Handshake | TlsProblem::PlaintextInjection) => true,
            _ => false,
        }
    }

    /// A short fixed name for the kind of failure, fit for a metric label.
    pub fn class(&self) -> &'static str {
        self.kind.class()
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The SOCKS proxy answered CONNECT with this reply code (RFC 1928, and
    /// Tor's 0xF0–0xF7 for onion services).
    SocksReply {
        code: u8,
    },
    /// The SOCKS proxy itself could not be used.
    Proxy(ProxyProblem),
    /// The next hop refused at `stage`.
    Reply {
        stage: Stage,
        code: u16,
        enhanced: Option<EnhancedCode>,
    },
    /// The next hop's reply at `stage` was not a usable SMTP reply.
    BadReply {
        stage: Stage,
        problem: BadReply,
    },
    /// The connection broke at `stage`; `UnexpectedEof` means the other
    /// side closed it.
    Io {
        stage: Stage,
        kind: io::ErrorKind,
    },
    /// A time bound ran out at `stage`.
    Timeout {
        stage: Stage,
    },
    Tls(TlsProblem),
    Dns(DnsProblem),
    /// There was no host to try.
    NoHost,
    /// The host name cannot be used: longer than SOCKS allows, or not a
    /// name a TLS certificate could carry.
    UnusableHostName,
    /// The message needs SMTPUTF8 and the next hop does not offer it.
    NoSmtpUtf8,
    /// The message is larger than the SIZE the next hop announced, even
    /// without padding; found before `stage` (MAIL), so nothing was sent.
    TooBig {
        stage: Stage,
    },
    /// The whole delivery (MX lookup and every host) ran past the bound
    /// the dispatcher keeps below the lease.
    Deadline,
}

impl FailureKind {
    /// See [`Failure::class`].
    pub fn class(&self) -> &'static str {
        match self {
            FailureKind::SocksReply { .. } => "socks_reply",
            FailureKind::Proxy(_) => "proxy",
            FailureKind::Reply { .. } => "smtp_reply",
            FailureKind::BadReply { .. } => "bad_reply",
            FailureKind::Io { .. } => "io",
            FailureKind::Timeout { .. } => "timeout",
            FailureKind::Tls(_) => "tls",
            FailureKind::Dns(DnsProblem::NoSuchDomain) => "no_such_domain",
            FailureKind::Dns(DnsProblem::NullMx) => "null_mx",
            FailureKind::Dns(_) => "dns",
            FailureKind::NoHost => "no_host",
            FailureKind::UnusableHostName => "host_name",
            FailureKind::NoSmtpUtf8 => "no_smtputf8",
            FailureKind::TooBig { .. } => "too_big",
            FailureKind::Deadline => "deadline",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::SocksReply { code } => {
                write!(f, "SOCKS reply {code:#04x}: {}", socks_reply_meaning(*code))
            }
            FailureKind::Proxy(p) => write!(f, "{p}"),
            FailureKind::Reply {
                stage,
                code,
                enhanced: Some(e),
            } => write!(f, "{stage} refused: {code} {e}"),
            FailureKind::Reply {
                stage,
                code,
                enhanced: None,
            } => write!(f, "{stage} refused: {code}"),
            FailureKind::BadReply { stage, problem } => write!(f, "{problem} ({stage})"),
            FailureKind::Io {
                stage,
                kind: io::ErrorKind::UnexpectedEof,
            } => write!(f, "connection closed by the server ({stage})"),
            FailureKind::Io { stage, kind } => write!(f, "connection error ({stage}): {kind}"),
            FailureKind::Timeout { stage } => write!(f, "timed out ({stage})"),
            FailureKind::Tls(t) => write!(f, "{t}"),
            FailureKind::Dns(d) => write!(f, "{d}"),
            FailureKind::NoHost => f.write_str("no mail host to try"),
            FailureKind::UnusableHostName => f.write_str("host name not usable"),
            FailureKind::NoSmtpUtf8 => f.write_str("next hop does not support SMTPUTF8 (RFC 6531)"),
            FailureKind::Deadline => f.write_str("delivery ran out of time before its lease"),
            FailureKind::TooBig { stage } => write!(
                f,
                "message larger than the next hop's EHLO SIZE limit ({stage})"
            ),
        }
    }
}

/// Where in a delivery something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Looking up the domain's mail hosts.
    Mx,
    /// Opening the tunnel through the SOCKS proxy.
    Connect,
    Greeting,
    Ehlo,
    /// The fallback for servers that do not know EHLO.
    Helo,
    StartTls,
    /// The TLS handshake after the go-ahead to STARTTLS.
    TlsHandshake,
    Mail,
    Rcpt,
    Data,
    /// The message itself: the reply to the final dot.
    Dot,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Mx => "MX lookup",
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Helo => "HELO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::Dot => "message",
        })
    }
}

/// An RFC 3463 enhanced status code, such as 5.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u8,
    pub detail: u8,
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Why a reply could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadReply {
    /// Longer than we are willing to buffer: a hostile next hop must not
    /// make us hold megabytes.
    TooLong,
    /// Not `ddd text`, or a code outside 200–599.
    Malformed,
}

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadReply::TooLong => "server reply too long",
            BadReply::Malformed => "malformed server reply",
        })
    }
}

/// Trouble with the SOCKS proxy rather than with the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProblem {
    /// The TCP connection to the proxy failed.
    Unreachable(io::ErrorKind),
    /// The method choice did not start with version 5.
    NotSocks5,
    /// The proxy wants an authentication method we did not offer.
    NoAcceptableMethod,
    /// The username/password reply did not start with version 1
    /// (RFC 1929).
    BadAuthVersion,
    /// The proxy refused our (random) credentials.
    CredentialsRejected,
    /// The CONNECT reply did not start with version 5.
    BadReplyVersion,
    /// The CONNECT reply's reserved byte was not zero.
    BadReserved,
    /// The CONNECT reply's bound address has an unknown type.
    BadAddressType,
}

impl fmt::Display for ProxyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyProblem::Unreachable(kind) => {
                write!(f, "cannot reach the Tor SOCKS proxy: {kind}")
            }
            ProxyProblem::NotSocks5 => f.write_str("SOCKS protocol violation: not SOCKS5"),
            ProxyProblem::NoAcceptableMethod => f.write_str(
                "SOCKS protocol violation: proxy accepts none of our authentication methods",
            ),
            ProxyProblem::BadAuthVersion => {
                f.write_str("SOCKS protocol violation: bad authentication reply version")
            }
            ProxyProblem::CredentialsRejected => {
                f.write_str("SOCKS proxy rejected the credentials")
            }
            ProxyProblem::BadReplyVersion => {
                f.write_str("SOCKS protocol violation: bad reply version")
            }
            ProxyProblem::BadReserved => {
                f.write_str("SOCKS protocol violation: reserved byte not zero")
            }
            ProxyProblem::BadAddressType => {
                f.write_str("SOCKS protocol violation: bad address type in reply")
            }
        }
    }
}

/// Trouble with STARTTLS once the server agreed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProblem {
    /// The server sent bytes after its go-ahead and before the handshake:
    /// they travelled in the clear and may have been injected
    /// (CVE-2011-0411 class).
    PlaintextInjection,
    /// The certificate was not accepted (only checked with -tls-verify).
    Certificate,
    /// The handshake failed for another TLS reason.
    Handshake,
}

impl fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsProblem::PlaintextInjection => "server sent data before the TLS handshake",
            TlsProblem::Certificate => "TLS certificate not accepted",
            TlsProblem::Handshake => "TLS handshake failed",
        })
    }
}

/// What the MX lookup found or why it found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsProblem {
    /// NXDOMAIN.
    NoSuchDomain,
    /// RFC 7505 null MX: the domain takes no mail.
    NullMx,
    /// The name server answered with this error code (2 = SERVFAIL,
    /// 5 = REFUSED, ...).
    ServerError { rcode: u16 },
    /// The name server could not be reached through the proxy.
    Unreachable,
    /// The lookup failed for another reason (an answer we could not use).
    LookupFailed,
}

impl fmt::Display for DnsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsProblem::NoSuchDomain => f.write_str("domain does not exist"),
            DnsProblem::NullMx => f.write_str("domain accepts no mail (null MX)"),
            DnsProblem::ServerError { rcode } => {
                write!(f, "MX lookup failed: name server error {rcode}")
            }
            DnsProblem::Unreachable => f.write_str("MX lookup failed: name server unreachable"),
            DnsProblem::LookupFailed => f.write_str("MX lookup failed"),
        }
    }
}

/// Meaning of a SOCKS5 reply code, including Tor's extensions.
pub(crate) fn socks_reply_meaning(code: u8) -> &'static str {
    match code {
        0x01 => "general failure",
        0x02 => "not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired (timeout)",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        0xF0 => "onion service descriptor not found",
        0xF1 => "onion service descriptor invalid",
        0xF2 => "onion service introduction failed",
        0xF3 => "onion service rendezvous failed",
        0xF4 => "onion service missing client authorization",
        0xF5 => "onion service wrong client authorization",
        0xF6 => "invalid onion address",
        0xF7 => "onion service introduction timed out",
        _ => "unknown reply code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_shows_reply_codes_and_stage_and_nothing_else() {
        let f = Failure::permanent(FailureKind::Reply {
            stage: Stage::Rcpt,
            code: 550,
            enhanced: Some(EnhancedCode {
                class: 5,
                subject: 1,
                detail: 1,
            }),
        });
        assert_eq!(f.to_string(), "permanent failure: RCPT refused: 550 5.1.1");
        let f = Failure::temporary(FailureKind::Reply {
            stage: Stage::Dot,
            code: 451,
            enhanced: None,
        });
        assert_eq!(f.to_string(), "temporary failure: message refused: 451");
    }

    #[test]
    fn it_names_tor_onion_replies() {
        let f = Failure::permanent(FailureKind::SocksReply { code: 0xF6 });
        assert_eq!(
            f.to_string(),
            "permanent failure: SOCKS reply 0xf6: invalid onion address"
        );
    }

    #[test]
    fn it_gives_every_kind_a_short_label_of_its_own() {
        let kinds = [
            FailureKind::SocksReply { code: 1 },
            FailureKind::Proxy(ProxyProblem::BadReserved),
            FailureKind::Reply {
                stage: Stage::Mail,
                code: 451,
                enhanced: None,
            },
            FailureKind::BadReply {
                stage: Stage::Greeting,
                problem: BadReply::TooLong,
            },
            FailureKind::Io {
                stage: Stage::Data,
                kind: io::ErrorKind::BrokenPipe,
            },
            FailureKind::Timeout { stage: Stage::Mx },
            FailureKind::Tls(TlsProblem::PlaintextInjection),
            FailureKind::Dns(DnsProblem::NoSuchDomain),
            FailureKind::Dns(DnsProblem::NullMx),
            FailureKind::Dns(DnsProblem::ServerError { rcode: 2 }),
            FailureKind::NoHost,
            FailureKind::UnusableHostName,
            FailureKind::NoSmtpUtf8,
            FailureKind::TooBig { stage: Stage::Mail },
            FailureKind::Deadline,
        ];
        let mut classes = std::collections::HashSet::new();
        for kind in &kinds {
            let class = kind.class();
            assert!(
                class.len() <= 16
                    && class.starts_with(|c: char| c.is_ascii_lowercase())
                    && class
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{class:?}"
            );
            classes.insert(class);
        }
        // No two of these kinds share a class.
        assert_eq!(classes.len(), kinds.len());
    }
}
