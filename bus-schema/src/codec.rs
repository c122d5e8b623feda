//! CBOR encoding of bus messages (ciborium). Decoding never trusts lengths
//! beyond the message it was given: the whole message is already in memory and
//! bounded by `BUS_MESSAGE_BYTES_MAX` at the socket.

use serde::{de::DeserializeOwned, Serialize};

use crate::{EnvelopeHeader, BUS_MESSAGE_BYTES_MAX};

#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    #[error("message of {0} bytes exceeds the bus limit of {BUS_MESSAGE_BYTES_MAX} bytes")]
    TooLarge(usize),
    #[error("cannot encode bus message: {0}")]
    Encode(String),
    #[error("cannot decode bus message: {0}")]
    Decode(String),
}

/// Encodes a bus message to CBOR.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(128);
    ciborium::into_writer(value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    if out.len() > BUS_MESSAGE_BYTES_MAX {
        return Err(CodecError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Decodes a bus message from CBOR.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > BUS_MESSAGE_BYTES_MAX {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    ciborium::from_reader(bytes).map_err(|e| CodecError::Decode(e.to_string()))
}

/// Reads only the version and id of an envelope whose body may not decode.
pub fn decode_header(bytes: &[u8]) -> Result<EnvelopeHeader, CodecError> {
    decode(bytes)
}
