//! Settings every process reads the same way: where the store is (its root
//! directory, from which the bus endpoint follows) and `LOG_LEVEL`. Each
//! process validates the rest of its own settings.

use std::path::PathBuf;

/// Store root used when `STREAM_MANAGER_STORE_ROOT_DIR` is not set, relative
/// to the working directory.
pub const STORE_ROOT_DIR_DEFAULT: &str = "stream-manager-data";

/// Log levels `LOG_LEVEL` accepts (the Greengrass names).
pub const LOG_LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

/// The absolute store root from `STREAM_MANAGER_STORE_ROOT_DIR` (or the
/// default), or why the value is unusable.
pub fn store_root(get: &impl Fn(&str) -> Option<String>) -> Result<PathBuf, String> {
    let root = match get("STREAM_MANAGER_STORE_ROOT_DIR") {
        Some(v) if v.trim().is_empty() => {
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

/// The `tracing` level from `LOG_LEVEL` (default `info`), or why the value
/// is unusable.
pub fn log_level(get: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    match get("LOG_LEVEL") {
        None => Ok("info".to_string()),
        Some(level) => {
            let upper = level.trim().to_ascii_uppercase();
            if LOG_LEVELS.contains(&upper.as_str()) {
                Ok(upper.to_ascii_lowercase())
            } else {
                Err(format!(
                    "LOG_LEVEL {level:?} is not one of {}",
                    LOG_LEVELS.join(", ")
                ))
            }
        }
    }
}

/// Creates `dir` (and parents) with owner-only permissions, and tightens an
/// existing one (the store root holds data and control sockets).
pub fn ensure_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Reports every configuration problem of `process` on stderr; returns the
/// exit code for a configuration error (2).
pub fn report_problems(process: &str, problems: &[String]) -> std::process::ExitCode {
    eprintln!("{process}: invalid configuration:");
    for p in problems {
        eprintln!("  - {p}");
    }
    std::process::ExitCode::from(2)
}

/// Largest `STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH`, kbit/s (about 1 Tbit/s:
/// beyond it the budget is as good as unlimited).
pub const EXPORTER_MAX_BANDWIDTH_KBPS_MAX: u64 = 1_000_000_000;

/// Concurrent uploads per exporter process when no pool size is set (the
/// AWS stream manager's default).
pub const EXPORTER_THREAD_POOL_SIZE_DEFAULT: usize = 5;

/// Largest accepted exporter pool size.
pub const EXPORTER_THREAD_POOL_SIZE_MAX: usize = 1024;

/// `STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH` in bytes per second (the setting
/// is kbit/s, 1 kbit = 1000 bits), `None` when unset (unlimited).
pub fn exporter_max_bandwidth(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<u64>, String> {
    let name = "STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH";
    match get(name) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(k) if (1..=EXPORTER_MAX_BANDWIDTH_KBPS_MAX).contains(&k) => Ok(Some(k * 125)),
            _ => Err(format!(
                "{name} {v:?} must be a whole number of kbit/s from 1 to {EXPORTER_MAX_BANDWIDTH_KBPS_MAX}"
            )),
        },
    }
}

/// Concurrent uploads per exporter process, from
/// `STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE` or its other spelling
/// `STREAM_MANAGER_THREAD_POOL_SIZE` (both set: they must agree).
pub fn exporter_thread_pool_size(get: &impl Fn(&str) -> Option<String>) -> Result<usize, String> {
    let names = [
        "STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE",
        "STREAM_MANAGER_THREAD_POOL_SIZE",
    ];
    let mut found: Option<(usize, &str)> = None;
    for name in names {
        let Some(v) = get(name) else { continue };
        let n = match v.trim().parse::<usize>() {
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
