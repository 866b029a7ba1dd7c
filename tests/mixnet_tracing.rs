//! Tracing games on a 5-node network of real `pluto2 -sphinx` processes
//! (tests/common/mixnet.rs) with loop and drop cover on.
//!
//! Messages enter at node 0 at seeded Poisson times and leave at the exits,
//! each exit delivering to its own sink (so the test knows, as a network
//! observer would, which node delivered what). Two observers try to say,
//! for every delivered message, which input it was.
//!
//! **Game 1, inputs and outputs only.** The observer sees when each message
//! went in and when each came out. A route adds two exponential hop delays
//! of mean μ (the exit's is zero), so the total is Gamma(2, μ), and the
//! best per-output guess is the input with the highest likelihood. Its
//! expected success given the run's own input times is
//!
//! ```text
//!   bound = mean over outputs j of  max_i f(d_j − a_i) / Σ_i f(d_j − a_i)
//! ```
//!
//! (f the Gamma(2, μ) density, i over the inputs before d_j). Played: the
//! likelihood adversary and "the latest input before the output".
//!
//! **Game 2, every link.** The observer also sees every PACKET frame on
//! every link: when, from which node, to which (frames have one size, which
//! the test checks, so size says nothing). Hops hold each packet for its own
//! exponential delay; with memoryless delays a departing packet is any of
//! the packets the node holds, so what protects a message is how many
//! packets (data, acknowledgements, cover) share each pool while it waits,
//! which the rates and μ decide. No closed form takes in the routes, the
//! acknowledgements and the cover, so the bound is measured: the same
//! observers play against the design itself, simulated (`simulate`) with
//! the run's input times, the network's parameters and cover rates, and
//! processing latencies estimated from the run (`latencies`; the entry's
//! is underestimated, which makes the simulated design easier to trace,
//! so the check errs towards leniency), many times with a seed. The real network
//! must not let any of them do better than they do against the design,
//! beyond the spread the simulations show (mean + 4 sd). Played:
//!
//! - *end-to-end likelihood* (game 1's) and *typical delay*: the input
//!   whose gap to the output fits the most common input-to-output gap of
//!   the run (wins when hops hold every packet for the same time);
//! - *zero-delay follower*: from the delivery, back through the latest
//!   arrival at each node, to an input (wins when hops do not delay);
//! - *mean-hold follower*: back through the arrival held closest to μ at
//!   each node (wins when hops hold every packet for the same time, which
//!   keeps their order);
//! - *pool tracker*: an approximate Bayesian filter carrying masses over
//!   inputs with every packet; a departure is any held packet, weighted by
//!   how likely its kind (first mix, second mix, cover or acknowledgement)
//!   is to go where the frame went; it guesses the most likely input: the
//!   observer the design's pools are meant to defeat.
//!
//! What the bound is not: a bound over every conceivable observer. It is
//! what these observers achieve against a perfect implementation of the
//! design at this traffic; a node that leaks order or timing beyond its
//! delays lets one of them do measurably better, which is what fails.

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use common::link_tap::{Direction, FrameKind};
use common::mixnet::MixNet;
use common::smtp_sink::{Behaviour, Sink};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Nodes in the network; node 0 is the entry of every message.
const NODES: usize = 5;
/// Mean hop delay, in seconds.
const MU: f64 = 0.5;
/// Longest hop delay (the params' `hop_delay_max`), in seconds.
const MAX_DELAY: f64 = 6.0;
/// Mean gap between loop cover packets of one node, in seconds.
const LOOP_MEAN: f64 = 0.5;
/// Mean gap between drop cover packets of one node, in seconds.
const DROP_MEAN: f64 = 0.5;
/// Messages in the game.
const MESSAGES: usize = 100;
/// Mean gap between two inputs, in seconds.
const GAP: f64 = 0.2;
/// Simulated runs of the design behind game 2's bound.
const SIMULATIONS: usize = 60;
/// An observer takes a departure within this long of an input (at the
/// entry) or of a delivery (at an exit) for the new packet it launches.
const LAUNCH: f64 = 0.1;

