//! The ingest process's settings, from the Greengrass-named environment
//! variables (and this project's own, named `STREAM_MANAGER_SERVER_*`),
//! validated at start-up with every problem reported at once.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::server::{IngestSettings, CONNECTIONS_MAX_DEFAULT, FRAME_BYTES_MAX_DEFAULT};

/// Port used when `STREAM_MANAGER_SERVER_PORT` is not set (the SDKs' default).
pub const PORT_DEFAULT: u16 = 8088;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// 0 = pick a free port (it is then printed and written to `port_file`).
    pub port: u16,
    pub root: PathBuf,
    pub settings: IngestSettings,
    pub log_filter: String,
}

impl IngestConfig {
    pub fn port_file(&self) -> PathBuf {
        self.root.join("ingest.port")
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let port = match get("STREAM_MANAGER_SERVER_PORT") {
            None => PORT_DEFAULT,
            Some(v) => v.trim().parse::<u16>().unwrap_or_else(|_| {
                problems.push(format!(
                    "STREAM_MANAGER_SERVER_PORT {v:?} is not a port number (0-65535)"
                ));
                PORT_DEFAULT
            }),
        };
        let root = bus::settings::store_root(&get).unwrap_or_else(|e| {
            problems.push(e);
            PathBuf::new()
        });
        let authenticate = match get("STREAM_MANAGER_AUTHENTICATE_CLIENT")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => {
                problems.push(format!(
                    "STREAM_MANAGER_AUTHENTICATE_CLIENT {v:?} must be true or false"
                ));
                false
            }
        };
        let tokens = match (authenticate, get("STREAM_MANAGER_AUTH_TOKENS_FILE")) {
            (false, _) => None,
            (true, None) => {
                problems.push(
                    "STREAM_MANAGER_AUTHENTICATE_CLIENT=true needs STREAM_MANAGER_AUTH_TOKENS_FILE (one token per line)".into(),
                );
                None
            }
            (true, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let set: HashSet<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect();
                    if set.is_empty() {
                        problems.push(format!(
                            "STREAM_MANAGER_AUTH_TOKENS_FILE {path} lists no token"
                        ));
                    }
                    Some(set)
                }
                Err(e) => {
                    problems.push(format!(
                        "STREAM_MANAGER_AUTH_TOKENS_FILE {path} cannot be read: {e}"
                    ));
                    None
                }
            },
        };
        let mut settings = IngestSettings {
            tokens,
            ..IngestSettings::default()
        };
        if let Some(v) = get("STREAM_MANAGER_SERVER_MAX_FRAME_BYTES") {
            match v.trim().parse::<u32>() {
                Ok(n) if (1024..=crate::wire::SDK_FRAME_BYTES_MAX).contains(&n) => settings.frame_bytes_max = n,
                _ => problems.push(format!(
                    "STREAM_MANAGER_SERVER_MAX_FRAME_BYTES {v:?} must be between 1024 and {} (default {FRAME_BYTES_MAX_DEFAULT})",
                    crate::wire::SDK_FRAME_BYTES_MAX
                )),
            }
        }
        if let Some(v) = get("STREAM_MANAGER_SERVER_MAX_CONNECTIONS") {
            match v.trim().parse::<usize>() {
                Ok(n) if (1..=65_536).contains(&n) => settings.connections_max = n,
                _ => problems.push(format!(
                    "STREAM_MANAGER_SERVER_MAX_CONNECTIONS {v:?} must be between 1 and 65536 (default {CONNECTIONS_MAX_DEFAULT})"
                )),
            }
        }
        let log_filter = bus::settings::log_level(&get).unwrap_or_else(|e| {
            problems.push(e);
            "info".to_string()
        });
        if problems.is_empty() {
            Ok(Self {
                port,
                root,
                settings,
                log_filter,
            })
        } else {
            Err(problems)
        }
    }
}
