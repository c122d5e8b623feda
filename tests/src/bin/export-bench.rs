//! `export-bench`: how fast `export-kinesis` drains a backlog, against the
//! capacity of the endpoint it drains into, measured in the same run. Use a
//! release build:
//! `cargo build --release --workspace --bins && ./target/release/export-bench [--records N]`.
//!
//! 1. Starts the fast local Kinesis endpoint (`fast_kinesis`, in this
//!    process) and measures its raw capacity with a direct load generator:
//!    the AWS SDK client, one thread, as many concurrent `PutRecords` calls
//!    as the exporter's default pool (5), 500 records of 1 KiB each.
//! 2. Starts a store, fills a stream with N (default 1,000,000) 1 KiB records
//!    behind a disabled Kinesis export, starts `export-kinesis`, enables the
//!    export and times the drain, sampling the exporter's resident memory.

use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bus_schema::{ExportCommon, KinesisConfig, StrategyOnFull, StreamDefinition};
use stream_manager_tests::aws::aws_env;
use stream_manager_tests::fast_kinesis::FastKinesis;
use stream_manager_tests::{kill9, StoreHarness};

const RECORD_BYTES: usize = 1024;
const LOADGEN_CONCURRENCY: usize = 5;
const LOADGEN_SECONDS: u64 = 10;
const FILL_THREADS: usize = 8;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Records/s the endpoint takes from the SDK driven directly.
fn raw_capacity(endpoint: &str) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let creds =
            aws_sdk_kinesis::config::Credentials::new("bench", "bench", None, None, "bench");
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .endpoint_url(endpoint)
            .build();
        let client = aws_sdk_kinesis::Client::from_conf(config);
        let payload = vec![b'x'; RECORD_BYTES];
        let deadline = Instant::now() + Duration::from_secs(LOADGEN_SECONDS);
        let start = Instant::now();
        let workers = (0..LOADGEN_CONCURRENCY).map(|_| {
            let (client, payload) = (client.clone(), payload.clone());
            async move {
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    let records = (0..500)
                        .map(|_| {
                            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                                .data(aws_sdk_kinesis::primitives::Blob::new(payload.clone()))
                                .partition_key(uuid::Uuid::new_v4().to_string())
                                .build()
                                .unwrap()
                        })
                        .collect();
                    client
                        .put_records()
                        .stream_name("bench")
                        .set_records(Some(records))
                        .send()
                        .await
                        .expect("PutRecords to the fast endpoint");
                    sent += 500;
                }
                sent
            }
        });
        let total: u64 = futures_sum(workers).await;
        total as f64 / start.elapsed().as_secs_f64()
    })
}

/// Runs the futures concurrently on this thread and sums their results.
async fn futures_sum(
    fs: impl Iterator<Item = impl std::future::Future<Output = u64> + 'static>,
) -> u64 {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let handles: Vec<_> = fs.map(tokio::task::spawn_local).collect();
            let mut total = 0;
            for h in handles {
                total += h.await.expect("load generator task");
            }
            total
        })
        .await
}

fn fill(store: &StoreHarness, stream: &str, records: u64) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..FILL_THREADS as u64 {
            s.spawn(move || {
                let mut i = t;
                while i < records {
                    let mut p = format!("{i:012}").into_bytes();
                    p.resize(RECORD_BYTES, b'.');
                    store.append(stream, p);
                    i += FILL_THREADS as u64;
                }
            });
        }
    });
    records as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args
        .iter()
        .position(|a| a == "--records")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);

    let fake = FastKinesis::start();
    println!("fast Kinesis endpoint on {}", fake.url());
    let capacity = raw_capacity(&fake.url());
    println!(
        "raw capacity (SDK load generator, {LOADGEN_CONCURRENCY} concurrent calls of 500 x 1 KiB): {capacity:.0} records/s; the endpoint counted {} records in {} calls",
        fake.counters.records.load(Ordering::Relaxed),
        fake.counters.calls.load(Ordering::Relaxed)
    );

    let store = StoreHarness::start(&[]);
    let mut def = StreamDefinition::new("bench", StrategyOnFull::RejectNewData);
    def.max_size_bytes = Some(4 << 30);
    let mut export = KinesisConfig {
        common: ExportCommon {
            identifier: "k".into(),
            disabled: Some(true),
            ..Default::default()
        },
        kinesis_stream_name: "bench".into(),
    };
    def.exports.kinesis = vec![export.clone()];
    store.create(def.clone());
    let fill_rate = fill(&store, "bench", records);
    println!("filled {records} records of {RECORD_BYTES} bytes at {fill_rate:.0}/s");

    let before = fake.counters.records.load(Ordering::Relaxed);
    let mut exporter: Child = store.exporter("export-kinesis", &aws_env(&fake.url()));
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(exporter.id());
    export.common.disabled = Some(false);
    def.exports.kinesis = vec![export];
    let start = Instant::now();
    store.update(def);
    let mut peak = idle_rss;
    loop {
        peak = peak.max(rss_kib(exporter.id()));
        let s = store.export_status("bench", "k");
        if s.last_exported_sequence_number >= records as i64 - 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "drain did not finish: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = start.elapsed().as_secs_f64();
    let drain = records as f64 / secs;
    let received = fake.counters.records.load(Ordering::Relaxed) - before;
    kill9(&mut exporter);
    println!();
    println!("| figure | value | goal |");
    println!("|---|---|---|");
    println!("| endpoint raw capacity (direct SDK load generator) | {capacity:.0} records/s | |");
    println!(
        "| export-kinesis drain of {records} x 1 KiB | {drain:.0} records/s ({secs:.1} s) | >= 20,000/s |"
    );
    println!(
        "| drain / raw capacity | {:.2} x | >= 0.8 x |",
        drain / capacity
    );
    println!(
        "| export-kinesis resident memory, idle / peak while draining | {:.1} / {:.1} MiB | <= 32 MiB |",
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!("| records the endpoint received | {received} | {records} (more = re-sends) |");
}
