//! What one Sphinx payload carries, and the message blob cut into them.
//!
//! A fragment is a small binary header and a slice of the message blob:
//!
//! ```text
//! version u8 | kind u8 | message id [16] | index u16 | count u16
//! | blob length u32 | blob SHA-256 [32] | reply block flag u8
//! | reply block [REPLY_BLOCK_SIZE] (always present on the wire; zeros when the flag is 0)
//! | data length u16 | data
//! ```
//!
//! The reply block's space is always reserved, so every data fragment but
//! the last carries exactly [`MAX_DATA`] bytes whether or not it brings a
//! reply block. All integers are big-endian. Every length is checked
//! against a cap before it is used; nothing here allocates more than one
//! packet's worth from untrusted input.
//!
//! The blob is the message: flags, the envelope sender, the recipients and
//! the body, each with a length prefix. It is binary, not JSON, so nothing
//! needs escaping and its size is predictable.

use sha2::{Digest, Sha256};

use super::packet::{MAX_PLAINTEXT, REPLY_BLOCK_SIZE, ReplyBlock};
use crate::envelope::{Envelope, Message};

/// Format version of fragments and blobs.
pub const VERSION: u8 = 1;

/// Fixed part of a fragment before its data.
pub const HEADER_LEN: usize = 1 + 1 + 16 + 2 + 2 + 4 + 32 + 1 + REPLY_BLOCK_SIZE + 2;
/// Data bytes in one fragment.
pub const MAX_DATA: usize = MAX_PLAINTEXT - HEADER_LEN;
const _: () = assert!(MAX_DATA > 7_600 && MAX_DATA < 7_800);

/// The most fragments a message may have (and so the largest blob).
pub const MAX_FRAGMENTS: usize = u16::MAX as usize;

/// Longest envelope address in a blob (SMTP's path limit with room for
/// SMTPUTF8), and most recipients.
const MAX_ADDRESS: usize = 4096;
pub const MAX_RECIPIENTS: usize = 1000;

/// Longest address an entry's SMTP takes: RFC 5321's 256-octet path less
/// its angle brackets, counted in octets also under SMTPUTF8 (`address`
/// checks it at MAIL and RCPT).
const SMTP_MAX_ADDRESS: usize = 254;

/// The most a blob built by an honest entry holds besides the body:
/// version and flags, the sender and [`MAX_RECIPIENTS`] recipients (each
/// at most [`SMTP_MAX_ADDRESS`] octets behind its 2-byte length), the
/// recipient count and the 4-byte body length. 256,264 bytes.
pub const MAX_ENVELOPE: usize =
    1 + 1 + (2 + SMTP_MAX_ADDRESS) + 2 + MAX_RECIPIENTS * (2 + SMTP_MAX_ADDRESS) + 4;

