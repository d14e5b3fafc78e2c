//! The status of a ResilientApp, the Events that go with its changes, and when to look again:
//! all computed from what a pass saw and did. Pure: no client.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::gate::{Blocker, Gate, plan_of};
use crate::api::{ComponentStatus, ConditionType, Conditions, LABEL_COMPONENT, ResilientApp, ResilientAppStatus};
use crate::render::{LABEL_PLACEHOLDER_FOR, Plan, Warning, reservations};
use crate::resilience::{Dimension, Shortfall, ZoneMap, pod_ready, ready_after_worst_zone_loss};

/// After an eviction (or one refused for now), look again this soon (pod events usually come first).
pub const REBALANCE_RETRY: Duration = Duration::from_secs(5);
/// A namespace being deleted is checked again after this long.
pub const WAITING_RETRY: Duration = Duration::from_secs(5);
/// A conflicting namespace or a too-small quota can be fixed outside the spec: look again this often.
pub const STALLED_RETRY: Duration = Duration::from_secs(60);

/// What the cluster looks like for one app.
#[derive(Default)]
pub struct Observed {
    /// Live Deployments by component name.
    pub deployments: HashMap<String, Arc<Deployment>>,
    /// Live StatefulSets by component name.
    pub stateful_sets: HashMap<String, Arc<StatefulSet>>,
    /// Live pods of the app.
    pub pods: Vec<Arc<Pod>>,
    /// Zone of every known node.
    pub node_zones: ZoneMap,
}

impl Observed {
    /// The replicas a component runs: its plan, or, for an autoscaled component, what its
    /// autoscaler set on the live Deployment (the plan until that Deployment exists).
    pub fn replicas_of(&self, component: &crate::api::Component, plan: &Plan) -> i32 {
        let planned = plan.replicas.get(&component.name).map_or(0, |p| p.replicas);
        if component.autoscaling.is_none() {
            return planned;
        }
        self.deployments.get(&component.name).and_then(|d| d.spec.as_ref()?.replicas).unwrap_or(planned)
    }
}

/// What rebalancing did in a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebalanced {
    /// Nothing to move, or not now (the spread is even, a zone is down, pods are settling).
    Nothing,
    /// Evicted a pod: what moved, for the Event.
    Moved(String),
    /// The eviction API said not now (429).
    Refused,
}

/// What one pass decided, saw and did.
pub struct Pass<'a> {
    pub app: &'a ResilientApp,
    pub gate: &'a Gate,
    pub observed: &'a Observed,
    /// Children created, updated or deleted in this pass.
    pub writes: usize,
    /// What rebalancing did in this pass.
    pub rebalanced: Rebalanced,
    /// Consecutive passes whose writes were rejected (0 when this one was not), for the backoff.
    pub attempt: u32,
    /// What failing over a lost zone did in this pass, if anything.
    pub failed_over: Option<String>,
    /// When a zone that is down will have been down for failoverSeconds: look again then.
    pub failover_in: Option<Duration>,
}

/// An Event to publish on the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: String,
    pub action: &'static str,
    pub note: String,
}

impl Notice {
    fn new(type_: EventType, reason: &str, action: &'static str, note: &str) -> Self {
        Self { type_, reason: reason.to_string(), action, note: note.to_string() }
    }
}

/// The outcome of a pass: the status to have, the Events to publish, when to look again.
pub struct Outcome {
    pub status: ResilientAppStatus,
    pub events: Vec<Notice>,
    pub action: Action,
}

/// A status timestamp: `at` in whole seconds, as the API server keeps it (metav1.Time). A status
/// built with it compares equal to the same status read back from the watch, which is how the
/// echo of a status write is told from a change (`Memory::status_echo`).
pub fn stamp(at: jiff::Timestamp) -> Time {
    Time(jiff::Timestamp::from_second(at.as_second()).unwrap_or(at))
}

