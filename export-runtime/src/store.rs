//! The exporter's conversation with the store, over the bus: typed calls
//! with one timeout, store errors and bus errors kept apart.

use std::time::Duration;

use bus::{BusClient, BusError, PendingReply};
use bus_schema::{
    ErrorKind, ErrorReply, EventBatch, ExportProgress, Message, Request, Response, StreamInfo,
};

/// How long one store call may take before it counts as failed (the store
/// answers in well under a millisecond when healthy).
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one change-event long poll waits for news.
pub const WATCH_WAIT_MS: i64 = 30_000;

/// How long one bandwidth request waits in the store before asking again
/// (a waiter that asks again queues behind newer ones: long waits keep that
/// rare).
pub const BANDWIDTH_WAIT_MS: i64 = 60_000;

/// Why a store call failed.
#[derive(Debug)]
pub enum StoreError {
    /// The store answered with an error.
    Refused(ErrorReply),
    /// No answer (the store is restarting, or gone): try again later.
    Unavailable(String),
}

impl StoreError {
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            StoreError::Refused(r) => Some(r.kind),
            StoreError::Unavailable(_) => None,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Refused(r) => write!(f, "the store refused: {r}"),
            StoreError::Unavailable(m) => write!(f, "the store is unavailable: {m}"),
        }
    }
}

impl From<BusError> for StoreError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Remote(reply) => StoreError::Refused(reply),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// The outcome of a submitted commit.
pub fn settle(reply: Result<Response, BusError>) -> Result<(), StoreError> {
    match reply? {
        Response::Committed => Ok(()),
        other => Err(unexpected(other)),
    }
}

pub struct Store {
    client: BusClient,
}

fn unexpected(r: Response) -> StoreError {
    match r {
        Response::Error(e) => StoreError::Refused(e),
        other => StoreError::Unavailable(format!("unexpected answer {other:?}")),
    }
}

impl Store {
    /// Connects to the store under `root`, the bus driver running on the
    /// current runtime (call from inside the exporter's runtime).
    pub fn connect(root: &std::path::Path) -> Result<Self, BusError> {
        Ok(Self {
            client: BusClient::connect_in_runtime(&bus::store_endpoint(root), Default::default())?,
        })
    }

    async fn call(&self, req: Request, timeout: Duration) -> Result<Response, StoreError> {
        Ok(self.client.call_async(req, timeout).await?)
    }

    pub async fn describe_all(&self) -> Result<Vec<StreamInfo>, StoreError> {
        match self.call(Request::DescribeAll, STORE_CALL_TIMEOUT).await? {
            Response::DescribedAll(all) => Ok(all),
            other => Err(unexpected(other)),
        }
    }

    pub async fn describe(&self, name: &str) -> Result<StreamInfo, StoreError> {
        let req = Request::DescribeStream {
            name: name.to_string(),
        };
        match self.call(req, STORE_CALL_TIMEOUT).await? {
            Response::Described(info) => Ok(*info),
            other => Err(unexpected(other)),
        }
    }

    pub async fn watch(
        &self,
        epoch: u64,
        after: u64,
        wait_ms: i64,
        appended_for: Option<bus_schema::ExportKind>,
    ) -> Result<EventBatch, StoreError> {
        let req = Request::WatchEvents {
            epoch,
            after,
            wait_ms,
            appended_for,
        };
        let timeout = STORE_CALL_TIMEOUT + Duration::from_millis(wait_ms.max(0) as u64);
        match self.call(req, timeout).await? {
            Response::Events(batch) => Ok(batch),
            other => Err(unexpected(other)),
        }
    }

    /// Up to `max_count` messages from `start` (below the oldest: from the
    /// oldest), at most `max_bytes` of payload (the first always comes).
    /// `export`: the export the messages are read to be sent for.
    pub async fn read(
        &self,
        stream: &str,
        start: i64,
        max_count: usize,
        max_bytes: usize,
        export: Option<&str>,
    ) -> Result<Vec<Message>, StoreError> {
        let req = Request::Read {
            stream: stream.to_string(),
            start_sequence_number: Some(start),
            min_count: Some(1),
            max_count: Some(max_count as i64),
            wait_ms: Some(0),
            max_bytes: Some(max_bytes as i64),
            export_identifier: export.map(str::to_string),
        };
        match self.call(req, STORE_CALL_TIMEOUT).await {
            Ok(Response::Messages(m)) => Ok(m),
            Err(StoreError::Refused(e)) if e.kind == ErrorKind::NotEnoughMessages => Ok(Vec::new()),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        }
    }

