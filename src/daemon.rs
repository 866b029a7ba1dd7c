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
use crate::listen::LogThrottle;
use crate::node::dispatch::{DeliveryHealth, Dispatcher};
use crate::node::egress::{Egress, Stamper};
use crate::node::intake::Intake;
use crate::node::mail_cover::{CoverGenerator, CoverKey};
use crate::node::policy::{DestBlock, RecipientPatterns};
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
use crate::smtp::server::{self, DomainCheck, RecipientCheck, ServerContext};
use crate::smtp::session::SessionConfig;
use crate::spool::{LeaseScope, Spool, SpoolCloser, SpoolError};
use crate::stats::Stats;
use supervisor::{Deadlines, StopPhase, Supervisor};

mod data_dir;
pub mod directory;
mod fd_limit;
pub mod lock;
mod notify;
pub mod reload;
pub mod sphinx;
pub mod supervisor;

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
    Mixnet(#[from] sphinx::MixnetStartError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The `-dest-block` file cannot be read or holds a bad line.
    #[error("{0}")]
    DestBlock(reload::DestBlockError),
    /// A `-hashcash-for` or `-news-gateway` value is no recipient pattern.
    #[error("{flag} {source}")]
    Pattern {
        flag: &'static str,
        source: crate::node::policy::PatternError,
    },
    #[error(transparent)]
    Metrics(#[from] admin::MetricsError),
    /// The mixnet could not take up its stored state (custody, peers'
    /// keys) at start.
    #[error(
        "cannot start the mixnet from the data dir's stored custody and peers' keys: {0}; check that -data-dir is writable and has free space, then start again"
    )]
    MixnetSpawn(std::io::Error),
    /// A task died; the daemon stopped so that it restarts whole.
    #[error(transparent)]
    TaskFailed(supervisor::TaskFailure),
}

impl DaemonError {
    /// The process exit status for this error (sysexits; README.md has the
    /// table).
    pub fn exit_status(&self) -> u8 {
        match self {
            // A data dir pluto2 cannot create or write is a setting to fix,
            // like any other bad flag.
            DaemonError::DataDir(_)
            | DaemonError::Mixnet(_)
            | DaemonError::DestBlock(_)
            | DaemonError::Pattern { .. } => sysexits::USAGE,
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
            DaemonError::MixnetSpawn(_) => sysexits::IOERR,
            DaemonError::TaskFailed(_) => sysexits::SOFTWARE,
        }
    }
}

/// The exit status for a spool that cannot be opened, shared by the daemon
/// and `pluto2 queue`.
pub fn spool_exit_status(e: &SpoolError) -> u8 {
    match e {
        SpoolError::Missing => sysexits::NOINPUT,
        SpoolError::SchemaVersion { .. } | SpoolError::Foreign { .. } => sysexits::CONFIG,
        SpoolError::Corrupt { .. } | SpoolError::LoopHours(_) => sysexits::DATAERR,
        SpoolError::Open(e) | SpoolError::Sqlite(e) => match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly) => {
                sysexits::CANTCREAT
            }
            Some(rusqlite::ErrorCode::PermissionDenied) => sysexits::NOPERM,
            _ => sysexits::IOERR,
        },
        SpoolError::Thread(_) | SpoolError::Closed => sysexits::SOFTWARE,
        // Not met while opening: a group commit that failed.
        SpoolError::NotCommitted => sysexits::IOERR,
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
        sphinx::load_identity(&config.spool.data_dir).map_err(|e| DaemonError::Mixnet(e.into()))?;
    Ok(sphinx::node_entry(&config.name, info, &identity))
}

/// Runs until SIGTERM/SIGINT (or `shutdown` is cancelled), then stops
/// accepting, lets sessions finish their in-flight step or answer 421,
/// waits for pending commits and closes the database.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let built = build(&config).await?;
    let sup = Supervisor::new(shutdown);
    let StopHandles { closer, lock } = spawn(&config, built, &sup).await?;
    sup.stopped().await;
    let deadlines = Deadlines::default();
    sup.stop_through(StopPhase::Reporting, &deadlines).await;
    // Every task that held a spool handle has ended (or was named above);
    // the committer drains what is left and closes the database.
    match tokio::time::timeout(deadlines.spool, closer.closed()).await {
        Ok(()) => info!("[SPOOL] closed cleanly"),
        Err(_) => warn!(
            "[STOP] phase \"spool\" did not finish within {:?}: the spool is left to SQLite's recovery at the next start (nothing acknowledged is lost)",
            deadlines.spool
        ),
    }
    sup.stop_through(StopPhase::Admin, &deadlines).await;
    // Only now may another daemon take the spool.
    drop(lock);
    match sup.failure() {
        Some(failure) => Err(DaemonError::TaskFailed(failure)),
        None => Ok(()),
    }
}