const PARAMS: &str = r#"{"hops": 3, "hop_delay_mean": "500ms", "hop_delay_max": "6s",
    "max_message_size": 262144, "ack_timeout": "30s", "custody_horizon": "10m", "e2e_horizon": "1h",
    "loop_cover_mean": "500ms", "drop_cover_mean": "500ms"}"#;

/// What the link observer sees; times in seconds from the first input's
/// session start.
#[derive(Debug, Default)]
struct View {
    inputs: Vec<f64>,
    /// (time, from, to) of every PACKET frame, by time.
    frames: Vec<(f64, usize, usize)>,
    /// (time, exit) of every delivery, by time.
    outputs: Vec<(f64, usize)>,
}

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

fn argmax(xs: &[f64]) -> Option<usize> {
    xs.iter()
        .enumerate()
        .filter(|(_, p)| **p > 0.0)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

fn success(guesses: &[Option<usize>], truth: &[usize]) -> f64 {
    let hits = guesses
        .iter()
        .zip(truth)
        .filter(|(g, t)| **g == Some(**t))
        .count();
    hits as f64 / truth.len() as f64
}

/// The observer's events in time order.
#[derive(Clone, Copy)]
enum Event {
    Input(usize),
    Frame { from: usize, to: usize },
    Output { exit: usize },
}

fn events(v: &View) -> Vec<(f64, Event)> {
    let mut ev: Vec<(f64, Event)> = v
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, Event::Input(i)))
        .chain(
            v.frames
                .iter()
                .map(|&(t, from, to)| (t, Event::Frame { from, to })),
        )
        .chain(
            v.outputs
                .iter()
                .map(|&(t, exit)| (t, Event::Output { exit })),
        )
        .collect();
    ev.sort_by(|a, b| a.0.total_cmp(&b.0));
    ev
}

/// How an observer reads a departure.
enum Departure {
    /// The launch of this input at the entry.
    Launch(usize),
    /// An exit's acknowledgement after a delivery.
    Ack,
    /// A packet the node held.
    Held,
}

/// The observer's guess at which departures are new packets: the entry
/// launches each input at once, an exit acknowledges each delivery at once.
#[derive(Default)]
struct Launches {
    pending: VecDeque<(f64, usize)>,
    delivered: HashMap<usize, VecDeque<f64>>,
}

impl Launches {
    fn input(&mut self, t: f64, i: usize) {
        self.pending.push_back((t, i));
    }

    fn delivery(&mut self, t: f64, exit: usize) {
        self.delivered.entry(exit).or_default().push_back(t);
    }

    fn departure(&mut self, t: f64, from: usize) -> Departure {
        if from == 0 {
            while self.pending.front().is_some_and(|(a, _)| t - a > LAUNCH) {
                self.pending.pop_front();
            }
            if let Some((_, i)) = self.pending.pop_front() {
                return Departure::Launch(i);
            }
        }
        if let Some(d) = self.delivered.get_mut(&from) {
            while d.front().is_some_and(|x| t - x > LAUNCH) {
                d.pop_front();
            }
            if d.pop_front().is_some() {
                return Departure::Ack;
            }
        }
        Departure::Held
    }
}

