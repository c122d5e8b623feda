//! Fuzz target: the first byte picks an opcode, the rest is a payload fed
//! to the SDK request decoders. They must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((op, payload)) = data.split_first() {
        let _ = ingest::wire::decode_connect(payload);
        let _ = ingest::wire::decode_request(*op, payload);
        let _ = ingest::wire::decode_request(*op % 16, payload);
    }
});
