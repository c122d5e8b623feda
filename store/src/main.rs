//! `store`: the storage process (see `store::process`). Reads its settings
//! from the environment, opens the database under
//! `STREAM_MANAGER_STORE_ROOT_DIR`, serves the bus until SIGTERM/SIGINT or a
//! `Shutdown` request, syncs and exits.

// The store's allocator, jemalloc (see `bus::memory`).
bus::jemalloc_allocator!();

fn main() -> std::process::ExitCode {
    store::process::main()
}
