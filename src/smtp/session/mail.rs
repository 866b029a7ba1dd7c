//! MAIL FROM: open a transaction, check declared size and parameters.

use std::borrow::Cow;

use smtp_proto::{
    MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS, MAIL_RET_FULL, MAIL_RET_HDRS,
    MAIL_SMTPUTF8, MailFrom,
};

use super::{Reply, Session, Step, Transaction, path_of};
use crate::address::{AddressError, check_sender};

impl Session {
    /// RFC 1870 §6.1: a declared size over the fixed limit is a permanent
    /// refusal, not counted as a client error.
    pub(super) fn size_exceeded(&self) -> Reply {
        Reply::new(
            552,
            "5.3.4",
            format!(
                "message size exceeds fixed limit of {} bytes",
                self.config.max_message_size
            ),
        )
    }

    pub(super) fn mail(&mut self, from: MailFrom<Cow<'_, str>>, line: &[u8]) -> Step {
        if !self.greeted {
            return self.bad_sequence("send EHLO or HELO first");
        }
        if self.tx.is_some() {
            return self.bad_sequence("nested MAIL command");
        }
        // Parameters of extensions we do not advertise (DSN, AUTH, BINARYMIME,
        // REQUIRETLS, ...) must be refused rather than silently ignored.
        let unsupported = from.flags
            & (MAIL_BODY_BINARYMIME | MAIL_REQUIRETLS | MAIL_RET_FULL | MAIL_RET_HDRS)
            != 0
            || from.env_id.is_some()
            || from.auth.is_some()
            || from.trans_id.is_some()
            || from.mtrk.is_some()
            || from.solicit.is_some()
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0;
        if unsupported {
            return self.error(Reply::new(555, "5.5.4", "MAIL parameter not supported"));
        }
        // smtp-proto's SIZE wraps past 20 digits; a number too big for
        // 64 bits is bigger than any limit, so it is read here again.
        let declared_size = declared_size(line).unwrap_or(from.size as u64);
        if declared_size > self.config.max_message_size as u64 {
            return Step::Reply(self.size_exceeded());
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let sender = from.address.into_owned();
        // smtp-proto turns `<postmaster>` into the null sender, but RFC 5321
        // §4.1.1.3 allows the bare name only as a recipient.
        if sender.is_empty() && path_of(line).is_some_and(|p| !p.trim_ascii().is_empty()) {
            return self.error(Reply::new(
                553,
                "5.1.7",
                "sender address rejected: <postmaster> without a domain is valid only as a recipient; use <> for the null sender",
            ));
        }
        if !sender.is_empty()
            && let Err(e) = check_sender(&sender, smtputf8)
        {
            // RFC 6531 §3.5 gives X.6.7 to an address refused for its
            // characters; every other fault is a bad sender (X.1.7).
            let status = if e == AddressError::NonAsciiWithoutSmtputf8 {
                "5.6.7"
            } else {
                "5.1.7"
            };
            return self.error(Reply::new(
                553,
                status,
                format!("sender address rejected: {e}"),
            ));
        }
        self.tx = Some(Transaction {
            sender,
            recipients: Vec::new(),
            smtputf8,
            eight_bit: from.flags & MAIL_BODY_8BITMIME != 0,
            // At most the limit, which is a usize, after the check above.
            declared_size: declared_size as usize,
            to_own_name: false,
        });
        Step::Reply(Reply::new(250, "2.1.0", "Ok"))
    }
}

/// The value of a `SIZE=` parameter made of digits only, saturating at
/// `u64::MAX`: RFC 1870 sets no upper bound on the number, and one too big
/// to represent is still a declaration larger than any limit (552), not a
/// syntax error. `None` when there is no such parameter (smtp-proto's
/// reading and its syntax errors then apply).
pub(super) fn declared_size(line: &[u8]) -> Option<u64> {
    let close = memchr::memrchr(b'>', line)?;
    line[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .filter_map(|param| {
            let (key, value) = param.split_at_checked(5)?;
            (key.eq_ignore_ascii_case(b"SIZE=")
                && !value.is_empty()
                && value.iter().all(u8::is_ascii_digit))
            .then_some(value)
        })
        .map(|digits| {
            digits.iter().fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            })
        })
        .next()
}

/// smtp-proto refuses every address literal as address syntax, but a
/// literal is a fine sender (`user@[192.0.2.1]` is what a host without a
/// name produces). For a MAIL line whose path ends in `@[...]`, this
/// returns the line with the literal replaced by a one-letter domain the
/// parser takes, and the literal, to be put back after parsing.
pub(super) fn mask_sender_literal(line: &[u8]) -> Option<(Vec<u8>, String)> {
    let open = memchr::memchr(b'<', line)?;
    let close = open + 1 + memchr::memchr(b'>', &line[open + 1..])?;
    let path = &line[open + 1..close];
    let at = memchr::memrchr(b'@', path)?;
    let literal = &path[at + 1..];
    let inner = literal.strip_prefix(b"[")?.strip_suffix(b"]")?;
    if inner.is_empty()
        || !inner
            .iter()
            .all(|b| b.is_ascii_graphic() && !b"[]\\".contains(b))
    {
        return None;
    }
    let mut masked = Vec::with_capacity(line.len());
    masked.extend_from_slice(&line[..open + 1 + at + 1]);
    masked.push(b'x');
    masked.extend_from_slice(&line[close..]);
    Some((masked, String::from_utf8(literal.to_vec()).ok()?))
}
