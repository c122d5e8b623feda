//! The on-disk layout: keyspace names, key encodings and the records stored in
//! them. Keys are big-endian so fjall's byte order is numeric order.
//!
//! | keyspace  | key                                  | value                      |
//! |-----------|--------------------------------------|----------------------------|
//! | `streams` | stream name                          | `StreamRecord` (CBOR)      |
//! | `state`   | sid ++ 0                             | `StreamState` (CBOR)       |
//! | `state`   | sid ++ 1 ++ first sequence number    | `SegmentRecord` (CBOR)     |
//! | `state`   | sid ++ 2 ++ export identifier        | `ExportStatus` (CBOR)      |
//! | `meta`    | `next_stream_id`                     | u64                        |
//! | `meta`    | `applied_ticket`                     | u64: last write-ahead log record in fjall |
//! | `data-<sid>` | first ++ last sequence number     | a chunk: consecutive messages `first..=last` |
//!
//! Message data lives in one keyspace per File stream, `data-<sid>`, as
//! chunks of consecutive messages (see [`ChunkBuilder`] for the value's
//! format). A chunk never spans two segments, so trimming whole segments
//! removes whole chunks, and deleting a stream deletes its keyspace (fjall
//! removes the keyspace's folder at once).
//!
//! `sid` is a per-stream id that is never reused, so a deleted stream's data
//! never mixes with a new stream of the same name.
//!
//! Layout 1 (before chunks) kept one key per message in a keyspace `data`;
//! [`LEGACY_KS_DATA`] is converted to chunks when such a database is opened.

use serde::{Deserialize, Serialize};

use bus_schema::StreamDefinition;

pub const KS_STREAMS: &str = "streams";
pub const KS_STATE: &str = "state";
/// The per-message keyspace of layout 1 (key sid ++ sequence number, value
/// ingest ms ++ payload), converted to chunks at open.
pub const LEGACY_KS_DATA: &str = "data";
/// Prefix of the per-stream chunk keyspaces.
pub const DATA_KS_PREFIX: &str = "data-";
/// Empty keyspaces that only hold fjall's highest keyspace id (see
/// `wal::Keyspaces::delete_keyspace`).
pub const ID_MARK_PREFIX: &str = "idmark-";
pub const KS_META: &str = "meta";

pub const META_NEXT_STREAM_ID: &[u8] = b"next_stream_id";
/// Pending removals of layout 1, dropped with its `data` keyspace.
pub const LEGACY_META_GC_PREFIX: &[u8] = b"gc";
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamState {
    /// First readable sequence number.
    pub oldest: u64,
    /// Lower bound of the next sequence number (when every segment is gone).
    pub next_floor: u64,
    /// Every sequence number below this may have been issued: it is written
    /// and synced before any of them is acknowledged, so that after a power
    /// loss the store never issues again a number an exporter may have
    /// shipped (absent in layout 1 records: 0).
    #[serde(default)]
    pub reserved: u64,
    /// Ranges `[from, to)` of sequence numbers skipped after a power loss
    /// (never readable), above `oldest`.
    #[serde(default)]
    pub holes: Vec<(u64, u64)>,
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

/// The name of stream `sid`'s chunk keyspace.
pub fn data_keyspace_name(sid: u64) -> String {
    format!("{DATA_KS_PREFIX}{sid}")
}

/// The key of the chunk holding messages `first..=last`.
pub fn chunk_key(first: u64, last: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&first.to_be_bytes());
    k[8..].copy_from_slice(&last.to_be_bytes());
    k
}

/// `(first, last)` of a chunk key.
pub fn parse_chunk_key(k: &[u8]) -> Option<(u64, u64)> {
    parse_data_key(k)
}

/// Version byte that starts every chunk value.
const CHUNK_FORMAT: u8 = 1;
/// Bytes of a chunk's header: format byte and record count (u32).
const CHUNK_HEADER_BYTES: usize = 5;
/// Bytes a record takes in a chunk besides its payload: ingest ms (u64) and
/// payload length (u32).
pub const CHUNK_RECORD_OVERHEAD_BYTES: usize = 12;

/// Builds a chunk value: `[u8 format = 1][u32 count]`, then per message
/// `[u64 ingest ms][u32 payload length][payload]`, big endian. Message `i`
/// of the chunk has sequence number `first + i`.
#[derive(Debug, Default)]
pub struct ChunkBuilder {
    pub first: u64,
    pub count: u64,
    /// The size the chunk is sealed at (its owner seals it once `bytes()`
    /// reaches it): the buffer grows by doubling up to this, then exactly.
    sealed_at: usize,
    buf: Vec<u8>,
}

