//! Outbound SMTP client over any byte stream (in production: a TCP tunnel
//! through Tor's SOCKS proxy).
//!
//! One transaction per (message, destination): MAIL, every RCPT, DATA,
//! pipelined when the server offers PIPELINING. Results are per recipient,
//! so a 550 for one address does not hold back the others. STARTTLS is
//! opportunistic (Postfix's `may` level); with `-tls-verify` the
//! certificate must also verify. Replies and EHLO capabilities are read
//! with smtp-proto's parsers; of a reply only its code and enhanced status
//! are kept, never its text (which may echo addresses), so failures can be
//! logged as they are.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::failure::{BadReply, EnhancedCode, Failure, FailureKind, Stage, TlsProblem};

/// Most bytes one reply may take on the wire, all its lines together. A
/// hostile next hop must not make us buffer without bound. smtp-proto caps
/// the text it keeps (4 KiB), but not the bytes it reads: a run of empty
/// continuation lines ("220-") keeps it asking for more. This count is the
/// bound that holds whatever the server sends.
const MAX_REPLY_BYTES: usize = 16 * 1024;

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 4096;

/// How long we wait for the reply to QUIT. The outcome is decided before
/// QUIT; a server that never answers it must not turn a delivered message
/// into a retry (and so a duplicate).
const QUIT_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum TlsPolicy {
    /// Never use TLS (onion destinations: the circuit is already encrypted
    /// and authenticated by the onion address).
    Off,
    /// Use STARTTLS when offered, with this configuration (from
    /// [`tls_config`], built once at start and shared).
    Opportunistic(Arc<rustls::ClientConfig>),
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub helo_name: String,
    pub tls: TlsPolicy,
    /// Bound on the whole delivery, greeting to QUIT.
    pub timeout: Duration,
}

/// One message for one destination.
pub struct OutgoingMail<'a> {
    /// Host we are connected to (SNI and certificate name).
    pub server_name: &'a str,
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The message as stored: CRLF lines, not dot-stuffed.
    pub original: &'a [u8],
    /// Turns `original` into the bytes sent, once the next hop's SIZE
    /// limit is known (sanitized and padded, with fresh randomness per
    /// connection, so two attempts do not carry identical bytes).
    pub body: &'a dyn OutgoingBody,
    /// For mail that left the mixnet here: its mixnet message id, from
    /// which the outgoing Message-ID is derived.
    pub message_key: Option<[u8; 16]>,
    pub smtputf8: bool,
    pub eight_bit: bool,
}

/// What the node does to a message's bytes before they leave. A trait so
/// the transport does not depend on node policy (`node::egress::Egress`
/// sanitizes and pads).
pub trait OutgoingBody: Send + Sync {
    /// Called once per connection that got as far as EHLO, with the next
    /// hop's SIZE limit if it announced one: the bytes to send after DATA,
    /// never longer than `limit`, or `None` when the message cannot fit
    /// under it at all (a permanent failure).
    /// `recipients` are the envelope recipients of this delivery (policy
    /// may treat mail differently by where it goes).
    fn prepare(
        &self,
        original: &[u8],
        recipients: &[String],
        limit: Option<usize>,
        message_key: Option<&[u8; 16]>,
    ) -> Option<Vec<u8>>;
}

/// Sends the message as it is (tests, and any caller without policy).
pub struct AsIs;

