//! "Did anything change?", answered without a write: is everything the operator wants already in
//! the live object? The API server adds defaults and canonicalizes quantities, and other managers
//! add fields and list entries of their own, so the question is containment with quantity-aware
//! equality and Kubernetes' list semantics ([`list_types`]), not equality.

pub mod list_types;

use kube::Resource;
use kube_quantity::ParsedQuantity;
use serde::Serialize;
use serde_json::Value;

use self::list_types::{Key, ListType, Node};

/// True when `live` already holds every field of `desired` with the same value. Lists merge as
/// the API server merges them (by the kind's OpenAPI schema, found by `desired`'s `apiVersion` and
/// `kind`): a list with keys (containers by name, ports by port and protocol, ...) needs each
/// desired entry under its key, a set each desired member, whatever other managers added; an
/// atomic list must match whole, in order. Pure and cheap: no I/O, no allocation per field.
pub fn contains(live: &Value, desired: &Value) -> bool {
    contains_at(live, desired, list_types::of(desired))
}

/// The annotation on every child that holds a digest of what the operator last applied to it.
pub const ANNOTATION_APPLIED: &str = "resilient.dev/applied";

/// `desired` with a digest of itself in [`ANNOTATION_APPLIED`]. Containment alone cannot see a
/// field or list entry the operator stops setting (a removed env var, a dropped toleration): the
/// live object still holds it, and only an apply that leaves it out removes it. With the digest in
/// what is compared, any change to the desired object is a difference, and the apply that follows
/// removes what the operator no longer sets, while what others added still costs nothing.
pub fn stamped<K: Resource + Serialize + Clone>(desired: &K) -> Result<K, serde_json::Error> {
    let digest = ring::digest::digest(&ring::digest::SHA256, &serde_json::to_vec(desired)?);
    let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    let mut stamped = desired.clone();
    stamped.meta_mut().annotations.get_or_insert_default().insert(ANNOTATION_APPLIED.to_string(), hex);
    Ok(stamped)
}

/// [`contains`] at a point of the object whose list types are `node` (none: atomic lists).
fn contains_at(live: &Value, desired: &Value, node: Option<&Node>) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(k, w)| match have.get(k) {
            Some(h) => contains_at(h, w, node.and_then(|n| n.field(k))),
            None => is_empty(w),
        }),
        (Value::Array(want), Value::Array(have)) => {
            let items = node.and_then(Node::items);
            match node.map_or(&ListType::Atomic, Node::list) {
                ListType::Atomic => {
                    want.len() == have.len() && want.iter().zip(have).all(|(w, h)| contains_at(h, w, items))
                }
                ListType::Set | ListType::Entries => want.iter().all(|w| have.iter().any(|h| contains_at(h, w, items))),
                ListType::Map(keys) => {
                    want.iter().all(|w| have.iter().filter(|h| same_key(h, w, keys)).any(|h| contains_at(h, w, items)))
                }
            }
        }
        (want, Value::Null) => is_empty(want),
        (Value::String(w), Value::String(h)) => w == h || same_quantity(w, h),
        (Value::Number(w), Value::String(h)) | (Value::String(h), Value::Number(w)) => same_quantity(&w.to_string(), h),
        (want, have) => want == have,
    }
}

/// Whether a live entry of a keyed list is the desired entry: the same value in each key field,
/// with the server's default for a key an entry leaves out (a port's `protocol`).
fn same_key(live: &Value, desired: &Value, keys: &[Key]) -> bool {
    keys.iter().all(|k| match (k.of(desired), k.of(live)) {
        (Some(w), Some(h)) => contains_at(h, w, None),
        (w, h) => w == h,
    })
}

/// Values the API server drops on the way in (Go `omitempty`).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

