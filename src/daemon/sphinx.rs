//! Mixnet mode at start: this node's keys and the network's `nodes.json`.
//!
//! Everything here runs before the daemon opens the spool or binds a
//! socket, so a bad file or key stops startup with one line (exit 64) and
//! nothing else has happened. The checks that need the file itself (JSON,
//! entries, params) are `wire::pki`'s, and reading it with its signatures
//! and serial is `daemon::directory`'s; this adds comparing this node's
//! entry with its own keys and flags: a stale entry would have peers build
//! packets this node cannot open.

use std::path::Path;

use crate::address::OnionName;
use crate::config::{MixnetConfig, NodeInfo};
use crate::mixnet::keys::{IdentityKey, KeyError, KeyRing, Rotation};
use crate::wire::pki::{self, Directory, NodeEntry};

/// What the mixnet tasks start from: the settings, the checked directory
/// and this node's keys.
#[derive(Debug)]
pub struct MixnetNode {
    pub config: MixnetConfig,
    pub directory: Directory,
    pub identity: IdentityKey,
    pub keys: KeyRing,
    /// What opening the key ring did (logged once the daemon logs).
    pub rotation: Rotation,
    /// Where peers' bundles are cached (`peer-keys/`).
    pub data_dir: std::path::PathBuf,
    /// What to log about `nodes.json` once the node runs.
    pub pki_notes: super::directory::Notes,
    /// The exit's cap on partial messages (`-exit-partial-bytes`, or its
    /// default for this network).
    pub partial_cap: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MixnetStartError {
    #[error("-data-dir: this node's mixnet key: {0}")]
    Keys(#[from] KeyError),
    #[error("-pki-file {path}: {reason}")]
    Pki { path: String, reason: String },
    /// The saved nodes.json serial cannot be read or kept.
    #[error("{0}")]
    Serial(String),
    /// An exit whose cap on partial messages cannot hold one message of
    /// the network's largest size would answer busy to it for ever.
    #[error(
        "-exit-partial-bytes {cap}: an exit must hold one message of the network's largest size ({need} bytes: max_message_size {max} and its envelope); raise it or run with -exit=false"
    )]
    PartialCap { cap: u64, need: usize, max: usize },
}

/// This node's `nodes.json` entry, exactly as `-export-node-info` prints
/// it and as the other operators must list it.
pub fn node_entry(name: &OnionName, info: &NodeInfo, identity: &IdentityKey) -> NodeEntry {
    NodeEntry {
        name: info.short_name.clone(),
        onion: name.to_string(),
        port: info.port,
        identity: pki::encode_key(identity.public().as_bytes()),
        exit: info.exit,
        family: info.family.clone(),
    }
}

/// Loads (or creates) the identity key in `data_dir`, which must be
/// prepared. Mix keys are made when the node runs, for the epochs then.
pub fn load_identity(data_dir: &Path) -> Result<IdentityKey, KeyError> {
    IdentityKey::load_or_create(data_dir)
}

