//! Client mode on the 5-node mixnet (tests/common/mixnet.rs): a client
//! that is not in `nodes.json` wraps its own mail and reaches the network
//! through node 0, its gateway; replies wait for it there.

mod common;

use common::link_tap::{Action, Direction, FrameKind, Rule};
use common::mixnet::{MixNet, body_of, mail, mime_mail};
use common::{PATIENCE, ks_exponential};
use tokio::time::{Duration, Instant};

/// The test network's parameters, with a client's send and fetch means in
/// milliseconds.
const CLIENT_PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "20ms", "hop_delay_max": "240ms",
    "max_message_size": 262144, "ack_timeout": "4s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "loop_cover_mean": "0s", "drop_cover_mean": "0s",
    "client_send_mean": "25ms", "client_fetch_mean": "25ms"}"#;

/// Node 0 is the gateway; the others are plain nodes, all exits.
async fn network() -> MixNet {
    let flags = vec![vec!["-gateway"], vec![], vec![], vec![], vec![]];
    MixNet::start_with_flags(CLIENT_PARAMS, &flags).await
}

/// Every file of a node's spool (the database, its WAL and shared memory).
fn spool_bytes(data: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(pluto2::spool::SPOOL_FILE) {
            all.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_mail_crosses_once_and_its_gateway_never_holds_it_readable() {
    let mut net = network().await;
    net.until_healthy(0, 4).await;
    let c = net.add_client(0, &[]).await;
    let client = net.client(c);
    let sizes = [4 * 1024, 200 * 1024];
    let mut sent = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let text = mime_mail(*size, &format!("clientmail{i}"));
        net.send_by_client(c, &text).await;
        sent.push(text);
    }
    // The client keeps each message until COMPLETE came back through its
    // mailbox at the gateway and it fetched it.
    client
        .until_queue("every message acknowledged by its exit", |q| {
            q["messages"] == 0
        })
        .await;
    net.until_quiet().await;
    let got = net.sink.received();
    assert_eq!(got.len(), sizes.len(), "each message delivered once");
    for text in &sent {
        let stored = format!("{text}\r\n");
        let want = body_of(stored.as_bytes());
        assert!(
            got.iter().any(|r| body_of(&r.data) == want),
            "a body did not arrive byte-identical ({} bytes)",
            want.len()
        );
    }
    // The client's one connection is to its gateway's link port, through
    // its Tor (the tap): never port 25, never another node.
    let requests = net.clients[c].tap.requests();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| r.host == net.nodes[0].onion && r.port == common::mixnet::LINK_PORT),
        "{requests:?}"
    );
    // Every frame on the client's link has the one size of its kind, in
    // both directions; an empty HELD is as long as a full one.
    let frames = net.clients[c].tap.frames();
    for f in &frames {
        assert_eq!(Some(f.len), f.kind.fixed_len(), "{f:?}");
    }
    let count = |k: FrameKind| frames.iter().filter(|f| f.kind == k).count();
    assert!(count(FrameKind::Held) >= 2);
    assert!(count(FrameKind::Confirm) >= 2, "COMPLETEs confirmed");
    assert!(
        count(FrameKind::Fetch) > count(FrameKind::Confirm),
        "fetches also find an empty mailbox"
    );
    // The gateway never had the mail readable: neither the body nor the
    // recipient is anywhere in its spool files.
    let spool = spool_bytes(&net.nodes[0].data);
    assert!(spool.len() > 10_000, "the gateway's spool was read");
    for text in &sent {
        let marker = &text.as_bytes()[..40];
        assert!(!spool.windows(marker.len()).any(|w| w == marker));
    }
    let rcpt = net.rcpt();
    assert!(!spool.windows(rcpt.len()).any(|w| w == rcpt.as_bytes()));
}

/// Waits until client `c` reports `h` usable nodes besides its gateway
/// (its link is up and it holds their keys).
async fn until_client_ready(net: &MixNet, c: usize, h: usize) {
    let want = format!("healthy={h}/");
    net.client(c)
        .until_log(&want, |line| line.contains(&want))
        .await;
}

