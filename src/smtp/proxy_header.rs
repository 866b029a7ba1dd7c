//! PROXY protocol v1 header, as sent by Tor's
//! `HiddenServiceExportCircuitID haproxy`.
//!
//! Behind a hidden service every client appears to come from 127.0.0.1, so
//! rate limiting by peer address would lump all of Tor together. Tor instead
//! writes one PROXY line per connection whose source address encodes the
//! circuit id (`fc00:dead:beef:4dad::<id>`); limiting per source address then
//! limits per circuit.

use std::net::IpAddr;

/// The v1 specification caps a header at 107 bytes including CRLF.
pub const MAX_HEADER: usize = 107;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("connection did not start with a PROXY v1 header")]
    Missing,
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

/// Client identity announced by the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySource {
    Address(IpAddr),
    /// `PROXY UNKNOWN`: the proxy could not tell; the real peer is used.
    Unknown,
}

/// Looks for a complete header at the start of `input`. `Ok(None)` means
/// more bytes are needed; on success returns the source and the header length.
pub fn parse(input: &[u8]) -> Result<Option<(ProxySource, usize)>, ProxyHeaderError> {
    let probe = &input[..input.len().min(6)];
    if !b"PROXY ".starts_with(probe) {
        return Err(ProxyHeaderError::Missing);
    }
    let Some(lf) = memchr::memchr(b'\n', &input[..input.len().min(MAX_HEADER)]) else {
        if input.len() >= MAX_HEADER {
            return Err(ProxyHeaderError::TooLong);
        }
        return Ok(None);
    };
    let line = input[..lf]
        .strip_suffix(b"\r")
        .ok_or(ProxyHeaderError::Malformed("line must end with CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY", checked above
    let source = match fields.next() {
        Some("UNKNOWN") => ProxySource::Unknown,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let parts: Vec<&str> = fields.collect();
            let [src, dst, sport, dport] = parts[..] else {
                return Err(ProxyHeaderError::Malformed(
                    "expected 4 fields after the protocol",
                ));
            };
            let src: IpAddr = src
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("bad source address"))?;
            let dst: IpAddr = dst
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("bad destination address"))?;
            if (proto == "TCP4") != (src.is_ipv4() && dst.is_ipv4())
                || (proto == "TCP6") != (src.is_ipv6() && dst.is_ipv6())
            {
                return Err(ProxyHeaderError::Malformed(
                    "address family does not match protocol",
                ));
            }
            for port in [sport, dport] {
                let valid = !port.is_empty()
                    && (port == "0" || !port.starts_with('0'))
                    && port.parse::<u16>().is_ok();
                if !valid {
                    return Err(ProxyHeaderError::Malformed("bad port"));
                }
            }
            ProxySource::Address(src)
        }
        _ => return Err(ProxyHeaderError::Malformed("unknown protocol")),
    };
    Ok(Some((source, lf + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_the_circuit_address_tor_sends() {
        let h = b"PROXY TCP6 fc00:dead:beef:4dad::0:1a2b ::1 65535 25\r\nEHLO x\r\n";
        let (src, len) = parse(h).unwrap().unwrap();
        assert_eq!(
            src,
            ProxySource::Address("fc00:dead:beef:4dad::1a2b".parse().unwrap())
        );
        assert_eq!(&h[len..], b"EHLO x\r\n");
    }

    #[test]
    fn it_accepts_tcp4_and_unknown() {
        let (src, _) = parse(b"PROXY TCP4 10.1.2.3 127.0.0.1 5000 25\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(src, ProxySource::Address("10.1.2.3".parse().unwrap()));
        let (src, _) = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(src, ProxySource::Unknown);
    }

    #[test]
    fn it_waits_for_the_rest_of_a_partial_header() {
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(None));
    }

    #[test]
    fn it_rejects_missing_and_malformed_headers_with_the_reason() {
        use ProxyHeaderError::{Malformed, Missing};
        let table: &[(&[u8], ProxyHeaderError)] = &[
            (b"EHLO x\r\n", Missing),
            (b"proxy TCP4 1.2.3.4 127.0.0.1 5000 25\r\n", Missing),
            (
                b"PROXY TCP4 1.2.3.4 127.0.0.1 5000\r\n",
                Malformed("expected 4 fields after the protocol"),
            ),
            (
                b"PROXY TCP4 1.2.3.4  127.0.0.1 5000 25\r\n",
                Malformed("expected 4 fields after the protocol"),
            ),
            (
                b"PROXY TCP4 not-an-ip 127.0.0.1 5000 25\r\n",
                Malformed("bad source address"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 localhost 5000 25\r\n",
                Malformed("bad destination address"),
            ),
            (
                b"PROXY TCP4 ::1 127.0.0.1 5000 25\r\n",
                Malformed("address family does not match protocol"),
            ),
            (
                b"PROXY TCP6 1.2.3.4 ::1 5000 25\r\n",
                Malformed("address family does not match protocol"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 127.0.0.1 70000 25\r\n",
                Malformed("bad port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 127.0.0.1 050 25\r\n",
                Malformed("bad port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 127.0.0.1 5000 \r\n",
                Malformed("bad port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 127.0.0.1 5000 25\n",
                Malformed("line must end with CRLF"),
            ),
            (
                b"PROXY TCP4 \xff.2.3.4 127.0.0.1 5000 25\r\n",
                Malformed("not ASCII"),
            ),
            (
                b"PROXY UDP4 1.2.3.4 127.0.0.1 5000 25\r\n",
                Malformed("unknown protocol"),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(
                parse(input).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'A'; 200]].concat();
        assert_eq!(parse(&long), Err(ProxyHeaderError::TooLong));
    }
}
