//! "Did anything change?", answered without a write: is everything the operator wants already in
//! the live object? The API server adds defaults and canonicalizes quantities, so the question is
//! containment with quantity-aware equality, not equality.

use kube_quantity::ParsedQuantity;
use serde_json::Value;

/// True when `live` already holds every field of `desired` with the same value.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(k, w)| match have.get(k) {
            Some(h) => contains(h, w),
            None => is_empty(w),
        }),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| contains(h, w))
        }
        (want, Value::Null) => is_empty(want),
        (Value::String(w), Value::String(h)) => w == h || same_quantity(w, h),
        (Value::Number(w), Value::String(h)) | (Value::String(h), Value::Number(w)) => same_quantity(&w.to_string(), h),
        (want, have) => want == have,
    }
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
}
