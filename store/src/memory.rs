//! Keeps the store's resident memory close to what it really uses.
//!
//! The store binary allocates through jemalloc (declared in `main.rs` with
//! `jemalloc_with_store_settings!`), set up by [`JEMALLOC_CONF`]. Under glibc's allocator the thread answering
//! requests waited on arena locks while fjall's workers freed flushed
//! memtables (p99 append latency at a steady 10,000/s through the ingest,
//! `ingest-bench latency`, same code otherwise: 1.2-1.7 ms with glibc,
//! 0.9-1.4 ms with jemalloc; before fjall's commits moved off the event loop,
//! 2.6-5.4 ms with glibc and 2.8-3.5 ms with jemalloc).
//! jemalloc keeps freed pages for reuse and returns them to the kernel after
//! a delay; its background thread does that even when the store is idle, so
//! memory after a write burst falls back without any call from the store.
//!
//! ZeroMQ (C++) still allocates with the C library; [`tune_allocator`]
//! (from `bus`, which every process using ZeroMQ shares) fixes glibc's
//! thresholds so that its large message buffers are returned on free.

/// jemalloc's settings, read at start-up (a C string): one background thread
/// returns freed pages to the kernel; pages freed are kept for reuse at most
/// about [`JEMALLOC_DIRTY_DECAY_MS`] ms, then released without a second
/// stage. Measured after writing a 2 GiB backlog at full speed
/// (`store-bench run`): RSS 5 s later 36-39 MiB with these settings, 113 MiB
/// with jemalloc's defaults (10 s decay and no background thread: an idle
/// store never purged).
pub const JEMALLOC_CONF: &[u8] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
/// The `dirty_decay_ms` in [`JEMALLOC_CONF`].
pub const JEMALLOC_DIRTY_DECAY_MS: u64 = 1000;

/// Makes jemalloc, with [`JEMALLOC_CONF`], the allocator of the binary it
/// is invoked in (the `store` binary and the single-binary bundle; once per
/// binary, at the crate root). The binary depends on `tikv-jemallocator`.
#[macro_export]
macro_rules! jemalloc_with_store_settings {
    () => {
        #[global_allocator]
        static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

        /// jemalloc reads its settings from this symbol (named with the
        /// prefix the `tikv-jemalloc-sys` build gives every jemalloc symbol).
        #[export_name = "_rjem_malloc_conf"]
        pub static JEMALLOC_CONF: &[u8; $crate::memory::JEMALLOC_CONF.len()] =
            match $crate::memory::JEMALLOC_CONF.first_chunk() {
                Some(conf) => conf,
                None => unreachable!(),
            };
    };
}

/// The C allocator's settings (shared with the ingest): see
/// [`bus::memory::tune_allocator`].
pub use bus::memory::tune_allocator;

#[cfg(test)]
mod tests {
    #[test]
    fn the_jemalloc_settings_are_one_c_string_with_the_documented_decay() {
        let conf = super::JEMALLOC_CONF;
        assert_eq!(conf.iter().position(|&b| b == 0), Some(conf.len() - 1));
        let text = std::str::from_utf8(&conf[..conf.len() - 1]).unwrap();
        let decay = format!("dirty_decay_ms:{}", super::JEMALLOC_DIRTY_DECAY_MS);
        assert!(text.split(',').any(|kv| kv == decay), "{text}");
    }
}
