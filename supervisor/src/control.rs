//! The control socket (`<store root>/supervisor.sock`, mode 0600): one
//! request line, one answer, then the connection closes. The running
//! supervisor serves it; `stream-manager status|restart|stop` are its client.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::Shared;
use settings::Settings;

/// Longest request line, in bytes.
pub const REQUEST_BYTES_MAX: u64 = 1024;
/// How long a control client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes the socket file when dropped.
pub struct Listener {
    path: std::path::PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket, refusing when another supervisor answers on it.
pub fn listen(config: &Settings, shared: Arc<Shared>) -> Result<Listener, String> {
    let path = crate::config::control_socket(&config.root);
    if UnixStream::connect(&path).is_ok() {
        return Err(format!(
            "a stream-manager is already running for {} (control socket {})",
            config.root.display(),
            config.root.join("supervisor.sock").display()
        ));
    }
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    let root = config.root.clone();
    std::thread::spawn(move || {
        let bus = bus::BusClient::connect(&bus::store_endpoint(&root), Default::default()).ok();
        for conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(CLIENT_TIMEOUT));
            let mut line = String::new();
            let mut reader = BufReader::new((&conn).take(REQUEST_BYTES_MAX));
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let answer = handle(line.trim(), &shared, bus.as_ref());
            let _ = (&conn).write_all(answer.as_bytes());
        }
    });
    Ok(Listener { path })
}

fn handle(request: &str, shared: &Shared, bus: Option<&bus::BusClient>) -> String {
    let mut words = request.split_whitespace();
    match (words.next(), words.next()) {
        (Some("status"), _) => status(shared, bus).to_string(),
        (Some("restart"), Some(name)) => {
            if !crate::PROCESSES.contains(&name) {
                return format!(
                    "error: unknown process {name:?}; processes: {}",
                    crate::PROCESSES.join(", ")
                );
            }
            shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .restart
                .push(name.to_string());
            format!("ok: restarting {name}")
        }
        (Some("stop"), None) => {
            shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .stop = true;
            "ok: stopping".to_string()
        }
        _ => format!("error: unknown request {request:?}"),
    }
}

/// An export with an error whose oldest waiting message is older than this
/// makes the system unhealthy (`status` exits 1, `/healthz` answers 503).
pub const EXPORT_FAILING_AFTER_S: i64 = 300;

