//! The metrics endpoint: `GET /metrics` in the Prometheus text format
//! (0.0.4) and `GET /healthz`, on 127.0.0.1 only
//! (`STREAM_MANAGER_METRICS_PORT`, default 8089; 0 = any free port, written
//! to `<root>/metrics.port`; `off` = none). A scrape asks the store for its
//! metrics and the latest reports of the ingest and the exporters
//! (`Request::Metrics`), and adds the processes as the supervisor sees them.
//! One connection is served at a time, each bounded in bytes and time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bus_schema::metrics::{render, MetricFamily, MetricKind};

use crate::Shared;

/// Longest request head read, bytes.
pub const REQUEST_HEAD_BYTES_MAX: u64 = 8 * 1024;
/// How long a client may take to send its request, and to read the answer.
pub const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for the store's metrics.
pub const STORE_METRICS_TIMEOUT: Duration = Duration::from_secs(3);

/// Binds the endpoint; `Ok(None)` when metrics are off.
pub fn bind(
    port: settings::MetricsPort,
    root: &std::path::Path,
) -> Result<Option<TcpListener>, String> {
    let settings::MetricsPort::Port(port) = port else {
        return Ok(None);
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
        format!(
            "cannot serve metrics on 127.0.0.1:{port}: {e} (set STREAM_MANAGER_METRICS_PORT to a free port, 0 for any, or off)"
        )
    })?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?.port();
    let file = root.join("metrics.port");
    if port == 0 {
        std::fs::write(&file, format!("{bound}\n"))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    } else {
        let _ = std::fs::remove_file(&file);
    }
    tracing::info!("metrics on http://127.0.0.1:{bound}/metrics");
    Ok(Some(listener))
}

/// Serves the endpoint on a thread of its own.
pub fn serve(listener: TcpListener, shared: Arc<Shared>, root: std::path::PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let bus = bus::BusClient::connect(&bus::store_endpoint(&root), Default::default()).ok();
            for conn in listener.incoming().flatten() {
                let _ = conn.set_read_timeout(Some(CLIENT_IO_TIMEOUT));
                let _ = conn.set_write_timeout(Some(CLIENT_IO_TIMEOUT));
                answer(conn, &shared, bus.as_ref());
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the metrics endpoint: {e}");
    }
}

fn answer(conn: TcpStream, shared: &Shared, bus: Option<&bus::BusClient>) {
    let mut reader = BufReader::new((&conn).take(REQUEST_HEAD_BYTES_MAX));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // The rest of the head (headers) up to the blank line.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            scrape(shared, bus),
        ),
        ("GET", "/healthz") => {
            let s = crate::control::status(shared, bus);
            let problems: Vec<String> = s["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            if problems.is_empty() {
                ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    problems.join("\n") + "\n",
                )
            }
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut w = &conn;
    let _ = w.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = w.write_all(body.as_bytes());
    }
}

/// The page: the store's and the reported metrics, then the processes.
pub fn scrape(shared: &Shared, bus: Option<&bus::BusClient>) -> String {
    let mut families = Vec::new();
    let store = bus.map(|b| b.call(bus_schema::Request::Metrics, STORE_METRICS_TIMEOUT));
    let store_up = match store {
        Some(Ok(bus_schema::Response::Metrics(f))) => {
            families.extend(f);
            true
        }
        _ => false,
    };
    let procs = shared
        .procs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut up = MetricFamily::new(
        "sm_process_up",
        "1 when the process is running.",
        MetricKind::Gauge,
    );
    let mut restarts = MetricFamily::new(
        "sm_process_restarts_total",
        "Times the supervisor started the process again.",
        MetricKind::Counter,
    );
    let mut rss = MetricFamily::new(
        "sm_process_resident_memory_bytes",
        "Resident memory of the process.",
        MetricKind::Gauge,
    );
    let mut cpu = MetricFamily::new(
        "sm_process_cpu_seconds_total",
        "CPU time (user and system) of the process's current run.",
        MetricKind::Counter,
    );
    let me = [("stream-manager".to_string(), Some(std::process::id()), true)];
    let all = procs
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.pid,
                p.state == crate::children::State::Running,
            )
        })
        .chain(me);
    for (name, pid, running) in all {
        let l = [("process", name.as_str())];
        up.sample(&l, f64::from(u8::from(running)));
        if let Some((resident, seconds)) = pid.and_then(proc_usage) {
            rss.sample(&l, resident as f64);
            cpu.sample(&l, seconds);
        }
    }
    for p in &procs {
        restarts.sample(&[("process", p.name.as_str())], p.restarts as f64);
    }
    let mut store_answers = MetricFamily::new(
        "sm_store_up",
        "1 when the store answered this scrape.",
        MetricKind::Gauge,
    );
    store_answers.sample(&[], f64::from(u8::from(store_up)));
    let mut info = MetricFamily::new(
        "sm_build_info",
        "1, labelled with the version of stream-manager.",
        MetricKind::Gauge,
    );
    info.sample(&[("version", settings::VERSION)], 1.0);
    families.extend([up, restarts, rss, cpu, store_answers, info]);
    render(&families)
}

/// Resident bytes and CPU seconds of process `pid`, from `/proc`.
fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let (page, ticks) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    Some((
        pages * page.max(1) as u64,
        (utime + stime) as f64 / ticks.max(1) as f64,
    ))
}
