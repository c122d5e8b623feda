//! What the AWS exporters share (feature `aws`): one way to configure the
//! SDK clients, one way to describe a failed call, calls that fail when they
//! stop making progress rather than when they are slow (`watched`), and the
//! fix that lets the SDKs that put a host prefix on their calls (SiteWise's
//! `data.`/`api.`) reach a local endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextMut,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use bytes::Bytes;

/// Time to open a connection to the endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A call that has moved no byte (of its request, or of the answer's
/// arrival) for this long has failed: the link is stalled or gone.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A batch call still going after this long is given up and the export
/// sends smaller batches from then on (`BatchResult::TooSlow`): on a slow
/// link a smaller call finishes, and a cancelled one costs at most this much
/// of the link (its records may have arrived: at-least-once).
pub const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// The outer bound of any call, enforced by the SDK, for calls not made
/// through [`watched`]: a 5 MiB S3 part at 6 kB/s.
pub const OPERATION_TIMEOUT_MAX: Duration = Duration::from_secs(15 * 60);
/// The request body is handed to the connection in pieces of this size, so
/// that its progress is seen as it is sent.
pub const BODY_PIECE_BYTES: usize = 16 * 1024;

/// The shared SDK configuration from the standard AWS chain (region,
/// credentials, `AWS_ENDPOINT_URL[_<SERVICE>]`), with the SDK's own retries
/// off (the exporter runtime retries, and records every failure), a bounded
/// connect time, and no call time limit but [`OPERATION_TIMEOUT_MAX`]: slow
/// calls are watched for progress instead ([`watched`]).
pub async fn sdk_config() -> aws_config::SdkConfig {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::disabled())
        // The SDK's own stalled-stream protection judges an upload by how
        // fast its body is taken, which on a slow link stops for as long
        // as the kernel's send buffer takes to drain: it failed every part
        // of a 12 MiB S3 task at 48 kB/s. `watched` judges by the link.
        .stalled_stream_protection(
            aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled(),
        )
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT_MAX)
                .build(),
        )
        .load()
        .await;
    if config.region().is_none() {
        tracing::warn!(
            "no AWS region is configured (AWS_REGION): every export will fail until one is"
        );
    }
    config
}

tokio::task_local! {
    /// When the call being made by this task last moved (ms since its start).
    static CALL_PROGRESS: Arc<Progress>;
}

/// A call's progress: when it last moved a byte.
pub struct Progress {
    started: Instant,
    last_ms: AtomicU64,
    /// Request bytes handed to the connection.
    sent: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }
    fn moved(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Why a watched call was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// Nothing moved for this long.
    Stalled { idle: Duration, sent_bytes: u64 },
    /// Still going at its deadline, with this much of its request still
    /// queued in the process's TCP send queues.
    Deadline {
        after: Duration,
        sent_bytes: u64,
        queued_bytes: u64,
    },
}

impl Watch {
    /// What the export's status says about it.
    pub fn describe(&self, what: &str) -> String {
        match self {
            Watch::Stalled { idle, sent_bytes } => format!(
                "{what} made no progress for {} s ({sent_bytes} bytes of the request sent): the link is stalled or down",
                idle.as_secs()
            ),
            Watch::Deadline {
                after, sent_bytes, ..
            } => format!(
                "{what} was still going after {} s ({sent_bytes} bytes of the request sent): the link is too slow for this batch",
                after.as_secs()
            ),
        }
    }

    /// How long the link needs to carry what a given-up call left queued,
    /// at the rate it carried the rest (at most [`CALL_DEADLINE`]).
    pub fn drain(&self) -> Duration {
        match *self {
            Watch::Deadline {
                after,
                sent_bytes,
                queued_bytes,
            } => {
                let carried = sent_bytes.saturating_sub(queued_bytes).max(1);
                let rate = carried as f64 / after.as_secs_f64().max(0.001);
                Duration::from_secs_f64(queued_bytes as f64 / rate).min(CALL_DEADLINE)
            }
            Watch::Stalled { .. } => Duration::ZERO,
        }
    }

    /// The batch result for an exporter: a deadline splits the batch, a
    /// stall retries it.
    pub fn batch_result(&self, what: &str) -> crate::BatchResult {
        match self {
            Watch::Deadline { .. } => crate::BatchResult::TooSlow {
                reason: self.describe(what),
                drain: self.drain(),
            },
            Watch::Stalled { .. } => crate::BatchResult::RetryAll(self.describe(what)),
        }
    }

    /// The same for a call of `send_parsed`.
    pub fn call_result(&self, what: &str) -> crate::Call {
        match self {
            Watch::Deadline { .. } => crate::Call::TooSlow {
                reason: self.describe(what),
                drain: self.drain(),
            },
            Watch::Stalled { .. } => crate::Call::Failed(self.describe(what)),
        }
    }
}

