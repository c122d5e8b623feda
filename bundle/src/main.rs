//! `stream-manager-bundle`: every stream-manager process in one executable,
//! for devices (`scripts/package` ships it as `stream-manager`). Started as
//! `stream-manager` (or any name that is not a process's), it is the
//! supervisor, which starts every process as this same executable with the
//! process's name as `argv[0]`; started under a process's name, it is that
//! process. Each still runs in its own address space: the design's process
//! isolation is unchanged, only the code is shared (one copy of the AWS SDK
//! runtime, TLS and ZeroMQ on disk and in the page cache instead of five).
//!
//! Every process of the bundle allocates through jemalloc, the C library's
//! allocations (ZeroMQ's) included (`bus::memory`).

use std::process::ExitCode;

// Every process's allocator (see `bus::memory`).
bus::jemalloc_allocator!();

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
            run()
        }
        None => stream_manager::main_with(stream_manager::Programs::ThisExecutable),
    }
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
}
