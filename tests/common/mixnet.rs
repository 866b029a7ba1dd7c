//! A pluto2 mixnet on 127.0.0.1: real `pluto2 -sphinx` processes, each
//! behind its own link tap (the SOCKS proxy standing in for Tor), which maps
//! every node's onion name to that node's `-node` port and the mail
//! destination to an SMTP sink, and records every frame on every link.
//! `nodes.json` is assembled from each node's `-export-node-info` output,
//! exactly as operators do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pluto2::address::OnionName;

use super::link_tap::LinkTap;
use super::smtp_sink::{Behaviour, Sink};
use super::{BIN, Client, Daemon, PATIENCE, onion};

/// The virtual port every node publishes for links.
pub const LINK_PORT: u16 = 9999;

/// Network parameters for tests: milliseconds per hop, seconds before a
/// retransmission.
pub const TEST_PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "20ms", "hop_delay_max": "240ms",
    "max_message_size": 262144, "ack_timeout": "4s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "loop_cover_mean": "0s", "drop_cover_mean": "0s"}"#;

pub struct MixNode {
    pub onion: String,
    pub short: String,
    pub data: PathBuf,
    pub tap: LinkTap,
    pub daemon: Option<Daemon>,
    /// The port its links listen on (known once it started).
    pub link_port: Option<u16>,
}

/// A client (`-client`) of the network: not listed, no onion service,
/// SMTP on loopback, one link to its gateway through a tap of its own.
pub struct MixClient {
    pub data: PathBuf,
    pub tap: LinkTap,
    pub daemon: Option<Daemon>,
    /// The gateway's index and the flags it was started with.
    pub via: usize,
    pub extra: Vec<String>,
    /// What it runs under (e.g. `env VAR=value`).
    pub wrapper: Vec<String>,
}

pub struct MixNet {
    pub nodes: Vec<MixNode>,
    pub clients: Vec<MixClient>,
    pub sink: Sink,
    /// Where mail for the sink goes: `someone@<sink_onion>`.
    pub sink_onion: String,
    pub pki: PathBuf,
    /// The network's epoch length (see [`MixNet::epoch_now`]).
    pub epoch_secs: u64,
    _dir: tempfile::TempDir,
}

/// A message tagged `tag` in its subject and first line, padded to at
/// least `size` bytes with numbered lines (no two alike, so nothing on the
/// way can shrink it).
pub fn mail(size: usize, tag: &str) -> String {
    padded(format!("Subject: {tag}\r\n\r\nhello {tag}\r\n"), size)
}

