//! What every exporter process shares. An exporter implements
//! [`Destination`] (how to send a batch to one AWS service and what came of
//! each record) and calls [`run_process`]; this crate does the rest:
//!
//! - learns the streams and exports of its kind from the store and follows
//!   creates, updates, deletes and new data through the store's change events
//!   (one long poll; an idle exporter sleeps);
//! - per export, reads from the stored cursor, forms batches bounded by
//!   `batchSize`, the destination's limits and the bandwidth cap, and sends
//!   one when `batchSize` messages wait or the oldest waiting message has
//!   waited `batchIntervalMillis` (without an interval: as soon as data is
//!   there);
//! - re-sends exactly the records that failed with a retryable error, forever,
//!   with capped jittered backoff; skips records the destination can never
//!   accept and records which;
//! - moves the cursor in the store only over records that were delivered or
//!   skipped, with a compare-and-set so a cursor reset by an update is never
//!   overwritten; records the export status after each batch;
//! - bounds concurrent uploads per process (thread pool size, by priority) and
//!   shares one upload budget with every other exporter through the store.
//!
//! Export is at-least-once: a batch sent but not yet committed when the
//! process dies is sent again.

#[cfg(feature = "aws")]
pub mod aws;
pub mod metrics;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bus_schema::{ErrorKind, ExportCommon, ExportProgress, Message, StreamDefinition, StreamInfo};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use bus::unix_ms;
use store::{Store, StoreError, WATCH_WAIT_MS};

/// What a signed AWS request adds to its body on the wire: the request line
/// and headers (authorization, dates, user agent, content type and length,
/// host), bytes, as measured at a proxy in front of moto (1.2–1.4 KB).
pub const REQUEST_HEAD_BYTES: usize = 1400;

/// Base64 of `n` bytes, as JSON protocols carry binary data.
pub fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// First delay after a failure.
pub const RETRY_DELAY_FIRST: Duration = Duration::from_millis(200);
/// Longest delay between two attempts (the AWS stream manager documents
/// "up to 5 minutes"; a shorter cap drains sooner after an outage).
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(60);
/// Longest wait before retrying a call that failed because the endpoint
/// could not be reached (connection refused or broken, DNS, a timeout):
/// such an attempt costs the endpoint nothing, and it is what notices the
/// link coming back, so a backlog moves again within about 5 s (with
/// jitter) of the endpoint being reachable, whatever the outage's length.
/// Throttling and every other answer from the endpoint keep the full
/// backoff (up to [`RETRY_DELAY_MAX`]).
pub const UNREACHABLE_RETRY_DELAY_MAX: Duration = Duration::from_secs(4);

/// How long to wait after a failed attempt, given the backoff's next delay
/// and the failure.
pub fn retry_delay(next: Duration, reason: &str) -> Duration {
    match metrics::error_class(reason) {
        "connection" | "timeout" => next.min(UNREACHABLE_RETRY_DELAY_MAX.mul_f64(1.25)),
        _ => next,
    }
}
/// How long a stopping exporter lets in-flight uploads finish and commit
/// (the supervisor waits 5 s before it kills).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// Sequence numbers an error message names at most.
pub const ERROR_SEQUENCE_NUMBERS_MAX: usize = 10;
/// Priority of exports that have none (after 10, the lowest settable).
pub const PRIORITY_NONE: i64 = 11;
/// Batch memory an export waits for when the memory it would like is taken
/// (it then reads a smaller batch).
pub const BATCH_MEMORY_SHARE_BYTES_MIN: usize = 256 * 1024;
/// Batches an export reads from the store ahead of the one being sent.
pub const READ_AHEAD_BATCHES: usize = 1;
/// Payload bytes of all batches held in memory by one exporter process
/// (read ahead, being sent, or being re-sent), at most. A batch larger than
/// this is read alone.
pub const BATCH_MEMORY_BYTES_MAX: usize = 24 * 1024 * 1024;

/// What became of one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination acknowledged it.
    Delivered,
    /// It failed in a way that may pass later: send it again.
    Retry(String),
    /// The destination can never accept it: skip it and record why.
    Reject(String),
}

/// What became of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchResult {
    /// One outcome per record, in the order sent.
    PerRecord(Vec<Outcome>),
    /// Nothing was accepted (throttled, unavailable, timed out, connection
    /// lost, misconfigured): send the whole batch again after a backoff.
    RetryAll(String),
    /// The call was given up at its deadline while still moving (the link
    /// is slower than the batch needs): the export sends half as many bytes
    /// per call from now on, growing back as calls succeed, once the link
    /// has carried what the given-up call left queued (`drain`).
    TooSlow { reason: String, drain: Duration },
}

/// What one call to a destination came to (for [`send_parsed`]).
pub enum Call {
    /// The service answered: one outcome per item sent.
    Answered(Vec<Outcome>),
    /// The whole call was refused as invalid (one bad item spoils it).
    Invalid(String),
    /// The whole call failed in a way that may pass later.
    Failed(String),
    /// The call was given up at its deadline: see [`BatchResult::TooSlow`].
    TooSlow { reason: String, drain: Duration },
}

