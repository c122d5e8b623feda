//! Helpers for the store's black-box tests: a real store process on a
//! temporary root, and a bus client to talk to it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bus::{BusClient, BusClientConfig, BusError};
use bus_schema::{Request, Response, StrategyOnFull, StreamDefinition};

pub const TIMEOUT: Duration = Duration::from_secs(5);

pub struct StoreProcess {
    pub root: PathBuf,
    pub child: Option<Child>,
}

impl StoreProcess {
    /// Starts the store binary on `root` and waits until it answers.
    pub fn start(root: &Path) -> Self {
        Self::spawn(root, Command::new(env!("CARGO_BIN_EXE_store")))
    }

    /// [`StoreProcess::start`] with `open_files` as both its soft and hard
    /// limit on open descriptors (so the store cannot raise it).
    pub fn start_with_open_files(root: &Path, open_files: u64) -> Self {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_store"));
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: open_files as libc::rlim_t,
                    rlim_max: open_files as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Self::spawn(root, cmd)
    }

    fn spawn(root: &Path, mut cmd: Command) -> Self {
        let child = cmd
            .env("STREAM_MANAGER_STORE_ROOT_DIR", root)
            .env("LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn store");
        let p = StoreProcess {
            root: root.to_path_buf(),
            child: Some(child),
        };
        p.wait_ready();
        p
    }

    pub fn endpoint(&self) -> String {
        bus::store_endpoint(&self.root)
    }

    pub fn client(&self) -> BusClient {
        BusClient::connect(&self.endpoint(), BusClientConfig::default()).expect("connect")
    }

    pub fn wait_ready(&self) {
        let client = self.client();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Response::Health(_)) =
                client.call(Request::Health, Duration::from_millis(200))
            {
                return;
            }
        }
        panic!("store did not become ready");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGSTOP, then waits until every thread of the store is stopped: the
    /// signal is delivered asynchronously, and a thread still running could
    /// take a request the test means to reach a stopped store.
    pub fn pause(&self) {
        let pid = self.pid();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let start = Instant::now();
        while !all_threads_stopped(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "store {pid} did not stop"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) };
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("wait")
    }
}

/// Whether every thread of `pid` is in the stopped state (`T`).
fn all_threads_stopped(pid: u32) -> bool {
    let threads = store::priority::threads_of(&pid.to_string());
    !threads.is_empty()
        && threads.iter().all(|(tid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).is_ok_and(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        })
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn call(client: &BusClient, req: Request) -> Result<Response, BusError> {
    client.call(req, TIMEOUT)
}

pub fn create(client: &BusClient, def: StreamDefinition) {
    let r = call(client, Request::CreateStream { definition: def });
    assert!(matches!(r, Ok(Response::Created)), "{r:?}");
}

/// A read of `stream` from its start that waits up to 20 s for a message.
pub fn long_poll_read(stream: &str) -> Request {
    Request::Read {
        stream: stream.into(),
        start_sequence_number: Some(0),
        min_count: Some(1),
        max_count: None,
        wait_ms: Some(20_000),
        max_bytes: None,
        export_identifier: None,
    }
}

pub fn def(name: &str) -> StreamDefinition {
    StreamDefinition::new(name, StrategyOnFull::RejectNewData)
}

pub fn append(client: &BusClient, stream: &str, payload: &[u8]) -> Result<i64, BusError> {
    match call(
        client,
        Request::Append {
            stream: stream.into(),
            payload: payload.to_vec(),
        },
    )? {
        Response::Appended {
            sequence_number, ..
        } => Ok(sequence_number),
        other => panic!("unexpected {other:?}"),
    }
}

/// Starts a `store-bench append` load client process; its stdout lists
/// `ack <id> <seq>` lines.
pub fn load_client(
    root: &Path,
    stream: &str,
    count: u64,
    concurrency: u64,
    first_id: u64,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_store-bench"))
        .args([
            "append",
            "--root",
            root.to_str().expect("utf-8 path"),
            "--stream",
            stream,
            "--count",
            &count.to_string(),
            "--concurrency",
            &concurrency.to_string(),
            "--payload-bytes",
            "64",
            "--first-id",
            &first_id.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn load client")
}

/// Waits for a load client and returns its acknowledged (id, seq) pairs.
pub fn acks_of(child: Child) -> Vec<(u64, i64)> {
    let out = child.wait_with_output().expect("wait load client");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            if it.next()? != "ack" {
                return None;
            }
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// Reads a whole stream.
pub fn read_all(client: &BusClient, stream: &str) -> Vec<bus_schema::Message> {
    let mut out = Vec::new();
    loop {
        let start = out
            .last()
            .map_or(0, |m: &bus_schema::Message| m.sequence_number + 1);
        match client.call(
            Request::Read {
                stream: stream.into(),
                start_sequence_number: Some(start),
                min_count: Some(1),
                max_count: Some(1000),
                wait_ms: None,
                max_bytes: None,
                export_identifier: None,
            },
            TIMEOUT,
        ) {
            Ok(Response::Messages(m)) => out.extend(m),
            Err(BusError::Remote(e)) if e.kind == bus_schema::ErrorKind::NotEnoughMessages => {
                return out
            }
            other => panic!("read failed: {other:?}"),
        }
    }
}
