//! Frames on a link between two mix nodes (the `-node` listener).
//!
//! A frame is a type byte followed by a body whose length is fixed by the
//! type, so the reader knows after one byte how much to expect and never
//! reads more than one packet's worth from a stranger:
//!
//! | type | frame | body |
//! |---|---|---|
//! | 1 | HELLO | protocol version u16, network parameter hash [32], role u8, sender identity [32], nonce [32], clock (unix s) u64 |
//! | 2 | PACKET | sequence u64, epoch u32, packet [`PACKET_SIZE`] |
//! | 3 | ACK | sequence u64, status u8 |
//! | 4 | PING | nonce u64, subject node [32], epoch u32 |
//! | 5 | PONG | nonce u64, subject node [32], epoch u32, subject's key for it [32] (zero: none) |
//! | 6 | GETKEYS | subject node [32] |
//! | 7 | KEYS | subject node [32], present u8, bundle [`BUNDLE_SIZE`] (zero when absent) |
//! | 8 | AUTH | ed25519 signature [64] over both HELLOs ([`super::hello`]) |
//! | 9 | FETCH | request u64 (client → gateway) |
//! | 10 | HELD | request u64, present u8, delivery id [16], reply id [16], payload [`PAYLOAD_SIZE`] (zeros when absent) |
//! | 11 | CONFIRM | delivery id [16] (client → gateway: committed, delete it) |
//!
//! FETCH, HELD and CONFIRM exist only on a client's link to its gateway
//! (DESIGN.md, "Client mode"). HELD is as long whether it carries a reply
//! or not, so neither the client's Tor circuit nor anything that sees the
//! link's bytes can tell an empty mailbox from a full one.
//!
//! A HELLO's length depends on its version, so its version is read first
//! and any version but ours is an error naming it before the rest is
//! awaited: a node of an older release is told apart from a stranger
//! sending garbage (version 2's HELLO had no role, nonce or AUTH).
//!
//! PING and PONG also compare notes: each PING asks the peer which mix key
//! it holds for some node (the subject) in some epoch, so that a node
//! showing different keys to different peers is caught (`mixnet::forwarder`).
//! GETKEYS asks for the subject's signed bundle as the peer holds it; the
//! peer itself as subject is how bundles are fetched.
//!
//! Sans-I/O: [`decode`] takes the bytes read so far and says how many it
//! used, or that it needs more.

use super::bundle::{BUNDLE_SIZE, Bundle};
use super::packet::{PACKET_SIZE, PAYLOAD_SIZE, PacketError, WirePacket};

/// The link protocol version in HELLO: 3 since links are authenticated
/// (HELLO with a role and a nonce, then AUTH).
pub const PROTOCOL_VERSION: u16 = 3;

const HELLO: u8 = 1;
const PACKET: u8 = 2;
const ACK: u8 = 3;
const PING: u8 = 4;
const PONG: u8 = 5;
const GETKEYS: u8 = 6;
const KEYS: u8 = 7;
const AUTH: u8 = 8;
const FETCH: u8 = 9;
const HELD: u8 = 10;
const CONFIRM: u8 = 11;

/// The length of a HELLO frame, type byte included.
pub const HELLO_FRAME: usize = 1 + HELLO_BODY;
const HELLO_BODY: usize = 2 + 32 + 1 + 32 + 32 + 8;

const HELD_BODY: usize = 8 + 1 + 16 + 16 + PAYLOAD_SIZE;

/// The longest frame (a PACKET); a reader never needs a larger buffer.
pub const MAX_FRAME: usize = 1 + 8 + 4 + PACKET_SIZE;

/// What the receiving hop did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// On disk: the sender may delete its copy.
    Stored,
    /// Seen before (replay tag known): not forwarded again; delete.
    Duplicate,
    /// Refused for good (bad MAC, version, delay, next hop): delete.
    Rejected,
    /// No mix key for the packet's epoch here: the end-to-end layer
    /// recovers; delete.
    UnknownEpoch,
    /// Not taken now (storage busy or full): keep and retry later.
    Busy,
}

