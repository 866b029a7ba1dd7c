//! A private Tor network on 127.0.0.1 from Debian's `tor`, for tests that
//! must see what real Tor does (see ../shared/TOR-TESTNET.md for the facts
//! this follows): three directory authorities (relays too), two relays, one
//! exit, a client tor whose SocksPort pluto2 uses, and a service tor that
//! hosts every onion service the test asks for.
//!
//! Every port is one this harness picked on 127.0.0.1 below 32768 (the
//! ephemeral range once made a restarted tor clash with a client socket),
//! every DataDirectory lives in one temporary directory, and every tor runs
//! daemonized with a PidFile: the harness stops each one by the pid in its
//! file, also when the test panics ([`TorNet`]'s `Drop`), and
//! [`TorNet::shutdown`] checks that no tor started on its directories is
//! left. Every wait has a deadline and its failure says what it waited for
//! and shows the end of that tor's log.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Bound on the network's bootstrap (TOR-TESTNET.md measured 12–24 s to a
/// bootstrapped client on a 2-core machine).
pub const BOOTSTRAP_PATIENCE: Duration = Duration::from_secs(120);
/// Bound on an onion service becoming reachable once its tor bootstrapped.
pub const ONION_PATIENCE: Duration = Duration::from_secs(90);

/// An onion service hosted by the service tor.
pub struct Service {
    /// Its HiddenServiceDir's name (letters and digits).
    pub name: String,
    /// `HiddenServicePort` lines: virtual port → target on 127.0.0.1.
    pub ports: Vec<(u16, SocketAddr)>,
    /// `HiddenServiceExportCircuitID haproxy`: a PROXY v1 header whose
    /// source address carries the circuit id.
    pub proxy_header: bool,
}

/// What the network is for.
pub struct Plan {
    pub services: Vec<Service>,
    /// Ports the exit connects to (by name or by address, any host).
    pub exit_ports: Vec<u16>,
    /// The exit's name server (UDP), for names clients ask the exit to
    /// connect to.
    pub resolver: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Authority,
    Relay,
    Exit,
    Client,
    Services,
}

/// One tor process: its torrc, DataDirectory and control port.
pub struct Tor {
    pub name: String,
    role: Role,
    data: PathBuf,
    torrc: PathBuf,
    control: u16,
}

