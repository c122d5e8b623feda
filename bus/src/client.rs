//! The calling side of the bus: a DEALER socket driven by one async task.
//!
//! Callers (threads or async tasks) encode their request, put it on a bounded
//! queue and wait on a oneshot for the reply. The driver task sends, matches
//! replies by id, and fails every request whose deadline passes. Because the
//! pending set is bounded by `max_in_flight` and the queue by the same number,
//! a store that stops answering makes callers wait (back-pressure) and then
//! time out; nothing grows without limit.
//!
//! The driver waits on the socket's ZeroMQ notification descriptor
//! (`ZMQ_FD`) through the tokio reactor. [`BusClient::connect_in_runtime`]
//! runs it on the caller's own runtime, so a request and its reply cost no
//! thread switch inside the process (the ingest, the exporters);
//! [`BusClient::connect`] gives it a thread of its own, for blocking callers.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::messages::MessagesReply;
use bus_schema::{
    decode, encode, Request, RequestEnvelope, Response, ResponseEnvelope, BUS_MESSAGE_BYTES_MAX,
    BUS_PROTOCOL_VERSION,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use crate::{check_endpoint, unix_ms, BusError};

/// Settings of one bus client.
#[derive(Debug, Clone)]
pub struct BusClientConfig {
    /// Requests sent and not yet answered, at most.
    pub max_in_flight: usize,
    /// How long ZeroMQ waits between reconnect attempts, at first (ms).
    pub reconnect_interval_ms: i32,
    /// Cap of the reconnect interval (ms). The interval doubles from the
    /// first up to this cap; a restarted store is found at most this long
    /// after it binds (reconnecting to a local socket costs next to nothing).
    pub reconnect_interval_max_ms: i32,
}

impl Default for BusClientConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            reconnect_interval_ms: 20,
            reconnect_interval_max_ms: 50,
        }
    }
}

type Reply = Result<BusReply, BusError>;

/// A reply as a caller gets it from [`PendingReply::raw`]: a `Messages`
/// reply stays in the buffer ZeroMQ received it in, to be read in place
/// (a catch-up read is a MiB or more); any other reply is decoded.
#[derive(Debug)]
pub enum BusReply {
    Response(Response),
    Messages(MessagesBuffer),
}

impl BusReply {
    /// The reply decoded (a `Messages` reply copied out of its buffer).
    pub fn into_response(self) -> Response {
        match self {
            Self::Response(r) => r,
            Self::Messages(m) => Response::Messages(m.reply().to_messages()),
        }
    }
}

/// A `Messages` reply in the buffer it was received in, checked whole.
#[derive(Debug)]
pub struct MessagesBuffer(zmq::Message);

impl MessagesBuffer {
    /// The reply, read in place.
    pub fn reply(&self) -> MessagesReply<'_> {
        // The driver let this buffer through only once it parsed, and the
        // bytes cannot change since: this parse succeeds as that one did.
        MessagesReply::parse(&self.0).unwrap_or_else(|| unreachable!("checked when received"))
    }
}

struct Outgoing {
    id: u64,
    bytes: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
    reply: oneshot::Sender<Reply>,
}

struct Shared {
    tx: mpsc::Sender<Outgoing>,
    next_id: AtomicU64,
}

/// A handle to the bus; cheap to clone, usable from any thread or task. The
/// driver stops (failing what is still pending with [`BusError::Closed`])
/// when the last handle is dropped.
#[derive(Clone)]
pub struct BusClient {
    shared: Arc<Shared>,
}

