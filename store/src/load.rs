//! Deterministic payloads for load clients, benchmarks and crash tests: a
//! message carries its own id, so a reader can tell exactly which append it
//! came from.

/// The payload of message `id`: its id (8 bytes BE), then a filler derived
/// from it, `len` bytes in all (at least 8).
pub fn payload_for(id: u64, len: usize) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend((0..len.saturating_sub(8)).map(|i| (id as usize).wrapping_add(i) as u8));
    p
}

/// The id a `payload_for` payload carries.
pub fn id_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}
