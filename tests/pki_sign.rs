//! The signed directory through the real binary: operators sign
//! `nodes.json` with `pluto2 pki sign`, a node started with `-pki-trust`
//! and `-pki-threshold` takes it, and every way a file can be wrong
//! (tampered, unsigned, too few signatures, a rollback, expired) stops
//! startup with one line naming the file and exit status 64.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{BIN, Daemon, DeadEnd, onion, refused};
use serde_json::{Value, json};

/// Far enough ahead that no run of this suite sees it pass.
const FUTURE: &str = "2099-01-01T00:00:00Z";
const ISSUED: &str = "2025-01-01T00:00:00Z";

fn pluto2(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `pluto2 pki sign -key KEY FILE`; returns the public key it printed.
fn sign(key: &Path, file: &Path) -> String {
    let out = pluto2(&[
        "pki",
        "sign",
        "-key",
        key.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "sign: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    stdout.trim().to_string()
}

/// A signature line over `file` made with the key in `key`, as `pki
/// sign` would write it, for files `pki sign` refuses to sign (expired,
/// without serial): a node must refuse them even when signed.
fn signature_line(key: &Path, file: &[u8]) -> String {
    let seed: [u8; 32] = std::fs::read(key).unwrap().try_into().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    pluto2::wire::pki_sig::signature_line(&key, file)
}

fn sig_path(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sig", file.display()))
}

/// This node (`onion(1)`, "alice", keys in `data`) and four others, each
/// entry made by the real `-export-node-info`.
fn entries(data: &Path) -> Vec<Value> {
    let scratch = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for (seed, short) in [
        (1u8, "alice"),
        (2, "bob"),
        (3, "carol"),
        (4, "dave"),
        (5, "erin"),
    ] {
        let dir = if seed == 1 {
            data.to_path_buf()
        } else {
            scratch.path().join(short)
        };
        let out = pluto2(&[
            "-name",
            &onion(seed),
            "-short-name",
            short,
            "-data-dir",
            dir.to_str().unwrap(),
            "-export-node-info",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        nodes.push(serde_json::from_slice(&out.stdout).unwrap());
    }
    nodes
}

/// A directory document with `serial`, `issued` and `expires`.
fn document(nodes: &[Value], serial: u64, expires: &str) -> Value {
    json!({
        "serial": serial,
        "issued": ISSUED,
        "expires": expires,
        "nodes": nodes,
        "params": {"hop_delay_mean": "20ms"},
    })
}

fn write_json(path: &Path, doc: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(doc).unwrap() + "\n").unwrap();
}

/// The flags of a -sphinx node reading `pki`, plus `extra`.
fn node_flags<'a>(pki: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec![
        "-sphinx",
        "-pki-file",
        pki,
        "-short-name",
        "alice",
        "-node",
        "127.0.0.1:0",
    ];
    flags.extend(extra);
    flags
}

/// Starts a -sphinx node that is expected to refuse; returns its exit
/// status and stderr. A node that starts instead is killed after
/// PATIENCE and the test fails with what it said.
fn refused_start(data: &Path, pki: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let dead_end = DeadEnd::start();
    let dead = dead_end.addr.to_string();
    let pki_arg = pki.to_str().unwrap();
    refused(
        Command::new(BIN)
            .args(["-name", &onion(1), "-addr", "127.0.0.1:0"])
            .args(["-tor-socks", &dead, "-dns-server", &dead, "-data-dir"])
            .arg(data)
            .args(node_flags(pki_arg, extra)),
    )
}

/// Asserts one refusal line naming `pki` that contains `said`, exit 64.
fn assert_refused(case: &str, (code, err): (Option<i32>, String), pki: &Path, said: &str) {
    assert_eq!(code, Some(64), "{case}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{case}: {err}");
    let prefix = format!("pluto2: -pki-file {}: ", pki.display());
    assert!(err.starts_with(&prefix), "{case}: {err}");
    assert!(err.contains(said), "{case}: {err}");
}

/// A node that starts: it listens for SMTP (the helper waits for that) and
/// for links.
async fn started(data: &Path, pki: &Path, extra: &[&str]) -> Daemon {
    let pki_arg = pki.to_str().unwrap();
    let d = Daemon::start_in(data, &node_flags(pki_arg, extra));
    d.until_log("saying where mixnet links listen", |l| {
        l.contains("[MIXNET]") && l.contains("links on")
    })
    .await;
    d
}

fn stop(mut d: Daemon) {
    d.signal("TERM");
    assert!(d.wait().success());
}

fn saved_serial(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join("pki-serial"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Two operators, a network of five nodes, `nodes.json` with serial 5.
struct Ceremony {
    dir: tempfile::TempDir,
    data: PathBuf,
    pki: PathBuf,
    nodes: Vec<Value>,
    key_a: PathBuf,
    key_b: PathBuf,
    trust: String,
}

impl Ceremony {
    /// Both operators sign serial 5.
    fn new() -> Ceremony {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let nodes = entries(&data);
        let pki = dir.path().join("nodes.json");
        write_json(&pki, &document(&nodes, 5, FUTURE));
        let key_a = dir.path().join("op-a.key");
        let key_b = dir.path().join("op-b.key");
        let a = sign(&key_a, &pki);
        let b = sign(&key_b, &pki);
        Ceremony {
            trust: format!("{a},{b}"),
            dir,
            data,
            pki,
            nodes,
            key_a,
            key_b,
        }
    }

    fn trust_flags(&self, threshold: &'static str) -> Vec<&str> {
        vec!["-pki-trust", &self.trust, "-pki-threshold", threshold]
    }
}

#[tokio::test]
async fn two_operators_sign_and_a_node_needing_both_starts() {
    let c = Ceremony::new();
    // Keys: 32 bytes, mode 0600, printed again by `pki pubkey`.
    for (key, public) in [&c.key_a, &c.key_b].into_iter().zip(c.trust.split(',')) {
        let meta = std::fs::metadata(key).unwrap();
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let out = pluto2(&["pki", "pubkey", "-key", key.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{public}\n"));
    }
    // One line per operator; signing again replaces the line.
    let before = std::fs::read_to_string(sig_path(&c.pki)).unwrap();
    assert_eq!(before.lines().count(), 2, "{before}");
    assert_eq!(sign(&c.key_a, &c.pki), c.trust.split(',').next().unwrap());
    let after = std::fs::read_to_string(sig_path(&c.pki)).unwrap();
    assert_eq!(after, before);

    let d = started(&c.data, &c.pki, &c.trust_flags("2")).await;
    let line = d
        .until_log("accepting nodes.json", |l| {
            l.contains("nodes.json accepted")
        })
        .await;
    assert!(
        line.contains("serial 5, signed by 2 of 2 trusted keys (2 needed)"),
        "{line}"
    );
    assert!(!d.log_text().contains("not signature-checked"));
    assert_eq!(saved_serial(&c.data).as_deref(), Some("5"));
    stop(d);
}

#[test]
fn a_tampered_unsigned_or_undersigned_file_stops_startup() {
    let c = Ceremony::new();
    let signed = std::fs::read(&c.pki).unwrap();
    let both = std::fs::read(sig_path(&c.pki)).unwrap();

    // One byte changed after signing: a port 9999 becomes 9998. Still a
    // valid file; only the signatures tell.
    let at = signed.windows(4).position(|w| w == b"9999").unwrap() + 3;
    let mut tampered = signed.clone();
    tampered[at] = b'8';
    std::fs::write(&c.pki, &tampered).unwrap();
    assert_refused(
        "tampered",
        refused_start(&c.data, &c.pki, &c.trust_flags("1")),
        &c.pki,
        "0 valid signatures from trusted keys, 1 needed (2 invalid)",
    );
    std::fs::write(&c.pki, &signed).unwrap();

    // No signature file.
    std::fs::remove_file(sig_path(&c.pki)).unwrap();
    assert_refused(
        "missing .sig",
        refused_start(&c.data, &c.pki, &c.trust_flags("1")),
        &c.pki,
        "no signature file beside it",
    );

    // One of two signatures, and one by a key nobody trusts.
    let only_a = sign(&c.key_a, &c.pki);
    let stranger = c.dir.path().join("stranger.key");
    sign(&stranger, &c.pki);
    assert_refused(
        "too few",
        refused_start(&c.data, &c.pki, &c.trust_flags("2")),
        &c.pki,
        "1 valid signature from trusted keys, 2 needed (1 line signed by an untrusted key)",
    );
    assert!(c.trust.starts_with(&only_a));

    // A signed file without serial, issued and expires.
    let mut bare = document(&c.nodes, 5, FUTURE);
    bare.as_object_mut().unwrap().remove("serial");
    write_json(&c.pki, &bare);
    let bytes = std::fs::read(&c.pki).unwrap();
    std::fs::write(sig_path(&c.pki), signature_line(&c.key_a, &bytes) + "\n").unwrap();
    assert_refused(
        "no serial",
        refused_start(&c.data, &c.pki, &c.trust_flags("1")),
        &c.pki,
        "no \"serial\"",
    );

    // Nothing was accepted, so no serial was saved.
    assert_eq!(saved_serial(&c.data), None);
    // With both signatures back, the same node starts.
    std::fs::write(&c.pki, &signed).unwrap();
    std::fs::write(sig_path(&c.pki), &both).unwrap();
    let d = Daemon::start_in(
        &c.data,
        &node_flags(c.pki.to_str().unwrap(), &c.trust_flags("2")),
    );
    stop(d);
}

#[test]
fn an_expired_file_stops_startup_even_with_every_signature() {
    let c = Ceremony::new();
    write_json(&c.pki, &document(&c.nodes, 5, "2025-06-01T00:00:00Z"));
    // `pki sign` refuses to sign it …
    let out = pluto2(&[
        "pki",
        "sign",
        "-key",
        c.key_a.to_str().unwrap(),
        c.pki.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("expired at 2025-06-01T00:00:00Z"));
    // … and a node refuses it signed by both.
    let bytes = std::fs::read(&c.pki).unwrap();
    let sig = format!(
        "{}\n{}\n",
        signature_line(&c.key_a, &bytes),
        signature_line(&c.key_b, &bytes)
    );
    std::fs::write(sig_path(&c.pki), sig).unwrap();
    assert_refused(
        "expired",
        refused_start(&c.data, &c.pki, &c.trust_flags("2")),
        &c.pki,
        "expired at 2025-06-01T00:00:00Z",
    );
}

#[tokio::test]
async fn a_lower_serial_than_one_accepted_is_refused_as_a_rollback() {
    let c = Ceremony::new();
    let flags = c.trust_flags("2");
    let d = started(&c.data, &c.pki, &flags).await;
    stop(d);
    assert_eq!(saved_serial(&c.data).as_deref(), Some("5"));
    let serial_5 = std::fs::read(&c.pki).unwrap();
    let sig_5 = std::fs::read(sig_path(&c.pki)).unwrap();

    // Serial 4, properly signed by both operators: an older directory.
    write_json(&c.pki, &document(&c.nodes, 4, FUTURE));
    sign(&c.key_a, &c.pki);
    sign(&c.key_b, &c.pki);
    assert_refused(
        "rollback",
        refused_start(&c.data, &c.pki, &flags),
        &c.pki,
        "serial 4 is lower than 5, the highest this node accepted: refusing a rollback",
    );
    assert_eq!(saved_serial(&c.data).as_deref(), Some("5"));

    // Serial 5 again: equal is accepted.
    std::fs::write(&c.pki, &serial_5).unwrap();
    std::fs::write(sig_path(&c.pki), &sig_5).unwrap();
    let d = started(&c.data, &c.pki, &flags).await;
    stop(d);

    // `pki verify` against this data dir says the same, and changes nothing.
    write_json(&c.pki, &document(&c.nodes, 4, FUTURE));
    sign(&c.key_a, &c.pki);
    let data = c.data.to_str().unwrap();
    let out = pluto2(&[
        "pki",
        "verify",
        "-pki-trust",
        &c.trust,
        "-data-dir",
        data,
        c.pki.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("rollback"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(saved_serial(&c.data).as_deref(), Some("5"));
}

#[tokio::test]
async fn without_trust_an_unsigned_file_starts_with_a_warning_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pki = dir.path().join("nodes.json");
    // The old format: nodes and params only.
    write_json(
        &pki,
        &json!({"nodes": entries(&data), "params": {"hop_delay_mean": "20ms"}}),
    );
    for round in 0..2 {
        let d = started(&data, &pki, &[]).await;
        let warning = d
            .until_log("warning about the unsigned file", |l| {
                l.contains("not signature-checked")
            })
            .await;
        assert!(warning.contains("WARN"), "{warning}");
        assert!(warning.contains("private test networks"), "{warning}");
        if round == 1 {
            // A signature file nobody checks is pointed out too.
            let line = d
                .until_log("warning about unchecked signatures", |l| {
                    l.contains("signatures are not checked")
                })
                .await;
            assert!(line.contains("-pki-trust"), "{line}");
        } else {
            assert!(!d.log_text().contains("signatures are not checked"));
        }
        stop(d);
        std::fs::write(sig_path(&pki), "# nobody signed yet\n").unwrap();
    }
    assert_eq!(saved_serial(&data), None);
}

#[test]
fn pki_verify_answers_ok_or_the_problem_in_one_line() {
    let c = Ceremony::new();
    let file = c.pki.to_str().unwrap();
    let verify = |extra: &[&str]| {
        let mut args = vec!["pki", "verify", "-pki-trust", &c.trust];
        args.extend(extra);
        args.push(file);
        pluto2(&args)
    };
    let out = verify(&["-pki-threshold", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{file}: ok: serial 5, signed by 2 of 2 trusted keys (2 needed), expires {FUTURE}\n"
        )
    );
    // A data dir that saved a higher serial makes it a rollback.
    let data = c.dir.path().join("verify-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("pki-serial"), "9\n").unwrap();
    let out = verify(&["-data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("pluto2: {file}: serial 5 is lower than 9")),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // Bad usage: 64.
    for extra in [
        &["-pki-threshold", "3"][..],
        &["-data-dir", "/nonexistent/dir"],
    ] {
        let out = verify(extra);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{extra:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr).lines().count(), 1);
    }
    let out = pluto2(&["pki", "verify", "-pki-trust", "nope", file]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).starts_with("pluto2: -pki-trust nope: key 1"));
    // The file as a middle node and as each exit would read it: a
    // network whose only exit is one node is refused naming that node.
    let mut lone = c.nodes.clone();
    for (i, n) in lone.iter_mut().enumerate() {
        n["exit"] = json!(i == 3);
    }
    write_json(&c.pki, &document(&lone, 6, FUTURE));
    let out = pluto2(&["pki", "sign", "-key", c.key_a.to_str().unwrap(), file]);
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out.stderr).contains("nodes[3] \"dave\": is the only exit"));
}

#[test]
fn pki_pubkey_never_creates_a_key_and_sign_never_replaces_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("op.key");
    let out = pluto2(&["pki", "pubkey", "-key", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(66));
    assert!(text(&out.stderr).contains("no such key file"));
    assert!(!key.exists());
    // A key file of another size is refused, and left alone.
    std::fs::write(&key, [7u8; 31]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = dir.path().join("data");
    let pki = dir.path().join("nodes.json");
    write_json(&pki, &document(&entries(&data), 1, FUTURE));
    let out = pluto2(&[
        "pki",
        "sign",
        "-key",
        key.to_str().unwrap(),
        pki.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("holds 31 bytes"));
    assert_eq!(std::fs::read(&key).unwrap(), [7u8; 31]);
    assert!(!sig_path(&pki).exists());
}

/// On SIGHUP a node rereads nodes.json with the same checks as at start: a
/// tampered file, a missing signature file, a lower serial and an expired
/// file each keep the directory in force and say why; a properly signed
/// higher serial is taken and saved.
#[tokio::test]
async fn a_reload_refuses_what_a_start_refuses_and_takes_a_newer_signed_file() {
    let c = Ceremony::new();
    let d = started(&c.data, &c.pki, &c.trust_flags("1")).await;
    let signed_by_a = |doc: &Value| {
        write_json(&c.pki, doc);
        let bytes = std::fs::read(&c.pki).unwrap();
        std::fs::write(sig_path(&c.pki), signature_line(&c.key_a, &bytes) + "\n").unwrap();
    };
    let mut refusals = 0;
    let mut refused_with = |d: &Daemon, said: &str| {
        refusals += 1;
        d.signal("HUP");
        let deadline = std::time::Instant::now() + common::PATIENCE;
        loop {
            let lines: Vec<String> = d
                .log_text()
                .lines()
                .filter(|l| l.contains("[RELOAD] SIGHUP: kept the old settings"))
                .map(String::from)
                .collect();
            if lines.len() >= refusals {
                let line = &lines[refusals - 1];
                assert!(line.contains("-pki-file") && line.contains(said), "{line}");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "no refusal: {said}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };

    let signed = std::fs::read(&c.pki).unwrap();
    let at = signed.windows(4).position(|w| w == b"9999").unwrap() + 3;
    let mut tampered = signed.clone();
    tampered[at] = b'8';
    std::fs::write(&c.pki, &tampered).unwrap();
    refused_with(&d, "0 valid signatures from trusted keys");

    std::fs::write(&c.pki, &signed).unwrap();
    let sigs = std::fs::read(sig_path(&c.pki)).unwrap();
    std::fs::remove_file(sig_path(&c.pki)).unwrap();
    refused_with(&d, "no signature file beside it");
    std::fs::write(sig_path(&c.pki), &sigs).unwrap();

    signed_by_a(&document(&c.nodes, 4, FUTURE));
    refused_with(&d, "rollback");

    signed_by_a(&document(&c.nodes, 7, "2025-06-01T00:00:00Z"));
    refused_with(&d, "expired at 2025-06-01T00:00:00Z");
    assert_eq!(saved_serial(&c.data).as_deref(), Some("5"));

    // A newer file, properly signed: taken, and its serial saved.
    signed_by_a(&document(&c.nodes, 6, FUTURE));
    d.signal("HUP");
    d.until_log("the newer file taken", |l| {
        l.contains("[RELOAD] SIGHUP:") && !l.contains("kept the old")
    })
    .await;
    assert_eq!(saved_serial(&c.data).as_deref(), Some("6"));
    stop(d);
}

/// An operator signing in the directory that holds the key and the file,
/// with bare names: the key is created there (its directory synced), and
/// the same public key comes back from `pki pubkey`.
#[test]
fn signing_with_bare_file_names_in_the_current_directory_works() {
    let c = Ceremony::new();
    let dir = c.pki.parent().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .current_dir(dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let signed = run(&["pki", "sign", "-key", "bare.key", "nodes.json"]);
    assert!(signed.status.success(), "{}", text(&signed.stderr));
    let public = text(&signed.stdout);
    assert_eq!(std::fs::metadata(dir.join("bare.key")).unwrap().len(), 32);
    let again = run(&["pki", "pubkey", "-key", "bare.key"]);
    assert_eq!(text(&again.stdout), public);
}