impl OutgoingBody for AsIs {
    fn prepare(
        &self,
        original: &[u8],
        _recipients: &[String],
        limit: Option<usize>,
        _message_key: Option<&[u8; 16]>,
    ) -> Option<Vec<u8>> {
        limit
            .is_none_or(|limit| original.len() <= limit)
            .then(|| original.to_vec())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    Delivered,
    Failed(Failure),
}

/// The TLS client configuration for STARTTLS. Built once at start and
/// shared by every delivery: the roots and the verifier do not change
/// while we run.
///
/// With `verify` (`-tls-verify`), the certificate must chain to a root of
/// the Mozilla CA programme (the `webpki-roots` crate: the same roots on
/// every machine, nothing read from disk) and name the MX host. Without it,
/// any certificate is taken: encryption against passive observers only.
pub fn tls_config(verify: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions");
    let mut config = if verify {
        let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    };
    // A session cache in a shared configuration would let a next hop
    // resume, and so link, connections that reached it over different
    // circuits. Every handshake starts from nothing.
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What we keep of a reply: its code and enhanced status, not its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerReply {
    code: u16,
    enhanced: Option<EnhancedCode>,
}

impl ServerReply {
    /// `None` for a code outside 200–599 (no SMTP reply we could act on).
    fn from_parsed(parsed: smtp_proto::Response<String>) -> Option<ServerReply> {
        if !(200..600).contains(&parsed.code) {
            return None;
        }
        // smtp-proto reports "no enhanced status" as 0.0.0; RFC 3463
        // classes are 2, 4 and 5 only.
        let [class, subject, detail] = parsed.esc;
        let enhanced = matches!(class, 2 | 4 | 5).then_some(EnhancedCode {
            class,
            subject,
            detail,
        });
        Some(ServerReply {
            code: parsed.code,
            enhanced,
        })
    }

    fn class(&self) -> u16 {
        self.code / 100
    }

    fn refused(&self, stage: Stage) -> FailureKind {
        FailureKind::Reply {
            stage,
            code: self.code,
            enhanced: self.enhanced,
        }
    }

    /// A refusal at `stage`: permanent for 5xx, temporary otherwise.
    fn failure(&self, stage: Stage) -> Failure {
        if self.class() == 5 {
            Failure::permanent(self.refused(stage))
        } else {
            Failure::temporary(self.refused(stage))
        }
    }
}

/// The extensions a next hop offers (smtp-proto's `EXT_*` bits) and its
/// SIZE limit (0: none announced); none after HELO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Extensions {
    bits: u32,
    size: usize,
}

impl Extensions {
    /// From the bytes of a 2xx reply to EHLO. A reply smtp-proto cannot
    /// read as an EHLO reply (a 2xx other than 250, say) offers nothing,
    /// like the old server it probably comes from.
    fn from_ehlo(raw: &[u8]) -> Extensions {
        EhloResponse::parse(&mut raw.iter())
            .map(|ehlo| Extensions {
                bits: ehlo.capabilities,
                size: ehlo.size,
            })
            .unwrap_or_default()
    }

    fn has(self, extension: u32) -> bool {
        self.bits & extension != 0
    }

    /// The largest message the next hop takes, if it said (RFC 1870:
    /// `SIZE` without a number, or `SIZE 0`, means no fixed limit).
    fn size_limit(self) -> Option<usize> {
        (self.has(EXT_SIZE) && self.size > 0).then_some(self.size)
    }
}

type Outcome = Result<Vec<RecipientResult>, Failure>;

/// How far a delivery got. It lives outside the transaction future, so
/// `deliver` can still read it when the overall timeout drops that future.
struct Progress<'w> {
    stage: Stage,
    /// Set before QUIT: from then on the outcome stands, whatever QUIT does.
    decided: Option<Outcome>,
    /// See [`deliver_watched`].
    sent_message: &'w AtomicBool,
}

struct Connection<'p, 'w> {
    io: Box<dyn Io>,
    /// Bytes read and not yet parsed: the rest of a pipelined batch of
    /// replies, or, right after the go-ahead to STARTTLS, injected ones.
    unread: Vec<u8>,
    progress: &'p mut Progress<'w>,
}

impl Connection<'_, '_> {
    fn at(&mut self, stage: Stage) {
        self.progress.stage = stage;
    }

