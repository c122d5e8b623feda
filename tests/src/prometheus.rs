//! A real Prometheus server (Debian's `prometheus` package, which
//! `scripts/test-all` installs) for the metrics endpoint tests: started on
//! 127.0.0.1 and a free port with its configuration and data in a temporary
//! directory, scraping the given targets, queried through its HTTP API,
//! killed when dropped. Also `promtool check metrics` (same package) to lint
//! an exposition.
//!
//! Notes on `promtool check metrics` (2.42): it reads the classic text
//! format (0.0.4), not OpenMetrics, and exits non-zero on lint problems as
//! well as on parse errors: a counter family must itself be named `..._total`
//! (`# TYPE x_total counter`), every family needs `# HELP`, names and label
//! names are snake_case, units are base units spelt out (`_seconds`,
//! `_bytes`, not `_ms`, `_milliseconds`, `_kb`), no `_total`, `_count`,
//! `_sum`, `_bucket` suffix or `le` label outside their types, no type in
//! the name (`_gauge`, `_counter`), no `:`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value as Json;
use tempfile::TempDir;

use crate::aws::free_port;

/// One sample of a query result: its labels (with `__name__` when the
/// expression keeps it) and its value.
pub type Sample = (BTreeMap<String, String>, f64);

const MISSING: &str = "run scripts/test-all, which installs Debian's prometheus";

/// `STREAM_MANAGER_TEST_PROMETHEUS`, else `/usr/bin/prometheus`, if it exists.
pub fn prometheus_bin() -> Option<PathBuf> {
    tool("STREAM_MANAGER_TEST_PROMETHEUS", "/usr/bin/prometheus")
}

/// `STREAM_MANAGER_TEST_PROMTOOL`, else `/usr/bin/promtool`, if it exists.
pub fn promtool_bin() -> Option<PathBuf> {
    tool("STREAM_MANAGER_TEST_PROMTOOL", "/usr/bin/promtool")
}

fn tool(var: &str, default: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    p.is_file().then_some(p)
}

/// The `prometheus` binary; panics when it is missing (the tests must not
/// skip silently).
pub fn require_prometheus() -> PathBuf {
    prometheus_bin().unwrap_or_else(|| panic!("prometheus is missing: {MISSING}"))
}

/// The `promtool` binary; panics when it is missing.
pub fn require_promtool() -> PathBuf {
    promtool_bin().unwrap_or_else(|| panic!("promtool is missing: {MISSING}"))
}

/// Pipes `text` into `promtool check metrics`; fails with what it printed
/// (parse errors and lint problems alike) when it exits non-zero.
pub fn promtool_check_metrics(text: &str) -> anyhow::Result<()> {
    let mut child = Command::new(require_promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn promtool")?;
    // promtool reads all of its input before it prints anything.
    let mut stdin = child.stdin.take().expect("promtool stdin");
    stdin
        .write_all(text.as_bytes())
        .context("write to promtool")?;
    drop(stdin);
    let out = child.wait_with_output().context("wait for promtool")?;
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An HTTP response, whole.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Status line and headers.
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::http::header(&self.head, name)
    }
}

/// `GET path` (with its query string) from 127.0.0.1:`port`, as HTTP/1.0 so
/// that the body is never chunked and ends with the connection.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<HttpResponse> {
    let timeout = Some(Duration::from_secs(10));
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
    s.set_read_timeout(timeout)?;
    s.set_write_timeout(timeout)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read the answer to GET {path}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: no end of headers in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("GET {path}: bad status line in {head:?}"))?;
    Ok(HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An error answer of the Prometheus API (`"status": "error"`).
#[derive(Debug)]
pub struct ApiError {
    pub error_type: String,
    pub error: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.error)
    }
}

impl std::error::Error for ApiError {}

/// One scrape target, as `/api/v1/targets` reports it.
#[derive(Debug, Clone)]
pub struct Target {
    pub scrape_url: String,
    /// `up`, `down` or `unknown` (not scraped yet).
    pub health: String,
    /// Why the last scrape failed; empty when it succeeded.
    pub last_error: String,
    pub labels: BTreeMap<String, String>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.scrape_url, self.health)?;
        if !self.last_error.is_empty() {
            write!(f, " ({})", self.last_error)?;
        }
        Ok(())
    }
}

/// A metric's metadata, as `/api/v1/metadata` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// `counter`, `gauge`, `histogram`, `summary`, `unknown`...
    pub kind: String,
    pub help: String,
    pub unit: String,
}

/// A Prometheus server on 127.0.0.1:`port`, its configuration, data and log
/// (`prometheus.log`) in `dir`.
pub struct Prometheus {
    child: Child,
    pub dir: TempDir,
    pub port: u16,
}

