//! A private Tor network on 127.0.0.1 from Debian's `tor`, so that links
//! and deliveries go through real onion services without touching the
//! Tor network: three directory authorities (relays too), two relays, one
//! exit, a client tor whose SocksPort pluto2 uses (`-tor-socks`), and a
//! service tor hosting every onion service of the [`Plan`].
//! `pluto2 testnet -tor` runs on it, and so does `tests/tor_network.rs`.
//!
//! Why it looks the way it does (each point was learnt the hard way):
//! - Every port is one [`free_port`] picked on 127.0.0.1 below 32768: the
//!   ephemeral range once made a restarted tor clash with a client socket.
//! - Every DataDirectory lives under the one directory the caller gives,
//!   which must start empty: stale `cached-descriptors` files override
//!   microdescriptors after a configuration change.
//! - Every tor runs daemonized with a PidFile and is stopped by the pid in
//!   that file, and only if `/proc/PID/cmdline` is that tor's own command
//!   line (a pid can be reused by any program). [`TorNet`]'s `Drop` stops
//!   them too, [`TorNet::shutdown`] checks that none is left, and
//!   [`stop_all_in`] stops a network from its directory alone, for one
//!   left behind by a process that crashed. Each tor also watches the
//!   process that started it (`__OwningControllerProcess`) and exits
//!   within about 15 s once that process is gone.
//! - Every wait has a deadline, and its error names what it waited for
//!   and ends with the last lines of the log of the tor concerned.
//! - No vanguards-lite: see [`common_lines`].
//!
//! Starting takes processes and seconds (12–24 s to a bootstrapped client
//! on a 2-core machine, a few more until an onion service answers), so
//! this module is an edge: nothing in the daemon uses it.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::relay::socks::SocksDialer;

/// Bound on the network's bootstrap: 12–24 s were measured to a
/// bootstrapped client on a busy 2-core machine; this leaves room for a
/// slower one without letting a broken network hang its caller.
pub const BOOTSTRAP_PATIENCE: Duration = Duration::from_secs(120);
/// Bound on an onion service answering once its tor bootstrapped
/// (descriptor published and fetched, introduction and rendezvous).
pub const ONION_PATIENCE: Duration = Duration::from_secs(90);
/// Bound on one `tor-gencert` or `tor` command run to completion (key
/// generation, or a tor until it has daemonized).
const COMMAND_PATIENCE: Duration = Duration::from_secs(30);
/// Bound on a launched tor writing its pid file.
const PID_FILE_PATIENCE: Duration = Duration::from_secs(20);
/// How long a tor gets to exit after SIGTERM before SIGKILL
/// (`ShutdownWaitLength 0` makes it exit at once).
const TERM_PATIENCE: Duration = Duration::from_secs(10);
/// How long a process gets to vanish after SIGKILL.
const KILL_PATIENCE: Duration = Duration::from_secs(5);
/// Lines of a tor's log shown in an error.
const LOG_TAIL_LINES: usize = 15;
/// No port at or above this is handed out (the ephemeral range starts at
/// 32768).
const PORT_CEILING: u16 = 32_000;

/// The client tor: its SocksPort is the one pluto2 is given.
pub const CLIENT: &str = "client";
/// The tor hosting every onion service of the plan.
pub const SERVICES: &str = "services";
/// The file in each tor's DataDirectory that holds its pid.
pub const PID_FILE: &str = "tor.pid";
/// Each tor's configuration, beside its pid file.
const TORRC: &str = "torrc";

/// An onion service hosted by the service tor.
#[derive(Debug, Clone)]
pub struct Service {
    /// Names its HiddenServiceDir (`hs_NAME`): letters, digits, `-`, `_`.
    pub name: String,
    /// `HiddenServicePort` lines: virtual port → target, which must be a
    /// loopback address (the network never reaches beyond this machine).
    pub ports: Vec<(u16, SocketAddr)>,
    /// `HiddenServiceExportCircuitID haproxy`: the target first reads a
    /// PROXY v1 header whose source address carries the circuit id (what
    /// pluto2's `-proxy-protocol` expects).
    pub proxy_header: bool,
}

impl Service {
    /// A service without the PROXY header.
    pub fn new(name: impl Into<String>, ports: Vec<(u16, SocketAddr)>) -> Service {
        Service {
            name: name.into(),
            ports,
            proxy_header: false,
        }
    }
}

/// What the network is for.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub services: Vec<Service>,
    /// Ports the exit connects to, by name or address. Empty: the exit
    /// takes nothing, which is all a network of onion services needs.
    pub exit_ports: Vec<u16>,
    /// The exit's name server (UDP), for names clients ask the exit to
    /// connect to. `None`: a loopback port where nothing answers, so the
    /// exit never asks a real resolver.
    pub resolver: Option<SocketAddr>,
}

/// Why the network could not be built, reached or stopped. Every message
/// says what was tried; a failed wait also names what it waited for and
/// ends with the last lines of the log of the tor concerned.
#[derive(Debug, thiserror::Error)]
pub enum TorNetError {
    #[error("bad Tor network plan: {0}")]
    Plan(String),
    #[error(
        "{} is not empty: a private Tor network starts from empty DataDirectories \
         (stale cached descriptors override a new configuration); remove it first",
        .0.display()
    )]
    DirNotEmpty(PathBuf),
    #[error("{what} {}: {source}", .path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot run {program}: {source} (Debian's `tor` package provides tor and tor-gencert)")]
    Missing {
        program: &'static str,
        source: io::Error,
    },
    #[error("{what} failed ({status}): {output}{log}")]
    Failed {
        what: String,
        status: String,
        output: String,
        log: String,
    },
    #[error("no free port on 127.0.0.1 below {PORT_CEILING}")]
    NoFreePort,
    #[error("gave up after {} s waiting for {what}; last: {last}{log}", .waited.as_secs())]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
        log: String,
    },
    #[error("no tor named {0:?} in this network")]
    NoSuchTor(String),
    #[error("no onion service named {0:?} in this network")]
    NoSuchService(String),
    #[error("cannot signal tor {pid}: {source}")]
    Signal { pid: i32, source: io::Error },
    #[error("stopping a tor: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("tor processes still running on {}: {left:?}", .dir.display())]
    Left {
        dir: PathBuf,
        left: Vec<(i32, String)>,
    },
}

