//! The store process end to end over the bus: every request kind, long-poll
//! reads, events, restarts and start-up failures.

mod common;

use std::time::{Duration, Instant};

use bus::BusError;
use bus_schema::{
    AppendEntry, AppendOutcome, ErrorKind, Event, Persistence, Request, Response,
    APPEND_BATCH_MESSAGES_MAX,
};
use common::*;

#[test]
fn append_read_describe_delete_over_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    create(&c, def("s1"));
    for i in 0..10u8 {
        assert_eq!(append(&c, "s1", &[i; 100]).unwrap(), i as i64);
    }
    let r = call(
        &c,
        Request::Read {
            stream: "s1".into(),
            start_sequence_number: Some(3),
            min_count: Some(2),
            max_count: Some(4),
            wait_ms: None,
            max_bytes: None,
            export_identifier: None,
        },
    )
    .unwrap();
    let Response::Messages(m) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        m.iter().map(|m| m.sequence_number).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    assert_eq!(m[0].payload, vec![3u8; 100]);
    let Response::Described(info) =
        call(&c, Request::DescribeStream { name: "s1".into() }).unwrap()
    else {
        panic!()
    };
    assert_eq!(info.storage.oldest_sequence_number, 0);
    assert_eq!(info.storage.newest_sequence_number, 9);
    assert_eq!(info.definition.persistence, Some(Persistence::File));
    assert!(
        matches!(call(&c, Request::ListStreams), Ok(Response::Streams(s)) if s == vec!["s1".to_string()])
    );
    assert!(matches!(
        call(&c, Request::DeleteStream { name: "s1".into() }),
        Ok(Response::Deleted)
    ));
    let e = append(&c, "s1", b"x").unwrap_err();
    assert!(
        matches!(e, BusError::Remote(ref r) if r.kind == ErrorKind::ResourceNotFound),
        "{e:?}"
    );
}

#[test]
fn an_append_batch_stores_each_append_on_its_own_and_answers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    create(&c, def("s1"));
    create(&c, def("s2"));
    let entry = |stream: &str, payload: &[u8]| AppendEntry {
        stream: stream.into(),
        payload: payload.to_vec(),
    };
    let batch = |appends| call(&c, Request::AppendBatch { appends });
    let r = batch(vec![
        entry("s1", b"a"),
        entry("missing", b"b"),
        entry("s1", b"c"),
        entry("s2", b"d"),
    ])
    .unwrap();
    let Response::AppendedBatch(outcomes) = r else {
        panic!("{r:?}")
    };
    let numbers: Vec<_> = outcomes
        .iter()
        .map(|o| match o {
            AppendOutcome::Appended {
                sequence_number, ..
            } => Ok(*sequence_number),
            AppendOutcome::Error(e) => Err(e.kind),
        })
        .collect();
    assert_eq!(
        numbers,
        vec![Ok(0), Err(ErrorKind::ResourceNotFound), Ok(1), Ok(0)]
    );
    let read = |stream: &str| {
        read_all(&c, stream)
            .into_iter()
            .map(|m| (m.sequence_number, m.payload))
            .collect::<Vec<_>>()
    };
    assert_eq!(read("s1"), vec![(0, b"a".to_vec()), (1, b"c".to_vec())]);
    assert_eq!(read("s2"), vec![(0, b"d".to_vec())]);

    // An empty or too long batch is refused whole: nothing is stored.
    for appends in [
        vec![],
        vec![entry("s1", b"x"); APPEND_BATCH_MESSAGES_MAX + 1],
    ] {
        let e = batch(appends).unwrap_err();
        assert!(
            matches!(e, BusError::Remote(ref r) if r.kind == ErrorKind::InvalidRequest),
            "{e:?}"
        );
    }
    assert_eq!(append(&c, "s1", b"e").unwrap(), 2);
}

