//! A pinger's day: per mix node, how many of this node's loops through it
//! came back and how many were lost, and how long those that came back
//! took, over the last day. What remailer users read from Echolot-style
//! pingers, measured by loop cover instead of test messages.
//!
//! Values only: times are handed in (no clock is read here), and the
//! storage of a day (`spool::loop_hours`) and its publication (`stats`,
//! `pluto2 queue`) are elsewhere.
//!
//! **Bounded.** Outcomes are kept in clock-hour buckets, one per node
//! and hour: two counts and a latency histogram of at most [`BINS`]
//! fixed bins (8 per octave of milliseconds), never a list of samples.
//! A day of one node is at most 24 buckets, whatever the loop rate.
//!
//! **The window.** The day that ends at `now` is the current clock hour
//! and the 23 before it ([`first_hour`]): no outcome older than 24 h
//! counts, and each counts for at least 23 h. Its hour is the hour its
//! outcome became known (a loop's return, or the moment it was given up).
//!
//! **Attribution.** A loop counts for every node on its route, as chain
//! pingers of mixminion and Echolot count a chain: a lost loop is held
//! against each of its nodes, although one of them lost it. A node's
//! share of lost loops is therefore an upper bound on its own loss (its
//! success ratio a lower bound), not a proof of blame; `mixnet::health`
//! untangles who failed for path selection, this view does not.
//!
//! **Latency.** The median is that of the histogram: the middle sample's
//! bin, given as the bin's geometric middle, so within 4.5 % of the true
//! middle sample (for an even count, the mean of the two middle ones).

use std::collections::BTreeMap;

use crate::time::UnixMillis;

/// One clock hour in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;
/// Clock hours in a day's window (the current one included).
pub const DAY_HOURS: u64 = 24;
/// Latency bins per doubling of the latency in milliseconds.
const BINS_PER_OCTAVE: f64 = 8.0;
/// Latency bins in all: 8 per octave from 1 ms up to 2^32 ms (50 days);
/// longer is counted in the last bin.
pub const BINS: usize = 256;

/// The clock hour `at` falls in (hours since the unix epoch).
pub fn hour_of(at: UnixMillis) -> u64 {
    at / HOUR_MS
}

/// The oldest clock hour inside the day that ends at `now`.
pub fn first_hour(now: UnixMillis) -> u64 {
    hour_of(now).saturating_sub(DAY_HOURS - 1)
}

/// Why stored latencies cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoopDayError {
    #[error("latency histogram of {0} bytes is not whole (bin, count) pairs")]
    Length(usize),
    #[error("latency histogram bins are not in strictly rising order")]
    Order,
    #[error("latency histogram has an empty bin")]
    Empty,
}

/// Latencies as counts in fixed logarithmic bins (see the module
/// comment): at most [`BINS`] entries however many samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latencies {
    bins: BTreeMap<u8, u64>,
}

/// The bin of a latency of `ms` milliseconds.
fn bin_of(ms: u64) -> u8 {
    let b = ((ms.max(1) as f64).log2() * BINS_PER_OCTAVE).floor();
    b.min((BINS - 1) as f64) as u8
}

/// What a bin stands for: its geometric middle, in milliseconds.
fn bin_value(bin: u8) -> f64 {
    ((bin as f64 + 0.5) / BINS_PER_OCTAVE).exp2()
}

/// One encoded bin: its number, then its count (u64, little-endian).
const PAIR: usize = 9;

impl Latencies {
    pub fn add(&mut self, ms: u64) {
        let n = self.bins.entry(bin_of(ms)).or_default();
        *n = n.saturating_add(1);
    }

    pub fn merge(&mut self, other: &Latencies) {
        for (bin, n) in &other.bins {
            let mine = self.bins.entry(*bin).or_default();
            *mine = mine.saturating_add(*n);
        }
    }

    pub fn count(&self) -> u64 {
        self.bins.values().fold(0u64, |a, n| a.saturating_add(*n))
    }

