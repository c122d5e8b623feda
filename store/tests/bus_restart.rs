//! The bus under restarts: a client keeps working across a kill -9 and
//! restart of the store (same client object, no hang), reaches a store that
//! starts after it, is not disturbed when another client process is killed,
//! and a request whose deadline passed while the store was stopped is never
//! executed late.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{BusClient, BusClientConfig, BusError};
use bus_schema::{Request, Response};
use common::*;

#[test]
fn a_client_keeps_working_across_a_store_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StoreProcess::start(dir.path());
    let client = store.client();
    create(&client, def("s"));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (client, stop) = (client.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                let r = client.call(
                    Request::Append {
                        stream: "s".into(),
                        payload: n.to_be_bytes().to_vec(),
                    },
                    Duration::from_millis(300),
                );
                n += 1;
                outcomes.push((r.is_ok(), start.elapsed(), Instant::now()));
                if r.is_err() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            outcomes
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    store.kill9();
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(700));
    let _store = StoreProcess::start(dir.path());
    let restarted_at = Instant::now();
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::SeqCst);
    let outcomes = worker.join().unwrap();
    for (_, took, _) in &outcomes {
        assert!(
            *took < Duration::from_millis(600),
            "a call hung for {took:?}"
        );
    }
    assert!(
        outcomes.iter().any(|(ok, _, at)| !ok && *at > killed_at),
        "no failure while the store was down"
    );
    assert!(
        outcomes.iter().any(|(ok, _, at)| *ok && *at > restarted_at),
        "the same client never succeeded after the restart"
    );
    assert!(outcomes.iter().any(|(ok, _, at)| *ok && *at < killed_at));
}

#[test]
fn a_client_started_before_the_store_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bus")).unwrap();
    let client =
        BusClient::connect(&bus::store_endpoint(dir.path()), BusClientConfig::default()).unwrap();
    let early = client.clone();
    let t = std::thread::spawn(move || early.call(Request::Health, Duration::from_secs(15)));
    std::thread::sleep(Duration::from_millis(300));
    let _store = StoreProcess::start(dir.path());
    let r = t.join().unwrap();
    assert!(matches!(r, Ok(Response::Health(_))), "{r:?}");
}

#[test]
fn killing_one_client_process_does_not_disturb_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    create(&c, def("noisy"));
    create(&c, def("quiet"));
    let mut noisy = load_client(dir.path(), "noisy", 10_000_000, 16, 0);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(noisy.id() as i32, libc::SIGKILL) };
    let _ = noisy.wait();
    for i in 0..100u64 {
        assert_eq!(append(&c, "quiet", &i.to_be_bytes()).unwrap(), i as i64);
    }
    assert_eq!(read_all(&c, "quiet").len(), 100);
    let Ok(Response::Health(h)) = call(&c, Request::Health) else {
        panic!()
    };
    assert_eq!(h.pid, store.pid(), "the store restarted");
}

#[test]
fn a_request_that_expired_while_the_store_was_stopped_is_not_executed() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    create(&c, def("late"));
    store.pause();
    let r = c.call(
        Request::Append {
            stream: "late".into(),
            payload: b"too late".to_vec(),
        },
        Duration::from_millis(200),
    );
    assert!(matches!(r, Err(BusError::Timeout(_))), "{r:?}");
    std::thread::sleep(Duration::from_millis(100));
    store.resume();
    assert_eq!(
        append(&c, "late", b"on time").unwrap(),
        0,
        "the expired append was stored"
    );
    let stored = read_all(&c, "late");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, b"on time");
}