    fn io_failure(&self, e: io::Error) -> Failure {
        Failure::temporary(FailureKind::Io {
            stage: self.progress.stage,
            kind: e.kind(),
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let sent = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        }
        .await;
        sent.map_err(|e| self.io_failure(e))
    }

    async fn reply(&mut self) -> Result<ServerReply, Failure> {
        self.reply_and_bytes().await.map(|(reply, _)| reply)
    }

    /// Reads one reply and returns it with the bytes it took on the wire.
    /// Bytes after it stay in `unread` for the next call (pipelining).
    async fn reply_and_bytes(&mut self) -> Result<(ServerReply, Vec<u8>), Failure> {
        let stage = self.progress.stage;
        let bad = |problem| Failure::temporary(FailureKind::BadReply { stage, problem });
        let mut receiver = ResponseReceiver::default();
        let mut raw = Vec::new();
        loop {
            if !self.unread.is_empty() {
                let mut rest = self.unread.iter();
                let parsed = receiver.parse(&mut rest);
                let used = self.unread.len() - rest.len();
                raw.extend_from_slice(&self.unread[..used]);
                self.unread.drain(..used);
                match parsed {
                    Ok(response) => {
                        return match ServerReply::from_parsed(response) {
                            Some(reply) => Ok((reply, raw)),
                            None => Err(bad(BadReply::Malformed)),
                        };
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(smtp_proto::Error::ResponseTooLong) => return Err(bad(BadReply::TooLong)),
                    Err(_) => return Err(bad(BadReply::Malformed)),
                }
            }
            if raw.len() > MAX_REPLY_BYTES {
                return Err(bad(BadReply::TooLong));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = self
                .io
                .read(&mut chunk)
                .await
                .map_err(|e| self.io_failure(e))?;
            if n == 0 {
                return Err(Failure::temporary(FailureKind::Io {
                    stage,
                    kind: io::ErrorKind::UnexpectedEof,
                }));
            }
            self.unread.extend_from_slice(&chunk[..n]);
        }
    }

    async fn command(&mut self, line: &str) -> Result<ServerReply, Failure> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }
}

/// Delivers `msg` over `stream`. `Err` means the failure applies to every
/// recipient (nothing was accepted).
pub async fn deliver<S>(stream: S, config: &ClientConfig, msg: &OutgoingMail<'_>) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    deliver_watched(stream, config, msg, &AtomicBool::new(false)).await
}

/// Like [`deliver`], and sets `sent_message` just before the message
/// itself goes out: from then on the next hop may accept it, and
/// abandoning the delivery would make a duplicate after a restart.
pub async fn deliver_watched<S>(
    stream: S,
    config: &ClientConfig,
    msg: &OutgoingMail<'_>,
    sent_message: &AtomicBool,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut progress = Progress {
        stage: Stage::Greeting,
        decided: None,
        sent_message,
    };
    let attempt = transaction(Box::new(stream), config, msg, &mut progress);
    match tokio::time::timeout(config.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => progress.decided.take().unwrap_or_else(|| {
            Err(Failure::temporary(FailureKind::Timeout {
                stage: progress.stage,
            }))
        }),
    }
}

/// Records the outcome, then says QUIT (bounded). If the overall timeout
/// strikes during QUIT, `deliver` still returns the recorded outcome.
async fn finish(conn: &mut Connection<'_, '_>, outcome: Outcome) -> Outcome {
    conn.progress.decided = Some(outcome.clone());
    let _ = tokio::time::timeout(QUIT_WAIT, conn.command("QUIT")).await;
    outcome
}

async fn transaction(
    stream: Box<dyn Io>,
    config: &ClientConfig,
    msg: &OutgoingMail<'_>,
    progress: &mut Progress<'_>,
) -> Outcome {
    let mut conn = Connection {
        io: stream,
        unread: Vec::new(),
        progress,
    };
    conn.at(Stage::Greeting);
    let greeting = conn.reply().await?;
    if greeting.class() != 2 {
        return Err(greeting.failure(Stage::Greeting));
    }
    let mut offered = hello(&mut conn, &config.helo_name).await?;

    if let TlsPolicy::Opportunistic(tls) = &config.tls
        && offered.has(EXT_START_TLS)
    {
        conn.at(Stage::StartTls);
        let reply = conn.command("STARTTLS").await?;
        if reply.class() != 2 {
            // Even a 5xx here says nothing about the mail itself: try again
            // later rather than drop it.
            return Err(Failure::temporary(reply.refused(Stage::StartTls)));
        }
        // Anything read past the 220 was sent before encryption and could
        // be injected (CVE-2011-0411 class): refuse to go on.
        if !conn.unread.is_empty() {
            return Err(Failure::temporary(FailureKind::Tls(
                TlsProblem::PlaintextInjection,
            )));
        }
        conn.at(Stage::TlsHandshake);
        let Connection {
            io,
            unread,
            progress,
        } = conn;
        let io = upgrade(io, tls, msg.server_name).await?;
        conn = Connection {
            io,
            unread,
            progress,
        };
        offered = hello(&mut conn, &config.helo_name).await?;
    }

    if msg.smtputf8 && !offered.has(EXT_SMTP_UTF8) {
        return finish(&mut conn, Err(Failure::permanent(FailureKind::NoSmtpUtf8))).await;
    }

    // Padding must not push the message past the next hop's limit: it
    // would be refused (552) after our client got its 250.
    let Some(body) = msg.body.prepare(
        msg.original,
        msg.recipients,
        offered.size_limit(),
        msg.message_key.as_ref(),
    ) else {
        return finish(
            &mut conn,
            Err(Failure::permanent(FailureKind::TooBig {
                stage: Stage::Mail,
            })),
        )
        .await;
    };
    let mut mail = format!("MAIL FROM:<{}>", msg.sender);
    if offered.has(EXT_SIZE) {
        mail.push_str(&format!(" SIZE={}", body.len()));
    }
    if msg.eight_bit && offered.has(EXT_8BIT_MIME) {
        mail.push_str(" BODY=8BITMIME");
    }
    if msg.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }

    let mut results: Vec<Option<RecipientResult>> = vec![None; msg.recipients.len()];
    let data_reply;
    if offered.has(EXT_PIPELINING) {
        let mut batch = format!("{mail}\r\n");
        for r in msg.recipients {
            batch.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        batch.push_str("DATA\r\n");
        conn.at(Stage::Mail);
        conn.send(batch.as_bytes()).await?;
        let mail_reply = conn.reply().await?;
        conn.at(Stage::Rcpt);
        for slot in results.iter_mut() {
            let r = conn.reply().await?;
            *slot = rcpt_result(&r);
        }
        conn.at(Stage::Data);
        data_reply = conn.reply().await?;
        if mail_reply.class() != 2 {
            if data_reply.code == 354 {
                // A broken server said go ahead anyway: end it empty.
                let _ = conn.send(b".\r\n").await;
                let _ = conn.reply().await;
            }
            return finish(&mut conn, Err(mail_reply.failure(Stage::Mail))).await;
        }
    } else {
        conn.at(Stage::Mail);
        let mail_reply = conn.command(&mail).await?;
        if mail_reply.class() != 2 {
            return finish(&mut conn, Err(mail_reply.failure(Stage::Mail))).await;
        }
        conn.at(Stage::Rcpt);
        for (slot, r) in results.iter_mut().zip(msg.recipients) {
            let reply = conn.command(&format!("RCPT TO:<{r}>")).await?;
            *slot = rcpt_result(&reply);
        }
        if results.iter().all(|r| r.is_some()) {
            return finish(&mut conn, Ok(results.into_iter().flatten().collect())).await;
        }
        conn.at(Stage::Data);
        data_reply = conn.command("DATA").await?;
    }

    let accepted = results.iter().filter(|r| r.is_none()).count();
    if accepted == 0 {
        if data_reply.code == 354 {
            let _ = conn.send(b".\r\n").await;
            let _ = conn.reply().await;
        }
        return finish(&mut conn, Ok(results.into_iter().flatten().collect())).await;
    }
    if data_reply.code != 354 {
        return finish(&mut conn, Err(data_reply.failure(Stage::Data))).await;
    }
    conn.at(Stage::Dot);
    conn.progress.sent_message.store(true, Ordering::SeqCst);
    conn.send(&dot_stuff(&body)).await?;
    let final_reply = conn.reply().await?;
    let outcome = if final_reply.class() == 2 {
        RecipientResult::Delivered
    } else {
        RecipientResult::Failed(final_reply.failure(Stage::Dot))
    };
    let delivered = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| outcome.clone()))
        .collect();
    finish(&mut conn, Ok(delivered)).await
}

