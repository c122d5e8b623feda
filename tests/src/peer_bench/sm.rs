//! stream-manager as a user runs it: the `stream-manager` supervisor with
//! all its children on a temporary root, the SDK endpoint on a free port
//! (`STREAM_MANAGER_SERVER_PORT=0`, then `<root>/ingest.port`), driven
//! through the SDK wire protocol.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ciborium::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{spawn_server, Peer, Workload};
use crate::load::{connect, AppendAnswer, AppendTemplate, Proc};
use crate::wire_client;

/// Largest size of a benchmark stream (RejectNewData must not refuse).
const MAX_STREAM_BYTES: i64 = 64 << 30;

/// A running stream-manager and its streams.
pub struct Sm {
    pub proc: Proc,
    pub port: u16,
    /// Every process: the supervisor, then its children, by name.
    pub pids: Vec<(String, u32)>,
    templates: Vec<AppendTemplate>,
    read_batch: usize,
}

fn stream_name(s: usize) -> String {
    format!("bench-{s}")
}

impl Sm {
    /// Starts `bin_dir/stream-manager` on `root` and creates the streams
    /// (with `flushOnWrite` when `flush`).
    pub async fn start(bin_dir: &Path, root: &Path, w: &Workload, flush: bool) -> Result<Self> {
        let exe = bin_dir.join("stream-manager");
        std::fs::create_dir_all(root)?;
        let data = root.join("data");
        let mut cmd = Command::new(&exe);
        cmd.env("STREAM_MANAGER_STORE_ROOT_DIR", &data)
            .env("STREAM_MANAGER_SERVER_PORT", "0")
            .env("STREAM_MANAGER_METRICS_PORT", "0")
            .env("LOG_LEVEL", "WARN")
            .env("AWS_REGION", "us-east-1");
        let proc = spawn_server(&mut cmd, &root.join("stream-manager.log"))?;
        let started = Instant::now();
        let port_file = data.join("ingest.port");
        let (port, pids) = loop {
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "stream-manager did not come up within 60 s (log: {})",
                    root.join("stream-manager.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Ok(port) = std::fs::read_to_string(&port_file) else {
                continue;
            };
            let Ok(port) = port.trim().parse::<u16>() else {
                continue;
            };
            if let Some(pids) = children(&exe, &data)? {
                break (port, pids);
            }
        };
        let mut all = vec![("stream-manager".to_string(), proc.0.id())];
        all.extend(pids);
        let mut s = wire_client::connect(port);
        wire_client::hello(&mut s);
        for i in 0..w.streams {
            let def = Value::Map(vec![
                ("name".into(), stream_name(i).into()),
                ("strategyOnFull".into(), 0.into()),
                ("maxSize".into(), MAX_STREAM_BYTES.into()),
                ("flushOnWrite".into(), flush.into()),
            ]);
            let status = wire_client::create_def(&mut s, def);
            if status != 0 {
                bail!("creating stream {}: status {status}", stream_name(i));
            }
        }
        Ok(Self {
            proc,
            port,
            pids: all,
            templates: (0..w.streams)
                .map(|i| AppendTemplate::new(&stream_name(i), w.payload))
                .collect(),
            read_batch: w.read_batch,
        })
    }

