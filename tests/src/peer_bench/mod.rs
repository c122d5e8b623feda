//! The side-by-side benchmark (`peer-bench`): the same load against
//! stream-manager (the SDK wire protocol), NATS JetStream (the NATS text
//! protocol) and Redis (RESP streams), each client written here by hand on
//! tokio. `run` drives the pipelined appends and the catch-up reads of every
//! system the same way; `sm`, `nats` and `redis` start a system and speak
//! its protocol; `report` makes the table and the chart.

pub mod nats;
pub mod redis;
pub mod report;
pub mod sm;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::load::Proc;
use crate::{cpu_secs, peak_rss_kib, pss_kib, rss_kib};

/// What every system is driven with.
#[derive(Clone, Debug)]
pub struct Workload {
    pub connections: usize,
    pub in_flight: usize,
    pub streams: usize,
    pub payload: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Messages asked for per catch-up read request.
    pub read_batch: usize,
}

impl Workload {
    /// The workload of issue 13: 1 KiB, 8 connections x 64 in flight, 10
    /// streams, 20 s measured after 2 s of warm-up, reads of 1,000.
    pub fn full(seconds: f64) -> Self {
        Self {
            connections: 8,
            in_flight: 64,
            streams: 10,
            payload: 1024,
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs_f64(seconds),
            read_batch: 1000,
        }
    }

    /// The smoke mode: tiny counts, about a second per leg.
    pub fn smoke() -> Self {
        Self {
            connections: 2,
            in_flight: 4,
            streams: 3,
            payload: 1024,
            warmup: Duration::from_millis(200),
            measure: Duration::from_secs(1),
            read_batch: 100,
        }
    }

    /// The stream connection `conn`'s append `id` goes to (round robin).
    pub fn stream_of(&self, conn: usize, id: u64) -> usize {
        (conn + id as usize) % self.streams
    }
}

/// One system's client side, per connection. `conn` numbers connections
/// 0.. so that clients can keep their reply subjects apart.
#[allow(async_fn_in_trait)] // Driven on one thread; no Send needed.
pub trait Peer {
    /// A connection ready for requests.
    async fn open(&self, conn: usize) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf)>;
    /// Appends the request for append `id` of connection `conn` to `stream` to `out`.
    fn encode_append(&self, conn: usize, id: u64, stream: usize, out: &mut Vec<u8>);
    /// Reads one append answer and returns its id; `next` is the id of the
    /// oldest unanswered append (for protocols that answer in order).
    async fn read_ack(&self, rd: &mut BufReader<OwnedReadHalf>, next: u64) -> Result<u64>;
    /// Reads back `count` messages from each of `streams` on one connection
    /// (one request per stream in flight) and returns how many it read.
    async fn read_back(&self, conn: usize, streams: &[(usize, u64)]) -> Result<u64>;
}

/// What one system did in one leg.
#[derive(Clone, Debug, Default)]
pub struct LegResult {
    pub appends_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Catch-up read rate, when the leg read back.
    pub reads_per_s: Option<f64>,
    pub appended: u64,
    pub procs: Vec<ProcFigures>,
    /// The highest sum of the proportional set sizes of the system's
    /// processes (the load generator left out) at one sampling instant,
    /// KiB: what the whole system occupied at its peak, each page shared
    /// between its processes counted once.
    pub peak_pss_total_kib: u64,
}

/// Resident memory and CPU of one process over a leg.
#[derive(Clone, Debug, Default)]
pub struct ProcFigures {
    pub name: String,
    pub peak_rss_kib: u64,
    pub mean_rss_kib: u64,
    /// CPU seconds per second over the measured append window.
    pub cores: f64,
    pub us_per_append: f64,
    pub us_per_read: Option<f64>,
}

/// Polls every future of `futs` until all are done; their outputs in order.
pub async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future is done"))
        .collect()
}

/// The clock of one append run: everything in ns since `epoch`.
#[derive(Clone, Copy)]
struct Window {
    epoch: Instant,
    from_ns: u64,
    to_ns: u64,
}

