//! `export-bench`: how fast each exporter drains a backlog, against the
//! capacity of the endpoint it drains into, measured in the same run. Use a
//! release build:
//! `cargo build --release --workspace --bins && ./target/release/export-bench [kinesis|sitewise|analytics|s3|all|idle] [--records N] [--seconds S]`
//! (for `s3`, N is the file size in bytes, default 1 GiB).
//!
//! `idle` (not part of `all`): what the four exporters cost when no stream
//! has an export, under the full append load of `scripts/bench` (the whole
//! system as `stream-manager` starts it, 8 connections x 64 appends of 1 KiB
//! in flight into 10 streams, S seconds measured after 2 s, default 20):
//! the CPU of every process, and the exporters' together against the goal
//! of 0.5% of one core.
//!
//! For each destination:
//! 1. Starts its local endpoint in this process (Kinesis: `fast_kinesis`,
//!    which checks the limits and counts; SiteWise and IoT Analytics: the
//!    project's fake, `fake_iot`, which validates and stores) and measures its
//!    raw capacity with a direct load generator: the AWS SDK client on one
//!    thread, full batches, 1 and then 5 calls in flight, 10 s each.
//! 2. Starts a store, fills streams behind disabled exports, starts the
//!    exporter, enables the exports and times the drain, sampling the
//!    exporter's resident memory and every process's CPU time: once with one
//!    stream (one export sends one batch at a time, in order: compared with
//!    1 call in flight), once with the records spread over 5 streams (the
//!    default pool of 5 uploads: compared with 5 calls in flight).

use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bus_schema::{
    ExportCommon, IotAnalyticsConfig, IotSiteWiseConfig, KinesisConfig, StrategyOnFull,
    StreamDefinition,
};
use stream_manager_tests::aws::{aws_env, kinesis_client, s3_client};
use stream_manager_tests::fake_iot::{analytics_client, sitewise_client, FakeIot};
use stream_manager_tests::fast_kinesis::FastKinesis;
use stream_manager_tests::{cpu_secs, kill9, rss_kib, StoreHarness};

const LOADGEN_CONCURRENCY: usize = 5;
const LOADGEN_SECONDS: u64 = 10;
const FILL_THREADS: usize = 8;

fn unix_secs() -> i64 {
    (bus::unix_ms() / 1000) as i64
}

/// One destination under test.
trait Bench {
    /// The exporter process.
    fn exporter(&self) -> &'static str;
    fn endpoint(&self) -> String;
    /// What one record is, for the table.
    fn record(&self) -> &'static str;
    /// Records per full call.
    fn per_call(&self) -> usize;
    /// Stream `name` (number `index`) with its export disabled.
    fn definition(&self, name: &str, index: usize) -> StreamDefinition;
    fn set_disabled(&self, def: &mut StreamDefinition, disabled: bool);
    /// Payload `i` of stream `index`.
    fn payload(&self, index: usize, i: u64) -> Vec<u8>;
    /// One full call from load generator worker `worker` (call number
    /// `call`); returns the records the endpoint took.
    fn load_call(
        &self,
        worker: usize,
        call: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + '_>>;
    /// Records the endpoint holds (or counted) for the drain's streams.
    fn received(&self, streams: usize) -> u64;
    /// Called before each load run and drain (SiteWise moves its timestamps
    /// on, so no run repeats another's property and time).
    fn next_run(&self) {}
}

struct Kinesis {
    fake: FastKinesis,
    client: aws_sdk_kinesis::Client,
}

impl Kinesis {
    fn new() -> Self {
        let fake = FastKinesis::start();
        Self {
            client: kinesis_client(&fake.url()),
            fake,
        }
    }
}

impl Bench for Kinesis {
    fn exporter(&self) -> &'static str {
        "export-kinesis"
    }
    fn endpoint(&self) -> String {
        self.fake.url()
    }
    fn record(&self) -> &'static str {
        "1 KiB record"
    }
    fn per_call(&self) -> usize {
        500
    }
    fn definition(&self, name: &str, _index: usize) -> StreamDefinition {
        let mut def = StreamDefinition::new(name, StrategyOnFull::RejectNewData);
        def.max_size_bytes = Some(4 << 30);
        def.exports.kinesis = vec![KinesisConfig {
            common: ExportCommon {
                identifier: "x".into(),
                disabled: Some(true),
                ..Default::default()
            },
            kinesis_stream_name: name.into(),
        }];
        def
    }
    fn set_disabled(&self, def: &mut StreamDefinition, disabled: bool) {
        def.exports.kinesis[0].common.disabled = Some(disabled);
    }
    fn payload(&self, _index: usize, i: u64) -> Vec<u8> {
        let mut p = format!("{i:012}").into_bytes();
        p.resize(1024, b'.');
        p
    }
    fn load_call(
        &self,
        _worker: usize,
        call: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + '_>> {
        Box::pin(async move {
            let records = (0..500)
                .map(|i| {
                    aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                        .data(aws_sdk_kinesis::primitives::Blob::new(
                            self.payload(0, call * 500 + i),
                        ))
                        .partition_key(
                            uuid::Builder::from_random_bytes(rand::random())
                                .into_uuid()
                                .to_string(),
                        )
                        .build()
                        .unwrap()
                })
                .collect();
            self.client
                .put_records()
                .stream_name("load")
                .set_records(Some(records))
                .send()
                .await
                .expect("PutRecords to the fast endpoint");
            500
        })
    }
    fn received(&self, _streams: usize) -> u64 {
        self.fake.counters.records.load(Ordering::Relaxed)
    }
}