/// The status, Events and requeue of a pass, given the status the app had before it.
pub fn compute(pass: &Pass, previous: &ResilientAppStatus, now: &Time, resync: Duration) -> Outcome {
    let app = pass.app;
    let plan = plan_of(pass.gate);
    let components = component_statuses(app, plan, pass.observed);
    let wanted = conditions(app, pass, &components);
    let status = ResilientAppStatus {
        observed_generation: app.metadata.generation,
        zones: plan.zones.clone(),
        conditions: wanted.into_status(&previous.conditions, app.metadata.generation, now),
        components,
    };
    let mut events = Vec::new();
    if let Rebalanced::Moved(moved) = &pass.rebalanced {
        events.push(Notice::new(EventType::Normal, "Rebalanced", "Rebalance", moved));
    }
    if let Some(deleted) = &pass.failed_over {
        events.push(Notice::new(EventType::Warning, "ZoneFailover", "FailOver", deleted));
    }
    if let Ok(v) = pass.gate
        && v.adopting
    {
        let note = format!(
            "namespace {} was retained from an earlier ResilientApp {} and is adopted",
            app.target_namespace(),
            app.name()
        );
        events.push(Notice::new(EventType::Normal, "NamespaceAdopted", "Adopt", &note));
    }
    let warnings = pass.gate.as_ref().map(|v| v.warnings.as_slice()).unwrap_or_default();
    events.extend(transitions(&previous.conditions, &status.conditions, warnings));
    Outcome { status, events, action: requeue(pass, resync) }
}

/// The status of an app whose stored object cannot be decoded.
pub fn undecodable(
    previous: &ResilientAppStatus,
    generation: Option<i64>,
    message: &str,
    now: &Time,
) -> ResilientAppStatus {
    let mut c = Conditions::default();
    for t in [ConditionType::Ready, ConditionType::ZoneFailureTolerant] {
        c.set(t, false, "InvalidObject", message);
    }
    c.set(ConditionType::Stalled, true, "InvalidObject", message);
    ResilientAppStatus {
        observed_generation: generation,
        conditions: c.into_status(&previous.conditions, generation, now),
        ..previous.clone()
    }
}

/// When to look at the app again. An invalid spec waits for a change of the app.
pub fn requeue(pass: &Pass, resync: Duration) -> Action {
    match pass.gate {
        Err(b) if matches!(b.why, Blocker::InvalidSpec(_) | Blocker::ForbiddenField(_)) => Action::await_change(),
        Err(b) if matches!(b.why, Blocker::Rejected(_)) => Action::requeue(super::backoff_delay(pass.attempt)),
        Err(b) if b.why.is_stalled() => Action::requeue(STALLED_RETRY),
        Err(_) => Action::requeue(WAITING_RETRY),
        // A move to check on, or one the eviction API refused for now (a PodDisruptionBudget whose
        // counters lag the pods, or the API server's rate limit): nothing else may come to
        // trigger the next pass, so look again.
        Ok(_) if pass.rebalanced != Rebalanced::Nothing => Action::requeue(REBALANCE_RETRY),
        // In sync: the resync sweep (`watch::resync_sweep`) brings it back, unless a zone is due
        // to be failed over sooner.
        Ok(_) => match pass.failover_in {
            Some(f) if f < resync => Action::requeue(f),
            _ => Action::await_change(),
        },
    }
}

/// Whether the app waits for a change of its own: the resync sweep leaves it alone.
pub fn parked(gate: &Gate) -> bool {
    matches!(gate, Err(b) if matches!(b.why, Blocker::InvalidSpec(_) | Blocker::ForbiddenField(_)))
}

/// Whether this pass may evict a pod to even out the spread: only in a pass that changed nothing
/// else (so each move starts from a settled state), with usable zones, and when the app wants it.
pub fn may_rebalance(app: &ResilientApp, gate: &Gate, writes: usize) -> bool {
    matches!(gate, Ok(v) if !v.plan.no_usable_zones) && writes == 0 && app.spec.resilience.rebalance
}

fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Events for what changed in the conditions: warnings for new problems, normal events for
/// recoveries. The first status of a new app is not a transition (its pods are simply not up
/// yet), except for Stalled. A warning is published once, when it first appears.
pub fn transitions(old: &[Condition], new: &[Condition], warnings: &[Warning]) -> Vec<Notice> {
    let changed = |t: ConditionType| {
        let (o, n) = (find(old, t), find(new, t));
        let flipped = o.map(|c| (&c.status, &c.reason)) != n.map(|c| (&c.status, &c.reason));
        (flipped && (o.is_some() || t == ConditionType::Stalled)).then_some(n).flatten()
    };
    let severity = |c: &Condition| if c.status == "True" { EventType::Normal } else { EventType::Warning };
    let mut out = Vec::new();
    if let Some(c) = changed(ConditionType::Stalled) {
        out.push(Notice::new(EventType::Warning, &c.reason, "Reconcile", &c.message));
    }
    if let Some(c) = changed(ConditionType::ZoneFailureTolerant) {
        out.push(Notice::new(severity(c), &c.reason, "CheckZoneFailure", &c.message));
    }
    if let Some(c) = changed(ConditionType::FailoverCapacityReserved) {
        out.push(Notice::new(severity(c), &c.reason, "ReserveCapacity", &c.message));
    }
    if let Some(c) = changed(ConditionType::Ready) {
        out.push(Notice::new(severity(c), &c.reason, "CheckAvailability", &c.message));
    }
    for w in warnings {
        if !find(old, ConditionType::Ready).is_some_and(|c| c.message.contains(&w.message)) {
            out.push(Notice::new(EventType::Warning, w.reason, "CheckSpec", &w.message));
        }
    }
    out
}

