//! The TCP endpoint the SDKs connect to: handshake, authentication, and per
//! connection a reader that decodes frames in order and submits them to the
//! store in that order (so appends keep their order on the store), tasks that
//! await each reply, and one writer that sends each response frame in one
//! write. In-flight requests per connection are bounded: past the bound the
//! reader stops reading (TCP back-pressure), memory does not grow.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bus::{BusClient, BusError, BusReply};
use bus_schema::{Request, Response};
use futures_util::{stream::FuturesUnordered, FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::fast;
use crate::metrics::{self, IngestMetrics};
use crate::submit::{Reply, Submitter};
use crate::wire::{self, op, status, ClientRequest};

/// Settings of the endpoint.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// `None`: any local process may connect. `Some`: only these tokens.
    pub tokens: Option<HashSet<String>>,
    /// Largest frame accepted (length field, opcode included), in bytes.
    pub frame_bytes_max: u32,
    /// Connections served at once; more wait in the kernel's backlog.
    pub connections_max: usize,
    /// Requests of one connection being processed at once.
    pub in_flight_per_connection: usize,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Time the store has to answer a request (reads: on top of their wait).
    pub store_timeout: Duration,
    /// Request bytes held at once by the whole endpoint (read, waiting for
    /// the store, or waiting to be answered); a connection whose next frame
    /// does not fit waits before reading it.
    pub buffered_bytes_max: usize,
}

/// Default frame limit: the largest message the store takes plus room for
/// the rest of the request.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = (bus_schema::MESSAGE_PAYLOAD_BYTES_MAX + 64 * 1024) as u32;
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Default bound of request bytes held by the endpoint at once.
pub const BUFFERED_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// Granularity of that bound, in bytes.
const BUFFER_UNIT_BYTES: usize = 1024;
pub const IN_FLIGHT_PER_CONNECTION_DEFAULT: usize = 256;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer per connection, in bytes.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Ready response frames are gathered into one write up to this many bytes.
pub const WRITE_COALESCE_BYTES: usize = 64 * 1024;
/// A connection's write buffer is given back after a write when it grew
/// past this many bytes (a read response may be many MiB).
pub const WRITE_BUFFER_KEPT_BYTES: usize = 2 * WRITE_COALESCE_BYTES;
/// A long-poll read is answered this much before the client's
/// `readTimeoutMillis` (at most), so the answer is never late: a late
/// answer breaks the Python SDK's reader (spec §6).
pub const READ_DEADLINE_MARGIN_MS_MAX: i64 = 100;

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            tokens: None,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            in_flight_per_connection: IN_FLIGHT_PER_CONNECTION_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            store_timeout: STORE_TIMEOUT,
            buffered_bytes_max: BUFFERED_BYTES_MAX_DEFAULT,
        }
    }
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: TcpListener, settings: Arc<IngestSettings>, bus: BusClient) {
    serve_counted(listener, settings, bus, Arc::default()).await
}

/// [`serve`], counting into `metrics`.
pub async fn serve_counted(
    listener: TcpListener,
    settings: Arc<IngestSettings>,
    bus: BusClient,
    metrics: Arc<IngestMetrics>,
) {
    let slots = Arc::new(Semaphore::new(settings.connections_max));
    let buffered = Arc::new(Semaphore::new(
        (settings.buffered_bytes_max / BUFFER_UNIT_BYTES).max(1),
    ));
    let bus = Submitter::start(bus, metrics.clone());
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (settings, bus, buffered) = (settings.clone(), bus.clone(), buffered.clone());
        let metrics = metrics.clone();
        tokio::spawn(async move {
            metrics.connection_opened();
            if let Err(e) = connection(stream, peer, settings, bus, buffered, metrics.clone()).await
            {
                tracing::info!(%peer, error = %e, "connection closed");
            }
            metrics.connection_closed();
            drop(permit);
        });
    }
}

#[derive(Debug)]
enum FrameError {
    Eof,
    Io(std::io::Error),
    Invalid(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Eof => write!(f, "end of stream"),
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::Invalid(m) => write!(f, "{m}"),
        }
    }
}

/// Reads one frame with exact reads; the declared length is checked against
/// the limit before anything is allocated.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    max: u32,
) -> Result<(u8, Vec<u8>), FrameError> {
    let (opcode, len) = read_header(rd, max).await?;
    Ok((opcode, read_payload(rd, len).await?))
}

