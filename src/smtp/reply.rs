//! SMTP replies as values, so the session can be tested without sockets.

use std::fmt;

/// One SMTP reply, possibly multi-line. Text lines already carry their
/// enhanced status code where RFC 2034 asks for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// A reply with an RFC 3463 enhanced status code in front of the text.
    pub fn new(code: u16, status: &str, text: impl fmt::Display) -> Self {
        Self {
            code,
            lines: vec![format!("{status} {text}")],
        }
    }

    /// A reply without enhanced status code (greeting and EHLO, RFC 2034 §3).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            lines: vec![text.into()],
        }
    }

    pub fn multiline(code: u16, lines: Vec<String>) -> Self {
        debug_assert!(!lines.is_empty());
        Self { code, lines }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    /// The first line's text (with its enhanced status code, if any).
    pub fn first_line(&self) -> &str {
        self.lines.first().map_or("", String::as_str)
    }

    /// Appends the wire form (`250-...` continuation lines, CRLF endings).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}{}\r\n", self.code, sep, line).as_bytes());
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.encode(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_encodes_multiline_replies_with_dashes() {
        let r = Reply::multiline(250, vec!["a".into(), "b".into()]);
        assert_eq!(r.to_string(), "250-a\r\n250 b\r\n");
        assert_eq!(
            Reply::new(550, "5.1.1", "no").to_string(),
            "550 5.1.1 no\r\n"
        );
    }
}
