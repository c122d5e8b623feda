//! The allocator of the processes that move large messages through ZeroMQ
//! (the store, the ingest, and every process of the single-binary bundle).
//!
//! Such a binary allocates through jemalloc, declared at its crate root with
//! [`jemalloc_allocator!`](crate::jemalloc_allocator) and set up by
//! [`JEMALLOC_CONF`]. jemalloc is also the C allocator there
//! (`tikv-jemallocator`'s `unprefixed_malloc_on_supported_platforms`), so
//! ZeroMQ's message buffers come from it as well: a catch-up read moves a
//! MiB or more per reply, and with glibc's allocator each such buffer was a
//! mapping of its own, faulted in page by page and unmapped after one use
//! (37% of the ingest's CPU during catch-up reads and 48% of the store's,
//! `perf`); glibc's own defaults instead kept the buffers after they were
//! freed (the ingest peaked at 40 MiB, mean 12 MiB). jemalloc reuses freed
//! pages at once and returns them to the kernel after a delay.
//!
//! Why jemalloc rather than glibc at all, for the store: under glibc the
//! thread answering requests waited on arena locks while fjall's workers
//! freed flushed memtables (p99 append latency at a steady 10,000/s through
//! the ingest, `ingest-bench latency`: 1.2-1.7 ms with glibc, 0.9-1.4 ms with
//! jemalloc).

/// jemalloc's settings, read at start-up (a C string): one background thread
/// returns freed pages to the kernel; pages freed are kept for reuse at most
/// about [`JEMALLOC_DIRTY_DECAY_MS`] ms, then released without a second
/// stage; one arena for all threads (the store's threads hand chunks and
/// replies to each other, and an arena per thread kept freed pages in each).
/// Measured after writing a 2 GiB backlog at full speed (`store-bench run`):
/// store RSS 5 s later 36-39 MiB with a 1 s decay, 113 MiB with jemalloc's
/// defaults (10 s decay and no background thread: an idle process never
/// purged). Under `peer-bench run --only sm` (20 s), one arena and 300 ms
/// against eight arenas and 1 s, two runs each, alternating: store peak RSS
/// 52.0 and 49.4 MiB against 57.9 and 53.7, mean 39.3 and 40.5 against 45.3
/// and 45.1; CPU per message read 0.58-0.60 µs against 0.45-0.54.
pub const JEMALLOC_CONF: &[u8] =
    b"background_thread:true,max_background_threads:1,narenas:1,dirty_decay_ms:300,muzzy_decay_ms:0\0";
/// The `dirty_decay_ms` in [`JEMALLOC_CONF`].
pub const JEMALLOC_DIRTY_DECAY_MS: u64 = 300;
/// The name jemalloc gives its background thread: a process running with
/// [`JEMALLOC_CONF`] has one (tests look for it).
pub const JEMALLOC_BACKGROUND_THREAD: &str = "jemalloc_bg_thd";

/// Makes jemalloc, with [`JEMALLOC_CONF`], the allocator (Rust's and the C
/// library's) of the binary it is invoked in; once per binary, at the crate
/// root. The binary depends on `tikv-jemallocator` with the feature
/// `unprefixed_malloc_on_supported_platforms`.
#[macro_export]
macro_rules! jemalloc_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

        /// jemalloc reads its settings from this symbol (unprefixed: jemalloc
        /// is the C allocator too).
        #[export_name = "malloc_conf"]
        pub static JEMALLOC_CONF: &[u8; $crate::memory::JEMALLOC_CONF.len()] =
            match $crate::memory::JEMALLOC_CONF.first_chunk() {
                Some(conf) => conf,
                None => unreachable!(),
            };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_jemalloc_settings_are_one_c_string_with_the_documented_decay() {
        let conf = super::JEMALLOC_CONF;
        assert_eq!(conf.iter().position(|&b| b == 0), Some(conf.len() - 1));
        let text = std::str::from_utf8(&conf[..conf.len() - 1]).unwrap();
        let decay = format!("dirty_decay_ms:{}", super::JEMALLOC_DIRTY_DECAY_MS);
        assert!(text.split(',').any(|kv| kv == decay), "{text}");
        assert!(text.split(',').any(|kv| kv == "background_thread:true"));
    }
}