impl ChunkBuilder {
    pub fn new(first: u64, sealed_at: usize) -> Self {
        let mut buf = Vec::with_capacity(4096.min(sealed_at.max(CHUNK_HEADER_BYTES)));
        buf.push(CHUNK_FORMAT);
        buf.extend_from_slice(&[0; 4]);
        ChunkBuilder {
            first,
            count: 0,
            sealed_at,
            buf,
        }
    }
    pub fn push(&mut self, ingest_ms: u64, payload: &[u8]) {
        // Doubling past the sealing size would leave up to twice the chunk
        // allocated (and, from recycled memory, resident) per open chunk.
        let need = self.buf.len() + CHUNK_RECORD_OVERHEAD_BYTES + payload.len();
        if need > self.buf.capacity() {
            let grown = (self.buf.capacity() * 2).min(self.sealed_at).max(need);
            self.buf.reserve_exact(grown - self.buf.len());
        }
        self.buf.extend_from_slice(&ingest_ms.to_be_bytes());
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// The records so far, as an encoded chunk (without copying).
    pub fn view(&self) -> ChunkView<'_> {
        ChunkView {
            count: self.count,
            body: &self.buf[CHUNK_HEADER_BYTES..],
        }
    }
    /// The finished value and its key; `None` when empty.
    pub fn finish(mut self) -> Option<([u8; 16], Vec<u8>)> {
        if self.count == 0 {
            return None;
        }
        let count = self.count as u32;
        self.buf[1..CHUNK_HEADER_BYTES].copy_from_slice(&count.to_be_bytes());
        Some((chunk_key(self.first, self.first + self.count - 1), self.buf))
    }
}

/// The records of an encoded chunk.
#[derive(Debug, Clone, Copy)]
pub struct ChunkView<'a> {
    count: u64,
    body: &'a [u8],
}

impl<'a> ChunkView<'a> {
    /// Parses a chunk value; `None` if it is malformed.
    pub fn parse(value: &'a [u8]) -> Option<Self> {
        if value.len() < CHUNK_HEADER_BYTES || value[0] != CHUNK_FORMAT {
            return None;
        }
        let count = u32::from_be_bytes(value[1..CHUNK_HEADER_BYTES].try_into().ok()?) as u64;
        Some(ChunkView {
            count,
            body: &value[CHUNK_HEADER_BYTES..],
        })
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    /// `(ingest ms, payload)` of each record in order; a malformed record
    /// ends the iteration with `Err(())`.
    pub fn records(&self) -> ChunkRecords<'a> {
        ChunkRecords {
            left: self.count,
            rest: self.body,
        }
    }
}

pub struct ChunkRecords<'a> {
    left: u64,
    rest: &'a [u8],
}

impl<'a> Iterator for ChunkRecords<'a> {
    type Item = Result<(u64, &'a [u8]), ()>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let parsed = (|| {
            let ms = u64::from_be_bytes(self.rest.get(..8)?.try_into().ok()?);
            let len = u32::from_be_bytes(self.rest.get(8..12)?.try_into().ok()?) as usize;
            let payload = self.rest.get(12..12 + len)?;
            self.rest = &self.rest[12 + len..];
            Some((ms, payload))
        })();
        if parsed.is_none() {
            self.left = 0;
        }
        Some(parsed.ok_or(()))
    }
}

/// Key of a message record in the write-ahead log (and in layout 1's `data`
/// keyspace): sid ++ sequence number.
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

pub fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail for these plain data types.
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec");
    out
}

pub fn from_cbor<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips_and_a_truncated_one_is_an_error() {
        let mut b = ChunkBuilder::new(40, 1 << 20);
        b.push(7, b"one");
        b.push(9, b"");
        b.push(11, &[5u8; 300]);
        let view: Vec<_> = b.view().records().collect();
        assert_eq!(view.len(), 3);
        let (key, value) = b.finish().unwrap();
        assert_eq!(parse_chunk_key(&key), Some((40, 42)));
        let chunk = ChunkView::parse(&value).unwrap();
        assert_eq!(chunk.count(), 3);
        let records: Vec<_> = chunk.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(records[0], (7, &b"one"[..]));
        assert_eq!(records[1], (9, &b""[..]));
        assert_eq!(records[2], (11, &[5u8; 300][..]));
        let cut = ChunkView::parse(&value[..value.len() - 1]).unwrap();
        assert!(cut.records().any(|r| r.is_err()));
        assert!(ChunkView::parse(&[2, 0, 0, 0, 0]).is_none());
        assert!(ChunkBuilder::new(0, 1 << 20).finish().is_none());
    }

    #[test]
    fn a_chunk_buffer_never_grows_past_what_its_records_need_beyond_the_sealing_size() {
        let sealed_at = 1 << 20;
        let mut b = ChunkBuilder::new(0, sealed_at);
        let payload = [1u8; 1000];
        while b.bytes() < sealed_at {
            b.push(0, &payload);
            assert!(
                b.buf.capacity() <= sealed_at.max(b.bytes()),
                "{} bytes in a buffer of {}",
                b.bytes(),
                b.buf.capacity()
            );
        }
    }
}
