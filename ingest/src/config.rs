//! The ingest process's settings: its part of the system's validated
//! configuration (`settings::Settings`).

use std::path::PathBuf;

use crate::server::IngestSettings;

// The frame limit the settings accept is the SDKs' own.
const _: () = assert!(settings::SERVER_FRAME_BYTES_LIMIT == crate::wire::SDK_FRAME_BYTES_MAX);

/// Port used when `STREAM_MANAGER_SERVER_PORT` is not set (the SDKs' default).
pub const PORT_DEFAULT: u16 = settings::SERVER_PORT_DEFAULT;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// 0 = pick a free port (it is then printed and written to `port_file`).
    pub port: u16,
    pub root: PathBuf,
    pub settings: IngestSettings,
    pub log: settings::LogSettings,
}

impl IngestConfig {
    pub fn port_file(&self) -> PathBuf {
        self.root.join("ingest.port")
    }

    pub fn from_settings(s: &settings::Settings) -> Self {
        let mut ingest = IngestSettings {
            tokens: s.tokens.clone(),
            ..IngestSettings::default()
        };
        if let Some(n) = s.server_frame_bytes_max {
            ingest.frame_bytes_max = n;
        }
        if let Some(n) = s.server_connections_max {
            ingest.connections_max = n;
        }
        Self {
            port: s.server_port,
            root: s.root.clone(),
            settings: ingest,
            log: s.log.clone(),
        }
    }
}