/// Reads a frame header: (opcode, payload length), the length checked
/// against `max` before anything is allocated.
async fn read_header<R: AsyncRead + Unpin>(
    rd: &mut R,
    max: u32,
) -> Result<(u8, usize), FrameError> {
    let mut header = [0u8; 5];
    match rd.read_exact(&mut header[..4]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Eof),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let len = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if len < 1 {
        return Err(FrameError::Invalid(format!(
            "frame length {len} is below 1"
        )));
    }
    if len as u32 > max {
        return Err(FrameError::Invalid(format!(
            "frame of {len} bytes exceeds the limit of {max} bytes"
        )));
    }
    rd.read_exact(&mut header[4..5])
        .await
        .map_err(FrameError::Io)?;
    Ok((header[4], len as usize - 1))
}

async fn read_payload<R: AsyncRead + Unpin>(rd: &mut R, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await.map_err(FrameError::Io)?;
    Ok(payload)
}

fn choose_version(c: &wire::ConnectRequest) -> Result<&'static str, (i64, String)> {
    let supported = |v: &str| wire::PROTOCOL_VERSIONS.iter().copied().find(|s| *s == v);
    let Some(requested) = c.protocol_version.as_deref() else {
        return Err((
            status::INVALID_PROTOCOL_VERSION,
            "protocolVersion is required".into(),
        ));
    };
    if requested.split('.').count() != 3 || requested.split('.').any(|p| p.parse::<u32>().is_err())
    {
        return Err((
            status::INVALID_PROTOCOL_VERSION,
            format!("protocolVersion {requested:?} is not of the form major.minor.patch"),
        ));
    }
    supported(requested)
        .or_else(|| {
            c.other_supported_protocol_versions
                .iter()
                .find_map(|v| supported(v))
        })
        .ok_or_else(|| {
            (
                status::UNSUPPORTED_PROTOCOL_VERSION,
                format!(
                    "protocol version {requested} is not supported; this server speaks {}",
                    wire::PROTOCOL_VERSIONS.join(", ")
                ),
            )
        })
}

