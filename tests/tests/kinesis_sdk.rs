//! The whole system as users run it: `stream-manager` with the AWS settings
//! in its environment, the official Python SDK creating a stream with a
//! Kinesis export, moto as Kinesis; then `stream-manager status` shows the
//! export caught up.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stream_manager_tests::aws::{aws_env, Moto};
use stream_manager_tests::{bin, python};

#[test]
fn python_sdk_stream_exports_to_kinesis_through_the_whole_system() {
    let moto = Moto::start();
    let root = tempfile::tempdir().unwrap();
    let mut sm = Command::new(bin("stream-manager"))
        .env("STREAM_MANAGER_STORE_ROOT_DIR", root.path())
        .env("STREAM_MANAGER_SERVER_PORT", "0")
        .env("STREAM_MANAGER_METRICS_PORT", "0")
        .env("LOG_LEVEL", "WARN")
        .envs(aws_env(&moto.url()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(root.path().join("ingest.port")) {
            if let Ok(port) = p.trim().parse::<u16>() {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break port;
                }
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no ingest");
        std::thread::sleep(Duration::from_millis(50));
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/export_e2e.py");
    let out = Command::new(python())
        .arg(script)
        .env("STREAM_MANAGER_SERVER_PORT", port.to_string())
        .env("KINESIS_ENDPOINT", moto.url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let status = Command::new(bin("stream-manager"))
        .args(["status", "--json"])
        .env("STREAM_MANAGER_STORE_ROOT_DIR", root.path())
        .output()
        .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(sm.id() as i32, libc::SIGTERM) };
    let _ = sm.wait();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let export = &status["exports"][0];
    assert_eq!(export["stream"], "sdk-export");
    assert_eq!(export["export"], "to-kinesis");
    assert_eq!(export["last_exported_sequence_number"], 49);
    assert_eq!(export["lag_messages"], 0);
    assert_eq!(export["exported_messages"], 50);
}
