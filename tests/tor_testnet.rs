//! The private Tor network as `pluto2 testnet -tor` plans it
//! (`pluto2::testnet::tor`), on real tors from Debian's `tor`: onion
//! services only, so an exit that takes no port and no name server; one
//! service per node with its link port and SMTP port, one for the SMTP
//! sink. And a network whose owner is gone (a crashed testnet) is stopped
//! from its directory alone.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::smtp_sink::{Behaviour, Sink};
use common::tor_net::free_port;
use pluto2::testnet::tor::{self, Plan, Service, TorNet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_of_onion_services_alone_runs_and_stops_from_its_directory() {
    let sink = Sink::start(Behaviour::default()).await;
    // A node's link port: it takes connections and says nothing first.
    let link = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
        .await
        .unwrap();
    let link_addr: SocketAddr = link.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = link.accept().await {
            held.push(stream);
        }
    });
    let plan = Plan {
        services: vec![
            Service::new("n0", vec![(9999, link_addr), (25, sink.addr)]),
            Service::new("sink0", vec![(25, sink.addr)]),
        ],
        exit_ports: vec![],
        resolver: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let net = TorNet::start(&dir.path().join("tor"), plan)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("[tor] bootstrapped in {:?}", net.bootstrap_time());

    let node = net.onion("n0").unwrap();
    let hostname = std::fs::read_to_string(net.hostname_file("n0").unwrap()).unwrap();
    assert_eq!(hostname.trim(), node);
    assert!(pluto2::address::OnionName::parse(&node).is_ok(), "{node}");
    let sink_onion = net.onion("sink0").unwrap();
    assert_ne!(node, sink_onion);
    assert!(matches!(
        net.onion("nobody"),
        Err(tor::TorNetError::NoSuchService(_))
    ));
    for (onion, port, greets) in [
        (&node, 25, true),
        (&node, 9999, false),
        (&sink_onion, 25, true),
    ] {
        let reached = if greets {
            net.until_onion_answers(onion, port).await
        } else {
            net.until_onion_connects(onion, port).await
        };
        reached.unwrap_or_else(|e| panic!("{e}"));
    }
    eprintln!("[tor] every onion answered");

    // The owner vanishes without stopping anything, as a crashed
    // `pluto2 testnet` would; the directory is all that is left.
    let root = net.dir().to_path_buf();
    std::mem::forget(net);
    let running: BTreeSet<i32> = tor::tors_running_in(&root)
        .unwrap()
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(
        running.len(),
        8,
        "three authorities, two relays, exit, client, services"
    );
    let stop_dir = dir.path().join("tor");
    let stopped = tokio::task::spawn_blocking(move || tor::stop_all_in(&stop_dir))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stopped.into_iter().collect::<BTreeSet<_>>(), running);
    assert!(tor::tors_running_in(&root).unwrap().is_empty());
    assert!(
        tor::stop_all_in(&root).unwrap().is_empty(),
        "nothing left to stop"
    );
}
