//! RCPT TO: validate the destination mailbox and count recipients.

use std::borrow::Cow;

use smtp_proto::RcptTo;

use super::{Phase, Reply, Session, Step};
use crate::address::{AddressError, Domain, Mailbox, parse_mailbox};
use crate::envelope::COVER_LOCAL_PART;

impl Session {
    pub(super) fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) -> Step {
        let max = self.config.max_recipients;
        let Some(tx) = self.tx.as_ref() else {
            return self.bad_sequence("need MAIL command first");
        };
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            return self.error(Reply::new(555, "5.5.4", "RCPT parameter not supported"));
        }
        if tx.recipients.len() >= max {
            // 452 rather than 5xx: RFC 5321 §4.5.3.1.10 wants the client to
            // send the rest in another transaction.
            return Step::Reply(Reply::new(
                452,
                "4.5.3",
                format!("too many recipients (limit {max})"),
            ));
        }
        if to.address.is_empty() {
            return self.error(Reply::new(
                550,
                "5.1.1",
                "this relay has no local mailboxes; give a full recipient address",
            ));
        }
        let mailbox = match parse_mailbox(&to.address, tx.smtputf8) {
            Ok(m) => m,
            Err(e @ AddressError::NonAsciiWithoutSmtputf8) => {
                // RFC 6531 §3.5: 553 with X.6.7 for a non-ASCII address.
                return self.error(Reply::new(
                    553,
                    "5.6.7",
                    format!("recipient address rejected: {e}"),
                ));
            }
            Err(e @ AddressError::Onion(_)) => {
                return self.error(Reply::new(
                    553,
                    "5.1.2",
                    format!("bad onion destination: {e}"),
                ));
            }
            Err(e) => {
                return self.error(Reply::new(
                    553,
                    "5.1.3",
                    format!("recipient address rejected: {e}"),
                ));
            }
        };
        if self.is_own_name(&mailbox) {
            return self.own_name_recipient(&mailbox);
        }
        if self.config.check_recipients {
            let recipient = mailbox.to_string();
            self.phase = Phase::AwaitingRecipientCheck { mailbox };
            return Step::CheckRecipient(recipient);
        }
        self.allowed_recipient(mailbox)
    }

    /// The caller's answer to `Step::CheckRecipient`: `refused` when node
    /// policy (`-dest-block`) does not let mail go there. The reply is the
    /// same for every pattern, so a client cannot learn what is listed.
    pub fn recipient_checked(&mut self, refused: bool) -> Step {
        let Phase::AwaitingRecipientCheck { mailbox } =
            std::mem::replace(&mut self.phase, Phase::Command)
        else {
            debug_assert!(false, "recipient_checked without CheckRecipient");
            return Step::NeedInput;
        };
        if refused {
            return self.error(Reply::new(
                550,
                "5.7.1",
                "recipient refused by this relay's policy",
            ));
        }
        self.allowed_recipient(mailbox)
    }

    /// A recipient policy lets through: the domain check if one is asked
    /// for, else accepted.
    fn allowed_recipient(&mut self, mailbox: Mailbox) -> Step {
        if self.config.check_domains
            && let Domain::Clearnet(domain) = &mailbox.domain
        {
            let domain = domain.clone();
            self.phase = Phase::AwaitingDomainCheck {
                recipient: mailbox.to_string(),
            };
            return Step::CheckDomain(domain);
        }
        self.accept_recipient(mailbox.to_string())
    }

    /// True if `mailbox` is at this node's own service (any subdomain).
    ///
    /// Compared as text, not by parsing `hostname` into an
    /// [`OnionName`](crate::address::OnionName):
    /// parsing is case-insensitive throughout and stores lowercase, so the
    /// hostname parses to `service` exactly when the two are equal ignoring
    /// ASCII case (a hostname that is no onion name equals no service).
    /// Parsing it in every session cost a curve-point check per connection,
    /// about a third of all the work of accepting a message.
    fn is_own_name(&self, mailbox: &Mailbox) -> bool {
        matches!(&mailbox.domain, Domain::Onion(service)
            if service.as_str().eq_ignore_ascii_case(&self.config.hostname))
    }

    /// This node's own name (or a subdomain of it) is not a destination:
    /// relayed there, a message would come back and leave again for ever,
    /// each pass with a fresh Message-ID and Date, so that replay
    /// protection never matches. The one exception is `cover@<own name>`,
    /// where loop cover goes; whether a message to it is cover shows only
    /// at the end of DATA, where intake refuses anything that is not.
    fn own_name_recipient(&mut self, mailbox: &Mailbox) -> Step {
        // The service itself, without a subdomain in front of it.
        let bare = matches!(&mailbox.domain, Domain::Onion(service)
            if mailbox.domain_str() == service.as_str());
        if mailbox.local == COVER_LOCAL_PART && bare {
            if let Some(tx) = self.tx.as_mut() {
                tx.to_own_name = true;
            }
            return self.accept_recipient(mailbox.to_string());
        }
        self.error(Reply::new(
            550,
            "5.7.1",
            "recipient refused: this node's own name is not a destination (mail to it would loop)",
        ))
    }

    fn accept_recipient(&mut self, recipient: String) -> Step {
        if let Some(tx) = self.tx.as_mut() {
            tx.recipients.push(recipient);
        }
        Step::Reply(Reply::new(250, "2.1.5", "Ok"))
    }

    /// The caller's answer to `Step::CheckDomain`: `undeliverable` only when
    /// the domain provably has no mail server (NXDOMAIN or null MX). A lookup
    /// that failed or timed out counts as deliverable: never refuse on doubt.
    pub fn domain_checked(&mut self, undeliverable: bool) -> Step {
        let Phase::AwaitingDomainCheck { recipient } =
            std::mem::replace(&mut self.phase, Phase::Command)
        else {
            debug_assert!(false, "domain_checked without CheckDomain");
            return Step::NeedInput;
        };
        if undeliverable {
            return self.error(Reply::new(
                550,
                "5.1.2",
                "recipient domain has no mail server (no such domain or null MX)",
            ));
        }
        self.accept_recipient(recipient)
    }
}
