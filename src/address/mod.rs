//! Mailbox and domain checks for the envelope (RFC 5321 §4.1.2 and
//! §4.5.3.1), with v3 onion names verified down to their checksum.
//!
//! Every sender and recipient a client names passes through
//! [`parse_mailbox`] before anything is spooled. Refusing a malformed or
//! mistyped address at MAIL/RCPT time lets the client hear the reason while
//! it is still connected; accepting it would only turn into a bounce hours
//! later, after Tor failed to reach a destination that never existed. The
//! checks are deliberately stricter than "whatever a resolver might accept":
//! this relay hands destinations to Tor by name, so it wants fully qualified
//! domain names and nothing else. Nothing here touches the network.

pub mod onion;

use std::fmt;

pub use onion::{OnionError, OnionName};

/// RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
const MAX_LOCAL: usize = 64;
/// RFC 5321 §4.5.3.1.2: a domain is at most 255 octets.
const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3 caps a path at 256 octets including the two angle
/// brackets, which leaves 254 for the address itself.
const MAX_ADDRESS: usize = 254;
/// RFC 1035 §2.3.4: a label is at most 63 octets.
const MAX_LABEL: usize = 63;

/// Why an address was refused.
///
/// The text of each variant goes into an SMTP reply, so it names the rule
/// that was broken and never repeats the input: the input may hold bytes
/// that must not appear on a reply line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    /// Longer than a path may be (254 octets without the brackets).
    #[error("the address is longer than {MAX_ADDRESS} octets")]
    TooLong,
    /// No `@`, so there is no domain to deliver to.
    #[error("the address has no @ and so no domain to deliver to")]
    MissingAt,
    /// Nothing before the `@`.
    #[error("the part before the @ is empty")]
    EmptyLocalPart,
    /// More than 64 octets before the `@`.
    #[error("the part before the @ is longer than {MAX_LOCAL} octets")]
    LocalPartTooLong,
    /// A control character (or, without SMTPUTF8, anything non-printable)
    /// in the local part: not even quoting makes these legal.
    #[error(
        "the part before the @ contains a control character, which is not allowed even in a quoted string"
    )]
    BadLocalPart,
    /// More than 255 octets after the `@`.
    #[error("the domain is longer than {MAX_DOMAIN} octets")]
    DomainTooLong,
    /// The domain is not a fully qualified host name; the reason says which
    /// rule it broke.
    #[error("the domain is not a valid fully qualified name: {0}")]
    BadDomain(&'static str),
    /// `[1.2.3.4]` or `[IPv6:...]` instead of a name.
    #[error(
        "address literals are not accepted: this relay delivers only to domain names through Tor"
    )]
    AddressLiteral,
    /// UTF-8 in the address although the client did not declare SMTPUTF8.
    #[error(
        "the address contains non-ASCII characters, which need the SMTPUTF8 parameter on MAIL FROM"
    )]
    NonAsciiWithoutSmtputf8,
    /// The domain ends in `.onion` but does not name a valid v3 service.
    #[error("{0}")]
    Onion(#[from] OnionError),
}

/// Where a mailbox lives, split by how the relay will reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// An onion service, named by its service label alone: Tor ignores any
    /// labels in front of it, so `mail.<name>.onion` and `<name>.onion`
    /// reach the same service. The subdomains are not dropped from the
    /// address, though (see [`Mailbox::domain_str`]): the service may tell
    /// its mailboxes apart by them.
    Onion(OnionName),
    /// A clearnet domain: ASCII letters lowercased (DNS is
    /// case-insensitive), non-ASCII labels kept exactly as given.
    Clearnet(String),
}

/// A checked envelope address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part without any quoting, exactly as the client sent it:
    /// its interpretation belongs to the destination server, so its case is
    /// preserved.
    pub local: String,
    pub domain: Domain,
    /// The domain as the client wrote it, ASCII letters lowercased (DNS and
    /// onion names are case-insensitive); onion subdomains are kept.
    written_domain: String,
}

impl Mailbox {
    /// The domain as it should be written after the `@`: the client's
    /// spelling with ASCII letters lowercased, subdomains included. An
    /// address is never rewritten into another one: `mail.<name>.onion`
    /// stays `mail.<name>.onion` in the spool, in the replay id and on the
    /// wire to the next hop.
    pub fn domain_str(&self) -> &str {
        &self.written_domain
    }
}

