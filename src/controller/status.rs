//! The status of a ResilientApp, computed from what was observed. Pure: no client.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

use crate::api::{ComponentStatus, ConditionType, Conditions, LABEL_COMPONENT, ResilientApp};
use crate::render::SpecError;
use crate::resilience::{ReplicaPlan, Shortfall, pod_ready, ready_after_worst_zone_loss};

/// A terminal problem: the app cannot be reconciled until something changes.
#[derive(Clone, Debug, PartialEq)]
pub enum Blocker {
    InvalidSpec(Vec<SpecError>),
    NamespaceConflict(String),
    QuotaTooSmall(String),
}

impl Blocker {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::NamespaceConflict(_) => "NamespaceConflict",
            Self::QuotaTooSmall(_) => "QuotaTooSmall",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::InvalidSpec(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            Self::NamespaceConflict(m) | Self::QuotaTooSmall(m) => m.clone(),
        }
    }
}

/// What the cluster looks like for one app.
pub struct Observed<'a> {
    pub zones: &'a [String],
    pub plans: &'a BTreeMap<String, ReplicaPlan>,
    /// Live Deployments by component name.
    pub deployments: HashMap<String, Arc<Deployment>>,
    /// Live pods of the app.
    pub pods: Vec<Arc<Pod>>,
    /// Zone of every known node.
    pub node_zones: HashMap<String, String>,
}

/// What this pass did and noticed, beyond observation.
#[derive(Clone, Debug, Default)]
pub struct PassOutcome {
    pub blocker: Option<Blocker>,
    /// Children created, updated or deleted in this pass.
    pub writes: usize,
    /// A warning that belongs in the Ready message (for example quota without surge room).
    pub warning: Option<String>,
    /// Children were not applied this pass because something must finish first.
    pub waiting: Option<String>,
    /// No zone is usable now; the plan uses the last zones seen.
    pub no_usable_zones: bool,
}

impl Observed<'_> {
    /// The zone of the node a pod runs on, if it is scheduled on a known node.
    pub fn zone_of(&self, pod: &Pod) -> Option<&String> {
        pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).and_then(|n| self.node_zones.get(n))
    }
}

/// Per-component placement: ready pods by zone, total ready, and what survives the worst loss.
pub fn component_statuses(app: &ResilientApp, observed: &Observed) -> Vec<ComponentStatus> {
    let tolerated = app.spec.resilience.zone_failures_tolerated;
    app.spec
        .components
        .iter()
        .map(|c| {
            let mut ready_by_zone: BTreeMap<String, i32> = observed.zones.iter().map(|z| (z.clone(), 0)).collect();
            for pod in &observed.pods {
                let ours = pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_COMPONENT)) == Some(&c.name);
                if !ours || pod.metadata.deletion_timestamp.is_some() || !pod_ready(pod) {
                    continue;
                }
                let zone = observed.zone_of(pod).cloned().unwrap_or_else(|| "unknown".to_string());
                *ready_by_zone.entry(zone).or_default() += 1;
            }
            let ready: i32 = ready_by_zone.values().sum();
            ComponentStatus {
                name: c.name.clone(),
                replicas: observed.plans.get(&c.name).map_or(0, |p| p.replicas),
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
pub fn conditions(
    app: &ResilientApp,
    observed: &Observed,
    components: &[ComponentStatus],
    outcome: &PassOutcome,
) -> Conditions {
    let mut c = Conditions::default();
    let tolerated = app.spec.resilience.zone_failures_tolerated;

    if let Some(blocker) = &outcome.blocker {
        let message = blocker.message();
        c.set(ConditionType::Ready, false, blocker.reason(), message.clone());
        c.set(ConditionType::ZoneFailureTolerant, false, blocker.reason(), message.clone());
        c.set(ConditionType::Stalled, true, blocker.reason(), message);
        return c;
    }

    // Ready: availability now.
    let short: Vec<String> = components
        .iter()
        .filter(|s| s.ready_replicas < s.min_available)
        .map(|s| format!("{}: {} of minAvailable {} ready", s.name, s.ready_replicas, s.min_available))
        .collect();
    if short.is_empty() {
        let mut message =
            format!("{} at or above minAvailable", plural(components.len(), "component is", "components are"));
        if let Some(w) = &outcome.warning {
            message.push_str("; warning: ");
            message.push_str(w);
        }
        c.set(ConditionType::Ready, true, "MinAvailableMet", message);
    } else {
        c.set(ConditionType::Ready, false, "MinAvailableNotMet", short.join("; "));
    }

    // ZoneFailureTolerant: would the app keep minAvailable if the worst zones were lost now?
    let zones = observed.zones;
    let insufficient =
        observed.plans.values().any(|p| matches!(p.shortfall, Some(Shortfall::InsufficientZones { .. })));
    let too_few: Vec<String> = observed
        .plans
        .iter()
        .filter_map(|(name, p)| match p.shortfall {
            Some(Shortfall::TooFewReplicas { replicas, needed }) => Some(format!(
                "{name}: replicas {replicas} cannot keep minAvailable through the loss of {} of {} zones (needs {needed})",
                tolerated,
                zones.len()
            )),
            _ => None,
        })
        .collect();
    if outcome.no_usable_zones {
        c.set(
            ConditionType::ZoneFailureTolerant,
            false,
            "NoUsableZones",
            format!(
                "no zone has a ready, schedulable node; replicas stay planned for the last zones seen ({}) until one is back",
                zones.join(", ")
            ),
        );
    } else if insufficient {
        c.set(
            ConditionType::ZoneFailureTolerant,
            false,
            "InsufficientZones",
            format!(
                "{} usable ({}); tolerating {} zone {} needs at least {}; running minAvailable + {} replicas as best effort",
                plural(zones.len(), "zone is", "zones are"),
                if zones.is_empty() { "none".to_string() } else { zones.join(", ") },
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

    // Reconciling: this pass changed something, or a Deployment has not finished rolling out.
    let progressing: Vec<String> = components
        .iter()
        .filter_map(|s| {
            let dep = observed.deployments.get(&s.name);
            let rolled_out = dep.is_some_and(|d| {
                let st = d.status.clone().unwrap_or_default();
                st.observed_generation >= d.metadata.generation
                    && st.updated_replicas.unwrap_or(0) >= s.replicas
                    && st.available_replicas.unwrap_or(0) >= s.replicas
                    && st.replicas.unwrap_or(0) == s.replicas
            });
            (!rolled_out || s.ready_replicas < s.replicas)
                .then(|| format!("{}: {} of {} replicas ready", s.name, s.ready_replicas, s.replicas))
        })
        .collect();
    if let Some(waiting) = &outcome.waiting {
        c.set(ConditionType::Reconciling, true, "Waiting", waiting.clone());
    } else if outcome.writes > 0 {
        c.set(
            ConditionType::Reconciling,
            true,
            "Applying",
            format!("applied {} to the cluster", plural(outcome.writes, "change", "changes")),
        );
    } else if !progressing.is_empty() {
        c.set(ConditionType::Reconciling, true, "Progressing", progressing.join("; "));
    } else {
        c.set(ConditionType::Reconciling, false, "Reconciled", "");
    }
    c.set(ConditionType::Stalled, false, "", "");
    c
}

#[cfg(test)]
mod tests;
