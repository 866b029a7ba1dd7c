//! Mailbox and domain checks (RFC 5321 §4.1.2) and v3 onion names.
//!
//! Everything a client names as a destination passes through here before
//! it can reach the spool, so a typo or a hostile string is refused at RCPT
//! time with a reason instead of failing later, silently, inside Tor.

pub mod onion;

use std::fmt;

pub use onion::{OnionError, OnionName};

/// RFC 5321 §4.5.3.1.1: local part at most 64 octets.
const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: domain at most 255 octets.
const MAX_DOMAIN: usize = 255;
/// A path is at most 256 octets including the angle brackets.
const MAX_ADDRESS: usize = 254;
const MAX_LABEL: usize = 63;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("address is longer than {MAX_ADDRESS} octets")]
    TooLong,
    #[error("address has no @domain part")]
    MissingAt,
    #[error("local part is empty")]
    EmptyLocalPart,
    #[error("local part is longer than {MAX_LOCAL_PART} octets")]
    LocalPartTooLong,
    #[error("local part contains characters not allowed in a mailbox")]
    BadLocalPart,
    #[error("domain is longer than {MAX_DOMAIN} octets")]
    DomainTooLong,
    #[error("domain is not a valid fully qualified name: {0}")]
    BadDomain(&'static str),
    #[error(
        "address literals are not accepted: this relay delivers only to domain names through Tor"
    )]
    AddressLiteral,
    #[error("non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM")]
    NonAsciiWithoutSmtputf8,
    #[error("{0}")]
    Onion(#[from] OnionError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// An onion service; subdomains in front of it are dropped, as Tor does.
    Onion(OnionName),
    /// A clearnet name, lowercased where ASCII.
    Clearnet(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub local: String,
    pub domain: Domain,
}

impl Mailbox {
    pub fn domain_str(&self) -> &str {
        match &self.domain {
            Domain::Onion(o) => o.as_str(),
            Domain::Clearnet(d) => d,
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local, true) {
            write!(f, "{}@{}", self.local, self.domain_str())
        } else {
            let quoted = self.local.replace('\\', "\\\\").replace('"', "\\\"");
            write!(f, "\"{quoted}\"@{}", self.domain_str())
        }
    }
}

/// RFC 5322 atext, plus any non-ASCII character when SMTPUTF8 is in use
/// (RFC 6531 extends atext with UTF8-non-ascii).
fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (utf8 && !c.is_ascii() && !c.is_control())
}

fn is_dot_string(s: &str, utf8: bool) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(|c| is_atext(c, utf8)))
}

/// Content a quoted-string may carry once unquoted: printable ASCII
/// (space included) and, with SMTPUTF8, non-ASCII non-control characters.
fn is_quotable(s: &str, utf8: bool) -> bool {
    s.chars()
        .all(|c| matches!(c, ' '..='~') || (utf8 && !c.is_ascii() && !c.is_control()))
}

/// Validates a path as the smtp-proto parser hands it over: no angle
/// brackets, quoting of the local part already removed.
pub fn parse_mailbox(address: &str, smtputf8: bool) -> Result<Mailbox, AddressError> {
    if address.len() > MAX_ADDRESS {
        return Err(AddressError::TooLong);
    }
    if !smtputf8 && !address.is_ascii() {
        return Err(AddressError::NonAsciiWithoutSmtputf8);
    }
    let (local, domain) = address.rsplit_once('@').ok_or(AddressError::MissingAt)?;
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    if !is_dot_string(local, smtputf8) && !is_quotable(local, smtputf8) {
        return Err(AddressError::BadLocalPart);
    }
    Ok(Mailbox {
        local: local.to_string(),
        domain: parse_domain(domain, smtputf8)?,
    })
}

/// Validates a destination domain; `.onion` names must verify as v3.
pub fn parse_domain(domain: &str, smtputf8: bool) -> Result<Domain, AddressError> {
    if domain.starts_with('[') {
        return Err(AddressError::AddressLiteral);
    }
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    if domain.is_empty() {
        return Err(AddressError::BadDomain("it is empty"));
    }
    if domain.ends_with('.') {
        return Err(AddressError::BadDomain("it ends with a dot"));
    }
    let lower = domain.to_lowercase();
    let labels: Vec<&str> = lower.split('.').collect();
    if labels.len() < 2 {
        return Err(AddressError::BadDomain(
            "it needs at least two labels, e.g. example.org",
        ));
    }
    for label in &labels {
        check_label(label, smtputf8)?;
    }
    let tld = labels[labels.len() - 1];
    if tld.chars().all(|c| c.is_ascii_digit()) {
        return Err(AddressError::BadDomain("the top-level label is numeric"));
    }
    if tld == "onion" {
        let service = labels[labels.len() - 2];
        return Ok(Domain::Onion(OnionName::parse(&format!(
            "{service}.onion"
        ))?));
    }
    Ok(Domain::Clearnet(lower))
}

