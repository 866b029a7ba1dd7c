//! Intake: what the node does with a message a transport has finished
//! receiving, before it is durable.
//!
//! Mail enters the spool in two ways, and both come through here: SMTP
//! (a client, or a pluto2 upstream) and the mixnet exit (a message whose
//! fragments all arrived at this node). One place owns the order of these
//! steps, so both are treated alike:
//!
//! 1. strip the padding a sending pluto2 added (it is not the author's);
//! 2. drop our own loop cover coming back (counted, never spooled), and
//!    refuse anything else addressed to this node's own name (a loop);
//!    Mail from the mixnet with more recipients than `-max-recipients`
//!    is refused whole (SMTP refused the extra RCPTs already);
//! 3. refuse a post to a newsgroup on the `-dest-block` list; mail from
//!    the mixnet also loses each recipient on the list here (SMTP mail
//!    was checked at RCPT), and is refused if none is left;
//! 4. refuse a message whose header records [`HOP_LIMIT`] hops or more
//!    (a mail loop between relays; see [`sanitize::hops`]);
//! 5. draw the message's release time from the mix policy;
//! 6. enqueue durably in the spool ([`Spool::enqueue_from`]: one insert
//!    for both sources, an exit's own rows in the same transaction);
//! 7. count what became of it, whatever the step that decided
//!    (`pluto2_messages_total` by outcome).
//!
//! A refused SMTP message is answered with an error and nothing is
//! stored. A refused mixnet message is still recorded as done and
//! acknowledged (COMPLETE) with no recipients, in the same transaction:
//! the entry cannot bounce it and must stop retransmitting it.
//!
//! Transports hand messages in through traits they define themselves
//! (`smtp::server::MessageSink`), so they never import this module; the
//! mixnet exit (`mixnet::hop`) calls [`Intake::ingest_exit`].

use std::sync::Arc;

use tracing::info;

use crate::BoxFuture;
use crate::address::OnionName;
use crate::envelope::{EnqueueOutcome, Message};
use crate::message::padding;
use crate::node::mail_cover::CoverKey;
use crate::node::policy::DestBlock;
use crate::release::MixPolicy;
use crate::sanitize;
use crate::smtp::server::MessageSink;
use crate::spool::custody::ExitRows;
use crate::spool::{Origin, Spool};
use crate::stats::Stats;
use crate::time::Clock;

/// Hops after which a message is taken to be looping and refused, as with
/// Postfix's `hopcount_limit` (same default, and counting the same
/// `Received:` and `Delivered-To:` fields, plus pluto2's own `X-Hop-Count`).
/// Real paths are a handful of hops; fifty leaves room for long remailer
/// chains and still ends a loop between two nodes within seconds.
pub const HOP_LIMIT: u32 = 50;

/// Node intake shared by every connection task.
pub struct Intake {
    pub spool: Spool,
    /// Decides when an accepted message may leave.
    pub mix: MixPolicy,
    /// Recognises this node's own cover messages coming back.
    pub cover_key: CoverKey,
    pub stats: Arc<Stats>,
    /// Where "now" comes from for release times (injected for tests).
    pub clock: Clock,
    /// The `-dest-block` list. Mail from the mixnet is always checked
    /// against it (this node is its exit); SMTP mail only when
    /// `smtp_destinations` (a mixnet entry leaves the decision to the
    /// exit, which sees the same list's owner's choice).
    pub dest_block: Arc<DestBlock>,
    /// Whether this node decides the destinations of SMTP mail (direct
    /// mode), or leaves them to the mixnet's exit (`-sphinx`).
    pub smtp_destinations: bool,
    /// This node's own onion name: mail from the mixnet to it would loop.
    pub own_name: OnionName,
    /// `-max-recipients`: SMTP refuses the RCPT past it; a message
    /// completed at the exit with more is refused whole (its entry may
    /// have been told another limit, or be no honest entry at all).
    pub max_recipients: usize,
}

