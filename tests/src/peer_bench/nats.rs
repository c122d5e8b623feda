//! NATS JetStream through the NATS text protocol, written by hand: INFO,
//! CONNECT, SUB, PUB with a reply subject, MSG/HMSG, PING/PONG, -ERR. The
//! JetStream API is request/reply on `$JS.API.…` subjects with JSON bodies;
//! a JetStream publish is a PUB whose ack arrives as a MSG on its reply
//! subject (`_INBOX.c<connection>.<id>`, one subscription per connection).
//! Catch-up reads use one pull consumer (AckNone) per stream, fetching
//! batches with `$JS.API.CONSUMER.MSG.NEXT`.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{free_port, spawn_server, tcp, wait_port, Peer, Workload};
use crate::load::Proc as Server;

/// A running nats-server with JetStream, and its streams `s0`, `s1`…
pub struct Nats {
    pub proc: Server,
    pub port: u16,
    payload: Vec<u8>,
    read_batch: usize,
}

/// One message from the server.
struct Msg {
    subject: String,
    /// The status of an HMSG (`NATS/1.0 404 No Messages` → 404).
    status: Option<u16>,
}

impl Nats {
    /// Starts `server` (JetStream on a store under `dir`; with `fsync`,
    /// `sync_interval: always`, which needs nats-server 2.10 or later) and
    /// creates the streams.
    pub async fn start(server: &Path, dir: &Path, w: &Workload, fsync: bool) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let conf = dir.join("nats.conf");
        let sync = if fsync {
            "  sync_interval: always\n"
        } else {
            ""
        };
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: {:?}\n{sync}}}\n",
                dir.join("js").display().to_string()
            ),
        )?;
        let proc = spawn_server(
            Command::new(server).arg("-c").arg(&conf),
            &dir.join("nats-server.log"),
        )?;
        wait_port(port, "nats-server").await?;
        let nats = Self {
            proc,
            port,
            payload: vec![0x5a; w.payload],
            read_batch: w.read_batch,
        };
        let (mut rd, mut wr) = nats.handshake("_INBOX.setup.*").await?;
        for s in 0..w.streams {
            let body = format!(
                r#"{{"name":"s{s}","subjects":["s{s}"],"storage":"file","retention":"limits","discard":"old","num_replicas":1}}"#
            );
            api(
                &mut rd,
                &mut wr,
                &format!("$JS.API.STREAM.CREATE.s{s}"),
                &body,
            )
            .await?;
        }
        Ok(nats)
    }

    /// A connection with one subscription (`sid` 1) on `inbox`.
    async fn handshake(&self, inbox: &str) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf)> {
        let (rd, mut wr) = tcp(self.port).await?.into_split();
        let mut rd = BufReader::with_capacity(256 * 1024, rd);
        let mut line = String::new();
        rd.read_line(&mut line).await?;
        if !line.starts_with("INFO ") {
            bail!("nats-server said {line:?}");
        }
        let connect = r#"{"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"lang":"rust","version":"0","protocol":1}"#;
        wr.write_all(format!("CONNECT {connect}\r\nSUB {inbox} 1\r\nPING\r\n").as_bytes())
            .await?;
        loop {
            line.clear();
            rd.read_line(&mut line).await?;
            match line.trim_end() {
                "PONG" => break,
                l if l.starts_with("-ERR") => bail!("nats-server: {l}"),
                _ => {}
            }
        }
        Ok((rd, wr))
    }
}

/// One JetStream API request on a connection subscribed to
/// `_INBOX.setup.*`; fails on an `error` in the answer.
async fn api(
    rd: &mut BufReader<OwnedReadHalf>,
    wr: &mut OwnedWriteHalf,
    subject: &str,
    body: &str,
) -> Result<serde_json::Value> {
    wr.write_all(format!("PUB {subject} _INBOX.setup.0 {}\r\n{body}\r\n", body.len()).as_bytes())
        .await?;
    let mut buf = Vec::new();
    let m = next_msg(rd, &mut buf).await?;
    if m.status.is_some() {
        bail!("{subject}: status {:?}", m.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&buf)?;
    if v.get("error").is_some() {
        bail!("{subject}: {v}");
    }
    Ok(v)
}

/// Reads up to the next MSG or HMSG (answering nothing: PINGs come every
/// two minutes, longer than a leg); its payload goes into `buf`.
async fn next_msg(rd: &mut BufReader<OwnedReadHalf>, buf: &mut Vec<u8>) -> Result<Msg> {
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).await? == 0 {
            bail!("nats-server closed the connection");
        }
        let mut it = line.split_ascii_whitespace();
        let op = it.next().unwrap_or("");
        let args: Vec<&str> = it.collect();
        let (subject, hdr, total) = match op {
            "MSG" => {
                let n: usize = args.last().context("MSG size")?.parse()?;
                (args[0], 0, n)
            }
            "HMSG" => {
                let n = args.len();
                let h: usize = args.get(n.wrapping_sub(2)).context("HMSG")?.parse()?;
                (args[0], h, args[n - 1].parse()?)
            }
            "-ERR" => bail!("nats-server: {}", line.trim_end()),
            _ => continue, // PING, PONG, +OK, INFO
        };
        buf.resize(total + 2, 0);
        rd.read_exact(buf).await?;
        let status = (hdr > 0).then(|| {
            // "NATS/1.0 404 No Messages\r\n…"
            std::str::from_utf8(&buf[..hdr])
                .ok()
                .and_then(|h| h.split_ascii_whitespace().nth(1))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
        });
        buf.drain(..hdr);
        buf.truncate(total - hdr);
        return Ok(Msg {
            subject: subject.to_string(),
            status,
        });
    }
}

