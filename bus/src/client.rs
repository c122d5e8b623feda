//! The calling side of the bus: a DEALER socket owned by one I/O thread.
//!
//! Callers (threads or async tasks) encode their request, put it on a bounded
//! queue and wait on a oneshot for the reply. The I/O thread sends, matches
//! replies by id, and fails every request whose deadline passes. Because the
//! pending set is bounded by `max_in_flight` and the queue by the same number,
//! a store that stops answering makes callers wait (back-pressure) and then
//! time out; nothing grows without limit.

use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::{
    decode, encode, Request, RequestEnvelope, Response, ResponseEnvelope, BUS_MESSAGE_BYTES_MAX,
    BUS_PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, oneshot};

use crate::{check_endpoint, unix_ms, BusError};

/// Settings of one bus client.
#[derive(Debug, Clone)]
pub struct BusClientConfig {
    /// Requests sent and not yet answered, at most.
    pub max_in_flight: usize,
    /// How long ZeroMQ waits between reconnect attempts, at first (ms).
    pub reconnect_interval_ms: i32,
    /// Cap of the reconnect interval (ms).
    pub reconnect_interval_max_ms: i32,
}

impl Default for BusClientConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            reconnect_interval_ms: 20,
            reconnect_interval_max_ms: 500,
        }
    }
}

type Reply = Result<Response, BusError>;

struct Outgoing {
    id: u64,
    bytes: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
    reply: oneshot::Sender<Reply>,
}

struct Shared {
    tx: mpsc::Sender<Outgoing>,
    wake: UnixStream,
    next_id: AtomicU64,
    stop: AtomicBool,
    /// Set by the I/O thread just before it blocks in poll; a caller that
    /// finds it set writes the wake-up byte. Saves a syscall per request
    /// while the I/O thread is busy anyway.
    io_sleeping: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        if self.io_sleeping.swap(false, Ordering::SeqCst) {
            self.wake_now();
        }
    }

    fn wake_now(&self) {
        // A full wake pipe already guarantees a wake-up; nothing else to do.
        let _ = (&self.wake).write(&[1]);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake_now();
    }
}

/// A handle to the bus; cheap to clone, usable from any thread or task.
#[derive(Clone)]
pub struct BusClient {
    shared: Arc<Shared>,
}

impl BusClient {
    /// Connects to `endpoint` (the peer need not be up yet: ZeroMQ keeps
    /// trying, and requests wait until their deadline).
    pub fn connect(endpoint: &str, config: BusClientConfig) -> Result<Self, BusError> {
        check_endpoint(endpoint)?;
        let max_in_flight = config.max_in_flight.max(1);
        let ctx = zmq::Context::new();
        let socket = ctx
            .socket(zmq::DEALER)
            .map_err(|e| BusError::zmq(endpoint, e))?;
        let hwm = i32::try_from(max_in_flight * 2).unwrap_or(i32::MAX);
        let setup = || -> zmq::Result<()> {
            socket.set_linger(0)?;
            socket.set_sndhwm(hwm)?;
            socket.set_rcvhwm(hwm)?;
            socket.set_maxmsgsize(BUS_MESSAGE_BYTES_MAX as i64)?;
            socket.set_reconnect_ivl(config.reconnect_interval_ms)?;
            socket.set_reconnect_ivl_max(config.reconnect_interval_max_ms)?;
            socket.connect(endpoint)
        };
        setup().map_err(|e| BusError::zmq(endpoint, e))?;
        // Disconnect events tell the I/O thread that requests in flight were
        // lost with the peer, so they fail now instead of at their deadline.
        static MONITORS: AtomicU64 = AtomicU64::new(0);
        let monitor_endpoint = format!(
            "inproc://bus-monitor-{}-{}",
            std::process::id(),
            MONITORS.fetch_add(1, Ordering::Relaxed)
        );
        let monitor = (|| -> zmq::Result<zmq::Socket> {
            socket.monitor(&monitor_endpoint, zmq::SocketEvent::DISCONNECTED as i32)?;
            let m = ctx.socket(zmq::PAIR)?;
            m.set_linger(0)?;
            m.connect(&monitor_endpoint)?;
            Ok(m)
        })()
        .map_err(|e| BusError::zmq(endpoint, e))?;
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(|e| BusError::Endpoint {
            endpoint: endpoint.to_string(),
            reason: format!("cannot create wake-up socket pair: {e}"),
        })?;
        for s in [&wake_tx, &wake_rx] {
            s.set_nonblocking(true).map_err(|e| BusError::Endpoint {
                endpoint: endpoint.to_string(),
                reason: format!("cannot set wake-up socket non-blocking: {e}"),
            })?;
        }
        let (tx, rx) = mpsc::channel(max_in_flight);
        let shared = Arc::new(Shared {
            tx,
            wake: wake_tx,
            next_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            io_sleeping: AtomicBool::new(false),
        });
        let io = IoThread {
            endpoint: endpoint.to_string(),
            socket,
            monitor,
            _ctx: ctx,
            rx,
            wake: wake_rx,
            queued: std::collections::VecDeque::new(),
            pending: HashMap::new(),
            deadlines: BinaryHeap::new(),
            max_in_flight,
            shared: Arc::downgrade(&shared),
        };
        std::thread::Builder::new()
            .name("bus-client".into())
            .spawn(move || io.run())
            .map_err(|e| BusError::Endpoint {
                endpoint: endpoint.to_string(),
                reason: format!("cannot start bus I/O thread: {e}"),
            })?;
        Ok(Self { shared })
    }