#[test]
fn a_read_bounded_by_bytes_answers_what_fits_or_refuses_a_minimum_that_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    create(&c, def("s"));
    for i in 0..10u8 {
        append(&c, "s", &[i; 100]).unwrap();
    }
    let read = |min: i64, max_bytes: i64| {
        call(
            &c,
            Request::Read {
                stream: "s".into(),
                start_sequence_number: Some(2),
                min_count: Some(min),
                max_count: Some(100),
                wait_ms: None,
                max_bytes: Some(max_bytes),
                export_identifier: None,
            },
        )
    };
    // 350 bytes hold three payloads of 100; the first is always given.
    let Ok(Response::Messages(m)) = read(1, 350) else {
        panic!()
    };
    assert_eq!(
        m.iter()
            .map(|m| (m.sequence_number, m.payload[0]))
            .collect::<Vec<_>>(),
        vec![(2, 2), (3, 3), (4, 4)]
    );
    let Ok(Response::Messages(m)) = read(1, 1) else {
        panic!()
    };
    assert_eq!(m.len(), 1);
    let e = read(4, 350).unwrap_err();
    assert!(
        matches!(e, BusError::Remote(ref r) if r.kind == ErrorKind::ResponseTooLarge
            && r.message.contains("only 3 fit")),
        "{e:?}"
    );
    // The store serves on after the refusal.
    let Ok(Response::Messages(m)) = read(1, 10_000) else {
        panic!()
    };
    assert_eq!(m.len(), 8);
}

#[test]
fn long_poll_read_is_woken_by_an_append_and_times_out_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    create(&c, def("lp"));
    let reader = c.clone();
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        let r = reader.call(
            Request::Read {
                stream: "lp".into(),
                start_sequence_number: Some(0),
                min_count: Some(2),
                max_count: Some(10),
                wait_ms: Some(3000),
                max_bytes: None,
                export_identifier: None,
            },
            TIMEOUT,
        );
        (r, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    append(&c, "lp", b"one").unwrap();
    append(&c, "lp", b"two").unwrap();
    let (r, took) = t.join().unwrap();
    assert!(
        matches!(r, Ok(Response::Messages(ref m)) if m.len() == 2),
        "{r:?}"
    );
    assert!(took < Duration::from_millis(2500), "woken late: {took:?}");

    let start = Instant::now();
    let r = c.call(
        Request::Read {
            stream: "lp".into(),
            start_sequence_number: Some(2),
            min_count: Some(1),
            max_count: None,
            wait_ms: Some(300),
            max_bytes: None,
            export_identifier: None,
        },
        TIMEOUT,
    );
    let took = start.elapsed();
    assert!(
        matches!(r, Err(BusError::Remote(ref e)) if e.kind == ErrorKind::NotEnoughMessages),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(250)
            && took <= Duration::from_millis(300) + Duration::from_millis(150),
        "{took:?}"
    );
}

