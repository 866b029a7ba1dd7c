//! `pluto2 check`, driven through the real binary: a good setup against
//! the test's own SOCKS proxy passes (exit 0, every line `ok`), each bad
//! item fails (exit 1) with its own `problem` line, and nothing in the data
//! directory is created or changed.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::link_tap::{Direction, FrameKind, LinkTap};
use common::mixnet::{LINK_PORT, MixNet, alice_and_four, alice_flags};
use common::socks_proxy::SocksProxy;
use common::{BIN, Daemon, DeadEnd, PATIENCE, onion};

/// Tor's reply to an onion name it refuses, with ExtendedErrors.
const BAD_ADDRESS: u8 = 0xF6;

/// What `pluto2 check` printed and how it exited.
struct Report {
    code: Option<i32>,
    lines: Vec<String>,
}

impl Report {
    fn line(&self, prefix: &str) -> &str {
        self.lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}: {:#?}", self.lines))
    }

    fn problems(&self) -> Vec<&String> {
        self.lines
            .iter()
            .filter(|l| !l.starts_with("ok "))
            .collect()
    }
}

async fn check(args: &[&str]) -> Report {
    let out = tokio::process::Command::new(BIN)
        .arg("check")
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = stdout.lines().map(String::from).collect();
    for line in &lines {
        assert!(
            line.starts_with("ok ") || line.starts_with("problem "),
            "{line}"
        );
    }
    Report {
        code: out.status.code(),
        lines,
    }
}

/// Every file in `dir` with its mode, size, modification time and bytes,
/// and the directory's own mode and time.
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, u64, i64, i64, Vec<u8>)> {
    let mut files = BTreeMap::new();
    let meta = std::fs::metadata(dir).unwrap();
    files.insert(
        ".".to_string(),
        (meta.mode(), 0, meta.mtime(), meta.mtime_nsec(), Vec::new()),
    );
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        files.insert(
            entry.file_name().to_string_lossy().into_owned(),
            (
                meta.mode(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                std::fs::read(entry.path()).unwrap(),
            ),
        );
    }
    files
}

/// A data directory the daemon made and closed cleanly (spool, cover key,
/// lock), and a proxy that refuses the probe as Tor with ExtendedErrors.
struct Setup {
    _dir: tempfile::TempDir,
    data: PathBuf,
    proxy: SocksProxy,
}

impl Setup {
    async fn new() -> Setup {
        let mut daemon = Daemon::start(&[]);
        let data = daemon.data_dir.clone();
        daemon.signal("TERM");
        assert!(daemon.wait().success());
        let dir = daemon.take_dir().unwrap();
        let proxy = SocksProxy::start().await;
        proxy.unknown_reply(BAD_ADDRESS);
        Setup {
            _dir: dir,
            data,
            proxy,
        }
    }

    /// The daemon's flags for this setup with Tor at `socks`, plus `extra`.
    fn flags(&self, socks: std::net::SocketAddr, extra: &[&str]) -> Vec<String> {
        let mut flags: Vec<String> = [
            "-name",
            &onion(1),
            "-addr",
            "127.0.0.1:0",
            "-data-dir",
            self.data.to_str().unwrap(),
            "-tor-socks",
            &socks.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    }

    async fn check(&self, extra: &[&str]) -> Report {
        self.check_via(self.proxy.addr, extra).await
    }

    async fn check_via(&self, socks: std::net::SocketAddr, extra: &[&str]) -> Report {
        let flags = self.flags(socks, extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        check(&flags).await
    }
}

#[tokio::test]
async fn a_good_setup_passes_every_check_and_changes_nothing() {
    let setup = Setup::new().await;
    let hostname = setup.data.parent().unwrap().join("hostname");
    std::fs::write(&hostname, format!("{}\n", onion(1))).unwrap();
    let before = snapshot(&setup.data);
    assert!(before.contains_key(pluto2::spool::SPOOL_FILE), "{before:?}");
    let report = setup
        .check(&["-hs-hostname-file", hostname.to_str().unwrap()])
        .await;
    assert_eq!(report.code, Some(0), "{:#?}", report.lines);
    assert!(report.problems().is_empty(), "{:#?}", report.lines);
    assert_eq!(report.line("ok flags"), "ok flags");
    assert!(
        report
            .line("ok -hs-hostname-file")
            .ends_with("matches -name")
    );
    assert!(report.line("ok -data-dir").contains("mode 0700"));
    assert!(report.line("ok cover key").contains("32 bytes"));
    assert!(report.line("ok spool").contains("quick_check ok"));
    assert!(report.line("ok -tor-socks").contains("ExtendedErrors"));
    assert_eq!(snapshot(&setup.data), before, "check changed the data dir");
    // The probe was a well-formed onion name, sent unresolved.
    let requests = setup.proxy.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0].host,
        pluto2::check::invalid_key_onion().as_str()
    );
    assert!(requests[0].by_name);
}

