//! Outbound SMTP client over any byte stream (in production: a TCP tunnel
//! through Tor's SOCKS proxy).
//!
//! One transaction per (message, destination): MAIL, every RCPT, DATA,
//! pipelined when the server offers PIPELINING. Results are per recipient,
//! so a 550 for one address does not hold back the others. STARTTLS is
//! opportunistic (Postfix's `may` level) unless certificate checks are asked
//! for. Failure reasons carry reply codes, never server text (which may echo
//! addresses) and never our addresses.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::failure::Failure;

/// A reply line longer than this, or a reply with more lines, is treated as
/// a broken server: a hostile next hop must not make us buffer without bound.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 100;

/// How long we wait for the reply to QUIT. The outcome is decided before
/// QUIT; a server that never answers it must not turn a delivered message
/// into a retry (and so a duplicate).
const QUIT_WAIT: Duration = Duration::from_secs(5);

/// Where the system's CA bundle lives on Debian (package ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never use TLS (onion destinations: the circuit is already encrypted
    /// and authenticated by the onion address).
    Off,
    /// Use STARTTLS when offered; with `verify` the certificate must chain
    /// to the system CA bundle and match the host name.
    Opportunistic { verify: bool },
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub helo_name: String,
    pub tls: TlsPolicy,
    /// Bound on the whole delivery, greeting to QUIT.
    pub timeout: Duration,
}

/// One message for one destination.
pub struct Outgoing<'a> {
    /// Host we are connected to (SNI and certificate name).
    pub server_name: &'a str,
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// CRLF lines, not dot-stuffed.
    pub body: &'a [u8],
    pub smtputf8: bool,
    pub eight_bit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    Delivered,
    Failed(Failure),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A reply: code, enhanced status if any, and the capability words of an
/// EHLO reply (upper-cased first word of each line).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    status: Option<String>,
    lines: Vec<String>,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }

    /// Short description for logs: "550 5.1.1".
    fn brief(&self) -> String {
        match &self.status {
            Some(s) => format!("{} {s}", self.code),
            None => self.code.to_string(),
        }
    }

    fn failure(&self, stage: &str) -> Failure {
        let reason = format!("{stage} refused: {}", self.brief());
        if self.class() == 5 {
            Failure::permanent(reason)
        } else {
            Failure::temporary(reason)
        }
    }

    fn has_extension(&self, name: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split_ascii_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(name))
        })
    }
}

struct Connection {
    io: BufReader<Box<dyn Io>>,
}

impl Connection {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let w = self.io.get_mut();
        w.write_all(bytes).await.map_err(io_failure)?;
        w.flush().await.map_err(io_failure)
    }

    async fn reply(&mut self) -> Result<Reply, Failure> {
        let mut lines = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut self.io)
                .take(MAX_REPLY_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await
                .map_err(io_failure)?;
            if n == 0 {
                return Err(Failure::temporary("connection closed by the server"));
            }
            if n > MAX_REPLY_LINE || lines.len() >= MAX_REPLY_LINES {
                return Err(Failure::temporary("server reply too long"));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let code = text
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| Failure::temporary("malformed server reply"))?;
            let more = text.as_bytes().get(3) == Some(&b'-');
            lines.push(text.get(4..).unwrap_or("").to_string());
            if !more {
                let status = lines[0]
                    .split_ascii_whitespace()
                    .next()
                    .filter(|w| is_enhanced_status(w))
                    .map(str::to_string);
                return Ok(Reply {
                    code,
                    status,
                    lines,
                });
            }
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, Failure> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }
}

fn io_failure(e: std::io::Error) -> Failure {
    Failure::temporary(format!("connection error: {}", e.kind()))
}

fn is_enhanced_status(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Delivers `msg` over `stream`. `Err` means the failure applies to every
/// recipient (nothing was accepted).
pub async fn deliver<S>(
    stream: S,
    config: &ClientConfig,
    msg: &Outgoing<'_>,
) -> Result<Vec<RecipientResult>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut decided = None;
    let attempt = transaction(Box::new(stream), config, msg, &mut decided);
    match tokio::time::timeout(config.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => decided.unwrap_or_else(|| Err(Failure::temporary("delivery timed out"))),
    }
}

