//! Exports over a slow link (issue 14): a 48 kB/s TCP proxy
//! (`stream_manager_tests::slow_link`) between the exporter and moto. A call
//! fails when it stops moving, not when it is slow; a Kinesis batch too
//! large to finish within its deadline is split; an S3 task of 12 MiB goes
//! through in 5 MiB parts; a link that stalls is noticed and the export goes
//! on when it moves again.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bus_schema::{
    ExportCommon, KinesisConfig, S3TaskExecutorConfig, StrategyOnFull, StreamDefinition,
};
use stream_manager_tests::aws::{aws_env, s3_client, KinesisClient, Moto};
use stream_manager_tests::slow_link::SlowLink;
use stream_manager_tests::{kill9, StoreHarness};

/// The link's rate each way, bytes/s.
const RATE: u64 = 48_000;
const WAIT: Duration = Duration::from_secs(600);

fn kinesis_stream(name: &str, kinesis: &str) -> StreamDefinition {
    let mut d = StreamDefinition::new(name, StrategyOnFull::RejectNewData);
    d.exports.kinesis = vec![KinesisConfig {
        common: ExportCommon {
            identifier: "k".into(),
            ..Default::default()
        },
        kinesis_stream_name: kinesis.into(),
    }];
    d
}

/// Payload `i` of 10 KiB: its index, then filler.
fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("{i:06}:").into_bytes();
    p.resize(10 * 1024, b'a' + (i % 26) as u8);
    p
}

#[test]
fn a_batch_too_large_for_the_link_is_split_and_everything_arrives_in_order() {
    let moto = Moto::start();
    let link = SlowLink::start(moto.port, RATE);
    let kinesis = KinesisClient::new(&moto.url());
    kinesis.create_stream("k-slow", 1);
    let store = StoreHarness::start(&[]);
    let mut exporter = store.exporter("export-kinesis", &aws_env(&link.url()));
    store.create(kinesis_stream("slow", "k-slow"));
    // 240 x 10 KiB with the default batch settings: one batch of 2.4 MiB,
    // about 3.3 MB as base64 JSON, 70 s at 48 kB/s: more than a call's
    // 60 s deadline.
    let expected: Vec<Vec<u8>> = (0..240).map(payload).collect();
    for p in &expected {
        store.append("slow", p.clone());
    }
    let started = Instant::now();
    store.wait_exported("slow", "k", 239, WAIT);
    let took = started.elapsed();
    kill9(&mut exporter);
    let got = kinesis.read_all("k-slow");
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    for r in &got {
        let i: usize = std::str::from_utf8(&r[..6]).unwrap().parse().unwrap();
        assert_eq!(r, &expected[i], "record {i} arrived changed");
        if seen.insert(i) {
            firsts.push(i);
        }
    }
    assert_eq!(seen.len(), 240, "every record arrives");
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "first arrivals are in order"
    );
    let duplicates = got.len() - 240;
    assert!(
        duplicates <= 240,
        "{duplicates} duplicates: at most one batch per missed deadline"
    );
    eprintln!(
        "240 x 10 KiB over {RATE} B/s in {took:?}; {} bytes carried up; {duplicates} duplicates",
        link.bytes_up()
    );
}

