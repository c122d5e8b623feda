//! The `Messages` reply without a value tree: read replies carry a MiB or
//! more of payloads, and decoding one into `Vec<Message>` allocates and
//! copies every payload only for the reader to copy it again. Here the store
//! writes a reply straight from where its messages are
//! ([`put_messages_reply`]) and a reader walks the reply's bytes in place
//! ([`MessagesReply::parse`]).
//!
//! Both are exact shortcuts of the serde encoding of
//! `ResponseEnvelope { v, id, body: Response::Messages(..) }`: the writer
//! produces the same bytes as [`encode`](crate::encode), and the parser
//! accepts only that shape (any other message is left to
//! [`decode`](crate::decode)); property tests compare them.

use crate::Message;

/// One message of a reply, borrowed from wherever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef<'a> {
    pub sequence_number: i64,
    pub ingest_time_ms: i64,
    pub payload: &'a [u8],
}

impl MessageRef<'_> {
    /// An owned copy.
    pub fn to_message(&self) -> Message {
        Message {
            sequence_number: self.sequence_number,
            ingest_time_ms: self.ingest_time_ms,
            payload: self.payload.to_vec(),
        }
    }
}

impl<'a> From<&'a Message> for MessageRef<'a> {
    fn from(m: &'a Message) -> Self {
        Self {
            sequence_number: m.sequence_number,
            ingest_time_ms: m.ingest_time_ms,
            payload: &m.payload,
        }
    }
}

const MAJOR_UINT: u8 = 0;
const MAJOR_NINT: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;

/// The envelope's keys and the message's, in the order serde writes them.
const ENVELOPE_KEYS: [&str; 3] = ["v", "id", "body"];
const VARIANT: &str = "Messages";
const MESSAGE_KEYS: [&str; 3] = ["sequence_number", "ingest_time_ms", "payload"];

/// Bytes a reply takes beyond its payloads: the envelope plus, per message,
/// at most this many.
pub const REPLY_OVERHEAD_BYTES: usize = 64;
pub const MESSAGE_OVERHEAD_BYTES: usize = 64;

/// Writes a CBOR head (shortest form, as ciborium does).
fn put_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put_head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        put_head(out, MAJOR_UINT, v as u64);
    } else {
        put_head(out, MAJOR_NINT, !(v as u64));
    }
}

/// Appends to `out` the envelope of a `Messages` reply holding `count`
/// messages; each must then be written with [`put_message`]. The bytes are
/// those of `encode(&ResponseEnvelope { v, id, body: Messages(..) })`.
pub fn put_messages_head(out: &mut Vec<u8>, v: u16, id: u64, count: usize) {
    put_head(out, MAJOR_MAP, 3);
    put_text(out, ENVELOPE_KEYS[0]);
    put_head(out, MAJOR_UINT, v as u64);
    put_text(out, ENVELOPE_KEYS[1]);
    put_head(out, MAJOR_UINT, id);
    put_text(out, ENVELOPE_KEYS[2]);
    put_head(out, MAJOR_MAP, 1);
    put_text(out, VARIANT);
    put_head(out, MAJOR_ARRAY, count as u64);
}

/// Appends one message of a reply begun with [`put_messages_head`].
pub fn put_message(out: &mut Vec<u8>, m: MessageRef<'_>) {
    put_head(out, MAJOR_MAP, 3);
    put_text(out, MESSAGE_KEYS[0]);
    put_int(out, m.sequence_number);
    put_text(out, MESSAGE_KEYS[1]);
    put_int(out, m.ingest_time_ms);
    put_text(out, MESSAGE_KEYS[2]);
    put_head(out, MAJOR_BYTES, m.payload.len() as u64);
    out.extend_from_slice(m.payload);
}

/// A whole `Messages` reply in one buffer, sized up front.
pub fn put_messages_reply(out: &mut Vec<u8>, v: u16, id: u64, messages: &[MessageRef<'_>]) {
    let payloads: usize = messages.iter().map(|m| m.payload.len()).sum();
    out.reserve(REPLY_OVERHEAD_BYTES + payloads + messages.len() * MESSAGE_OVERHEAD_BYTES);
    put_messages_head(out, v, id, messages.len());
    for &m in messages {
        put_message(out, m);
    }
}

/// Reads a CBOR head: its major type and argument (definite lengths only).
fn head(b: &mut &[u8]) -> Option<(u8, u64)> {
    let (&first, rest) = b.split_first()?;
    let major = first >> 5;
    let info = first & 0x1f;
    let (n, used) = match info {
        0..=23 => (info as u64, 0),
        24 => (*rest.first()? as u64, 1),
        25 => (
            u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as u64,
            2,
        ),
        26 => (
            u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as u64,
            4,
        ),
        27 => (u64::from_be_bytes(rest.get(..8)?.try_into().ok()?), 8),
        _ => return None,
    };
    *b = &rest[used..];
    Some((major, n))
}

fn expect_head(b: &mut &[u8], major: u8) -> Option<u64> {
    match head(b)? {
        (m, n) if m == major => Some(n),
        _ => None,
    }
}

fn take<'a>(b: &mut &'a [u8], n: u64) -> Option<&'a [u8]> {
    let n = usize::try_from(n).ok()?;
    if b.len() < n {
        return None;
    }
    let (taken, rest) = b.split_at(n);
    *b = rest;
    Some(taken)
}

fn expect_key(b: &mut &[u8], key: &str) -> Option<()> {
    let n = expect_head(b, MAJOR_TEXT)?;
    (take(b, n)? == key.as_bytes()).then_some(())
}

