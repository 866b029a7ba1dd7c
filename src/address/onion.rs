//! Tor v3 onion service names, checked the way Tor checks them.
//!
//! A v3 name is not free text: it is the base32 encoding of the service's
//! ed25519 public key followed by a two-byte checksum and a version byte
//! (rend-spec-v3, "Encoding onion addresses"):
//!
//! ```text
//! onion_address = base32(PUBKEY | CHECKSUM | VERSION) + ".onion"
//! CHECKSUM      = SHA3-256(".onion checksum" | PUBKEY | VERSION)[..2]
//! VERSION       = 0x03
//! ```
//!
//! The key itself must also be one Tor accepts: a point on the ed25519
//! curve, in the prime-order subgroup and not of small order (Tor's
//! `hs_address_is_valid` refuses anything else, and its SOCKS port answers
//! 0xF6 "invalid onion address"). A checksum only proves the name was not
//! mistyped; most random 32-byte strings are not such a key.
//!
//! Verifying all of this here means a mistyped destination is refused
//! while the client is still connected and can be told why, instead of the
//! message sitting in the spool until Tor gives up on a service that cannot
//! exist.

use std::fmt;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use data_encoding::BASE32_NOPAD;
use sha3::{Digest, Sha3_256};

/// The pseudo-TLD every onion name ends with.
const SUFFIX: &str = ".onion";
/// 35 bytes (key, checksum, version) are exactly 280 bits, 56 base32 digits,
/// so there are no padding bits whose value could be ambiguous.
const LABEL_LEN: usize = 56;
/// Length of PUBKEY | CHECKSUM | VERSION once decoded.
const RAW_LEN: usize = 35;
/// The only version this relay can reach: v2 names were retired by Tor.
const VERSION: u8 = 3;

/// Why a string is not a usable v3 onion name.
///
/// The messages end up in SMTP replies, so each one says what is wrong in
/// terms a person retyping the address can act on; none of them echoes the
/// input back, which keeps hostile bytes out of the reply line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OnionError {
    /// The name does not end in `.onion` (a trailing dot is not accepted).
    #[error("not an onion name: it must end in .onion")]
    NotOnion,
    /// The part before `.onion` is not 56 characters long; `len` counts
    /// characters, not bytes, so it matches what the user typed.
    #[error("a v3 onion name has 56 base32 characters before .onion, this one has {len}")]
    WrongLength { len: usize },
    /// A character outside the base32 alphabet (a-z, 2-7) was found.
    #[error(
        "an onion name may only contain the letters a-z and the digits 2-7 (0, 1, 8 and 9 are never used)"
    )]
    NotBase32,
    /// The version byte is not 3, e.g. a mangled name or a future format.
    #[error("the onion name encodes version {version}, but only version 3 names are supported")]
    BadVersion { version: u8 },
    /// The embedded checksum does not match the key: almost always a typo.
    #[error("the checksum embedded in the onion name does not match (typo in the name?)")]
    BadChecksum,
    /// Checksum and version are right but the embedded key is not a usable
    /// ed25519 public key, so Tor would refuse the name: a forged or
    /// corrupted name rather than a typo.
    #[error("the onion name does not carry a valid service key; Tor cannot reach it")]
    BadKey,
}

/// True if `key` is an ed25519 public key Tor accepts for a service: it
/// decodes to a curve point, has no small-order (torsion) component and is
/// not itself of small order (the identity among them).
fn is_valid_service_key(key: &[u8; 32]) -> bool {
    CompressedEdwardsY(*key)
        .decompress()
        .is_some_and(|point| is_torsion_free(&point) && !point.is_small_order())
}

/// True if `point` lies in the prime-order subgroup: `[ℓ]P` is the
/// identity, computed as `[ℓ − 1]P + P` (ℓ − 1 is `−1` as a reduced
/// scalar).
///
/// The same test as `EdwardsPoint::is_torsion_free`, which multiplies in
/// constant time: about 320,000 instructions per RCPT to an onion address,
/// as much as everything else in accepting a 4 KiB message together
/// (BENCHMARKS.md, "Accept path: instructions per message"). This
/// variable-time multiplication takes about 260,000. Time that depends on
/// the key is harmless here: the key is the destination the client itself
/// wrote, so its timing tells the client nothing it did not send, and
/// nothing about anyone else's mail. (Remembering keys already checked
/// would save the rest, but would let a client learn from the time of its
/// RCPT whether someone recently wrote to that address.)
fn is_torsion_free(point: &EdwardsPoint) -> bool {
    let l_minus_one = -Scalar::ONE;
    (EdwardsPoint::vartime_double_scalar_mul_basepoint(&l_minus_one, point, &Scalar::ZERO) + point)
        .is_identity()
}