impl Window {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

const RING_PER_SLOT: usize = 1024;

/// What one connection measured.
#[derive(Default)]
struct ConnStats {
    /// Answers received inside the window.
    in_window: u64,
    /// Latency (µs) of every append sent inside the window.
    latencies_us: Vec<u32>,
    /// Appends acknowledged per stream (all of them, warm-up included).
    acked: Vec<u64>,
}

/// One connection: pipelined appends, up to `in_flight` outstanding, until
/// the window closes; then waits for every answer.
async fn append_conn<P: Peer>(
    peer: &P,
    w: &Workload,
    conn: usize,
    win: Window,
) -> Result<ConnStats> {
    let (mut rd, mut wr) = peer.open(conn).await?;
    let slots = Semaphore::new(w.in_flight);
    // Send time of each outstanding append, by id modulo the ring's size (at
    // most `in_flight` are outstanding; they collide only when one answer
    // is overtaken by RING_PER_SLOT x in_flight others).
    let ring_len = w.in_flight * RING_PER_SLOT;
    let ring: Vec<Cell<u64>> = (0..ring_len).map(|_| Cell::new(0)).collect();
    let stats = RefCell::new(ConnStats {
        acked: vec![0; w.streams],
        ..Default::default()
    });
    let writer = async {
        let mut out = Vec::new();
        let mut next = 0u64;
        loop {
            slots.acquire().await?.forget();
            if win.now_ns() >= win.to_ns {
                slots.add_permits(1);
                break;
            }
            let mut batch = 1;
            while slots.try_acquire().map(|p| p.forget()).is_ok() {
                batch += 1;
            }
            out.clear();
            let now = win.now_ns();
            for id in next..next + batch {
                ring[id as usize % ring_len].set(now);
                peer.encode_append(conn, id, w.stream_of(conn, id), &mut out);
            }
            next += batch;
            wr.write_all(&out).await?;
        }
        // Every answer is in once all the slots are back.
        slots.acquire_many(w.in_flight as u32).await?.forget();
        anyhow::Ok(wr)
    };
    let reader = async {
        let mut received = 0u64;
        loop {
            let id = peer.read_ack(&mut rd, received).await?;
            let now = win.now_ns();
            let sent = ring[id as usize % ring_len].get();
            {
                let mut st = stats.borrow_mut();
                st.acked[w.stream_of(conn, id)] += 1;
                if (win.from_ns..win.to_ns).contains(&now) {
                    st.in_window += 1;
                }
                if (win.from_ns..win.to_ns).contains(&sent) {
                    st.latencies_us
                        .push(((now.saturating_sub(sent)) / 1000).min(u32::MAX as u64) as u32);
                }
            }
            received += 1;
            slots.add_permits(1);
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    };
    tokio::select! {
        w = writer => { w?; }
        r = reader => { r?; bail!("reader stopped"); }
    }
    Ok(stats.into_inner())
}

/// Samples the resident memory of `pids` until `win` closes, and their CPU
/// time at its start and end.
struct Sampler {
    pids: Vec<(String, u32)>,
    /// The load generator's index in `pids` (left out of the PSS total).
    own: usize,
    peak: Vec<Cell<u64>>,
    sum: Vec<Cell<u64>>,
    peak_pss_total: Cell<u64>,
    samples: Cell<u64>,
}

impl Sampler {
    fn new(pids: Vec<(String, u32)>, own: usize) -> Self {
        let n = pids.len();
        Self {
            pids,
            own,
            peak: (0..n).map(|_| Cell::new(0)).collect(),
            sum: (0..n).map(|_| Cell::new(0)).collect(),
            peak_pss_total: Cell::new(0),
            samples: Cell::new(0),
        }
    }

    fn sample(&self) {
        let mut pss_total = 0;
        for (i, (_, pid)) in self.pids.iter().enumerate() {
            let r = rss_kib(*pid);
            self.peak[i].set(self.peak[i].get().max(r));
            self.sum[i].set(self.sum[i].get() + r);
            if i != self.own {
                pss_total += pss_kib(*pid);
            }
        }
        self.peak_pss_total
            .set(self.peak_pss_total.get().max(pss_total));
        self.samples.set(self.samples.get() + 1);
    }

    fn cpu(&self) -> Vec<f64> {
        self.pids.iter().map(|(_, p)| cpu_secs(*p)).collect()
    }

    /// Samples every 200 ms until `until`.
    async fn run_until(&self, until: Instant) {
        while Instant::now() < until {
            self.sample();
            tokio::time::sleep(Duration::from_millis(200).min(until - Instant::now())).await;
        }
    }

    /// Samples every 200 ms until `fut` is done; returns its output.
    async fn during<T>(&self, fut: impl Future<Output = T>) -> T {
        tokio::pin!(fut);
        loop {
            self.sample();
            tokio::select! {
                v = &mut fut => return v,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// Runs the appends (and, with `read_back`, the catch-up reads) of one leg
/// against `peer`, whose processes are `pids` (the load generator is added).
pub async fn run_leg<P: Peer>(
    peer: &P,
    w: &Workload,
    mut pids: Vec<(String, u32)>,
    read_back: bool,
) -> Result<LegResult> {
    pids.push(("load generator".into(), std::process::id()));
    let own = pids.len() - 1;
    let sampler = Sampler::new(pids, own);
    let epoch = Instant::now();
    let win = Window {
        epoch,
        from_ns: w.warmup.as_nanos() as u64,
        to_ns: (w.warmup + w.measure).as_nanos() as u64,
    };
    let conns = join_all(
        (0..w.connections)
            .map(|c| append_conn(peer, w, c, win))
            .collect(),
    );
    let cpu_window = async {
        sampler.run_until(epoch + w.warmup).await;
        let start = sampler.cpu();
        sampler.run_until(epoch + w.warmup + w.measure).await;
        (start, sampler.cpu())
    };
    let (conns, (cpu_start, cpu_end)) = tokio::join!(conns, cpu_window);
    let mut acked = vec![0u64; w.streams];
    let mut in_window = 0;
    let mut lat = Vec::new();
    for c in conns {
        let c = c?;
        in_window += c.in_window;
        lat.extend(c.latencies_us);
        for (a, b) in acked.iter_mut().zip(c.acked) {
            *a += b;
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let secs = w.measure.as_secs_f64();
    let mut result = LegResult {
        appends_per_s: in_window as f64 / secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        appended: acked.iter().sum(),
        ..Default::default()
    };
    let mut us_per_read = None;
    if read_back {
        // Stream s is read on connection s % connections.
        let per_conn: Vec<Vec<(usize, u64)>> = (0..w.connections)
            .map(|c| {
                (0..w.streams)
                    .filter(|s| s % w.connections == c)
                    .map(|s| (s, acked[s]))
                    .collect()
            })
            .collect();
        let cpu_before = sampler.cpu();
        let started = Instant::now();
        let reads = sampler
            .during(join_all(
                per_conn
                    .iter()
                    .enumerate()
                    .map(|(c, streams)| peer.read_back(c, streams))
                    .collect(),
            ))
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let mut read = 0;
        for r in reads {
            read += r?;
        }
        if read != result.appended {
            bail!("read back {read} messages of {}", result.appended);
        }
        result.reads_per_s = Some(read as f64 / elapsed);
        let cpu_after = sampler.cpu();
        us_per_read = Some(
            cpu_before
                .iter()
                .zip(cpu_after)
                .map(|(a, b)| (b - a) * 1e6 / read.max(1) as f64)
                .collect::<Vec<_>>(),
        );
    }
    for (i, (name, pid)) in sampler.pids.iter().enumerate() {
        let samples = sampler.samples.get().max(1);
        let hwm = if i == own { 0 } else { peak_rss_kib(*pid) };
        let used = cpu_end[i] - cpu_start[i];
        result.procs.push(ProcFigures {
            name: name.clone(),
            peak_rss_kib: sampler.peak[i].get().max(hwm),
            mean_rss_kib: sampler.sum[i].get() / samples,
            cores: used / secs,
            us_per_append: used * 1e6 / in_window.max(1) as f64,
            us_per_read: us_per_read.as_ref().map(|v| v[i]),
        });
    }
    result.peak_pss_total_kib = sampler.peak_pss_total.get();
    Ok(result)
}

/// A free TCP port on 127.0.0.1 (free when asked; servers bind it next).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A TCP connection to 127.0.0.1:`port`, Nagle off.
pub async fn tcp(port: u16) -> Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Waits until something accepts connections on `port` (30 s at most).
pub async fn wait_port(port: u16, what: &str) -> Result<()> {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{what} did not listen on port {port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Starts a server: stdin closed, output into `log`, killed when dropped
/// and also when this process dies (parent-death signal).
pub fn spawn_server(cmd: &mut Command, log: &Path) -> Result<Proc> {
    let out = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child
    // between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(Proc(child))
}
