//! ZeroMQ's background threads (one I/O thread and the reaper per
//! context) as batch threads.
//!
//! A process hands a message to its I/O thread through a pipe and wakes it
//! when the pipe was empty. With the normal policy the woken I/O thread
//! preempts the sender at once, carries that one message, and sleeps again:
//! under load the store's event loop was switched out at nearly every reply
//! it sent (perf: half of its context switches were in `send`). A batch
//! thread never preempts on wake-up; it runs when the sender blocks or on
//! another core, and then carries everything queued meanwhile.

use std::collections::HashSet;

fn thread_ids() -> HashSet<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return HashSet::new();
    };
    tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Runs `start` (which creates a context's first socket, and with it the
/// context's threads) and makes the threads that appeared meanwhile batch
/// threads. Best effort: a thread that cannot be changed keeps its policy.
pub(crate) fn start_as_batch<T>(start: impl FnOnce() -> T) -> T {
    let before = thread_ids();
    let started = start();
    #[cfg(target_os = "linux")]
    for tid in thread_ids().difference(&before) {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: changes the scheduling policy of one of this process's
        // threads; the parameter is a valid, initialised struct.
        unsafe {
            libc::sched_setscheduler(*tid, libc::SCHED_BATCH, &param);
        }
    }
    started
}
