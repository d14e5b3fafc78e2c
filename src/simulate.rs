//! `resilient-operator simulate`: what losing zones would do to every ResilientApp right now.
//! Pure: the caller lists the cluster state, this module computes the report.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, ResourceQuota};
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{LABEL_APP, LABEL_COMPONENT, ResilientApp};
use crate::render::LABEL_PLACEHOLDER_FOR;
use crate::resilience::{
    ContainerDefaults, Dimension, Footprint, NodeConstraints, PodResources, ZoneMap, component_zones, even_spread,
    footprint_of, node_usable, plan_replicas, pod_ready, usable_zones,
};

/// The cluster as listed, and the zones to lose.
pub struct SimulationInput<'a> {
    pub apps: &'a [ResilientApp],
    pub nodes: &'a [Node],
    pub pods: &'a [Pod],
    pub quotas: &'a [ResourceQuota],
    pub lost_zones: &'a [String],
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentOutcome {
    pub app: String,
    pub namespace: String,
    pub component: String,
    pub min_available: i32,
    pub ready_now: i32,
    /// Ready pods outside the lost zones: what is left the moment they go dark.
    pub ready_after_loss: i32,
    /// `readyAfterLoss >= minAvailable`.
    pub guarantee_holds: bool,
    /// Replicas running now: for an autoscaled component, what its autoscaler set (as the app's
    /// status last reported it), else the planned count.
    pub replicas_now: i32,
    /// Replicas the operator runs once the zones are gone (it recomputes for the zones left). For
    /// an autoscaled component: the new floor, or what the autoscaler runs now if that is more.
    pub replicas_after: i32,
    /// Pods to start in the surviving zones to reach `replicasAfter` with an even spread.
    pub replacements: i32,
    /// Whether the replacements fit: node capacity by zone (placeholder pods of reserveCapacity,
    /// which replacements preempt, count as free), quota headroom, the spread.
    pub replacements_fit: bool,
    /// With reserveCapacity: whether they would fit without the room the placeholders hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacements_fit_without_reservation: Option<bool>,
    /// A stateful component (volumeClaims): its pods wait for their zone, nothing is replaced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateful: bool,
    /// Why something does not hold or fit, or what changes.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SimulationReport {
    pub lost_zones: Vec<String>,
    pub surviving_zones: Vec<String>,
    pub components: Vec<ComponentOutcome>,
}

impl SimulationReport {
    /// True when every component keeps its guarantee.
    pub fn all_hold(&self) -> bool {
        self.components.iter().all(|c| c.guarantee_holds)
    }
}

fn live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    pod.metadata.deletion_timestamp.is_none() && phase != "Succeeded" && phase != "Failed"
}

/// What a live pod requests: the sum of its containers' requests, and one pod slot.
fn pod_requests(pod: &Pod) -> Footprint {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let requested: Footprint = containers
        .iter()
        .filter_map(|c| c.resources.as_ref().and_then(|r| r.requests.as_ref()))
        .map(|r| footprint_of(r, ["cpu", "memory", "pods"], 0.0))
        .sum();
    requested.with(Dimension::Pods, 1.0)
}

/// A placeholder pod of reserveCapacity: it yields its room to any app pod.
fn placeholder(pod: &Pod) -> bool {
    pod.labels().contains_key(LABEL_PLACEHOLDER_FOR)
}

/// Where to put new pods: the nodes and their zones, and the nodes the component may use.
struct Placement<'a> {
    zones: &'a ZoneMap,
    admitted: &'a std::collections::HashSet<String>,
}

