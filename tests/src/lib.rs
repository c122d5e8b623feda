//! End-to-end harness: the real `store` and `ingest` binaries of this build,
//! on a temporary store root, with the ingest on a free port of 127.0.0.1.
//! Used by the tests in `tests/tests/` (official SDK clients, raw frames).

pub mod aws;
pub mod fake_iot;
pub mod fast_kinesis;
pub mod fault_proxy;
pub mod http;
pub mod load;
pub mod peer_bench;
pub mod prometheus;
pub mod slow_link;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace, next to the running test's own directory
/// (`target/<profile>/`). `scripts/test-all` builds them all first.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from target/<profile>/deps, programs from target/<profile>.
    let dirs = [exe.parent(), exe.parent().and_then(Path::parent)];
    let found = dirs
        .iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "{name} is missing next to {}: build the workspace binaries first (cargo build --workspace --bins)",
            exe.display()
        )
    })
}

/// The Python interpreter of the venv that `scripts/test-all` creates with
/// the pinned SDK (`tests/python/requirements.txt`), or `STREAM_MANAGER_TEST_PYTHON`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("STREAM_MANAGER_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-all, which creates it with the pinned Python SDK",
        p.display()
    );
    p
}

pub struct System {
    pub root: tempfile::TempDir,
    pub store: Child,
    pub ingest: Child,
    pub port: u16,
}