/// Identifies one message end to end (random, chosen by the entry).
pub type MessageId = [u8; 16];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A piece of a message for the exit to deliver.
    Data,
    /// An end-to-end acknowledgement from the exit to the entry.
    Ack,
    /// Cover that comes back to its sender (health and cover).
    Loop,
    /// Cover that the last hop drops.
    Drop,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Data => 1,
            Kind::Ack => 2,
            Kind::Loop => 3,
            Kind::Drop => 4,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Data,
            2 => Kind::Ack,
            3 => Kind::Loop,
            4 => Kind::Drop,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub kind: Kind,
    pub message_id: MessageId,
    pub index: u16,
    pub count: u16,
    pub blob_len: u32,
    pub blob_hash: [u8; 32],
    pub reply_block: Option<ReplyBlock>,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("fragment of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("fragment format version {0} is unknown")]
    Version(u8),
    #[error("unknown fragment kind {0}")]
    Kind(u8),
    #[error("fragment index {index} is not below its count {count}")]
    Index { index: u16, count: u16 },
    #[error("fragment data length {0} is over {MAX_DATA} or past the end")]
    DataLength(usize),
    #[error("blob length {blob_len} does not fit {count} fragment(s)")]
    BlobLength { blob_len: u32, count: u16 },
    #[error("reply block flag {0} is neither 0 nor 1")]
    ReplyFlag(u8),
    #[error("trailing bytes after the fragment data")]
    Trailing,
    #[error("the fragments do not form the blob: {0}")]
    Reassembly(&'static str),
    #[error("the blob is malformed: {0}")]
    Blob(&'static str),
    #[error("the message is too large for {MAX_FRAGMENTS} fragments")]
    TooLarge,
    #[error("the body is larger than the network's max_message_size")]
    BodyTooLarge,
}

impl Fragment {
    /// A cover packet's fragment (loop or drop): one empty piece, `id` to
    /// recognise it by.
    pub fn cover(kind: Kind, id: MessageId) -> Fragment {
        Fragment {
            kind,
            message_id: id,
            index: 0,
            count: 1,
            blob_len: 0,
            blob_hash: Sha256::digest([]).into(),
            reply_block: None,
            data: Vec::new(),
        }
    }

    /// The plaintext for a Sphinx packet (at most `MAX_PLAINTEXT` bytes).
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.data.len() <= MAX_DATA);
        let mut out = Vec::with_capacity(HEADER_LEN + self.data.len());
        out.push(VERSION);
        out.push(self.kind.byte());
        out.extend_from_slice(&self.message_id);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.blob_len.to_be_bytes());
        out.extend_from_slice(&self.blob_hash);
        match &self.reply_block {
            Some(block) => {
                out.push(1);
                out.extend_from_slice(block.as_bytes());
            }
            None => {
                out.push(0);
                out.resize(out.len() + REPLY_BLOCK_SIZE, 0);
            }
        }
        out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Fragment, FragmentError> {
        if bytes.len() < HEADER_LEN {
            return Err(FragmentError::Short(bytes.len()));
        }
        let mut r = Reader(bytes);
        let version = r.u8();
        if version != VERSION {
            return Err(FragmentError::Version(version));
        }
        let kind_byte = r.u8();
        let kind = Kind::from_byte(kind_byte).ok_or(FragmentError::Kind(kind_byte))?;
        let message_id: MessageId = r.array();
        let index = r.u16();
        let count = r.u16();
        if index >= count {
            return Err(FragmentError::Index { index, count });
        }
        let blob_len = r.u32();
        if blob_len as usize > count as usize * MAX_DATA {
            return Err(FragmentError::BlobLength { blob_len, count });
        }
        let blob_hash: [u8; 32] = r.array();
        let flag = r.u8();
        let block = r.take(REPLY_BLOCK_SIZE);
        let reply_block = match flag {
            0 => None,
            1 => Some(ReplyBlock::from_slice(block).expect("exact size")),
            other => return Err(FragmentError::ReplyFlag(other)),
        };
        let data_len = r.u16() as usize;
        if data_len > MAX_DATA || data_len > r.0.len() {
            return Err(FragmentError::DataLength(data_len));
        }
        let data = r.take(data_len).to_vec();
        if !r.0.is_empty() {
            return Err(FragmentError::Trailing);
        }
        Ok(Fragment {
            kind,
            message_id,
            index,
            count,
            blob_len,
            blob_hash,
            reply_block,
            data,
        })
    }
}

/// Reads fixed-size fields from a slice whose length was checked first.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take(N).try_into().expect("length checked")
    }
}

/// Cuts a blob into data fragments (without reply blocks; the sender adds
/// one to each).
pub fn split(blob: &[u8], message_id: MessageId) -> Result<Vec<Fragment>, FragmentError> {
    let count = blob.len().div_ceil(MAX_DATA).max(1);
    if count > MAX_FRAGMENTS {
        return Err(FragmentError::TooLarge);
    }
    let blob_hash: [u8; 32] = Sha256::digest(blob).into();
    let chunks: Vec<&[u8]> = if blob.is_empty() {
        vec![&[]]
    } else {
        blob.chunks(MAX_DATA).collect()
    };
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| Fragment {
            kind: Kind::Data,
            message_id,
            index: i as u16,
            count: count as u16,
            blob_len: blob.len() as u32,
            blob_hash,
            reply_block: None,
            data: chunk.to_vec(),
        })
        .collect())
}

