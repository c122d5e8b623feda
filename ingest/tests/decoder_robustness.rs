//! The SDK request decoders never panic and never accept what they should
//! not: arbitrary bytes, truncations and bit flips of real recorded frames.
//! (A coverage-guided fuzz target for the same decoders is in `ingest/fuzz`.)

use ingest::wire;
use proptest::prelude::*;

fn recorded_payloads() -> Vec<(u8, Vec<u8>)> {
    let all: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/sdk-vectors.json")).unwrap();
    all["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["direction"] == "client->server")
        .map(|v| {
            let mut b = hex::decode(v["hex"].as_str().unwrap()).unwrap();
            if v["opcode"] == 1 {
                b.remove(0);
            }
            (b[4], b[5..].to_vec())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(op in 0u8..20, bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = wire::decode_connect(&bytes);
        let _ = wire::decode_request(op, &bytes);
    }

    #[test]
    fn mutated_recorded_frames_never_panic(pick in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)) {
        let frames = recorded_payloads();
        let (op, payload) = &frames[pick.index(frames.len())];
        let mut p = payload.clone();
        for (at, bits) in flips {
            let i = at.index(p.len());
            p[i] ^= bits;
        }
        p.truncate(cut.index(p.len() + 1));
        let _ = wire::decode_connect(&p);
        let _ = wire::decode_request(*op, &p);
    }
}

#[test]
fn a_truncated_payload_is_an_error_not_a_partial_request() {
    for (op, payload) in recorded_payloads().into_iter().filter(|(op, _)| *op != 1) {
        for cut in 0..payload.len() {
            assert!(
                wire::decode_request(op, &payload[..cut]).is_err(),
                "op {op} cut at {cut}"
            );
        }
    }
}

#[test]
fn a_payload_with_too_many_items_is_refused_before_it_is_decoded() {
    // {"requestId": "x", "name": "s", "payload": [0, 0, ... 100,000 times]}
    let mut p = vec![0xa3, 0x69];
    p.extend_from_slice(b"requestId");
    p.extend_from_slice(&[0x61, b'x', 0x64]);
    p.extend_from_slice(b"name");
    p.extend_from_slice(&[0x61, b's', 0x67]);
    p.extend_from_slice(b"payload");
    p.push(0x9a);
    p.extend_from_slice(&100_000u32.to_be_bytes());
    p.extend(std::iter::repeat_n(0u8, 100_000));
    let e = wire::decode_request(wire::op::APPEND, &p).unwrap_err();
    assert!(e.message.contains("CBOR items"), "{e:?}");
    // Every recorded request stays well inside the bound.
    for (_, payload) in recorded_payloads() {
        assert!(wire::check_item_count(&payload, 200).is_ok());
    }
}
