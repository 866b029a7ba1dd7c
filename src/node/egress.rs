//! Egress: what the node does to a message's bytes on the way out.
//!
//! Sanitize the header block (unless the message is our own loop cover,
//! whose marker must survive the trip and which carries nothing
//! identifying), count this hop in `X-Hop-Count` (so that mail cycling
//! between relays stops at a receiving node's intake; see
//! [`sanitize::HOP_COUNT`]), then pad to whole `-pad-block`s. One place owns this order,
//! so mail accepted by SMTP in direct mode and mail that left the mixnet
//! at this exit leave alike (both are delivered from the spool). The relay
//! transport calls it through its own `relay::route::OutgoingBody` trait.

use std::time::SystemTime;

use crate::message::padding;
use crate::node::mail_cover::CoverKey;
use crate::relay::route::OutgoingBody;
use crate::sanitize::{self, SanitizeConfig};
use crate::stats::Stats;

pub struct Egress {
    /// Exit header rewriting (`-sanitize`); `None` passes headers on.
    pub sanitize: Option<SanitizeConfig>,
    /// Outgoing DATA is padded to a multiple of this (0 = off).
    pub pad_block: usize,
    /// Recognises our own cover, which keeps its headers.
    pub cover_key: CoverKey,
    /// Counts the padding bytes added.
    pub stats: std::sync::Arc<Stats>,
}

impl Egress {
    /// The bytes that go on the wire for `original` (as stored), no longer
    /// than `limit` (the next hop's EHLO SIZE), or `None` when even the
    /// unpadded message is longer. Fresh randomness on every call, so two
    /// attempts of one message do not carry identical bytes.
    ///
    /// When whole-block padding would pass the limit, the message is padded
    /// up to exactly the limit instead (every message in that situation
    /// leaves at the same size), or, when there is no room for a padding
    /// header, sent unpadded: a next hop's refusal would drop it for good.
    pub fn prepare_at(
        &self,
        original: &[u8],
        limit: Option<usize>,
        message_key: Option<&[u8; 16]>,
        now: SystemTime,
    ) -> Option<Vec<u8>> {
        let mut rng = rand::rng();
        // Our own cover keeps its headers (its marker must survive the
        // trip) and gets no hop count: it comes straight back.
        let body = if self.cover_key.is_cover(original) {
            original.to_vec()
        } else {
            let hop = sanitize::hop_counter(original).saturating_add(1);
            let sanitized = match &self.sanitize {
                Some(cfg) => sanitize::sanitize(original, cfg, now, &mut rng, message_key),
                None => original.to_vec(),
            };
            sanitize::with_hop_count(&sanitized, hop)
        };
        let body_len = body.len();
        let padded = padding::pad(&body, self.pad_block, &mut rng);
        let out = match limit {
            Some(limit) if padded.len() > limit => {
                // SIZE counts the message as declared in MAIL FROM's SIZE=,
                // which is its length before dot-stuffing.
                let room = limit.checked_sub(body.len())?;
                padding::pad_by(&body, room, &mut rng).unwrap_or(body)
            }
            _ => padded,
        };
        Stats::add(
            &self.stats.padding_bytes,
            out.len().saturating_sub(body_len) as u64,
        );
        Some(out)
    }
}

