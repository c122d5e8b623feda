//! The official npm SDK (`aws-greengrass-core-sdk`, pinned) against the real
//! store + ingest: every check of `tests/node/sdk_e2e.js` must pass.

use std::path::Path;
use std::process::Command;

#[test]
fn the_npm_sdk_works_unchanged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    assert!(
        dir.join("node_modules/aws-greengrass-core-sdk").exists(),
        "tests/node/node_modules is missing: run scripts/test-all, which installs the pinned npm SDK"
    );
    let system = stream_manager_tests::System::start();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("sdk_e2e.js")).current_dir(&dir);
    stream_manager_tests::run_checks(cmd, &system, "npm SDK");
}
