//! The store process: settings, logging, the database lock, the bus, until
//! SIGTERM/SIGINT or a `Shutdown` request. Run by the `store` binary and by
//! the single-binary bundle; the binary that runs it declares the allocator
//! (see [`crate::memory`]).
//!
//! Exit codes: 0 clean stop; 2 bad configuration or a database that cannot be
//! opened (restarting will not help); 3 storage or bus failure while running
//! (a restart reopens a consistent database).

use std::os::fd::AsRawFd;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{ensure_private_dir, StoreConfig};
use crate::engine::Engine;
use crate::server::{Stop, StoreServer};

/// The process, from its command line to its exit code.
pub fn main() -> ExitCode {
    if let Some(code) = settings::cli::handle_child_args(
        "store",
        "The storage process of stream-manager: the only process that opens the database.",
    ) {
        return code;
    }
    let files = bus::limits::raise_open_files();
    let config = match settings::Settings::from_env() {
        Ok(s) => StoreConfig::from_settings(&s),
        Err(problems) => return settings::report_problems("store", &problems),
    };
    settings::logging::init("store", &config.log, &["store", "bus"]);
    tracing::info!(
        limit = files.soft,
        was = files.was,
        fjall_files_cached = crate::engine::fjall_files_cached(),
        "open-file limit"
    );
    match run(&config) {
        Ok(Stop::Requested) => ExitCode::SUCCESS,
        Ok(Stop::StorageFailure(e)) => {
            eprintln!("store: storage failure: {e}");
            ExitCode::from(3)
        }
        Ok(Stop::Bus(e)) => {
            eprintln!("store: bus failure: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("store: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(config: &StoreConfig) -> anyhow::Result<Stop> {
    ensure_private_dir(&config.root)
        .with_context(|| format!("cannot create store root {}", config.root.display()))?;
    let lock = lock_exclusive(&config.lock_path())?;
    ensure_private_dir(&config.root.join("bus"))
        .with_context(|| format!("cannot create {}", config.root.join("bus").display()))?;
    let (signal_rx, signal_tx) = std::os::unix::net::UnixStream::pair()?;
    signal_rx.set_nonblocking(true)?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(sig, signal_tx.try_clone()?)?;
    }
    let opened = std::time::Instant::now();
    let engine = Engine::open(&config.db_dir())?;
    tracing::info!(
        path = %config.db_dir().display(),
        streams = engine.stream_count(),
        open_ms = opened.elapsed().as_millis() as u64,
        "database opened"
    );
    let bus = bus::BusServer::bind(&config.endpoint())?;
    tracing::info!(
        endpoint = bus.endpoint(),
        pid = std::process::id(),
        "store serving"
    );
    let stop = StoreServer::new(engine, bus)
        .with_bandwidth(config.exporter_bandwidth)
        .with_upload_slots(config.exporter_pool_size)
        .run(Some(signal_rx.as_raw_fd()));
    drop(lock);
    Ok(stop)
}

/// Takes an exclusive lock so that two store processes never open one
/// database; the lock goes with the process, however it dies.
fn lock_exclusive(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!(
            "another store process is using {} (lock {} is held)",
            path.parent().unwrap_or(path).display(),
            path.display()
        );
    }
    Ok(file)
}
