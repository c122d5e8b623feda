//! Unix socket paths of any length.
//!
//! A Unix socket address holds at most [`IPC_PATH_BYTES_MAX`] bytes of path,
//! and store roots (Greengrass work directories, test directories) can be
//! longer. A longer path is reached through a descriptor of its directory
//! instead: see [`socket_path`].

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::IPC_PATH_BYTES_MAX;

/// Whether `path` fits in a Unix socket address.
pub(crate) fn fits(path: &Path) -> bool {
    path.as_os_str().len() <= IPC_PATH_BYTES_MAX
}

/// A path to bind or connect a Unix socket at `path`, whatever its length.
///
/// A path that fits (at most [`IPC_PATH_BYTES_MAX`] bytes) is returned
/// unchanged. A longer one is returned as `/proc/self/fd/<n>/<file name>`,
/// where `<n>` is a descriptor of `path`'s directory that this process opens
/// once (`O_PATH`, close-on-exec) and keeps open until it exits, one per
/// distinct directory. The kernel resolves that path at each bind, connect
/// or unlink, so ZeroMQ can reconnect and re-bind with the same string, and
/// the socket file itself lives in the real directory, under that
/// directory's permissions. The path means something only in this process:
/// never hand it to another one.
///
/// `path` is returned unchanged (and the bind or connect then fails on its
/// length, as it would have) when its directory does not exist yet or cannot
/// be opened, when `/proc` does not show the descriptor, or when the file
/// name alone is too long for the short form. A directory removed and made
/// again under the same name is not followed: the descriptor keeps the one
/// it opened.
pub fn socket_path(path: &Path) -> PathBuf {
    if fits(path) {
        return path.to_path_buf();
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_path_buf();
    };
    let Some(fd) = directory_fd(dir) else {
        return path.to_path_buf();
    };
    let short = Path::new(&format!("/proc/self/fd/{fd}")).join(name);
    if fits(&short) {
        short
    } else {
        path.to_path_buf()
    }
}

/// The descriptor kept open for `dir`, opened on first use; `None` when the
/// directory cannot be opened or `/proc/self/fd` does not lead to it.
fn directory_fd(dir: &Path) -> Option<RawFd> {
    static DIRECTORIES: OnceLock<Mutex<HashMap<PathBuf, OwnedFd>>> = OnceLock::new();
    let dir = std::path::absolute(dir).ok()?;
    let mut open = DIRECTORIES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(fd) = open.get(&dir) {
        return Some(fd.as_raw_fd());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(&dir)
        .ok()?;
    let fd = file.as_raw_fd();
    let opened = file.metadata().ok()?;
    let seen = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
    if (seen.dev(), seen.ino()) != (opened.dev(), opened.ino()) {
        return None;
    }
    open.insert(dir, file.into());
    Some(fd)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use super::*;

    /// A fresh directory under the system's temporary directory whose path
    /// is longer than a socket address allows.
    fn long_dir(tag: &str) -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!("bus-sockpath-{tag}-{}", std::process::id()));
        let dir = base.join("d".repeat(60)).join("e".repeat(60));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&dir).unwrap();
        (base, dir)
    }

    #[test]
    fn a_short_path_is_unchanged() {
        let p = Path::new("/run/stream-manager/bus/store.sock");
        assert_eq!(socket_path(p), p);
    }

    #[test]
    fn a_long_path_goes_through_a_descriptor_of_its_directory() {
        let (base, dir) = long_dir("long");
        let path = dir.join("store.sock");
        assert!(!fits(&path), "{} should be too long", path.display());
        let short = socket_path(&path);
        assert!(fits(&short), "{}", short.display());
        assert!(short.starts_with("/proc/self/fd/"), "{}", short.display());
        assert_eq!(short.file_name(), path.file_name());
        assert_eq!(
            std::fs::canonicalize(short.parent().unwrap()).unwrap(),
            std::fs::canonicalize(&dir).unwrap()
        );
        // Same directory, same descriptor; another file name in it too.
        assert_eq!(socket_path(&path), short);
        assert_eq!(
            socket_path(&dir.join("other.sock")).parent(),
            short.parent()
        );
        // A socket bound through the short path is a file in the real
        // directory, and a connect through the long one's short form works.
        let listener = std::os::unix::net::UnixListener::bind(&short).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let made = std::fs::symlink_metadata(&path).unwrap();
        assert!(made.file_type().is_socket());
        assert_eq!(made.permissions().mode() & 0o777, 0o600);
        std::os::unix::net::UnixStream::connect(socket_path(&path)).unwrap();
        drop(listener);
        std::fs::remove_file(&short).unwrap();
        assert!(std::fs::symlink_metadata(&path).is_err());
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn the_store_endpoint_under_a_long_root_is_short_and_makes_its_directory() {
        let (base, dir) = long_dir("endpoint");
        let root = dir.join("root");
        let endpoint = crate::store_endpoint(&root);
        assert!(endpoint.starts_with("ipc:///proc/self/fd/"), "{endpoint}");
        assert!(endpoint.ends_with("/store.sock"), "{endpoint}");
        crate::check_endpoint(&endpoint).unwrap();
        let made = std::fs::metadata(root.join("bus")).unwrap();
        assert_eq!(made.permissions().mode() & 0o777, 0o700);
        assert_eq!(crate::store_endpoint(&root), endpoint);
        std::fs::remove_dir_all(base).unwrap();

        let short = Path::new("/nonexistent-root");
        assert_eq!(
            crate::store_endpoint(short),
            "ipc:///nonexistent-root/bus/store.sock"
        );
        assert!(!short.exists());
    }

    #[test]
    fn a_long_path_stays_unchanged_when_it_cannot_be_shortened() {
        let (base, dir) = long_dir("unchanged");
        let missing = dir.join("missing").join("store.sock");
        assert_eq!(socket_path(&missing), missing);
        let long_name = dir.join("n".repeat(100));
        assert_eq!(socket_path(&long_name), long_name);
        std::fs::remove_dir_all(base).unwrap();
    }
}
