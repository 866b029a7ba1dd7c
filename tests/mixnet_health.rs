//! The pinger's view on a 5-node network of real `pluto2 -sphinx`
//! processes (tests/common/mixnet.rs): node 0 measures every other node
//! by its loops; a node that is killed is seen failing in node 0's
//! `/metrics` and in `pluto2 queue -json` (a separate process reading
//! the spool), while the others keep their loops coming back; the day
//! stays in the spool after node 0 itself is killed.
//!
//! Hop delays are long here (1 s mean) and loops frequent (100 ms), so
//! that when node 3 is killed several of node 0's loops are held at it
//! or queued for it and are surely lost; they count as lost some 20 s
//! later (`packet_cover::loop_patience`).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::mixnet::MixNet;
use common::{PATIENCE, scrape};

const PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "1s", "hop_delay_max": "4s",
    "max_message_size": 262144, "ack_timeout": "4s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "loop_cover_mean": "100ms", "drop_cover_mean": "0s"}"#;

/// The other nodes' short names, as node 0 sees them.
const OTHERS: [&str; 4] = ["n1", "n2", "n3", "n4"];
const DEAD: &str = "n3";

/// One node's day as a view shows it: back, lost, success ratio.
type Day = BTreeMap<String, (u64, u64, Option<f64>)>;

fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// The per-node day in a scrape.
fn metrics_day(text: &str) -> Day {
    OTHERS
        .iter()
        .filter_map(|n| {
            let count = |fate: &str| {
                series(
                    text,
                    &format!("pluto2_mixnet_node_loops{{node=\"{n}\",fate=\"{fate}\"}}"),
                )
            };
            let ratio = series(
                text,
                &format!("pluto2_mixnet_node_loop_success_ratio{{node=\"{n}\"}}"),
            );
            Some((
                n.to_string(),
                (count("back")? as u64, count("lost")? as u64, ratio),
            ))
        })
        .collect()
}

/// The per-node day in `pluto2 queue -json`.
fn queue_day(q: &serde_json::Value) -> Day {
    q["node_loops"]
        .as_array()
        .expect("node_loops")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                (
                    n["back"].as_u64().unwrap(),
                    n["lost"].as_u64().unwrap(),
                    n["success_ratio"].as_f64(),
                ),
            )
        })
        .collect()
}

/// Waits (bounded) until both views of node 0's day satisfy `ok`;
/// returns them (metrics, queue).
async fn until_both(
    net: &MixNet,
    addr: SocketAddr,
    what: &str,
    ok: impl Fn(&Day) -> bool,
) -> (Day, Day) {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let m = metrics_day(&scrape(addr).await);
        let q = queue_day(&common::queue_json(&net.nodes[0].data));
        if ok(&m) && ok(&q) {
            return (m, q);
        }
        assert!(
            Instant::now() < deadline,
            "never {what}:\n/metrics {m:?}\nqueue -json {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_seen_failing_its_loops_and_the_day_outlives_the_daemon() {
    let mut flags: Vec<Vec<&str>> = vec![vec![]; 5];
    flags[0] = vec!["-metrics", "127.0.0.1:0"];
    let mut net = MixNet::start_with_flags(PARAMS, &flags).await;
    let addr = net.daemon(0).metrics_addr().await;

    // Every node's loops come back: a ratio of 1 for each, in both views.
    let healthy = |d: &Day| {
        OTHERS.iter().all(|n| {
            d.get(*n)
                .is_some_and(|&(back, lost, r)| back >= 3 && lost == 0 && r == Some(1.0))
        })
    };
    until_both(&net, addr, "every node's loops back", healthy).await;

    // Node 3 dies with loops of node 0 held at it or queued for it.
    net.nodes[3].daemon = None;
    let dead_fails = |d: &Day| {
        let Some(&(_, lost, Some(ratio))) = d.get(DEAD) else {
            return false;
        };
        lost > 0
            && ratio < 1.0
            && OTHERS.iter().filter(|n| **n != DEAD).all(|n| {
                d.get(*n).is_some_and(|&(_, other_lost, r)| {
                    other_lost <= lost && r.is_some_and(|r| r > ratio)
                })
            })
    };
    let (m, q) = until_both(&net, addr, "n3 below the others", dead_fails).await;
    eprintln!("after the kill: /metrics {m:?}\nqueue -json {q:?}");
    // Every loop lost went through n3: no other node has more lost.
    let most = q.values().map(|d| d.1).max().unwrap();
    assert_eq!(q[DEAD].1, most, "{q:?}");

    // The others' loops go on coming back; n3's cannot (its link is
    // down, so no loop is routed through it): it stays below them.
    let back_before: Day = q.clone();
    let (_, q) = until_both(&net, addr, "the others' loops still back", |d| {
        OTHERS
            .iter()
            .filter(|n| **n != DEAD)
            .all(|n| d.get(*n).is_some_and(|v| v.0 >= back_before[*n].0 + 5))
    })
    .await;
    assert_eq!(
        q[DEAD].0, back_before[DEAD].0,
        "no loop through a dead node came back"
    );
    assert!(dead_fails(&q), "{q:?}");

    // Node 0 dies too (SIGKILL, no last save): its spool still shows
    // the day as saved by its last maintenance round.
    net.nodes[0].daemon = None;
    let after = queue_day(&common::queue_json(&net.nodes[0].data));
    assert!(dead_fails(&after), "{after:?}");
    // Saves only add to the day: nothing read before is gone.
    for n in OTHERS {
        assert!(
            after[n].0 >= q[n].0 && after[n].1 >= q[n].1,
            "{after:?} {q:?}"
        );
    }
}
