//! `components[].podTemplate`: its CRD schema, and the fields the operator owns that it may not set.
//!
//! The schema is k8s-openapi's full core/v1 PodTemplateSpec with the descriptions left out (why:
//! docs/api.md, "The podTemplate schema"), so the API server still checks every type and CEL can
//! name the forbidden fields at admission. [`forbidden_fields`] checks the same rules in Rust for
//! what CEL could not see (an app stored before these rules existed).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use schemars::Schema;
use serde_json::Value;

/// Pod label keys under this prefix are the operator's (its selector and bookkeeping).
pub const OWNED_LABEL_PREFIX: &str = "resilient.dev/";
/// Tolerations of these (NoExecute) taints are the operator's: it sets them to failoverSeconds.
pub const FAILOVER_TAINTS: [&str; 2] = ["node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"];

/// Bounds that keep the CEL cost estimate of the rules below within the API server's limits.
const MAX_TOLERATIONS: u64 = 64;
const MAX_SPREAD_CONSTRAINTS: u64 = 16;
const MAX_POD_LABELS: u64 = 64;

/// Shape the generated PodTemplateSpec schema for the CRD: no descriptions below the top (they
/// would make the CRD 700 kB, past the 256 kB that client-side `kubectl apply` and Argo CD's
/// default sync can store), `containers` optional (a template that only adds a volume needs no
/// container), and bounded lists where CEL iterates.
pub fn pod_template_schema(schema: &mut Schema) {
    if let Some(obj) = schema.as_object_mut() {
        obj.values_mut().for_each(strip_descriptions);
    }
    let Some(props) = schema.get_mut("properties") else {
        return;
    };
    if let Some(labels) = props.pointer_mut("/metadata/properties/labels").and_then(Value::as_object_mut) {
        labels.insert("maxProperties".into(), MAX_POD_LABELS.into());
    }
    let Some(spec) = props.pointer_mut("/spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.remove("required");
    let Some(spec_props) = spec.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (list, max) in [("tolerations", MAX_TOLERATIONS), ("topologySpreadConstraints", MAX_SPREAD_CONSTRAINTS)] {
        if let Some(l) = spec_props.get_mut(list).and_then(Value::as_object_mut) {
            l.insert("maxItems".into(), max.into());
        }
    }
}

pub(crate) fn strip_descriptions(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("description");
            map.values_mut().for_each(strip_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

/// CEL on a component: the pod-template fields the operator owns.
pub const NODE_NAME_RULE: &str =
    "!has(self.podTemplate) || !has(self.podTemplate.spec) || !has(self.podTemplate.spec.nodeName)";
pub const NODE_NAME_MESSAGE: &str =
    "spec.components[].podTemplate.spec.nodeName may not be set: the scheduler places the pods across zones";
pub const LABELS_RULE: &str = "!has(self.podTemplate) || !has(self.podTemplate.metadata) || !has(self.podTemplate.metadata.labels) || self.podTemplate.metadata.labels.all(k, !k.startsWith('resilient.dev/'))";
pub const LABELS_MESSAGE: &str = "spec.components[].podTemplate.metadata.labels may not set resilient.dev/* labels: the operator selects and counts pods by them";
pub const ZONE_SPREAD_RULE: &str = "!has(self.podTemplate) || !has(self.podTemplate.spec) || !has(self.podTemplate.spec.topologySpreadConstraints) || self.podTemplate.spec.topologySpreadConstraints.all(t, t.topologyKey != 'topology.kubernetes.io/zone')";
pub const ZONE_SPREAD_MESSAGE: &str = "spec.components[].podTemplate.spec.topologySpreadConstraints may not spread on topology.kubernetes.io/zone: the operator owns the zone spread";
/// CEL on the spec (it needs failoverSeconds): no toleration of the failover taints that outlasts it.
pub const FAILOVER_TOLERATION_RULE: &str = "self.components.all(c, !has(c.podTemplate) || !has(c.podTemplate.spec) || !has(c.podTemplate.spec.tolerations) || c.podTemplate.spec.tolerations.all(t, !has(t.key) || !(t.key == 'node.kubernetes.io/unreachable' || t.key == 'node.kubernetes.io/not-ready') || (has(t.tolerationSeconds) && t.tolerationSeconds <= (has(self.resilience) && has(self.resilience.failoverSeconds) ? self.resilience.failoverSeconds : 30))))";
pub const FAILOVER_TOLERATION_MESSAGE: &str = "spec.components[].podTemplate.spec.tolerations may not tolerate node.kubernetes.io/unreachable or not-ready for longer than spec.resilience.failoverSeconds (or without tolerationSeconds): pods of a lost zone must be replaced";

/// A pod-template field the operator owns, as found in a template: its path and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForbiddenField {
    /// Below `podTemplate`, e.g. `spec.nodeName`.
    pub path: String,
    pub message: String,
}

/// The fields of `template` the operator owns (the same rules CEL checks at admission).
pub fn forbidden_fields(template: &PodTemplateSpec, failover_seconds: u32) -> Vec<ForbiddenField> {
    let mut out = Vec::new();
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    for key in labels.into_iter().flatten().map(|(k, _)| k).filter(|k| k.starts_with(OWNED_LABEL_PREFIX)) {
        out.push(ForbiddenField {
            path: format!("metadata.labels[{key}]"),
            message: "resilient.dev/* labels are the operator's: it selects and counts pods by them".into(),
        });
    }
    let Some(spec) = template.spec.as_ref() else {
        return out;
    };
    if let Some(node) = &spec.node_name {
        out.push(ForbiddenField {
            path: "spec.nodeName".into(),
            message: format!("may not be set (it is {node}): the scheduler places the pods across zones"),
        });
    }
    for (i, t) in spec.topology_spread_constraints.iter().flatten().enumerate() {
        if t.topology_key == crate::api::ZONE_LABEL {
            out.push(ForbiddenField {
                path: format!("spec.topologySpreadConstraints[{i}]"),
                message: "may not spread on topology.kubernetes.io/zone: the operator owns the zone spread".into(),
            });
        }
    }
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        let Some(key) = t.key.as_deref().filter(|k| FAILOVER_TAINTS.contains(k)) else {
            continue;
        };
        let within = t.toleration_seconds.is_some_and(|s| s <= i64::from(failover_seconds));
        if !within {
            let how_long =
                t.toleration_seconds.map_or("without tolerationSeconds".to_string(), |s| format!("for {s}s"));
            out.push(ForbiddenField {
                path: format!("spec.tolerations[{i}]"),
                message: format!(
                    "tolerates {key} {how_long}, longer than failoverSeconds ({failover_seconds}s): pods of a lost zone must be replaced"
                ),
            });
        }
    }
    out
}