/// Waits until the sink holds `n` messages.
async fn until_delivered(net: &MixNet, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while net.sink.received().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} delivered",
            net.sink.received().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A rule for a client's tap: every answer of the gateway to its fetches
/// is swallowed, so no reply reaches it while its packets still leave.
fn away(gateway: &str) -> Rule {
    Rule::new(Action::Drop)
        .link(gateway)
        .dir(Direction::FromTarget)
        .kind(FrameKind::Held)
        .times(usize::MAX)
}

/// The number in the gateway's last `[STATS]` line for `field`.
fn gateway_stat(net: &MixNet, field: &str) -> u64 {
    common::mixnet::last_stat(net.daemon(0), field).unwrap_or(0)
}

/// Client `c` sends a message and goes away before its COMPLETE can come:
/// the gateway's answers to its fetches are swallowed, and once all its
/// packets are in the gateway's custody its link is taken down. Returns
/// when the message was delivered and the gateway holds replies for the
/// client (its COMPLETE among them, with loops sent before it left).
async fn send_and_go_away(net: &MixNet, c: usize, tag: &str, delivered: usize) {
    let gateway = net.nodes[0].onion.clone();
    let tap = &net.clients[c].tap;
    tap.add_rule(away(&gateway));
    net.send_by_client(c, &mail(3_000, tag)).await;
    net.client(c)
        .until_queue("the message's packets in the gateway's custody", |q| {
            q["mixnet"]["packets_fragment"] == 0 && q["mixnet"]["awaiting_ack"] == 1
        })
        .await;
    tap.down(&gateway, common::mixnet::LINK_PORT);
    until_delivered(net, delivered).await;
    let deadline = Instant::now() + PATIENCE;
    while gateway_stat(net, "held_replies") == 0 {
        assert!(Instant::now() < deadline, "nothing held at the gateway");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        net.client(c).queue_json()["messages"],
        1,
        "COMPLETE reached the client while it was away"
    );
}

/// The replies a client could not fetch wait at its gateway: through a
/// link that was down, and through a SIGKILL of the client while it was
/// away; the client that comes back fetches them, and its queue empties.
/// A lost confirmation hands a reply over again, which changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_wait_at_the_gateway_while_the_client_is_away() {
    let mut net = network().await;
    net.until_healthy(0, 4).await;
    let c = net.add_client(0, &[]).await;
    until_client_ready(&net, c, 4).await;
    let gateway = net.nodes[0].onion.clone();
    let port = common::mixnet::LINK_PORT;

    send_and_go_away(&net, c, "away-cut", 1).await;
    // While replies wait for the client, a fresh key at the same gateway
    // (`pluto2 check` of a new client, which fetches once and confirms
    // nothing) finds its own mailbox empty.
    let fresh = tempfile::tempdir().unwrap();
    let data = fresh.path().join("client");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let seed = data.join("client-seed");
    std::fs::write(&seed, rand::random::<[u8; 32]>()).unwrap();
    std::fs::set_permissions(&seed, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // Node 1's Tor stands in for the new client's (with Tor's extended
    // SOCKS errors, which check asks for).
    let socks = &net.nodes[1].tap;
    socks.refuse(pluto2::check::invalid_key_onion().as_str(), 25, 0xF6);
    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .args(["-sphinx", "-client", "-via", "n0", "-addr", "127.0.0.1:0"])
        .arg("-pki-file")
        .arg(&net.pki)
        .arg("-data-dir")
        .arg(&data)
        .arg("-tor-socks")
        .arg(socks.addr.to_string())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("its mailbox is empty"), "{said}");
    assert!(gateway_stat(&net, "held_replies") > 0);
    let tap = &net.clients[c].tap;
    tap.clear_rules();
    tap.up(&gateway, port);
    net.client(c)
        .until_queue("the held COMPLETE fetched over a new link", |q| {
            q["messages"] == 0
        })
        .await;

    send_and_go_away(&net, c, "away-killed", 2).await;
    net.clients[c].daemon.as_mut().unwrap().kill9();
    net.clients[c].daemon = None;
    let tap = &net.clients[c].tap;
    tap.clear_rules();
    // This time the first confirmation is lost: that reply comes again.
    let lost = tap.add_rule(
        Rule::new(Action::Drop)
            .link(&gateway)
            .dir(Direction::ToTarget)
            .kind(FrameKind::Confirm),
    );
    tap.up(&gateway, port);
    net.start_client(c);
    net.client(c)
        .until_queue("the held COMPLETE fetched after a restart", |q| {
            q["messages"] == 0
        })
        .await;
    assert_eq!(
        net.clients[c].tap.applied(lost),
        1,
        "a confirmation was lost"
    );
    net.until_quiet().await;
    assert_eq!(net.sink.received().len(), 2, "each message once");
    // Whatever was held for the client was fetched and confirmed in the
    // end, the reply whose confirmation was lost too.
    net.daemon(0)
        .until_log("nothing held", |l| {
            l.contains("[STATS]") && l.contains("held_replies=0 ")
        })
        .await;
}

