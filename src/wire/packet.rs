//! Sphinx packets as pluto2 uses them: one size, one version, addresses
//! that are node identities.
//!
//! Every packet is [`PACKET_SIZE`] bytes (a 348-byte header and an
//! 8,192-byte payload), whatever it carries: data, acknowledgements and
//! cover look alike on every link. The `sphinx-packet` crate accepts any
//! length of at least 365 bytes when parsing, so [`WirePacket::from_slice`]
//! checks the exact size before the crate sees anything.
//!
//! Node addresses in headers are the 32-byte ed25519 identity keys inside
//! the nodes' v3 onion names ([`NodeId`]). A packet's final hop learns a
//! 16-byte identifier: zero for forward packets (the exit reads the payload
//! directly), non-zero for replies sent through a reply block, where it
//! names the recovery material the entry kept ([`ReplyRecovery`]).

use std::time::Duration;

use sphinx_packet::constants::{
    IDENTIFIER_LENGTH, NODE_ADDRESS_LENGTH, PAYLOAD_KEY_SEED_SIZE, REPLAY_TAG_SIZE,
};
use sphinx_packet::header::HEADER_SIZE;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::payload::{PAYLOAD_OVERHEAD_SIZE, Payload};
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::version::CURRENT_VERSION;
use sphinx_packet::{
    ProcessedPacketData, SURB, SURBMaterial, SphinxPacket, SphinxPacketBuilder, SurbReplyRecovery,
};
use x25519_dalek::{PublicKey, StaticSecret};

/// Bytes of Sphinx payload in every packet.
pub const PAYLOAD_SIZE: usize = 8192;
/// Bytes of every packet on every link.
pub const PACKET_SIZE: usize = HEADER_SIZE + PAYLOAD_SIZE;
const _: () = assert!(PACKET_SIZE == 8540);
/// The most plaintext one packet carries.
pub const MAX_PLAINTEXT: usize = PAYLOAD_SIZE - PAYLOAD_OVERHEAD_SIZE;
/// Bytes of a serialized single-use reply block: the epoch its keys are
/// for, then the Sphinx block (header, first hop, one payload key seed).
pub const REPLY_BLOCK_SIZE: usize = 4 + HEADER_SIZE + NODE_ADDRESS_LENGTH + PAYLOAD_KEY_SEED_SIZE;
/// The most hops a route (or a reply route) may have.
pub const MAX_HOPS: usize = sphinx_packet::constants::MAX_PATH_LENGTH;

/// A node's address in packet headers: its ed25519 identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

/// The per-hop replay tag (h_τ of the shared secret): the same packet
/// always yields the same tag at the same node, whatever else changes.
pub type ReplayTag = [u8; REPLAY_TAG_SIZE];

/// Names the recovery material of one reply block.
pub type ReplyId = [u8; IDENTIFIER_LENGTH];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet of {0} bytes; every packet is {PACKET_SIZE}")]
    Size(usize),
    #[error("reply block of {0} bytes; every reply block is {REPLY_BLOCK_SIZE}")]
    ReplyBlockSize(usize),
    #[error("route of {0} hops; 1 to {MAX_HOPS} are possible")]
    RouteLength(usize),
    #[error("plaintext of {0} bytes; at most {MAX_PLAINTEXT} fit")]
    TooLong(usize),
    #[error("packet version {0} is not the one this network uses")]
    Version(u16),
    #[error("the packet does not verify or decode: {0}")]
    Invalid(String),
}

fn invalid(e: sphinx_packet::Error) -> PacketError {
    PacketError::Invalid(e.to_string())
}

/// One hop of a route as the sender sees it.
#[derive(Clone)]
pub struct RouteHop {
    pub id: NodeId,
    /// The hop's X25519 mix key for the epoch the packet is built for.
    pub mix_key: PublicKey,
    /// How long the hop holds the packet before forwarding it (the last
    /// hop of a forward route ignores it).
    pub delay: Duration,
}

