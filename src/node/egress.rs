//! Egress: what the node does to a message's bytes on the way out.
//!
//! Sanitize the header block (unless the message is our own loop cover,
//! whose marker must survive the trip and which carries nothing
//! identifying), count this hop in `X-Hop-Count` (so that mail cycling
//! between relays stops at a receiving node's intake; see
//! [`sanitize::HOP_COUNT`]), then pad to whole `-pad-block`s, unless the
//! message is a news post (below). One place owns this order,
//! so mail accepted by SMTP in direct mode and mail that left the mixnet
//! at this exit leave alike (both are delivered from the spool). The relay
//! transport calls it through its own `relay::route::OutgoingBody` trait.
//!
//! A news post is not padded: a mail-to-news gateway publishes it, so
//! everyone sees its size anyway, and 8 KiB of random base64 on every
//! article litters Usenet. A message is a news post when it carries a
//! `Newsgroups:` header (how dizum-style gateways are addressed) or goes
//! to a recipient matching `-news-gateway` (gateways that take the group
//! from the address, `alt.test@gateway`).

use std::time::SystemTime;

use tracing::info;

use crate::message::{hashcash, header, padding};
use crate::node::mail_cover::CoverKey;
use crate::node::policy::RecipientPatterns;
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
    /// Recipients that are mail-to-news gateways (`-news-gateway`): mail
    /// to them is not padded.
    pub news_gateways: RecipientPatterns,
    /// Counts the padding bytes added and the stamps dropped.
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
        recipients: &[String],
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
                Some(cfg) => {
                    let done = sanitize::sanitize(original, cfg, now, &mut rng, message_key);
                    self.count_dropped_stamps(&done);
                    done.message
                }
                None => original.to_vec(),
            };
            sanitize::with_hop_count(&sanitized, hop)
        };
        if self.is_news_post(&body, recipients) {
            // Published as it is: padding would hide nothing.
            return limit
                .is_none_or(|limit| body.len() <= limit)
                .then_some(body);
        }
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

    /// A `Newsgroups:` header, or a recipient that is a news gateway.
    fn is_news_post(&self, message: &[u8], recipients: &[String]) -> bool {
        header::fields(message).any(|f| f.has_name("newsgroups"))
            || recipients.iter().any(|r| self.news_gateways.matches(r))
    }

    /// Logs and counts the stamps the sanitizer dropped, by class only:
    /// the stamp names its resource, an address.
    fn count_dropped_stamps(&self, done: &sanitize::Sanitized) {
        for (n, counter, class) in [
            (
                done.time_of_day_stamps,
                &self.stats.hashcash_time_of_day,
                "time_of_day",
            ),
            (
                done.malformed_stamps,
                &self.stats.hashcash_malformed,
                "malformed",
            ),
        ] {
            if n > 0 {
                Stats::add(counter, n as u64);
                info!("[SANITIZE] dropped {n} hashcash stamp(s): {class}");
            }
        }
    }
}

/// Mints hashcash stamps at the exit (`-hashcash-bits`, `-hashcash-for`)
/// for recipients whose mail carries none, so that someone without a
/// stamp tool can still post through a gateway that demands one. Runs in
/// the dispatcher before the delivery connects: minting takes seconds, and
/// a next hop would not wait for it in the middle of the SMTP dialogue.
pub struct Stamper {
    /// Leading zero bits of each stamp (1 to `config::MAX_HASHCASH_BITS`).
    pub bits: u8,
    /// The recipients stamps are minted for.
    pub recipients: RecipientPatterns,
    /// SHA-1 computations one message may cost, all its stamps together.
    pub max_attempts: u64,
    /// Counts stamps minted and given up on.
    pub stats: std::sync::Arc<Stats>,
}

impl Stamper {
    /// A stamper whose bound is 8 times the expected cost of one stamp
    /// (2^`bits`): a give-up is rare (about e^-8 for a single stamp) while
    /// a message never costs more than 8 expected stamps, however many
    /// recipients it has.
    pub fn new(bits: u8, recipients: RecipientPatterns, stats: std::sync::Arc<Stats>) -> Self {
        Stamper {
            bits,
            recipients,
            max_attempts: 8u64 << bits,
            stats,
        }
    }

