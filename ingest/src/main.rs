//! `ingest`: the SDK endpoint process (see `ingest::process`).

// The ingest's allocator, jemalloc (see `bus::memory`).
bus::jemalloc_allocator!();

fn main() -> std::process::ExitCode {
    ingest::process::main()
}
