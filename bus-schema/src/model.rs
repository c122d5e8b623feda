//! The data model shared on the bus: stream definitions, requests, responses,
//! change events and errors. Field meanings follow the SDK data model
//! (wire-protocol spec §9); names here are Rust-style, not the SDK's camelCase.

use serde::{Deserialize, Serialize};

/// What to do when an append would take a stream over its `max_size_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StrategyOnFull {
    RejectNewData,
    OverwriteOldestData,
}

/// Where a stream's messages live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Persistence {
    /// On disk in the store's database; survives restarts.
    File,
    /// In the store's memory only; empty after a restart.
    Memory,
}

/// A stream definition as the client gave it, before the store validates it and
/// fills defaults in. `None` means "not set".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamDefinition {
    pub name: String,
    pub max_size_bytes: Option<i64>,
    pub segment_size_bytes: Option<i64>,
    pub time_to_live_ms: Option<i64>,
    /// Required by the SDKs; `None` is refused by the store.
    pub strategy_on_full: Option<StrategyOnFull>,
    pub persistence: Option<Persistence>,
    pub flush_on_write: Option<bool>,
    pub exports: ExportDefinition,
}

impl StreamDefinition {
    /// A definition with only a name and a strategy; everything else defaults.
    pub fn new(name: impl Into<String>, strategy_on_full: StrategyOnFull) -> Self {
        Self {
            name: name.into(),
            max_size_bytes: None,
            segment_size_bytes: None,
            time_to_live_ms: None,
            strategy_on_full: Some(strategy_on_full),
            persistence: None,
            flush_on_write: None,
            exports: ExportDefinition::default(),
        }
    }
}

/// Export configurations of one stream, by destination kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportDefinition {
    pub http: Vec<HttpConfig>,
    pub iot_analytics: Vec<IotAnalyticsConfig>,
    pub kinesis: Vec<KinesisConfig>,
    pub iot_sitewise: Vec<IotSiteWiseConfig>,
    pub s3_task_executor: Vec<S3TaskExecutorConfig>,
}

impl ExportDefinition {
    /// Every export of the stream as (kind, common fields), in definition order.
    pub fn all(&self) -> Vec<(ExportKind, &ExportCommon)> {
        let mut out = Vec::new();
        out.extend(self.http.iter().map(|c| (ExportKind::Http, &c.common)));
        out.extend(
            self.iot_analytics
                .iter()
                .map(|c| (ExportKind::IotAnalytics, &c.common)),
        );
        out.extend(
            self.kinesis
                .iter()
                .map(|c| (ExportKind::Kinesis, &c.common)),
        );
        out.extend(
            self.iot_sitewise
                .iter()
                .map(|c| (ExportKind::IotSiteWise, &c.common)),
        );
        out.extend(
            self.s3_task_executor
                .iter()
                .map(|c| (ExportKind::S3TaskExecutor, &c.common)),
        );
        out
    }
}

/// The destination kinds an export can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExportKind {
    Http,
    IotAnalytics,
    Kinesis,
    IotSiteWise,
    S3TaskExecutor,
}

