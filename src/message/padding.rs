//! Size padding: every outgoing DATA is a whole number of `-pad-block`s.
//!
//! The padding is a header of random base64, folded into short lines, put
//! at the top of the header block: the message stays valid RFC 5322, the
//! body is untouched, and a receiving pluto2 removes it again with
//! [`strip`]. Sizes are counted as they appear on the wire: dot-stuffed
//! body plus the terminating `.` line, which is what an observer of the
//! (encrypted) stream can measure.

use rand::Rng;

/// The measure padding works in, re-exported for callers that check it.
pub use crate::message::dot::wire_len;
use crate::message::header;

/// Name of the padding header.
pub const HEADER: &str = "X-Padding";

/// Characters of padding per folded line, well under RFC 5322's 78.
const LINE: usize = 72;
/// "X-Padding: " plus at least one character and CRLF.
const MIN_PAD: usize = HEADER.len() + 2 + 1 + 2;

/// Returns `message` with a padding header so that its wire length is a
/// multiple of `block` (0 disables padding).
pub fn pad<R: Rng + ?Sized>(message: &[u8], block: usize, rng: &mut R) -> Vec<u8> {
    if block == 0 {
        return message.to_vec();
    }
    let len = wire_len(message);
    let mut need = (block - len % block) % block;
    while need < MIN_PAD {
        need += block;
    }
    let mut out = Vec::with_capacity(len + need);
    out.extend_from_slice(&padding_header(need, rng));
    out.extend_from_slice(message);
    out
}

/// Returns `message` with a padding header of exactly `extra` bytes, or
/// `None` when `extra` is too small to hold one (0 returns the message
/// unpadded). For a next hop whose size limit leaves less than a whole
/// block: the message then goes out at exactly that limit.
pub fn pad_by<R: Rng + ?Sized>(message: &[u8], extra: usize, rng: &mut R) -> Option<Vec<u8>> {
    if extra == 0 {
        return Some(message.to_vec());
    }
    if extra < MIN_PAD {
        return None;
    }
    let mut out = Vec::with_capacity(message.len() + extra);
    out.extend_from_slice(&padding_header(extra, rng));
    out.extend_from_slice(message);
    Some(out)
}

/// A header of exactly `size` bytes (`size >= MIN_PAD`): a first line
/// "X-Padding: xxx\r\n" and continuation lines " xxx\r\n".
fn padding_header<R: Rng + ?Sized>(size: usize, rng: &mut R) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(HEADER.as_bytes());
    out.extend_from_slice(b": ");
    // Characters still to place, after the first line's CRLF.
    let mut left = size - HEADER.len() - 2 - 2;
    // `left` also counts the folding bytes: a few characters to spare.
    let chars = random_base64(left, rng);
    let mut chars = chars.as_slice();
    let mut first = true;
    loop {
        // A continuation line costs 3 bytes besides its characters and must
        // carry at least one; never leave a remainder that cannot form one.
        let cap = if first { LINE - HEADER.len() - 2 } else { LINE };
        let mut take = left.min(cap);
        let rest = left - take;
        if rest > 0 && rest < 4 {
            take -= 4 - rest;
        }
        if !first {
            out.push(b' ');
        }
        let (line, more) = chars.split_at(take);
        out.extend_from_slice(line);
        chars = more;
        out.extend_from_slice(b"\r\n");
        left -= take;
        if left == 0 {
            break;
        }
        left -= 3; // space and CRLF of the next line
        first = false;
    }
    debug_assert_eq!(out.len(), size);
    out
}

/// `n` random base64 characters. Each is uniform over the alphabet: a
/// prefix of the encoding of uniform random bytes is uniform.
fn random_base64<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Vec<u8> {
    let mut bytes = vec![0u8; n.div_ceil(4) * 3];
    rng.fill_bytes(&mut bytes);
    let mut text = data_encoding::BASE64_NOPAD.encode(&bytes).into_bytes();
    text.truncate(n);
    text
}

/// Removes a padding header (and its continuation lines) if it is the
/// message's first field; anything else is returned unchanged.
pub fn strip(message: &[u8]) -> &[u8] {
    match header::fields(message).next() {
        Some(field) if field.has_name(HEADER) => &message[field.range.end..],
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn it_pads_to_whole_blocks_for_every_size() {
        let mut rng = StdRng::seed_from_u64(4);
        for size in (0..20_000)
            .step_by(97)
            .chain([8189, 8190, 8191, 8192, 8193])
        {
            let mut msg = b"Subject: x\r\n\r\n".to_vec();
            msg.extend(std::iter::repeat_n(b'a', size));
            msg.extend_from_slice(b"\r\n.leading dot\r\n");
            let padded = pad(&msg, 8192, &mut rng);
            assert_eq!(wire_len(&padded) % 8192, 0, "size {size}");
            assert_eq!(strip(&padded), &msg[..], "size {size}");
        }
    }

    #[test]
    fn it_folds_the_padding_into_valid_header_lines() {
        let mut rng = StdRng::seed_from_u64(5);
        let padded = pad(b"Subject: x\r\n\r\nbody\r\n", 4096, &mut rng);
        let head_end = padded.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        for line in padded[..head_end].split(|&b| b == b'\n') {
            assert!(line.len() <= 80, "line of {} bytes", line.len());
            assert!(!line.starts_with(b"."), "would be dot-stuffed");
        }
    }

    #[test]
    fn it_leaves_unpadded_messages_alone_when_stripping() {
        assert_eq!(
            strip(b"Subject: x\r\n\r\nX-Padding: y\r\n"),
            b"Subject: x\r\n\r\nX-Padding: y\r\n"
        );
        assert_eq!(pad(b"abc", 0, &mut StdRng::seed_from_u64(1)), b"abc");
    }

    #[test]
    fn it_strips_only_a_first_field_named_x_padding() {
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"x-padding: a\r\n\tb\r\n b\r\nSubject: s\r\n\r\nx",
                b"Subject: s\r\n\r\nx",
            ),
            (b"X-Padding : a\r\n\r\nx", b"\r\nx"),
            (b"X-Padding: a\r\n", b""),
            (b"X-Padding-Not: a\r\n\r\nx", b"X-Padding-Not: a\r\n\r\nx"),
            (
                b"Subject: s\r\nX-Padding: a\r\n",
                b"Subject: s\r\nX-Padding: a\r\n",
            ),
            (b"\r\nX-Padding: a\r\n", b"\r\nX-Padding: a\r\n"),
            (b"", b""),
        ];
        for &(message, stripped) in cases {
            assert_eq!(strip(message), stripped, "{message:?}");
        }
    }
}
