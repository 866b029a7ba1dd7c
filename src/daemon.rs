//! Wiring of the running daemon: spool, listener, signals, orderly stop.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::BoxFuture;
use crate::admin;
use crate::config::{Config, sysexits};
use crate::node::dispatch::{DeliveryHealth, Dispatcher};
use crate::node::egress::Egress;
use crate::node::intake::Intake;
use crate::node::mail_cover::{CoverGenerator, CoverKey};
use crate::node::policy::DestBlock;
use crate::node::retry::RetryPolicy;
use crate::relay::client::{ClientConfig, TlsPolicy, tls_config};
use crate::relay::mx_lookup::MxResolver;
use crate::relay::route::Router;
use crate::relay::socks::SocksDialer;
use crate::release::MixPolicy;
use crate::sanitize::SanitizeConfig;
use crate::smtp::connections::ConnectionTable;
use crate::smtp::memory_budget::MemoryBudget;
use crate::smtp::rate_limit::SessionRateLimiter;
use crate::smtp::server::{self, DomainCheck, LogThrottle, RecipientCheck, ServerContext};
use crate::smtp::session::SessionConfig;
use crate::spool::{LeaseScope, Spool, SpoolError};
use crate::stats::Stats;

mod data_dir;
pub mod directory;
mod fd_limit;
pub mod lock;
pub mod mixnet;
mod notify;
pub mod reload;

/// Bound on one MX lookup through Tor during delivery.
const MX_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound on the RCPT-time "does this domain take mail?" lookup; the client
/// is waiting, and a slow answer means "accept".
const RCPT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections the kernel queues for us before we accept them. 128 (the
/// usual default) overflows in a burst of Tor circuits arriving at once,
/// and while accepts pause for lack of descriptors; Linux caps the value at
/// `net.core.somaxconn` (4096 by default since 5.4).
const LISTEN_BACKLOG: u32 = 4096;

/// Errors a client makes before the session is closed with 421
/// (Postfix's smtpd_hard_error_limit defaults to 20; we are stricter).
const MAX_ERRORS: u32 = 10;

/// Why the daemon did not start (or stopped). Each says in one line which
/// flag or file is at fault and what to do; [`DaemonError::exit_status`]
/// gives the matching sysexits status.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    DataDir(#[from] data_dir::DataDirError),
    #[error(transparent)]
    Locked(#[from] lock::LockError),
    #[error("-data-dir {path}: cannot open the spool: {source}")]
    Spool { path: String, source: SpoolError },
    #[error("-addr {addr}: {}", bind_advice("-addr", *.addr, .source))]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("-node {addr}: {}", bind_advice("-node", *.addr, .source))]
    NodeBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("-data-dir {path}: cannot use the cover traffic key: {source}")]
    CoverKey {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mixnet(#[from] mixnet::MixnetStartError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The `-dest-block` file cannot be read or holds a bad line.
    #[error("{0}")]
    DestBlock(reload::DestBlockError),
    #[error(transparent)]
    Metrics(#[from] admin::MetricsError),
}

impl DaemonError {
    /// The process exit status for this error (sysexits; README.md has the
    /// table).
    pub fn exit_status(&self) -> u8 {
        match self {
            // A data dir pluto2 cannot create or write is a setting to fix,
            // like any other bad flag.
            DaemonError::DataDir(_) | DaemonError::Mixnet(_) | DaemonError::DestBlock(_) => {
                sysexits::USAGE
            }
            DaemonError::Locked(lock::LockError::Held { .. }) => sysexits::TEMPFAIL,
            DaemonError::Locked(lock::LockError::Io { .. }) => sysexits::CANTCREAT,
            DaemonError::Spool { source, .. } => spool_exit_status(source),
            DaemonError::Bind { source, .. } | DaemonError::NodeBind { source, .. } => {
                match source.kind() {
                    ErrorKind::PermissionDenied => sysexits::NOPERM,
                    _ => sysexits::UNAVAILABLE,
                }
            }
            DaemonError::CoverKey { .. } => sysexits::CANTCREAT,
            DaemonError::Signals(_) => sysexits::SOFTWARE,
            DaemonError::Metrics(e) => e.exit_status(),
        }
    }
}

/// The exit status for a spool that cannot be opened, shared by the daemon
/// and `pluto2 queue`.
pub fn spool_exit_status(e: &SpoolError) -> u8 {
    match e {
        SpoolError::Missing => sysexits::NOINPUT,
        SpoolError::SchemaVersion { .. } | SpoolError::Foreign { .. } => sysexits::CONFIG,
        SpoolError::Corrupt { .. } => sysexits::DATAERR,
        SpoolError::Open(e) | SpoolError::Sqlite(e) => match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly) => {
                sysexits::CANTCREAT
            }
            Some(rusqlite::ErrorCode::PermissionDenied) => sysexits::NOPERM,
            _ => sysexits::IOERR,
        },
        SpoolError::Thread(_) | SpoolError::Closed => sysexits::SOFTWARE,
    }
}

/// What a failed bind means and what to do about it. The kernel says
/// "permission denied" both for a privileged port and for a security
/// module's refusal; only the first has a known remedy.
fn bind_advice(flag: &str, addr: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "port {} is privileged and this process may not bind it ({e}); grant it CAP_NET_BIND_SERVICE \
             (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE) or listen on a port ≥ 1024 and let Tor's \
             HiddenServicePort map the onion service's port to it",
            addr.port()
        ),
        ErrorKind::AddrInUse => format!(
            "another process is already listening there ({e}); stop it or choose another {flag}"
        ),
        ErrorKind::AddrNotAvailable => format!(
            "no network interface of this host has that IP ({e}); choose a local address such as 127.0.0.1"
        ),
        _ => format!("cannot listen: {e}; choose another {flag}"),
    }
}

