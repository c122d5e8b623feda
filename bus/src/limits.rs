//! The open-file limit of processes that hold many descriptors (the store:
//! fjall's cached table and blob files, the log, bus connections; the
//! ingest: one socket per SDK connection).
//!
//! Linux starts most services with a soft limit of 1,024 descriptors and a
//! much higher hard limit (systemd: 524,288). [`raise_open_files`] lifts the
//! soft limit to the hard one at start-up, as any process may; the store
//! then sizes fjall's descriptor cache from what it got
//! (`store::engine::fjall_files_cached`), so it never depends on a limit
//! it does not have.

/// The soft and hard limit on open descriptors, after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The limit now in force.
    pub soft: u64,
    /// The ceiling the soft limit may be raised to.
    pub hard: u64,
    /// The soft limit before it was raised (equal to `soft` if unchanged).
    pub was: u64,
}

/// The current limit on open descriptors (`u64::MAX` for unlimited).
pub fn open_files() -> OpenFiles {
    let l = current();
    OpenFiles {
        soft: count(l.rlim_cur),
        hard: count(l.rlim_max),
        was: count(l.rlim_cur),
    }
}

fn current() -> libc::rlimit {
    let mut l = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit writes into the struct we own. It cannot fail for
    // RLIMIT_NOFILE; if it did, the common default stays in `l`.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
    l
}

/// `rlim_t` is 32 bits wide on some targets (armv7).
#[allow(clippy::useless_conversion)]
fn count(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        u64::from(v)
    }
}

/// Raises the soft limit on open descriptors to the hard limit; call once
/// at start-up. Returns the limits in force afterwards (unchanged if the
/// kernel refused, which it does not for a raise up to the hard limit).
pub fn raise_open_files() -> OpenFiles {
    let l = current();
    let was = count(l.rlim_cur);
    if l.rlim_cur != l.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: l.rlim_max,
            rlim_max: l.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    }
    OpenFiles {
        was,
        ..open_files()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_reports_the_old_one() {
        let before = open_files();
        let after = raise_open_files();
        assert_eq!(after.soft, after.hard);
        assert_eq!(after.hard, before.hard);
        assert_eq!(after.was, before.soft);
        assert_eq!(open_files().soft, after.soft);
    }
}
