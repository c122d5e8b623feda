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