async fn handshake<R: AsyncRead + Unpin>(
    rd: &mut R,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    settings: &IngestSettings,
) -> Result<(), String> {
    let mut version = [0u8; 1];
    rd.read_exact(&mut version)
        .await
        .map_err(|e| e.to_string())?;
    let reject = |request_id: Option<&str>, code: i64, message: &str| {
        let mut out = vec![wire::CONNECT_VERSION];
        out.extend(wire::frame(
            op::CONNECT_RESPONSE,
            &wire::connect_response(request_id, code, Some(message), wire::PROTOCOL_VERSIONS[0]),
        ));
        out
    };
    if version[0] != wire::CONNECT_VERSION {
        let msg = format!(
            "connect version {} is not supported; expected 1",
            version[0]
        );
        let _ = wr
            .write_all(&reject(None, status::UNSUPPORTED_CONNECT_VERSION, &msg))
            .await;
        return Err(msg);
    }
    let (opcode, payload) = read_frame(rd, settings.frame_bytes_max)
        .await
        .map_err(|e| e.to_string())?;
    if opcode != op::CONNECT {
        let msg = format!("expected Connect (1) first, got operation {opcode}");
        let _ = wr
            .write_all(&reject(None, status::UNEXPECTED_OPERATION, &msg))
            .await;
        return Err(msg);
    }
    let connect = match wire::decode_connect(&payload) {
        Ok(c) => c,
        Err(e) => {
            let _ = wr
                .write_all(&reject(
                    e.request_id.as_deref(),
                    status::INVALID_REQUEST,
                    &e.message,
                ))
                .await;
            return Err(e.message);
        }
    };
    if let Some(tokens) = &settings.tokens {
        let ok = connect
            .auth_token
            .as_ref()
            .is_some_and(|t| tokens.contains(t));
        if !ok {
            let _ = wr
                .write_all(&reject(
                    connect.request_id.as_deref(),
                    status::UNAUTHORIZED,
                    "Unauthorized",
                ))
                .await;
            return Err("wrong or missing authToken".into());
        }
    }
    let version = match choose_version(&connect) {
        Ok(v) => v,
        Err((code, msg)) => {
            let _ = wr
                .write_all(&reject(connect.request_id.as_deref(), code, &msg))
                .await;
            return Err(msg);
        }
    };
    let mut out = vec![wire::CONNECT_VERSION];
    out.extend(wire::frame(
        op::CONNECT_RESPONSE,
        &wire::connect_response(
            connect.request_id.as_deref(),
            status::SUCCESS,
            None,
            version,
        ),
    ));
    wr.write_all(&out).await.map_err(|e| e.to_string())
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    settings: Arc<IngestSettings>,
    bus: Submitter,
    buffered: Arc<Semaphore>,
    metrics: Arc<IngestMetrics>,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    let (rd, mut wr) = stream.into_split();
    // Buffered: a frame header is read with two small exact reads, which
    // would otherwise be two system calls per request.
    let mut rd = BufReader::with_capacity(READ_BUFFER_BYTES, rd);
    tokio::time::timeout(
        settings.handshake_timeout,
        handshake(&mut rd, &mut wr, &settings),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())??;
    tracing::debug!(%peer, "client connected");

    let (tx, rx) = mpsc::channel::<Outbound>(settings.in_flight_per_connection);
    let writer = tokio::spawn(write_responses(wr, rx, metrics.clone()));
    let in_flight = Arc::new(Semaphore::new(settings.in_flight_per_connection));
    let result = loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break Ok(());
        };
        let (opcode, len) = match read_header(&mut rd, settings.frame_bytes_max).await {
            Ok(h) => h,
            Err(FrameError::Eof) => break Ok(()),
            Err(e) => break Err(format!("framing: {e}")),
        };
        // Request bytes held by the whole ingest are bounded: wait for room
        // before allocating this payload (held until its response is sent).
        let units = (len / BUFFER_UNIT_BYTES + 1)
            .min(settings.buffered_bytes_max / BUFFER_UNIT_BYTES)
            .clamp(1, u32::MAX as usize) as u32;
        let Ok(bytes) = buffered.clone().acquire_many_owned(units).await else {
            break Ok(());
        };
        let payload = match read_payload(&mut rd, len).await {
            Ok(p) => p,
            Err(e) => break Err(format!("framing: {e}")),
        };
        // Appends in the SDKs' own shape skip the general decoder.
        let decoded = match (opcode == op::APPEND)
            .then(|| fast::decode_append(&payload))
            .flatten()
        {
            Some(a) => Ok((
                a.request_id.to_owned(),
                ClientRequest::Append {
                    name: a.name.to_owned(),
                    payload: a.payload.to_vec(),
                },
            )),
            None => match decode_general(opcode, &payload, &peer, &metrics) {
                Ok(decoded) => Ok(decoded),
                Err(Refusal::Answer(frame)) => Err(frame),
                Err(Refusal::Close(e)) => break Err(e),
            },
        };
        drop(payload);
        let (id, request) = match decoded {
            Ok(d) => d,
            Err(frame) => {
                if tx.send(Outbound::Frame(frame)).await.is_err() {
                    break Ok(());
                }
                continue;
            }
        };
        let (bus_request, timeout, read_stream) = to_bus(request, settings.store_timeout);
        let submitted = std::time::Instant::now();
        let answer = Answer {
            reply: bus.submit(bus_request, timeout).await,
            asked: Some(Asked {
                request_id: id,
                opcode,
                read_stream,
                submitted,
                _held: (permit, bytes),
            }),
        };
        if tx.send(Outbound::Reply(answer)).await.is_err() {
            break Ok(());
        }
    };
    // The client is gone or broke the framing: the writer answers what is
    // already answered and drops the pending replies (and the bus slots and
    // bytes they hold) now, not when they finish.
    drop(tx);
    let _ = writer.await;
    result
}

/// Why a request gets no store call: an answer to send at once, or a
/// framing problem that ends the connection.
enum Refusal {
    Answer(Vec<u8>),
    Close(String),
}

/// Decodes any request with the general decoder; unknown operations and
/// invalid requests are answered (when they carry a readable request id).
fn decode_general(
    opcode: u8,
    payload: &[u8],
    peer: &SocketAddr,
    metrics: &IngestMetrics,
) -> Result<(String, ClientRequest), Refusal> {
    let known = matches!(
        opcode,
        op::CREATE | op::DELETE | op::APPEND | op::READ | op::LIST | op::DESCRIBE | op::UPDATE
    );
    if !known {
        let id = wire::parse_map(payload)
            .ok()
            .and_then(|m| wire::request_id_of(&m));
        let Some(id) = id else {
            return Err(Refusal::Close(format!(
                "operation {opcode} without a readable requestId"
            )));
        };
        metrics.refused("unknown", "unknown-operation");
        let body = wire::response(
            &id,
            status::UNKNOWN_OPERATION,
            Some(&format!("operation {opcode} is not supported")),
            Vec::new(),
        );
        return Err(Refusal::Answer(wire::frame(
            op::UNKNOWN_OPERATION_ERROR,
            &body,
        )));
    }
    wire::decode_request(opcode, payload).map_err(|e| {
        let Some(id) = e.request_id else {
            return Refusal::Close(format!(
                "undecodable request without a requestId: {}",
                e.message
            ));
        };
        tracing::info!(%peer, opcode, error = %e.message, "invalid request");
        metrics.refused(metrics::operation(opcode), "invalid-request");
        let body = wire::response(&id, status::INVALID_REQUEST, Some(&e.message), Vec::new());
        Refusal::Answer(wire::frame(wire::response_op(opcode), &body))
    })
}