type Outcome = Result<Vec<RecipientResult>, Failure>;

/// Records the outcome, then says QUIT (bounded). If the overall timeout
/// strikes during QUIT, `deliver` still returns the recorded outcome.
async fn finish(conn: &mut Connection, outcome: Outcome, decided: &mut Option<Outcome>) -> Outcome {
    *decided = Some(outcome.clone());
    let _ = tokio::time::timeout(QUIT_WAIT, conn.command("QUIT")).await;
    outcome
}

async fn transaction(
    stream: Box<dyn Io>,
    config: &ClientConfig,
    msg: &Outgoing<'_>,
    decided: &mut Option<Outcome>,
) -> Outcome {
    let mut conn = Connection {
        io: BufReader::new(stream),
    };
    let greeting = conn.reply().await?;
    if greeting.class() != 2 {
        return Err(greeting.failure("greeting"));
    }
    let mut ehlo = hello(&mut conn, &config.helo_name).await?;

    if let TlsPolicy::Opportunistic { verify } = config.tls
        && ehlo.has_extension("STARTTLS")
    {
        let reply = conn.command("STARTTLS").await?;
        if reply.class() != 2 {
            // Even a 5xx here says nothing about the mail itself: try again
            // later rather than drop it.
            return Err(Failure::temporary(format!(
                "STARTTLS refused: {}",
                reply.brief()
            )));
        }
        // Anything buffered past the 220 was sent before encryption and
        // could be injected (CVE-2011-0411 class): refuse to go on.
        if !conn.io.buffer().is_empty() {
            return Err(Failure::temporary(
                "server sent data before the TLS handshake",
            ));
        }
        let plain = conn.io.into_inner();
        let tls = upgrade(plain, msg.server_name, verify).await?;
        conn = Connection {
            io: BufReader::new(tls),
        };
        ehlo = hello(&mut conn, &config.helo_name).await?;
    }

    if msg.smtputf8 && !ehlo.has_extension("SMTPUTF8") {
        return finish(
            &mut conn,
            Err(Failure::permanent(
                "next hop does not support SMTPUTF8 (RFC 6531)",
            )),
            decided,
        )
        .await;
    }

    let mut mail = format!("MAIL FROM:<{}>", msg.sender);
    if ehlo.has_extension("SIZE") {
        mail.push_str(&format!(" SIZE={}", msg.body.len()));
    }
    if msg.eight_bit && ehlo.has_extension("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
    }
    if msg.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }

    let pipelining = ehlo.has_extension("PIPELINING");
    let mut results: Vec<Option<RecipientResult>> = vec![None; msg.recipients.len()];
    let data_reply;
    if pipelining {
        let mut batch = format!("{mail}\r\n");
        for r in msg.recipients {
            batch.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        batch.push_str("DATA\r\n");
        conn.send(batch.as_bytes()).await?;
        let mail_reply = conn.reply().await?;
        for slot in results.iter_mut() {
            let r = conn.reply().await?;
            *slot = rcpt_result(&r);
        }
        data_reply = conn.reply().await?;
        if mail_reply.class() != 2 {
            if data_reply.code == 354 {
                // A broken server said go ahead anyway: end it empty.
                let _ = conn.send(b".\r\n").await;
                let _ = conn.reply().await;
            }
            return finish(&mut conn, Err(mail_reply.failure("MAIL")), decided).await;
        }
    } else {
        let mail_reply = conn.command(&mail).await?;
        if mail_reply.class() != 2 {
            return finish(&mut conn, Err(mail_reply.failure("MAIL")), decided).await;
        }
        for (slot, r) in results.iter_mut().zip(msg.recipients) {
            let reply = conn.command(&format!("RCPT TO:<{r}>")).await?;
            *slot = rcpt_result(&reply);
        }
        if results.iter().all(|r| r.is_some()) {
            return finish(
                &mut conn,
                Ok(results.into_iter().flatten().collect()),
                decided,
            )
            .await;
        }
        data_reply = conn.command("DATA").await?;
    }

    let accepted = results.iter().filter(|r| r.is_none()).count();
    if accepted == 0 {
        if data_reply.code == 354 {
            let _ = conn.send(b".\r\n").await;
            let _ = conn.reply().await;
        }
        return finish(
            &mut conn,
            Ok(results.into_iter().flatten().collect()),
            decided,
        )
        .await;
    }
    if data_reply.code != 354 {
        return finish(&mut conn, Err(data_reply.failure("DATA")), decided).await;
    }
    conn.send(&dot_stuff(msg.body)).await?;
    let final_reply = conn.reply().await?;
    let outcome = if final_reply.class() == 2 {
        RecipientResult::Delivered
    } else {
        RecipientResult::Failed(final_reply.failure("message"))
    };
    let delivered = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| outcome.clone()))
        .collect();
    finish(&mut conn, Ok(delivered), decided).await
}

