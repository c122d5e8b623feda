//! `stream-manager`: the operator's entry point.
//!
//! - `stream-manager [--config FILE] [run]`: validates the whole
//!   configuration, starts the store, waits until it answers, starts the
//!   ingest and the exporters, supervises them in the foreground;
//!   SIGTERM/SIGINT stop intake first, then the store, within deadlines (a
//!   second signal kills at once). A child that exits with the
//!   configuration-error code (2) stops the whole system with that error.
//! - `check`: validates and prints the effective settings.
//! - `status [--json]`, `restart <process>`, `stop`: talk to the running
//!   system through its control socket (`<store root>/supervisor.sock`,
//!   owner-only).
//!
//! Signal handlers only set flags; all work happens in the main loop.

mod children;
mod config;
mod control;
mod metrics;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use children::ChildProc;
use settings::Settings;

/// How long the store has to answer after it starts.
pub const STORE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace given to the ingest and to the exporters (which finish in-flight
/// uploads and commit within 4 s) on shutdown.
pub const INTAKE_STOP_GRACE: Duration = Duration::from_secs(5);
/// Grace given to the store on shutdown (it syncs and writes memtables out).
pub const STORE_STOP_GRACE: Duration = Duration::from_secs(20);
/// Main loop tick.
const TICK: Duration = Duration::from_millis(50);
/// The liveness probe asks the store for its health this often...
pub const LIVENESS_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// ...each probe waiting this long for the answer...
pub const LIVENESS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// ...and a store running that has not answered any probe for this long
/// (alive but stuck: a hung disk, a deadlock) is killed and restarted.
pub const STORE_UNRESPONSIVE_AFTER: Duration = Duration::from_secs(15);
/// Grace given to a stuck store before SIGKILL (it is not expected to
/// handle SIGTERM).
const STUCK_STORE_STOP_GRACE: Duration = Duration::from_secs(1);

/// The processes, in start order: the store first, the others once it
/// answers. Shutdown stops the ingest (intake) first, then the exporters
/// together, then the store.
pub const PROCESSES: [&str; 6] = [
    "store",
    "ingest",
    "export-kinesis",
    "export-s3",
    "export-analytics",
    "export-sitewise",
];

/// The command line.
#[derive(clap::Parser)]
#[command(
    name = "stream-manager",
    version = settings::VERSION,
    about = "A drop-in replacement for the AWS IoT Greengrass stream manager.",
    long_about = "A drop-in replacement for the AWS IoT Greengrass stream manager.\n\n\
        Without a command, validates the configuration, then starts and supervises the store, \
        the SDK endpoint and the four exporters in the foreground. Settings come from the \
        environment (see `stream-manager check`) and, with --config, from a file in systemd \
        EnvironmentFile syntax; the environment wins."
)]
struct Cli {
    /// A file of NAME=value settings (systemd EnvironmentFile syntax).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Start and supervise the whole system in the foreground (the default).
    Run,
    /// Validate the configuration and the installed programs, print the
    /// effective settings, and exit (0 valid, 2 invalid).
    Check,
    /// Show the running system: processes, streams, exports, losses. Exits 0
    /// when healthy, 1 when something is unhealthy (a process not running,
    /// the store not answering, an export failing), 3 when nothing runs.
    Status {
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Restart one process of the running system.
    Restart {
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(PROCESSES))]
        process: String,
    },
    /// Stop the running system (as SIGTERM to the supervisor does).
    Stop,
}

/// Where the supervisor finds the programs it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Programs {
    /// One binary per process, next to this one (`cargo build`'s layout).
    Siblings,
    /// This very executable runs every process, chosen by the name it is
    /// started under (`argv[0]`): the single-binary bundle.
    ThisExecutable,
}

static PROGRAMS: std::sync::OnceLock<Programs> = std::sync::OnceLock::new();

/// The `stream-manager` command, with the programs beside it.
pub fn main() -> ExitCode {
    main_with(Programs::Siblings)
}