fn file_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TorNetError {
    let path = path.to_path_buf();
    move |source| TorNetError::File { what, path, source }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Authority,
    Relay,
    Exit,
    Client,
    Services,
}

/// One tor process: its DataDirectory (torrc, pid file and log inside)
/// and its ports.
#[derive(Debug)]
struct Tor {
    name: String,
    role: Role,
    data: PathBuf,
    control: u16,
    /// Relays, authorities and the exit.
    or_port: Option<u16>,
    /// Authorities.
    dir_port: Option<u16>,
}

impl Tor {
    fn torrc(&self) -> PathBuf {
        self.data.join(TORRC)
    }

    fn pid_file(&self) -> PathBuf {
        self.data.join(PID_FILE)
    }

    fn log_file(&self) -> PathBuf {
        self.data.join("notice.log")
    }

    /// The service tor's directory for one onion service.
    fn hs_dir(&self, service: &str) -> PathBuf {
        self.data.join(format!("hs_{service}"))
    }

    /// The end of its log, framed for an error message.
    fn log_section(&self) -> String {
        format!(
            "\n--- last lines of tor {}'s log ({}) ---\n{}",
            self.name,
            self.log_file().display(),
            log_tail(&self.log_file())
        )
    }
}

/// The last lines of a log file ("" if it cannot be read).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// A running private Tor network. Dropping it stops every tor (blocking,
/// up to a few seconds); [`TorNet::shutdown`] does the same and checks.
#[derive(Debug)]
pub struct TorNet {
    dir: PathBuf,
    tors: Vec<Tor>,
    services: Vec<String>,
    socks: SocketAddr,
    plain_socks: SocketAddr,
    bootstrap: Duration,
    stopped: bool,
}

/// A port on 127.0.0.1 below 32768 that is free for TCP and UDP right now.
/// Ports are handed out once per process, from a start that depends on the
/// process id, so processes running side by side rarely meet.
pub fn free_port() -> Result<u16, TorNetError> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        12_000 + (std::process::id() % 800) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= PORT_CEILING {
            NEXT.store(PORT_CEILING, Ordering::SeqCst);
            return Err(TorNetError::NoFreePort);
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return Ok(port);
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Refuses a plan tor would refuse later, less clearly, or that would
/// reach beyond this machine.
fn check_plan(plan: &Plan) -> Result<(), TorNetError> {
    let bad = |why: String| Err(TorNetError::Plan(why));
    for (i, s) in plan.services.iter().enumerate() {
        let name_ok = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return bad(format!(
                "service name {:?}: use 1-64 letters, digits, '-' or '_'",
                s.name
            ));
        }
        if plan.services[..i].iter().any(|o| o.name == s.name) {
            return bad(format!("two services named {:?}", s.name));
        }
        if s.ports.is_empty() {
            return bad(format!("service {:?} maps no port", s.name));
        }
        for (virt, target) in &s.ports {
            if *virt == 0 || target.port() == 0 {
                return bad(format!("service {:?}: port 0 in {virt} → {target}", s.name));
            }
            if !target.ip().is_loopback() {
                return bad(format!(
                    "service {:?}: target {target} is not a loopback address",
                    s.name
                ));
            }
        }
    }
    if plan.exit_ports.contains(&0) {
        return bad("exit port 0".into());
    }
    if let Some(r) = plan.resolver
        && !r.ip().is_loopback()
    {
        return bad(format!("resolver {r} is not a loopback address"));
    }
    Ok(())
}

/// What every torrc of one network shares besides its own lines.
struct Shared<'a> {
    /// One `DirAuthority` line per authority.
    authorities: &'a str,
    plan: &'a Plan,
    resolv_conf: &'a Path,
    socks: u16,
    plain_socks: u16,
    /// The process whose end makes every tor exit.
    owner: u32,
}

/// Lines every tor of the network shares. Vanguards-lite (on by default
/// in Tor since 0.4.8) pins an onion service's second hops to a few
/// layer-2 guards; on a network of six relays, all on one address, the
/// service sometimes finds no second hop for its circuits ("Failed to find
/// node for hop #2") and its descriptor is not published in time. A
/// private test network does not need it.
fn common_lines(tor: &Tor, shared: &Shared<'_>) -> String {
    let data = tor.data.display();
    format!(
        "TestingTorNetwork 1\n\
         Nickname {name}\n\
         DataDirectory {data}\n\
         PidFile {pid}\n\
         RunAsDaemon 1\n\
         __OwningControllerProcess {owner}\n\
         Log notice file {log}\n\
         ControlPort 127.0.0.1:{control}\n\
         CookieAuthentication 1\n\
         PathsNeededToBuildCircuits 0.67\n\
         VanguardsLiteEnabled 0\n\
         TestingDirAuthVoteExit *\n\
         TestingDirAuthVoteHSDir *\n\
         TestingDirAuthVoteGuard *\n\
         TestingMinExitFlagThreshold 0\n\
         V3AuthNIntervalsValid 2\n\
         ShutdownWaitLength 0\n\
         Sandbox 0\n\
         SafeLogging 1\n\
         {authorities}",
        name = tor.name,
        pid = tor.pid_file().display(),
        owner = shared.owner,
        log = tor.log_file().display(),
        control = tor.control,
        authorities = shared.authorities,
    )
}

fn relay_lines(or_port: u16) -> String {
    format!(
        "SocksPort 0\n\
         ORPort 127.0.0.1:{or_port}\n\
         Address 127.0.0.1\n\
         AssumeReachable 1\n\
         ContactInfo pluto2 test network <nobody@pluto2.invalid>\n"
    )
}

