//! The whole system's configuration, in one place: every setting the
//! processes read (the Greengrass parameter names as environment variables,
//! plus this project's own), validated together with every problem listed
//! at once. The supervisor validates everything before it starts anything
//! (`Settings::load`, environment plus an optional file in systemd
//! `EnvironmentFile` syntax) and passes the result to its children, which
//! read the same settings from their environment (`Settings::from_env`).
//!
//! Also here because every process does them the same way: logging
//! (`logging`), the arguments of the child binaries (`cli`) and the version.

pub mod cli;
pub mod envfile;
pub mod logging;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// `<package version> (<git revision>)`, for `--version`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("STREAM_MANAGER_GIT_REVISION"),
    ")"
);

/// Store root used when `STREAM_MANAGER_STORE_ROOT_DIR` is not set, relative
/// to the working directory.
pub const STORE_ROOT_DIR_DEFAULT: &str = "stream-manager-data";
/// SDK endpoint port when `STREAM_MANAGER_SERVER_PORT` is not set (the
/// SDKs' default).
pub const SERVER_PORT_DEFAULT: u16 = 8088;
/// Metrics port when `STREAM_MANAGER_METRICS_PORT` is not set.
pub const METRICS_PORT_DEFAULT: u16 = 8089;
/// Largest request frame the SDKs can express (their length prefix), bytes.
pub const SERVER_FRAME_BYTES_LIMIT: u32 = 1 << 30;
/// Smallest accepted `STREAM_MANAGER_SERVER_MAX_FRAME_BYTES`.
pub const SERVER_FRAME_BYTES_MIN: u32 = 1024;
/// Largest accepted `STREAM_MANAGER_SERVER_MAX_CONNECTIONS`.
pub const SERVER_CONNECTIONS_LIMIT: usize = 65_536;
/// Largest `STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH`, kbit/s (about 1 Tbit/s:
/// beyond it the budget is as good as unlimited).
pub const EXPORTER_MAX_BANDWIDTH_KBPS_MAX: u64 = 1_000_000_000;
/// Uploads in flight when no pool size is set (the AWS stream manager's
/// default).
pub const EXPORTER_THREAD_POOL_SIZE_DEFAULT: usize = 5;
/// Largest accepted exporter pool size.
pub const EXPORTER_THREAD_POOL_SIZE_MAX: usize = 1024;
/// S3 multipart parts are at least this large (the S3 minimum), bytes.
pub const S3_PART_BYTES_MIN: u64 = 5 * 1024 * 1024;
/// S3 parts are at most this large (the S3 maximum), bytes.
pub const S3_PART_BYTES_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// Largest token file read, bytes.
pub const TOKENS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Log levels `LOG_LEVEL` accepts (the Greengrass names).
pub const LOG_LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

/// Every setting the system knows: name, what it means, its default.
/// `AWS_*` variables (credentials, region, endpoints) are accepted too and
/// reach the exporters unchanged.
pub const KNOWN: &[(&str, &str, &str)] = &[
    (
        "STREAM_MANAGER_STORE_ROOT_DIR",
        "store root directory (data, sockets, ports)",
        STORE_ROOT_DIR_DEFAULT,
    ),
    (
        "STREAM_MANAGER_SERVER_PORT",
        "SDK endpoint port on 127.0.0.1 (0 = any free port, written to <root>/ingest.port)",
        "8088",
    ),
    (
        "STREAM_MANAGER_AUTHENTICATE_CLIENT",
        "true or false: SDK clients must present a token",
        "false",
    ),
    (
        "STREAM_MANAGER_AUTH_TOKENS_FILE",
        "file of accepted tokens, one per line (needed when authenticating)",
        "-",
    ),
    (
        "STREAM_MANAGER_SERVER_MAX_FRAME_BYTES",
        "largest SDK request frame, bytes",
        "the largest message plus 64 KiB",
    ),
    (
        "STREAM_MANAGER_SERVER_MAX_CONNECTIONS",
        "SDK connections at once",
        "1024",
    ),
    (
        "STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH",
        "kbit/s for all exports together",
        "unlimited",
    ),
    (
        "STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE",
        "uploads in flight across all exporters (one pool, by priority)",
        "5",
    ),
    (
        "STREAM_MANAGER_THREAD_POOL_SIZE",
        "other spelling of STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE",
        "5",
    ),
    (
        "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
        "S3 multipart part size, bytes (5 MiB to 5 GiB)",
        "5242880",
    ),
    (
        "STREAM_MANAGER_READ_ONLY_DIRS",
        "Greengrass v1 only; accepted and unused",
        "-",
    ),
    (
        "STREAM_MANAGER_METRICS_PORT",
        "metrics and /healthz on 127.0.0.1 (0 = any free port, written to <root>/metrics.port; off = none)",
        "8089",
    ),
    (
        "LOG_LEVEL",
        "TRACE, DEBUG, INFO, WARN or ERROR",
        "INFO",
    ),
    (
        "LOG_FORMAT",
        "text, or json for one JSON object per line",
        "text",
    ),
    (
        "RUST_LOG",
        "a tracing filter (e.g. store=debug,warn); overrides LOG_LEVEL",
        "-",
    ),
];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The logging settings every process applies (`logging::init`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `tracing` level from `LOG_LEVEL`, lower case.
    pub level: String,
    pub format: LogFormat,
    /// `RUST_LOG`, when set: replaces the filter built from `level`.
    pub filter: Option<String>,
}

