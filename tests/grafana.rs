//! The Grafana dashboard in `contrib/` names only metrics that exist: the
//! real binary (a `-sphinx` node, so the mixnet metrics are in its scrape
//! too) is scraped, and every metric name in the dashboard's PromQL must
//! be in the scrape. Families that have no series before their first
//! event (the per-node loop health, delivery failures) are declared from
//! the start (HELP and TYPE), so one fresh node is enough: no network
//! needs to run for the check, and a name misspelt in the dashboard fails
//! it. The check is also run on a copy with one name misspelt, so a
//! checker that finds nothing cannot pass.

mod common;

use std::collections::BTreeSet;

use common::mixnet::{alice_and_four, alice_flags};
use common::{Daemon, scrape};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana-pluto2.json");

/// The panels the dashboard promises (README, issue 20).
const PANELS: [&str; 4] = [
    "Queue by state",
    "Deliveries by outcome",
    "Loop success per node",
    "Packets in custody by kind",
];

/// The PromQL of the dashboard: every string under an `expr` (panel
/// targets), `query` or `definition` (template variables) key.
fn promql(value: &serde_json::Value, key: Option<&str>, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
            out.push(s.clone())
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| promql(v, key, out)),
        serde_json::Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| promql(v, Some(k.as_str()), out)),
        _ => {}
    }
}

/// The metric names in PromQL expressions: identifiers that begin with
/// `pluto2_` (every pluto2 metric does; labels, functions and `$`
/// variables do not).
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for e in exprs {
        let bytes = e.as_bytes();
        let mut i = 0;
        while let Some(at) = e[i..].find("pluto2_") {
            let start = i + at;
            let boundary = start == 0 || {
                let c = bytes[start - 1];
                !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
            };
            let end = e[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(e.len(), |n| start + n);
            if boundary {
                names.insert(e[start..end].to_string());
            }
            i = end;
        }
    }
    names
}

/// The names a scrape exposes: those of HELP and TYPE lines, of every
/// sample, and a histogram's `_bucket`, `_sum` and `_count` series.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or_default();
            names.insert(name.to_string());
            if line.starts_with("# TYPE ") && words.next() == Some("histogram") {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(name.to_string());
        }
    }
    names
}

/// Names used by the dashboard and missing from the scrape.
fn missing(used: &BTreeSet<String>, scraped: &BTreeSet<String>) -> Vec<String> {
    used.difference(scraped).cloned().collect()
}

#[tokio::test]
async fn the_dashboard_names_only_metrics_the_daemon_exposes() {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let titles: Vec<&str> = doc["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in PANELS {
        assert!(titles.contains(&want), "no panel {want:?} in {titles:?}");
    }
    let mut exprs = Vec::new();
    promql(&doc, None, &mut exprs);
    let used = metric_names(&exprs);
    for family in [
        "pluto2_queue_recipients",
        "pluto2_recipients_delivered_total",
        "pluto2_mixnet_node_loop_success_ratio",
        "pluto2_mixnet_node_loop_latency_median_seconds",
        "pluto2_mixnet_node_loops",
        "pluto2_mixnet_custody_packets",
    ] {
        assert!(used.contains(family), "the dashboard lacks {family}");
    }

    // A mixnet node alone (its peers do not run): every metric family is
    // in its scrape, declared if not yet counted.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pki = alice_and_four(dir.path(), &data);
    let mut flags = alice_flags(&pki);
    flags.extend(["-node", "127.0.0.1:0", "-metrics", "127.0.0.1:0"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let d = Daemon::start_in(&data, &flags);
    let addr = d.metrics_addr().await;
    let text = scrape(addr).await;
    let scraped = exposed(&text);
    let absent = missing(&used, &scraped);
    assert!(
        absent.is_empty(),
        "the dashboard names metrics the daemon does not expose: {absent:?}\n{text}"
    );

    // The check itself: a name misspelt in one expression is caught.
    let first = used.iter().next().unwrap().clone();
    let misspelt: Vec<String> = exprs
        .iter()
        .map(|e| e.replace(&first, &format!("{first}s")))
        .collect();
    assert_eq!(
        missing(&metric_names(&misspelt), &scraped),
        [format!("{first}s")]
    );
}

#[test]
fn names_are_read_from_promql_with_their_histogram_suffixes() {
    let exprs = [
        r#"histogram_quantile(0.99, sum by (le) (rate(pluto2_spool_commit_seconds_bucket{instance=~"$instance"}[5m])))"#.to_string(),
        "pluto2_a / pluto2_b:ratio + xpluto2_c".to_string(),
    ];
    let names: Vec<String> = metric_names(&exprs).into_iter().collect();
    assert_eq!(
        names,
        [
            "pluto2_a",
            "pluto2_b:ratio",
            "pluto2_spool_commit_seconds_bucket"
        ]
    );
    let scrape = "# HELP pluto2_spool_commit_seconds Time.\n# TYPE pluto2_spool_commit_seconds histogram\npluto2_spool_commit_seconds_sum 0.0\n# TYPE pluto2_x gauge\npluto2_y{a=\"b\"} 1\n";
    let got = exposed(scrape);
    for name in [
        "pluto2_spool_commit_seconds_bucket",
        "pluto2_spool_commit_seconds_count",
        "pluto2_x",
        "pluto2_y",
    ] {
        assert!(got.contains(name), "{name} not in {got:?}");
    }
}
