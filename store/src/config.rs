//! The store process's settings: its part of the system's validated
//! configuration (`settings::Settings`).

use std::path::PathBuf;

pub use settings::{ensure_private_dir, LogSettings};

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Absolute store root directory.
    pub root: PathBuf,
    pub log: LogSettings,
    /// The exporters' shared upload budget, bytes/s (`None`: unlimited).
    pub exporter_bandwidth: Option<u64>,
    /// Uploads in flight across all exporters.
    pub exporter_pool_size: usize,
}

impl StoreConfig {
    pub fn from_settings(s: &settings::Settings) -> Self {
        Self {
            root: s.root.clone(),
            log: s.log.clone(),
            exporter_bandwidth: s.exporter_bandwidth,
            exporter_pool_size: s.exporter_pool_size,
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