/// SiteWise: one DOUBLE property per drained stream (alias
/// `/bench/s<index>`) and per load worker (`/load/w<worker>`); one value per
/// entry, timestamps 1 ms apart (the service keeps one value per property and
/// time, within the last 7 days), each run in its own span of time.
struct SiteWise {
    fake: FakeIot,
    client: aws_sdk_iotsitewise::Client,
    base: i64,
    run: std::sync::atomic::AtomicI64,
    ids: Vec<(String, String)>,
}

/// Seconds of timestamps each SiteWise run has (1,000 values a second).
const SITEWISE_RUN_SPAN_SECS: i64 = 100_000;

impl SiteWise {
    /// Timestamp of value `n` of the current run.
    fn time(&self, n: u64) -> (i64, i32) {
        let run = self.run.load(Ordering::SeqCst);
        (
            self.base + run * SITEWISE_RUN_SPAN_SECS + (n / 1000) as i64,
            ((n % 1000) * 1_000_000) as i32,
        )
    }
}

impl SiteWise {
    fn new() -> Self {
        let fake = FakeIot::start();
        let mut ids = Vec::new();
        for i in 0..LOADGEN_CONCURRENCY {
            for (prefix, n) in [("/bench/s", i), ("/load/w", i)] {
                let (asset, props) = fake.create_asset(&format!("{prefix}{n}"), &[("v", "DOUBLE")]);
                fake.set_alias(&asset, &props[0], &format!("{prefix}{n}"));
                if prefix == "/bench/s" {
                    ids.push((asset, props[0].clone()));
                }
            }
        }
        Self {
            client: sitewise_client(&fake.url()),
            fake,
            // Four runs of 100,000 s fit in the last 7 days.
            base: unix_secs() - 6 * 24 * 3600,
            run: std::sync::atomic::AtomicI64::new(0),
            ids,
        }
    }
}

fn sitewise_entry(alias: &str, value: f64, (secs, nanos): (i64, i32)) -> Vec<u8> {
    format!(
        r#"{{"entryId": "e", "propertyAlias": "{alias}", "propertyValues": [{{"value": {{"doubleValue": {value}}}, "timestamp": {{"timeInSeconds": {secs}, "offsetInNanos": {nanos}}}, "quality": "GOOD"}}]}}"#
    )
    .into_bytes()
}

