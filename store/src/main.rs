//! `store`: the storage process (see `store::process`). Reads its settings
//! from the environment, opens the database under
//! `STREAM_MANAGER_STORE_ROOT_DIR`, serves the bus until SIGTERM/SIGINT or a
//! `Shutdown` request, syncs and exits.

/// The store's allocator; see `store::memory`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its settings from this symbol (named with the prefix the
/// `tikv-jemalloc-sys` build gives every jemalloc symbol).
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: &[u8; store::memory::JEMALLOC_CONF.len()] =
    match store::memory::JEMALLOC_CONF.first_chunk() {
        Some(conf) => conf,
        None => unreachable!(),
    };

fn main() -> std::process::ExitCode {
    store::process::main()
}
