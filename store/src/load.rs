//! Deterministic payloads for load clients, benchmarks and crash tests: a
//! message carries its own id, so a reader can tell exactly which append it
//! came from.

/// The payload of message `id`: its id (8 bytes BE), then pseudo-random
/// filler derived from it (incompressible, so benchmarks measure real bytes),
/// `len` bytes in all (at least 8).
pub fn payload_for(id: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(8));
    p.extend_from_slice(&id.to_be_bytes());
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while p.len() < len {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.extend_from_slice(&x.to_le_bytes()[..(len - p.len()).min(8)]);
    }
    p
}

/// The id a `payload_for` payload carries.
pub fn id_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}
