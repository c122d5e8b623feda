//! The store's event loop: serves the engine on the bus.
//!
//! One thread. Each round takes every waiting request (up to
//! `ROUND_REQUESTS_MAX`), stores all appends of the round (an `AppendBatch`
//! counts as its appends, answered together) in one write batch (one sync
//! for the round when a `flushOnWrite` stream is in it: group
//! commit), answers them only after that, then serves reads, so a read sees the
//! appends of its round. Long-poll reads and event watchers wait in bounded
//! tables and are answered by appends or at their deadline, never later.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use bus::{BusServer, Incoming, PeerId};
use bus_schema::{
    AppendOutcome, ErrorKind, ErrorReply, Event, EventBatch, ExportKind, HealthInfo, Request,
    Response, ResponseEnvelope, APPEND_BATCH_MESSAGES_MAX, BUS_PROTOCOL_VERSION, READ_MESSAGES_MAX,
    READ_RESPONSE_BYTES_TARGET,
};

use crate::bandwidth::Budget;
use crate::engine::{AppendItem, Engine, EngineError};
use crate::slots::Slots;
use bus_schema::messages::put_messages_reply;
use bus_schema::metrics::MetricFamily;

/// Requests taken off the socket in one round.
pub const ROUND_REQUESTS_MAX: usize = 4096;
/// How long a store that stops after a storage failure waits for its last
/// answers to leave before it exits, in ms.
pub const FAILURE_REPLY_GRACE_MS: u64 = 200;
/// Append payload bytes taken off the socket in one round; the rest waits
/// in the socket queue for the next round.
pub const ROUND_APPEND_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Long-poll reads waiting at once, over all peers.
pub const WAITING_READS_MAX: usize = 4096;
/// Event watchers waiting at once.
pub const WATCHERS_MAX: usize = 256;
/// Change events kept for watchers that are behind.
pub const EVENT_LOG_EVENTS_MAX: usize = 4096;
/// Longest wait a read or watch may ask for, in ms (the SDK's limit).
pub const WAIT_MS_MAX: i64 = 9_223_372_036_854;
/// How often TTL expiry runs, in ms.
pub const EXPIRY_INTERVAL_MS: u64 = 1000;

/// Why the loop stopped.
#[derive(Debug)]
pub enum Stop {
    /// A signal or a `Shutdown` request: clean stop.
    Requested,
    /// The database failed: exit non-zero so the supervisor restarts us.
    StorageFailure(String),
    /// The bus failed.
    Bus(String),
}

struct WaitingRead {
    peer: PeerId,
    id: u64,
    stream: String,
    start: u64,
    min: u64,
    max: u64,
    max_bytes: usize,
    deadline: Instant,
    /// The export this read is for (an exporter's read).
    export: Option<String>,
}

struct Watcher {
    peer: PeerId,
    id: u64,
    /// Events up to here are seen (or were of no interest to it).
    after: u64,
    deadline: Instant,
    /// Only `Appended` events of streams with an export of this kind.
    appended_for: Option<ExportKind>,
}

struct EventLog {
    epoch: u64,
    /// Position of `events[0]`; positions start at 1.
    first: u64,
    events: VecDeque<Event>,
}

impl EventLog {
    fn next(&self) -> u64 {
        self.first + self.events.len() as u64
    }
    fn push(&mut self, e: Event) {
        if self.events.len() == EVENT_LOG_EVENTS_MAX {
            self.events.pop_front();
            self.first += 1;
        }
        self.events.push_back(e);
    }
    /// Events after position `after` (the last position the watcher has
    /// seen; 0 = none) for a watcher that knows `epoch`, those `keep`
    /// accepts. The batch's `next` is the last position it covers: the
    /// `after` of the next call.
    fn since(&self, epoch: u64, after: u64, keep: impl Fn(&Event) -> bool) -> EventBatch {
        let last = self.next() - 1;
        if epoch != self.epoch || after.saturating_add(1) < self.first || after > last {
            return EventBatch {
                epoch: self.epoch,
                next: last,
                resync: true,
                events: Vec::new(),
            };
        }
        let skip = (after + 1 - self.first) as usize;
        EventBatch {
            epoch: self.epoch,
            next: last,
            resync: false,
            events: self
                .events
                .iter()
                .skip(skip)
                .filter(|e| keep(e))
                .cloned()
                .collect(),
        }
    }
}

