//! `pluto2 testnet`: a whole mixnet on this machine in one command.
//!
//! It starts N real `pluto2 -sphinx` nodes (processes of their own, each
//! with a data directory under DIR), a client (`-client`, via the first
//! node, which is a gateway), a freshly signed `nodes.json` (a throwaway
//! operator key in DIR, test delays so mail crosses in seconds) and an
//! SMTP sink that writes every delivered message to `DIR/sink/`. Links go
//! through SOCKS5 as always: to the testnet's own SOCKS5 server, which
//! maps its onion names to the nodes' ports ([`socks`]), or with `-tor` to
//! a private Tor network on 127.0.0.1 with an onion service per node. It
//! prints where everything is and runs until Ctrl-C (or SIGTERM), then
//! stops every process it started by pid and leaves nothing running.
//!
//! `pluto2 testnet kill|start NODE -dir DIR`, beside a running testnet,
//! kills a node at once (SIGKILL, as a crash would) or starts it again on
//! its data directory, so an operator can watch custody and
//! retransmission keep the mail safe.
//!
//! This is an edge: it only wires the real binary's processes together.
//! Nothing in the daemon knows it runs in a testnet.

pub mod sink;
pub mod socks;
pub mod state;
pub mod tor;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::address::OnionName;
use crate::config::{
    PkiCommand, PkiKeyArgs, PkiSignArgs, TestnetArgs, TestnetNode, TestnetOp, sysexits,
};
use state::{Member, State};

/// The short names nodes get, in order (`-nodes` takes the first N).
pub const NAMES: [&str; crate::config::MAX_TESTNET_NODES] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
];
/// The client's name in the output and for `kill`/`start`.
pub const CLIENT: &str = "client";
/// The virtual port of every node's link (what `nodes.json` publishes).
pub const LINK_PORT: u16 = 9999;
/// How long the network may take to come up before `testnet` gives up.
const START_PATIENCE: Duration = Duration::from_secs(120);
/// How long a stopping process gets after SIGTERM before SIGKILL.
const STOP_PATIENCE: Duration = Duration::from_secs(15);

/// Why the testnet could not do what was asked: one line for the user
/// and the exit status (sysexits, as the daemon's refusals).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TestnetError {
    pub status: u8,
    pub message: String,
}

/// A failure of the testnet's own doing: EX_SOFTWARE.
fn software(message: String) -> TestnetError {
    TestnetError {
        status: sysexits::SOFTWARE,
        message,
    }
}

impl From<state::StateError> for TestnetError {
    /// A state file that is not a testnet's is the user's `-dir` to fix.
    fn from(e: state::StateError) -> Self {
        let status = match e {
            state::StateError::Format { .. } => sysexits::USAGE,
            state::StateError::Io { .. } => sysexits::SOFTWARE,
        };
        TestnetError {
            status,
            message: e.to_string(),
        }
    }
}

/// The same as an `Err` (a process that would not start, a file it
/// could not write).
fn fail<T>(message: impl Into<String>) -> Result<T, TestnetError> {
    Err(software(message.into()))
}

/// A request to fix: a node name it does not have, a directory that is
/// not a testnet's, a node not in the asked state: EX_USAGE.
fn refuse<T>(message: impl Into<String>) -> Result<T, TestnetError> {
    Err(TestnetError {
        status: sysexits::USAGE,
        message: message.into(),
    })
}

/// The network parameters of a testnet of `nodes` nodes: a route of at
/// most three nodes after the entry (fewer nodes make shorter routes),
/// hop delays of half a second, keys rotating every ten minutes, cover
/// every few seconds and a client that sends and fetches every second,
/// so mail crosses in seconds and everything a real network does still
/// happens while one watches.
pub fn params(nodes: usize) -> serde_json::Value {
    serde_json::json!({
        "hops": (nodes - 1).min(3),
        "hop_delay_mean": "500ms",
        "hop_delay_max": "5s",
        "max_message_size": 1_048_576,
        "ack_timeout": "30s",
        "custody_horizon": "1h",
        "e2e_horizon": "1d",
        "epoch": "10m",
        "loop_cover_mean": "5s",
        "drop_cover_mean": "5s",
        "client_send_mean": "1s",
        "client_fetch_mean": "1s",
    })
}

