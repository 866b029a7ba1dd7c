//! Node policy: what happens to a message between the transports.
//!
//! The transports (`smtp::server`, `relay`) move bytes and know nothing of
//! padding, cover, mixing or statistics; the modules here decide those
//! things and are handed to the transports as small interfaces.
//!
//! * [`cover`]: loop cover traffic (marker key, generation, recognition).

pub mod cover;
