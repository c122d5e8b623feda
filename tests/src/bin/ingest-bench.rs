//! `ingest-bench run [--quick]`: the ingest benchmark of README. Use a
//! release build: `cargo build --release --workspace --bins &&
//! ./target/release/ingest-bench run`. (`ingest-bench latency` runs phases 1
//! and 2 only; `--quick` does a tenth of the appends.) Starts a real store and ingest (the
//! binaries next to this one), then:
//! 1. ingest resident memory with 100 idle connections;
//! 2. latency at a steady 10,000 appends/s (p50, p99, max), and the same
//!    load sent straight to a store over the bus (the store's share);
//! 3. the store's own append rate over the bus (`store-bench fill`);
//! 4. 1 KiB appends through the SDK wire protocol: 8 connections × 64
//!    requests in flight; ingest peak memory.
//!
//! Phases 2, 3 and 4 each run on a fresh store (phase 4 with a fresh ingest)
//! in its own directory, so that no phase pays for the flushes and
//! compactions another's writes cause (fjall compacts lazily, when later
//! writes flush). Each also waits until the store's CPU use is below 5%
//! before it starts; the wait is printed.
//!
//! The load generator speaks the wire protocol itself (handshake, frames,
//! CBOR), pipelined as the SDKs do, and is kept cheap so that the figures
//! are the server's: each connection encodes its append request once and
//! patches the request id per request, and writes every request it may send
//! in one write. It checks each answer's status and request id. The CPU each
//! process used per append is printed beside the rates.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stream_manager_tests::load::{connect, exe, percentile_ms, AppendAnswer, AppendTemplate, Proc};
use stream_manager_tests::{cpu_secs, peak_rss_kib, rss_kib, wire_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

const CONNECTIONS: usize = 8;
const IN_FLIGHT: usize = 64;
const PAYLOAD_BYTES: usize = 1024;
const STEADY_RATE_PER_S: f64 = 10_000.0;
/// A phase starts once the store used less than this share of one core
/// over `QUIET_SAMPLE`...
const QUIET_CPU_SHARE: f64 = 0.05;
const QUIET_SAMPLE: Duration = Duration::from_millis(500);
/// ...or after this long, whichever comes first.
const QUIET_WAIT_MAX: Duration = Duration::from_secs(120);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let latency_only = match args.first().map(String::as_str) {
        Some("run") => false,
        Some("latency") => true,
        _ => bail!("usage: ingest-bench run [--quick] | ingest-bench latency [--quick]"),
    };
    let quick = args.iter().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tmp = std::env::temp_dir().join(format!("ingest-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let r = rt.block_on(bench(&tmp, quick, latency_only));
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

/// Appends `count` messages to `stream` on one connection with at most
/// `IN_FLIGHT` outstanding; with `interval`, sends one every `interval`.
/// Returns the latency of every append.
async fn append_conn(
    port: u16,
    stream: String,
    count: usize,
    interval: Option<Duration>,
) -> Result<Vec<Duration>> {
    let (rd, mut wr) = connect(port).await?.into_split();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let epoch = Instant::now();
    // Send time of each request, in ns since `epoch`, indexed by its id.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let reader = {
        let (slots, sent) = (slots.clone(), sent.clone());
        tokio::spawn(async move {
            let mut rd = BufReader::with_capacity(64 * 1024, rd);
            let mut latencies = Vec::with_capacity(count);
            let mut payload = Vec::new();
            for _ in 0..count {
                let mut h = [0u8; 5];
                rd.read_exact(&mut h).await?;
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                payload.resize(len.saturating_sub(1), 0);
                rd.read_exact(&mut payload).await?;
                let answer: AppendAnswer = ciborium::from_reader(&payload[..])
                    .with_context(|| format!("undecodable answer (operation {})", h[4]))?;
                if h[4] != 9 || answer.status != 0 {
                    bail!(
                        "append {} failed: operation {}, status {}",
                        answer.request_id,
                        h[4],
                        answer.status
                    );
                }
                let id: usize = answer.request_id.parse()?;
                let at = sent.get(id).context("unknown request id")?;
                let elapsed = epoch.elapsed().as_nanos() as u64;
                latencies.push(Duration::from_nanos(
                    elapsed.saturating_sub(at.load(Ordering::Relaxed)),
                ));
                slots.add_permits(1);
            }
            Ok(latencies)
        })
    };
    let template = AppendTemplate::new(&stream, PAYLOAD_BYTES);
    let mut out = Vec::with_capacity(IN_FLIGHT * template.frame.len());
    let mut next = 0usize;
    while next < count {
        if let Some(iv) = interval {
            tokio::time::sleep_until((epoch + iv * next as u32).into()).await;
        }
        slots.acquire().await?.forget();
        let mut batch = 1;
        if interval.is_none() {
            // Everything the window allows goes out in one write.
            while next + batch < count && slots.try_acquire().map(|p| p.forget()).is_ok() {
                batch += 1;
            }
        }
        out.clear();
        let now = epoch.elapsed().as_nanos() as u64;
        for id in next..next + batch {
            sent[id].store(now, Ordering::Relaxed);
            template.write_for(id as u64, &mut out);
        }
        next += batch;
        wr.write_all(&out).await?;
    }
    reader.await?
}

/// Runs `total` appends over `CONNECTIONS` connections (one stream each);
/// returns the rate achieved and every latency.
async fn load(port: u16, total: usize, rate_per_s: Option<f64>) -> Result<(f64, Vec<Duration>)> {
    let per = total / CONNECTIONS;
    let interval = rate_per_s.map(|r| Duration::from_secs_f64(CONNECTIONS as f64 / r));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| tokio::spawn(append_conn(port, format!("wire-{c}"), per, interval)))
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok((
        (per * CONNECTIONS) as f64 / start.elapsed().as_secs_f64(),
        latencies,
    ))
}

/// The same steady load as phase 2, straight to the store over the bus (no
/// ingest, no TCP): `total` appends over `CONNECTIONS` streams, one every
/// `CONNECTIONS / rate` seconds per stream, each its own request. Returns
/// every latency.
async fn bus_latency(root: &Path, total: usize, rate_per_s: f64) -> Result<Vec<Duration>> {
    use bus_schema::{Request, Response, StrategyOnFull, StreamDefinition};
    let bus = bus::BusClient::connect_in_runtime(&bus::store_endpoint(root), Default::default())?;
    let timeout = Duration::from_secs(10);
    for c in 0..CONNECTIONS {
        let definition = StreamDefinition::new(format!("bus-{c}"), StrategyOnFull::RejectNewData);
        match bus
            .call_async(Request::CreateStream { definition }, timeout)
            .await?
        {
            Response::Created => {}
            other => bail!("create failed: {other:?}"),
        }
    }
    let per = total / CONNECTIONS;
    let interval = Duration::from_secs_f64(CONNECTIONS as f64 / rate_per_s);
    let epoch = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    let mut latencies = Vec::with_capacity(total);
    for i in 0..per {
        tokio::time::sleep_until((epoch + interval * i as u32).into()).await;
        for c in 0..CONNECTIONS {
            let bus = bus.clone();
            calls.spawn(async move {
                let sent = Instant::now();
                let request = Request::Append {
                    stream: format!("bus-{c}"),
                    payload: vec![0x5a; PAYLOAD_BYTES],
                };
                match bus.call_async(request, timeout).await {
                    Ok(Response::Appended { .. }) => Ok(sent.elapsed()),
                    other => Err(anyhow::anyhow!("append failed: {other:?}")),
                }
            });
        }
        while let Some(done) = calls.try_join_next() {
            latencies.push(done??);
        }
    }
    while let Some(done) = calls.join_next().await {
        latencies.push(done??);
    }
    Ok(latencies)
}

/// A table row of latencies: p50 and p99, then the note, the maximum and the
/// wait for a quiet store.
fn latency_row(
    what: &str,
    mut lat: Vec<Duration>,
    note: &str,
    waited: Duration,
) -> (String, String, String) {
    lat.sort();
    (
        format!("{what} ({} appends)", lat.len()),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            percentile_ms(&lat, 0.5),
            percentile_ms(&lat, 0.99)
        ),
        format!(
            "{note}; max {:.2} ms; waited {:.1} s for a quiet store",
            percentile_ms(&lat, 1.0),
            waited.as_secs_f64()
        ),
    )
}