/// `pluto2 testnet …`: the network until Ctrl-C, or one fault.
pub fn run(args: TestnetArgs) -> Result<(), TestnetError> {
    match args.op {
        Some(TestnetOp::Kill(node)) => kill(&node).map(|line| println!("{line}")),
        Some(TestnetOp::Start(node)) => start_one(&node).map(|line| println!("{line}")),
        None => {
            let runtime = tokio::runtime::Runtime::new()
                .map_err(|e| software(format!("cannot start the runtime: {e}")))?;
            runtime.block_on(network(args.nodes as usize, &args.dir, args.tor))
        }
    }
}

/// A port on 127.0.0.1 for a node: `testnet::tor`'s picker, which hands
/// each port out once per process (below the kernel's ephemeral range,
/// so no outgoing connection takes it first) whether or not `-tor` runs.
/// Another program taking it in the moment before the node binds makes
/// that node fail to start, which `testnet` reports.
fn free_port() -> Result<u16, TestnetError> {
    tor::free_port().map_err(|e| software(format!("cannot pick a port on 127.0.0.1: {e}")))
}

/// A valid v3 onion name (of a fresh ed25519 key, as pluto2 checks) that
/// no Tor knows: the testnet's SOCKS5 server is the only one that maps it.
fn made_up_onion() -> OnionName {
    let key = ed25519_dalek::SigningKey::from_bytes(&rand::rng().random());
    OnionName::from_public_key(key.verifying_key().as_bytes())
}

/// Makes `dir` ready for a new testnet: created (0700) if missing;
/// refused if it holds a running testnet or files that are not a
/// testnet's; a stopped testnet there is replaced, its leftover
/// processes stopped first.
fn prepare(dir: &Path) -> Result<PathBuf, TestnetError> {
    let shown = dir.display();
    std::fs::create_dir_all(dir).map_err(|e| software(format!("-dir {shown}: {e}")))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| software(format!("-dir {shown}: {e}")))?;
    match State::read(&dir)? {
        Some(old) => {
            if let Some(pid) = old.testnet_alive() {
                return Err(TestnetError {
                    status: sysexits::TEMPFAIL,
                    message: format!(
                        "-dir {shown}: a testnet runs there (pid {pid}); stop it with Ctrl-C, or give another -dir"
                    ),
                });
            }
            stop_members(&old);
            // Its tors exit on their own once their owner is gone (within
            // seconds); a new network needs them gone now, and an empty
            // DIR/tor (stale descriptors would override the new one).
            if old.tor {
                tor::stop_all_in(&dir.join("tor"))
                    .map_err(|e| software(format!("-dir {shown}: {e}")))?;
            }
            println!("replacing the stopped testnet in {shown}");
            for entry in
                std::fs::read_dir(&dir).map_err(|e| software(format!("-dir {shown}: {e}")))?
            {
                let path = entry
                    .map_err(|e| software(format!("-dir {shown}: {e}")))?
                    .path();
                let gone = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                gone.map_err(|e| software(format!("{}: cannot remove it: {e}", path.display())))?;
            }
        }
        None => {
            let mut entries =
                std::fs::read_dir(&dir).map_err(|e| software(format!("-dir {shown}: {e}")))?;
            if entries.next().is_some() {
                return refuse(format!(
                    "-dir {shown}: holds files that are not a testnet's; give an empty or new directory"
                ));
            }
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| software(format!("-dir {shown}: {e}")))?;
    Ok(dir)
}

/// One node as planned before anything starts.
struct Planned {
    name: &'static str,
    onion: OnionName,
    smtp: u16,
    link: u16,
    metrics: u16,
    data_dir: PathBuf,
}

/// The program to run for nodes: this very binary.
fn program() -> Result<PathBuf, TestnetError> {
    std::env::current_exe().map_err(|e| software(format!("cannot find the pluto2 binary: {e}")))
}

