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
pub mod hashcash;
pub mod header;
pub mod padding;

/// Adversarial inputs for the codecs' tests: `count` byte strings shorter
/// than `max_len`, drawn from `alphabet` (repeat a byte to make it more
/// frequent) with a fixed seed, so failures reproduce.
#[cfg(test)]
fn random_inputs(alphabet: &[u8], max_len: usize, count: usize, seed: u64) -> Vec<Vec<u8>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let len = rng.random_range(0..max_len);
            (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect()
        })
        .collect()
}