/// Follows each delivery back, node by node, through the arrival whose
/// hold fits `hold` best (the latest arrival for a hold of zero), to an
/// input launched at the entry. The exit delivers at once, so its latest
/// arrival is the packet.
fn follow(v: &View, hold: f64) -> Vec<Option<usize>> {
    let mut into: Vec<Vec<(f64, usize)>> = vec![Vec::new(); NODES];
    for &(t, from, to) in &v.frames {
        into[to].push((t, from));
    }
    v.outputs
        .iter()
        .map(|&(d, exit)| {
            let arrivals = &into[exit];
            let k = arrivals.partition_point(|&(a, _)| a < d);
            let (mut t, mut node) = arrivals[..k].last().copied()?;
            for _ in 0..16 {
                if node == 0 {
                    let k = v.inputs.partition_point(|&a| a < t);
                    if let Some(i) = k.checked_sub(1)
                        && t - v.inputs[i] <= LAUNCH
                    {
                        return Some(i);
                    }
                }
                let arrivals = &into[node];
                let k = arrivals.partition_point(|&(a, _)| a < t);
                let &(a, from) = arrivals[..k]
                    .iter()
                    .min_by(|x, y| (t - x.0 - hold).abs().total_cmp(&(t - y.0 - hold).abs()))?;
                t = a;
                node = from;
            }
            None
        })
        .collect()
}

/// Wins when hops do not delay.
fn zero_delay_follower(v: &View) -> Vec<Option<usize>> {
    follow(v, 0.0)
}

/// Against exponential delays a hold of μ is no likelier than any other;
/// a hop that holds every packet for the same time (and so keeps their
/// order) gives itself away.
fn mean_hold_follower(v: &View) -> Vec<Option<usize>> {
    follow(v, MU)
}

/// A packet the pool tracker believes a node may hold, as masses over what
/// it may be: input i at its first mix, input i at its second mix, anything
/// else (acknowledgement or cover). The masses add up to the chance it is
/// still held. Data masses are short lists: a first-mix packet is a launch
/// (one input), a second-mix one mixes the few launches its first mix held.
#[derive(Default)]
struct Held {
    first: Vec<(usize, f64)>,
    second: Vec<(usize, f64)>,
    other: f64,
    from: usize,
}

fn add(masses: &mut Vec<(usize, f64)>, i: usize, x: f64) {
    match masses.iter_mut().find(|(j, _)| *j == i) {
        Some((_, y)) => *y += x,
        None => masses.push((i, x)),
    }
}

fn total(masses: &[(usize, f64)]) -> f64 {
    masses.iter().map(|(_, x)| x).sum()
}

/// How likely a packet of each kind held at `here`, come from `from`, is to
/// leave for `to` in a frame that is (`terminal`) or is not followed at
/// once by a delivery there. Routes are distinct mixes: a first-mix packet
/// goes to one of the 3 other mixes and is not delivered there, a
/// second-mix packet to one of the 2 exits left and is; anything else goes
/// anywhere but is never delivered.
fn likelihoods(from: usize, here: usize, to: usize, terminal: bool) -> [f64; 3] {
    let mix = to != 0 && to != here;
    let first = if mix && !terminal { 1.0 / 3.0 } else { 0.0 };
    let second = if mix && terminal && to != from {
        0.5
    } else {
        0.0
    };
    let other = if terminal || to == from { 0.0 } else { 0.25 };
    [first, second, other]
}

