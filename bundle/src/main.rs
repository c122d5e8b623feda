//! `stream-manager-bundle`: every stream-manager process in one executable,
//! for devices (`scripts/package` ships it as `stream-manager`). Started as
//! `stream-manager` (or any name that is not a process's), it is the
//! supervisor, which starts every process as this same executable with the
//! process's name as `argv[0]`; started under a process's name, it is that
//! process. Each still runs in its own address space: the design's process
//! isolation is unchanged, only the code is shared (one copy of the AWS SDK
//! runtime, TLS and ZeroMQ on disk and in the page cache instead of five).
//!
//! Every process of the bundle allocates through jemalloc with the store's
//! settings (`store::memory`), except that the others return freed pages
//! sooner ([`OTHERS_DIRTY_DECAY_MS`]).

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (see `store::memory::JEMALLOC_CONF`).
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: &[u8; store::memory::JEMALLOC_CONF.len()] =
    match store::memory::JEMALLOC_CONF.first_chunk() {
        Some(conf) => conf,
        None => unreachable!(),
    };

/// A process's entry point.
type Entry = fn() -> ExitCode;

/// The processes this executable can be, by name, and their entry points.
const ROLES: [(&str, Entry); 6] = [
    ("store", store::process::main),
    ("ingest", ingest::process::main),
    ("export-kinesis", export_kinesis::main),
    ("export-s3", export_s3::main),
    ("export-analytics", export_analytics::main),
    ("export-sitewise", export_sitewise::main),
];

/// How long the processes other than the store keep freed pages before
/// returning them, ms (the store keeps them
/// `store::memory::JEMALLOC_DIRTY_DECAY_MS`). With the store's 1 s, the
/// ingest's resident memory peaked at 56 MiB during catch-up reads
/// (`peer-bench run --only sm`), against 36 MiB with glibc's allocator in
/// the separate binaries.
pub const OTHERS_DIRTY_DECAY_MS: isize = 100;

fn main() -> ExitCode {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&arg0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    match ROLES.iter().find(|(role, _)| *role == name) {
        Some((role, run)) => {
            set_process_name(role);
            if *role != "store" {
                set_dirty_decay_ms(OTHERS_DIRTY_DECAY_MS);
            }
            run()
        }
        None => stream_manager::main_with(stream_manager::Programs::ThisExecutable),
    }
}

/// Sets jemalloc's dirty page decay of every arena, present and future.
/// Best effort: an arena that does not exist yet refuses, and a failure only
/// leaves the store's setting in place.
fn set_dirty_decay_ms(ms: isize) {
    fn set(name: &str, mut value: isize) -> bool {
        let Ok(name) = std::ffi::CString::new(name) else {
            return false;
        };
        // SAFETY: a NUL-terminated name and a value of the type jemalloc
        // documents for it (ssize_t); no old value is read.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (&mut value as *mut isize).cast(),
                std::mem::size_of::<isize>(),
            )
        };
        rc == 0
    }
    let mut arenas: u32 = 0;
    let mut len = std::mem::size_of::<u32>();
    // SAFETY: reads an unsigned (the documented type) into `arenas`.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arenas.narenas".as_ptr(),
            (&mut arenas as *mut u32).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc == 0 {
        for i in 0..arenas {
            set(&format!("arena.{i}.dirty_decay_ms"), ms);
        }
    }
    set("arenas.dirty_decay_ms", ms);
}

/// Names the process as its role in `ps`, `top` and `/proc/<pid>/comm`
/// (the kernel takes the executable's file name otherwise).
fn set_process_name(role: &str) {
    let mut name = [0u8; 16];
    let len = role.len().min(15);
    name[..len].copy_from_slice(&role.as_bytes()[..len]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundle_can_be_every_process_the_supervisor_starts() {
        let roles: Vec<&str> = super::ROLES.iter().map(|(name, _)| *name).collect();
        assert_eq!(roles, stream_manager::PROCESSES);
    }

    #[test]
    fn the_other_processes_return_freed_pages_sooner() {
        let read = |name: &std::ffi::CStr| {
            let (mut value, mut len): (isize, usize) = (0, std::mem::size_of::<isize>());
            // SAFETY: reads an ssize_t (the documented type) into `value`.
            let rc = unsafe {
                tikv_jemalloc_sys::mallctl(
                    name.as_ptr(),
                    (&mut value as *mut isize).cast(),
                    &mut len,
                    std::ptr::null_mut(),
                    0,
                )
            };
            assert_eq!(rc, 0);
            value
        };
        assert_eq!(
            read(c"arena.0.dirty_decay_ms"),
            store::memory::JEMALLOC_DIRTY_DECAY_MS as isize
        );
        super::set_dirty_decay_ms(super::OTHERS_DIRTY_DECAY_MS);
        assert_eq!(
            read(c"arena.0.dirty_decay_ms"),
            super::OTHERS_DIRTY_DECAY_MS
        );
        assert_eq!(read(c"arenas.dirty_decay_ms"), super::OTHERS_DIRTY_DECAY_MS);
    }
}