/// Where the metrics endpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsPort {
    Off,
    /// 0 = any free port.
    Port(u16),
}

/// The validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Absolute store root.
    pub root: PathBuf,
    /// SDK endpoint port; 0 = any free port.
    pub server_port: u16,
    /// Accepted tokens when clients must authenticate.
    pub tokens: Option<HashSet<String>>,
    pub server_frame_bytes_max: Option<u32>,
    pub server_connections_max: Option<usize>,
    /// The exporters' shared upload budget, bytes/s; `None` = unlimited.
    pub exporter_bandwidth: Option<u64>,
    /// Uploads in flight per exporter process.
    pub exporter_pool_size: usize,
    pub s3_part_bytes: u64,
    pub log: LogSettings,
    pub metrics: MetricsPort,
    /// Every known setting that is set (the root made absolute) and every
    /// `AWS_*` variable from the file: what the children get.
    pub vars: BTreeMap<String, String>,
}

/// Whether `value` of setting `name` stands for the default (see
/// [`Settings::load`]).
fn empty_means_default(name: &str, value: &str) -> bool {
    value.trim().is_empty() && name != "STREAM_MANAGER_STORE_ROOT_DIR"
}

/// Whether `name` is read by this system (and so passed to children).
fn is_ours(name: &str) -> bool {
    name.starts_with("STREAM_MANAGER_") || KNOWN.iter().any(|(n, _, _)| *n == name)
}