impl fmt::Display for Mailbox {
    /// Writes `local@domain`, quoting the local part when it is not a
    /// Dot-string, so that the result can be put back on the wire as is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local) {
            f.write_str(&self.local)?;
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                // RFC 5321 quoted-pairSMTP: only '"' and '\' need escaping
                // among the characters a local part can hold.
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain_str())
    }
}

/// RFC 5322 atext, extended by RFC 6531 with every non-ASCII character.
/// Non-ASCII is taken as atext unconditionally: a stored local part can
/// only contain it if SMTPUTF8 was in effect when it was parsed.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// RFC 5321 Dot-string: atoms of atext joined by single dots, with no dot
/// at either end.
fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Checks the local part. The parser has already removed any quoting, so
/// the widest legal set applies: what a quoted-string may carry, i.e.
/// printable ASCII including space, plus non-control UTF-8 under SMTPUTF8.
/// Dot-strings are a subset of that, so one check covers both forms.
fn check_local(local: &str, smtputf8: bool) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    if local.len() > MAX_LOCAL {
        return Err(AddressError::LocalPartTooLong);
    }
    for c in local.chars() {
        match c {
            ' '..='~' => {}
            c if c.is_ascii() || c.is_control() => return Err(AddressError::BadLocalPart),
            _ if !smtputf8 => return Err(AddressError::NonAsciiWithoutSmtputf8),
            _ => {}
        }
    }
    Ok(())
}

/// Validates an envelope address.
///
/// `address` is the path content as delivered by the smtp-proto parser:
/// without angle brackets, with quoting already removed from a quoted local
/// part (so the local part may contain spaces or other characters that are
/// only legal inside a quoted-string). `smtputf8` says whether the client
/// declared SMTPUTF8 on MAIL FROM (then UTF-8 is allowed in local part and
/// domain labels).
///
/// The address is split at the last `@`: a domain can never contain one,
/// while an unquoted local part may (`"a@b"@example.org`).
pub fn parse_mailbox(address: &str, smtputf8: bool) -> Result<Mailbox, AddressError> {
    // Checked first so that oversized input is refused before any work.
    if address.len() > MAX_ADDRESS {
        return Err(AddressError::TooLong);
    }
    let (local, domain) = address.rsplit_once('@').ok_or(AddressError::MissingAt)?;
    check_local(local, smtputf8)?;
    let parsed = parse_domain(domain, smtputf8)?;
    Ok(Mailbox {
        local: local.to_owned(),
        domain: parsed,
        written_domain: domain.to_ascii_lowercase(),
    })
}

/// Checks a reverse-path (MAIL FROM) for syntax only.
///
/// The sender is not a destination: with sanitizing on it is thrown away,
/// and no bounce is ever sent to it. So it is held to what a mail client
/// can produce rather than to what this relay could deliver to: a
/// single-label domain (`root@vm`, the default of many hosts), a numeric
/// last label, an address literal (`a@[192.0.2.1]`) and any name ending in
/// `.onion`, checksum or not, are all accepted. Refused is only what can
/// never be an address (no `@`, empty parts, over-long parts, control
/// characters, spaces in the domain) and non-ASCII without SMTPUTF8. The
/// address itself is kept by the caller exactly as given.
pub fn check_sender(address: &str, smtputf8: bool) -> Result<(), AddressError> {
    if address.len() > MAX_ADDRESS {
        return Err(AddressError::TooLong);
    }
    let (local, domain) = address.rsplit_once('@').ok_or(AddressError::MissingAt)?;
    check_local(local, smtputf8)?;
    if domain.is_empty() {
        return Err(AddressError::BadDomain("it is empty"));
    }
    if !smtputf8 && !domain.is_ascii() {
        return Err(AddressError::NonAsciiWithoutSmtputf8);
    }
    if let Some(inner) = domain.strip_prefix('[') {
        // RFC 5321 §4.1.3 address literal: printable ASCII inside brackets.
        let ok = inner.strip_suffix(']').is_some_and(|body| {
            !body.is_empty()
                && body
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'[' && b != b']')
        });
        return if ok {
            Ok(())
        } else {
            Err(AddressError::BadDomain(
                "an address literal must be [address] with nothing but printable characters inside",
            ))
        };
    }
    // A host's own name may carry underscores; anything else a label holds
    // is checked as for recipients, but one label is enough.
    for label in domain.split('.') {
        check_label_lenient(label, smtputf8)?;
    }
    Ok(())
}