impl Bench for SiteWise {
    fn exporter(&self) -> &'static str {
        "export-sitewise"
    }
    fn endpoint(&self) -> String {
        self.fake.url()
    }
    fn record(&self) -> &'static str {
        "entry of one value"
    }
    fn per_call(&self) -> usize {
        10
    }
    fn definition(&self, name: &str, _index: usize) -> StreamDefinition {
        let mut def = StreamDefinition::new(name, StrategyOnFull::RejectNewData);
        def.max_size_bytes = Some(4 << 30);
        def.exports.iot_sitewise = vec![IotSiteWiseConfig {
            common: ExportCommon {
                identifier: "x".into(),
                disabled: Some(true),
                ..Default::default()
            },
        }];
        def
    }
    fn set_disabled(&self, def: &mut StreamDefinition, disabled: bool) {
        def.exports.iot_sitewise[0].common.disabled = Some(disabled);
    }
    fn payload(&self, index: usize, i: u64) -> Vec<u8> {
        sitewise_entry(&format!("/bench/s{index}"), i as f64, self.time(i))
    }
    fn load_call(
        &self,
        worker: usize,
        call: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + '_>> {
        use aws_sdk_iotsitewise::types::{
            AssetPropertyValue, PutAssetPropertyValueEntry, TimeInNanos, Variant,
        };
        Box::pin(async move {
            let entries = (0..10u64)
                .map(|i| {
                    let n = call * 10 + i;
                    let (secs, nanos) = self.time(n);
                    PutAssetPropertyValueEntry::builder()
                        .entry_id(n.to_string())
                        .property_alias(format!("/load/w{worker}"))
                        .property_values(
                            AssetPropertyValue::builder()
                                .value(Variant::builder().double_value(n as f64).build())
                                .timestamp(
                                    TimeInNanos::builder()
                                        .time_in_seconds(secs)
                                        .offset_in_nanos(nanos)
                                        .build()
                                        .unwrap(),
                                )
                                .build(),
                        )
                        .build()
                        .unwrap()
                })
                .collect();
            let out = self
                .client
                .batch_put_asset_property_value()
                .set_entries(Some(entries))
                .send()
                .await
                .expect("BatchPutAssetPropertyValue to the fake");
            10 - out.error_entries().len() as u64
        })
    }
    fn received(&self, streams: usize) -> u64 {
        self.ids[..streams]
            .iter()
            .map(|(a, p)| self.fake.property_values(a, p).len() as u64)
            .sum()
    }
    fn next_run(&self) {
        self.run.fetch_add(1, Ordering::SeqCst);
    }
}

/// IoT Analytics: channel `bench` for the drain, `load` for the load
/// generator; 1 KiB messages.
struct Analytics {
    fake: FakeIot,
    client: aws_sdk_iotanalytics::Client,
}

impl Analytics {
    fn new() -> Self {
        let fake = FakeIot::start();
        fake.create_channel("bench");
        fake.create_channel("load");
        Self {
            client: analytics_client(&fake.url()),
            fake,
        }
    }
}

impl Bench for Analytics {
    fn exporter(&self) -> &'static str {
        "export-analytics"
    }
    fn endpoint(&self) -> String {
        self.fake.url()
    }
    fn record(&self) -> &'static str {
        "1 KiB message"
    }
    fn per_call(&self) -> usize {
        100
    }
    fn definition(&self, name: &str, _index: usize) -> StreamDefinition {
        let mut def = StreamDefinition::new(name, StrategyOnFull::RejectNewData);
        def.max_size_bytes = Some(4 << 30);
        def.exports.iot_analytics = vec![IotAnalyticsConfig {
            common: ExportCommon {
                identifier: "x".into(),
                disabled: Some(true),
                ..Default::default()
            },
            iot_channel: "bench".into(),
            iot_msg_id_prefix: Some("b-".into()),
        }];
        def
    }
    fn set_disabled(&self, def: &mut StreamDefinition, disabled: bool) {
        def.exports.iot_analytics[0].common.disabled = Some(disabled);
    }
    fn payload(&self, index: usize, i: u64) -> Vec<u8> {
        let mut p = format!("{{\"stream\": {index}, \"n\": {i}, \"pad\": \"").into_bytes();
        p.resize(1022, b'.');
        p.extend(b"\"}");
        p
    }
    fn load_call(
        &self,
        worker: usize,
        call: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + '_>> {
        Box::pin(async move {
            let messages = (0..100u64)
                .map(|i| {
                    aws_sdk_iotanalytics::types::Message::builder()
                        .message_id(format!("w{worker}-{}", call * 100 + i))
                        .payload(aws_sdk_iotanalytics::primitives::Blob::new(
                            self.payload(worker, call * 100 + i),
                        ))
                        .build()
                        .unwrap()
                })
                .collect();
            let out = self
                .client
                .batch_put_message()
                .channel_name("load")
                .set_messages(Some(messages))
                .send()
                .await
                .expect("BatchPutMessage to the fake");
            100 - out.batch_put_message_error_entries().len() as u64
        })
    }
    fn received(&self, _streams: usize) -> u64 {
        self.fake.channel_messages("bench").len() as u64
    }
}

