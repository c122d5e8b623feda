//! The official Python SDK (PyPI `stream-manager`, pinned) against the real
//! store + ingest: every check of `tests/python/sdk_e2e.py` must pass.

use std::process::Command;

#[test]
fn the_python_sdk_works_unchanged() {
    let system = stream_manager_tests::System::start();
    let mut cmd = Command::new(stream_manager_tests::python());
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/sdk_e2e.py"));
    stream_manager_tests::run_checks(cmd, &system, "Python SDK");
}
