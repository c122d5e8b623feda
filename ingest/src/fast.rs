//! The append fast path: appends are almost every request under load, and
//! the SDKs send them in one shape (a map of `requestId`, `name` and
//! `payload`, definite or indefinite). This module reads that shape straight
//! from the frame's bytes, without building a CBOR value tree, and writes the
//! successful append and read responses (reads carry many messages each)
//! straight into the outgoing buffer.
//!
//! Both are exact shortcuts of the general code in [`crate::wire`]: anything
//! else (another key, a `null`, a duplicate key, a value of another type,
//! bytes after the map, text that is not UTF-8) is not taken here and goes the
//! general way, which decides and words any error; and the response bytes are
//! the ones [`crate::wire::response`] encodes (tests compare both).

use bus_schema::messages::MessagesReply;

/// CBOR major types used here.
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
/// The additional-information value of an indefinite length.
const INDEFINITE: u8 = 31;
/// The "break" byte that ends an indefinite-length map.
const BREAK: u8 = 0xff;

/// An append request as the SDKs send it, borrowed from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Append<'a> {
    pub request_id: &'a str,
    pub name: &'a str,
    pub payload: &'a [u8],
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// A header: (major type, argument); `None` for an indefinite length
    /// argument, a reserved value, or the end of the bytes.
    fn head(&mut self) -> Option<(u8, u64)> {
        let initial = self.byte()?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let size = match info {
            0..=23 => return Some((major, u64::from(info))),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return None,
        };
        let arg = self.bytes.get(self.at..self.at + size)?;
        self.at += size;
        Some((major, arg.iter().fold(0, |v, b| (v << 8) | u64::from(*b))))
    }

    /// A definite-length string of `major` type.
    fn string(&mut self, major: u8) -> Option<&'a [u8]> {
        let (m, len) = self.head()?;
        if m != major {
            return None;
        }
        let end = self.at.checked_add(usize::try_from(len).ok()?)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.string(MAJOR_TEXT)?).ok()
    }
}

/// The append in `payload` when it has exactly the SDKs' shape; `None`
/// sends it the general way.
pub fn decode_append(payload: &[u8]) -> Option<Append<'_>> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    let first = *payload.first()?;
    let entries = if first == (MAJOR_MAP << 5 | INDEFINITE) {
        r.at = 1;
        None
    } else {
        match r.head()? {
            (MAJOR_MAP, n) => Some(n),
            _ => return None,
        }
    };
    let (mut request_id, mut name, mut data) = (None, None, None);
    let mut seen = 0u64;
    loop {
        match entries {
            Some(n) if seen == n => break,
            None if r.bytes.get(r.at) == Some(&BREAK) => {
                r.at += 1;
                break;
            }
            _ => {}
        }
        seen += 1;
        let slot_was_empty = match r.text()? {
            "requestId" => request_id.replace(r.text()?).is_none(),
            "name" => name.replace(r.text()?).is_none(),
            "payload" => data.replace(r.string(MAJOR_BYTES)?).is_none(),
            _ => return None,
        };
        if !slot_was_empty {
            return None;
        }
    }
    if r.at != payload.len() {
        return None;
    }
    Some(Append {
        request_id: request_id?,
        name: name?,
        payload: data?,
    })
}

/// Appends a minimal CBOR header to `out` (as every CBOR encoder writes it).
fn put_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put_head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        put_head(out, 0, v as u64);
    } else {
        // CBOR's negative integers carry -1 - v.
        put_head(out, 1, !(v as u64));
    }
}

/// Appends to `out` a whole frame (length, opcode, payload) of a successful
/// response: a map of `requestId`, `status` 0 and one more field, named
/// `field` and written by `value`.
fn put_success(
    out: &mut Vec<u8>,
    opcode: u8,
    request_id: &str,
    field: &str,
    value: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, opcode]);
    put_head(out, MAJOR_MAP, 3);
    put_text(out, "requestId");
    put_text(out, request_id);
    put_text(out, "status");
    put_int(out, crate::wire::status::SUCCESS);
    put_text(out, field);
    value(out);
    // The length counts the opcode and the payload.
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends to `out` the whole frame of a successful append response:
/// `requestId`, `status` 0, `sequenceNumber`.
pub fn put_append_response(out: &mut Vec<u8>, request_id: &str, sequence_number: i64) {
    let opcode = crate::wire::op::APPEND_RESPONSE;
    put_success(out, opcode, request_id, "sequenceNumber", |out| {
        put_int(out, sequence_number)
    });
}