/// What a connection's reading half hands its writing half.
enum Outbound {
    /// A response ready now.
    Frame(Vec<u8>),
    /// A request at the store, answered when its reply comes.
    Reply(Answer),
}

/// A request submitted to the store, with what its response needs.
struct Asked {
    request_id: String,
    opcode: u8,
    read_stream: Option<String>,
    submitted: std::time::Instant,
    /// The connection's in-flight slot and the request's buffered bytes,
    /// released once the response is written.
    _held: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// The store's reply to come (or the submission's failure), and the request.
struct Answer {
    reply: Reply,
    asked: Option<Asked>,
}

impl Future for Answer {
    type Output = (Asked, Result<BusReply, BusError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let reply = ready!(Pin::new(&mut self.reply).poll(cx));
        Poll::Ready((self.asked.take().expect("polled after completion"), reply))
    }
}

/// The writing half of a connection: waits for the store's replies (all of
/// the connection's in one task) and writes the responses, those that are
/// ready together in one write; a frame is never split across writes of
/// other frames. Ends when the reading half does, dropping the replies
/// still to come.
async fn write_responses(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outbound>,
    metrics: Arc<IngestMetrics>,
) {
    let mut waiting = FuturesUnordered::new();
    let mut out = Vec::new();
    let mut reader_done = false;
    while !reader_done {
        tokio::select! {
            Some((asked, reply)) = waiting.next(), if !waiting.is_empty() => {
                respond(&mut out, asked, reply, &metrics);
            }
            next = rx.recv() => match next {
                Some(Outbound::Frame(f)) => out.extend_from_slice(&f),
                Some(Outbound::Reply(a)) => waiting.push(a),
                None => reader_done = true,
            },
        }
        // Take whatever else is ready, up to one write's worth.
        while out.len() < WRITE_COALESCE_BYTES {
            match rx.try_recv() {
                Ok(Outbound::Frame(f)) => out.extend_from_slice(&f),
                Ok(Outbound::Reply(a)) => waiting.push(a),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    reader_done = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => match waiting.next().now_or_never() {
                    Some(Some((asked, reply))) => respond(&mut out, asked, reply, &metrics),
                    _ => break,
                },
            }
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                return;
            }
            recycle(&mut out);
        }
    }
}

/// Empties a connection's write buffer after a write. A large read
/// response leaves a large buffer: an idle connection keeps at most
/// [`WRITE_BUFFER_KEPT_BYTES`] of it.
fn recycle(out: &mut Vec<u8>) {
    out.clear();
    if out.capacity() > WRITE_BUFFER_KEPT_BYTES {
        *out = Vec::new();
    }
}

/// Appends the response frame for `asked` to `out`.
fn respond(
    out: &mut Vec<u8>,
    asked: Asked,
    reply: Result<BusReply, BusError>,
    metrics: &IngestMetrics,
) {
    let reply = match (reply, asked.opcode, &asked.read_stream) {
        (Ok(BusReply::Messages(messages)), op::READ, Some(stream)) => {
            let operation = metrics::operation(asked.opcode);
            metrics.answered(operation, metrics::SUCCESS, asked.submitted.elapsed());
            return fast::put_read_response(out, &asked.request_id, stream, &messages.reply());
        }
        (reply, ..) => reply.map(BusReply::into_response),
    };
    metrics.answered(
        metrics::operation(asked.opcode),
        metrics::outcome(&reply),
        asked.submitted.elapsed(),
    );
    if let (
        Ok(Response::Appended {
            sequence_number, ..
        }),
        op::APPEND,
    ) = (&reply, asked.opcode)
    {
        return fast::put_append_response(out, &asked.request_id, *sequence_number);
    }
    let body = to_wire(&asked.request_id, reply, asked.read_stream.as_deref());
    out.extend_from_slice(&wire::frame(wire::response_op(asked.opcode), &body));
}