/// Like [`mail`], as a MIME message whose padding is a base64-looking
/// attachment (what a mail client sends with a file).
pub fn mime_mail(size: usize, tag: &str) -> String {
    let head = format!(
        "Subject: {tag}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nhello {tag}\r\n--b\r\n\
         Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    );
    let mut body = padded(head, size);
    body.push_str("--b--\r\n");
    body
}

/// The body of a message as it left the exit (after its header block):
/// what the tests compare with what was sent.
pub fn body_of(data: &[u8]) -> &[u8] {
    let at = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    &data[at + 4..]
}

/// `text` followed by 76-digit lines until it holds `size` bytes or more.
fn padded(mut text: String, size: usize) -> String {
    let mut i = 0u64;
    while text.len() < size {
        i += 1;
        text.push_str(&format!(
            "{:076}\r\n",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ));
    }
    text
}

/// A `nodes.json` in `dir` for a node alone among peers that do not run:
/// `onion(1)` ("alice", keys in `data`) and four others ("bob" … "erin",
/// keys beside it in `dir`), default parameters.
pub fn alice_and_four(dir: &Path, data: &Path) -> PathBuf {
    let mut nodes = vec![export(&onion(1), "alice", data, &[])];
    for (seed, short) in [(2u8, "bob"), (3, "carol"), (4, "dave"), (5, "erin")] {
        nodes.push(export(&onion(seed), short, &dir.join(short), &[]));
    }
    let pki = dir.join("nodes.json");
    std::fs::write(
        &pki,
        serde_json::json!({ "nodes": nodes, "params": {} }).to_string(),
    )
    .unwrap();
    pki
}

/// The flags that run `onion(1)` as "alice" in `-sphinx` mode on the
/// network of [`alice_and_four`] at `pki`.
pub fn alice_flags(pki: &Path) -> Vec<String> {
    let pki = pki.to_str().unwrap();
    [
        "-name",
        &onion(1),
        "-sphinx",
        "-short-name",
        "alice",
        "-pki-file",
        pki,
    ]
    .map(String::from)
    .to_vec()
}

/// This node's `nodes.json` entry, from `pluto2 -export-node-info` as an
/// operator runs it (creates the data dir and keys if missing).
pub fn export(onion: &str, short: &str, data: &Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["-name", onion, "-short-name", short, "-data-dir"])
        .arg(data)
        .args(extra)
        .arg("-export-node-info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

impl MixNet {
    /// `n` nodes, all exits, with `params` (JSON) as network parameters.
    pub async fn start(n: usize, params: &str) -> MixNet {
        Self::start_with_middles(n, params, &[]).await
    }

    /// Starts (or restarts) node `i` on its data dir and points every tap
    /// at its link port.
    pub fn start_node(&mut self, i: usize, extra: &[&str]) {
        self.launch(i, &[], extra, None);
    }

    /// Starts node `i` under `wrapper` (nothing, or e.g. strace) with the
    /// harness's flags plus `extra`, records its link port and points every
    /// tap at it.
    fn launch(&mut self, i: usize, wrapper: &[&str], extra: &[&str], trace: Option<PathBuf>) {
        let node = &self.nodes[i];
        let tap_addr = node.tap.addr.to_string();
        let pki = self.pki.to_str().unwrap().to_string();
        let mut args: Vec<&str> = vec![
            "-name",
            &node.onion,
            "-short-name",
            &node.short,
            "-sphinx",
            "-pki-file",
            &pki,
            "-node",
            "127.0.0.1:0",
            "-tor-socks",
            &tap_addr,
            "-batch-window",
            "0",
            "-stats-interval",
            "1s",
        ];
        args.extend(extra);
        let mut daemon = Daemon::start_wrapped(wrapper, &node.data.clone(), &args);
        daemon.trace = trace;
        let port = link_port(&daemon);
        self.nodes[i].daemon = Some(daemon);
        self.nodes[i].link_port = Some(port);
        let onion = self.nodes[i].onion.clone();
        for tap in self.taps() {
            tap.route_link(&onion, LINK_PORT, ([127, 0, 0, 1], port).into());
        }
    }

    /// Every tap: the nodes' and the clients'.
    fn taps(&self) -> impl Iterator<Item = &LinkTap> {
        self.nodes
            .iter()
            .map(|n| &n.tap)
            .chain(self.clients.iter().map(|c| &c.tap))
    }

    /// Adds a client of gateway `via` (a node started with `-gateway`)
    /// and starts it; returns its index.
    pub async fn add_client(&mut self, via: usize, extra: &[&str]) -> usize {
        self.add_client_wrapped(via, &[], extra).await
    }

    /// Like [`MixNet::add_client`], the client run under `wrapper`.
    pub async fn add_client_wrapped(
        &mut self,
        via: usize,
        wrapper: &[&str],
        extra: &[&str],
    ) -> usize {
        let i = self.clients.len();
        let data = self._dir.path().join(format!("client{i}"));
        let tap = LinkTap::start().await;
        tap.route(&self.sink_onion, 25, self.sink.addr);
        for node in &self.nodes {
            if let Some(port) = node.link_port {
                tap.route_link(&node.onion, LINK_PORT, ([127, 0, 0, 1], port).into());
            }
        }
        self.clients.push(MixClient {
            data,
            tap,
            daemon: None,
            via,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        });
        self.start_client(i);
        i
    }

    /// Starts (or restarts) client `i` on its data dir.
    pub fn start_client(&mut self, i: usize) {
        let c = &self.clients[i];
        let via = self.nodes[c.via].short.clone();
        let tap_addr = c.tap.addr.to_string();
        let pki = self.pki.to_str().unwrap().to_string();
        let mut args: Vec<&str> = vec![
            "-sphinx",
            "-client",
            "-via",
            &via,
            "-pki-file",
            &pki,
            "-tor-socks",
            &tap_addr,
            "-batch-window",
            "0",
            "-stats-interval",
            "1s",
        ];
        args.extend(c.extra.iter().map(String::as_str));
        let wrapper: Vec<&str> = c.wrapper.iter().map(String::as_str).collect();
        let daemon = Daemon::start_wrapped(&wrapper, &c.data.clone(), &args);
        self.clients[i].daemon = Some(daemon);
    }

    pub fn client(&self, i: usize) -> &Daemon {
        self.clients[i].daemon.as_ref().expect("running")
    }

    /// Hands `body` for [`MixNet::rcpt`] to client `i` over SMTP; it must
    /// be accepted.
    pub async fn send_by_client(&self, i: usize, body: &str) -> Client {
        let mut c = self.client(i).ehlo_client().await;
        assert_eq!(c.send_mail("a@b.example", &[&self.rcpt()], body).await, 250);
        c
    }

    /// The mix-key epoch now, for networks on the default epoch length
    /// (a day) or `epoch_secs` set with [`MixNet::set_epoch_secs`].
    pub fn epoch_now(&self) -> u32 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        (now / self.epoch_secs) as u32
    }

    /// Tells the harness the network's epoch length (it does not parse
    /// the params).
    pub fn set_epoch_secs(&mut self, secs: u64) {
        self.epoch_secs = secs;
    }

    /// Node `i`'s mix public key for `epoch`, read from its key file (as
    /// a peer would get it from its signed bundle).
    pub fn mix_key(&self, i: usize, epoch: u32) -> x25519_dalek::PublicKey {
        let path = self.nodes[i].data.join(format!("mixkey-{epoch}"));
        let secret: [u8; 32] = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .try_into()
            .unwrap();
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret))
    }

    /// The epochs node `i` holds a key file for, oldest first.
    pub fn key_files(&self, i: usize) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(&self.nodes[i].data)
            .unwrap()
            .filter_map(|e| {
                e.unwrap()
                    .file_name()
                    .to_str()?
                    .strip_prefix("mixkey-")?
                    .parse()
                    .ok()
            })
            .collect();
        v.sort();
        v
    }

    /// Where test mail for the sink goes: `someone@<sink_onion>`.
    pub fn rcpt(&self) -> String {
        format!("someone@{}", self.sink_onion)
    }

    /// Hands `body` from `a@b.example` for [`MixNet::rcpt`] to node
    /// `entry` over SMTP, as a mail client would; the entry must accept it.
    /// Returns the session (still open).
    pub async fn send(&self, entry: usize, body: &str) -> Client {
        self.send_as(entry, "a@b.example", &self.rcpt(), body).await
    }

    /// Like [`MixNet::send`], from `from` to `to`.
    pub async fn send_as(&self, entry: usize, from: &str, to: &str, body: &str) -> Client {
        let mut c = self.daemon(entry).ehlo_client().await;
        assert_eq!(c.send_mail(from, &[to], body).await, 250);
        c
    }

    pub fn daemon(&self, i: usize) -> &Daemon {
        self.nodes[i].daemon.as_ref().expect("running")
    }

    /// Waits until node `i` reports at least `h` usable peers in [STATS].
    pub async fn until_healthy(&self, i: usize, h: usize) {
        let want = format!("healthy={h}/");
        self.daemon(i)
            .until_log(&want, |line| {
                line.split("healthy=")
                    .nth(1)
                    .and_then(|v| v.split('/').next())
                    .and_then(|v| v.parse::<usize>().ok())
                    .is_some_and(|got| got >= h)
            })
            .await;
    }

    /// Every PACKET frame seen on any link, as (encoded length).
    pub fn packet_frame_sizes(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .flat_map(|n| n.tap.packet_frame_sizes())
            .collect()
    }

    /// Bytes that crossed any link, in both directions.
    pub fn bytes_on_links(&self) -> usize {
        self.nodes.iter().map(|n| n.tap.bytes_on_links()).sum()
    }
}

