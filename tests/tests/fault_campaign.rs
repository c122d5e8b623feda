//! The fault campaign: the whole system as `stream-manager` runs it, under a
//! steady append load through the SDK endpoint, for `CAMPAIGN` (3 minutes),
//! while the store, the ingest and the Kinesis exporter are killed with
//! SIGKILL at random and the endpoint (moto behind the fault proxy) goes down,
//! throttles, fails records, answers slowly and drops connections after the
//! records were stored. Afterwards every acknowledged append is at the
//! destination, each export's records arrive in append order (first copies;
//! a record that Kinesis failed individually in a `PutRecords` is sent again
//! after the rest of its call, as with AWS's stream manager, so those are
//! checked to arrive, not where), nothing arrives that was never appended,
//! nothing is in the loss ledger,
//! and the duplicates are at most one batch per event that can cause one (a
//! kill, an outage, a connection dropped after forwarding).
//!
//! The random schedule comes from a seed printed at the start; set
//! `FAULT_CAMPAIGN_SEED` to replay one.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_schema::{ExportCommon, KinesisConfig, StrategyOnFull, StreamDefinition};
use rand::{Rng, SeedableRng};
use serde_json::Value as Json;
use stream_manager_tests::aws::{aws_env, KinesisClient, Moto};
use stream_manager_tests::fault_proxy::{Fault, FaultProxy};
use stream_manager_tests::{bin, wire_client};

/// How long the faults go on.
const CAMPAIGN: Duration = Duration::from_secs(180);
/// Appends per second per stream, from one client per stream.
const RATE_PER_STREAM: u64 = 40;
/// The export's batch size (records per `PutRecords`); also the duplicate
/// bound per fault event.
const BATCH: usize = 100;
/// What the campaign kills.
const TARGETS: [&str; 3] = ["store", "ingest", "export-kinesis"];
/// The streams, each with one Kinesis export (to a Kinesis stream of the
/// same name).
const STREAMS: [&str; 2] = ["campaign-a", "campaign-b"];

fn payload(stream: usize, i: usize) -> Vec<u8> {
    let mut p = format!("{stream}:{i:08}:").into_bytes();
    p.extend((0..200 + i % 300).map(|j| ((i * 7 + j) % 251) as u8));
    p
}

fn index_of(record: &[u8]) -> usize {
    std::str::from_utf8(&record[2..10])
        .unwrap()
        .parse()
        .unwrap()
}

/// The pid of `stream-manager`'s child named `name`, from /proc.
fn child_pid(parent: u32, name: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 2..].split(' ').nth(1);
        if comm == name && ppid == Some(&parent.to_string()) {
            return Some(pid);
        }
    }
    None
}

/// One append on a connection; `Ok(Some(seq))` when acknowledged,
/// `Ok(None)` when answered with an error, `Err` when the connection broke.
fn append(s: &mut TcpStream, stream: &str, payload: &[u8]) -> std::io::Result<Option<i64>> {
    let req = ciborium::Value::Map(vec![
        ("requestId".into(), "a".into()),
        ("name".into(), stream.into()),
        ("payload".into(), ciborium::Value::Bytes(payload.to_vec())),
    ]);
    s.write_all(&wire_client::frame(4, &req))?;
    let (_, r) = wire_client::read_frame(s)?;
    if wire_client::status(&r) != 0 {
        return Ok(None);
    }
    Ok(wire_client::field(&r, "sequenceNumber")
        .and_then(|v| v.as_integer())
        .map(|i| i128::from(i) as i64))
}

