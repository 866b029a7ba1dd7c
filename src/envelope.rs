//! The unit of work that flows from the SMTP session into the spool.

use sha2::{Digest, Sha512};

/// Sender, recipients and body flags of one accepted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<String>,
    /// The client declared `SMTPUTF8`; the next hop must support it too.
    pub smtputf8: bool,
    /// The client declared `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// A recipient is this node's own onion name. Only this node's loop
    /// cover may go there: node intake drops verified cover and refuses
    /// anything else ([`EnqueueOutcome::Loop`]), because a message relayed
    /// to ourselves would come back for ever. Not stored in the spool: it
    /// only matters between the session and intake.
    pub to_own_name: bool,
}

/// The local part of the one own-name recipient a session accepts at RCPT:
/// loop cover is addressed to `cover@<own onion>`. Whether a message to it
/// really is cover is known only at the end of DATA, from its marker.
/// Only this node ever sends to its own name, through Tor, so no one else
/// sees the address.
pub const COVER_LOCAL_PART: &str = "cover";

/// An accepted message: envelope plus the dot-unstuffed body (CRLF lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub envelope: Envelope,
    pub body: Vec<u8>,
}

/// What became of a message handed to the spool (or to node intake).
///
/// It lives beside [`Message`] because every layer that handles a message
/// (the SMTP session, the spool, node intake) speaks it, and none of them
/// should import another just for this value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// On stable storage.
    Queued,
    /// This node's own traffic come back (loop cover), recognised and
    /// discarded: answered like `Queued`, and the session that brought it
    /// is not charged against the rate limit, so own cover never spends a
    /// client's budget.
    OwnTraffic,
    /// Same envelope and content seen within the replay window: not stored
    /// again. The client is told `250` as for the first copy (the first copy
    /// is queued, so this is the truth, and a client that lost the first
    /// `250` must not bounce a message that was in fact accepted).
    Replay,
    /// Addressed to this node's own name but not its verified cover:
    /// relaying it would bring it back for ever. Nothing was stored.
    Loop,
    /// The header records too many relay hops: the message is looping.
    TooManyHops,
    /// More recipients than this node takes (`-max-recipients`): only a
    /// message completed at a mixnet exit can get here (SMTP refuses the
    /// extra RCPTs one by one). Nothing was stored.
    TooManyRecipients,
    /// A destination of the message (a newsgroup in its header) is on the
    /// `-dest-block` list. Nothing was stored.
    Blocked,
    /// Storage failed; the client should retry later.
    Failed,
    /// The disk is full or free space is under the reserve
    /// (`-min-free-space`); the client should retry later.
    NoSpace,
    /// The daemon is stopping and did not store the message.
    ShuttingDown,
}

/// SHA-512 over envelope and content, the key of the replay cache.
pub type ReplayId = [u8; 64];

impl Message {
    /// Hashes every field with a length prefix, so no two different
    /// envelopes can produce the same byte stream for the hash.
    pub fn replay_id(&self) -> ReplayId {
        let mut h = Sha512::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(self.envelope.sender.as_bytes());
        field(&(self.envelope.recipients.len() as u64).to_be_bytes());
        for r in &self.envelope.recipients {
            field(r.as_bytes());
        }
        field(&self.body);
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(sender: &str, rcpts: &[&str], body: &[u8]) -> Message {
        Message {
            envelope: Envelope {
                sender: sender.into(),
                recipients: rcpts.iter().map(|s| s.to_string()).collect(),
                smtputf8: false,
                eight_bit: false,
                to_own_name: false,
            },
            body: body.to_vec(),
        }
    }

    #[test]
    fn it_gives_identical_messages_the_same_replay_id() {
        assert_eq!(
            msg("a@b.c", &["d@e.f"], b"x").replay_id(),
            msg("a@b.c", &["d@e.f"], b"x").replay_id()
        );
    }

    #[test]
    fn it_separates_fields_in_the_replay_id() {
        let a = msg("a@b.c", &["d@e.f", "g@h.i"], b"x").replay_id();
        assert_ne!(a, msg("a@b.c", &["d@e.fg@h.i"], b"x").replay_id());
        assert_ne!(a, msg("a@b.c", &["d@e.f", "g@h.i"], b"y").replay_id());
        assert_ne!(a, msg("", &["d@e.f", "g@h.i"], b"x").replay_id());
    }
}
