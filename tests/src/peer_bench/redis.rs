//! Redis streams through RESP, written by hand: `XADD s<k> * f <payload>`
//! pipelined (answers come in order), catch-up reads with `XRANGE s<k>
//! <after> + COUNT n`.

use std::{io::Write as _, path::Path, process::Command};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{free_port, spawn_server, tcp, wait_port, Peer, Workload};
use crate::load::Proc;

/// A running redis-server with an append-only file.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    /// `XADD s<k> * f <payload>` of each stream, encoded once.
    xadd: Vec<Vec<u8>>,
    read_batch: usize,
}

/// Strings of a reply shorter than this are kept (ids); longer ones (the
/// payloads) are only counted.
const KEEP_BELOW: usize = 64;

/// One reply: the length of its top-level array (-1 for a string or an
/// integer) and its short strings, depth first.
struct Reply {
    len: i64,
    strings: Vec<Vec<u8>>,
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one whole reply; an error reply fails.
async fn read_reply(rd: &mut BufReader<OwnedReadHalf>) -> Result<Reply> {
    let mut line = Vec::new();
    let mut reply = Reply {
        len: -1,
        strings: Vec::new(),
    };
    let mut scratch = Vec::new();
    // Values still to read, per open array.
    let mut left: u64 = 1;
    let mut top = true;
    while left > 0 {
        left -= 1;
        line.clear();
        if rd.read_until(b'\n', &mut line).await? == 0 {
            bail!("redis-server closed the connection");
        }
        let body = line
            .strip_suffix(b"\r\n")
            .context("a reply line without CRLF")?;
        let (kind, rest) = body.split_first().context("empty reply line")?;
        let n = || -> Result<i64> { Ok(std::str::from_utf8(rest)?.parse()?) };
        match kind {
            b'-' => bail!("redis: {}", String::from_utf8_lossy(rest)),
            b'+' | b':' => reply.strings.push(rest.to_vec()),
            b'$' => {
                let len = n()?;
                if len >= 0 {
                    scratch.resize(len as usize + 2, 0);
                    rd.read_exact(&mut scratch).await?;
                    if (len as usize) < KEEP_BELOW {
                        reply.strings.push(scratch[..len as usize].to_vec());
                    }
                }
            }
            b'*' => {
                let len = n()?;
                if top {
                    reply.len = len;
                }
                left += len.max(0) as u64;
            }
            _ => bail!("unexpected reply {}", String::from_utf8_lossy(body)),
        }
        top = false;
    }
    Ok(reply)
}

impl Redis {
    /// Starts `server` on a data directory `dir` with an append-only file
    /// synced every second, or after every write with `always`.
    pub async fn start(server: &Path, dir: &Path, w: &Workload, always: bool) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let mut cmd = Command::new(server);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                if always { "always" } else { "everysec" },
                "--save",
                "",
                "--daemonize",
                "no",
            ]);
        let proc = spawn_server(&mut cmd, &dir.join("redis-server.log"))?;
        wait_port(port, "redis-server").await?;
        let payload = vec![0x5a; w.payload];
        Ok(Self {
            proc,
            port,
            xadd: (0..w.streams)
                .map(|s| command(&[b"XADD", format!("s{s}").as_bytes(), b"*", b"f", &payload]))
                .collect(),
            read_batch: w.read_batch,
        })
    }

    fn xrange(&self, stream: usize, after: &[u8], out: &mut Vec<u8>) {
        let start = if after.is_empty() {
            b"-".to_vec()
        } else {
            [b"(", after].concat()
        };
        out.extend(command(&[
            b"XRANGE",
            format!("s{stream}").as_bytes(),
            &start,
            b"+",
            b"COUNT",
            self.read_batch.to_string().as_bytes(),
        ]));
    }
}

impl Peer for Redis {
    async fn open(&self, _conn: usize) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf)> {
        let (rd, wr) = tcp(self.port).await?.into_split();
        Ok((BufReader::with_capacity(256 * 1024, rd), wr))
    }

    fn encode_append(&self, _conn: usize, _id: u64, stream: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.xadd[stream]);
    }

    async fn read_ack(&self, rd: &mut BufReader<OwnedReadHalf>, next: u64) -> Result<u64> {
        let r = read_reply(rd).await?;
        if r.len != -1 || r.strings.len() != 1 {
            bail!("XADD answered an array of {}", r.len);
        }
        Ok(next)
    }

    async fn read_back(&self, conn: usize, streams: &[(usize, u64)]) -> Result<u64> {
        let (mut rd, mut wr) = self.open(conn).await?;
        let mut out = Vec::new();
        // Replies come in order: the streams whose XRANGE is outstanding.
        let mut queue = std::collections::VecDeque::new();
        let mut left: Vec<u64> = streams.iter().map(|s| s.1).collect();
        for (i, &(s, n)) in streams.iter().enumerate() {
            if n > 0 {
                self.xrange(s, b"", &mut out);
                queue.push_back(i);
            }
        }
        wr.write_all(&out).await?;
        let mut read = 0;
        while let Some(i) = queue.pop_front() {
            let r = read_reply(&mut rd).await?;
            // Each entry: id, field name (short strings kept), value.
            if r.len <= 0 || r.strings.len() != 2 * r.len as usize {
                bail!("XRANGE of s{} gave {} entries", streams[i].0, r.len);
            }
            let n = r.len as u64;
            read += n;
            left[i] = left[i].saturating_sub(n);
            if left[i] > 0 {
                out.clear();
                self.xrange(streams[i].0, &r.strings[r.strings.len() - 2], &mut out);
                wr.write_all(&out).await?;
                queue.push_back(i);
            }
        }
        Ok(read)
    }
}
