//! The ingest process: the SDK endpoint on 127.0.0.1 and
//! `STREAM_MANAGER_SERVER_PORT`, forwarding to the store found under
//! `STREAM_MANAGER_STORE_ROOT_DIR`, until SIGTERM/SIGINT. Run by the `ingest`
//! binary and by the single-binary bundle.
//! Exit codes: 0 clean stop, 2 bad configuration or the port is taken.

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::IngestConfig;

/// The process, from its command line to its exit code.
pub fn main() -> ExitCode {
    if let Some(code) = settings::cli::handle_child_args(
        "ingest",
        "The SDK endpoint of stream-manager: serves the Stream Manager SDKs on 127.0.0.1.",
    ) {
        return code;
    }
    let files = bus::limits::raise_open_files();
    let config = match settings::Settings::from_env() {
        Ok(s) => IngestConfig::from_settings(&s),
        Err(problems) => return settings::report_problems("ingest", &problems),
    };
    settings::logging::init("ingest", &config.log, &["ingest", "bus"]);
    tracing::info!(limit = files.soft, was = files.was, "open-file limit");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ingest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(config: IngestConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let bus = bus::BusClient::connect_in_runtime(
        &bus::store_endpoint(&config.root),
        bus::BusClientConfig::default(),
    )?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", config.port))?;
    let port = listener.local_addr()?.port();
    // Clients that asked for port 0 find the real one here.
    let _ = std::fs::write(config.port_file(), format!("{port}\n"));
    println!("ingest listening on 127.0.0.1:{port}");
    tracing::info!(port, "ingest listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let metrics = Arc::new(crate::metrics::IngestMetrics::default());
    tokio::spawn(metrics.clone().report(bus.clone()));
    tokio::select! {
        _ = crate::server::serve_counted(listener, Arc::new(config.settings), bus, metrics) => {}
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}