/// Sends the records of a batch that could be turned into the service's
/// items (`parsed`; the others are skipped with their reason) in one call.
/// When the service refuses the whole call as invalid, each item is sent
/// alone, so one bad item cannot block the others.
pub async fn send_parsed<T, F, Fut>(parsed: Vec<Result<T, String>>, call: F) -> BatchResult
where
    T: Clone,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Call>,
{
    let mut outcomes: Vec<Option<Outcome>> = vec![None; parsed.len()];
    let mut index = Vec::new();
    let mut items = Vec::new();
    for (i, p) in parsed.into_iter().enumerate() {
        match p {
            Ok(item) => {
                index.push(i);
                items.push(item);
            }
            Err(why) => outcomes[i] = Some(Outcome::Reject(why)),
        }
    }
    if !items.is_empty() {
        let sent = match call(items.clone()).await {
            Call::Answered(o) if o.len() == items.len() => o,
            Call::Answered(o) => {
                return BatchResult::RetryAll(format!(
                    "the service answered {} results for {} items",
                    o.len(),
                    items.len()
                ))
            }
            Call::Failed(why) => return BatchResult::RetryAll(why),
            Call::TooSlow { reason, drain } => return BatchResult::TooSlow { reason, drain },
            Call::Invalid(why) if items.len() == 1 => vec![Outcome::Reject(why)],
            Call::Invalid(_) => {
                let mut alone = Vec::with_capacity(items.len());
                for item in items {
                    alone.push(match call(vec![item]).await {
                        Call::Answered(mut o) if o.len() == 1 => o.pop().expect("one outcome"),
                        Call::Answered(_) => {
                            Outcome::Retry("the service answered no result".into())
                        }
                        Call::Invalid(why) => Outcome::Reject(why),
                        Call::Failed(why) | Call::TooSlow { reason: why, .. } => {
                            Outcome::Retry(why)
                        }
                    });
                }
                alone
            }
        };
        for (i, o) in index.into_iter().zip(sent) {
            outcomes[i] = Some(o);
        }
    }
    BatchResult::PerRecord(
        outcomes
            .into_iter()
            .map(|o| o.expect("every record has an outcome"))
            .collect(),
    )
}

/// A destination's per-call limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records per call, at most; also `batchSize`'s default and maximum.
    pub records_per_call: usize,
    /// Bytes per call, at most, as [`Destination::record_size`] counts them.
    pub bytes_per_call: usize,
    /// A record larger than this can never be sent: it is skipped.
    pub record_bytes_max: usize,
}

/// One export of one stream, as the destination sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Export<T> {
    pub stream: String,
    /// The stream's incarnation (`StreamInfo::incarnation`): a stream deleted
    /// and created again is a new export, and commits carry it so that one
    /// in flight for the old stream never lands on the new one.
    pub incarnation: u64,
    pub identifier: String,
    pub common: ExportCommon,
    pub target: T,
}

impl<T> Export<T> {
    pub fn priority(&self) -> i64 {
        self.common
            .priority
            .unwrap_or(PRIORITY_NONE)
            .clamp(1, PRIORITY_NONE)
    }
}

/// An AWS destination.
pub trait Destination: Send + Sync + 'static {
    /// Per-export settings beyond the common ones (e.g. the Kinesis stream).
    type Target: Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static;
    /// The exports of this destination's kind in a stream definition.
    fn exports(&self, def: &StreamDefinition) -> Vec<(ExportCommon, Self::Target)>;
    /// The kind of export this destination serves: the process is woken
    /// only by appends to streams with an export of this kind.
    fn kind(&self) -> bus_schema::ExportKind;
    fn limits(&self) -> Limits;
    /// Size of one record as the destination's limits count it.
    fn record_size(&self, payload: &[u8]) -> usize {
        payload.len()
    }
    /// Bytes a call carrying `records` puts on the wire (request line,
    /// headers and body as encoded), which the bandwidth cap is charged.
    /// Default: the records' sizes plus [`REQUEST_HEAD_BYTES`].
    fn wire_bytes(&self, records: &[Message]) -> usize {
        records
            .iter()
            .map(|m| self.record_size(&m.payload))
            .sum::<usize>()
            + REQUEST_HEAD_BYTES
    }
    /// The export was deleted (or its stream was) while it may have had
    /// work in progress; its worker has been stopped. Default: nothing.
    fn cancelled<'a>(
        &'a self,
        _export: &'a Export<Self::Target>,
    ) -> impl Future<Output = ()> + Send + 'a {
        async {}
    }
    /// Messages `first .. first + count` of the export's stream were removed
    /// by its storage policy (overwrite, TTL) before they could be sent;
    /// the loss is counted and recorded by the store. Default: nothing.
    fn removed<'a>(
        &'a self,
        _export: &'a Export<Self::Target>,
        _first: i64,
        _count: i64,
    ) -> impl Future<Output = ()> + Send + 'a {
        async {}
    }
    /// Sends `records` (1 ..= limits) and says what became of each.
    fn send<'a>(
        &'a self,
        export: &'a Export<Self::Target>,
        records: &'a [Message],
    ) -> impl Future<Output = BatchResult> + Send + 'a;
}

/// Settings every exporter reads (validated at start-up).
#[derive(Debug, Clone)]
pub struct ExporterConfig {
    pub root: PathBuf,
    pub log: settings::LogSettings,
    /// Shared upload budget, bytes/s; `None` is unlimited.
    pub bandwidth: Option<u64>,
    /// Concurrent uploads of this process.
    pub pool_size: usize,
    /// S3 multipart part size, bytes.
    pub s3_part_bytes: u64,
}

impl ExporterConfig {
    pub fn from_settings(s: &settings::Settings) -> Self {
        Self {
            root: s.root.clone(),
            log: s.log.clone(),
            bandwidth: s.exporter_bandwidth,
            pool_size: s.exporter_pool_size,
            s3_part_bytes: s.s3_part_bytes,
        }
    }
}

/// FNV-1a, 64 bits: a hash that stays the same across versions and
/// platforms, for names that must survive restarts (message ids, journal
/// file names).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Capped exponential backoff with ±25% jitter.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: RETRY_DELAY_FIRST,
        }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(RETRY_DELAY_MAX);
        d.mul_f64(rand::random_range(0.75..1.25))
    }
    pub fn reset(&mut self) {
        self.next = RETRY_DELAY_FIRST;
    }
}