/// Prepares the data directory, loads or creates this node's mixnet keys
/// and returns its `nodes.json` entry (`-export-node-info`). Binds nothing.
pub fn export_node_info(
    config: &Config,
    info: &crate::config::NodeInfo,
) -> Result<crate::wire::pki::NodeEntry, DaemonError> {
    data_dir::prepare(&config.spool.data_dir)?;
    let identity =
        mixnet::load_identity(&config.spool.data_dir).map_err(|e| DaemonError::Mixnet(e.into()))?;
    Ok(mixnet::node_entry(&config.name, info, &identity))
}

/// Runs until SIGTERM/SIGINT (or `shutdown` is cancelled), then stops
/// accepting, lets sessions finish their in-flight step or answer 421,
/// waits for pending commits and closes the database.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    // -log-level (main's logging::init knows only -debug).
    reload::apply_log_settings(&config.ops);
    let dest_block = match &config.relay.dest_block {
        Some(path) => reload::read_dest_block(path).map_err(DaemonError::DestBlock)?,
        None => Default::default(),
    };
    data_dir::prepare(&config.spool.data_dir)?;
    // Before the spool is opened: opening releases every lease, which is
    // only right when no other daemon is delivering from it.
    let lock = lock::acquire(&config.spool.data_dir)?;
    // Bound early, so a bad -metrics stops the start before anything opens.
    let metrics = config.ops.metrics.as_ref().map(admin::start).transpose()?;
    // -sphinx: keys and nodes.json are checked before anything opens or
    // binds. The mixnet tasks (links, hops, exit, sender) start from this.
    let mixnet = match config.mixnet.clone() {
        Some(m) => Some(mixnet::start(&config.spool.data_dir, &config.name, m)?),
        None => None,
    };
    let clock = crate::time::system_clock();
    let (spool, closer) = Spool::open(
        &config.spool.data_dir,
        config.spool.replay_window,
        clock.clone(),
    )
    .map_err(|source| DaemonError::Spool {
        path: config.spool.data_dir.display().to_string(),
        source,
    })?;
    check_descriptors(&config);
    let spool = spool.with_free_space_reserve(&config.spool.data_dir, config.spool.min_free_space);
    let listener = bind(config.listener.addr).map_err(|source| DaemonError::Bind {
        addr: config.listener.addr,
        source,
    })?;
    let local = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: config.listener.addr,
        source,
    })?;
    spawn_signal_handler(shutdown.clone())?;
    // Installed now so that a SIGHUP from here on is kept for the reload
    // task instead of ending the process (its default action).
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(DaemonError::Signals)?;

    let cover_key =
        CoverKey::load_or_create(&config.spool.data_dir).map_err(|e| DaemonError::CoverKey {
            path: config.spool.data_dir.display().to_string(),
            source: e,
        })?;
    let stats = Arc::new(Stats::new(Some(&spool)));
    // Direct mode refuses listed recipients at RCPT and posts at the end of
    // DATA; at a mixnet exit the exit drops them (DestBlock::blocks).
    let dest_block = Arc::new(DestBlock::new(dest_block, stats.clone()));
    let endpoint = Arc::new(admin::Endpoint::new(stats.clone(), shutdown.clone()));
    // Its own stop, after everything else: /live answers until the end.
    let metrics_stop = CancellationToken::new();
    let metrics_task =
        metrics.map(|l| tokio::spawn(admin::serve(l, endpoint.clone(), metrics_stop.clone())));
    let relay = &config.relay;
    let dialer = SocksDialer::new(relay.tor_socks, relay.delivery_timeout);
    let mx = Arc::new(MxResolver::new(
        dialer.clone(),
        relay.dns_server,
        MX_TIMEOUT,
    ));
    let router = Arc::new(Router {
        dialer,
        mx: mx.clone(),
        client: ClientConfig {
            helo_name: config.name.to_string(),
            // Built once here and shared by every delivery.
            tls: TlsPolicy::Opportunistic(tls_config(relay.tls_verify)),
            timeout: relay.delivery_timeout,
        },
        envelope_from: relay.envelope_from.clone(),
        port: relay.smtp_port,
        tls_fallback: !relay.tls_verify,
        body: Arc::new(Egress {
            sanitize: config
                .sanitize
                .anon_from
                .clone()
                .map(|from| SanitizeConfig {
                    from,
                    message_id_domain: config.name.to_string(),
                }),
            pad_block: config.mix.pad_block,
            cover_key: cover_key.clone(),
            stats: stats.clone(),
        }),
    });
    let health = Arc::new(DeliveryHealth::default());
    // The systemd watchdog's questions to the dispatcher loop.
    let (ping_tx, ping_rx) = tokio::sync::mpsc::channel(1);
    let dispatcher = Dispatcher {
        spool: spool.clone(),
        transport: router,
        retry: RetryPolicy {
            base: relay.retry_base,
            max_attempts: relay.retries,
        },
        mix: config.mix.policy.clone(),
        workers: relay.workers,
        stats: stats.clone(),
        // Longer than any delivery can take (MX lookup, a few hosts, the
        // SMTP dialogue), so an expired lease always means a dead worker.
        lease: MX_TIMEOUT + relay.delivery_timeout * 4 + Duration::from_secs(60),
        clock: clock.clone(),
        scope: LeaseScope::All,
        cover_key: cover_key.clone(),
        health: health.clone(),
        pings: Some(ping_rx),
    };
    // In -sphinx mode no mail accepted here leaves directly: the dispatcher
    // delivers only mail that left the mixnet at this node (and does not run
    // at all on a middleman), and the mixnet tasks carry the rest. SMTP loop
    // cover is off (mixnet cover replaces it).
    let network_size = mixnet
        .as_ref()
        .map(|m| m.directory.params().max_message_size);
    let relay_task = match &mixnet {
        Some(node) if !node.config.info.exit => {
            // Its spool handle would keep the committer open at shutdown.
            drop(dispatcher);
            None
        }
        Some(_) => Some(tokio::spawn(
            Dispatcher {
                scope: LeaseScope::ExitOnly,
                ..dispatcher
            }
            .run(shutdown.clone()),
        )),
        None => Some(tokio::spawn(dispatcher.run(shutdown.clone()))),
    };
    // The one road into the spool, for SMTP mail and for mail completed
    // at this exit alike.
    let intake = Arc::new(Intake {
        spool: spool.clone(),
        mix: config.mix.policy.clone(),
        cover_key: cover_key.clone(),
        stats: stats.clone(),
        clock: clock.clone(),
        dest_block: dest_block.clone(),
        smtp_destinations: mixnet.is_none(),
        own_name: config.name.clone(),
    });
    let mut mixnet_tasks = match mixnet {
        Some(node) => {
            let addr = node.config.node;
            let tasks = mixnet::spawn(
                node,
                spool.clone(),
                stats.clone(),
                clock.clone(),
                intake.clone(),
                SocksDialer::new(relay.tor_socks, relay.delivery_timeout),
                shutdown.clone(),
            )
            .await
            .map_err(|source| DaemonError::NodeBind { addr, source })?;
            Some(tasks)
        }
        None => None,
    };
    let cover_interval = config.mix.cover_interval.filter(|_| mixnet_tasks.is_none());
    let cover_task = cover_interval.map(|interval| {
        let generator = CoverGenerator {
            key: cover_key.clone(),
            own: config.name.clone(),
            queue: Arc::new(spool.clone()),
            mix: config.mix.policy.clone(),
            interval,
            stats: stats.clone(),
            clock: clock.clone(),
            health: health.clone(),
        };
        tokio::spawn(generator.run(StdRng::from_os_rng(), shutdown.clone()))
    });
    let stats_task = tokio::spawn(
        stats
            .clone()
            .report(config.ops.stats_interval, shutdown.clone()),
    );

    // systemd (only with NOTIFY_SOCKET): the spool is open and every
    // listener bound, so READY now; then STATUS, WATCHDOG and STOPPING.
    let notify_task = notify::Notifier::from_env().map(|notifier| {
        notifier.ready();
        notifier.start(
            notify::Liveness {
                spool: spool.clone(),
                dispatcher: relay_task.as_ref().map(|_| ping_tx),
            },
            notify::StatusSource {
                stats: stats.clone(),
                every: config.ops.stats_interval,
            },
            shutdown.clone(),
        )
    });

    let ctx = Arc::new(ServerContext {
        session: Arc::new(SessionConfig {
            hostname: config.name.to_string(),
            // -sphinx: the network's size, so every entry advertises the same.
            max_message_size: network_size.unwrap_or(config.listener.max_message_size),
            max_recipients: config.listener.max_recipients,
            max_errors: MAX_ERRORS,
            check_domains: true,
            check_recipients: mixnet_tasks.is_none(),
        }),
        rate_limiter: std::sync::RwLock::new(Arc::new(SessionRateLimiter::new(
            config.listener.rate_limit,
            config.listener.rate_window,
        ))),
        idle_timeout: config.listener.idle_timeout,
        session_timeout: config.listener.session_timeout,
        min_data_rate: config.listener.min_data_rate,
        proxy_protocol: config.listener.proxy_protocol,
        connections: ConnectionTable::new(config.listener.max_connections),
        memory: MemoryBudget::new(config.listener.data_memory),
        memory_refusals: LogThrottle::default(),
        // -sphinx: the exit resolves; the entry makes no lookups of its own.
        domain_check: mixnet_tasks
            .is_none()
            .then(|| Arc::new(MxCheck(mx)) as Arc<dyn DomainCheck>),
        recipient_check: mixnet_tasks
            .is_none()
            .then(|| dest_block.clone() as Arc<dyn RecipientCheck>),
        events: stats.clone(),
        sink: intake,
    });
    // Every task holds its own handle now; this one would keep the
    // committer open at shutdown.
    drop(spool);
    // The spool is open and every listener is bound (connections wait in
    // the backlog until the accept loop below runs).
    endpoint.set_ready();
    let mut reloader = reload::Reloader::new(&config);
    reloader.add(Box::new(reload::RateLimits(ctx.clone())));
    reloader.add(Box::new(reload::LogSettings));
    reloader.add(Box::new(reload::DestBlockFile(dest_block.clone())));
    if let Some(part) = mixnet_tasks.as_mut().and_then(|t| t.reload.take()) {
        reloader.add(Box::new(part));
    }
    let reload_task = spawn_reload_task(hangup, reloader, shutdown.clone());
    info!("[CONN] listening on {local}");
    if !config.listener.proxy_protocol && local.ip().is_loopback() {
        warn!(
            "[CONN] without -proxy-protocol every client through Tor has the same loopback address, so -rate-limit {} per {} is shared by the whole onion service; for a limit per circuit use -proxy-protocol with HiddenServiceExportCircuitID haproxy (contrib/torrc.example)",
            config.listener.rate_limit,
            humantime::format_duration(config.listener.rate_window)
        );
    }
    if config.mix.policy == MixPolicy::Immediate {
        warn!(
            "[MIX] no batching and no delay pool: mail leaves in arrival order, linkable by timing"
        );
    }
    if config.spool.replay_window.is_zero() {
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
    if let Some(task) = relay_task {
        let _ = task.await;
    }
    if let Some(task) = cover_task {
        let _ = task.await;
    }
    if let Some(tasks) = mixnet_tasks {
        tasks.stopped().await;
    }
    let _ = stats_task.await;
    let _ = reload_task.await;
    if let Some(task) = notify_task {
        let _ = task.await;
    }
    // Every Spool handle is gone now (server context, dispatcher, cover
    // generator); the committer drains what is left and closes the database.
    closer.closed().await;
    info!("[SPOOL] closed cleanly");
    metrics_stop.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    // Only now may another daemon take the spool.
    drop(lock);
    Ok(())
}