/// This node's `nodes.json` entry, from `pluto2 -export-node-info` as an
/// operator gets it (creating its data directory and keys).
fn export(node: &Planned, gateway: bool) -> Result<serde_json::Value, TestnetError> {
    let mut cmd = Command::new(program()?);
    cmd.arg("-name")
        .arg(node.onion.as_str())
        .arg("-short-name")
        .arg(node.name)
        .arg("-data-dir")
        .arg(&node.data_dir);
    if gateway {
        cmd.arg("-gateway");
    }
    let out = cmd
        .arg("-export-node-info")
        .output()
        .map_err(|e| software(format!("cannot run pluto2 -export-node-info: {e}")))?;
    if !out.status.success() {
        return fail(format!(
            "{}: -export-node-info failed: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        software(format!(
            "{}: -export-node-info printed no entry: {e}",
            node.name
        ))
    })
}

/// Writes `nodes.json` (serial, a validity of thirty days) and signs it
/// with a throwaway operator key, as `pluto2 pki sign` does; returns the
/// key's public half for `-pki-trust`.
fn directory(
    dir: &Path,
    entries: Vec<serde_json::Value>,
    nodes: usize,
) -> Result<(PathBuf, String), TestnetError> {
    let now = time::OffsetDateTime::now_utc();
    let stamp = |t: time::OffsetDateTime| {
        t.replace_nanosecond(0)
            .expect("zero is a nanosecond")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("a UTC time formats")
    };
    let document = serde_json::json!({
        "serial": now.unix_timestamp(),
        "issued": stamp(now - time::Duration::minutes(5)),
        "expires": stamp(now + time::Duration::days(30)),
        "nodes": entries,
        "params": params(nodes),
    });
    let pki = dir.join("nodes.json");
    std::fs::write(&pki, serde_json::to_vec_pretty(&document).expect("json"))
        .map_err(|e| software(format!("{}: {e}", pki.display())))?;
    let signed = crate::pki_cli::run(&PkiCommand::Sign(PkiSignArgs {
        key: PkiKeyArgs {
            key: dir.join("operator.key"),
        },
        file: pki.clone(),
    }))
    .map_err(|f| software(f.message))?;
    Ok((pki, signed.stdout))
}

/// Starts one member as a process of its own group (so a Ctrl-C in the
/// terminal reaches `testnet` alone, which then stops each in order),
/// its stderr appended to `DATA_DIR/log`.
fn spawn(member: &Member) -> Result<Child, TestnetError> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&member.data_dir)
        .map_err(|e| software(format!("{}: {e}", member.data_dir.display())))?;
    let log_path = member.data_dir.join("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| software(format!("{}: {e}", log_path.display())))?;
    Command::new(program()?)
        .args(&member.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| software(format!("{}: cannot start pluto2: {e}", member.name)))
}

