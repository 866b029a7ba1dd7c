//! The mixnet's operator contract, driven through the real binary:
//! `-export-node-info`, `nodes.json` checked at start, the `-smtp` alias,
//! and `-sphinx` mode accepting mail without ever delivering it directly.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::socks_proxy::SocksProxy;
use common::{BIN, Client, Daemon, DeadEnd, PATIENCE, onion, refused};
use serde_json::{Value, json};

/// Runs `pluto2 -export-node-info` for `name` in `data_dir`.
fn export(name: &str, short: &str, data_dir: &Path, extra: &[&str]) -> std::process::Output {
    let dead = DeadEnd::start();
    Command::new(BIN)
        .args(["-name", name, "-short-name", short, "-data-dir"])
        .arg(data_dir)
        .args(["-tor-socks", &dead.addr.to_string()])
        .args(extra)
        .arg("-export-node-info")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn exported(name: &str, short: &str, data_dir: &Path, extra: &[&str]) -> Value {
    let out = export(name, short, data_dir, extra);
    assert!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn export_node_info_prints_one_stable_entry_and_makes_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let name = onion(1);
    // Whatever -addr and -node say, exporting binds nothing: both name a
    // port this test holds, which a bind would fail on.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let out = export(
        &name,
        "alice",
        &data,
        &["-addr", &port, "-node", &port, "-family", "ops-1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let entry: Value = serde_json::from_str(&stdout).unwrap();
    let fields: Vec<&str> = entry
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = fields.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["exit", "family", "identity", "name", "onion", "port"]
    );
    assert_eq!(entry["name"], "alice");
    assert_eq!(entry["onion"], name.as_str());
    assert_eq!(entry["port"], 9999);
    assert_eq!(entry["exit"], true);
    assert_eq!(entry["family"], "ops-1");
    let b64 = entry["identity"].as_str().unwrap();
    let bytes = data_encoding::BASE64.decode(b64.as_bytes()).unwrap();
    assert_eq!(bytes.len(), 32);

    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("identity.key")), 0o600);
    // No spool was opened and no mix key made (they rotate, and are made
    // when the node runs): nothing but the identity.
    let mut files: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["identity.key"]);

    // A second run prints the same keys; other flags change their fields.
    let again = exported(
        &name,
        "alice",
        &data,
        &["-exit=false", "-node-port", "7000"],
    );
    assert_eq!(again["identity"], entry["identity"]);
    assert_eq!(again["exit"], false);
    assert_eq!(again["port"], 7000);
    assert!(again.get("family").is_none(), "{again}");
    drop(held);
}

#[test]
fn export_node_info_refuses_a_damaged_identity_key_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    exported(&onion(1), "alice", &data, &[]);
    let key = data.join("identity.key");
    let mut bytes = std::fs::read(&key).unwrap();
    bytes.truncate(20);
    std::fs::write(&key, &bytes).unwrap();
    let out = export(&onion(1), "alice", &data, &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("identity.key holds 20 bytes"), "{err}");
    assert!(err.contains("restore"), "{err}");
    // Left as it was: pluto2 never repairs a key on its own.
    assert_eq!(std::fs::read(&key).unwrap(), bytes);
}

#[test]
fn export_node_info_needs_a_short_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["-name", &onion(1), "-export-node-info", "-data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("pluto2: -short-name"), "{err}");
    assert!(!dir.path().join("data").exists());
}

/// Five nodes: this one (`onion(1)`, keys in `data`) and four others,
/// each entry made by the real `-export-node-info`.
fn network(data: &Path, params: Value) -> Value {
    let scratch = tempfile::tempdir().unwrap();
    let mut nodes = vec![exported(&onion(1), "alice", data, &[])];
    for (seed, short) in [(2u8, "bob"), (3, "carol"), (4, "dave"), (5, "erin")] {
        let d = scratch.path().join(short);
        nodes.push(exported(&onion(seed), short, &d, &[]));
    }
    json!({ "nodes": nodes, "params": params })
}

/// Starts the daemon in -sphinx mode against `pki` and returns its exit
/// status and stderr (it is expected to stop at once).
fn refused_start(data: &Path, pki: &Path) -> (Option<i32>, String) {
    refused_start_on(data, pki, "127.0.0.1:0")
}

