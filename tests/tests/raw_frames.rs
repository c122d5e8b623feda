//! Raw sockets against the real ingest: the Java SDK's recorded frames
//! replayed byte for byte, and bad input (garbage, oversized declared
//! lengths, broken handshakes, unknown operations, wrong tokens). Each bad
//! client gets the right status or a closed connection; others are unharmed.

use std::io::{Read, Write};

use serde_json::Value as Json;
use stream_manager_tests::wire_client::*;
use stream_manager_tests::System;

fn vectors() -> Vec<Json> {
    let text = include_str!("../../ingest/tests/fixtures/sdk-vectors.json");
    let all: Json = serde_json::from_str(text).unwrap();
    all["vectors"].as_array().unwrap().clone()
}

#[test]
fn the_java_sdk_frames_replay_byte_for_byte() {
    let system = System::start();
    let mut s = connect(system.port);
    // The full definition names a status stream, which must exist.
    let mut setup = connect(system.port);
    hello(&mut setup);
    let status_stream = ciborium::Value::Map(vec![
        ("requestId".into(), "s".into()),
        (
            "definition".into(),
            ciborium::Value::Map(vec![
                ("name".into(), "StatusStream".into()),
                ("strategyOnFull".into(), 0.into()),
            ]),
        ),
    ]);
    setup.write_all(&frame(2, &status_stream)).unwrap();
    assert_eq!(status(&read_frame(&mut setup).unwrap().1), 0);

    let java: Vec<Json> = vectors()
        .into_iter()
        .filter(|v| {
            v["name"].as_str().unwrap().starts_with("java/") && v["direction"] == "client->server"
        })
        .collect();
    assert_eq!(java.len(), 8);
    for v in &java {
        let name = v["name"].as_str().unwrap();
        s.write_all(&hex::decode(v["hex"].as_str().unwrap()).unwrap())
            .unwrap();
        if v["opcode"] == 1 {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            assert_eq!(b[0], 1, "{name}: connect version byte");
        }
        let (op, r) = read_frame(&mut s).unwrap();
        let want_op = ingest::wire::response_op(v["opcode"].as_u64().unwrap() as u8);
        assert_eq!(op, want_op, "{name}");
        assert_eq!(status(&r), 0, "{name}: {r:?}");
        assert_eq!(
            field(&r, "requestId").and_then(|x| x.as_text()),
            v["decoded"]["requestId"].as_str(),
            "{name}: requestId echoed"
        );
        if v["opcode"] == 5 {
            let msgs = field(&r, "messages").unwrap().as_array().unwrap();
            assert_eq!(
                field(&msgs[0], "payload").unwrap().as_bytes().unwrap(),
                b"hello"
            );
        }
    }
}

#[test]
fn bad_input_gets_the_right_answer_and_others_are_unharmed() {
    let system = System::start();
    let mut good = connect(system.port);
    hello(&mut good);

    // Garbage instead of the connect version byte.
    let mut s = connect(system.port);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut v = [0u8; 1];
    s.read_exact(&mut v).unwrap();
    let (op, r) = read_frame(&mut s).unwrap();
    assert_eq!(
        (v[0], op, status(&r)),
        (1, 6, 8),
        "unsupported connect version"
    );
    assert!(closed(&mut s));

    // First frame is not Connect.
    let mut s = connect(system.port);
    let list = ciborium::Value::Map(vec![("requestId".into(), "x".into())]);
    let mut out = vec![1u8];
    out.extend(frame(11, &list));
    s.write_all(&out).unwrap();
    s.read_exact(&mut v).unwrap();
    assert_eq!(status(&read_frame(&mut s).unwrap().1), 9);

    // A declared length of 1 GiB, then EOF: refused before allocating.
    let mut s = connect(system.port);
    hello(&mut s);
    s.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    s.write_all(&[4]).unwrap();
    assert!(closed(&mut s));

    // A connection that stops mid-frame.
    let mut s = connect(system.port);
    hello(&mut s);
    s.write_all(&[0, 0, 0, 50, 4, 0xa1]).unwrap();
    drop(s);

    // Malformed CBOR with no request id: the connection is closed.
    let mut s = connect(system.port);
    hello(&mut s);
    s.write_all(&[0, 0, 0, 4, 4, 0xff, 0xff, 0xff]).unwrap();
    assert!(closed(&mut s));

    // Wrong types: InvalidRequest on the right response opcode.
    let mut s = connect(system.port);
    hello(&mut s);
    let bad = ciborium::Value::Map(vec![
        ("requestId".into(), "bad".into()),
        ("name".into(), "s".into()),
        ("payload".into(), "not bytes".into()),
    ]);
    s.write_all(&frame(4, &bad)).unwrap();
    let (op, r) = read_frame(&mut s).unwrap();
    assert_eq!((op, status(&r)), (9, 3));
    assert!(field(&r, "errorMessage")
        .unwrap()
        .as_text()
        .unwrap()
        .contains("payload"));

    // Unknown opcode: opcode 17, status 18, connection still usable.
    s.write_all(&frame(
        99,
        &ciborium::Value::Map(vec![("requestId".into(), "u".into())]),
    ))
    .unwrap();
    let (op, r) = read_frame(&mut s).unwrap();
    assert_eq!((op, status(&r)), (17, 18));
    s.write_all(&frame(11, &list)).unwrap();
    assert_eq!(status(&read_frame(&mut s).unwrap().1), 0);

    // Duplicate and non-UUID request ids are echoed verbatim.
    let dup = ciborium::Value::Map(vec![("requestId".into(), " ".into())]);
    s.write_all(&[frame(11, &dup), frame(11, &dup)].concat())
        .unwrap();
    for _ in 0..2 {
        let (_, r) = read_frame(&mut s).unwrap();
        assert_eq!(field(&r, "requestId").unwrap().as_text(), Some(" "));
    }

    // The well-behaved client never noticed.
    good.write_all(&frame(11, &list)).unwrap();
    assert_eq!(status(&read_frame(&mut good).unwrap().1), 0);
}

#[test]
fn a_wrong_token_gets_unauthorized_and_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "good-token\n").unwrap();
    let system = System::start_with(&[
        ("STREAM_MANAGER_AUTHENTICATE_CLIENT", "true"),
        ("STREAM_MANAGER_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
    ]);
    for token in [Some("wrong"), Some(""), None] {
        let mut s = connect(system.port);
        let mut m = vec![
            ("requestId".into(), "c".into()),
            ("protocolVersion".into(), "1.1.0".into()),
        ];
        if let Some(t) = token {
            m.push(("authToken".into(), t.into()));
        }
        let mut out = vec![1u8];
        out.extend(frame(1, &ciborium::Value::Map(m)));
        s.write_all(&out).unwrap();
        let mut v = [0u8; 1];
        s.read_exact(&mut v).unwrap();
        let (op, r) = read_frame(&mut s).unwrap();
        assert_eq!((op, status(&r)), (6, 2), "token {token:?}");
        assert!(closed(&mut s));
    }
    let mut s = connect(system.port);
    let m = vec![
        ("requestId".into(), "c".into()),
        ("protocolVersion".into(), "1.1.0".into()),
        ("authToken".into(), "good-token".into()),
    ];
    let mut out = vec![1u8];
    out.extend(frame(1, &ciborium::Value::Map(m)));
    s.write_all(&out).unwrap();
    let mut v = [0u8; 1];
    s.read_exact(&mut v).unwrap();
    assert_eq!(status(&read_frame(&mut s).unwrap().1), 0);
}