/// Joins the data of a complete set of fragments (in any order, each index
/// once) and checks length and hash.
pub fn join(fragments: &[Fragment]) -> Result<Vec<u8>, FragmentError> {
    let first = fragments
        .first()
        .ok_or(FragmentError::Reassembly("no fragments"))?;
    let count = first.count as usize;
    if fragments.len() != count {
        return Err(FragmentError::Reassembly("not every fragment is there"));
    }
    let mut ordered: Vec<Option<&Fragment>> = vec![None; count];
    for f in fragments {
        if f.message_id != first.message_id
            || f.count != first.count
            || f.blob_len != first.blob_len
            || f.blob_hash != first.blob_hash
        {
            return Err(FragmentError::Reassembly("fragments of different messages"));
        }
        let slot = &mut ordered[f.index as usize];
        if slot.is_some() {
            return Err(FragmentError::Reassembly("a fragment index twice"));
        }
        *slot = Some(f);
    }
    let mut joiner = Joiner::new(first.count, first.blob_len, first.blob_hash, usize::MAX)?;
    for f in ordered.into_iter().flatten() {
        joiner.push(f.index, &f.data)?;
    }
    joiner.finish()
}

/// Number of packets a message of `blob_len` bytes needs.
pub fn fragments_for(blob_len: usize) -> usize {
    blob_len.div_ceil(MAX_DATA).max(1)
}

/// The largest blob an honest entry builds on a network whose
/// `max_message_size` is `max_message_size`.
///
/// The entry's SMTP takes a body of at most `max_message_size` decoded
/// bytes (`552` past it; intake only ever removes padding from it), a
/// sender and recipients of at most 254 octets each, and at most its
/// `-max-recipients` recipients; [`decode_blob`] takes at most
/// [`MAX_RECIPIENTS`], so whatever an entry's flag, the blob
/// ([`encode_blob`]: version, flags, sender, recipients, body, each with
/// its length) is at most `max_message_size + MAX_ENVELOPE` bytes. The
/// bound does not depend on any node's flags, so every exit of a network
/// holds the same line.
pub fn max_blob_len(max_message_size: usize) -> usize {
    max_message_size.saturating_add(MAX_ENVELOPE)
}

/// What a data fragment must look like to be kept at an exit on a
/// network: its message within the network's size (count and declared
/// length alike), and the shape [`split`] gives every honest fragment.
/// Checked on each fragment alone, before anything is stored; that the
/// fragments of one message agree with each other is checked against
/// the first one stored (`spool::custody`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contract {
    max_blob_len: usize,
}

/// Why a fragment breaks the [`Contract`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// Its message would be larger than the network carries.
    #[error("a message of {blob_len} bytes in {count} fragments is over the network's {max} bytes")]
    TooLarge {
        blob_len: u32,
        count: u16,
        max: usize,
    },
    /// The count or the data length is not what `split` makes of the
    /// declared length.
    #[error("fragment {index} of {count} carries {data} bytes of a {blob_len}-byte blob")]
    Shape {
        index: u16,
        count: u16,
        blob_len: u32,
        data: usize,
    },
}

impl Contract {
    pub fn new(max_message_size: usize) -> Contract {
        Contract {
            max_blob_len: max_blob_len(max_message_size),
        }
    }

    pub fn max_blob_len(&self) -> usize {
        self.max_blob_len
    }

    /// The most fragments one message may have (the per-message cap an
    /// exit holds for a message it has not completed).
    pub fn max_fragments(&self) -> usize {
        fragments_for(self.max_blob_len).min(MAX_FRAGMENTS)
    }

    pub fn check(&self, f: &Fragment) -> Result<(), ContractError> {
        if f.blob_len as usize > self.max_blob_len || f.count as usize > self.max_fragments() {
            return Err(ContractError::TooLarge {
                blob_len: f.blob_len,
                count: f.count,
                max: self.max_blob_len,
            });
        }
        if f.count as usize != fragments_for(f.blob_len as usize)
            || expected_data_len(f.index, f.count, f.blob_len) != Some(f.data.len())
        {
            return Err(ContractError::Shape {
                index: f.index,
                count: f.count,
                blob_len: f.blob_len,
                data: f.data.len(),
            });
        }
        Ok(())
    }
}

/// The data length [`split`] gives fragment `index` of `count` of a
/// `blob_len`-byte blob: [`MAX_DATA`] for every one but the last, the
/// rest for the last; `None` for an index past the blob.
pub fn expected_data_len(index: u16, count: u16, blob_len: u32) -> Option<usize> {
    let start = index as usize * MAX_DATA;
    let blob_len = blob_len as usize;
    if index >= count || (start >= blob_len && !(index == 0 && blob_len == 0)) {
        return None;
    }
    Some((blob_len - start).min(MAX_DATA))
}

