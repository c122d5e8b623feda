//! Scheduling priority of the store's background threads.
//!
//! fjall's flush and compaction workers, the write-ahead log applier and the
//! journal sync run at a lower priority than the thread that answers
//! requests, so that on a busy machine an acknowledgement does not wait for a
//! core behind background work. Nothing is lost by it: the applier catches up
//! whenever the event loop waits, and a full apply queue makes the loop wait
//! (back-pressure). Linux keeps a nice value per thread; elsewhere these are
//! no-ops.

/// Nice value of the background threads (0 is the default, 19 the lowest
/// priority). Measured on 2 cores at a steady 10,000 appends/s through the
/// ingest (`ingest-bench latency`, 3-5 runs each): p99 latency 1.6-2.1 ms
/// with every thread at 0, 0.9-1.4 ms with the background at 10. At 10,
/// against one CPU-bound process at nice 0, a
/// background thread still gets about a tenth of a core (scheduler weights
/// 110 and 1024).
pub const BACKGROUND_NICE: i32 = 10;

/// How long to look for threads another library starts (they name
/// themselves once running), in ms.
pub const NAMED_THREAD_WAIT_MS: u64 = 200;

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`].
pub fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    set_nice(current_tid());
}

/// The calling thread's id, from the system call itself: in the statically
/// linked x86_64 package (static-pie, fat LTO) glibc's `gettid` wrapper
/// ended up as an unresolved weak symbol, and the first call jumped to
/// address 0 (the store died with SIGSEGV in `store-sync`).
#[cfg(target_os = "linux")]
pub fn current_tid() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// Lowers the priority of this process's threads named `name`, waiting up to
/// [`NAMED_THREAD_WAIT_MS`] for `expected` of them to exist.
pub fn lower_threads_named(name: &str, expected: usize) {
    #[cfg(target_os = "linux")]
    {
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(NAMED_THREAD_WAIT_MS);
        loop {
            let found = threads_named(name);
            if found.len() >= expected || std::time::Instant::now() >= deadline {
                for tid in &found {
                    set_nice(*tid);
                }
                if found.len() < expected {
                    tracing::debug!(name, found = found.len(), expected, "threads not found");
                }
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// The threads of process `pid` (`"self"` for this one): id and name.
#[cfg(target_os = "linux")]
pub fn threads_of(pid: &str) -> Vec<(libc::pid_t, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            Some((
                t.file_name().to_str()?.parse().ok()?,
                name.trim_end().to_string(),
            ))
        })
        .collect()
}

#[cfg(target_os = "linux")]
fn threads_named(name: &str) -> Vec<libc::pid_t> {
    threads_of("self")
        .into_iter()
        .filter(|(_, n)| n == name)
        .map(|(tid, _)| tid)
        .collect()
}

#[cfg(target_os = "linux")]
fn set_nice(tid: libc::pid_t) {
    // SAFETY: setpriority only changes a scheduling attribute of one of our
    // own threads; lowering priority needs no privilege.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE) };
    if rc != 0 {
        tracing::debug!(tid, error = %std::io::Error::last_os_error(), "cannot lower thread priority");
    }
}

/// The nice value of thread `tid` (field 19 of its stat line).
#[cfg(all(test, target_os = "linux"))]
fn nice_of(tid: libc::pid_t) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(16)?.parse().ok()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn named_threads_and_the_calling_thread_are_lowered() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let named = std::thread::Builder::new()
            .name("prio-test-bg".into())
            .spawn(move || {
                let _ = rx.recv();
            })
            .unwrap();
        lower_threads_named("prio-test-bg", 1);
        let tids = threads_named("prio-test-bg");
        assert_eq!(tids.len(), 1);
        assert_eq!(nice_of(tids[0]), Some(BACKGROUND_NICE));
        let me = current_tid();
        let other = std::thread::spawn(move || {
            lower_current_thread();
            nice_of(current_tid())
        })
        .join()
        .unwrap();
        assert_eq!(other, Some(BACKGROUND_NICE));
        assert_ne!(nice_of(me), Some(BACKGROUND_NICE), "only the named threads");
        drop(tx);
        named.join().unwrap();
    }
}