impl BusClient {
    /// Connects to `endpoint` with a driver thread of its own (the peer need
    /// not be up yet: ZeroMQ keeps trying, and requests wait until their
    /// deadline). For blocking callers and for runtimes that come and go.
    pub fn connect(endpoint: &str, config: BusClientConfig) -> Result<Self, BusError> {
        let (client, driver) = Self::open(endpoint, config)?;
        let thread_error = |e: std::io::Error| BusError::Endpoint {
            endpoint: endpoint.to_string(),
            reason: format!("cannot start the bus driver thread: {e}"),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(thread_error)?;
        std::thread::Builder::new()
            .name("bus-client".into())
            .spawn(move || runtime.block_on(driver.run()))
            .map_err(thread_error)?;
        Ok(client)
    }

    /// Connects to `endpoint` with the driver as a task of the current tokio
    /// runtime: no thread of its own, no thread switch per request. The
    /// client stops working when that runtime shuts down. Panics outside a
    /// runtime.
    pub fn connect_in_runtime(endpoint: &str, config: BusClientConfig) -> Result<Self, BusError> {
        let (client, driver) = Self::open(endpoint, config)?;
        tokio::spawn(driver.run());
        Ok(client)
    }

    fn open(endpoint: &str, config: BusClientConfig) -> Result<(Self, Driver), BusError> {
        check_endpoint(endpoint)?;
        let max_in_flight = config.max_in_flight.max(1);
        let ctx = zmq::Context::new();
        let socket = crate::threads::start_as_batch(|| ctx.socket(zmq::DEALER))
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
        // Disconnect events tell the driver that requests in flight were
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
        let (tx, rx) = mpsc::channel(max_in_flight);
        let client = Self {
            shared: Arc::new(Shared {
                tx,
                next_id: AtomicU64::new(1),
            }),
        };
        let driver = Driver {
            endpoint: endpoint.to_string(),
            socket,
            monitor,
            _ctx: ctx,
            rx,
            queued: VecDeque::new(),
            pending: HashMap::new(),
            deadlines: BinaryHeap::new(),
            max_in_flight,
        };
        Ok((client, driver))
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
        flatten(rx.blocking_recv())
    }

    /// Sends a request and waits for its reply or its timeout.
    pub async fn call_async(&self, body: Request, timeout: Duration) -> Result<Response, BusError> {
        self.submit(body, timeout).await?.wait().await
    }

    /// Queues a request now and returns a handle to await its reply later.
    /// Requests submitted one after another from one task reach the store in
    /// that order (one queue, one socket, one driver).
    pub async fn submit(&self, body: Request, timeout: Duration) -> Result<PendingReply, BusError> {
        let (out, rx) = self.prepare(body, timeout)?;
        enqueue(&self.shared.tx, out, timeout).await?;
        Ok(PendingReply { rx })
    }
}

/// The reply to a submitted request, still to come.
pub struct PendingReply {
    rx: oneshot::Receiver<Reply>,
}

impl PendingReply {
    /// Waits for the reply (or the request's timeout, which the driver
    /// enforces).
    pub async fn wait(self) -> Result<Response, BusError> {
        self.await
    }

    /// The reply as it came: a `Messages` reply is not decoded (see
    /// [`BusReply`]). An error reply is still `Err(BusError::Remote)`.
    pub fn raw(self) -> RawPendingReply {
        RawPendingReply { rx: self.rx }
    }
}

/// [`PendingReply::raw`]: the reply to come, not decoded.
pub struct RawPendingReply {
    rx: oneshot::Receiver<Reply>,
}

impl std::future::Future for RawPendingReply {
    type Output = Result<BusReply, BusError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx).map(flatten_raw)
    }
}

/// The reply itself, for callers that poll many pending replies in one task.
impl std::future::Future for PendingReply {
    type Output = Result<Response, BusError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx).map(flatten)
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
    flatten_raw(received).map(BusReply::into_response)
}

fn flatten_raw(received: Result<Reply, oneshot::error::RecvError>) -> Result<BusReply, BusError> {
    match received {
        Ok(Ok(BusReply::Response(Response::Error(e)))) => Err(BusError::Remote(e)),
        Ok(other) => other,
        Err(_) => Err(BusError::Closed),
    }
}

struct Pending {
    reply: oneshot::Sender<Reply>,
    timeout: Duration,
}

/// Owns the sockets; runs as one task (see the module comment).
struct Driver {
    endpoint: String,
    socket: zmq::Socket,
    monitor: zmq::Socket,
    rx: mpsc::Receiver<Outgoing>,
    /// Taken off the channel, not sent yet (pending was full); bounded by
    /// `max_in_flight`, expired at their own deadlines.
    queued: VecDeque<Outgoing>,
    pending: HashMap<u64, Pending>,
    /// Min-heap of (deadline, id); entries of answered requests are skipped.
    deadlines: BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
    max_in_flight: usize,
    /// Last: fields drop in order, and the context outlives its sockets.
    _ctx: zmq::Context,
}

/// Has the ZeroMQ socket behind `fd` something to receive? Reading
/// `ZMQ_EVENTS` also consumes the notification descriptor's signal, so this
/// must be asked after every send or receive, before waiting on the
/// descriptor again.
fn readable(socket: &zmq::Socket) -> bool {
    socket.get_events().is_ok_and(|e| e.contains(zmq::POLLIN))
}