/// Records/s the endpoint takes from the SDK driven directly with
/// `concurrency` calls in flight, and the CPU µs per record of this process
/// (load generator and endpoint together).
fn raw_capacity(bench: &dyn Bench, concurrency: usize) -> (f64, f64) {
    bench.next_run();
    let cpu0 = cpu_secs(std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(LOADGEN_SECONDS);
    let total: u64 = rt.block_on(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let workers = (0..concurrency).map(|w| async move {
                    let mut sent = 0u64;
                    let mut call = 0u64;
                    while Instant::now() < deadline {
                        sent += bench.load_call(w, call).await;
                        call += 1;
                    }
                    sent
                });
                let mut total = 0;
                for n in futures_join(workers.collect()).await {
                    total += n;
                }
                total
            })
            .await
    });
    let rate = total as f64 / start.elapsed().as_secs_f64();
    (
        rate,
        (cpu_secs(std::process::id()) - cpu0) * 1e6 / total.max(1) as f64,
    )
}

/// Polls the futures together on this thread; their results in order.
async fn futures_join<F: std::future::Future<Output = u64>>(fs: Vec<F>) -> Vec<u64> {
    let mut fs: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<u64>> = vec![None; fs.len()];
    std::future::poll_fn(|cx| {
        for (i, f) in fs.iter_mut().enumerate() {
            if out[i].is_none() {
                if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
                    out[i] = Some(v);
                }
            }
        }
        if out.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|v| v.unwrap_or(0)).collect()
}

fn fill(bench: &dyn Bench, store: &StoreHarness, stream: &str, index: usize, records: u64) -> f64 {
    let start = Instant::now();
    let payloads: Vec<Vec<u8>> = (0..records).map(|i| bench.payload(index, i)).collect();
    std::thread::scope(|s| {
        // Appenders take every FILL_THREADS-th record, so the stream's order
        // is close to (not exactly) the generation order.
        for t in 0..FILL_THREADS {
            let payloads = &payloads;
            s.spawn(move || {
                for p in payloads.iter().skip(t).step_by(FILL_THREADS) {
                    store.append(stream, p.clone());
                }
            });
        }
    });
    records as f64 / start.elapsed().as_secs_f64()
}

struct Drained {
    rate: f64,
    secs: f64,
    idle_kib: u64,
    peak_kib: u64,
    received: u64,
    /// CPU µs per record: exporter, store, this process (the endpoint).
    cpu_us: [f64; 3],
}

