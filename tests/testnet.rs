//! `pluto2 testnet` as a newcomer runs it: one command, then the swaks line
//! it prints, and the mail in `DIR/sink/` once; `testnet kill/start`
//! beside it while mail is on its way, and still every message once; and
//! Ctrl-C leaves no process behind.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::BIN;

/// Bounds a whole mixnet crossing on a busy 2-core machine: hop delays
/// of half a second, a client that sends once a second, exits that batch
/// for a second, and retransmission after 30 s when a node was down.
const CROSSING: Duration = Duration::from_secs(240);

/// A running `pluto2 testnet` and the lines it printed.
struct Testnet {
    child: Child,
    dir: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    _tmp: tempfile::TempDir,
}

impl Testnet {
    fn start(extra: &[&str]) -> Testnet {
        Self::start_within(extra, Duration::from_secs(180))
    }

    /// With `-tor` the private Tor network bootstraps first (about half a
    /// minute here, two on a loaded machine) and every onion must answer.
    fn start_within(extra: &[&str], patience: Duration) -> Testnet {
        let net = Self::launch(extra);
        net.until(patience, "the testnet to say ready", |n| {
            n.line_with("ready;").is_some()
        });
        net
    }

    /// Starts `pluto2 testnet` and returns at once.
    fn launch(extra: &[&str]) -> Testnet {
        let tmp = tempfile::tempdir().unwrap();
        // Absolute and resolved, as the testnet writes it in command lines.
        let dir = tmp.path().canonicalize().unwrap().join("net");
        let mut child = Command::new(BIN)
            .arg("testnet")
            .arg("-dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Testnet {
            child,
            dir,
            lines,
            _tmp: tmp,
        }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn line_with(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// Polls `done` until it holds; panics with the testnet's output past
    /// `patience` or if the testnet exited.
    fn until(&self, patience: Duration, what: &str, done: impl Fn(&Testnet) -> bool) {
        let deadline = Instant::now() + patience;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "no {what} within {patience:?}; testnet said:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The swaks command it printed, as words.
    fn swaks_line(&self) -> Vec<String> {
        let line = self.line_with("swaks --server").expect("a swaks line");
        let (_, cmd) = line.split_once("swaks").unwrap();
        cmd.split_whitespace().map(String::from).collect()
    }

    /// A node's SMTP port from its line (`  bob     smtp 127.0.0.1:PORT …`).
    fn smtp_of(&self, name: &str) -> String {
        let line = self
            .line_with(&format!("  {name} "))
            .unwrap_or_else(|| panic!("no line for {name}"));
        line.split_whitespace()
            .nth(2)
            .expect("smtp address")
            .to_string()
    }

    /// Sends one message tagged `tag` with the printed swaks line, to
    /// `server` instead of the printed one when given.
    fn swaks(&self, tag: &str, server: Option<&str>) {
        let mut args = self.swaks_line();
        if let Some(s) = server {
            let i = args.iter().position(|a| a == "--server").unwrap();
            args[i + 1] = s.to_string();
        }
        let out = Command::new("swaks")
            .args(&args)
            .args(["--header", &format!("Subject: {tag}")])
            .args(["--body", &format!("hello {tag}\n")])
            .output()
            .expect("swaks must be installed (the README's test command installs it)");
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && transcript.contains("<-  250 2.0.0 Ok: queued"),
            "swaks to {server:?}:\n{transcript}"
        );
    }

    /// How many files in `DIR/sink/` hold `Subject: tag`.
    fn in_sink(&self, tag: &str) -> usize {
        let Ok(entries) = std::fs::read_dir(self.dir.join("sink")) else {
            return 0;
        };
        let needle = format!("Subject: {tag}\r\n");
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
            .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|text| text.contains(&needle)))
            .count()
    }

    /// `pluto2 testnet OP NODE -dir DIR` as run beside the testnet.
    fn run_fault(&self, op: &str, node: &str) -> std::process::Output {
        Command::new(BIN)
            .args(["testnet", op, node, "-dir"])
            .arg(&self.dir)
            .output()
            .unwrap()
    }