/// Where a message handed to intake comes from.
pub enum Source {
    /// An SMTP session finished DATA (its envelope says whether a
    /// recipient is this node's own name).
    Smtp,
    /// The mixnet completed it at this exit; its rows join the insert.
    Exit(ExitRows),
}

impl Intake {
    /// Runs the intake steps for one message; the outcome is what the
    /// transport reports to its client.
    pub async fn ingest(&self, message: Message) -> EnqueueOutcome {
        self.ingest_from(message, Source::Smtp).await
    }

    /// Runs the intake steps for a message completed at this exit. The
    /// outcome is `Queued` (stored, or refused and recorded as done: see
    /// the module's notes; the refusal is what gets counted), `Replay`
    /// (done before: acknowledged again, not stored twice) or a storage
    /// failure (the fragments stay; completion is tried again).
    pub async fn ingest_exit(&self, message: Message, rows: ExitRows) -> EnqueueOutcome {
        self.ingest_from(message, Source::Exit(rows)).await
    }

    async fn ingest_from(&self, message: Message, source: Source) -> EnqueueOutcome {
        let outcome = self.steps(message, source).await;
        self.stats.message(outcome);
        outcome
    }

    async fn steps(&self, mut message: Message, source: Source) -> EnqueueOutcome {
        let stripped = padding::strip(&message.body);
        if stripped.len() != message.body.len() {
            message.body = stripped.to_vec();
        }
        let refusal = self.refusal(&mut message, &source);
        match source {
            Source::Smtp => {
                if let Some(refusal) = refusal {
                    return refusal;
                }
                let outcome = self.spool.enqueue(message, self.release_time()).await;
                if outcome == EnqueueOutcome::Replay {
                    info!(
                        "[SPOOL] a message identical to one accepted within the replay window: answered as accepted, not queued again"
                    );
                }
                outcome
            }
            Source::Exit(rows) => {
                if refusal.is_some() {
                    message.envelope.recipients.clear();
                }
                let outcome = self
                    .spool
                    .enqueue_from(message, Origin::Exit(rows), self.release_time())
                    .await;
                match (outcome, refusal) {
                    (EnqueueOutcome::Queued, Some(refusal)) => refusal,
                    (outcome, _) => outcome,
                }
            }
        }
    }

    /// Steps 2 to 4: why this message must not be delivered, if it must
    /// not. Drops the blocked recipients of mail from the mixnet.
    fn refusal(&self, message: &mut Message, source: &Source) -> Option<EnqueueOutcome> {
        if self.cover_key.is_cover(&message.body) {
            return Some(EnqueueOutcome::OwnTraffic);
        }
        let recipients = message.envelope.recipients.len();
        if matches!(source, Source::Exit(_)) && recipients > self.max_recipients {
            // A count, never an address.
            info!(
                "[INTAKE] refused a message from the mixnet with {recipients} recipients (-max-recipients {})",
                self.max_recipients
            );
            return Some(EnqueueOutcome::TooManyRecipients);
        }
        let to_own_name = match source {
            Source::Smtp => message.envelope.to_own_name,
            Source::Exit(_) => message
                .envelope
                .recipients
                .iter()
                .any(|r| is_own_name(&self.own_name, r)),
        };
        if to_own_name {
            // Not our cover, yet addressed to us: relaying it would loop.
            info!("[INTAKE] refused a message to this node's own name that is not its cover");
            return Some(EnqueueOutcome::Loop);
        }
        let exit = matches!(source, Source::Exit(_));
        if exit || self.smtp_destinations {
            if self.dest_block.blocks_post(&message.body) {
                return Some(EnqueueOutcome::Blocked);
            }
            if exit {
                // Each blocked recipient is counted and logged by the list.
                let list = &self.dest_block;
                message.envelope.recipients.retain(|r| !list.blocks(r));
                if message.envelope.recipients.is_empty() {
                    return Some(EnqueueOutcome::Blocked);
                }
            }
        }
        let hops = sanitize::hops(&message.body);
        if hops >= HOP_LIMIT {
            info!("[LOOP] refused a message with {hops} hops (limit {HOP_LIMIT})");
            return Some(EnqueueOutcome::TooManyHops);
        }
        None
    }