/// The bus request for an SDK request, its timeout, and the stream name a
/// read response needs.
fn to_bus(request: ClientRequest, store_timeout: Duration) -> (Request, Duration, Option<String>) {
    match request {
        ClientRequest::Create(definition) => {
            (Request::CreateStream { definition }, store_timeout, None)
        }
        ClientRequest::Update(definition) => {
            (Request::UpdateStream { definition }, store_timeout, None)
        }
        ClientRequest::Delete { name } => (Request::DeleteStream { name }, store_timeout, None),
        ClientRequest::Describe { name } => (Request::DescribeStream { name }, store_timeout, None),
        ClientRequest::List => (Request::ListStreams, store_timeout, None),
        ClientRequest::Append { name, payload } => (
            Request::Append {
                stream: name,
                payload,
            },
            store_timeout,
            None,
        ),
        ClientRequest::Read {
            stream,
            start,
            min,
            max,
            timeout_ms,
        } => {
            let wait = timeout_ms.map(|t| {
                if t <= 0 {
                    t
                } else {
                    t - (t / 10).min(READ_DEADLINE_MARGIN_MS_MAX)
                }
            });
            let waited = Duration::from_millis(wait.unwrap_or(0).clamp(0, 1 << 40) as u64);
            (
                Request::Read {
                    stream: stream.clone(),
                    start_sequence_number: start,
                    min_count: min,
                    max_count: max,
                    wait_ms: wait,
                    max_bytes: None,
                    export_identifier: None,
                },
                store_timeout + waited,
                Some(stream),
            )
        }
    }
}

/// The response payload for a store reply.
fn to_wire(id: &str, reply: Result<Response, BusError>, read_stream: Option<&str>) -> Vec<u8> {
    match reply {
        Ok(Response::Appended {
            sequence_number, ..
        }) => wire::response(
            id,
            status::SUCCESS,
            None,
            wire::append_fields(sequence_number),
        ),
        Ok(Response::Messages(m)) => wire::response(
            id,
            status::SUCCESS,
            None,
            wire::read_fields(read_stream.unwrap_or(""), m),
        ),
        Ok(Response::Streams(s)) => wire::response(id, status::SUCCESS, None, wire::list_fields(s)),
        Ok(Response::Described(info)) => {
            wire::response(id, status::SUCCESS, None, wire::describe_fields(&info))
        }
        Ok(Response::Created | Response::Updated | Response::Deleted) => {
            wire::response(id, status::SUCCESS, None, Vec::new())
        }
        Ok(other) => wire::response(
            id,
            status::UNKNOWN_FAILURE,
            Some(&format!("unexpected store answer {other:?}")),
            Vec::new(),
        ),
        Err(BusError::Remote(e)) => {
            wire::response(id, wire::status_of(e.kind), Some(&e.message), Vec::new())
        }
        Err(e @ (BusError::Backpressure(_) | BusError::Closed)) => wire::response(
            id,
            status::SERVER_TIMEOUT,
            Some(&format!("the store cannot take this request now: {e}")),
            Vec::new(),
        ),
        Err(BusError::PeerLost) => wire::response(
            id,
            status::SERVER_TIMEOUT,
            Some("the store restarted while this request was in flight; it may or may not have been carried out"),
            Vec::new(),
        ),
        Err(BusError::Timeout(t)) => wire::response(
            id,
            status::SERVER_TIMEOUT,
            Some(&format!("the store did not answer within {t:?}")),
            Vec::new(),
        ),
        Err(e) => wire::response(
            id,
            status::UNKNOWN_FAILURE,
            Some(&e.to_string()),
            Vec::new(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_buffer_keeps_one_writes_worth_and_gives_back_a_read_responses() {
        let mut out = Vec::with_capacity(WRITE_COALESCE_BYTES);
        out.extend_from_slice(&[1; 100]);
        recycle(&mut out);
        assert!(out.is_empty());
        assert_eq!(
            out.capacity(),
            WRITE_COALESCE_BYTES,
            "kept for the next write"
        );
        out.extend_from_slice(&vec![2; 1024 * 1024]);
        recycle(&mut out);
        assert!(out.is_empty());
        assert!(
            out.capacity() <= WRITE_BUFFER_KEPT_BYTES,
            "{}",
            out.capacity()
        );
    }
}
