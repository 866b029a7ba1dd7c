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
use crate::mixnet::keys::{ClientSeed, IdentityKey, KeyError, KeyRing, Rotation};
use crate::wire::pki::{self, Directory, NodeEntry, Reader};

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
    #[error("-data-dir: this client's seed: {0}")]
    ClientSeed(KeyError),
    /// `start_client` with settings that are not a client's.
    #[error("-via is missing: client mode needs the gateway it sends through, e.g. -via alice")]
    NoVia,
}

/// What client mode (`-client`) starts from: the settings, `nodes.json`
/// as a client of its gateway reads it, and the client's keys.
#[derive(Debug)]
pub struct MixnetClient {
    pub config: MixnetConfig,
    /// `own()` is the gateway (`-via`), `others()` the candidates for the
    /// rest of a route.
    pub directory: Directory,
    /// The secret every key of this client is derived from.
    pub seed: ClientSeed,
    /// This client's key at its gateway (`seed.key_for(gateway)`): it
    /// signs the gateway's challenge, and names the client's mailbox.
    pub key: ed25519_dalek::SigningKey,
    /// Where peers' bundles and the accepted serial are kept.
    pub data_dir: std::path::PathBuf,
    /// What to log about `nodes.json` once the client runs.
    pub pki_notes: super::directory::Notes,
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
        gateway: info.gateway,
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
        ("gateway", listed.gateway != mine.gateway),
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

/// Reads and checks `nodes.json` as a client of the gateway `-via` (the
/// same signatures, serial and expiry as a node), and loads or makes the
/// client's seed in `data_dir`, which must be prepared.
pub fn start_client(
    data_dir: &Path,
    config: MixnetConfig,
) -> Result<MixnetClient, MixnetStartError> {
    let Some(via) = config.client.as_ref().map(|c| c.via.clone()) else {
        return Err(MixnetStartError::NoVia);
    };
    let seed = ClientSeed::load_or_create(data_dir).map_err(MixnetStartError::ClientSeed)?;
    let path = config.pki_file.display().to_string();
    let (directory, pki_notes) = super::directory::load_as(
        data_dir,
        Reader::Client(&via),
        &config.pki_file,
        config.trust.as_ref(),
        crate::time::now_ms(),
    )
    .map_err(|e| match e {
        super::directory::LoadError::Refused(reason) => MixnetStartError::Pki { path, reason },
        state => MixnetStartError::Serial(state.to_string()),
    })?;
    // The gateway is listed with "gateway": true: parse_for_client
    // refuses any other.
    let key = seed.key_for(&directory.own().id);
    Ok(MixnetClient {
        config,
        directory,
        seed,
        key,
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
    use crate::mixnet::context::{MixContext, MixRole, Services};
    use crate::mixnet::forwarder::Forwarder;
    use crate::mixnet::hop::{self, Hop, UnwrapShares};
    use crate::mixnet::packet_cover::MixCover;
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
    let rotation = node.rotation;
    let ctx = Arc::new(MixContext::new(
        Services {
            spool: spool.clone(),
            intake,
            stats: stats.clone(),
            clock,
        },
        node.directory,
        node.keys,
        node.identity,
        peers,
        MixRole::Node {
            exit: node.config.info.exit,
        },
    ));
    fresh_delays(&ctx).await?;
    rotated(&ctx, &rotation).await;
    let gateway = node.config.gateway;
    let mut link_cfg = LinkConfig::new(
        ctx.own(),
        ctx.identity.signing_key().clone(),
        params.hash(),
        params.epoch,
    );
    if let Some(g) = &gateway {
        link_cfg = link_cfg.serving_clients(
            g.clients as usize,
            client_rate(params.client_send_mean),
            client_rate(params.client_fetch_mean),
        );
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
            expire_custody(&ctx).await;
            // A client that never comes back: its mailbox goes when no reply
            // for it can still be useful (its sender gave up by then).
            if gateway.is_some()
                && let Ok((mailboxes, replies)) = ctx.spool.expire_mailboxes(forget).await
                && mailboxes > 0
            {
                crate::stats::Stats::add(&ctx.stats.mix_held_expired, replies);
                tracing::info!("[MIXNET] forgot {mailboxes} idle client mailbox(es) and the {replies} reply(ies) they held");
            }
            if gateway.is_some()
                && let Ok(totals) = ctx.spool.held_totals().await
            {
                ctx.stats.set_held(totals);
            }
            // The pinger's day: what the loops showed since the last round.
            crate::mixnet::packet_cover::save_loop_day(&ctx).await;
            tokio::select! {
                _ = stop.cancelled() => {
                    crate::mixnet::packet_cover::save_loop_day(&ctx).await;
                    return;
                }
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

/// Drops the packets whose custody horizon passed without an
/// acknowledgement, counted and logged by kind (node and client alike).
async fn expire_custody(ctx: &crate::mixnet::context::MixContext) {
    if let Ok(expired) = ctx.spool.expire_packets().await {
        for (kind, n) in expired {
            crate::stats::Stats::add(&ctx.stats.mix_expired, n);
            tracing::info!(
                "[MIXNET] dropped {n} {kind:?} packet(s): custody horizon passed without acknowledgement"
            );
        }
    }
}

/// Packets whose release time passed while the process was down get a
/// fresh delay, so a restart is not a burst (node and client alike).
async fn fresh_delays(ctx: &crate::mixnet::context::MixContext) -> std::io::Result<()> {
    let params = ctx.directory.params();
    let (mean, max, clock) = (
        params.hop_delay_mean,
        params.hop_delay_max,
        ctx.clock.clone(),
    );
    let moved = ctx
        .spool
        .restart_packets(move || {
            clock() + crate::mixnet::path::hop_delay(mean, max, &mut rand::rng()).as_millis() as u64
        })
        .await
        .map_err(std::io::Error::other)?;
    if moved > 0 {
        tracing::info!("[MIXNET] {moved} overdue packet(s) got a fresh delay after the restart");
    }
    Ok(())
}

/// A gateway's limit on one client's frames of a kind sent every `mean`
/// on average (packets: `client_send_mean`, real and cover together;
/// fetches: `client_fetch_mean`): four times that rate, in bursts of up
/// to 64 (a CONFIRM follows some fetches, well within the four). An
/// honest client paces itself well under it; past it a packet is told
/// busy (the client keeps it) and fetches are read more slowly.
fn client_rate(mean: std::time::Duration) -> (f64, f64) {
    (4.0 / mean.as_secs_f64().max(1e-3), 64.0)
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
    use crate::mixnet::context::{ClientSide, MixContext, MixRole, Services};
    use crate::mixnet::forwarder::Forwarder;
    use crate::mixnet::keys::{IdentityKey, KeyRing};
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
    let ctx = Arc::new(MixContext::new(
        Services {
            spool,
            intake,
            stats,
            clock: clock.clone(),
        },
        client.directory,
        KeyRing::empty(params.epoch_at(clock())),
        IdentityKey::of_client(key.clone()),
        peers,
        MixRole::Client(side),
    ));
    fresh_delays(&ctx).await?;
    #[cfg_attr(not(debug_assertions), allow(unused_mut))]
    let mut link_cfg = LinkConfig::client(
        key,
        params.hash(),
        params.epoch,
        params.client_send_mean,
        params.client_fetch_mean,
    );
    // Test hook, in debug builds only: `PLUTO2_PACING_SEED=<u64>` seeds the
    // gaps of the client's sends and fetches, so a statistical test of
    // them sees the same draws on every run. Release builds do not read it.
    #[cfg(debug_assertions)]
    {
        link_cfg.pacing_seed = std::env::var("PLUTO2_PACING_SEED")
            .ok()
            .and_then(|v| v.parse().ok());
    }
    let cfg = Arc::new(link_cfg);
    let forwarder = Arc::new(Forwarder::new(ctx.clone(), Duration::from_secs(120)));
    let policy =
        link::PeerPolicy::of(forwarder).with_mailbox(Arc::new(ClientMailbox { ctx: ctx.clone() }));
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
            expire_custody(&ctx).await;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::wire::packet::NodeId;

    /// A four-node `nodes.json` in `dir` whose first node, alice, is a
    /// gateway when `gateway` says so.
    fn nodes_json(dir: &Path, gateway: bool) -> std::path::PathBuf {
        let entry = |seed: u8, name: &str| {
            let identity = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
            json!({
                "name": name,
                "onion": OnionName::from_seed(seed).to_string(),
                "port": 9999,
                "identity": pki::encode_key(identity.as_bytes()),
                "exit": true,
            })
        };
        let mut doc = json!({
            "serial": 7,
            "nodes": [entry(1, "alice"), entry(2, "bob"), entry(3, "carol"), entry(4, "dave")],
        });
        if gateway {
            doc["nodes"][0]["gateway"] = json!(true);
        }
        let path = dir.join("nodes.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        path
    }

    fn client_config(pki_file: &Path, via: &str) -> MixnetConfig {
        let cli = crate::config::parse(
            [
                "pluto2",
                "-sphinx",
                "-client",
                "-via",
                via,
                "-pki-file",
                pki_file.to_str().unwrap(),
            ]
            .map(String::from),
        )
        .unwrap();
        cli.daemon.validate().unwrap().mixnet.unwrap()
    }

    #[test]
    fn a_client_starts_with_its_gateway_and_a_key_of_its_own_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = nodes_json(dir.path(), true);
        let client = start_client(dir.path(), client_config(&file, "alice")).unwrap();
        assert_eq!(client.directory.own().short_name, "alice");
        let others: Vec<&str> = client
            .directory
            .others()
            .map(|n| n.short_name.as_str())
            .collect();
        assert_eq!(others, ["bob", "carol", "dave"]);
        let alice = NodeId(OnionName::from_seed(1).public_key());
        assert_eq!(
            client.key.verifying_key(),
            client.seed.key_for(&alice).verifying_key()
        );
        assert_eq!(client.data_dir, dir.path());
        // The seed is kept, the serial too, as a node keeps its own.
        assert!(
            dir.path()
                .join(crate::mixnet::keys::CLIENT_SEED_FILE)
                .exists()
        );
        assert_eq!(
            super::super::directory::read_serial(dir.path()).unwrap(),
            Some(7)
        );
        let again = start_client(dir.path(), client_config(&file, "alice")).unwrap();
        assert_eq!(again.key.verifying_key(), client.key.verifying_key());
        // No node key is made: a client has no identity in nodes.json.
        assert!(!dir.path().join(crate::mixnet::keys::IDENTITY_FILE).exists());
    }

    #[test]
    fn a_client_refuses_a_gateway_that_is_none_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = nodes_json(dir.path(), false);
        let e = start_client(dir.path(), client_config(&file, "alice"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("-pki-file {}: -via alice", file.display())),
            "{e}"
        );
        assert!(e.contains("lacks \"gateway\": true"), "{e}");
        let file = nodes_json(dir.path(), true);
        let e = start_client(dir.path(), client_config(&file, "zoe"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no node zoe in nodes.json"), "{e}");
    }

    #[test]
    fn a_client_is_held_to_the_operators_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let file = nodes_json(dir.path(), true);
        let operator = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let mut config = client_config(&file, "alice");
        config.trust = Some(
            crate::wire::pki_sig::Trust::new(
                &pki::encode_key(operator.verifying_key().as_bytes()),
                None,
            )
            .unwrap(),
        );
        let e = start_client(dir.path(), config).unwrap_err().to_string();
        assert!(e.contains("no signature file"), "{e}");
    }

    #[test]
    fn a_node_whose_gateway_flag_differs_from_its_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = nodes_json(dir.path(), true);
        let identity = load_identity(dir.path()).unwrap();
        // Make alice's entry this node's keys.
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        doc["nodes"][0]["identity"] = json!(pki::encode_key(identity.public().as_bytes()));
        std::fs::write(&file, doc.to_string()).unwrap();
        let name = OnionName::from_seed(1);
        let node = |gateway: bool| {
            let mut args = vec![
                "pluto2".to_string(),
                "-name".into(),
                name.to_string(),
                "-sphinx".into(),
                "-short-name".into(),
                "alice".into(),
                "-pki-file".into(),
                file.to_str().unwrap().into(),
            ];
            if gateway {
                args.push("-gateway".into());
            }
            let m = crate::config::parse(args)
                .unwrap()
                .daemon
                .validate()
                .unwrap()
                .mixnet
                .unwrap();
            start(dir.path(), &name, m)
        };
        node(true).unwrap();
        let e = node(false).unwrap_err().to_string();
        assert!(e.contains("another \"gateway\""), "{e}");
    }
}
