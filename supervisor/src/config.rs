//! The whole system's configuration: the Greengrass parameter names as
//! environment variables, optionally also from a config file of `NAME=value`
//! lines (the environment wins). Validated at start-up: every problem is
//! reported at once, and an unknown `STREAM_MANAGER_*` name is an error, never
//! ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every setting the system knows, with what it means. Names the processes
/// read themselves are passed on to them unchanged.
pub const KNOWN: &[(&str, &str)] = &[
    ("STREAM_MANAGER_STORE_ROOT_DIR", "store root directory"),
    (
        "STREAM_MANAGER_SERVER_PORT",
        "SDK endpoint port (0 = any free port)",
    ),
    ("STREAM_MANAGER_AUTHENTICATE_CLIENT", "true or false"),
    ("STREAM_MANAGER_AUTH_TOKENS_FILE", "file of accepted tokens"),
    (
        "STREAM_MANAGER_SERVER_MAX_FRAME_BYTES",
        "largest request frame",
    ),
    (
        "STREAM_MANAGER_SERVER_MAX_CONNECTIONS",
        "SDK connections at once",
    ),
    (
        "STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH",
        "kbit/s for all exports together",
    ),
    (
        "STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE",
        "concurrent uploads",
    ),
    (
        "STREAM_MANAGER_THREAD_POOL_SIZE",
        "same as STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE",
    ),
    (
        "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
        "S3 multipart part size",
    ),
    (
        "STREAM_MANAGER_READ_ONLY_DIRS",
        "Greengrass v1 only; accepted and unused",
    ),
    ("LOG_LEVEL", "TRACE, DEBUG, INFO, WARN or ERROR"),
];

/// S3 parts are at least this large (the S3 minimum).
pub const S3_MIN_PART_BYTES_MIN: u64 = 5 * 1024 * 1024;

/// The validated settings, as the values each child process gets.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    pub root: PathBuf,
    /// Every known setting that is set, to pass to the children.
    pub vars: BTreeMap<String, String>,
}

fn parse_file(path: &Path, problems: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("config file {}: {e}", path.display()));
            return out;
        }
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) => {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
            None => problems.push(format!(
                "config file {} line {}: expected NAME=value, got {line:?}",
                path.display(),
                n + 1
            )),
        }
    }
    out
}

fn check_number(
    vars: &BTreeMap<String, String>,
    name: &str,
    min: u64,
    max: u64,
    problems: &mut Vec<String>,
) {
    if let Some(v) = vars.get(name) {
        match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => {}
            _ => problems.push(format!(
                "{name} {v:?} must be a whole number from {min} to {max}"
            )),
        }
    }
}

impl SystemConfig {
    /// Reads the environment (`env`, all variables) and an optional file.
    pub fn load(env: &BTreeMap<String, String>, file: Option<&Path>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut vars = file
            .map(|f| parse_file(f, &mut problems))
            .unwrap_or_default();
        for (k, v) in env {
            if k.starts_with("STREAM_MANAGER_") || k == "LOG_LEVEL" {
                vars.insert(k.clone(), v.clone());
            }
        }
        let known = |k: &str| KNOWN.iter().any(|(n, _)| *n == k);
        for k in vars.keys() {
            if !known(k) {
                problems.push(format!(
                    "unknown setting {k} (known: {})",
                    KNOWN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let get = |k: &str| vars.get(k).cloned();
        let root = bus::settings::store_root(&get).unwrap_or_else(|e| {
            problems.push(e);
            PathBuf::new()
        });
        if let Err(e) = bus::settings::log_level(&get) {
            problems.push(e);
        }
        check_number(
            &vars,
            "STREAM_MANAGER_SERVER_PORT",
            0,
            65_535,
            &mut problems,
        );
        if let Some(v) = vars.get("STREAM_MANAGER_AUTHENTICATE_CLIENT") {
            match v.to_ascii_lowercase().as_str() {
                "true" if !vars.contains_key("STREAM_MANAGER_AUTH_TOKENS_FILE") => problems.push(
                    "STREAM_MANAGER_AUTHENTICATE_CLIENT=true needs STREAM_MANAGER_AUTH_TOKENS_FILE"
                        .into(),
                ),
                "true" | "false" => {}
                _ => problems.push(format!(
                    "STREAM_MANAGER_AUTHENTICATE_CLIENT {v:?} must be true or false"
                )),
            }
        }
        if let Err(e) = bus::settings::exporter_max_bandwidth(&get) {
            problems.push(e);
        }
        if let Err(e) = bus::settings::exporter_thread_pool_size(&get) {
            problems.push(e);
        }
        check_number(
            &vars,
            "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
            S3_MIN_PART_BYTES_MIN,
            5 * 1024 * 1024 * 1024,
            &mut problems,
        );
        if problems.is_empty() {
            vars.insert(
                "STREAM_MANAGER_STORE_ROOT_DIR".into(),
                root.display().to_string(),
            );
            Ok(Self { root, vars })
        } else {
            Err(problems)
        }
    }

    /// The control socket of a running system under this root.
    pub fn control_socket(&self) -> PathBuf {
        control_socket(&self.root)
    }
}

pub fn control_socket(root: &Path) -> PathBuf {
    root.join("supervisor.sock")
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
        let e = SystemConfig::load(
            &env(&[
                ("STREAM_MANAGER_SERVER_PORT", "70000"),
                ("STREAM_MANAGER_TYPO", "1"),
                ("LOG_LEVEL", "LOUD"),
                ("STREAM_MANAGER_AUTHENTICATE_CLIENT", "true"),
                (
                    "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
                    "1000",
                ),
            ]),
            None,
        )
        .unwrap_err();
        assert_eq!(e.len(), 5, "{e:?}");
    }

    #[test]
    fn defaults_and_file_values() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sm.conf");
        std::fs::write(
            &f,
            "# comment\nSTREAM_MANAGER_SERVER_PORT=9000\nLOG_LEVEL=DEBUG\n",
        )
        .unwrap();
        let c = SystemConfig::load(&env(&[("LOG_LEVEL", "WARN")]), Some(&f)).unwrap();
        assert_eq!(c.vars["STREAM_MANAGER_SERVER_PORT"], "9000");
        assert_eq!(c.vars["LOG_LEVEL"], "WARN", "the environment wins");
        assert!(c.root.is_absolute());
    }
}
