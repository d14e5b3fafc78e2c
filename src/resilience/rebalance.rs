//! Which pod, if any, to evict so that a component's spread over the usable zones goes back to
//! skew <= 1 after a lost zone returns. One pod at a time, only when everything is settled.

use std::collections::BTreeMap;

/// What rebalancing needs to know about one pod of a component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlacement {
    pub name: String,
    pub zone: Option<String>,
    pub ready: bool,
    pub terminating: bool,
}

/// The state around a component that decides whether moving a pod is safe now.
#[derive(Clone, Debug)]
pub struct RebalanceInput<'a> {
    pub pods: &'a [PodPlacement],
    /// Zones that can take pods now.
    pub usable_zones: &'a [String],
    /// Every allowed zone is usable again (none is still lost or tainted).
    pub all_zones_healthy: bool,
    pub replicas: i32,
    pub min_available: i32,
}

/// One eviction and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub pod: String,
    pub from_zone: String,
    pub to_zone: String,
    /// Ready pods by usable zone before the move.
    pub counts: BTreeMap<String, i32>,
}

/// Why nothing moves (for logs and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The spread is already even (skew <= 1).
    Balanced,
    /// An allowed zone is still lost or tainted.
    ZoneUnhealthy,
    /// Pods are starting, terminating or not ready: wait until the last move has settled.
    NotSettled,
    /// Evicting one more pod would take the component below minAvailable.
    AtMinAvailable,
}

/// The pod to evict from the fullest zone, or why none should be evicted now.
pub fn choose_move(input: &RebalanceInput) -> Result<Move, Hold> {
    if !input.all_zones_healthy || input.usable_zones.is_empty() {
        return Err(Hold::ZoneUnhealthy);
    }
    let settled = input.pods.len() as i32 == input.replicas
        && input
            .pods
            .iter()
            .all(|p| p.ready && !p.terminating && p.zone.as_ref().is_some_and(|z| input.usable_zones.contains(z)));
    if !settled {
        return Err(Hold::NotSettled);
    }
    let mut counts: BTreeMap<String, i32> = input.usable_zones.iter().map(|z| (z.clone(), 0)).collect();
    for pod in input.pods {
        if let Some(c) = pod.zone.as_ref().and_then(|z| counts.get_mut(z)) {
            *c += 1;
        }
    }
    // Fullest zone (first by name on ties) and emptiest zone (first by name on ties).
    let (from_zone, max) =
        counts.iter().fold((None, i32::MIN), |acc, (z, &c)| if c > acc.1 { (Some(z), c) } else { acc });
    let (to_zone, min) =
        counts.iter().fold((None, i32::MAX), |acc, (z, &c)| if c < acc.1 { (Some(z), c) } else { acc });
    if max - min <= 1 {
        return Err(Hold::Balanced);
    }
    if input.pods.len() as i32 - 1 < input.min_available {
        return Err(Hold::AtMinAvailable);
    }
    let from_zone = from_zone.expect("a usable zone").clone();
    let to_zone = to_zone.expect("a usable zone").clone();
    // The last pod by name in the fullest zone: deterministic, and any pod there is as good.
    let pod = input
        .pods
        .iter()
        .filter(|p| p.zone.as_deref() == Some(from_zone.as_str()))
        .map(|p| p.name.clone())
        .max()
        .expect("the fullest zone has pods");
    Ok(Move { pod, from_zone, to_zone, counts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pods(spec: &[(&str, usize)]) -> Vec<PodPlacement> {
        spec.iter()
            .flat_map(|(zone, n)| {
                (0..*n).map(move |i| PodPlacement {
                    name: format!("p-{zone}-{i}"),
                    zone: Some(zone.to_string()),
                    ready: true,
                    terminating: false,
                })
            })
            .collect()
    }

    fn zones() -> Vec<String> {
        vec!["zone-a".into(), "zone-b".into(), "zone-c".into()]
    }

    fn input<'a>(pods: &'a [PodPlacement], zones: &'a [String], replicas: i32) -> RebalanceInput<'a> {
        RebalanceInput { pods, usable_zones: zones, all_zones_healthy: true, replicas, min_available: 4 }
    }

    #[test]
    fn returning_zone_gets_pods_back_one_at_a_time() {
        let z = zones();
        let p = pods(&[("zone-b", 3), ("zone-c", 3)]);
        let m = choose_move(&input(&p, &z, 6)).unwrap();
        assert_eq!((m.from_zone.as_str(), m.to_zone.as_str()), ("zone-b", "zone-a"));
        assert!(m.pod.starts_with("p-zone-b-"));
    }

    #[test]
    fn holds_while_unsettled_unhealthy_or_balanced() {
        let z = zones();
        let even = pods(&[("zone-a", 2), ("zone-b", 2), ("zone-c", 2)]);
        assert_eq!(choose_move(&input(&even, &z, 6)), Err(Hold::Balanced));
        let uneven = pods(&[("zone-b", 3), ("zone-c", 3)]);
        let mut i = input(&uneven, &z, 6);
        i.all_zones_healthy = false;
        assert_eq!(choose_move(&i), Err(Hold::ZoneUnhealthy));
        // A replacement still starting: wait.
        let mut starting = uneven.clone();
        starting[0].ready = false;
        assert_eq!(choose_move(&input(&starting, &z, 6)), Err(Hold::NotSettled));
        assert_eq!(choose_move(&input(&uneven[..5], &z, 6)), Err(Hold::NotSettled));
        // Exactly minAvailable pods: never evict.
        let tight = pods(&[("zone-b", 2), ("zone-c", 2)]);
        assert_eq!(choose_move(&input(&tight, &z, 4)), Err(Hold::AtMinAvailable));
    }

    proptest! {
        #[test]
        fn a_move_always_narrows_the_spread(a in 0usize..6, b in 0usize..6, c in 0usize..6, m in 1i32..8) {
            let z = zones();
            let p = pods(&[("zone-a", a), ("zone-b", b), ("zone-c", c)]);
            let total = (a + b + c) as i32;
            let i = RebalanceInput { pods: &p, usable_zones: &z, all_zones_healthy: true, replicas: total, min_available: m };
            let counts = [a as i32, b as i32, c as i32];
            let skew = counts.iter().max().unwrap() - counts.iter().min().unwrap();
            match choose_move(&i) {
                Ok(mv) => {
                    prop_assert!(skew > 1);
                    prop_assert!(total > m, "a move may not go below minAvailable");
                    prop_assert_eq!(mv.counts[&mv.from_zone], *counts.iter().max().unwrap());
                    prop_assert_eq!(mv.counts[&mv.to_zone], *counts.iter().min().unwrap());
                }
                Err(Hold::Balanced) => prop_assert!(skew <= 1),
                Err(Hold::AtMinAvailable) => prop_assert!(skew > 1 && total - 1 < m),
                Err(other) => prop_assert!(false, "unexpected hold {:?}", other),
            }
        }
    }
}