/// The `stream-manager` command, starting its processes as `programs` says.
pub fn main_with(programs: Programs) -> ExitCode {
    let _ = PROGRAMS.set(programs);
    use clap::Parser;
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match Settings::load(&env, cli.config.as_deref()) {
        Ok(c) => c,
        Err(problems) => return settings::report_problems("stream-manager", &problems),
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            settings::logging::init("stream-manager", &config.log, &["stream_manager"]);
            run(config)
        }
        Command::Check => check(&config),
        Command::Status { json } => control::client(&config, "status", json),
        Command::Restart { process } => {
            control::client(&config, &format!("restart {process}"), false)
        }
        Command::Stop => control::client(&config, "stop", false),
    }
}

/// The programs the supervisor starts, next to its own, or every one that
/// is missing or not executable.
fn programs() -> Result<Vec<PathBuf>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    if PROGRAMS.get() == Some(&Programs::ThisExecutable) {
        return Ok(PROCESSES.iter().map(|_| exe.clone()).collect());
    }
    let dir = exe
        .parent()
        .map(PathBuf::from)
        .ok_or("cannot find the directory of this program")?;
    let paths: Vec<PathBuf> = PROCESSES.iter().map(|n| dir.join(n)).collect();
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default();
            // SAFETY: access(2) on a NUL-terminated path we own.
            !p.is_file() || unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0
        })
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(paths)
    } else {
        Err(format!(
            "missing or not executable: {} (build every binary: bash scripts/run, or cargo build --release --bins)",
            missing.join(", ")
        ))
    }
}

