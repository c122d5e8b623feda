//! `ingest-bench run [--quick]`: the ingest benchmark of README. Starts a real
//! store and ingest (the release binaries next to this one), then:
//! 1. latency at a steady 10,000 appends/s (p50, p99, max), on a quiet store;
//! 2. the store's own append rate over the bus (`store-bench fill`, same run);
//! 3. 1 KiB appends through the SDK wire protocol: 8 connections × 64
//!    requests in flight;
//! 4. ingest resident memory with 100 idle connections and under load.
//!
//! The load generator speaks the wire protocol itself (handshake, frames,
//! CBOR), pipelined like the SDKs do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ciborium::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};

const CONNECTIONS: usize = 8;
const IN_FLIGHT: usize = 64;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("run") {
        bail!("usage: ingest-bench run [--quick]");
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tmp = std::env::temp_dir().join(format!("ingest-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let r = rt.block_on(bench(&tmp, quick));
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

fn exe(name: &str) -> Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join(name))
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let f = |n: &str| {
        s.lines()
            .find(|l| l.starts_with(n))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (f("VmRSS:"), f("VmHWM:"))
}

fn cbor(v: Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail.
    ciborium::into_writer(&v, &mut out).expect("CBOR into a Vec");
    out
}

fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(op);
    out.extend_from_slice(payload);
    out
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<(u8, Value)> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h).await?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let mut p = vec![0u8; len - 1];
    r.read_exact(&mut p).await?;
    Ok((h[4], ciborium::from_reader(&p[..])?))
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

async fn handshake(port: u16) -> Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    let hello = cbor(Value::Map(vec![
        ("requestId".into(), "hello".into()),
        ("protocolVersion".into(), "1.1.0".into()),
        ("sdkVersion".into(), "ingest-bench".into()),
    ]));
    let mut out = vec![1u8];
    out.extend(frame(1, &hello));
    s.write_all(&out).await?;
    let mut v = [0u8; 1];
    s.read_exact(&mut v).await?;
    let (op, r) = read_frame(&mut s).await?;
    if op != 6
        || get(&r, "status")
            .and_then(Value::as_integer)
            .map(i128::from)
            != Some(0)
    {
        bail!("connect refused: {r:?}");
    }
    Ok(s)
}

async fn create(port: u16, name: &str) -> Result<()> {
    let mut s = handshake(port).await?;
    let req = cbor(Value::Map(vec![
        ("requestId".into(), "create".into()),
        (
            "definition".into(),
            Value::Map(vec![
                ("name".into(), name.into()),
                ("maxSize".into(), Value::Integer((4i64 << 30).into())),
                ("strategyOnFull".into(), 0.into()),
            ]),
        ),
    ]));
    s.write_all(&frame(2, &req)).await?;
    let (_, r) = read_frame(&mut s).await?;
    if get(&r, "status")
        .and_then(Value::as_integer)
        .map(i128::from)
        != Some(0)
    {
        bail!("create failed: {r:?}");
    }
    Ok(())
}

/// Appends `count` messages on one connection with at most `IN_FLIGHT`
/// outstanding; when `interval` is set, sends one every `interval`. Returns
/// the latency of every append.
async fn append_conn(
    port: u16,
    stream: String,
    count: usize,
    interval: Option<Duration>,
) -> Result<Vec<Duration>> {
    let s = handshake(port).await?;
    let (mut rd, mut wr) = s.into_split();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let reader = {
        let (slots, sent) = (slots.clone(), sent.clone());
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(count);
            for _ in 0..count {
                let (op, r) = read_frame(&mut rd).await?;
                let status = get(&r, "status")
                    .and_then(Value::as_integer)
                    .map(i128::from);
                if op != 9 || status != Some(0) {
                    bail!("append failed: {r:?}");
                }
                let id: u64 = get(&r, "requestId")
                    .and_then(Value::as_text)
                    .context("id")?
                    .parse()?;
                if let Some(t) = sent.lock().await.remove(&id) {
                    lat.push(t.elapsed());
                }
                slots.add_permits(1);
            }
            Ok(lat)
        })
    };
    let payload = Value::Bytes(vec![0x5a; 1024]);
    let start = Instant::now();
    for i in 0..count as u64 {
        if let Some(iv) = interval {
            tokio::time::sleep_until((start + iv * i as u32).into()).await;
        }
        slots.acquire().await?.forget();
        let req = cbor(Value::Map(vec![
            ("requestId".into(), i.to_string().into()),
            ("name".into(), stream.as_str().into()),
            ("payload".into(), payload.clone()),
        ]));
        sent.lock().await.insert(i, Instant::now());
        wr.write_all(&frame(4, &req)).await?;
    }
    reader.await?
}