/// The client's spool as `pluto2 queue -json` reads it.
fn client_queue(net: &MixNet, c: usize) -> serde_json::Value {
    common::queue_json(&net.clients[c].data)
}

/// Waits until the sink holds exactly one copy of each of `tags` (and
/// nothing else arrives before the network is quiet).
async fn each_once(net: &MixNet, tags: &[&str]) {
    until_delivered(net, tags.len()).await;
    net.until_quiet().await;
    let got = net.sink.received();
    for tag in tags {
        let hello = format!("hello {tag}\r\n");
        let n = got
            .iter()
            .filter(|r| r.data.windows(hello.len()).any(|w| w == hello.as_bytes()))
            .count();
        assert_eq!(n, 1, "{tag} delivered {n} times");
    }
    assert_eq!(got.len(), tags.len());
}

/// A client killed in the middle of sending a many-fragment message, and
/// one killed right after its `250`: after a restart each message is
/// delivered once (the client's spool kept them; the exit's done-ledger
/// makes a fragment that went twice harmless).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_while_sending_delivers_each_message_once_after_a_restart() {
    let mut net = network().await;
    net.until_healthy(0, 4).await;
    let c = net.add_client(0, &[]).await;
    until_client_ready(&net, c, 4).await;
    let gateway = net.nodes[0].onion.clone();
    // Once the message is launched, the gateway gets the next few packets
    // (some of them the message's) and the link stalls behind them, so the
    // rest stay in the client's custody.
    net.send_by_client(c, &mime_mail(200 * 1024, "killed-mid-send"))
        .await;
    net.client(c)
        .until_queue("the message launched", |q| q["mixnet"]["awaiting_ack"] == 1)
        .await;
    let stall = net.clients[c].tap.add_rule(
        Rule::new(Action::Delay(std::time::Duration::from_secs(3600)))
            .link(&gateway)
            .dir(Direction::ToTarget)
            .kind(FrameKind::Packet)
            .after(6),
    );
    let deadline = Instant::now() + PATIENCE;
    while net.clients[c].tap.applied(stall) == 0 {
        assert!(Instant::now() < deadline, "the link never stalled");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let q = client_queue(&net, c);
    assert!(
        q["mixnet"]["packets_fragment"].as_u64().unwrap() > 0,
        "the message was still being sent: {q}"
    );
    net.clients[c].daemon.as_mut().unwrap().kill9();
    net.clients[c].daemon = None;
    net.clients[c].tap.clear_rules();
    net.start_client(c);
    // And killed right after its 250.
    net.send_by_client(c, &mail(3_000, "killed-after-250"))
        .await;
    net.clients[c].daemon.as_mut().unwrap().kill9();
    net.clients[c].daemon = None;
    net.start_client(c);
    net.client(c)
        .until_queue("both messages acknowledged", |q| q["messages"] == 0)
        .await;
    each_once(&net, &["killed-mid-send", "killed-after-250"]).await;
}