/// `stream-manager check`.
fn check(config: &Settings) -> ExitCode {
    if let Err(e) = programs() {
        eprintln!("stream-manager: {e}");
        return ExitCode::from(settings::EXIT_CONFIG);
    }
    println!("configuration valid; store root {}", config.root.display());
    for (name, meaning, default) in settings::KNOWN {
        let value = config
            .vars
            .get(*name)
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| format!("(default: {default})"));
        println!("  {name} = {value}\n      {meaning}");
    }
    let aws: Vec<&String> = config
        .vars
        .keys()
        .filter(|k| k.starts_with("AWS_"))
        .collect();
    if !aws.is_empty() {
        println!(
            "  from the config file, for the exporters: {}",
            aws.iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    ExitCode::SUCCESS
}

/// With `STREAM_MANAGER_SERVER_PORT=0` the ingest picks a free port at its
/// first start; later starts keep that port, so clients that learned it keep
/// working across restarts.
fn pin_ingest_port(config: &Settings, procs: &mut [ChildProc]) {
    if config
        .vars
        .get("STREAM_MANAGER_SERVER_PORT")
        .map(String::as_str)
        != Some("0")
    {
        return;
    }
    let Ok(text) = std::fs::read_to_string(config.root.join("ingest.port")) else {
        return;
    };
    if let (Ok(port), Some(p)) = (
        text.trim().parse::<u16>(),
        procs.iter_mut().find(|p| p.name == "ingest"),
    ) {
        p.set_env("STREAM_MANAGER_SERVER_PORT", port.to_string());
    }
}

/// What the control socket asks the main loop to do.
#[derive(Default)]
pub struct Requests {
    pub restart: Vec<String>,
    pub stop: bool,
}

pub struct Shared {
    pub procs: Mutex<Vec<children::ProcStatus>>,
    pub requests: Mutex<Requests>,
}

/// The store's liveness: a thread asks it for its health every
/// [`LIVENESS_PROBE_INTERVAL`] and records when it last answered.
struct Liveness {
    /// When the store last answered (or the clock was reset), in ms since
    /// `epoch`.
    last_answer_ms: Arc<std::sync::atomic::AtomicU64>,
    epoch: Instant,
}

impl Liveness {
    fn start(root: &std::path::Path) -> Liveness {
        let liveness = Liveness {
            last_answer_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            epoch: Instant::now(),
        };
        let (last, epoch, endpoint) = (
            liveness.last_answer_ms.clone(),
            liveness.epoch,
            bus::store_endpoint(root),
        );
        let spawned = std::thread::Builder::new()
            .name("liveness".into())
            .spawn(move || {
                let Ok(client) = bus::BusClient::connect(&endpoint, Default::default()) else {
                    return;
                };
                loop {
                    if matches!(
                        client.call(bus_schema::Request::Health, LIVENESS_PROBE_TIMEOUT),
                        Ok(bus_schema::Response::Health(_))
                    ) {
                        last.store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
                    }
                    std::thread::sleep(LIVENESS_PROBE_INTERVAL);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the liveness probe: {e}");
        }
        liveness
    }

    /// Counts from now, as if the store had just answered (after a start or
    /// a restart).
    fn reset(&self) {
        self.last_answer_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    /// How long a store that has been running for longer than
    /// [`STORE_UNRESPONSIVE_AFTER`] has not answered, if that is longer
    /// than [`STORE_UNRESPONSIVE_AFTER`].
    fn stuck(&self, store: &ChildProc) -> Option<Duration> {
        let up = store.status().uptime_s.map(Duration::from_secs)?;
        let since_answer = self.epoch.elapsed().saturating_sub(Duration::from_millis(
            self.last_answer_ms.load(Ordering::SeqCst),
        ));
        let silent = since_answer.min(up);
        (silent > STORE_UNRESPONSIVE_AFTER).then_some(silent)
    }
}

fn run(config: Settings) -> ExitCode {
    let exes = match programs() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::from(settings::EXIT_CONFIG);
        }
    };
    if let Err(e) = settings::ensure_private_dir(&config.root) {
        tracing::error!("cannot create {}: {e}", config.root.display());
        return ExitCode::from(settings::EXIT_CONFIG);
    }
    let signals = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let s = signals.clone();
        // SAFETY: the handler only increments an atomic counter.
        let r = unsafe {
            signal_hook::low_level::register(sig, move || {
                s.fetch_add(1, Ordering::SeqCst);
            })
        };
        if let Err(e) = r {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::from(2);
        }
    }
    let shared = Arc::new(Shared {
        procs: Mutex::new(Vec::new()),
        requests: Mutex::new(Requests::default()),
    });
    let listener = match control::listen(&config, shared.clone()) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let metrics_listener = match metrics::bind(config.metrics, &config.root) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(settings::EXIT_CONFIG);
        }
    };
    let json = config.log.format == settings::LogFormat::Json;
    let mut procs: Vec<ChildProc> = PROCESSES
        .iter()
        .zip(exes)
        .map(|(name, exe)| ChildProc::new(name, exe, config.vars.clone(), json))
        .collect();
    let started = Instant::now();
    // Store first; the ingest only once the store answers.
    if let Err(e) = procs[0].spawn() {
        tracing::error!("cannot start the store: {e}");
        return ExitCode::from(2);
    }
    let bus = bus::BusClient::connect(&bus::store_endpoint(&config.root), Default::default());
    let ready = bus.as_ref().is_ok_and(|b| {
        let deadline = Instant::now() + STORE_READY_TIMEOUT;
        loop {
            if matches!(
                b.call(bus_schema::Request::Health, Duration::from_millis(200)),
                Ok(bus_schema::Response::Health(_))
            ) {
                break true;
            }
            if Instant::now() > deadline
                || signals.load(Ordering::SeqCst) > 0
                || procs[0].reap(true)
            {
                break false;
            }
        }
    });
    if !ready {
        let signalled = signals.load(Ordering::SeqCst) > 0;
        if signalled {
            tracing::info!("stopping during start-up");
        } else {
            tracing::error!(
                "the store did not become ready ({}); stopping",
                procs[0]
                    .last_exit
                    .clone()
                    .unwrap_or_else(|| "no answer".into())
            );
        }
        procs[0].stop(STORE_STOP_GRACE, &|| signals.load(Ordering::SeqCst) > 1);
        drop(listener);
        return if signalled {
            ExitCode::SUCCESS
        } else if procs[0].last_code == Some(i32::from(settings::EXIT_CONFIG)) {
            ExitCode::from(settings::EXIT_CONFIG)
        } else {
            ExitCode::from(1)
        };
    }
    for p in procs.iter_mut().skip(1) {
        if let Err(e) = p.spawn() {
            tracing::error!("cannot start {}: {e}", p.name);
        }
    }
    let liveness = Liveness::start(&config.root);
    if let Some(l) = metrics_listener {
        metrics::serve(l, shared.clone(), config.root.clone());
    }
    *shared.procs.lock().unwrap_or_else(|p| p.into_inner()) =
        procs.iter().map(ChildProc::status).collect();
    tracing::info!(
        "all processes started in {} ms (store root {})",
        started.elapsed().as_millis(),
        config.root.display()
    );

    let mut handled_signals = 0;
    let mut exit = ExitCode::SUCCESS;
    loop {
        *shared.procs.lock().unwrap_or_else(|p| p.into_inner()) =
            procs.iter().map(ChildProc::status).collect();
        let sigs = signals.load(Ordering::SeqCst);
        let stop_requested = std::mem::take(
            &mut shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .stop,
        );
        if sigs > handled_signals || stop_requested {
            // Only the first signal is consumed here; any later one means
            // "kill now".
            if sigs > handled_signals {
                handled_signals += 1;
            }
            break;
        }
        let restarts = std::mem::take(
            &mut shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .restart,
        );
        for name in restarts {
            if let Some(p) = procs.iter_mut().find(|p| p.name == name) {
                let grace = if p.name == "store" {
                    STORE_STOP_GRACE
                } else {
                    INTAKE_STOP_GRACE
                };
                p.restart_now(grace, &|| {
                    signals.load(Ordering::SeqCst) > handled_signals + 1
                });
            }
        }
        pin_ingest_port(&config, &mut procs);
        let mut refused = None;
        for p in procs.iter_mut() {
            if p.reap(false) && p.last_code == Some(i32::from(settings::EXIT_CONFIG)) {
                refused = Some(p.name);
            }
            p.restart_if_due();
        }
        if let Some(name) = refused {
            // Exit code 2 means "restarting cannot help" (a setting, a port
            // that is taken, a database that cannot be opened): stop with
            // the error instead of restarting in a loop.
            tracing::error!(
                "{name} refused to run (exit code {}; its reason is logged above); stopping everything",
                settings::EXIT_CONFIG
            );
            exit = ExitCode::from(settings::EXIT_CONFIG);
            break;
        }
        if let Some(silent) = liveness.stuck(&procs[0]) {
            tracing::warn!(
                "the store is running but has not answered for {} s; restarting it",
                silent.as_secs()
            );
            procs[0].restart_now(STUCK_STORE_STOP_GRACE, &|| {
                signals.load(Ordering::SeqCst) > handled_signals + 1
            });
            liveness.reset();
        }
        std::thread::sleep(TICK);
    }

    // Shutdown: intake first, then the exporters (they commit what was
    // acknowledged), then the store; a second signal kills.
    tracing::info!("stopping");
    let abort = || signals.load(Ordering::SeqCst) > handled_signals;
    let (store, rest) = procs.split_at_mut(1);
    let (ingest, exporters) = rest.split_at_mut(1);
    ingest[0].stop(INTAKE_STOP_GRACE, &abort);
    let mut exporters: Vec<&mut ChildProc> = exporters.iter_mut().collect();
    children::stop_together(&mut exporters, INTAKE_STOP_GRACE, &abort);
    store[0].stop(STORE_STOP_GRACE, &abort);
    drop(listener);
    tracing::info!("stopped");
    exit
}