    /// Release time for a message accepted now, from the thread-local
    /// CSPRNG (ChaCha, reseeded from the OS). Synchronous so the RNG never
    /// lives across an await.
    fn release_time(&self) -> u64 {
        self.mix.release_at((self.clock)(), &mut rand::rng())
    }
}

#[cfg(test)]
impl Intake {
    /// An intake for tests: no `-dest-block` entries, a fixed cover key,
    /// direct mode's rules for SMTP mail.
    pub fn for_tests(spool: Spool, mix: MixPolicy, clock: Clock, stats: Arc<Stats>) -> Intake {
        Intake {
            spool,
            mix,
            cover_key: CoverKey::from_bytes([4; 32]),
            dest_block: Arc::new(DestBlock::new(Default::default(), stats.clone())),
            stats,
            clock,
            smtp_destinations: true,
            own_name: OnionName::from_seed(200),
            max_recipients: 50,
        }
    }
}

/// Whether `recipient`'s domain is `own` or a name under it (Tor ignores
/// the labels in front of an onion name, so they reach this node too).
fn is_own_name(own: &OnionName, recipient: &str) -> bool {
    let Some((_, domain)) = recipient.rsplit_once('@') else {
        return false;
    };
    let domain = domain.to_ascii_lowercase();
    let own = own.as_str();
    domain == own
        || domain
            .strip_suffix(own)
            .is_some_and(|front| front.ends_with('.'))
}

impl MessageSink for Intake {
    fn accept(&self, message: Message) -> BoxFuture<'_, EnqueueOutcome> {
        Box::pin(self.ingest(message))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::envelope::Envelope;
    use crate::spool::custody::{OutPacket, PacketKind};

    const NOW: u64 = 1_700_000_000_000;

    fn mail(recipients: &[&str], header: &str) -> Message {
        Message {
            envelope: Envelope {
                sender: String::new(),
                recipients: recipients.iter().map(|r| r.to_string()).collect(),
                smtputf8: false,
                eight_bit: false,
                to_own_name: false,
            },
            body: format!("{header}Subject: x\r\n\r\nbody\r\n").into_bytes(),
        }
    }

    fn rows(id: u8) -> ExitRows {
        ExitRows {
            mix_id: [id; 16],
            ack: Some(OutPacket {
                next_hop: [9; 32],
                epoch: 0,
                bytes: vec![1; 64],
                kind: PacketKind::Ack,
                release_at: NOW,
                deadline: NOW + 60_000,
            }),
        }
    }

    struct Exit {
        intake: Intake,
        _dir: tempfile::TempDir,
        closer: Option<crate::spool::SpoolCloser>,
    }

    impl Exit {
        fn new(block: &str) -> Exit {
            let dir = tempfile::tempdir().unwrap();
            let clock: Clock = Arc::new(|| NOW);
            let (spool, closer) = Spool::open(dir.path(), Duration::ZERO, clock.clone()).unwrap();
            let stats = Arc::new(Stats::default());
            let mut intake = Intake::for_tests(spool, MixPolicy::Immediate, clock, stats.clone());
            intake.smtp_destinations = false; // a mixnet node
            intake.dest_block = Arc::new(DestBlock::new(
                crate::node::policy::BlockList::parse(block).unwrap(),
                stats,
            ));
            Exit {
                intake,
                _dir: dir,
                closer: Some(closer),
            }
        }

        /// Messages waiting for delivery, and acknowledgements queued.
        async fn stored(&self) -> (usize, u64) {
            let spool = &self.intake.spool;
            let leased = spool.lease(10, Duration::from_secs(60)).await.unwrap();
            let acks = spool.mixnet_counts().await.unwrap().packets_ack;
            (leased.leases.len(), acks)
        }

