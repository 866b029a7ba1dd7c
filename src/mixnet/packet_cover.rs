//! Cover inside the mixnet: loop packets that come back to this node and
//! drop packets that their last hop discards, each a Poisson process at
//! the network's rates (`loop_cover_mean`, `drop_cover_mean`).
//!
//! Both are built like data: 8,540-byte Sphinx packets with per-hop
//! delays, queued in custody like everything else, so on a link they look
//! like any other packet; only their final hop learns their kind. Loops
//! are also the health probe: each records its route, and one that is not
//! back in time counts against the nodes on it (`node::Health`). Loops
//! choose among every node whose link is up, including nodes their
//! statistics set aside, so a node that recovers is seen to recover; data
//! and drops choose only among usable nodes.
//!
//! While no route can be built (too few usable nodes) nothing is
//! generated and nothing accumulates; the processes start afresh when
//! routes return, so an outage is never followed by a burst.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::context::MixContext;
use super::hop::random_id;
use super::path::{hop_delay, pick_nodes};
use super::sender::usable_peers;
use crate::spool::SpoolError;
use crate::spool::custody::{OutPacket, PacketKind};
use crate::spool::loop_hours::LoopHour;
use crate::stats::Stats;
use crate::wire::fragment::{Fragment, Kind};
use crate::wire::packet::{self, NodeId, PacketError, RouteHop};

/// How often overdue loops are looked for when nothing else happens.
const EXPIRE_TICK: Duration = Duration::from_millis(500);

/// An exponential gap with mean `mean` (a Poisson process's next event).
pub fn gap<R: Rng + ?Sized>(mean: Duration, rng: &mut R) -> Duration {
    let u: f64 = 1.0 - rng.random::<f64>();
    mean.mul_f64(-u.ln())
}

/// How long a loop may take before it counts as lost: four mean delays
/// per hop (a loop is late by that only about once in two thousand), at
/// most the longest possible delays, plus time for the links themselves.
pub fn loop_patience(params: &crate::wire::pki::Params) -> Duration {
    let hops = params.hops as u32 + 1;
    let delays = (params.hop_delay_mean * 4 * hops).min(params.hop_delay_max * hops);
    delays + params.ack_timeout.min(Duration::from_secs(120))
}

/// Saves the loop outcomes counted since the last call to the pinger's
/// day in the spool (`spool::loop_hours`), each node under its short
/// name now; what the spool does not take is kept for the next call.
/// The maintenance round calls it, and once more at stop: loops still on
/// their way then are never counted (neither back nor lost).
pub async fn save_loop_day(ctx: &MixContext) {
    let hours = ctx.health.take_loop_hours();
    if hours.is_empty() {
        return;
    }
    let rows: Vec<LoopHour> = hours
        .iter()
        .filter_map(|(id, hour, counts)| {
            // A node dropped from nodes.json meanwhile has no name to
            // show: its last outcomes are not kept.
            let name = ctx.directory.node(id)?.short_name;
            Some(LoopHour {
                node: id.0,
                name,
                hour: *hour,
                counts: counts.clone(),
            })
        })
        .collect();
    if let Err(e) = ctx.spool.save_loop_hours(rows).await {
        debug!("[MIXNET] loop statistics not saved yet: {e}");
        ctx.health.keep_loop_hours(hours);
    }
}

/// Where cover packets go: the spool's custody queue, like every packet
/// this node sends (tests put a recorder here).
pub trait PacketCoverSink: Send + Sync {
    fn queue(&self, packet: OutPacket) -> crate::BoxFuture<'_, Result<(), SpoolError>>;
}

impl PacketCoverSink for crate::spool::Spool {
    fn queue(&self, packet: OutPacket) -> crate::BoxFuture<'_, Result<(), SpoolError>> {
        Box::pin(async move { self.queue_packets(vec![packet]).await })
    }
}