/// Everything the daemon opens, binds and checks before any task runs:
/// a failure here stops the start with one line, and nothing runs that
/// would have to be stopped.
struct Opened {
    lock: lock::DataDirLock,
    metrics: Option<admin::MetricsListener>,
    mixnet: Option<Mixnet>,
    spool: Spool,
    closer: SpoolCloser,
    listener: TcpListener,
    signals: Signals,
    cover_key: CoverKey,
    dest_block: crate::node::policy::BlockList,
    /// `-news-gateway`: recipients whose mail is not padded.
    news_gateways: RecipientPatterns,
    /// `-hashcash-for`: recipients stamps are minted for.
    hashcash_for: RecipientPatterns,
    /// The one clock of the daemon (the spool's too).
    clock: crate::time::Clock,
}

/// What `-sphinx` opened: a node with its link listener, or a client
/// (`-client`), which listens on nothing but SMTP.
enum Mixnet {
    Node(Box<sphinx::MixnetNode>, TcpListener),
    Client(Box<sphinx::MixnetClient>),
}

/// Installed at build time, so that a signal from then on is kept for the
/// tasks instead of ending the process (SIGHUP's default action).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

/// What the stop needs once the tasks run.
struct StopHandles {
    closer: SpoolCloser,
    lock: lock::DataDirLock,
}

async fn build(config: &Config) -> Result<Opened, DaemonError> {
    // -log-level (main's logging::init knows only -debug).
    reload::apply_log_settings(&config.ops);
    let dest_block = match &config.relay.dest_block {
        Some(path) => reload::read_dest_block(path).map_err(DaemonError::DestBlock)?,
        None => Default::default(),
    };
    let patterns = |flag: &'static str, values: &[String]| {
        RecipientPatterns::parse(values.iter().map(String::as_str))
            .map_err(|source| DaemonError::Pattern { flag, source })
    };
    let news_gateways = patterns("-news-gateway", &config.sanitize.news_gateway)?;
    let hashcash_for = patterns("-hashcash-for", &config.sanitize.hashcash_for)?;
    data_dir::prepare(&config.spool.data_dir)?;
    // Before the spool is opened: opening releases every lease, which is
    // only right when no other daemon is delivering from it.
    let lock = lock::acquire(&config.spool.data_dir)?;
    // Bound early, so a bad -metrics stops the start before anything opens.
    let metrics = config.ops.metrics.as_ref().map(admin::start).transpose()?;
    // -sphinx: keys and nodes.json are checked before anything opens, and
    // -node is bound with the other listeners.
    let mixnet = match config.mixnet.clone() {
        Some(m) if m.client.is_some() => Some(Mixnet::Client(Box::new(sphinx::start_client(
            &config.spool.data_dir,
            m,
        )?))),
        Some(m) => {
            let node = sphinx::start(&config.spool.data_dir, &config.name, m)?;
            let addr = node.config.node;
            let listener = sphinx::bind(&node)
                .await
                .map_err(|source| DaemonError::NodeBind { addr, source })?;
            Some(Mixnet::Node(Box::new(node), listener))
        }
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
    check_descriptors(config);
    let spool = spool
        .with_free_space_reserve(&config.spool.data_dir, config.spool.min_free_space)
        .with_custody_caps(
            config
                .mixnet
                .as_ref()
                .and_then(|m| crate::spool::custody::CustodyCaps::of_bytes(m.custody_max)),
        );
    let listener = bind(config.listener.addr).map_err(|source| DaemonError::Bind {
        addr: config.listener.addr,
        source,
    })?;
    use tokio::signal::unix::{SignalKind, signal};
    let signals = Signals {
        term: signal(SignalKind::terminate()).map_err(DaemonError::Signals)?,
        int: signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?,
        hangup: signal(SignalKind::hangup()).map_err(DaemonError::Signals)?,
    };
    let cover_key =
        CoverKey::load_or_create(&config.spool.data_dir).map_err(|e| DaemonError::CoverKey {
            path: config.spool.data_dir.display().to_string(),
            source: e,
        })?;
    Ok(Opened {
        lock,
        metrics,
        mixnet,
        spool,
        closer,
        listener,
        signals,
        cover_key,
        dest_block,
        news_gateways,
        hashcash_for,
        clock,
    })
}

