//! Key bundles: a node's mix public keys for a run of epochs, signed by
//! its identity key.
//!
//! Mix keys rotate every epoch, so they cannot be pinned in `nodes.json`
//! as identities are. Instead each node signs a bundle of its keys for
//! [`SLOTS`] consecutive epochs (the previous one, the current one and
//! those made ahead) and peers fetch it over the link (`KEYS`). The
//! signature covers the network parameter hash too, so a bundle made for
//! one network (or one epoch length) is never valid in another.
//!
//! A node that signs two different keys for one epoch has shown two faces
//! (a tagging attack: each peer builds packets only that node can tell
//! apart); [`Bundle::conflict`] finds it, and the two signatures are the
//! proof.
//!
//! Pure: bytes in, bytes out, no clock and no key files.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::packet::NodeId;

/// Epochs per bundle: previous (grace), current, and two ahead.
pub const SLOTS: usize = 4;
/// Bytes of an encoded bundle: node, first epoch, keys, signature.
pub const BUNDLE_SIZE: usize = 32 + 4 + 32 * SLOTS + 64;

const LABEL: &[u8] = b"pluto2 mix key bundle v1\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle of {0} bytes; a bundle is {BUNDLE_SIZE}")]
    Size(usize),
    #[error("the bundle's signature does not verify with the node's identity key")]
    Signature,
}

/// One node's signed mix keys for epochs `first ..= first + SLOTS - 1`.
/// An all-zero key means "no key for that epoch" (a node that started
/// after it began has none for the previous epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The node whose keys these are (its header address).
    pub node: NodeId,
    pub first: u32,
    pub keys: [[u8; 32]; SLOTS],
    signature: [u8; 64],
}

impl Bundle {
    fn message(
        params_hash: &[u8; 32],
        node: &NodeId,
        first: u32,
        keys: &[[u8; 32]; SLOTS],
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(LABEL.len() + 32 + 32 + 4 + 32 * SLOTS);
        m.extend_from_slice(LABEL);
        m.extend_from_slice(params_hash);
        m.extend_from_slice(&node.0);
        m.extend_from_slice(&first.to_be_bytes());
        for k in keys {
            m.extend_from_slice(k);
        }
        m
    }

    /// Signs `keys` (for `first` onwards) as `node` with `identity`.
    pub fn sign(
        identity: &SigningKey,
        params_hash: &[u8; 32],
        node: NodeId,
        first: u32,
        keys: [[u8; 32]; SLOTS],
    ) -> Bundle {
        let signature = identity
            .sign(&Self::message(params_hash, &node, first, &keys))
            .to_bytes();
        Bundle {
            node,
            first,
            keys,
            signature,
        }
    }

    /// Checks the signature against the identity `nodes.json` lists for
    /// the node. Strict verification: no malleable signatures, no weak
    /// keys.
    pub fn verify(
        &self,
        identity: &VerifyingKey,
        params_hash: &[u8; 32],
    ) -> Result<(), BundleError> {
        let message = Self::message(params_hash, &self.node, self.first, &self.keys);
        identity
            .verify_strict(&message, &Signature::from_bytes(&self.signature))
            .map_err(|_| BundleError::Signature)
    }

    /// The key for `epoch`, if the bundle has one.
    pub fn key(&self, epoch: u32) -> Option<[u8; 32]> {
        let i = epoch.checked_sub(self.first)? as usize;
        self.keys.get(i).copied().filter(|k| *k != [0; 32])
    }

    /// The last epoch the bundle covers.
    pub fn last(&self) -> u32 {
        self.first.saturating_add(SLOTS as u32 - 1)
    }

    /// The first epoch for which both bundles name a key and the keys
    /// differ: two faces of one node.
    pub fn conflict(&self, other: &Bundle) -> Option<u32> {
        (self.first.max(other.first)..=self.last().min(other.last()))
            .find(|e| matches!((self.key(*e), other.key(*e)), (Some(a), Some(b)) if a != b))
    }

