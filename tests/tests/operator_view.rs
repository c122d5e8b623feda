//! The operator's view of the whole system as `stream-manager` runs it:
//! metrics scraped by a real Prometheus server (Debian's, started here on
//! loopback) and queried through its HTTP API, `promtool check metrics` on
//! the page, `/healthz`, the loss ledger in `status --json`, and JSON log
//! lines. The official Python SDK sets up one export that delivers to moto
//! and one that cannot (its Kinesis stream does not exist) on a small
//! overwriting stream.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stream_manager_tests::aws::{aws_env, Moto};
use stream_manager_tests::prometheus::{self, Prometheus};
use stream_manager_tests::{bin, python};

fn value(samples: &[prometheus::Sample]) -> f64 {
    samples.iter().map(|(_, v)| v).sum()
}

#[test]
fn metrics_status_and_logs_answer_where_the_data_is() {
    prometheus::require_prometheus();
    let moto = Moto::start();
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("stream-manager.log");
    let mut sm = Command::new(bin("stream-manager"))
        .env("STREAM_MANAGER_STORE_ROOT_DIR", root.path().join("data"))
        .env("STREAM_MANAGER_SERVER_PORT", "0")
        .env("STREAM_MANAGER_METRICS_PORT", "0")
        .env("LOG_FORMAT", "json")
        .envs(aws_env(&moto.url()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_port = |file: &str| {
        let start = Instant::now();
        loop {
            if let Ok(p) = std::fs::read_to_string(root.path().join("data").join(file)) {
                if let Ok(port) = p.trim().parse::<u16>() {
                    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        return port;
                    }
                }
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no {file}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (port, metrics_port) = (read_port("ingest.port"), read_port("metrics.port"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/operator_view.py");
    let out = Command::new(python())
        .arg(script)
        .env("STREAM_MANAGER_SERVER_PORT", port.to_string())
        .env("KINESIS_ENDPOINT", moto.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let prom = Prometheus::start(
        &[format!("127.0.0.1:{metrics_port}")],
        Duration::from_secs(1),
    )
    .unwrap();
    let within = Duration::from_secs(60);
    // The delivering export caught up; the failing one is behind, retrying,
    // and says why.
    prom.wait_for(
        r#"sm_export_records_sent_total{stream="ok-stream",export="to-kinesis"}"#,
        within,
        |s| value(s) == 20.0,
    )
    .unwrap();
    prom.wait_for(
        r#"sm_export_lag_messages{stream="ok-stream",export="to-kinesis"}"#,
        within,
        |s| s.len() == 1 && value(s) == 0.0,
    )
    .unwrap();
    let lag = prom
        .wait_for(
            r#"sm_export_lag_messages{stream="stuck-stream",export="to-missing"}"#,
            within,
            |s| value(s) > 0.0,
        )
        .unwrap();
    let held = prom
        .wait_for(
            r#"sm_stream_messages{stream="stuck-stream"}"#,
            within,
            |s| value(s) > 0.0,
        )
        .unwrap();
    assert_eq!(value(&lag), value(&held), "nothing of it was exported");
    prom.wait_for(
        r#"sm_export_lag_seconds{stream="stuck-stream",export="to-missing"}"#,
        within,
        |s| value(s) > 0.0,
    )
    .unwrap();
    prom.wait_for(
        r#"sm_export_last_error_info{stream="stuck-stream",export="to-missing",class="not-found"}"#,
        within,
        |s| value(s) == 1.0,
    )
    .unwrap();
    prom.wait_for(
        r#"sm_export_retries_total{export="to-missing"}"#,
        within,
        |s| value(s) >= 1.0,
    )
    .unwrap();
    // What the overwrite dropped is counted (durably, from the ledger).
    let dropped = prom
        .wait_for(
            r#"sm_stream_dropped_messages_total{stream="stuck-stream",cause="overwrite"}"#,
            within,
            |s| value(s) > 0.0,
        )
        .unwrap();
    assert_eq!(value(&dropped) + value(&held), 100.0);
    // The ingest's and the supervisor's own metrics.
    prom.wait_for(
        r#"sm_ingest_requests_total{operation="append",outcome="success"}"#,
        within,
        |s| value(s) == 120.0,
    )
    .unwrap();
    // Every append went to the store alone or in a batch.
    prom.wait_for(
        r#"sum(sm_ingest_bus_requests_total{kind="append"}) + sum(sm_ingest_batched_appends_total)"#,
        within,
        |s| value(s) == 120.0,
    )
    .unwrap();
    prom.wait_for("sum(sm_process_up)", within, |s| value(s) == 7.0)
        .unwrap();
    prom.wait_for(
        r#"sm_process_resident_memory_bytes{process="store"}"#,
        within,
        |s| value(s) > 1e6,
    )
    .unwrap();
    prom.wait_for("sm_store_commit_seconds_count", within, |s| value(s) > 0.0)
        .unwrap();
    // 120 small appends never fill the applier's queue.
    prom.wait_for("sm_store_applier_wait_seconds_total", within, |s| {
        s.len() == 1 && value(s) == 0.0
    })
    .unwrap();

    // The page itself passes promtool's checks.
    let page = prometheus::http_get(metrics_port, "/metrics").unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    prometheus::promtool_check_metrics(&page.body).unwrap();
    let health = prometheus::http_get(metrics_port, "/healthz").unwrap();
    assert_eq!(health.status, 200, "{}", health.body);

    // `status --json` answers where the overwritten messages went.
    let status = Command::new(bin("stream-manager"))
        .args(["status", "--json"])
        .env("STREAM_MANAGER_STORE_ROOT_DIR", root.path().join("data"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let losses = status["losses"].as_array().unwrap();
    let overwritten = losses
        .iter()
        .find(|l| {
            l["stream"] == "stuck-stream" && l["cause"] == "overwrite" && l["export"].is_null()
        })
        .unwrap_or_else(|| panic!("no overwrite entry in {losses:#?}"));
    assert_eq!(overwritten["messages"].as_f64(), Some(value(&dropped)));
    assert_eq!(
        overwritten["ranges"][0]["first_sequence_number"], 0,
        "{overwritten}"
    );

    // SIGTERM; then every log line is one JSON object naming its process.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(sm.id() as i32, libc::SIGTERM) };
    assert!(sm.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "escape codes in the log");
    let mut processes = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        processes.insert(v["process"].as_str().unwrap().to_string());
    }
    for p in ["stream-manager", "store", "ingest", "export-kinesis"] {
        assert!(processes.contains(p), "no line from {p}: {processes:?}");
    }
}