/// Runs an SDK call (`fut`, whose client has [`ProgressTracking`]) and gives
/// it up when nothing moved for [`STALL_TIMEOUT`], or, with `deadline`, when
/// it is still going then. A slow call that keeps moving is left to finish.
pub async fn watched<F: Future>(fut: F, deadline: Option<Duration>) -> Result<F::Output, Watch> {
    watched_with(fut, STALL_TIMEOUT, deadline).await
}

/// [`watched`] with another stall bound.
pub async fn watched_with<F: Future>(
    fut: F,
    stall: Duration,
    deadline: Option<Duration>,
) -> Result<F::Output, Watch> {
    let progress = Arc::new(Progress::new());
    let tick = (stall / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let p = progress.clone();
    let mut queued = tcp_send_queued();
    CALL_PROGRESS
        .scope(progress, async move {
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    out = &mut fut => return Ok(out),
                    _ = tokio::time::sleep(tick) => {
                        // What the kernel took but the link has not carried
                        // yet drains without the call seeing it.
                        let now_queued = tcp_send_queued();
                        if now_queued != queued {
                            queued = now_queued;
                            p.moved(0);
                        }
                        let sent_bytes = p.sent.load(Ordering::Relaxed);
                        let idle = p.idle();
                        if idle >= stall {
                            return Err(Watch::Stalled { idle, sent_bytes });
                        }
                        let after = p.started.elapsed();
                        if deadline.is_some_and(|d| after >= d) {
                            return Err(Watch::Deadline {
                                after,
                                sent_bytes,
                                queued_bytes: queued,
                            });
                        }
                    }
                }
            }
        })
        .await
}

/// Bytes waiting in the send queues of this process's TCP sockets (handed
/// to the kernel but not yet acknowledged by the peer), from `TIOCOUTQ`.
/// A request body is taken by the kernel long before a slow link carries
/// it (socket buffers hold megabytes); while this number moves, the link
/// does. Counted over every TCP socket of the process: a call sees the
/// progress of the link it shares with the others.
pub fn tcp_send_queued() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut total = 0u64;
    for entry in dir.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
            .filter(|_| is_socket)
        else {
            continue;
        };
        let mut protocol: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let mut queued: libc::c_int = 0;
        // SAFETY: plain queries on a descriptor of this process, with
        // out-pointers to locals of the right size. A descriptor closed
        // (or reused) since it was listed makes them fail or answer for
        // another socket: a wrong count for one tick, nothing worse.
        let tcp = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PROTOCOL,
                (&mut protocol as *mut libc::c_int).cast(),
                &mut len,
            ) == 0
                && protocol == libc::IPPROTO_TCP
                && libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) == 0
        };
        if tcp {
            total += queued.max(0) as u64;
        }
    }
    total
}

/// The interceptor that lets [`watched`] see a call's progress: the request
/// body goes to the connection in [`BODY_PIECE_BYTES`] pieces, each noted
/// as it is taken, and the answer's arrival is noted too. Install it on
/// every exporter client.
#[derive(Debug)]
pub struct ProgressTracking;

impl Intercept for ProgressTracking {
    fn name(&self) -> &'static str {
        "ProgressTracking"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Ok(progress) = CALL_PROGRESS.try_with(Arc::clone) else {
            return Ok(());
        };
        progress.moved(0);
        let request = context.request_mut();
        let body = request.take_body();
        *request.body_mut() = body.map_preserve_contents(move |inner| {
            SdkBody::from_body_1_x(Tracked {
                inner,
                rest: Bytes::new(),
                progress: progress.clone(),
            })
        });
        Ok(())
    }

    fn read_after_transmit(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Ok(progress) = CALL_PROGRESS.try_with(Arc::clone) {
            progress.moved(0);
        }
        Ok(())
    }
}

/// A request body handed out in pieces, each noted in `progress`.
struct Tracked {
    inner: SdkBody,
    rest: Bytes,
    progress: Arc<Progress>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(other) => {
                        this.progress.moved(0);
                        return Poll::Ready(Some(Ok(other)));
                    }
                },
                Poll::Ready(other) => return Poll::Ready(other),
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(BODY_PIECE_BYTES));
        this.progress.moved(piece.len());
        Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = http_body::Body::size_hint(&self.inner);
        let extra = self.rest.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + extra);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

/// "`what` failed: Code: message", or the whole error chain when the
/// service did not answer (connection refused, timeout…).
pub fn describe_call_error<E>(what: &str, e: &E) -> String
where
    E: ProvideErrorMetadata + std::error::Error,
{
    match e.code() {
        Some(code) => format!(
            "{what} failed: {code}: {}",
            e.message().unwrap_or("no message")
        ),
        None => format!("{what} failed: {}", DisplayErrorContext(e)),
    }
}