/// Joins a message's fragments as they come out of storage, one at a time
/// in index order, hashing as it goes: the only copy held is the blob
/// itself (allocated once, at its declared length), never the fragments
/// as well. [`Joiner::finish`] checks length and hash.
pub struct Joiner {
    count: u16,
    blob_len: u32,
    blob_hash: [u8; 32],
    next: u16,
    blob: Vec<u8>,
    hasher: Sha256,
}

impl Joiner {
    /// A joiner for a message of `count` fragments and `blob_len` bytes,
    /// refused past `max_blob_len` before anything is allocated.
    pub fn new(
        count: u16,
        blob_len: u32,
        blob_hash: [u8; 32],
        max_blob_len: usize,
    ) -> Result<Joiner, FragmentError> {
        if blob_len as usize > max_blob_len
            || count == 0
            || count as usize != fragments_for(blob_len as usize)
        {
            return Err(FragmentError::BlobLength { blob_len, count });
        }
        Ok(Joiner {
            count,
            blob_len,
            blob_hash,
            next: 0,
            blob: Vec::with_capacity(blob_len as usize),
            hasher: Sha256::new(),
        })
    }

    /// The index the joiner wants next.
    pub fn next_index(&self) -> u16 {
        self.next
    }

    /// Whether every fragment has been pushed.
    pub fn is_whole(&self) -> bool {
        self.next == self.count
    }

    /// Appends fragment `index`, which must be the next one and as long
    /// as [`split`] makes it.
    pub fn push(&mut self, index: u16, data: &[u8]) -> Result<(), FragmentError> {
        if index != self.next {
            return Err(FragmentError::Reassembly("not every fragment is there"));
        }
        if expected_data_len(index, self.count, self.blob_len) != Some(data.len()) {
            return Err(FragmentError::Reassembly("length differs from the header"));
        }
        self.hasher.update(data);
        self.blob.extend_from_slice(data);
        self.next += 1;
        Ok(())
    }

    /// The blob, once every fragment is in and the hash matches.
    pub fn finish(self) -> Result<Vec<u8>, FragmentError> {
        if !self.is_whole() {
            return Err(FragmentError::Reassembly("not every fragment is there"));
        }
        if self.blob.len() != self.blob_len as usize {
            return Err(FragmentError::Reassembly("length differs from the header"));
        }
        if self.hasher.finalize().as_slice() != self.blob_hash {
            return Err(FragmentError::Reassembly("hash differs from the header"));
        }
        Ok(self.blob)
    }
}

const FLAG_SMTPUTF8: u8 = 1;
const FLAG_EIGHT_BIT: u8 = 2;

/// The message as the exit needs it: flags, sender, recipients, body.
pub fn encode_blob(message: &Message) -> Vec<u8> {
    let e = &message.envelope;
    let mut out = Vec::with_capacity(message.body.len() + 256);
    out.push(VERSION);
    let mut flags = 0;
    if e.smtputf8 {
        flags |= FLAG_SMTPUTF8;
    }
    if e.eight_bit {
        flags |= FLAG_EIGHT_BIT;
    }
    out.push(flags);
    out.extend_from_slice(&(e.sender.len() as u16).to_be_bytes());
    out.extend_from_slice(e.sender.as_bytes());
    out.extend_from_slice(&(e.recipients.len() as u16).to_be_bytes());
    for r in &e.recipients {
        out.extend_from_slice(&(r.len() as u16).to_be_bytes());
        out.extend_from_slice(r.as_bytes());
    }
    out.extend_from_slice(&(message.body.len() as u32).to_be_bytes());
    out.extend_from_slice(&message.body);
    out
}

pub fn decode_blob(blob: &[u8]) -> Result<Message, FragmentError> {
    decode_blob_owned(blob.to_vec())
}

/// [`decode_blob`] that takes the blob and keeps its allocation as the
/// body: the envelope in front is read and then cut off in place, so a
/// large message is never held twice.
pub fn decode_blob_owned(mut blob: Vec<u8>) -> Result<Message, FragmentError> {
    let (envelope, body_at) = decode_envelope(&blob)?;
    blob.drain(..body_at);
    Ok(Message {
        envelope,
        body: blob,
    })
}