/// "500m" == "0.5", "1Gi" == "1024Mi": the API server stores quantities in canonical form.
fn same_quantity(a: &str, b: &str) -> bool {
    // Only strings that start like numbers can be quantities; this keeps names and images out.
    let numeric = |s: &str| s.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '-' || c == '+');
    if !numeric(a) || !numeric(b) {
        return false;
    }
    match (ParsedQuantity::try_from(a), ParsedQuantity::try_from(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_are_not_drift() {
        let desired =
            json!({"spec": {"replicas": 6, "template": {"spec": {"containers": [{"name": "web", "image": "x"}]}}}});
        let live = json!({"spec": {"replicas": 6, "revisionHistoryLimit": 10, "template": {"spec": {
            "containers": [{"name": "web", "image": "x", "imagePullPolicy": "IfNotPresent"}], "dnsPolicy": "ClusterFirst"}}}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn changed_and_removed_fields_are_drift() {
        let desired = json!({"spec": {"replicas": 6, "topologySpreadConstraints": [{"maxSkew": 1}]}});
        assert!(!contains(&json!({"spec": {"replicas": 3, "topologySpreadConstraints": [{"maxSkew": 1}]}}), &desired));
        assert!(!contains(&json!({"spec": {"replicas": 6}}), &desired));
        assert!(!contains(&json!({"spec": {"replicas": 6, "topologySpreadConstraints": []}}), &desired));
        assert!(!contains(&json!({"spec": {"replicas": 6, "topologySpreadConstraints": [{"maxSkew": 2}]}}), &desired));
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(contains(&json!({"cpu": "500m"}), &json!({"cpu": "0.5"})));
        assert!(contains(&json!({"cpu": "5"}), &json!({"cpu": "5000m"})));
        assert!(contains(&json!({"memory": "1Gi"}), &json!({"memory": "1024Mi"})));
        assert!(contains(&json!({"pods": "10"}), &json!({"pods": 10})));
        assert!(!contains(&json!({"cpu": "501m"}), &json!({"cpu": "0.5"})));
        assert!(!contains(&json!({"image": "web:1"}), &json!({"image": "web:2"})));
    }

    #[test]
    fn empty_desired_values_match_absent_ones() {
        assert!(contains(&json!({"a": 1}), &json!({"a": 1, "args": [], "labels": {}})));
        assert!(!contains(&json!({"a": 1}), &json!({"a": 1, "args": ["x"]})));
    }

    /// A Deployment as the operator renders it: one container with an env entry and a port
    /// (protocol left to the server), two tolerations, some args.
    fn desired() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"resilient.dev/app": "shop"}},
            "spec": {"replicas": 3, "template": {"spec": {
                "containers": [{"name": "web", "image": "web:1", "args": ["serve", "--port=8080"],
                    "env": [{"name": "MODE", "value": "prod"}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"requests": {"cpu": "250m"}}}],
                "tolerations": [
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}],
                "topologySpreadConstraints": [
                    {"topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "maxSkew": 1},
                    {"topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "maxSkew": 1}]}}}})
    }

    /// `desired()` as the API server keeps it: defaults filled in, quantities canonical.
    fn live() -> Value {
        let mut live = desired();
        let pod = &mut live["spec"]["template"]["spec"];
        pod["dnsPolicy"] = json!("ClusterFirst");
        pod["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
        pod["containers"][0]["ports"][0]["protocol"] = json!("TCP");
        pod["containers"][0]["resources"]["requests"]["cpu"] = json!("0.25");
        live
    }

    fn pod(v: &mut Value) -> &mut Value {
        &mut v["spec"]["template"]["spec"]
    }

    #[test]
    fn live_as_the_server_keeps_it_is_in_sync() {
        assert!(contains(&live(), &desired()));
    }

    #[test]
    fn keyed_lists_ignore_entries_others_added_in_any_order() {
        let mut live = live();
        let containers = pod(&mut live)["containers"].as_array_mut().unwrap();
        // A sidecar injected before the operator's container.
        containers
            .insert(0, json!({"name": "proxy", "image": "proxy:2", "env": [{"name": "MODE", "value": "sidecar"}]}));
        let web = &mut containers[1];
        web["env"].as_array_mut().unwrap().insert(0, json!({"name": "INJECTED", "value": "1"}));
        web["ports"].as_array_mut().unwrap().push(json!({"name": "metrics", "containerPort": 9090, "protocol": "TCP"}));
        web["volumeMounts"] = json!([{"name": "certs", "mountPath": "/certs"}]);
        pod(&mut live)["volumes"] = json!([{"name": "certs", "emptyDir": {}}]);
        pod(&mut live)["topologySpreadConstraints"].as_array_mut().unwrap().reverse();
        assert!(contains(&live, &desired()));
    }

    #[test]
    fn keyed_lists_see_the_operators_entries_changed_or_removed() {
        let changed = |f: fn(&mut Value)| {
            let mut live = live();
            f(pod(&mut live));
            !contains(&live, &desired())
        };
        // The container, by name.
        assert!(changed(|p| p["containers"][0]["image"] = json!("web:2")));
        assert!(changed(|p| p["containers"][0]["name"] = json!("renamed")));
        assert!(changed(|p| p["containers"] = json!([{"name": "proxy", "image": "proxy:2"}])));
        // containers[].env by name: a changed value, a removed entry.
        assert!(changed(|p| p["containers"][0]["env"][0]["value"] = json!("dev")));
        assert!(changed(|p| p["containers"][0]["env"] = json!([{"name": "OTHER", "value": "prod"}])));
        // containers[].ports by containerPort and protocol (protocol defaulted by the server).
        assert!(changed(|p| p["containers"][0]["ports"][0]["protocol"] = json!("UDP")));
        assert!(changed(|p| p["containers"][0]["ports"][0]["containerPort"] = json!(8081)));
        assert!(changed(|p| p["containers"][0]["ports"][0]["name"] = json!("web")));
        // topologySpreadConstraints by topologyKey and whenUnsatisfiable.
        assert!(changed(|p| p["topologySpreadConstraints"][0]["whenUnsatisfiable"] = json!("ScheduleAnyway")));
        assert!(changed(|p| p["topologySpreadConstraints"][0]["maxSkew"] = json!(2)));
    }

    #[test]
    fn a_keyed_entry_matches_by_key_not_by_content() {
        // Two live ports 8080, TCP and UDP: the desired TCP one must be the TCP entry.
        let desired = json!({"apiVersion": "v1", "kind": "Service", "spec": {"ports": [
            {"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 8080}]}});
        let live = json!({"apiVersion": "v1", "kind": "Service", "spec": {"ports": [
            {"name": "http", "port": 8080, "protocol": "UDP", "targetPort": 8080},
            {"name": "other", "port": 8080, "protocol": "TCP", "targetPort": 8080}]}});
        assert!(!contains(&live, &desired));
        let live = json!({"apiVersion": "v1", "kind": "Service", "spec": {"ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 8080}]}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn atomic_lists_compare_whole_and_in_order() {
        let changed = |args: Value| {
            let mut live = live();
            pod(&mut live)["containers"][0]["args"] = args;
            !contains(&live, &desired())
        };
        assert!(!changed(json!(["serve", "--port=8080"])));
        assert!(changed(json!(["serve", "--port=8080", "--debug"])));
        assert!(changed(json!(["--port=8080", "serve"])));
        assert!(changed(json!(["serve"])));
    }

    #[test]
    fn sets_need_the_operators_members_only() {
        let desired = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"finalizers": ["a", "b"]}});
        let live = |f: Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"finalizers": f}});
        assert!(contains(&live(json!(["c", "b", "a"])), &desired));
        assert!(!contains(&live(json!(["a", "c"])), &desired));
    }

    #[test]
    fn tolerations_others_add_are_ignored_but_the_operators_are_put_back() {
        let with = |f: fn(&mut Vec<Value>)| {
            let mut live = live();
            f(pod(&mut live)["tolerations"].as_array_mut().unwrap());
            contains(&live, &desired())
        };
        assert!(with(
            |t| t.insert(0, json!({"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}))
        ));
        assert!(with(|t| t.reverse()));
        assert!(!with(|t| {
            t.remove(1);
        }));
        assert!(!with(|t| t[0]["tolerationSeconds"] = json!(300)));
    }

    #[test]
    fn lists_of_kinds_the_table_lacks_are_atomic() {
        let desired = json!({"apiVersion": "example.com/v1", "kind": "Thing", "spec": {"items": [{"name": "a"}]}});
        let live = |items: Value| json!({"apiVersion": "example.com/v1", "kind": "Thing", "spec": {"items": items}});
        assert!(contains(&live(json!([{"name": "a", "defaulted": 1}])), &desired));
        assert!(!contains(&live(json!([{"name": "b"}, {"name": "a"}])), &desired));
    }

    #[test]
    fn the_digest_changes_with_anything_the_operator_sets_and_only_then() {
        use k8s_openapi::api::apps::v1::Deployment;
        let mut desired: Deployment = serde_json::from_value(desired()).unwrap();
        let digest = |d: &Deployment| stamped(d).unwrap().metadata.annotations.unwrap()[ANNOTATION_APPLIED].clone();
        let first = digest(&desired);
        assert_eq!(first.len(), 32);
        assert_eq!(digest(&desired), first, "the digest is stable");
        let live = serde_json::to_value(stamped(&desired).unwrap()).unwrap();
        assert_eq!(live["metadata"]["labels"], json!({"resilient.dev/app": "shop"}));
        // An env var the operator no longer sets: the live object still contains the rest, and
        // only the digest tells.
        desired.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].env = None;
        assert!(contains(&live, &serde_json::to_value(&desired).unwrap()));
        assert!(!contains(&live, &serde_json::to_value(stamped(&desired).unwrap()).unwrap()));
        assert_ne!(digest(&desired), first);
    }
}
