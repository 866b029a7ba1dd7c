//! The Sanitize group: whether identifying headers are rewritten and the
//! From header that replaces the author's. `-anon-from` goes into every
//! sanitized message, so it is checked to be one header line holding one
//! address; `NAME` in it is replaced by `apply_cross_group_rules`.

use clap::Args;

use super::{ConfigError, bad};

/// What of the author's identity is removed before mail leaves.
#[derive(Debug, Args)]
#[command(next_help_heading = "Sanitize")]
pub struct SanitizeArgs {
    /// Rewrite identifying headers and hide the client's envelope sender.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub sanitize: bool,
    /// From header that replaces the author's when -sanitize is on (NAME = this node's onion).
    #[arg(long, value_name = "HEADER", default_value = "Anonymous <nobody@NAME>")]
    pub anon_from: String,
    /// Mint a hashcash stamp of N bits (expected cost 2^N SHA-1) for -hashcash-for recipients whose mail has none (0 = off).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub hashcash_bits: u8,
    /// Recipients stamps are minted for: user@domain, domain or .domain, comma-separated.
    #[arg(long, value_name = "PATTERN", value_delimiter = ',')]
    pub hashcash_for: Vec<String>,
    /// Mail-to-news gateways (user@domain, domain or .domain, comma-separated): mail to them is not padded.
    #[arg(long, value_name = "PATTERN", value_delimiter = ',')]
    pub news_gateway: Vec<String>,
}

/// The most bits an exit mints: 2^28 SHA-1 computations are tens of
/// seconds of one core per message, already more than a relay should
/// spend on a stranger's mail; gateways ask for 20 to 26.
pub const MAX_HASHCASH_BITS: u8 = 28;

impl SanitizeArgs {
    /// -anon-from goes into every sanitized message as the From header, so
    /// it must be one header value: a single line (a CR or LF would start
    /// new headers in every message) holding one address, either alone or
    /// as `Display Name <address>`. `NAME` passes as the domain (it becomes
    /// the onion name later). Checked even with -sanitize=false, so that
    /// turning sanitizing on never meets a broken value.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_hashcash()?;
        let value = self.anon_from.as_str();
        let shown = value.escape_debug().to_string();
        let refuse = |reason: &str| Err(bad("-anon-from", &shown, reason));
        if value.chars().any(|c| c.is_control()) {
            return refuse(
                "must be one line without control characters (a CR or LF would add headers to every message)",
            );
        }
        let address = match (value.find('<'), value.rfind('>')) {
            (None, None) => value.trim(),
            (Some(open), Some(close))
                if open < close
                    && value[close + 1..].trim().is_empty()
                    && value.matches('<').count() == 1
                    && value.matches('>').count() == 1 =>
            {
                &value[open + 1..close]
            }
            _ => return refuse("must be an address or `Display Name <address>`"),
        };
        if address.contains(char::is_whitespace) {
            return refuse("the address in it must not contain spaces");
        }
        if let Err(e) = crate::address::check_sender(address, false) {
            return refuse(&format!(
                "{e}; give one address, e.g. `Anonymous <nobody@NAME>`"
            ));
        }
        Ok(())
    }
}

impl SanitizeArgs {
    /// Minting is bounded (an operator asking for 40 bits would stall
    /// every post for hours) and needs recipients to mint for. The
    /// patterns themselves are parsed by the daemon (`node::policy`).
    fn validate_hashcash(&self) -> Result<(), ConfigError> {
        let bits = self.hashcash_bits;
        if bits > MAX_HASHCASH_BITS {
            return Err(bad(
                "-hashcash-bits",
                &bits.to_string(),
                &format!(
                    "at most {MAX_HASHCASH_BITS} (each stamp costs about 2^N SHA-1 computations: 2^{bits} is {} per message)",
                    1u64 << bits.min(63)
                ),
            ));
        }
        if bits > 0 && self.hashcash_for.is_empty() {
            return Err(bad(
                "-hashcash-bits",
                &bits.to_string(),
                "needs -hashcash-for: the recipients to mint stamps for",
            ));
        }
        Ok(())
    }
}

/// Whether and how mail is sanitized before it leaves.
#[derive(Debug, Clone)]
pub struct SanitizePolicy {
    /// `Some(From header)` when exit headers are sanitized, with `NAME`
    /// already replaced by the node's name; `None` with -sanitize=false.
    pub anon_from: Option<String>,
    /// Bits of the stamps minted at the exit; 0 mints none.
    pub hashcash_bits: u8,
    /// `-hashcash-for` as given.
    pub hashcash_for: Vec<String>,
    /// `-news-gateway` as given.
    pub news_gateway: Vec<String>,
}

#[cfg(test)]
mod tests {
    use crate::address::OnionName;
    use crate::config::parse;
    use crate::config::testing::args;

    #[test]
    fn it_refuses_an_anon_from_that_is_not_one_address_on_one_line() {
        let name = OnionName::from_seed(6).to_string();
        let check = |value: &str| {
            parse(args(&["-name", &name, "-anon-from", value]))
                .unwrap()
                .daemon
                .validate()
                .map(|c| c.sanitize.anon_from)
                .map_err(|e| e.to_string())
        };
        for good in [
            "Anonymous <nobody@NAME>",
            "nobody@NAME",
            "\"Relay, NAME\" <x@example.org>",
            "<x@example.org>",
        ] {
            assert!(check(good).is_ok(), "{good}: {:?}", check(good));
        }
        for bad in [
            "Anonymous <nobody@NAME>\r\nBcc: victim@example.org",
            "Anonymous <nobody@NAME>\n",
            "Anon\0 <nobody@NAME>",
            "Anonymous",
            "Anonymous <>",
            "Anonymous <nobody@NAME",
            "A <x@y> <z@w>",
            "A <x@y> trailing",
            "two words@example.org",
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.starts_with("-anon-from "), "{bad:?}: {err}");
            assert!(!err.contains(['\r', '\n', '\0']), "{bad:?}: {err}");
        }
    }

    #[test]
    fn it_bounds_hashcash_bits_and_asks_for_recipients() {
        let name = OnionName::from_seed(6).to_string();
        let check = |extra: &[&str]| {
            let mut list = vec!["-name", name.as_str()];
            list.extend_from_slice(extra);
            parse(args(&list))
                .unwrap()
                .daemon
                .validate()
                .map(|c| (c.sanitize.hashcash_bits, c.sanitize.hashcash_for))
                .map_err(|e| e.to_string())
        };
        assert_eq!(check(&[]), Ok((0, vec![])));
        assert_eq!(
            check(&[
                "-hashcash-bits",
                "28",
                "-hashcash-for",
                "a@b.example,c.example"
            ]),
            Ok((28, vec!["a@b.example".into(), "c.example".into()]))
        );
        let err = check(&["-hashcash-bits", "29", "-hashcash-for", "a@b.example"]).unwrap_err();
        assert!(
            err.contains("at most 28") && err.contains("536870912"),
            "{err}"
        );
        let err = check(&["-hashcash-bits", "20"]).unwrap_err();
        assert!(err.contains("-hashcash-for"), "{err}");
    }
}