impl Settings {
    /// The settings of a child process: from its environment, which the
    /// supervisor filled with validated values.
    pub fn from_env() -> Result<Settings, Vec<String>> {
        let vars: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| is_ours(k)).collect();
        Self::validate(vars, Vec::new())
    }

    /// Reads the environment (`env`: all variables) and an optional file in
    /// systemd `EnvironmentFile` syntax; the environment wins. An empty value
    /// means the default (except for the store root, where it is an error). `AWS_*` names
    /// from the file are passed on (those of the environment are inherited).
    pub fn load(env: &BTreeMap<String, String>, file: Option<&Path>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut vars = BTreeMap::new();
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => match envfile::parse(&text) {
                    Ok(pairs) => {
                        for (k, v) in pairs {
                            if is_ours(&k) || k.starts_with("AWS_") {
                                vars.insert(k, v);
                            } else {
                                problems.push(format!(
                                    "config file {}: unknown setting {k} (known: {}, AWS_*)",
                                    path.display(),
                                    known_names()
                                ));
                            }
                        }
                    }
                    Err(e) => problems.push(format!("config file {}: {e}", path.display())),
                },
                Err(e) => problems.push(format!("config file {}: {e}", path.display())),
            }
        }
        for (k, v) in env {
            if is_ours(k) && !empty_means_default(k, v) {
                vars.insert(k.clone(), v.clone());
            }
        }
        Self::validate(vars, problems)
    }

    fn validate(
        mut vars: BTreeMap<String, String>,
        mut problems: Vec<String>,
    ) -> Result<Self, Vec<String>> {
        // An empty value is the default: Greengrass passes every parameter
        // of a component's configuration, the unset ones as "". Except the
        // store root: an empty one is an error rather than data in the
        // working directory.
        vars.retain(|k, v| !empty_means_default(k, v));
        for k in vars.keys() {
            if k.starts_with("STREAM_MANAGER_") && !KNOWN.iter().any(|(n, _, _)| n == k) {
                problems.push(format!("unknown setting {k} (known: {})", known_names()));
            }
        }
        let get = |k: &str| vars.get(k).map(|v| v.trim().to_string());
        let root = store_root(get("STREAM_MANAGER_STORE_ROOT_DIR")).unwrap_or_else(|e| {
            problems.push(e);
            PathBuf::new()
        });
        let server_port = port(
            "STREAM_MANAGER_SERVER_PORT",
            get("STREAM_MANAGER_SERVER_PORT"),
            SERVER_PORT_DEFAULT,
            &mut problems,
        );
        let authenticate = match get("STREAM_MANAGER_AUTHENTICATE_CLIENT")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                problems.push(format!(
                    "STREAM_MANAGER_AUTHENTICATE_CLIENT {v:?} must be true or false"
                ));
                false
            }
        };
        let tokens = match (authenticate, get("STREAM_MANAGER_AUTH_TOKENS_FILE")) {
            (false, _) => None,
            (true, None) => {
                problems.push(
                    "STREAM_MANAGER_AUTHENTICATE_CLIENT=true needs STREAM_MANAGER_AUTH_TOKENS_FILE (one token per line)"
                        .into(),
                );
                None
            }
            (true, Some(path)) => read_tokens(Path::new(&path))
                .map_err(|e| problems.push(e))
                .ok(),
        };
        let server_frame_bytes_max = number(
            "STREAM_MANAGER_SERVER_MAX_FRAME_BYTES",
            get("STREAM_MANAGER_SERVER_MAX_FRAME_BYTES"),
            u64::from(SERVER_FRAME_BYTES_MIN),
            u64::from(SERVER_FRAME_BYTES_LIMIT),
            "bytes",
            &mut problems,
        )
        .map(|n| n as u32);
        let server_connections_max = number(
            "STREAM_MANAGER_SERVER_MAX_CONNECTIONS",
            get("STREAM_MANAGER_SERVER_MAX_CONNECTIONS"),
            1,
            SERVER_CONNECTIONS_LIMIT as u64,
            "connections",
            &mut problems,
        )
        .map(|n| n as usize);
        let exporter_bandwidth = number(
            "STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH",
            get("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH"),
            1,
            EXPORTER_MAX_BANDWIDTH_KBPS_MAX,
            "kbit/s",
            &mut problems,
        )
        .map(|kbps| kbps * 125);
        let exporter_pool_size = pool_size(&get).unwrap_or_else(|e| {
            problems.push(e);
            EXPORTER_THREAD_POOL_SIZE_DEFAULT
        });
        let s3_part_bytes = number(
            "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
            get("STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES"),
            S3_PART_BYTES_MIN,
            S3_PART_BYTES_MAX,
            "bytes",
            &mut problems,
        )
        .unwrap_or(S3_PART_BYTES_MIN);
        let level = match get("LOG_LEVEL") {
            None => "info".to_string(),
            Some(level) => {
                let upper = level.to_ascii_uppercase();
                if LOG_LEVELS.contains(&upper.as_str()) {
                    upper.to_ascii_lowercase()
                } else {
                    problems.push(format!(
                        "LOG_LEVEL {level:?} is not one of {}",
                        LOG_LEVELS.join(", ")
                    ));
                    "info".to_string()
                }
            }
        };
        let format = match get("LOG_FORMAT").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(v) => {
                problems.push(format!("LOG_FORMAT {v:?} must be text or json"));
                LogFormat::Text
            }
        };
        let filter = get("RUST_LOG").filter(|v| !v.is_empty());
        if let Some(f) = &filter {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(f) {
                problems.push(format!("RUST_LOG {f:?} is not a valid filter: {e}"));
            }
        }
        let metrics = match get("STREAM_MANAGER_METRICS_PORT") {
            Some(v) if v.eq_ignore_ascii_case("off") => MetricsPort::Off,
            None => MetricsPort::Port(METRICS_PORT_DEFAULT),
            Some(v) => match v.parse::<u16>() {
                Ok(p) => MetricsPort::Port(p),
                Err(_) => {
                    problems.push(format!(
                        "STREAM_MANAGER_METRICS_PORT {v:?} must be a port number (0-65535; 0 = any free port) or off"
                    ));
                    MetricsPort::Off
                }
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        vars.insert(
            "STREAM_MANAGER_STORE_ROOT_DIR".into(),
            root.display().to_string(),
        );
        Ok(Settings {
            root,
            server_port,
            tokens,
            server_frame_bytes_max,
            server_connections_max,
            exporter_bandwidth,
            exporter_pool_size,
            s3_part_bytes,
            log: LogSettings {
                level,
                format,
                filter,
            },
            metrics,
            vars,
        })
    }
}