/// The gateway killed with a client's packets in its custody (it could not
/// forward them yet), and again while it held a reply for the client:
/// after its restart every message is delivered once and the client's
/// queue empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_with_client_packets_in_custody_or_replies_held_loses_nothing() {
    let mut net = network().await;
    net.until_healthy(0, 4).await;
    let c = net.add_client(0, &[]).await;
    until_client_ready(&net, c, 4).await;
    let port = common::mixnet::LINK_PORT;
    let others: Vec<String> = net.nodes[1..].iter().map(|n| n.onion.clone()).collect();
    // The gateway reaches no other node: what the client hands it stays in
    // its custody.
    for onion in &others {
        net.nodes[0].tap.down(onion, port);
    }
    net.send_by_client(c, &mail(3_000, "gateway-custody")).await;
    net.client(c)
        .until_queue("the message's packet in the gateway's custody", |q| {
            q["mixnet"]["awaiting_ack"] == 1 && q["mixnet"]["packets_fragment"] == 0
        })
        .await;
    let held = common::queue_json(&net.nodes[0].data);
    assert!(
        held["mixnet"]["packets_forward"].as_u64().unwrap() > 0,
        "the gateway holds the client's packets: {held}"
    );
    net.nodes[0].daemon.as_mut().unwrap().kill9();
    net.nodes[0].daemon = None;
    for onion in &others {
        net.nodes[0].tap.up(onion, port);
    }
    net.start_node(0, &["-gateway"]);
    net.client(c)
        .until_queue("the message acknowledged", |q| q["messages"] == 0)
        .await;
    // Now killed while it holds the client's COMPLETE.
    send_and_go_away(&net, c, "gateway-holding", 2).await;
    net.nodes[0].daemon.as_mut().unwrap().kill9();
    net.nodes[0].daemon = None;
    net.start_node(0, &["-gateway"]);
    let gateway = net.nodes[0].onion.clone();
    net.clients[c].tap.clear_rules();
    net.clients[c].tap.up(&gateway, port);
    net.client(c)
        .until_queue(
            "the held COMPLETE fetched from the restarted gateway",
            |q| q["messages"] == 0,
        )
        .await;
    each_once(&net, &["gateway-custody", "gateway-holding"]).await;
}

/// More replies than a client's cap while it is away: the gateway drops
/// the excess (counted) yet acknowledges them, and the client's
/// retransmission still ends with every message delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_past_a_clients_cap_are_dropped_and_every_message_still_arrives_once() {
    let flags = vec![
        vec![
            "-gateway",
            "-gateway-held",
            "3",
            "-gateway-held-bytes",
            "65536",
        ],
        vec![],
        vec![],
        vec![],
        vec![],
    ];
    let mut net = MixNet::start_with_flags(CLIENT_PARAMS, &flags).await;
    net.until_healthy(0, 4).await;
    let c = net.add_client(0, &[]).await;
    until_client_ready(&net, c, 4).await;
    let gateway = net.nodes[0].onion.clone();
    let tap = &net.clients[c].tap;
    tap.add_rule(away(&gateway));
    let tags: Vec<String> = (0..6).map(|i| format!("capped{i}")).collect();
    for tag in &tags {
        net.send_by_client(c, &mail(2_000, tag)).await;
    }
    net.client(c)
        .until_queue(
            "every message launched, its packets in the gateway's custody",
            |q| q["mixnet"]["awaiting_ack"] == 6 && q["mixnet"]["packets_fragment"] == 0,
        )
        .await;
    tap.down(&gateway, common::mixnet::LINK_PORT);
    until_delivered(&net, tags.len()).await;
    common::mixnet::until_stat(net.daemon(0), "held_dropped", |n| n > 0).await;
    assert!(gateway_stat(&net, "held_replies") <= 3);
    let tap = &net.clients[c].tap;
    tap.clear_rules();
    tap.up(&gateway, common::mixnet::LINK_PORT);
    // A message whose COMPLETE the cap dropped waits for its next check,
    // which backs off while the client is away: up to 16 × ack_timeout
    // (4 s) × 1.25 after the link is back, then a crossing.
    net.client(c)
        .until_queue_within(
            "every message acknowledged in the end",
            Duration::from_secs(150),
            |q| q["messages"] == 0,
        )
        .await;
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    each_once(&net, &tags).await;
}

