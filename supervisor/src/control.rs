//! The control socket (`<store root>/supervisor.sock`, mode 0600): one
//! request line, one answer, then the connection closes. The running
//! supervisor serves it; `stream-manager status|restart|stop` are its client.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::SystemConfig;
use crate::Shared;

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
pub fn listen(config: &SystemConfig, shared: Arc<Shared>) -> Result<Listener, String> {
    let path = config.control_socket();
    if UnixStream::connect(&path).is_ok() {
        return Err(format!(
            "a stream-manager is already running for {} (control socket {})",
            config.root.display(),
            path.display()
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
        (Some("status"), _) => {
            let procs = shared
                .procs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
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
                    let e: Vec<_> = all
                        .iter()
                        .flat_map(|i| {
                            i.export_statuses.iter().map(move |x| {
                                serde_json::json!({
                                    "stream": i.definition.name,
                                    "export": x.export_identifier,
                                    "last_exported_sequence_number": x.last_exported_sequence_number,
                                    "lag_messages": (i.storage.newest_sequence_number - x.last_exported_sequence_number).max(0),
                                    "lag_seconds": x.oldest_unexported_ingest_ms.map_or(0, |t| (now_ms - t).max(0) / 1000),
                                    "seconds_since_last_export": x.last_export_time_ms.map(|t| (now_ms - t).max(0) / 1000),
                                    "exported_messages": x.exported_messages,
                                    "exported_bytes": x.exported_bytes,
                                    "skipped_messages": x.skipped_messages,
                                    "last_error": x.error_message,
                                })
                            })
                        })
                        .collect();
                    (s, e, None)
                }
                Err(e) => (Vec::new(), Vec::new(), Some(e)),
            };
            serde_json::json!({
                "processes": procs,
                "streams": streams,
                "exports": exports,
                "store_error": store_error,
            })
            .to_string()
        }
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

/// Sends one request to the running system and prints the answer.
pub fn client(config: &SystemConfig, request: &str, json: bool) -> ExitCode {
    let path = config.control_socket();
    let mut conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(_) => {
            eprintln!(
                "stream-manager: no running system for {} (no answer on {})",
                config.root.display(),
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
    if conn.write_all(format!("{request}\n").as_bytes()).is_err() {
        eprintln!("stream-manager: the running system closed the control socket");
        return ExitCode::from(1);
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    if answer.starts_with("error:") {
        eprintln!("stream-manager: {}", answer.trim_start_matches("error: "));
        return ExitCode::from(1);
    }
    if request == "status" && !json {
        print_table(&answer);
    } else {
        println!("{answer}");
    }
    ExitCode::SUCCESS
}

fn print_table(answer: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(answer) else {
        println!("{answer}");
        return;
    };
    let s = |x: &serde_json::Value| match x {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "{:<10} {:>8} {:<14} {:>8} {:>8}  LAST EXIT",
        "PROCESS", "PID", "STATE", "UPTIME", "RESTARTS"
    );
    for p in v["processes"].as_array().into_iter().flatten() {
        println!(
            "{:<10} {:>8} {:<14} {:>7}s {:>8}  {}",
            s(&p["name"]),
            s(&p["pid"]),
            s(&p["state"]),
            s(&p["uptime_s"]),
            s(&p["restarts"]),
            s(&p["last_exit"])
        );
    }
    println!();
    println!(
        "{:<32} {:>12} {:>12} {:>14}",
        "STREAM", "OLDEST", "NEWEST", "BYTES"
    );
    for st in v["streams"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:>12} {:>12} {:>14}",
            s(&st["name"]),
            s(&st["oldest_sequence_number"]),
            s(&st["newest_sequence_number"]),
            s(&st["total_bytes"])
        );
    }
    if let Some(e) = v["store_error"].as_str() {
        println!("(streams unavailable: {e})");
    }
    println!();
    println!(
        "{:<24} {:<20} {:>12} {:>10} {:>8} {:>10} {:>8}  LAST ERROR",
        "STREAM", "EXPORT", "EXPORTED TO", "LAG MSGS", "LAG (s)", "SINCE (s)", "SKIPPED"
    );
    for e in v["exports"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<20} {:>12} {:>10} {:>8} {:>10} {:>8}  {}",
            s(&e["stream"]),
            s(&e["export"]),
            s(&e["last_exported_sequence_number"]),
            s(&e["lag_messages"]),
            s(&e["lag_seconds"]),
            s(&e["seconds_since_last_export"]),
            s(&e["skipped_messages"]),
            s(&e["last_error"])
        );
    }
}
