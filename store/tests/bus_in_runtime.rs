//! The bus client with its driver on the caller's own runtime
//! (`BusClient::connect_in_runtime`, as the ingest and the exporters use
//! it), on a single-threaded runtime: pipelined requests from one task keep
//! their order, a request in flight when the store dies fails at once and
//! the same client works again after a restart, and a request the store
//! cannot answer times out at its own deadline.

mod common;

use std::time::{Duration, Instant};

use bus::{BusClient, BusClientConfig, BusError};
use bus_schema::{Request, Response};
use common::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn append_request(stream: &str, n: u64) -> Request {
    Request::Append {
        stream: stream.into(),
        payload: n.to_be_bytes().to_vec(),
    }
}

#[test]
fn pipelined_appends_from_one_task_are_stored_in_submission_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    create(&store.client(), def("s"));
    let sequence_numbers = runtime().block_on(async {
        let c =
            BusClient::connect_in_runtime(&store.endpoint(), BusClientConfig::default()).unwrap();
        let mut pending = Vec::new();
        for n in 0..2_000u64 {
            pending.push(
                c.submit(append_request("s", n), Duration::from_secs(10))
                    .await
                    .unwrap(),
            );
        }
        let mut out = Vec::new();
        for p in pending {
            match p.wait().await.unwrap() {
                Response::Appended {
                    sequence_number, ..
                } => out.push(sequence_number),
                other => panic!("{other:?}"),
            }
        }
        out
    });
    let expected: Vec<i64> = (0..2_000).collect();
    assert_eq!(sequence_numbers, expected);
}

#[test]
fn a_request_in_flight_when_the_store_dies_fails_at_once_and_the_client_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StoreProcess::start(dir.path());
    create(&store.client(), def("wait"));
    let endpoint = store.endpoint();
    let rt = runtime();
    let c = rt.block_on(async {
        BusClient::connect_in_runtime(&endpoint, BusClientConfig::default()).unwrap()
    });
    let (r, took) = rt.block_on(async {
        let pending = c
            .submit(long_poll_read("wait"), Duration::from_secs(30))
            .await
            .unwrap();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            store.kill9();
        });
        let start = Instant::now();
        let r = pending.wait().await;
        killer.join().unwrap();
        (r, start.elapsed())
    });
    assert!(matches!(r, Err(BusError::PeerLost)), "{r:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    let _store = StoreProcess::start(dir.path());
    let answered = rt.block_on(async {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Response::Appended { .. }) = c
                .call_async(append_request("wait", 1), Duration::from_millis(500))
                .await
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    assert!(
        answered,
        "the same client never reached the restarted store"
    );
}

#[test]
fn a_request_times_out_at_its_own_deadline_when_the_store_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    store.pause();
    let (r, took) = runtime().block_on(async {
        let c =
            BusClient::connect_in_runtime(&store.endpoint(), BusClientConfig::default()).unwrap();
        let start = Instant::now();
        let r = c
            .call_async(Request::Health, Duration::from_millis(300))
            .await;
        (r, start.elapsed())
    });
    store.resume();
    assert!(matches!(r, Err(BusError::Timeout(_))), "{r:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(800),
        "a 300 ms request ended after {took:?}"
    );
}