/// An approximate Bayesian filter over the pools: every departure is any
/// held packet, weighted by the chance it is still there and by how likely
/// its kind is to go where the frame went (`likelihoods`); the departing
/// packet carries the weighted mix of their masses, each one moved a stage
/// on, and the held packets lose what left. Looks ahead only to see which
/// frames end in a delivery.
fn pool_tracker(v: &View) -> Vec<Option<usize>> {
    // The latest arrival at the exit before each delivery (not taken by
    // an earlier one) is the delivered packet.
    let mut terminal = vec![false; v.frames.len()];
    for &(d, exit) in &v.outputs {
        let latest = (0..v.frames.len())
            .rev()
            .find(|&k| !terminal[k] && v.frames[k].2 == exit && v.frames[k].0 < d);
        if let Some(k) = latest {
            terminal[k] = true;
        }
    }
    let mut pools: Vec<Vec<Held>> = (0..NODES).map(|_| Vec::new()).collect();
    let mut delivered: Vec<VecDeque<Vec<(usize, f64)>>> = vec![VecDeque::new(); NODES];
    let mut launches = Launches::default();
    let mut guesses = Vec::new();
    let mut frame_no = 0;
    for (t, e) in events(v) {
        match e {
            Event::Input(i) => launches.input(t, i),
            Event::Frame { from, to } => {
                let end = terminal[frame_no];
                frame_no += 1;
                // What leaves: `out.first` arrives at its first mix,
                // `out.second` at its second, `done` is delivered.
                let mut out = Held {
                    from,
                    ..Held::default()
                };
                let mut done = Vec::new();
                match launches.departure(t, from) {
                    Departure::Launch(i) => out.first.push((i, 1.0)),
                    Departure::Ack => out.other = 1.0,
                    Departure::Held => {
                        let pool = &mut pools[from];
                        let weights: Vec<[f64; 3]> = pool
                            .iter()
                            .map(|h| likelihoods(h.from, from, to, end))
                            .collect();
                        let sum: f64 = pool
                            .iter()
                            .zip(&weights)
                            .map(|(h, l)| {
                                l[0] * total(&h.first) + l[1] * total(&h.second) + l[2] * h.other
                            })
                            .sum();
                        if sum > 1e-12 {
                            for (h, l) in pool.iter_mut().zip(&weights) {
                                for (i, x) in h.first.iter_mut() {
                                    let gone = *x * l[0] / sum;
                                    add(&mut out.second, *i, gone);
                                    *x -= gone;
                                }
                                for (i, x) in h.second.iter_mut() {
                                    let gone = *x * l[1] / sum;
                                    add(&mut done, *i, gone);
                                    *x -= gone;
                                }
                                let gone = h.other * l[2] / sum;
                                out.other += gone;
                                h.other -= gone;
                            }
                            pool.retain(|h| total(&h.first) + total(&h.second) + h.other > 1e-4);
                        }
                    }
                }
                if end {
                    delivered[to].push_back(done);
                } else {
                    pools[to].push(out);
                }
            }
            Event::Output { exit } => {
                let guess = delivered[exit].pop_front().and_then(|m| {
                    m.iter()
                        .filter(|(_, x)| *x > 0.0)
                        .max_by(|a, b| a.1.total_cmp(&b.1))
                        .map(|(i, _)| *i)
                });
                guesses.push(guess);
                launches.delivery(t, exit);
            }
        }
    }
    guesses
}

/// The observer of game 1 in game 2's line-up: it ignores the links.
fn end_to_end(v: &View) -> Vec<Option<usize>> {
    let out: Vec<f64> = v.outputs.iter().map(|o| o.0).collect();
    posteriors(&v.inputs, &out)
        .iter()
        .map(|p| argmax(p))
        .collect()
}

/// Learns the typical time from input to output from the traffic (the
/// most common gap, in 20 ms bins, between an output and the inputs before
/// it) and guesses the input that fits it best. Against Gamma(2, μ) delays
/// that gap is spread wide and the guess is weak; an implementation whose
/// hops hold packets for a fixed time gives itself away.
fn typical_delay(v: &View) -> Vec<Option<usize>> {
    const BIN: f64 = 0.02;
    let mut bins = vec![0usize; (4.0 * MAX_DELAY / BIN) as usize];
    for &(d, _) in &v.outputs {
        for &a in &v.inputs {
            if let Some(b) = bins.get_mut(((d - a) / BIN) as usize)
                && d > a
            {
                *b += 1;
            }
        }
    }
    let mode = (0..bins.len()).max_by_key(|&b| bins[b]).unwrap_or(0);
    let gap = (mode as f64 + 0.5) * BIN;
    v.outputs
        .iter()
        .map(|&(d, _)| {
            (0..v.inputs.len())
                .filter(|&i| v.inputs[i] < d)
                .min_by(|&x, &y| {
                    (d - v.inputs[x] - gap)
                        .abs()
                        .total_cmp(&(d - v.inputs[y] - gap).abs())
                })
        })
        .collect()
}

type Observer = fn(&View) -> Vec<Option<usize>>;