#[test]
fn watchers_see_definition_and_data_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    let Response::Events(first) = call(
        &c,
        Request::WatchEvents {
            epoch: 0,
            after: 0,
            wait_ms: 0,
            appended_for: None,
        },
    )
    .unwrap() else {
        panic!()
    };
    assert!(first.resync, "an unknown epoch must resync");
    let w = c.clone();
    let (epoch, after) = (first.epoch, first.next);
    let t = std::thread::spawn(move || {
        w.call(
            Request::WatchEvents {
                epoch,
                after,
                wait_ms: 5000,
                appended_for: None,
            },
            TIMEOUT,
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    create(&c, def("ev"));
    let Ok(Response::Events(b)) = t.join().unwrap() else {
        panic!()
    };
    assert!(!b.resync);
    assert_eq!(b.events, vec![Event::StreamCreated { name: "ev".into() }]);
    append(&c, "ev", b"x").unwrap();
    let Response::Events(b2) = call(
        &c,
        Request::WatchEvents {
            epoch,
            after: b.next,
            wait_ms: 1000,
            appended_for: None,
        },
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(
        b2.events,
        vec![Event::Appended {
            name: "ev".into(),
            newest_sequence_number: 0
        }]
    );
}

#[test]
fn definitions_data_and_cursors_survive_a_restart_and_memory_streams_do_not_keep_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StoreProcess::start(dir.path());
    let c = store.client();
    let mut d = def("file");
    d.exports.kinesis.push(bus_schema::KinesisConfig {
        common: bus_schema::ExportCommon {
            identifier: "k1".into(),
            ..Default::default()
        },
        kinesis_stream_name: "ks".into(),
    });
    create(&c, d);
    let mut m = def("mem");
    m.persistence = Some(Persistence::Memory);
    create(&c, m);
    for i in 0..5u8 {
        append(&c, "file", &[i]).unwrap();
        append(&c, "mem", &[i]).unwrap();
    }
    let progress = bus_schema::ExportProgress {
        last_exported_sequence_number: 2,
        last_export_time_ms: 1,
        error_message: None,
        exported_bytes_delta: 3,
        exported_messages_delta: 3,
        skipped_messages_delta: 0,
        removed_messages_delta: 0,
        expected_last_exported_sequence_number: None,
        expected_incarnation: None,
    };
    assert!(matches!(
        call(
            &c,
            Request::CommitExport {
                stream: "file".into(),
                export_identifier: "k1".into(),
                progress
            }
        ),
        Ok(Response::Committed)
    ));
    assert!(store.terminate().success());
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    let Response::Described(f) = call(
        &c,
        Request::DescribeStream {
            name: "file".into(),
        },
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(f.storage.newest_sequence_number, 4);
    assert_eq!(f.export_statuses[0].last_exported_sequence_number, 2);
    assert_eq!(f.export_statuses[0].exported_messages, 3);
    let Response::Described(mm) = call(&c, Request::DescribeStream { name: "mem".into() }).unwrap()
    else {
        panic!()
    };
    assert_eq!(mm.storage.total_bytes, 0);
    assert_eq!(append(&c, "file", b"z").unwrap(), 5);
}

#[test]
fn the_store_runs_jemalloc_with_its_background_purge_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let names: Vec<String> = ::store::priority::threads_of(&store.pid().to_string())
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n == bus::memory::JEMALLOC_BACKGROUND_THREAD),
        "the embedded jemalloc settings were not applied; threads: {names:?}"
    );
}

#[test]
fn a_second_store_on_the_same_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = StoreProcess::start(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_store"))
        .env("STREAM_MANAGER_STORE_ROOT_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another store process"));
}

#[test]
fn a_corrupt_database_is_reported_and_the_store_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = StoreProcess::start(dir.path());
        let c = store.client();
        create(&c, def("s"));
        append(&c, "s", b"data").unwrap();
        assert!(store.terminate().success());
    }
    // Overwrite every file of the database with garbage.
    fn scramble(p: &std::path::Path) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                scramble(&e.path());
            } else if e.path().file_name().is_some_and(|n| n != "lock") {
                std::fs::write(e.path(), b"\xffgarbage not a database\x00\x01").unwrap();
            }
        }
    }
    scramble(&dir.path().join("db"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_store"))
        .env("STREAM_MANAGER_STORE_ROOT_DIR", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot open the store database"),
        "{stderr}"
    );
}

#[test]
fn invalid_configuration_lists_every_problem() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_store"))
        .env("STREAM_MANAGER_STORE_ROOT_DIR", "")
        .env("LOG_LEVEL", "chatty")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("STREAM_MANAGER_STORE_ROOT_DIR") && stderr.contains("LOG_LEVEL"),
        "{stderr}"
    );
}