    pub fn encode(&self) -> [u8; BUNDLE_SIZE] {
        let mut out = [0u8; BUNDLE_SIZE];
        out[..32].copy_from_slice(&self.node.0);
        out[32..36].copy_from_slice(&self.first.to_be_bytes());
        for (i, k) in self.keys.iter().enumerate() {
            out[36 + 32 * i..68 + 32 * i].copy_from_slice(k);
        }
        out[36 + 32 * SLOTS..].copy_from_slice(&self.signature);
        out
    }

    /// Decodes the layout only; [`Bundle::verify`] decides whether to
    /// believe it.
    pub fn decode(bytes: &[u8]) -> Result<Bundle, BundleError> {
        if bytes.len() != BUNDLE_SIZE {
            return Err(BundleError::Size(bytes.len()));
        }
        let mut keys = [[0u8; 32]; SLOTS];
        for (i, k) in keys.iter_mut().enumerate() {
            k.copy_from_slice(&bytes[36 + 32 * i..68 + 32 * i]);
        }
        Ok(Bundle {
            node: NodeId(bytes[..32].try_into().expect("32 bytes")),
            first: u32::from_be_bytes(bytes[32..36].try_into().expect("4 bytes")),
            keys,
            signature: bytes[36 + 32 * SLOTS..].try_into().expect("64 bytes"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn bundle(first: u32, keys: [[u8; 32]; SLOTS]) -> Bundle {
        Bundle::sign(&identity(1), &[9; 32], NodeId([5; 32]), first, keys)
    }

    #[test]
    fn a_signed_bundle_round_trips_and_verifies() {
        let b = bundle(100, [[1; 32], [2; 32], [3; 32], [4; 32]]);
        let decoded = Bundle::decode(&b.encode()).unwrap();
        assert_eq!(decoded, b);
        decoded
            .verify(&identity(1).verifying_key(), &[9; 32])
            .unwrap();
        assert_eq!(decoded.key(101), Some([2; 32]));
        assert_eq!(decoded.key(99), None);
        assert_eq!(decoded.key(104), None);
        assert_eq!(decoded.last(), 103);
    }

    #[test]
    fn any_changed_byte_or_other_network_or_signer_fails() {
        let b = bundle(100, [[1; 32], [2; 32], [3; 32], [4; 32]]);
        let bytes = b.encode();
        for i in [0, 33, 40, 100, BUNDLE_SIZE - 1] {
            let mut bad = bytes;
            bad[i] ^= 1;
            let decoded = Bundle::decode(&bad).unwrap();
            assert_eq!(
                decoded.verify(&identity(1).verifying_key(), &[9; 32]),
                Err(BundleError::Signature),
                "byte {i}"
            );
        }
        assert!(b.verify(&identity(2).verifying_key(), &[9; 32]).is_err());
        assert!(b.verify(&identity(1).verifying_key(), &[8; 32]).is_err());
        assert_eq!(
            Bundle::decode(&bytes[1..]),
            Err(BundleError::Size(BUNDLE_SIZE - 1))
        );
    }

    #[test]
    fn a_missing_key_is_absent_not_zero() {
        let b = bundle(7, [[0; 32], [2; 32], [3; 32], [4; 32]]);
        assert_eq!(b.key(7), None);
        assert_eq!(b.key(8), Some([2; 32]));
    }

    #[test]
    fn two_faces_are_found_only_where_both_name_a_key() {
        let a = bundle(10, [[1; 32], [2; 32], [3; 32], [4; 32]]);
        // The next bundle of an honest node: shifted by one, same keys.
        let next = bundle(11, [[2; 32], [3; 32], [4; 32], [5; 32]]);
        assert_eq!(a.conflict(&next), None);
        let other_face = bundle(11, [[2; 32], [9; 32], [4; 32], [5; 32]]);
        assert_eq!(a.conflict(&other_face), Some(12));
        let gap = bundle(10, [[0; 32], [2; 32], [3; 32], [4; 32]]);
        assert_eq!(a.conflict(&gap), None);
        let far = bundle(20, [[7; 32]; SLOTS]);
        assert_eq!(a.conflict(&far), None);
    }
}