const OBSERVERS: [(&str, Observer); 5] = [
    ("end-to-end likelihood", end_to_end),
    ("typical end-to-end delay", typical_delay),
    ("zero-delay follower", zero_delay_follower),
    ("mean-hold follower", mean_hold_follower),
    ("pool tracker", pool_tracker),
];

/// Processing latencies of the real network, in seconds, which the
/// simulation adds so that it differs from the run only in what the design
/// randomises.
#[derive(Debug, Clone, Copy)]
struct Latency {
    /// From the end of DATA at the entry to the first link.
    launch: f64,
    /// From a hop's delay running out to the next link (not observable
    /// without the keys; a fixed 2 ms).
    hop: f64,
    /// From the packet reaching the exit to the sink's final dot.
    deliver: f64,
    /// From the sink's final dot to the acknowledgement leaving the exit.
    ack: f64,
}

fn exponential(mean: f64, rng: &mut StdRng) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

fn hop_delay(rng: &mut StdRng) -> f64 {
    loop {
        let d = exponential(MU, rng);
        if d <= MAX_DELAY {
            return d;
        }
    }
}

/// `n` distinct nodes out of `pool`, in random order.
fn pick(pool: &[usize], n: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut p = pool.to_vec();
    p.shuffle(rng);
    p.truncate(n);
    p
}

/// Sends a packet along `path` from `at`: no delay at the first node, an
/// exponential one at every later node but the last. Returns when it
/// reaches the last node.
fn travel(
    path: &[usize],
    at: f64,
    lat: Latency,
    frames: &mut Vec<(f64, usize, usize)>,
    rng: &mut StdRng,
) -> f64 {
    let mut t = at;
    for (k, w) in path.windows(2).enumerate() {
        if k > 0 {
            t += hop_delay(rng) + lat.hop;
        }
        frames.push((t, w[0], w[1]));
    }
    t
}

