//! RCPT TO: validate the destination mailbox and count recipients.

use std::borrow::Cow;

use smtp_proto::RcptTo;

use super::{Phase, Reply, Session, Step};
use crate::address::{AddressError, Domain, parse_mailbox};

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