/// The running system as `status --json` shows it, with `healthy` and the
/// `problems` that make it unhealthy.
pub fn status(shared: &Shared, bus: Option<&bus::BusClient>) -> serde_json::Value {
    let procs = shared
        .procs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut problems: Vec<String> = procs
        .iter()
        .filter(|p| p.state != crate::children::State::Running)
        .map(|p| {
            format!(
                "{} is {} (last exit: {})",
                p.name,
                serde_json::to_value(p.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                p.last_exit.as_deref().unwrap_or("-")
            )
        })
        .collect();
    let streams = bus
        .map(|b| b.call(bus_schema::Request::DescribeAll, Duration::from_secs(5)))
        .map(|r| match r {
            Ok(bus_schema::Response::DescribedAll(all)) => Ok(all),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        })
        .unwrap_or_else(|| Err("no bus client".into()));
    let now_ms = bus::unix_ms() as i64;
    let (streams, exports, store_error) = match streams {
        Ok(all) => {
            let s: Vec<_> = all
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "name": i.definition.name,
                        "oldest_sequence_number": i.storage.oldest_sequence_number,
                        "newest_sequence_number": i.storage.newest_sequence_number,
                        "total_bytes": i.storage.total_bytes,
                    })
                })
                .collect();
            let mut e = Vec::new();
            for i in &all {
                for x in &i.export_statuses {
                    let lag_seconds = x
                        .oldest_unexported_ingest_ms
                        .map_or(0, |t| (now_ms - t).max(0) / 1000);
                    let failing = x.error_message.is_some() && lag_seconds > EXPORT_FAILING_AFTER_S;
                    if failing {
                        problems.push(format!(
                            "export {} of stream {} is failing and {lag_seconds} s behind: {}",
                            x.export_identifier,
                            i.definition.name,
                            x.error_message.as_deref().unwrap_or("")
                        ));
                    }
                    e.push(serde_json::json!({
                        "stream": i.definition.name,
                        "export": x.export_identifier,
                        "last_exported_sequence_number": x.last_exported_sequence_number,
                        "lag_messages": (i.storage.newest_sequence_number - x.last_exported_sequence_number).max(0),
                        "lag_seconds": lag_seconds,
                        "seconds_since_last_export": x.last_export_time_ms.map(|t| (now_ms - t).max(0) / 1000),
                        "exported_messages": x.exported_messages,
                        "exported_bytes": x.exported_bytes,
                        "skipped_messages": x.skipped_messages,
                        "failing": failing,
                        "last_error": x.error_message,
                    }));
                }
            }
            (s, e, None)
        }
        Err(e) => {
            problems.push(format!("the store does not answer: {e}"));
            (Vec::new(), Vec::new(), Some(e))
        }
    };
    // Where messages went that were not exported: the loss ledger.
    let losses: Vec<serde_json::Value> = match bus
        .filter(|_| store_error.is_none())
        .map(|b| b.call(bus_schema::Request::Losses, Duration::from_secs(5)))
    {
        Some(Ok(bus_schema::Response::Losses(entries))) => entries
            .iter()
            .map(|e| {
                let last = e.ranges.last();
                serde_json::json!({
                    "stream": e.stream,
                    "export": e.export_identifier,
                    "cause": e.cause.as_str(),
                    "messages": e.messages,
                    "ranges": e.ranges.iter().map(|r| serde_json::json!({
                        "first_sequence_number": r.first_sequence_number,
                        "last_sequence_number": r.last_sequence_number,
                        "first_time_ms": r.first_time_ms,
                        "last_time_ms": r.last_time_ms,
                    })).collect::<Vec<_>>(),
                    "forgotten_ranges": e.forgotten_ranges,
                    "last_range": last.map(|r| format!("{}-{}", r.first_sequence_number, r.last_sequence_number)),
                    "seconds_since_last": last.map(|r| (now_ms - r.last_time_ms).max(0) / 1000),
                    "detail": e.detail,
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    serde_json::json!({
        "healthy": problems.is_empty(),
        "problems": problems,
        "processes": procs,
        "streams": streams,
        "exports": exports,
        "losses": losses,
        "store_error": store_error,
    })
}

/// Exit code of `status` when the system is unhealthy.
pub const EXIT_UNHEALTHY: u8 = 1;
/// Exit code of a client command when no system runs on this root.
pub const EXIT_NOT_RUNNING: u8 = 3;

/// Sends one request to the running system and prints the answer.
pub fn client(config: &Settings, request: &str, json: bool) -> ExitCode {
    let path = crate::config::control_socket(&config.root);
    let mut conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(_) => {
            eprintln!(
                "stream-manager: no running system for {} (no answer on {})",
                config.root.display(),
                config.root.join("supervisor.sock").display()
            );
            return ExitCode::from(EXIT_NOT_RUNNING);
        }
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
    if conn.write_all(format!("{request}\n").as_bytes()).is_err() {
        eprintln!("stream-manager: the running system closed the control socket");
        return ExitCode::from(EXIT_NOT_RUNNING);
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    if answer.starts_with("error:") {
        eprintln!("stream-manager: {}", answer.trim_start_matches("error: "));
        return ExitCode::from(1);
    }
    if request != "status" {
        println!("{answer}");
        return ExitCode::SUCCESS;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&answer) else {
        eprintln!("stream-manager: unreadable status: {answer}");
        return ExitCode::from(1);
    };
    if json {
        println!("{answer}");
    } else {
        print!("{}", render_status(&v));
    }
    if v["healthy"].as_bool() == Some(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    }
}

/// Rows under headers, each column as wide as its widest cell; columns
/// named in `right` are right-aligned.
fn table(headers: &[&str], right: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            let last = i + 1 == widths.len();
            if right.contains(&headers[i]) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if !last {
                    out.push_str(&" ".repeat(pad));
                }
            }
            if !last {
                out.push_str("  ");
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn render_status(v: &serde_json::Value) -> String {
    let s = |x: &serde_json::Value| match x {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows = |key: &str, fields: &[&str]| -> Vec<Vec<String>> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| fields.iter().map(|f| s(&item[*f])).collect())
            .collect()
    };
    let mut out = table(
        &[
            "PROCESS",
            "PID",
            "STATE",
            "UPTIME (s)",
            "RESTARTS",
            "LAST EXIT",
        ],
        &["PID", "UPTIME (s)", "RESTARTS"],
        &rows(
            "processes",
            &["name", "pid", "state", "uptime_s", "restarts", "last_exit"],
        ),
    );
    out.push('\n');
    if let Some(e) = v["store_error"].as_str() {
        out.push_str(&format!("streams unavailable: {e}\n"));
    } else {
        out.push_str(&table(
            &["STREAM", "OLDEST", "NEWEST", "BYTES"],
            &["OLDEST", "NEWEST", "BYTES"],
            &rows(
                "streams",
                &[
                    "name",
                    "oldest_sequence_number",
                    "newest_sequence_number",
                    "total_bytes",
                ],
            ),
        ));
        out.push('\n');
        let cols = [
            "STREAM",
            "EXPORT",
            "EXPORTED TO",
            "LAG (msgs)",
            "LAG (s)",
            "SINCE (s)",
            "SKIPPED",
            "LAST ERROR",
        ];
        out.push_str(&table(
            &cols,
            &cols[2..7],
            &rows(
                "exports",
                &[
                    "stream",
                    "export",
                    "last_exported_sequence_number",
                    "lag_messages",
                    "lag_seconds",
                    "seconds_since_last_export",
                    "skipped_messages",
                    "last_error",
                ],
            ),
        ));
        out.push('\n');
        let cols = [
            "LOST FROM STREAM",
            "EXPORT",
            "CAUSE",
            "MESSAGES",
            "LAST RANGE",
            "SINCE (s)",
            "DETAIL",
        ];
        out.push_str(&table(
            &cols,
            &["MESSAGES", "LAST RANGE", "SINCE (s)"],
            &rows(
                "losses",
                &[
                    "stream",
                    "export",
                    "cause",
                    "messages",
                    "last_range",
                    "seconds_since_last",
                    "detail",
                ],
            ),
        ));
    }
    out.push('\n');
    let problems: Vec<String> = v["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    if problems.is_empty() {
        out.push_str("healthy\n");
    } else {
        out.push_str("UNHEALTHY:\n");
        for p in problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn columns_align_on_the_longest_cell() {
        let t = table(
            &["PROCESS", "PID", "STATE"],
            &["PID"],
            &[
                vec!["store".into(), "7".into(), "running".into()],
                vec!["export-analytics".into(), "12345".into(), "stopped".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "PROCESS             PID  STATE");
        assert_eq!(lines[1], "store                 7  running");
        assert_eq!(lines[2], "export-analytics  12345  stopped");
    }
}
