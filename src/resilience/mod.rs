//! Zone-resilience arithmetic: how many replicas keep `minAvailable` through the loss of `f`
//! zones, which zones are usable, and what a placement survives. Pure functions, no client.

mod footprint;
mod node_fit;
mod rebalance;

pub use footprint::{ContainerDefaults, Dimension, Footprint, PodResources, footprint_of, quantity_value};
pub use node_fit::{NodeConstraints, component_zones, tolerates};
pub use rebalance::{Hold, Move, PodPlacement, RebalanceInput, choose_move};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::api::{ResilientApp, ResilientAppStatus, ZONE_LABEL};

/// Pods one zone holds at most under an even spread with max skew 1: `ceil(replicas / zones)`.
pub fn per_zone_ceiling(replicas: i32, zones: usize) -> i32 {
    let z = zones.max(1) as i64;
    ((i64::from(replicas) + z - 1) / z) as i32
}

/// Pods per zone of an even spread (max skew 1) of `replicas` over `zones` zones, fullest first:
/// the first `replicas % zones` zones hold one pod more.
pub fn even_spread(replicas: i32, zones: usize) -> impl Iterator<Item = i32> {
    let z = zones.max(1) as i32;
    (0..zones as i32).map(move |i| replicas / z + i32::from(i < replicas % z))
}

/// Ready pods left after losing the `tolerated` fullest zones of an even spread (max skew 1)
/// of `replicas` over `zones` zones. Zero when there are no more zones than failures.
pub fn guaranteed_after_zone_loss(replicas: i32, zones: usize, tolerated: u8) -> i32 {
    if zones <= tolerated as usize || replicas <= 0 {
        return 0;
    }
    let lost = i64::from(tolerated) * i64::from(per_zone_ceiling(replicas, zones));
    (i64::from(replicas) - lost).max(0) as i32
}

/// The smallest replica count `r` with `r - f * ceil(r / Z) >= m`, or `None` when `Z <= f`
/// (no count can survive losing every zone). O(Z), whatever `m`.
pub fn replicas_for(min_available: i32, zones: usize, tolerated: u8) -> Option<i32> {
    if zones <= tolerated as usize {
        return None;
    }
    let (m, z, f) = (i64::from(min_available.max(1)), zones as i64, i64::from(tolerated));
    // With r = q*Z + s (0 <= s < Z) the pods left are q*(Z-f) at s = 0 and q*(Z-f) + s - f
    // otherwise, always below (q+1)*(Z-f). So the answer lies in the blocks q with
    // (q+1)*(Z-f) > m and q <= ceil(m/(Z-f)): at most two blocks of Z counts each.
    let d = z - f;
    let first_block = ((m + d) / d - 1).max(0); // smallest q with (q+1)*d > m
    let last = z * ((m + d - 1) / d); // r = Z*ceil(m/d) always works
    let guaranteed = |r: i64| r - f * ((r + z - 1) / z);
    let r = (first_block * z..=last).find(|&r| r >= m && guaranteed(r) >= m).unwrap_or(last);
    i32::try_from(r).ok()
}

/// Why a component cannot be guaranteed `minAvailable` through a zone loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// Fewer usable zones than `zoneFailuresTolerated + 1`.
    InsufficientZones { zones: usize, tolerated: u8 },
    /// An explicit `replicas` does not keep the guarantee for the usable zones; `needed` is the
    /// smallest count at or above it that does.
    TooFewReplicas { replicas: i32, needed: i32 },
}

/// The replica count to run and whether it carries the guarantee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaPlan {
    pub replicas: i32,
    pub shortfall: Option<Shortfall>,
}

/// Replicas for a component: the explicit count (reported when it breaks the guarantee, never
/// changed), else the computed one, else the best effort `m + f` when there are too few zones.
pub fn plan_replicas(explicit: Option<i32>, min_available: i32, zones: usize, tolerated: u8) -> ReplicaPlan {
    match (replicas_for(min_available, zones, tolerated), explicit) {
        (None, explicit) => ReplicaPlan {
            replicas: explicit.unwrap_or(min_available + i32::from(tolerated)),
            shortfall: Some(Shortfall::InsufficientZones { zones, tolerated }),
        },
        // `r - f * ceil(r / Z)` is not monotonic in r (with Z=3, f=2: 279 keeps 93, 280 only 92),
        // so an explicit count is checked itself, and the count suggested is the next one that works.
        (Some(minimal), Some(r)) if guaranteed_after_zone_loss(r, zones, tolerated) < min_available => {
            let needed = (r.max(minimal)..=r.max(minimal) + zones as i32)
                .find(|&n| guaranteed_after_zone_loss(n, zones, tolerated) >= min_available)
                .unwrap_or(minimal);
            ReplicaPlan { replicas: r, shortfall: Some(Shortfall::TooFewReplicas { replicas: r, needed }) }
        }
        (Some(_), Some(r)) => ReplicaPlan { replicas: r, shortfall: None },
        (Some(needed), None) => ReplicaPlan { replicas: needed, shortfall: None },
    }
}