fn known_names() -> String {
    KNOWN
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The absolute store root, or why the value is unusable.
fn store_root(value: Option<String>) -> Result<PathBuf, String> {
    let root = match value {
        Some(v) if v.is_empty() => {
            return Err("STREAM_MANAGER_STORE_ROOT_DIR is set but empty".to_string())
        }
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(STORE_ROOT_DIR_DEFAULT),
    };
    if root.is_absolute() {
        return Ok(root);
    }
    std::env::current_dir()
        .map(|d| d.join(&root))
        .map_err(|e| format!("cannot resolve the store root {}: {e}", root.display()))
}

fn number(
    name: &str,
    value: Option<String>,
    min: u64,
    max: u64,
    unit: &str,
    problems: &mut Vec<String>,
) -> Option<u64> {
    let v = value?;
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            problems.push(format!(
                "{name} {v:?} must be a whole number of {unit} from {min} to {max}"
            ));
            None
        }
    }
}

fn port(name: &str, value: Option<String>, default: u16, problems: &mut Vec<String>) -> u16 {
    match value {
        None => default,
        Some(v) => v.parse::<u16>().unwrap_or_else(|_| {
            problems.push(format!("{name} {v:?} is not a port number (0-65535)"));
            default
        }),
    }
}

/// `STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE` or its other spelling
/// `STREAM_MANAGER_THREAD_POOL_SIZE` (both set: they must agree).
fn pool_size(get: &impl Fn(&str) -> Option<String>) -> Result<usize, String> {
    let mut found: Option<(usize, &str)> = None;
    for name in [
        "STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE",
        "STREAM_MANAGER_THREAD_POOL_SIZE",
    ] {
        let Some(v) = get(name) else { continue };
        let n = match v.parse::<usize>() {
            Ok(n) if (1..=EXPORTER_THREAD_POOL_SIZE_MAX).contains(&n) => n,
            _ => {
                return Err(format!(
                    "{name} {v:?} must be a whole number from 1 to {EXPORTER_THREAD_POOL_SIZE_MAX}"
                ))
            }
        };
        match found {
            Some((m, other)) if m != n => {
                return Err(format!("{other} ({m}) and {name} ({n}) disagree"))
            }
            _ => found = Some((n, name)),
        }
    }
    Ok(found.map_or(EXPORTER_THREAD_POOL_SIZE_DEFAULT, |(n, _)| n))
}

/// The tokens of a token file (one per line; blank lines ignored), or why it
/// cannot be used.
fn read_tokens(path: &Path) -> Result<HashSet<String>, String> {
    use std::io::Read;
    let name = "STREAM_MANAGER_AUTH_TOKENS_FILE";
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(TOKENS_FILE_BYTES_MAX + 1).read_to_string(&mut text))
        .map_err(|e| format!("{name} {} cannot be read: {e}", path.display()))?;
    if text.len() as u64 > TOKENS_FILE_BYTES_MAX {
        return Err(format!(
            "{name} {} is larger than {TOKENS_FILE_BYTES_MAX} bytes",
            path.display()
        ));
    }
    let tokens: HashSet<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        return Err(format!("{name} {} lists no token", path.display()));
    }
    Ok(tokens)
}

/// Creates `dir` (and parents) with owner-only permissions, and tightens an
/// existing one (the store root holds data and control sockets).
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The exit code of a process that refuses its configuration: restarting it
/// cannot help, so the supervisor stops instead of retrying.
pub const EXIT_CONFIG: u8 = 2;

