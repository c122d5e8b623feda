//! `store-bench ingest` (the applier's chunk ingestion alone, README
//! "Benchmark against NATS JetStream and Redis") keeps working: a few chunks
//! into a directory of the test's own, which holds them afterwards.

use std::process::Command;

#[test]
fn the_ingestion_benchmark_writes_its_chunks_and_reports_a_rate() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_store-bench"))
        .args([
            "ingest",
            "--chunks",
            "6",
            "--streams",
            "2",
            "--chunk-kib",
            "64",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("6 chunks of 63 messages"), "{stdout}");
    let rate: f64 = stdout
        .lines()
        .nth(1)
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap();
    assert!(rate > 0.0, "{stdout}");
    // Each chunk has a blob file of its own in its stream's keyspace.
    let blob_files: usize = std::fs::read_dir(dir.path().join("keyspaces"))
        .unwrap()
        .filter_map(|k| std::fs::read_dir(k.ok()?.path().join("blobs")).ok())
        .map(|t| t.count())
        .sum();
    assert_eq!(blob_files, 6, "{stdout}");
}

#[test]
fn the_ingestion_benchmark_refuses_settings_out_of_range_and_leaves_nothing() {
    for (flag, value, says) in [
        ("--streams", "0", "--streams takes 1 to 900"),
        ("--streams", "901", "--streams takes 1 to 900"),
        ("--chunk-kib", "1", "--chunk-kib takes 2 to 65536"),
        ("--chunks", "many", "--chunks takes a number"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_store-bench"))
            .args(["ingest", flag, value, "--dir"])
            .arg(dir.path().join("db"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
        assert!(!dir.path().join("db").exists(), "{flag} {value}");
    }
}
