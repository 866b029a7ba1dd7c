//! Decoding of the DATA stream: dot-unstuffing and end-of-data detection.
//!
//! This is the SMTP-smuggling defense. Only `CRLF . CRLF` ends a message.
//! A bare LF stops decoding at once ([`Verdict::BareLf`]): the client uses
//! LF line endings (or smuggles), its `\n.\n` would never end the message,
//! and the session closes instead of waiting; nothing after the LF is read.
//! A bare CR or a NUL byte marks the message as malformed but decoding goes
//! on to the real `CRLF . CRLF`, so `\r.\r` can never end the message early.
//! A NUL is refused because a next hop that drops NULs before looking for
//! the end of data would see lines we never saw. The decoder keeps counting
//! after the size limit is passed, so an oversized message is read to its
//! end (and then refused) without holding more than the limit in memory.

use memchr::memchr3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Just after CRLF (or at the very start): a '.' here is special.
    LineStart,
    /// Inside a line.
    Mid,
    /// Saw CR; an LF must follow.
    AfterCr,
    /// Saw '.' at line start.
    Dot,
    /// Saw '.' then CR at line start: LF now ends the message.
    DotCr,
}

/// What the decoder concluded about a finished message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Complete,
    TooLarge,
    /// A bare CR somewhere in the message (read to its end).
    BareLineEnding,
    /// A NUL byte somewhere in the message (read to its end).
    NulByte,
    /// A bare LF: returned as soon as it is seen, before the end of data.
    BareLf,
}

#[derive(Debug)]
pub struct DataDecoder {
    pos: Position,
    limit: usize,
    /// Decoded size so far, counted even past the limit.
    size: usize,
    bare: bool,
    nul: bool,
}

impl DataDecoder {
    pub fn new(limit: usize) -> Self {
        Self {
            pos: Position::LineStart,
            limit,
            size: 0,
            bare: false,
            nul: false,
        }
    }