/// [`refused_start`] with the link listener on `node`.
fn refused_start_on(data: &Path, pki: &Path, node: &str) -> (Option<i32>, String) {
    let dead_end = DeadEnd::start();
    let dead = dead_end.addr.to_string();
    refused(
        Command::new(BIN)
            .args(["-name", &onion(1), "-short-name", "alice", "-sphinx"])
            .args(["-addr", "127.0.0.1:0", "-node", node])
            .args(["-tor-socks", &dead, "-dns-server", &dead, "-data-dir"])
            .arg(data)
            .arg("-pki-file")
            .arg(pki),
    )
}

#[test]
fn a_bad_nodes_json_stops_startup_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let good = network(&data, json!({}));
    let pki = dir.path().join("nodes.json");

    let mut unknown = good.clone();
    unknown["params"] = json!({"hop": 3});
    let mut twice = good.clone();
    let copy = twice["nodes"][2].clone();
    twice["nodes"].as_array_mut().unwrap().push(copy);
    let mut absent = good.clone();
    absent["nodes"].as_array_mut().unwrap().remove(0);
    let mut few = good.clone();
    few["params"] = json!({"hops": 5});
    let mut stale = good.clone();
    stale["nodes"][0]["identity"] = good["nodes"][1]["identity"].clone();
    stale["nodes"][1]["identity"] = good["nodes"][0]["identity"].clone();
    let mut bad_onion = good.clone();
    let o = good["nodes"][3]["onion"].as_str().unwrap();
    let flipped = if o.starts_with('a') { "b" } else { "a" };
    bad_onion["nodes"][3]["onion"] = json!(format!("{flipped}{}", &o[1..]));

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "cannot read it"),
        ("not json", Some("{nodes".into()), "not a valid nodes.json"),
        (
            "unknown key",
            Some(unknown.to_string()),
            "unknown field `hop`",
        ),
        (
            "listed twice",
            Some(twice.to_string()),
            "nodes[5] \"carol\" has the same onion as nodes[2] \"carol\"",
        ),
        ("absent", Some(absent.to_string()), "is not listed"),
        (
            "too few",
            Some(few.to_string()),
            "a route needs 5 mix nodes",
        ),
        ("stale", Some(stale.to_string()), "another \"identity\""),
        (
            "bad onion",
            Some(bad_onion.to_string()),
            "nodes[3] \"dave\": \"onion\"",
        ),
    ];
    for (case, content, said) in cases {
        match &content {
            Some(text) => std::fs::write(&pki, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&pki);
            }
        }
        let (code, err) = refused_start(&data, &pki);
        assert_eq!(code, Some(64), "{case}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{case}: {err}");
        let prefix = format!("pluto2: -pki-file {}: ", pki.display());
        assert!(err.starts_with(&prefix), "{case}: {err}");
        assert!(err.contains(said), "{case}: {err}");
    }
    // None of these starts got as far as the spool or the mix keys: only
    // the identity (and the data dir's lock, taken first) exist.
    let mut files: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["identity.key", "lock"]);
}

/// Reads the daemon's stderr until it says where it listens.
fn listening_on(child: &mut std::process::Child) -> (std::net::SocketAddr, Vec<String>) {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            seen.push(line.clone());
            if let Some(addr) = line.split("[CONN] listening on ").nth(1) {
                let _ = tx.send((addr.trim().parse().unwrap(), seen.clone()));
            }
        }
    });
    rx.recv_timeout(PATIENCE).expect("pluto2 did not start")
}