/// Reads and checks `nodes.json`, then this node's entry in it.
pub fn start(
    data_dir: &Path,
    name: &OnionName,
    config: MixnetConfig,
) -> Result<MixnetNode, MixnetStartError> {
    let identity = load_identity(data_dir)?;
    let path = config.pki_file.display().to_string();
    let pki_error = |reason: String| MixnetStartError::Pki {
        path: path.clone(),
        reason,
    };
    // Signatures, serial and expiry as well as the contents: the same
    // decision a reload makes.
    let (directory, pki_notes) = super::directory::load(
        data_dir,
        name,
        &config.pki_file,
        config.trust.as_ref(),
        crate::time::now_ms(),
    )
    .map_err(|e| match e {
        super::directory::LoadError::Refused(reason) => pki_error(reason),
        state => MixnetStartError::Serial(state.to_string()),
    })?;
    let listed = directory.own();
    let mine = node_entry(name, &config.info, &identity);
    let differs = [
        ("name", listed.short_name != mine.name),
        ("port", listed.port != mine.port),
        ("exit", listed.exit != mine.exit),
        ("family", listed.family != mine.family),
        (
            "identity",
            pki::encode_key(listed.identity.as_bytes()) != mine.identity,
        ),
    ];
    if let Some((field, _)) = differs.iter().find(|(_, d)| *d) {
        return Err(pki_error(format!(
            "this node's entry ({:?}) has another \"{field}\" than this node's keys and flags; replace it with the output of `pluto2 -export-node-info` run with this node's flags",
            listed.short_name
        )));
    }
    let max = directory.params().max_message_size;
    let need = crate::wire::fragment::max_blob_len(max);
    let partial_cap = match config.exit_partial_bytes {
        Some(cap) if config.info.exit && cap < need as u64 => {
            return Err(MixnetStartError::PartialCap { cap, need, max });
        }
        Some(cap) => cap,
        None => crate::config::DEFAULT_EXIT_PARTIAL_BYTES.max(need as u64),
    };
    let now = crate::time::system_clock()();
    let (keys, rotation) = KeyRing::open(data_dir, directory.params().epoch_at(now))?;
    Ok(MixnetNode {
        config,
        partial_cap,
        directory,
        identity,
        keys,
        rotation,
        data_dir: data_dir.to_path_buf(),
        pki_notes,
    })
}

/// One outbound link per listed peer: those of the first `nodes.json`,
/// and those a reload adds. A node a reload removes keeps its link until
/// shutdown, so packets already in custody for it still leave; no new
/// route uses it and no hop forwards to it.
pub struct PeerLinks {
    dialer: crate::relay::socks::SocksDialer,
    cfg: std::sync::Arc<crate::link::LinkConfig>,
    forwarder: std::sync::Arc<crate::mixnet::forwarder::Forwarder>,
    shutdown: tokio_util::sync::CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    running: std::sync::Mutex<std::collections::HashSet<crate::wire::packet::NodeId>>,
}

impl PeerLinks {
    /// Starts a link to every node in `nodes` that has none yet.
    fn ensure(&self, nodes: &[crate::wire::pki::Node]) {
        let mut running = self.running.lock().unwrap();
        for peer in nodes {
            if !running.insert(peer.id) {
                continue;
            }
            self.tracker.spawn(crate::link::run_peer(
                peer.id,
                peer.onion.to_string(),
                peer.port,
                self.dialer.clone(),
                self.cfg.clone(),
                crate::link::PeerPolicy::of(self.forwarder.clone()),
                self.shutdown.clone(),
            ));
        }
    }
}

/// Rereads `nodes.json` on SIGHUP: the same checks as at start (contents,
/// signatures, serial, expiry), plus what a running node cannot take: other
/// network parameters or another entry for itself. A refused file keeps the
/// directory in force and the reload line says why.
pub struct DirectoryReload {
    ctx: std::sync::Arc<crate::mixnet::context::MixContext>,
    links: std::sync::Arc<PeerLinks>,
    data_dir: std::path::PathBuf,
    name: OnionName,
}

impl super::reload::Reloadable for DirectoryReload {
    fn flags(&self) -> &'static [&'static str] {
        &["pki-file", "pki-trust", "pki-threshold"]
    }

    fn prepare(
        &self,
        _old: &crate::config::Config,
        new: &crate::config::Config,
    ) -> Result<Option<super::reload::Staged>, super::reload::ReloadError> {
        let Some(m) = new.mixnet.as_ref() else {
            return Ok(None);
        };
        let refused =
            |source: Box<dyn std::error::Error + Send + Sync>| super::reload::ReloadError::File {
                flag: "-pki-file",
                path: m.pki_file.clone(),
                source,
            };
        let (directory, notes) = super::directory::load(
            &self.data_dir,
            &self.name,
            &m.pki_file,
            m.trust.as_ref(),
            crate::time::now_ms(),
        )
        .map_err(|e| refused(e.into()))?;
        if let Some(why) = self.ctx.directory.refuses(&directory) {
            return Err(refused(why.into()));
        }
        if directory.nodes() == self.ctx.directory.get().nodes() {
            return Ok(None);
        }
        let what = format!(
            "-pki-file {} ({} nodes)",
            m.pki_file.display(),
            directory.nodes().len()
        );
        let (ctx, links) = (self.ctx.clone(), self.links.clone());
        Ok(Some(super::reload::Staged {
            what,
            apply: Box::new(move || {
                let others: Vec<_> = directory.others().cloned().collect();
                ctx.directory.replace(directory);
                links.ensure(&others);
                notes.log();
                // Routes may change: new nodes, or fewer.
                ctx.health.poke();
            }),
        }))
    }
}

