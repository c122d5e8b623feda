//! `store-bench`: load client and benchmark of the store process.
//!
//! - `store-bench run [--quick]`: the store benchmark of README: raw fjall
//!   inserts in this process, then a real store process driven over the bus
//!   (appends, flushOnWrite appends with 64 appenders, catch-up reads, memory
//!   with a 2 GB backlog and reopen time). Prints a table. Use a release build.
//! - `store-bench append --root DIR --stream S --count N --concurrency C
//!   [--payload-bytes B] [--first-id I]`: appends N messages (ids from I) and prints `ack <id> <seq>` per
//!   acknowledged append (payload = id as 8 bytes, then filler); stops a
//!   worker at its first error (`err <id> <message>`). Used by crash tests.
//! - `store-bench ingest [--dir DIR] [--streams S] [--chunks N] [--chunk-kib
//!   K] [--random]`: the applier's part alone: N chunks of K KiB of 1 KiB
//!   messages, round robin over S chunk keyspaces, each written as the
//!   applier writes it (`wal::ingest_chunk`), one after the other on one
//!   thread; prints chunks/s, MiB/s, the 1 KiB appends/s that is, and the
//!   wall and CPU time per chunk. Defaults: a temporary directory under
//!   /tmp, 10 streams, 1,000 chunks of 819 KiB (one 8 MiB log file shared by
//!   10 streams), payloads of one repeated byte as `peer-bench` sends
//!   (`--random`: incompressible ones).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bus::{BusClient, BusClientConfig};
use bus_schema::{Request, Response, StrategyOnFull, StreamDefinition};
use store::load::payload_for;

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run_bench(args.iter().any(|a| a == "--quick")),
        Some("append") => append_cmd(&args[1..]),
        Some("ingest") => ingest_cmd(&args[1..]),
        Some("fill") => {
            let root = PathBuf::from(flag(&args, "--root").context("--root is required")?);
            let count: u64 = flag(&args, "--count").context("--count is required")?.parse()?;
            let c = BusClient::connect(&bus::store_endpoint(&root), BusClientConfig::default())?;
            let streams: Vec<String> = (0..10).map(|i| format!("fill-{i}")).collect();
            for s in &streams {
                create(&c, s, false, 1 << 30)?;
            }
            let rate = append_load(&root, &streams, count, 256)?;
            println!("{count} appends at {rate:.0}/s");
            Ok(())
        }
        _ => bail!("usage: store-bench run [--quick] | store-bench append --root DIR --stream S --count N --concurrency C [--payload-bytes B] [--first-id I] | store-bench ingest [--dir DIR] [--streams S] [--chunks N] [--chunk-kib K] [--random]"),
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn append_cmd(args: &[String]) -> Result<()> {
    let root = PathBuf::from(flag(args, "--root").context("--root is required")?);
    let stream = flag(args, "--stream")
        .context("--stream is required")?
        .to_string();
    let count: u64 = flag(args, "--count")
        .context("--count is required")?
        .parse()?;
    let concurrency: u64 = flag(args, "--concurrency").unwrap_or("1").parse()?;
    let payload_bytes: usize = flag(args, "--payload-bytes").unwrap_or("64").parse()?;
    let first_id: u64 = flag(args, "--first-id").unwrap_or("0").parse()?;
    let client = BusClient::connect(&bus::store_endpoint(&root), BusClientConfig::default())?;
    let next = Arc::new(AtomicU64::new(0));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, out, stream) =
                (client.clone(), next.clone(), out.clone(), stream.clone());
            std::thread::spawn(move || loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= count {
                    return;
                }
                let id = first_id + n;
                let payload = payload_for(id, payload_bytes);
                let r = client.call(
                    Request::Append {
                        stream: stream.clone(),
                        payload,
                    },
                    Duration::from_secs(2),
                );
                let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(Response::Appended {
                        sequence_number, ..
                    }) => {
                        let _ = writeln!(o, "ack {id} {sequence_number}");
                        let _ = o.flush();
                    }
                    other => {
                        let _ = writeln!(o, "err {id} {other:?}");
                        let _ = o.flush();
                        return;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

struct Store {
    child: Child,
    root: PathBuf,
}

impl Store {
    fn start(root: &Path) -> Result<(Store, Duration)> {
        let exe = std::env::current_exe()?
            .parent()
            .context("no exe dir")?
            .join("store");
        let started = Instant::now();
        let child = Command::new(&exe)
            .env("STREAM_MANAGER_STORE_ROOT_DIR", root)
            .env("LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let store = Store {
            child,
            root: root.to_path_buf(),
        };
        let c = store.client(16)?;
        loop {
            if let Ok(Response::Health(_)) = c.call(Request::Health, Duration::from_millis(100)) {
                return Ok((store, started.elapsed()));
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("store did not start");
            }
        }
    }
    fn client(&self, in_flight: usize) -> Result<BusClient> {
        Ok(BusClient::connect(
            &bus::store_endpoint(&self.root),
            BusClientConfig {
                max_in_flight: in_flight,
                ..Default::default()
            },
        )?)
    }
    fn rss_kib(&self) -> (u64, u64) {
        let (rss, hwm, _, _) = self.memory_kib();
        (rss, hwm)
    }
    /// (VmRSS, VmHWM, RssAnon, RssFile) in KiB.
    fn memory_kib(&self) -> (u64, u64, u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            field("VmRSS:"),
            field("VmHWM:"),
            field("RssAnon:"),
            field("RssFile:"),
        )
    }
    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("store exited with {status}");
        }
        Ok(())
    }
}

