//! SMTP dot-stuffing (RFC 5321 section 4.5.2) and the wire length it gives.
//!
//! The SMTP client sends [`stuff`]'s output; padding needs the length of
//! that output without building it ([`wire_len`]), because an observer of
//! the encrypted stream measures wire bytes, not message bytes. Both come
//! from the same two rules below, so the padded size and the sent size
//! cannot drift apart.
//!
//! * A line starts at the beginning of the body and after every LF (the
//!   line rule of [`super::header`]); a `.` starting a line is doubled.
//! * A body that does not end with CRLF gets one before the terminating
//!   `.` CRLF (an empty body gets only the terminator).

/// The terminator line of DATA.
const END: &[u8] = b".\r\n";

/// `body` dot-stuffed, ending with CRLF, followed by the `.` CRLF line.
pub fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire_len(body));
    let mut copied = 0;
    for dot in dots_to_double(body) {
        out.extend_from_slice(&body[copied..dot]);
        out.push(b'.');
        copied = dot;
    }
    out.extend_from_slice(&body[copied..]);
    if needs_crlf(body) {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(END);
    out
}

/// `stuff(body).len()`, computed without building it.
pub fn wire_len(body: &[u8]) -> usize {
    let crlf = if needs_crlf(body) { 2 } else { 0 };
    body.len() + dots_to_double(body).count() + crlf + END.len()
}

/// Offsets of the dots that start a line.
fn dots_to_double(body: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let line_starts = std::iter::once(0).chain(memchr::memchr_iter(b'\n', body).map(|lf| lf + 1));
    line_starts.filter(|&start| body.get(start) == Some(&b'.'))
}

fn needs_crlf(body: &[u8]) -> bool {
    !body.is_empty() && !body.ends_with(b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_doubles_line_leading_dots_and_terminates() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
            (b"a.b\r\nc.\r\n", b"a.b\r\nc.\r\n.\r\n"),
            (b"no newline", b"no newline\r\n.\r\n"),
            (b"bare\n.lf", b"bare\n..lf\r\n.\r\n"),
            (b"bare\r.cr\r\n", b"bare\r.cr\r\n.\r\n"),
            (b"ends with cr\r", b"ends with cr\r\r\n.\r\n"),
        ];
        for &(body, wire) in cases {
            assert_eq!(stuff(body), wire, "{body:?}");
        }
    }

    #[test]
    fn its_wire_length_is_the_stuffed_length() {
        for body in crate::message::random_inputs(b"..a\r\n\n", 30, 2_000, 3) {
            assert_eq!(wire_len(&body), stuff(&body).len(), "{body:?}");
        }
    }
}
