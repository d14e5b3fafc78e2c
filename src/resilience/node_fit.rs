//! Which nodes a component's pods may run on, from its pod template: its nodeSelector, its
//! required node affinity and its tolerations. A zone none of whose usable nodes fits is not one of
//! the component's zones. Pure.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement, PodTemplateSpec, Taint, Toleration};
use kube::core::labels::{Expression, SelectorExt};

use super::{node_ready, node_zone};

/// Taints the node lifecycle controller and the kubelet put on nodes that are down, cordoned or
/// under pressure: a node carrying one is never counted as usable, tolerated or not.
const LIFECYCLE_TAINT_PREFIX: &str = "node.kubernetes.io/";

/// What the scheduler requires of a node for a component's pods (preferences are left out: they
/// never rule a node out).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeConstraints {
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: the node must match one of these terms.
    pub required: Option<NodeSelector>,
    pub tolerations: Vec<Toleration>,
}

impl NodeConstraints {
    /// The constraints a pod template adds (none without one).
    pub fn of(template: Option<&PodTemplateSpec>) -> Self {
        let Some(spec) = template.and_then(|t| t.spec.as_ref()) else {
            return Self::default();
        };
        Self {
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required: spec
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|n| n.required_during_scheduling_ignored_during_execution.clone()),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
        }
    }

    /// Whether a pod with these constraints may be scheduled on `node` now: the node is Ready and
    /// schedulable, carries no lifecycle taint, every other NoSchedule / NoExecute taint is
    /// tolerated, and its labels satisfy the nodeSelector and the required affinity.
    pub fn admits(&self, node: &Node) -> bool {
        let spec = node.spec.as_ref();
        if !node_ready(node) || spec.and_then(|s| s.unschedulable).unwrap_or(false) {
            return false;
        }
        let blocking = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute");
        for taint in blocking {
            if taint.key.starts_with(LIFECYCLE_TAINT_PREFIX) || !self.tolerations.iter().any(|t| tolerates(t, taint)) {
                return false;
            }
        }
        let empty = BTreeMap::new();
        let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
        if !self.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
        let name = node.metadata.name.as_deref().unwrap_or_default();
        self.required.as_ref().is_none_or(|r| matches_node_selector(r, labels, name))
    }
}

/// Kubernetes' rule: an empty key with `Exists` tolerates every taint; an empty effect matches
/// every effect; `Equal` (the default operator) also compares the value.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    key == taint.key
        && (exists || toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default())
}

/// Terms are ORed, the requirements of a term ANDed; a term without requirements matches nothing.
fn matches_node_selector(selector: &NodeSelector, labels: &BTreeMap<String, String>, name: &str) -> bool {
    selector.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if exprs.is_empty() && fields.is_empty() {
            return false;
        }
        let name_fields = BTreeMap::from([("metadata.name".to_string(), name.to_string())]);
        exprs.iter().all(|r| requirement_matches(r, labels))
            && fields.iter().all(|r| requirement_matches(r, &name_fields))
    })
}

fn requirement_matches(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = || r.values.iter().flatten().cloned().collect::<BTreeSet<String>>();
    let key = r.key.clone();
    let expression = match r.operator.as_str() {
        "In" => Expression::In(key, values()),
        "NotIn" => Expression::NotIn(key, values()),
        "Exists" => Expression::Exists(key),
        "DoesNotExist" => Expression::DoesNotExist(key),
        // Gt / Lt compare the label and the single value as integers.
        op @ ("Gt" | "Lt") => {
            let label = labels.get(&r.key).and_then(|v| v.parse::<i64>().ok());
            let bound = r.values.as_ref().and_then(|v| v.first()).and_then(|v| v.parse::<i64>().ok());
            return match (label, bound) {
                (Some(l), Some(b)) => (op == "Gt" && l > b) || (op == "Lt" && l < b),
                _ => false,
            };
        }
        _ => return false,
    };
    expression.matches(labels)
}

/// The zones (allowed by `allow`, sorted) that hold a node the constraints admit.
pub fn component_zones<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    allow: &[String],
    constraints: &NodeConstraints,
) -> Vec<String> {
    let zones: BTreeSet<String> = nodes
        .into_iter()
        .filter(|n| constraints.admits(n))
        .filter_map(node_zone)
        .filter(|z| allow.is_empty() || allow.iter().any(|a| a == z))
        .map(str::to_string)
        .collect();
    zones.into_iter().collect()
}