/// Why one cover packet was not queued. Logged by the generator, which
/// goes on: a missed cover packet is a gap in the Poisson process, never
/// a loss of mail.
#[derive(Debug, thiserror::Error)]
pub enum CoverError {
    /// The mix key of a node picked a moment ago went away (a rotation or
    /// a reload in between).
    #[error("no mix key for a node on the route in epoch {0}")]
    NoKey(u32),
    #[error("cannot build the packet: {0}")]
    Build(#[from] PacketError),
    #[error("cannot queue the packet: {0}")]
    Queue(#[from] SpoolError),
}

pub struct MixCover {
    pub ctx: Arc<MixContext>,
    pub queue: Arc<dyn PacketCoverSink>,
}

impl MixCover {
    /// Runs until shutdown. `rng` draws the gaps and routes (seeded in
    /// tests of the process, from the OS in the daemon).
    pub async fn run(self, mut rng: StdRng, shutdown: CancellationToken) {
        let params = self.ctx.directory.params().clone();
        let means = [params.loop_cover_mean, params.drop_cover_mean];
        let Some(mut health) = self.ctx.health.events() else {
            return;
        };
        let schedule = |mean: Duration, rng: &mut StdRng| {
            (!mean.is_zero()).then(|| Instant::now() + gap(mean, rng))
        };
        let mut next = [schedule(means[0], &mut rng), schedule(means[1], &mut rng)];
        let mut paused = false;
        let mut failing: Vec<NodeId> = Vec::new();
        loop {
            let lost = self.ctx.health.expire_loops(self.ctx.now());
            Stats::add(&self.ctx.stats.mix_loops_lost, lost as u64);
            self.log_failing(&mut failing);
            let tick = Instant::now() + EXPIRE_TICK;
            let wake = next.iter().flatten().copied().fold(tick, Instant::min);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
                _ = health.changed() => {}
            }
            let epoch = self.ctx.epoch();
            if !self.routes_possible(epoch) {
                if !paused && next.iter().any(Option::is_some) {
                    info!("[MIXNET] cover paused: too few usable nodes for a route");
                }
                // Nothing is due while paused (a due time left in the past
                // would wake this loop at once, again and again).
                paused = true;
                next = [None, None];
                continue;
            }
            if paused {
                // Afresh from now: what would have been sent meanwhile is
                // not made up for.
                paused = false;
                next = [schedule(means[0], &mut rng), schedule(means[1], &mut rng)];
                if next.iter().any(Option::is_some) {
                    info!("[MIXNET] cover resumed");
                }
                continue;
            }
            let now = Instant::now();
            for (i, kind) in [Kind::Loop, Kind::Drop].into_iter().enumerate() {
                if next[i].is_some_and(|at| at <= now) {
                    if let Err(e) = self.send(kind, epoch, &mut rng).await {
                        warn!("[MIXNET] cannot queue cover: {e}");
                    }
                    next[i] = schedule(means[i], &mut rng);
                }
            }
        }
    }

    /// Logs nodes set aside by their loops, and nodes taken back.
    fn log_failing(&self, before: &mut Vec<NodeId>) {
        let now = self.ctx.health.failing();
        if now == *before {
            return;
        }
        let name = |id: &NodeId| self.ctx.directory.short_name(id);
        for id in now.iter().filter(|id| !before.contains(id)) {
            info!(
                "[MIXNET] {} set aside: too few of the loops through it come back",
                name(id)
            );
        }
        for id in before.iter().filter(|id| !now.contains(id)) {
            info!("[MIXNET] {} usable again: its loops come back", name(id));
        }
        *before = now;
    }

    fn routes_possible(&self, epoch: u32) -> bool {
        usable_peers(&self.ctx, epoch).len() >= self.ctx.directory.params().hops
    }

    /// Builds and queues one cover packet of `kind`.
    async fn send(&self, kind: Kind, epoch: u32, rng: &mut StdRng) -> Result<(), CoverError> {
        let ctx = &self.ctx;
        let params = ctx.directory.params();
        let hops = params.hops;
        let own = ctx.own();
        let pool: Vec<NodeId> = match kind {
            Kind::Loop => ctx
                .health
                .linked()
                .into_iter()
                .filter(|id| *id != own && ctx.directory.lists(id))
                .filter(|id| ctx.mix_key(id, epoch).is_some())
                .collect(),
            _ => usable_peers(ctx, epoch),
        };
        let Some(nodes) = pick_nodes(&ctx.directory.get(), &pool, hops, &[], rng) else {
            return Ok(());
        };
        let mut route: Vec<RouteHop> = Vec::with_capacity(hops + 1);
        for id in &nodes {
            let mix_key = ctx.mix_key(id, epoch).ok_or(CoverError::NoKey(epoch))?;
            let delay = hop_delay(params.hop_delay_mean, params.hop_delay_max, rng);
            route.push(RouteHop {
                id: *id,
                mix_key,
                delay,
            });
        }
        if kind == Kind::Loop {
            let mix_key = ctx.mix_key(&own, epoch).ok_or(CoverError::NoKey(epoch))?;
            route.push(RouteHop {
                id: own,
                mix_key,
                delay: Duration::ZERO,
            });
        } else if let Some(last) = route.last_mut() {
            last.delay = Duration::ZERO;
        }
        let id = random_id();
        let fragment = Fragment::cover(kind, id);
        let wire = packet::build(&fragment.encode(), &route)?;
        if kind == Kind::Loop {
            let now = ctx.now();
            let lost_at = now + loop_patience(params).as_millis() as u64;
            ctx.health.loop_sent(id, nodes.clone(), now, lost_at);
        }
        self.queue
            .queue(OutPacket {
                next_hop: nodes[0].0,
                epoch,
                bytes: wire.as_bytes().to_vec(),
                kind: PacketKind::Fragment,
                release_at: ctx.now(),
                deadline: ctx.custody_deadline(),
            })
            .await?;
        let counter = match kind {
            Kind::Loop => &ctx.stats.mix_loops_sent,
            _ => &ctx.stats.mix_drops_sent,
        };
        Stats::add(counter, 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    use crate::mixnet::context::testing::node;

    /// Records when each cover packet was queued, and stands in for the
    /// network: every loop comes back at once. No real thread is awaited,
    /// so paused time moves only when every task waits for a timer.
    struct Recorder {
        ctx: Arc<MixContext>,
        made: std::sync::Mutex<Vec<u64>>,
    }

    impl PacketCoverSink for Recorder {
        fn queue(&self, packet: OutPacket) -> crate::BoxFuture<'_, Result<(), SpoolError>> {
            assert_eq!(packet.bytes.len(), packet::PACKET_SIZE);
            self.made.lock().unwrap().push(packet.release_at);
            for id in self.ctx.health.pending_loops() {
                self.ctx.health.loop_returned(&id, self.ctx.now());
            }
            Box::pin(async { Ok(()) })
        }
    }

    fn start(
        ctx: &Arc<MixContext>,
        seed: u64,
    ) -> (
        Arc<Recorder>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let recorder = Arc::new(Recorder {
            ctx: ctx.clone(),
            made: Default::default(),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            MixCover {
                ctx: ctx.clone(),
                queue: recorder.clone(),
            }
            .run(StdRng::seed_from_u64(seed), stop.clone()),
        );
        (recorder, stop, task)
    }

    fn gaps(times: &[u64]) -> Vec<f64> {
        times
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / 1000.0)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn loop_and_drop_cover_are_poisson_at_the_network_rates() {
        for (loop_mean, drop_mean, mean, seed) in [
            ("1s", "0s", 1.0, 1u64),
            ("0s", "2s", 2.0, 2),
            ("2s", "2s", 1.0, 3),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (ctx, _spool) = node(dir.path(), loop_mean, drop_mean);
            let (recorder, stop, task) = start(&ctx, seed);
            tokio::time::sleep(Duration::from_secs_f64(mean * 600.0)).await;
            stop.cancel();
            task.await.unwrap();
            let times = recorder.made.lock().unwrap().clone();
            assert!(times.len() >= 450, "{} packets", times.len());
            let xs = gaps(&times);
            let d = crate::testkit::ks_statistic(xs.clone(), |x| 1.0 - (-x / mean).exp());
            assert!(
                d < crate::testkit::ks_critical(xs.len()),
                "{loop_mean}/{drop_mean}: KS D = {d} over {} gaps",
                xs.len()
            );
            let sample_mean = xs.iter().sum::<f64>() / xs.len() as f64;
            assert!(
                (sample_mean / mean - 1.0).abs() < 0.1,
                "mean gap {sample_mean}"
            );
            // Loops are tracked as health probes; drops are not.
            let loops = ctx.stats.mix_loops_sent.get();
            assert_eq!(loops > 0, loop_mean != "0s");
        }
    }

    /// The bundle this node serves is signed once per rotation, and a
    /// rotation makes the next one cover the new epochs.
    #[tokio::test(start_paused = true)]
    async fn the_served_bundle_follows_the_key_ring() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _spool) = node(dir.path(), "0s", "0s");
        let epoch = ctx.keys.current();
        let first = ctx.own_bundle();
        assert_eq!(first.first, epoch - 1);
        assert_eq!(ctx.own_bundle(), first);
        let hash = ctx.directory.params().hash();
        first.verify(&ctx.identity.public(), &hash).unwrap();
        ctx.keys.rotate(epoch + 1).unwrap();
        let next = ctx.own_bundle();
        assert_eq!(next.first, epoch);
        assert_eq!(
            next.key(epoch + 3),
            Some(ctx.keys.get(epoch + 3).unwrap().public().to_bytes())
        );
        next.verify(&ctx.identity.public(), &hash).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cover_stops_without_a_route_and_resumes_without_a_burst() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _spool) = node(dir.path(), "1s", "1s");
        let (recorder, stop, task) = start(&ctx, 9);
        tokio::time::sleep(Duration::from_secs(60)).await;
        // Every link goes down for ten minutes: no route.
        let peers: Vec<NodeId> = ctx.directory.others().iter().map(|n| n.id).collect();
        for p in &peers {
            ctx.health.set(*p, false);
        }
        let down_at = ctx.now();
        tokio::time::sleep(Duration::from_secs(600)).await;
        for p in &peers {
            ctx.health.set(*p, true);
        }
        let up_at = ctx.now();
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop.cancel();
        task.await.unwrap();
        let times = recorder.made.lock().unwrap().clone();
        let during = times
            .iter()
            .filter(|&&t| t > down_at + 50 && t < up_at)
            .count();
        assert_eq!(during, 0, "cover made without a route");
        // Two processes at 1/s: about two a second before and after; a
        // catch-up after ten minutes down would be some 1,200 at once.
        let first_second = times
            .iter()
            .filter(|&&t| t >= up_at && t < up_at + 1000)
            .count();
        assert!(
            first_second <= 8,
            "{first_second} packets in the first second back"
        );
        let after = times.iter().filter(|&&t| t >= up_at).count();
        assert!(
            (60..=180).contains(&after),
            "{after} packets in the minute after"
        );
    }

    #[test]
    fn gaps_are_exponential_with_the_configured_mean() {
        let mut rng = StdRng::seed_from_u64(11);
        let mean = Duration::from_millis(50);
        let xs: Vec<f64> = (0..5_000)
            .map(|_| gap(mean, &mut rng).as_secs_f64())
            .collect();
        let d = crate::testkit::ks_statistic(xs.clone(), |x| 1.0 - (-x / 0.05).exp());
        assert!(d < crate::testkit::ks_critical(xs.len()), "KS D = {d}");
    }

    #[test]
    fn a_loop_is_given_up_only_well_after_its_delays() {
        let p = crate::wire::pki::Params {
            hop_delay_mean: Duration::from_millis(20),
            hop_delay_max: Duration::from_millis(240),
            ack_timeout: Duration::from_secs(4),
            ..Default::default()
        };
        assert_eq!(loop_patience(&p), Duration::from_millis(320 + 4000));
    }
}
