//! The `stream-manager` binary end to end: everything comes up and takes
//! appends, `status` lists the processes, `restart` touches only the named
//! one, kill -9 of any child is recovered, SIGTERM leaves no process behind,
//! an invalid configuration lists every problem, a crash-looping child is
//! reported and backed off.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use stream_manager_tests::bin;
use stream_manager_tests::wire_client;

/// Every process `stream-manager` runs, in start order.
const ALL: [&str; 6] = [
    "store",
    "ingest",
    "export-kinesis",
    "export-s3",
    "export-analytics",
    "export-sitewise",
];

struct Running {
    root: tempfile::TempDir,
    sm: Child,
}

impl Running {
    fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_at(tempfile::tempdir().unwrap(), extra)
    }

    fn start_at(root: tempfile::TempDir, extra: &[(&str, &str)]) -> Self {
        Self::start_program(bin("stream-manager"), root, extra)
    }

    /// Starts `program` (a `stream-manager`, perhaps of an installation
    /// made by `install_with`).
    fn start_program(
        program: std::path::PathBuf,
        root: tempfile::TempDir,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(program);
        cmd.env("STREAM_MANAGER_STORE_ROOT_DIR", root.path())
            .env("STREAM_MANAGER_SERVER_PORT", "0")
            .env("STREAM_MANAGER_METRICS_PORT", "0")
            .env("LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let sm = cmd.spawn().unwrap();
        let r = Running { root, sm };
        let start = Instant::now();
        let all_up = |s: Option<Json>| {
            s.is_some_and(|s| {
                s["processes"]
                    .as_array()
                    .is_some_and(|p| p.len() == ALL.len() && p.iter().all(|p| p["pid"].is_u64()))
            })
        };
        while !all_up(r.status()) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "stream-manager did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("stream-manager"))
            .args(args)
            .env("STREAM_MANAGER_STORE_ROOT_DIR", self.root.path())
            .output()
            .unwrap()
    }

    /// `status --json`, healthy (exit 0) or not (exit 1).
    fn status(&self) -> Option<Json> {
        let out = self.command(&["status", "--json"]);
        matches!(out.status.code(), Some(0 | 1))
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn pid(&self, name: &str) -> Option<u64> {
        let s = self.status()?;
        s["processes"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)?["pid"]
            .as_u64()
    }

    fn port(&self) -> u16 {
        let start = Instant::now();
        loop {
            if let Ok(p) = std::fs::read_to_string(self.root.path().join("ingest.port")) {
                if let Ok(port) = p.trim().parse() {
                    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        return port;
                    }
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "ingest never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connects an SDK-protocol client, retrying while processes restart.
    fn client(&self) -> TcpStream {
        let start = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port())) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                wire_client::hello(&mut s);
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Appends until one succeeds (processes may be restarting, so a
    /// connection may break under the client; that attempt is retried).
    fn append_eventually(&self, stream: &str, payload: &[u8]) -> i64 {
        let start = Instant::now();
        loop {
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut c = self.client();
                wire_client::append(&mut c, stream, payload)
            }));
            if let Ok((0, Some(seq))) = attempt {
                return seq;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "appends never worked again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.sm.id() as i32, libc::SIGTERM) };
        let _ = self.sm.wait();
    }
}

fn alive(pid: u64) -> bool {
    // A zombie still has a /proc entry; look at its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn all_processes_come_up_status_lists_them_and_an_sdk_client_appends() {
    let r = Running::start(&[]);
    let mut c = r.client();
    assert_eq!(wire_client::create(&mut c, "s"), 0);
    assert_eq!(wire_client::append(&mut c, "s", b"hello"), (0, Some(0)));
    let s = r.status().unwrap();
    let names: Vec<&str> = s["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ALL.to_vec());
    assert!(s["processes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["state"] == "running" && p["pid"].is_u64()));
    assert_eq!(s["streams"][0]["name"], "s");
    assert_eq!(s["streams"][0]["newest_sequence_number"], 0);
    let table = r.command(&["status"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("PROCESS"));
    // The store and the ingest run on jemalloc with its settings read
    // (`bus::memory`): its background thread exists only when they were.
    for p in s["processes"].as_array().unwrap() {
        if ["store", "ingest"].contains(&p["name"].as_str().unwrap()) {
            let pid = p["pid"].as_u64().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !thread_names(pid).contains(&bus::memory::JEMALLOC_BACKGROUND_THREAD.to_string())
            {
                assert!(
                    Instant::now() < deadline,
                    "{}: threads {:?}",
                    p["name"],
                    thread_names(pid)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The names of a process's threads.
fn thread_names(pid: u64) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn restart_changes_only_the_named_process() {
    let r = Running::start(&[]);
    let mut c = r.client();
    assert_eq!(wire_client::create(&mut c, "s"), 0);
    for name in ["export-kinesis", "ingest"] {
        let before: Vec<u64> = ALL.iter().map(|n| r.pid(n).unwrap()).collect();
        let out = r.command(&["restart", name]);
        assert!(out.status.success());
        let old = r.pid(name).unwrap();
        let start = Instant::now();
        while r.pid(name).is_none_or(|p| p == old) {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(old));
        for (n, pid) in ALL.iter().zip(before) {
            if *n != name {
                assert_eq!(r.pid(n), Some(pid), "{n} changed when {name} restarted");
            }
        }
        // Ingestion keeps working across an exporter restart.
        if name != "ingest" {
            assert_eq!(wire_client::append(&mut c, "s", b"during").0, 0);
        }
    }
    let bad = r.command(&["restart", "nonsense"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("invalid value 'nonsense'") && err.contains("export-kinesis"),
        "{err}"
    );
}

#[test]
fn kill_9_of_each_child_is_recovered_and_appends_keep_working() {
    let r = Running::start(&[]);
    let mut c = r.client();
    assert_eq!(wire_client::create(&mut c, "s"), 0);
    // A retry after an ambiguous failure (the store died with the request
    // in flight) may store the message twice: export and append are
    // at-least-once. What must hold: every acknowledged append is stored and
    // sequence numbers never go back or repeat.
    let mut last = -1i64;
    for name in [
        "ingest",
        "store",
        "export-kinesis",
        "ingest",
        "store",
        "export-s3",
        "export-analytics",
        "export-sitewise",
    ] {
        let pid = r.pid(name).unwrap();
        // SAFETY: signalling a process of the system under test.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let seq = r.append_eventually("s", name.as_bytes());
        assert!(
            seq > last,
            "sequence number {seq} after {last}: reused or lost"
        );
        last = seq;
        // The status is published every tick; wait for the new pid to show.
        let start = Instant::now();
        while r.pid(name).is_none_or(|new| new == pid) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name} was not restarted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let s = r.status().unwrap();
    assert!(s["streams"][0]["newest_sequence_number"].as_i64().unwrap() >= last);
}

#[test]
fn sigterm_leaves_no_process_and_no_socket_behind() {
    let mut r = Running::start(&[]);
    let pids: Vec<u64> = ALL.iter().map(|n| r.pid(n).unwrap()).collect();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(r.sm.id() as i32, libc::SIGTERM) };
    let status = r.sm.wait().unwrap();
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived");
    }
    assert!(!r.root.path().join("supervisor.sock").exists());
    // A new start on the same root works.
    let root = std::mem::replace(&mut r.root, tempfile::tempdir().unwrap());
    let again = Running::start_at(root, &[]);
    let _ = again.status().unwrap();
}

#[test]
fn an_invalid_configuration_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = Command::new(bin("stream-manager"))
        .env("STREAM_MANAGER_STORE_ROOT_DIR", &root)
        .env("STREAM_MANAGER_SERVER_PORT", "http")
        .env("STREAM_MANAGER_FLUSH_EVERYTHING", "yes")
        .env("STREAM_MANAGER_SERVER_MAX_CONNECTIONS", "abc")
        .env("STREAM_MANAGER_AUTHENTICATE_CLIENT", "true")
        .env(
            "STREAM_MANAGER_AUTH_TOKENS_FILE",
            dir.path().join("no-such-tokens"),
        )
        .env("LOG_LEVEL", "chatty")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "STREAM_MANAGER_SERVER_PORT",
        "STREAM_MANAGER_FLUSH_EVERYTHING",
        "STREAM_MANAGER_SERVER_MAX_CONNECTIONS \"abc\"",
        "no-such-tokens cannot be read",
        "LOG_LEVEL",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    assert!(
        !root.exists(),
        "nothing starts before the configuration is valid"
    );
}

/// An installation in `dir`: a copy of `stream-manager` with the children
/// next to it (links to this build's), except those in `replace`, which are
/// shell scripts with the given body, and those in `omit`.
fn install_with(
    dir: &std::path::Path,
    replace: &[(&str, &str)],
    omit: &[&str],
) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let sm = dir.join("stream-manager");
    std::fs::copy(bin("stream-manager"), &sm).unwrap();
    for name in ALL {
        let path = dir.join(name);
        if let Some((_, body)) = replace.iter().find(|(n, _)| *n == name) {
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        } else if !omit.contains(&name) {
            std::os::unix::fs::symlink(bin(name), &path).unwrap();
        }
    }
    sm
}

#[test]
fn a_missing_program_is_an_error_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let sm = install_with(dir.path(), &[], &["export-kinesis"]);
    let out = Command::new(&sm)
        .env("STREAM_MANAGER_STORE_ROOT_DIR", dir.path().join("root"))
        .env("STREAM_MANAGER_SERVER_PORT", "0")
        .env("STREAM_MANAGER_METRICS_PORT", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("missing or not executable") && err.contains("export-kinesis"),
        "{err}"
    );
    let check = Command::new(&sm)
        .arg("check")
        .env("STREAM_MANAGER_STORE_ROOT_DIR", dir.path().join("root"))
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
}

#[test]
fn a_crash_looping_child_is_reported_and_backed_off() {
    let dir = tempfile::tempdir().unwrap();
    let sm = install_with(
        dir.path(),
        &[("export-sitewise", "echo 'cannot work today' >&2; exit 1")],
        &[],
    );
    let r = Running::start_program(sm, tempfile::tempdir().unwrap(), &[]);
    let start = Instant::now();
    let sitewise = loop {
        let s = r.status().unwrap();
        let p = s["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "export-sitewise")
            .unwrap()
            .clone();
        if p["state"] == "crash-looping" {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never reported as crash-looping: {p}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(sitewise["last_exit"]
        .as_str()
        .unwrap()
        .contains("exit code 1"));
    // Backed off: no more than a handful of restarts so far, not a spin.
    let restarts = sitewise["restarts"].as_u64().unwrap();
    assert!((5..=8).contains(&restarts), "{restarts} restarts");
    // The store is unaffected.
    assert!(r.status().unwrap()["processes"][0]["state"] == "running");
    // `status` says what is wrong and exits non-zero.
    let out = r.command(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("UNHEALTHY") && text.contains("export-sitewise is crash-looping"),
        "{text}"
    );
}

#[test]
fn a_child_that_refuses_its_configuration_stops_the_system() {
    let dir = tempfile::tempdir().unwrap();
    let sm = install_with(
        dir.path(),
        &[(
            "export-analytics",
            "echo 'export-analytics: invalid configuration: something' >&2; exit 2",
        )],
        &[],
    );
    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(sm)
        .env("STREAM_MANAGER_STORE_ROOT_DIR", root.path())
        .env("STREAM_MANAGER_SERVER_PORT", "0")
        .env("STREAM_MANAGER_METRICS_PORT", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("export-analytics refused to run") && err.contains("something"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_command_line_is_conventional() {
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(bin(program)).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = run("stream-manager", &["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for word in ["check", "status", "restart", "stop", "--config"] {
        assert!(text.contains(word), "{word} missing from:\n{text}");
    }
    let (code, text) = run("stream-manager", &["--version"]);
    assert_eq!(code, Some(0));
    assert!(text.starts_with("stream-manager 0."), "{text}");
    let (code, _) = run("stream-manager", &["frobnicate"]);
    assert_eq!(code, Some(2));
    for child in ALL {
        let (code, text) = run(child, &["--help"]);
        assert_eq!(code, Some(0), "{child}: {text}");
        assert!(
            text.contains("STREAM_MANAGER_STORE_ROOT_DIR"),
            "{child}: {text}"
        );
        let (code, text) = run(child, &["--version"]);
        assert_eq!(code, Some(0), "{child}: {text}");
        let (code, text) = run(child, &["--root", "/tmp/x"]);
        assert_eq!(code, Some(2), "{child} must refuse arguments: {text}");
    }
    // `check` reads a file with systemd's quoting.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sm.env");
    std::fs::write(
        &file,
        "# settings\nSTREAM_MANAGER_SERVER_PORT=\"9001\"\nLOG_LEVEL='DEBUG'\nAWS_REGION=eu-west-1\n",
    )
    .unwrap();
    let (code, text) = run(
        "stream-manager",
        &["--config", file.to_str().unwrap(), "check"],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("STREAM_MANAGER_SERVER_PORT = \"9001\"") && text.contains("AWS_REGION"),
        "{text}"
    );
}

#[test]
fn children_exit_when_the_supervisor_is_killed_and_a_restart_is_clean() {
    let mut r = Running::start(&[]);
    let pids: Vec<u64> = ALL.iter().map(|n| r.pid(n).unwrap()).collect();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(r.sm.id() as i32, libc::SIGKILL) };
    let _ = r.sm.wait();
    let start = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "children outlived the supervisor"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let root = std::mem::replace(&mut r.root, tempfile::tempdir().unwrap());
    let again = Running::start_at(root, &[]);
    let mut c = again.client();
    assert_eq!(wire_client::create(&mut c, "after"), 0);
}

#[test]
fn a_store_that_is_alive_but_stuck_is_restarted() {
    let r = Running::start(&[]);
    let mut c = r.client();
    assert_eq!(wire_client::create(&mut c, "s"), 0);
    let first = r.append_eventually("s", b"before");
    let pid = r.pid("store").unwrap();
    // SIGSTOP: the process stays, but answers nothing (as a store stuck on
    // a hung disk would).
    // SAFETY: signalling a process of the system under test.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let stopped = Instant::now();
    while r.pid("store").is_none_or(|new| new == pid) {
        assert!(
            stopped.elapsed() < Duration::from_secs(40),
            "a stuck store was not restarted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        stopped.elapsed() >= Duration::from_secs(10),
        "restarted before the liveness bound"
    );
    assert!(!alive(pid), "the stuck store was killed");
    let next = r.append_eventually("s", b"after");
    assert!(next > first, "{next} after {first}");
}
