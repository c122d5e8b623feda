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

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the name: state is field 3; utime and stime are fields 14, 15.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(14) + ticks(15)) / hz
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Records/s the endpoint takes from the SDK driven directly, with
/// `concurrency` calls in flight; and the CPU µs per record of this process
/// (load generator and endpoint together).
fn raw_capacity(endpoint: &str, concurrency: usize) -> (f64, f64) {
    let cpu0 = cpu_secs(std::process::id());
    let mut sent = 0f64;
    let rate = raw_capacity_inner(endpoint, concurrency, &mut sent);
    (rate, (cpu_secs(std::process::id()) - cpu0) * 1e6 / sent)
}

fn raw_capacity_inner(endpoint: &str, concurrency: usize, sent: &mut f64) -> f64 {
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
        let workers = (0..concurrency).map(|_| {
            let (client, payload) = (client.clone(), payload.clone());
            async move {
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    let records = (0..500)
                        .map(|_| {
                            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                                .data(aws_sdk_kinesis::primitives::Blob::new(payload.clone()))
                                .partition_key(
                                    uuid::Builder::from_random_bytes(rand::random())
                                        .into_uuid()
                                        .to_string(),
                                )
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
        *sent = total as f64;
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

/// Drains `streams` streams of `per_stream` records each (filled behind
/// disabled exports) with one `export-kinesis`; returns (records/s, seconds,
/// idle RSS KiB, peak RSS KiB, records the endpoint received, and CPU µs per
/// record of the exporter, the store and this process (the endpoint)).
struct Drained {
    rate: f64,
    secs: f64,
    idle_kib: u64,
    peak_kib: u64,
    received: u64,
    cpu_us: [f64; 3],
}

fn drain(fake: &FastKinesis, streams: usize, per_stream: u64) -> Drained {
    let store = StoreHarness::start(&[]);
    let mut defs = Vec::new();
    for i in 0..streams {
        let name = format!("bench-{i}");
        let mut def = StreamDefinition::new(name.as_str(), StrategyOnFull::RejectNewData);
        def.max_size_bytes = Some(4 << 30);
        def.exports.kinesis = vec![KinesisConfig {
            common: ExportCommon {
                identifier: "k".into(),
                disabled: Some(true),
                ..Default::default()
            },
            kinesis_stream_name: name.clone(),
        }];
        store.create(def.clone());
        let rate = fill(&store, &name, per_stream);
        println!("filled {name}: {per_stream} records of {RECORD_BYTES} bytes at {rate:.0}/s");
        defs.push(def);
    }
    let before = fake.counters.records.load(Ordering::Relaxed);
    let mut exporter: Child = store.exporter("export-kinesis", &aws_env(&fake.url()));
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(exporter.id());
    let pids = [exporter.id(), store.store.id(), std::process::id()];
    let cpu0 = pids.map(cpu_secs);
    let start = Instant::now();
    for mut def in defs {
        def.exports.kinesis[0].common.disabled = Some(false);
        store.update(def);
    }
    let mut peak = idle_rss;
    loop {
        peak = peak.max(rss_kib(exporter.id()));
        let done = (0..streams).all(|i| {
            store
                .export_status(&format!("bench-{i}"), "k")
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
    let received = fake.counters.records.load(Ordering::Relaxed) - before;
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
    let (cap1, gen1) = raw_capacity(&fake.url(), 1);
    let (cap5, gen5) = raw_capacity(&fake.url(), LOADGEN_CONCURRENCY);
    println!(
        "raw capacity (SDK load generator, 500 x 1 KiB per call): {cap1:.0} records/s with 1 call in flight, {cap5:.0} with {LOADGEN_CONCURRENCY}"
    );
    let one = drain(&fake, 1, records);
    println!("one stream: {:.0} records/s", one.rate);
    let streams = LOADGEN_CONCURRENCY;
    let many = drain(&fake, streams, records / streams as u64);
    println!("{streams} streams: {:.0} records/s", many.rate);
    println!();
    println!("| figure | value | goal |");
    println!("|---|---|---|");
    println!("| endpoint raw capacity, 1 call in flight (as one export sends: in order, one batch at a time) | {cap1:.0} records/s | |");
    println!("| endpoint raw capacity, {LOADGEN_CONCURRENCY} calls in flight (the default pool) | {cap5:.0} records/s | |");
    println!(
        "| drain of {records} x 1 KiB, one stream | {:.0} records/s ({:.1} s) = {:.2} x the 1-in-flight capacity | >= 20,000/s, >= 0.8 x |",
        one.rate, one.secs, one.rate / cap1
    );
    println!(
        "| drain of {records} x 1 KiB over {streams} streams | {:.0} records/s ({:.1} s) = {:.2} x the {LOADGEN_CONCURRENCY}-in-flight capacity | >= 0.8 x |",
        many.rate, many.secs, many.rate / cap5
    );
    println!(
        "| export-kinesis resident memory, idle / peak while draining | {:.1} / {:.1} MiB (one stream), {:.1} / {:.1} MiB ({streams} streams) | <= 32 MiB |",
        one.idle_kib as f64 / 1024.0,
        one.peak_kib as f64 / 1024.0,
        many.idle_kib as f64 / 1024.0,
        many.peak_kib as f64 / 1024.0
    );
    println!(
        "| CPU per record: load generator + endpoint | {gen1:.2} µs (1 in flight), {gen5:.2} µs ({LOADGEN_CONCURRENCY}) | |"
    );
    for (name, d) in [("one stream", &one), ("{streams} streams", &many)] {
        println!(
            "| CPU per record while draining ({}): export-kinesis / store / endpoint | {:.2} / {:.2} / {:.2} µs | |",
            name.replace("{streams}", &streams.to_string()),
            d.cpu_us[0],
            d.cpu_us[1],
            d.cpu_us[2]
        );
    }
    println!(
        "| records the endpoint received | {} and {} | {records} each (more = re-sends) |",
        one.received, many.received
    );
}