fn int(b: &mut &[u8]) -> Option<i64> {
    match head(b)? {
        (MAJOR_UINT, n) => i64::try_from(n).ok(),
        (MAJOR_NINT, n) => i64::try_from(n).ok().map(|n| -1 - n),
        _ => None,
    }
}

fn message<'a>(b: &mut &'a [u8]) -> Option<MessageRef<'a>> {
    (expect_head(b, MAJOR_MAP)? == 3).then_some(())?;
    expect_key(b, MESSAGE_KEYS[0])?;
    let sequence_number = int(b)?;
    expect_key(b, MESSAGE_KEYS[1])?;
    let ingest_time_ms = int(b)?;
    expect_key(b, MESSAGE_KEYS[2])?;
    let n = expect_head(b, MAJOR_BYTES)?;
    let payload = take(b, n)?;
    Some(MessageRef {
        sequence_number,
        ingest_time_ms,
        payload,
    })
}

/// A `Messages` reply, checked whole, read in place.
#[derive(Debug, Clone, Copy)]
pub struct MessagesReply<'a> {
    /// The envelope's version and correlation id.
    pub v: u16,
    pub id: u64,
    count: usize,
    /// The encoded messages, `count` of them and nothing after.
    items: &'a [u8],
}

impl<'a> MessagesReply<'a> {
    /// The reply in `bytes` if it is a well-formed `Messages` reply in the
    /// shape serde writes; `None` for anything else (another reply, or bytes
    /// that [`decode`](crate::decode) must judge).
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let mut b = bytes;
        (expect_head(&mut b, MAJOR_MAP)? == 3).then_some(())?;
        expect_key(&mut b, ENVELOPE_KEYS[0])?;
        let v = u16::try_from(expect_head(&mut b, MAJOR_UINT)?).ok()?;
        expect_key(&mut b, ENVELOPE_KEYS[1])?;
        let id = expect_head(&mut b, MAJOR_UINT)?;
        expect_key(&mut b, ENVELOPE_KEYS[2])?;
        (expect_head(&mut b, MAJOR_MAP)? == 1).then_some(())?;
        expect_key(&mut b, VARIANT)?;
        let count = usize::try_from(expect_head(&mut b, MAJOR_ARRAY)?).ok()?;
        let items = b;
        for _ in 0..count {
            message(&mut b)?;
        }
        b.is_empty().then_some(Self {
            v,
            id,
            count,
            items,
        })
    }

    /// How many messages the reply holds.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The messages, in order.
    pub fn iter(&self) -> impl Iterator<Item = MessageRef<'a>> + 'a {
        let mut b = self.items;
        // `parse` checked every message: each read here succeeds.
        (0..self.count).map_while(move |_| message(&mut b))
    }

    /// Payload bytes of every message together.
    pub fn payload_bytes(&self) -> usize {
        self.iter().map(|m| m.payload.len()).sum()
    }

    /// Owned copies of the messages.
    pub fn to_messages(&self) -> Vec<Message> {
        self.iter().map(|m| m.to_message()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode, Response, ResponseEnvelope};
    use proptest::prelude::*;

    fn any_message() -> impl Strategy<Value = Message> {
        (
            any::<i64>(),
            any::<i64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(s, t, p)| Message {
                sequence_number: s,
                ingest_time_ms: t,
                payload: p,
            })
    }

    fn envelope(v: u16, id: u64, messages: Vec<Message>) -> ResponseEnvelope {
        ResponseEnvelope {
            v,
            id,
            body: Response::Messages(messages),
        }
    }

    proptest! {
        /// The writer produces serde's bytes, and the parser reads them back.
        #[test]
        fn the_writer_writes_what_serde_writes_and_the_parser_reads_it(
            v in any::<u16>(),
            id in any::<u64>(),
            messages in proptest::collection::vec(any_message(), 0..40),
        ) {
            let refs: Vec<MessageRef<'_>> = messages.iter().map(MessageRef::from).collect();
            let mut fast = Vec::new();
            put_messages_reply(&mut fast, v, id, &refs);
            let env = envelope(v, id, messages.clone());
            prop_assert_eq!(&fast, &encode(&env).unwrap());
            let parsed = MessagesReply::parse(&fast).expect("parses");
            prop_assert_eq!((parsed.v, parsed.id, parsed.len()), (v, id, messages.len()));
            prop_assert_eq!(parsed.to_messages(), messages);
        }

        /// Whatever the parser accepts, serde decodes to the same messages;
        /// a cut or altered reply is either refused or read as serde reads it.
        #[test]
        fn the_parser_accepts_only_what_serde_decodes_the_same(
            messages in proptest::collection::vec(any_message(), 1..8),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bits in 1u8..=255,
        ) {
            let bytes = encode(&envelope(1, 7, messages)).unwrap();
            let mut variants = vec![bytes[..cut.index(bytes.len())].to_vec()];
            let mut altered = bytes.clone();
            altered[flip.index(bytes.len())] ^= bits;
            variants.push(altered);
            for b in variants {
                if let Some(parsed) = MessagesReply::parse(&b) {
                    let env: ResponseEnvelope = decode(&b).expect("serde decodes what the parser took");
                    prop_assert_eq!((env.v, env.id), (parsed.v, parsed.id));
                    prop_assert_eq!(env.body, Response::Messages(parsed.to_messages()));
                }
            }
        }
    }

    #[test]
    fn other_replies_are_left_to_serde() {
        for body in [
            Response::Committed,
            Response::Streams(vec!["a".into()]),
            Response::Appended {
                sequence_number: 1,
                ingest_time_ms: 2,
            },
        ] {
            let bytes = encode(&ResponseEnvelope { v: 1, id: 3, body }).unwrap();
            assert!(MessagesReply::parse(&bytes).is_none());
        }
    }
}
