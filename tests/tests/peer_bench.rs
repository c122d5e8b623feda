//! The side-by-side benchmark cannot rot: `peer-bench run --smoke` (the
//! stream-manager leg only, tiny counts, about a second per leg; no NATS or
//! Redis needed) against the debug binaries next to it prints its table
//! with nonzero rates.

use std::process::Command;

#[test]
fn smoke_run_prints_a_table_with_nonzero_rates() {
    let out = Command::new(env!("CARGO_BIN_EXE_peer-bench"))
        .args(["run", "--smoke"])
        .output()
        .expect("run peer-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "peer-bench failed:\n{stdout}\n{stderr}"
    );
    let cell = |row: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {row} |")))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        line.split('|')
            .nth(2)
            .unwrap()
            .trim()
            .replace(',', "")
            .parse()
            .unwrap_or(0.0)
    };
    for row in [
        "appends/s, default durability",
        "catch-up reads, messages/s",
        "appends/s, fsync per write",
        "append p99 ms, default durability",
    ] {
        assert!(cell(row) > 0.0, "{row} is not positive:\n{stdout}");
    }
    for process in ["store", "ingest", "stream-manager", "load generator"] {
        assert!(
            stdout.contains(&format!("| stream-manager | {process} |")),
            "no figures for {process}:\n{stdout}"
        );
    }
}