/// A socket's notification descriptor (`ZMQ_FD`), owned by the socket.
struct NotifyFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for NotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Registers a socket's notification descriptor with the reactor. The
/// registration must drop before the socket (which closes the descriptor).
fn watch(socket: &zmq::Socket) -> std::io::Result<AsyncFd<NotifyFd>> {
    let raw = socket.get_fd().map_err(std::io::Error::from)?;
    // SAFETY: `ZMQ_FD` belongs to the socket and stays open and the same
    // until the socket is closed; `Driver::run` drops this registration
    // before the driver (and its sockets).
    unsafe { AsyncFd::register_with_interest(NotifyFd(raw), tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

impl Driver {
    /// Runs until every handle is gone. Must run inside the runtime that
    /// drives it (the descriptors are registered here).
    async fn run(mut self) {
        // Locals drop before `self`: the registrations go before the sockets.
        let (socket_fd, monitor_fd) = match (watch(&self.socket), watch(&self.monitor)) {
            (Ok(s), Ok(m)) => (s, m),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(endpoint = %self.endpoint, error = %e, "cannot watch the bus socket");
                self.fail_all(|| BusError::Closed);
                return;
            }
        };
        loop {
            // Everything that can be done without waiting, then wait for
            // whichever comes first: a submission, a reply, a disconnect,
            // the next deadline.
            while self.queued.len() < self.max_in_flight {
                match self.rx.try_recv() {
                    Ok(out) => self.queued.push_back(out),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        // Every handle is gone: nobody is left to answer.
                        self.fail_all(|| BusError::Closed);
                        return;
                    }
                }
            }
            self.check_monitor();
            self.expire(Instant::now());
            // Until neither makes progress: a reply frees a slot for a
            // queued request, and a send may consume the descriptor's
            // signal of a reply that arrived meanwhile.
            loop {
                self.send_queued();
                if !self.receive_replies() {
                    break;
                }
            }
            let next_deadline = self.next_deadline();
            let room = self.queued.len() < self.max_in_flight;
            tokio::select! {
                r = socket_fd.readable() => match r {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(e) => {
                        tracing::error!(endpoint = %self.endpoint, error = %e, "bus socket cannot be watched");
                        self.fail_all(|| BusError::Closed);
                        return;
                    }
                },
                r = monitor_fd.readable() => {
                    if let Ok(mut guard) = r {
                        guard.clear_ready();
                    }
                }
                out = self.rx.recv(), if room => match out {
                    Some(out) => self.queued.push_back(out),
                    None => {
                        self.fail_all(|| BusError::Closed);
                        return;
                    }
                },
                _ = sleep_until(next_deadline) => {}
            }
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let mut next = self.queued.iter().map(|o| o.deadline).min();
        while let Some(std::cmp::Reverse((deadline, id))) = self.deadlines.peek().copied() {
            if self.pending.contains_key(&id) {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                break;
            }
            self.deadlines.pop();
        }
        next
    }

    fn send_queued(&mut self) {
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

    /// Delivers every reply waiting in the socket; tells whether there was
    /// any.
    fn receive_replies(&mut self) -> bool {
        let socket = &self.socket;
        let mut any = false;
        while readable(socket) {
            loop {
                // The reply is decoded straight from ZeroMQ's buffer (a
                // read of 1,000 messages is a MiB: no copy of it first).
                let bytes = match socket.recv_msg(zmq::DONTWAIT) {
                    Ok(bytes) => bytes,
                    Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                    Err(e) => {
                        tracing::warn!(endpoint = %self.endpoint, error = %e, "bus receive failed");
                        break;
                    }
                };
                deliver(&self.endpoint, &mut self.pending, bytes);
                any = true;
            }
        }
        any
    }

    fn check_monitor(&mut self) {
        let monitor = &self.monitor;
        let mut lost = false;
        while readable(monitor) {
            while let Ok(parts) = monitor.recv_multipart(zmq::DONTWAIT) {
                let event = parts
                    .first()
                    .and_then(|f| f.get(..2))
                    .map(|b| u16::from_le_bytes([b[0], b[1]]));
                lost |= event == Some(zmq::SocketEvent::DISCONNECTED as u16);
            }
        }
        if lost {
            // Replies that arrived before the break are delivered first;
            // whatever is still pending went down with the peer.
            self.receive_replies();
            tracing::warn!(endpoint = %self.endpoint, pending = self.pending.len(), "store connection lost");
            for (_, p) in self.pending.drain() {
                let _ = p.reply.send(Err(BusError::PeerLost));
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

/// Hands one reply to whoever waits for it.
fn deliver(endpoint: &str, pending: &mut HashMap<u64, Pending>, bytes: zmq::Message) {
    if let Some(id) = MessagesReply::parse(&bytes).map(|r| r.id) {
        match pending.remove(&id) {
            Some(p) => {
                let _ = p.reply.send(Ok(BusReply::Messages(MessagesBuffer(bytes))));
            }
            None => tracing::debug!(id, "late bus reply dropped"),
        }
        return;
    }
    let bytes = &bytes[..];
    let envelope: ResponseEnvelope = match decode(bytes) {
        Ok(envelope) => envelope,
        Err(e) => {
            match bus_schema::decode_header(bytes) {
                Ok(h) => {
                    if let Some(p) = pending.remove(&h.id) {
                        let _ = p.reply.send(Err(BusError::Codec(e)));
                    }
                }
                Err(_) => {
                    tracing::warn!(%endpoint, error = %e, "undecodable bus reply dropped")
                }
            }
            return;
        }
    };
    match pending.remove(&envelope.id) {
        Some(p) => {
            let _ = p.reply.send(Ok(BusReply::Response(envelope.body)));
        }
        None => tracing::debug!(id = envelope.id, "late bus reply dropped"),
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
