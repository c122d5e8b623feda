//! kill -9 of the store while load clients append: every acknowledged append
//! is found at its sequence number after the restart, sequence numbers never
//! repeat, and the database reopens consistent. Holds for `flushOnWrite`
//! streams (synced before the ack) and for buffered streams (written to the
//! OS before the ack, which a process kill cannot lose).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bus_schema::Request;
use common::*;
use store::load::{id_of, payload_for};

#[test]
fn kill_9_during_appends_loses_no_acknowledged_message() {
    kill_9_rounds(&[("synced", true), ("buffered", false)]);
}

/// Buffered appends alone: no synced append in the same write batch pushes
/// them out of fjall's journal buffer, so the store must hand every batch to
/// the OS itself before it acknowledges.
#[test]
fn kill_9_loses_no_acknowledged_append_of_a_buffered_stream_alone() {
    kill_9_rounds(&[("buffered", false)]);
}

/// Three rounds of: load clients append to each stream (`flushOnWrite` as
/// given), the store is killed with SIGKILL and restarted, and every
/// acknowledged append must be there.
fn kill_9_rounds(streams: &[(&'static str, bool)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StoreProcess::start(dir.path());
    {
        let c = store.client();
        for (name, flush) in streams {
            let mut d = def(name);
            d.flush_on_write = Some(*flush);
            create(&c, d);
        }
    }
    let mut acked: HashMap<&str, Vec<(u64, i64)>> = HashMap::new();
    let mut first_id = 0u64;
    for round in 0..3u64 {
        let clients: Vec<_> = streams
            .iter()
            .map(|(s, _)| *s)
            .map(|s| (s, load_client(dir.path(), s, 1_000_000, 8, first_id)))
            .collect();
        first_id += 1_000_000;
        std::thread::sleep(Duration::from_millis(400 + 250 * round));
        store.kill9();
        let mut round_acks = 0;
        for (s, child) in clients {
            let acks = acks_of(child);
            round_acks += acks.len();
            acked.entry(s).or_default().extend(acks);
        }
        assert!(
            round_acks > 0,
            "round {round}: the clients got no acknowledgement at all"
        );
        store = StoreProcess::start(dir.path());
        let c = store.client();
        for (s, acks) in &acked {
            let stored = read_all(&c, s);
            let by_seq: HashMap<i64, &[u8]> = stored
                .iter()
                .map(|m| (m.sequence_number, m.payload.as_slice()))
                .collect();
            for (id, seq) in acks {
                let payload = by_seq.get(seq).unwrap_or_else(|| {
                    panic!("round {round}: acknowledged append {id} at {seq} of {s} is missing")
                });
                assert_eq!(*payload, payload_for(*id, 64).as_slice(), "{s} seq {seq}");
            }
            // Sequence numbers are dense from 0 and each message is stored once.
            for (i, m) in stored.iter().enumerate() {
                assert_eq!(m.sequence_number, i as i64, "{s}: gap in sequence numbers");
            }
            let mut ids: Vec<u64> = stored.iter().filter_map(|m| id_of(&m.payload)).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), stored.len(), "{s}: a message was stored twice");
            // The next append continues after everything stored.
            let seq = append(&c, s, &payload_for(u64::MAX - round, 64)).unwrap();
            assert_eq!(seq, stored.len() as i64, "{s}: sequence number reused");
        }
        // Remember the probe appends too, so later rounds check them.
        for (s, _) in streams {
            let stored = read_all(&c, s);
            let last = stored.last().unwrap();
            acked
                .get_mut(s)
                .unwrap()
                .push((u64::MAX - round, last.sequence_number));
        }
        let _ = c.call(Request::Health, TIMEOUT);
    }
}