/// The last token of a subject as a number.
fn last_token(subject: &str) -> Result<u64> {
    subject
        .rsplit('.')
        .next()
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("unexpected subject {subject}"))
}

impl Peer for Nats {
    async fn open(&self, conn: usize) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf)> {
        self.handshake(&format!("_INBOX.c{conn}.*")).await
    }

    fn encode_append(&self, conn: usize, id: u64, stream: usize, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "PUB s{stream} _INBOX.c{conn}.{id} {}\r\n",
            self.payload.len()
        );
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(b"\r\n");
    }

    async fn read_ack(&self, rd: &mut BufReader<OwnedReadHalf>, _next: u64) -> Result<u64> {
        let mut buf = Vec::new();
        let m = next_msg(rd, &mut buf).await?;
        if m.status.is_some() || !buf.starts_with(br#"{"stream""#) {
            bail!(
                "publish failed: status {:?}, {}",
                m.status,
                String::from_utf8_lossy(&buf)
            );
        }
        last_token(&m.subject)
    }

    async fn read_back(&self, conn: usize, streams: &[(usize, u64)]) -> Result<u64> {
        let (mut rd, mut wr) = self.handshake(&format!("_INBOX.r{conn}.>")).await?;
        // Per stream: messages left, number of the current fetch, messages
        // it delivered, its size.
        let mut state: Vec<(usize, u64, u64, u64, u64)> =
            streams.iter().map(|&(s, n)| (s, n, 0, 0, 0)).collect();
        let mut out = Vec::new();
        let mut outstanding = 0;
        for st in state.iter_mut() {
            let s = st.0;
            let config = format!(
                r#"{{"stream_name":"s{s}","config":{{"name":"r","durable_name":"r","ack_policy":"none","deliver_policy":"all"}}}}"#
            );
            let subject = format!("$JS.API.CONSUMER.CREATE.s{s}.r");
            out.clear();
            let _ = write!(
                out,
                "PUB {subject} _INBOX.r{conn}.setup {}\r\n{config}\r\n",
                config.len()
            );
            wr.write_all(&out).await?;
            let mut buf = Vec::new();
            let m = next_msg(&mut rd, &mut buf).await?;
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap_or_default();
            if m.status.is_some() || v.get("error").is_some() || v.is_null() {
                bail!(
                    "{subject}: {:?} {}",
                    m.status,
                    String::from_utf8_lossy(&buf)
                );
            }
        }
        out.clear();
        for st in state.iter_mut() {
            if st.1 > 0 {
                self.fetch(conn, st, &mut out);
                outstanding += 1;
            }
        }
        wr.write_all(&out).await?;
        let mut read = 0;
        let mut buf = Vec::new();
        while outstanding > 0 {
            let m = next_msg(&mut rd, &mut buf).await?;
            // Messages come with their own subject (s<stream>), the status
            // closing a fetch on its reply subject (_INBOX.r<conn>.<stream>.<fetch>).
            let (s, fetch) = match m.subject.strip_prefix('s') {
                Some(s) if m.status.is_none() => (s.parse::<usize>()?, None),
                _ => {
                    let mut t = m.subject.rsplit('.');
                    let fetch: u64 = t.next().and_then(|v| v.parse().ok()).context("fetch")?;
                    let s: usize = t.next().and_then(|v| v.parse().ok()).context("stream")?;
                    (s, Some(fetch))
                }
            };
            let st = state
                .iter_mut()
                .find(|st| st.0 == s)
                .context("message for an unknown stream")?;
            if st.4 == 0 || fetch.is_some_and(|f| f != st.2) {
                continue; // the status closing a fetch that was complete
            }
            match m.status {
                None => {
                    st.1 -= 1;
                    st.3 += 1;
                    read += 1;
                    if st.3 < st.4 {
                        continue;
                    }
                }
                Some(code) if st.3 == 0 => {
                    bail!("fetch from s{s} got status {code} with {} left", st.1)
                }
                Some(_) => {}
            }
            outstanding -= 1;
            st.4 = 0;
            if st.1 > 0 {
                out.clear();
                self.fetch(conn, st, &mut out);
                wr.write_all(&out).await?;
                outstanding += 1;
            }
        }
        Ok(read)
    }
}

impl Nats {
    /// Asks for the next batch of a stream (a new fetch number).
    fn fetch(&self, conn: usize, st: &mut (usize, u64, u64, u64, u64), out: &mut Vec<u8>) {
        st.2 += 1;
        st.3 = 0;
        st.4 = st.1.min(self.read_batch as u64);
        let body = format!(r#"{{"batch":{},"no_wait":true}}"#, st.4);
        let _ = write!(
            out,
            "PUB $JS.API.CONSUMER.MSG.NEXT.s{}.r _INBOX.r{conn}.{}.{} {}\r\n{body}\r\n",
            st.0,
            st.0,
            st.2,
            body.len()
        );
    }
}