#[test]
fn malformed_bus_messages_get_an_error_and_the_store_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    create(&c, def("ok"));
    let ctx = zmq::Context::new();
    let raw = ctx.socket(zmq::DEALER).unwrap();
    raw.set_rcvtimeo(2000).unwrap();
    raw.set_linger(0).unwrap();
    raw.connect(&store.endpoint()).unwrap();
    // Garbage: no header can be read, so there is nobody to answer.
    raw.send(&b"\xff\x00garbage"[..], 0).unwrap();
    // A readable header with a body from the future: answered with an error.
    #[derive(serde::Serialize)]
    struct Future {
        v: u16,
        id: u64,
        deadline_ms: u64,
        body: &'static str,
    }
    let bytes = bus_schema::encode(&Future {
        v: 1,
        id: 99,
        deadline_ms: 0,
        body: "Teleport",
    })
    .unwrap();
    raw.send(bytes, 0).unwrap();
    let reply: bus_schema::ResponseEnvelope =
        bus_schema::decode(&raw.recv_bytes(0).unwrap()).unwrap();
    assert_eq!(reply.id, 99);
    assert!(
        matches!(reply.body, Response::Error(ref e) if e.kind == bus_schema::ErrorKind::MalformedMessage),
        "{reply:?}"
    );
    // Another bus version: refused by name.
    let other = bus_schema::RequestEnvelope {
        v: 2,
        id: 100,
        deadline_ms: 0,
        body: Request::Health,
    };
    raw.send(bus_schema::encode(&other).unwrap(), 0).unwrap();
    let reply: bus_schema::ResponseEnvelope =
        bus_schema::decode(&raw.recv_bytes(0).unwrap()).unwrap();
    assert!(
        matches!(reply.body, Response::Error(ref e) if e.kind == bus_schema::ErrorKind::UnsupportedBusVersion),
        "{reply:?}"
    );
    assert_eq!(append(&c, "ok", b"still fine").unwrap(), 0);
}

#[test]
fn a_request_in_flight_when_the_store_dies_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StoreProcess::start(dir.path());
    let c = store.client();
    create(&c, def("wait"));
    let reader = c.clone();
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        let r = reader.call(long_poll_read("wait"), Duration::from_secs(30));
        (r, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    store.kill9();
    let (r, took) = t.join().unwrap();
    assert!(matches!(r, Err(BusError::PeerLost)), "{r:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_queued_request_times_out_at_its_own_deadline_when_every_slot_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = BusClient::connect(
        &store.endpoint(),
        BusClientConfig {
            max_in_flight: 1,
            ..Default::default()
        },
    )
    .unwrap();
    store.pause();
    let slow = c.clone();
    let t = std::thread::spawn(move || slow.call(Request::Health, Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let r = c.call(Request::Health, Duration::from_millis(200));
    let took = start.elapsed();
    store.resume();
    assert!(matches!(r, Err(BusError::Timeout(_))), "{r:?}");
    assert!(
        took < Duration::from_millis(700),
        "waited {took:?} for a 200 ms request"
    );
    let _ = t.join();
}

#[test]
fn pipelined_requests_are_answered_in_the_order_they_change_things() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    create(&c, def("p"));
    let ctx = zmq::Context::new();
    let raw = ctx.socket(zmq::DEALER).unwrap();
    raw.set_rcvtimeo(5000).unwrap();
    raw.set_linger(0).unwrap();
    raw.connect(&store.endpoint()).unwrap();
    let bodies = [
        Request::Append {
            stream: "p".into(),
            payload: b"x".to_vec(),
        },
        Request::DescribeStream { name: "p".into() },
        Request::Read {
            stream: "p".into(),
            start_sequence_number: Some(0),
            min_count: Some(1),
            max_count: None,
            wait_ms: None,
            max_bytes: None,
            export_identifier: None,
        },
        Request::DeleteStream { name: "p".into() },
    ];
    // All four in one burst, so the store takes them in one round.
    for (id, body) in bodies.into_iter().enumerate() {
        let env = bus_schema::RequestEnvelope {
            v: 1,
            id: id as u64,
            deadline_ms: 0,
            body,
        };
        raw.send(bus_schema::encode(&env).unwrap(), 0).unwrap();
    }
    let mut replies = std::collections::HashMap::new();
    for _ in 0..4 {
        let r: bus_schema::ResponseEnvelope =
            bus_schema::decode(&raw.recv_bytes(0).unwrap()).unwrap();
        replies.insert(r.id, r.body);
    }
    assert!(
        matches!(replies[&0], Response::Appended { .. }),
        "{:?}",
        replies[&0]
    );
    assert!(
        matches!(replies[&1], Response::Described(_)),
        "describe before delete: {:?}",
        replies[&1]
    );
    assert!(
        matches!(replies[&2], Response::Messages(ref m) if m.len() == 1),
        "read before delete: {:?}",
        replies[&2]
    );
    assert!(matches!(replies[&3], Response::Deleted));
}