/// Place `n` pods of `per_pod` in `zone`, each on the admitted node of the zone with the most free
/// CPU; false when one finds no room.
fn place(free: &mut BTreeMap<String, Footprint>, at: &Placement, zone: &str, n: i32, per_pod: Footprint) -> bool {
    for _ in 0..n {
        let best = free
            .iter_mut()
            .filter(|(node, _)| at.zones.zone_of_node(node).map(String::as_str) == Some(zone))
            .filter(|(node, _)| at.admitted.contains(node.as_str()))
            .filter(|(_, f)| per_pod.fits_in(f))
            .max_by(|a, b| a.1.cpu.total_cmp(&b.1.cpu));
        match best {
            Some((_, f)) => *f -= per_pod,
            None => return false,
        }
    }
    true
}

/// Free capacity of every usable node, by node name.
fn free_capacity(nodes: &[Node], pods: &[Pod]) -> BTreeMap<String, Footprint> {
    let mut free: BTreeMap<String, Footprint> = nodes
        .iter()
        .filter(|n| node_usable(n))
        .map(|n| {
            let alloc = n.status.as_ref().and_then(|s| s.allocatable.clone()).unwrap_or_default();
            (n.name_any(), footprint_of(&alloc, ["cpu", "memory", "pods"], 0.0))
        })
        .collect();
    for pod in pods.iter().filter(|p| live(p)) {
        let Some(slot) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).and_then(|n| free.get_mut(n)) else {
            continue;
        };
        *slot -= pod_requests(pod);
    }
    free
}

/// Room left in a namespace's quota (`pods`, `requests.cpu`, `requests.memory`; unbounded where the
/// quota sets no limit), or `None` without a quota.
fn quota_headroom(quotas: &[ResourceQuota], namespace: &str) -> Option<Footprint> {
    let quota = quotas.iter().find(|q| q.namespace().as_deref() == Some(namespace))?;
    let status = quota.status.as_ref()?;
    let keys = ["requests.cpu", "requests.memory", "pods"];
    let hard = footprint_of(&status.hard.clone().unwrap_or_default(), keys, f64::INFINITY);
    let used = footprint_of(&status.used.clone().unwrap_or_default(), keys, 0.0);
    Some(hard - used)
}