    /// The median latency in milliseconds (see the module comment), or
    /// none without samples.
    pub fn median_ms(&self) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        // 1-based ranks of the middle sample(s): equal when n is odd.
        let (low, high) = (n.div_ceil(2), n / 2 + 1);
        let at = |rank: u64| {
            let mut seen = 0u64;
            for (bin, count) in &self.bins {
                seen += count;
                if seen >= rank {
                    return bin_value(*bin);
                }
            }
            bin_value(u8::MAX)
        };
        Some((at(low) + at(high)) / 2.0)
    }

    /// The histogram as bytes for storage: (bin, count) pairs in rising
    /// bin order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bins.len() * PAIR);
        for (bin, n) in &self.bins {
            out.push(*bin);
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Latencies, LoopDayError> {
        if !bytes.len().is_multiple_of(PAIR) {
            return Err(LoopDayError::Length(bytes.len()));
        }
        let mut bins = BTreeMap::new();
        let mut last: Option<u8> = None;
        for pair in bytes.chunks_exact(PAIR) {
            let bin = pair[0];
            if last.is_some_and(|l| l >= bin) {
                return Err(LoopDayError::Order);
            }
            let n = u64::from_le_bytes(pair[1..].try_into().expect("8 bytes"));
            if n == 0 {
                return Err(LoopDayError::Empty);
            }
            bins.insert(bin, n);
            last = Some(bin);
        }
        Ok(Latencies { bins })
    }
}

/// The loops through one node whose outcome became known in one hour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourCounts {
    pub back: u64,
    pub lost: u64,
    /// Send to return, of the loops that came back.
    pub latency: Latencies,
}

impl HourCounts {
    pub fn merge(&mut self, other: &HourCounts) {
        self.back = self.back.saturating_add(other.back);
        self.lost = self.lost.saturating_add(other.lost);
        self.latency.merge(&other.latency);
    }
}

/// What became of one loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Back after `latency_ms` (send to return, hop delays included).
    Back { latency_ms: u64 },
    /// Given up as lost.
    Lost,
}

/// One node's day: what a pinger prints for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeDay {
    pub back: u64,
    pub lost: u64,
    /// Median loop latency in milliseconds, none if no loop came back.
    pub latency_median_ms: Option<f64>,
}

impl NodeDay {
    /// back / (back + lost), none before the first outcome.
    pub fn success_ratio(&self) -> Option<f64> {
        let all = self.back + self.lost;
        (all > 0).then(|| self.back as f64 / all as f64)
    }
}

/// Hour buckets of loop outcomes by node (`K`: how the holder names a
/// node). Holds only the hours recorded or added, and forgets those
/// that left the day on every record, so it stays within 24 buckets per
/// node however long it is kept.
#[derive(Debug, Clone)]
pub struct LoopDay<K> {
    hours: BTreeMap<(K, u64), HourCounts>,
}