impl System {
    /// Starts the store, waits until it answers, then the ingest on port 0,
    /// and reads the port it reports.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(ingest_env: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let store = Command::new(bin("store"))
            .env("STREAM_MANAGER_STORE_ROOT_DIR", root.path())
            .env("LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn store");
        let client = bus::BusClient::connect(&bus::store_endpoint(root.path()), Default::default())
            .expect("bus");
        let start = Instant::now();
        while !matches!(
            client.call(bus_schema::Request::Health, Duration::from_millis(200)),
            Ok(bus_schema::Response::Health(_))
        ) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "store did not start"
            );
        }
        let mut cmd = Command::new(bin("ingest"));
        cmd.env("STREAM_MANAGER_STORE_ROOT_DIR", root.path())
            .env("STREAM_MANAGER_SERVER_PORT", "0")
            .env("LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (k, v) in ingest_env {
            cmd.env(k, v);
        }
        let mut ingest = cmd.spawn().expect("spawn ingest");
        let stdout = ingest.stdout.take().expect("ingest stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ingest port line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("ingest did not report its port: {line:?}"));
        System {
            root,
            store,
            ingest,
            port,
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for c in [&mut self.ingest, &mut self.store] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs an SDK check script against `system` (port in
/// `STREAM_MANAGER_SERVER_PORT`) and asserts that every check passed: the
/// script exits 0 and closes with `N passed, 0 failed`.
pub fn run_checks(mut cmd: Command, system: &System, what: &str) {
    let out = cmd
        .env("STREAM_MANAGER_SERVER_PORT", system.port.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {what} checks: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{what} checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// A minimal SDK wire-protocol client for tests that need raw frames.
pub mod wire_client {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    pub fn connect(port: u16) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Reads one frame: (opcode, payload as JSON-ish CBOR value).
    pub fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, ciborium::Value)> {
        let mut h = [0u8; 5];
        s.read_exact(&mut h)?;
        let len = u32::from_be_bytes(h[..4].try_into().unwrap()) as usize;
        let mut p = vec![0u8; len - 1];
        s.read_exact(&mut p)?;
        Ok((h[4], ciborium::from_reader(&p[..]).unwrap()))
    }

    pub fn field<'a>(v: &'a ciborium::Value, key: &str) -> Option<&'a ciborium::Value> {
        v.as_map()?
            .iter()
            .find(|(k, _)| k.as_text() == Some(key))
            .map(|(_, v)| v)
    }

    pub fn status(v: &ciborium::Value) -> i64 {
        i128::from(field(v, "status").unwrap().as_integer().unwrap()) as i64
    }

    pub fn frame(op: u8, payload: &ciborium::Value) -> Vec<u8> {
        let mut p = Vec::new();
        ciborium::into_writer(payload, &mut p).unwrap();
        let mut out = ((p.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(op);
        out.extend(p);
        out
    }

    pub fn hello(s: &mut TcpStream) {
        let connect = ciborium::Value::Map(vec![
            ("requestId".into(), "c".into()),
            ("protocolVersion".into(), "1.1.0".into()),
            ("sdkVersion".into(), "raw".into()),
        ]);
        let mut out = vec![1u8];
        out.extend(frame(1, &connect));
        s.write_all(&out).unwrap();
        let mut v = [0u8; 1];
        s.read_exact(&mut v).unwrap();
        assert_eq!(v[0], 1);
        let (op, r) = read_frame(s).unwrap();
        assert_eq!((op, status(&r)), (6, 0));
    }

    pub fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    }

    /// Appends `payload` to `stream` on a connected socket; returns the
    /// response's status and sequence number.
    pub fn append(s: &mut TcpStream, stream: &str, payload: &[u8]) -> (i64, Option<i64>) {
        let req = ciborium::Value::Map(vec![
            ("requestId".into(), "a".into()),
            ("name".into(), stream.into()),
            ("payload".into(), ciborium::Value::Bytes(payload.to_vec())),
        ]);
        s.write_all(&frame(4, &req)).unwrap();
        let (_, r) = read_frame(s).unwrap();
        let seq = field(&r, "sequenceNumber")
            .and_then(|v| v.as_integer())
            .map(|i| i128::from(i) as i64);
        (status(&r), seq)
    }

    /// Creates a stream (RejectNewData, defaults) on a connected socket;
    /// returns the status.
    pub fn create(s: &mut TcpStream, stream: &str) -> i64 {
        create_def(
            s,
            ciborium::Value::Map(vec![
                ("name".into(), stream.into()),
                ("strategyOnFull".into(), 0.into()),
            ]),
        )
    }

    /// Creates a stream from a MessageStreamDefinition map; returns the
    /// status.
    pub fn create_def(s: &mut TcpStream, definition: ciborium::Value) -> i64 {
        let req = ciborium::Value::Map(vec![
            ("requestId".into(), "c".into()),
            ("definition".into(), definition),
        ]);
        s.write_all(&frame(2, &req)).unwrap();
        status(&read_frame(s).unwrap().1)
    }
}

/// The store alone (no ingest), with a bus client to drive it, for the
/// exporter tests; exporters are started with [`StoreHarness::exporter`].
pub struct StoreHarness {
    pub root: tempfile::TempDir,
    pub store: Child,
    pub bus: bus::BusClient,
    store_env: Vec<(String, String)>,
}

impl StoreHarness {
    /// Starts the store with `env` (e.g. a bandwidth cap) and waits until it
    /// answers.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let store_env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let store = Self::spawn_store(root.path(), &store_env);
        let bus = bus::BusClient::connect(&bus::store_endpoint(root.path()), Default::default())
            .expect("bus");
        let h = Self {
            root,
            store,
            bus,
            store_env,
        };
        h.wait_healthy();
        h
    }

    fn spawn_store(root: &Path, env: &[(String, String)]) -> Child {
        Command::new(bin("store"))
            .env("STREAM_MANAGER_STORE_ROOT_DIR", root)
            .env("LOG_LEVEL", "WARN")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn store")
    }

    pub fn wait_healthy(&self) {
        let start = Instant::now();
        while !matches!(
            self.bus
                .call(bus_schema::Request::Health, Duration::from_millis(200)),
            Ok(bus_schema::Response::Health(_))
        ) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "store did not start"
            );
        }
    }

    /// kill -9 of the store, then a new one on the same root.
    pub fn restart_store(&mut self) {
        let _ = self.store.kill();
        let _ = self.store.wait();
        self.store = Self::spawn_store(self.root.path(), &self.store_env);
        self.wait_healthy();
    }

    /// Starts exporter `name` against this store with `env` added.
    pub fn exporter(&self, name: &str, env: &[(String, String)]) -> Child {
        Command::new(bin(name))
            .env("STREAM_MANAGER_STORE_ROOT_DIR", self.root.path())
            .env("LOG_LEVEL", "INFO")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(self.store_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"))
    }

    pub fn call(&self, req: bus_schema::Request) -> bus_schema::Response {
        self.bus
            .call(req, Duration::from_secs(10))
            .expect("store call")
    }

    pub fn create(&self, def: bus_schema::StreamDefinition) {
        let r = self.call(bus_schema::Request::CreateStream { definition: def });
        assert_eq!(r, bus_schema::Response::Created);
    }

    pub fn update(&self, def: bus_schema::StreamDefinition) {
        let r = self.call(bus_schema::Request::UpdateStream { definition: def });
        assert_eq!(r, bus_schema::Response::Updated);
    }

    pub fn append(&self, stream: &str, payload: Vec<u8>) -> i64 {
        match self.call(bus_schema::Request::Append {
            stream: stream.into(),
            payload,
        }) {
            bus_schema::Response::Appended {
                sequence_number, ..
            } => sequence_number,
            other => panic!("append to {stream}: {other:?}"),
        }
    }

    pub fn describe(&self, stream: &str) -> bus_schema::StreamInfo {
        match self.call(bus_schema::Request::DescribeStream {
            name: stream.into(),
        }) {
            bus_schema::Response::Described(info) => *info,
            other => panic!("describe {stream}: {other:?}"),
        }
    }

    /// The status of export `id` of `stream`.
    pub fn export_status(&self, stream: &str, id: &str) -> bus_schema::ExportStatus {
        self.describe(stream)
            .export_statuses
            .into_iter()
            .find(|s| s.export_identifier == id)
            .unwrap_or_else(|| panic!("{stream} has no export {id}"))
    }

    /// Waits until export `id` of `stream` has committed `last`; panics with
    /// the status after `within`.
    pub fn wait_exported(&self, stream: &str, id: &str, last: i64, within: Duration) {
        let start = Instant::now();
        loop {
            let s = self.export_status(stream, id);
            if s.last_exported_sequence_number >= last {
                return;
            }
            assert!(
                start.elapsed() < within,
                "export {id} of {stream} did not reach {last} within {within:?}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for StoreHarness {
    fn drop(&mut self) {
        let _ = self.store.kill();
        let _ = self.store.wait();
    }
}

/// Kills and reaps a child process (kill -9).
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends SIGTERM to a child and waits for it to exit (within 10 s).
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "process did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident set size of a process, KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Proportional set size of a process, KiB (0 when it is gone): its
/// resident pages, each page shared by n processes counted 1/n.
pub fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak resident set size of a process, KiB (0 when it is gone).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A KiB field of `/proc/<pid>/status`, 0 when absent.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the name: state is field 3; utime and stime are fields 14, 15.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(14) + ticks(15)) / hz
}