fn sphinx_route(route: &[RouteHop]) -> Result<(Vec<Node>, Vec<Delay>), PacketError> {
    if route.is_empty() || route.len() > MAX_HOPS {
        return Err(PacketError::RouteLength(route.len()));
    }
    let nodes = route
        .iter()
        .map(|h| Node::new(NodeAddressBytes::from_bytes(h.id.0), h.mix_key))
        .collect();
    let delays = route
        .iter()
        .map(|h| Delay::new_from_millis(h.delay.as_millis() as u64))
        .collect();
    Ok((nodes, delays))
}

/// A packet exactly as it crosses a link.
#[derive(Clone, PartialEq, Eq)]
pub struct WirePacket(Box<[u8]>);

impl std::fmt::Debug for WirePacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WirePacket({} bytes)", self.0.len())
    }
}

impl WirePacket {
    /// Takes bytes from a link or the spool; anything but the exact size
    /// is refused before parsing.
    pub fn from_slice(bytes: &[u8]) -> Result<WirePacket, PacketError> {
        if bytes.len() != PACKET_SIZE {
            return Err(PacketError::Size(bytes.len()));
        }
        Ok(WirePacket(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn from_sphinx(packet: &SphinxPacket) -> WirePacket {
        let bytes = packet.to_bytes();
        debug_assert_eq!(bytes.len(), PACKET_SIZE);
        WirePacket(bytes.into())
    }

    fn to_sphinx(&self) -> Result<SphinxPacket, PacketError> {
        SphinxPacket::from_bytes(&self.0).map_err(invalid)
    }
}

/// Wraps `plaintext` for `route`; the last hop is the destination.
pub fn build(plaintext: &[u8], route: &[RouteHop]) -> Result<WirePacket, PacketError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(PacketError::TooLong(plaintext.len()));
    }
    let (nodes, delays) = sphinx_route(route)?;
    let last = route[route.len() - 1].id;
    let destination = Destination::new(
        DestinationAddressBytes::from_bytes(last.0),
        [0; IDENTIFIER_LENGTH],
    );
    let packet = SphinxPacketBuilder::new()
        .with_payload_size(PAYLOAD_SIZE)
        .with_version(CURRENT_VERSION)
        .build_packet(plaintext, &nodes, &destination, &delays)
        .map_err(invalid)?;
    Ok(WirePacket::from_sphinx(&packet))
}

/// What a hop learns from a packet.
pub enum Processed {
    /// Send `packet` to `next` after `delay`.
    Forward {
        next: NodeId,
        delay: Duration,
        packet: WirePacket,
    },
    /// This node is the last hop. `to` is the destination the route's
    /// maker named: this node's own id, or (at a gateway) a client's
    /// mailbox key, where the payload waits for the client to fetch it.
    Final {
        to: [u8; 32],
        id: ReplyId,
        payload: FinalPayload,
    },
}

/// The payload at the destination: plaintext for forward packets, sealed
/// for replies until the reply block's creator opens it.
pub struct FinalPayload(Payload);

impl FinalPayload {
    /// The plaintext of a forward packet (identifier zero).
    pub fn plaintext(self) -> Result<Vec<u8>, PacketError> {
        self.0.recover_plaintext().map_err(invalid)
    }

    /// The payload's bytes as a gateway holds them for a client
    /// ([`PAYLOAD_SIZE`] bytes, sealed).
    pub fn into_bytes(self) -> Vec<u8> {
        self.0.into_bytes()
    }

    /// A payload fetched from a gateway; anything but the exact size is
    /// refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<FinalPayload, PacketError> {
        if bytes.len() != PAYLOAD_SIZE {
            return Err(PacketError::Invalid(format!(
                "payload of {} bytes; every payload is {PAYLOAD_SIZE}",
                bytes.len()
            )));
        }
        Payload::from_bytes(bytes)
            .map(FinalPayload)
            .map_err(invalid)
    }

