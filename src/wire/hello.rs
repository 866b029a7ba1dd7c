//! The proof in the link handshake: what each side signs and how the
//! other side checks it (link protocol 3).
//!
//! The dialler sends HELLO with a fresh nonce; the listener answers with
//! its own HELLO (its own nonce) and AUTH, its signature; the dialler
//! checks it and sends its AUTH. Each signature covers both HELLOs whole:
//! the network parameters, both roles and identities, both nonces and
//! both clocks, under a label naming the signing side. So a signature
//! proves the signer holds its key *now, on this link, to this peer*:
//!
//! * it is good for no other link (the other side's nonce is fresh);
//! * it cannot be relayed: a node that dials the listener while being
//!   dialled by a third node gets a signature naming itself as the
//!   dialler, which the third node, expecting the listener's identity in
//!   the HELLO it reads, refuses;
//! * it cannot be reflected: the dialler's and the listener's signatures
//!   are over different labels;
//! * it binds the parameters: a peer with another `nodes.json` fails
//!   before any signature, and one that lied about them could not reuse a
//!   signature made under the real ones.
//!
//! The listener signs before the dialler has proven anything. That costs
//! it one signature (about 20 µs) per HELLO that names a listed node, and
//! saves a round trip over Tor on every link (the dialler sends its AUTH
//! and its first packets together). A HELLO that names no listed node
//! gets no answer at all, so a stranger cannot even make a node sign
//! without knowing a listed identity (which `nodes.json` publishes; the
//! cost stays bounded by the unauthenticated pool and its deadline).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::frame::Hello;

/// Which side of the handshake signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that opened the connection.
    Dialler,
    /// The side that accepted it.
    Listener,
}

/// Domain separation: nothing else pluto2 signs starts with these bytes.
const LABEL: &[u8] = b"pluto2 link hello v3 ";

/// The bytes a side signs: the label, its side, then the dialler's HELLO
/// body and the listener's.
pub fn signed_bytes(side: Side, dialler: &Hello, listener: &Hello) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL.len() + 1 + 2 * dialler.body().len());
    m.extend_from_slice(LABEL);
    m.push(match side {
        Side::Dialler => b'D',
        Side::Listener => b'L',
    });
    m.extend_from_slice(&dialler.body());
    m.extend_from_slice(&listener.body());
    m
}

/// `side`'s proof for the handshake of these two HELLOs.
pub fn prove(key: &SigningKey, side: Side, dialler: &Hello, listener: &Hello) -> [u8; 64] {
    key.sign(&signed_bytes(side, dialler, listener)).to_bytes()
}

/// A signature that does not verify with the key the peer must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer's AUTH does not verify with the key it must hold")]
pub struct BadProof;

/// Checks `side`'s proof against the key that side must hold (strict
/// verification: no malleable or small-order signatures).
pub fn check(
    key: &VerifyingKey,
    side: Side,
    dialler: &Hello,
    listener: &Hello,
    signature: &[u8; 64],
) -> Result<(), BadProof> {
    key.verify_strict(
        &signed_bytes(side, dialler, listener),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| BadProof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{PROTOCOL_VERSION, Role};

    fn hello(identity: u8, nonce: u8) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            params_hash: [9; 32],
            role: Role::Node,
            identity: [identity; 32],
            nonce: [nonce; 32],
            clock_secs: 1_700_000_000,
        }
    }

    #[test]
    fn a_proof_holds_only_for_its_side_its_key_and_both_hellos_as_they_were() {
        let (d, l) = (hello(1, 10), hello(2, 20));
        let key = SigningKey::from_bytes(&[5; 32]);
        let sig = prove(&key, Side::Dialler, &d, &l);
        let public = key.verifying_key();
        assert_eq!(check(&public, Side::Dialler, &d, &l, &sig), Ok(()));
        // Another side (reflection), another key, another nonce (replay on
        // a new link), other parameters, roles swapped: all refused.
        assert_eq!(check(&public, Side::Listener, &d, &l, &sig), Err(BadProof));
        let other = SigningKey::from_bytes(&[6; 32]).verifying_key();
        assert_eq!(check(&other, Side::Dialler, &d, &l, &sig), Err(BadProof));
        assert_eq!(
            check(&public, Side::Dialler, &d, &hello(2, 21), &sig),
            Err(BadProof)
        );
        let mut params = l;
        params.params_hash[0] ^= 1;
        assert_eq!(
            check(&public, Side::Dialler, &d, &params, &sig),
            Err(BadProof)
        );
        let mut client = d;
        client.role = Role::Client;
        assert_eq!(
            check(&public, Side::Dialler, &client, &l, &sig),
            Err(BadProof)
        );
        assert_eq!(check(&public, Side::Dialler, &l, &d, &sig), Err(BadProof));
    }
}
