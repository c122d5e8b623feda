//! The bus: CBOR messages (`bus-schema`) over ZeroMQ, behind one small adapter.
//!
//! This is the only crate that touches ZeroMQ. It uses the `zmq` crate (libzmq,
//! built from source by `zmq-sys`) because the pure-Rust `zeromq` crate does not
//! reconnect a DEALER when the bound peer restarts and has no high-water marks
//! (see ARCHITECTURE.md). It knows envelopes and correlation, not what any request
//! means: that is the store's and the callers' business.
//!
//! - [`BusServer`]: a ROUTER socket bound by the store; single-threaded, polled by
//!   the store's event loop, replies may be sent in any order and at any time.
//! - [`BusClient`]: a DEALER socket owned by one driver task (on the caller's
//!   runtime, or on a thread of its own); any number of threads or async tasks
//!   submit requests through a bounded queue and wait for their own reply.
//!   Every request has a deadline; a peer that restarts or vanishes produces
//!   timeouts or `PeerLost`, never a hang.
//! - [`memory`]: the C allocator's settings for processes that move large
//!   messages through ZeroMQ.
//! - [`limits`]: the open-file limit of processes that hold many descriptors.

mod client;
pub mod limits;
pub mod memory;
mod server;
mod sockpath;

mod threads;
pub use client::{
    BusClient, BusClientConfig, BusReply, MessagesBuffer, PendingReply, RawPendingReply,
};
pub use server::{BusServer, Incoming, PeerId};
pub use sockpath::socket_path;

use bus_schema::{CodecError, ErrorReply};

/// Errors of the bus adapter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("no answer from the store within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the bus client is closed")]
    Closed,
    /// The connection to the peer broke while the request was in flight;
    /// the request may or may not have been carried out.
    #[error("the connection to the store broke while the request was in flight; it may or may not have been carried out")]
    PeerLost,
    #[error("the bus cannot take more requests now: {0}")]
    Backpressure(String),
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("ZeroMQ error on {endpoint}: {source}")]
    Zmq {
        endpoint: String,
        source: zmq::Error,
    },
    #[error("invalid bus endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// The store answered with an error.
    #[error("{0}")]
    Remote(ErrorReply),
}

impl BusError {
    fn zmq(endpoint: &str, source: zmq::Error) -> Self {
        BusError::Zmq {
            endpoint: endpoint.to_string(),
            source,
        }
    }
}

/// Longest path an `ipc://` endpoint may have (Linux `sun_path` is 108 bytes,
/// including the terminating NUL).
pub const IPC_PATH_BYTES_MAX: usize = 107;

/// Checks an endpoint before ZeroMQ sees it, so a too-long socket path gets a
/// clear error instead of a bare `EINVAL`.
pub fn check_endpoint(endpoint: &str) -> Result<(), BusError> {
    if let Some(path) = endpoint.strip_prefix("ipc://") {
        if path.len() > IPC_PATH_BYTES_MAX {
            return Err(BusError::Endpoint {
                endpoint: endpoint.to_string(),
                reason: format!(
                    "socket path is {} bytes; Unix sockets allow at most {IPC_PATH_BYTES_MAX}, \
                     and a longer one works only when its directory exists, can be opened \
                     and /proc is mounted",
                    path.len()
                ),
            });
        }
    } else if !endpoint.starts_with("tcp://") {
        return Err(BusError::Endpoint {
            endpoint: endpoint.to_string(),
            reason: "only ipc:// and tcp:// endpoints are supported".into(),
        });
    }
    Ok(())
}

/// The store's bus endpoint under a store root directory: `<root>/bus/store.sock`,
/// or its short form from [`socket_path`] when that path is too long for a
/// socket address. The short form needs the `bus` directory, so for a long
/// path this creates it (owner-only, as the store does before it binds) when a
/// client asks before the store has started. Resolved in this process: pass the
/// root, never the endpoint, to another process.
pub fn store_endpoint(root: &std::path::Path) -> String {
    let dir = root.join("bus");
    let path = dir.join("store.sock");
    if !sockpath::fits(&path) && !dir.is_dir() {
        // Owner-only, like the store's own `ensure_private_dir`. On failure
        // the long path stays, and binding or connecting says why.
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir);
    }
    format!("ipc://{}", socket_path(&path).display())
}

/// Unix time now, in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
