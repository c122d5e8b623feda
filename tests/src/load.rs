//! Pieces the load generators (`ingest-bench`, `peer-bench`) share: child
//! processes killed on drop, binaries next to the running one, a pipelined
//! SDK wire-protocol client that encodes its append request once, and
//! percentiles.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::{Context, Result};
use ciborium::Value;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::wire_client;

/// Width of the request ids the load generators send (decimal digits).
pub const ID_DIGITS: usize = 12;

/// A binary next to the running one (`target/<profile>/`).
pub fn exe(name: &str) -> Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join(name))
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A connected, handshaken wire-protocol client.
pub async fn connect(port: u16) -> Result<TcpStream> {
    let mut s = wire_client::connect(port);
    wire_client::hello(&mut s);
    s.set_read_timeout(None)?;
    s.set_nonblocking(true)?;
    let s = TcpStream::from_std(s)?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One append request, encoded once; `write_for` patches the request id.
pub struct AppendTemplate {
    pub frame: Vec<u8>,
    id_at: usize,
}

impl AppendTemplate {
    pub fn new(stream: &str, payload_bytes: usize) -> Self {
        let placeholder = "#".repeat(ID_DIGITS);
        let req = Value::Map(vec![
            ("requestId".into(), placeholder.as_str().into()),
            ("name".into(), stream.into()),
            ("payload".into(), Value::Bytes(vec![0x5a; payload_bytes])),
        ]);
        let frame = wire_client::frame(4, &req);
        let id_at = frame
            .windows(ID_DIGITS)
            .position(|w| w == placeholder.as_bytes())
            .expect("the placeholder is in the frame");
        Self { frame, id_at }
    }

    pub fn write_for(&self, id: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.frame);
        let digits = format!("{id:0width$}", width = ID_DIGITS);
        out[start + self.id_at..start + self.id_at + ID_DIGITS].copy_from_slice(digits.as_bytes());
    }
}

/// What the load generators look at in an AppendMessageResponse.
#[derive(Deserialize)]
pub struct AppendAnswer {
    #[serde(rename = "requestId")]
    pub request_id: String,
    pub status: i64,
}

/// The `p` quantile (0..=1) of sorted durations, in ms (0 when empty).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}
