//! Spawning and watching the child processes: each in its own process group
//! with a reset signal mask and a parent-death signal, output captured line
//! by line with the process name attached, restarts with capped, jittered
//! exponential backoff and a restart budget.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// First restart delay.
pub const RESTART_DELAY_MS_MIN: u64 = 100;
/// Longest restart delay.
pub const RESTART_DELAY_MS_MAX: u64 = 30_000;
/// Restarts within `RESTART_WINDOW_MS` beyond which a child is reported as
/// crash-looping (it is still retried, at the longest delay).
pub const RESTART_BUDGET: usize = 5;
pub const RESTART_WINDOW_MS: u64 = 60_000;
/// Longest log line passed on, in bytes; longer lines are cut.
pub const LOG_LINE_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Starting,
    Running,
    Backoff,
    CrashLooping,
    Stopped,
}

/// One supervised process.
pub struct ChildProc {
    pub name: &'static str,
    exe: PathBuf,
    env: BTreeMap<String, String>,
    child: Option<Child>,
    pub state: State,
    pub started: Option<(Instant, SystemTime)>,
    pub restarts: u64,
    pub last_exit: Option<String>,
    /// Exit code of the last exit, when it exited (not killed by a signal).
    pub last_code: Option<i32>,
    /// Child output is JSON log lines (`LOG_FORMAT=json`).
    json: bool,
    recent_restarts: VecDeque<Instant>,
    restart_at: Option<Instant>,
    delay_ms: u64,
}

/// What `status` shows of a process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcStatus {
    pub name: String,
    pub pid: Option<u32>,
    pub state: State,
    pub uptime_s: Option<u64>,
    pub restarts: u64,
    pub last_exit: Option<String>,
}

fn jitter(ms: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(ms);
    // ±25 %.
    let r = h.finish() % 500;
    ms * (750 + r) / 1000
}

impl ChildProc {
    pub fn new(
        name: &'static str,
        exe: PathBuf,
        env: BTreeMap<String, String>,
        json: bool,
    ) -> Self {
        Self {
            name,
            exe,
            env,
            last_code: None,
            json,
            child: None,
            state: State::Stopped,
            started: None,
            restarts: 0,
            last_exit: None,
            recent_restarts: VecDeque::new(),
            restart_at: None,
            delay_ms: RESTART_DELAY_MS_MIN,
        }
    }

