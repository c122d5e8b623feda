//! The message types of every conversation on the stream-manager bus.
//!
//! Pure data: serde types plus the CBOR encode/decode helpers, no I/O. Every
//! process (store, ingest, exporters, supervisor) speaks these types over ZeroMQ.
//! This crate does not know the SDK wire format (that is `ingest`'s business) nor
//! how anything is stored (that is `store`'s).
//!
//! Numbers that come from users (sizes, sequence numbers, times) are `i64`, as in
//! the SDK data model, so that the store, the single authority on validation, can
//! reject out-of-range values with a precise message instead of a decoder error.

mod codec;
pub mod messages;
pub mod metrics;
mod model;

pub use codec::{decode, decode_header, encode, CodecError};
pub use model::*;

/// Version of the bus protocol carried in every envelope. A peer that receives
/// another version answers `ErrorKind::UnsupportedBusVersion`.
pub const BUS_PROTOCOL_VERSION: u16 = 1;

/// Largest bus message, in bytes, that any socket accepts (ZeroMQ `MAXMSGSIZE`).
/// Leaves room for one largest stream message plus envelope overhead.
pub const BUS_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Appends one `Request::AppendBatch` may carry at most; the store refuses a
/// longer (or empty) batch whole.
pub const APPEND_BATCH_MESSAGES_MAX: usize = 1024;

/// Largest payload of one stream message, in bytes.
pub const MESSAGE_PAYLOAD_BYTES_MAX: usize = 32 * 1024 * 1024;

/// A read response stops adding messages once this many payload bytes are in it
/// (at least one message is always returned when available).
pub const READ_RESPONSE_BYTES_TARGET: usize = 16 * 1024 * 1024;

/// Most messages one read request may return.
pub const READ_MESSAGES_MAX: i64 = 10_000;

/// A request sent from a client process to the store.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RequestEnvelope {
    /// Bus protocol version (`BUS_PROTOCOL_VERSION`).
    pub v: u16,
    /// Correlation id chosen by the client; echoed in the response.
    pub id: u64,
    /// Unix time in ms after which the client no longer waits for the answer;
    /// the store skips requests whose deadline has passed. 0 = no deadline.
    pub deadline_ms: u64,
    pub body: Request,
}

/// The store's answer to one `RequestEnvelope`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResponseEnvelope {
    pub v: u16,
    pub id: u64,
    pub body: Response,
}

/// The fields of an envelope that can be read even when the body is from a
/// newer or broken peer, so the error reply can still be correlated.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct EnvelopeHeader {
    pub v: u16,
    pub id: u64,
}