/// `None` = accepted so far (the DATA result decides).
fn rcpt_result(reply: &ServerReply) -> Option<RecipientResult> {
    if reply.class() == 2 {
        None
    } else {
        Some(RecipientResult::Failed(reply.failure(Stage::Rcpt)))
    }
}

/// EHLO, falling back to HELO for servers that do not know it.
async fn hello(conn: &mut Connection<'_, '_>, name: &str) -> Result<Extensions, Failure> {
    conn.at(Stage::Ehlo);
    conn.send(format!("EHLO {name}\r\n").as_bytes()).await?;
    let (reply, raw) = conn.reply_and_bytes().await?;
    if reply.class() == 2 {
        return Ok(Extensions::from_ehlo(&raw));
    }
    if reply.class() == 5 {
        conn.at(Stage::Helo);
        let helo = conn.command(&format!("HELO {name}")).await?;
        if helo.class() == 2 {
            return Ok(Extensions::default());
        }
        return Err(helo.failure(Stage::Helo));
    }
    Err(reply.failure(Stage::Ehlo))
}

use crate::message::dot::stuff as dot_stuff;

async fn upgrade(
    plain: Box<dyn Io>,
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
) -> Result<Box<dyn Io>, Failure> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| Failure::permanent(FailureKind::UnusableHostName))?;
    let stream = TlsConnector::from(tls.clone())
        .connect(name, plain)
        .await
        .map_err(|e| Failure::temporary(handshake_failure(&e)))?;
    Ok(Box::new(stream))
}