/// The envelope at the front of a blob, and where the body starts (the
/// body runs to the end of the blob, exactly as long as it says).
fn decode_envelope(blob: &[u8]) -> Result<(Envelope, usize), FragmentError> {
    let mut r = Checked(blob);
    if r.u8()? != VERSION {
        return Err(FragmentError::Blob("unknown version"));
    }
    let flags = r.u8()?;
    if flags & !(FLAG_SMTPUTF8 | FLAG_EIGHT_BIT) != 0 {
        return Err(FragmentError::Blob("unknown flags"));
    }
    let sender = r.text()?;
    let n = r.u16()? as usize;
    if n == 0 || n > MAX_RECIPIENTS {
        return Err(FragmentError::Blob("recipient count"));
    }
    let recipients = (0..n).map(|_| r.text()).collect::<Result<Vec<_>, _>>()?;
    let body_len = r.u32()? as usize;
    if body_len > r.0.len() {
        return Err(FragmentError::Blob("truncated"));
    }
    if body_len < r.0.len() {
        return Err(FragmentError::Blob("trailing bytes"));
    }
    let body_at = blob.len() - body_len;
    Ok((
        Envelope {
            sender,
            recipients,
            smtputf8: flags & FLAG_SMTPUTF8 != 0,
            eight_bit: flags & FLAG_EIGHT_BIT != 0,
            to_own_name: false,
        },
        body_at,
    ))
}

/// A reader that reports running out of bytes instead of panicking.
struct Checked<'a>(&'a [u8]);

impl<'a> Checked<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FragmentError> {
        if n > self.0.len() {
            return Err(FragmentError::Blob("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FragmentError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FragmentError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, FragmentError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn text(&mut self) -> Result<String, FragmentError> {
        let len = self.u16()? as usize;
        if len > MAX_ADDRESS {
            return Err(FragmentError::Blob("address too long"));
        }
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| FragmentError::Blob("address not UTF-8"))
    }
}

/// What an end-to-end acknowledgement says about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckBody {
    /// Every fragment arrived; the message is in the exit's spool.
    Complete,
    /// These fragments (bit i = index i) arrived so far.
    Partial(Vec<u8>),
}

