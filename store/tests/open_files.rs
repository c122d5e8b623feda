//! The store under a low limit on open descriptors. fjall keeps a table
//! and a blob file per 1 MiB chunk; a store that held them all open failed
//! with "Too many open files" once its backlog passed about half as many
//! MiB as its limit (1,024 is the usual default), and then could not
//! reopen. Files are now opened through a bounded cache.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bus_schema::{Request, Response};
use common::*;

/// Soft and hard limit of the store under test: the store cannot raise it.
const OPEN_FILES: u64 = 96;
/// Messages per stream; four fill a chunk.
const MESSAGES: u64 = 160;
const STREAMS: [&str; 3] = ["a", "b", "c"];

/// Message `i` of `stream`: 256 KiB.
fn payload(stream: &str, i: u64) -> Vec<u8> {
    let mut p = vec![stream.as_bytes()[0]; 256 * 1024];
    p[..8].copy_from_slice(&i.to_be_bytes());
    p
}

fn check_all(client: &bus::BusClient, streams: &[&str]) {
    for s in streams {
        let got = read_all(client, s);
        assert_eq!(got.len() as u64, MESSAGES, "messages of {s}");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.sequence_number, i as i64);
            assert!(m.payload == payload(s, i as u64), "message {i} of {s}");
        }
    }
}

/// The store's descriptors whose target satisfies `pick`.
fn open_files(pid: u32, pick: impl Fn(&str) -> bool) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(Path::new(&dir))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| pick(t))
        .collect()
}

#[test]
fn a_backlog_of_far_more_files_than_the_limit_is_stored_read_reopened_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut store = StoreProcess::start_with_open_files(&root, OPEN_FILES);
    let c = store.client();
    for s in STREAMS {
        let mut d = def(s);
        d.max_size_bytes = Some(1 << 30);
        create(&c, d);
    }
    // 3 streams x 40 chunks: about 240 files of tables and blobs.
    for i in 0..MESSAGES {
        for s in STREAMS {
            append(&c, s, &payload(s, i)).unwrap();
        }
    }
    check_all(&c, &STREAMS);
    let tables = |t: &str| t.contains("/keyspaces/");
    let held = open_files(store.pid(), tables).len() as u64;
    assert!(
        held <= OPEN_FILES / 4,
        "{held} of fjall's files open under a limit of {OPEN_FILES}"
    );

    // fjall's recovery opens every table: it must fit the limit too.
    assert!(store.terminate().success());
    drop(c);
    store = StoreProcess::start_with_open_files(&root, OPEN_FILES);
    let c = store.client();
    check_all(&c, &STREAMS);

    // A deleted stream's files leave the descriptor cache with it (a
    // deleted file held open keeps its blocks on the disk).
    let r = call(&c, Request::DeleteStream { name: "a".into() });
    assert!(matches!(r, Ok(Response::Deleted)), "{r:?}");
    let deleted = Instant::now();
    loop {
        let stale = open_files(store.pid(), |t| tables(t) && t.ends_with("(deleted)"));
        if stale.is_empty() {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(5),
            "5 s after the delete the store still holds {} deleted files open: {stale:?}",
            stale.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check_all(&c, &["b", "c"]);
}
