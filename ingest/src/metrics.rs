//! The ingest's own metrics: connections, requests by operation and
//! outcome, and request latency (from the request's submission to the
//! store until its answer). Reported to the store every
//! [`REPORT_INTERVAL`], which serves them with its own.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bus::{BusClient, BusError};
use bus_schema::metrics::{Histogram, MetricFamily, MetricKind};
use bus_schema::{Request, Response};

/// How often the ingest reports its metrics to the store.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Inner {
    connections: u64,
    requests: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    /// Bus requests the submitter sent, by kind (`BUS_APPEND`, ...).
    bus_requests: BTreeMap<&'static str, u64>,
    /// Appends that went to the store inside an `AppendBatch`.
    batched_appends: u64,
}

/// Kinds of bus request the submitter sends (label values of
/// `sm_ingest_bus_requests_total`).
pub const BUS_APPEND: &str = "append";
pub const BUS_APPEND_BATCH: &str = "append_batch";
pub const BUS_OTHER: &str = "other";

/// Counters shared by every connection (uncontended: the ingest runs on
/// one thread).
#[derive(Default)]
pub struct IngestMetrics {
    inner: Mutex<Inner>,
}

/// The operation name of an SDK opcode (a bounded set of label values).
pub fn operation(opcode: u8) -> &'static str {
    use crate::wire::op;
    match opcode {
        op::CREATE => "create",
        op::DELETE => "delete",
        op::APPEND => "append",
        op::READ => "read",
        op::LIST => "list",
        op::DESCRIBE => "describe",
        op::UPDATE => "update",
        _ => "unknown",
    }
}

/// The outcome label of an answered request.
pub const SUCCESS: &str = "success";

/// The outcome label of a store answer.
pub fn outcome(reply: &Result<Response, BusError>) -> &'static str {
    use bus_schema::ErrorKind as K;
    match reply {
        Ok(Response::Error(_)) => "error",
        Ok(_) => SUCCESS,
        Err(BusError::Remote(e)) => match e.kind {
            K::InvalidRequest => "invalid-request",
            K::ResourceNotFound => "not-found",
            K::NotEnoughMessages => "not-enough-messages",
            K::StreamFull => "stream-full",
            K::StoreWriteError => "store-write-error",
            K::Busy => "busy",
            _ => "error",
        },
        Err(_) => "unavailable",
    }
}

impl IngestMetrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn connection_opened(&self) {
        self.with(|m| m.connections += 1);
    }

    pub fn connection_closed(&self) {
        self.with(|m| m.connections = m.connections.saturating_sub(1));
    }

    /// A request answered without the store (refused by the ingest).
    pub fn refused(&self, operation: &'static str, outcome: &'static str) {
        self.with(|m| *m.requests.entry((operation, outcome)).or_default() += 1);
    }

    /// A request the store answered (or failed to) after `elapsed`.
    pub fn answered(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        self.with(|m| {
            *m.requests.entry((operation, outcome)).or_default() += 1;
            m.latency
                .entry(operation)
                .or_default()
                .observe(elapsed.as_secs_f64());
        });
    }

    /// A bus request sent by the submitter: a batch carries `appends`.
    pub fn sent(&self, kind: &'static str, appends: usize) {
        self.with(|m| {
            *m.bus_requests.entry(kind).or_default() += 1;
            if kind == BUS_APPEND_BATCH {
                m.batched_appends += appends as u64;
            }
        });
    }

    pub fn families(&self) -> Vec<MetricFamily> {
        self.with(|m| {
            let mut conns = MetricFamily::new(
                "sm_ingest_connections",
                "SDK connections open.",
                MetricKind::Gauge,
            );
            conns.sample(&[], m.connections as f64);
            let mut requests = MetricFamily::new(
                "sm_ingest_requests_total",
                "SDK requests by operation and outcome, since the ingest started.",
                MetricKind::Counter,
            );
            for ((op, out), n) in &m.requests {
                requests.sample(&[("operation", op), ("outcome", out)], *n as f64);
            }
            let mut latency = MetricFamily::new(
                "sm_ingest_request_seconds",
                "Time from an SDK request's submission to the store until its answer.",
                MetricKind::Histogram,
            );
            for (op, h) in &m.latency {
                latency.histogram(&[("operation", op)], h);
            }
            let mut bus = MetricFamily::new(
                "sm_ingest_bus_requests_total",
                "Requests the ingest sent to the store, by kind (append: one append alone; append_batch: appends that waited together).",
                MetricKind::Counter,
            );
            for (kind, n) in &m.bus_requests {
                bus.sample(&[("kind", kind)], *n as f64);
            }
            let mut batched = MetricFamily::new(
                "sm_ingest_batched_appends_total",
                "Appends sent to the store inside append batches (divided by the append_batch requests: appends per batch).",
                MetricKind::Counter,
            );
            batched.sample(&[], m.batched_appends as f64);
            vec![conns, requests, latency, bus, batched]
        })
    }

    /// Reports to the store every [`REPORT_INTERVAL`], forever.
    pub async fn report(self: std::sync::Arc<Self>, bus: BusClient) {
        let mut tick = tokio::time::interval(REPORT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let request = Request::ReportMetrics {
                process: "ingest".into(),
                families: self.families(),
            };
            if let Ok(pending) = bus.submit(request, REPORT_INTERVAL).await {
                let _ = pending.wait().await;
            }
        }
    }
}