impl Tor {
    fn pid_file(&self) -> PathBuf {
        self.data.join("tor.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.data.join("notice.log")
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }
}

pub struct TorNet {
    dir: tempfile::TempDir,
    pub tors: Vec<Tor>,
    /// The client tor's SocksPort (`IsolateSOCKSAuth ExtendedErrors`).
    pub socks: SocketAddr,
    /// Another SocksPort of the client tor, without `ExtendedErrors`
    /// (never given to pluto2).
    pub plain_socks: SocketAddr,
    /// Time from the first tor started to the client and the service tor
    /// both at bootstrap 100 %.
    pub bootstrap: Duration,
    stopped: bool,
}

/// A port on 127.0.0.1 below 32768 that is free for TCP and UDP right now.
/// Ports are handed out once per process, from a start that depends on the
/// process id, so test processes running side by side rarely meet.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        12_000 + (std::process::id() % 800) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "ran out of ports below 32768");
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

/// Lines every tor of the network shares. Vanguards-lite (on by default
/// in Tor since 0.4.8) pins an onion service's second hops to a few
/// layer-2 guards; on a network of five relays, all on one address, the
/// service sometimes finds no second hop for its circuits ("Failed to find
/// node for hop #2") and its descriptor is not published in time. A
/// private test network does not need it.
fn common_lines(tor: &Tor, authorities: &str) -> String {
    let data = tor.data.display();
    format!(
        "TestingTorNetwork 1\n\
         Nickname {name}\n\
         DataDirectory {data}\n\
         PidFile {data}/tor.pid\n\
         RunAsDaemon 1\n\
         Log notice file {data}/notice.log\n\
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
        control = tor.control,
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

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: {e} (is Debian's tor installed? scripts/test.sh installs it)")
    });
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TorNet {
    /// Writes the keys and torrc files, starts every tor, and waits until
    /// the client and the service tor have bootstrapped. Onion services
    /// may need more time to be reachable: see
    /// [`TorNet::until_onion_answers`].
    pub async fn start(plan: Plan) -> TorNet {
        let dir = tempfile::Builder::new()
            .prefix("pluto2-tor-")
            .tempdir()
            .unwrap();
        let empty = dir.path().join("empty.torrc");
        std::fs::write(&empty, "").unwrap();
        let mut tors = Vec::new();
        let mut add = |name: &str, role: Role| {
            let data = dir.path().join(name);
            std::fs::create_dir_all(data.join("keys")).unwrap();
            // tor refuses a DataDirectory others can read.
            set_mode(&data, 0o700);
            tors.push(Tor {
                name: name.to_string(),
                role,
                torrc: data.join("torrc"),
                data,
                control: free_port(),
            });
        };
        for i in 0..3 {
            add(&format!("auth{i}"), Role::Authority);
        }
        for i in 0..2 {
            add(&format!("relay{i}"), Role::Relay);
        }
        add("exit", Role::Exit);
        add("client", Role::Client);
        add("services", Role::Services);

        // Authorities: identity and signing keys, then their relay keys,
        // so every torrc can name every authority.
        let mut dir_lines = String::new();
        let mut or_ports = Vec::new();
        for tor in &tors {
            let or_port = free_port();
            or_ports.push(or_port);
            if tor.role != Role::Authority {
                continue;
            }
            let dir_port = free_port();
            let keys = tor.data.join("keys");
            let mut gencert = Command::new("tor-gencert");
            gencert
                .current_dir(&keys)
                .args(["--create-identity-key", "--passphrase-fd", "0"])
                .args([
                    "-i",
                    "authority_identity_key",
                    "-s",
                    "authority_signing_key",
                ])
                .args(["-c", "authority_certificate", "-m", "12", "-a"])
                .arg(format!("127.0.0.1:{dir_port}"))
                .stdin(std::process::Stdio::null());
            run(&mut gencert, "tor-gencert");
            let cert = std::fs::read_to_string(keys.join("authority_certificate")).unwrap();
            let v3 = cert
                .lines()
                .find_map(|l| l.strip_prefix("fingerprint "))
                .expect("a fingerprint line in the authority certificate")
                .trim()
                .to_string();
            let mut fp = Command::new("tor");
            fp.arg("--list-fingerprint")
                .arg("--DataDirectory")
                .arg(&tor.data)
                .args(["--ORPort", &format!("127.0.0.1:{or_port}")])
                .args(["--Nickname", &tor.name])
                .arg("-f")
                .arg(&empty)
                .arg("--defaults-torrc")
                .arg(&empty);
            run(&mut fp, "tor --list-fingerprint");
            let fingerprint = std::fs::read_to_string(tor.data.join("fingerprint")).unwrap();
            let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
            writeln!(
                dir_lines,
                "DirAuthority {} orport={or_port} v3ident={v3} 127.0.0.1:{dir_port} {fingerprint}",
                tor.name
            )
            .unwrap();
            // The DirPort goes into this authority's own torrc below.
            std::fs::write(tor.data.join("dirport"), dir_port.to_string()).unwrap();
        }

        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, format!("nameserver {}\n", plan.resolver)).unwrap();
        let mut socks = None;
        let mut plain_socks = None;
        for (tor, or_port) in tors.iter().zip(&or_ports) {
            let mut rc = common_lines(tor, &dir_lines);
            match tor.role {
                Role::Authority => {
                    let dir_port = std::fs::read_to_string(tor.data.join("dirport")).unwrap();
                    rc.push_str(&relay_lines(*or_port));
                    write!(
                        rc,
                        "DirPort 127.0.0.1:{dir_port}\n\
                         AuthoritativeDirectory 1\n\
                         V3AuthoritativeDirectory 1\n\
                         ExitRelay 0\n\
                         TestingV3AuthInitialVotingInterval 10\n\
                         TestingV3AuthInitialVoteDelay 2\n\
                         TestingV3AuthInitialDistDelay 2\n\
                         V3AuthVotingInterval 10\n\
                         V3AuthVoteDelay 2\n\
                         V3AuthDistDelay 2\n"
                    )
                    .unwrap();
                }
                Role::Relay => {
                    rc.push_str(&relay_lines(*or_port));
                    rc.push_str("ExitRelay 0\n");
                }
                Role::Exit => {
                    rc.push_str(&relay_lines(*or_port));
                    // Clients choose an exit by the ports its policy
                    // summary accepts for any address, so each port is
                    // accepted for all (127.0.0.1 is the only one there
                    // is), and private addresses are not rejected first.
                    rc.push_str("ExitRelay 1\nExitPolicyRejectPrivate 0\n");
                    for port in &plan.exit_ports {
                        writeln!(rc, "ExitPolicy accept *:{port}").unwrap();
                    }
                    write!(
                        rc,
                        "ExitPolicy reject *:*\n\
                         OutboundBindAddressExit 127.0.0.1\n\
                         ServerDNSResolvConfFile {}\n\
                         ServerDNSDetectHijacking 0\n\
                         ServerDNSTestAddresses\n\
                         ServerDNSAllowNonRFC953Hostnames 1\n",
                        resolv.display()
                    )
                    .unwrap();
                }
                Role::Client => {
                    let port = free_port();
                    // ExtendedErrors: Tor's onion-specific replies
                    // 0xF0–0xF7, which tell pluto2 a dead onion from a
                    // key Tor rejects. IsolateSOCKSAuth: one circuit per
                    // SOCKS username/password.
                    writeln!(
                        rc,
                        "SocksPort 127.0.0.1:{port} IsolateSOCKSAuth ExtendedErrors"
                    )
                    .unwrap();
                    socks = Some(SocketAddr::from(([127, 0, 0, 1], port)));
                    // The same without ExtendedErrors, to show what a
                    // torrc without it makes of an onion.
                    let port = free_port();
                    writeln!(rc, "SocksPort 127.0.0.1:{port} IsolateSOCKSAuth").unwrap();
                    plain_socks = Some(SocketAddr::from(([127, 0, 0, 1], port)));
                }
                Role::Services => {
                    rc.push_str("SocksPort 0\n");
                    for s in &plan.services {
                        let hs = tor.data.join(format!("hs_{}", s.name));
                        writeln!(rc, "HiddenServiceDir {}", hs.display()).unwrap();
                        for (virt, target) in &s.ports {
                            writeln!(rc, "HiddenServicePort {virt} {target}").unwrap();
                        }
                        if s.proxy_header {
                            rc.push_str("HiddenServiceExportCircuitID haproxy\n");
                        }
                    }
                }
            }
            std::fs::write(&tor.torrc, rc).unwrap();
        }
        let started = Instant::now();
        let mut net = TorNet {
            dir,
            tors,
            socks: socks.unwrap(),
            plain_socks: plain_socks.unwrap(),
            bootstrap: Duration::ZERO,
            stopped: false,
        };
        for i in 0..net.tors.len() {
            net.launch(i);
        }
        let deadline = started + BOOTSTRAP_PATIENCE;
        net.until_bootstrapped("client", deadline).await;
        net.until_bootstrapped("services", deadline).await;
        net.bootstrap = started.elapsed();
        net
    }

    fn index(&self, name: &str) -> usize {
        self.tors
            .iter()
            .position(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tor named {name}"))
    }

    pub fn tor(&self, name: &str) -> &Tor {
        &self.tors[self.index(name)]
    }

    /// Starts tor `i` from its torrc; returns once it has daemonized and
    /// written its pid file.
    fn launch(&self, i: usize) {
        let tor = &self.tors[i];
        let _ = std::fs::remove_file(tor.pid_file());
        let empty = self.dir.path().join("empty.torrc");
        let mut cmd = Command::new("tor");
        cmd.arg("-f")
            .arg(&tor.torrc)
            .arg("--defaults-torrc")
            .arg(&empty);
        let out = run(&mut cmd, &format!("starting tor {}", tor.name));
        let deadline = Instant::now() + Duration::from_secs(20);
        while tor.pid().is_none() {
            assert!(
                Instant::now() < deadline,
                "tor {} wrote no pid file within 20 s: {out}\n{}",
                tor.name,
                tor.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a stopped tor again on its DataDirectory (cached consensus
    /// and keys: same onion names) and waits for its bootstrap.
    pub async fn restart(&self, name: &str) {
        self.launch(self.index(name));
        self.until_bootstrapped(name, Instant::now() + BOOTSTRAP_PATIENCE)
            .await;
    }

    /// Stops one tor by the pid in its pid file and waits until it is gone.
    pub fn stop(&self, name: &str) {
        stop_tor(&self.tors[self.index(name)]);
    }

    /// Waits until tor `name` reports bootstrap 100 % on its control port.
    pub async fn until_bootstrapped(&self, name: &str, deadline: Instant) {
        let tor = self.tor(name);
        loop {
            let last = match bootstrap_phase(tor).await {
                Ok(phase) if phase.contains("PROGRESS=100 ") => return,
                Ok(phase) => phase,
                Err(e) => format!("control port: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "tor {name} did not reach bootstrap 100 % in time; last: {last}\nlog:\n{}",
                tor.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The onion name of service `name` (its HiddenServiceDir's
    /// `hostname`, written as soon as the service tor started).
    pub fn onion(&self, name: &str) -> String {
        let path = self
            .tor("services")
            .data
            .join(format!("hs_{name}/hostname"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no hostname for onion service {name}: {e}"))
            .trim()
            .to_string()
    }

    /// Waits until `onion:port` greets with `220` through the client's
    /// SocksPort (descriptor published, introduction and rendezvous work).
    /// Connects with its own SOCKS credentials, so the probe does not share
    /// a circuit with what the test does next.
    pub async fn until_onion_answers(&self, onion: &str, port: u16, proxy_header: bool) {
        let deadline = Instant::now() + ONION_PATIENCE;
        loop {
            let last = match socks_connect(self.socks, "probe", "probe", onion, port).await {
                Ok(stream) => {
                    let mut r = BufReader::new(stream);
                    let mut line = String::new();
                    let read =
                        tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut line)).await;
                    if matches!(read, Ok(Ok(_))) && line.starts_with("220") {
                        let _ = r.get_mut().write_all(b"QUIT\r\n").await;
                        return;
                    }
                    format!("greeting {line:?} (PROXY header expected: {proxy_header})")
                }
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "onion service {onion}:{port} never answered 220 through Tor; last: {last}\n\
                 service tor log:\n{}\nclient tor log:\n{}",
                self.tor("services").log_tail(),
                self.tor("client").log_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until a SOCKS CONNECT to `onion:port` through the client's
    /// SocksPort succeeds (for services that do not speak first, such as
    /// mixnet links).
    pub async fn until_onion_connects(&self, onion: &str, port: u16) {
        let deadline = Instant::now() + ONION_PATIENCE;
        loop {
            let last = match socks_connect(self.socks, "probe", "probe", onion, port).await {
                Ok(_) => return,
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "onion service {onion}:{port} never took a connection through Tor; last: {last}\n\
                 service tor log:\n{}",
                self.tor("services").log_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops every tor, then checks that no tor process started on this
    /// network's directories is left.
    pub fn shutdown(&mut self) {
        self.stop_all();
        let left = tors_running_in(self.dir.path());
        assert!(left.is_empty(), "tor processes left running: {left:?}");
    }

    fn stop_all(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for tor in &self.tors {
            stop_tor(tor);
        }
    }
}

impl Drop for TorNet {
    /// Also on panic: a failed test must not leave ten tors behind.
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// True while `pid` is a live process (a zombie that nobody reaps counts
/// as gone: it runs no code and holds no port).
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

/// SIGTERM to the pid in its pid file (`ShutdownWaitLength 0`: tor exits
/// at once), SIGKILL if it is still there after 10 s. Never panics: this
/// also runs from `Drop`.
fn stop_tor(tor: &Tor) {
    let Some(pid) = tor.pid() else { return };
    if !alive(pid) {
        return;
    }
    // Only a tor of ours: its command line names its own torrc.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let torrc = tor.torrc.to_string_lossy();
    if !String::from_utf8_lossy(&cmdline).contains(torrc.as_ref()) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        while alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Live processes whose command line mentions `dir` (each tor of the
/// network was started with `-f <dir>/<name>/torrc`).
pub fn tors_running_in(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
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
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && alive(pid) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// `status/bootstrap-phase` from tor's control port (cookie auth).
async fn bootstrap_phase(tor: &Tor) -> std::io::Result<String> {
    let cookie = std::fs::read(tor.data.join("control_auth_cookie"))?;
    let hex: String = cookie.iter().map(|b| format!("{b:02X}")).collect();
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", tor.control)),
    )
    .await
    .map_err(|_| std::io::Error::other("connect timed out"))??;
    let mut r = BufReader::new(stream);
    let ask = format!("AUTHENTICATE {hex}\r\nGETINFO status/bootstrap-phase\r\nQUIT\r\n");
    r.get_mut().write_all(ask.as_bytes()).await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_to_string(&mut text))
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))??;
    text.lines()
        .find_map(|l| l.strip_prefix("250-status/bootstrap-phase="))
        .map(|p| format!("{p} "))
        .ok_or_else(|| std::io::Error::other(format!("unexpected answer: {text}")))
}

/// A SOCKS5 failure seen by [`socks_connect`].
#[derive(Debug)]
pub enum SocksFailure {
    Io(std::io::Error),
    /// The proxy's reply code (0xF0–0xF7 are Tor's extended errors).
    Reply(u8),
}

impl std::fmt::Display for SocksFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocksFailure::Io(e) => write!(f, "SOCKS I/O: {e}"),
            SocksFailure::Reply(c) => write!(f, "SOCKS reply {c:#04x}"),
        }
    }
}

impl From<std::io::Error> for SocksFailure {
    fn from(e: std::io::Error) -> Self {
        SocksFailure::Io(e)
    }
}

/// A SOCKS5 CONNECT to `host:port` with the given username and password
/// (Tor's IsolateSOCKSAuth gives each pair its own circuit), bounded by
/// 60 s.
pub async fn socks_connect(
    proxy: SocketAddr,
    user: &str,
    pass: &str,
    host: &str,
    port: u16,
) -> Result<TcpStream, SocksFailure> {
    let go = async {
        let mut s = TcpStream::connect(proxy).await?;
        s.write_all(&[5, 1, 2]).await?;
        let mut choice = [0u8; 2];
        s.read_exact(&mut choice).await?;
        if choice != [5, 2] {
            return Err(SocksFailure::Io(std::io::Error::other(format!(
                "proxy chose method {choice:?}"
            ))));
        }
        let mut auth = vec![1, user.len() as u8];
        auth.extend_from_slice(user.as_bytes());
        auth.push(pass.len() as u8);
        auth.extend_from_slice(pass.as_bytes());
        s.write_all(&auth).await?;
        let mut status = [0u8; 2];
        s.read_exact(&mut status).await?;
        let mut req = vec![5, 1, 0, 3, host.len() as u8];
        req.extend_from_slice(host.as_bytes());
        req.extend_from_slice(&port.to_be_bytes());
        s.write_all(&req).await?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await?;
        if head[1] != 0 {
            return Err(SocksFailure::Reply(head[1]));
        }
        let rest = match head[3] {
            1 => 6,
            4 => 18,
            _ => {
                let mut len = [0u8; 1];
                s.read_exact(&mut len).await?;
                len[0] as usize + 2
            }
        };
        let mut skip = vec![0u8; rest];
        s.read_exact(&mut skip).await?;
        Ok(s)
    };
    tokio::time::timeout(Duration::from_secs(60), go)
        .await
        .unwrap_or_else(|_| {
            Err(SocksFailure::Io(std::io::Error::other(
                "SOCKS handshake took over 60 s",
            )))
        })
}