impl OutgoingBody for Egress {
    fn prepare(
        &self,
        original: &[u8],
        limit: Option<usize>,
        message_key: Option<&[u8; 16]>,
    ) -> Option<Vec<u8>> {
        self.prepare_at(original, limit, message_key, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::address::OnionName;
    use crate::node::mail_cover;

    fn egress(sanitize: bool) -> Egress {
        Egress {
            sanitize: sanitize.then(|| SanitizeConfig {
                from: "Anonymous <nobody@x.onion>".into(),
                message_id_domain: "x.onion".into(),
            }),
            pad_block: 4096,
            cover_key: CoverKey::from_bytes([5; 32]),
            stats: std::sync::Arc::new(Stats::default()),
        }
    }

    #[test]
    fn it_counts_the_padding_it_adds() {
        let e = egress(false);
        let out = e.prepare(MAIL, None, None).unwrap();
        let unpadded = padding::strip(&out).len();
        assert!(out.len() > unpadded);
        assert_eq!(
            Stats::get(&e.stats.padding_bytes),
            (out.len() - unpadded) as u64
        );
    }

    const MAIL: &[u8] =
        b"From: alice@host.example\r\nX-Mailer: Tattler 1.0\r\nSubject: hi\r\n\r\nbody\r\n";

    #[test]
    fn it_sanitizes_then_pads_real_mail() {
        let out = egress(true).prepare(MAIL, None, None).unwrap();
        assert_eq!(crate::message::padding::wire_len(&out) % 4096, 0);
        let text = String::from_utf8_lossy(padding::strip(&out)).into_owned();
        assert!(!text.contains("alice@host.example"), "{text}");
        assert!(!text.contains("Tattler"), "{text}");
        assert!(text.contains("Subject: hi\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nbody\r\n"), "{text}");
    }

    #[test]
    fn it_passes_headers_on_when_sanitizing_is_off() {
        let out = egress(false).prepare(MAIL, None, None).unwrap();
        let (head, body) = MAIL.split_at(MAIL.len() - b"\r\nbody\r\n".len());
        let expected = [head, b"X-Hop-Count: 1\r\n", body].concat();
        assert_eq!(padding::strip(&out), expected);
    }

    #[test]
    fn it_counts_one_more_hop_than_the_message_arrived_with() {
        let arrived = b"Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n\
            X-Hop-Count: 7\r\nSubject: hi\r\n\r\nbody\r\n";
        for sanitizing in [true, false] {
            let out = egress(sanitizing).prepare(arrived, None, None).unwrap();
            let out = padding::strip(&out);
            assert_eq!(sanitize::hop_counter(out), 8, "sanitize {sanitizing}");
            let counters: Vec<_> = crate::message::header::fields(out)
                .filter(|f| f.has_name(sanitize::HOP_COUNT))
                .map(|f| f.raw.to_vec())
                .collect();
            assert_eq!(counters, [b"X-Hop-Count: 8\r\n".to_vec()]);
        }
        // Sanitized, the author's own Received lines are dropped and not
        // counted: the first pluto2 always writes 1.
        let fresh = b"Received: from a\r\nReceived: from b\r\nSubject: hi\r\n\r\nx\r\n";
        let out = egress(true).prepare(fresh, None, None).unwrap();
        assert_eq!(sanitize::hops(padding::strip(&out)), 1);
    }

    #[test]
    fn it_keeps_the_marker_of_its_own_cover() {
        let e = egress(true);
        let own = OnionName::from_seed(1);
        let m = mail_cover::make_message(&e.cover_key, &own, &mut StdRng::seed_from_u64(3));
        let out = e.prepare(&m.body, None, None).unwrap();
        assert!(e.cover_key.is_cover(padding::strip(&out)));
        assert_eq!(padding::strip(&out), &m.body[..]);
    }

    #[test]
    fn it_never_pads_past_the_next_hops_limit() {
        let e = egress(false);
        // What leaves before padding: the message with its hop count.
        let (head, body) = MAIL.split_at(MAIL.len() - b"\r\nbody\r\n".len());
        let counted = [head, b"X-Hop-Count: 1\r\n", body].concat();
        // Whole blocks fit: padded as always.
        let out = e.prepare(MAIL, Some(4096), None).unwrap();
        assert_eq!(padding::wire_len(&out), 4096);
        // A block would pass the limit: padded up to exactly the limit.
        let out = e.prepare(MAIL, Some(1000), None).unwrap();
        assert_eq!(out.len(), 1000);
        assert_eq!(padding::strip(&out), counted);
        // No room for a padding header: sent as it is.
        let out = e.prepare(MAIL, Some(counted.len() + 3), None).unwrap();
        assert_eq!(out, counted);
        let out = e.prepare(MAIL, Some(counted.len()), None).unwrap();
        assert_eq!(out, counted);
        // Too big even so.
        assert_eq!(e.prepare(MAIL, Some(counted.len() - 1), None), None);
    }
}
