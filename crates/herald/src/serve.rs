//! `herald serve`: assembles the configuration, binds the listener, and runs the HTTP server
//! until SIGINT or SIGTERM.

use std::future::Future;
use std::io::{self, IsTerminal};
use std::net::SocketAddr;

use herald_http::ServerConfig;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::CommandError;
use crate::config::{self, ServeArgs, format_fsync_policy};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}{hint}", hint = bind_hint(source))]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] io::Error),
    #[error("{0:#}")]
    Server(anyhow::Error),
}

fn bind_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::AddrInUse => {
            " (another process is using it; choose another address with --http or HERALD_HTTP)"
        }
        io::ErrorKind::AddrNotAvailable => " (this machine has no such address)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
        _ => "",
    }
}

/// `herald serve` from its flags and the process's environment: returns after a graceful
/// shutdown.
pub fn main(args: &ServeArgs) -> Result<(), CommandError> {
    let (config, file) = config::load(args, |name| std::env::var(name).ok())
        .map_err(|error| CommandError::Usage(error.to_string()))?;
    init_logging();
    if let Some(file) = file {
        info!(file = %file.display(), "read the configuration file");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| CommandError::Failed(format!("cannot start the runtime: {error}")))?;
    runtime
        .block_on(async {
            let shutdown = shutdown_signal().map_err(ServeError::Signals)?;
            run(config, shutdown).await
        })
        .map_err(|error| CommandError::Failed(error.to_string()))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in colour only on a terminal.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Fails only when a subscriber is already installed, which then keeps logging.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .try_init();
}

/// Binds `config.http` and serves until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.http)
        .await
        .map_err(|source| ServeError::Bind {
            address: config.http,
            source,
        })?;
    let address = listener.local_addr().unwrap_or(config.http);
    info!(
        %address,
        data_dir = %config.data_dir.display(),
        fsync = %format_fsync_policy(config.fsync),
        auto_create_topics = config.auto_create_topics,
        event_bytes_max = config.event_bytes_max,
        batch_events_max = config.batch_events_max,
        body_bytes_max = config.body_bytes_max,
        segment_bytes_max = config.segment_bytes_max,
        "herald listening"
    );
    herald_http::serve(config, listener, shutdown)
        .await
        .map_err(ServeError::Server)?;
    info!("herald stopped");
    Ok(())
}

/// A future that resolves at the first SIGINT or SIGTERM. Must be called inside a Tokio runtime.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        info!(signal = name, "shutting down");
    })
}