/// `None` = accepted so far (the DATA result decides).
fn rcpt_result(reply: &Reply) -> Option<RecipientResult> {
    if reply.class() == 2 {
        None
    } else {
        Some(RecipientResult::Failed(reply.failure("RCPT")))
    }
}

/// EHLO, falling back to HELO for servers that do not know it.
async fn hello(conn: &mut Connection, name: &str) -> Result<Reply, Failure> {
    let reply = conn.command(&format!("EHLO {name}")).await?;
    if reply.class() == 2 {
        return Ok(reply);
    }
    if reply.class() == 5 {
        let helo = conn.command(&format!("HELO {name}")).await?;
        if helo.class() == 2 {
            return Ok(helo);
        }
        return Err(helo.failure("HELO"));
    }
    Err(reply.failure("EHLO"))
}

use crate::message::dot::stuff as dot_stuff;

async fn upgrade(plain: Box<dyn Io>, host: &str, verify: bool) -> Result<Box<dyn Io>, Failure> {
    let provider = Arc::new(ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::temporary(format!("TLS setup failed: {e}")))?;
    let tls_config = if verify {
        builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| Failure::permanent("host name not usable for TLS"))?;
    let stream = TlsConnector::from(Arc::new(tls_config))
        .connect(name, plain)
        .await
        .map_err(|e| Failure::temporary(format!("TLS handshake failed: {}", e.kind())))?;
    Ok(Box::new(stream))
}

fn system_roots() -> Result<RootCertStore, Failure> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(SYSTEM_CA_BUNDLE)
        .map_err(|e| Failure::temporary(format!("cannot read {SYSTEM_CA_BUNDLE}: {e}")))?;
    for cert in certs.flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(Failure::temporary(format!(
            "no CA certificates in {SYSTEM_CA_BUNDLE}"
        )));
    }
    Ok(roots)
}

/// Opportunistic TLS: encrypt against passive observers without trusting
/// the certificate (most MX certificates would not verify anyway). The
/// handshake signatures are still checked, so the peer must hold the key of
/// the certificate it presents.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_dot_stuffs_and_terminates() {
        assert_eq!(
            dot_stuff(b"a\r\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    #[test]
    fn it_classifies_replies_without_their_text() {
        let r = Reply {
            code: 550,
            status: Some("5.1.1".into()),
            lines: vec!["5.1.1 <secret@example.org> unknown".into()],
        };
        let f = r.failure("RCPT");
        assert!(f.is_permanent());
        assert_eq!(f.reason, "RCPT refused: 550 5.1.1");
        let r = Reply {
            code: 451,
            status: None,
            lines: vec!["try later".into()],
        };
        assert!(!r.failure("DATA").is_permanent());
    }

    #[test]
    fn it_recognizes_enhanced_status_codes() {
        assert!(is_enhanced_status("2.0.0"));
        assert!(is_enhanced_status("5.7.123"));
        assert!(!is_enhanced_status("3.0.0"));
        assert!(!is_enhanced_status("5.1"));
        assert!(!is_enhanced_status("Ok"));
    }
}