/// Logs a rotation and purges what belonged to the destroyed keys.
async fn rotated(ctx: &crate::mixnet::context::MixContext, rotation: &Rotation) {
    ctx.stats.mix_epoch.set(ctx.keys.current() as i64);
    let (tags, packets) = ctx
        .spool
        .purge_epochs(rotation.purge_below)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!("[MIXNET] cannot purge replay tags of old epochs: {e}");
            (0, 0)
        });
    if packets > 0 {
        crate::stats::Stats::add(&ctx.stats.mix_expired, packets);
    }
    if rotation.created.is_empty() && rotation.deleted.is_empty() && tags + packets == 0 {
        return;
    }
    tracing::info!(
        "[MIXNET] epoch {}: mix keys made for epochs {:?}, destroyed for {:?}; {tags} replay tag(s) and {packets} unsendable packet(s) of older epochs purged",
        ctx.keys.current(),
        rotation.created,
        rotation.deleted
    );
}

/// Rotates the mix keys at every epoch boundary until shutdown.
async fn rotate_keys(
    ctx: std::sync::Arc<crate::mixnet::context::MixContext>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let params = ctx.directory.params().clone();
    loop {
        let now = ctx.now();
        let next = params.epoch_start(params.epoch_at(now).saturating_add(1));
        let wait = std::time::Duration::from_millis(next.saturating_sub(now) + 1);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let epoch = ctx.epoch();
        match ctx.keys.rotate(epoch) {
            Ok(rotation) => rotated(&ctx, &rotation).await,
            Err(e) => tracing::warn!("[MIXNET] cannot rotate mix keys: {e}"),
        }
        // New epoch: routes need the peers' keys for it.
        ctx.health.poke();
    }
}

/// How often the exit looks for messages to complete or acknowledge as
/// PARTIAL, and every node for packets past their custody horizon.
const MAINTENANCE: std::time::Duration = std::time::Duration::from_secs(10);

/// What the mixnet's tasks share with the rest of the daemon.
pub struct Shared {
    pub spool: crate::spool::Spool,
    pub stats: std::sync::Arc<crate::stats::Stats>,
    pub clock: crate::time::Clock,
    /// Where mail completed at this exit enters the spool.
    pub intake: std::sync::Arc<crate::node::intake::Intake>,
    pub dialer: crate::relay::socks::SocksDialer,
}

/// Binds `-node` (the build step: nothing runs yet).
pub async fn bind(node: &MixnetNode) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(node.config.node).await
}