/// A verified v3 onion service name, stored lowercase, e.g.
/// `"abc...xyz.onion"` (56 base32 characters followed by `.onion`).
///
/// The field is private so that every value has passed [`OnionName::parse`]
/// or was built by [`OnionName::from_public_key`]; code holding an
/// `OnionName` never needs to re-check it. Storing it lowercase makes
/// equality and hashing agree with Tor's case-insensitive comparison.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OnionName(String);

/// The first two bytes of SHA3-256(".onion checksum" | key | version).
fn checksum(key: &[u8; 32], version: u8) -> [u8; 2] {
    let mut hasher = Sha3_256::new();
    hasher.update(b".onion checksum");
    hasher.update(key);
    hasher.update([version]);
    let digest = hasher.finalize();
    [digest[0], digest[1]]
}

/// Decodes the 56-character label into its 35 bytes.
///
/// The alphabet is checked by hand first so that any stray character,
/// including non-ASCII ones, is reported as [`OnionError::NotBase32`]
/// whatever the decoder would have said.
fn decode_label(label: &str) -> Result<[u8; RAW_LEN], OnionError> {
    let upper: Vec<u8> = label
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'2'..=b'7' => Ok(b.to_ascii_uppercase()),
            _ => Err(OnionError::NotBase32),
        })
        .collect::<Result<_, _>>()?;
    let mut raw = [0u8; RAW_LEN];
    match BASE32_NOPAD.decode_len(upper.len()) {
        Ok(RAW_LEN) => {}
        _ => return Err(OnionError::WrongLength { len: upper.len() }),
    }
    BASE32_NOPAD
        .decode_mut(&upper, &mut raw)
        .map_err(|_| OnionError::NotBase32)?;
    Ok(raw)
}

impl OnionName {
    /// Accepts exactly `<56 base32 characters>.onion`, in any letter case.
    ///
    /// Subdomains are not accepted here: this type names a service, and the
    /// caller decides what to do with labels in front of it (see
    /// `parse_mailbox`). A trailing dot is refused rather than stripped so
    /// that one spelling maps to one value.
    pub fn parse(s: &str) -> Result<OnionName, OnionError> {
        // `get` instead of slicing: the cut may fall inside a UTF-8
        // character, and that must be an error, not a panic.
        let split = s
            .len()
            .checked_sub(SUFFIX.len())
            .ok_or(OnionError::NotOnion)?;
        let (label, suffix) = match (s.get(..split), s.get(split..)) {
            (Some(label), Some(suffix)) => (label, suffix),
            _ => return Err(OnionError::NotOnion),
        };
        if !suffix.eq_ignore_ascii_case(SUFFIX) {
            return Err(OnionError::NotOnion);
        }
        let len = label.chars().count();
        if len != LABEL_LEN {
            return Err(OnionError::WrongLength { len });
        }
        let raw = decode_label(label)?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[..32]);
        // Version first: a name from another format should be reported as
        // such, not as a typo.
        let version = raw[34];
        if version != VERSION {
            return Err(OnionError::BadVersion { version });
        }
        if raw[32..34] != checksum(&key, version) {
            return Err(OnionError::BadChecksum);
        }
        // After the checksum: a typo is far more likely than a bad key,
        // and should be reported as one.
        if !is_valid_service_key(&key) {
            return Err(OnionError::BadKey);
        }
        Ok(OnionName(s.to_ascii_lowercase()))
    }

    /// Builds the name of the service whose ed25519 public key is `key`.
    ///
    /// The key is taken as it is: a caller holding arbitrary bytes gets a
    /// name that [`OnionName::parse`] refuses with [`OnionError::BadKey`]
    /// (Tor would refuse it too). For made-up valid names use
    /// [`OnionName::from_seed`].
    pub fn from_public_key(key: &[u8; 32]) -> OnionName {
        let mut raw = [0u8; RAW_LEN];
        raw[..32].copy_from_slice(key);
        raw[32..34].copy_from_slice(&checksum(key, VERSION));
        raw[34] = VERSION;
        let mut name = BASE32_NOPAD.encode(&raw);
        name.make_ascii_lowercase();
        name.push_str(SUFFIX);
        OnionName(name)
    }

    /// A valid name derived deterministically from `seed`: the public key
    /// for the secret scalar `(seed, seed, …, seed) + 1` (the `+ 1` keeps
    /// seed 0 away from the identity). The one place tests (unit and
    /// integration) and examples get made-up destinations from, so every
    /// such name is one Tor would accept; distinct seeds give distinct
    /// names. Not for real services: the secret is public.
    pub fn from_seed(seed: u8) -> OnionName {
        let secret = Scalar::from_bytes_mod_order([seed; 32]) + Scalar::ONE;
        OnionName::from_public_key(&EdwardsPoint::mul_base(&secret).compress().to_bytes())
    }

    /// The name as stored: lowercase, with the `.onion` suffix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The service's ed25519 public key, recovered from the name.
    pub fn public_key(&self) -> [u8; 32] {
        let mut key = [0u8; 32];
        match self.0.get(..LABEL_LEN).map(decode_label) {
            Some(Ok(raw)) => key.copy_from_slice(&raw[..32]),
            // Unreachable: every constructor stores a label that decodes.
            // Kept as a soft check so that no input can make this panic.
            _ => debug_assert!(false, "OnionName holds an undecodable label"),
        }
        key
    }
}

