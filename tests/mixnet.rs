//! The mixnet data path on a 5-node network of real `pluto2 -sphinx`
//! processes on 127.0.0.1 (see tests/common/mixnet.rs).

mod common;

use common::link_tap::FrameKind;
use common::mixnet::{MixNet, TEST_PARAMS, body_of, mime_mail};
use pluto2::wire::frame::MAX_FRAME;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_crosses_three_hops_once_in_fixed_size_packets_and_the_entry_never_dials_port_25() {
    let net = MixNet::start(5, TEST_PARAMS).await;
    net.until_healthy(0, 4).await;
    let entry = net.daemon(0);
    let sizes = [100, 20_000, 200_000];
    let mut sent = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let text = mime_mail(*size, &format!("m{i}"));
        net.send(0, &text).await;
        sent.push(text);
    }
    // The entry keeps each message until its exit says COMPLETE.
    entry
        .until_queue("every message acknowledged by its exit", |q| {
            q["messages"] == 0
        })
        .await;
    let got = net.sink.wait_for(sizes.len()).await;
    assert_eq!(got.len(), sizes.len(), "each message delivered once");
    for text in &sent {
        // send_mail ends DATA with CRLF.CRLF, so the stored body carries one
        // more CRLF than the text.
        let stored = format!("{text}\r\n");
        let want = body_of(stored.as_bytes());
        assert!(
            got.iter().any(|r| body_of(&r.data) == want),
            "a body did not arrive byte-identical: want {} bytes starting {:?}; got {:?}",
            want.len(),
            String::from_utf8_lossy(&want[..want.len().min(80)]),
            got.iter()
                .map(|r| (
                    body_of(&r.data).len(),
                    String::from_utf8_lossy(&r.data[..r.data.len().min(400)]).into_owned()
                ))
                .collect::<Vec<_>>()
        );
    }
    // The exit's Message-ID comes from the mixnet message id, not from the
    // exit: one per message, the same whichever exit delivers it.
    for r in &got {
        let head = &r.data[..r.data.len() - body_of(&r.data).len()];
        let head = String::from_utf8_lossy(head).into_owned();
        assert!(
            head.lines()
                .any(|l| l.starts_with("Message-ID: <") && l.ends_with("@mixnet.invalid>")),
            "{head}"
        );
    }
    // Only exits dial port 25, never the entry.
    assert!(
        net.nodes[0].tap.requests().iter().all(|r| r.port != 25),
        "{:?}",
        net.nodes[0].tap.requests()
    );
    // Every packet on every link, in both directions, has one size.
    let frames = net.packet_frame_sizes();
    assert!(frames.len() >= 4 * 3, "{} packet frames", frames.len());
    assert!(frames.iter().all(|&n| n == MAX_FRAME), "{frames:?}");
    // Sequence numbers are random, not the sender's spool rows (whose
    // order would tell the next hop how the sender stored its packets):
    // a row id stays far below 2^32, a random u64 does not (a false alarm
    // here has odds of one in four billion per packet).
    let seqs: Vec<u64> = net
        .nodes
        .iter()
        .flat_map(|n| n.tap.frames())
        .filter(|f| f.kind == FrameKind::Packet)
        .filter_map(|f| f.seq)
        .collect();
    assert!(seqs.iter().all(|&s| s > u32::MAX as u64), "{seqs:?}");
    // Acknowledgements travelled as packets too (COMPLETE through reply
    // blocks), so some packets went back to the entry's link.
    let onion0 = &net.nodes[0].onion;
    let to_entry = net
        .nodes
        .iter()
        .flat_map(|n| n.tap.frames())
        .filter(|f| &f.host == onion0 && f.kind == FrameKind::Packet)
        .count();
    assert!(
        to_entry >= sizes.len(),
        "{to_entry} packets reached the entry"
    );
}