/// Starts the mixnet's tasks under the supervisor, all in the
/// "dispatcher and mixnet" phase: the link listener (hops, exit, entry
/// acknowledgements), one link per other node, the entry's sender, packet
/// cover, key rotation and the maintenance task. Packets whose release
/// time passed while the node was down get a fresh delay first, so a
/// restart is not a burst. Returns the `nodes.json` part of SIGHUP.
pub async fn spawn(
    node: MixnetNode,
    listener: tokio::net::TcpListener,
    shared: Shared,
    sup: &super::supervisor::Supervisor,
) -> Result<DirectoryReload, std::io::Error> {
    use std::sync::Arc;
    use std::time::Duration;

    use super::supervisor::StopPhase;
    use crate::link::{self, LinkConfig};
    use crate::mixnet::context::MixContext;
    use crate::mixnet::forwarder::Forwarder;
    use crate::mixnet::health::Health;
    use crate::mixnet::hop::{self, Hop, UnwrapShares};
    use crate::mixnet::packet_cover::MixCover;
    use crate::mixnet::path::hop_delay;
    use crate::mixnet::peers::PeerKeys;
    use crate::mixnet::sender::Sender;
    use rand::SeedableRng;

    let Shared {
        spool,
        stats,
        clock,
        intake,
        dialer,
    } = shared;
    let shutdown = sup.token(StopPhase::Work);
    let links = sup.tracker(StopPhase::Work);
    let local = listener.local_addr()?;
    node.pki_notes.log();
    let params = node.directory.params().clone();
    let node_partial_cap = node.partial_cap;
    stats
        .mixnet
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let peers = PeerKeys::load(&node.data_dir, &node.directory)?;
    let data_dir = node.data_dir.clone();
    let keys = Arc::new(node.keys);
    let rotation = node.rotation;
    let ctx = Arc::new(MixContext {
        spool: spool.clone(),
        peers: Arc::new(peers),
        own_bundle: Default::default(),
        directory: crate::mixnet::context::DirectoryCell::new(node.directory),
        keys,
        identity: Arc::new(node.identity),
        exit: node.config.info.exit,
        intake,
        stats: stats.clone(),
        clock: clock.clone(),
        health: Arc::new(Health::new()),
        client: None,
    });
    {
        let (mean, max, clock) = (params.hop_delay_mean, params.hop_delay_max, clock.clone());
        let moved = spool
            .restart_packets(move || {
                clock() + hop_delay(mean, max, &mut rand::rng()).as_millis() as u64
            })
            .await
            .map_err(std::io::Error::other)?;
        if moved > 0 {
            tracing::info!(
                "[MIXNET] {moved} overdue packet(s) got a fresh delay after the restart"
            );
        }
    }
    rotated(&ctx, &rotation).await;
    let gateway = node.config.gateway.clone();
    let mut link_cfg = LinkConfig::new(
        ctx.own(),
        ctx.identity.signing_key().clone(),
        params.hash(),
        params.epoch,
    );
    if let Some(g) = &gateway {
        let (rate, burst) = client_rate(&params);
        link_cfg = link_cfg.serving_clients(g.clients as usize, rate, burst);
    }
    let cfg = Arc::new(link_cfg);
    let hop = Arc::new(Hop {
        ctx: ctx.clone(),
        completions: links.clone(),
        shares: UnwrapShares::new(
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        ),
        partial_cap: node_partial_cap,
        gateway: gateway.as_ref().map(|g| crate::spool::custody::HoldCaps {
            per_mailbox: g.held_per_client,
            total_bytes: g.held_bytes,
            mailboxes: g.clients,
        }),
    });
    sup.spawn(
        StopPhase::Work,
        "link listener",
        link::serve(
            listener,
            cfg.clone(),
            hop.clone(),
            hop,
            stats.clone(),
            shutdown.clone(),
            links.clone(),
        ),
    );
    let forwarder = Arc::new(Forwarder::new(ctx.clone(), Duration::from_secs(120)));
    let peer_links = Arc::new(PeerLinks {
        dialer,
        cfg: cfg.clone(),
        forwarder,
        shutdown: shutdown.clone(),
        tracker: links.clone(),
        running: Default::default(),
    });
    peer_links.ensure(&ctx.directory.others());
    sup.spawn(
        StopPhase::Work,
        "mixnet sender",
        Sender { ctx: ctx.clone() }.run(shutdown.clone()),
    );
    sup.spawn(
        StopPhase::Work,
        "packet cover",
        MixCover {
            ctx: ctx.clone(),
            queue: Arc::new(spool.clone()),
        }
        .run(rand::rngs::StdRng::from_os_rng(), shutdown.clone()),
    );
    sup.spawn(
        StopPhase::Work,
        "key rotation",
        rotate_keys(ctx.clone(), shutdown.clone()),
    );
    let stall = (params.ack_timeout / 2).max(Duration::from_secs(1));
    let partial_idle = hop::partial_idle_limit(&params);
    let maintenance = ctx.clone();
    let stop = shutdown.clone();
    sup.spawn(StopPhase::Work, "mixnet maintenance", async move {
        let ctx = maintenance;
        loop {
            if ctx.exit {
                if let Ok(ids) = ctx.spool.complete_candidates(16).await {
                    for id in ids {
                        hop::complete(&ctx, id, None).await;
                    }
                }
                // The reply block is taken and the PARTIAL queued in one
                // transaction: a crash loses neither.
                let answering = ctx.clone();
                let _ = ctx
                    .spool
                    .answer_stalled(stall, 16, move |s| {
                        let block = crate::wire::packet::ReplyBlock::from_slice(&s.reply_block).ok()?;
                        let body = crate::wire::fragment::AckBody::Partial(hop::bitmap(s.count, &s.have));
                        hop::ack_packet(&answering, &block, s.mix_id, &body)
                    })
                    .await;
            }
            // Nothing can arrive for a message older than both horizons;
            // a partial message goes sooner once idle (see
            // `hop::partial_idle_limit`).
            let forget = params.e2e_horizon + params.custody_horizon;
            if let Ok((fragments, done)) = ctx.spool.prune_mixnet(partial_idle, forget).await
                && fragments + done > 0
            {
                tracing::info!("[MIXNET] forgot {fragments} stale fragment(s) and {done} finished message id(s)");
            }
            if let Ok(expired) = ctx.spool.expire_packets().await {
                for (kind, n) in expired {
                    crate::stats::Stats::add(&ctx.stats.mix_expired, n);
                    tracing::info!("[MIXNET] dropped {n} {kind:?} packet(s): custody horizon passed without acknowledgement");
                }
            }
            // A client that never comes back: its mailbox goes when no reply
            // for it can still be useful (its sender gave up by then).
            if gateway.is_some()
                && let Ok((mailboxes, replies)) = ctx.spool.expire_mailboxes(forget).await
                && mailboxes > 0
            {
                crate::stats::Stats::add(&ctx.stats.mix_held_expired, replies);
                tracing::info!("[MIXNET] forgot {mailboxes} idle client mailbox(es) and the {replies} reply(ies) they held");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(MAINTENANCE.min(stall)) => {}
            }
        }
    });
    tracing::info!(
        "[MIXNET] {} nodes, {} hops per route, links on {}{}",
        ctx.directory.nodes().len(),
        params.hops,
        local,
        if ctx.exit {
            ", exit"
        } else {
            ", middleman (no exit)"
        }
    );
    if let Some(g) = &gateway {
        tracing::info!(
            "[MIXNET] gateway: up to {} clients, {} replies each and {} bytes in all held for them, an idle mailbox kept {}",
            g.clients,
            g.held_per_client,
            g.held_bytes,
            humantime::format_duration(params.e2e_horizon + params.custody_horizon)
        );
    }
    if ctx.exit {
        let contract = crate::wire::fragment::Contract::new(params.max_message_size);
        tracing::info!(
            "[MIXNET] exit: messages up to {} bytes ({} fragments); partial messages up to {} bytes in all (-exit-partial-bytes; busy past it), each kept {} after its latest fragment",
            contract.max_blob_len(),
            contract.max_fragments(),
            node_partial_cap,
            humantime::format_duration(partial_idle)
        );
    }
    Ok(DirectoryReload {
        name: ctx.directory.own().onion.clone(),
        ctx,
        links: peer_links,
        data_dir,
    })
}