/// Per-entry error codes (SiteWise, IoT Analytics) that say the entry itself
/// can never be accepted as sent: the entry is skipped and recorded. Every
/// other code, known or not (throttling, unavailability, internal failure,
/// limits, access denied: a policy can be fixed without touching the data),
/// is sent again.
pub fn is_permanent_entry_code(code: &str) -> bool {
    matches!(
        code,
        "InvalidRequestException"
            | "ResourceNotFoundException"
            | "TimestampOutOfRangeException"
            | "ConflictingOperationException"
    )
}

/// Removes a host prefix the SDK model adds (`data.`, `api.`) when the
/// endpoint is a local address, where `data.127.0.0.1` cannot resolve.
/// Real AWS host names are left alone.
#[derive(Debug)]
pub struct LocalEndpointHostPrefix;

fn strip_prefix(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    for prefix in ["data.", "api."] {
        if let Some(after) = rest.strip_prefix(prefix) {
            let host = after
                .split(['/', '?'])
                .next()
                .unwrap_or("")
                .rsplit_once(':')
                .map_or(after.split(['/', '?']).next().unwrap_or(""), |(h, _)| h);
            let local = host == "localhost"
                || host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok();
            if local {
                return Some(format!("{scheme}://{after}"));
            }
        }
    }
    None
}

impl Intercept for LocalEndpointHostPrefix {
    fn name(&self) -> &'static str {
        "LocalEndpointHostPrefix"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        if let Some(uri) = strip_prefix(request.uri()) {
            request.set_uri(uri)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_hosts_lose_their_prefix() {
        assert_eq!(
            strip_prefix("http://data.127.0.0.1:4000/properties").as_deref(),
            Some("http://127.0.0.1:4000/properties")
        );
        assert_eq!(
            strip_prefix("http://api.localhost/assets?x=1").as_deref(),
            Some("http://localhost/assets?x=1")
        );
        assert_eq!(
            strip_prefix("https://data.iotsitewise.us-east-1.amazonaws.com/properties"),
            None
        );
        assert_eq!(strip_prefix("http://127.0.0.1:4000/properties"), None);
    }

    #[test]
    fn a_body_goes_out_in_pieces_each_noted() {
        use http_body::Body as _;
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let progress = Arc::new(Progress::new());
        let mut body = Tracked {
            inner: SdkBody::from(data.clone()),
            rest: Bytes::new(),
            progress: progress.clone(),
        };
        assert_eq!(body.size_hint().exact(), Some(100_000));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        let mut pieces = 0;
        while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
            let piece = frame.unwrap().into_data().unwrap();
            assert!(piece.len() <= BODY_PIECE_BYTES);
            out.extend_from_slice(&piece);
            pieces += 1;
            assert_eq!(body.size_hint().exact(), Some((100_000 - out.len()) as u64));
        }
        assert_eq!(out, data);
        assert_eq!(pieces, 100_000usize.div_ceil(BODY_PIECE_BYTES));
        assert_eq!(progress.sent.load(Ordering::Relaxed), 100_000);
        assert!(body.is_end_stream());
    }

    #[test]
    fn the_kernel_send_queue_of_tcp_sockets_is_seen() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let before = tcp_send_queued();
        // The peer never reads: what does not fit its receive buffer stays
        // queued on our side.
        client.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..200 {
            if client.write(&chunk).is_err() {
                break;
            }
        }
        let queued = tcp_send_queued();
        assert!(queued > before, "{queued} bytes queued, {before} before");
        drop(server);
    }

    #[tokio::test]
    async fn a_stalled_call_fails_a_slow_one_finishes_a_long_one_meets_its_deadline() {
        let stall = Duration::from_millis(200);
        // Nothing ever moves.
        let r = watched_with(std::future::pending::<()>(), stall, None).await;
        assert!(matches!(r, Err(Watch::Stalled { .. })), "{r:?}");
        // Slow but moving: a piece every 100 ms for 1 s.
        let slow = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                CALL_PROGRESS.with(|p| p.moved(1));
            }
            7
        };
        assert_eq!(watched_with(slow, stall, None).await, Ok(7));
        // Moving, but past its deadline.
        let endless = async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                CALL_PROGRESS.with(|p| p.moved(1));
            }
        };
        let r = watched_with(endless, stall, Some(Duration::from_millis(500))).await;
        assert!(matches!(r, Err(Watch::Deadline { .. })), "{r:?}");
    }

    #[test]
    fn only_known_permanent_codes_skip_an_entry() {
        assert!(is_permanent_entry_code("TimestampOutOfRangeException"));
        assert!(is_permanent_entry_code("ResourceNotFoundException"));
        assert!(!is_permanent_entry_code("ThrottlingException"));
        assert!(!is_permanent_entry_code("AccessDeniedException"));
        assert!(!is_permanent_entry_code("SomethingNewException"));
    }
}