    /// Changes a variable for the next start.
    pub fn set_env(&mut self, key: &str, value: String) {
        self.env.insert(key.to_string(), value);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn status(&self) -> ProcStatus {
        ProcStatus {
            name: self.name.to_string(),
            pid: self.pid(),
            state: self.state,
            uptime_s: self
                .started
                .filter(|_| self.child.is_some())
                .map(|(i, _)| i.elapsed().as_secs()),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        }
    }

    /// Starts the process now.
    pub fn spawn(&mut self) -> std::io::Result<()> {
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new(&self.exe);
        // The process's name as its argv[0]: the single-binary bundle runs
        // the role of that name.
        cmd.arg0(self.name)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| {
                !k.starts_with("STREAM_MANAGER_") && !settings::KNOWN.iter().any(|(n, _, _)| n == k)
            }))
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                // If the supervisor dies, even by SIGKILL, the child stops too.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // The supervisor may have died before the line above: then
                // nobody would ever signal us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        for (stream, is_err) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                false,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                true,
            ),
        ] {
            if let Some(s) = stream {
                let (name, json) = (self.name, self.json);
                std::thread::spawn(move || forward(name, s, is_err, json));
            }
        }
        self.child = Some(child);
        self.state = State::Running;
        self.started = Some((Instant::now(), SystemTime::now()));
        Ok(())
    }

    /// Checks whether the process exited; if so records why and schedules a
    /// restart (unless `stopping`). Returns true when it exited now.
    pub fn reap(&mut self, stopping: bool) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        let status = match child.try_wait() {
            Ok(Some(s)) => s,
            _ => return false,
        };
        self.child = None;
        self.last_code = status.code();
        let reason = describe_exit(status);
        self.last_exit = Some(reason.clone());
        if stopping {
            self.state = State::Stopped;
            return true;
        }
        let now = Instant::now();
        self.recent_restarts.push_back(now);
        while self
            .recent_restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_millis(RESTART_WINDOW_MS))
        {
            self.recent_restarts.pop_front();
        }
        let uptime = self.started.map(|(i, _)| i.elapsed()).unwrap_or_default();
        if uptime > Duration::from_millis(RESTART_WINDOW_MS) {
            self.delay_ms = RESTART_DELAY_MS_MIN;
        }
        if self.recent_restarts.len() > RESTART_BUDGET {
            self.state = State::CrashLooping;
            self.delay_ms = RESTART_DELAY_MS_MAX;
            tracing::error!(
                "{} is crash-looping: {} exits within {} s; last: {reason}; retrying every {} s",
                self.name,
                self.recent_restarts.len(),
                RESTART_WINDOW_MS / 1000,
                RESTART_DELAY_MS_MAX / 1000
            );
        } else {
            self.state = State::Backoff;
            tracing::warn!(
                "{} exited ({reason}); restarting in {} ms",
                self.name,
                self.delay_ms
            );
        }
        self.restart_at = Some(now + Duration::from_millis(jitter(self.delay_ms)));
        self.delay_ms = (self.delay_ms * 2).min(RESTART_DELAY_MS_MAX);
        true
    }

    /// Restarts the process if its backoff has passed.
    pub fn restart_if_due(&mut self) {
        if self.restart_at.is_some_and(|t| Instant::now() >= t) {
            self.restart_at = None;
            self.restarts += 1;
            if let Err(e) = self.spawn() {
                self.last_exit = Some(format!("cannot start: {e}"));
                self.restart_at = Some(Instant::now() + Duration::from_millis(self.delay_ms));
            }
        }
    }

    /// Restart on request: stop it, then start again without backoff.
    pub fn restart_now(&mut self, grace: Duration, abort: &dyn Fn() -> bool) {
        self.stop(grace, abort);
        self.restarts += 1;
        self.last_exit = Some("restarted by the operator".into());
        if let Err(e) = self.spawn() {
            self.last_exit = Some(format!("cannot start: {e}"));
        }
    }

    /// SIGTERM, then SIGKILL after `grace` or as soon as `abort()` says so
    /// (a second stop signal); waits for the exit.
    pub fn stop(&mut self, grace: Duration, abort: &dyn Fn() -> bool) {
        stop_together(&mut [self], grace, abort);
    }

    /// Sends SIGTERM to the process group, if running.
    fn begin_stop(&mut self) {
        self.restart_at = None;
        if let Some(child) = self.child.as_ref() {
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
        }
    }

    /// `true` once stopped; past the deadline (or on `abort`) it kills.
    fn poll_stop(&mut self, deadline: Instant, abort: &dyn Fn() -> bool) -> bool {
        let Some(child) = self.child.as_mut() else {
            self.state = State::Stopped;
            return true;
        };
        if let Ok(Some(s)) = child.try_wait() {
            self.last_exit = Some(describe_exit(s));
        } else if Instant::now() >= deadline || abort() {
            // SAFETY: as above.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            self.last_exit = Some("killed (stop deadline passed or second signal)".into());
        } else {
            return false;
        }
        self.child = None;
        self.state = State::Stopped;
        true
    }
}

/// Stops `procs` at once (SIGTERM to all), each within `grace`; whoever is
/// still running at the deadline, or when `abort` says so, is killed.
pub fn stop_together(procs: &mut [&mut ChildProc], grace: Duration, abort: &dyn Fn() -> bool) {
    for p in procs.iter_mut() {
        p.begin_stop();
    }
    let deadline = Instant::now() + grace;
    loop {
        let mut all = true;
        for p in procs.iter_mut() {
            all &= p.poll_stop(deadline, abort);
        }
        if all {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited".into(),
    }
}

/// Copies a child's output to our stderr, one line at a time: in text
/// mode with the process name in front; in JSON mode its JSON lines as they
/// are (they name the process), any other line made a JSON line of it.
fn forward(name: &str, s: Box<dyn std::io::Read + Send>, is_err: bool, json: bool) {
    let mut reader = BufReader::new(s);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader
            .by_ref()
            .take(LOG_LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let cut = line.last() != Some(&b'\n');
                if !cut {
                    line.pop();
                }
                let mut err = std::io::stderr().lock();
                if json && line.first() == Some(&b'{') && !cut {
                    let _ = err.write_all(&line);
                } else if json {
                    let text = String::from_utf8_lossy(&line);
                    let text = if cut {
                        format!("{text} [cut]")
                    } else {
                        text.into()
                    };
                    let level = if is_err { "ERROR" } else { "INFO" };
                    let _ =
                        err.write_all(settings::logging::json_line(name, level, &text).as_bytes());
                } else {
                    let _ = write!(err, "[{name}] ");
                    let _ = err.write_all(&line);
                    if cut {
                        let _ = err.write_all(b" [cut]");
                    }
                }
                let _ = err.write_all(b"\n");
            }
        }
    }
}