#[tokio::test]
async fn a_missing_data_dir_is_fine_and_is_not_created() {
    let proxy = SocksProxy::start().await;
    proxy.unknown_reply(BAD_ADDRESS);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let report = check(&[
        "-name",
        &onion(1),
        "-data-dir",
        data.to_str().unwrap(),
        "-tor-socks",
        &proxy.addr.to_string(),
    ])
    .await;
    assert_eq!(report.code, Some(0), "{:#?}", report.lines);
    assert!(report.line("ok -data-dir").contains("does not exist yet"));
    assert!(report.line("ok spool").contains("none yet"));
    assert!(!data.exists(), "check created the data dir");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn tor_without_extended_errors_is_a_problem_with_the_torrc_fix() {
    let setup = Setup::new().await;
    // What Tor answers for a bad onion name without ExtendedErrors.
    setup.proxy.unknown_reply(0x01);
    let report = setup.check(&[]).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    let line = report.line("problem -tor-socks");
    assert!(line.contains("0x01"), "{line}");
    assert!(
        line.contains("add ExtendedErrors to the SocksPort"),
        "{line}"
    );
    assert_eq!(report.problems().len(), 1, "{:#?}", report.lines);
}

#[tokio::test]
async fn a_proxy_that_is_not_socks_is_a_problem() {
    let setup = Setup::new().await;
    let dead = DeadEnd::start();
    let report = setup.check_via(dead.addr, &[]).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    let line = report.line("problem -tor-socks");
    assert!(line.contains("SOCKS5 handshake"), "{line}");
}

#[tokio::test]
async fn a_bad_flag_is_named_in_one_problem_line() {
    let setup = Setup::new().await;
    for bad in [&["-workers", "0"][..], &["-no-such-flag"][..]] {
        let report = setup.check(bad).await;
        assert_eq!(report.code, Some(1), "{:#?}", report.lines);
        assert_eq!(report.lines.len(), 1, "{:#?}", report.lines);
        assert!(
            report.lines[0].starts_with("problem flags: "),
            "{:#?}",
            report.lines
        );
    }
}

#[tokio::test]
async fn a_data_dir_and_cover_key_open_to_others_are_problems() {
    let setup = Setup::new().await;
    std::fs::set_permissions(&setup.data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let report = setup.check(&[]).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    let line = report.line("problem -data-dir");
    assert!(
        line.contains("0755") && line.contains("chmod 700"),
        "{line}"
    );

    std::fs::set_permissions(&setup.data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = setup.data.join("cover.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let report = setup.check(&[]).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    let line = report.line("problem cover key");
    assert!(line.contains("chmod 600"), "{line}");

    std::fs::write(&key, b"short").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let report = setup.check(&[]).await;
    let line = report.line("problem cover key");
    assert!(line.contains("not a 32-byte file"), "{line}");
}

#[tokio::test]
async fn a_damaged_spool_is_a_problem_and_stays_as_it_was() {
    let setup = Setup::new().await;
    let spool = setup.data.join(pluto2::spool::SPOOL_FILE);
    std::fs::write(&spool, vec![0x5a; 8192]).unwrap();
    let before = snapshot(&setup.data);
    let report = setup.check(&[]).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    let line = report.line("problem spool");
    assert!(line.contains("damaged"), "{line}");
    assert_eq!(snapshot(&setup.data), before);
}

#[tokio::test]
async fn a_hostname_file_naming_another_onion_is_a_problem() {
    let setup = Setup::new().await;
    let hostname = setup.data.parent().unwrap().join("hostname");
    std::fs::write(&hostname, format!("{}\n", onion(2))).unwrap();
    let report = setup
        .check(&["-hs-hostname-file", hostname.to_str().unwrap()])
        .await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    let line = report.line("problem -hs-hostname-file");
    assert!(line.contains("another onion name than -name"), "{line}");
    assert_eq!(report.problems().len(), 1, "{:#?}", report.lines);
}

#[tokio::test]
async fn in_mixnet_mode_it_checks_nodes_json_and_names_the_unreachable_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pki = alice_and_four(dir.path(), &data);
    let good = std::fs::read(&pki).unwrap();
    // bob and carol answer on their link port; dave's onion service is
    // not published (0xF2), erin's proxy gets nothing from Tor (0xF6 by
    // default for unknown names).
    let link = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = SocksProxy::start().await;
    proxy.unknown_reply(BAD_ADDRESS);
    for seed in [2u8, 3] {
        proxy.route(&onion(seed), 9999, link.local_addr().unwrap());
    }
    proxy.refuse(&onion(4), 9999, 0xF2);
    let before = snapshot(&data);
    let mut flags = alice_flags(&pki);
    flags.extend(["-data-dir", data.to_str().unwrap(), "-tor-socks"].map(String::from));
    flags.push(proxy.addr.to_string());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let report = check(&flags).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    assert!(report.line("ok -pki-file").contains("5 nodes"));
    assert!(report.line("ok mixnet node \"bob\"").contains("reachable"));
    assert!(
        report
            .line("ok mixnet node \"carol\"")
            .contains("reachable")
    );
    assert!(report.line("problem mixnet node \"dave\"").contains("0xf2"));
    report.line("problem mixnet node \"erin\"");
    assert_eq!(report.problems().len(), 2, "{:#?}", report.lines);
    assert_eq!(snapshot(&data), before, "check changed the data dir");

    // A broken nodes.json is named by its flag.
    std::fs::write(&pki, b"{\"nodes\": [").unwrap();
    let report = check(&flags).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    assert!(
        report
            .line("problem -pki-file")
            .contains("not a valid nodes.json")
    );

    // With -pki-trust, an unsigned file is refused as the daemon would
    // refuse it (and nothing is saved).
    std::fs::write(&pki, &good).unwrap();
    let trusted = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    let trust = data_encoding::BASE64.encode(trusted.as_bytes());
    let mut signed_flags = flags.to_vec();
    signed_flags.extend(["-pki-trust", trust.as_str()]);
    let report = check(&signed_flags).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    report.line("problem -pki-file");
    assert_eq!(snapshot(&data), before, "check changed the data dir");
}

/// The test network's parameters with a client's send and fetch means
/// (as in tests/mixnet_client.rs).
const CLIENT_PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "20ms", "hop_delay_max": "240ms",
    "max_message_size": 262144, "ack_timeout": "4s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "loop_cover_mean": "0s", "drop_cover_mean": "0s",
    "client_send_mean": "25ms", "client_fetch_mean": "25ms"}"#;

/// A client's flags for `pluto2 check`: gateway `via`, `pki`, its data
/// dir, Tor at `socks`.
fn client_flags(via: &str, pki: &Path, data: &Path, socks: std::net::SocketAddr) -> Vec<String> {
    [
        "-sphinx",
        "-client",
        "-via",
        via,
        "-pki-file",
        pki.to_str().unwrap(),
        "-addr",
        "127.0.0.1:0",
        "-data-dir",
        data.to_str().unwrap(),
        "-tor-socks",
        &socks.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

async fn check_owned(flags: &[String]) -> Report {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    check(&flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_client_mode_it_asks_the_gateway_whether_it_serves_this_client() {
    // Node 0 is a gateway, the others are not. The client's Tor is a tap
    // of its own that reaches every node's link port.
    let flags = vec![vec!["-gateway"], vec![], vec![], vec![], vec![]];
    let net = MixNet::start_with_flags(CLIENT_PARAMS, &flags).await;
    let tap = LinkTap::start().await;
    tap.refuse(pluto2::check::invalid_key_onion().as_str(), 25, BAD_ADDRESS);
    for node in &net.nodes {
        let port = node.link_port.unwrap();
        tap.route_link(&node.onion, LINK_PORT, ([127, 0, 0, 1], port).into());
    }
    let gateway = net.nodes[0].onion.clone();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("client");

    // A client with no data dir yet: its gateway serves it (asked with a
    // throwaway key), and nothing is created.
    let report = check_owned(&client_flags("n0", &net.pki, &data, tap.addr)).await;
    assert_eq!(report.code, Some(0), "{:#?}", report.lines);
    assert!(report.problems().is_empty(), "{:#?}", report.lines);
    assert!(report.line("ok client seed").contains("does not exist yet"));
    assert!(
        report
            .line("ok -pki-file")
            .contains("-via n0 listed as the gateway \"n0\"")
    );
    assert!(
        report
            .line("ok gateway \"n0\"")
            .contains("accepting this client (asked with a throwaway key")
    );
    assert!(!data.exists(), "check created the data dir");
    // It asked for one held reply and confirmed nothing, sent nothing.
    let closed = |c: &[common::link_tap::TapConn]| c.iter().all(|c| c.closed.is_some());
    tap.wait_connections(closed, PATIENCE).await.unwrap();
    let kinds =
        |d| -> Vec<FrameKind> { tap.frames_on(&gateway, d).iter().map(|f| f.kind).collect() };
    assert_eq!(
        kinds(Direction::ToTarget),
        [FrameKind::Hello, FrameKind::Auth, FrameKind::Fetch]
    );
    assert_eq!(
        kinds(Direction::FromTarget),
        [FrameKind::Hello, FrameKind::Auth, FrameKind::Held]
    );

    // With a seed, the client's own key (its mailbox is empty).
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let seed = data.join("client-seed");
    std::fs::write(&seed, [7u8; 32]).unwrap();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = snapshot(&data);
    let report = check_owned(&client_flags("n0", &net.pki, &data, tap.addr)).await;
    assert_eq!(report.code, Some(0), "{:#?}", report.lines);
    assert!(report.line("ok client seed").contains("32 bytes"));
    assert!(
        report
            .line("ok gateway \"n0\"")
            .ends_with("accepting this client (its mailbox is empty)")
    );
    assert_eq!(snapshot(&data), before, "check changed the data dir");

    // -via names a node that is no gateway: refused as the client would
    // refuse it at start, naming it.
    let report = check_owned(&client_flags("n1", &net.pki, &data, tap.addr)).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    assert!(report.line("problem -pki-file").contains("n1"));
    assert_eq!(report.problems().len(), 1, "{:#?}", report.lines);

    // A nodes.json that lists n1 as a gateway although it runs without
    // -gateway: n1 does not take clients.
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&net.pki).unwrap()).unwrap();
    doc["nodes"][1]["gateway"] = true.into();
    let claimed = dir.path().join("nodes.json");
    std::fs::write(&claimed, doc.to_string()).unwrap();
    let report = check_owned(&client_flags("n1", &claimed, &data, tap.addr)).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    let line = report.line("problem gateway \"n1\"");
    assert!(line.contains("not accepting clients"), "{line}");
    assert_eq!(report.problems().len(), 1, "{:#?}", report.lines);

    // The gateway down: not reachable, named.
    tap.down(&gateway, LINK_PORT);
    let report = check_owned(&client_flags("n0", &net.pki, &data, tap.addr)).await;
    assert_eq!(report.code, Some(1), "{:#?}", report.lines);
    let line = report.line("problem gateway \"n0\"");
    assert!(line.contains("not reachable through -tor-socks"), "{line}");
    assert_eq!(report.problems().len(), 1, "{:#?}", report.lines);
    assert_eq!(snapshot(&data), before, "check changed the data dir");
}
