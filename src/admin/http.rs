//! The little HTTP/1.1 the metrics endpoint speaks, sans I/O: request heads
//! in (bytes, hard caps), request values out; responses as bytes.
//!
//! A scraper sends `GET /metrics` with a few headers and no body, so this
//! reads exactly that and refuses the rest early: a head larger than
//! [`MAX_HEAD`] bytes or with more than [`MAX_HEADERS`] fields, any request
//! body, and versions other than 1.0 and 1.1. No HTTP crate: the whole
//! surface is this file, and every byte it accepts is unit-tested here.

use std::fmt::Write as _;

/// Longest request head (request line and header fields) read. A scrape's
/// head is a few hundred bytes; 8 KiB is what common servers allow.
pub const MAX_HEAD: usize = 8 * 1024;

/// Most header fields accepted in one request.
pub const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Any other well-formed method: answered 405.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path of the target, without its query.
    pub path: String,
    /// Whether the client keeps the connection for another request
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`).
    pub keep_alive: bool,
}

/// Why a request head was refused; each maps to the status sent before
/// the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request head longer than {MAX_HEAD} bytes or more than {MAX_HEADERS} fields")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("only HTTP/1.0 and HTTP/1.1 are spoken")]
    Version,
    #[error("requests with a body are not accepted")]
    Body,
}

impl HttpError {
    pub fn status(&self) -> Status {
        match self {
            HttpError::TooLarge => Status::HeadTooLarge,
            HttpError::Malformed(_) | HttpError::Body => Status::BadRequest,
            HttpError::Version => Status::VersionNotSupported,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeadTooLarge,
    ServiceUnavailable,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::HeadTooLarge => 431,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::HeadTooLarge => "Request Header Fields Too Large",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// Looks for a whole request head at the start of `buf`. `Ok(None)`: not
/// complete yet, read more; `Ok(Some((request, used)))`: `used` bytes
/// were the head (no body follows: a body is refused).
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    // Leading empty lines before a request line are ignored (RFC 9112 §2.2).
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let Some(end) = head_end(&buf[start..]) else {
        if buf.len() >= MAX_HEAD {
            return Err(HttpError::TooLarge);
        }
        return Ok(None);
    };
    if start + end > MAX_HEAD {
        return Err(HttpError::TooLarge);
    }
    let head = std::str::from_utf8(&buf[start..start + end])
        .map_err(|_| HttpError::Malformed("not ASCII"))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let (method, path, http11) = request_line_parts(request_line)?;
    let mut keep_alive = http11;
    let mut fields = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        fields += 1;
        if fields > MAX_HEADERS {
            return Err(HttpError::TooLarge);
        }
        let (name, value) = field(line)?;
        if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            return Err(HttpError::Body);
        }
    }
    let request = Request {
        method,
        path,
        keep_alive,
    };
    Ok(Some((request, start + end)))
}

/// Where the head ends: just past the empty line (CRLF CRLF, or bare LFs,
/// which RFC 9112 §2.2 lets a server accept).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `METHOD SP origin-form-target SP HTTP/1.x`.
fn request_line_parts(line: &str) -> Result<(Method, String, bool), HttpError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("request line"));
    };
    if !is_token(method) {
        return Err(HttpError::Malformed("method"));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::Malformed("target"));
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => return Err(HttpError::Version),
        _ => return Err(HttpError::Malformed("version")),
    };
    Ok((method, path, http11))
}

/// `name: value`, with no space before the colon (RFC 9112 §5.1) and no
/// folded continuation lines.
fn field(line: &str) -> Result<(&str, &str), HttpError> {
    if line.starts_with([' ', '\t']) {
        return Err(HttpError::Malformed("folded header field"));
    }
    let (name, value) = line
        .split_once(':')
        .ok_or(HttpError::Malformed("header field without a colon"))?;
    if !is_token(name) {
        return Err(HttpError::Malformed("header field name"));
    }
    if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(HttpError::Malformed("control character in a header field"));
    }
    Ok((name, value.trim_matches([' ', '\t'])))
}

/// A whole response. `head_only` leaves the body out (HEAD) but keeps its
/// length; `allow` is sent with 405.
pub fn response(
    status: Status,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: {}\r\n",
        status.code(),
        status.reason(),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    if status == Status::MethodNotAllowed {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, keep_alive: bool) -> Request {
        Request {
            method: Method::Get,
            path: path.into(),
            keep_alive,
        }
    }

    #[test]
    fn it_reads_a_scrape_request() {
        let raw = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9900\r\nUser-Agent: Prometheus/2.48\r\nAccept: text/plain\r\n\r\n";
        assert_eq!(parse(raw), Ok(Some((get("/metrics", true), raw.len()))));
    }

    #[test]
    fn it_waits_for_the_rest_of_an_incomplete_head() {
        let raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn it_leaves_what_follows_the_head_for_the_next_request() {
        let raw = b"GET /live HTTP/1.1\r\n\r\nGET /ready HTTP/1.1\r\n\r\n";
        let (first, used) = parse(raw).unwrap().unwrap();
        assert_eq!(first.path, "/live");
        let (second, _) = parse(&raw[used..]).unwrap().unwrap();
        assert_eq!(second.path, "/ready");
    }

    #[test]
    fn it_takes_bare_lf_and_leading_empty_lines_and_drops_the_query() {
        let raw = b"\r\nGET /metrics?x=1 HTTP/1.0\nConnection: keep-alive\n\n";
        assert_eq!(parse(raw), Ok(Some((get("/metrics", true), raw.len()))));
    }

    #[test]
    fn it_follows_the_connection_header() {
        let cases: [(&[u8], bool); 4] = [
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (
                b"GET / HTTP/1.0\r\nconnection: TE, Keep-Alive\r\n\r\n",
                true,
            ),
        ];
        for (raw, keep_alive) in cases {
            let (request, _) = parse(raw).unwrap().unwrap();
            assert_eq!(
                request.keep_alive,
                keep_alive,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn it_names_other_methods_for_a_405() {
        let (r, _) = parse(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.method, Method::Other);
        let (r, _) = parse(b"HEAD /live HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.method, Method::Head);
    }

    #[test]
    fn it_refuses_a_head_over_the_size_cap_before_it_ends() {
        let mut raw = b"GET /metrics HTTP/1.1\r\nX-Fill: ".to_vec();
        raw.resize(MAX_HEAD, b'a');
        assert_eq!(parse(&raw), Err(HttpError::TooLarge));
        // One byte short of the cap it still waits.
        assert_eq!(parse(&raw[..MAX_HEAD - 1]), Ok(None));
        // A head that ends, but past the cap, is refused too.
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&raw), Err(HttpError::TooLarge));
    }

    #[test]
    fn it_refuses_too_many_header_fields() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse(&raw), Err(HttpError::TooLarge));
    }

    #[test]
    fn it_refuses_malformed_heads() {
        let cases: [(&[u8], HttpError); 11] = [
            (b"GET\r\n\r\n", HttpError::Malformed("request line")),
            (
                b"GET  /x HTTP/1.1\r\n\r\n",
                HttpError::Malformed("request line"),
            ),
            (
                b"GET /x HTTP/1.1 extra\r\n\r\n",
                HttpError::Malformed("request line"),
            ),
            (b"G(T /x HTTP/1.1\r\n\r\n", HttpError::Malformed("method")),
            (
                b"GET http://h/x HTTP/1.1\r\n\r\n",
                HttpError::Malformed("target"),
            ),
            (b"GET /x HTTP/2.0\r\n\r\n", HttpError::Version),
            (b"GET /x SMTP/1.1\r\n\r\n", HttpError::Malformed("version")),
            (
                b"GET /x HTTP/1.1\r\nHost : x\r\n\r\n",
                HttpError::Malformed("header field name"),
            ),
            (
                b"GET /x HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
                HttpError::Malformed("folded header field"),
            ),
            (
                b"GET /x HTTP/1.1\r\nno colon\r\n\r\n",
                HttpError::Malformed("header field without a colon"),
            ),
            (
                b"GET /x HTTP/1.1\r\nX: a\x00b\r\n\r\n",
                HttpError::Malformed("control character in a header field"),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw), Err(want), "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(
            parse(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed("not ASCII"))
        );
    }

    #[test]
    fn it_refuses_request_bodies() {
        for raw in [
            &b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(parse(raw), Err(HttpError::Body));
        }
    }

    #[test]
    fn it_writes_responses_with_their_length_and_connection() {
        let r = response(Status::Ok, "text/plain", b"ready\n", false, true);
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nCache-Control: no-store\r\nConnection: keep-alive\r\n\r\nready\n"
        );
        let r = String::from_utf8(response(
            Status::MethodNotAllowed,
            "text/plain",
            b"no\n",
            true,
            false,
        ))
        .unwrap();
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");
        assert!(r.contains("\r\nContent-Length: 3\r\n"), "{r}");
        assert!(
            r.ends_with("Connection: close\r\nAllow: GET, HEAD\r\n\r\n"),
            "{r}"
        );
    }
}