    pub async fn commit(
        &self,
        stream: &str,
        identifier: &str,
        progress: ExportProgress,
    ) -> Result<(), StoreError> {
        let req = Request::CommitExport {
            stream: stream.to_string(),
            export_identifier: identifier.to_string(),
            progress,
        };
        match self.call(req, STORE_CALL_TIMEOUT).await? {
            Response::Committed => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Hands the process's metrics to the store, which serves them.
    pub async fn report_metrics(
        &self,
        process: &str,
        families: Vec<bus_schema::metrics::MetricFamily>,
    ) -> Result<(), StoreError> {
        let req = Request::ReportMetrics {
            process: process.to_string(),
            families,
        };
        match self.call(req, STORE_CALL_TIMEOUT).await? {
            Response::Reported => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Appends `payload` to `stream`; its sequence number.
    pub async fn append(&self, stream: &str, payload: Vec<u8>) -> Result<i64, StoreError> {
        let req = Request::Append {
            stream: stream.to_string(),
            payload,
        };
        match self.call(req, STORE_CALL_TIMEOUT).await? {
            Response::Appended {
                sequence_number, ..
            } => Ok(sequence_number),
            other => Err(unexpected(other)),
        }
    }

    /// Waits as long as it takes until the shared upload budget allows
    /// `bytes` more, asking again after each full wait. A refusal at once
    /// (the store's queue of waiters is full) or an unavailable store comes
    /// back as the error: the caller backs off.
    pub async fn wait_for_bandwidth(&self, bytes: usize, priority: i64) -> Result<(), StoreError> {
        loop {
            let asked = std::time::Instant::now();
            match self
                .acquire_bandwidth(bytes, priority, BANDWIDTH_WAIT_MS)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.kind() == Some(ErrorKind::Busy)
                        && asked.elapsed()
                            >= Duration::from_millis(BANDWIDTH_WAIT_MS as u64 / 2) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits as long as it takes for one of the exporters' upload slots
    /// (shared by all exporter processes, handed out by priority); its
    /// lease. A refusal at once (too many waiting) or an unavailable store
    /// comes back as the error: the caller backs off.
    pub async fn acquire_slot(&self, priority: i64) -> Result<u64, StoreError> {
        loop {
            let asked = std::time::Instant::now();
            let req = Request::AcquireSlot {
                priority,
                wait_ms: BANDWIDTH_WAIT_MS,
            };
            let timeout = STORE_CALL_TIMEOUT + Duration::from_millis(BANDWIDTH_WAIT_MS as u64);
            match self.call(req, timeout).await {
                Ok(Response::Slot { lease }) => return Ok(lease),
                Ok(other) => return Err(unexpected(other)),
                Err(e)
                    if e.kind() == Some(ErrorKind::Busy)
                        && asked.elapsed()
                            >= Duration::from_millis(BANDWIDTH_WAIT_MS as u64 / 2) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Keeps an upload slot.
    pub async fn renew_slot(&self, lease: u64) -> Result<(), StoreError> {
        match self
            .call(Request::RenewSlot { lease }, STORE_CALL_TIMEOUT)
            .await?
        {
            Response::Slot { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Gives an upload slot back.
    pub async fn release_slot(&self, lease: u64) -> Result<(), StoreError> {
        match self
            .call(Request::ReleaseSlot { lease }, STORE_CALL_TIMEOUT)
            .await?
        {
            Response::SlotReleased => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Queues a commit and returns at once; its answer comes through
    /// [`settle`]. Commits submitted one after another reach the store in
    /// that order.
    pub async fn submit_commit(
        &self,
        stream: &str,
        identifier: &str,
        progress: ExportProgress,
    ) -> Result<PendingReply, StoreError> {
        let req = Request::CommitExport {
            stream: stream.to_string(),
            export_identifier: identifier.to_string(),
            progress,
        };
        Ok(self.client.submit(req, STORE_CALL_TIMEOUT).await?)
    }

    /// Waits until the shared upload budget allows `bytes` more.
    pub async fn acquire_bandwidth(
        &self,
        bytes: usize,
        priority: i64,
        wait_ms: i64,
    ) -> Result<(), StoreError> {
        let req = Request::AcquireBandwidth {
            bytes: bytes as i64,
            priority,
            wait_ms,
        };
        let timeout = STORE_CALL_TIMEOUT + Duration::from_millis(wait_ms.max(0) as u64);
        match self.call(req, timeout).await? {
            Response::Granted => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
