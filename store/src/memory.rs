//! Keeps the store's resident memory close to what it really uses.
//!
//! glibc's allocator raises its mmap and trim thresholds after large frees and
//! keeps freed memtable and response buffers in its arenas, so a store that
//! streamed gigabytes would keep tens of MB it no longer needs. Fixing the
//! thresholds and trimming after bursts of writes returns that memory to the
//! kernel. On other C libraries these are no-ops.

/// Allocations above this many bytes get their own mapping, returned on free.
pub const MMAP_THRESHOLD_BYTES: i32 = 256 * 1024;
/// Free memory at the top of the heap above this many bytes is returned.
pub const TRIM_THRESHOLD_BYTES: i32 = 1024 * 1024;
/// Allocator arenas at most (one per thread by default, up to 8 per core).
pub const ARENAS_MAX: i32 = 2;

/// Sets the allocator's thresholds; call once at start-up.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS_MAX);
    }
}

/// Returns free allocator memory to the kernel.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