impl<K> Default for LoopDay<K> {
    fn default() -> Self {
        LoopDay {
            hours: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> LoopDay<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one loop's outcome, known at `at`, for every node on its
    /// `route` (see the module comment on attribution).
    pub fn record(&mut self, route: &[K], at: UnixMillis, outcome: Outcome) {
        self.forget_before(at);
        let hour = hour_of(at);
        for node in route {
            let h = self.hours.entry((node.clone(), hour)).or_default();
            match outcome {
                Outcome::Back { latency_ms } => {
                    h.back = h.back.saturating_add(1);
                    h.latency.add(latency_ms);
                }
                Outcome::Lost => h.lost = h.lost.saturating_add(1),
            }
        }
    }

    /// Adds a stored or unsaved bucket.
    pub fn add(&mut self, node: K, hour: u64, counts: &HourCounts) {
        self.hours.entry((node, hour)).or_default().merge(counts);
    }

    /// Drops the hours that left the day ending at `now`.
    pub fn forget_before(&mut self, now: UnixMillis) {
        let first = first_hour(now);
        self.hours.retain(|(_, hour), _| *hour >= first);
    }

    /// Every bucket held, emptying it (what is to be saved).
    pub fn take(&mut self) -> Vec<(K, u64, HourCounts)> {
        std::mem::take(&mut self.hours)
            .into_iter()
            .map(|((k, hour), c)| (k, hour, c))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.hours.is_empty()
    }

    /// Each node's day ending at `now`, in node order (hours outside it,
    /// older or newer, are left out).
    pub fn summary(&self, now: UnixMillis) -> Vec<(K, NodeDay)> {
        let (first, last) = (first_hour(now), hour_of(now));
        let mut days: BTreeMap<K, HourCounts> = BTreeMap::new();
        for ((node, hour), c) in &self.hours {
            if (first..=last).contains(hour) {
                days.entry(node.clone()).or_default().merge(c);
            }
        }
        days.into_iter()
            .map(|(node, c)| {
                let day = NodeDay {
                    back: c.back,
                    lost: c.lost,
                    latency_median_ms: c.latency.median_ms(),
                };
                (node, day)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-01 10:30 UTC, in the middle of an hour.
    const T0: UnixMillis = 1_704_105_000_000;
    const MIN: u64 = 60_000;

    fn day_of(d: &LoopDay<&'static str>, now: UnixMillis) -> BTreeMap<&'static str, NodeDay> {
        d.summary(now).into_iter().collect()
    }

    #[test]
    fn a_loop_counts_for_every_node_on_its_route_returned_or_lost_apart() {
        let mut d = LoopDay::new();
        d.record(&["a", "b", "c"], T0, Outcome::Back { latency_ms: 800 });
        d.record(&["a", "b", "d"], T0, Outcome::Lost);
        d.record(&["a", "c", "d"], T0 + MIN, Outcome::Lost);
        let s = day_of(&d, T0 + 2 * MIN);
        assert_eq!((s["a"].back, s["a"].lost), (1, 2));
        assert_eq!((s["b"].back, s["b"].lost), (1, 1));
        assert_eq!((s["c"].back, s["c"].lost), (1, 1));
        assert_eq!((s["d"].back, s["d"].lost), (0, 2));
        assert_eq!(s["a"].success_ratio(), Some(1.0 / 3.0));
        assert_eq!(s["d"].success_ratio(), Some(0.0));
        assert_eq!(s["d"].latency_median_ms, None, "no loop came back");
        assert_eq!(NodeDay::default().success_ratio(), None);
    }

    /// An outcome counts until the day has moved 24 clock hours past its
    /// hour, and not a moment longer.
    #[test]
    fn outcomes_older_than_a_day_leave_the_window() {
        let mut d = LoopDay::new();
        d.record(&["a"], T0, Outcome::Lost);
        d.record(&["a"], T0 + 2 * HOUR_MS, Outcome::Back { latency_ms: 5 });
        let at = |now| day_of(&d, now).get("a").map(|n| (n.back, n.lost));
        assert_eq!(at(T0), Some((0, 1)));
        assert_eq!(at(T0 + 23 * HOUR_MS), Some((1, 1)), "23 h later: counted");
        // 24 h later it is in the 25th hour back: gone.
        assert_eq!(at(T0 + 24 * HOUR_MS), Some((1, 0)));
        assert_eq!(at(T0 + 26 * HOUR_MS), None);
        // Nothing counts from the future either (a clock set back).
        assert_eq!(at(T0 - HOUR_MS), None);
        // Recording forgets what left the day: memory stays bounded.
        d.record(&["b"], T0 + 25 * HOUR_MS, Outcome::Lost);
        assert_eq!(d.hours.len(), 2, "{:?}", d.hours.keys().collect::<Vec<_>>());
    }

    #[test]
    fn a_day_holds_at_most_24_buckets_per_node_whatever_the_rate() {
        let mut d = LoopDay::new();
        for i in 0..10_000u64 {
            let at = T0 + i * 30_000; // every 30 s for 83 h
            d.record(&["a", "b"], at, Outcome::Back { latency_ms: i });
        }
        assert!(d.hours.len() <= 2 * DAY_HOURS as usize, "{}", d.hours.len());
        for c in d.hours.values() {
            assert!(c.latency.bins.len() <= BINS);
        }
    }

    /// The median of the histogram is within a bin's half-width (4.5 %)
    /// of the true middle sample, for odd and even counts.
    #[test]
    fn the_median_latency_is_the_middle_sample_within_its_bin() {
        let mut d = LoopDay::new();
        for ms in [100, 2_000, 300, 40_000, 250] {
            d.record(&["a"], T0, Outcome::Back { latency_ms: ms });
        }
        d.record(&["a"], T0, Outcome::Lost);
        let m = day_of(&d, T0)["a"].latency_median_ms.unwrap();
        assert!((m / 300.0 - 1.0).abs() < 0.045, "median {m} for 300");
        // Even: the mean of the two middle samples (300 and 2,000).
        d.record(&["a"], T0, Outcome::Back { latency_ms: 60_000 });
        let m = day_of(&d, T0)["a"].latency_median_ms.unwrap();
        assert!((m / 1_150.0 - 1.0).abs() < 0.045, "median {m} for 1150");
        // Latencies from two hours of the day are one sample.
        let mut d = LoopDay::new();
        d.record(&["a"], T0, Outcome::Back { latency_ms: 10 });
        d.record(&["a"], T0 + HOUR_MS, Outcome::Back { latency_ms: 20 });
        d.record(&["a"], T0 + HOUR_MS, Outcome::Back { latency_ms: 5_000 });
        let m = day_of(&d, T0 + HOUR_MS)["a"].latency_median_ms.unwrap();
        assert!((m / 20.0 - 1.0).abs() < 0.045, "median {m} for 20");
        // Once the first hour left the day, the middle moves.
        let m = day_of(&d, T0 + 24 * HOUR_MS)["a"]
            .latency_median_ms
            .unwrap();
        assert!((m / 2_510.0 - 1.0).abs() < 0.045, "median {m} for 2510");
    }

    #[test]
    fn every_latency_falls_in_a_bin_within_its_precision() {
        for ms in [0u64, 1, 2, 3, 7, 100, 999, 65_536, 3_600_000, 86_400_000] {
            let v = bin_value(bin_of(ms));
            let ms = ms.max(1) as f64;
            assert!((v / ms - 1.0).abs() < 0.045, "{ms} ms in a bin of {v}");
        }
        assert_eq!(
            bin_of(u64::MAX),
            u8::MAX,
            "the longest fall in the last bin"
        );
    }

    #[test]
    fn latencies_survive_storage_and_refuse_damaged_bytes() {
        let mut l = Latencies::default();
        for ms in [5, 5, 700, 90_000] {
            l.add(ms);
        }
        let bytes = l.encode();
        assert_eq!(Latencies::decode(&bytes), Ok(l.clone()));
        assert_eq!(Latencies::decode(&[]), Ok(Latencies::default()));
        assert_eq!(
            Latencies::decode(&bytes[..bytes.len() - 1]),
            Err(LoopDayError::Length(bytes.len() - 1))
        );
        let mut swapped = bytes[PAIR..2 * PAIR].to_vec();
        swapped.extend_from_slice(&bytes[..PAIR]);
        assert_eq!(Latencies::decode(&swapped), Err(LoopDayError::Order));
        let mut empty = vec![3u8];
        empty.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(Latencies::decode(&empty), Err(LoopDayError::Empty));
    }

    #[test]
    fn taken_buckets_added_elsewhere_give_the_same_day() {
        let mut d = LoopDay::new();
        d.record(&["a", "b"], T0, Outcome::Back { latency_ms: 40 });
        d.record(&["b"], T0 + HOUR_MS, Outcome::Lost);
        let before = d.summary(T0 + HOUR_MS);
        let mut other = LoopDay::new();
        for (k, hour, c) in d.take() {
            other.add(k, hour, &c);
        }
        assert!(d.is_empty());
        assert_eq!(other.summary(T0 + HOUR_MS), before);
    }
}