/// Fields every export kind has (spec §9 "Common export fields"). S3 task
/// executors use only `identifier`, `priority` and `disabled`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportCommon {
    pub identifier: String,
    pub batch_size: Option<i64>,
    pub batch_interval_ms: Option<i64>,
    /// 1 (highest) … 10; `None` is the lowest priority.
    pub priority: Option<i64>,
    pub start_sequence_number: Option<i64>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpConfig {
    pub common: ExportCommon,
    pub uri: String,
    pub export_format: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IotAnalyticsConfig {
    pub common: ExportCommon,
    pub iot_channel: String,
    pub iot_msg_id_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KinesisConfig {
    pub common: ExportCommon,
    pub kinesis_stream_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IotSiteWiseConfig {
    pub common: ExportCommon,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct S3TaskExecutorConfig {
    pub common: ExportCommon,
    pub size_threshold_for_multipart_upload_bytes: Option<i64>,
    pub status_config: Option<StatusConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusConfig {
    /// 0 ERROR, 1 WARN, 2 INFO, 3 DEBUG, 4 TRACE.
    pub status_level: Option<i64>,
    pub status_stream_name: Option<String>,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub sequence_number: i64,
    /// Unix time in ms when the store stored the message.
    pub ingest_time_ms: i64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// What a stream currently holds. For an empty stream `newest` is `oldest - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStatus {
    pub oldest_sequence_number: i64,
    pub newest_sequence_number: i64,
    pub total_bytes: i64,
}

/// Progress of one export of one stream, as kept by the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStatus {
    pub export_identifier: String,
    /// Last sequence number the destination acknowledged; -1 = none yet.
    pub last_exported_sequence_number: i64,
    /// Unix ms of the last export attempt, if any.
    pub last_export_time_ms: Option<i64>,
    /// Error of the last attempt, if it failed.
    pub error_message: Option<String>,
    pub exported_bytes: i64,
    pub exported_messages: i64,
    /// Messages the exporter skipped because the destination can never
    /// accept them (the error message names them).
    #[serde(default)]
    pub skipped_messages: i64,
    /// Ingest time (Unix ms) of the oldest message not exported yet, when
    /// there is one: how far behind the export is, in time. Computed when
    /// described.
    #[serde(default)]
    pub oldest_unexported_ingest_ms: Option<i64>,
}

/// A stream as `describe` shows it: the definition with defaults filled in, its
/// storage and the status of each export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub definition: StreamDefinition,
    pub storage: StorageStatus,
    pub export_statuses: Vec<ExportStatus>,
    /// Which creation of this name this is: never the same for a stream
    /// deleted and created again (0 from a store that predates it).
    #[serde(default)]
    pub incarnation: u64,
}

/// What an exporter reports after a batch: the new cursor and what it sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportProgress {
    /// New cursor; never below the stored one.
    pub last_exported_sequence_number: i64,
    pub last_export_time_ms: i64,
    /// `None` clears a previously recorded error.
    pub error_message: Option<String>,
    pub exported_bytes_delta: i64,
    pub exported_messages_delta: i64,
    /// Messages skipped in this batch because they can never be delivered,
    /// plus those removed by the storage policy before export.
    #[serde(default)]
    pub skipped_messages_delta: i64,
    /// Of `skipped_messages_delta`, the messages that the stream's storage
    /// policy (overwrite, TTL) removed before the exporter read them.
    #[serde(default)]
    pub removed_messages_delta: i64,
    /// The cursor the exporter believes is stored. When set and the stored
    /// cursor differs (the export was reset by an update, or another exporter
    /// moved it), the commit is refused with `ErrorKind::Conflict` and nothing
    /// changes.
    #[serde(default)]
    pub expected_last_exported_sequence_number: Option<i64>,
    /// The stream's `StreamInfo::incarnation` the exporter read. When set and
    /// the stream was deleted and created again since, the commit is refused
    /// with `ErrorKind::Conflict` and nothing changes (a commit in flight for
    /// the old stream never moves the new one's cursor).
    #[serde(default)]
    pub expected_incarnation: Option<u64>,
}

/// One append of an `AppendBatch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppendEntry {
    pub stream: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// What became of one append of an `AppendBatch`: what `Append` would have
/// answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    Appended {
        sequence_number: i64,
        ingest_time_ms: i64,
    },
    Error(ErrorReply),
}

impl AppendOutcome {
    /// The `Append` answer this outcome stands for.
    pub fn into_response(self) -> Response {
        match self {
            AppendOutcome::Appended {
                sequence_number,
                ingest_time_ms,
            } => Response::Appended {
                sequence_number,
                ingest_time_ms,
            },
            AppendOutcome::Error(e) => Response::Error(e),
        }
    }
}

