//! Logging, the same in every process: to stderr; colour only when stderr is
//! a terminal (never in a file, a pipe or journald); `LOG_FORMAT=json` writes
//! one JSON object per line with the process name as a field; `RUST_LOG`,
//! when set, replaces the filter built from `LOG_LEVEL`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::{LogFormat, LogSettings};

/// The filter: `RUST_LOG` when set, else `warn` for everything and the
/// `LOG_LEVEL` for `crates` (this process's own code).
pub fn filter(log: &LogSettings, crates: &[&str]) -> String {
    log.filter.clone().unwrap_or_else(|| {
        let mut f = "warn".to_string();
        for c in crates {
            let _ = write!(f, ",{c}={}", log.level);
        }
        f
    })
}

/// Installs the process's logger. `process` names it in JSON lines;
/// `crates` are the targets `LOG_LEVEL` applies to.
pub fn init(process: &'static str, log: &LogSettings, crates: &[&str]) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter(log, crates))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .event_format(JsonLines { process })
            .try_init(),
    };
}

/// One JSON object per event: `timestamp` (RFC 3339, UTC), `level`,
/// `process`, `target`, `message` and the event's fields.
struct JsonLines {
    process: &'static str,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = serde_json::Map::new();
        fields.insert("timestamp".into(), rfc3339(SystemTime::now()).into());
        fields.insert("level".into(), meta.level().as_str().into());
        fields.insert("process".into(), self.process.into());
        fields.insert("target".into(), meta.target().into());
        event.record(&mut JsonFields(&mut fields));
        writeln!(writer, "{}", serde_json::Value::Object(fields))
    }
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// A line another program wrote (a child's plain output), as a JSON log
/// line of `process` at `level`.
pub fn json_line(process: &str, level: &str, message: &str) -> String {
    serde_json::json!({
        "timestamp": rfc3339(SystemTime::now()),
        "level": level,
        "process": process,
        "message": message,
    })
    .to_string()
}

/// `2026-12-05T01:02:03.456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T12:34:56.789Z (a leap day).
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(rfc3339(t), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn filters() {
        let mut log = LogSettings {
            level: "debug".into(),
            format: LogFormat::Text,
            filter: None,
        };
        assert_eq!(
            filter(&log, &["store", "bus"]),
            "warn,store=debug,bus=debug"
        );
        log.filter = Some("trace".into());
        assert_eq!(filter(&log, &["store"]), "trace");
    }

    #[test]
    fn foreign_lines_become_json() {
        let v: serde_json::Value =
            serde_json::from_str(&json_line("store", "ERROR", "store: \"boom\"")).unwrap();
        assert_eq!(v["process"], "store");
        assert_eq!(v["message"], "store: \"boom\"");
    }
}