pub struct StoreServer {
    engine: Engine,
    bus: BusServer,
    started: Instant,
    log: EventLog,
    reads: HashMap<String, Vec<WaitingRead>>,
    read_count: usize,
    watchers: Vec<Watcher>,
    next_expiry: Instant,
    stop: Option<Stop>,
    /// Requests skipped because their deadline had passed.
    pub expired_requests: u64,
    budget: Budget,
    /// The exporters' upload slots.
    slots: Slots,
    /// Per (stream, export): the highest sequence number read for it, and
    /// the messages read for it again (after an exporter or store restart,
    /// or a reset), since this store started.
    read_high: HashMap<(String, String), (u64, u64)>,
    /// The latest metrics each process reported, with when.
    reports: HashMap<String, (Instant, Vec<MetricFamily>)>,
}

/// Whether a watcher that asked for `appended_for` wants event `e`.
fn wanted(engine: &Engine, appended_for: Option<ExportKind>, e: &Event) -> bool {
    match (appended_for, e) {
        (Some(kind), Event::Appended { name, .. }) => engine.has_export_of(name, kind),
        _ => true,
    }
}

/// Processes whose metrics reports are kept (the system has six).
pub const REPORTING_PROCESSES_MAX: usize = 16;
/// A report older than this is not served (its process is gone).
pub const REPORT_STALE_AFTER: Duration = Duration::from_secs(30);

struct PendingAppend {
    to: ReplyTo,
    stream: String,
    payload: Vec<u8>,
}

/// Where an append's outcome goes: its own reply, or its place in the reply
/// of an `AppendBatch` (an index into the round's [`PendingBatch`]es).
enum ReplyTo {
    One { peer: PeerId, id: u64 },
    Batch(usize),
}

/// An `AppendBatch` whose appends are in the round: the outcomes gathered
/// so far, answered together once the round's appends are stored.
struct PendingBatch {
    peer: PeerId,
    id: u64,
    outcomes: Vec<AppendOutcome>,
}

fn err(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply::new(kind, message))
}

impl StoreServer {
    pub fn new(engine: Engine, bus: BusServer) -> Self {
        let epoch = rand_epoch();
        Self {
            engine,
            bus,
            started: Instant::now(),
            log: EventLog {
                epoch,
                first: 1,
                events: VecDeque::new(),
            },
            reads: HashMap::new(),
            read_count: 0,
            watchers: Vec::new(),
            next_expiry: Instant::now(),
            stop: None,
            expired_requests: 0,
            budget: Budget::new(None, Instant::now()),
            slots: Slots::new(settings::EXPORTER_THREAD_POOL_SIZE_DEFAULT),
            read_high: HashMap::new(),
            reports: HashMap::new(),
        }
    }

    /// Caps the exporters' shared upload budget at `bytes_per_s`.
    pub fn with_bandwidth(mut self, bytes_per_s: Option<u64>) -> Self {
        self.budget = Budget::new(bytes_per_s, Instant::now());
        self
    }

