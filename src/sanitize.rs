//! Exit-side header sanitizer (`-sanitize`, on by default).
//!
//! Before a message leaves the node, its header block is filtered through an
//! allow-list: only headers that carry content the author chose on purpose,
//! or that a reader needs to decode and thread the message, survive. Every
//! other header is dropped, and the relay adds a fresh `From`, `Message-ID`
//! and `Date` of its own, so nothing about the sender's software, host, time
//! zone or route reaches the next hop.
//!
//! What an author adds on purpose for a mail-to-news gateway and its
//! readers survives byte for byte: ed25519 pseudonym keys and signatures,
//! and hashcash stamps, but a stamp only when its date is a day. A stamp
//! dated to the minute would tell when the mail was written past every mix
//! delay, so it is dropped and reported in [`Sanitized`] by class, never
//! by content.
//!
//! This module is pure: bytes in, bytes out, no I/O. Headers are handled as
//! bytes, never as `str`, so 8-bit values pass through untouched. The body is
//! never inspected or changed.
//!
//! # Parsing rules
//!
//! * Lines, the end of the header block and folding follow the one line
//!   rule of [`crate::message::header`]. In particular a bare LF ends a
//!   line, so it cannot smuggle a dropped header past the filter for a
//!   receiver that treats bare LF as a line break. A continuation line
//!   shares the fate of the field above it; continuation lines before the
//!   first field are dropped.
//! * A line that is not a well-formed `name:` field is dropped, with its
//!   continuation lines.
//! * If the first line that does not start with whitespace is not a header
//!   field, the input is taken to be body only: all of it is kept as the
//!   body behind the three new headers.
//! * Output lines always end with CRLF, and the output always contains the
//!   empty line between headers and body (an empty body if there was none).

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use crate::message::hashcash::{self, StampClass};
use crate::message::header;

/// What the relay puts in place of identifying headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanitizeConfig {
    /// The whole value of the new `From:` header, e.g.
    /// `Anonymous <nobody@example.onion>`.
    pub from: String,
    /// The right-hand side of the new `Message-ID:`, e.g. the node's onion
    /// name.
    pub message_id_domain: String,
}

/// Headers kept exactly as written (names compared case-insensitively).
///
/// Every `Content-*` header and a conditional `Mail-Copies-To` are handled
/// in [`keep_field`]; see there for their reasons.
const KEEP: &[&[u8]] = &[
    // The author's own words for the message.
    b"subject",
    // Recipients the author addressed on purpose; the next hop needs them to
    // show who the message is for, and they are not the sender's address.
    b"to",
    b"cc",
    // Usenet targets; a mail-to-news gateway cannot post without them.
    b"newsgroups",
    // Where replies to a news posting should go (groups, or "poster").
    b"followup-to",
    // Threading: lets readers attach the message to the conversation.
    b"references",
    b"in-reply-to",
    // Without it, MIME bodies are shown as raw text.
    b"mime-version",
    // The author's request that archives skip the message.
    b"x-no-archive",
    // RFC 5322 informational field typed by the author; news gateways map it
    // to the news header of the same name.
    b"keywords",
    // Author-written abstract of a news article (RFC 5536); gateways pass it.
    b"summary",
    // Limits how far a news article spreads (RFC 5536); gateways honour it.
    b"distribution",
    // RFC 5322 free text the author adds about the message.
    b"comments",
    // A pseudonym's ed25519 key and its signature over the post: readers
    // check that posts come from the same pseudonym, and m2usenet passes
    // both on to Usenet. They say nothing the author did not choose to say.
    b"x-ed25519-pub",
    b"x-ed25519-sig",
];

/// Hashcash stamp headers: kept when the stamp's date is a day, dropped
/// otherwise (see [`hashcash::classify`]). Gateways such as m2usenet refuse
/// posts without one for their address.
const STAMPS: &[&[u8]] = &[b"x-hashcash", b"hashcash"];

