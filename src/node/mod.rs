//! Node policy: what happens to a message between the transports.
//!
//! The transports (`smtp::server`, `relay`) move bytes and know nothing of
//! padding, cover, mixing or statistics; the modules here decide those
//! things and are handed to the transports as small interfaces.
//!
//! * [`intake`]: a received message → strip padding, drop own cover, draw
//!   the release time, enqueue, count.
//! * [`egress`]: a stored message → sanitize (unless cover), pad.
//! * [`dispatch`]: lease due work, run deliveries, settle; retries re-enter
//!   the mix ([`retry`] holds the backoff).
//! * [`cover`]: loop cover traffic (marker key, generation, recognition).
//! * [`policy`]: exit policy, the `-dest-block` list of destinations that
//!   asked not to receive anonymous mail.

pub mod dispatch;
pub mod egress;
pub mod intake;
pub mod mail_cover;
pub mod policy;
pub mod retry;
