//! The on-disk layout: keyspace names, key encodings and the records stored in
//! them. Keys are big-endian so fjall's byte order is numeric order.
//!
//! | keyspace  | key                                  | value                      |
//! |-----------|--------------------------------------|----------------------------|
//! | `streams` | stream name                          | `StreamRecord` (CBOR)      |
//! | `state`   | sid ++ 0                             | `StreamState` (CBOR)       |
//! | `state`   | sid ++ 1 ++ first sequence number    | `SegmentRecord` (CBOR)     |
//! | `state`   | sid ++ 2 ++ export identifier        | `ExportStatus` (CBOR)      |
//! | `data`    | sid ++ sequence number               | ingest ms (8 bytes) ++ payload |
//! | `meta`    | `next_stream_id`                     | u64                        |
//! | `meta`    | `gc` ++ sid ++ from                  | to (u64): data keys to remove |
//! | `meta`    | `applied_ticket`                     | u64: last write-ahead log record in fjall |
//!
//! `sid` is a per-stream id that is never reused, so a deleted stream's data
//! still being removed never mixes with a new stream of the same name.

use serde::{Deserialize, Serialize};

use bus_schema::StreamDefinition;

pub const KS_STREAMS: &str = "streams";
pub const KS_STATE: &str = "state";
pub const KS_DATA: &str = "data";
pub const KS_META: &str = "meta";

pub const META_NEXT_STREAM_ID: &[u8] = b"next_stream_id";
pub const META_GC_PREFIX: &[u8] = b"gc";
pub const META_APPLIED_TICKET: &[u8] = b"applied_ticket";

const TAG_STATE: u8 = 0;
const TAG_SEGMENT: u8 = 1;
const TAG_CURSOR: u8 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamRecord {
    pub id: u64,
    pub created_ms: u64,
    pub definition: StreamDefinition,
}

/// Sequence bounds of a file stream that segments alone cannot tell.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StreamState {
    /// First readable sequence number.
    pub oldest: u64,
    /// Lower bound of the next sequence number (when every segment is gone).
    pub next_floor: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub last: u64,
    pub bytes: u64,
    pub first_ms: u64,
    pub last_ms: u64,
}

pub fn state_key(sid: u64) -> Vec<u8> {
    let mut k = sid.to_be_bytes().to_vec();
    k.push(TAG_STATE);
    k
}

pub fn segment_key(sid: u64, first: u64) -> Vec<u8> {
    let mut k = sid.to_be_bytes().to_vec();
    k.push(TAG_SEGMENT);
    k.extend_from_slice(&first.to_be_bytes());
    k
}

pub fn cursor_key(sid: u64, export_identifier: &str) -> Vec<u8> {
    let mut k = sid.to_be_bytes().to_vec();
    k.push(TAG_CURSOR);
    k.extend_from_slice(export_identifier.as_bytes());
    k
}

/// What a key of the `state` keyspace refers to.
pub enum StateKey<'a> {
    State(u64),
    Segment(u64, u64),
    Cursor(u64, &'a str),
}

pub fn parse_state_key(k: &[u8]) -> Option<StateKey<'_>> {
    let sid = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    match *k.get(8)? {
        TAG_STATE if k.len() == 9 => Some(StateKey::State(sid)),
        TAG_SEGMENT if k.len() == 17 => Some(StateKey::Segment(
            sid,
            u64::from_be_bytes(k[9..17].try_into().ok()?),
        )),
        TAG_CURSOR => Some(StateKey::Cursor(sid, std::str::from_utf8(&k[9..]).ok()?)),
        _ => None,
    }
}

pub fn data_key(sid: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&sid.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn parse_data_key(k: &[u8]) -> Option<(u64, u64)> {
    if k.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(k[..8].try_into().ok()?),
        u64::from_be_bytes(k[8..].try_into().ok()?),
    ))
}

pub fn data_value(ingest_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&ingest_ms.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

pub fn parse_data_value(v: &[u8]) -> Option<(u64, &[u8])> {
    let ms = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    Some((ms, &v[8..]))
}

pub fn gc_key(sid: u64, from: u64) -> Vec<u8> {
    let mut k = META_GC_PREFIX.to_vec();
    k.extend_from_slice(&sid.to_be_bytes());
    k.extend_from_slice(&from.to_be_bytes());
    k
}

pub fn parse_gc_key(k: &[u8]) -> Option<(u64, u64)> {
    let rest = k.strip_prefix(META_GC_PREFIX)?;
    if rest.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(rest[..8].try_into().ok()?),
        u64::from_be_bytes(rest[8..].try_into().ok()?),
    ))
}

pub fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail for these plain data types.
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec");
    out
}

pub fn from_cbor<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| e.to_string())
}