/// The gaps between the PACKET frames a client sends, as its link's
/// observer (the tap) records them, from frame `from` on.
fn send_gaps(net: &MixNet, c: usize, from: usize, n: usize) -> Vec<f64> {
    let at: Vec<Instant> = net.clients[c]
        .tap
        .frames()
        .into_iter()
        .filter(|f| f.kind == FrameKind::Packet && f.dir == Direction::ToTarget)
        .map(|f| f.at)
        .skip(from)
        .take(n + 1)
        .collect();
    at.windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .collect()
}

async fn until_client_packets(net: &MixNet, c: usize, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let sent = net.clients[c]
            .tap
            .frames()
            .iter()
            .filter(|f| f.kind == FrameKind::Packet && f.dir == Direction::ToTarget)
            .count();
        if sent >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{sent} of {n} packets sent");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A client's packets leave at the network's Poisson rate whether or not
/// it has mail: on its recorded link the gaps follow Exp(client_send_mean)
/// while idle and while a 200 KiB message goes out, so an observer of the
/// link cannot tell when it sends mail. The client's draws are seeded
/// (`PLUTO2_PACING_SEED`); the timing around them is the machine's, so
/// the mean is long beside what a busy CI machine adds to a tick (a
/// debug build wraps a cover packet in some 10–40 ms under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_packets_leave_at_one_poisson_rate_with_and_without_mail() {
    const PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "20ms", "hop_delay_max": "240ms",
        "max_message_size": 262144, "ack_timeout": "4s", "custody_horizon": "10m", "e2e_horizon": "1h",
        "loop_cover_mean": "0s", "drop_cover_mean": "0s",
        "client_send_mean": "150ms", "client_fetch_mean": "150ms"}"#;
    let flags = vec![vec!["-gateway"], vec![], vec![], vec![], vec![]];
    let mut net = MixNet::start_with_flags(PARAMS, &flags).await;
    net.until_healthy(0, 4).await;
    let c = net
        .add_client_wrapped(0, &["env", "PLUTO2_PACING_SEED=19"], &[])
        .await;
    until_client_ready(&net, c, 4).await;
    const N: usize = 120;
    // Idle: every packet is cover. The first few are left out: the link
    // has just come up and builds its first cover while it sends.
    let start = 10
        + net.clients[c]
            .tap
            .frames()
            .iter()
            .filter(|f| f.kind == FrameKind::Packet && f.dir == Direction::ToTarget)
            .count();
    until_client_packets(&net, c, start + N + 1).await;
    let mut idle = send_gaps(&net, c, start, N);
    // With mail: its ~27 packets take the place of cover.
    let mark = start + N + 1;
    net.send_by_client(c, &mime_mail(200 * 1024, "paced")).await;
    until_client_packets(&net, c, mark + N + 1).await;
    let mut busy = send_gaps(&net, c, mark, N);
    // Critical value at the 0.1 % level for n = 120: 1.95 / sqrt(n) = 0.178.
    let critical = 1.95 / (N as f64).sqrt();
    let d_idle = ks_exponential(&mut idle, 0.150);
    let d_busy = ks_exponential(&mut busy, 0.150);
    eprintln!("KS D idle {d_idle:.3} busy {d_busy:.3} (critical {critical:.3})");
    assert!(d_idle < critical, "idle gaps: D = {d_idle}");
    assert!(d_busy < critical, "gaps with mail: D = {d_busy}");
    net.client(c)
        .until_queue("the message acknowledged", |q| q["messages"] == 0)
        .await;
    each_once(&net, &["paced"]).await;
}