impl AckStatus {
    fn byte(self) -> u8 {
        match self {
            AckStatus::Stored => 1,
            AckStatus::Duplicate => 2,
            AckStatus::Rejected => 3,
            AckStatus::UnknownEpoch => 4,
            AckStatus::Busy => 5,
        }
    }

    fn from_byte(b: u8) -> Option<AckStatus> {
        Some(match b {
            1 => AckStatus::Stored,
            2 => AckStatus::Duplicate,
            3 => AckStatus::Rejected,
            4 => AckStatus::UnknownEpoch,
            5 => AckStatus::Busy,
            _ => return None,
        })
    }
}

/// Who says HELLO: a listed node, or (next: at a gateway) a client with a
/// key of its own. The listener looks the identity up by role, so a client
/// can never pass the check a node's HELLO gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A node listed in `nodes.json`; its identity is its node id (the key
    /// in its onion name) and it proves itself with the identity key pinned
    /// there.
    Node,
    /// A client; its identity is the ed25519 key it proves itself with.
    Client,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Node => 1,
            Role::Client => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Role> {
        match b {
            1 => Some(Role::Node),
            2 => Some(Role::Client),
            _ => None,
        }
    }
}

/// What each side says first. Both HELLOs are what the AUTH signatures
/// cover, so every field here is proven by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub params_hash: [u8; 32],
    pub role: Role,
    pub identity: [u8; 32],
    /// Fresh random bytes: the other side's AUTH signs them, so no AUTH
    /// is good for any other link.
    pub nonce: [u8; 32],
    pub clock_secs: u64,
}

impl Hello {
    /// The HELLO body as signed (the frame without its type byte).
    pub fn body(&self) -> [u8; HELLO_BODY] {
        let mut b = [0u8; HELLO_BODY];
        b[..2].copy_from_slice(&self.version.to_be_bytes());
        b[2..34].copy_from_slice(&self.params_hash);
        b[34] = self.role.byte();
        b[35..67].copy_from_slice(&self.identity);
        b[67..99].copy_from_slice(&self.nonce);
        b[99..].copy_from_slice(&self.clock_secs.to_be_bytes());
        b
    }