#[test]
fn root_directory_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let _store = StoreProcess::start(&root);
    let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn metrics_count_reads_again_for_an_export_and_serve_other_processes_reports() {
    use bus_schema::metrics::{render, MetricFamily, MetricKind};
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    let mut d = def("s");
    d.exports.kinesis.push(bus_schema::KinesisConfig {
        common: bus_schema::ExportCommon {
            identifier: "k".into(),
            ..Default::default()
        },
        kinesis_stream_name: "x".into(),
    });
    create(&c, d);
    for i in 0..10u8 {
        append(&c, "s", &[i; 10]).unwrap();
    }
    let read = |from: i64, export: Option<&str>| {
        let r = call(
            &c,
            Request::Read {
                stream: "s".into(),
                start_sequence_number: Some(from),
                min_count: Some(1),
                max_count: Some(100),
                wait_ms: None,
                max_bytes: None,
                export_identifier: export.map(str::to_string),
            },
        )
        .unwrap();
        assert!(matches!(r, Response::Messages(_)), "{r:?}");
    };
    // An exporter reads 0..=9, restarts from its cursor (5) and reads
    // 5..=9 again; a plain reader's reads do not count.
    read(0, Some("k"));
    read(0, None);
    read(5, Some("k"));
    let mut report = MetricFamily::new("sm_test_total", "A test counter.", MetricKind::Counter);
    report.sample(&[("x", "y")], 3.0);
    let r = call(
        &c,
        Request::ReportMetrics {
            process: "tester".into(),
            families: vec![report],
        },
    )
    .unwrap();
    assert!(matches!(r, Response::Reported), "{r:?}");
    let Response::Metrics(families) = call(&c, Request::Metrics).unwrap() else {
        panic!()
    };
    let text = render(&families);
    for line in [
        "sm_export_records_resent_total{stream=\"s\",export=\"k\"} 5\n",
        "sm_export_lag_messages{stream=\"s\",export=\"k\"} 10\n",
        "sm_stream_messages{stream=\"s\"} 10\n",
        "sm_test_total{x=\"y\"} 3\n",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[test]
fn a_watcher_for_one_export_kind_is_not_woken_by_other_streams_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreProcess::start(dir.path());
    let c = store.client();
    create(&c, def("plain"));
    let mut d = def("exported");
    d.exports.kinesis.push(bus_schema::KinesisConfig {
        common: bus_schema::ExportCommon {
            identifier: "k".into(),
            ..Default::default()
        },
        kinesis_stream_name: "x".into(),
    });
    create(&c, d);
    let watch = |after: u64, wait_ms: i64| {
        let started = Instant::now();
        let Ok(Response::Events(b)) = c.call(
            Request::WatchEvents {
                epoch: 0,
                after,
                wait_ms,
                appended_for: Some(bus_schema::ExportKind::Kinesis),
            },
            TIMEOUT,
        ) else {
            panic!()
        };
        (b, started.elapsed())
    };
    let (first, _) = watch(0, 0);
    let epoch = first.epoch;
    let watch = |after: u64, wait_ms: i64| {
        let w = c.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let Ok(Response::Events(b)) = w.call(
                Request::WatchEvents {
                    epoch,
                    after,
                    wait_ms,
                    appended_for: Some(bus_schema::ExportKind::Kinesis),
                },
                TIMEOUT,
            ) else {
                panic!()
            };
            (b, started.elapsed())
        })
    };
    // Appends to the stream without a Kinesis export: the watcher sleeps to
    // its deadline, then learns the position moved, with no event.
    let t = watch(first.next, 800);
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..20 {
        append(&c, "plain", b"x").unwrap();
    }
    let (b, waited) = t.join().unwrap();
    assert!(b.events.is_empty(), "{:?}", b.events);
    assert!(b.next > first.next, "the position moves past them");
    assert!(
        waited >= Duration::from_millis(700),
        "woken after {waited:?}"
    );
    // An append to the exported stream wakes it at once.
    let t = watch(b.next, 5000);
    std::thread::sleep(Duration::from_millis(100));
    append(&c, "plain", b"y").unwrap();
    append(&c, "exported", b"z").unwrap();
    let (b2, waited) = t.join().unwrap();
    assert_eq!(
        b2.events,
        vec![Event::Appended {
            name: "exported".into(),
            newest_sequence_number: 0
        }]
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}