/// Simulate the loss of `lost_zones` for every component of every app.
pub fn simulate(input: &SimulationInput) -> SimulationReport {
    let node_zones = ZoneMap::of(input.nodes);
    // Replacements preempt placeholders: their room counts as free. `unreserved` is the same
    // capacity without that room, for the comparison.
    let app_pods: Vec<Pod> = input.pods.iter().filter(|p| !placeholder(p)).cloned().collect();
    let mut free = free_capacity(input.nodes, &app_pods);
    let mut unreserved = free_capacity(input.nodes, input.pods);
    // Lost zones take no new pods.
    free.retain(|node, _| node_zones.zone_of_node(node).is_none_or(|z| !input.lost_zones.contains(z)));
    unreserved.retain(|node, _| node_zones.zone_of_node(node).is_none_or(|z| !input.lost_zones.contains(z)));
    let mut quota_left: HashMap<String, Option<Footprint>> = HashMap::new();
    let mut components = Vec::new();
    let all_surviving: Vec<String> =
        usable_zones(input.nodes, &[]).into_iter().filter(|z| !input.lost_zones.contains(z)).collect();

    let mut apps: Vec<&ResilientApp> = input.apps.iter().collect();
    apps.sort_by_key(|a| a.name_any());
    for app in apps {
        let name = app.name_any();
        let namespace = app.target_namespace();
        let allow = &app.spec.resilience.zones;
        let tolerated = app.spec.resilience.zone_failures_tolerated;
        let defaults = ContainerDefaults::of(app);
        let headroom = quota_left.entry(namespace.clone()).or_insert_with(|| quota_headroom(input.quotas, &namespace));
        for component in &app.spec.components {
            // The zones this component can use (its pod template may rule some out), minus the lost.
            let constraints = NodeConstraints::of(component.pod_template.as_deref());
            let surviving: Vec<String> = component_zones(input.nodes, allow, &constraints)
                .into_iter()
                .filter(|z| !input.lost_zones.contains(z))
                .collect();
            let admitted: std::collections::HashSet<String> =
                input.nodes.iter().filter(|n| constraints.admits(n)).map(|n| n.name_any()).collect();
            let ours: Vec<&Pod> = input
                .pods
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
                .filter(|p| p.labels().get(LABEL_APP) == Some(&name))
                .filter(|p| p.labels().get(LABEL_COMPONENT) == Some(&component.name))
                .filter(|p| live(p))
                .collect();
            let ready_now = ours.iter().filter(|p| pod_ready(p)).count() as i32;
            let ready_after_loss = ours
                .iter()
                .filter(|p| pod_ready(p) && node_zones.zone_of(p).is_some_and(|z| !input.lost_zones.contains(z)))
                .count() as i32;
            let mut notes = Vec::new();
            let reported = app.status.iter().flat_map(|s| &s.components).find(|s| s.name == component.name);
            let replicas_now = reported.map_or(0, |s| s.replicas);
            if component.is_stateful() {
                // Pods on zonal volumes wait for their zone: nothing is replaced, nothing scaled.
                let zones_now = component_zones(input.nodes, allow, &constraints).len();
                let replicas =
                    plan_replicas(component.replicas, component.min_available, zones_now, tolerated).replicas;
                notes.push(
                    "replacements 0 (zonal volumes): the pods of the lost zones wait there for their volumes"
                        .to_string(),
                );
                components.push(ComponentOutcome {
                    app: name.clone(),
                    namespace: namespace.clone(),
                    component: component.name.clone(),
                    min_available: component.min_available,
                    ready_now,
                    ready_after_loss,
                    guarantee_holds: ready_after_loss >= component.min_available,
                    replicas_now,
                    replicas_after: replicas,
                    replacements: 0,
                    replacements_fit: true,
                    replacements_fit_without_reservation: None,
                    stateful: true,
                    notes,
                });
                continue;
            }
            let plan = plan_replicas(component.replicas, component.min_available, surviving.len(), tolerated);
            let replicas_after = match &component.autoscaling {
                Some(autoscaling) => {
                    let after = plan.replicas.max(replicas_now);
                    if plan.replicas > replicas_now {
                        notes.push(format!(
                            "autoscaled: the operator raises the autoscaler's minReplicas to {} (zone-survival floor for {} zone(s))",
                            plan.replicas,
                            surviving.len()
                        ));
                    }
                    if plan.replicas > autoscaling.max_replicas {
                        notes.push(format!(
                            "autoscaled: the new floor {} is above maxReplicas {}",
                            plan.replicas, autoscaling.max_replicas
                        ));
                    }
                    after
                }
                None => plan.replicas,
            };
            if plan.shortfall.is_some() {
                notes.push(format!(
                    "with {} zone(s) left the app no longer tolerates {tolerated} more zone failure(s)",
                    surviving.len()
                ));
            }

            // Even spread of the new replica count over the surviving zones, starting from the pods
            // that survive there (the extra pod of an uneven split goes where pods already are).
            let mut current: Vec<(String, i32)> = surviving
                .iter()
                .map(|z| (z.clone(), ours.iter().filter(|p| node_zones.zone_of(p) == Some(z)).count() as i32))
                .collect();
            current.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let needed_by_zone: Vec<(String, i32)> = current
                .iter()
                .zip(even_spread(replicas_after, current.len()))
                .filter(|((_, have), target)| target > have)
                .map(|((zone, have), target)| (zone.clone(), target - have))
                .collect();
            let replacements: i32 = needed_by_zone.iter().map(|(_, n)| n).sum();
            let per_pod = PodResources::of(component, &defaults).requests;
            let mut fits = true;
            if surviving.is_empty() {
                fits = false;
                notes.push("no surviving zone can take pods".to_string());
            }
            // Node capacity: place each new pod on the node of its zone with the most free CPU.
            let mut fits_unreserved = fits;
            for (zone, n) in &needed_by_zone {
                let at = Placement { zones: &node_zones, admitted: &admitted };
                if !place(&mut free, &at, zone, *n, per_pod) {
                    fits = false;
                    notes.push(format!(
                        "{zone} has no node with room for another pod ({}m CPU, {}Mi)",
                        (per_pod.cpu * 1000.0).round(),
                        (per_pod.memory / 1048576.0).round()
                    ));
                }
                fits_unreserved &= place(&mut unreserved, &at, zone, *n, per_pod);
            }
            let reserving = app.spec.resilience.reserve_capacity;
            if reserving && fits && !fits_unreserved {
                notes
                    .push("the replacements fit only because placeholders (reserveCapacity) hold room for them".into());
            }
            // Quota: terminating pods of the lost zones still count until they are gone.
            if let Some(left) = headroom.as_mut() {
                let need = per_pod.times(replacements);
                for d in [Dimension::Pods, Dimension::Cpu, Dimension::Memory] {
                    let (room, needed) = (left.get(d), need.get(d));
                    if room + 1e-9 < needed {
                        fits = false;
                        let key = match d {
                            Dimension::Pods => "pods",
                            Dimension::Cpu => "requests.cpu",
                            Dimension::Memory => "requests.memory",
                        };
                        notes.push(format!(
                            "quota {key} in {namespace} has room for {room:.3} more, the replacements need {needed:.3}"
                        ));
                    }
                }
                *left -= need;
            }
            components.push(ComponentOutcome {
                app: name.clone(),
                namespace: namespace.clone(),
                component: component.name.clone(),
                min_available: component.min_available,
                ready_now,
                ready_after_loss,
                guarantee_holds: ready_after_loss >= component.min_available,
                replicas_now,
                replicas_after,
                replacements,
                replacements_fit: fits,
                replacements_fit_without_reservation: reserving.then_some(fits_unreserved && fits),
                stateful: false,
                notes,
            });
        }
    }
    SimulationReport { lost_zones: input.lost_zones.to_vec(), surviving_zones: all_surviving, components }
}