/// Wires what [`build`] opened into the node's parts and spawns every task
/// under the supervisor, each in the phase of the stop that ends it.
async fn spawn(
    config: &Config,
    built: Opened,
    sup: &Supervisor,
) -> Result<StopHandles, DaemonError> {
    let Opened {
        lock,
        metrics,
        mixnet,
        spool,
        closer,
        listener,
        signals,
        cover_key,
        dest_block,
        news_gateways,
        hashcash_for,
        clock,
    } = built;
    let local = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: config.listener.addr,
        source,
    })?;
    let stats = Arc::new(Stats::new(Some(&spool)));
    // Direct mode refuses listed recipients at RCPT and posts at the end of
    // DATA; at a mixnet exit intake drops them (DestBlock::blocks).
    let dest_block = Arc::new(DestBlock::new(dest_block, stats.clone()));
    let endpoint = Arc::new(admin::Endpoint::new(stats.clone(), sup.stop()));
    if let Some(listener) = metrics {
        let endpoint = endpoint.clone();
        let stop = sup.token(StopPhase::Admin);
        sup.spawn(
            StopPhase::Admin,
            "metrics",
            admin::serve(listener, endpoint, stop),
        );
    }
    sup.spawn(
        StopPhase::Reporting,
        "signals",
        signals_task(signals.term, signals.int, sup.stop()),
    );

    let relay = &config.relay;
    let dialer = SocksDialer::new(relay.tor_socks, relay.delivery_timeout);
    let mx = Arc::new(MxResolver::new(
        dialer.clone(),
        relay.dns_server,
        MX_TIMEOUT,
    ));
    let health = Arc::new(DeliveryHealth::default());
    // The systemd watchdog's questions to the dispatcher loop.
    let (ping_tx, ping_rx) = tokio::sync::mpsc::channel(1);
    // In -sphinx mode no mail accepted here leaves directly: the dispatcher
    // delivers only mail that left the mixnet at this node (and does not run
    // at all on a middleman), and the mixnet tasks carry the rest. SMTP loop
    // cover is off (mixnet cover replaces it).
    let scope = match &mixnet {
        Some(Mixnet::Node(node, _)) if !node.config.info.exit => None,
        // A client delivers nothing itself: its mail leaves at an exit.
        Some(Mixnet::Client(_)) => None,
        Some(Mixnet::Node(..)) => Some(LeaseScope::ExitOnly),
        None => Some(LeaseScope::All),
    };
    let dispatching = scope.is_some();
    if let Some(scope) = scope {
        let dispatcher = Dispatcher {
            spool: spool.clone(),
            transport: router(
                config,
                dialer.clone(),
                mx.clone(),
                &cover_key,
                &stats,
                news_gateways,
            ),
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
            scope,
            cover_key: cover_key.clone(),
            health: health.clone(),
            pings: Some(ping_rx),
            stamper: (config.sanitize.hashcash_bits > 0).then(|| {
                Arc::new(Stamper::new(
                    config.sanitize.hashcash_bits,
                    hashcash_for,
                    stats.clone(),
                ))
            }),
        };
        sup.spawn(
            StopPhase::Work,
            "dispatcher",
            dispatcher.run(sup.token(StopPhase::Work)),
        );
    }
    let network_size = mixnet.as_ref().map(|m| match m {
        Mixnet::Node(node, _) => node.directory.params().max_message_size,
        Mixnet::Client(client) => client.directory.params().max_message_size,
    });
    let sphinx = mixnet.is_some();
    // The one road into the spool, for SMTP mail and for mail completed
    // at this exit alike.
    let intake = Arc::new(Intake {
        spool: spool.clone(),
        mix: config.mix.policy.clone(),
        cover_key: cover_key.clone(),
        stats: stats.clone(),
        clock: clock.clone(),
        dest_block: dest_block.clone(),
        smtp_destinations: !sphinx,
        own_name: config.name.clone(),
        max_recipients: config.listener.max_recipients,
    });
    let shared = sphinx::Shared {
        spool: spool.clone(),
        stats: stats.clone(),
        clock: clock.clone(),
        intake: intake.clone(),
        dialer,
    };
    let directory_reload = match mixnet {
        Some(Mixnet::Node(node, node_listener)) => Some(
            sphinx::spawn(*node, node_listener, shared, sup)
                .await
                .map_err(DaemonError::MixnetSpawn)?,
        ),
        // A client takes a new nodes.json at its next start.
        Some(Mixnet::Client(client)) => {
            sphinx::spawn_client(*client, shared, sup)
                .await
                .map_err(DaemonError::MixnetSpawn)?;
            None
        }
        None => None,
    };
    if let Some(interval) = config.mix.cover_interval.filter(|_| !sphinx) {
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
        sup.spawn(
            StopPhase::Work,
            "mail cover",
            generator.run(StdRng::from_os_rng(), sup.token(StopPhase::Work)),
        );
    }
    sup.spawn(
        StopPhase::Reporting,
        "stats",
        stats
            .clone()
            .report(config.ops.stats_interval, sup.token(StopPhase::Reporting)),
    );

    let ctx = Arc::new(ServerContext {
        session: Arc::new(SessionConfig {
            hostname: config.name.to_string(),
            // -sphinx: the network's size, so every entry advertises the same.
            max_message_size: network_size.unwrap_or(config.listener.max_message_size),
            max_recipients: config.listener.max_recipients,
            max_errors: MAX_ERRORS,
            check_domains: true,
            check_recipients: !sphinx,
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
        domain_check: (!sphinx).then(|| Arc::new(MxCheck(mx)) as Arc<dyn DomainCheck>),
        recipient_check: (!sphinx).then(|| dest_block.clone() as Arc<dyn RecipientCheck>),
        events: stats.clone(),
        sink: intake,
    });
    let mut reloader = reload::Reloader::new(config);
    reloader.add(Box::new(reload::RateLimits(ctx.clone())));
    reloader.add(Box::new(reload::LogSettings));
    reloader.add(Box::new(reload::DestBlockFile(dest_block.clone())));
    if let Some(part) = directory_reload {
        reloader.add(Box::new(part));
    }
    sup.spawn(
        StopPhase::Reporting,
        "reload",
        reload_task(signals.hangup, reloader, sup.token(StopPhase::Reporting)),
    );
    sup.spawn(
        StopPhase::Intake,
        "smtp listener",
        // Its sessions are its own to wait for (it answers 421 until they
        // ended), so the phase waits for this one task.
        server::serve(
            listener,
            ctx,
            sup.token(StopPhase::Intake),
            TaskTracker::new(),
        ),
    );
    // The spool is open and every listener is bound (connections waited
    // in the backlog until the accept loop started just now).
    endpoint.set_ready();
    // systemd (only with NOTIFY_SOCKET): READY now; then STATUS, WATCHDOG
    // and, at the first sign of the stop, STOPPING.
    if let Some(notifier) = notify::Notifier::from_env() {
        notifier.ready();
        sup.spawn(
            StopPhase::Reporting,
            "notify",
            notifier.run(
                notify::Liveness {
                    spool: spool.clone(),
                    dispatcher: dispatching.then_some(ping_tx),
                },
                notify::StatusSource {
                    stats: stats.clone(),
                    every: config.ops.stats_interval,
                },
                sup.stop(),
            ),
        );
    }
    // Every task holds its own handle now; this one would keep the
    // committer open at shutdown.
    drop(spool);
    info!("[CONN] listening on {local}");
    startup_warnings(config, local);
    Ok(StopHandles { closer, lock })
}

/// What the operator should know about settings that weaken the mixing.
fn startup_warnings(config: &Config, local: SocketAddr) {
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
}

/// The SMTP delivery side: hosts through Tor, the client, and egress.
fn router(
    config: &Config,
    dialer: SocksDialer,
    mx: Arc<MxResolver>,
    cover_key: &CoverKey,
    stats: &Arc<Stats>,
    news_gateways: RecipientPatterns,
) -> Arc<Router> {
    let relay = &config.relay;
    Arc::new(Router {
        dialer,
        mx,
        client: ClientConfig {
            helo_name: config.name.to_string(),
            // Opened once here and shared by every delivery.
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
            news_gateways,
            stats: stats.clone(),
        }),
    })
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

/// Turns SIGTERM or SIGINT into the one stop.
async fn signals_task(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = term.recv() => info!("received SIGTERM, shutting down"),
        _ = int.recv() => info!("received SIGINT, shutting down"),
        _ = stop.cancelled() => return,
    }
    stop.cancel();
}

/// Reloads on every SIGHUP until shutdown; one reload at a time, off the
/// executor (it reads files).
async fn reload_task(
    mut hangup: tokio::signal::unix::Signal,
    reloader: reload::Reloader,
    shutdown: CancellationToken,
) {
    let reloader = Arc::new(reloader);
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
}

/// RCPT-time check backed by the MX resolver (through Tor).
struct MxCheck(Arc<MxResolver>);

impl DomainCheck for MxCheck {
    fn undeliverable<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(self.0.provably_undeliverable(domain, RCPT_CHECK_TIMEOUT))
    }
}