/// Values of `Mail-Copies-To` that name no address.
const MAIL_COPIES_TO_KEYWORDS: &[&[u8]] = &[b"nobody", b"never", b"poster", b"always"];

/// Random bytes behind the Message-ID left part: 15 bytes are 120 bits,
/// which base32 writes as exactly 24 characters with no padding.
const MESSAGE_ID_RANDOM_BYTES: usize = 15;

/// The right-hand side of Message-IDs derived from a mixnet message id:
/// the same for every exit, so a copy delivered twice (by two exits, after
/// a lost acknowledgement) carries the same Message-ID and readers and
/// news servers drop the second, while nothing names the exit.
pub const MIXNET_MESSAGE_ID_DOMAIN: &str = "mixnet.invalid";

/// The left part of the Message-ID of mail that left the mixnet: a hash of
/// its mixnet message id (random, chosen by the entry), shaped like a
/// random one.
pub fn mixnet_message_id(key: &[u8; 16]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"pluto2 mixnet Message-ID\0")
        .chain_update(key)
        .finalize();
    data_encoding::BASE32_NOPAD
        .encode(&digest[..MESSAGE_ID_RANDOM_BYTES])
        .to_ascii_lowercase()
}

/// What [`sanitize`] made: the message, and the stamps it dropped by
/// class, for the node to log and count (this module does no I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sanitized {
    pub message: Vec<u8>,
    /// Hashcash stamps dropped because their date carries a time of day.
    pub time_of_day_stamps: usize,
    /// Hashcash stamps dropped because they are not version 1 stamps we
    /// can read.
    pub malformed_stamps: usize,
}