/// The whole torrc of one tor. Pure: every port and path is decided
/// before.
fn torrc(tor: &Tor, shared: &Shared<'_>) -> String {
    let mut rc = common_lines(tor, shared);
    let or_port = tor.or_port.unwrap_or(0);
    // `write!` to a String cannot fail.
    match tor.role {
        Role::Authority => {
            rc.push_str(&relay_lines(or_port));
            let _ = write!(
                rc,
                "DirPort 127.0.0.1:{}\n\
                 AuthoritativeDirectory 1\n\
                 V3AuthoritativeDirectory 1\n\
                 ExitRelay 0\n\
                 TestingV3AuthInitialVotingInterval 10\n\
                 TestingV3AuthInitialVoteDelay 2\n\
                 TestingV3AuthInitialDistDelay 2\n\
                 V3AuthVotingInterval 10\n\
                 V3AuthVoteDelay 2\n\
                 V3AuthDistDelay 2\n",
                tor.dir_port.unwrap_or(0)
            );
        }
        Role::Relay => {
            rc.push_str(&relay_lines(or_port));
            rc.push_str("ExitRelay 0\n");
        }
        Role::Exit => {
            rc.push_str(&relay_lines(or_port));
            // Clients choose an exit by the ports its policy summary
            // accepts for any address, so each port is accepted for all
            // (`accept 127.0.0.1:*` alone makes clients believe no exit
            // takes a host name), and private addresses are not rejected
            // first.
            rc.push_str("ExitRelay 1\nExitPolicyRejectPrivate 0\n");
            for port in &shared.plan.exit_ports {
                let _ = writeln!(rc, "ExitPolicy accept *:{port}");
            }
            let _ = write!(
                rc,
                "ExitPolicy reject *:*\n\
                 OutboundBindAddressExit 127.0.0.1\n\
                 ServerDNSResolvConfFile {}\n\
                 ServerDNSDetectHijacking 0\n\
                 ServerDNSTestAddresses\n\
                 ServerDNSAllowNonRFC953Hostnames 1\n",
                shared.resolv_conf.display()
            );
        }
        Role::Client => {
            // ExtendedErrors: Tor's onion-specific replies 0xF0–0xF7,
            // which tell pluto2 a dead onion from a key Tor rejects.
            // IsolateSOCKSAuth: one circuit per SOCKS username/password.
            let _ = writeln!(
                rc,
                "SocksPort 127.0.0.1:{} IsolateSOCKSAuth ExtendedErrors",
                shared.socks
            );
            // The same without ExtendedErrors, to show what a torrc
            // without it makes of an onion (never given to pluto2).
            let _ = writeln!(
                rc,
                "SocksPort 127.0.0.1:{} IsolateSOCKSAuth",
                shared.plain_socks
            );
        }
        Role::Services => {
            rc.push_str("SocksPort 0\n");
            for s in &shared.plan.services {
                let _ = writeln!(rc, "HiddenServiceDir {}", tor.hs_dir(&s.name).display());
                for (virt, target) in &s.ports {
                    let _ = writeln!(rc, "HiddenServicePort {virt} {target}");
                }
                if s.proxy_header {
                    rc.push_str("HiddenServiceExportCircuitID haproxy\n");
                }
            }
        }
    }
    rc
}