/// The whole exporter process: configuration, logging, runtime, signals.
/// `name` is the process name; `make` builds the destination from the
/// validated settings.
pub fn run_process<D, F, Fut>(name: &'static str, make: F) -> ExitCode
where
    D: Destination,
    F: FnOnce(ExporterConfig) -> Fut,
    Fut: Future<Output = Result<D, String>>,
{
    if let Some(code) = settings::cli::handle_child_args(
        name,
        "An exporter of stream-manager: sends the streams' exports of its kind to their destination.",
    ) {
        return code;
    }
    let config = match settings::Settings::from_env() {
        Ok(s) => ExporterConfig::from_settings(&s),
        Err(problems) => return settings::report_problems(name, &problems),
    };
    settings::logging::init(
        name,
        &config.log,
        &[
            "export_runtime",
            "export_kinesis",
            "export_s3",
            "export_analytics",
            "export_sitewise",
        ],
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let dest = match make(config.clone()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the destination client");
                return ExitCode::from(2);
            }
        };
        let store = match Store::connect(&config.root) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the bus");
                return ExitCode::from(1);
            }
        };
        let runtime = Runtime::new(dest, store, &config, name);
        let stop = async {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => std::future::pending().await,
            }
        };
        tracing::info!(pool = config.pool_size, bandwidth_bytes_per_s = ?config.bandwidth, "exporter started");
        runtime.run(stop).await;
        tracing::info!("exporter stopped");
        ExitCode::SUCCESS
    })
}

struct Shared<D: Destination> {
    dest: D,
    store: Store,
    bandwidth: Option<u64>,
    stopping: watch::Receiver<bool>,
    /// Batch memory, in KiB ([`BATCH_MEMORY_BYTES_MAX`]).
    memory: Arc<tokio::sync::Semaphore>,
    metrics: metrics::ExportMetrics,
    /// The process name, in metrics.
    process: &'static str,
}

struct Task<T> {
    export: Export<T>,
    newest: watch::Sender<i64>,
    join: JoinHandle<()>,
}

/// The exports of one process and the follower that keeps them in step with
/// the store.
pub struct Runtime<D: Destination> {
    shared: Arc<Shared<D>>,
    stop_tx: watch::Sender<bool>,
    tasks: HashMap<(String, String), Task<D::Target>>,
}

impl<D: Destination> Runtime<D> {
    pub fn new(dest: D, store: Store, config: &ExporterConfig, process: &'static str) -> Self {
        let (stop_tx, stopping) = watch::channel(false);
        Self {
            shared: Arc::new(Shared {
                dest,
                store,
                bandwidth: config.bandwidth,
                stopping,
                memory: Arc::new(tokio::sync::Semaphore::new(BATCH_MEMORY_BYTES_MAX / 1024)),
                metrics: Default::default(),
                process,
            }),
            stop_tx,
            tasks: HashMap::new(),
        }
    }

    /// Runs until `stop` completes, then lets in-flight batches finish and
    /// commit for up to [`SHUTDOWN_GRACE`].
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let reporter = AbortOnDrop(tokio::spawn(report_metrics(self.shared.clone())));
        let mut epoch = 0u64;
        let mut after = 0u64;
        let mut backoff = Backoff::default();
        loop {
            // An export whose worker ended by itself (its stream was deleted
            // and made again while we were behind, or it failed) is started
            // again from what the store holds.
            if self.tasks.values().any(|t| t.join.is_finished()) {
                epoch = 0;
            }
            let batch = tokio::select! {
                _ = &mut stop => break,
                b = self.shared.store.watch(epoch, after, WATCH_WAIT_MS, Some(self.shared.dest.kind())) => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the store; retrying");
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            if batch.resync {
                // We are new, behind, or the store restarted: read everything.
                // Events after `batch.next` are seen after this, so nothing is
                // missed.
                let all = tokio::select! {
                    _ = &mut stop => break,
                    all = self.shared.store.describe_all() => all,
                };
                match all {
                    Ok(all) => {
                        if epoch != 0 && batch.epoch != epoch {
                            // A restarted store may hold less than before (Memory
                            // streams start empty; an unclean stop may lose an
                            // unsynced tail): every export starts again from the
                            // store's cursor.
                            tracing::info!("the store restarted; exports restart from its cursors");
                            self.stop_all_tasks().await;
                        }
                        self.reconcile_all(all).await;
                        epoch = batch.epoch;
                        after = batch.next;
                        backoff.reset();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the streams; retrying");
                        epoch = 0;
                        tokio::select! {
                            _ = &mut stop => break,
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                        }
                    }
                }
                continue;
            }
            backoff.reset();
            after = batch.next;
            for event in batch.events {
                if !self.apply(event).await {
                    // A change we could not read: read everything next time.
                    epoch = 0;
                }
            }
        }
        drop(reporter);
        self.shutdown().await;
    }

    async fn stop_all_tasks(&mut self) {
        for (_, task) in self.tasks.drain() {
            task.join.abort();
            let _ = task.join.await;
        }
    }

    /// Applies one change event; `false` when the changed stream could not
    /// be read (the caller then reads everything again).
    async fn apply(&mut self, event: bus_schema::Event) -> bool {
        use bus_schema::Event;
        match event {
            Event::Appended {
                name,
                newest_sequence_number,
            } => {
                for ((stream, _), task) in &self.tasks {
                    if *stream == name {
                        task.newest.send_if_modified(|n| {
                            let newer = newest_sequence_number > *n;
                            if newer {
                                *n = newest_sequence_number;
                            }
                            newer
                        });
                    }
                }
            }
            Event::StreamCreated { name } | Event::StreamUpdated { name } => {
                match self.shared.store.describe(&name).await {
                    Ok(info) => self.reconcile_stream(&name, Some(&info)).await,
                    Err(StoreError::Refused(r)) if r.kind == ErrorKind::ResourceNotFound => {
                        self.reconcile_stream(&name, None).await
                    }
                    Err(e) => {
                        tracing::warn!(stream = %name, error = %e, "cannot read a changed stream; reading everything again");
                        return false;
                    }
                }
            }
            Event::StreamDeleted { name } => self.reconcile_stream(&name, None).await,
        }
        true
    }

