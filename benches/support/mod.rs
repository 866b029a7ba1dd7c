//! What the link benchmarks (`link_hello`, `link_flood`) share: a small
//! network exported into a `nodes.json` by any build of `pluto2`, one of
//! its nodes running on 127.0.0.1, and CPU readings from `/proc`.
//!
//! The binary is a parameter (not `CARGO_BIN_EXE_pluto2` alone) because
//! `link_flood` runs an older release beside this one, and an older
//! release has neither this tree's flags nor its link protocol; so this
//! module only uses what both have: `-export-node-info`, `-sphinx`,
//! `-pki-file`, `-node`, the SMTP flags, and the files a node writes in
//! its data directory (`identity.key`, `mixkey-<epoch>`).
#![allow(dead_code)] // each benchmark uses its own part

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use pluto2::address::OnionName;
use pluto2::wire::pki::{Directory, Node};
use x25519_dalek::{PublicKey, StaticSecret};

/// This tree's binary, built by `cargo bench` with the bench profile.
pub const BIN: &str = env!("CARGO_BIN_EXE_pluto2");

/// Bound on every wait for a node (start, a port in its log).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `n` nodes exported by one build into a fresh `nodes.json` with
/// production parameters but two hops (three nodes suffice for a route).
pub struct Network {
    dir: tempfile::TempDir,
    pub names: Vec<OnionName>,
    pub pki: PathBuf,
    /// The network as the load generator sees it (no node's own view).
    pub view: Directory,
}

impl Network {
    /// Exports nodes `b0`…`b{n-1}` with `bin`; their onion names come
    /// from `seed`, `seed + 1`, ….
    pub fn export(bin: &str, n: usize, seed: u8) -> Network {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<OnionName> = (0..n)
            .map(|i| OnionName::from_seed(seed + i as u8))
            .collect();
        let entries: Vec<serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let out = Command::new(bin)
                    .args(["-name", &name.to_string(), "-short-name", &format!("b{i}")])
                    .arg("-data-dir")
                    .arg(dir.path().join(format!("b{i}")))
                    .arg("-export-node-info")
                    .output()
                    .expect("run pluto2 -export-node-info");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                serde_json::from_slice(&out.stdout).expect("node info is JSON")
            })
            .collect();
        let doc = serde_json::json!({"nodes": entries, "params": {"hops": 2}});
        let pki = dir.path().join("nodes.json");
        std::fs::write(&pki, doc.to_string()).unwrap();
        let view = Directory::parse_for_every_node(&std::fs::read(&pki).unwrap()).unwrap();
        Network {
            dir,
            names,
            pki,
            view,
        }
    }

    /// Marks node `i` a gateway in `nodes.json` (`"gateway": true`) and
    /// sets the network's parameters to `params`: what `-gateway` on that
    /// node needs, with the client rates a benchmark wants.
    pub fn make_gateway(&mut self, i: usize, params: serde_json::Value) {
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.pki).unwrap()).unwrap();
        let short = format!("b{i}");
        for entry in doc["nodes"].as_array_mut().unwrap() {
            if entry["name"] == short.as_str() {
                entry["gateway"] = true.into();
            }
        }
        doc["params"] = params;
        std::fs::write(&self.pki, doc.to_string()).unwrap();
        self.view = Directory::parse_for_every_node(&std::fs::read(&self.pki).unwrap()).unwrap();
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("b{i}"))
    }

    /// Node `i` as `nodes.json` lists it.
    pub fn node(&self, i: usize) -> Node {
        let short = format!("b{i}");
        self.view
            .nodes()
            .iter()
            .find(|n| n.short_name == short)
            .unwrap()
            .clone()
    }

    /// Node `i`'s identity key, from its data directory: the load
    /// generator speaks as that node.
    pub fn identity_key(&self, i: usize) -> SigningKey {
        let bytes: [u8; 32] = std::fs::read(self.data_dir(i).join("identity.key"))
            .unwrap()
            .try_into()
            .unwrap();
        SigningKey::from_bytes(&bytes)
    }

    /// Node `i`'s mix key for `epoch`, from the key file a running node
    /// wrote (its bundle would carry the same).
    pub fn mix_key(&self, i: usize, epoch: u32) -> PublicKey {
        let secret: [u8; 32] = std::fs::read(self.data_dir(i).join(format!("mixkey-{epoch}")))
            .unwrap()
            .try_into()
            .unwrap();
        PublicKey::from(&StaticSecret::from(secret))
    }

    /// Starts node `i` with `bin` on 127.0.0.1: SMTP and link ports
    /// ephemeral, Tor and DNS a port that closes every connection (nothing
    /// is forwarded or delivered; packets and mail stay queued), no cover
    /// traffic, no batching window, the SMTP rate limit out of the way.
    pub fn start(&self, bin: &str, i: usize, extra: &[&str]) -> RunningNode {
        RunningNode::start(bin, self, i, extra)
    }
}

