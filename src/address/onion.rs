//! Tor v3 onion service names (rend-spec-v3, "Encoding onion addresses").
//!
//! A v3 name is base32(PUBKEY | CHECKSUM | VERSION) + ".onion", where
//! CHECKSUM = SHA3-256(".onion checksum" | PUBKEY | VERSION)[..2] and
//! VERSION = 3. Verifying the checksum catches typos before mail is queued
//! for a destination that cannot exist, the same way Tor itself refuses it.

use std::fmt;

use data_encoding::BASE32_NOPAD;
use sha3::{Digest, Sha3_256};

const SUFFIX: &str = ".onion";
const ENCODED_LEN: usize = 56;
const VERSION: u8 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OnionError {
    #[error("not an onion name: it must end in .onion")]
    NotOnion,
    #[error("a v3 onion name has 56 base32 characters before .onion, this one has {len}")]
    WrongLength { len: usize },
    #[error("an onion name may only contain the letters a-z and digits 2-7")]
    NotBase32,
    #[error("onion name version byte is {version}, only version 3 names are supported")]
    BadVersion { version: u8 },
    #[error("the checksum embedded in the onion name does not match (typo in the name?)")]
    BadChecksum,
}

/// A verified v3 onion name, stored lowercase with its `.onion` suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OnionName(String);

fn checksum(key: &[u8; 32], version: u8) -> [u8; 2] {
    let mut h = Sha3_256::new();
    h.update(b".onion checksum");
    h.update(key);
    h.update([version]);
    let digest = h.finalize();
    [digest[0], digest[1]]
}

impl OnionName {
    /// Accepts exactly `<56 base32>.onion` in any letter case.
    pub fn parse(s: &str) -> Result<OnionName, OnionError> {
        let lower = s.to_ascii_lowercase();
        let label = lower.strip_suffix(SUFFIX).ok_or(OnionError::NotOnion)?;
        let len = label.chars().count();
        if len != ENCODED_LEN || label.contains('.') {
            return Err(OnionError::WrongLength { len });
        }
        let raw = BASE32_NOPAD
            .decode(label.to_ascii_uppercase().as_bytes())
            .map_err(|_| OnionError::NotBase32)?;
        let (key, rest) = raw.split_at(32);
        let key: [u8; 32] = key.try_into().map_err(|_| OnionError::NotBase32)?;
        let version = rest[2];
        if version != VERSION {
            return Err(OnionError::BadVersion { version });
        }
        if rest[..2] != checksum(&key, version) {
            return Err(OnionError::BadChecksum);
        }
        Ok(OnionName(lower))
    }

    /// Builds the name of the service with this ed25519 public key.
    pub fn from_public_key(key: &[u8; 32]) -> OnionName {
        let mut raw = Vec::with_capacity(35);
        raw.extend_from_slice(key);
        raw.extend_from_slice(&checksum(key, VERSION));
        raw.push(VERSION);
        let label = BASE32_NOPAD.encode(&raw).to_ascii_lowercase();
        OnionName(format!("{label}{SUFFIX}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn public_key(&self) -> [u8; 32] {
        let label = &self.0[..ENCODED_LEN];
        let raw = BASE32_NOPAD
            .decode(label.to_ascii_uppercase().as_bytes())
            .expect("validated at construction");
        raw[..32].try_into().expect("35 decoded bytes")
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

    const KNOWN_GOOD: [&str; 2] = [
        "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion",
        "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion",
    ];

    /// Re-encodes a name's key with a chosen checksum and version.
    fn forge(key: &[u8; 32], sum: [u8; 2], version: u8) -> String {
        let mut raw = key.to_vec();
        raw.extend_from_slice(&sum);
        raw.push(version);
        format!("{}.onion", BASE32_NOPAD.encode(&raw).to_ascii_lowercase())
    }

    #[test]
    fn it_accepts_real_public_onion_names() {
        for name in KNOWN_GOOD {
            assert_eq!(OnionName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn it_accepts_uppercase_and_stores_lowercase() {
        let upper = KNOWN_GOOD[0].to_ascii_uppercase();
        assert_eq!(OnionName::parse(&upper).unwrap().as_str(), KNOWN_GOOD[0]);
    }

    #[test]
    fn it_round_trips_a_public_key() {
        let key = [42u8; 32];
        let name = OnionName::from_public_key(&key);
        assert_eq!(OnionName::parse(name.as_str()).unwrap(), name);
        assert_eq!(name.public_key(), key);
    }

    #[test]
    fn it_rejects_a_flipped_checksum_character() {
        let good = KNOWN_GOOD[1];
        let flipped = format!(
            "{}{}",
            if good.starts_with('a') { 'b' } else { 'a' },
            &good[1..]
        );
        assert_eq!(OnionName::parse(&flipped), Err(OnionError::BadChecksum));
    }

    #[test]
    fn it_rejects_a_wrong_version_byte() {
        let key = [7u8; 32];
        let v2 = forge(&key, checksum(&key, 2), 2);
        assert_eq!(
            OnionName::parse(&v2),
            Err(OnionError::BadVersion { version: 2 })
        );
        let wrong_sum = forge(&key, checksum(&key, 2), 3);
        assert_eq!(OnionName::parse(&wrong_sum), Err(OnionError::BadChecksum));
    }

    #[test]
    fn it_rejects_malformed_names() {
        let good = KNOWN_GOOD[0];
        let label = &good[..56];
        let cases: Vec<(String, OnionError)> = vec![
            (String::new(), OnionError::NotOnion),
            (".onion".into(), OnionError::WrongLength { len: 0 }),
            (label.into(), OnionError::NotOnion),
            (format!("{label}.onion."), OnionError::NotOnion),
            (
                format!("{}.onion", &label[1..]),
                OnionError::WrongLength { len: 55 },
            ),
            (
                format!("{label}a.onion"),
                OnionError::WrongLength { len: 57 },
            ),
            (format!("1{}.onion", &label[1..]), OnionError::NotBase32),
            (format!("0{}.onion", &label[1..]), OnionError::NotBase32),
            (format!("8{}.onion", &label[1..]), OnionError::NotBase32),
            (
                format!("é{}.onion", &label[2..]),
                OnionError::WrongLength { len: 55 },
            ),
            (
                "x".repeat(300) + ".onion",
                OnionError::WrongLength { len: 300 },
            ),
            (
                "facebookcorewwwi.onion".into(),
                OnionError::WrongLength { len: 16 },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(OnionName::parse(&input), Err(expected), "{input:?}");
        }
    }
}