fn check_label(label: &str, smtputf8: bool) -> Result<(), AddressError> {
    if label.is_empty() {
        return Err(AddressError::BadDomain("it has an empty label"));
    }
    if label.len() > MAX_LABEL {
        return Err(AddressError::BadDomain("a label is longer than 63 octets"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(AddressError::BadDomain(
            "a label starts or ends with a hyphen",
        ));
    }
    let ok = label.chars().all(|c| {
        c.is_ascii_alphanumeric() || c == '-' || (smtputf8 && !c.is_ascii() && c.is_alphanumeric())
    });
    if !ok {
        return Err(AddressError::BadDomain(
            "a label has characters other than letters, digits and hyphens",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn onion(seed: u8) -> String {
        OnionName::from_public_key(&[seed; 32]).to_string()
    }

    #[test]
    fn it_accepts_ordinary_and_onion_mailboxes() {
        let o = onion(1);
        let cases = [
            ("user@example.org", "user@example.org"),
            (
                "First.Last+tag@Mail.Example.ORG",
                "First.Last+tag@mail.example.org",
            ),
            ("x@sub-domain.example.co.uk", "x@sub-domain.example.co.uk"),
            (
                "name with space@example.org",
                "\"name with space\"@example.org",
            ),
        ];
        for (input, shown) in cases {
            assert_eq!(
                parse_mailbox(input, false).unwrap().to_string(),
                shown,
                "{input}"
            );
        }
        let m = parse_mailbox(&format!("a@{}", o.to_uppercase()), false).unwrap();
        assert_eq!(m.domain, Domain::Onion(OnionName::parse(&o).unwrap()));
        let sub = parse_mailbox(&format!("a@mail.{o}"), false).unwrap();
        assert_eq!(sub.domain_str(), o);
    }

    #[test]
    fn it_rejects_adversarial_mailboxes() {
        let long_local = format!("{}@example.org", "a".repeat(65));
        let long_all = format!("a@{}.org", "b".repeat(300));
        let table: Vec<(&str, AddressError)> = vec![
            ("", AddressError::MissingAt),
            ("@", AddressError::EmptyLocalPart),
            ("noat", AddressError::MissingAt),
            ("@example.org", AddressError::EmptyLocalPart),
            ("a@", AddressError::BadDomain("it is empty")),
            (&long_local, AddressError::LocalPartTooLong),
            (&long_all, AddressError::TooLong),
            ("a\0b@example.org", AddressError::BadLocalPart),
            ("a\rb@example.org", AddressError::BadLocalPart),
            ("a\nb@example.org", AddressError::BadLocalPart),
            ("a\tb@example.org", AddressError::BadLocalPart),
            (
                "a@localhost",
                AddressError::BadDomain("it needs at least two labels, e.g. example.org"),
            ),
            (
                "a@example.org.",
                AddressError::BadDomain("it ends with a dot"),
            ),
            (
                "a@.example.org",
                AddressError::BadDomain("it has an empty label"),
            ),
            (
                "a@ex..org",
                AddressError::BadDomain("it has an empty label"),
            ),
            (
                "a@-ex.org",
                AddressError::BadDomain("a label starts or ends with a hyphen"),
            ),
            (
                "a@ex-.org",
                AddressError::BadDomain("a label starts or ends with a hyphen"),
            ),
            (
                "a@ex_ample.org",
                AddressError::BadDomain(
                    "a label has characters other than letters, digits and hyphens",
                ),
            ),
            (
                "a@1.2.3.4",
                AddressError::BadDomain("the top-level label is numeric"),
            ),
            ("a@[127.0.0.1]", AddressError::AddressLiteral),
            ("a@[IPv6:::1]", AddressError::AddressLiteral),
            ("jörg@example.org", AddressError::NonAsciiWithoutSmtputf8),
            (
                "a@short.onion",
                AddressError::Onion(OnionError::WrongLength { len: 5 }),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(parse_mailbox(input, false), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn it_quotes_local_parts_that_are_not_dot_strings() {
        for local in [".lead", "trail.", "dou..ble", "a@b", "q\"uote"] {
            let m = parse_mailbox(&format!("{local}@example.org"), false).unwrap();
            assert!(m.to_string().starts_with('"'), "{local}");
        }
    }

    #[test]
    fn it_allows_utf8_only_with_smtputf8() {
        let m = parse_mailbox("jörg@bücher.example", true).unwrap();
        assert_eq!(m.domain_str(), "bücher.example");
        assert_eq!(
            parse_mailbox("a@bücher.example", false),
            Err(AddressError::NonAsciiWithoutSmtputf8)
        );
    }

    #[test]
    fn it_reports_a_bad_onion_checksum() {
        let good = onion(3);
        let bad = format!(
            "{}{}",
            if good.starts_with('a') { 'b' } else { 'a' },
            &good[1..]
        );
        assert_eq!(
            parse_mailbox(&format!("x@{bad}"), false),
            Err(AddressError::Onion(OnionError::BadChecksum))
        );
    }
}