/// The current epoch under the default epoch length (a day).
pub fn epoch_now() -> u32 {
    (unix_secs() / 86_400) as u32
}

pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A port on 127.0.0.1 that accepts and closes at once: Tor and DNS for
/// the node, so it never reaches the network and fails fast.
struct DeadEnd {
    addr: SocketAddr,
}

impl DeadEnd {
    fn start() -> DeadEnd {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        DeadEnd { addr }
    }
}

/// A running node; killed when dropped.
pub struct RunningNode {
    pub child: Child,
    pub smtp: SocketAddr,
    pub link_port: u16,
    logs: Arc<Mutex<Vec<String>>>,
    _dead_end: DeadEnd,
}

impl RunningNode {
    fn start(bin: &str, net: &Network, i: usize, extra: &[&str]) -> RunningNode {
        let dead_end = DeadEnd::start();
        let dead = dead_end.addr.to_string();
        let name = net.names[i].to_string();
        let short = format!("b{i}");
        let pki = net.pki.to_str().unwrap();
        let mut child = Command::new(bin)
            .args(["-name", &name, "-short-name", &short, "-sphinx"])
            .args(["-pki-file", pki, "-node", "127.0.0.1:0"])
            .args(["-addr", "127.0.0.1:0", "-batch-window", "0"])
            .args([
                "-cover-interval",
                "0",
                "-tor-socks",
                &dead,
                "-dns-server",
                &dead,
            ])
            .args(["-rate-limit", "1000000"])
            .arg("-data-dir")
            .arg(net.data_dir(i))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pluto2");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let find = |logs: &Arc<Mutex<Vec<String>>>, marker: &str| -> Option<SocketAddr> {
            logs.lock().unwrap().iter().find_map(|l| {
                let rest = l.split(marker).nth(1)?;
                rest.split([',', ' ']).next()?.trim().parse().ok()
            })
        };
        let deadline = Instant::now() + PATIENCE;
        let (smtp, link) = loop {
            if let (Some(s), Some(l)) = (
                find(&logs, "[CONN] listening on "),
                find(&logs, "links on "),
            ) {
                break (s, l);
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("{bin} did not start: {:?}", logs.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        RunningNode {
            child,
            smtp,
            link_port: link.port(),
            logs,
            _dead_end: dead_end,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU ticks (utime + stime) of a process, and of each of its threads by
/// name (threads of one name summed), from `/proc/PID/stat` and
/// `/proc/PID/task/*/stat`.
pub fn cpu_ticks(pid: u32) -> (u64, Vec<(String, u64)>) {
    let parse = |text: &str| -> Option<(String, u64)> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let name = text[open + 1..close].to_string();
        let rest: Vec<&str> = text[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
        Some((name, ticks))
    };
    let mut threads: Vec<(String, u64)> = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("stat"))
                && let Some((name, ticks)) = parse(&text)
            {
                match threads.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, sum)) => *sum += ticks,
                    None => threads.push((name, ticks)),
                }
            }
        }
    }
    let total = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse(&t))
        .map_or(0, |(_, t)| t);
    (total, threads)
}

/// Context switches (voluntary and not) of all a process's threads, from
/// `/proc/PID/task/*/status`: how often its threads parked and woke.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Clock ticks per second of `/proc` CPU times (USER_HZ: 100 on every
/// Linux this runs on).
pub const HZ: f64 = 100.0;

/// (busy, all) ticks summed over the machine's CPUs, from `/proc/stat`.
pub fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let all: u64 = fields.iter().take(8).sum();
    // idle and iowait are the fourth and fifth.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// The one-minute load average, from `/proc/loadavg`.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The `q`-quantile (0..=1) of `xs`, nearest rank; NaN when empty.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn median(xs: &[f64]) -> f64 {
    quantile(xs, 0.5)
}

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