/// A gateway takes from a client only packets it forwards: one whose route
/// ends at the gateway (a free exit of the client's own) or at a mailbox
/// there (filling someone's mailbox) is refused; one for the next hop is
/// kept. Sent on a link that proves the client's key, as the client would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_takes_from_a_client_only_packets_it_forwards() {
    use pluto2::address::OnionName;
    use pluto2::wire::frame::{AckStatus, Frame};
    use pluto2::wire::packet::{self, NodeId, ReplyBlock, RouteHop, WirePacket};

    let mut net = network().await;
    net.until_healthy(0, 4).await;
    let c = net.add_client(0, &[]).await;
    until_client_ready(&net, c, 4).await;
    let id = |i: usize| NodeId(OnionName::parse(&net.nodes[i].onion).unwrap().public_key());
    let seed = pluto2::mixnet::keys::ClientSeed::read(&net.clients[c].data)
        .unwrap()
        .expect("the client's seed");
    let tap = &net.clients[c].tap;
    tap.set_signer(seed.key_for(&id(0)));
    let epoch = net.epoch_now();
    let hop = |i: usize, ms: u64| RouteHop {
        id: id(i),
        mix_key: net.mix_key(i, epoch),
        delay: std::time::Duration::from_millis(ms),
    };
    let frame = |packet: WirePacket| {
        let mut out = Vec::new();
        Frame::Packet {
            seq: 1,
            epoch,
            packet,
        }
        .encode(&mut out);
        out
    };
    let gateway = net.nodes[0].onion.clone();
    let port = common::mixnet::LINK_PORT;
    // Drop cover ending at the gateway: a packet it would take from a node.
    let drop = pluto2::wire::fragment::Fragment {
        kind: pluto2::wire::fragment::Kind::Drop,
        message_id: [3; 16],
        index: 0,
        count: 1,
        blob_len: 0,
        blob_hash: sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new()).into(),
        reply_block: None,
        data: Vec::new(),
    }
    .encode();
    let own_exit = packet::build(&drop, &[hop(0, 0)]).unwrap();
    assert_eq!(
        tap.inject(&gateway, port, &frame(own_exit)).await.unwrap(),
        AckStatus::Rejected
    );
    let (block, _) = ReplyBlock::create_to(&[hop(0, 0)], [7; 32], [1; 16], epoch).unwrap();
    let (to_mailbox, _) = block.send(b"fill a mailbox").unwrap();
    assert_eq!(
        tap.inject(&gateway, port, &frame(to_mailbox))
            .await
            .unwrap(),
        AckStatus::Rejected
    );
    let onward = packet::build(&drop, &[hop(0, 10), hop(1, 0)]).unwrap();
    assert_eq!(
        tap.inject(&gateway, port, &frame(onward)).await.unwrap(),
        AckStatus::Stored
    );
    common::mixnet::until_stat(net.daemon(0), "rejected", |n| n >= 2).await;
    assert_eq!(gateway_stat(&net, "held_dropped"), 0);
}

/// A client that never comes back costs its gateway its held replies for
/// `e2e_horizon + custody_horizon` after it was last seen (10 s here),
/// then nothing: the mailbox and what it held are forgotten, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mailbox_of_a_client_that_never_returns_is_forgotten() {
    const PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "20ms", "hop_delay_max": "240ms",
        "max_message_size": 262144, "ack_timeout": "2s", "custody_horizon": "4s", "e2e_horizon": "6s",
        "loop_cover_mean": "0s", "drop_cover_mean": "0s",
        "client_send_mean": "25ms", "client_fetch_mean": "25ms"}"#;
    let flags = vec![vec!["-gateway"], vec![], vec![], vec![], vec![]];
    let mut net = MixNet::start_with_flags(PARAMS, &flags).await;
    net.until_healthy(0, 4).await;
    let c = net.add_client(0, &[]).await;
    until_client_ready(&net, c, 4).await;
    send_and_go_away(&net, c, "never-back", 1).await;
    // Gone for good.
    net.clients[c].daemon.as_mut().unwrap().kill9();
    net.clients[c].daemon = None;
    let line = net
        .daemon(0)
        .until_log("the idle mailbox forgotten", |l| {
            l.contains("idle client mailbox(es)")
        })
        .await;
    assert!(line.contains("forgot 1 idle client mailbox(es)"), "{line}");
    common::mixnet::until_stat(net.daemon(0), "held_replies", |n| n == 0).await;
    let held = common::queue_json(&net.nodes[0].data);
    assert_eq!(held["mixnet"]["packets_forward"], 0, "{held}");
}