/// The report as a table for people.
pub fn table(report: &SimulationReport) -> String {
    let mut out = format!(
        "Losing {} (surviving: {})\n\n",
        report.lost_zones.join(" and "),
        if report.surviving_zones.is_empty() { "none".to_string() } else { report.surviving_zones.join(", ") }
    );
    let header = [
        "APP",
        "COMPONENT",
        "MIN",
        "READY NOW",
        "READY AFTER",
        "GUARANTEE",
        "REPLICAS NOW",
        "REPLICAS AFTER",
        "REPLACEMENTS",
        "FIT",
    ];
    let rows: Vec<[String; 10]> = report
        .components
        .iter()
        .map(|c| {
            [
                c.app.clone(),
                c.component.clone(),
                c.min_available.to_string(),
                c.ready_now.to_string(),
                c.ready_after_loss.to_string(),
                if c.guarantee_holds { "holds" } else { "BROKEN" }.to_string(),
                c.replicas_now.to_string(),
                c.replicas_after.to_string(),
                if c.stateful { format!("{} (zonal volumes)", c.replacements) } else { c.replacements.to_string() },
                match (c.replacements_fit, c.replacements_fit_without_reservation) {
                    (false, _) => "NO",
                    (true, Some(false)) => "yes (reserved)",
                    (true, _) => "yes",
                }
                .to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> =
        (0..10).map(|i| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: Vec<&str>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    out.push_str(&line(header.to_vec()));
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    let notes: Vec<String> = report
        .components
        .iter()
        .flat_map(|c| c.notes.iter().map(move |n| format!("{}/{}: {n}", c.app, c.component)))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    let broken = report.components.iter().filter(|c| !c.guarantee_holds).count();
    out.push_str(&format!(
        "\n{} of {} components keep minAvailable\n",
        report.components.len() - broken,
        report.components.len()
    ));
    out
}

#[cfg(test)]
mod tests;