/// A request to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness and identity of the store.
    Health,
    CreateStream {
        definition: StreamDefinition,
    },
    /// Replaces the whole definition (exports missing from it are deleted).
    UpdateStream {
        definition: StreamDefinition,
    },
    DeleteStream {
        name: String,
    },
    DescribeStream {
        name: String,
    },
    ListStreams,
    /// Every stream with its definition, storage and export statuses (for
    /// exporters and the operator's `status`).
    DescribeAll,
    Append {
        stream: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Several appends in one message (the ingest sends the appends that
    /// wait together, so that a busy bus carries one message per batch
    /// instead of one per append). Each is stored or refused on its own,
    /// exactly as the same `Append`s in this order; answered with
    /// `AppendedBatch`, one outcome per append, in order. At most
    /// [`APPEND_BATCH_MESSAGES_MAX`](crate::APPEND_BATCH_MESSAGES_MAX)
    /// appends and never empty.
    AppendBatch {
        appends: Vec<AppendEntry>,
    },
    /// Read messages from `start_sequence_number` (below the oldest: from the
    /// oldest). Waits up to `wait_ms` for `min_count` messages.
    Read {
        stream: String,
        start_sequence_number: Option<i64>,
        min_count: Option<i64>,
        max_count: Option<i64>,
        wait_ms: Option<i64>,
        /// Payload bytes one answer may carry (the first message is always
        /// included); `None` is the store's own bound.
        #[serde(default)]
        max_bytes: Option<i64>,
        /// The export this read is for, when an exporter reads: the store
        /// counts messages read again for it (sent again after a restart).
        #[serde(default)]
        export_identifier: Option<String>,
    },
    /// Advance an export's cursor and record its status.
    CommitExport {
        stream: String,
        export_identifier: String,
        progress: ExportProgress,
    },
    /// Long-poll the store's change events after `after` (0 at first). `epoch`
    /// is the store epoch the caller last saw (0 if none).
    WatchEvents {
        epoch: u64,
        after: u64,
        wait_ms: i64,
        /// When set, `Appended` events of streams without an export of this
        /// kind are left out, and do not end the wait (an exporter is woken
        /// only by data it may have to send). Other events always come.
        #[serde(default)]
        appended_for: Option<ExportKind>,
    },
    /// Ask for `bytes` of the exporters' shared upload budget
    /// (`STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH`). Answered with `Granted` when
    /// the budget allows, waiting callers served by `priority` (1 highest,
    /// 11 = no priority), then in arrival order; `Busy` after `wait_ms`.
    AcquireBandwidth {
        bytes: i64,
        priority: i64,
        wait_ms: i64,
    },
    /// Ask for one of the exporters' upload slots
    /// (`STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE` uploads in flight across
    /// all exporters), served by `priority` (1 highest, 11 = none), then
    /// arrival: answered `Slot` when one is free, `Busy` after `wait_ms`.
    AcquireSlot {
        priority: i64,
        wait_ms: i64,
    },
    /// Keep a slot (the store takes back a lease not renewed for 30 s).
    RenewSlot {
        lease: u64,
    },
    /// Give a slot back.
    ReleaseSlot {
        lease: u64,
    },
    /// A process's own metrics, kept by the store (the latest report per
    /// process) and served with its own by `Metrics`.
    ReportMetrics {
        process: String,
        families: Vec<crate::metrics::MetricFamily>,
    },
    /// The store's metrics and the latest reports of the other processes.
    Metrics,
    /// The loss ledger: every range of messages that left a stream without
    /// being exported, with its cause.
    Losses,
    /// Sync everything to disk and exit.
    Shutdown,
}

/// The store's answer. Exactly one per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Health(HealthInfo),
    Created,
    Updated,
    Deleted,
    Described(Box<StreamInfo>),
    Streams(Vec<String>),
    DescribedAll(Vec<StreamInfo>),
    Appended {
        sequence_number: i64,
        ingest_time_ms: i64,
    },
    /// The outcomes of an `AppendBatch`, one per append, in its order.
    AppendedBatch(Vec<AppendOutcome>),
    Messages(Vec<Message>),
    Committed,
    Events(EventBatch),
    /// The bandwidth asked for may be used now.
    Granted,
    Reported,
    /// An upload slot, held until released or its lease lapses.
    Slot {
        lease: u64,
    },
    SlotReleased,
    Metrics(Vec<crate::metrics::MetricFamily>),
    Losses(Vec<LossEntry>),
    ShuttingDown,
    Error(ErrorReply),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthInfo {
    /// Random per store process start; changes when the store restarts.
    pub epoch: u64,
    pub pid: u32,
    pub uptime_ms: u64,
    pub streams: u64,
}

/// Change events since a watcher's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub epoch: u64,
    /// Last position this batch covers: pass it as `after` next time.
    pub next: u64,
    /// The caller missed events (store restarted or it fell too far behind):
    /// it must re-read the state it follows (`DescribeAll`).
    pub resync: bool,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    StreamCreated {
        name: String,
    },
    StreamUpdated {
        name: String,
    },
    StreamDeleted {
        name: String,
    },
    /// New data up to `newest_sequence_number` (coalesced per store round).
    Appended {
        name: String,
        newest_sequence_number: i64,
    },
}

