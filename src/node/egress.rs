//! Egress: what the node does to a message's bytes on the way out.
//!
//! Sanitize the header block (unless the message is our own loop cover,
//! whose marker must survive the trip and which carries nothing
//! identifying), then pad to whole `-pad-block`s. One place owns this order,
//! so SMTP delivery today and the mixnet exit later leave alike. The relay
//! transport calls it through its own `relay::route::OutgoingBody` trait.

use std::time::SystemTime;

use crate::mix::padding;
use crate::node::cover::CoverKey;
use crate::relay::route::OutgoingBody;
use crate::sanitize::{self, SanitizeConfig};

pub struct Egress {
    /// Exit header rewriting (`-sanitize`); `None` passes headers on.
    pub sanitize: Option<SanitizeConfig>,
    /// Outgoing DATA is padded to a multiple of this (0 = off).
    pub pad_block: usize,
    /// Recognises our own cover, which keeps its headers.
    pub cover_key: CoverKey,
}

impl Egress {
    /// The bytes that go on the wire for `original` (as stored). Fresh
    /// randomness on every call, so two attempts of one message do not
    /// carry identical bytes.
    pub fn prepare_at(&self, original: &[u8], now: SystemTime) -> Vec<u8> {
        let mut rng = rand::rng();
        let sanitized;
        let body = match &self.sanitize {
            Some(cfg) if !self.cover_key.is_cover(original) => {
                sanitized = sanitize::sanitize(original, cfg, now, &mut rng);
                &sanitized[..]
            }
            _ => original,
        };
        padding::pad(body, self.pad_block, &mut rng)
    }
}

impl OutgoingBody for Egress {
    fn prepare(&self, original: &[u8]) -> Vec<u8> {
        self.prepare_at(original, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::address::OnionName;
    use crate::node::cover;

    fn egress(sanitize: bool) -> Egress {
        Egress {
            sanitize: sanitize.then(|| SanitizeConfig {
                from: "Anonymous <nobody@x.onion>".into(),
                message_id_domain: "x.onion".into(),
            }),
            pad_block: 4096,
            cover_key: CoverKey::from_bytes([5; 32]),
        }
    }

    const MAIL: &[u8] =
        b"From: alice@host.example\r\nX-Mailer: Tattler 1.0\r\nSubject: hi\r\n\r\nbody\r\n";

    #[test]
    fn it_sanitizes_then_pads_real_mail() {
        let out = egress(true).prepare(MAIL);
        assert_eq!(crate::mix::padding::wire_len(&out) % 4096, 0);
        let text = String::from_utf8_lossy(padding::strip(&out)).into_owned();
        assert!(!text.contains("alice@host.example"), "{text}");
        assert!(!text.contains("Tattler"), "{text}");
        assert!(text.contains("Subject: hi\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nbody\r\n"), "{text}");
    }

    #[test]
    fn it_passes_headers_on_when_sanitizing_is_off() {
        let out = egress(false).prepare(MAIL);
        assert_eq!(padding::strip(&out), MAIL);
    }

    #[test]
    fn it_keeps_the_marker_of_its_own_cover() {
        let e = egress(true);
        let own = OnionName::from_seed(1);
        let m = cover::make_message(&e.cover_key, &own, &mut StdRng::seed_from_u64(3));
        let out = e.prepare(&m.body);
        assert!(e.cover_key.is_cover(padding::strip(&out)));
        assert_eq!(padding::strip(&out), &m.body[..]);
    }
}