    /// Stops it as a user does (SIGTERM, 30 s at most, then SIGKILL).
    pub fn stop(mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.proc.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.proc.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The children's names and pids from `stream-manager status --json`, once
/// every one of them runs.
fn children(exe: &Path, data: &Path) -> Result<Option<Vec<(String, u32)>>> {
    let out = Command::new(exe)
        .args(["status", "--json"])
        .env("STREAM_MANAGER_STORE_ROOT_DIR", data)
        .output()
        .context("stream-manager status")?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut pids = Vec::new();
    for p in v["processes"].as_array().into_iter().flatten() {
        match (p["name"].as_str(), p["pid"].as_u64()) {
            (Some(n), Some(pid)) => pids.push((n.to_string(), pid as u32)),
            _ => return Ok(None),
        }
    }
    Ok((!pids.is_empty()).then_some(pids))
}

/// Reads one frame: (opcode, payload) into `buf`.
async fn read_frame(rd: &mut BufReader<OwnedReadHalf>, buf: &mut Vec<u8>) -> Result<u8> {
    let mut h = [0u8; 5];
    rd.read_exact(&mut h).await?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    buf.resize(len.saturating_sub(1), 0);
    rd.read_exact(buf).await?;
    Ok(h[4])
}

/// What the load generator needs of a read response: its request id and
/// status, how many messages it holds and the last one's number.
#[derive(Debug, Default, PartialEq)]
struct ReadAnswer {
    request_id: String,
    status: i64,
    count: u64,
    last: Option<i64>,
}

/// Scans a read response's CBOR in place (no value tree, no payload copy:
/// a client that decodes fully would spend as much CPU as the server it
/// measures). Definite lengths only, as the server writes them.
fn scan_read_answer(mut b: &[u8]) -> Result<ReadAnswer> {
    fn head(b: &mut &[u8]) -> Result<(u8, u64)> {
        let (&first, rest) = b.split_first().context("truncated")?;
        let info = first & 0x1f;
        let used = match info {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => bail!("unsupported CBOR head {first:#x}"),
        };
        let arg = rest.get(..used).context("truncated")?;
        let n = if used == 0 {
            info as u64
        } else {
            arg.iter().fold(0u64, |n, &x| n << 8 | x as u64)
        };
        *b = &rest[used..];
        Ok((first >> 5, n))
    }
    fn skip(b: &mut &[u8]) -> Result<()> {
        match head(b)? {
            (0 | 1 | 7, _) => {}
            (2 | 3, n) => *b = b.get(n as usize..).context("truncated")?,
            (4, n) => (0..n).try_for_each(|_| skip(b))?,
            (5, n) => (0..2 * n).try_for_each(|_| skip(b))?,
            (6, _) => skip(b)?,
            _ => unreachable!(),
        }
        Ok(())
    }
    fn text<'a>(b: &mut &'a [u8]) -> Result<&'a [u8]> {
        match head(b)? {
            (3, n) => {
                let (t, rest) = b.split_at_checked(n as usize).context("truncated")?;
                *b = rest;
                Ok(t)
            }
            other => bail!("expected text, found {other:?}"),
        }
    }
    fn int(b: &mut &[u8]) -> Result<i64> {
        match head(b)? {
            (0, n) => Ok(n as i64),
            (1, n) => Ok(-1 - n as i64),
            other => bail!("expected an integer, found {other:?}"),
        }
    }
    let mut a = ReadAnswer::default();
    let (5, fields) = head(&mut b)? else {
        bail!("a response is a map");
    };
    for _ in 0..fields {
        match text(&mut b)? {
            b"requestId" => a.request_id = String::from_utf8(text(&mut b)?.to_vec())?,
            b"status" => a.status = int(&mut b)?,
            b"messages" => {
                let (4, n) = head(&mut b)? else {
                    bail!("messages is an array");
                };
                a.count = n;
                for _ in 0..n {
                    let (5, keys) = head(&mut b)? else {
                        bail!("a message is a map");
                    };
                    for _ in 0..keys {
                        if text(&mut b)? == b"sequenceNumber" {
                            a.last = Some(int(&mut b)?);
                        } else {
                            skip(&mut b)?;
                        }
                    }
                }
            }
            _ => skip(&mut b)?,
        }
    }
    Ok(a)
}

impl Sm {
    fn read_request(&self, stream: usize, start: i64, out: &mut Vec<u8>) {
        let req = Value::Map(vec![
            ("requestId".into(), stream.to_string().into()),
            ("streamName".into(), stream_name(stream).into()),
            (
                "readMessagesOptions".into(),
                Value::Map(vec![
                    ("desiredStartSequenceNumber".into(), start.into()),
                    ("minMessageCount".into(), 1.into()),
                    ("maxMessageCount".into(), (self.read_batch as i64).into()),
                    ("readTimeoutMillis".into(), 0.into()),
                ]),
            ),
        ]);
        out.extend(wire_client::frame(5, &req));
    }
}

