//! MAIL FROM: open a transaction, check declared size and parameters.

use std::borrow::Cow;

use smtp_proto::{
    MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS, MAIL_RET_FULL, MAIL_RET_HDRS,
    MAIL_SMTPUTF8, MailFrom,
};

use super::{Reply, Session, Step, Transaction};
use crate::address::parse_mailbox;

impl Session {
    pub(super) fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Step {
        if !self.greeted {
            return self.bad_sequence("send EHLO or HELO first");
        }
        if self.tx.is_some() {
            return self.bad_sequence("nested MAIL command");
        }
        // Parameters of extensions we do not advertise (DSN, AUTH, BINARYMIME,
        // REQUIRETLS, ...) must be refused rather than silently ignored.
        let unsupported = from.flags
            & (MAIL_BODY_BINARYMIME | MAIL_REQUIRETLS | MAIL_RET_FULL | MAIL_RET_HDRS)
            != 0
            || from.env_id.is_some()
            || from.auth.is_some()
            || from.trans_id.is_some()
            || from.mtrk.is_some()
            || from.solicit.is_some()
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0;
        if unsupported {
            return self.error(Reply::new(555, "5.5.4", "MAIL parameter not supported"));
        }
        if from.size > self.config.max_message_size {
            return Step::Reply(Reply::new(
                552,
                "5.3.4",
                format!(
                    "message size exceeds fixed limit of {} bytes",
                    self.config.max_message_size
                ),
            ));
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let sender = from.address.into_owned();
        if !sender.is_empty()
            && let Err(e) = parse_mailbox(&sender, smtputf8)
        {
            return self.error(Reply::new(
                553,
                "5.1.7",
                format!("sender address rejected: {e}"),
            ));
        }
        self.tx = Some(Transaction {
            sender,
            recipients: Vec::new(),
            smtputf8,
            eight_bit: from.flags & MAIL_BODY_8BITMIME != 0,
            declared_size: from.size,
        });
        Step::Reply(Reply::new(250, "2.1.0", "Ok"))
    }
}
