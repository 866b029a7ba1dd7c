//! Message codecs shared by every path a message takes: the header block
//! tokenizer and SMTP dot-stuffing.
//!
//! Intake (padding removal, cover recognition), egress (sanitizing, padding)
//! and the SMTP client all read or write the same wire format; they do it
//! through these functions so that one line rule holds everywhere. A header
//! that one reader saw as folded and another as a new field would let a
//! message slip past the sanitizer or hide a cover marker.
//!
//! Pure: bytes in, values out. No I/O, no clock, no allocation while
//! tokenizing, and nothing here can panic on any input.

pub mod dot;
pub mod header;