/// Runs a command to its end within [`COMMAND_PATIENCE`]; its stdout on
/// success. `log` is appended to a failure (the log of the tor concerned).
async fn run(
    cmd: &mut tokio::process::Command,
    program: &'static str,
    what: &str,
    log: impl FnOnce() -> String,
) -> Result<String, TorNetError> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = match tokio::time::timeout(COMMAND_PATIENCE, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => return Err(TorNetError::Missing { program, source }),
        Err(_) => {
            return Err(TorNetError::Timeout {
                what: format!("{what} to finish"),
                waited: COMMAND_PATIENCE,
                last: "still running".into(),
                log: log(),
            });
        }
    };
    if !out.status.success() {
        return Err(TorNetError::Failed {
            what: what.to_string(),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            log: log(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn make_dir(path: &Path) -> Result<(), TorNetError> {
    // tor refuses a DataDirectory others can read.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(file_error("cannot create", path))
}

/// Keys and certificate for one authority; its `DirAuthority` line.
async fn authority_line(tor: &Tor, empty: &Path) -> Result<String, TorNetError> {
    let keys = tor.data.join("keys");
    let dir_port = tor.dir_port.unwrap_or(0);
    let or_port = tor.or_port.unwrap_or(0);
    let mut gencert = tokio::process::Command::new("tor-gencert");
    gencert
        .current_dir(&keys)
        .args(["--create-identity-key", "--passphrase-fd", "0"])
        .args(["-i", "authority_identity_key"])
        .args(["-s", "authority_signing_key"])
        .args(["-c", "authority_certificate", "-m", "12", "-a"])
        .arg(format!("127.0.0.1:{dir_port}"));
    let what = format!("tor-gencert for {}", tor.name);
    run(&mut gencert, "tor-gencert", &what, String::new).await?;
    let cert_path = keys.join("authority_certificate");
    let cert = std::fs::read_to_string(&cert_path)
        .map_err(file_error("cannot read the certificate", &cert_path))?;
    let v3 = cert
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .map(|f| f.trim().to_string())
        .ok_or_else(|| TorNetError::Failed {
            what: what.clone(),
            status: "no fingerprint line".into(),
            output: cert.clone(),
            log: String::new(),
        })?;
    let mut fp = tokio::process::Command::new("tor");
    fp.arg("--list-fingerprint")
        .arg("--DataDirectory")
        .arg(&tor.data)
        .args(["--ORPort", &format!("127.0.0.1:{or_port}")])
        .args(["--Nickname", &tor.name])
        .arg("-f")
        .arg(empty)
        .arg("--defaults-torrc")
        .arg(empty);
    let what = format!("tor --list-fingerprint for {}", tor.name);
    run(&mut fp, "tor", &what, String::new).await?;
    let fp_path = tor.data.join("fingerprint");
    let line = std::fs::read_to_string(&fp_path).map_err(file_error("cannot read", &fp_path))?;
    let Some(fingerprint) = line.split_whitespace().nth(1) else {
        return Err(TorNetError::Failed {
            what,
            status: "no fingerprint".into(),
            output: line,
            log: String::new(),
        });
    };
    Ok(format!(
        "DirAuthority {} orport={or_port} v3ident={v3} 127.0.0.1:{dir_port} {fingerprint}\n",
        tor.name
    ))
}

impl TorNet {
    /// Builds the network under `dir` (created if missing, which must be
    /// empty): keys and torrc files, every tor started, and waits until
    /// the client and the service tor have bootstrapped. Onion services
    /// may need more time to answer: see [`TorNet::until_onion_answers`].
    /// On failure every tor started so far is stopped again.
    pub async fn start(dir: &Path, plan: Plan) -> Result<TorNet, TorNetError> {
        check_plan(&plan)?;
        make_dir(dir)?;
        let not_empty = std::fs::read_dir(dir)
            .map_err(file_error("cannot read", dir))?
            .next()
            .is_some();
        if not_empty {
            return Err(TorNetError::DirNotEmpty(dir.to_path_buf()));
        }
        // Absolute paths in every torrc and command line, so that
        // `stop_all_in` and `tors_running_in` recognise them whatever
        // form of the path they are given.
        let dir = std::fs::canonicalize(dir).map_err(file_error("cannot resolve", dir))?;
        let mut tors = Vec::new();
        let mut add = |name: String, role: Role| -> Result<(), TorNetError> {
            let data = dir.join(&name);
            make_dir(&data.join("keys"))?;
            let relay = role != Role::Client && role != Role::Services;
            tors.push(Tor {
                name,
                role,
                data,
                control: free_port()?,
                or_port: if relay { Some(free_port()?) } else { None },
                dir_port: if role == Role::Authority {
                    Some(free_port()?)
                } else {
                    None
                },
            });
            Ok(())
        };
        for i in 0..3 {
            add(format!("auth{i}"), Role::Authority)?;
        }
        for i in 0..2 {
            add(format!("relay{i}"), Role::Relay)?;
        }
        add("exit".into(), Role::Exit)?;
        add(CLIENT.into(), Role::Client)?;
        add(SERVICES.into(), Role::Services)?;

        let empty = dir.join("empty.torrc");
        std::fs::write(&empty, "").map_err(file_error("cannot write", &empty))?;
        let mut authorities = String::new();
        for tor in tors.iter().filter(|t| t.role == Role::Authority) {
            authorities.push_str(&authority_line(tor, &empty).await?);
        }
        let resolver = match plan.resolver {
            Some(r) => r,
            None => loopback(free_port()?),
        };
        let resolv_conf = dir.join("resolv.conf");
        std::fs::write(&resolv_conf, format!("nameserver {resolver}\n"))
            .map_err(file_error("cannot write", &resolv_conf))?;
        let shared = Shared {
            authorities: &authorities,
            plan: &plan,
            resolv_conf: &resolv_conf,
            socks: free_port()?,
            plain_socks: free_port()?,
            owner: std::process::id(),
        };
        for tor in &tors {
            let path = tor.torrc();
            std::fs::write(&path, torrc(tor, &shared))
                .map_err(file_error("cannot write", &path))?;
        }
        let started = Instant::now();
        let mut net = TorNet {
            socks: loopback(shared.socks),
            plain_socks: loopback(shared.plain_socks),
            dir,
            tors,
            services: plan.services.iter().map(|s| s.name.clone()).collect(),
            bootstrap: Duration::ZERO,
            stopped: false,
        };
        // From here on a failure drops `net`, which stops what started.
        for i in 0..net.tors.len() {
            net.launch(i).await?;
        }
        let left = BOOTSTRAP_PATIENCE.saturating_sub(started.elapsed());
        net.until_bootstrapped(CLIENT, left).await?;
        let left = BOOTSTRAP_PATIENCE.saturating_sub(started.elapsed());
        net.until_bootstrapped(SERVICES, left).await?;
        net.bootstrap = started.elapsed();
        Ok(net)
    }

    /// The directory holding every DataDirectory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The client tor's SocksPort (`IsolateSOCKSAuth ExtendedErrors`): what
    /// pluto2 gets as `-tor-socks`.
    pub fn socks(&self) -> SocketAddr {
        self.socks
    }

    /// Another SocksPort of the client tor, without `ExtendedErrors`, to
    /// show what Tor answers without it. Never for pluto2.
    pub fn plain_socks(&self) -> SocketAddr {
        self.plain_socks
    }

    /// Time from the first tor launched to the client and the service tor
    /// both at bootstrap 100 %.
    pub fn bootstrap_time(&self) -> Duration {
        self.bootstrap
    }

    /// Every tor's name, in start order (`auth0`…, `relay0`…, `exit`,
    /// [`CLIENT`], [`SERVICES`]).
    pub fn tor_names(&self) -> impl Iterator<Item = &str> {
        self.tors.iter().map(|t| t.name.as_str())
    }

    /// The last lines of tor `name`'s log.
    pub fn log_tail(&self, name: &str) -> Result<String, TorNetError> {
        Ok(log_tail(&self.tor(name)?.log_file()))
    }

    fn index(&self, name: &str) -> Result<usize, TorNetError> {
        self.tors
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| TorNetError::NoSuchTor(name.to_string()))
    }

    fn tor(&self, name: &str) -> Result<&Tor, TorNetError> {
        Ok(&self.tors[self.index(name)?])
    }

    /// The `hostname` file of service `name` (for pluto2's
    /// `-hs-hostname-file`). It exists once the service tor has
    /// daemonized, so as soon as [`TorNet::start`] returned.
    pub fn hostname_file(&self, name: &str) -> Result<PathBuf, TorNetError> {
        if !self.services.iter().any(|s| s == name) {
            return Err(TorNetError::NoSuchService(name.to_string()));
        }
        Ok(self.tor(SERVICES)?.hs_dir(name).join("hostname"))
    }

    /// The onion name of service `name` (`….onion`).
    pub fn onion(&self, name: &str) -> Result<String, TorNetError> {
        let path = self.hostname_file(name)?;
        let text = std::fs::read_to_string(&path).map_err(file_error("cannot read", &path))?;
        Ok(text.trim().to_string())
    }

    /// Starts tor `i` from its torrc; returns once it has daemonized and
    /// written its pid file.
    async fn launch(&self, i: usize) -> Result<(), TorNetError> {
        let tor = &self.tors[i];
        let pid_file = tor.pid_file();
        match std::fs::remove_file(&pid_file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(file_error("cannot remove", &pid_file)(e));
            }
            _ => {}
        }
        let mut cmd = tokio::process::Command::new("tor");
        cmd.arg("-f")
            .arg(tor.torrc())
            .arg("--defaults-torrc")
            .arg(self.dir.join("empty.torrc"));
        let what = format!("starting tor {}", tor.name);
        let out = run(&mut cmd, "tor", &what, || tor.log_section()).await?;
        let deadline = Instant::now() + PID_FILE_PATIENCE;
        while read_pid(&pid_file).is_none() {
            if Instant::now() >= deadline {
                return Err(TorNetError::Timeout {
                    what: format!("tor {} to write {}", tor.name, pid_file.display()),
                    waited: PID_FILE_PATIENCE,
                    last: format!("tor said: {}", out.trim()),
                    log: tor.log_section(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits up to `within` until tor `name` reports bootstrap 100 % on its
    /// control port.
    pub async fn until_bootstrapped(
        &self,
        name: &str,
        within: Duration,
    ) -> Result<(), TorNetError> {
        let tor = self.tor(name)?;
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match tokio::time::timeout(left, bootstrap_phase(tor)).await {
                Ok(Ok(phase)) if phase.contains("PROGRESS=100 ") => return Ok(()),
                Ok(Ok(phase)) => phase,
                Ok(Err(e)) => format!("control port: {e}"),
                Err(_) => "control port: no answer in time".into(),
            };
            if Instant::now() >= deadline {
                return Err(TorNetError::Timeout {
                    what: format!("tor {name} to reach bootstrap 100 %"),
                    waited: within,
                    last,
                    log: tor.log_section(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits up to [`ONION_PATIENCE`] until `onion:port` greets with `220`
    /// through the client's SocksPort (descriptor published, introduction
    /// and rendezvous work): the SMTP services of a test network.
    pub async fn until_onion_answers(&self, onion: &str, port: u16) -> Result<(), TorNetError> {
        self.until_onion(onion, port, true).await
    }

    /// Waits up to [`ONION_PATIENCE`] until a SOCKS CONNECT to
    /// `onion:port` through the client's SocksPort succeeds: services that
    /// do not speak first, such as mixnet links.
    pub async fn until_onion_connects(&self, onion: &str, port: u16) -> Result<(), TorNetError> {
        self.until_onion(onion, port, false).await
    }

    async fn until_onion(&self, onion: &str, port: u16, greeting: bool) -> Result<(), TorNetError> {
        // Fresh SOCKS credentials per attempt (what pluto2 itself does):
        // a probe never shares a circuit with what its caller does next.
        let dialer = SocksDialer::new(self.socks, Duration::from_secs(60));
        let deadline = Instant::now() + ONION_PATIENCE;
        loop {
            let attempt = async {
                let stream = dialer
                    .connect(onion, port)
                    .await
                    .map_err(|e| e.to_string())?;
                if !greeting {
                    return Ok(());
                }
                let mut r = BufReader::new(stream);
                let mut line = String::new();
                match r.read_line(&mut line).await {
                    Ok(_) if line.starts_with("220") => {
                        let _ = r.get_mut().write_all(b"QUIT\r\n").await;
                        Ok(())
                    }
                    Ok(_) => Err(format!("greeting {line:?}")),
                    Err(e) => Err(format!("reading the greeting: {e}")),
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match tokio::time::timeout(left, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "the last attempt did not finish in time".into(),
            };
            if Instant::now() >= deadline {
                let what = if greeting {
                    "to greet with 220"
                } else {
                    "to take a connection"
                };
                let mut log = self.tor(SERVICES)?.log_section();
                log.push_str(&self.tor(CLIENT)?.log_section());
                return Err(TorNetError::Timeout {
                    what: format!("onion service {onion}:{port} {what} through Tor"),
                    waited: ONION_PATIENCE,
                    last,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops tor `name` by the pid in its pid file and waits until it is
    /// gone. Stopping a stopped tor does nothing.
    pub async fn stop(&self, name: &str) -> Result<(), TorNetError> {
        let tor = self.tor(name)?;
        let (pid_file, torrc) = (tor.pid_file(), tor.torrc());
        tokio::task::spawn_blocking(move || stop_tor(&pid_file, &torrc)).await??;
        Ok(())
    }

    /// Stops tor `name` if it runs, starts it again on its DataDirectory
    /// (cached consensus and keys: the same onion names) and waits for its
    /// bootstrap.
    pub async fn restart(&self, name: &str) -> Result<(), TorNetError> {
        self.stop(name).await?;
        self.launch(self.index(name)?).await?;
        self.until_bootstrapped(name, BOOTSTRAP_PATIENCE).await
    }

    /// Stops every tor, then checks that no tor started on this network's
    /// directory is left. The first failure is returned after every tor
    /// was tried.
    pub async fn shutdown(&mut self) -> Result<(), TorNetError> {
        self.stopped = true;
        let mut first = None;
        for i in 0..self.tors.len() {
            let name = self.tors[i].name.clone();
            if let Err(e) = self.stop(&name).await {
                first.get_or_insert(e);
            }
        }
        if let Some(e) = first {
            return Err(e);
        }
        let left = tors_running_in(&self.dir)?;
        if !left.is_empty() {
            return Err(TorNetError::Left {
                dir: self.dir.clone(),
                left,
            });
        }
        Ok(())
    }
}

impl Drop for TorNet {
    /// Also when its owner fails or panics: a failed start or test must not
    /// leave ten tors behind. Blocking, like any `Drop`; each tor exits at
    /// once on SIGTERM.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        for tor in &self.tors {
            let _ = stop_tor(&tor.pid_file(), &tor.torrc());
        }
    }
}

/// The pid in a pid file, if it holds one.
fn read_pid(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|pid| *pid > 0)
}

/// True while `pid` is a live process (a zombie counts as gone: it runs
/// no code and holds no port).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The arguments of a `/proc/PID/cmdline` (NUL-separated).
fn args(cmdline: &[u8]) -> impl Iterator<Item = &OsStr> {
    cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(OsStr::from_bytes)
}

fn is_tor_program(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name() == Some(OsStr::new("tor"))
}

/// Whether a command line is the tor started from `torrc`: the program is
/// `tor` and one argument is that very torrc. Anything else holding the
/// pid (a reused pid, another tor) is not ours to stop.
fn is_our_tor(cmdline: &[u8], torrc: &Path) -> bool {
    let mut args = args(cmdline);
    args.next().is_some_and(is_tor_program) && args.any(|a| a == torrc.as_os_str())
}

fn signal(pid: i32, sig: Signal) -> Result<(), TorNetError> {
    let Some(p) = Pid::from_raw(pid) else {
        return Ok(());
    };
    match rustix::process::kill_process(p, sig) {
        Ok(()) => Ok(()),
        // Gone between the check and the signal.
        Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(TorNetError::Signal {
            pid,
            source: e.into(),
        }),
    }
}

fn until_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Stops the tor whose pid is in `pid_file` if it is the one started from
/// `torrc`: SIGTERM, SIGKILL if it is still there after [`TERM_PATIENCE`].
/// Its pid if it stopped one. Blocking (a few tens of milliseconds for a
/// tor that exits at once).
fn stop_tor(pid_file: &Path, torrc: &Path) -> Result<Option<i32>, TorNetError> {
    let Some(pid) = read_pid(pid_file) else {
        return Ok(None);
    };
    let ours = alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| is_our_tor(&cmdline, torrc));
    if !ours {
        return Ok(None);
    }
    signal(pid, Signal::TERM)?;
    if !until_gone(pid, TERM_PATIENCE) {
        signal(pid, Signal::KILL)?;
        if !until_gone(pid, KILL_PATIENCE) {
            return Err(TorNetError::Timeout {
                what: format!("tor {pid} ({}) to exit after SIGKILL", torrc.display()),
                waited: TERM_PATIENCE + KILL_PATIENCE,
                last: "still running".into(),
                log: String::new(),
            });
        }
        // A killed tor leaves its pid file; a stale one would only
        // mislead the next look.
        let _ = std::fs::remove_file(pid_file);
    }
    Ok(Some(pid))
}

/// Every pid file under `dir` (DataDirectories may sit at any depth).
fn pid_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TorNetError> {
    for entry in std::fs::read_dir(dir).map_err(file_error("cannot read", dir))? {
        let entry = entry.map_err(file_error("cannot read", dir))?;
        let kind = entry.file_type().map_err(file_error("cannot read", dir))?;
        let path = entry.path();
        if kind.is_dir() {
            pid_files(&path, out)?;
        } else if kind.is_file() && entry.file_name() == PID_FILE {
            out.push(path);
        }
    }
    Ok(())
}

/// Stops a network from its directory alone: every tor whose pid file
/// lies under `dir` and whose command line is the tor started from the
/// torrc beside that file (so never a reused pid of another program),
/// then checks that no tor runs on `dir` any more. For a network whose
/// owner crashed; a missing `dir` holds no network. Blocking (call it
/// from `spawn_blocking` in async code). The pids it stopped.
pub fn stop_all_in(dir: &Path) -> Result<Vec<i32>, TorNetError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let dir = std::fs::canonicalize(dir).map_err(file_error("cannot resolve", dir))?;
    let mut files = Vec::new();
    pid_files(&dir, &mut files)?;
    files.sort();
    let mut stopped = Vec::new();
    for pid_file in files {
        let torrc = pid_file.with_file_name(TORRC);
        if let Some(pid) = stop_tor(&pid_file, &torrc)? {
            stopped.push(pid);
        }
    }
    let left = tors_running_in(&dir)?;
    if !left.is_empty() {
        return Err(TorNetError::Left { dir, left });
    }
    Ok(stopped)
}

/// Live tor processes with an argument under `dir` (each tor of a network
/// runs as `tor -f DIR/NAME/torrc`), with their command lines.
pub fn tors_running_in(dir: &Path) -> Result<Vec<(i32, String)>, TorNetError> {
    let proc = Path::new("/proc");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(proc).map_err(file_error("cannot read", proc))? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = args(&cmdline);
        let on_dir =
            args.next().is_some_and(is_tor_program) && args.any(|a| Path::new(a).starts_with(dir));
        if on_dir && alive(pid) {
            let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((pid, shown.trim_end().to_string()));
        }
    }
    Ok(found)
}

/// `status/bootstrap-phase` from tor's control port (cookie auth).
async fn bootstrap_phase(tor: &Tor) -> io::Result<String> {
    let cookie = std::fs::read(tor.data.join("control_auth_cookie"))?;
    let hex: String = cookie.iter().map(|b| format!("{b:02X}")).collect();
    let stream = TcpStream::connect(loopback(tor.control)).await?;
    let mut r = BufReader::new(stream);
    let ask = format!("AUTHENTICATE {hex}\r\nGETINFO status/bootstrap-phase\r\nQUIT\r\n");
    r.get_mut().write_all(ask.as_bytes()).await?;
    let mut text = String::new();
    // QUIT makes tor close the connection; a tor that answers more than
    // this is not one to keep reading from.
    r.take(64 * 1024).read_to_string(&mut text).await?;
    text.lines()
        .find_map(|l| l.strip_prefix("250-status/bootstrap-phase="))
        .map(|p| format!("{p} "))
        .ok_or_else(|| io::Error::other(format!("unexpected answer: {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tor(name: &str, role: Role, or_port: Option<u16>, dir_port: Option<u16>) -> Tor {
        Tor {
            name: name.into(),
            role,
            data: PathBuf::from(format!("/nets/a/{name}")),
            control: 12_001,
            or_port,
            dir_port,
        }
    }

    fn plan() -> Plan {
        Plan {
            services: vec![
                Service {
                    name: "n0".into(),
                    ports: vec![(9999, loopback(13_000)), (25, loopback(13_001))],
                    proxy_header: true,
                },
                Service::new("sink0", vec![(25, loopback(13_002))]),
            ],
            exit_ports: vec![25, 53],
            resolver: None,
        }
    }

    fn with_torrc<T>(role: Role, f: impl FnOnce(String) -> T) -> T {
        let plan = plan();
        let resolv = PathBuf::from("/nets/a/resolv.conf");
        let shared = Shared {
            authorities: "DirAuthority auth0 orport=12002 v3ident=AB 127.0.0.1:12003 CD\n",
            plan: &plan,
            resolv_conf: &resolv,
            socks: 12_010,
            plain_socks: 12_011,
            owner: 4242,
        };
        let (or_port, dir_port) = match role {
            Role::Authority => (Some(12_002), Some(12_003)),
            Role::Relay | Role::Exit => (Some(12_004), None),
            Role::Client | Role::Services => (None, None),
        };
        f(torrc(&tor("x", role, or_port, dir_port), &shared))
    }

    const ROLES: [Role; 5] = [
        Role::Authority,
        Role::Relay,
        Role::Exit,
        Role::Client,
        Role::Services,
    ];

    #[test]
    fn every_torrc_stays_on_loopback_in_its_data_dir_without_vanguards_lite() {
        for role in ROLES {
            with_torrc(role, |rc| {
                for must in [
                    "TestingTorNetwork 1\n",
                    "DataDirectory /nets/a/x\n",
                    "PidFile /nets/a/x/tor.pid\n",
                    "RunAsDaemon 1\n",
                    "__OwningControllerProcess 4242\n",
                    "Log notice file /nets/a/x/notice.log\n",
                    "ControlPort 127.0.0.1:12001\n",
                    "VanguardsLiteEnabled 0\n",
                    "ShutdownWaitLength 0\n",
                    "DirAuthority auth0 orport=12002 v3ident=AB 127.0.0.1:12003 CD\n",
                ] {
                    assert!(rc.contains(must), "{role:?} lacks {must:?}:\n{rc}");
                }
                // Every listening port is on 127.0.0.1 (or off).
                for line in rc.lines() {
                    let key = line.split_whitespace().next().unwrap_or("");
                    if ["SocksPort", "ORPort", "DirPort", "ControlPort"].contains(&key) {
                        let value = line.split_whitespace().nth(1).unwrap();
                        assert!(
                            value == "0" || value.starts_with("127.0.0.1:"),
                            "{role:?}: {line}"
                        );
                    }
                }
            });
        }
    }

    #[test]
    fn relays_listen_on_their_or_port_and_only_authorities_vote() {
        for role in ROLES {
            with_torrc(role, |rc| {
                let relay = matches!(role, Role::Authority | Role::Relay | Role::Exit);
                assert_eq!(rc.contains("ORPort 127.0.0.1:"), relay, "{role:?}:\n{rc}");
                assert_eq!(
                    rc.contains("V3AuthoritativeDirectory 1\n"),
                    role == Role::Authority
                );
                assert_eq!(
                    rc.contains("DirPort 127.0.0.1:12003\n"),
                    role == Role::Authority
                );
                assert_eq!(rc.contains("ExitRelay 1\n"), role == Role::Exit);
            });
        }
    }

    #[test]
    fn the_exit_accepts_exactly_the_planned_ports_and_uses_the_planned_resolver() {
        with_torrc(Role::Exit, |rc| {
            let policy: Vec<&str> = rc
                .lines()
                .filter(|l| l.starts_with("ExitPolicy "))
                .collect();
            assert_eq!(
                policy,
                [
                    "ExitPolicy accept *:25",
                    "ExitPolicy accept *:53",
                    "ExitPolicy reject *:*"
                ]
            );
            assert!(rc.contains("ExitPolicyRejectPrivate 0\n"));
            assert!(rc.contains("ServerDNSResolvConfFile /nets/a/resolv.conf\n"));
            assert!(rc.contains("ServerDNSDetectHijacking 0\n"));
        });
    }

    #[test]
    fn the_client_offers_an_isolating_socks_port_with_extended_errors() {
        with_torrc(Role::Client, |rc| {
            assert!(rc.contains("SocksPort 127.0.0.1:12010 IsolateSOCKSAuth ExtendedErrors\n"));
            assert!(rc.contains("SocksPort 127.0.0.1:12011 IsolateSOCKSAuth\n"));
            assert!(!rc.contains("HiddenService"));
        });
    }

    #[test]
    fn the_service_tor_hosts_each_service_with_its_ports() {
        with_torrc(Role::Services, |rc| {
            let hs: Vec<&str> = rc
                .lines()
                .filter(|l| l.starts_with("HiddenService"))
                .collect();
            assert_eq!(
                hs,
                [
                    "HiddenServiceDir /nets/a/x/hs_n0",
                    "HiddenServicePort 9999 127.0.0.1:13000",
                    "HiddenServicePort 25 127.0.0.1:13001",
                    "HiddenServiceExportCircuitID haproxy",
                    "HiddenServiceDir /nets/a/x/hs_sink0",
                    "HiddenServicePort 25 127.0.0.1:13002",
                ]
            );
            assert!(rc.contains("SocksPort 0\n"));
        });
    }

    #[test]
    fn it_refuses_plans_tor_would_choke_on_or_that_leave_loopback() {
        assert!(check_plan(&plan()).is_ok());
        // Each case spoils a good plan in one way.
        type Spoil = fn(&mut Plan);
        let cases: [(&str, Spoil); 9] = [
            ("empty name", |p| p.services[0].name.clear()),
            ("slash", |p| p.services[0].name = "../x".into()),
            ("space", |p| p.services[0].name = "a b".into()),
            ("twice", |p| p.services[1].name = "n0".into()),
            ("no ports", |p| p.services[1].ports.clear()),
            ("not loopback", |p| {
                p.services[1].ports[0].1 = "192.0.2.1:25".parse().unwrap()
            }),
            ("port 0", |p| p.services[1].ports[0].0 = 0),
            ("exit port 0", |p| p.exit_ports.push(0)),
            ("resolver", |p| {
                p.resolver = Some("192.0.2.1:53".parse().unwrap())
            }),
        ];
        for (what, spoil) in cases {
            let mut p = plan();
            spoil(&mut p);
            assert!(
                matches!(check_plan(&p), Err(TorNetError::Plan(_))),
                "{what} was accepted"
            );
        }
    }

    #[test]
    fn a_pid_is_ours_only_if_it_runs_tor_from_our_torrc() {
        let torrc = Path::new("/nets/a/client/torrc");
        let cases: [(&[u8], bool); 7] = [
            (
                b"tor\0-f\0/nets/a/client/torrc\0--defaults-torrc\0/e\0",
                true,
            ),
            (b"/usr/sbin/tor\0-f\0/nets/a/client/torrc\0", true),
            // Another program that happens to name the file.
            (b"tail\0-f\0/nets/a/client/torrc\0", false),
            (b"/usr/bin/torsocks\0-f\0/nets/a/client/torrc\0", false),
            // Another tor (the system's, or another network's).
            (
                b"/usr/bin/tor\0--defaults-torrc\0/usr/share/tor/tor-service-defaults-torrc\0",
                false,
            ),
            (b"tor\0-f\0/nets/a/client/torrc.old\0", false),
            (b"", false),
        ];
        for (cmdline, want) in cases {
            assert_eq!(
                is_our_tor(cmdline, torrc),
                want,
                "{}",
                String::from_utf8_lossy(cmdline)
            );
        }
    }

    #[test]
    fn a_failed_wait_names_what_it_waited_for_and_ends_with_the_tors_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tor("client", Role::Client, None, None);
        t.data = dir.path().to_path_buf();
        let log: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        std::fs::write(t.log_file(), log).unwrap();
        let err = TorNetError::Timeout {
            what: "tor client to reach bootstrap 100 %".into(),
            waited: Duration::from_secs(120),
            last: "PROGRESS=75".into(),
            log: t.log_section(),
        }
        .to_string();
        assert!(
            err.starts_with(
                "gave up after 120 s waiting for tor client to reach bootstrap 100 %; \
                 last: PROGRESS=75\n--- last lines of tor client's log ("
            ),
            "{err}"
        );
        let tail: Vec<String> = (6..=20).map(|i| format!("line {i}")).collect();
        assert!(err.ends_with(&tail.join("\n")), "{err}");
        assert!(!err.contains("line 5\n"), "{err}");
    }

    #[test]
    fn free_ports_stay_below_the_ephemeral_range_and_are_never_handed_out_twice() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert!(a < 32_768 && b < 32_768);
        assert_ne!(a, b);
    }

    /// A network directory with one pid file whose torrc lies beside it,
    /// and a process started as `program -f TORRC` (a copy of `tail`:
    /// it follows the torrc until killed).
    struct FakeNet {
        dir: tempfile::TempDir,
        child: std::process::Child,
    }

    impl FakeNet {
        fn start(program_name: &str) -> FakeNet {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("bin");
            std::fs::create_dir(&bin).unwrap();
            let program = bin.join(program_name);
            std::fs::copy("/usr/bin/tail", &program).unwrap();
            let data = dir.path().join("net/client");
            std::fs::create_dir_all(&data).unwrap();
            let torrc = data.join(TORRC);
            std::fs::write(&torrc, "").unwrap();
            // A process another test forks while the copy is open for
            // writing holds it open until its exec: "text file busy".
            let deadline = Instant::now() + Duration::from_secs(10);
            let child = loop {
                match std::process::Command::new(&program)
                    .arg("-f")
                    .arg(&torrc)
                    .stdout(Stdio::null())
                    .spawn()
                {
                    Err(e)
                        if e.kind() == io::ErrorKind::ExecutableFileBusy
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    spawned => break spawned.unwrap(),
                }
            };
            std::fs::write(data.join(PID_FILE), format!("{}\n", child.id())).unwrap();
            // The spawn returns once the old image is gone (vfork), a
            // moment before the kernel has set up the new one's arguments:
            // until then /proc shows an empty command line.
            let cmdline = format!("/proc/{}/cmdline", child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::read(&cmdline).unwrap().is_empty() {
                assert!(Instant::now() < deadline, "{program_name} never ran");
                std::thread::sleep(Duration::from_millis(1));
            }
            FakeNet { dir, child }
        }

        fn net(&self) -> PathBuf {
            self.dir.path().join("net")
        }
    }

    impl Drop for FakeNet {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn stop_all_in_leaves_a_pid_that_is_not_tor_alone() {
        let mut fake = FakeNet::start("tail");
        assert_eq!(stop_all_in(&fake.net()).unwrap(), Vec::<i32>::new());
        assert!(fake.child.try_wait().unwrap().is_none(), "it killed tail");
    }

    #[test]
    fn stop_all_in_stops_a_tor_by_its_pid_file_and_finds_none_left() {
        let mut fake = FakeNet::start("tor");
        let pid = fake.child.id() as i32;
        let found = tors_running_in(&fake.net()).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, pid);
        // Called with another spelling of the directory.
        let spelled = fake.dir.path().join("bin/../net");
        assert_eq!(stop_all_in(&spelled).unwrap(), vec![pid]);
        let status = fake.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert!(tors_running_in(&fake.net()).unwrap().is_empty());
    }

    #[test]
    fn a_missing_directory_holds_no_network() {
        let dir = tempfile::tempdir().unwrap();
        assert!(stop_all_in(&dir.path().join("nothing")).unwrap().is_empty());
    }

    #[tokio::test]
    async fn start_refuses_a_directory_that_is_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("left-over"), "").unwrap();
        let err = TorNet::start(dir.path(), plan()).await.unwrap_err();
        assert!(matches!(err, TorNetError::DirNotEmpty(_)), "{err}");
    }
}
