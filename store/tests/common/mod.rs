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
        let child = Command::new(env!("CARGO_BIN_EXE_store"))
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