/// The last lines of a member's log, for an error that says why.
fn log_tail(member: &Member) -> String {
    let text = std::fs::read_to_string(member.data_dir.join("log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// The arguments of node `p` in a network whose links go through `socks`.
fn node_args(
    p: &Planned,
    pki: &Path,
    trust: &str,
    socks: SocketAddr,
    gateway: bool,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-name",
        p.onion.as_str(),
        "-short-name",
        p.name,
        "-sphinx",
        "-pki-file",
        &pki.display().to_string(),
        "-pki-trust",
        trust,
        "-data-dir",
        &p.data_dir.display().to_string(),
        "-addr",
        &format!("127.0.0.1:{}", p.smtp),
        "-node",
        &format!("127.0.0.1:{}", p.link),
        "-tor-socks",
        &socks.to_string(),
        "-metrics",
        &format!("127.0.0.1:{}", p.metrics),
        // Exits deliver a second or so after a message is complete:
        // a testnet shows the mixnet, not the exit's batching.
        "-batch-window",
        "1s",
        "-jitter-max",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    if gateway {
        args.push("-gateway".into());
    }
    args
}

/// The arguments of the client: `-client` via the gateway `via`, SMTP on
/// `smtp`, links through `socks` like the nodes'.
fn client_args(
    dir: &Path,
    pki: &Path,
    trust: &str,
    socks: SocketAddr,
    smtp: u16,
    via: &str,
) -> Vec<String> {
    [
        "-sphinx",
        "-client",
        "-via",
        via,
        "-pki-file",
        &pki.display().to_string(),
        "-pki-trust",
        trust,
        "-data-dir",
        &dir.join(CLIENT).display().to_string(),
        "-addr",
        &format!("127.0.0.1:{smtp}"),
        "-tor-socks",
        &socks.to_string(),
        // As the nodes: the client's own batching would hold mail for
        // half a minute before its first packet.
        "-batch-window",
        "1s",
        "-jitter-max",
        "1s",
    ]
    .map(String::from)
    .to_vec()
}

/// Waits until every member answers on its SMTP port, all within one
/// [`START_PATIENCE`]; fails with the end of the log of one whose process
/// exited first (those in `children`) or that did not answer in time.
async fn until_answering(
    members: &[Member],
    children: &mut HashMap<String, Child>,
) -> Result<(), TestnetError> {
    let deadline = Instant::now() + START_PATIENCE;
    for member in members {
        loop {
            if let Some(child) = children.get_mut(&member.name)
                && let Ok(Some(status)) = child.try_wait()
            {
                return fail(format!(
                    "{} exited at start ({status}): {}",
                    member.name,
                    log_tail(member)
                ));
            }
            let dial = tokio::net::TcpStream::connect(("127.0.0.1", member.smtp));
            if dial.await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return fail(format!(
                    "{} did not answer on 127.0.0.1:{} within {START_PATIENCE:?}: {}",
                    member.name,
                    member.smtp,
                    log_tail(member)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Sends SIGTERM to every member still running, waits for them (bounded),
/// then SIGKILLs what is left.
fn stop_members(state: &State) {
    let running: Vec<(u32, &Member)> = state
        .members
        .iter()
        .filter_map(|m| m.alive().map(|pid| (pid, m)))
        .collect();
    for (pid, _) in &running {
        signal(*pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + STOP_PATIENCE;
    for (pid, m) in &running {
        while m.alive().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if m.alive().is_some() {
            signal(*pid, rustix::process::Signal::KILL);
        }
    }
}

/// SIGTERM to every tor running on `dir` (by command line), until none
/// is left (bounded by [`STOP_PATIENCE`]).
fn stop_stray_tors(dir: &Path) -> Result<(), TestnetError> {
    let deadline = Instant::now() + STOP_PATIENCE;
    loop {
        let left = tor::tors_running_in(dir)
            .map_err(|e| software(format!("stopping the private Tor network: {e}")))?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return fail(format!(
                "stopping the private Tor network: {} tor(s) still running in {}",
                left.len(),
                dir.display()
            ));
        }
        for (pid, _) in &left {
            signal(*pid as u32, rustix::process::Signal::TERM);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// With `-tor`: a private Tor network in `DIR/tor` with an onion service
/// per node (its link port as 9999, its SMTP port as 25) and one for the
/// sink (25); the nodes and the sink take those services' names.
async fn start_tor(
    dir: &Path,
    planned: &mut [Planned],
    sink_onion: &mut OnionName,
    sink: SocketAddr,
) -> Result<tor::TorNet, TestnetError> {
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut services: Vec<tor::Service> = planned
        .iter()
        .map(|p| {
            tor::Service::new(
                p.name,
                vec![(LINK_PORT, local(p.link)), (25, local(p.smtp))],
            )
        })
        .collect();
    services.push(tor::Service::new("sink", vec![(25, sink)]));
    println!(
        "starting a private Tor network in {} (half a minute or so)",
        dir.join("tor").display()
    );
    let net = tor::TorNet::start(
        &dir.join("tor"),
        tor::Plan {
            services,
            ..tor::Plan::default()
        },
    )
    .await
    .map_err(|e| software(format!("-tor: {e}")))?;
    let onion = |name: &str| -> Result<OnionName, TestnetError> {
        let text = net
            .onion(name)
            .map_err(|e| software(format!("-tor: {e}")))?;
        OnionName::parse(&text).map_err(|e| software(format!("-tor: {name}: {e}")))
    };
    for p in planned.iter_mut() {
        p.onion = onion(p.name)?;
    }
    *sink_onion = onion("sink")?;
    Ok(net)
}

/// The network: plan, start, print, run until Ctrl-C, stop.
async fn network(nodes: usize, dir: &Path, tor: bool) -> Result<(), TestnetError> {
    let dir = prepare(dir)?;
    let mut state = State {
        pid: Some(std::process::id()),
        started: state::process_start(std::process::id()),
        tor,
        members: Vec::new(),
    };
    state.write(&dir)?;
    let stop = CancellationToken::new();
    let mut tor_net = None;
    // Ctrl-C and SIGTERM are ours from here on, also while the network is
    // still coming up (half a minute with -tor): whenever they come, what was
    // started is stopped below, instead of the signal killing this process
    // and leaving its nodes running.
    let watch = |kind| {
        tokio::signal::unix::signal(kind)
            .map_err(|e| software(format!("cannot watch signals: {e}")))
    };
    use tokio::signal::unix::SignalKind;
    let mut interrupt = watch(SignalKind::interrupt())?;
    let mut terminate = watch(SignalKind::terminate())?;
    // A closed terminal or SSH session: the nodes, in process groups of
    // their own, would not hear it and would keep running.
    let mut hangup = watch(SignalKind::hangup())?;
    let mut quit = watch(SignalKind::quit())?;
    let result = tokio::select! {
        r = serve(nodes, &dir, tor, &mut tor_net, &mut state, stop.clone()) => r,
        _ = interrupt.recv() => Ok(()),
        _ = terminate.recv() => Ok(()),
        _ = hangup.recv() => Ok(()),
        _ = quit.recv() => Ok(()),
    };
    println!("stopping the testnet");
    stop.cancel();
    // Whatever happened, nothing started here keeps running: the members
    // this process started, and those the state on disk names (`start`
    // brought them back), as long as it is still this testnet's (a
    // directory removed and reused under a running testnet holds
    // another's). A member is signalled only while it is that member.
    let me = (state.pid, state.started);
    let ours = |s: &State| (s.pid, s.started) == me;
    // Under the lock: the members `start` brought back, then the state
    // marked stopping (no pid), so no `kill` or `start` acts any more.
    // Trouble with the file (DIR removed under us) must not keep the
    // members from being stopped: what is in memory is stopped anyway.
    let on_disk = {
        let _lock = state::lock(&dir).ok();
        let on_disk = State::read(&dir).ok().flatten().filter(ours);
        if let Some(disk) = &on_disk {
            let _ = State {
                pid: None,
                ..disk.clone()
            }
            .write(&dir);
        }
        on_disk
    };
    let mine = on_disk.is_some();
    let stopping = [Some(state.clone()), on_disk.clone()];
    tokio::task::spawn_blocking(move || stopping.iter().flatten().for_each(stop_members))
        .await
        .map_err(|e| software(e.to_string()))?;
    let mut ended = on_disk.unwrap_or(state);
    ended.pid = None;
    for m in &mut ended.members {
        m.pid = None;
    }
    let written = if mine {
        let _lock = state::lock(&dir).ok();
        ended.write(&dir).map_err(TestnetError::from)
    } else {
        Ok(())
    };
    // The Tor network last, once no node dials through it any more.
    if let Some(mut net) = tor_net {
        net.shutdown()
            .await
            .map_err(|e| software(format!("stopping the private Tor network: {e}")))?;
    } else if tor {
        // Its start was cut short: dropping it stopped the tors it knew,
        // but one forked a moment before may not have written its pid
        // file yet. Such tors are found by their command line.
        let tor_dir = dir.join("tor");
        tokio::task::spawn_blocking(move || stop_stray_tors(&tor_dir))
            .await
            .map_err(|e| software(e.to_string()))??;
    }
    // Why it stopped comes first; a state it could not mark stopped next.
    result.and(written)
}

async fn serve(
    nodes: usize,
    dir: &Path,
    tor: bool,
    tor_net: &mut Option<tor::TorNet>,
    state: &mut State,
    stop: CancellationToken,
) -> Result<(), TestnetError> {
    let bind = |what: &str, e: std::io::Error| {
        software(format!("cannot listen for the {what} on 127.0.0.1: {e}"))
    };
    let sink_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| bind("sink", e))?;
    let sink_addr = sink_listener.local_addr().map_err(|e| bind("sink", e))?;

    let mut planned = Vec::new();
    for name in &NAMES[..nodes] {
        planned.push(Planned {
            name,
            onion: made_up_onion(),
            smtp: free_port()?,
            link: free_port()?,
            metrics: free_port()?,
            data_dir: dir.join(name),
        });
    }
    let client_smtp = free_port()?;
    let mut sink_onion = made_up_onion();
    let socks = if tor {
        let net = start_tor(dir, &mut planned, &mut sink_onion, sink_addr).await?;
        let socks = net.socks();
        *tor_net = Some(net);
        socks
    } else {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| bind("SOCKS5 server", e))?;
        let socks = listener
            .local_addr()
            .map_err(|e| bind("SOCKS5 server", e))?;
        let mut routes = socks::Routes {
            other_onions_smtp: Some(sink_addr),
            ..socks::Routes::default()
        };
        for p in &planned {
            routes.exact.insert(
                (p.onion.as_str().to_string(), LINK_PORT),
                ([127, 0, 0, 1], p.link).into(),
            );
        }
        tokio::spawn(socks::serve(listener, Arc::new(routes), stop.clone()));
        socks
    };
    let mut entries = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        entries.push(export(p, i == 0)?);
    }
    let (pki, trust) = directory(dir, entries, nodes)?;

    let sink_dir = dir.join("sink");
    let the_sink = Arc::new(
        sink::Sink::open(&sink_dir)
            .map_err(|e| software(format!("{}: {e}", sink_dir.display())))?,
    );
    let (delivered_tx, mut delivered) = tokio::sync::mpsc::channel(64);
    tokio::spawn(sink::serve(
        sink_listener,
        the_sink,
        delivered_tx,
        stop.clone(),
    ));

    for (i, p) in planned.iter().enumerate() {
        state.members.push(Member {
            name: p.name.to_string(),
            data_dir: p.data_dir.clone(),
            smtp: p.smtp,
            args: node_args(p, &pki, &trust, socks, i == 0),
            pid: None,
        });
    }
    state.members.push(Member {
        name: CLIENT.into(),
        data_dir: dir.join(CLIENT),
        smtp: client_smtp,
        args: client_args(dir, &pki, &trust, socks, client_smtp, planned[0].name),
        pid: None,
    });
    let mut children = HashMap::new();
    for m in &mut state.members {
        let child = spawn(m)?;
        m.pid = Some(child.id());
        children.insert(m.name.clone(), child);
    }
    {
        let _lock = state::lock(dir)?;
        state.write(dir)?;
    }
    until_answering(&state.members, &mut children).await?;
    if let Some(net) = tor_net.as_ref() {
        // Ready means mail can cross: every node's link service and the
        // sink answer through the private Tor network.
        println!("waiting for the onion services to answer through the private Tor network");
        for p in &planned {
            net.until_onion_connects(p.onion.as_str(), LINK_PORT)
                .await
                .map_err(|e| software(format!("{}: {e}", p.name)))?;
        }
        net.until_onion_connects(sink_onion.as_str(), 25)
            .await
            .map_err(|e| software(format!("the sink: {e}")))?;
    }

    print!("{}", banner(dir, &planned, &sink_onion, client_smtp, tor));
    use std::io::Write;
    let _ = std::io::stdout().flush();

    // Runs until `network` drops it on Ctrl-C or SIGTERM.
    let mut reap = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            Some(path) = delivered.recv() => {
                println!("delivered: {}", path.display());
                let _ = std::io::stdout().flush();
            }
            _ = reap.tick() => {
                // Reap members that ended (killed by `testnet kill`, or
                // crashed) so they leave no zombie, and say so.
                children.retain(|name, child| match child.try_wait() {
                    Ok(Some(status)) => {
                        println!("{name} stopped ({status})");
                        false
                    }
                    _ => true,
                });
            }
        }
    }
}

/// The lines printed once the network is up.
fn banner(
    dir: &Path,
    planned: &[Planned],
    sink_onion: &OnionName,
    client_smtp: u16,
    tor: bool,
) -> String {
    let links = if tor {
        "links are onion services of a private Tor network on 127.0.0.1"
    } else {
        "a test network on 127.0.0.1"
    };
    let mut out = format!(
        "pluto2 testnet: {} nodes and a client in {} ({links}: nothing here is anonymous)\n",
        planned.len(),
        dir.display()
    );
    for (i, p) in planned.iter().enumerate() {
        let role = if i == 0 { "  gateway" } else { "" };
        out.push_str(&format!(
            "  {:<7} smtp 127.0.0.1:{:<5}  metrics http://127.0.0.1:{}/metrics{role}\n",
            p.name, p.smtp, p.metrics
        ));
    }
    out.push_str(&format!(
        "  {:<7} smtp 127.0.0.1:{:<5}  wraps its own mail, via {}\n",
        CLIENT, client_smtp, planned[0].name
    ));
    let sink = dir.join("sink");
    out.push_str(&format!(
        "mail to any address at {sink_onion} arrives in {}/ (a file per message)\n",
        sink.display()
    ));
    out.push_str(&format!(
        "try:   swaks --server 127.0.0.1:{client_smtp} --from me@example.org --to you@{sink_onion}\n"
    ));
    // The program as it was typed (`./target/release/pluto2`), so the
    // line works when pasted.
    let me = std::env::args().next().unwrap_or_else(|| "pluto2".into());
    out.push_str(&format!(
        "fault: {me} testnet kill {n} -dir {d}   then   {me} testnet start {n} -dir {d}\n",
        n = planned[1].name,
        d = dir.display()
    ));
    out.push_str("ready; Ctrl-C stops every process of the testnet\n");
    out
}

/// Reads a running testnet's state and finds `node.name` in it.
/// Holds the state's lock (see [`state::lock`]) for as long as the
/// returned file lives.
fn running(node: &TestnetNode) -> Result<(PathBuf, State, std::fs::File), TestnetError> {
    let shown = node.dir.display();
    let Ok(dir) = node.dir.canonicalize() else {
        return refuse(format!(
            "-dir {shown}: no such directory; give the -dir of a running testnet"
        ));
    };
    if !State::path(&dir).exists() {
        return refuse(format!(
            "-dir {shown}: no testnet there; start one with pluto2 testnet -dir {shown}"
        ));
    }
    let lock = state::lock(&dir)?;
    let Some(state) = State::read(&dir)? else {
        return refuse(format!(
            "-dir {shown}: no testnet there; start one with pluto2 testnet -dir {shown}"
        ));
    };
    if state.testnet_alive().is_none() {
        return refuse(format!(
            "-dir {shown}: its testnet is not running; start it with pluto2 testnet -dir {shown}"
        ));
    }
    if state.member(&node.name).is_none() {
        return refuse(format!(
            "{}: no such node in {shown}; its nodes: {}",
            node.name,
            state.names()
        ));
    }
    Ok((dir, state, lock))
}

/// `testnet kill NODE`: SIGKILL, then wait (bounded) until it is gone.
fn kill(node: &TestnetNode) -> Result<String, TestnetError> {
    let (dir, mut state, _lock) = running(node)?;
    let member = state.member(&node.name).expect("checked").clone();
    let Some(pid) = member.alive() else {
        return refuse(format!(
            "{}: not running; pluto2 testnet start {} -dir {} starts it",
            node.name,
            node.name,
            node.dir.display()
        ));
    };
    signal(pid, rustix::process::Signal::KILL);
    let deadline = Instant::now() + STOP_PATIENCE;
    while member.alive().is_some() {
        if Instant::now() > deadline {
            return fail(format!(
                "{}: still running {STOP_PATIENCE:?} after SIGKILL (pid {pid})",
                node.name
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    state.member_mut(&node.name).expect("checked").pid = None;
    state.write(&dir)?;
    Ok(format!("{} killed (pid {pid}, SIGKILL)", node.name))
}

/// `testnet start NODE`: the same process again, on its data directory;
/// returns once it answers on its SMTP port.
fn start_one(node: &TestnetNode) -> Result<String, TestnetError> {
    let (dir, mut state, lock) = running(node)?;
    let member = state.member(&node.name).expect("checked").clone();
    if let Some(pid) = member.alive() {
        return refuse(format!("{}: already running (pid {pid})", node.name));
    }
    let child = spawn(&member)?;
    let pid = child.id();
    state.member_mut(&node.name).expect("checked").pid = Some(pid);
    state.write(&dir)?;
    drop(lock);
    let mut children = HashMap::from([(member.name.clone(), child)]);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| software(format!("cannot start the runtime: {e}")))?
        .block_on(until_answering(
            std::slice::from_ref(&member),
            &mut children,
        ))?;
    // Dropping the handle neither waits nor kills: the node outlives this
    // command, and the testnet stops it by pid.
    drop(children);
    Ok(format!(
        "{} started (pid {pid}, smtp 127.0.0.1:{})",
        node.name, member.smtp
    ))
}