#[tokio::test]
async fn smtp_is_another_name_for_addr() {
    let dir = tempfile::tempdir().unwrap();
    let dead_end = DeadEnd::start();
    let dead = dead_end.addr.to_string();
    for form in [&["-smtp", "127.0.0.1:0"][..], &["-smtp=127.0.0.1:0"]] {
        let mut child = Command::new(BIN)
            .args(["-name", &onion(1), "-cover-interval", "0"])
            .args(["-tor-socks", &dead, "-dns-server", &dead, "-data-dir"])
            .arg(dir.path().join("data"))
            .args(form)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (addr, _) = listening_on(&mut child);
        let mut c = Client::connect(addr).await;
        assert_eq!(c.reply().await.0, 220);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// Sends one message to a clearnet and an onion recipient; returns the
/// EHLO reply.
async fn send_one(d: &Daemon) -> String {
    let mut c = d.client().await;
    let (code, ehlo) = c.cmd("EHLO client.example").await;
    assert_eq!(code, 250, "{ehlo}");
    let code = c
        .send_mail(
            "someone@example.org",
            &["friend@example.org", &format!("peer@{}", onion(9))],
            "Subject: hello\r\n\r\nthrough the mixnet",
        )
        .await;
    assert_eq!(code, 250);
    ehlo
}

/// In -sphinx mode the entry accepts mail and keeps it: no SOCKS CONNECT
/// at all (no delivery to port 25, no MX lookup), with `SIZE` from
/// nodes.json. The same node in direct mode connects at once, which
/// bounds how long "never" has to be watched.
#[tokio::test]
async fn sphinx_mode_accepts_mail_and_never_delivers_directly() {
    let proxy = SocksProxy::start().await;
    let socks = proxy.addr.to_string();
    let common_flags = ["-tor-socks", &socks, "-dns-server", "127.0.0.1:53"];

    // Control: direct mode, no batching, dials within moments.
    let direct = Daemon::start(&[&common_flags[..], &["-batch-window", "0"]].concat());
    send_one(&direct).await;
    let started = Instant::now();
    while proxy.requests().is_empty() {
        assert!(started.elapsed() < PATIENCE, "direct mode never dialled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let direct_took = started.elapsed();
    drop(direct);

    let proxy = SocksProxy::start().await;
    let socks = proxy.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let nodes = network(
        &data,
        json!({"max_message_size": 65536, "hop_delay_mean": "20ms"}),
    );
    let pki = dir.path().join("nodes.json");
    std::fs::write(&pki, nodes.to_string()).unwrap();
    let pki_arg = pki.to_str().unwrap();
    let d = Daemon::start_in(
        &data,
        &[
            "-sphinx",
            "-pki-file",
            pki_arg,
            "-short-name",
            "alice",
            "-node",
            "127.0.0.1:0",
            "-batch-window",
            "0",
            "-cover-interval",
            "1s",
            "-tor-socks",
            &socks,
            "-dns-server",
            "127.0.0.1:53",
        ],
    );
    let line = d
        .until_log("saying where mixnet links listen", |l| {
            l.contains("[MIXNET]") && l.contains("links on")
        })
        .await;
    assert!(line.contains("5 nodes"), "{line}");
    let ehlo = send_one(&d).await;
    assert!(ehlo.contains("SIZE 65536"), "{ehlo}");
    // Larger mail than the network carries is refused, whatever
    // -max-message-size says.
    let mut c = d.ehlo_client().await;
    let (code, text) = c.cmd("MAIL FROM:<a@example.org> SIZE=65537").await;
    assert_eq!(code, 552, "{text}");

    let watch = (direct_took * 20).max(Duration::from_secs(2));
    let started = Instant::now();
    // Links to the other nodes (port 9999, which this proxy does not
    // route) are all it dials: no SMTP, no DNS.
    let only_links = |proxy: &SocksProxy| {
        let r = proxy.requests();
        assert!(
            r.iter()
                .all(|r| r.port == 9999 && r.host.ends_with(".onion")),
            "a -sphinx entry dialled something else than links: {r:?}"
        );
    };
    while started.elapsed() < watch {
        only_links(&proxy);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No peer is reachable, so the message waits in the spool (never
    // direct), and no SMTP loop cover was added.
    let q = d.queue_json();
    assert_eq!(q["messages"], 1, "{q}");
    only_links(&proxy);

    // SIGTERM stops a -sphinx node cleanly (nothing holds the spool open).
    let mut d = d;
    d.signal("TERM");
    assert!(d.wait().success());
    d.until_log("closed cleanly", |l| l.contains("[SPOOL] closed cleanly"))
        .await;
    only_links(&proxy);
}

#[test]
fn a_link_port_in_use_is_named_as_the_node_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let node = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pki = dir.path().join("nodes.json");
    std::fs::write(&pki, network(&data, json!({})).to_string()).unwrap();
    let (code, err) = refused_start_on(&data, &pki, &node);
    assert_eq!(code, Some(69), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("pluto2: -node {node}: ")), "{err}");
    assert!(err.contains("choose another -node"), "{err}");
    assert!(!err.contains("-addr"), "{err}");
}
