//! `store`: the storage process (see `store::process`). Reads its settings
//! from the environment, opens the database under
//! `STREAM_MANAGER_STORE_ROOT_DIR`, serves the bus until SIGTERM/SIGINT or a
//! `Shutdown` request, syncs and exits.

// The store's allocator; see `store::memory`.
store::jemalloc_with_store_settings!();

fn main() -> std::process::ExitCode {
    store::process::main()
}
