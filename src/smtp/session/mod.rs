//! The inbound SMTP state machine: bytes in, [`Step`]s out, no sockets.
//!
//! The server feeds whatever it read into [`Session::advance`] and acts on
//! the returned step: send a reply, read more, persist a message, or close.
//! Keeping I/O out of here means every protocol rule (sequence, limits,
//! smuggling defense, pipelining order) is unit-tested on plain byte slices.
//! Replies are produced strictly in command order, which is all RFC 2920
//! pipelining needs; the server decides when to flush them.

mod data;
mod ehlo;
mod mail;
mod rcpt;

use std::sync::Arc;

use smtp_proto::Request;

use super::data_decoder::DataDecoder;
use super::reply::Reply;
use crate::envelope::{EnqueueOutcome, Message};

/// Longest command line accepted. RFC 5321 §4.5.3.1.4 sets 512 octets; we
/// allow 4096 because SMTPUTF8 addresses and parameters can be longer, and
/// Postfix is similarly lenient (line_length_limit 2048).
pub const MAX_COMMAND_LINE: usize = 4096;

/// Settings the protocol rules need; built once per listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our onion name, used in the greeting and EHLO reply.
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Errors tolerated before `421` and close (Postfix: smtpd_hard_error_limit).
    pub max_errors: u32,
    /// Ask the caller (with `Step::CheckDomain`) whether a clearnet
    /// recipient domain can receive mail before accepting it.
    pub check_domains: bool,
}

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing complete in the input: flush pending replies, read more.
    NeedInput,
    /// Queue this reply (in order) and call `advance` again.
    Reply(Reply),
    /// Send this reply, flush and close the connection.
    Close(Reply),
    /// Store the message durably, then report with [`Session::enqueued`].
    Enqueue(Message),
    /// Look up whether this clearnet domain provably has no mail server,
    /// then answer with [`Session::domain_checked`].
    CheckDomain(String),
}

/// A mail transaction in progress (between MAIL and the end of DATA).
#[derive(Debug, Default)]
struct Transaction {
    sender: String,
    recipients: Vec<String>,
    smtputf8: bool,
    eight_bit: bool,
    declared_size: usize,
}

#[derive(Debug)]
enum Phase {
    Command,
    /// Swallowing an over-long command line up to its LF.
    DiscardingLine,
    Data {
        decoder: DataDecoder,
        body: Vec<u8>,
    },
    /// `Step::Enqueue` was returned; waiting for `enqueued`.
    AwaitingSpool,
    /// `Step::CheckDomain` was returned; waiting for `domain_checked`.
    AwaitingDomainCheck {
        recipient: String,
    },
    Closed,
}

pub struct Session {
    config: Arc<SessionConfig>,
    greeted: bool,
    tx: Option<Transaction>,
    phase: Phase,
    errors: u32,
}

impl Session {
    pub fn new(config: Arc<SessionConfig>) -> Self {
        Self {
            config,
            greeted: false,
            tx: None,
            phase: Phase::Command,
            errors: 0,
        }
    }