/// Appends to `out` the whole frame of a successful read response:
/// `requestId`, `status` 0, and `messages`, each with `streamName`,
/// `sequenceNumber`, `ingestTime` and `payload`.
/// The messages are read in place from the store's reply.
pub fn put_read_response(
    out: &mut Vec<u8>,
    request_id: &str,
    stream: &str,
    messages: &MessagesReply<'_>,
) {
    let per_message = 64 + stream.len();
    out.reserve(64 + request_id.len() + messages.payload_bytes() + messages.len() * per_message);
    let opcode = crate::wire::op::READ_RESPONSE;
    put_success(out, opcode, request_id, "messages", |out| {
        put_head(out, MAJOR_ARRAY, messages.len() as u64);
        for m in messages.iter() {
            put_head(out, MAJOR_MAP, 4);
            put_text(out, "streamName");
            put_text(out, stream);
            put_text(out, "sequenceNumber");
            put_int(out, m.sequence_number);
            put_text(out, "ingestTime");
            put_int(out, m.ingest_time_ms);
            put_text(out, "payload");
            put_head(out, MAJOR_BYTES, m.payload.len() as u64);
            out.extend_from_slice(m.payload);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, op, ClientRequest};
    use bus_schema::messages::{put_messages_reply, MessageRef};
    use bus_schema::Message;
    use ciborium::Value;
    use proptest::prelude::*;

    fn cbor(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    /// Whatever the fast path takes, the general path decodes to the same
    /// request.
    fn agrees(payload: &[u8]) -> Option<Append<'_>> {
        let fast = decode_append(payload);
        if let Some(a) = fast {
            let (id, req) = wire::decode_request(op::APPEND, payload).expect("general path");
            assert_eq!(id, a.request_id);
            assert_eq!(
                req,
                ClientRequest::Append {
                    name: a.name.into(),
                    payload: a.payload.into()
                }
            );
        }
        fast
    }

    #[test]
    fn the_sdks_recorded_appends_take_the_fast_path() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/sdk-vectors.json")).unwrap();
        let mut taken = 0;
        for v in vectors["vectors"].as_array().unwrap() {
            if v["opcode"] != 4 || v["direction"] != "client->server" {
                continue;
            }
            let frame = hex::decode(v["hex"].as_str().unwrap()).unwrap();
            let a = agrees(&frame[5..]).unwrap_or_else(|| panic!("{} not taken", v["name"]));
            assert!(!a.request_id.is_empty() || v["name"].as_str().unwrap().contains("github"));
            taken += 1;
        }
        assert!(taken >= 8, "only {taken} recorded appends");
    }

    #[test]
    fn other_shapes_go_the_general_way() {
        let base = |extra: Vec<(Value, Value)>| {
            let mut m = vec![
                (t("requestId"), t("r")),
                (t("name"), t("s")),
                (t("payload"), Value::Bytes(vec![1])),
            ];
            m.extend(extra);
            Value::Map(m)
        };
        assert!(agrees(&cbor(&base(vec![]))).is_some());
        for (what, v) in [
            (
                "another key",
                base(vec![(t("x"), Value::Integer(1.into()))]),
            ),
            ("a duplicate key", base(vec![(t("name"), t("other"))])),
            (
                "a null",
                Value::Map(vec![(t("requestId"), t("r")), (t("name"), Value::Null)]),
            ),
            (
                "text payload",
                Value::Map(vec![
                    (t("requestId"), t("r")),
                    (t("name"), t("s")),
                    (t("payload"), t("x")),
                ]),
            ),
            (
                "no payload",
                Value::Map(vec![(t("requestId"), t("r")), (t("name"), t("s"))]),
            ),
            ("not a map", Value::Array(vec![])),
        ] {
            assert_eq!(decode_append(&cbor(&v)), None, "{what}");
        }
        let mut trailing = cbor(&base(vec![]));
        trailing.push(0);
        assert_eq!(decode_append(&trailing), None, "bytes after the map");
        let mut bad_utf8 = cbor(&base(vec![]));
        let at = 1 + bad_utf8.windows(2).position(|w| w == [0x61, b's']).unwrap();
        bad_utf8[at] = 0xff;
        assert_eq!(decode_append(&bad_utf8), None, "a name that is not UTF-8");
    }

    proptest! {
        #[test]
        fn the_fast_response_is_the_general_one(id in ".{0,300}", seq in any::<i64>()) {
            let mut fast = vec![7u8];
            put_append_response(&mut fast, &id, seq);
            let general = wire::frame(
                op::APPEND_RESPONSE,
                &wire::response(&id, wire::status::SUCCESS, None, wire::append_fields(seq)),
            );
            prop_assert_eq!(&fast[1..], &general[..]);
        }

        #[test]
        fn the_fast_read_response_is_the_general_one(
            id in ".{0,40}",
            stream in ".{0,40}",
            messages in proptest::collection::vec(
                (any::<i64>(), any::<i64>(), proptest::collection::vec(any::<u8>(), 0..70)),
                0..30,
            ),
        ) {
            let messages: Vec<Message> = messages
                .into_iter()
                .map(|(sequence_number, ingest_time_ms, payload)| Message {
                    sequence_number,
                    ingest_time_ms,
                    payload,
                })
                .collect();
            let refs: Vec<MessageRef<'_>> = messages.iter().map(MessageRef::from).collect();
            let mut reply = Vec::new();
            put_messages_reply(&mut reply, 1, 9, &refs);
            let mut fast = vec![7u8];
            put_read_response(&mut fast, &id, &stream, &MessagesReply::parse(&reply).unwrap());
            let general = wire::frame(
                op::READ_RESPONSE,
                &wire::response(&id, wire::status::SUCCESS, None, wire::read_fields(&stream, messages)),
            );
            prop_assert_eq!(&fast[1..], &general[..]);
        }

        #[test]
        fn any_map_taken_is_decoded_alike(
            keys in proptest::collection::vec(
                prop_oneof![Just("requestId"), Just("name"), Just("payload"), Just("other")],
                0..5,
            ),
            id in ".{0,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            indefinite in any::<bool>(),
            cut in 0usize..8,
        ) {
            let mut out = Vec::new();
            if indefinite {
                out.push(0xbf);
            } else {
                put_head(&mut out, MAJOR_MAP, keys.len() as u64);
            }
            for k in &keys {
                put_text(&mut out, k);
                match *k {
                    "payload" => {
                        put_head(&mut out, MAJOR_BYTES, payload.len() as u64);
                        out.extend_from_slice(&payload);
                    }
                    _ => put_text(&mut out, &id),
                }
            }
            if indefinite {
                out.push(BREAK);
            }
            agrees(&out);
            // Truncated frames are never taken.
            if cut > 0 && cut <= out.len() {
                prop_assert_eq!(decode_append(&out[..out.len() - cut]), None);
            }
        }
    }
}