/// Drains `streams` streams of `per_stream` records each with one exporter.
fn drain(bench: &dyn Bench, streams: usize, per_stream: u64) -> Drained {
    bench.next_run();
    let store = StoreHarness::start(&[]);
    let mut defs = Vec::new();
    for i in 0..streams {
        let name = format!("bench-{i}");
        let def = bench.definition(&name, i);
        store.create(def.clone());
        let rate = fill(bench, &store, &name, i, per_stream);
        println!(
            "filled {name}: {per_stream} records ({}) at {rate:.0}/s",
            bench.record()
        );
        defs.push(def);
    }
    let before = bench.received(streams);
    let mut exporter: Child = store.exporter(bench.exporter(), &aws_env(&bench.endpoint()));
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(exporter.id());
    let pids = [exporter.id(), store.store.id(), std::process::id()];
    let cpu0 = pids.map(cpu_secs);
    let start = Instant::now();
    for mut def in defs {
        bench.set_disabled(&mut def, false);
        store.update(def);
    }
    let mut peak = idle_rss;
    loop {
        peak = peak.max(rss_kib(exporter.id()));
        let done = (0..streams).all(|i| {
            store
                .export_status(&format!("bench-{i}"), "x")
                .last_exported_sequence_number
                >= per_stream as i64 - 1
        });
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "drain did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let total = streams as u64 * per_stream;
    let cpu1 = pids.map(cpu_secs);
    let cpu_us = [0, 1, 2].map(|i| (cpu1[i] - cpu0[i]) * 1e6 / total as f64);
    let received = bench.received(streams) - before;
    kill9(&mut exporter);
    Drained {
        rate: total as f64 / secs,
        secs,
        idle_kib: idle_rss,
        peak_kib: peak,
        received,
        cpu_us,
    }
}

fn run(name: &str, bench: &dyn Bench, records: u64) {
    println!("== {name}: endpoint on {}", bench.endpoint());
    let (cap1, gen1) = raw_capacity(bench, 1);
    let (cap5, gen5) = raw_capacity(bench, LOADGEN_CONCURRENCY);
    println!(
        "raw capacity: {cap1:.0}/s with 1 call in flight, {cap5:.0}/s with {LOADGEN_CONCURRENCY}"
    );
    let one = drain(bench, 1, records);
    println!("one stream: {:.0}/s", one.rate);
    let streams = LOADGEN_CONCURRENCY;
    let many = drain(bench, streams, records / streams as u64);
    println!("{streams} streams: {:.0}/s", many.rate);
    let per = bench.per_call();
    let what = bench.record();
    let exporter = bench.exporter();
    println!();
    println!("{name}, {per} x {what} per call:");
    println!();
    println!("| figure | value | goal |");
    println!("|---|---|---|");
    println!("| endpoint raw capacity, 1 call in flight (as one export sends: in order, one batch at a time) | {cap1:.0}/s | |");
    println!("| endpoint raw capacity, {LOADGEN_CONCURRENCY} calls in flight (the default pool) | {cap5:.0}/s | |");
    println!(
        "| drain of {records}, one stream | {:.0}/s ({:.1} s) = {:.2} x the 1-in-flight capacity | >= 0.8 x |",
        one.rate,
        one.secs,
        one.rate / cap1
    );
    println!(
        "| drain of {records} over {streams} streams | {:.0}/s ({:.1} s) = {:.2} x the {LOADGEN_CONCURRENCY}-in-flight capacity | >= 0.8 x |",
        many.rate,
        many.secs,
        many.rate / cap5
    );
    println!(
        "| {exporter} resident memory, idle / peak while draining | {:.1} / {:.1} MiB (one stream), {:.1} / {:.1} MiB ({streams} streams) | |",
        one.idle_kib as f64 / 1024.0,
        one.peak_kib as f64 / 1024.0,
        many.idle_kib as f64 / 1024.0,
        many.peak_kib as f64 / 1024.0
    );
    println!(
        "| CPU per record: load generator + endpoint | {gen1:.2} µs (1 in flight), {gen5:.2} µs ({LOADGEN_CONCURRENCY}) | |"
    );
    for (label, d) in [
        ("one stream".to_string(), &one),
        (format!("{streams} streams"), &many),
    ] {
        println!(
            "| CPU per record while draining ({label}): {exporter} / store / endpoint | {:.2} / {:.2} / {:.2} µs | |",
            d.cpu_us[0], d.cpu_us[1], d.cpu_us[2]
        );
    }
    println!(
        "| records the endpoint received | {} and {} | {records} each (more = re-sends) |",
        one.received, many.received
    );
    println!();
}

/// S3: one file of `bytes`, uploaded by a direct multipart upload (the SDK,
/// 5 MiB parts one after another, as the exporter sends them) and then by
/// `export-s3` as a task, both to moto; the exporter's RSS is sampled.
fn run_s3(bytes: u64) {
    use stream_manager_tests::aws::Moto;
    const PART: u64 = 5 * 1024 * 1024;
    let moto = Moto::start();
    let client = s3_client(&moto.url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(client.create_bucket().bucket("bench").send())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..bytes.div_ceil(1 << 20) {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&chunk).unwrap();
        }
    }
    let size = std::fs::metadata(&path).unwrap().len();
    let mib = size as f64 / (1024.0 * 1024.0);
    println!("== S3: {mib:.0} MiB file, moto on {}", moto.url());
    // Direct multipart upload.
    let start = Instant::now();
    rt.block_on(async {
        use std::io::{Read, Seek, SeekFrom};
        let id = client
            .create_multipart_upload()
            .bucket("bench")
            .key("direct.bin")
            .send()
            .await
            .unwrap()
            .upload_id
            .unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let mut parts = Vec::new();
        for n in 0..size.div_ceil(PART) {
            let len = PART.min(size - n * PART) as usize;
            let mut buf = vec![0u8; len];
            f.seek(SeekFrom::Start(n * PART)).unwrap();
            f.read_exact(&mut buf).unwrap();
            let out = client
                .upload_part()
                .bucket("bench")
                .key("direct.bin")
                .upload_id(&id)
                .part_number(n as i32 + 1)
                .body(aws_sdk_s3::primitives::ByteStream::from(buf))
                .send()
                .await
                .unwrap();
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(n as i32 + 1)
                    .set_e_tag(out.e_tag)
                    .build(),
            );
        }
        client
            .complete_multipart_upload()
            .bucket("bench")
            .key("direct.bin")
            .upload_id(&id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    });
    let direct = mib / start.elapsed().as_secs_f64();
    println!("direct multipart upload: {direct:.1} MiB/s");
    // The same file as an export task.
    let store = StoreHarness::start(&[]);
    let mut def = StreamDefinition::new("tasks", StrategyOnFull::RejectNewData);
    def.exports.s3_task_executor = vec![bus_schema::S3TaskExecutorConfig {
        common: ExportCommon {
            identifier: "x".into(),
            ..Default::default()
        },
        size_threshold_for_multipart_upload_bytes: None,
        status_config: None,
    }];
    store.create(def);
    let mut exporter: Child = store.exporter("export-s3", &aws_env(&moto.url()));
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(exporter.id());
    let task = format!(
        r#"{{"inputUrl":"file://{}","bucket":"bench","key":"exported.bin"}}"#,
        path.display()
    );
    let start = Instant::now();
    store.append("tasks", task.into_bytes());
    let mut peak = idle;
    while store
        .export_status("tasks", "x")
        .last_exported_sequence_number
        < 0
    {
        peak = peak.max(rss_kib(exporter.id()));
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "upload did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let exported = mib / start.elapsed().as_secs_f64();
    let st = store.export_status("tasks", "x");
    kill9(&mut exporter);
    let head = rt
        .block_on(
            client
                .head_object()
                .bucket("bench")
                .key("exported.bin")
                .send(),
        )
        .unwrap();
    assert_eq!(head.content_length(), Some(size as i64), "{st:?}");
    println!();
    println!("| figure | value | goal |");
    println!("|---|---|---|");
    println!("| direct multipart upload of {mib:.0} MiB to moto (SDK, 5 MiB parts in sequence) | {direct:.1} MiB/s | |");
    println!(
        "| export-s3 task of the same file | {exported:.1} MiB/s = {:.2} x direct | >= 0.8 x |",
        exported / direct
    );
    println!(
        "| export-s3 resident memory, idle / peak during the upload | {:.1} / {:.1} MiB | <= 64 MB |",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: Option<u64> = args
        .iter()
        .position(|a| a == "--records")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok());
    let which = args
        .get(1)
        .filter(|a| !a.starts_with("--"))
        .map_or("all", String::as_str);
    let all = which == "all";
    if which == "idle" {
        let seconds = args
            .iter()
            .position(|a| a == "--seconds")
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(20.0);
        idle(seconds);
        return;
    }
    if all || which == "kinesis" {
        run("Kinesis", &Kinesis::new(), records.unwrap_or(1_000_000));
    }
    if all || which == "sitewise" {
        run("IoT SiteWise", &SiteWise::new(), records.unwrap_or(100_000));
    }
    if all || which == "s3" {
        run_s3(records.unwrap_or(1 << 30));
    }
    if all || which == "analytics" {
        run(
            "IoT Analytics",
            &Analytics::new(),
            records.unwrap_or(200_000),
        );
    }
}

/// Goal: the four exporters together, with no export defined, under a full
/// append load, use at most this share of one core.
const IDLE_EXPORTERS_CORE_MAX: f64 = 0.005;

/// `export-bench idle`.
fn idle(seconds: f64) {
    use stream_manager_tests::peer_bench::{run_leg, sm::Sm, Workload};
    let w = Workload::full(seconds);
    let dir = tempfile::tempdir().expect("tempdir");
    let bin_dir = std::env::current_exe()
        .expect("current exe")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        let sm = Sm::start(&bin_dir, dir.path(), &w, false).await?;
        let r = run_leg(&sm, &w, sm.pids.clone(), false).await;
        sm.stop();
        r
    });
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("export-bench idle: {e:#}");
            std::process::exit(1);
        }
    };
    println!(
        "Idle exporters: no export defined, {} appends/s of {} B sustained for {seconds} s\n",
        r.appends_per_s.round(),
        w.payload
    );
    println!(
        "| process | CPU (% of one core) | CPU per append (µs) | peak RSS (MiB) |\n|---|---|---|---|"
    );
    let mut exporters = 0.0;
    for p in &r.procs {
        if p.name.starts_with("export-") {
            exporters += p.cores;
        }
        println!(
            "| {} | {:.2} | {:.3} | {:.1} |",
            p.name,
            p.cores * 100.0,
            p.us_per_append,
            p.peak_rss_kib as f64 / 1024.0
        );
    }
    println!(
        "\nthe four exporters together: {:.3}% of one core (goal ≤ {:.1}%: {})",
        exporters * 100.0,
        IDLE_EXPORTERS_CORE_MAX * 100.0,
        if exporters <= IDLE_EXPORTERS_CORE_MAX {
            "met"
        } else {
            "NOT met"
        }
    );
}