impl AckBody {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            AckBody::Complete => vec![1],
            AckBody::Partial(bitmap) => {
                let mut out = vec![2];
                out.extend_from_slice(bitmap);
                out
            }
        }
    }

    /// `count` is the message's fragment count, known to the entry.
    pub fn decode(bytes: &[u8], count: u16) -> Result<AckBody, FragmentError> {
        match bytes.split_first() {
            Some((1, [])) => Ok(AckBody::Complete),
            Some((2, bitmap)) if bitmap.len() == (count as usize).div_ceil(8) => {
                Ok(AckBody::Partial(bitmap.to_vec()))
            }
            _ => Err(FragmentError::Blob("malformed acknowledgement")),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn message(body_len: usize) -> Message {
        Message {
            envelope: Envelope {
                sender: "a@b.example".into(),
                recipients: vec!["c@d.example".into(), "é@f.example".into()],
                smtputf8: true,
                eight_bit: false,
                to_own_name: false,
            },
            body: (0..body_len).map(|i| (i % 251) as u8).collect(),
        }
    }

    #[test]
    fn a_message_survives_blob_split_encode_decode_and_join_at_every_size() {
        let mut rng = StdRng::seed_from_u64(1);
        for body_len in [
            0,
            1,
            100,
            MAX_DATA - 60,
            MAX_DATA,
            3 * MAX_DATA + 5,
            1 << 20,
        ] {
            let m = message(body_len);
            let blob = encode_blob(&m);
            let mut fragments: Vec<Fragment> = split(&blob, [3; 16])
                .unwrap()
                .iter()
                .map(|f| {
                    let wire = f.encode();
                    assert!(wire.len() <= MAX_PLAINTEXT);
                    Fragment::decode(&wire).unwrap()
                })
                .collect();
            assert_eq!(fragments.len(), fragments_for(blob.len()));
            // Any arrival order.
            for i in (1..fragments.len()).rev() {
                fragments.swap(i, rng.random_range(0..=i));
            }
            assert_eq!(decode_blob(&join(&fragments).unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn a_4_kib_mail_is_one_packet_and_1_mib_about_136() {
        assert_eq!(fragments_for(encode_blob(&message(4096)).len()), 1);
        let n = fragments_for(encode_blob(&message(1 << 20)).len());
        assert!((130..=140).contains(&n), "{n}");
    }

    #[test]
    fn join_refuses_missing_doubled_mixed_or_corrupted_fragments() {
        let blob = encode_blob(&message(3 * MAX_DATA));
        let f = split(&blob, [1; 16]).unwrap();
        assert!(join(&f[1..]).is_err());
        let mut doubled = f.clone();
        doubled[1] = f[0].clone();
        assert!(join(&doubled).is_err());
        let mut mixed = f.clone();
        mixed[2].message_id = [2; 16];
        assert!(join(&mixed).is_err());
        let mut corrupted = f.clone();
        corrupted[0].data[5] ^= 1;
        assert_eq!(
            join(&corrupted).unwrap_err(),
            FragmentError::Reassembly("hash differs from the header")
        );
        assert_eq!(join(&f).unwrap(), blob);
    }

    #[test]
    fn decode_refuses_malformed_headers_with_a_reason() {
        let good = split(b"data", [1; 16]).unwrap()[0].encode();
        let cases: Vec<(usize, u8, FragmentError)> = vec![
            (0, 9, FragmentError::Version(9)),
            (1, 7, FragmentError::Kind(7)),
            (19, 1, FragmentError::Index { index: 1, count: 1 }),
            (58, 2, FragmentError::ReplyFlag(2)),
        ];
        for (pos, value, err) in cases {
            let mut bad = good.clone();
            bad[pos] = value;
            assert_eq!(Fragment::decode(&bad).unwrap_err(), err, "byte {pos}");
        }
        assert_eq!(
            Fragment::decode(&good[..10]).unwrap_err(),
            FragmentError::Short(10)
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            Fragment::decode(&long).unwrap_err(),
            FragmentError::Trailing
        );
        let mut past_end = good.clone();
        let at = HEADER_LEN - 2;
        past_end[at..at + 2].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(
            Fragment::decode(&past_end).unwrap_err(),
            FragmentError::DataLength(100)
        );
    }

    #[test]
    fn decoders_never_panic_on_random_input() {
        let mut rng = StdRng::seed_from_u64(2);
        let good = split(&encode_blob(&message(50)), [1; 16]).unwrap()[0].encode();
        for _ in 0..5_000 {
            let mut bytes = if rng.random_bool(0.5) {
                good.clone()
            } else {
                (0..rng.random_range(0..MAX_PLAINTEXT))
                    .map(|_| rng.random())
                    .collect()
            };
            for _ in 0..rng.random_range(0..4) {
                if !bytes.is_empty() {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
            }
            let _ = Fragment::decode(&bytes);
            let _ = decode_blob(&bytes);
            let _ = AckBody::decode(&bytes, rng.random());
        }
    }

    /// The largest message an honest entry can send: a body of exactly
    /// `max_message_size`, and the longest envelope SMTP lets through.
    fn largest_honest(max_message_size: usize) -> Message {
        let address = |i: usize| {
            let domain = format!("{i:04}.example");
            format!(
                "{}@{domain}",
                "l".repeat(SMTP_MAX_ADDRESS - 1 - domain.len())
            )
        };
        Message {
            envelope: Envelope {
                sender: address(9999),
                recipients: (0..MAX_RECIPIENTS).map(address).collect(),
                smtputf8: true,
                eight_bit: true,
                to_own_name: false,
            },
            body: vec![b'x'; max_message_size],
        }
    }

    #[test]
    fn the_largest_honest_message_meets_the_contract_and_one_byte_more_does_not() {
        let max = 262_144;
        let contract = Contract::new(max);
        let m = largest_honest(max);
        assert!(m.envelope.recipients.iter().all(|r| r.len() == 254));
        let blob = encode_blob(&m);
        assert_eq!(blob.len(), max_blob_len(max), "the bound is exact");
        let fragments = split(&blob, [1; 16]).unwrap();
        assert_eq!(fragments.len(), contract.max_fragments());
        for f in &fragments {
            assert_eq!(contract.check(f), Ok(()), "fragment {}", f.index);
        }
        let mut over = m.clone();
        over.body.push(b'x');
        for f in split(&encode_blob(&over), [2; 16]).unwrap() {
            assert!(
                matches!(contract.check(&f), Err(ContractError::TooLarge { .. })),
                "fragment {}",
                f.index
            );
        }
    }

    #[test]
    fn the_contract_refuses_claims_split_never_makes() {
        let contract = Contract::new(262_144);
        let good = split(&encode_blob(&message(3 * MAX_DATA)), [1; 16]).unwrap();
        let cases: Vec<(&str, Fragment, bool)> = vec![
            (
                "many fragments claimed",
                Fragment {
                    count: u16::MAX,
                    ..good[0].clone()
                },
                true,
            ),
            (
                "a huge declared length",
                Fragment {
                    blob_len: u32::MAX,
                    ..good[0].clone()
                },
                true,
            ),
            (
                "count too high for the length",
                Fragment {
                    count: 9,
                    ..good[0].clone()
                },
                false,
            ),
            (
                "count too low for the length",
                Fragment {
                    count: 3,
                    ..good[3].clone()
                },
                false,
            ),
            (
                "a short middle fragment",
                Fragment {
                    data: vec![0; 10],
                    ..good[1].clone()
                },
                false,
            ),
            (
                "a long last fragment",
                Fragment {
                    data: vec![0; MAX_DATA],
                    ..good[3].clone()
                },
                false,
            ),
        ];
        for (what, f, too_large) in cases {
            match contract.check(&f) {
                Err(ContractError::TooLarge { .. }) if too_large => {}
                Err(ContractError::Shape { .. }) if !too_large => {}
                other => panic!("{what}: {other:?}"),
            }
        }
        for f in &good {
            assert_eq!(contract.check(f), Ok(()));
        }
    }

    #[test]
    fn a_joiner_fed_in_order_gives_the_blob_and_refuses_gaps_lengths_and_hashes() {
        let blob = encode_blob(&message(5 * MAX_DATA + 17));
        let f = split(&blob, [1; 16]).unwrap();
        let joiner = || Joiner::new(f[0].count, f[0].blob_len, f[0].blob_hash, blob.len()).unwrap();
        let mut j = joiner();
        for x in &f {
            assert_eq!(j.next_index(), x.index);
            j.push(x.index, &x.data).unwrap();
        }
        assert!(j.is_whole());
        assert_eq!(j.finish().unwrap(), blob);

        let mut gap = joiner();
        assert!(gap.push(1, &f[1].data).is_err(), "fragment 0 skipped");
        let mut short = joiner();
        assert!(short.push(0, &f[0].data[1..]).is_err());
        let mut early = joiner();
        early.push(0, &f[0].data).unwrap();
        assert!(early.finish().is_err(), "not whole");
        let mut bad = joiner();
        for x in &f {
            let mut data = x.data.clone();
            if x.index == 2 {
                data[0] ^= 1;
            }
            bad.push(x.index, &data).unwrap();
        }
        assert_eq!(
            bad.finish().unwrap_err(),
            FragmentError::Reassembly("hash differs from the header")
        );
        assert!(
            Joiner::new(f[0].count, f[0].blob_len, f[0].blob_hash, blob.len() - 1).is_err(),
            "over the cap: refused before allocating"
        );
        assert!(Joiner::new(u16::MAX, 10, [0; 32], usize::MAX).is_err());
    }

    #[test]
    fn decoding_an_owned_blob_keeps_its_allocation_as_the_body() {
        let m = message(100_000);
        let blob = encode_blob(&m);
        let at = blob.as_ptr();
        let decoded = decode_blob_owned(blob).unwrap();
        assert_eq!(decoded, m);
        assert_eq!(decoded.body.as_ptr(), at, "the body was not copied");
        let mut long = encode_blob(&m);
        long.push(0);
        assert_eq!(
            decode_blob_owned(long).unwrap_err(),
            FragmentError::Blob("trailing bytes")
        );
        let short = encode_blob(&m);
        assert_eq!(
            decode_blob(&short[..short.len() - 1]).unwrap_err(),
            FragmentError::Blob("truncated")
        );
    }

    #[test]
    fn acknowledgements_round_trip() {
        assert_eq!(
            AckBody::decode(&AckBody::Complete.encode(), 3).unwrap(),
            AckBody::Complete
        );
        let partial = AckBody::Partial(vec![0b101, 0]);
        assert_eq!(AckBody::decode(&partial.encode(), 9).unwrap(), partial);
        assert!(AckBody::decode(&partial.encode(), 20).is_err());
    }
}