/// Like [`check_label`], but also accepting `_` (host names set by hand
/// carry it, and a sender is never dialled).
fn check_label_lenient(label: &str, smtputf8: bool) -> Result<(), AddressError> {
    check_label(&label.replace('_', "u"), smtputf8)
}

/// Validates the part after the `@` on its own; see [`parse_mailbox`] for
/// the meaning of `smtputf8`.
///
/// A domain ending in `.onion` is judged as an onion destination: whatever
/// is wrong with its service name is reported as [`AddressError::Onion`],
/// which tells the user that the onion name itself is at fault rather than
/// the general syntax.
pub fn parse_domain(domain: &str, smtputf8: bool) -> Result<Domain, AddressError> {
    if domain.is_empty() {
        return Err(AddressError::BadDomain("it is empty"));
    }
    if domain.starts_with('[') {
        return Err(AddressError::AddressLiteral);
    }
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    // A root dot would make one destination have two spellings, and the
    // smtp-proto parser never needs it: refuse instead of stripping.
    if domain.ends_with('.') {
        return Err(AddressError::BadDomain("it ends with a dot"));
    }
    if let Some(front) = strip_onion_suffix(domain) {
        return parse_onion_domain(front, smtputf8);
    }
    if !smtputf8 && !domain.is_ascii() {
        return Err(AddressError::NonAsciiWithoutSmtputf8);
    }
    let lower = domain.to_ascii_lowercase();
    let mut labels = lower.split('.').peekable();
    let mut count = 0;
    let mut tld = "";
    while let Some(label) = labels.next() {
        check_label(label, smtputf8)?;
        count += 1;
        if labels.peek().is_none() {
            tld = label;
        }
    }
    // A single label ("localhost", "mailhost") only means something inside
    // one network; the relay needs a name that is the same everywhere.
    if count < 2 {
        return Err(AddressError::BadDomain(
            "it needs at least two labels, e.g. example.org",
        ));
    }
    // No TLD is numeric, so this catches dotted IPv4 written without the
    // brackets of an address literal.
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::BadDomain(
            "its last label is all digits (an IP address is not a domain name)",
        ));
    }
    Ok(Domain::Clearnet(lower))
}

/// Returns what comes before a case-insensitive `.onion` at the end.
fn strip_onion_suffix(domain: &str) -> Option<&str> {
    const SUFFIX: &str = ".onion";
    let split = domain.len().checked_sub(SUFFIX.len())?;
    // `get` fails instead of panicking when `split` is inside a character.
    let suffix = domain.get(split..)?;
    if suffix.eq_ignore_ascii_case(SUFFIX) {
        domain.get(..split)
    } else {
        None
    }
}

/// Handles `[subdomains.]<service>.onion`, given the part before `.onion`.
///
/// The service label goes through [`OnionName::parse`], so any fault in it
/// is reported as [`AddressError::Onion`]. Subdomains are accepted because
/// Tor ignores them, but they still have to be well-formed labels.
fn parse_onion_domain(front: &str, smtputf8: bool) -> Result<Domain, AddressError> {
    let (subdomains, service) = match front.rsplit_once('.') {
        Some((subdomains, service)) => (Some(subdomains), service),
        None => (None, front),
    };
    let name = OnionName::parse(&format!("{service}.onion"))?;
    if let Some(subdomains) = subdomains {
        if !smtputf8 && !subdomains.is_ascii() {
            return Err(AddressError::NonAsciiWithoutSmtputf8);
        }
        for label in subdomains.split('.') {
            check_label(label, smtputf8)?;
        }
    }
    Ok(Domain::Onion(name))
}