fn connect(root: &std::path::Path) -> Option<TcpStream> {
    let port: u16 = std::fs::read_to_string(root.join("ingest.port"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    // The handshake, without panicking on a connection that breaks.
    let hello = ciborium::Value::Map(vec![
        ("requestId".into(), "c".into()),
        ("protocolVersion".into(), "1.1.0".into()),
        ("sdkVersion".into(), "campaign".into()),
    ]);
    let mut out = vec![1u8];
    out.extend(wire_client::frame(1, &hello));
    s.write_all(&out).ok()?;
    let mut v = [0u8; 1];
    s.read_exact(&mut v).ok()?;
    let (_, r) = wire_client::read_frame(&mut s).ok()?;
    (wire_client::status(&r) == 0).then_some(s)
}

/// What one appender saw: every payload index it appended, and which of
/// them were acknowledged.
#[derive(Default)]
struct Appended {
    attempted: usize,
    acknowledged: Vec<usize>,
    errors: usize,
    broken: usize,
}

fn appender(
    root: std::path::PathBuf,
    stream_index: usize,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Appended>>,
) {
    let stream = STREAMS[stream_index];
    let period = Duration::from_micros(1_000_000 / RATE_PER_STREAM);
    let mut conn: Option<TcpStream> = None;
    let mut next = Instant::now();
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        } else {
            next = Instant::now();
        }
        if conn.is_none() {
            conn = connect(&root);
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let result = append(c, stream, &payload(stream_index, i));
        let mut o = out.lock().unwrap();
        o.attempted = i + 1;
        match result {
            Ok(Some(_)) => o.acknowledged.push(i),
            Ok(None) => o.errors += 1,
            Err(_) => {
                o.broken += 1;
                conn = None;
            }
        }
        i += 1;
    }
}

/// The events that can make an export send a batch again.
#[derive(Default, Debug)]
struct Events {
    kills: HashMap<&'static str, usize>,
    outages: usize,
    dropped_after_forward: usize,
    other_faults: usize,
}

impl Events {
    fn resend_causes(&self) -> usize {
        self.kills.values().sum::<usize>() + self.outages + self.dropped_after_forward
    }
}

fn status(root: &std::path::Path) -> Option<Json> {
    let out = Command::new(bin("stream-manager"))
        .args(["status", "--json"])
        .env("STREAM_MANAGER_STORE_ROOT_DIR", root)
        .output()
        .ok()?;
    matches!(out.status.code(), Some(0 | 1))
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

struct Supervised(Child);

impl Drop for Supervised {
    fn drop(&mut self) {
        // SIGTERM so the supervisor stops its children too.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kills_outages_and_throttling_lose_nothing_and_keep_order() {
    let seed: u64 = std::env::var("FAULT_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("FAULT_CAMPAIGN_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let kinesis = KinesisClient::new(&moto.url());
    for s in STREAMS {
        kinesis.create_stream(s, 1);
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let sm = Command::new(bin("stream-manager"))
        .env("STREAM_MANAGER_STORE_ROOT_DIR", &root)
        .env("STREAM_MANAGER_SERVER_PORT", "0")
        .env("STREAM_MANAGER_METRICS_PORT", "off")
        .env("LOG_LEVEL", "WARN")
        .envs(aws_env(&proxy.url()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let sm = Supervised(sm);
    let sm_pid = sm.0.id();

    // Streams and exports, created through the store's bus once it answers.
    let bus = bus::BusClient::connect(&bus::store_endpoint(&root), Default::default()).unwrap();
    let start = Instant::now();
    for s in STREAMS {
        let mut d = StreamDefinition::new(s, StrategyOnFull::RejectNewData);
        d.exports.kinesis = vec![KinesisConfig {
            common: ExportCommon {
                identifier: format!("to-{s}"),
                batch_size: Some(BATCH as i64),
                ..Default::default()
            },
            kinesis_stream_name: s.into(),
        }];
        loop {
            let r = bus.call(
                bus_schema::Request::CreateStream {
                    definition: d.clone(),
                },
                Duration::from_secs(2),
            );
            if matches!(r, Ok(bus_schema::Response::Created)) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "stream-manager did not come up: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let appended: Vec<Arc<Mutex<Appended>>> = STREAMS.iter().map(|_| Arc::default()).collect();
    let appenders: Vec<_> = (0..STREAMS.len())
        .map(|k| {
            let (root, stop, out) = (root.clone(), stop.clone(), appended[k].clone());
            std::thread::spawn(move || appender(root, k, stop, out))
        })
        .collect();

    // The campaign: a kill every 4-10 s; an endpoint fault every 3-8 s.
    let mut events = Events::default();
    let begin = Instant::now();
    let mut next_kill = begin + Duration::from_secs(rng.random_range(4..10));
    let mut next_fault = begin + Duration::from_secs(rng.random_range(3..8));
    let mut back_up: Option<Instant> = None;
    while begin.elapsed() < CAMPAIGN {
        let now = Instant::now();
        if now >= next_kill {
            let target = TARGETS[rng.random_range(0..TARGETS.len())];
            if let Some(pid) = child_pid(sm_pid, target) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                *events.kills.entry(target).or_default() += 1;
                println!(
                    "{:>5.1} s: kill -9 {target} ({pid})",
                    begin.elapsed().as_secs_f64()
                );
            }
            next_kill = now + Duration::from_secs(rng.random_range(4..10));
        }
        if back_up.is_some_and(|t| now >= t) {
            proxy.come_back();
            back_up = None;
            println!("{:>5.1} s: endpoint back", begin.elapsed().as_secs_f64());
        }
        if now >= next_fault && back_up.is_none() {
            match rng.random_range(0..5) {
                0 => {
                    let secs = rng.random_range(2..20);
                    proxy.go_down();
                    back_up = Some(now + Duration::from_secs(secs));
                    events.outages += 1;
                    println!(
                        "{:>5.1} s: endpoint down for {secs} s",
                        begin.elapsed().as_secs_f64()
                    );
                }
                1 => {
                    proxy.inject([Fault::DropAfterForward]);
                    events.dropped_after_forward += 1;
                }
                2 => {
                    let n = rng.random_range(1..6);
                    proxy.inject(std::iter::repeat_n(Fault::Throttle, n));
                    events.other_faults += n;
                }
                3 => {
                    proxy.inject([Fault::Partial { every: 3 }, Fault::Status500]);
                    events.other_faults += 2;
                }
                _ => {
                    proxy.inject([Fault::Delay(Duration::from_secs(3))]);
                    events.other_faults += 1;
                }
            }
            next_fault = now + Duration::from_secs(rng.random_range(3..8));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if back_up.is_some() {
        proxy.come_back();
    }
    stop.store(true, Ordering::SeqCst);
    for a in appenders {
        a.join().unwrap();
    }
    // A DropAfterForward still queued never happened.
    let unused = proxy.faults_left();
    println!("campaign over: {events:?}, {unused} faults unused");

    // Everything comes back and the exports catch up.
    let drain_start = Instant::now();
    let drained = loop {
        let s = status(&root);
        let done = s.as_ref().is_some_and(|s| {
            s["healthy"] == true
                && s["exports"].as_array().is_some_and(|e| {
                    e.len() == STREAMS.len() && e.iter().all(|x| x["lag_messages"] == 0)
                })
        });
        if done {
            break s.unwrap();
        }
        assert!(
            drain_start.elapsed() < Duration::from_secs(240),
            "the exports did not catch up within 4 minutes of the campaign: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("drained in {:.1} s", drain_start.elapsed().as_secs_f64());
    assert_eq!(
        drained["losses"].as_array().map(Vec::len),
        Some(0),
        "nothing may leave a RejectNewData stream unexported: {:#}",
        drained["losses"]
    );

    let rejected: HashSet<Vec<u8>> = proxy.rejected_records().into_iter().collect();
    println!(
        "{} records were failed individually by Kinesis (retried later)",
        rejected.len()
    );
    let mut total_duplicates = 0;
    for (k, s) in STREAMS.iter().enumerate() {
        let a = appended[k].lock().unwrap();
        let got = kinesis.read_all(s);
        let mut seen = HashSet::new();
        let mut newest_first_copy: Option<usize> = None;
        let mut duplicates = 0;
        for r in &got {
            assert_eq!(
                &r[..2],
                format!("{k}:").as_bytes(),
                "a record of another stream"
            );
            let i = index_of(r);
            assert!(i < a.attempted, "record {i} of {s} was never appended");
            assert_eq!(r, &payload(k, i), "record {i} of {s} changed on the way");
            if !seen.insert(i) {
                duplicates += 1;
                continue;
            }
            if rejected.contains(r) {
                continue;
            }
            assert!(
                newest_first_copy.is_none_or(|n| i > n),
                "{s}: record {i} arrived after record {newest_first_copy:?} (order broken)"
            );
            newest_first_copy = Some(i);
        }
        let missing: Vec<usize> = a
            .acknowledged
            .iter()
            .copied()
            .filter(|i| !seen.contains(i))
            .collect();
        println!(
            "{s}: {} appended, {} acknowledged, {} answered with an error, {} connections broke; \
             {} records at the destination, {} distinct, {duplicates} duplicates",
            a.attempted,
            a.acknowledged.len(),
            a.errors,
            a.broken,
            got.len(),
            seen.len(),
        );
        assert!(
            missing.is_empty(),
            "{s}: {} acknowledged appends are not at the destination: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        assert!(
            a.acknowledged.len() as u64 > RATE_PER_STREAM * CAMPAIGN.as_secs() / 4,
            "{s}: too few appends were acknowledged for the campaign to mean anything"
        );
        total_duplicates += duplicates;
    }
    let bound = events.resend_causes() * BATCH;
    println!(
        "duplicates: {total_duplicates} in all; bound {bound} ({} events that can cause a resend × {BATCH})",
        events.resend_causes()
    );
    assert!(
        total_duplicates <= bound,
        "{total_duplicates} duplicates exceed one batch per event ({bound})"
    );
    assert!(
        events.kills.len() == TARGETS.len(),
        "the campaign did not kill every target: {events:?}"
    );
}