    async fn reconcile_all(&mut self, all: Vec<StreamInfo>) {
        let names: std::collections::HashSet<String> =
            all.iter().map(|i| i.definition.name.clone()).collect();
        let gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|(s, _)| !names.contains(s))
            .map(|(s, _)| s.clone())
            .collect();
        for name in gone {
            self.reconcile_stream(&name, None).await;
        }
        for info in &all {
            self.reconcile_stream(&info.definition.name, Some(info))
                .await;
        }
    }

    /// Makes the running exports of `name` match its definition: new ones
    /// start, changed ones restart from the stored cursor, removed or
    /// disabled ones stop.
    async fn reconcile_stream(&mut self, name: &str, info: Option<&StreamInfo>) {
        let dest = &self.shared.dest;
        let wanted: Vec<Export<D::Target>> = info
            .map(|i| {
                dest.exports(&i.definition)
                    .into_iter()
                    .filter(|(c, _)| c.disabled != Some(true))
                    .map(|(common, target)| Export {
                        stream: name.to_string(),
                        incarnation: i.incarnation,
                        identifier: common.identifier.clone(),
                        common,
                        target,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let stale: Vec<(String, String)> = self
            .tasks
            .iter()
            .filter(|((s, id), t)| {
                s == name
                    && (t.join.is_finished()
                        || !wanted.iter().any(|w| w.identifier == *id && *w == t.export))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let defined: Vec<String> = info
            .map(|i| {
                dest.exports(&i.definition)
                    .into_iter()
                    .map(|(c, _)| c.identifier)
                    .collect()
            })
            .unwrap_or_default();
        for key in stale {
            if let Some(task) = self.tasks.remove(&key) {
                self.shared.metrics.forget(&key.0, &key.1);
                tracing::info!(stream = %key.0, export = %key.1, "export stopped or changed");
                task.join.abort();
                let _ = task.join.await;
                if !defined.contains(&key.1) {
                    self.shared.dest.cancelled(&task.export).await;
                }
            }
        }
        let Some(info) = info else { return };
        for export in wanted {
            let key = (export.stream.clone(), export.identifier.clone());
            if let Some(task) = self.tasks.get(&key) {
                task.newest.send_if_modified(|n| {
                    let newer = info.storage.newest_sequence_number > *n;
                    if newer {
                        *n = info.storage.newest_sequence_number;
                    }
                    newer
                });
                continue;
            }
            let cursor = info
                .export_statuses
                .iter()
                .find(|s| s.export_identifier == export.identifier)
                .map(|s| s.last_exported_sequence_number)
                .unwrap_or(-1);
            let (newest, newest_rx) = watch::channel(info.storage.newest_sequence_number);
            tracing::info!(stream = %key.0, export = %key.1, cursor, "export started");
            let worker = ExportWorker {
                shared: self.shared.clone(),
                export: export.clone(),
                cursor,
                newest: newest_rx,
                recorded_error: None,
                call_bytes: self.shared.dest.limits().bytes_per_call,
            };
            let join = tokio::spawn(worker.run());
            self.tasks.insert(
                key,
                Task {
                    export,
                    newest,
                    join,
                },
            );
        }
    }

    async fn shutdown(mut self) {
        let _ = self.stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for (_, task) in self.tasks.drain() {
            let mut join = task.join;
            if tokio::time::timeout_at(deadline, &mut join).await.is_err() {
                join.abort();
            }
        }
    }
}

/// An upload slot held from the store: renewed while held, given back when
/// dropped.
struct SlotLease {
    _renew: AbortOnDrop,
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl SlotLease {
    fn hold<D: Destination>(shared: &Arc<Shared<D>>, lease: u64) -> Self {
        let s = shared.clone();
        let renew = AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(SLOT_LEASE_RENEW).await;
                if let Err(e) = s.store.renew_slot(lease).await {
                    tracing::debug!(lease, error = %e, "cannot renew an upload slot");
                }
            }
        }));
        let s = shared.clone();
        Self {
            _renew: renew,
            release: Some(Box::new(move || {
                tokio::spawn(async move {
                    if let Err(e) = s.store.release_slot(lease).await {
                        tracing::debug!(lease, error = %e, "cannot give an upload slot back (it lapses by itself)");
                    }
                });
            })),
        }
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// How often a held upload slot is renewed (the store takes back a lease
/// not renewed for 30 s: an exporter killed mid-upload frees its slot then).
pub const SLOT_LEASE_RENEW: Duration = Duration::from_secs(10);

/// Reports the process's metrics to the store every
/// [`metrics::REPORT_INTERVAL`].
async fn report_metrics<D: Destination>(shared: Arc<Shared<D>>) {
    let mut tick = tokio::time::interval(metrics::REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let families = shared.metrics.families(shared.process);
        if let Err(e) = shared.store.report_metrics(shared.process, families).await {
            tracing::debug!(error = %e, "cannot report metrics to the store");
        }
    }
}

/// Why a worker stopped waiting.
enum Wake {
    Ready,
    Stop,
}

impl<D: Destination> Shared<D> {
    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    fn batch_size(&self, export: &Export<D::Target>) -> usize {
        let max = self.dest.limits().records_per_call;
        export
            .common
            .batch_size
            .map(|b| (b.max(1) as usize).min(max))
            .unwrap_or(max)
    }

    /// Bytes one batch may carry: the destination's limit, and under a
    /// bandwidth cap no more than one second of the budget (so priorities
    /// and the cap act at a fine grain).
    fn batch_bytes(&self) -> usize {
        let limit = self.dest.limits().bytes_per_call;
        match self.bandwidth {
            Some(rate) => limit.min(rate as usize).max(1),
            None => limit,
        }
    }

    /// Sleeps `d`, or less if the process is stopping.
    async fn pause(&self, d: Duration) -> Wake {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => Wake::Ready,
            _ = stopping.wait_for(|s| *s) => Wake::Stop,
        }
    }
}

/// A batch read from the store ahead of sending, holding its share of the
/// process's batch memory.
struct Batch {
    messages: Vec<Message>,
    /// Messages before this batch that the stream's storage policy removed
    /// before they were exported: (first sequence number, count).
    removed: Option<(i64, i64)>,
    _memory: tokio::sync::OwnedSemaphorePermit,
}

/// KiB of batch memory `bytes` of payload take (the semaphore counts KiB).
fn memory_kib(bytes: usize) -> u32 {
    (bytes.div_ceil(1024) as u32).clamp(1, (BATCH_MEMORY_BYTES_MAX / 1024) as u32)
}

/// Reads an export's batches from the store when they are due and hands them
/// to its worker, at most [`READ_AHEAD_BATCHES`] ahead, so the store is read
/// while the previous batch is on the wire.
struct Reader<D: Destination> {
    shared: Arc<Shared<D>>,
    export: Export<D::Target>,
    /// Next sequence number to read.
    next: i64,
    newest: watch::Receiver<i64>,
    tx: tokio::sync::mpsc::Sender<Batch>,
}

impl<D: Destination> Reader<D> {
    async fn run(mut self) {
        let shared = self.shared.clone();
        let mut backoff = Backoff::default();
        let mut first_pending: Option<(i64, i64)> = None;
        loop {
            if let Wake::Stop = self.wait_for_batch(&mut first_pending, &mut backoff).await {
                return;
            }
            // A place in the hand-over queue first, so an export whose worker
            // is stuck holds at most two batches of memory.
            let Ok(slot) = self.tx.reserve().await else {
                return;
            };
            // Payload bytes, as the store counts them. The destination
            // counts a per-record overhead on top (Kinesis: the partition
            // key): the worker splits a batch into calls within the
            // destination's limits by its own count. (Subtracting a full
            // batch's overhead here made batches of one record under a
            // small bandwidth cap: 500 keys are more than 12 kB.)
            let batch_size = shared.batch_size(&self.export);
            let mut max_bytes = shared.batch_bytes();
            // Batch memory: take what the batch may need if it is free now;
            // otherwise wait for a small share (a large request waiting at the
            // head of the queue would hold back every other export).
            let want = memory_kib(max_bytes);
            let memory = match shared.memory.clone().try_acquire_many_owned(want) {
                Ok(m) => m,
                Err(_) => {
                    let small = want.min(memory_kib(BATCH_MEMORY_SHARE_BYTES_MIN));
                    max_bytes = max_bytes.min(small as usize * 1024);
                    let Ok(m) = shared.memory.clone().acquire_many_owned(small).await else {
                        return;
                    };
                    m
                }
            };
            let read = shared
                .store
                .read(
                    &self.export.stream,
                    self.next,
                    batch_size,
                    max_bytes,
                    Some(&self.export.identifier),
                )
                .await;
            let messages = match read {
                Ok(m) => m,
                Err(e) if e.kind() == Some(ErrorKind::ResourceNotFound) => return,
                Err(e) => {
                    tracing::warn!(stream = %self.export.stream, error = %e, "cannot read the stream");
                    if let Wake::Stop = shared.pause(backoff.next_delay()).await {
                        return;
                    }
                    continue;
                }
            };
            let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
                // The data we were told about is not there (yet): wait for news.
                if let Wake::Stop = shared.pause(backoff.next_delay()).await {
                    return;
                }
                continue;
            };
            backoff.reset();
            first_pending = None;
            let removed = (first.sequence_number > self.next)
                .then(|| (self.next, first.sequence_number - self.next));
            self.next = last.sequence_number + 1;
            // Keep only the memory the batch really takes.
            let mut memory = memory;
            let used: usize = messages.iter().map(|m| m.payload.len()).sum();
            let keep = memory_kib(used);
            let excess = memory.num_permits().saturating_sub(keep as usize);
            if excess > 0 {
                drop(memory.split(excess));
            }
            slot.send(Batch {
                messages,
                removed,
                _memory: memory,
            });
        }
    }

    /// Waits until a batch is due: `batchSize` messages wait, or (with an
    /// interval) the oldest waiting one has waited `batchIntervalMillis`, or
    /// (without) any message waits.
    async fn wait_for_batch(
        &mut self,
        first_pending: &mut Option<(i64, i64)>,
        backoff: &mut Backoff,
    ) -> Wake {
        let shared = self.shared.clone();
        let mut stopping = shared.stopping.clone();
        loop {
            if shared.stopping() {
                return Wake::Stop;
            }
            let newest = *self.newest.borrow_and_update();
            let waiting = newest - (self.next - 1);
            if waiting >= shared.batch_size(&self.export) as i64 {
                return Wake::Ready;
            }
            if waiting >= 1 {
                let Some(interval) = self.export.common.batch_interval_ms else {
                    return Wake::Ready;
                };
                // When did the oldest waiting message arrive?
                let seq = self.next;
                let ingest_ms = match *first_pending {
                    Some((s, ms)) if s == seq => ms,
                    _ => match shared
                        .store
                        .read(&self.export.stream, seq, 1, 1, None)
                        .await
                    {
                        Ok(m) if !m.is_empty() => {
                            *first_pending = Some((seq, m[0].ingest_time_ms));
                            m[0].ingest_time_ms
                        }
                        Ok(_) => return Wake::Ready,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the stream");
                            if let Wake::Stop = shared.pause(backoff.next_delay()).await {
                                return Wake::Stop;
                            }
                            continue;
                        }
                    },
                };
                // Clamped: a wall clock set back must not stretch the wait.
                let due_in =
                    (ingest_ms.saturating_add(interval) - bus::unix_ms() as i64).min(interval);
                if due_in <= 0 {
                    return Wake::Ready;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(due_in as u64)) => return Wake::Ready,
                    r = self.newest.changed() => if r.is_err() { return Wake::Stop },
                    _ = stopping.wait_for(|s| *s) => return Wake::Stop,
                }
                continue;
            }
            tokio::select! {
                r = self.newest.changed() => if r.is_err() { return Wake::Stop },
                _ = stopping.wait_for(|s| *s) => return Wake::Stop,
            }
        }
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a worker's pass over its batches ended.
enum End {
    /// The process is stopping, or the stream or export is gone.
    Stop,
    /// The stored cursor is not what we thought (reset by an update):
    /// start again from the store's.
    Reload,
}

/// A cursor commit submitted and not yet answered.
struct InFlightCommit {
    reply: bus::PendingReply,
    progress: ExportProgress,
}

struct ExportWorker<D: Destination> {
    shared: Arc<Shared<D>>,
    export: Export<D::Target>,
    /// Last sequence number delivered (or skipped) and committed, or whose
    /// commit is in flight.
    cursor: i64,
    newest: watch::Receiver<i64>,
    /// The error the store shows for this export now (to avoid rewriting it).
    recorded_error: Option<String>,
    /// Bytes one call may carry (as `record_size` counts them): the
    /// destination's limit, halved each time a call misses its deadline on
    /// a slow link and doubled back after each call that succeeds.
    call_bytes: usize,
}

/// What one batch came to.
struct Sent {
    bytes: i64,
    delivered: i64,
    skipped: Vec<(i64, String)>,
    /// Removed by the storage policy before export: (first, count).
    removed: Option<(i64, i64)>,
}

impl<D: Destination> ExportWorker<D> {
    fn stopping(&self) -> bool {
        self.shared.stopping()
    }

    async fn pause(&self, d: Duration) -> Wake {
        self.shared.pause(d).await
    }

    /// Sends the batches its reader hands over, in order, one at a time;
    /// each batch's cursor commit is on its way while the next is sent.
    async fn run(mut self) {
        loop {
            let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD_BATCHES);
            let reader = Reader {
                shared: self.shared.clone(),
                export: self.export.clone(),
                next: self.cursor + 1,
                newest: self.newest.clone(),
                tx,
            };
            let reader = AbortOnDrop(tokio::spawn(reader.run()));
            let mut in_flight: Option<InFlightCommit> = None;
            let mut end = loop {
                let mut stopping = self.shared.stopping.clone();
                let batch = tokio::select! {
                    b = rx.recv() => b,
                    _ = stopping.wait_for(|s| *s) => None,
                };
                let Some(batch) = batch else { break End::Stop };
                let last = batch
                    .messages
                    .last()
                    .map_or(self.cursor, |m| m.sequence_number);
                let removed = batch.removed;
                if let Some((first, count)) = removed {
                    self.shared.dest.removed(&self.export, first, count).await;
                }
                let Some(mut sent) = self.send_all(batch.messages).await else {
                    break End::Stop; // stopping: the batch is sent again after a restart
                };
                sent.removed = removed;
                if let Some(c) = in_flight.take() {
                    if let Some(end) = self.settle(c).await {
                        break end;
                    }
                }
                match self.submit_commit(last, sent).await {
                    Ok(c) => in_flight = c,
                    Err(end) => break end,
                }
            };
            if let Some(c) = in_flight.take() {
                if let Some(e) = self.settle(c).await {
                    if matches!(end, End::Stop) && matches!(e, End::Reload) && !self.stopping() {
                        end = End::Reload;
                    }
                }
            }
            drop(reader);
            match end {
                End::Stop => return,
                End::Reload => {
                    if !self.reload_cursor().await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends `messages` until each is delivered or skipped. `None` when the
    /// process stops first.
    async fn send_all(&mut self, messages: Vec<Message>) -> Option<Sent> {
        let shared = self.shared.clone();
        let dest = &shared.dest;
        let limits = dest.limits();
        let mut sent = Sent {
            bytes: 0,
            delivered: 0,
            skipped: Vec::new(),
            removed: None,
        };
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let size = dest.record_size(&m.payload);
            if size > limits.record_bytes_max {
                sent.skipped.push((
                    m.sequence_number,
                    format!(
                        "record of {size} bytes is over the destination's limit of {} bytes",
                        limits.record_bytes_max
                    ),
                ));
            } else {
                pending.push(m);
            }
        }
        let mut backoff = Backoff::default();
        let priority = self.export.priority();
        let (stream, id) = (self.export.stream.clone(), self.export.identifier.clone());
        let (m, stream, id) = (&shared.metrics, stream.as_str(), id.as_str());
        while !pending.is_empty() {
            // As many records as one call may carry now (at least one).
            let mut n = 0;
            let mut bytes = 0;
            for m in &pending {
                let size = dest.record_size(&m.payload);
                if n > 0 && bytes + size > self.call_bytes {
                    break;
                }
                n += 1;
                bytes += size;
            }
            m.state(stream, id, metrics::ExportState::WaitingForSlot);
            let permit = loop {
                let mut stopping = self.shared.stopping.clone();
                let lease = tokio::select! {
                    l = self.shared.store.acquire_slot(priority) => l,
                    _ = stopping.wait_for(|s| *s) => return None,
                };
                match lease {
                    Ok(lease) => break SlotLease::hold(&self.shared, lease),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot get an upload slot from the store");
                        if let Wake::Stop = self.pause(backoff.next_delay()).await {
                            return None;
                        }
                    }
                }
            };
            if self.shared.bandwidth.is_some() {
                m.state(stream, id, metrics::ExportState::WaitingForBandwidth);
                let mut stopping = self.shared.stopping.clone();
                let wire = dest.wire_bytes(&pending[..n]);
                loop {
                    let granted = tokio::select! {
                        g = self.shared.store.wait_for_bandwidth(wire, priority) => g,
                        _ = stopping.wait_for(|s| *s) => return None,
                    };
                    match granted {
                        Ok(()) => break,
                        Err(e) => {
                            // Refused at once (the store's queue is full) or
                            // unreachable: wait before asking again.
                            tracing::warn!(error = %e, "cannot get bandwidth from the store");
                            if let Wake::Stop = self.pause(backoff.next_delay()).await {
                                return None;
                            }
                        }
                    }
                }
            }
            m.state(stream, id, metrics::ExportState::Sending);
            let result = dest.send(&self.export, &pending[..n]).await;
            drop(permit);
            let failure = match result {
                BatchResult::RetryAll(reason) => Some(reason),
                BatchResult::TooSlow { reason, drain } => {
                    self.call_bytes = (bytes / 2).max(1);
                    tracing::info!(
                        stream = %self.export.stream,
                        export = %self.export.identifier,
                        call_bytes = self.call_bytes,
                        drain_s = drain.as_secs(),
                        "a call missed its deadline: sending smaller batches once the link has carried what it left queued"
                    );
                    // The link works, only slowly: no backoff, but the
                    // given-up request's bytes still queued on the way go
                    // out first (a socket closed with unsent data keeps
                    // sending it); a smaller call started now would share
                    // the link with them and miss its deadline too.
                    backoff.reset();
                    let why = format!(
                        "{reason}; sending at most {} bytes per call until calls succeed",
                        self.call_bytes
                    );
                    m.failed(stream, id, &why);
                    self.record_error(why).await;
                    if let Wake::Stop = self.pause(drain).await {
                        return None;
                    }
                    None
                }
                BatchResult::PerRecord(outcomes) if outcomes.len() != n => Some(format!(
                    "the destination answered {} results for {n} records",
                    outcomes.len(),
                )),
                BatchResult::PerRecord(outcomes) => {
                    let rest = pending.split_off(n);
                    let mut retry = Vec::new();
                    let mut reason = None;
                    let mut through = 0;
                    for (m, o) in pending.drain(..).zip(outcomes) {
                        match o {
                            Outcome::Delivered => {
                                sent.bytes += m.payload.len() as i64;
                                sent.delivered += 1;
                                through += 1;
                            }
                            Outcome::Reject(why) => {
                                sent.skipped.push((m.sequence_number, why));
                                through += 1;
                            }
                            Outcome::Retry(why) => {
                                reason.get_or_insert_with(|| {
                                    format!("record {} failed: {why}", m.sequence_number)
                                });
                                retry.push(m);
                            }
                        }
                    }
                    if through > 0 {
                        // Some got through: the destination is working, and
                        // a call of this size completes in time.
                        backoff.reset();
                        self.call_bytes =
                            (self.call_bytes.saturating_mul(2)).min(limits.bytes_per_call);
                    }
                    let failed = retry.len();
                    pending = retry;
                    pending.extend(rest);
                    reason
                        .map(|r| format!("{failed} of the call's records must be sent again; {r}"))
                }
            };
            if let Some(reason) = failure {
                tracing::warn!(
                    stream = %self.export.stream,
                    export = %self.export.identifier,
                    error = %reason,
                    "export attempt failed; retrying"
                );
                m.failed(stream, id, &reason);
                let delay = retry_delay(backoff.next_delay(), &reason);
                self.record_error(reason).await;
                if let Wake::Stop = self.pause(delay).await {
                    return None;
                }
            }
        }
        m.succeeded(stream, id);
        Some(sent)
    }

    /// Shows a failure in the export status (cursor unchanged).
    async fn record_error(&mut self, reason: String) {
        if self.recorded_error.as_deref() == Some(reason.as_str()) {
            return;
        }
        let progress = ExportProgress {
            last_exported_sequence_number: self.cursor,
            last_export_time_ms: bus::unix_ms() as i64,
            error_message: Some(reason.clone()),
            exported_bytes_delta: 0,
            exported_messages_delta: 0,
            skipped_messages_delta: 0,
            removed_messages_delta: 0,
            expected_last_exported_sequence_number: Some(self.cursor),
            expected_incarnation: known(self.export.incarnation),
        };
        if self
            .shared
            .store
            .commit(&self.export.stream, &self.export.identifier, progress)
            .await
            .is_ok()
        {
            self.recorded_error = Some(reason);
        }
    }

    /// Submits the commit that moves the cursor to `last` (answer awaited
    /// by `settle`, after the next batch is sent).
    async fn submit_commit(
        &mut self,
        last: i64,
        sent: Sent,
    ) -> Result<Option<InFlightCommit>, End> {
        let mut problems = Vec::new();
        if let Some((first, count)) = sent.removed {
            problems.push(format!(
                "{count} message(s) from sequence number {first} were removed by the stream's storage policy before they were exported"
            ));
        }
        if !sent.skipped.is_empty() {
            problems.push(skipped_message(&sent.skipped));
        }
        let error_message = (!problems.is_empty()).then(|| problems.join("; "));
        if let Some(m) = &error_message {
            tracing::warn!(stream = %self.export.stream, export = %self.export.identifier, "{m}");
        }
        let progress = ExportProgress {
            last_exported_sequence_number: last,
            last_export_time_ms: bus::unix_ms() as i64,
            error_message,
            exported_bytes_delta: sent.bytes,
            exported_messages_delta: sent.delivered,
            skipped_messages_delta: sent.skipped.len() as i64
                + sent.removed.map_or(0, |(_, count)| count),
            removed_messages_delta: sent.removed.map_or(0, |(_, count)| count),
            expected_last_exported_sequence_number: Some(self.cursor),
            expected_incarnation: known(self.export.incarnation),
        };
        let submitted = self
            .shared
            .store
            .submit_commit(
                &self.export.stream,
                &self.export.identifier,
                progress.clone(),
            )
            .await;
        self.cursor = last;
        match submitted {
            Ok(reply) => Ok(Some(InFlightCommit { reply, progress })),
            Err(e) => self.after_commit_error(e, progress).await.map(|()| None),
        }
    }

    /// Waits for a submitted commit. `None` when it landed.
    async fn settle(&mut self, c: InFlightCommit) -> Option<End> {
        match store::settle(c.reply.wait().await) {
            Ok(()) => {
                self.recorded_error = c.progress.error_message;
                None
            }
            Err(e) => self.after_commit_error(e, c.progress).await.err(),
        }
    }

    async fn after_commit_error(
        &mut self,
        e: StoreError,
        progress: ExportProgress,
    ) -> Result<(), End> {
        match e.kind() {
            // Reset by an update, or our earlier commit landed and its answer
            // was lost: carry on from what the store holds.
            Some(ErrorKind::Conflict) => Err(End::Reload),
            Some(ErrorKind::ResourceNotFound) => Err(End::Stop),
            // Refused for another reason (e.g. the stream is shorter than we
            // thought after a store restart): start again from the store.
            Some(_) => {
                tracing::warn!(error = %e, "the store refused the export cursor; reloading it");
                Err(End::Reload)
            }
            None => {
                tracing::warn!(error = %e, "cannot commit the export cursor; retrying");
                self.commit_until_done(progress).await
            }
        }
    }

    /// Commits `progress`, retrying while the store is unavailable.
    async fn commit_until_done(&mut self, progress: ExportProgress) -> Result<(), End> {
        let mut backoff = Backoff::default();
        loop {
            if let Wake::Stop = self.pause(backoff.next_delay()).await {
                return Err(End::Stop);
            }
            let r = self
                .shared
                .store
                .commit(
                    &self.export.stream,
                    &self.export.identifier,
                    progress.clone(),
                )
                .await;
            match r {
                Ok(()) => {
                    self.recorded_error = progress.error_message;
                    return Ok(());
                }
                Err(e) if e.kind() == Some(ErrorKind::ResourceNotFound) => return Err(End::Stop),
                Err(e) if e.kind().is_some() => {
                    tracing::warn!(error = %e, "the store refused the export cursor; reloading it");
                    return Err(End::Reload);
                }
                Err(e) => tracing::warn!(error = %e, "cannot commit the export cursor; retrying"),
            }
        }
    }

    async fn reload_cursor(&mut self) -> bool {
        let mut backoff = Backoff::default();
        loop {
            match self.shared.store.describe(&self.export.stream).await {
                Ok(info) => {
                    if known(info.incarnation) != known(self.export.incarnation) {
                        // Deleted and created again: this task's stream is
                        // gone; the follower starts one for the new stream.
                        return false;
                    }
                    let Some(status) = info
                        .export_statuses
                        .iter()
                        .find(|s| s.export_identifier == self.export.identifier)
                    else {
                        return false;
                    };
                    self.cursor = status.last_exported_sequence_number;
                    self.recorded_error = status.error_message.clone();
                    return true;
                }
                Err(e) if e.kind() == Some(ErrorKind::ResourceNotFound) => return false,
                Err(_) => {
                    if let Wake::Stop = self.pause(backoff.next_delay()).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// An incarnation, or `None` from a store that does not report them (0).
fn known(incarnation: u64) -> Option<u64> {
    (incarnation != 0).then_some(incarnation)
}

/// "N messages can never be delivered and were skipped: 5 (why), 9 (why) …"
fn skipped_message(skipped: &[(i64, String)]) -> String {
    let mut parts: Vec<String> = skipped
        .iter()
        .take(ERROR_SEQUENCE_NUMBERS_MAX)
        .map(|(s, why)| format!("{s} ({why})"))
        .collect();
    if skipped.len() > ERROR_SEQUENCE_NUMBERS_MAX {
        parts.push(format!(
            "and {} more",
            skipped.len() - ERROR_SEQUENCE_NUMBERS_MAX
        ));
    }
    format!(
        "{} message(s) can never be delivered and were skipped: sequence number {}",
        skipped.len(),
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_endpoint_is_retried_soon_a_throttling_one_backs_off() {
        let long = RETRY_DELAY_MAX;
        for reason in [
            "dispatch failure: io error: Connection refused (os error 111)",
            "the call timed out after 30s",
        ] {
            assert!(
                retry_delay(long, reason) <= Duration::from_secs(5),
                "{reason}"
            );
        }
        for reason in [
            "ProvisionedThroughputExceededException: Rate exceeded for shard",
            "InternalFailure: 500",
            "AccessDeniedException",
        ] {
            assert_eq!(retry_delay(long, reason), long, "{reason}");
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(
            first >= RETRY_DELAY_FIRST.mul_f64(0.75) && first <= RETRY_DELAY_FIRST.mul_f64(1.25)
        );
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d <= RETRY_DELAY_MAX.mul_f64(1.25));
        }
        assert!(b.next_delay() >= RETRY_DELAY_MAX.mul_f64(0.75));
        b.reset();
        assert!(b.next_delay() <= RETRY_DELAY_FIRST.mul_f64(1.25));
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        // The FNV-1a reference values of "" and "a".
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn skipped_messages_are_named_up_to_a_bound() {
        let skipped: Vec<(i64, String)> = (0..12).map(|i| (i, "too big".to_string())).collect();
        let m = skipped_message(&skipped);
        assert!(m.starts_with("12 message(s)"), "{m}");
        assert!(
            m.contains("9 (too big)") && !m.contains("10 (too big)"),
            "{m}"
        );
        assert!(m.ends_with("and 2 more"), "{m}");
    }
}