/// A Normal Event for Ready or ZoneFailureTolerant turning True.
pub fn is_recovery(notice: &Notice) -> bool {
    notice.type_ == EventType::Normal && matches!(notice.action, "CheckAvailability" | "CheckZoneFailure")
}

/// An Event about something this pass did (adopted a namespace, failed over, rebalanced), not
/// about a change of the status.
pub fn is_one_off(notice: &Notice) -> bool {
    matches!(notice.action, "Adopt" | "FailOver" | "Rebalance")
}

/// A warning about the spec (published once).
pub fn is_spec_warning(notice: &Notice) -> bool {
    notice.action == "CheckSpec"
}

/// Per-component placement: ready pods by zone, total ready, and what survives the worst loss.
pub fn component_statuses(app: &ResilientApp, plan: &Plan, observed: &Observed) -> Vec<ComponentStatus> {
    let tolerated = app.spec.resilience.zone_failures_tolerated;
    app.spec
        .components
        .iter()
        .map(|c| {
            let zones = plan.zones_of(&c.name);
            let mut ready_by_zone: BTreeMap<String, i32> = zones.iter().map(|z| (z.clone(), 0)).collect();
            for pod in &observed.pods {
                let ours = pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_COMPONENT)) == Some(&c.name);
                if !ours || pod.metadata.deletion_timestamp.is_some() || !pod_ready(pod) {
                    continue;
                }
                let zone = observed.node_zones.zone_of(pod).cloned().unwrap_or_else(|| "unknown".to_string());
                *ready_by_zone.entry(zone).or_default() += 1;
            }
            let ready: i32 = ready_by_zone.values().sum();
            ComponentStatus {
                name: c.name.clone(),
                zones: zones.to_vec(),
                replicas: observed.replicas_of(c, plan),
                ready_replicas: ready,
                min_available: c.min_available,
                ready_after_worst_zone_loss: ready_after_worst_zone_loss(&ready_by_zone, tolerated),
                ready_by_zone,
            }
        })
        .collect()
}