/// Rewrites the header block; the body (everything after the first CRLF CRLF) is returned byte for byte unchanged.
///
/// `now` becomes the new `Date:`. The new `Message-ID:` is derived from
/// `key` (a mixnet message id) when one is given, otherwise drawn from `rng`.
pub fn sanitize<R: Rng + ?Sized>(
    message: &[u8],
    config: &SanitizeConfig,
    now: SystemTime,
    rng: &mut R,
    key: Option<&[u8; 16]>,
) -> Sanitized {
    let parts = header::split(message);
    let (left, right) = match key {
        Some(k) => (mixnet_message_id(k), MIXNET_MESSAGE_ID_DOMAIN),
        None => (random_id(rng), config.message_id_domain.as_str()),
    };

    let mut out = Vec::with_capacity(message.len() + 256);
    out.extend_from_slice(b"From: ");
    out.extend_from_slice(config.from.as_bytes());
    out.extend_from_slice(b"\r\nMessage-ID: <");
    out.extend_from_slice(left.as_bytes());
    out.push(b'@');
    out.extend_from_slice(right.as_bytes());
    out.extend_from_slice(b">\r\nDate: ");
    out.extend_from_slice(rfc5322_date(now).as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut done = Sanitized {
        message: Vec::new(),
        time_of_day_stamps: 0,
        malformed_stamps: 0,
    };

    if !looks_like_header_block(message, parts) {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(message);
        done.message = out;
        return done;
    }

    for field in header::fields(message) {
        let keep = match stamp_class(&field) {
            None => keep_field(&field),
            Some(StampClass::Day) => true,
            Some(StampClass::TimeOfDay) => {
                done.time_of_day_stamps += 1;
                false
            }
            Some(StampClass::Malformed) => {
                done.malformed_stamps += 1;
                false
            }
        };
        if keep {
            for line in field.lines() {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = parts.body {
        out.extend_from_slice(body);
    }
    done.message = out;
    done
}

/// The class of a hashcash stamp header, `None` for any other field.
fn stamp_class(field: &header::Field<'_>) -> Option<StampClass> {
    let name = field.name?;
    STAMPS
        .iter()
        .any(|stamp| name.eq_ignore_ascii_case(stamp))
        .then(|| hashcash::classify(field.value))
}

/// Decides whether the input starts with headers at all: yes if its first
/// line that is not a continuation is a header field, or if the input opens
/// with the empty line (an empty header block before a body).
fn looks_like_header_block(message: &[u8], parts: header::Parts<'_>) -> bool {
    match header::fields(message).find(|field| !field.is_orphan()) {
        Some(field) => field.name.is_some(),
        None => parts.head.is_empty() && parts.body.is_some(),
    }
}

/// The allow-list decision for one field.
fn keep_field(field: &header::Field<'_>) -> bool {
    let Some(name) = field.name else {
        return false;
    };
    if KEEP.iter().any(|kept| name.eq_ignore_ascii_case(kept)) {
        return true;
    }
    // Content-Type, Content-Transfer-Encoding, Content-Disposition and the
    // rest of the family: without them a MIME body cannot be decoded.
    if name.len() > b"content-".len() && name[..8].eq_ignore_ascii_case(b"content-") {
        return true;
    }
    // Mail-Copies-To tells repliers whether to copy the poster. Its keyword
    // values are harmless and kept; an address value is the sender's own
    // address (the same reason Reply-To is dropped), so it is dropped.
    if name.eq_ignore_ascii_case(b"mail-copies-to") {
        let value = field.value.trim_ascii();
        return MAIL_COPIES_TO_KEYWORDS
            .iter()
            .any(|keyword| value.eq_ignore_ascii_case(keyword));
    }
    false
}

/// 24 lowercase base32 characters from `rng`.
fn random_id<R: Rng + ?Sized>(rng: &mut R) -> String {
    let mut bytes = [0u8; MESSAGE_ID_RANDOM_BYTES];
    rng.fill_bytes(&mut bytes);
    data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase()
}

/// Stands in for the date when the clock lies outside what RFC 5322 can
/// write (years 1900 to 9999): a clock that far off is broken, and a fixed
/// date says nothing about this node.
const FALLBACK_DATE: &str = "Thu, 01 Jan 1970 00:00:00 +0000";

/// `now` in UTC as an RFC 5322 date, e.g. `Tue, 24 Nov 2026 10:23:54 +0000`,
/// with the seconds rounded down.
fn rfc5322_date(now: SystemTime) -> String {
    let since_epoch = match now.duration_since(UNIX_EPOCH) {
        Ok(after) => time::Duration::try_from(after).ok(),
        Err(before) => time::Duration::try_from(before.duration())
            .ok()
            .map(|before| -before),
    };
    since_epoch
        .and_then(|offset| OffsetDateTime::UNIX_EPOCH.checked_add(offset))
        .and_then(|date| date.format(&Rfc2822).ok())
        .unwrap_or_else(|| FALLBACK_DATE.to_owned())
}

/// The hop counter pluto2 writes into every message it relays (cover
/// excepted), so that mail cycling between relays stops even though
/// sanitizing drops `Received:` and gives every pass a new `Message-ID`
/// and `Date`.
///
/// Its value is a bare number and says nothing but how many sanitizing
/// relays the message has passed: a message leaving its first pluto2 says
/// `1`, whatever the author's own mail servers added before (their
/// `Received:` lines are dropped and not counted into it, so the value does
/// not reveal how the author submitted the message).
pub const HOP_COUNT: &str = "X-Hop-Count";

/// Hops the header block records: every `Received:` and `Delivered-To:`
/// field (what Postfix's `hopcount_limit` counts, so the hops of MTAs that
/// keep headers count too) plus the value of [`HOP_COUNT`]. Saturates
/// instead of overflowing.
pub fn hops(message: &[u8]) -> u32 {
    let trace = header::fields(message)
        .filter(|field| field.has_name("received") || field.has_name("delivered-to"))
        .count();
    u32::try_from(trace)
        .unwrap_or(u32::MAX)
        .saturating_add(hop_counter(message))
}

/// The largest [`HOP_COUNT`] value in the header block, 0 without one. A
/// value that is not a plain decimal number is ignored (a sender can always
/// drop the header, so a malformed one gains them nothing); one too large
/// for `u32` counts as `u32::MAX`.
pub fn hop_counter(message: &[u8]) -> u32 {
    header::fields(message)
        .filter(|field| field.has_name(HOP_COUNT))
        .filter_map(|field| parse_count(field.value.trim_ascii()))
        .max()
        .unwrap_or(0)
}

fn parse_count(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u32 = 0;
    for &d in digits {
        n = n.saturating_mul(10).saturating_add(u32::from(d - b'0'));
    }
    Some(n)
}

/// `message` with every [`HOP_COUNT`] field removed and one
/// `X-Hop-Count: count` put last in the header block, where it cannot
/// become the continuation of anything and leaves the fields above it
/// (the sanitizer's `From:` first) where they were. A message that does not
/// start with a header block (see the module's parsing rules) gets a header
/// block of its own, so its first line stays in the body.
pub fn with_hop_count(message: &[u8], count: u32) -> Vec<u8> {
    let line = format!("{HOP_COUNT}: {count}\r\n");
    let mut out = Vec::with_capacity(message.len() + line.len() + 2);
    let parts = header::split(message);
    if !looks_like_header_block(message, parts) {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(message);
        return out;
    }
    let mut copied = 0;
    for field in header::fields(message).filter(|field| field.has_name(HOP_COUNT)) {
        out.extend_from_slice(&message[copied..field.range.start]);
        copied = field.range.end;
    }
    out.extend_from_slice(&parts.head[copied.min(parts.head.len())..]);
    if !out.is_empty() && !out.ends_with(b"\n") {
        // The header block ran to the end of an unterminated line.
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(line.as_bytes());
    if let Some(body) = parts.body {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn config() -> SanitizeConfig {
        SanitizeConfig {
            from: "Anonymous <nobody@example.onion>".to_owned(),
            message_id_domain: "example.onion".to_owned(),
        }
    }

    fn fixed_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_515_834)
    }

    fn run(message: &[u8]) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(7);
        sanitize(message, &config(), fixed_time(), &mut rng, None).message
    }

    /// Splits output into (header lines with their CRLF, body) at the first
    /// CRLF CRLF, asserting that the separator is there.
    fn parts(output: &[u8]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let at = output
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("output has a header/body separator");
        let lines = output[..at + 2]
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        (lines, output[at + 4..].to_vec())
    }

    /// The header lines after the three the relay adds, with their CRLF.
    fn kept_lines(output: &[u8]) -> Vec<u8> {
        parts(output).0[3..].concat()
    }

    fn assert_new_headers(output: &[u8]) {
        let (lines, _) = parts(output);
        assert_eq!(lines[0], b"From: Anonymous <nobody@example.onion>\r\n");
        assert!(lines[1].starts_with(b"Message-ID: <"), "{lines:?}");
        assert!(lines[1].ends_with(b"@example.onion>\r\n"), "{lines:?}");
        assert_eq!(lines[2], b"Date: Tue, 24 Nov 2026 10:23:54 +0000\r\n");
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn drops_every_header_outside_the_allow_list_in_any_case() {
        let dropped: &[&str] = &[
            "Received",
            "RECEIVED",
            "received",
            "X-Foo",
            "x-originating-ip",
            "User-Agent",
            "X-Mailer",
            "Reply-To",
            "reply-to",
            "Sender",
            "Return-Path",
            "Organization",
            "Message-ID",
            "message-id",
            "Date",
            "DATE",
            "From",
            "fRoM",
            "Path",
            "NNTP-Posting-Host",
            "NNTP-Posting-Date",
            "DKIM-Signature",
            "Authentication-Results",
            "List-Id",
            "List-Unsubscribe",
            "Disposition-Notification-To",
            "Errors-To",
            "Importance",
            "Mail-Followup-To",
            "Bcc",
            "Resent-From",
            "Subjective",
            "Tolerance",
            "X-No-Archive-Foo",
            "Content-",
        ];
        for name in dropped {
            let message = format!(
                "Subject: hi\r\n{name}: leaked-value\r\n\tleaked-fold\r\nTo: a@b.onion\r\n\r\nbody\r\n"
            );
            let output = run(message.as_bytes());
            assert_new_headers(&output);
            assert!(!contains(&output, b"leaked"), "{name} survived");
            assert_eq!(
                kept_lines(&output),
                b"Subject: hi\r\nTo: a@b.onion\r\n",
                "{name}"
            );
        }
    }

    #[test]
    fn keeps_allow_listed_headers_in_order_with_folded_lines() {
        let kept: &[&str] = &[
            "Subject: a\r\n  folded subject",
            "to: x@y.onion,\r\n\tz@y.onion",
            "CC: c@y.onion",
            "Newsgroups: alt.test",
            "References: <1@a>\r\n <2@a>",
            "In-Reply-To: <2@a>",
            "Followup-To: poster",
            "MIME-Version: 1.0",
            "Content-Type: multipart/mixed;\r\n boundary=\"b1\"",
            "content-transfer-encoding: 8bit",
            "Content-Disposition: inline",
            "X-No-Archive: yes",
            "x-no-archive: Yes",
            "Keywords: a, b",
            "Summary: short",
            "Distribution: local",
            "Comments: hello",
            "Mail-Copies-To: nobody",
            "Mail-Copies-To:  Never ",
            "Subject : obsolete spacing",
        ];
        for header in kept {
            let message = format!("Received: x\r\n{header}\r\nX-Mailer: y\r\n\r\nbody");
            let output = run(message.as_bytes());
            assert_new_headers(&output);
            assert_eq!(kept_lines(&output), format!("{header}\r\n").as_bytes());
        }

        let all = kept.join("\r\n");
        let message = format!("{all}\r\n\r\nbody");
        assert_eq!(
            kept_lines(&run(message.as_bytes())),
            format!("{all}\r\n").as_bytes()
        );
    }

    #[test]
    fn drops_mail_copies_to_that_carries_an_address() {
        let output = run(b"Mail-Copies-To: me@home.example\r\nSubject: s\r\n\r\n");
        assert_eq!(kept_lines(&output), b"Subject: s\r\n");
    }

    #[test]
    fn leaves_body_byte_for_byte_unchanged() {
        let bodies: &[&[u8]] = &[
            b"",
            b"plain\r\n",
            b"From: x\r\nReceived: from attacker\r\nX-Mailer: m\r\n\r\nmore\r\n",
            b"\r\n\r\nleading empty lines\r\n",
            b"no final newline",
            b"bare\nLF and bare\rCR\r\n",
            b"\xff\xfe 8-bit \xc3\xa9\r\n",
        ];
        for body in bodies {
            let mut message = b"Subject: s\r\nX-Mailer: m\r\n\r\n".to_vec();
            message.extend_from_slice(body);
            let (_, out_body) = parts(&run(&message));
            assert_eq!(&out_body, body);
        }
    }

    #[test]
    fn leaves_mime_multipart_body_unchanged() {
        let head = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\
            Received: from laptop\r\n\r\n";
        let body = b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\
            From: x\r\nReceived: inside a part\r\n\r\nhello \xc3\xa9\r\n\
            --XX\r\nContent-Type: application/octet-stream\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--XX--\r\n";
        let message = [&head[..], &body[..]].concat();
        let output = run(&message);
        let (_, out_body) = parts(&output);
        assert_eq!(out_body, body);
        assert_eq!(
            kept_lines(&output),
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n"
        );
        assert!(output.ends_with(body));
    }

    #[test]
    fn keeps_non_ascii_header_bytes() {
        let subject = b"Subject: caf\xc3\xa9 \xff raw\r\n\t\xe2\x82\xac\r\n";
        let message = [&subject[..], b"X-Mailer: m\r\n\r\nbody"].concat();
        assert_eq!(kept_lines(&run(&message)), subject);
    }

    #[test]
    fn message_without_body_gets_empty_body() {
        let output = run(b"Subject: s\r\nX-Mailer: m\r\n\r\n");
        assert_new_headers(&output);
        assert!(output.ends_with(b"\r\nSubject: s\r\n\r\n"));
        assert_eq!(parts(&output).1, b"");
    }

    #[test]
    fn bare_header_block_gets_separator_and_empty_body() {
        for message in [
            &b"Subject: s\r\nReceived: r\r\nTo: t@x.onion\r\n"[..],
            &b"Subject: s\r\nReceived: r\r\nTo: t@x.onion"[..],
        ] {
            let output = run(message);
            assert_new_headers(&output);
            assert_eq!(kept_lines(&output), b"Subject: s\r\nTo: t@x.onion\r\n");
            assert!(output.ends_with(b"To: t@x.onion\r\n\r\n"));
        }
    }

    #[test]
    fn body_only_input_is_kept_whole_behind_new_headers() {
        let inputs: &[&[u8]] = &[
            b"Hello there\r\nFrom: x\r\n\r\nbye\r\n",
            b"just one line",
            b"Dear Bob: no header name has spaces\r\nSubject: s\r\n",
            b"   indented letter\r\n",
            b"",
        ];
        for input in inputs {
            let output = run(input);
            assert_new_headers(&output);
            let (lines, body) = parts(&output);
            assert_eq!(lines.len(), 3);
            assert_eq!(&body, input);
        }
    }

    #[test]
    fn leading_empty_line_means_empty_header_block() {
        let output = run(b"\r\nFrom: x\r\nbody\r\n");
        let (lines, body) = parts(&output);
        assert_eq!(lines.len(), 3);
        assert_eq!(body, b"From: x\r\nbody\r\n");
    }

    #[test]
    fn drops_malformed_lines_and_stray_continuations() {
        let message = b" stray before any header\r\n\tanother\r\nSubject: s\r\n\
            no colon here\r\n continued malformed\r\nTo: t@x.onion\r\n\r\nb";
        let output = run(message);
        assert_eq!(kept_lines(&output), b"Subject: s\r\nTo: t@x.onion\r\n");
        assert_eq!(parts(&output).1, b"b");
    }

    #[test]
    fn bare_lf_in_header_cannot_smuggle_a_dropped_header() {
        let output = run(b"Subject: s\nReceived: secret\r\nTo: t@x.onion\r\n\r\nb");
        assert!(!contains(&output, b"secret"));
        assert_eq!(kept_lines(&output), b"Subject: s\r\nTo: t@x.onion\r\n");
        assert_eq!(parts(&output).1, b"b");
    }

    #[test]
    fn new_headers_come_first_in_fixed_order() {
        let output = run(b"Date: old\r\nFrom: me\r\nMessage-ID: <x@me>\r\nSubject: s\r\n\r\n");
        assert_new_headers(&output);
        assert_eq!(kept_lines(&output), b"Subject: s\r\n");
    }

    #[test]
    fn message_id_is_24_base32_chars_and_fresh_each_call() {
        let mut rng = StdRng::seed_from_u64(42);
        let message = b"Subject: s\r\n\r\nb";
        let ids: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                let output = sanitize(message, &config(), fixed_time(), &mut rng, None).message;
                parts(&output).0[1].clone()
            })
            .collect();
        assert_ne!(ids[0], ids[1]);
        for id in &ids {
            let random = &id[b"Message-ID: <".len()..id.len() - b"@example.onion>\r\n".len()];
            assert_eq!(random.len(), 24, "{}", String::from_utf8_lossy(id));
            assert!(
                random
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(b))
            );
        }
    }

    #[test]
    fn same_seed_gives_same_message_id() {
        let message = b"Subject: s\r\n\r\nb";
        assert_eq!(run(message), run(message));
    }

    #[test]
    fn formats_dates_as_rfc5322_utc() {
        let cases: &[(i64, &str)] = &[
            (1_795_515_834, "Tue, 24 Nov 2026 10:23:54 +0000"),
            (0, "Thu, 01 Jan 1970 00:00:00 +0000"),
            (-1, "Wed, 31 Dec 1969 23:59:59 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (1_709_164_800, "Thu, 29 Feb 2024 00:00:00 +0000"),
            (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 +0000"),
            (-2_208_988_800, "Mon, 01 Jan 1900 00:00:00 +0000"),
        ];
        for &(seconds, expected) in cases {
            let time = if seconds >= 0 {
                UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
            } else {
                UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
            };
            assert_eq!(rfc5322_date(time), expected, "{seconds}");
        }
    }

    #[test]
    fn rounds_sub_second_times_down() {
        let time = UNIX_EPOCH + Duration::from_millis(1_999);
        assert_eq!(rfc5322_date(time), "Thu, 01 Jan 1970 00:00:01 +0000");
        let before = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(rfc5322_date(before), "Wed, 31 Dec 1969 23:59:59 +0000");
    }

    #[test]
    fn falls_back_to_a_fixed_date_outside_rfc5322_years() {
        let far_future = UNIX_EPOCH.checked_add(Duration::from_secs(i64::MAX as u64));
        let times = [
            Some(UNIX_EPOCH - Duration::from_secs(2_208_988_801)),
            Some(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
            far_future,
        ];
        for time in times.into_iter().flatten() {
            assert_eq!(rfc5322_date(time), FALLBACK_DATE, "{time:?}");
        }
    }

    #[test]
    fn it_counts_received_delivered_to_and_the_hop_counter_as_hops() {
        let message = b"Received: a\r\nreceived: b\r\n\tfolded\r\nDelivered-To: c\r\n\
            X-Hop-Count: 4\r\nSubject: Received: no\r\n\r\nReceived: in the body\r\n";
        assert_eq!(hop_counter(message), 4);
        assert_eq!(hops(message), 7);
        assert_eq!(hops(b"Subject: x\r\n\r\nbody"), 0);
    }

    #[test]
    fn it_reads_the_largest_well_formed_hop_counter() {
        let read = |m: &[u8]| hop_counter(m);
        assert_eq!(read(b"X-Hop-Count: 3\r\nx-hop-count:  9 \r\n\r\n"), 9);
        assert_eq!(read(b"X-Hop-Count: lots\r\n\r\n"), 0);
        assert_eq!(read(b"X-Hop-Count: -4\r\n\r\n"), 0);
        assert_eq!(read(b"X-Hop-Count: 2 3\r\n\r\n"), 0);
        assert_eq!(read(b"X-Hop-Count:\r\n\r\n"), 0);
        assert_eq!(
            read(b"X-Hop-Count: 99999999999999999999999\r\n\r\n"),
            u32::MAX
        );
        assert_eq!(
            hops(b"Received: x\r\nX-Hop-Count: 4294967295\r\n\r\n"),
            u32::MAX
        );
    }

    #[test]
    fn it_replaces_every_hop_counter_with_one_at_the_end_of_the_header() {
        let out = with_hop_count(
            b"Subject: s\r\nX-Hop-Count: 3\r\nTo: t\r\nX-HOP-COUNT: 5\r\n folded\r\n\r\nX-Hop-Count: 1\r\n",
            6,
        );
        assert_eq!(
            out,
            b"Subject: s\r\nTo: t\r\nX-Hop-Count: 6\r\n\r\nX-Hop-Count: 1\r\n",
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn it_keeps_the_body_a_body_when_adding_a_hop_counter() {
        let cases: &[(&[u8], &[u8])] = &[
            // No header block: the first line must not become a header.
            (b"hello\r\n", b"X-Hop-Count: 1\r\n\r\nhello\r\n"),
            (b"", b"X-Hop-Count: 1\r\n\r\n"),
            // An empty header block.
            (b"\r\nbody", b"X-Hop-Count: 1\r\n\r\nbody"),
            // Opening continuation lines stay where they were.
            (
                b" orphan\r\nSubject: s\r\n\r\nb",
                b" orphan\r\nSubject: s\r\nX-Hop-Count: 1\r\n\r\nb",
            ),
            // Headers only, the last line unterminated or folded.
            (b"Subject: s", b"Subject: s\r\nX-Hop-Count: 1\r\n"),
            (
                b"Subject: s\r\n more\r\n",
                b"Subject: s\r\n more\r\nX-Hop-Count: 1\r\n",
            ),
            // A counter last and without a body.
            (b"To: t\r\nX-Hop-Count: 9", b"To: t\r\nX-Hop-Count: 1\r\n"),
        ];
        for (input, expected) in cases {
            let out = with_hop_count(input, 1);
            assert_eq!(
                out,
                *expected,
                "{:?} -> {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&out)
            );
            assert_eq!(hop_counter(&out), 1, "{:?}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn mail_from_the_mixnet_gets_a_message_id_derived_from_its_message_id() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let message = b"Subject: s\r\n\r\nbody\r\n";
        let id_of = |out: &[u8]| {
            let text = String::from_utf8_lossy(out).into_owned();
            text.lines()
                .find(|l| l.starts_with("Message-ID: "))
                .unwrap()
                .to_string()
        };
        let a = sanitize(message, &config(), fixed_time(), &mut rng, Some(&[1; 16])).message;
        let b = sanitize(message, &config(), fixed_time(), &mut rng, Some(&[1; 16])).message;
        let c = sanitize(message, &config(), fixed_time(), &mut rng, Some(&[2; 16])).message;
        assert_eq!(id_of(&a), id_of(&b), "two exits, one Message-ID");
        assert_ne!(id_of(&a), id_of(&c));
        assert!(id_of(&a).ends_with("@mixnet.invalid>"), "{}", id_of(&a));
        assert!(!id_of(&a).contains(&config().message_id_domain));
    }

    #[test]
    fn it_keeps_what_an_author_adds_for_a_news_gateway_byte_for_byte() {
        let kept: &[&str] = &[
            "X-Hashcash: 1:24:261207:mail2news@gw.example::McMybZIhxKXu57jd:ckvi",
            "Hashcash: 1:20:261207:alt.test@gw.example::AbC+/=:0",
            "x-hashcash:\t1:24:261207:a@b.example::r:c  ",
            "X-Ed25519-Pub: 6y1LvnPp8qb6bLQtUMCJFA6WT3tAqkZmBM0q3nq2T3Y=",
            "X-Ed25519-Sig: HWHuO5DJm0+lTnBqTPoN3ApXhIkOXZPwUZbtnm2YxvXd\r\n\tkJ7Cz8oqE0sWZ2MWzXp8yu8sLFNTrWv/7hpbCw==",
            "x-ed25519-pub: lower-case name",
        ];
        for header in kept {
            let message = format!("Received: x\r\n{header}\r\nX-Mailer: y\r\n\r\nbody");
            let mut rng = StdRng::seed_from_u64(7);
            let done = sanitize(message.as_bytes(), &config(), fixed_time(), &mut rng, None);
            assert_eq!(
                kept_lines(&done.message),
                format!("{header}\r\n").as_bytes()
            );
            assert_eq!((done.time_of_day_stamps, done.malformed_stamps), (0, 0));
        }
    }

    #[test]
    fn it_drops_and_reports_stamps_with_a_time_of_day_or_unreadable() {
        let message = b"Subject: s\r\n\
            X-Hashcash: 1:24:2612071530:mail2news@gw.example::McMybZIhxKXu57jd:ckvi\r\n\
            Hashcash: 1:24:261207153012:a@b.example::r:c\r\n\
            X-Hashcash: 0:261207:a@b.example:r\r\n\
            X-Hashcash: 1:24:261207:kept@b.example::r:c\r\n\r\nbody";
        let mut rng = StdRng::seed_from_u64(7);
        let done = sanitize(message, &config(), fixed_time(), &mut rng, None);
        assert_eq!(
            kept_lines(&done.message),
            b"Subject: s\r\nX-Hashcash: 1:24:261207:kept@b.example::r:c\r\n"
        );
        assert_eq!(done.time_of_day_stamps, 2);
        assert_eq!(done.malformed_stamps, 1);
    }
}