/// tokio-rustls reports TLS errors as `InvalidData` I/O errors carrying the
/// rustls error; anything else is the connection itself failing.
fn handshake_failure(e: &io::Error) -> FailureKind {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => FailureKind::Tls(TlsProblem::Certificate),
        Some(_) => FailureKind::Tls(TlsProblem::Handshake),
        None => FailureKind::Io {
            stage: Stage::TlsHandshake,
            kind: e.kind(),
        },
    }
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

    /// Runs `check` on a connection whose server side has already sent
    /// `server` (from a task, so it may be larger than the pipe).
    async fn with_server<F, T>(server: Vec<u8>, check: F) -> T
    where
        F: AsyncFnOnce(&mut Connection<'_, '_>) -> T,
    {
        let (client, mut far) = tokio::io::duplex(READ_CHUNK);
        tokio::spawn(async move {
            let _ = far.write_all(&server).await;
            // Hold the far end open: a close would end a read early.
            let _ = far.read_to_end(&mut Vec::new()).await;
        });
        let unwatched = AtomicBool::new(false);
        let mut progress = Progress {
            stage: Stage::Greeting,
            decided: None,
            sent_message: &unwatched,
        };
        let mut conn = Connection {
            io: Box::new(client),
            unread: Vec::new(),
            progress: &mut progress,
        };
        check(&mut conn).await
    }

    fn reply(code: u16, enhanced: Option<(u8, u8, u8)>) -> ServerReply {
        ServerReply {
            code,
            enhanced: enhanced.map(|(class, subject, detail)| EnhancedCode {
                class,
                subject,
                detail,
            }),
        }
    }

    #[tokio::test]
    async fn it_reads_pipelined_replies_one_at_a_time() {
        let server =
            b"250 2.1.0 ok\r\n550-5.1.1 <secret@example.org>\r\n550 5.1.1 unknown\r\n354 go\r\n";
        let replies = with_server(server.to_vec(), async |conn| {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(conn.reply().await.unwrap());
            }
            got
        })
        .await;
        assert_eq!(
            replies,
            [
                reply(250, Some((2, 1, 0))),
                reply(550, Some((5, 1, 1))),
                reply(354, None)
            ]
        );
        let f = replies[1].failure(Stage::Rcpt);
        assert!(f.is_permanent());
        assert_eq!(f.to_string(), "permanent failure: RCPT refused: 550 5.1.1");
    }

    #[tokio::test]
    async fn it_keeps_only_enhanced_codes_of_a_mail_class() {
        let server = b"250 3.0.0 odd\r\n451 4.3.0\r\n";
        let replies = with_server(server.to_vec(), async |conn| {
            (conn.reply().await.unwrap(), conn.reply().await.unwrap())
        })
        .await;
        assert_eq!(replies, (reply(250, None), reply(451, Some((4, 3, 0)))));
        assert!(!replies.1.failure(Stage::Data).is_permanent());
    }

    #[tokio::test]
    async fn it_refuses_replies_that_are_not_smtp() {
        for server in [&b"hello there\r\n"[..], b"999 what\r\n", b"150 early\r\n"] {
            let f = with_server(server.to_vec(), async |conn| conn.reply().await).await;
            assert_eq!(
                f,
                Err(Failure::temporary(FailureKind::BadReply {
                    stage: Stage::Greeting,
                    problem: BadReply::Malformed,
                })),
                "{server:?}"
            );
        }
    }

    #[tokio::test]
    async fn it_stops_reading_a_reply_of_endless_empty_lines() {
        // smtp-proto's own cap only looks at line text, and these lines
        // have none: only our byte count stops the reading. The last line
        // (no text either) ends a reply smtp-proto accepts, so a client
        // without the count would read all 60 KB and succeed.
        let mut server = b"220-\r\n".repeat(10_000);
        server.extend_from_slice(b"220 \r\n");
        let f = with_server(server, async |conn| conn.reply().await).await;
        assert_eq!(
            f,
            Err(Failure::temporary(FailureKind::BadReply {
                stage: Stage::Greeting,
                problem: BadReply::TooLong,
            }))
        );
    }

    #[test]
    fn it_reads_extensions_from_an_ehlo_reply() {
        let offered = Extensions::from_ehlo(
            b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n",
        );
        assert!(offered.has(EXT_PIPELINING) && offered.has(EXT_SIZE) && offered.has(EXT_START_TLS));
        assert!(!offered.has(EXT_SMTP_UTF8) && !offered.has(EXT_8BIT_MIME));
        // A success that is no EHLO reply offers nothing.
        assert_eq!(Extensions::from_ehlo(b"220 odd\r\n"), Extensions::default());
    }
}