    /// The plaintext of a reply, with the material kept when the reply
    /// block was made.
    pub fn open(self, recovery: &ReplyRecovery) -> Result<Vec<u8>, PacketError> {
        let material = SurbReplyRecovery::from_bytes(&recovery.0).map_err(invalid)?;
        material.recover_plaintext(self.0).map_err(invalid)
    }
}

/// Computes the replay tag, then unwraps one layer with `mix_key`. The tag
/// comes back even when unwrapping fails, so a hop can recognise a replay
/// of a bad packet too. CPU-bound (one X25519 and the payload cipher):
/// callers run it off the async executor.
pub fn process(
    packet: &WirePacket,
    mix_key: &StaticSecret,
) -> (ReplayTag, Result<Processed, PacketError>) {
    let sphinx = match packet.to_sphinx() {
        Ok(p) => p,
        Err(e) => return ([0; REPLAY_TAG_SIZE], Err(e)),
    };
    let expanded = sphinx.header.compute_expanded_shared_secret(mix_key);
    let tag = *expanded.replay_tag();
    let processed = match sphinx.process_with_expanded_secret(&expanded) {
        Ok(p) => p,
        Err(e) => return (tag, Err(invalid(e))),
    };
    if processed.version != CURRENT_VERSION {
        return (tag, Err(PacketError::Version(processed.version.value())));
    }
    let out = match processed.data {
        ProcessedPacketData::ForwardHop {
            next_hop_packet,
            next_hop_address,
            delay,
        } => Processed::Forward {
            next: NodeId(next_hop_address.to_bytes()),
            delay: Duration::from_millis(delay.to_nanos() / 1_000_000),
            packet: WirePacket::from_sphinx(&next_hop_packet),
        },
        ProcessedPacketData::FinalHop {
            destination,
            identifier,
            payload,
        } => Processed::Final {
            to: destination.as_bytes(),
            id: identifier,
            payload: FinalPayload(payload),
        },
    };
    (tag, Ok(out))
}

/// A single-use reply block, carried inside a fragment to the exit, which
/// uses it to send one acknowledgement back without knowing the route.
/// It is built with the hops' keys of one epoch and says which, so that
/// the reply travels with that epoch in its link frames even when it is
/// sent after a rotation (within the keys' grace).
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyBlock(Box<[u8]>);

impl std::fmt::Debug for ReplyBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyBlock(..)")
    }
}

/// What the reply block's creator keeps to read the reply (secret; stored
/// with the message it acknowledges, deleted with it).
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyRecovery(pub Vec<u8>);