    /// Upload slots for all exporters together.
    pub fn with_upload_slots(mut self, slots: usize) -> Self {
        self.slots = Slots::new(slots);
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Serves until a signal arrives on `signal_fd`, a `Shutdown` request, or
    /// a fatal error. Always syncs the database before returning.
    pub fn run(mut self, signal_fd: Option<RawFd>) -> Stop {
        while self.stop.is_none() {
            let timeout = self.next_timeout();
            match self.bus.wait(timeout, signal_fd) {
                Ok(true) => {
                    tracing::info!("stop signal received");
                    self.stop = Some(Stop::Requested);
                }
                Ok(false) => {}
                Err(e) => self.stop = Some(Stop::Bus(e.to_string())),
            }
            if self.stop.is_none() {
                self.round();
            }
        }
        self.finish()
    }

    fn finish(mut self) -> Stop {
        let stop = self.stop.take().unwrap_or(Stop::Requested);
        for (_, waiting) in std::mem::take(&mut self.reads) {
            for r in waiting {
                self.reply(
                    &r.peer,
                    r.id,
                    err(ErrorKind::ShuttingDown, "the store is stopping"),
                );
            }
        }
        for w in std::mem::take(&mut self.watchers) {
            self.reply(
                &w.peer,
                w.id,
                err(ErrorKind::ShuttingDown, "the store is stopping"),
            );
        }
        let waiting = self
            .budget
            .drain()
            .into_iter()
            .map(|w| (w.peer, w.id))
            .chain(self.slots.drain().into_iter().map(|w| (w.peer, w.id)));
        for (peer, id) in waiting.collect::<Vec<_>>() {
            self.reply(
                &peer,
                id,
                err(ErrorKind::ShuttingDown, "the store is stopping"),
            );
        }
        if let Stop::StorageFailure(_) = stop {
            // No clean close after a failed write: fjall may wait forever
            // for a flush that cannot happen (a full disk), and the log has
            // everything acknowledged. The process exits as it is; the next
            // open replays the log. The last answers (the failure itself)
            // first get `FAILURE_REPLY_GRACE_MS` to leave: ZeroMQ sends from
            // its own thread and drops what is queued at exit (linger 0).
            std::thread::sleep(Duration::from_millis(FAILURE_REPLY_GRACE_MS));
            std::mem::forget(self);
            return stop;
        }
        if let Err(e) = self.engine.close() {
            tracing::error!(error = %e, "closing the database failed");
            return Stop::StorageFailure(e.to_string());
        }
        stop
    }

    fn next_timeout(&mut self) -> Option<Duration> {
        let now = Instant::now();
        // Bounded scans: at most WAITING_READS_MAX + WATCHERS_MAX entries.
        let next = self
            .reads
            .values()
            .flatten()
            .map(|r| r.deadline)
            .chain(self.watchers.iter().map(|w| w.deadline))
            .chain(self.budget.next_wake())
            .chain(self.slots.next_wake())
            .fold(self.next_expiry, Instant::min);
        Some(next.saturating_duration_since(now))
    }

    fn reply(&self, peer: &PeerId, id: u64, body: Response) {
        let envelope = ResponseEnvelope {
            v: BUS_PROTOCOL_VERSION,
            id,
            body,
        };
        if let Err(e) = self.bus.send(peer, &envelope) {
            tracing::warn!(error = %e, "reply could not be sent");
        }
    }

    fn fatal(&mut self, e: EngineError) -> Option<ErrorReply> {
        match e {
            EngineError::Refused(r) => Some(r),
            EngineError::Storage(s) => {
                tracing::error!(error = %s, "storage failure; the store stops");
                self.stop = Some(Stop::StorageFailure(s.clone()));
                Some(ErrorReply::new(
                    ErrorKind::StoreWriteError,
                    format!("the store failed to write and is restarting: {s}"),
                ))
            }
        }
    }

    /// One round: take what is waiting, store appends, answer.
    pub fn round(&mut self) {
        let mut appends: Vec<PendingAppend> = Vec::new();
        let mut batches: Vec<PendingBatch> = Vec::new();
        let mut deferred: Vec<(PeerId, u64, Request)> = Vec::new();
        let mut append_bytes = 0usize;
        for _ in 0..ROUND_REQUESTS_MAX {
            if append_bytes >= ROUND_APPEND_BYTES_MAX {
                break;
            }
            let incoming = match self.bus.try_recv() {
                Ok(Some(i)) => i,
                Ok(None) => break,
                Err(e) => {
                    self.stop = Some(Stop::Bus(e.to_string()));
                    break;
                }
            };
            let (peer, envelope) = match incoming {
                Incoming::Request(peer, envelope) => (peer, envelope),
                Incoming::Malformed {
                    peer,
                    header,
                    error,
                } => {
                    tracing::warn!(error = %error, "malformed bus request");
                    if let Some(h) = header {
                        self.reply(
                            &peer,
                            h.id,
                            err(ErrorKind::MalformedMessage, error.to_string()),
                        );
                    }
                    continue;
                }
            };
            if envelope.v != BUS_PROTOCOL_VERSION {
                self.reply(
                    &peer,
                    envelope.id,
                    err(
                        ErrorKind::UnsupportedBusVersion,
                        format!(
                            "bus version {} is not supported; this store speaks {BUS_PROTOCOL_VERSION}",
                            envelope.v
                        ),
                    ),
                );
                continue;
            }
            // The clock is read per request, not per round: a process stopped
            // (SIGSTOP, a VM pause) mid-round must not judge what it receives
            // after resuming by the time it stopped at.
            if envelope.deadline_ms != 0 && envelope.deadline_ms < bus::unix_ms() {
                // The caller has given up; doing the work now would store an
                // append nobody was told about.
                self.expired_requests += 1;
                continue;
            }
            match envelope.body {
                Request::Append { stream, payload } => {
                    append_bytes += payload.len();
                    appends.push(PendingAppend {
                        to: ReplyTo::One {
                            peer,
                            id: envelope.id,
                        },
                        stream,
                        payload,
                    })
                }
                Request::AppendBatch { appends: entries } => {
                    if entries.is_empty() || entries.len() > APPEND_BATCH_MESSAGES_MAX {
                        let message = format!(
                            "an append batch holds 1 to {APPEND_BATCH_MESSAGES_MAX} appends; this one holds {}",
                            entries.len()
                        );
                        self.reply(&peer, envelope.id, err(ErrorKind::InvalidRequest, message));
                        continue;
                    }
                    let batch = batches.len();
                    batches.push(PendingBatch {
                        peer,
                        id: envelope.id,
                        outcomes: Vec::with_capacity(entries.len()),
                    });
                    for e in entries {
                        append_bytes += e.payload.len();
                        appends.push(PendingAppend {
                            to: ReplyTo::Batch(batch),
                            stream: e.stream,
                            payload: e.payload,
                        });
                    }
                }
                body @ (Request::Read { .. }
                | Request::DescribeStream { .. }
                | Request::DescribeAll
                | Request::ListStreams
                | Request::Health
                | Request::AcquireBandwidth { .. }
                | Request::AcquireSlot { .. }
                | Request::RenewSlot { .. }
                | Request::ReleaseSlot { .. }
                | Request::WatchEvents { .. }
                | Request::ReportMetrics { .. }
                | Request::Metrics
                | Request::Losses) => deferred.push((peer, envelope.id, body)),
                body => {
                    // Everything that came before this request is answered
                    // before it changes anything: appends, then queries.
                    self.flush_appends(&mut appends, &mut batches);
                    self.answer_queries(&mut deferred);
                    let response = self.handle_mutation(body);
                    self.reply(&peer, envelope.id, response);
                }
            }
            if self.stop.is_some() {
                break;
            }
        }
        self.flush_appends(&mut appends, &mut batches);
        self.answer_queries(&mut deferred);
        self.serve_watchers(false);
        self.expire_waiting();
        self.housekeeping();
    }

    fn answer_queries(&mut self, deferred: &mut Vec<(PeerId, u64, Request)>) {
        for (peer, id, body) in std::mem::take(deferred) {
            if let Some(response) = self.handle_query(&peer, id, body) {
                self.reply(&peer, id, response);
            }
        }
    }

    /// Stores the round's appends (one engine batch) and answers them: each
    /// `Append` on its own, each `AppendBatch` with all its outcomes.
    fn flush_appends(&mut self, appends: &mut Vec<PendingAppend>, batches: &mut Vec<PendingBatch>) {
        if appends.is_empty() {
            return;
        }
        let items: Vec<AppendItem<'_>> = appends
            .iter()
            .map(|a| AppendItem {
                stream: &a.stream,
                payload: &a.payload,
            })
            .collect();
        let outcome = self.engine.append_batch(&items);
        drop(items);
        match outcome {
            Ok((results, newest)) => {
                for (a, r) in appends.iter().zip(results) {
                    let outcome = match r {
                        Ok((sequence_number, ingest_time_ms)) => AppendOutcome::Appended {
                            sequence_number,
                            ingest_time_ms,
                        },
                        Err(e) => AppendOutcome::Error(e),
                    };
                    match &a.to {
                        ReplyTo::One { peer, id } => self.reply(peer, *id, outcome.into_response()),
                        ReplyTo::Batch(b) => batches[*b].outcomes.push(outcome),
                    }
                }
                for b in batches.drain(..) {
                    self.reply(&b.peer, b.id, Response::AppendedBatch(b.outcomes));
                }
                for (name, newest_sequence_number) in newest {
                    self.serve_reads(&name);
                    self.log.push(Event::Appended {
                        name,
                        newest_sequence_number,
                    });
                }
            }
            Err(e) => {
                if let Some(r) = self.fatal(e) {
                    for a in appends.iter() {
                        if let ReplyTo::One { peer, id } = &a.to {
                            self.reply(peer, *id, Response::Error(r.clone()));
                        }
                    }
                    for b in batches.iter() {
                        self.reply(&b.peer, b.id, Response::Error(r.clone()));
                    }
                }
                batches.clear();
            }
        }
        appends.clear();
    }

    fn handle_mutation(&mut self, body: Request) -> Response {
        let (result, event) = match body {
            Request::CreateStream { definition } => {
                let name = definition.name.clone();
                (
                    self.engine.create(&definition).map(|_| Response::Created),
                    Some(Event::StreamCreated { name }),
                )
            }
            Request::UpdateStream { definition } => {
                let name = definition.name.clone();
                let r = self.engine.update(&definition).map(|_| Response::Updated);
                if r.is_ok() {
                    // A smaller size or TTL may have dropped data readers wait on.
                    self.serve_reads(&name);
                }
                (r, Some(Event::StreamUpdated { name }))
            }
            Request::DeleteStream { name } => {
                let r = self.engine.delete(&name).map(|_| Response::Deleted);
                if r.is_ok() {
                    self.fail_reads(&name);
                }
                (r, Some(Event::StreamDeleted { name }))
            }
            Request::CommitExport {
                stream,
                export_identifier,
                progress,
            } => (
                self.engine
                    .commit_export(&stream, &export_identifier, &progress)
                    .map(|_| Response::Committed),
                None,
            ),
            Request::Shutdown => {
                self.stop = Some(Stop::Requested);
                (Ok(Response::ShuttingDown), None)
            }
            other => (
                Err(EngineError::Refused(ErrorReply::new(
                    ErrorKind::InvalidRequest,
                    format!("unexpected request {other:?}"),
                ))),
                None,
            ),
        };
        match result {
            Ok(r) => {
                if let Some(e) = event {
                    self.log.push(e);
                }
                r
            }
            Err(e) => self
                .fatal(e)
                .map(Response::Error)
                .unwrap_or(Response::ShuttingDown),
        }
    }

    /// Answers a query now, or parks it (returns `None`).
    fn handle_query(&mut self, peer: &PeerId, id: u64, body: Request) -> Option<Response> {
        let r = match body {
            Request::Health => Response::Health(HealthInfo {
                epoch: self.log.epoch,
                pid: std::process::id(),
                uptime_ms: self.started.elapsed().as_millis() as u64,
                streams: self.engine.stream_count() as u64,
            }),
            Request::ListStreams => Response::Streams(self.engine.list()),
            Request::DescribeAll => Response::DescribedAll(self.engine.describe_all()),
            Request::DescribeStream { name } => match self.engine.describe(&name) {
                Ok(info) => Response::Described(Box::new(info)),
                Err(e) => Response::Error(self.fatal(e)?),
            },
            Request::WatchEvents {
                epoch,
                after,
                wait_ms,
                appended_for,
            } => {
                let engine = &self.engine;
                let batch = self
                    .log
                    .since(epoch, after, |e| wanted(engine, appended_for, e));
                if batch.resync || !batch.events.is_empty() || wait_ms <= 0 {
                    Response::Events(batch)
                } else if self.watchers.len() >= WATCHERS_MAX {
                    err(
                        ErrorKind::Busy,
                        format!("{WATCHERS_MAX} watchers are already waiting"),
                    )
                } else {
                    let deadline =
                        Instant::now() + Duration::from_millis(wait_ms.min(WAIT_MS_MAX) as u64);
                    self.watchers.push(Watcher {
                        peer: peer.clone(),
                        id,
                        // Nothing up to here is of interest to it.
                        after: batch.next,
                        deadline,
                        appended_for,
                    });
                    return None;
                }
            }
            Request::Read {
                stream,
                start_sequence_number,
                min_count,
                max_count,
                wait_ms,
                max_bytes,
                export_identifier,
            } => {
                return self.handle_read(
                    peer,
                    id,
                    (stream, export_identifier),
                    start_sequence_number,
                    (min_count, max_count, max_bytes),
                    wait_ms,
                )
            }
            Request::ReportMetrics { process, families } => {
                if !self.reports.contains_key(&process)
                    && self.reports.len() >= REPORTING_PROCESSES_MAX
                {
                    self.reports
                        .retain(|_, (at, _)| at.elapsed() < REPORT_STALE_AFTER);
                }
                if !self.reports.contains_key(&process)
                    && self.reports.len() >= REPORTING_PROCESSES_MAX
                {
                    err(
                        ErrorKind::Busy,
                        format!("metrics of {REPORTING_PROCESSES_MAX} processes are already kept"),
                    )
                } else {
                    self.reports.insert(process, (Instant::now(), families));
                    Response::Reported
                }
            }
            Request::AcquireSlot { priority, wait_ms } => {
                if !(0..=WAIT_MS_MAX).contains(&wait_ms) {
                    err(
                        ErrorKind::InvalidRequest,
                        format!("an upload slot request waiting {wait_ms} ms is out of range"),
                    )
                } else {
                    let deadline = Instant::now() + Duration::from_millis(wait_ms as u64);
                    match self.slots.push(peer.clone(), id, priority, deadline) {
                        Ok(()) => {
                            self.serve_slots();
                            return None;
                        }
                        Err(m) => err(ErrorKind::Busy, m),
                    }
                }
            }
            Request::RenewSlot { lease } => {
                if self.slots.renew(lease, Instant::now()) {
                    Response::Slot { lease }
                } else {
                    err(
                        ErrorKind::ResourceNotFound,
                        format!(
                            "upload slot {lease} is not held (it lapsed, or the store restarted)"
                        ),
                    )
                }
            }
            Request::ReleaseSlot { lease } => {
                self.slots.release(lease);
                self.serve_slots();
                Response::SlotReleased
            }
            Request::Metrics => Response::Metrics(self.metric_families()),
            Request::Losses => Response::Losses(self.engine.losses()),
            Request::AcquireBandwidth {
                bytes,
                priority,
                wait_ms,
            } => {
                if bytes < 0 || !(0..=WAIT_MS_MAX).contains(&wait_ms) {
                    err(
                        ErrorKind::InvalidRequest,
                        format!("bandwidth request of {bytes} bytes waiting {wait_ms} ms is out of range"),
                    )
                } else {
                    let deadline = Instant::now() + Duration::from_millis(wait_ms as u64);
                    match self
                        .budget
                        .push(peer.clone(), id, bytes, priority, deadline)
                    {
                        Ok(()) => {
                            self.serve_bandwidth();
                            return None;
                        }
                        Err(m) => err(ErrorKind::Busy, m),
                    }
                }
            }
            other => err(
                ErrorKind::InvalidRequest,
                format!("unexpected request {other:?}"),
            ),
        };
        Some(r)
    }

    fn handle_read(
        &mut self,
        peer: &PeerId,
        id: u64,
        (stream, export): (String, Option<String>),
        start: Option<i64>,
        (min, max, max_bytes): (Option<i64>, Option<i64>, Option<i64>),
        wait_ms: Option<i64>,
    ) -> Option<Response> {
        let start = start.unwrap_or(0);
        let max_bytes = max_bytes.unwrap_or(READ_RESPONSE_BYTES_TARGET as i64);
        let min = min.unwrap_or(1);
        let max = max.unwrap_or(min.max(1));
        let wait_ms = wait_ms.unwrap_or(0);
        let problem = if start < 0 {
            Some(format!(
                "desiredStartSequenceNumber must be at least 0, got {start}"
            ))
        } else if !(1..=i32::MAX as i64).contains(&min) {
            Some(format!(
                "minMessageCount must be between 1 and {}, got {min}",
                i32::MAX
            ))
        } else if !(1..=i32::MAX as i64).contains(&max) {
            Some(format!(
                "maxMessageCount must be between 1 and {}, got {max}",
                i32::MAX
            ))
        } else if max < min {
            Some(format!(
                "maxMessageCount {max} is below minMessageCount {min}"
            ))
        } else if min > READ_MESSAGES_MAX {
            Some(format!(
                "minMessageCount {min} is above the {READ_MESSAGES_MAX} messages one read can return"
            ))
        } else if !(0..=WAIT_MS_MAX).contains(&wait_ms) {
            Some(format!(
                "readTimeoutMillis must be between 0 and {WAIT_MS_MAX}, got {wait_ms}"
            ))
        } else if max_bytes < 1 {
            Some(format!("max_bytes must be at least 1, got {max_bytes}"))
        } else {
            None
        };
        if let Some(p) = problem {
            return Some(err(ErrorKind::InvalidRequest, p));
        }
        let waiting = WaitingRead {
            peer: peer.clone(),
            id,
            stream,
            start: start as u64,
            min: min as u64,
            max: max.min(READ_MESSAGES_MAX) as u64,
            max_bytes: max_bytes.min(READ_RESPONSE_BYTES_TARGET as i64) as usize,
            deadline: Instant::now() + Duration::from_millis(wait_ms as u64),
            export,
        };
        match self.engine.available(&waiting.stream, waiting.start) {
            Err(e) => Some(Response::Error(self.fatal(e)?)),
            Ok(n) if n >= waiting.min => self.read_now(&waiting),
            Ok(_) if wait_ms == 0 => Some(not_enough(&waiting)),
            Ok(_) if self.read_count >= WAITING_READS_MAX => Some(err(
                ErrorKind::Busy,
                format!("{WAITING_READS_MAX} long-poll reads are already waiting"),
            )),
            Ok(_) => {
                self.read_count += 1;
                self.reads
                    .entry(waiting.stream.clone())
                    .or_default()
                    .push(waiting);
                None
            }
        }
    }

    /// Reads for `w` and sends the reply, written straight from the stored
    /// messages; `None` once sent, or the error to answer.
    fn read_now(&mut self, w: &WaitingRead) -> Option<Response> {
        let read = self
            .engine
            .read_with(&w.stream, w.start, w.max, w.max_bytes, |messages| {
                if (messages.len() as u64) < w.min {
                    return Err(messages.len());
                }
                let mut reply = Vec::new();
                put_messages_reply(&mut reply, BUS_PROTOCOL_VERSION, w.id, messages);
                let span = messages.first().zip(messages.last()).map(|(first, last)| {
                    (first.sequence_number as u64, last.sequence_number as u64)
                });
                Ok((reply, span))
            });
        match read {
            Ok(Err(taken)) => Some(err(
                ErrorKind::ResponseTooLarge,
                format!(
                    "{} messages are requested at least, but only {taken} fit in one response",
                    w.min,
                ),
            )),
            Ok(Ok((reply, span))) => {
                if let (Some(export), Some((first, last))) = (&w.export, span) {
                    let (high, again) = self
                        .read_high
                        .entry((w.stream.clone(), export.clone()))
                        .or_insert((0, 0));
                    // `high` is one past the highest number read before.
                    if first < *high {
                        *again += (*high - 1).min(last) - first + 1;
                    }
                    *high = (*high).max(last + 1);
                }
                if let Err(e) = self.bus.send_encoded(&w.peer, reply) {
                    tracing::warn!(error = %e, "reply could not be sent");
                }
                None
            }
            Err(e) => Some(match self.fatal(e) {
                Some(r) => Response::Error(r),
                None => err(ErrorKind::StoreReadError, "read failed"),
            }),
        }
    }

    /// Answers the waiting reads of `stream` that now have enough messages.
    fn serve_reads(&mut self, stream: &str) {
        let Some(mut waiting) = self.reads.remove(stream) else {
            return;
        };
        let mut keep = Vec::new();
        for w in waiting.drain(..) {
            let ready = self
                .engine
                .available(&w.stream, w.start)
                .is_ok_and(|n| n >= w.min);
            if ready {
                self.read_count -= 1;
                if let Some(r) = self.read_now(&w) {
                    self.reply(&w.peer, w.id, r);
                }
            } else {
                keep.push(w);
            }
        }
        if !keep.is_empty() {
            self.reads.insert(stream.to_string(), keep);
        }
    }

    /// The store's metrics and the latest report of every other process.
    fn metric_families(&mut self) -> Vec<MetricFamily> {
        use bus_schema::metrics::MetricKind::*;
        let mut out = self.engine.metric_families(bus::unix_ms());
        let mut again = MetricFamily::new(
            "sm_export_records_resent_total",
            "Records read for an export again after an exporter or store restart or a reset (sent again, or read ahead and not sent before the restart), since the store started.",
            Counter,
        );
        for ((stream, export), (_, n)) in &self.read_high {
            if self.engine.exists(stream) {
                again.sample(&[("stream", stream), ("export", export)], *n as f64);
            }
        }
        out.push(again);
        let db = self.engine.path().to_path_buf();
        let root = db.parent().unwrap_or(&db).to_path_buf();
        let mut disk = MetricFamily::new(
            "sm_store_disk_used_bytes",
            "Disk space allocated to the files under the store root.",
            Gauge,
        );
        disk.sample(&[], crate::wal::allocated_bytes(&root) as f64);
        out.push(disk);
        let mut free = MetricFamily::new(
            "sm_store_disk_free_bytes",
            "Free space of the file system holding the store root (for unprivileged processes).",
            Gauge,
        );
        if let Ok(f) = crate::wal::free_bytes(&root) {
            free.sample(&[], f as f64);
        }
        out.push(free);
        let mut log = MetricFamily::new(
            "sm_store_log_bytes",
            "Disk space allocated to the write-ahead log (db/wal).",
            Gauge,
        );
        log.sample(
            &[],
            crate::wal::allocated_bytes(&db.join(crate::wal::LOG_DIR)) as f64,
        );
        out.push(log);
        let mut commit = MetricFamily::new(
            "sm_store_commit_seconds",
            "Time to write each change to the log (and sync it, for flushOnWrite streams).",
            Histogram,
        );
        commit.histogram(&[], &self.engine.commit_seconds);
        out.push(commit);
        let mut behind = MetricFamily::new(
            "sm_store_applier_wait_seconds_total",
            "Time changes waited for the store's applier to move what the log holds into fjall (back-pressure: the disk or fjall slower than the appends), since the store started.",
            Counter,
        );
        behind.sample(&[], self.engine.applier_waited().as_secs_f64());
        out.push(behind);
        let mut ledger = MetricFamily::new(
            "sm_store_loss_ledger_entries",
            "Entries in the loss ledger.",
            Gauge,
        );
        ledger.sample(&[], self.engine.loss_entries() as f64);
        out.push(ledger);
        self.reports
            .retain(|_, (at, _)| at.elapsed() < REPORT_STALE_AFTER);
        for (_, families) in self.reports.values() {
            out.extend(families.iter().cloned());
        }
        out
    }

    fn fail_reads(&mut self, stream: &str) {
        for w in self.reads.remove(stream).unwrap_or_default() {
            self.read_count -= 1;
            self.reply(
                &w.peer,
                w.id,
                err(
                    ErrorKind::ResourceNotFound,
                    format!("stream {stream:?} was deleted"),
                ),
            );
        }
    }

    fn serve_watchers(&mut self, expire_only: bool) {
        if self.watchers.is_empty() {
            return;
        }
        let now = Instant::now();
        let next = self.log.next();
        let epoch = self.log.epoch;
        let mut keep = Vec::new();
        let mut answers = Vec::new();
        for mut w in std::mem::take(&mut self.watchers) {
            let has_events = w.after.saturating_add(1) < next;
            let due = w.deadline <= now;
            if !(due || has_events && !expire_only) {
                keep.push(w);
                continue;
            }
            // Only this round's events are looked at: a watcher's position
            // moves past the events of no interest to it.
            let engine = &self.engine;
            let batch = self
                .log
                .since(epoch, w.after, |e| wanted(engine, w.appended_for, e));
            if batch.resync || !batch.events.is_empty() || due {
                answers.push((w.peer, w.id, batch));
            } else {
                w.after = batch.next;
                keep.push(w);
            }
        }
        self.watchers = keep;
        for (peer, id, batch) in answers {
            self.reply(&peer, id, Response::Events(batch));
        }
    }

    /// Answers waiting reads and watchers whose deadline has come.
    fn expire_waiting(&mut self) {
        let now = Instant::now();
        // Finish a little early rather than late: a late answer breaks clients
        // that have already given up on the request.
        let due = now + Duration::from_millis(1);
        let mut expired = Vec::new();
        for waiting in self.reads.values_mut() {
            let mut i = 0;
            while i < waiting.len() {
                if waiting[i].deadline <= due {
                    expired.push(waiting.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.reads.retain(|_, v| !v.is_empty());
        for w in expired {
            self.read_count -= 1;
            self.reply(&w.peer, w.id, not_enough(&w));
        }
        self.serve_watchers(true);
        self.serve_bandwidth();
        for w in self.budget.expired(due) {
            self.reply(
                &w.peer,
                w.id,
                err(ErrorKind::Busy, "no bandwidth was free before the deadline"),
            );
        }
        self.serve_slots();
        for w in self.slots.expired(due) {
            self.reply(
                &w.peer,
                w.id,
                err(
                    ErrorKind::Busy,
                    "no upload slot was free before the deadline",
                ),
            );
        }
    }

    fn serve_slots(&mut self) {
        for (w, lease) in self.slots.grant_ready(Instant::now()) {
            self.reply(&w.peer, w.id, Response::Slot { lease });
        }
    }

    fn serve_bandwidth(&mut self) {
        for w in self.budget.grant_ready(Instant::now()) {
            self.reply(&w.peer, w.id, Response::Granted);
        }
    }

    fn housekeeping(&mut self) {
        self.engine.reclaim_applied();
        if let Some(e) = self.engine.background_sync_failure() {
            self.fatal(EngineError::Storage(format!("background sync failed: {e}")));
        }
        let now = Instant::now();
        if now >= self.next_expiry {
            self.next_expiry = now + Duration::from_millis(EXPIRY_INTERVAL_MS);
            self.engine.observe_clock(bus::unix_ms(), now);
            if let Err(e) = self.engine.expire(bus::unix_ms()) {
                self.fatal(e);
            }
        }
    }
}

fn not_enough(w: &WaitingRead) -> Response {
    err(
        ErrorKind::NotEnoughMessages,
        format!(
            "fewer than {} messages from sequence number {} are available in stream {:?}",
            w.min, w.start, w.stream
        ),
    )
}

fn rand_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(bus::unix_ms());
    h.write_u32(std::process::id());
    h.finish() | 1
}
