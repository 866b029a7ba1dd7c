//! The header block of an RFC 5322 message, tokenized into fields.
//!
//! # Line rule (the only one in pluto2)
//!
//! * A line ends at LF. A CR right before that LF belongs to the
//!   terminator; a CR anywhere else is an ordinary byte. The last line of
//!   the input may lack a terminator. For the CRLF-only messages the SMTP
//!   decoder accepts, this is the usual CRLF rule; splitting at every LF
//!   means a bare LF cannot hide a line from us that a lenient receiver
//!   would read as a new header.
//! * The header block ends at the first empty line (the separator before
//!   the body) or at the end of the input: a message that is only header
//!   lines, with no empty line and no body, is valid.
//! * A line starting with SP or HTAB continues the field above it (folding,
//!   including RFC 5322's obs-fold: tabs, whitespace-only lines).
//! * Any other line starts a field. It is well formed if it reads
//!   `name *WSP ":" value`, the name being one or more printable ASCII
//!   characters (RFC 5322 ftext; the whitespace before the colon is the
//!   obsolete syntax of RFC 5322 section 4.5). Otherwise it is still
//!   yielded, with its continuation lines, but without a name, so callers
//!   decide what a malformed line means to them.
//! * Continuation lines before the first field form an item of their own
//!   ([`Field::is_orphan`]), also without a name.
//!
//! Nothing is copied or buffered, so no input length needs a cap here: the
//! cost is linear in the header block (each line is scanned at most twice),
//! and every byte range handed out lies inside the input.

use std::iter::FusedIterator;
use std::ops::Range;

/// A message cut at the end of its header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    /// The header lines with their terminators, without the empty line.
    pub head: &'a [u8],
    /// Everything after the empty line, or `None` when the header block runs
    /// to the end of the message.
    pub body: Option<&'a [u8]>,
}

/// Cuts `message` at the first empty line.
pub fn split(message: &[u8]) -> Parts<'_> {
    let mut pos = 0;
    while let Some(line) = Line::at(message, pos) {
        if line.is_empty() {
            return Parts {
                head: &message[..pos],
                body: Some(&message[line.end..]),
            };
        }
        pos = line.end;
    }
    Parts {
        head: message,
        body: None,
    }
}

/// The fields of the header block at the start of `message`, in order.
/// Iteration stops at the empty line; the body is never looked at.
pub fn fields(message: &[u8]) -> Fields<'_> {
    Fields {
        input: message,
        pos: 0,
    }
}

/// One field (or one malformed item) of a header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field name without the whitespace before the colon, or `None` for
    /// a line that is not `name *WSP ":"` and for orphan continuation lines.
    pub name: Option<&'a [u8]>,
    /// For a named field, everything after the colon up to the terminator of
    /// its last line, continuation lines included as they are (not
    /// unfolded). Without a name, the item's whole text up to that point.
    pub value: &'a [u8],
    /// The item's lines with all their terminators: `&message[range]`.
    pub raw: &'a [u8],
    /// Where `raw` lies in the message given to [`fields`].
    pub range: Range<usize>,
}

impl<'a> Field<'a> {
    /// True for continuation lines that have no field above them (at the
    /// very start of the message).
    pub fn is_orphan(&self) -> bool {
        starts_with_fold(self.raw)
    }

    /// True if the field is named `name` (ASCII case ignored, as RFC 5322
    /// says for field names).
    pub fn has_name(&self, name: &str) -> bool {
        self.name
            .is_some_and(|own| own.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// The item's lines without their terminators, first line first.
    pub fn lines(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let raw = self.raw;
        std::iter::successors(Line::at(raw, 0), move |line| Line::at(raw, line.end))
            .map(move |line| &raw[line.start..line.content_end])
    }
}

/// Iterator over the fields of a header block; see [`fields`].
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    input: &'a [u8],
    /// Start of the next line to read.
    pos: usize,
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        let input = self.input;
        let first = Line::at(input, self.pos).filter(|line| !line.is_empty())?;
        let mut last = first;
        while let Some(next) = Line::at(input, last.end).filter(|line| line.is_continuation(input))
        {
            last = next;
        }
        self.pos = last.end;

        // An orphan continuation line never has a name: SP and HTAB are
        // not ftext.
        let name = field_name(&input[first.start..first.content_end]);
        let value_start = match name {
            Some((_, colon)) => first.start + colon + 1,
            None => first.start,
        };
        Some(Field {
            name: name.map(|(name, _)| name),
            value: &input[value_start..last.content_end],
            raw: &input[first.start..last.end],
            range: first.start..last.end,
        })
    }
}