/// The zones whose loss hurts most (largest ready counts), for messages.
fn worst_zones(status: &ComponentStatus, tolerated: u8) -> Vec<String> {
    let mut zones: Vec<(&String, &i32)> = status.ready_by_zone.iter().collect();
    zones.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    zones.into_iter().take(tolerated as usize).map(|(z, _)| z.clone()).collect()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The conditions for this pass (timestamps are merged later with the previous status).
fn conditions(app: &ResilientApp, pass: &Pass, components: &[ComponentStatus]) -> Conditions {
    let mut c = Conditions::default();
    let tolerated = app.spec.resilience.zone_failures_tolerated;
    let plan = plan_of(pass.gate);

    let (warning, waiting) = match pass.gate {
        Err(blocked) if blocked.why.is_stalled() => {
            let (reason, message) = (blocked.why.reason(), blocked.why.message());
            c.set(ConditionType::Ready, false, reason, message.clone());
            c.set(ConditionType::ZoneFailureTolerant, false, reason, message.clone());
            c.set(ConditionType::Stalled, true, reason, message);
            return c;
        }
        Err(blocked) => (None, Some(blocked.why.message())),
        Ok(validated) => (Some(validated.warnings.as_slice()), None),
    };

    // Ready: availability now.
    let short: Vec<String> = components
        .iter()
        .filter(|s| s.ready_replicas < s.min_available)
        .map(|s| format!("{}: {} of minAvailable {} ready", s.name, s.ready_replicas, s.min_available))
        .collect();
    if short.is_empty() {
        let mut message =
            format!("{} at or above minAvailable", plural(components.len(), "component is", "components are"));
        for w in warning.unwrap_or_default() {
            message.push_str("; warning: ");
            message.push_str(&w.message);
        }
        c.set(ConditionType::Ready, true, "MinAvailableMet", message);
    } else {
        c.set(ConditionType::Ready, false, "MinAvailableNotMet", short.join("; "));
    }

    // ZoneFailureTolerant: would the app keep minAvailable if the worst zones were lost now?
    let zones = &plan.zones;
    // Components short of zones; those whose pod template narrows the app's zones are named.
    let insufficient: Vec<(&String, &[String])> = plan
        .replicas
        .iter()
        .filter(|(_, p)| matches!(p.shortfall, Some(Shortfall::InsufficientZones { .. })))
        .map(|(name, _)| (name, plan.zones_of(name)))
        .collect();
    let too_few: Vec<String> = plan
        .replicas
        .iter()
        .filter_map(|(name, p)| match p.shortfall {
            Some(Shortfall::TooFewReplicas { replicas, needed }) => Some(format!(
                "{name}: replicas {replicas} cannot keep minAvailable through the loss of {} of {} zones (needs {needed})",
                tolerated,
                plan.zones_of(name).len()
            )),
            _ => None,
        })
        .collect();
    if plan.no_usable_zones {
        c.set(
            ConditionType::ZoneFailureTolerant,
            false,
            "NoUsableZones",
            format!(
                "no zone has a ready, schedulable node; replicas stay planned for the last zones seen ({}) until one is back",
                zones.join(", ")
            ),
        );
    } else if !insufficient.is_empty() {
        let list = |zones: &[String]| if zones.is_empty() { "none".to_string() } else { zones.join(", ") };
        let what: Vec<String> = if insufficient.iter().all(|(_, z)| *z == zones.as_slice()) {
            vec![format!("{} usable ({})", plural(zones.len(), "zone is", "zones are"), list(zones))]
        } else {
            insufficient
                .iter()
                .map(|(name, z)| {
                    format!("{name} can use {} ({}) by its pod template", plural(z.len(), "zone", "zones"), list(z))
                })
                .collect()
        };
        c.set(
            ConditionType::ZoneFailureTolerant,
            false,
            "InsufficientZones",
            format!(
                "{}; tolerating {} zone {} needs at least {}; running minAvailable + {} replicas as best effort",
                what.join("; "),
                tolerated,
                if tolerated == 1 { "failure" } else { "failures" },
                tolerated + 1,
                tolerated
            ),
        );
    } else if !too_few.is_empty() {
        c.set(ConditionType::ZoneFailureTolerant, false, "InsufficientReplicas", too_few.join("; "));
    } else {
        let at_risk: Vec<String> = components
            .iter()
            .filter(|s| s.ready_after_worst_zone_loss < s.min_available)
            .map(|s| {
                if s.ready_replicas < s.min_available {
                    return format!(
                        "{}: {} ready, below minAvailable {} even before a zone is lost",
                        s.name, s.ready_replicas, s.min_available
                    );
                }
                format!(
                    "{}: losing {} would leave {} ready {}, minAvailable is {}",
                    s.name,
                    worst_zones(s, tolerated).join(" and "),
                    s.ready_after_worst_zone_loss,
                    if s.ready_after_worst_zone_loss == 1 { "pod" } else { "pods" },
                    s.min_available
                )
            })
            .collect();
        if at_risk.is_empty() {
            c.set(
                ConditionType::ZoneFailureTolerant,
                true,
                "ZoneLossSurvivable",
                format!(
                    "every component keeps minAvailable ready pods if any {} of the {} usable zones ({}) {} lost",
                    tolerated,
                    zones.len(),
                    zones.join(", "),
                    if tolerated == 1 { "is" } else { "are" }
                ),
            );
        } else {
            c.set(ConditionType::ZoneFailureTolerant, false, "PlacementAtRisk", at_risk.join("; "));
        }
    }

    stateful_note(app, &mut c);
    if let Some((status, reason, message)) = capacity_reserved(app, plan, pass.observed) {
        c.set(ConditionType::FailoverCapacityReserved, status, reason, message);
    }

    // Reconciling: this pass changed something, or a workload has not finished rolling out.
    let progressing: Vec<String> = components
        .iter()
        .filter_map(|s| {
            let dep = pass.observed.deployments.get(&s.name);
            let rolled_out = dep.is_some_and(|d| {
                let st = d.status.clone().unwrap_or_default();
                st.observed_generation >= d.metadata.generation
                    && st.updated_replicas.unwrap_or(0) >= s.replicas
                    && st.available_replicas.unwrap_or(0) >= s.replicas
                    && st.replicas.unwrap_or(0) == s.replicas
            }) || pass.observed.stateful_sets.get(&s.name).is_some_and(|d| {
                let st = d.status.clone().unwrap_or_default();
                st.observed_generation >= d.metadata.generation
                    && st.updated_replicas.unwrap_or(0) >= s.replicas
                    && st.ready_replicas.unwrap_or(0) >= s.replicas
                    && st.replicas == s.replicas
                    && st.current_revision == st.update_revision
            });
            (!rolled_out || s.ready_replicas < s.replicas)
                .then(|| format!("{}: {} of {} replicas ready", s.name, s.ready_replicas, s.replicas))
        })
        .collect();
    if let Some(waiting) = waiting {
        c.set(ConditionType::Reconciling, true, "Waiting", waiting);
    } else if pass.writes > 0 {
        c.set(
            ConditionType::Reconciling,
            true,
            "Applying",
            format!("applied {} to the cluster", plural(pass.writes, "change", "changes")),
        );
    } else if !progressing.is_empty() {
        c.set(ConditionType::Reconciling, true, "Progressing", progressing.join("; "));
    } else {
        c.set(ConditionType::Reconciling, false, "Reconciled", "");
    }
    c.set(ConditionType::Stalled, false, "", "");
    c
}

/// Stateful components are never replaced in another zone: say so in the ZoneFailureTolerant
/// message, as `simulate` does.
fn stateful_note(app: &ResilientApp, c: &mut Conditions) {
    let stateful: Vec<&str> = app.spec.components.iter().filter(|c| c.is_stateful()).map(|c| c.name.as_str()).collect();
    if stateful.is_empty() {
        return;
    }
    if let Some(w) = c.wanted.iter_mut().find(|w| w.0 == ConditionType::ZoneFailureTolerant) {
        w.3.push_str(&format!("; {}: replacements 0 (zonal volumes)", stateful.join(", ")));
    }
}

/// `FailoverCapacityReserved` (only with reserveCapacity): every placeholder pod the plan wants is
/// scheduled in its zone. False names each zone that is short and what is Pending there.
pub fn capacity_reserved(app: &ResilientApp, plan: &Plan, observed: &Observed) -> Option<(bool, &'static str, String)> {
    if !app.spec.resilience.reserve_capacity {
        return None;
    }
    let wanted = reservations(app, plan);
    if wanted.is_empty() {
        return Some((
            true,
            "NothingToReserve",
            format!(
                "no component would get replacements in the loss of {} of the {} usable zones (stateful components, or too few zones): no placeholders",
                app.spec.resilience.zone_failures_tolerated,
                plan.zones.len()
            ),
        ));
    }
    let mut short = Vec::new();
    for r in &wanted {
        let label = |p: &Pod, k: &str| p.metadata.labels.as_ref().and_then(|l| l.get(k)).cloned();
        let scheduled = observed
            .pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| label(p, LABEL_PLACEHOLDER_FOR).as_ref() == Some(&r.component))
            .filter(|p| observed.node_zones.zone_of(p) == Some(&r.zone))
            .count() as i32;
        if scheduled < r.count {
            short.push(format!(
                "{}: {} of {} placeholders for {} ({} and {} each) Pending",
                r.zone,
                r.count - scheduled,
                r.count,
                r.component,
                Dimension::Cpu.describe(r.per_pod.cpu),
                Dimension::Memory.describe(r.per_pod.memory),
            ));
        }
    }
    if short.is_empty() {
        let pods: i32 = wanted.iter().map(|r| r.count).sum();
        let mut per: Vec<String> = wanted.iter().map(|r| format!("{}: {} per zone", r.component, r.count)).collect();
        per.dedup();
        return Some((
            true,
            "CapacityReserved",
            format!(
                "{pods} placeholder pods hold room in {} for the replacements of the worst loss of {} zone(s) ({})",
                {
                    let mut zones: Vec<&str> = wanted.iter().map(|r| r.zone.as_str()).collect();
                    zones.sort_unstable();
                    zones.dedup();
                    zones.join(", ")
                },
                app.spec.resilience.zone_failures_tolerated,
                per.join(", ")
            ),
        ));
    }
    Some((false, "PlaceholdersPending", short.join("; ")))
}

#[cfg(test)]
mod tests;