impl fmt::Display for OnionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real, public v3 services, spelled as they publish themselves.
    const REAL_NAMES: [&str; 2] = [
        "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion",
        "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion",
    ];

    /// Encodes a key with a checksum and version of the test's choosing, to
    /// build names that are well-formed base32 but wrong in one respect.
    fn forge(key: &[u8; 32], sum: [u8; 2], version: u8) -> String {
        let mut raw = key.to_vec();
        raw.extend_from_slice(&sum);
        raw.push(version);
        format!("{}.onion", BASE32_NOPAD.encode(&raw).to_ascii_lowercase())
    }

    /// Replaces the character at `index` of the label with `with`.
    fn replace_at(name: &str, index: usize, with: char) -> String {
        name.chars()
            .enumerate()
            .map(|(i, c)| if i == index { with } else { c })
            .collect()
    }

    /// Picks a base32 character different from the one at `index`.
    fn flip_at(name: &str, index: usize) -> String {
        let current = name.chars().nth(index).unwrap();
        replace_at(name, index, if current == 'a' { 'b' } else { 'a' })
    }

    #[test]
    fn it_accepts_real_public_v3_names() {
        for name in REAL_NAMES {
            let parsed = OnionName::parse(name).unwrap();
            assert_eq!(parsed.as_str(), name);
            assert_eq!(parsed.to_string(), name);
            assert_eq!(OnionName::from_public_key(&parsed.public_key()), parsed);
        }
    }

    #[test]
    fn it_accepts_any_letter_case_and_stores_lowercase() {
        let name = REAL_NAMES[0];
        let mixed: String = name
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        for input in [name.to_ascii_uppercase(), mixed] {
            assert_eq!(OnionName::parse(&input).unwrap().as_str(), name, "{input}");
        }
    }

    #[test]
    fn it_round_trips_a_public_key() {
        for seed in [0u8, 1, 42, 0xff] {
            let key = OnionName::from_seed(seed).public_key();
            let built = OnionName::from_public_key(&key);
            assert_eq!(built.as_str().len(), LABEL_LEN + SUFFIX.len());
            assert!(built.as_str().ends_with(".onion"));
            let parsed = OnionName::parse(built.as_str()).unwrap();
            assert_eq!(parsed, built);
            assert_eq!(parsed.public_key(), key);
        }
    }

    #[test]
    fn it_gives_every_seed_a_distinct_name_tor_accepts() {
        let names: std::collections::HashSet<OnionName> = (0..=u8::MAX)
            .map(|seed| {
                let name = OnionName::from_seed(seed);
                assert_eq!(OnionName::parse(name.as_str()), Ok(name.clone()));
                name
            })
            .collect();
        assert_eq!(names.len(), 256);
    }

    /// 32 bytes that are no curve point: y² must make (y²−1)/(dy²+1) a
    /// square, which about half of all y values do not.
    fn not_a_point() -> [u8; 32] {
        (2u8..)
            .map(|b| [b; 32])
            .find(|k| CompressedEdwardsY(*k).decompress().is_none())
            .unwrap()
    }

    #[test]
    fn it_refuses_a_key_that_is_not_a_curve_point() {
        let name = OnionName::from_public_key(&not_a_point());
        assert_eq!(OnionName::parse(name.as_str()), Err(OnionError::BadKey));
    }

    #[test]
    fn it_refuses_a_key_with_a_torsion_component() {
        // y = 0 is a point of order 4: alone (small order) or added to a
        // good key (a torsion component), Tor refuses it.
        let order_four = CompressedEdwardsY([0; 32]).decompress().unwrap();
        let good = CompressedEdwardsY(OnionName::from_seed(5).public_key())
            .decompress()
            .unwrap();
        let mixed = (good + order_four).compress().to_bytes();
        for key in [mixed, [0; 32]] {
            let name = OnionName::from_public_key(&key);
            assert_eq!(
                OnionName::parse(name.as_str()),
                Err(OnionError::BadKey),
                "{name}"
            );
        }
    }

    /// The variable-time subgroup test gives dalek's constant-time answer
    /// for points in the subgroup, each of the eight torsion points alone,
    /// and every mix of the two, so the faster test refuses exactly the
    /// keys the reference refuses.
    #[test]
    fn its_torsion_test_agrees_with_dalek_on_every_torsion_component() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let mut tried = 0;
        for seed in 0..16u8 {
            let good = CompressedEdwardsY(OnionName::from_seed(seed).public_key())
                .decompress()
                .unwrap();
            for torsion in EIGHT_TORSION {
                for point in [good + torsion, torsion, good] {
                    assert_eq!(
                        is_torsion_free(&point),
                        point.is_torsion_free(),
                        "seed {seed}, {:?}",
                        point.compress()
                    );
                    tried += 1;
                }
            }
        }
        // Arbitrary curve points (random y): most carry a torsion part.
        for b in 0..=u8::MAX {
            let mut y = [b; 32];
            y[0] = b.wrapping_mul(31);
            if let Some(point) = CompressedEdwardsY(y).decompress() {
                assert_eq!(is_torsion_free(&point), point.is_torsion_free(), "{y:?}");
                tried += 1;
            }
        }
        assert!(tried > 400, "only {tried} points tried");
    }

    #[test]
    fn it_refuses_the_identity_as_a_key() {
        // y = 1 encodes the neutral element: torsion-free, yet no key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let name = OnionName::from_public_key(&identity);
        assert_eq!(OnionName::parse(name.as_str()), Err(OnionError::BadKey));
    }

    #[test]
    fn it_rejects_a_flipped_checksum_character() {
        // Characters 52 and 53 carry only checksum bits; 0 and 20 carry key
        // bits, which the checksum then fails to cover.
        for name in REAL_NAMES {
            for index in [0, 20, 52, 53] {
                let typo = flip_at(name, index);
                assert_eq!(
                    OnionName::parse(&typo),
                    Err(OnionError::BadChecksum),
                    "{typo}"
                );
            }
        }
    }

    #[test]
    fn it_rejects_version_bytes_other_than_3() {
        let key = [7u8; 32];
        for version in [0u8, 1, 2, 4, 0xff] {
            let name = forge(&key, checksum(&key, version), version);
            assert_eq!(
                OnionName::parse(&name),
                Err(OnionError::BadVersion { version }),
                "{name}"
            );
        }
    }

    #[test]
    fn it_rejects_a_checksum_that_was_computed_for_another_version() {
        let key = [7u8; 32];
        let name = forge(&key, checksum(&key, 2), VERSION);
        assert_eq!(OnionName::parse(&name), Err(OnionError::BadChecksum));
        let zeroed = forge(&key, [0, 0], VERSION);
        assert_eq!(OnionName::parse(&zeroed), Err(OnionError::BadChecksum));
    }

    #[test]
    fn it_rejects_labels_of_the_wrong_length() {
        let label = &REAL_NAMES[0][..LABEL_LEN];
        let cases = [
            (".onion".to_string(), 0),
            ("facebookcorewwwi.onion".to_string(), 16), // a retired v2 name
            (format!("{}.onion", &label[1..]), 55),
            (format!("{label}a.onion"), 57),
            (format!("mail.{label}.onion"), 61),
            (format!("{}.onion", "a".repeat(300)), 300),
            // Two bytes but one character: the count is in characters.
            (format!("é{}.onion", &label[2..]), 55),
        ];
        for (input, len) in cases {
            assert_eq!(
                OnionName::parse(&input),
                Err(OnionError::WrongLength { len }),
                "{input}"
            );
        }
    }

    #[test]
    fn it_rejects_characters_outside_the_base32_alphabet() {
        let name = REAL_NAMES[1];
        for bad in ['1', '0', '8', '9', '=', '-', '_', '.', ' ', '\0', 'é', 'ß'] {
            for index in [0, 30, 55] {
                let input = replace_at(name, index, bad);
                assert_eq!(
                    OnionName::parse(&input),
                    Err(OnionError::NotBase32),
                    "{input:?}"
                );
            }
        }
    }

    #[test]
    fn it_rejects_names_without_the_onion_suffix() {
        let name = REAL_NAMES[0];
        let label = &name[..LABEL_LEN];
        let cases = [
            String::new(),
            "onion".into(),
            "x".into(),
            label.into(),
            format!("{name}."),
            format!("{label}onion"),
            format!("{label}.onio"),
            format!("{name}.com"),
            format!("{label}.onion\0"),
            format!("{label}.onion\n"),
            format!("{label} .onion "),
            // The cut six bytes from the end falls inside 'é'.
            "éonion".into(),
            "aé.onio".into(),
        ];
        for input in cases {
            assert_eq!(
                OnionName::parse(&input),
                Err(OnionError::NotOnion),
                "{input:?}"
            );
        }
    }

    #[test]
    fn it_explains_each_error_in_plain_words() {
        let cases = [
            (
                OnionError::NotOnion,
                "not an onion name: it must end in .onion",
            ),
            (
                OnionError::WrongLength { len: 55 },
                "a v3 onion name has 56 base32 characters before .onion, this one has 55",
            ),
            (
                OnionError::BadVersion { version: 2 },
                "the onion name encodes version 2, but only version 3 names are supported",
            ),
            (
                OnionError::BadChecksum,
                "the checksum embedded in the onion name does not match (typo in the name?)",
            ),
            (
                OnionError::BadKey,
                "the onion name does not carry a valid service key; Tor cannot reach it",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
        assert!(OnionError::NotBase32.to_string().contains("a-z"));
    }

    #[test]
    fn it_never_panics_on_arbitrary_input_and_round_trips_what_it_accepts() {
        // A small deterministic generator keeps the test free of extra
        // dependencies while still covering odd mixes of characters.
        let alphabet: Vec<char> = "abcxyz234567ABZ0189.-_ onionONIONé\u{0}\r\n\u{85}€"
            .chars()
            .collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let cases = 5_000;
        let mut accepted = 0;
        for case in 0..cases {
            // A random string almost never carries a valid checksum, so
            // every other case starts from a real name (random key) and
            // changes its letter case, or one character, or nothing.
            let s = if case % 2 == 0 {
                let len = (next() % 80) as usize;
                let mut s: String = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                if next() % 2 == 0 {
                    s.push_str(".onion");
                }
                s
            } else {
                let name = OnionName::from_seed(next() as u8).to_string();
                match next() % 3 {
                    0 => name,
                    1 => name
                        .chars()
                        .map(|c| {
                            if next() % 2 == 0 {
                                c.to_ascii_uppercase()
                            } else {
                                c
                            }
                        })
                        .collect(),
                    _ => {
                        let at = (next() % name.chars().count() as u64) as usize;
                        let with = alphabet[(next() % alphabet.len() as u64) as usize];
                        replace_at(&name, at, with)
                    }
                }
            };
            if let Ok(name) = OnionName::parse(&s) {
                accepted += 1;
                assert_eq!(name.as_str(), s.to_ascii_lowercase(), "{s:?}");
                assert_eq!(OnionName::from_public_key(&name.public_key()), name);
            }
        }
        // About two thirds of the cases built from a real name stay valid;
        // far fewer would mean the round trip above was hardly exercised.
        assert!(
            accepted >= cases / 4,
            "only {accepted} of {cases} inputs parsed, the round trip went unchecked"
        );
    }
}
