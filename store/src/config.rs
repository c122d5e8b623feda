//! The store process's settings, read from the Greengrass-named environment
//! variables and validated at start-up (every problem reported at once).

use std::path::PathBuf;

pub use bus::settings::{LOG_LEVELS, STORE_ROOT_DIR_DEFAULT};

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Absolute store root directory.
    pub root: PathBuf,
    /// `tracing` filter directive derived from `LOG_LEVEL`.
    pub log_filter: String,
    /// The exporters' shared upload budget, bytes/s (`None`: unlimited).
    pub exporter_bandwidth: Option<u64>,
}

impl StoreConfig {
    /// Reads the settings from a variable lookup (the environment in `main`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let root = bus::settings::store_root(&get).unwrap_or_else(|e| {
            problems.push(e);
            PathBuf::new()
        });
        let log_filter = bus::settings::log_level(&get).unwrap_or_else(|e| {
            problems.push(e);
            "info".to_string()
        });
        let exporter_bandwidth = bus::settings::exporter_max_bandwidth(&get).unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        if problems.is_empty() {
            Ok(Self {
                root,
                log_filter,
                exporter_bandwidth,
            })
        } else {
            Err(problems)
        }
    }

    pub fn db_dir(&self) -> PathBuf {
        self.root.join("db")
    }

    pub fn endpoint(&self) -> String {
        bus::store_endpoint(&self.root)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("store.lock")
    }
}

pub use bus::settings::ensure_private_dir;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported() {
        let err = StoreConfig::from_lookup(|k| match k {
            "STREAM_MANAGER_STORE_ROOT_DIR" => Some("  ".into()),
            "LOG_LEVEL" => Some("LOUD".into()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
    }

    #[test]
    fn defaults() {
        let c = StoreConfig::from_lookup(|_| None).unwrap();
        assert!(c.root.is_absolute());
        assert!(c.root.ends_with(STORE_ROOT_DIR_DEFAULT));
        assert_eq!(c.log_filter, "info");
    }
}