        fn counted(&self, outcome: &str) -> bool {
            self.intake
                .stats
                .encode()
                .contains(&format!("pluto2_messages_total{{outcome=\"{outcome}\"}} 1"))
        }

        async fn close(mut self) {
            drop(self.intake);
            self.closer.take().unwrap().closed().await;
        }
    }

    #[tokio::test]
    async fn mail_leaving_the_mixnet_is_stored_once_and_counted() {
        let exit = Exit::new("");
        let m = mail(&["a@example.org"], "");
        assert_eq!(
            exit.intake.ingest_exit(m.clone(), rows(1)).await,
            EnqueueOutcome::Queued
        );
        assert_eq!(
            exit.intake.ingest_exit(m, rows(1)).await,
            EnqueueOutcome::Replay,
            "the same mixnet message again"
        );
        assert_eq!(
            exit.stored().await,
            (1, 2),
            "stored once, acknowledged twice"
        );
        assert!(exit.counted("queued") && exit.counted("replay"));
        exit.close().await;
    }

    /// The hop limit, the recipient limit, the own-name rule and
    /// -dest-block hold for mail that leaves the mixnet as for SMTP mail: nothing is stored for
    /// delivery, the message is done (a copy is a duplicate) and
    /// acknowledged, and the refusal is counted.
    #[tokio::test]
    async fn the_rules_of_smtp_intake_hold_for_mail_leaving_the_mixnet() {
        let hops = "Received: from a\r\n".repeat(HOP_LIMIT as usize);
        let own = format!("x@{}", OnionName::from_seed(200));
        let many: Vec<String> = (0..51).map(|i| format!("r{i}@example.org")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let cases = [
            (
                mail(&["a@example.org"], &hops),
                EnqueueOutcome::TooManyHops,
                "too_many_hops",
            ),
            (
                mail(&many, ""),
                EnqueueOutcome::TooManyRecipients,
                "too_many_recipients",
            ),
            (mail(&[own.as_str()], ""), EnqueueOutcome::Loop, "loop"),
            (
                mail(&["v@blocked.example"], ""),
                EnqueueOutcome::Blocked,
                "blocked",
            ),
        ];
        for (i, (m, refusal, label)) in cases.into_iter().enumerate() {
            let exit = Exit::new("blocked.example\n");
            let id = i as u8 + 1;
            assert_eq!(
                exit.intake.ingest_exit(m.clone(), rows(id)).await,
                refusal,
                "{label}"
            );
            assert_eq!(
                exit.stored().await,
                (0, 1),
                "{label}: acknowledged, not stored"
            );
            assert_eq!(
                exit.intake.ingest_exit(m, rows(id)).await,
                EnqueueOutcome::Replay,
                "{label}: done"
            );
            assert!(exit.counted(label), "{label} counted");
            exit.close().await;
        }
    }

    #[tokio::test]
    async fn a_blocked_recipient_leaves_the_others_of_a_mixnet_message() {
        let exit = Exit::new("blocked.example\n");
        let m = mail(&["v@blocked.example", "a@example.org"], "");
        assert_eq!(
            exit.intake.ingest_exit(m, rows(1)).await,
            EnqueueOutcome::Queued
        );
        let spool = &exit.intake.spool;
        let leased = spool.lease(10, Duration::from_secs(60)).await.unwrap();
        let to: Vec<&str> = leased.leases[0]
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(to, ["a@example.org"]);
        exit.close().await;
    }

    #[test]
    fn own_name_covers_the_labels_in_front_of_it() {
        let own = OnionName::from_seed(200);
        assert!(is_own_name(&own, &format!("a@{own}")));
        assert!(is_own_name(
            &own,
            &format!("a@mail.{}", own.as_str().to_uppercase())
        ));
        assert!(!is_own_name(&own, &format!("a@x{own}")));
        assert!(!is_own_name(&own, "a@example.org"));
    }
}