/// Placeholder pods one zone should hold for a component (`replicas` now, over `zones` zones) so
/// that the replacements it receives in the worst loss of `tolerated` other zones find room: the
/// operator then plans the component for the zones left, and a surviving zone goes from at least
/// `floor(replicas / zones)` pods to at most `ceil(replicas' / (zones - tolerated))`. Zero when
/// nothing is tolerated or no zone would survive.
pub fn placeholders_per_zone(
    explicit: Option<i32>,
    min_available: i32,
    replicas: i32,
    zones: usize,
    tolerated: u8,
) -> i32 {
    if tolerated == 0 || zones <= tolerated as usize || replicas <= 0 {
        return 0;
    }
    let left = zones - tolerated as usize;
    let after = plan_replicas(explicit, min_available, left, tolerated).replicas;
    (per_zone_ceiling(after, left) - replicas / zones as i32).max(0)
}

/// Ready pods left when the `tolerated` zones holding the most ready pods are lost.
pub fn ready_after_worst_zone_loss(ready_by_zone: &BTreeMap<String, i32>, tolerated: u8) -> i32 {
    let mut counts: Vec<i32> = ready_by_zone.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let total: i32 = counts.iter().sum();
    let lost: i32 = counts.iter().take(tolerated as usize).sum();
    total - lost
}

/// The zone of a node, from `topology.kubernetes.io/zone`.
pub fn node_zone(node: &Node) -> Option<&str> {
    node.metadata.labels.as_ref()?.get(ZONE_LABEL).map(String::as_str)
}

/// A node that can run new pods now: Ready, schedulable, and without a NoSchedule/NoExecute taint
/// (the node lifecycle controller taints unreachable and not-ready nodes).
pub fn node_usable(node: &Node) -> bool {
    let ready = node_ready(node);
    let spec = node.spec.as_ref();
    let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
    let blocking_taint = spec
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.effect == "NoExecute" || t.effect == "NoSchedule"));
    ready && !unschedulable && !blocking_taint
}

/// A node whose Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Since when a node has not been Ready (its Ready condition is False or Unknown), or `None` while
/// it is Ready (or reports nothing).
pub fn down_since(node: &Node) -> Option<jiff::Timestamp> {
    let ready = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (ready.status != "True").then(|| ready.last_transition_time.as_ref().map(|t| t.0)).flatten()
}

/// Zones lost for long enough that their pods should be replaced now, without waiting for the node
/// lifecycle controller to taint their nodes one at a time: every node of the zone has not been
/// Ready for at least `failover`, and at least one other allowed zone has a Ready node. Never while
/// every zone is down (that says more about the control plane than about zones), never for a zone
/// with a node still Ready.
///
/// Also returns how long until the next zone that is down everywhere reaches `failover` (when
/// to look again).
pub fn zone_failover<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    allow: &[String],
    now: jiff::Timestamp,
    failover: std::time::Duration,
) -> (Vec<String>, Option<std::time::Duration>) {
    // Per allowed zone: the most recent time one of its nodes went down (None: a node is up).
    let mut zones: BTreeMap<String, Option<jiff::Timestamp>> = BTreeMap::new();
    for node in nodes {
        let Some(zone) = node_zone(node).filter(|z| allow.is_empty() || allow.iter().any(|a| a == z)) else {
            continue;
        };
        let down = down_since(node);
        let entry = zones.entry(zone.to_string()).or_insert(down);
        *entry = match (*entry, down) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    if !zones.values().any(Option::is_none) {
        return (Vec::new(), None);
    }
    let failover = jiff::SignedDuration::try_from(failover).unwrap_or(jiff::SignedDuration::MAX);
    let (mut lost, mut next) = (Vec::new(), None::<std::time::Duration>);
    for (zone, since) in zones.into_iter().filter_map(|(z, d)| Some((z, d?))) {
        let waited = now.duration_since(since);
        if waited >= failover {
            lost.push(zone);
        } else if let Ok(left) = std::time::Duration::try_from(failover - waited) {
            next = Some(next.map_or(left, |n| n.min(left)));
        }
    }
    (lost, next)
}

/// A pod whose Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The zone of every node, by node name.
#[derive(Clone, Debug, Default)]
pub struct ZoneMap(HashMap<String, String>);

impl ZoneMap {
    pub fn of<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Self {
        Self(nodes.into_iter().filter_map(|n| Some((n.metadata.name.clone()?, node_zone(n)?.to_string()))).collect())
    }

    pub fn zone_of_node(&self, node: &str) -> Option<&String> {
        self.0.get(node)
    }

    /// The zone of the node a pod runs on, if it is scheduled on a known node.
    pub fn zone_of(&self, pod: &Pod) -> Option<&String> {
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).and_then(|n| self.zone_of_node(n))
    }
}