/// Binds the SMTP listener with a backlog of [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do: a restart can bind while old connections linger
    // in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the descriptor limit and warns when -max-connections cannot fit.
fn check_descriptors(config: &Config) {
    let limits = fd_limit::raise();
    if limits.soft > limits.before {
        info!(
            "[CONN] file descriptor limit raised from {} to {}",
            limits.before, limits.soft
        );
    }
    let needed = fd_limit::needed(config.listener.max_connections, config.relay.workers);
    if needed > limits.soft {
        let hard = limits
            .hard
            .map_or_else(|| "unlimited".to_string(), |h| h.to_string());
        warn!(
            "[CONN] -max-connections {} needs about {needed} file descriptors but the limit is {} (hard limit {hard}): raise LimitNOFILE= or `ulimit -n`, or lower -max-connections",
            config.listener.max_connections, limits.soft
        );
    }
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

/// Reloads on every SIGHUP until shutdown; one reload at a time, off the
/// executor (it reads files).
fn spawn_reload_task(
    mut hangup: tokio::signal::unix::Signal,
    reloader: reload::Reloader,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let reloader = Arc::new(reloader);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup.recv() => {}
            }
            let r = reloader.clone();
            match tokio::task::spawn_blocking(move || r.reload()).await {
                Ok(Ok(line)) => info!("[RELOAD] SIGHUP: {line}"),
                Ok(Err(line)) => warn!("[RELOAD] SIGHUP: {line}"),
                Err(e) => warn!("[RELOAD] SIGHUP: reload failed: {e}"),
            }
        }
    })
}

/// RCPT-time check backed by the MX resolver (through Tor).
struct MxCheck(Arc<MxResolver>);

impl DomainCheck for MxCheck {
    fn undeliverable<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(self.0.provably_undeliverable(domain, RCPT_CHECK_TIMEOUT))
    }
}