    /// Consumes bytes from `input`, appending decoded content to `body`
    /// while it is within the limit. Returns how many bytes were consumed and
    /// `Some(verdict)` once the terminating `CRLF.CRLF` has been read, or
    /// `Some(Verdict::BareLf)` at the first bare LF; bytes after the
    /// terminator (or the LF) are not consumed.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> (usize, Option<Verdict>) {
        let mut i = 0;
        while i < input.len() {
            match self.pos {
                Position::Mid => {
                    let rest = &input[i..];
                    match memchr3(b'\r', b'\n', b'\0', rest) {
                        None => {
                            self.emit(rest, body);
                            return (input.len(), None);
                        }
                        Some(k) => {
                            self.emit(&rest[..k], body);
                            match rest[k] {
                                b'\r' => self.pos = Position::AfterCr,
                                b'\n' => return (i + k + 1, Some(Verdict::BareLf)),
                                _ => {
                                    // Kept so sizes stay right; the message
                                    // is refused at its end.
                                    self.nul = true;
                                    self.emit(b"\0", body);
                                }
                            }
                            i += k + 1;
                        }
                    }
                }
                Position::LineStart => {
                    if input[i] == b'.' {
                        self.pos = Position::Dot;
                        i += 1;
                    } else {
                        self.pos = Position::Mid;
                    }
                }
                Position::AfterCr => {
                    if input[i] == b'\n' {
                        self.emit(b"\r\n", body);
                        self.pos = Position::LineStart;
                        i += 1;
                    } else {
                        self.bare = true;
                        self.emit(b"\r", body);
                        self.pos = Position::Mid;
                    }
                }
                Position::Dot => {
                    if input[i] == b'\r' {
                        self.pos = Position::DotCr;
                        i += 1;
                    } else {
                        // Dot-unstuffing: the leading dot is dropped and the
                        // rest of the line is ordinary content.
                        self.pos = Position::Mid;
                    }
                }
                Position::DotCr => {
                    if input[i] == b'\n' {
                        self.pos = Position::LineStart;
                        return (i + 1, Some(self.verdict()));
                    }
                    self.bare = true;
                    self.emit(b"\r", body);
                    self.pos = Position::Mid;
                }
            }
        }
        (input.len(), None)
    }

    fn emit(&mut self, bytes: &[u8], body: &mut Vec<u8>) {
        let new_size = self.size.saturating_add(bytes.len());
        if new_size <= self.limit {
            body.extend_from_slice(bytes);
        } else if self.size <= self.limit {
            // First overflow: free what was kept, nothing of it will be used.
            body.clear();
            body.shrink_to_fit();
        }
        self.size = new_size;
    }

    fn verdict(&self) -> Verdict {
        if self.size > self.limit {
            Verdict::TooLarge
        } else if self.bare {
            Verdict::BareLineEnding
        } else if self.nul {
            Verdict::NulByte
        } else {
            Verdict::Complete
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], limit: usize) -> (usize, Option<Verdict>, Vec<u8>) {
        let mut d = DataDecoder::new(limit);
        let mut body = Vec::new();
        let (n, v) = d.feed(input, &mut body);
        (n, v, body)
    }

    /// Feeds one byte at a time, which must give the same result as one chunk.
    fn decode_bytewise(input: &[u8], limit: usize) -> (usize, Option<Verdict>, Vec<u8>) {
        let mut d = DataDecoder::new(limit);
        let mut body = Vec::new();
        for (i, b) in input.iter().enumerate() {
            let (n, v) = d.feed(std::slice::from_ref(b), &mut body);
            assert!(n <= 1);
            if v.is_some() {
                return (i + 1, v, body);
            }
        }
        (input.len(), None, body)
    }

    #[test]
    fn it_decodes_and_unstuffs_in_any_chunking() {
        // (input, verdict, decoded body, bytes consumed)
        type Case = (&'static [u8], Option<Verdict>, &'static [u8], usize);
        let cases: &[Case] = &[
            (b".\r\n", Some(Verdict::Complete), b"", 3),
            (b"a\r\n.\r\n", Some(Verdict::Complete), b"a\r\n", 6),
            (b"..x\r\n.\r\n", Some(Verdict::Complete), b".x\r\n", 8),
            (
                b"a\r\n..\r\n.\r\nQUIT\r\n",
                Some(Verdict::Complete),
                b"a\r\n.\r\n",
                10,
            ),
            (b"a\r\nb", None, b"a\r\nb", 4),
        ];
        for (input, verdict, body, used) in cases {
            for f in [decode_all, decode_bytewise] {
                let (n, v, b) = f(input, 1000);
                assert_eq!(v, *verdict, "{input:?}");
                assert_eq!(b, *body, "{input:?}");
                assert_eq!(n, *used, "{input:?}");
            }
        }
    }

    #[test]
    fn it_never_ends_on_bare_cr_terminators() {
        for input in [&b"a\r.\rMAIL\r\n"[..], b"a\r\n.\r.\r\n"] {
            for f in [decode_all, decode_bytewise] {
                let (n, v, _) = f(input, 1000);
                assert_eq!(v, None, "{input:?} ended early");
                assert_eq!(n, input.len());
            }
        }
    }

    #[test]
    fn it_stops_at_the_first_bare_lf_without_reading_on() {
        // (input, verdict, bytes consumed)
        let cases: &[(&[u8], Verdict, usize)] = &[
            (b"a\n.\nMAIL FROM:<x@y.z>\r\n", Verdict::BareLf, 2),
            (b"a\n.\r\nMAIL FROM:<x@y.z>\r\n", Verdict::BareLf, 2),
            (b"a\r\n.\nMAIL\r\n", Verdict::BareLf, 5),
            (b"\n", Verdict::BareLf, 1),
            (b"Subject: x\r\n\nbody\r\n.\r\n", Verdict::BareLf, 13),
            // The terminator comes first; the LF after it is not data.
            (b"a\r\n.\r\n\n", Verdict::Complete, 6),
        ];
        for (input, verdict, used) in cases {
            for f in [decode_all, decode_bytewise] {
                let (n, v, _) = f(input, 1000);
                assert_eq!(v, Some(*verdict), "{input:?}");
                assert_eq!(n, *used, "{input:?}");
            }
        }
    }

    #[test]
    fn it_rejects_bare_cr_and_nul_in_data_after_reading_to_the_end() {
        let cases: &[(&[u8], Verdict)] = &[
            (b"a\rb\r\n.\r\n", Verdict::BareLineEnding),
            (b"a\0b\r\n.\r\n", Verdict::NulByte),
            (b"\0\r\n.\r\n", Verdict::NulByte),
            (b"a\r\n\0.\r\n.\r\n", Verdict::NulByte),
            (b"a\r\0\r\n.\r\n", Verdict::BareLineEnding),
        ];
        for (input, verdict) in cases {
            for f in [decode_all, decode_bytewise] {
                let (n, v, _) = f(input, 1000);
                assert_eq!(v, Some(*verdict), "{input:?}");
                assert_eq!(n, input.len(), "{input:?}");
            }
        }
    }

    #[test]
    fn it_reads_oversized_data_to_the_end_without_keeping_it() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        let (n, v, body) = decode_all(&input, 100);
        assert_eq!(v, Some(Verdict::TooLarge));
        assert_eq!(n, 5005);
        assert!(body.is_empty());
    }

    #[test]
    fn it_accepts_a_message_exactly_at_the_limit() {
        let (_, v, body) = decode_all(b"abc\r\n.\r\n", 5);
        assert_eq!(v, Some(Verdict::Complete));
        assert_eq!(body, b"abc\r\n");
    }
}
