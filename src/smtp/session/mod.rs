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
    /// Our onion name, used in the greeting and EHLO reply, and refused as
    /// a destination (mail to it would loop).
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Errors tolerated before `421` and close (Postfix: smtpd_hard_error_limit).
    pub max_errors: u32,
    /// Ask the caller (with `Step::CheckDomain`) whether a clearnet
    /// recipient domain can receive mail before accepting it.
    pub check_domains: bool,
    /// Ask the caller (with `Step::CheckRecipient`) whether node policy
    /// refuses a recipient (`-dest-block`) before accepting it.
    pub check_recipients: bool,
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
    /// Ask node policy whether this recipient (`local@domain`) is refused,
    /// then answer with [`Session::recipient_checked`].
    CheckRecipient(String),
}

/// A mail transaction in progress (between MAIL and the end of DATA).
#[derive(Debug, Default)]
struct Transaction {
    sender: String,
    recipients: Vec<String>,
    smtputf8: bool,
    eight_bit: bool,
    declared_size: usize,
    /// `cover@<own name>` was accepted at RCPT; intake refuses the message
    /// unless it is this node's verified cover.
    to_own_name: bool,
}

#[derive(Debug)]
enum Phase {
    Command,
    /// Swallowing an over-long command line up to its LF.
    DiscardingLine,
    Data {
        decoder: DataDecoder,
        body: Vec<u8>,
        /// The server's memory budget ran out: the body is dropped as it
        /// arrives and the transaction ends in 452 (see `data.rs`).
        over_budget: bool,
    },
    /// `Step::Enqueue` was returned; waiting for `enqueued`.
    AwaitingSpool,
    /// `Step::CheckDomain` was returned; waiting for `domain_checked`.
    AwaitingDomainCheck {
        recipient: String,
    },
    /// `Step::CheckRecipient` was returned; waiting for `recipient_checked`.
    AwaitingRecipientCheck {
        mailbox: crate::address::Mailbox,
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
            Phase::Closed
            | Phase::AwaitingSpool
            | Phase::AwaitingDomainCheck { .. }
            | Phase::AwaitingRecipientCheck { .. } => (0, Step::NeedInput),
            Phase::DiscardingLine => match memchr::memchr(b'\n', input) {
                None => (input.len(), Step::NeedInput),
                Some(k) => {
                    self.phase = Phase::Command;
                    let reply = self.error(Reply::new(500, "5.5.2", "line too long"));
                    (k + 1, reply)
                }
            },
            Phase::Data {
                decoder,
                body,
                over_budget,
            } => {
                let (used, verdict) = decoder.feed(input, body);
                let over_budget = *over_budget;
                if over_budget {
                    body.clear();
                }
                match verdict {
                    None => (used, Step::NeedInput),
                    Some(v) => {
                        let body = std::mem::take(body);
                        (used, self.data_finished(v, body, over_budget))
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
                // Like Postfix with smtpd_forbid_bare_newline = yes: a
                // command line ending in a bare LF is answered at once and
                // the connection closed, so an `echo ... | nc` user hears
                // why on the first line, and nothing after it is parsed.
                Some(k) if k == 0 || input[k - 1] != b'\r' => (k + 1, self.bare_lf("command")),
                // smtp-proto silently drops a CR inside a line, which would
                // turn `a<CR>b@x` into another address.
                Some(k) if memchr::memchr(b'\r', &input[..k - 1]).is_some() => (
                    k + 1,
                    self.error(Reply::new(500, "5.5.2", "bare CR in command line")),
                ),
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
            // A replay gets the very reply the first copy got: that copy is
            // queued, a client that lost its 250 must not bounce it, and a
            // refusal would tell anyone holding a copy that it passed here. Own
            // cover gets the same answer: the sender cannot tell.
            EnqueueOutcome::Queued | EnqueueOutcome::Replay | EnqueueOutcome::OwnTraffic => {
                Step::Reply(Reply::new(250, "2.0.0", "Ok: queued"))
            }
            EnqueueOutcome::Loop => Step::Reply(Reply::new(
                550,
                "5.7.1",
                "message refused: this node's own name is not a destination (it would loop); nothing was queued",
            )),
            // The same words whatever the reason (a recipient or a
            // newsgroup on the -dest-block list), so the reply does not
            // tell which destination the list holds.
            EnqueueOutcome::Blocked => Step::Reply(Reply::new(
                550,
                "5.7.1",
                "message refused by this relay's policy; nothing was queued",
            )),
            // RFC 3463 X.4.6: routing loop detected.
            EnqueueOutcome::TooManyHops => Step::Reply(Reply::new(
                554,
                "5.4.6",
                "message refused: too many hops, it is looping between relays",
            )),
            // SMTP caps recipients at RCPT, so intake never answers this
            // for a session; were it to, RFC 5321 §4.5.3.1.10's code.
            EnqueueOutcome::TooManyRecipients => Step::Reply(Reply::new(
                552,
                "5.5.3",
                "message refused: too many recipients; nothing was queued",
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

    /// The reply to a line that ends in a bare LF, in a command or in
    /// DATA: `521` (this server will not talk to such a client, RFC 7504)
    /// and close. Nothing after the LF is ever read as a command.
    fn bare_lf(&mut self, stage: &str) -> Step {
        self.phase = Phase::Closed;
        self.tx = None;
        Step::Close(Reply::new(
            521,
            "5.5.2",
            format!(
                "bare LF in {stage}: every line must end with CRLF (with netcat, use nc -C); closing"
            ),
        ))
    }

    fn command(&mut self, line: &[u8]) -> Step {
        // smtp-proto would replace invalid UTF-8 with U+FFFD and so name a
        // different mailbox; an address is refused, never rewritten. RFC
        // 6531 §3.5 gives 553 with X.6.7 for an address refused on account
        // of its characters.
        if is_address_command(line) && std::str::from_utf8(line).is_err() {
            return self.error(Reply::new(
                553,
                "5.6.7",
                "address refused: it is not valid UTF-8",
            ));
        }
        let masked = line
            .get(..4)
            .filter(|verb| verb.eq_ignore_ascii_case(b"MAIL"))
            .and_then(|_| mail::mask_sender_literal(line));
        let parsed = match &masked {
            Some((masked_line, _)) => Request::parse(&mut masked_line.iter()),
            None => Request::parse(&mut line.iter()),
        };
        let request = match parsed {
            Ok(r) => r,
            Err(e) => return self.parse_error(e, line),
        };
        match request {
            Request::Ehlo { host } => self.ehlo(&host, true),
            Request::Helo { host } => self.ehlo(&host, false),
            Request::Mail { mut from } => {
                if let Some((_, literal)) = &masked
                    && let Some((local, _)) = from.address.rsplit_once('@')
                {
                    from.address = format!("{local}@{literal}").into();
                }
                self.mail(from, line)
            }
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

    fn parse_error(&mut self, e: smtp_proto::Error, line: &[u8]) -> Step {
        use smtp_proto::Error as E;
        let reply = match e {
            // smtp-proto saturates a SIZE of 20 digits to its error value;
            // a number of only digits is a size, and this one is too big.
            E::InvalidParameter { param: "SIZE" }
                if mail::declared_size(line)
                    .is_some_and(|n| n > self.config.max_message_size as u64) =>
            {
                return Step::Reply(self.size_exceeded());
            }
            // smtp-proto refuses some literals (IPv6) before we see them;
            // they get the same reply as the literals it passes on.
            E::InvalidRecipientAddress if path_of(line).is_some_and(|p| p.contains(&b'[')) => {
                Reply::new(
                    553,
                    "5.1.3",
                    format!(
                        "recipient address rejected: {}",
                        crate::address::AddressError::AddressLiteral
                    ),
                )
            }
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

/// True for MAIL and RCPT lines, the commands that carry an address.
fn is_address_command(line: &[u8]) -> bool {
    line.get(..4).is_some_and(|verb| {
        verb.eq_ignore_ascii_case(b"MAIL") || verb.eq_ignore_ascii_case(b"RCPT")
    })
}

/// The bytes between the first `<` of a command line and the next `>`.
fn path_of(line: &[u8]) -> Option<&[u8]> {
    let open = memchr::memchr(b'<', line)?;
    let len = memchr::memchr(b'>', &line[open + 1..])?;
    Some(&line[open + 1..open + 1 + len])
}

/// Quotes client-supplied text for a reply without letting control bytes through.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests;
