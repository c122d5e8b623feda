//! An exporter process's own metrics, per export: attempts that failed and
//! were retried, what the export is doing now, and the class of its last
//! error. Reported to the store every [`REPORT_INTERVAL`]; the store adds
//! what it knows (lag, records sent, losses) and serves them all.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bus_schema::metrics::{MetricFamily, MetricKind};

/// How often an exporter reports its metrics to the store.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// What an export is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportState {
    /// Waiting for messages (or for its batch to be due).
    Idle,
    /// Waiting for one of the process's upload slots.
    WaitingForSlot,
    /// Waiting for the shared bandwidth budget.
    WaitingForBandwidth,
    Sending,
    /// The last attempt failed; waiting before the next.
    BackingOff,
}

impl ExportState {
    pub const ALL: [ExportState; 5] = [
        ExportState::Idle,
        ExportState::WaitingForSlot,
        ExportState::WaitingForBandwidth,
        ExportState::Sending,
        ExportState::BackingOff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportState::Idle => "idle",
            ExportState::WaitingForSlot => "waiting-for-slot",
            ExportState::WaitingForBandwidth => "waiting-for-bandwidth",
            ExportState::Sending => "sending",
            ExportState::BackingOff => "backing-off",
        }
    }
}

/// The class of a failed attempt, from its error text (a bounded set of
/// label values; the text itself is in the export's status).
pub fn error_class(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| r.contains(w));
    if has(&[
        "throttl",
        "slow down",
        "slowdown",
        "rate exceeded",
        "too many requests",
    ]) {
        "throttled"
    } else if has(&[
        "timed out",
        "timeout",
        "deadline",
        "no progress",
        "stalled",
        "too slow",
    ]) {
        "timeout"
    } else if has(&[
        "credential",
        "access denied",
        "accessdenied",
        "unrecognizedclient",
        "signature",
        "forbidden",
        "expired token",
        "expiredtoken",
    ]) {
        "auth"
    } else if has(&["not found", "notfound", "nosuchbucket", "does not exist"]) {
        "not-found"
    } else if has(&[
        "dispatch",
        "connect",
        "connection",
        "broken pipe",
        "dns",
        "io error",
    ]) {
        "connection"
    } else if has(&[
        "internal",
        "service unavailable",
        "serviceunavailable",
        " 50",
        "5xx",
    ]) {
        "server"
    } else if has(&["invalid", "validation", "rejected", "over the destination"]) {
        "invalid"
    } else {
        "other"
    }
}

struct Counters {
    retries: u64,
    state: ExportState,
    error: Option<&'static str>,
}

/// The counters of every export of the process.
#[derive(Default)]
pub struct ExportMetrics {
    exports: Mutex<BTreeMap<(String, String), Counters>>,
}

impl ExportMetrics {
    fn with(&self, stream: &str, export: &str, f: impl FnOnce(&mut Counters)) {
        let mut all = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        let key = (stream.to_string(), export.to_string());
        f(all.entry(key).or_insert(Counters {
            retries: 0,
            state: ExportState::Idle,
            error: None,
        }));
    }

    pub fn state(&self, stream: &str, export: &str, state: ExportState) {
        self.with(stream, export, |c| c.state = state);
    }

    /// An attempt failed and will be retried.
    pub fn failed(&self, stream: &str, export: &str, reason: &str) {
        self.with(stream, export, |c| {
            c.retries += 1;
            c.error = Some(error_class(reason));
            c.state = ExportState::BackingOff;
        });
    }

    /// A batch went through (or was settled): no error now.
    pub fn succeeded(&self, stream: &str, export: &str) {
        self.with(stream, export, |c| {
            c.error = None;
            c.state = ExportState::Idle;
        });
    }

    /// The export is gone from this process.
    pub fn forget(&self, stream: &str, export: &str) {
        self.exports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(stream.to_string(), export.to_string()));
    }

    pub fn families(&self, process: &str) -> Vec<MetricFamily> {
        let all = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        let mut retries = MetricFamily::new(
            "sm_export_retries_total",
            "Export attempts that failed and were retried, since the exporter started.",
            MetricKind::Counter,
        );
        let mut state = MetricFamily::new(
            "sm_export_state",
            "1 for what the export is doing now (idle, waiting-for-slot, waiting-for-bandwidth, sending, backing-off).",
            MetricKind::Gauge,
        );
        let mut error = MetricFamily::new(
            "sm_export_last_error_info",
            "1, labelled with the class of the error of the export's failing attempts (throttled, timeout, auth, not-found, connection, server, invalid, other); absent while it succeeds.",
            MetricKind::Gauge,
        );
        for ((stream, export), c) in all.iter() {
            let l = [
                ("stream", stream.as_str()),
                ("export", export.as_str()),
                ("exporter", process),
            ];
            retries.sample(&l, c.retries as f64);
            for s in ExportState::ALL {
                let mut l = l.to_vec();
                l.push(("state", s.as_str()));
                state.sample(&l, f64::from(u8::from(s == c.state)));
            }
            if let Some(class) = c.error {
                let mut l = l.to_vec();
                l.push(("class", class));
                error.sample(&l, 1.0);
            }
        }
        vec![retries, state, error]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        assert_eq!(
            error_class("ProvisionedThroughputExceededException: Rate exceeded"),
            "throttled"
        );
        assert_eq!(error_class("dispatch failure: io error"), "connection");
        assert_eq!(
            error_class("ResourceNotFoundException: Stream x not found"),
            "not-found"
        );
        assert_eq!(error_class("the call timed out after 30s"), "timeout");
        assert_eq!(
            error_class("PutRecords made no progress for 30 s: the link is stalled or down"),
            "timeout"
        );
        assert_eq!(error_class("something odd"), "other");
    }

    #[test]
    fn families_show_state_and_error() {
        let m = ExportMetrics::default();
        m.failed("s", "e", "throttled");
        let text = bus_schema::metrics::render(&m.families("export-kinesis"));
        assert!(
            text.contains(
                "sm_export_retries_total{stream=\"s\",export=\"e\",exporter=\"export-kinesis\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("state=\"backing-off\"} 1"), "{text}");
        assert!(text.contains("class=\"throttled\"} 1"), "{text}");
        m.succeeded("s", "e");
        let text = bus_schema::metrics::render(&m.families("export-kinesis"));
        assert!(!text.contains("class="), "{text}");
        m.forget("s", "e");
        assert!(!bus_schema::metrics::render(&m.families("x")).contains("stream=\"s\""));
    }
}