    /// `message` with an `X-Hashcash:` header in front for each of
    /// `recipients` that matches and has no stamp in the message yet. The
    /// date is the day of `now` in UTC: day precision, like the stamps the
    /// sanitizer keeps. The hashing runs on the blocking pool.
    pub async fn stamp(&self, message: Vec<u8>, recipients: &[String], now: SystemTime) -> Vec<u8> {
        let wanted: Vec<String> = recipients
            .iter()
            .filter(|r| self.recipients.matches(r) && !has_stamp_for(&message, r))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return message;
        }
        let date = time::OffsetDateTime::from(now).date();
        let bits = self.bits;
        let mut budget = self.max_attempts;
        let mut seeds = Vec::with_capacity(wanted.len());
        for _ in &wanted {
            seeds.push(rand::random::<[u8; 12]>());
        }
        let minted = tokio::task::spawn_blocking(move || {
            wanted
                .iter()
                .zip(&seeds)
                .map(|(r, seed)| hashcash::mint(r, bits, date, seed, &mut budget))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(minted) = minted else {
            // The blocking task panicked or the runtime is stopping: the
            // mail leaves as it came.
            return message;
        };
        let mut head = Vec::new();
        for stamp in minted {
            match stamp {
                Ok(stamp) => {
                    self.stats.hashcash_minted.inc();
                    head.extend_from_slice(b"X-Hashcash: ");
                    head.extend_from_slice(stamp.as_bytes());
                    head.extend_from_slice(b"\r\n");
                }
                Err(e) => {
                    self.stats.hashcash_gave_up.inc();
                    info!("[SANITIZE] no hashcash stamp minted: {e}");
                }
            }
        }
        if head.is_empty() {
            return message;
        }
        // A message that opens with its body (no header block) keeps it a
        // body behind the stamp.
        let opens_with_header = header::fields(&message)
            .find(|f| !f.is_orphan())
            .is_some_and(|f| f.name.is_some())
            || message.starts_with(b"\r\n");
        if !opens_with_header {
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(&message);
        head
    }
}

/// Whether the message already carries a stamp for `recipient` (its
/// resource field, compared without regard to case) that the sanitizer
/// will keep: one dated to the minute is dropped on the way out, so it
/// does not spare the gateway's stamp.
fn has_stamp_for(message: &[u8], recipient: &str) -> bool {
    header::fields(message)
        .filter(|f| f.has_name("x-hashcash") || f.has_name("hashcash"))
        .filter(|f| hashcash::classify(f.value) == hashcash::StampClass::Day)
        .any(|f| {
            f.value
                .trim_ascii()
                .split(|&b| b == b':')
                .nth(3)
                .is_some_and(|resource| resource.eq_ignore_ascii_case(recipient.as_bytes()))
        })
}

impl OutgoingBody for Egress {
    fn prepare(
        &self,
        original: &[u8],
        recipients: &[String],
        limit: Option<usize>,
        message_key: Option<&[u8; 16]>,
    ) -> Option<Vec<u8>> {
        self.prepare_at(original, recipients, limit, message_key, SystemTime::now())
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
            news_gateways: RecipientPatterns::parse(["mail2news@gw.example", "news.example"])
                .unwrap(),
            stats: std::sync::Arc::new(Stats::default()),
        }
    }

    #[test]
    fn it_counts_the_padding_it_adds() {
        let e = egress(false);
        let out = e.prepare(MAIL, &[], None, None).unwrap();
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
        let out = egress(true).prepare(MAIL, &[], None, None).unwrap();
        assert_eq!(crate::message::padding::wire_len(&out) % 4096, 0);
        let text = String::from_utf8_lossy(padding::strip(&out)).into_owned();
        assert!(!text.contains("alice@host.example"), "{text}");
        assert!(!text.contains("Tattler"), "{text}");
        assert!(text.contains("Subject: hi\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nbody\r\n"), "{text}");
    }

    #[test]
    fn it_passes_headers_on_when_sanitizing_is_off() {
        let out = egress(false).prepare(MAIL, &[], None, None).unwrap();
        let (head, body) = MAIL.split_at(MAIL.len() - b"\r\nbody\r\n".len());
        let expected = [head, b"X-Hop-Count: 1\r\n", body].concat();
        assert_eq!(padding::strip(&out), expected);
    }

    #[test]
    fn it_counts_one_more_hop_than_the_message_arrived_with() {
        let arrived = b"Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n\
            X-Hop-Count: 7\r\nSubject: hi\r\n\r\nbody\r\n";
        for sanitizing in [true, false] {
            let out = egress(sanitizing)
                .prepare(arrived, &[], None, None)
                .unwrap();
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
        let out = egress(true).prepare(fresh, &[], None, None).unwrap();
        assert_eq!(sanitize::hops(padding::strip(&out)), 1);
    }

    #[test]
    fn it_keeps_the_marker_of_its_own_cover() {
        let e = egress(true);
        let own = OnionName::from_seed(1);
        let m = mail_cover::make_message(&e.cover_key, &own, &mut StdRng::seed_from_u64(3));
        let out = e.prepare(&m.body, &[], None, None).unwrap();
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
        let out = e.prepare(MAIL, &[], Some(4096), None).unwrap();
        assert_eq!(padding::wire_len(&out), 4096);
        // A block would pass the limit: padded up to exactly the limit.
        let out = e.prepare(MAIL, &[], Some(1000), None).unwrap();
        assert_eq!(out.len(), 1000);
        assert_eq!(padding::strip(&out), counted);
        // No room for a padding header: sent as it is.
        let out = e.prepare(MAIL, &[], Some(counted.len() + 3), None).unwrap();
        assert_eq!(out, counted);
        let out = e.prepare(MAIL, &[], Some(counted.len()), None).unwrap();
        assert_eq!(out, counted);
        // Too big even so.
        assert_eq!(e.prepare(MAIL, &[], Some(counted.len() - 1), None), None);
    }

    #[test]
    fn it_does_not_pad_news_posts_but_pads_other_mail() {
        let e = egress(true);
        let post = b"Newsgroups: alt.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let out = e.prepare(post, &[], None, None).unwrap();
        assert_eq!(
            padding::strip(&out),
            &out[..],
            "a Newsgroups post was padded"
        );
        let to = |r: &str| vec![r.to_string()];
        for gateway in [
            "mail2news@gw.example",
            "MAIL2NEWS@GW.example",
            "any@news.example",
        ] {
            let out = e.prepare(MAIL, &to(gateway), None, None).unwrap();
            assert_eq!(padding::strip(&out), &out[..], "{gateway} got padding");
        }
        for other in ["friend@gw.example", "x@sub.news.example", "a@b.example"] {
            let out = e.prepare(MAIL, &to(other), None, None).unwrap();
            assert!(padding::strip(&out).len() < out.len(), "{other} not padded");
            assert_eq!(padding::wire_len(&out) % 4096, 0);
        }
        // A post still respects the next hop's limit.
        assert_eq!(e.prepare(post, &[], Some(20), None), None);
    }

    #[test]
    fn it_counts_the_stamps_the_sanitizer_drops_by_class() {
        let e = egress(true);
        let mail = b"X-Hashcash: 1:24:2612071530:a@b.example::r:c\r\n\
            X-Hashcash: nonsense\r\nX-Hashcash: 1:24:261207:a@b.example::r:c\r\n\r\nbody\r\n";
        let out = e.prepare(mail, &[], None, None).unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.contains("X-Hashcash: 1:24:261207:a@b.example::r:c\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("2612071530") && !text.contains("nonsense"),
            "{text}"
        );
        assert_eq!(Stats::get(&e.stats.hashcash_time_of_day), 1);
        assert_eq!(Stats::get(&e.stats.hashcash_malformed), 1);
    }

    fn stamper(bits: u8) -> Stamper {
        Stamper::new(
            bits,
            RecipientPatterns::parse(["mail2news@gw.example"]).unwrap(),
            std::sync::Arc::new(Stats::default()),
        )
    }

    #[tokio::test]
    async fn it_mints_a_stamp_that_verifies_for_a_matching_recipient_only() {
        let s = stamper(12);
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_643_000);
        let gw = vec!["mail2news@gw.example".to_string()];
        let out = s.stamp(MAIL.to_vec(), &gw, now).await;
        let stamp = crate::message::header::fields(&out)
            .find(|f| f.has_name("x-hashcash"))
            .map(|f| f.value.trim_ascii().to_vec())
            .expect("a stamp");
        let text = String::from_utf8(stamp.clone()).unwrap();
        assert!(
            text.starts_with("1:12:261207:mail2news@gw.example::"),
            "{text}"
        );
        assert!(hashcash::leading_zero_bits(&stamp) >= 12, "{text}");
        assert!(out.ends_with(MAIL));
        assert_eq!(Stats::get(&s.stats.hashcash_minted), 1);
        // Already stamped for it, or not a gateway: left alone.
        assert_eq!(s.stamp(out.clone(), &gw, now).await, out);
        // A stamp dated to the minute will not leave: it spares nothing.
        let minute = b"X-Hashcash: 1:20:2612071530:mail2news@gw.example::r:c\r\n\r\nb";
        let restamped = s.stamp(minute.to_vec(), &gw, now).await;
        assert!(restamped.len() > minute.len() && restamped.ends_with(minute));
        assert_eq!(Stats::get(&s.stats.hashcash_minted), 2);
        let other = vec!["a@gw.example".to_string()];
        assert_eq!(s.stamp(MAIL.to_vec(), &other, now).await, MAIL);
        assert_eq!(Stats::get(&s.stats.hashcash_minted), 2);
        // A body without headers stays a body.
        let out = s.stamp(b"hello\r\n".to_vec(), &gw, now).await;
        assert!(out.ends_with(b"\r\n\r\nhello\r\n"));
    }

    #[tokio::test]
    async fn it_gives_up_past_its_budget_and_counts_it() {
        assert_eq!(stamper(20).max_attempts, 8 << 20);
        let s = Stamper {
            max_attempts: 0,
            ..stamper(20)
        };
        let gw = vec!["mail2news@gw.example".to_string()];
        let out = s.stamp(MAIL.to_vec(), &gw, std::time::UNIX_EPOCH).await;
        assert_eq!(out, MAIL, "left as it came");
        assert_eq!(Stats::get(&s.stats.hashcash_gave_up), 1);
        assert_eq!(Stats::get(&s.stats.hashcash_minted), 0);
    }
}