/// The zones an app's replicas are planned for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlannedZones {
    pub zones: Vec<String>,
    /// Every allowed zone that has nodes, usable or not (a lost zone included), and `zones`.
    /// Stateful components are planned for these: their pods cannot move, so a lost zone must not
    /// raise their replicas.
    pub known: Vec<String>,
    /// No allowed zone is usable now (every node cordoned, or node monitoring down): `zones` are
    /// the last ones seen, and nothing is rescaled until one is back.
    pub no_usable_zones: bool,
    /// The zones of each component (by name) whose pod template rules nodes in or out; a
    /// component not listed uses `zones`.
    pub components: BTreeMap<String, Vec<String>>,
}

/// The usable zones allowed by `allow`, or, when there are none, the `last_seen` ones. No usable
/// zone at all says more about the cluster than about zones: like the node lifecycle controller in
/// full disruption, change nothing and keep planning for the last zones seen.
pub fn plan_zones<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    allow: &[String],
    last_seen: &[String],
) -> PlannedZones {
    let nodes: Vec<&Node> = nodes.into_iter().collect();
    let zones = usable_zones(nodes.iter().copied(), allow);
    let mut known: BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| node_zone(n))
        .filter(|z| allow.is_empty() || allow.iter().any(|a| a == z))
        .map(str::to_string)
        .collect();
    known.extend(zones.iter().cloned());
    if zones.is_empty() && !last_seen.is_empty() {
        known.extend(last_seen.iter().cloned());
        let known = known.into_iter().collect();
        return PlannedZones { zones: last_seen.to_vec(), known, no_usable_zones: true, components: BTreeMap::new() };
    }
    PlannedZones { zones, known: known.into_iter().collect(), no_usable_zones: false, components: BTreeMap::new() }
}

/// The zones of an app and of each of its components: a component's nodeSelector, required node
/// affinity and tolerations decide which nodes it may use, and a zone without one is not its zone.
/// Without usable zones at all, every component keeps the zones last reported for it (`last`).
pub fn plan_app_zones(nodes: &[&Node], app: &ResilientApp, last: Option<&ResilientAppStatus>) -> PlannedZones {
    let allow = &app.spec.resilience.zones;
    let last_zones = last.map(|s| s.zones.as_slice()).unwrap_or_default();
    let mut planned = plan_zones(nodes.iter().copied(), allow, last_zones);
    for c in &app.spec.components {
        let constraints = NodeConstraints::of(c.pod_template.as_deref());
        if constraints == NodeConstraints::default() {
            continue;
        }
        let zones = if planned.no_usable_zones {
            let reported = last.and_then(|s| s.components.iter().find(|s| s.name == c.name)).map(|s| s.zones.clone());
            reported.filter(|z| !z.is_empty()).unwrap_or_else(|| planned.zones.clone())
        } else {
            component_zones(nodes.iter().copied(), allow, &constraints)
        };
        planned.components.insert(c.name.clone(), zones);
    }
    planned
}

/// Usable zones: zones of usable nodes, restricted to `allow` when it is not empty. Sorted.
pub fn usable_zones<'a>(nodes: impl IntoIterator<Item = &'a Node>, allow: &[String]) -> Vec<String> {
    let zones: BTreeSet<String> = nodes
        .into_iter()
        .filter(|n| node_usable(n))
        .filter_map(node_zone)
        .filter(|z| allow.is_empty() || allow.iter().any(|a| a == z))
        .map(str::to_string)
        .collect();
    zones.into_iter().collect()
}

/// Every allowed zone that has nodes is usable: none is lost, tainted or drained entirely.
pub fn allowed_zones_healthy<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    allow: &[String],
    usable: &[String],
) -> bool {
    nodes
        .into_iter()
        .filter_map(node_zone)
        .filter(|z| allow.is_empty() || allow.iter().any(|a| a == z))
        .all(|z| usable.iter().any(|u| u == z))
}

#[cfg(test)]
mod tests;