impl Peer for Sm {
    async fn open(&self, _conn: usize) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf)> {
        let (rd, wr) = connect(self.port).await?.into_split();
        Ok((BufReader::with_capacity(256 * 1024, rd), wr))
    }

    fn encode_append(&self, _conn: usize, id: u64, stream: usize, out: &mut Vec<u8>) {
        self.templates[stream].write_for(id, out);
    }

    async fn read_ack(&self, rd: &mut BufReader<OwnedReadHalf>, _next: u64) -> Result<u64> {
        let mut buf = Vec::new();
        let op = read_frame(rd, &mut buf).await?;
        let answer: AppendAnswer = ciborium::from_reader(&buf[..])
            .with_context(|| format!("undecodable answer (operation {op})"))?;
        if op != 9 || answer.status != 0 {
            bail!(
                "append {} failed: operation {op}, status {}",
                answer.request_id,
                answer.status
            );
        }
        Ok(answer.request_id.parse()?)
    }

    async fn read_back(&self, conn: usize, streams: &[(usize, u64)]) -> Result<u64> {
        let (mut rd, mut wr) = self.open(conn).await?;
        // Per stream: next sequence number, messages still to read.
        let mut state: Vec<(usize, i64, u64)> = streams.iter().map(|&(s, n)| (s, 0, n)).collect();
        let mut out = Vec::new();
        for &(s, start, left) in &state {
            if left > 0 {
                self.read_request(s, start, &mut out);
            }
        }
        let mut outstanding = state.iter().filter(|st| st.2 > 0).count();
        wr.write_all(&out).await?;
        let mut read = 0;
        let mut buf = Vec::new();
        while outstanding > 0 {
            let op = read_frame(&mut rd, &mut buf).await?;
            let a = scan_read_answer(&buf).context("read answer")?;
            if op != 10 || a.status != 0 {
                bail!(
                    "read of stream {} failed: status {}",
                    a.request_id,
                    a.status
                );
            }
            let s: usize = a.request_id.parse()?;
            let st = state
                .iter_mut()
                .find(|st| st.0 == s)
                .context("answer for an unknown stream")?;
            let Some(last) = a.last else {
                bail!("empty read of stream {s}");
            };
            st.1 = last + 1;
            st.2 = st.2.saturating_sub(a.count);
            read += a.count;
            outstanding -= 1;
            if st.2 > 0 {
                out.clear();
                self.read_request(s, st.1, &mut out);
                wr.write_all(&out).await?;
                outstanding += 1;
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn a_read_answer_is_scanned_as_a_full_decoder_reads_it() {
        let message = |seq: i64| {
            Value::Map(vec![
                ("streamName".into(), "s1".into()),
                ("sequenceNumber".into(), seq.into()),
                ("ingestTime".into(), 1_700_000_000_000i64.into()),
                ("payload".into(), Value::Bytes(vec![0x5a; 300])),
            ])
        };
        let answer = Value::Map(vec![
            ("requestId".into(), "7".into()),
            ("status".into(), 0.into()),
            ("errorMessage".into(), Value::Null),
            (
                "messages".into(),
                Value::Array(vec![message(40), message(41), message(70_000)]),
            ),
        ]);
        let bytes = encoded(&answer);
        assert_eq!(
            scan_read_answer(&bytes).unwrap(),
            ReadAnswer {
                request_id: "7".into(),
                status: 0,
                count: 3,
                last: Some(70_000),
            }
        );
        let refused = encoded(&Value::Map(vec![
            ("requestId".into(), "8".into()),
            ("status".into(), 3.into()),
        ]));
        let a = scan_read_answer(&refused).unwrap();
        assert_eq!((a.status, a.count, a.last), (3, 0, None));
        assert!(scan_read_answer(&bytes[..bytes.len() - 1]).is_err());
    }
}