async fn load(port: u16, total: usize, rate_per_s: Option<f64>) -> Result<(f64, Vec<Duration>)> {
    let per = total / CONNECTIONS;
    let interval = rate_per_s.map(|r| Duration::from_secs_f64(CONNECTIONS as f64 / r));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| tokio::spawn(append_conn(port, format!("wire-{c}"), per, interval)))
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok((
        (per * CONNECTIONS) as f64 / start.elapsed().as_secs_f64(),
        lat,
    ))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

async fn bench(tmp: &Path, quick: bool) -> Result<()> {
    let scale = if quick { 10 } else { 1 };
    let store = Proc(
        Command::new(exe("store")?)
            .env("STREAM_MANAGER_STORE_ROOT_DIR", tmp)
            .env("LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .spawn()
            .context("start store")?,
    );
    let _ = &store;
    let bus = bus::BusClient::connect(&bus::store_endpoint(tmp), Default::default())?;
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
    let mut ingest = Command::new(exe("ingest")?)
        .env("STREAM_MANAGER_STORE_ROOT_DIR", tmp)
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
    let ipid = ingest.0.id();
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // 4a. Idle connections.
    let (base, _) = rss_kib(ipid);
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(handshake(port).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss, _) = rss_kib(ipid);
    rows.push((
        "ingest RSS with 100 idle connections".into(),
        format!("{} MiB", rss / 1024),
        format!("goal <= 16 MB (before connecting: {} MiB)", base / 1024),
    ));
    drop(idle);

    // 1. Latency at a steady 10,000/s, first, on a quiet store (a burst
    // before it would leave fjall compacting during the measurement).
    for c in 0..CONNECTIONS {
        create(port, &format!("wire-{c}")).await?;
    }
    let steady = 100_000 / scale;
    let (achieved, mut lat) = load(port, steady, Some(10_000.0)).await?;
    lat.sort();
    rows.push((
        format!(
            "append latency at a steady 10,000/s ({} appends)",
            lat.len()
        ),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        ),
        format!(
            "goal p99 <= 2 ms; max {:.2} ms; achieved {achieved:.0}/s",
            pct(&lat, 1.0)
        ),
    ));

    // 2. The store's own rate in this run.
    let n = 500_000 / scale;
    let out = Command::new(exe("store-bench")?)
        .args([
            "fill",
            "--root",
            tmp.to_str().context("utf-8 dir")?,
            "--count",
            &n.to_string(),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let store_rate: f64 = text
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/s").and_then(|v| v.parse().ok()))
        .with_context(|| format!("store-bench fill said {text:?}"))?;
    rows.push((
        format!("store's own append rate via the bus ({n} appends)"),
        format!("{store_rate:.0}/s"),
        "reference (store-bench fill, same run)".into(),
    ));

    // 3. Through the wire protocol.
    let (rate, _) = load(port, n, None).await?;
    let (_, hwm) = rss_kib(ipid);
    rows.push((
        format!("appends via ingest, {CONNECTIONS} connections x {IN_FLIGHT} in flight"),
        format!("{rate:.0}/s"),
        format!(
            "{:.2} x the store's own rate (goal >= 60,000/s and >= 0.7 x)",
            rate / store_rate
        ),
    ));

    rows.push((
        "ingest peak RSS under load".into(),
        format!("{} MiB", hwm / 1024),
        "goal <= 48 MB".into(),
    ));

    println!("| figure | measured | note |");
    println!("|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
    Ok(())
}