    fn prepare(
        &self,
        body: Request,
        timeout: Duration,
    ) -> Result<(Outgoing, oneshot::Receiver<Reply>), BusError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline_ms = unix_ms().saturating_add(timeout.as_millis() as u64);
        let bytes = encode(&RequestEnvelope {
            v: BUS_PROTOCOL_VERSION,
            id,
            deadline_ms,
            body,
        })?;
        let (reply, rx) = oneshot::channel();
        Ok((
            Outgoing {
                id,
                bytes,
                deadline: Instant::now() + timeout,
                timeout,
                reply,
            },
            rx,
        ))
    }

    /// Sends a request and blocks until its reply or its timeout. Do not call
    /// from inside an async runtime; use [`BusClient::call_async`] there.
    pub fn call(&self, body: Request, timeout: Duration) -> Result<Response, BusError> {
        let (mut out, rx) = self.prepare(body, timeout)?;
        // Waits for room in the queue, but never past the request's deadline.
        loop {
            match self.shared.tx.try_send(out) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(BusError::Closed),
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if Instant::now() >= back.deadline {
                        return Err(BusError::Timeout(timeout));
                    }
                    out = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        self.shared.wake();
        flatten(rx.blocking_recv())
    }

    /// Sends a request and waits for its reply or its timeout.
    pub async fn call_async(&self, body: Request, timeout: Duration) -> Result<Response, BusError> {
        self.submit(body, timeout).await?.wait().await
    }

    /// Queues a request now and returns a handle to await its reply later.
    /// Requests submitted one after another from one task reach the store in
    /// that order (one queue, one socket, one I/O thread).
    pub async fn submit(&self, body: Request, timeout: Duration) -> Result<PendingReply, BusError> {
        let (out, rx) = self.prepare(body, timeout)?;
        enqueue(&self.shared.tx, out, timeout).await?;
        self.shared.wake();
        Ok(PendingReply { rx })
    }
}

/// The reply to a submitted request, still to come.
pub struct PendingReply {
    rx: oneshot::Receiver<Reply>,
}

impl PendingReply {
    /// Waits for the reply (or the request's timeout, which the I/O thread
    /// enforces).
    pub async fn wait(self) -> Result<Response, BusError> {
        flatten(self.rx.await)
    }
}