/// Waits until the store is quiet (see the module comment); returns how long
/// that took.
async fn wait_quiet(store: u32) -> Duration {
    let started = Instant::now();
    while started.elapsed() < QUIET_WAIT_MAX {
        let before = cpu_secs(store);
        tokio::time::sleep(QUIET_SAMPLE).await;
        if cpu_secs(store) - before < QUIET_CPU_SHARE * QUIET_SAMPLE.as_secs_f64() {
            break;
        }
    }
    started.elapsed()
}

/// CPU seconds used by the children this process has waited for.
fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid target.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU µs per append of each process over a phase.
struct CpuSplit {
    pids: [u32; 3],
    start: [f64; 3],
}

impl CpuSplit {
    fn start(pids: [u32; 3]) -> Self {
        Self {
            pids,
            start: pids.map(cpu_secs),
        }
    }

    fn per_append_us(&self, appends: usize) -> [f64; 3] {
        [0, 1, 2].map(|i| (cpu_secs(self.pids[i]) - self.start[i]) * 1e6 / appends as f64)
    }
}

/// A store process, healthy, on its own root directory.
async fn start_store(root: &Path) -> Result<Proc> {
    std::fs::create_dir_all(root)?;
    let store = Proc(
        Command::new(exe("store")?)
            .env("STREAM_MANAGER_STORE_ROOT_DIR", root)
            .env("LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .spawn()
            .context("start store")?,
    );
    let bus = bus::BusClient::connect_in_runtime(&bus::store_endpoint(root), Default::default())?;
    let started = Instant::now();
    while bus
        .call_async(bus_schema::Request::Health, Duration::from_millis(200))
        .await
        .is_err()
    {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("store did not start");
        }
    }
    Ok(store)
}