/// Reports every configuration problem of `process` on stderr; returns the
/// exit code for a configuration error ([`EXIT_CONFIG`]).
pub fn report_problems(process: &str, problems: &[String]) -> std::process::ExitCode {
    eprintln!("{process}: invalid configuration:");
    for p in problems {
        eprintln!("  - {p}");
    }
    std::process::ExitCode::from(EXIT_CONFIG)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_problem_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("tokens");
        std::fs::write(&empty, "\n\n").unwrap();
        let e = Settings::load(
            &env(&[
                ("STREAM_MANAGER_SERVER_PORT", "70000"),
                ("STREAM_MANAGER_TYPO", "1"),
                ("LOG_LEVEL", "LOUD"),
                ("LOG_FORMAT", "xml"),
                ("STREAM_MANAGER_AUTHENTICATE_CLIENT", "true"),
                ("STREAM_MANAGER_AUTH_TOKENS_FILE", empty.to_str().unwrap()),
                ("STREAM_MANAGER_SERVER_MAX_CONNECTIONS", "abc"),
                ("STREAM_MANAGER_SERVER_MAX_FRAME_BYTES", "12"),
                ("STREAM_MANAGER_METRICS_PORT", "on"),
                ("RUST_LOG", "store=[[["),
                (
                    "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
                    "1000",
                ),
                ("STREAM_MANAGER_THREAD_POOL_SIZE", "0"),
            ]),
            None,
        )
        .unwrap_err();
        assert_eq!(e.len(), 11, "{e:#?}");
        assert!(e.iter().any(|p| p.contains("lists no token")), "{e:#?}");
    }

    #[test]
    fn defaults() {
        let s = Settings::load(&env(&[("PATH", "/bin")]), None).unwrap();
        assert!(s.root.is_absolute() && s.root.ends_with(STORE_ROOT_DIR_DEFAULT));
        assert_eq!(s.server_port, SERVER_PORT_DEFAULT);
        assert_eq!(s.metrics, MetricsPort::Port(METRICS_PORT_DEFAULT));
        assert_eq!(s.exporter_pool_size, EXPORTER_THREAD_POOL_SIZE_DEFAULT);
        assert_eq!(s.log.format, LogFormat::Text);
        assert!(!s.vars.contains_key("PATH"));
    }

    #[test]
    fn empty_values_are_the_defaults_and_do_not_hide_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sm.conf");
        std::fs::write(&f, "LOG_LEVEL=DEBUG\nSTREAM_MANAGER_SERVER_PORT=\n").unwrap();
        let s = Settings::load(
            &env(&[
                ("LOG_LEVEL", ""),
                ("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH", " "),
                ("STREAM_MANAGER_AUTH_TOKENS_FILE", ""),
            ]),
            Some(&f),
        )
        .unwrap();
        assert_eq!(s.log.level, "debug");
        assert_eq!(s.server_port, SERVER_PORT_DEFAULT);
        assert_eq!(s.exporter_bandwidth, None);
        assert!(!s.vars.contains_key("STREAM_MANAGER_AUTH_TOKENS_FILE"));
        let e = Settings::load(&env(&[("STREAM_MANAGER_STORE_ROOT_DIR", "")]), None).unwrap_err();
        assert!(e.iter().any(|p| p.contains("set but empty")), "{e:?}");
    }

    #[test]
    fn file_values_with_systemd_quoting_and_aws_names() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sm.conf");
        std::fs::write(
            &f,
            "# comment\n; another\nSTREAM_MANAGER_SERVER_PORT=\"9000\"\nLOG_LEVEL='DEBUG'\n\
             AWS_REGION=eu-west-1\nSTREAM_MANAGER_METRICS_PORT = off\n",
        )
        .unwrap();
        let s = Settings::load(&env(&[("LOG_LEVEL", "WARN")]), Some(&f)).unwrap();
        assert_eq!(s.server_port, 9000);
        assert_eq!(s.log.level, "warn", "the environment wins");
        assert_eq!(s.metrics, MetricsPort::Off);
        assert_eq!(s.vars["AWS_REGION"], "eu-west-1");
    }

    #[test]
    fn unknown_names_in_the_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sm.conf");
        std::fs::write(&f, "PORT=1\n").unwrap();
        let e = Settings::load(&env(&[]), Some(&f)).unwrap_err();
        assert!(e[0].contains("unknown setting PORT"), "{e:?}");
    }

    #[test]
    fn pool_size_spellings_must_agree() {
        let e = Settings::load(
            &env(&[
                ("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE", "2"),
                ("STREAM_MANAGER_THREAD_POOL_SIZE", "3"),
            ]),
            None,
        )
        .unwrap_err();
        assert!(e[0].contains("disagree"), "{e:?}");
        let s = Settings::load(&env(&[("STREAM_MANAGER_THREAD_POOL_SIZE", "3")]), None).unwrap();
        assert_eq!(s.exporter_pool_size, 3);
    }
}
