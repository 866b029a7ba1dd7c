//! Client mode on the 5-node mixnet (tests/common/mixnet.rs): a client
//! that is not in `nodes.json` wraps its own mail and reaches the network
//! through node 0, its gateway; replies wait for it there.

mod common;

use common::PATIENCE;
use common::link_tap::{Action, Direction, FrameKind, Rule};
use common::mixnet::{MixNet, mail, mime_mail};
use tokio::time::Instant;

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

/// The body of a message as it left the exit (after its header block).
fn body_of(data: &[u8]) -> &[u8] {
    let at = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    &data[at + 4..]
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
    tap.add_rule(
        Rule::new(Action::Drop)
            .link(&gateway)
            .dir(Direction::FromTarget)
            .kind(FrameKind::Held)
            .times(usize::MAX),
    );
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
