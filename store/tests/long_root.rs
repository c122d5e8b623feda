//! A store root whose bus socket path is longer than a Unix socket address
//! allows: the store serves it, clients reach it, and it stops and restarts
//! cleanly on it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts the store on `root` without touching `root` from this process
/// first (so the store makes `bus/` and binds on its own), and waits until
/// its socket file exists.
fn start_untouched(root: &Path) -> StoreProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_store"))
        .env("STREAM_MANAGER_STORE_ROOT_DIR", root)
        .env("LOG_LEVEL", "WARN")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn store");
    let socket = socket_file(root);
    let start = Instant::now();
    while std::fs::symlink_metadata(&socket).is_err() {
        if let Some(status) = child.try_wait().expect("wait store") {
            panic!("the store exited ({status}) instead of serving on a long root");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the store made no socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    StoreProcess {
        root: root.to_path_buf(),
        child: Some(child),
    }
}

fn socket_file(root: &Path) -> PathBuf {
    root.join("bus").join("store.sock")
}

#[test]
fn a_store_root_longer_than_a_socket_address_works() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir
        .path()
        .join("a".repeat(60))
        .join("b".repeat(60))
        .join("c".repeat(60));
    let socket = socket_file(&root);
    assert!(
        socket.as_os_str().len() > bus::IPC_PATH_BYTES_MAX,
        "{} is short enough to bind directly",
        socket.display()
    );

    let mut store = start_untouched(&root);
    let endpoint = bus::store_endpoint(&root);
    assert!(endpoint.starts_with("ipc:///proc/self/fd/"), "{endpoint}");
    let c = store.client();
    create(&c, def("long"));
    for i in 0..5u8 {
        assert_eq!(append(&c, "long", &[i; 10]).unwrap(), i64::from(i));
    }
    let read = read_all(&c, "long");
    assert_eq!(
        read.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(),
        (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>()
    );

    // A clean stop: libzmq 4.3.4 leaves the socket file (it unlinks only
    // before binding), but nothing answers on it any more.
    let status = store.terminate();
    assert!(status.success(), "{status}");
    let refused = std::os::unix::net::UnixStream::connect(bus::socket_path(&socket));
    assert!(
        refused.is_err(),
        "something still listens on {}",
        socket.display()
    );

    // A restart replaces that file through the short path and binds again,
    // and the client from before reconnects to it.
    let mut store = start_untouched(&root);
    store.wait_ready();
    assert_eq!(append(&c, "long", b"after restart").unwrap(), 5);
    assert_eq!(read_all(&c, "long").len(), 6);
    assert!(store.terminate().success());
}

#[test]
fn a_client_may_ask_before_the_store_made_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("x".repeat(100)).join("y".repeat(60));
    // The client resolves the endpoint (and makes `bus/`) first.
    let client = bus::BusClient::connect(&bus::store_endpoint(&root), Default::default())
        .expect("connect before the store runs");
    let mut store = StoreProcess::start(&root);
    create(&client, def("early"));
    assert_eq!(append(&client, "early", b"x").unwrap(), 0);
    assert!(store.terminate().success());
}