/// CPU seconds used so far by each thread of `pid`, summed by thread name.
fn cpu_by_thread(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is 3rd, utime 14th, stime 15th.
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let cpu = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(comm.trim().to_string()).or_insert(0.0) += cpu / ticks;
    }
    out
}

fn cpu_delta(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> String {
    after
        .iter()
        .map(|(k, v)| format!("{k} {:.1}s", v - before.get(k).copied().unwrap_or(0.0)))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Drop for Store {
    fn drop(&mut self) {
        // A benchmark that fails part-way must not leave its store running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn create(c: &BusClient, name: &str, flush: bool, max_size: i64) -> Result<()> {
    let mut d = StreamDefinition::new(name, StrategyOnFull::RejectNewData);
    d.flush_on_write = Some(flush);
    d.max_size_bytes = Some(max_size);
    match c.call(Request::CreateStream { definition: d }, TIMEOUT)? {
        Response::Created => Ok(()),
        other => bail!("create failed: {other:?}"),
    }
}

/// Appends `total` 1 KiB messages spread over `streams` with `appenders`
/// concurrent tasks, over a bus client driven by the load's own runtime (as
/// the ingest drives its client); returns appends per second.
fn append_load(root: &Path, streams: &[String], total: u64, appenders: usize) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    rt.block_on(async {
        let c =
            BusClient::connect_in_runtime(&bus::store_endpoint(root), BusClientConfig::default())?;
        let mut tasks = Vec::new();
        for t in 0..appenders {
            let (c, next, streams) = (c.clone(), next.clone(), streams.to_vec());
            tasks.push(tokio::spawn(async move {
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if id >= total {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let stream = streams[(id as usize + t) % streams.len()].clone();
                    match c
                        .call_async(
                            Request::Append {
                                stream,
                                payload: payload_for(id, 1024),
                            },
                            TIMEOUT,
                        )
                        .await?
                    {
                        Response::Appended { .. } => {}
                        other => bail!("append failed: {other:?}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Reads every message of `streams` back, 1,000 per request, one reader per
/// stream (as exporters catching up do); returns messages per second.
fn read_load(c: &BusClient, streams: &[String]) -> Result<(f64, u64)> {
    let started = Instant::now();
    let readers: Vec<_> = streams
        .iter()
        .map(|s| {
            let (c, s) = (c.clone(), s.clone());
            std::thread::spawn(move || -> Result<u64> {
                let mut total = 0u64;
                let mut start = 0i64;
                loop {
                    let r = c.call(
                        Request::Read {
                            stream: s.clone(),
                            start_sequence_number: Some(start),
                            min_count: Some(1),
                            max_count: Some(1000),
                            wait_ms: None,
                            max_bytes: None,
                            export_identifier: None,
                        },
                        TIMEOUT,
                    );
                    match r {
                        Ok(Response::Messages(m)) => {
                            total += m.len() as u64;
                            start = m.last().map_or(start, |m| m.sequence_number + 1);
                        }
                        Err(bus::BusError::Remote(e))
                            if e.kind == bus_schema::ErrorKind::NotEnoughMessages =>
                        {
                            return Ok(total)
                        }
                        other => bail!("read failed: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for r in readers {
        total += r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), total))
}

/// Inserts `n` 1 KiB values one by one into a fresh database with the
/// store's data keyspace options; returns the rate and the CPU its threads
/// used meanwhile (measured before the database and its workers go away).
fn raw_fjall_inserts(dir: &Path, n: u64) -> Result<(f64, String)> {
    let before = cpu_by_thread(std::process::id());
    let db = fjall::Database::builder(dir)
        .cache_size(store::engine::CACHE_BYTES)
        .max_journaling_size(store::engine::JOURNAL_BYTES_MAX)
        .worker_threads(store::engine::WORKER_THREADS)
        .open()?;
    let ks = db.keyspace("data", || {
        fjall::KeyspaceCreateOptions::default()
            .max_memtable_size(store::engine::DATA_MEMTABLE_BYTES)
    })?;
    let started = Instant::now();
    for i in 0..n {
        let key = store::keys::data_key((i % 10) + 1, i);
        ks.insert(key.to_vec(), payload_for(i, 1024))?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    Ok((rate, cpu_delta(&before, &cpu_by_thread(std::process::id()))))
}

fn ingest_cmd(args: &[String]) -> Result<()> {
    let num = |name: &str, default: u64| -> Result<u64> {
        flag(args, name).map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("{name} takes a number"))
        })
    };
    let streams = num("--streams", 10)?;
    let chunks = num("--chunks", 1000)?;
    let chunk_kib = num("--chunk-kib", 819)?;
    // What the store itself allows: File streams, and the value fjall takes.
    let max_streams = store::engine::FILE_STREAMS_MAX as u64;
    if !(1..=max_streams).contains(&streams) {
        bail!("--streams takes 1 to {max_streams}");
    }
    if !(2..=INGEST_CHUNK_KIB_MAX).contains(&chunk_kib) {
        bail!("--chunk-kib takes 2 to {INGEST_CHUNK_KIB_MAX}");
    }
    let chunk_bytes = chunk_kib * 1024;
    let random = args.iter().any(|a| a == "--random");
    let own_dir = flag(args, "--dir").is_none();
    let dir = flag(args, "--dir").map_or_else(
        || std::env::temp_dir().join(format!("store-bench-ingest-{}", std::process::id())),
        PathBuf::from,
    );
    let measured = ingest_into(&dir, streams, chunks, chunk_bytes, random);
    // The directory goes even when the run failed part-way.
    if own_dir {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    measured
}

/// Chunks in `store-bench ingest` hold at most this many KiB.
const INGEST_CHUNK_KIB_MAX: u64 = 64 * 1024;

fn ingest_into(
    dir: &Path,
    streams: u64,
    chunks: u64,
    chunk_bytes: u64,
    random: bool,
) -> Result<()> {
    let db = store::engine::database_builder(dir).open()?;
    let keyspaces = (0..streams)
        .map(|i| db.keyspace(&format!("bench-{i}"), store::engine::data_keyspace_options))
        .collect::<fjall::Result<Vec<_>>>()?;
    // Messages as a chunk holds them: [u64 ms][u32 length][1 KiB payload].
    let per_chunk = (chunk_bytes / (12 + 1024)).max(1);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut value = Vec::with_capacity((per_chunk * (12 + 1024)) as usize);
    let mut chunk = |value: &mut Vec<u8>| {
        value.clear();
        for _ in 0..per_chunk {
            value.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
            value.extend_from_slice(&1024u32.to_le_bytes());
            if random {
                for _ in 0..128 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    value.extend_from_slice(&seed.to_le_bytes());
                }
            } else {
                value.extend(std::iter::repeat_n(0x5a, 1024));
            }
        }
        fjall::Slice::from(&value[..])
    };
    let before = cpu_by_thread(std::process::id());
    let mut busy = Duration::ZERO;
    let started = Instant::now();
    for i in 0..chunks {
        let v = chunk(&mut value);
        let first = (i / streams) * per_chunk;
        let key = store::keys::chunk_key(first, first + per_chunk - 1);
        let t = Instant::now();
        store::wal::ingest_chunk(&keyspaces[(i % streams) as usize], &key, &v)
            .map_err(|e| anyhow::anyhow!(e))?;
        busy += t.elapsed();
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_delta(&before, &cpu_by_thread(std::process::id()));
    let mib = (chunks * per_chunk * 1024) as f64 / (1 << 20) as f64;
    println!(
        "{chunks} chunks of {per_chunk} messages of 1 KiB ({}), {streams} streams, on {}",
        if random {
            "random"
        } else {
            "one repeated byte"
        },
        dir.display()
    );
    println!(
        "{:.0} chunks/s, {:.1} MiB/s of payload = {:.0} appends/s of 1 KiB; {:.2} ms per chunk ingesting",
        chunks as f64 / wall,
        mib / wall,
        (chunks * per_chunk) as f64 / wall,
        busy.as_secs_f64() * 1e3 / chunks as f64
    );
    println!("CPU by thread: {cpu}");
    Ok(())
}

fn run_bench(quick: bool) -> Result<()> {
    let scale = if quick { 10 } else { 1 };
    let tmp = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = bench_in(&tmp, scale);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn bench_in(tmp: &Path, scale: u64) -> Result<()> {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    // The same volume (1 GiB) for raw fjall and the bus, so that both pay
    // for the flushes and compactions that volume causes.
    let n = 1_000_000 / scale;
    let (raw, raw_cpu) = raw_fjall_inserts(&tmp.join("raw"), n)?;
    rows.push((
        format!("raw fjall inserts, 1 KiB, {n} in this process"),
        format!("{raw:.0}/s"),
        format!("reference; CPU during the inserts [{raw_cpu}]"),
    ));

    let (store, _) = Store::start(&tmp.join("a"))?;
    let c = store.client(1024)?;
    let streams: Vec<String> = (0..10).map(|i| format!("bench-{i}")).collect();
    for s in &streams {
        create(&c, s, false, 4 << 30)?;
    }
    let (store_cpu, client_cpu) = (
        cpu_by_thread(store.child.id()),
        cpu_by_thread(std::process::id()),
    );
    let rate = append_load(&store.root, &streams, n, 256)?;
    let cpu_note = format!(
        "CPU for these {n} appends: store [{}]; client [{}]",
        cpu_delta(&store_cpu, &cpu_by_thread(store.child.id())),
        cpu_delta(&client_cpu, &cpu_by_thread(std::process::id()))
    );
    rows.push((
        "appends via bus, 10 streams, no flushOnWrite".into(),
        format!("{rate:.0}/s"),
        format!(
            "{:.2} x raw fjall (goal >= 80,000/s and >= 0.8 x)",
            rate / raw
        ),
    ));
    rows.push(("CPU split of that run".into(), String::new(), cpu_note));
    let flush: Vec<String> = (0..10).map(|i| format!("flush-{i}")).collect();
    for s in &flush {
        create(&c, s, true, 4 << 30)?;
    }
    let rate = append_load(&store.root, &flush, n / 3, 64)?;
    rows.push((
        "appends via bus, flushOnWrite, 64 appenders".into(),
        format!("{rate:.0}/s"),
        "goal >= 20,000/s".into(),
    ));
    let (rate, total) = read_load(&c, &streams)?;
    rows.push((
        format!(
            "catch-up reads, 1,000 per request, 10 streams read in parallel ({total} messages)"
        ),
        format!("{rate:.0} messages/s"),
        "goal >= 300,000/s".into(),
    ));
    store.stop()?;

    // Memory while holding a 2 GB backlog, then reopen time.
    let backlog_bytes: u64 = (2u64 << 30) / scale;
    let (store, _) = Store::start(&tmp.join("b"))?;
    let c = store.client(1024)?;
    for s in &streams {
        create(&c, s, false, 1 << 30)?;
    }
    let count = backlog_bytes / 1024;
    let rate = append_load(&store.root, &streams, count, 256)?;
    let (_, peak, _, _) = store.memory_kib();
    // "Holding": once the write burst is over (flushes done, free memory
    // returned, which the store does by itself within a few seconds).
    std::thread::sleep(Duration::from_secs(5));
    let (rss, hwm, anon, file) = store.memory_kib();
    rows.push((
        format!("store RSS holding {} MiB backlog", backlog_bytes >> 20),
        format!(
            "{} MiB (anon {} MiB, file {} MiB); peak while writing {} MiB",
            rss / 1024,
            anon / 1024,
            file / 1024,
            hwm.max(peak) / 1024
        ),
        format!("goal <= 64 MB; backlog written at {rate:.0}/s"),
    ));
    store.stop()?;
    let (store, ready) = Store::start(&tmp.join("b"))?;
    let (rss, _) = store.rss_kib();
    rows.push((
        "reopen of that store (spawn to first answer)".into(),
        format!("{} ms", ready.as_millis()),
        format!("goal <= 2 s; RSS after reopen {} MiB", rss / 1024),
    ));
    let c = store.client(16)?;
    let Response::DescribedAll(infos) = c.call(Request::DescribeAll, TIMEOUT)? else {
        bail!("describe failed")
    };
    let stored: i64 = infos
        .iter()
        .map(|i| i.storage.newest_sequence_number + 1)
        .sum();
    if stored != count as i64 {
        bail!("backlog lost on reopen: {stored} of {count} messages");
    }
    store.stop()?;

    println!("| figure | measured | note |");
    println!("|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
    Ok(())
}
