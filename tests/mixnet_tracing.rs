//! The tracing game on a 5-node network of real `pluto2 -sphinx`
//! processes (tests/common/mixnet.rs).
//!
//! Messages enter at node 0 at seeded Poisson times; the adversary sees
//! when each went in (the end of its SMTP DATA) and when each came out at
//! the sink, and for every output guesses which input it was. The best
//! such guess, knowing the delay law, is the input with the highest
//! likelihood: a route adds two exponential hop delays of mean μ (the
//! exit's is zero), so the total is Gamma(2, μ). Its expected success
//! given the very input times of the run is
//!
//! ```text
//!   bound = mean over outputs j of  max_i f(d_j − a_i) / Σ_i f(d_j − a_i)
//! ```
//!
//! (f the Gamma(2, μ) density, i over the inputs before d_j). That is the
//! bound the delays and the traffic allow: no per-output guess does better
//! on average while the nodes delay as they claim. The test plays two
//! adversaries, the likelihood one and "the latest input before the
//! output" (which wins outright if a hop forwards without its delay), and
//! checks both stay within the bound plus three standard deviations of
//! the run's binomial noise.
//!
//! What it does not cover: an adversary who also follows each packet from
//! link to link inside the network (hop by hop); that game needs per-hop
//! pools and cover in the bound and is not played here.

mod common;

use std::time::{Duration, Instant};

use common::mixnet::MixNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Mean hop delay of the game's network, in seconds.
const MU: f64 = 0.3;
/// Messages in the game.
const MESSAGES: usize = 60;
/// Mean gap between two inputs, in seconds.
const GAP: f64 = 0.25;

const PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "300ms", "hop_delay_max": "3600ms",
    "max_message_size": 262144, "ack_timeout": "30s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "loop_cover_mean": "0s", "drop_cover_mean": "0s"}"#;

/// Gamma(2, μ) density at `x` seconds.
fn density(x: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else {
        x / (MU * MU) * (-x / MU).exp()
    }
}

/// For each output, the posterior over the inputs that came before it.
fn posteriors(inputs: &[f64], outputs: &[f64]) -> Vec<Vec<f64>> {
    outputs
        .iter()
        .map(|&d| {
            let w: Vec<f64> = inputs.iter().map(|&a| density(d - a)).collect();
            let sum: f64 = w.iter().sum();
            w.iter()
                .map(|x| if sum > 0.0 { x / sum } else { 0.0 })
                .collect()
        })
        .collect()
}

fn argmax(xs: &[f64]) -> usize {
    xs.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_of_inputs_and_outputs_traces_no_better_than_the_delays_allow() {
    let net = MixNet::start(5, PARAMS).await;
    net.until_healthy(0, 4).await;
    let mut rng = StdRng::seed_from_u64(2026);
    let rcpt = format!("someone@{}", net.sink_onion);
    // One session for every transaction (the per-client session limit).
    let mut c = net.daemon(0).ehlo_client().await;
    let start = Instant::now();
    let mut inputs = Vec::with_capacity(MESSAGES);
    let mut due = 0.0;
    for i in 0..MESSAGES {
        let u: f64 = 1.0 - rng.random::<f64>();
        due += -GAP * u.ln();
        let wait = due - start.elapsed().as_secs_f64();
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        let body = format!("Subject: t\r\n\r\ngame message {i:03} end\r\n");
        assert_eq!(c.send_mail("a@b.example", &[&rcpt], &body).await, 250);
        inputs.push(start.elapsed().as_secs_f64());
    }
    let got = net.sink.wait_for(MESSAGES).await;
    assert_eq!(got.len(), MESSAGES, "each message once");
    let mut outputs = Vec::with_capacity(MESSAGES);
    let mut truth = Vec::with_capacity(MESSAGES);
    for r in &got {
        let text = String::from_utf8_lossy(&r.data);
        let i: usize = text
            .split("game message ")
            .nth(1)
            .and_then(|t| t.get(..3))
            .and_then(|t| t.parse().ok())
            .expect("a game message");
        outputs.push(r.at.duration_since(start).as_secs_f64());
        truth.push(i);
    }
    let post = posteriors(&inputs, &outputs);
    let bound = post
        .iter()
        .map(|p| p.iter().cloned().fold(0.0, f64::max))
        .sum::<f64>()
        / MESSAGES as f64;
    let likelihood = post
        .iter()
        .zip(&truth)
        .filter(|(p, t)| argmax(p) == **t)
        .count() as f64
        / MESSAGES as f64;
    let latest = outputs
        .iter()
        .zip(&truth)
        .filter(|(d, t)| {
            let before = inputs.iter().rposition(|a| a < *d);
            before == Some(**t)
        })
        .count() as f64
        / MESSAGES as f64;
    let sigma = (bound * (1.0 - bound) / MESSAGES as f64).sqrt();
    eprintln!(
        "tracing game: {MESSAGES} messages, mean input gap {GAP} s, μ = {MU} s: bound {bound:.3}, likelihood adversary {likelihood:.3}, latest-input adversary {latest:.3} (σ {sigma:.3})"
    );
    assert!(
        bound < 0.8,
        "the game is too easy to mean anything: {bound}"
    );
    for (who, success) in [("likelihood", likelihood), ("latest input", latest)] {
        assert!(
            success <= bound + 3.0 * sigma,
            "the {who} adversary traced {success:.3} of the messages; the delays allow {bound:.3} (σ {sigma:.3})"
        );
    }
}
