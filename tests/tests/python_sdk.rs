//! The official Python SDK (PyPI `stream-manager`, pinned) against the real
//! store + ingest: every check of `tests/python/sdk_e2e.py` must pass.

use std::process::Command;

#[test]
fn the_python_sdk_works_unchanged() {
    let system = stream_manager_tests::System::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/sdk_e2e.py");
    let out = Command::new(stream_manager_tests::python())
        .arg(script)
        .env("STREAM_MANAGER_SERVER_PORT", system.port.to_string())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "python SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