impl FusedIterator for Fields<'_> {}

/// One line of the input, as offsets into it.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    /// End of the content, before the terminator.
    content_end: usize,
    /// After the terminator (the input's end for an unterminated line).
    end: usize,
}

impl Line {
    /// The line starting at `start`, or `None` at the end of the input.
    fn at(input: &[u8], start: usize) -> Option<Line> {
        let rest = input.get(start..).filter(|rest| !rest.is_empty())?;
        let Some(offset) = memchr::memchr(b'\n', rest) else {
            return Some(Line {
                start,
                content_end: input.len(),
                end: input.len(),
            });
        };
        let lf = start + offset;
        let content_end = if offset > 0 && input[lf - 1] == b'\r' {
            lf - 1
        } else {
            lf
        };
        Some(Line {
            start,
            content_end,
            end: lf + 1,
        })
    }

    fn is_empty(&self) -> bool {
        self.content_end == self.start
    }

    fn is_continuation(&self, input: &[u8]) -> bool {
        starts_with_fold(&input[self.start..self.content_end])
    }
}

fn starts_with_fold(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// The name of a field line and the index of its colon, or `None` if the
/// line is not `name *WSP ":" ...`.
fn field_name(line: &[u8]) -> Option<(&[u8], usize)> {
    let colon = memchr::memchr(b':', line)?;
    let before = &line[..colon];
    let name_len = before
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |last| last + 1);
    let name = &before[..name_len];
    let printable = |b: &u8| (33..=126).contains(b);
    (!name.is_empty() && name.iter().all(printable)).then_some((name, colon))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, value) of every item, as text for readable failures.
    fn items(message: &[u8]) -> Vec<(Option<String>, String)> {
        fields(message)
            .map(|field| {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                (field.name.map(text), text(field.value))
            })
            .collect()
    }

    fn named(name: &str, value: &str) -> (Option<String>, String) {
        (Some(name.to_owned()), value.to_owned())
    }

    fn nameless(text: &str) -> (Option<String>, String) {
        (None, text.to_owned())
    }

    #[test]
    fn it_splits_at_the_first_empty_line() {
        type Case = (&'static [u8], &'static [u8], Option<&'static [u8]>);
        let cases: &[Case] = &[
            (
                b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore",
                b"A: 1\r\nB: 2\r\n",
                Some(b"body\r\n\r\nmore"),
            ),
            (b"A: 1\r\n\r\n", b"A: 1\r\n", Some(b"")),
            (b"\r\nA: 1\r\n", b"", Some(b"A: 1\r\n")),
            (b"A: 1\n\nbody", b"A: 1\n", Some(b"body")),
            (b"A: 1\r\n\nbody", b"A: 1\r\n", Some(b"body")),
        ];
        for &(message, head, body) in cases {
            assert_eq!(split(message), Parts { head, body }, "{message:?}");
        }
    }

    #[test]
    fn it_takes_a_bare_header_block_as_all_header() {
        for message in [&b"A: 1\r\nB: 2\r\n"[..], b"A: 1\r\nB: 2"] {
            assert_eq!(
                split(message),
                Parts {
                    head: message,
                    body: None
                }
            );
            assert_eq!(items(message), [named("A", " 1"), named("B", " 2")]);
        }
    }

    #[test]
    fn it_yields_nothing_for_empty_input() {
        assert_eq!(
            split(b""),
            Parts {
                head: b"",
                body: None
            }
        );
        assert_eq!(fields(b"").next(), None);
        assert_eq!(fields(b"\r\nA: 1\r\n").next(), None);
    }

    #[test]
    fn it_keeps_folded_lines_with_their_field() {
        let message = b"Subject: a\r\n  b\r\nTo: t\r\n\r\nX: body";
        let all: Vec<Field<'_>> = fields(message).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].name, Some(&b"Subject"[..]));
        assert_eq!(all[0].value, b" a\r\n  b");
        assert_eq!(all[0].raw, b"Subject: a\r\n  b\r\n");
        assert_eq!(all[0].range, 0..17);
        assert_eq!(
            all[0].lines().collect::<Vec<_>>(),
            [&b"Subject: a"[..], b"  b"]
        );
        assert_eq!(all[1].range, 17..24);
        assert_eq!(&message[all[1].range.clone()], all[1].raw);
    }

    #[test]
    fn it_folds_tabs_and_whitespace_only_lines() {
        let message = b"Received: from a\r\n\tby b\r\n \t\r\n\t\t; date\r\nX: y\r\n";
        assert_eq!(
            items(message),
            [
                named("Received", " from a\r\n\tby b\r\n \t\r\n\t\t; date"),
                named("X", " y"),
            ]
        );
    }

    #[test]
    fn it_passes_non_ascii_values_through_and_refuses_non_ascii_names() {
        let message = b"Subject: caf\xc3\xa9 \xff\r\n\t\xe2\x82\xac\r\nN\xc3\xa4me: v\r\n";
        let all: Vec<Field<'_>> = fields(message).collect();
        assert_eq!(all[0].name, Some(&b"Subject"[..]));
        assert_eq!(all[0].value, b" caf\xc3\xa9 \xff\r\n\t\xe2\x82\xac");
        assert_eq!(all[1].name, None);
        assert_eq!(all[1].value, b"N\xc3\xa4me: v");
    }

    #[test]
    fn it_yields_lines_without_a_field_name_unnamed_with_their_folds() {
        let message = b" orphan: x\r\n\tfold\r\nno colon\r\n cont\r\nDear Bob: hi\r\n: empty\r\nA\x0c: ff\r\nOk  \t: v\r\n";
        assert_eq!(
            items(message),
            [
                nameless(" orphan: x\r\n\tfold"),
                nameless("no colon\r\n cont"),
                nameless("Dear Bob: hi"),
                nameless(": empty"),
                nameless("A\x0c: ff"),
                named("Ok", " v"),
            ]
        );
        let orphans: Vec<bool> = fields(message).map(|f| f.is_orphan()).collect();
        assert_eq!(orphans, [true, false, false, false, false, false]);
    }

    #[test]
    fn it_ends_lines_at_every_lf_and_only_there() {
        // A bare LF starts a new line; a bare CR is an ordinary byte.
        assert_eq!(
            items(b"A: 1\nB: 2\rC: 3\r\n"),
            [named("A", " 1"), named("B", " 2\rC: 3")]
        );
        // An unterminated CR at the very end is content, not a terminator.
        assert_eq!(items(b"A: 1\r"), [named("A", " 1\r")]);
    }

    /// Random inputs over the bytes the rules care about: no panic, and the
    /// items tile the header block exactly, each consistent with its range.
    #[test]
    fn it_tiles_the_header_block_for_any_input() {
        for message in crate::message::random_inputs(b"a:: \t\r\n\n\xff", 40, 5_000, 11) {
            let head = split(&message).head;
            let mut covered = 0;
            for field in fields(&message) {
                assert_eq!(field.range.start, covered, "{message:?}");
                assert_eq!(&message[field.range.clone()], field.raw);
                let text = field
                    .raw
                    .strip_suffix(b"\n")
                    .map_or(field.raw, |r| r.strip_suffix(b"\r").unwrap_or(r));
                assert!(text.ends_with(field.value), "{message:?}");
                let lines: Vec<&[u8]> = field.lines().collect();
                assert!(!lines.is_empty() && !lines[0].is_empty());
                assert!(lines[1..].iter().all(|line| starts_with_fold(line)));
                covered = field.range.end;
            }
            assert_eq!(covered, head.len(), "{message:?}");
        }
    }
}