impl Prometheus {
    /// Starts Prometheus with one job, `stream-manager`, scraping `targets`
    /// (`"127.0.0.1:PORT"`, path `/metrics`) every `scrape_interval` (also
    /// the scrape timeout and the evaluation interval), and waits until it is
    /// ready (30 s at most).
    pub fn start(targets: &[String], scrape_interval: Duration) -> anyhow::Result<Prometheus> {
        let exe = require_prometheus();
        let dir = tempfile::tempdir().context("tempdir")?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml(targets, scrape_interval)?)
            .context("write prometheus.yml")?;
        let log_path = dir.path().join("prometheus.log");
        // The free port may be taken between the probe and Prometheus's bind:
        // then try another.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let log = File::create(&log_path).context("log file")?;
            let mut child = Command::new(&exe)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-lifecycle")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("log file")?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {}", exe.display()))?;
            match wait_ready(&mut child, port, &log_path, Duration::from_secs(30)) {
                Ok(()) => return Ok(Prometheus { child, dir, port }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if attempt < 3 && tail(&log_path, 20).contains("address already in use") {
                        eprintln!("prometheus: port {port} was taken, retrying: {e:#}");
                    } else {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The log file Prometheus writes (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// `GET /api/v1/...` and its `data`, or the API's error as [`ApiError`].
    fn api(&self, path: &str) -> anyhow::Result<Json> {
        let r = http_get(self.port, path)?;
        let v: Json = serde_json::from_str(&r.body)
            .with_context(|| format!("GET {path}: {} {:?}", r.status, r.body))?;
        if v["status"] == "success" {
            return Ok(v["data"].clone());
        }
        Err(ApiError {
            error_type: v["errorType"].as_str().unwrap_or("?").to_string(),
            error: v["error"].as_str().unwrap_or(&r.body).to_string(),
        })
        .with_context(|| format!("GET {path} ({})", r.status))
    }

    /// An instant query (`/api/v1/query`): the samples of a vector result
    /// (a scalar result is one sample without labels).
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Sample>> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        let value = |v: &Json| -> anyhow::Result<f64> {
            v[1].as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("bad sample value {v} for {expr}"))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Ok((labels(&s["metric"]), value(&s["value"])?)))
                .collect(),
            Some("scalar") => Ok(vec![(BTreeMap::new(), value(&data["result"])?)]),
            _ => bail!("{expr}: not a vector nor a scalar: {data}"),
        }
    }

    /// Polls `expr` every 250 ms until `pred` accepts its result; after
    /// `timeout`, fails with the last result and the targets' scrape state
    /// (and their last scrape error). A query Prometheus rejects
    /// (`bad_data`: not valid PromQL) fails at once.
    pub fn wait_for(
        &self,
        expr: &str,
        timeout: Duration,
        pred: impl Fn(&[Sample]) -> bool,
    ) -> anyhow::Result<Vec<Sample>> {
        let start = Instant::now();
        loop {
            let last = match self.query(expr) {
                Ok(v) if pred(&v) => return Ok(v),
                Ok(v) => format!("{v:?}"),
                Err(e)
                    if e.downcast_ref::<ApiError>()
                        .is_some_and(|a| a.error_type == "bad_data") =>
                {
                    return Err(e);
                }
                Err(e) => format!("error: {e:#}"),
            };
            if start.elapsed() > timeout {
                bail!(
                    "{expr} not as expected within {timeout:?}; last result: {last}; targets: {}",
                    self.targets_summary()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The active scrape targets (`/api/v1/targets`).
    pub fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let data = self.api("/api/v1/targets?state=active")?;
        let text = |v: &Json| v.as_str().unwrap_or_default().to_string();
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| Target {
                scrape_url: text(&t["scrapeUrl"]),
                health: text(&t["health"]),
                last_error: text(&t["lastError"]),
                labels: labels(&t["labels"]),
            })
            .collect())
    }

    /// The targets on one line each, for error messages.
    pub fn targets_summary(&self) -> String {
        match self.targets() {
            Ok(t) if t.is_empty() => "none".into(),
            Ok(t) => t.iter().map(|t| format!("\n  {t}")).collect(),
            Err(e) => format!("unknown ({e:#})"),
        }
    }

    /// Waits until every target has been scraped successfully (health `up`);
    /// fails with their scrape errors after `timeout`.
    pub fn wait_targets_up(&self, timeout: Duration) -> anyhow::Result<Vec<Target>> {
        let start = Instant::now();
        loop {
            if let Ok(t) = self.targets() {
                if !t.is_empty() && t.iter().all(|t| t.health == "up") {
                    return Ok(t);
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "targets not all up within {timeout:?}: {}",
                    self.targets_summary()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// What Prometheus learnt from the `# HELP`/`# TYPE` lines of `metric`
    /// (`/api/v1/metadata`); empty before the first scrape that has it.
    pub fn metadata(&self, metric: &str) -> anyhow::Result<Vec<Metadata>> {
        let data = self.api(&format!("/api/v1/metadata?metric={}", url_encode(metric)))?;
        let text = |v: &Json| v.as_str().unwrap_or_default().to_string();
        Ok(data[metric]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| Metadata {
                kind: text(&m["type"]),
                help: text(&m["help"]),
                unit: text(&m["unit"]),
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until Prometheus on `port` answers `GET /-/ready` with 200; fails
/// with the tail of its log if it exits first or is not ready `within`.
fn wait_ready(child: &mut Child, port: u16, log: &Path, within: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "prometheus exited ({status}) before it was ready:\n{}",
                tail(log, 30)
            );
        }
        let last = match http_get(port, "/-/ready") {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => format!("{} {}", r.status, r.body.trim()),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > within {
            bail!(
                "prometheus not ready on 127.0.0.1:{port} within {within:?} (last: {last}):\n{}",
                tail(log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The configuration: global intervals and the `stream-manager` job.
fn config_yaml(targets: &[String], interval: Duration) -> anyhow::Result<String> {
    let ms = interval.as_millis();
    anyhow::ensure!(ms > 0, "scrape interval {interval:?} is below 1 ms");
    // JSON strings are YAML strings.
    let targets = serde_json::to_string(targets)?;
    Ok(format!(
        "global:\n  scrape_interval: {ms}ms\n  scrape_timeout: {ms}ms\n  evaluation_interval: {ms}ms\n\
         scrape_configs:\n  - job_name: stream-manager\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: {targets}\n"
    ))
}

fn labels(v: &Json) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