/// A gateway's limits on one client's packets: four times the rate every
/// client sends at (`client_send_mean`; real packets and loops together),
/// in bursts of up to 64. An honest client paces itself well under it;
/// past it the client is told busy and keeps its packet.
fn client_rate(params: &crate::wire::pki::Params) -> (f64, f64) {
    let mean = params.client_send_mean.as_secs_f64().max(1e-3);
    (4.0 / mean, 64.0)
}

/// Starts a client's tasks (`-client`): one link to its gateway (the only
/// connection it makes, through Tor, with the key derived for that
/// gateway), fetching replies at the network's rate; the sender, whose
/// routes start at the gateway and whose reply blocks end in this
/// client's mailbox there; and custody upkeep. No listener: a client
/// serves nothing but SMTP on loopback.
pub async fn spawn_client(
    client: MixnetClient,
    shared: Shared,
    sup: &super::supervisor::Supervisor,
) -> Result<(), std::io::Error> {
    use std::sync::Arc;
    use std::time::Duration;

    use super::supervisor::StopPhase;
    use crate::link::{self, LinkConfig};
    use crate::mixnet::client::ClientMailbox;
    use crate::mixnet::context::{ClientSide, MixContext};
    use crate::mixnet::forwarder::Forwarder;
    use crate::mixnet::health::Health;
    use crate::mixnet::keys::{IdentityKey, KeyRing};
    use crate::mixnet::path::hop_delay;
    use crate::mixnet::peers::PeerKeys;
    use crate::mixnet::sender::Sender;

    let Shared {
        spool,
        stats,
        clock,
        intake,
        dialer,
    } = shared;
    let shutdown = sup.token(StopPhase::Work);
    let links = sup.tracker(StopPhase::Work);
    client.pki_notes.log();
    let params = client.directory.params().clone();
    stats
        .mixnet
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let peers = PeerKeys::load_for_client(&client.data_dir, &client.directory)?;
    let gateway = client.directory.own().clone();
    let key = client.key.clone();
    let side = ClientSide {
        gateway: gateway.id,
        mailbox: key.verifying_key().to_bytes(),
    };
    let ctx = Arc::new(MixContext {
        spool: spool.clone(),
        peers: Arc::new(peers),
        own_bundle: Default::default(),
        directory: crate::mixnet::context::DirectoryCell::new(client.directory),
        keys: Arc::new(KeyRing::empty(params.epoch_at(clock()))),
        identity: Arc::new(IdentityKey::of_client(key.clone())),
        exit: false,
        intake,
        stats: stats.clone(),
        clock: clock.clone(),
        health: Arc::new(Health::new()),
        client: Some(side),
    });
    {
        let (mean, max, clock) = (params.hop_delay_mean, params.hop_delay_max, clock.clone());
        let moved = spool
            .restart_packets(move || {
                clock() + hop_delay(mean, max, &mut rand::rng()).as_millis() as u64
            })
            .await
            .map_err(std::io::Error::other)?;
        if moved > 0 {
            tracing::info!(
                "[MIXNET] {moved} overdue packet(s) got a fresh delay after the restart"
            );
        }
    }
    let cfg = Arc::new(LinkConfig::client(
        key,
        params.hash(),
        params.epoch,
        params.client_send_mean,
        params.client_fetch_mean,
    ));
    let forwarder = Arc::new(Forwarder::new(ctx.clone(), Duration::from_secs(120)));
    let policy = link::PeerPolicy::of(forwarder).with_mailbox(Arc::new(ClientMailbox {
        ctx: ctx.clone(),
    }));
    links.spawn(link::run_peer(
        gateway.id,
        gateway.onion.to_string(),
        gateway.port,
        dialer,
        cfg,
        policy,
        shutdown.clone(),
    ));
    sup.spawn(
        StopPhase::Work,
        "mixnet sender",
        Sender { ctx: ctx.clone() }.run(shutdown.clone()),
    );
    let upkeep = ctx.clone();
    let stop = shutdown.clone();
    sup.spawn(StopPhase::Work, "mixnet maintenance", async move {
        let ctx = upkeep;
        loop {
            if let Ok(expired) = ctx.spool.expire_packets().await {
                for (kind, n) in expired {
                    crate::stats::Stats::add(&ctx.stats.mix_expired, n);
                    tracing::info!("[MIXNET] dropped {n} {kind:?} packet(s): custody horizon passed without acknowledgement");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(MAINTENANCE) => {}
            }
        }
    });
    tracing::info!(
        "[MIXNET] client of gateway {}: {} nodes, {} hops after the gateway; SMTP only, on loopback",
        gateway.short_name,
        ctx.directory.nodes().len(),
        params.hops,
    );
    Ok(())
}