    fn from_body(b: &[u8]) -> Result<Hello, FrameError> {
        Ok(Hello {
            version: u16::from_be_bytes([b[0], b[1]]),
            params_hash: b[2..34].try_into().unwrap(),
            role: Role::from_byte(b[34]).ok_or(FrameError::Role(b[34]))?,
            identity: b[35..67].try_into().unwrap(),
            nonce: b[67..99].try_into().unwrap(),
            clock_secs: u64::from_be_bytes(b[99..107].try_into().unwrap()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    /// The sender's signature over both HELLOs ([`super::hello`]).
    Auth {
        signature: [u8; 64],
    },
    Packet {
        seq: u64,
        epoch: u32,
        packet: WirePacket,
    },
    Ack {
        seq: u64,
        status: AckStatus,
    },
    Ping {
        nonce: u64,
        subject: [u8; 32],
        epoch: u32,
    },
    Pong {
        nonce: u64,
        subject: [u8; 32],
        epoch: u32,
        key: [u8; 32],
    },
    GetKeys {
        subject: [u8; 32],
    },
    Keys {
        subject: [u8; 32],
        bundle: Option<Bundle>,
    },
    /// A client asks its gateway for one held reply.
    Fetch {
        request: u64,
    },
    /// The gateway's answer to FETCH `request`: one held reply, or none.
    Held {
        request: u64,
        reply: Option<HeldReply>,
    },
    /// The client has committed what the reply said: the gateway may
    /// delete it.
    Confirm {
        delivery: [u8; 16],
    },
}

/// A reply held at a gateway for a client: the Sphinx final hop's reply
/// id and payload, which only the client can open, under a delivery id
/// the gateway chose (the client confirms by it).
#[derive(Clone, PartialEq, Eq)]
pub struct HeldReply {
    pub delivery: [u8; 16],
    pub reply_id: [u8; 16],
    /// Exactly [`PAYLOAD_SIZE`] bytes.
    pub payload: Box<[u8]>,
}

impl std::fmt::Debug for HeldReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldReply(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame type {0}")]
    Type(u8),
    #[error("unknown acknowledgement status {0}")]
    Status(u8),
    #[error("{0}")]
    Packet(#[from] PacketError),
    #[error("malformed KEYS frame")]
    Keys,
    #[error("link protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("unknown role {0} in HELLO")]
    Role(u8),
    #[error("malformed HELD frame")]
    Held,
}

fn body_len(kind: u8) -> Result<usize, FrameError> {
    Ok(match kind {
        HELLO => HELLO_BODY,
        AUTH => 64,
        PACKET => 8 + 4 + PACKET_SIZE,
        ACK => 8 + 1,
        PING => 8 + 32 + 4,
        PONG => 8 + 32 + 4 + 32,
        GETKEYS => 32,
        KEYS => 32 + 1 + BUNDLE_SIZE,
        FETCH => 8,
        HELD => HELD_BODY,
        CONFIRM => 16,
        other => return Err(FrameError::Type(other)),
    })
}

impl Frame {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello(hello) => {
                out.push(HELLO);
                out.extend_from_slice(&hello.body());
            }
            Frame::Auth { signature } => {
                out.push(AUTH);
                out.extend_from_slice(signature);
            }
            Frame::Packet { seq, epoch, packet } => {
                out.push(PACKET);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(packet.as_bytes());
            }
            Frame::Ack { seq, status } => {
                out.push(ACK);
                out.extend_from_slice(&seq.to_be_bytes());
                out.push(status.byte());
            }
            Frame::Ping {
                nonce,
                subject,
                epoch,
            } => {
                out.push(PING);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(subject);
                out.extend_from_slice(&epoch.to_be_bytes());
            }
            Frame::Pong {
                nonce,
                subject,
                epoch,
                key,
            } => {
                out.push(PONG);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(subject);
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(key);
            }
            Frame::GetKeys { subject } => {
                out.push(GETKEYS);
                out.extend_from_slice(subject);
            }
            Frame::Keys { subject, bundle } => {
                out.push(KEYS);
                out.extend_from_slice(subject);
                match bundle {
                    Some(b) => {
                        out.push(1);
                        out.extend_from_slice(&b.encode());
                    }
                    None => {
                        out.push(0);
                        out.extend_from_slice(&[0; BUNDLE_SIZE]);
                    }
                }
            }
            Frame::Fetch { request } => {
                out.push(FETCH);
                out.extend_from_slice(&request.to_be_bytes());
            }
            Frame::Held { request, reply } => {
                out.push(HELD);
                out.extend_from_slice(&request.to_be_bytes());
                match reply {
                    Some(r) => {
                        debug_assert_eq!(r.payload.len(), PAYLOAD_SIZE);
                        out.push(1);
                        out.extend_from_slice(&r.delivery);
                        out.extend_from_slice(&r.reply_id);
                        out.extend_from_slice(&r.payload);
                    }
                    None => {
                        out.push(0);
                        out.resize(out.len() + 16 + 16 + PAYLOAD_SIZE, 0);
                    }
                }
            }
            Frame::Confirm { delivery } => {
                out.push(CONFIRM);
                out.extend_from_slice(delivery);
            }
        }
    }
}

/// Decodes one frame from the start of `buf`: `Ok(None)` when more bytes
/// are needed, otherwise the frame and the bytes it used. An unknown type
/// is an error at once (the link is closed), before its body is read.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let len = body_len(kind)?;
    if kind == HELLO && buf.len() >= 3 {
        let version = u16::from_be_bytes([buf[1], buf[2]]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::Version(version));
        }
    }
    let Some(body) = buf.get(1..1 + len) else {
        return Ok(None);
    };
    let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().unwrap());
    let frame = match kind {
        HELLO => Frame::Hello(Hello::from_body(body)?),
        AUTH => Frame::Auth {
            signature: body.try_into().unwrap(),
        },
        PACKET => Frame::Packet {
            seq: u64_at(0),
            epoch: u32::from_be_bytes(body[8..12].try_into().unwrap()),
            packet: WirePacket::from_slice(&body[12..])?,
        },
        ACK => Frame::Ack {
            seq: u64_at(0),
            status: AckStatus::from_byte(body[8]).ok_or(FrameError::Status(body[8]))?,
        },
        PING => Frame::Ping {
            nonce: u64_at(0),
            subject: body[8..40].try_into().unwrap(),
            epoch: u32::from_be_bytes(body[40..44].try_into().unwrap()),
        },
        PONG => Frame::Pong {
            nonce: u64_at(0),
            subject: body[8..40].try_into().unwrap(),
            epoch: u32::from_be_bytes(body[40..44].try_into().unwrap()),
            key: body[44..76].try_into().unwrap(),
        },
        GETKEYS => Frame::GetKeys {
            subject: body[..32].try_into().unwrap(),
        },
        FETCH => Frame::Fetch { request: u64_at(0) },
        HELD => Frame::Held {
            request: u64_at(0),
            reply: match body[8] {
                0 => None,
                1 => Some(HeldReply {
                    delivery: body[9..25].try_into().unwrap(),
                    reply_id: body[25..41].try_into().unwrap(),
                    payload: body[41..].into(),
                }),
                _ => return Err(FrameError::Held),
            },
        },
        CONFIRM => Frame::Confirm {
            delivery: body[..16].try_into().unwrap(),
        },
        _ => {
            let subject: [u8; 32] = body[..32].try_into().unwrap();
            let bundle = match body[32] {
                0 => None,
                1 => {
                    let b = Bundle::decode(&body[33..]).map_err(|_| FrameError::Keys)?;
                    if b.node.0 != subject {
                        return Err(FrameError::Keys);
                    }
                    Some(b)
                }
                _ => return Err(FrameError::Keys),
            };
            Frame::Keys { subject, bundle }
        }
    };
    Ok(Some((frame, 1 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                params_hash: [1; 32],
                role: Role::Node,
                identity: [2; 32],
                nonce: [6; 32],
                clock_secs: 1_700_000_000,
            }),
            Frame::Auth { signature: [8; 64] },
            Frame::Packet {
                seq: 7,
                epoch: 19_000,
                packet: WirePacket::from_slice(&[5; PACKET_SIZE]).unwrap(),
            },
            Frame::Ack {
                seq: 7,
                status: AckStatus::Duplicate,
            },
            Frame::Ping {
                nonce: 42,
                subject: [3; 32],
                epoch: 19_000,
            },
            Frame::Pong {
                nonce: 42,
                subject: [3; 32],
                epoch: 19_000,
                key: [4; 32],
            },
            Frame::GetKeys { subject: [3; 32] },
            Frame::Keys {
                subject: [3; 32],
                bundle: None,
            },
            Frame::Keys {
                subject: [3; 32],
                bundle: Some(Bundle::sign(
                    &ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
                    &[2; 32],
                    super::super::packet::NodeId([3; 32]),
                    19_000,
                    [[5; 32]; super::super::bundle::SLOTS],
                )),
            },
            Frame::Fetch { request: 11 },
            Frame::Held {
                request: 11,
                reply: Some(HeldReply {
                    delivery: [1; 16],
                    reply_id: [2; 16],
                    payload: vec![3; PAYLOAD_SIZE].into(),
                }),
            },
            Frame::Held {
                request: 12,
                reply: None,
            },
            Frame::Confirm { delivery: [1; 16] },
        ]
    }

    #[test]
    fn an_empty_held_frame_is_as_long_as_a_full_one() {
        let mut full = Vec::new();
        let mut empty = Vec::new();
        let frames = all_frames();
        let held: Vec<&Frame> = frames
            .iter()
            .filter(|f| matches!(f, Frame::Held { .. }))
            .collect();
        held[0].encode(&mut full);
        held[1].encode(&mut empty);
        assert_eq!(full.len(), empty.len());
        assert_eq!(full.len(), 1 + HELD_BODY);
        let mut flag = full.clone();
        flag[9] = 2;
        assert_eq!(decode(&flag).unwrap_err(), FrameError::Held);
    }

    #[test]
    fn every_frame_round_trips_and_a_stream_splits_at_any_point() {
        let mut stream = Vec::new();
        for f in all_frames() {
            f.encode(&mut stream);
        }
        for cut in [0, 1, 50, 8_000, stream.len() - 1] {
            // Feed the stream in two pieces; frames come out whole.
            let mut got = Vec::new();
            let mut buf = stream[..cut].to_vec();
            let mut fed = cut;
            loop {
                match decode(&buf).unwrap() {
                    Some((frame, used)) => {
                        got.push(frame);
                        buf.drain(..used);
                    }
                    None if fed < stream.len() => {
                        buf.extend_from_slice(&stream[fed..]);
                        fed = stream.len();
                    }
                    None => break,
                }
            }
            assert_eq!(got, all_frames(), "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn every_packet_frame_has_one_size() {
        let mut a = Vec::new();
        all_frames()[2].encode(&mut a);
        assert_eq!(a.len(), MAX_FRAME);
    }

    #[test]
    fn unknown_types_and_statuses_are_errors_before_any_body() {
        assert_eq!(decode(&[12]).unwrap_err(), FrameError::Type(12));
        assert_eq!(decode(&[0]).unwrap_err(), FrameError::Type(0));
        let mut ack = Vec::new();
        Frame::Ack {
            seq: 1,
            status: AckStatus::Stored,
        }
        .encode(&mut ack);
        *ack.last_mut().unwrap() = 0;
        assert_eq!(decode(&ack).unwrap_err(), FrameError::Status(0));
        assert_eq!(decode(&ack[..5]).unwrap(), None);
    }

    #[test]
    fn another_hello_version_is_named_from_its_first_bytes_and_a_role_must_be_known() {
        let mut hello = Vec::new();
        all_frames()[0].encode(&mut hello);
        assert_eq!(hello.len(), HELLO_FRAME);
        // A version-2 node's HELLO is shorter than ours: its version is
        // named as soon as it arrives, not after a wait for bytes that
        // never come.
        assert_eq!(decode(&[HELLO, 0, 2]).unwrap_err(), FrameError::Version(2));
        assert_eq!(decode(&[HELLO, 0]).unwrap(), None);
        assert_eq!(decode(&hello[..HELLO_FRAME - 1]).unwrap(), None);
        let mut role = hello.clone();
        role[1 + 34] = 9;
        assert_eq!(decode(&role).unwrap_err(), FrameError::Role(9));
    }

    #[test]
    fn a_keys_frame_must_name_the_bundle_it_carries() {
        let frames = all_frames();
        let mut bytes = Vec::new();
        frames
            .iter()
            .rfind(|f| matches!(f, Frame::Keys { .. }))
            .unwrap()
            .encode(&mut bytes);
        let mut other = bytes.clone();
        other[1] ^= 1; // the subject no longer matches the bundle's node
        assert_eq!(decode(&other).unwrap_err(), FrameError::Keys);
        let mut flag = bytes.clone();
        flag[33] = 2;
        assert_eq!(decode(&flag).unwrap_err(), FrameError::Keys);
    }
}