/// Queues `out` (back-pressure when the queue is full).
async fn enqueue(
    tx: &mpsc::Sender<Outgoing>,
    out: Outgoing,
    timeout: Duration,
) -> Result<(), BusError> {
    match tx.try_send(out) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(BusError::Closed),
        Err(mpsc::error::TrySendError::Full(out)) => {
            // Waits for room, but never past the request's deadline.
            let left = out.deadline.saturating_duration_since(Instant::now());
            let permit = tokio::time::timeout(left, tx.reserve())
                .await
                .map_err(|_| BusError::Timeout(timeout))?
                .map_err(|_| BusError::Closed)?;
            permit.send(out);
            Ok(())
        }
    }
}

fn flatten(received: Result<Reply, oneshot::error::RecvError>) -> Result<Response, BusError> {
    match received {
        Ok(Ok(Response::Error(e))) => Err(BusError::Remote(e)),
        Ok(other) => other,
        Err(_) => Err(BusError::Closed),
    }
}

struct Pending {
    reply: oneshot::Sender<Reply>,
    timeout: Duration,
}

struct IoThread {
    endpoint: String,
    socket: zmq::Socket,
    monitor: zmq::Socket,
    _ctx: zmq::Context,
    rx: mpsc::Receiver<Outgoing>,
    wake: UnixStream,
    /// Taken off the channel, not sent yet (pending was full); bounded by
    /// `max_in_flight`, expired at their own deadlines.
    queued: std::collections::VecDeque<Outgoing>,
    pending: HashMap<u64, Pending>,
    /// Min-heap of (deadline, id); entries of answered requests are skipped.
    deadlines: BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
    max_in_flight: usize,
    shared: std::sync::Weak<Shared>,
}

impl IoThread {
    fn run(mut self) {
        loop {
            if self
                .shared
                .upgrade()
                .is_none_or(|s| s.stop.load(Ordering::SeqCst))
            {
                self.fail_all(|| BusError::Closed);
                return;
            }
            self.take_submissions();
            self.expire(Instant::now());
            let mut timeout_ms = self.next_timeout_ms();
            // Announce the sleep, then look once more: a request queued
            // before the flag was set must not wait for the poll timeout.
            if let Some(shared) = self.shared.upgrade() {
                shared.io_sleeping.store(true, Ordering::SeqCst);
            }
            if !self.rx.is_empty()
                && (self.pending.len() < self.max_in_flight
                    || self.queued.len() < self.max_in_flight)
            {
                timeout_ms = 0;
            }
            let (socket_ready, wake_ready, monitor_ready) = {
                let mut items = [
                    self.socket.as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(self.wake.as_raw_fd(), zmq::POLLIN),
                    self.monitor.as_poll_item(zmq::POLLIN),
                ];
                match zmq::poll(&mut items, timeout_ms) {
                    Ok(_) | Err(zmq::Error::EINTR) => {}
                    Err(e) => {
                        tracing::error!(endpoint = %self.endpoint, error = %e, "bus poll failed");
                        self.fail_all(|| BusError::Closed);
                        return;
                    }
                }
                (
                    items[0].is_readable(),
                    items[1].is_readable(),
                    items[2].is_readable(),
                )
            };
            if let Some(shared) = self.shared.upgrade() {
                shared.io_sleeping.store(false, Ordering::SeqCst);
            }
            if wake_ready {
                let mut buf = [0u8; 256];
                while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
            }
            if socket_ready {
                self.receive_replies();
            }
            if monitor_ready {
                let mut lost = false;
                while let Ok(parts) = self.monitor.recv_multipart(zmq::DONTWAIT) {
                    let event = parts
                        .first()
                        .and_then(|f| f.get(..2))
                        .map(|b| u16::from_le_bytes([b[0], b[1]]));
                    lost |= event == Some(zmq::SocketEvent::DISCONNECTED as u16);
                }
                if lost {
                    // Replies still queued were read above; whatever is
                    // still pending went down with the peer.
                    tracing::warn!(endpoint = %self.endpoint, pending = self.pending.len(), "store connection lost");
                    for (_, p) in self.pending.drain() {
                        let _ = p.reply.send(Err(BusError::PeerLost));
                    }
                }
            }
        }
    }

