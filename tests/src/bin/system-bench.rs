//! `system-bench`: figures of the whole system started by `stream-manager`
//! (use a release build: `cargo build --release --workspace --bins &&
//! ./target/release/system-bench`):
//! - time from spawning `stream-manager` on an empty store to the SDK
//!   endpoint completing a handshake;
//! - resident memory of all its processes together, idle: the sum of their
//!   proportional set sizes (PSS: each page shared by n processes, such as
//!   libc's and libstdc++'s code, counts 1/n in each), which is what the
//!   group really occupies; the plain sum of RSS, which counts every shared
//!   page once per process, is printed beside it;
//! - time from kill -9 of the store to the next acknowledged append;
//! - the size on disk of the executables its processes run (each distinct
//!   file once: seven binaries for `cargo build`'s layout, one for the
//!   bundle).
//!
//! `system-bench [PROGRAM]` measures another `stream-manager`, such as the
//! packaged bundle (unpack `dist/stream-manager-<version>-x86_64.zip`).

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stream_manager_tests::{bin, pss_kib, rss_kib, wire_client};

fn children_of(pid: u32) -> Vec<u32> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn try_append(port: u16, stream: &str) -> bool {
    std::panic::catch_unwind(|| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        wire_client::hello(&mut s);
        wire_client::append(&mut s, stream, b"x").0 == 0
    })
    .unwrap_or(false)
}

fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = 18_088;
    let started = Instant::now();
    let program = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| bin("stream-manager"));
    let mut sm = Command::new(&program)
        .env("STREAM_MANAGER_STORE_ROOT_DIR", root.path())
        .env("STREAM_MANAGER_SERVER_PORT", port.to_string())
        .env("STREAM_MANAGER_METRICS_PORT", "0")
        .env("LOG_LEVEL", "WARN")
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn stream-manager");
    let accepted = loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                wire_client::hello(&mut s)
            }));
            if ok.is_ok() {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never accepted"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    wire_client::hello(&mut s);
    assert_eq!(wire_client::create(&mut s, "bench"), 0);
    drop(s);
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = std::iter::once(sm.id())
        .chain(children_of(sm.id()))
        .collect();
    let total: u64 = pids.iter().map(|p| pss_kib(*p)).sum();
    let total_rss: u64 = pids.iter().map(|p| rss_kib(*p)).sum();
    let parts: Vec<String> = pids
        .iter()
        .map(|p| {
            let name = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            format!(
                "{} {:.1}/{:.1}",
                name.trim(),
                pss_kib(*p) as f64 / 1024.0,
                rss_kib(*p) as f64 / 1024.0
            )
        })
        .collect();

    let mut executables: Vec<std::path::PathBuf> = pids
        .iter()
        .filter_map(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
        .collect();
    executables.sort();
    executables.dedup();
    let executable_bytes: u64 = executables
        .iter()
        .map(|e| std::fs::metadata(e).map(|m| m.len()).unwrap_or(0))
        .sum();

    let store = children_of(sm.id())
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .unwrap_or_default()
                .trim()
                == "store"
        })
        .expect("store pid");
    assert!(try_append(port, "bench"));
    let killed = Instant::now();
    // SAFETY: signalling a process of the system under test.
    unsafe { libc::kill(store as i32, libc::SIGKILL) };
    while !try_append(port, "bench") {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "never recovered"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let recovered = killed.elapsed();

    // SAFETY: signalling our own child.
    unsafe { libc::kill(sm.id() as i32, libc::SIGTERM) };
    let _ = sm.wait();

    println!("| figure | measured | note |");
    println!("|---|---|---|");
    println!(
        "| start to accepting SDK connections (empty store) | {} ms | goal <= 1 s |",
        accepted.as_millis()
    );
    println!(
        "| resident memory of all {} processes, idle (sum of PSS) | {:.1} MiB | goal <= 40 MB; plain RSS sum {:.1} MiB (shared library pages counted once per process); PSS/RSS MiB: {} |",
        pids.len(),
        total as f64 / 1024.0,
        total_rss as f64 / 1024.0,
        parts.join(", ")
    );
    println!(
        "| kill -9 of the store to the next acknowledged append | {} ms | restart backoff 100 ms ± 25% included |",
        recovered.as_millis()
    );
    println!(
        "| executables on disk | {:.1} MiB in {} file(s) | goal <= 30 MB per device package; {} |",
        executable_bytes as f64 / (1024.0 * 1024.0),
        executables.len(),
        executables
            .iter()
            .map(|e| e
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    );
}