#[test]
fn a_call_that_misses_its_deadline_is_split_and_grows_back() {
    // 120 x 10 KiB (1.2 MB) through 16 kB/s: about 80 s for one call, past
    // the 60 s deadline; half of it fits.
    let moto = Moto::start();
    let link = SlowLink::start(moto.port, 16_000);
    let kinesis = KinesisClient::new(&moto.url());
    kinesis.create_stream("k-split", 1);
    let store = StoreHarness::start(&[]);
    let mut exporter = store.exporter("export-kinesis", &aws_env(&link.url()));
    // The whole backlog is there before the export starts, so its first
    // batch is all of it (appending while it runs could make small ones).
    let mut d = kinesis_stream("split", "k-split");
    d.exports.kinesis[0].common.disabled = Some(true);
    store.create(d.clone());
    for i in 0..120 {
        store.append("split", payload(i));
    }
    d.exports.kinesis[0].common.disabled = Some(false);
    store.update(d);
    let start = Instant::now();
    let mut said = None;
    loop {
        let s = store.export_status("split", "k");
        if let Some(e) = s.error_message.clone().filter(|e| e.contains("too slow")) {
            said.get_or_insert(e);
        }
        if s.last_exported_sequence_number == 119 {
            break;
        }
        assert!(start.elapsed() < WAIT, "not exported: {s:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    kill9(&mut exporter);
    let said = said.expect("the status never said the link was too slow for the batch");
    assert!(said.contains("bytes per call"), "{said}");
    let got = kinesis.read_all("k-split");
    let distinct: HashSet<&Vec<u8>> = got.iter().collect();
    assert_eq!(distinct.len(), 120);
    assert!(
        got.len() <= 240,
        "{} records: at most one batch again",
        got.len()
    );
}

#[test]
fn a_12_mib_s3_task_goes_through_in_parts() {
    let moto = Moto::start();
    let link = SlowLink::start(moto.port, RATE);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s3 = s3_client(&moto.url());
    rt.block_on(s3.create_bucket().bucket("slow-bucket").send())
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("big.bin");
    let data: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let store = StoreHarness::start(&[]);
    let mut exporter = store.exporter("export-s3", &aws_env(&link.url()));
    let mut d = StreamDefinition::new("tasks", StrategyOnFull::RejectNewData);
    d.exports.s3_task_executor = vec![S3TaskExecutorConfig {
        common: ExportCommon {
            identifier: "s3".into(),
            ..Default::default()
        },
        size_threshold_for_multipart_upload_bytes: None,
        status_config: None,
    }];
    store.create(d);
    store.append(
        "tasks",
        serde_json::to_vec(&serde_json::json!({
            "inputUrl": format!("file://{}", path.display()),
            "bucket": "slow-bucket",
            "key": "big.bin",
        }))
        .unwrap(),
    );
    store.wait_exported("tasks", "s3", 0, WAIT);
    kill9(&mut exporter);
    let body = rt.block_on(async {
        let o = s3
            .get_object()
            .bucket("slow-bucket")
            .key("big.bin")
            .send()
            .await
            .unwrap();
        o.body.collect().await.unwrap().into_bytes().to_vec()
    });
    assert!(body == data, "the object differs from the file");
    assert!(link.bytes_up() >= data.len() as u64);
}

#[test]
fn a_stalled_link_is_noticed_and_the_export_goes_on_when_it_moves_again() {
    let moto = Moto::start();
    let link = SlowLink::start(moto.port, RATE);
    let kinesis = KinesisClient::new(&moto.url());
    kinesis.create_stream("k-stall", 1);
    let store = StoreHarness::start(&[]);
    let mut exporter = store.exporter("export-kinesis", &aws_env(&link.url()));
    store.create(kinesis_stream("stall", "k-stall"));
    link.stall(true);
    let expected: Vec<Vec<u8>> = (0..20).map(payload).collect();
    for p in &expected {
        store.append("stall", p.clone());
    }
    // The call hangs on the stalled link until it has moved nothing for
    // 30 s; then the status says so.
    let start = Instant::now();
    let error = loop {
        let s = store.export_status("stall", "k");
        if let Some(e) = s.error_message {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the stall was never reported"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(error.contains("made no progress"), "{error}");
    assert!(
        start.elapsed() >= Duration::from_secs(25),
        "{:?}",
        start.elapsed()
    );
    link.stall(false);
    store.wait_exported("stall", "k", 19, WAIT);
    kill9(&mut exporter);
    let got = kinesis.read_all("k-stall");
    let distinct: HashSet<&Vec<u8>> = got.iter().collect();
    assert_eq!(distinct.len(), 20);
}

/// What the bandwidth cap charges a Kinesis call (`wire_bytes` of
/// export-kinesis: base64 data, partition key and JSON per record, 1,400
/// bytes of request head) against what crosses the wire.
#[test]
fn a_kinesis_call_costs_on_the_wire_what_the_cap_charges() {
    let moto = Moto::start();
    let link = SlowLink::start(moto.port, 100_000_000);
    let kinesis = KinesisClient::new(&moto.url());
    kinesis.create_stream("k-probe", 1);
    let store = StoreHarness::start(&[]);
    let mut exporter = store.exporter("export-kinesis", &aws_env(&link.url()));
    let mut d = kinesis_stream("probe", "k-probe");
    d.exports.kinesis[0].common.disabled = Some(true);
    store.create(d.clone());
    for i in 0..100 {
        let mut p = format!("{i:08}:").into_bytes();
        p.resize(964, b'x');
        store.append("probe", p);
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = link.bytes_up();
    d.exports.kinesis[0].common.disabled = Some(false);
    store.update(d);
    store.wait_exported("probe", "k", 99, WAIT);
    std::thread::sleep(Duration::from_secs(1));
    let wire = (link.bytes_up() - before) as f64;
    kill9(&mut exporter);
    let charged = (100 * (964usize.div_ceil(3) * 4 + 36 + 32) + 1400) as f64;
    assert!(
        (wire - charged).abs() <= charged * 0.10,
        "{wire} bytes on the wire for one call of 100 records, {charged} charged"
    );
}