/// Why a request failed. Each kind maps to one SDK status code in `ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is malformed or breaks a rule (SDK status 3).
    InvalidRequest,
    /// No such stream or export (SDK status 5).
    ResourceNotFound,
    /// Fewer than `min_count` messages were available by the deadline (13).
    NotEnoughMessages,
    /// The update changes something that cannot change (17).
    UpdateNotAllowed,
    /// The stream is full and its strategy is RejectNewData.
    StreamFull,
    /// The response would exceed the bus limits (7).
    ResponseTooLarge,
    /// The store could not read its data (14).
    StoreReadError,
    /// The store could not write; it is restarting (1).
    StoreWriteError,
    /// The store has too much waiting work (e.g. long-poll readers) (6).
    Busy,
    /// The store is shutting down (6).
    ShuttingDown,
    /// A compare-and-set failed: the state changed since the caller read it
    /// (an export cursor reset by an update).
    Conflict,
    /// The envelope has another bus version.
    UnsupportedBusVersion,
    /// The bytes are not a valid envelope.
    MalformedMessage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ErrorReply {}

/// Why messages left a stream without being exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossCause {
    /// `OverwriteOldestData` made room for new messages.
    Overwrite,
    /// Older than the stream's `timeToLiveMillis`.
    Ttl,
    /// The stream's `maxSize` was made smaller.
    MaxSize,
    /// The exporter skipped them: the destination can never accept them.
    Skipped,
    /// The stream was deleted.
    Deleted,
    /// Found missing at the store's start: acknowledged, then gone from the
    /// database without the store removing them (files removed or damaged
    /// outside it).
    Missing,
}

impl LossCause {
    pub fn as_str(self) -> &'static str {
        match self {
            LossCause::Overwrite => "overwrite",
            LossCause::Ttl => "ttl",
            LossCause::MaxSize => "max-size",
            LossCause::Skipped => "skipped",
            LossCause::Deleted => "deleted",
            LossCause::Missing => "missing",
        }
    }
}

/// One range of sequence numbers in a loss entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossRange {
    pub first_sequence_number: i64,
    pub last_sequence_number: i64,
    /// Unix ms when the first and the last message of the range left.
    pub first_time_ms: i64,
    pub last_time_ms: i64,
}

/// The messages of one stream (and export) that left for one cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossEntry {
    pub stream: String,
    /// `None`: the stream's own record (every message that left it, exported
    /// or not); `Some`: messages that left before this export sent them.
    pub export_identifier: Option<String>,
    pub cause: LossCause,
    /// Messages in all, ever (never decreases).
    pub messages: i64,
    /// The most recent ranges (adjacent ones merged); older ranges are
    /// forgotten beyond a bound, counted in `forgotten_ranges`.
    pub ranges: Vec<LossRange>,
    pub forgotten_ranges: i64,
    /// What the exporter said, for skipped messages.
    pub detail: Option<String>,
}