/// One run of the design with the real run's inputs over `window`
/// (seconds): uniform routes of distinct nodes, exponential hop delays,
/// loop and drop cover from every node, an acknowledgement per delivery
/// through every other mix back to the entry. Returns what the observer
/// sees and, for each output, its input.
fn simulate(
    inputs: &[f64],
    window: (f64, f64),
    lat: Latency,
    rng: &mut StdRng,
) -> (View, Vec<usize>) {
    let mixes: Vec<usize> = (1..NODES).collect();
    let mut frames = Vec::new();
    let mut outputs = Vec::new();
    for (i, &a) in inputs.iter().enumerate() {
        let exit = mixes[rng.random_range(0..mixes.len())];
        let others: Vec<usize> = mixes.iter().copied().filter(|&m| m != exit).collect();
        let mut path = vec![0];
        path.extend(pick(&others, 2, rng));
        path.push(exit);
        let d = travel(&path, a + lat.launch, lat, &mut frames, rng) + lat.deliver;
        outputs.push((d, exit, i));
        let mut reply = vec![exit];
        reply.extend(pick(&others, 3, rng));
        reply.push(0);
        travel(&reply, d + lat.ack, lat, &mut frames, rng);
    }
    for node in 0..NODES {
        let others: Vec<usize> = (0..NODES).filter(|&m| m != node).collect();
        for (mean, back) in [(LOOP_MEAN, true), (DROP_MEAN, false)] {
            let mut t = window.0 + exponential(mean, rng);
            while t < window.1 {
                let mut path = vec![node];
                path.extend(pick(&others, 3, rng));
                if back {
                    path.push(node);
                }
                travel(&path, t, lat, &mut frames, rng);
                t += exponential(mean, rng);
            }
        }
    }
    frames.retain(|f| f.0 <= window.1);
    frames.sort_by(|a, b| a.0.total_cmp(&b.0));
    outputs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let view = View {
        inputs: inputs.to_vec(),
        frames,
        outputs: outputs.iter().map(|&(d, x, _)| (d, x)).collect(),
    };
    (view, outputs.iter().map(|o| o.2).collect())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// The run's processing latencies as the observer can estimate them: the
/// first departure from the entry after each input, the last arrival at
/// the exit before each delivery, the first departure from the exit after
/// it.
fn latencies(v: &View) -> Latency {
    let after = |node: usize, t: f64| {
        v.frames
            .iter()
            .find(|f| f.1 == node && f.0 > t)
            .map(|f| f.0 - t)
    };
    let before = |node: usize, t: f64| {
        v.frames
            .iter()
            .rev()
            .find(|f| f.2 == node && f.0 < t)
            .map(|f| t - f.0)
    };
    Latency {
        launch: median(v.inputs.iter().filter_map(|&a| after(0, a)).collect()),
        hop: 0.002,
        deliver: median(
            v.outputs
                .iter()
                .filter_map(|&(d, x)| before(x, d))
                .collect(),
        ),
        ack: median(v.outputs.iter().filter_map(|&(d, x)| after(x, d)).collect()),
    }
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64;
    (m, var.sqrt())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_of_inputs_outputs_and_every_link_trace_no_better_than_the_design_allows() {
    let net = MixNet::start(NODES, PARAMS).await;
    let onions: Vec<String> = net.nodes.iter().map(|n| n.onion.clone()).collect();
    // One sink per exit: which node delivered is part of what is seen.
    let mut sinks = Vec::new();
    for node in &net.nodes {
        let sink = Sink::start(Behaviour::default()).await;
        node.tap.route(&net.sink_onion, 25, sink.addr);
        sinks.push(sink);
    }
    net.until_healthy(0, 4).await;
    let mut rng = StdRng::seed_from_u64(2026);
    let rcpt = format!("someone@{}", net.sink_onion);
    // One session for every transaction (the per-client session limit).
    let mut c = net.daemon(0).ehlo_client().await;
    let start = Instant::now();
    let mut inputs = Vec::with_capacity(MESSAGES);
    let mut due = 0.0;
    for i in 0..MESSAGES {
        due += exponential(GAP, &mut rng);
        let wait = due - start.elapsed().as_secs_f64();
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        let body = format!("Subject: t\r\n\r\ngame message {i:03} end\r\n");
        assert_eq!(c.send_mail("a@b.example", &[&rcpt], &body).await, 250);
        inputs.push(start.elapsed().as_secs_f64());
    }
    // Every message acknowledged: every delivery made.
    net.daemon(0)
        .until_queue("every message acknowledged", |q| q["messages"] == 0)
        .await;
    let end = start.elapsed().as_secs_f64();

    let mut outputs = Vec::new();
    for (exit, sink) in sinks.iter().enumerate() {
        for r in sink.received() {
            let text = String::from_utf8_lossy(&r.data);
            let i: usize = text
                .split("game message ")
                .nth(1)
                .and_then(|t| t.get(..3))
                .and_then(|t| t.parse().ok())
                .expect("a game message");
            outputs.push((r.at.duration_since(start).as_secs_f64(), exit, i));
        }
    }
    outputs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut seen: Vec<usize> = outputs.iter().map(|o| o.2).collect();
    seen.sort();
    assert_eq!(seen, (0..MESSAGES).collect::<Vec<_>>(), "each message once");
    let truth: Vec<usize> = outputs.iter().map(|o| o.2).collect();

    let start_tokio = tokio::time::Instant::from_std(start);
    let mut frames = Vec::new();
    let mut sizes = std::collections::BTreeSet::new();
    for (from, node) in net.nodes.iter().enumerate() {
        for f in node.tap.frames() {
            if f.kind != FrameKind::Packet || f.dir != Direction::ToTarget {
                continue;
            }
            sizes.insert(f.len);
            let to = onions.iter().position(|o| *o == f.host).expect("a node");
            let t = if f.at >= start_tokio {
                (f.at - start_tokio).as_secs_f64()
            } else {
                -(start_tokio - f.at).as_secs_f64()
            };
            if t <= end {
                frames.push((t, from, to));
            }
        }
    }
    assert_eq!(
        sizes.len(),
        1,
        "PACKET frames of more than one size: {sizes:?}"
    );
    frames.sort_by(|a, b| a.0.total_cmp(&b.0));
    let view = View {
        inputs: inputs.clone(),
        frames,
        outputs: outputs.iter().map(|&(d, x, _)| (d, x)).collect(),
    };

    // Game 1.
    let out_times: Vec<f64> = view.outputs.iter().map(|o| o.0).collect();
    let post = posteriors(&inputs, &out_times);
    let bound = post
        .iter()
        .map(|p| p.iter().cloned().fold(0.0, f64::max))
        .sum::<f64>()
        / MESSAGES as f64;
    let likelihood = success(&post.iter().map(|p| argmax(p)).collect::<Vec<_>>(), &truth);
    let latest: Vec<Option<usize>> = out_times
        .iter()
        .map(|d| inputs.iter().rposition(|a| a < d))
        .collect();
    let latest = success(&latest, &truth);
    let sigma = (bound * (1.0 - bound) / MESSAGES as f64).sqrt();
    eprintln!(
        "game 1: {MESSAGES} messages, mean input gap {GAP} s, μ = {MU} s: bound {bound:.3}, likelihood adversary {likelihood:.3}, latest-input adversary {latest:.3} (σ {sigma:.3})"
    );
    assert!(bound < 0.8, "game 1 is too easy to mean anything: {bound}");
    // Both games are played before either is judged, so a failure shows
    // every observer's figures.
    let mut failures = Vec::new();
    for (who, s) in [("likelihood", likelihood), ("latest input", latest)] {
        if s > bound + 3.0 * sigma {
            failures.push(format!(
                "game 1: the {who} adversary traced {s:.3} of the messages; the delays allow {bound:.3} (σ {sigma:.3})"
            ));
        }
    }

    // Game 2.
    let lat = latencies(&view);
    let window = (view.frames[0].0, end);
    eprintln!(
        "game 2: {} frames seen from {:.1} s to {end:.1} s; latencies {lat:?}",
        view.frames.len(),
        window.0
    );
    // The simulations, seeded one by one, on two threads.
    let began = Instant::now();
    let designed: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let half = |first: usize| {
            let inputs = &inputs;
            scope.spawn(move || {
                (first..SIMULATIONS)
                    .step_by(2)
                    .map(|k| {
                        let mut rng = StdRng::seed_from_u64(11 + k as u64);
                        let (sim, sim_truth) = simulate(inputs, window, lat, &mut rng);
                        OBSERVERS
                            .iter()
                            .map(|(_, observer)| success(&observer(&sim), &sim_truth))
                            .collect::<Vec<f64>>()
                    })
                    .collect::<Vec<_>>()
            })
        };
        let (a, b) = (half(0), half(1));
        let runs: Vec<Vec<f64>> = a
            .join()
            .unwrap()
            .into_iter()
            .chain(b.join().unwrap())
            .collect();
        (0..OBSERVERS.len())
            .map(|k| runs.iter().map(|r| r[k]).collect())
            .collect()
    });
    eprintln!(
        "game 2: {SIMULATIONS} simulations in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let mut stated = 0.0f64;
    for (k, (who, observer)) in OBSERVERS.iter().enumerate() {
        let real = success(&observer(&view), &truth);
        let (m, sd) = mean_sd(&designed[k]);
        stated = stated.max(m);
        eprintln!(
            "game 2: {who}: {real:.3} on the network; {m:.3} (sd {sd:.3}) against the design"
        );
        if real > m + 4.0 * sd + 1.0 / MESSAGES as f64 {
            failures.push(format!(
                "game 2: the {who} traced {real:.3} of the messages; against the design it traces {m:.3} (sd {sd:.3})"
            ));
        }
    }
    eprintln!("game 2: bound (best observer against the design) {stated:.3}");
    assert!(
        stated < 0.5,
        "game 2 is too easy to mean anything: {stated}"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