/// Writes the network's `nodes.json` at `path` from the nodes' exported
/// entries and the network parameters (JSON), as the operators assemble it.
pub fn write_nodes_json(path: &Path, entries: &[serde_json::Value], params: &str) {
    let doc = format!(
        r#"{{"nodes": {}, "params": {params}}}"#,
        serde_json::to_string(entries).unwrap()
    );
    std::fs::write(path, doc).unwrap();
}

/// The link port a node logged at start.
fn link_port(d: &Daemon) -> u16 {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let logs = d.log_text();
        if let Some(port) = logs
            .lines()
            .find_map(|l| l.split("links on ").nth(1))
            .and_then(|rest| rest.split([',', ' ']).next())
            .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
        {
            return port;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no link port in the logs: {logs}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The identity key in a node's data directory (made by `export`).
pub fn identity_key(data: &Path) -> ed25519_dalek::SigningKey {
    let seed: [u8; 32] = std::fs::read(data.join("identity.key"))
        .expect("identity.key in the node's data dir")
        .try_into()
        .expect("32 bytes");
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

impl MixNet {
    /// Like [`MixNet::start`], but the nodes in `middle` are middle nodes
    /// only (`-exit=false` in their entry and on their command line), so a
    /// test knows where every message leaves the mixnet. Restart such a
    /// node with `start_node(i, &["-exit=false"])`.
    pub async fn start_with_middles(n: usize, params: &str, middle: &[usize]) -> MixNet {
        let flags: Vec<Vec<&str>> = (0..n)
            .map(|i| {
                if middle.contains(&i) {
                    vec!["-exit=false"]
                } else {
                    vec![]
                }
            })
            .collect();
        Self::start_with_flags(params, &flags).await
    }

    /// One node per entry of `node_flags`, each exported and started with
    /// its flags (such as `-exit=false` or `-gateway`).
    pub async fn start_with_flags(params: &str, node_flags: &[Vec<&str>]) -> MixNet {
        let n = node_flags.len();
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::start(Behaviour::default()).await;
        let sink_onion = OnionName::from_seed(200).to_string();
        let mut nodes = Vec::new();
        let mut entries = Vec::new();
        let flags = |i: usize| -> &[&str] { &node_flags[i] };
        for i in 0..n {
            let onion = OnionName::from_seed(100 + i as u8).to_string();
            let short = format!("n{i}");
            let data = dir.path().join(&short);
            entries.push(export(&onion, &short, &data, flags(i)));
            let tap = LinkTap::start().await;
            // What the tap injects, it proves as this node would.
            tap.set_signer(identity_key(&data));
            tap.route(&sink_onion, 25, sink.addr);
            nodes.push(MixNode {
                onion,
                short,
                data,
                tap,
                daemon: None,
                link_port: None,
            });
        }
        let pki = dir.path().join("nodes.json");
        write_nodes_json(&pki, &entries, params);
        let params_doc: serde_json::Value = serde_json::from_str(params).unwrap();
        let epoch_secs = params_doc["epoch"]
            .as_str()
            .map(|e| humantime::parse_duration(e).unwrap().as_secs())
            .unwrap_or(24 * 3600);
        let mut net = MixNet {
            nodes,
            clients: Vec::new(),
            sink,
            sink_onion,
            pki,
            epoch_secs,
            _dir: dir,
        };
        for i in 0..n {
            net.start_node(i, flags(i));
        }
        net
    }

    /// Node `i`'s `mixnet` object from `pluto2 queue -json` (packets in
    /// custody, messages awaiting acknowledgement, incomplete at the exit).
    pub fn mixnet_counts(&self, i: usize) -> serde_json::Value {
        super::queue_json(&self.nodes[i].data)["mixnet"].clone()
    }

    /// Waits until no running node or client holds anything: no message in
    /// its spool (the entry's until COMPLETE, the exit's until delivered),
    /// no packet in custody (but cover, while a client runs), no fragment.
    /// From then on nothing more can be delivered, so the sink's count is
    /// final.
    pub async fn until_quiet(&self) {
        // A running client sends cover for as long as it runs: packets are
        // always on their way through the hops then. What makes the sink's
        // count final is that no message is held anywhere (no entry or
        // client waits for COMPLETE, no exit holds fragments, no client
        // has a data packet out): cover in custody is left out.
        let cover_flows = self.clients.iter().any(|c| c.daemon.is_some());
        const COVER_KEYS: [&str; 2] = ["packets_forward", "packets_ack"];
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let running = self
                .nodes
                .iter()
                .filter(|n| n.daemon.is_some())
                .map(|n| &n.data)
                .chain(
                    self.clients
                        .iter()
                        .filter(|c| c.daemon.is_some())
                        .map(|c| &c.data),
                );
            let busy: Vec<(usize, serde_json::Value)> = running
                .enumerate()
                .map(|(i, data)| (i, super::queue_json(data)))
                .filter(|(_, q)| {
                    q["messages"] != 0
                        || q["mixnet"].as_object().is_some_and(|m| {
                            m.iter().any(|(k, v)| {
                                *v != 0 && !(cover_flows && COVER_KEYS.contains(&k.as_str()))
                            })
                        })
                })
                .collect();
            if busy.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the mixnet never went quiet: {busy:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of counter `field` in the last `[STATS]` line of `d`.
pub fn last_stat(d: &Daemon, field: &str) -> Option<u64> {
    d.log_text()
        .lines()
        .filter(|l| l.contains("[STATS]"))
        .filter_map(|l| stat_in(l, field))
        .next_back()
}

/// Waits until a `[STATS]` line of `d` shows `field` satisfying `ok`
/// (counters only grow, so any line will do), and returns the value.
pub async fn until_stat(d: &Daemon, field: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let line = d
        .until_log(&format!("with {field} as wanted"), |l| {
            l.contains("[STATS]") && stat_in(l, field).is_some_and(&ok)
        })
        .await;
    stat_in(&line, field).unwrap()
}

fn stat_in(line: &str, field: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(field)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

impl MixNet {
    /// Stops node `i` (if running) and starts it again on its data dir
    /// under `strace -f -qq` with `options` (which syscalls to trace);
    /// [`Daemon::stop_traced`] on `daemon_mut(i)` returns the trace. The
    /// trace starts with the process, so it covers every link it dials.
    pub fn restart_node_traced(&mut self, i: usize, options: &[&str]) {
        self.nodes[i].daemon = None;
        let trace = self
            ._dir
            .path()
            .join(format!("{}.strace", self.nodes[i].short));
        let trace_arg = trace.to_str().unwrap().to_string();
        let mut wrapper: Vec<&str> = vec!["strace", "-f", "-qq", "-o", &trace_arg];
        wrapper.extend(options);
        self.launch(i, &wrapper, &[], Some(trace));
    }

    pub fn daemon_mut(&mut self, i: usize) -> &mut Daemon {
        self.nodes[i].daemon.as_mut().expect("running")
    }
}
