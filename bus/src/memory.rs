//! The C allocator's settings for processes that move large messages
//! through ZeroMQ (the store, the ingest). ZeroMQ (C++) and, in the ingest,
//! Rust itself allocate with the C library; with glibc's defaults, the
//! buffers of large messages (catch-up reads of 1 MiB and more) stay in the
//! process after they are freed: the ingest peaked at 40 MiB during
//! catch-up reads (mean 12 MiB). [`tune_allocator`] makes such buffers
//! mappings of their own, returned on free, and bounds the arenas. On other
//! C libraries it does nothing.

/// C allocations above this many bytes get their own mapping, returned on free.
pub const MMAP_THRESHOLD_BYTES: i32 = 256 * 1024;
/// Free C heap at the top above this many bytes is returned.
pub const TRIM_THRESHOLD_BYTES: i32 = 1024 * 1024;
/// C allocator arenas at most (one per thread by default, up to 8 per core).
pub const ARENAS_MAX: i32 = 2;

/// Sets the C allocator's thresholds; call once at start-up, before any
/// other thread exists.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; the caller runs
    // it before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS_MAX);
    }
}