    pub fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP", self.config.hostname))
    }

    /// Reply for a client that stayed silent too long (RFC 5321 §4.5.3.2).
    pub fn timed_out(&mut self) -> Reply {
        self.phase = Phase::Closed;
        Reply::new(
            421,
            "4.4.2",
            format!("{} timeout, closing connection", self.config.hostname),
        )
    }

    /// Reply when the daemon stops while the client is mid-session.
    pub fn shutting_down(&mut self) -> Reply {
        self.phase = Phase::Closed;
        Reply::new(
            421,
            "4.3.0",
            format!("{} shutting down, try again later", self.config.hostname),
        )
    }

    /// Processes as much of `input` as forms complete units. Returns the
    /// number of bytes consumed and what to do next; unconsumed bytes must be
    /// offered again, followed by more input.
    pub fn advance(&mut self, input: &[u8]) -> (usize, Step) {
        match &mut self.phase {
            Phase::Closed | Phase::AwaitingSpool | Phase::AwaitingDomainCheck { .. } => {
                (0, Step::NeedInput)
            }
            Phase::DiscardingLine => match memchr::memchr(b'\n', input) {
                None => (input.len(), Step::NeedInput),
                Some(k) => {
                    self.phase = Phase::Command;
                    let reply = self.error(Reply::new(500, "5.5.2", "line too long"));
                    (k + 1, reply)
                }
            },
            Phase::Data { decoder, body } => {
                let (used, verdict) = decoder.feed(input, body);
                match verdict {
                    None => (used, Step::NeedInput),
                    Some(v) => {
                        let body = std::mem::take(body);
                        (used, self.data_finished(v, body))
                    }
                }
            }
            Phase::Command => match memchr::memchr(b'\n', input) {
                None if input.len() > MAX_COMMAND_LINE => {
                    self.phase = Phase::DiscardingLine;
                    (input.len(), Step::NeedInput)
                }
                None => (0, Step::NeedInput),
                Some(k) if k >= MAX_COMMAND_LINE => {
                    (k + 1, self.error(Reply::new(500, "5.5.2", "line too long")))
                }
                Some(k) => (k + 1, self.command(&input[..=k])),
            },
        }
    }

    /// Turns the spool's answer into the reply to the final dot.
    pub fn enqueued(&mut self, outcome: EnqueueOutcome) -> Step {
        debug_assert!(matches!(self.phase, Phase::AwaitingSpool));
        self.phase = Phase::Command;
        self.tx = None;
        match outcome {
            // Own cover gets the same answer: the sender cannot tell.
            EnqueueOutcome::Queued | EnqueueOutcome::OwnTraffic => {
                Step::Reply(Reply::new(250, "2.0.0", "Ok: queued"))
            }
            EnqueueOutcome::Replay => Step::Reply(Reply::new(
                554,
                "5.7.1",
                "message refused: identical message already accepted (replay protection)",
            )),
            EnqueueOutcome::Failed => Step::Reply(Reply::new(
                451,
                "4.3.0",
                "local error while storing the message, try again later",
            )),
            EnqueueOutcome::NoSpace => Step::Reply(Reply::new(
                452,
                "4.3.1",
                "insufficient system storage, try again later",
            )),
            EnqueueOutcome::ShuttingDown => Step::Close(self.shutting_down()),
        }
    }

    fn command(&mut self, line: &[u8]) -> Step {
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => return self.parse_error(e),
        };
        match request {
            Request::Ehlo { host } => self.ehlo(&host, true),
            Request::Helo { host } => self.ehlo(&host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(),
            Request::Rset => {
                self.tx = None;
                Step::Reply(Reply::new(250, "2.0.0", "Ok"))
            }
            Request::Noop { .. } => Step::Reply(Reply::new(250, "2.0.0", "Ok")),
            Request::Quit => {
                self.phase = Phase::Closed;
                Step::Close(Reply::new(221, "2.0.0", "Bye"))
            }
            Request::Help { .. } => Step::Reply(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY",
            )),
            Request::Vrfy { .. } => Step::Reply(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Expn { .. } => self.error(Reply::new(502, "5.5.1", "EXPN not available")),
            other => {
                let name = other.name();
                self.error(Reply::new(502, "5.5.1", format!("{name} not implemented")))
            }
        }
    }

    fn parse_error(&mut self, e: smtp_proto::Error) -> Step {
        use smtp_proto::Error as E;
        let reply = match e {
            E::UnknownCommand => Reply::new(500, "5.5.1", "command unrecognized"),
            E::InvalidSenderAddress => Reply::new(501, "5.1.7", "bad sender address syntax"),
            E::InvalidRecipientAddress => Reply::new(501, "5.1.3", "bad recipient address syntax"),
            E::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("syntax: {syntax}")),
            E::InvalidParameter { param } => {
                Reply::new(501, "5.5.4", format!("invalid value for parameter {param}"))
            }
            E::UnsupportedParameter { param } => Reply::new(
                555,
                "5.5.4",
                format!("parameter {} not supported", printable(&param)),
            ),
            E::ResponseTooLong => Reply::new(500, "5.5.2", "line too long"),
            E::NeedsMoreData { .. } | E::InvalidResponse { .. } => {
                Reply::new(501, "5.5.4", "syntax error")
            }
        };
        self.error(reply)
    }

    /// Counts a client error; past the limit the session is closed, so a
    /// confused or hostile client cannot keep a slot forever.
    fn error(&mut self, reply: Reply) -> Step {
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.phase = Phase::Closed;
            return Step::Close(Reply::new(
                421,
                "4.7.0",
                "too many errors, closing connection",
            ));
        }
        Step::Reply(reply)
    }

    fn bad_sequence(&mut self, text: &str) -> Step {
        self.error(Reply::new(503, "5.5.1", text))
    }
}

/// Quotes client-supplied text for a reply without letting control bytes through.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests;