impl ReplyBlock {
    pub fn from_slice(bytes: &[u8]) -> Result<ReplyBlock, PacketError> {
        if bytes.len() != REPLY_BLOCK_SIZE {
            return Err(PacketError::ReplyBlockSize(bytes.len()));
        }
        Ok(ReplyBlock(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Makes a reply block whose route ends at this node (`route`'s last
    /// hop, keys of `epoch`), filed under `id` (non-zero).
    pub fn create(
        route: &[RouteHop],
        id: ReplyId,
        epoch: u32,
    ) -> Result<(ReplyBlock, ReplyRecovery), PacketError> {
        let last = route.last().ok_or(PacketError::RouteLength(0))?.id;
        ReplyBlock::create_to(route, last.0, id, epoch)
    }

    /// Makes a reply block whose route ends at a gateway (`route`'s last
    /// hop) that keeps the reply for the mailbox `to` (a client's key
    /// there).
    pub fn create_to(
        route: &[RouteHop],
        to: [u8; 32],
        id: ReplyId,
        epoch: u32,
    ) -> Result<(ReplyBlock, ReplyRecovery), PacketError> {
        let (nodes, delays) = sphinx_route(route)?;
        let destination = Destination::new(DestinationAddressBytes::from_bytes(to), id);
        let material = SURBMaterial::new(nodes, delays, destination, CURRENT_VERSION);
        let (surb, recovery) = material.construct_recoverable_SURB().map_err(invalid)?;
        let mut bytes = epoch.to_be_bytes().to_vec();
        bytes.extend_from_slice(&surb.to_bytes());
        debug_assert_eq!(bytes.len(), REPLY_BLOCK_SIZE);
        Ok((ReplyBlock(bytes.into()), ReplyRecovery(recovery.to_bytes())))
    }

    /// The epoch whose keys the block was built with.
    pub fn epoch(&self) -> u32 {
        u32::from_be_bytes(self.0[..4].try_into().expect("checked size"))
    }

    /// Wraps `plaintext` with the block; returns the packet and the first
    /// hop to send it to.
    pub fn send(&self, plaintext: &[u8]) -> Result<(WirePacket, NodeId), PacketError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(PacketError::TooLong(plaintext.len()));
        }
        let surb = SURB::from_bytes(&self.0[4..]).map_err(invalid)?;
        let (packet, first) = surb.use_surb(plaintext, PAYLOAD_SIZE).map_err(invalid)?;
        Ok((WirePacket::from_sphinx(&packet), NodeId(first.to_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    struct TestNode {
        id: NodeId,
        secret: StaticSecret,
    }

    fn nodes(n: usize, seed: u64) -> Vec<TestNode> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let mut id = [0u8; 32];
                let mut key = [0u8; 32];
                rand::Rng::fill(&mut rng, &mut id);
                rand::Rng::fill(&mut rng, &mut key);
                TestNode {
                    id: NodeId(id),
                    secret: StaticSecret::from(key),
                }
            })
            .collect()
    }

    fn route(nodes: &[TestNode], delay_ms: u64) -> Vec<RouteHop> {
        nodes
            .iter()
            .map(|n| RouteHop {
                id: n.id,
                mix_key: PublicKey::from(&n.secret),
                delay: Duration::from_millis(delay_ms),
            })
            .collect()
    }

    /// Processes `packet` along `nodes`, checking each hop's view.
    fn walk(mut packet: WirePacket, nodes: &[TestNode], delay_ms: u64) -> (ReplyId, FinalPayload) {
        for (i, node) in nodes.iter().enumerate() {
            assert_eq!(packet.as_bytes().len(), PACKET_SIZE, "hop {i}");
            let (_, result) = process(&packet, &node.secret);
            match result.unwrap() {
                Processed::Forward {
                    next,
                    delay,
                    packet: p,
                } => {
                    assert_eq!(next, nodes[i + 1].id, "hop {i} forwards to the next");
                    assert_eq!(delay, Duration::from_millis(delay_ms));
                    packet = p;
                }
                Processed::Final { id, payload, .. } => {
                    assert_eq!(i, nodes.len() - 1, "only the last hop is final");
                    return (id, payload);
                }
            }
        }
        panic!("no final hop");
    }

    #[test]
    fn a_packet_keeps_its_size_at_every_hop_and_reaches_the_last() {
        let path = nodes(3, 1);
        let message = b"fragment bytes".repeat(100);
        let packet = build(&message, &route(&path, 25)).unwrap();
        let (id, payload) = walk(packet, &path, 25);
        assert_eq!(id, [0; 16]);
        assert_eq!(payload.plaintext().unwrap(), message);
    }

    #[test]
    fn the_largest_plaintext_fits_and_one_more_byte_does_not() {
        let path = nodes(3, 2);
        let full = vec![7u8; MAX_PLAINTEXT];
        let (_, payload) = walk(build(&full, &route(&path, 0)).unwrap(), &path, 0);
        assert_eq!(payload.plaintext().unwrap(), full);
        assert_eq!(
            build(&[0; MAX_PLAINTEXT + 1], &route(&path, 0)).unwrap_err(),
            PacketError::TooLong(MAX_PLAINTEXT + 1)
        );
    }

    #[test]
    fn it_refuses_every_size_but_the_exact_one() {
        for len in [0, 365, PACKET_SIZE - 1, PACKET_SIZE + 1, 69_316] {
            assert_eq!(
                WirePacket::from_slice(&vec![0; len]).unwrap_err(),
                PacketError::Size(len)
            );
        }
        assert!(WirePacket::from_slice(&[0; PACKET_SIZE]).is_ok());
    }

    #[test]
    fn the_replay_tag_is_stable_for_a_packet_and_differs_between_packets() {
        let path = nodes(3, 3);
        let a = build(b"a", &route(&path, 0)).unwrap();
        let b = build(b"a", &route(&path, 0)).unwrap();
        let (tag_a1, _) = process(&a, &path[0].secret);
        let (tag_a2, _) = process(&a, &path[0].secret);
        let (tag_b, _) = process(&b, &path[0].secret);
        assert_eq!(tag_a1, tag_a2);
        assert_ne!(tag_a1, tag_b);
    }

    #[test]
    fn a_tampered_packet_or_a_wrong_key_is_refused_with_its_tag() {
        let path = nodes(3, 4);
        let packet = build(b"x", &route(&path, 0)).unwrap();
        let mut bytes = packet.as_bytes().to_vec();
        bytes[100] ^= 1; // inside the encrypted routing information
        let tampered = WirePacket::from_slice(&bytes).unwrap();
        let (tag, result) = process(&tampered, &path[0].secret);
        assert!(matches!(result, Err(PacketError::Invalid(_))));
        assert_ne!(tag, [0; 32], "the tag is known before the MAC check");
        let (_, result) = process(&packet, &path[1].secret);
        assert!(matches!(result, Err(PacketError::Invalid(_))));
    }

    #[test]
    fn a_reply_block_carries_an_answer_back_to_its_creator_only() {
        let path = nodes(4, 5); // three hops, then the entry itself
        let (block, recovery) = ReplyBlock::create(&route(&path, 10), [9; 16], 77).unwrap();
        assert_eq!(block.as_bytes().len(), REPLY_BLOCK_SIZE);
        let block = ReplyBlock::from_slice(block.as_bytes()).unwrap();
        assert_eq!(block.epoch(), 77);
        let (packet, first) = block.send(b"COMPLETE").unwrap();
        assert_eq!(first, path[0].id);
        let (id, payload) = walk(packet, &path, 10);
        assert_eq!(id, [9; 16]);
        assert_eq!(payload.open(&recovery).unwrap(), b"COMPLETE");

        // Ending at a gateway for a mailbox: the gateway learns the
        // mailbox and can hold the sealed payload; only the material opens it.
        let (block, recovery) =
            ReplyBlock::create_to(&route(&path, 10), [42; 32], [7; 16], 77).unwrap();
        let (mut packet, _) = block.send(b"PARTIAL").unwrap();
        for node in &path[..3] {
            match process(&packet, &node.secret).1.unwrap() {
                Processed::Forward { packet: p, .. } => packet = p,
                Processed::Final { .. } => panic!("final too early"),
            }
        }
        let Processed::Final { to, id, payload } = process(&packet, &path[3].secret).1.unwrap()
        else {
            panic!("the gateway is the last hop");
        };
        assert_eq!((to, id), ([42; 32], [7; 16]));
        let held = payload.into_bytes();
        assert_eq!(held.len(), PAYLOAD_SIZE);
        assert!(!held.windows(7).any(|w| w == b"PARTIAL"), "sealed");
        let fetched = FinalPayload::from_bytes(&held).unwrap();
        assert_eq!(fetched.open(&recovery).unwrap(), b"PARTIAL");
        assert!(FinalPayload::from_bytes(&held[1..]).is_err());

        let (other_block, _) = ReplyBlock::create(&route(&path, 10), [8; 16], 77).unwrap();
        let (_, wrong) = ReplyBlock::create(&route(&path, 10), [9; 16], 77).unwrap();
        let (packet, _) = other_block.send(b"COMPLETE").unwrap();
        let (_, payload) = walk(packet, &path, 10);
        assert!(payload.open(&wrong).is_err(), "another block's material");
    }
}