    fn next_timeout_ms(&mut self) -> i64 {
        let mut next = self.queued.iter().map(|o| o.deadline).min();
        while let Some(std::cmp::Reverse((deadline, id))) = self.deadlines.peek().copied() {
            if self.pending.contains_key(&id) {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                break;
            }
            self.deadlines.pop();
        }
        // Round up so we do not spin just before the deadline.
        next.map_or(-1, |d| {
            d.saturating_duration_since(Instant::now()).as_millis() as i64 + 1
        })
    }

    fn take_submissions(&mut self) {
        while self.queued.len() < self.max_in_flight {
            match self.rx.try_recv() {
                Ok(out) => self.queued.push_back(out),
                Err(_) => break,
            }
        }
        if self.pending.len() >= self.max_in_flight {
            // Callers that gave up (dropped their reply) free their slot.
            self.pending.retain(|_, p| !p.reply.is_closed());
        }
        while self.pending.len() < self.max_in_flight {
            let Some(out) = self.queued.pop_front() else {
                return;
            };
            if out.reply.is_closed() {
                continue;
            }
            if Instant::now() >= out.deadline {
                let _ = out.reply.send(Err(BusError::Timeout(out.timeout)));
                continue;
            }
            match self.socket.send(out.bytes, zmq::DONTWAIT) {
                Ok(()) => {
                    self.deadlines
                        .push(std::cmp::Reverse((out.deadline, out.id)));
                    self.pending.insert(
                        out.id,
                        Pending {
                            reply: out.reply,
                            timeout: out.timeout,
                        },
                    );
                }
                Err(zmq::Error::EAGAIN) => {
                    let _ = out.reply.send(Err(BusError::Backpressure(format!(
                        "the queue to {} is full",
                        self.endpoint
                    ))));
                }
                Err(e) => {
                    let _ = out.reply.send(Err(BusError::zmq(&self.endpoint, e)));
                }
            }
        }
    }

    fn receive_replies(&mut self) {
        loop {
            let bytes = match self.socket.recv_bytes(zmq::DONTWAIT) {
                Ok(bytes) => bytes,
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => return,
                Err(e) => {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "bus receive failed");
                    return;
                }
            };
            let envelope: ResponseEnvelope = match decode(&bytes) {
                Ok(envelope) => envelope,
                Err(e) => {
                    match bus_schema::decode_header(&bytes) {
                        Ok(h) => {
                            if let Some(p) = self.pending.remove(&h.id) {
                                let _ = p.reply.send(Err(BusError::Codec(e)));
                            }
                        }
                        Err(_) => {
                            tracing::warn!(endpoint = %self.endpoint, error = %e, "undecodable bus reply dropped")
                        }
                    }
                    continue;
                }
            };
            match self.pending.remove(&envelope.id) {
                Some(p) => {
                    let _ = p.reply.send(Ok(envelope.body));
                }
                None => {
                    tracing::debug!(id = envelope.id, "late bus reply dropped");
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        if self.queued.iter().any(|o| o.deadline <= now) {
            let (late, keep): (Vec<_>, Vec<_>) =
                self.queued.drain(..).partition(|o| o.deadline <= now);
            self.queued = keep.into();
            for o in late {
                let _ = o.reply.send(Err(BusError::Timeout(o.timeout)));
            }
        }
        while let Some(std::cmp::Reverse((deadline, id))) = self.deadlines.peek().copied() {
            if deadline > now {
                return;
            }
            self.deadlines.pop();
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(Err(BusError::Timeout(p.timeout)));
            }
        }
    }

    fn fail_all(&mut self, error: impl Fn() -> BusError) {
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(error()));
        }
        self.rx.close();
        for out in self.queued.drain(..) {
            let _ = out.reply.send(Err(error()));
        }
        while let Ok(out) = self.rx.try_recv() {
            let _ = out.reply.send(Err(error()));
        }
    }
}
