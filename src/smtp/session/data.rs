//! DATA: switch to body reception and judge the finished body.

use super::{DataDecoder, Phase, Reply, Session, Step};
use crate::envelope::{Envelope, Message};
use crate::smtp::data_decoder::Verdict;

/// Initial body buffer; grows as needed. A declared SIZE raises it, up to
/// this cap, so a lying client cannot make us reserve the whole limit. The
/// server lets a session hold 64 KiB without drawing from its shared memory
/// budget; preallocating no more keeps small mail off that budget.
const MAX_PREALLOCATION: usize = 64 * 1024;

impl Session {
    pub(super) fn data(&mut self) -> Step {
        let Some(tx) = self.tx.as_ref() else {
            return self.bad_sequence("need MAIL command first");
        };
        if tx.recipients.is_empty() {
            return self.bad_sequence("need RCPT command first");
        }
        let capacity = tx.declared_size.clamp(4096, MAX_PREALLOCATION);
        self.phase = Phase::Data {
            decoder: DataDecoder::new(self.config.max_message_size),
            body: Vec::with_capacity(capacity),
            over_budget: false,
        };
        // No enhanced code: RFC 3463 has no class for 3xx replies.
        Step::Reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"))
    }

    /// Bytes of memory the body being received holds (its capacity), or
    /// `None` outside DATA. The server charges it to its memory budget.
    pub fn data_buffered(&self) -> Option<usize> {
        match &self.phase {
            Phase::Data { body, .. } => Some(body.capacity()),
            _ => None,
        }
    }

    /// The server's memory budget cannot hold this body: free it now, keep
    /// reading DATA to its end without storing it (so the stream stays in
    /// step, as for an oversized message) and answer `452 4.3.1` then.
    pub fn drop_data_for_memory(&mut self) {
        if let Phase::Data {
            body, over_budget, ..
        } = &mut self.phase
        {
            *body = Vec::new();
            *over_budget = true;
        }
    }

    pub(super) fn data_finished(
        &mut self,
        verdict: Verdict,
        body: Vec<u8>,
        over_budget: bool,
    ) -> Step {
        self.phase = Phase::Command;
        let tx = self.tx.take();
        match (verdict, tx) {
            (Verdict::TooLarge, _) => Step::Reply(Reply::new(
                552,
                "5.3.4",
                format!(
                    "message size exceeds fixed limit of {} bytes",
                    self.config.max_message_size
                ),
            )),
            (Verdict::BareLineEnding, _) => self.error(Reply::new(
                550,
                "5.5.2",
                "message refused: bare CR in data; every line must end with CRLF",
            )),
            (Verdict::NulByte, _) => self.error(Reply::new(
                550,
                "5.6.0",
                "message refused: NUL byte in data",
            )),
            (Verdict::BareLf, _) => self.bare_lf("data"),
            (Verdict::Complete, Some(_)) if over_budget => Step::Reply(Reply::new(
                452,
                "4.3.1",
                "insufficient system storage: too much mail in progress, try again later",
            )),
            (Verdict::Complete, Some(tx)) => {
                self.phase = Phase::AwaitingSpool;
                Step::Enqueue(Message {
                    envelope: Envelope {
                        sender: tx.sender,
                        recipients: tx.recipients,
                        smtputf8: tx.smtputf8,
                        eight_bit: tx.eight_bit,
                        to_own_name: tx.to_own_name,
                    },
                    body,
                })
            }
            (Verdict::Complete, None) => {
                // Unreachable by construction: DATA requires a transaction.
                Step::Reply(Reply::new(451, "4.3.0", "internal error, transaction lost"))
            }
        }
    }
}
