//! Wiring of the running daemon: spool, listener, signals, orderly stop.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::smtp::rate_limit::SessionRateLimiter;
use crate::smtp::server::{self, ServerContext};
use crate::smtp::session::SessionConfig;
use crate::spool::{self, Spool, SpoolError};

/// Errors a client makes before the session is closed with 421
/// (Postfix's smtpd_hard_error_limit defaults to 20; we are stricter).
const MAX_ERRORS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("-addr {addr}: cannot listen: {source}; choose a free address")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs until SIGTERM/SIGINT (or `shutdown` is cancelled), then stops
/// accepting, lets sessions finish their in-flight step or answer 421,
/// waits for pending commits and closes the database.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let (spool, closer) = Spool::open(
        &config.data_dir,
        config.replay_window,
        spool::system_clock(),
    )?;
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: config.addr,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: config.addr,
        source,
    })?;
    spawn_signal_handler(shutdown.clone())?;

    let ctx = Arc::new(ServerContext {
        session: Arc::new(SessionConfig {
            hostname: config.name.to_string(),
            max_message_size: config.max_message_size,
            max_recipients: config.max_recipients,
            max_errors: MAX_ERRORS,
            check_domains: false,
        }),
        spool,
        rate_limiter: SessionRateLimiter::new(config.rate_limit, config.rate_window),
        idle_timeout: config.idle_timeout,
        proxy_protocol: config.proxy_protocol,
        debug: config.debug,
        connections: Arc::new(Semaphore::new(config.max_connections)),
        domain_check: None,
    });
    info!("[CONN] listening on {local}");
    if config.replay_window.is_zero() {
        warn!("[SPOOL] replay protection is off (-replay-window 0)");
    }

    let tracker = TaskTracker::new();
    server::serve(listener, ctx, shutdown.clone(), tracker.clone()).await;
    info!(
        "[CONN] stopped accepting; waiting for {} session(s)",
        tracker.len()
    );
    tracker.close();
    tracker.wait().await;
    // The last Spool handle went with the server context; the committer now
    // drains what is left and closes the database.
    closer.closed().await;
    info!("[SPOOL] closed cleanly");
    Ok(())
}

fn spawn_signal_handler(shutdown: CancellationToken) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("received SIGTERM, shutting down"),
            _ = int.recv() => info!("received SIGINT, shutting down"),
            _ = shutdown.cancelled() => return,
        }
        shutdown.cancel();
    });
    Ok(())
}
