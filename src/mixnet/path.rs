//! Path selection: which nodes a packet crosses and how long each holds
//! it. Uniform among usable nodes, never two of one operator family.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;

use crate::wire::packet::NodeId;
use crate::wire::pki::Directory;

/// Up to `n` distinct nodes from `pool`, in random order, never two of
/// one operator family and none of the families of `beside` (nodes
/// already on the route). Uniform: every node of the pool is as likely as
/// any other; nothing is weighted.
pub fn pick_nodes<R: Rng + ?Sized>(
    directory: &Directory,
    pool: &[NodeId],
    n: usize,
    beside: &[NodeId],
    rng: &mut R,
) -> Option<Vec<NodeId>> {
    use rand::seq::SliceRandom;
    let family = |id: &NodeId| directory.node(id).and_then(|node| node.family.clone());
    let mut families: HashSet<String> = beside.iter().filter_map(family).collect();
    let mut candidates: Vec<NodeId> = pool
        .iter()
        .copied()
        .filter(|id| !beside.contains(id))
        .collect();
    candidates.sort();
    candidates.dedup();
    candidates.shuffle(rng);
    let mut out = Vec::with_capacity(n);
    for id in candidates {
        if out.len() == n {
            break;
        }
        if let Some(f) = family(&id)
            && !families.insert(f)
        {
            continue;
        }
        out.push(id);
    }
    (out.len() == n).then_some(out)
}

/// A per-hop delay as the sender draws it: exponential with mean `mean`,
/// truncated at `max` by drawing again (so the distribution above the cap
/// is not piled up at the cap, which would be a recognisable spike).
pub fn hop_delay<R: Rng + ?Sized>(mean: Duration, max: Duration, rng: &mut R) -> Duration {
    if mean.is_zero() {
        return Duration::ZERO;
    }
    loop {
        let u: f64 = 1.0 - rng.random::<f64>();
        let d = mean.mul_f64(-u.ln());
        if d <= max {
            return d;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn hop_delays_are_exponential_below_the_cap() {
        let mut rng = StdRng::seed_from_u64(3);
        let mean = Duration::from_millis(100);
        let max = mean * 12;
        let xs: Vec<f64> = (0..20_000)
            .map(|_| hop_delay(mean, max, &mut rng).as_secs_f64())
            .collect();
        assert!(xs.iter().all(|&x| x <= max.as_secs_f64()));
        // Exp(0.1 s) conditioned on ≤ 1.2 s.
        let cap = 1.0 - (-12.0f64).exp();
        let d = crate::testkit::ks_statistic(xs.clone(), |x| (1.0 - (-x / 0.1).exp()) / cap);
        assert!(d < crate::testkit::ks_critical(xs.len()), "KS D = {d}");
    }

    fn families() -> Directory {
        use crate::address::OnionName;
        let family = |i: u8| match i {
            2 | 3 => Some("a"),
            4 | 5 => Some("b"),
            _ => None,
        };
        let nodes: Vec<_> = (1..=6u8)
            .map(|i| {
                let identity = ed25519_dalek::SigningKey::from_bytes(&[i; 32]);
                let mut n = serde_json::json!({
                    "name": format!("n{i}"),
                    "onion": OnionName::from_seed(i).to_string(),
                    "port": 9999,
                    "identity": crate::wire::pki::encode_key(identity.verifying_key().as_bytes()),
                    "exit": true,
                });
                if let Some(f) = family(i) {
                    n["family"] = serde_json::json!(f);
                }
                n
            })
            .collect();
        let doc = serde_json::json!({ "nodes": nodes });
        Directory::parse(doc.to_string().as_bytes(), &OnionName::from_seed(1)).unwrap()
    }

    #[test]
    fn routes_never_hold_two_nodes_of_one_family_and_pick_uniformly() {
        let dir = families();
        let pool: Vec<NodeId> = dir.others().map(|n| n.id).collect();
        let fam = |id: &NodeId| dir.node(id).unwrap().family.clone();
        let mut rng = StdRng::seed_from_u64(5);
        let mut seen: HashMap<NodeId, usize> = HashMap::new();
        for _ in 0..3_000 {
            let route = pick_nodes(&dir, &pool, 3, &[], &mut rng).unwrap();
            let named: Vec<String> = route.iter().filter_map(fam).collect();
            let distinct: HashSet<&String> = named.iter().collect();
            assert_eq!(distinct.len(), named.len(), "two of one family");
            for id in route {
                *seen.entry(id).or_default() += 1;
            }
        }
        // Three of a family-free node, "a" and "b": every route holds n6,
        // and one of each family, each member half the time.
        let n6 = pool[4];
        assert_eq!(seen[&n6], 3_000);
        for id in &pool[..4] {
            let share = seen[id] as f64 / 3_000.0;
            assert!((share - 0.5).abs() < 0.05, "{share}");
        }
        // Four nodes of distinct families cannot be found here.
        assert_eq!(pick_nodes(&dir, &pool, 4, &[], &mut rng), None);
        // Nor a node of the family of one already on the route.
        let beside = pick_nodes(&dir, &pool, 2, &[pool[0]], &mut rng).unwrap();
        assert!(beside.iter().all(|id| fam(id) != fam(&pool[0])));
    }
}