    /// [`Testnet::run_fault`]: its stdout, or a panic with its stderr.
    fn fault(&self, op: &str, node: &str) -> String {
        let out = self.run_fault(op, node);
        assert!(
            out.status.success(),
            "testnet {op} {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pluto2 queue -json` of a member: (messages, custody packets).
    fn queue(&self, member: &str) -> (u64, u64) {
        let out = Command::new(BIN)
            .args(["queue", "-json", "-data-dir"])
            .arg(self.dir.join(member))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        let forward = v["mixnet"]["packets_forward"].as_u64().unwrap_or(0);
        (v["messages"].as_u64().unwrap(), forward)
    }

    /// Ctrl-C, as in its terminal; returns once it exited (bounded) and
    /// checks that no process it started is left.
    fn interrupt(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}: {}", self.output());
                let left = running_in(&self.dir);
                assert!(left.is_empty(), "left running after Ctrl-C: {left:?}");
                return;
            }
            assert!(Instant::now() < deadline, "testnet still runs after Ctrl-C");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Pids of processes (not zombies) whose command line names `dir`.
fn running_in(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("status"))
            .is_ok_and(|s| s.contains("Z (zombie)"));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for Testnet {
    /// A failed test leaves nothing running either.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in running_in(&self.dir) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

#[test]
fn the_printed_swaks_line_delivers_once_and_ctrl_c_leaves_nothing_running() {
    let mut net = Testnet::start(&[]);
    // The line as printed (through the client), and once through a node
    // that wraps it as an entry.
    net.swaks("via-client", None);
    net.swaks("via-carol", Some(&net.smtp_of("carol")));
    net.until(CROSSING, "mail in the sink", |n| {
        n.in_sink("via-client") >= 1 && n.in_sink("via-carol") >= 1
    });
    // Once, for good: the client and carol have their COMPLETE (nothing
    // left to retransmit).
    net.until(CROSSING, "empty queues at the senders", |n| {
        n.queue("client").0 == 0 && n.queue("carol").0 == 0
    });
    assert_eq!(net.in_sink("via-client"), 1);
    assert_eq!(net.in_sink("via-carol"), 1);
    assert!(net.output().contains("delivered: "), "{}", net.output());

    // A second testnet on a running one's directory is refused.
    let again = Command::new(BIN)
        .args(["testnet", "-dir"])
        .arg(&net.dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(75), "{said}");
    assert!(said.contains("a testnet runs there"), "{said}");
    // Faults it cannot act on are refused with 64 and a line saying why.
    for (op, node, why) in [
        ("kill", "zed", "no such node"),
        ("start", "bob", "already running"),
    ] {
        let out = net.run_fault(op, node);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{op} {node}: {said}");
        assert!(said.contains(why), "{op} {node}: {said}");
    }

    let members = running_in(&net.dir);
    assert!(members.len() >= 6, "five nodes and a client: {members:?}");
    net.interrupt();
}

#[test]
fn a_node_killed_while_it_holds_packets_loses_no_mail() {
    let mut net = Testnet::start(&[]);
    let tags: Vec<String> = (0..6).map(|i| format!("kill-{i}")).collect();
    for (i, tag) in tags.iter().enumerate() {
        // Two of six enter at a node, the others at the client.
        let dave = net.smtp_of("dave");
        net.swaks(tag, (i % 3 == 0).then_some(dave.as_str()));
    }
    // Mid-way: bob holds packets in custody (mail or cover; every route
    // of three mixes among four crosses bob more often than not).
    net.until(CROSSING, "packets in bob's custody", |n| {
        n.queue("bob").1 > 0
    });
    // Mid-way indeed: some of the mail has not arrived yet (the client
    // alone sends one packet a second).
    assert!(
        tags.iter().any(|t| net.in_sink(t) == 0),
        "every message arrived before bob was killed"
    );
    let killed = net.fault("kill", "bob");
    assert!(killed.starts_with("bob killed"), "{killed}");
    // While bob is down the others keep its packets and keep trying.
    net.until(CROSSING, "the testnet to see bob stop", |n| {
        n.line_with("bob stopped").is_some()
    });
    let started = net.fault("start", "bob");
    assert!(started.starts_with("bob started"), "{started}");
    net.until(CROSSING, "every message in the sink", |n| {
        tags.iter().all(|t| n.in_sink(t) >= 1)
    });
    net.until(CROSSING, "empty queues at the senders", |n| {
        n.queue("client").0 == 0 && n.queue("dave").0 == 0
    });
    for tag in &tags {
        assert_eq!(net.in_sink(tag), 1, "{tag}");
    }
    net.interrupt();
}

/// `-tor`: the same mail over links that are onion services of a private
/// Tor network (three nodes, to keep the network small); Ctrl-C stops the
/// tors too.
#[test]
fn with_tor_the_links_are_onion_services_and_ctrl_c_stops_the_tors_too() {
    let mut net = Testnet::start_within(&["-tor", "-nodes", "3"], Duration::from_secs(420));
    assert!(
        net.output()
            .contains("onion services of a private Tor network"),
        "{}",
        net.output()
    );
    // Every node and the client dial through the client tor's SocksPort,
    // not a server of the testnet's own.
    let torrc = std::fs::read_to_string(net.dir.join("tor/client/torrc")).unwrap();
    let socks = torrc
        .lines()
        .find_map(|l| l.strip_prefix("SocksPort "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the client tor's SocksPort")
        .to_string();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(net.dir.join("testnet.json")).unwrap()).unwrap();
    for member in state["members"].as_array().unwrap() {
        let args: Vec<&str> = member["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let i = args.iter().position(|a| *a == "-tor-socks").unwrap();
        assert_eq!(args[i + 1], socks, "{}", member["name"]);
    }
    let tors = running_in(&net.dir.join("tor"));
    assert!(tors.len() >= 8, "the private network's tors: {tors:?}");
    net.swaks("over-tor", None);
    net.until(CROSSING, "mail in the sink", |n| n.in_sink("over-tor") >= 1);
    net.until(CROSSING, "an empty queue at the client", |n| {
        n.queue("client").0 == 0
    });
    assert_eq!(net.in_sink("over-tor"), 1);
    net.interrupt();
}

/// Ctrl-C while the private Tor network is still coming up: the testnet
/// stops what it started so far (tors included) instead of dying and
/// leaving them running.
#[test]
fn ctrl_c_while_the_tor_network_comes_up_leaves_nothing_running() {
    let mut net = Testnet::launch(&["-tor", "-nodes", "3"]);
    net.until(
        Duration::from_secs(120),
        "the Tor network to be starting",
        |n| n.line_with("starting a private Tor network").is_some(),
    );
    net.until(Duration::from_secs(120), "a tor running", |n| {
        !running_in(&n.dir.join("tor")).is_empty()
    });
    net.interrupt();
    assert!(net.line_with("ready;").is_none(), "{}", net.output());
}