/// A store and an ingest on `root`, the wire streams created; returns them
/// and the ingest's port.
async fn start_system(root: &Path) -> Result<(Proc, Proc, u16)> {
    let store = start_store(root).await?;
    let mut ingest = Command::new(exe("ingest")?)
        .env("STREAM_MANAGER_STORE_ROOT_DIR", root)
        .env("STREAM_MANAGER_SERVER_PORT", "0")
        .env("LOG_LEVEL", "WARN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("start ingest")?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(ingest.stdout.take().context("stdout")?),
        &mut line,
    )?;
    let port: u16 = line.trim().rsplit(':').next().context("port")?.parse()?;
    let ingest = Proc(ingest);
    for c in 0..CONNECTIONS {
        let mut s = wire_client::connect(port);
        wire_client::hello(&mut s);
        let status = wire_client::create(&mut s, &format!("wire-{c}"));
        if status != 0 {
            bail!("creating stream wire-{c}: status {status}");
        }
    }
    Ok((store, ingest, port))
}

async fn bench(tmp: &Path, quick: bool, latency_only: bool) -> Result<()> {
    let scale = if quick { 10 } else { 1 };
    let (store, ingest, port) = start_system(&tmp.join("latency")).await?;
    let (spid, ipid) = (store.0.id(), ingest.0.id());
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // 1. Idle connections.
    let base = rss_kib(ipid);
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(connect(port).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    rows.push((
        "ingest RSS with 100 idle connections".into(),
        format!("{} MiB", rss_kib(ipid) / 1024),
        format!("goal <= 16 MB (before connecting: {} MiB)", base / 1024),
    ));
    drop(idle);

    // 2. Latency at a steady rate.
    let waited = wait_quiet(spid).await;
    let steady = 100_000 / scale;
    let (achieved, lat) = load(port, steady, Some(STEADY_RATE_PER_S)).await?;
    rows.push(latency_row(
        "append latency at a steady 10,000/s",
        lat,
        &format!("goal p99 <= 2 ms; achieved {achieved:.0}/s"),
        waited,
    ));

    drop((store, ingest));

    // 2b. The same load straight to a fresh store over the bus: the part of
    // the latency that is the store's.
    let root = tmp.join("bus-latency");
    let store = start_store(&root).await?;
    let waited = wait_quiet(store.0.id()).await;
    let lat = bus_latency(&root, steady, STEADY_RATE_PER_S).await?;
    rows.push(latency_row(
        "same load straight to the store over the bus, no ingest",
        lat,
        "reference",
        waited,
    ));
    drop(store);

    if latency_only {
        return print_table(rows);
    }

    // 3. The store's own rate in this run, on a fresh store.
    let root = tmp.join("store");
    let store = start_store(&root).await?;
    let spid = store.0.id();
    let waited = wait_quiet(spid).await;
    let n = 500_000 / scale;
    let store_before = cpu_secs(spid);
    let children_before = children_cpu_secs();
    let out = Command::new(exe("store-bench")?)
        .args([
            "fill",
            "--root",
            root.to_str().context("utf-8 dir")?,
            "--count",
            &n.to_string(),
        ])
        .output()?;
    let store_cpu = [
        (cpu_secs(spid) - store_before) * 1e6 / n as f64,
        (children_cpu_secs() - children_before) * 1e6 / n as f64,
    ];
    let text = String::from_utf8_lossy(&out.stdout);
    let store_rate: f64 = text
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/s").and_then(|v| v.parse().ok()))
        .with_context(|| format!("store-bench fill said {text:?}"))?;
    rows.push((
        format!("store's own append rate via the bus ({n} appends)"),
        format!("{store_rate:.0}/s"),
        format!(
            "reference (store-bench fill, same run; waited {:.1} s for a quiet store); CPU per append: store {:.1} µs, client {:.1} µs",
            waited.as_secs_f64(),
            store_cpu[0],
            store_cpu[1]
        ),
    ));

    drop(store);

    // 4. Through the wire protocol, on a fresh store and ingest.
    let (store, ingest, port) = start_system(&tmp.join("wire")).await?;
    let (spid, ipid) = (store.0.id(), ingest.0.id());
    let waited = wait_quiet(spid).await;
    let cpu = CpuSplit::start([spid, ipid, std::process::id()]);
    let (rate, _) = load(port, n, None).await?;
    let [s_us, i_us, g_us] = cpu.per_append_us(n);
    rows.push((
        format!("appends via ingest, {CONNECTIONS} connections x {IN_FLIGHT} in flight ({n} appends)"),
        format!("{rate:.0}/s"),
        format!(
            "{:.2} x the store's own rate (goal >= 60,000/s and >= 0.7 x); waited {:.1} s for a quiet store; CPU per append: store {s_us:.1} µs, ingest {i_us:.1} µs, load generator {g_us:.1} µs",
            rate / store_rate,
            waited.as_secs_f64()
        ),
    ));
    let hwm = peak_rss_kib(ipid);
    rows.push((
        "ingest peak RSS under load".into(),
        format!("{} MiB", hwm / 1024),
        "goal <= 48 MB".into(),
    ));

    print_table(rows)
}

fn print_table(rows: Vec<(String, String, String)>) -> Result<()> {
    println!("| figure | measured | note |");
    println!("|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
    Ok(())
}