/// RFC 1035 "preferred name syntax" for one label (letters, digits and
/// inner hyphens), widened under SMTPUTF8 to non-ASCII letters and digits.
///
/// The length limit counts characters, so a non-ASCII label is judged by
/// what the user sees; the 255-octet limit on the whole domain still bounds
/// the input in bytes.
fn check_label(label: &str, smtputf8: bool) -> Result<(), AddressError> {
    if label.is_empty() {
        return Err(AddressError::BadDomain(
            "it has an empty label (two dots in a row, or a leading dot)",
        ));
    }
    if label.chars().count() > MAX_LABEL {
        return Err(AddressError::BadDomain(
            "a label is longer than 63 characters",
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(AddressError::BadDomain(
            "a label starts or ends with a hyphen",
        ));
    }
    let allowed = |c: char| {
        c.is_ascii_alphanumeric() || c == '-' || (smtputf8 && !c.is_ascii() && c.is_alphanumeric())
    };
    if !label.chars().all(allowed) {
        return Err(AddressError::BadDomain(
            "a label contains something other than letters, digits and hyphens",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid onion name for the given seed.
    fn onion(seed: u8) -> OnionName {
        OnionName::from_seed(seed)
    }

    fn bad_domain(reason: &'static str) -> AddressError {
        AddressError::BadDomain(reason)
    }

    const EMPTY_LABEL: &str = "it has an empty label (two dots in a row, or a leading dot)";
    const HYPHEN_EDGE: &str = "a label starts or ends with a hyphen";
    const BAD_CHAR: &str = "a label contains something other than letters, digits and hyphens";
    const ONE_LABEL: &str = "it needs at least two labels, e.g. example.org";
    const NUMERIC_TLD: &str = "its last label is all digits (an IP address is not a domain name)";

    #[test]
    fn it_accepts_ordinary_mailboxes() {
        // (input, local part kept, domain kept, as displayed)
        let cases = [
            (
                "user@example.org",
                "user",
                "example.org",
                "user@example.org",
            ),
            (
                "First.Last+tag@Mail.Example.ORG",
                "First.Last+tag",
                "mail.example.org",
                "First.Last+tag@mail.example.org",
            ),
            (
                "x@sub-domain.example.co.uk",
                "x",
                "sub-domain.example.co.uk",
                "x@sub-domain.example.co.uk",
            ),
            ("a@b.c", "a", "b.c", "a@b.c"),
            ("a@1.example", "a", "1.example", "a@1.example"),
            ("a@example.x1", "a", "example.x1", "a@example.x1"),
            (
                "a@xn--bcher-kva.example",
                "a",
                "xn--bcher-kva.example",
                "a@xn--bcher-kva.example",
            ),
            (
                "!#$%&'*+-/=?^_`{|}~@example.org",
                "!#$%&'*+-/=?^_`{|}~",
                "example.org",
                "!#$%&'*+-/=?^_`{|}~@example.org",
            ),
        ];
        for (input, local, domain, shown) in cases {
            let m = parse_mailbox(input, false).unwrap();
            assert_eq!(m.local, local, "{input}");
            assert_eq!(m.domain, Domain::Clearnet(domain.into()), "{input}");
            assert_eq!(m.domain_str(), domain, "{input}");
            assert_eq!(m.to_string(), shown, "{input}");
        }
    }

    #[test]
    fn it_splits_at_the_last_at_sign() {
        let m = parse_mailbox("a@b@example.org", false).unwrap();
        assert_eq!(m.local, "a@b");
        assert_eq!(m.domain_str(), "example.org");
        assert_eq!(m.to_string(), "\"a@b\"@example.org");
        // The last '@' leaves "c" as the domain, a single label.
        assert_eq!(parse_mailbox("a@b@c", false), Err(bad_domain(ONE_LABEL)));
    }

    #[test]
    fn it_accepts_quoted_string_content_and_quotes_it_again() {
        let cases = [
            ("..", "\"..\"@example.org"),
            (".lead", "\".lead\"@example.org"),
            ("trail.", "\"trail.\"@example.org"),
            ("dou..ble", "\"dou..ble\"@example.org"),
            ("name with space", "\"name with space\"@example.org"),
            (" ", "\" \"@example.org"),
            ("q\"uote", "\"q\\\"uote\"@example.org"),
            ("back\\slash", "\"back\\\\slash\"@example.org"),
            ("a(b)c", "\"a(b)c\"@example.org"),
            ("<x>", "\"<x>\"@example.org"),
        ];
        for (local, shown) in cases {
            let m = parse_mailbox(&format!("{local}@example.org"), false).unwrap();
            assert_eq!(m.local, local);
            assert_eq!(m.to_string(), shown, "{local:?}");
        }
    }

    #[test]
    fn it_rejects_adversarial_mailboxes() {
        let long_local = format!("{}@example.org", "a".repeat(65));
        let long_address = format!("a@{}.org", "b".repeat(300));
        let table: Vec<(&str, AddressError)> = vec![
            ("", AddressError::MissingAt),
            ("@", AddressError::EmptyLocalPart),
            ("@@", bad_domain("it is empty")),
            ("noat", AddressError::MissingAt),
            ("user.example.org", AddressError::MissingAt),
            ("@example.org", AddressError::EmptyLocalPart),
            ("a@", bad_domain("it is empty")),
            (&long_local, AddressError::LocalPartTooLong),
            (&long_address, AddressError::TooLong),
            ("a\0b@example.org", AddressError::BadLocalPart),
            ("a\rb@example.org", AddressError::BadLocalPart),
            ("a\nb@example.org", AddressError::BadLocalPart),
            ("a\r\nb@example.org", AddressError::BadLocalPart),
            ("a\tb@example.org", AddressError::BadLocalPart),
            ("a\x7fb@example.org", AddressError::BadLocalPart),
            ("a\x1bb@example.org", AddressError::BadLocalPart),
            ("a@exam\0ple.org", bad_domain(BAD_CHAR)),
            ("a@example.org\r\n", bad_domain(BAD_CHAR)),
            ("a@exa mple.org", bad_domain(BAD_CHAR)),
            ("a@exa\tmple.org", bad_domain(BAD_CHAR)),
            ("a@localhost", bad_domain(ONE_LABEL)),
            ("a@org", bad_domain(ONE_LABEL)),
            ("a@example.org.", bad_domain("it ends with a dot")),
            ("a@.", bad_domain("it ends with a dot")),
            ("a@..", bad_domain("it ends with a dot")),
            ("a@.example.org", bad_domain(EMPTY_LABEL)),
            ("a@ex..org", bad_domain(EMPTY_LABEL)),
            ("a@-ex.org", bad_domain(HYPHEN_EDGE)),
            ("a@ex-.org", bad_domain(HYPHEN_EDGE)),
            ("a@ex.-org", bad_domain(HYPHEN_EDGE)),
            ("a@ex.org-", bad_domain(HYPHEN_EDGE)),
            ("a@-.org", bad_domain(HYPHEN_EDGE)),
            ("a@ex_ample.org", bad_domain(BAD_CHAR)),
            ("a@ex*ample.org", bad_domain(BAD_CHAR)),
            ("a@1.2.3.4", bad_domain(NUMERIC_TLD)),
            ("a@example.123", bad_domain(NUMERIC_TLD)),
            ("a@[127.0.0.1]", AddressError::AddressLiteral),
            ("a@[IPv6:::1]", AddressError::AddressLiteral),
            ("a@[IPv6:2001:db8::1]", AddressError::AddressLiteral),
            ("a@[", AddressError::AddressLiteral),
            ("jörg@example.org", AddressError::NonAsciiWithoutSmtputf8),
            ("a@bücher.example", AddressError::NonAsciiWithoutSmtputf8),
        ];
        for (input, expected) in table {
            assert_eq!(parse_mailbox(input, false), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn it_refuses_control_characters_even_with_smtputf8() {
        for local in [
            "a\0b", "a\rb", "a\nb", "a\tb", "a\x7fb", "a\u{85}b", "a\u{9b}b",
        ] {
            assert_eq!(
                parse_mailbox(&format!("{local}@example.org"), true),
                Err(AddressError::BadLocalPart),
                "{local:?}"
            );
        }
    }

    #[test]
    fn it_enforces_length_limits_at_their_boundaries() {
        let local_64 = format!("{}@example.org", "a".repeat(64));
        assert!(parse_mailbox(&local_64, false).is_ok());
        // 33 two-octet characters: 66 octets, although only 33 characters.
        let wide_local = format!("{}@example.org", "é".repeat(33));
        assert_eq!(
            parse_mailbox(&wide_local, true),
            Err(AddressError::LocalPartTooLong)
        );

        let label_63 = format!("a@{}.org", "b".repeat(63));
        assert!(parse_mailbox(&label_63, false).is_ok());
        let label_64 = format!("a@{}.org", "b".repeat(64));
        assert_eq!(
            parse_mailbox(&label_64, false),
            Err(bad_domain("a label is longer than 63 characters"))
        );

        // 254 octets exactly: 1 + 1 + 60*4 + 12.
        let domain = format!("{}examples.org", "abc.".repeat(60));
        let at_limit = format!("a@{domain}");
        assert_eq!(at_limit.len(), 254);
        assert!(parse_mailbox(&at_limit, false).is_ok());
        let over = format!("ab@{domain}");
        assert_eq!(parse_mailbox(&over, false), Err(AddressError::TooLong));

        // Only reachable through parse_domain: inside a mailbox the 254-octet
        // address limit always strikes first.
        let long_domain = format!("{}example.org", "abcd.".repeat(49));
        assert_eq!(long_domain.len(), 256);
        assert_eq!(
            parse_domain(&long_domain, false),
            Err(AddressError::DomainTooLong)
        );
        assert!(parse_domain(&long_domain[1..], false).is_ok());
    }

    #[test]
    fn it_accepts_utf8_only_when_smtputf8_was_declared() {
        let cases = [
            ("jörg@bücher.example", "jörg", "bücher.example"),
            ("用户@例子.广告", "用户", "例子.广告"),
            ("a@Bücher.Example", "a", "bücher.example"),
            // Non-ASCII case is kept as given; only ASCII is folded.
            ("a@ÄRGER.example", "a", "Ärger.example"),
        ];
        for (input, local, domain) in cases {
            let m = parse_mailbox(input, true).unwrap();
            assert_eq!(m.local, local, "{input}");
            assert_eq!(m.domain, Domain::Clearnet(domain.into()), "{input}");
            assert_eq!(m.to_string(), format!("{local}@{domain}"));
            assert_eq!(
                parse_mailbox(input, false),
                Err(AddressError::NonAsciiWithoutSmtputf8),
                "{input}"
            );
        }
        // With SMTPUTF8 a label still holds only letters and digits.
        for input in [
            "a@☃.example",
            "a@ex😀.org",
            "a@ex\u{a0}ample.org",
            "a@ex\u{200b}.org",
        ] {
            assert_eq!(
                parse_mailbox(input, true),
                Err(bad_domain(BAD_CHAR)),
                "{input}"
            );
        }
        // A 63-character non-ASCII label is within the limit.
        let wide_label = format!("a@{}.de", "ü".repeat(63));
        assert!(parse_mailbox(&wide_label, true).is_ok());
    }

    #[test]
    fn it_keeps_onion_subdomains_and_names_the_service() {
        let name = onion(1);
        let s = name.as_str();
        // (as given, as kept)
        let cases = [
            (s.to_string(), s.to_string()),
            (s.to_ascii_uppercase(), s.to_string()),
            (format!("mail.{s}"), format!("mail.{s}")),
            (
                format!("A.b-c.d.{}", s.to_ascii_uppercase()),
                format!("a.b-c.d.{s}"),
            ),
        ];
        for (given, kept) in cases {
            let m = parse_mailbox(&format!("User@{given}"), false).unwrap();
            assert_eq!(m.domain, Domain::Onion(name.clone()), "{given}");
            assert_eq!(m.local, "User");
            assert_eq!(m.domain_str(), kept);
            assert_eq!(m.to_string(), format!("User@{kept}"));
        }
        let real = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion";
        let m = parse_mailbox(&format!("x@{}", real.to_ascii_uppercase()), false).unwrap();
        assert_eq!(m.domain_str(), real);
    }

    #[test]
    fn it_accepts_any_sender_a_mail_client_can_produce() {
        let broken_onion = format!("x{}", &onion(2).to_string()[1..]);
        for sender in [
            "root@vm",
            "sender@test.onion",
            &format!("a@{broken_onion}"),
            "a@[192.0.2.1]",
            "a@[IPv6:2001:db8::1]",
            "a@1.2.3.4",
            "a@my_host.lan",
            "user@example.org",
            "quoted local@example.org",
        ] {
            assert_eq!(check_sender(sender, false), Ok(()), "{sender}");
        }
        assert_eq!(check_sender("jörg@bücher", true), Ok(()));
    }

    #[test]
    fn it_refuses_senders_that_are_no_address_at_all() {
        let long = format!("a@{}", "b".repeat(260));
        let table: Vec<(&str, AddressError)> = vec![
            ("postmaster", AddressError::MissingAt),
            ("@vm", AddressError::EmptyLocalPart),
            ("a@", bad_domain("it is empty")),
            ("a@vm.", bad_domain(EMPTY_LABEL)),
            ("a@exa mple", bad_domain(BAD_CHAR)),
            ("a@ex\r\nample", bad_domain(BAD_CHAR)),
            ("a\nb@vm", AddressError::BadLocalPart),
            (&long, AddressError::TooLong),
            ("jörg@vm", AddressError::NonAsciiWithoutSmtputf8),
            ("a@bücher", AddressError::NonAsciiWithoutSmtputf8),
        ];
        for (input, expected) in table {
            assert_eq!(check_sender(input, false), Err(expected), "{input:?}");
        }
        for literal in ["a@[", "a@[]", "a@[1.2.3.4", "a@[1 2]"] {
            assert!(
                matches!(
                    check_sender(literal, false),
                    Err(AddressError::BadDomain(_))
                ),
                "{literal}"
            );
        }
    }

    #[test]
    fn it_reports_broken_onion_names_as_onion_errors() {
        let good = onion(3).to_string();
        let label = &good[..56];
        let flipped = format!(
            "{}{}",
            if label.starts_with('a') { 'b' } else { 'a' },
            &good[1..]
        );
        let mut raw = [9u8; 35];
        raw[34] = 2;
        let v2 = format!(
            "{}.onion",
            data_encoding::BASE32_NOPAD
                .encode(&raw)
                .to_ascii_lowercase()
        );
        let table: Vec<(String, OnionError)> = vec![
            (flipped, OnionError::BadChecksum),
            (v2, OnionError::BadVersion { version: 2 }),
            (".onion".into(), OnionError::WrongLength { len: 0 }),
            ("short.onion".into(), OnionError::WrongLength { len: 5 }),
            (
                "facebookcorewwwi.onion".into(),
                OnionError::WrongLength { len: 16 },
            ),
            (
                format!("{}.onion", &label[1..]),
                OnionError::WrongLength { len: 55 },
            ),
            (
                format!("{label}a.onion"),
                OnionError::WrongLength { len: 57 },
            ),
            ("x..onion".into(), OnionError::WrongLength { len: 0 }),
            (format!("1{}", &good[1..]), OnionError::NotBase32),
            (format!("0{}", &good[1..]), OnionError::NotBase32),
            (format!("8{}", &good[1..]), OnionError::NotBase32),
            (format!("-{}", &good[1..]), OnionError::NotBase32),
            (format!("é{}", &good[1..]), OnionError::NotBase32),
        ];
        for (domain, expected) in &table {
            for smtputf8 in [false, true] {
                let got = parse_mailbox(&format!("x@{domain}"), smtputf8);
                assert!(
                    matches!(&got, Err(AddressError::Onion(e)) if e == expected),
                    "{domain:?}: expected {expected:?}, got {got:?}"
                );
            }
        }
    }

    #[test]
    fn it_checks_labels_in_front_of_an_onion_name() {
        let s = onion(4).to_string();
        let table = [
            (format!("-x.{s}"), false, bad_domain(HYPHEN_EDGE)),
            (format!("x_y.{s}"), false, bad_domain(BAD_CHAR)),
            (format!("a..b.{s}"), false, bad_domain(EMPTY_LABEL)),
            (format!(".{s}"), false, bad_domain(EMPTY_LABEL)),
            (
                format!("bücher.{s}"),
                false,
                AddressError::NonAsciiWithoutSmtputf8,
            ),
            (format!("{s}."), false, bad_domain("it ends with a dot")),
        ];
        for (domain, smtputf8, expected) in table {
            assert_eq!(
                parse_mailbox(&format!("x@{domain}"), smtputf8),
                Err(expected),
                "{domain}"
            );
        }
        assert!(parse_mailbox(&format!("x@bücher.{s}"), true).is_ok());
    }

    #[test]
    fn it_never_panics_on_arbitrary_input() {
        let alphabet: Vec<char> = "ab.-@[]\"\\ 0129éü☃\u{0}\r\n\t\u{85}ONIONonion"
            .chars()
            .collect();
        let onion_name = onion(5).to_string();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 300) as usize;
            let mut s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if next() % 4 == 0 {
                s.push('@');
                s.push_str(&onion_name);
            }
            for smtputf8 in [false, true] {
                if let Ok(m) = parse_mailbox(&s, smtputf8) {
                    // What was accepted must print and, printed, stay sane.
                    let shown = m.to_string();
                    assert!(!shown.contains(['\r', '\n', '\0']), "{s:?}");
                    assert!(m.local.len() <= MAX_LOCAL);
                    assert!(!m.domain_str().ends_with('.'));
                }
            }
        }
    }
}
