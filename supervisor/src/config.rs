//! Where the running system's control socket is. The configuration itself
//! is `settings::Settings`, shared by every process.

use std::path::{Path, PathBuf};

/// The control socket of a running system under this store root, as a path
/// that fits a Unix socket address whatever the root's length
/// (`bus::socket_path`).
pub fn control_socket(root: &Path) -> PathBuf {
    bus::socket_path(&root.join("supervisor.sock"))
}
