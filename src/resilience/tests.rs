use super::*;
use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proptest::prelude::*;

#[test]
fn api_md_examples() {
    // minAvailable 4, one zone lost out of three: 6 replicas, 2 per zone.
    assert_eq!(replicas_for(4, 3, 1), Some(6));
    // Two zones, one lost: everything must fit in one zone.
    assert_eq!(replicas_for(4, 2, 1), Some(8));
    // Three zones, two lost: one zone must hold all of minAvailable.
    assert_eq!(replicas_for(4, 3, 2), Some(12));
    // No failure tolerated: minAvailable is enough.
    assert_eq!(replicas_for(4, 3, 0), Some(4));
    assert_eq!(replicas_for(1, 3, 1), Some(2));
    assert_eq!(replicas_for(5, 3, 1), Some(8));
    assert_eq!(replicas_for(3, 4, 1), Some(4));
    // Not enough zones: no answer.
    assert_eq!(replicas_for(4, 1, 1), None);
    assert_eq!(replicas_for(4, 2, 2), None);
    assert_eq!(replicas_for(4, 0, 0), None);
}

#[test]
fn plan_reports_explicit_shortfall_without_changing_it() {
    assert_eq!(
        plan_replicas(Some(5), 4, 3, 1),
        ReplicaPlan { replicas: 5, shortfall: Some(Shortfall::TooFewReplicas { replicas: 5, needed: 6 }) }
    );
    assert_eq!(plan_replicas(Some(9), 4, 3, 1), ReplicaPlan { replicas: 9, shortfall: None });
    // Found by the property test: more replicas can keep less (ceil steps up at 280 over 3 zones).
    assert_eq!(
        plan_replicas(Some(280), 93, 3, 2),
        ReplicaPlan { replicas: 280, shortfall: Some(Shortfall::TooFewReplicas { replicas: 280, needed: 281 }) }
    );
    assert_eq!(plan_replicas(Some(279), 93, 3, 2), ReplicaPlan { replicas: 279, shortfall: None });
    assert_eq!(plan_replicas(None, 4, 3, 1), ReplicaPlan { replicas: 6, shortfall: None });
    assert_eq!(
        plan_replicas(None, 4, 1, 1),
        ReplicaPlan { replicas: 5, shortfall: Some(Shortfall::InsufficientZones { zones: 1, tolerated: 1 }) }
    );
}

#[test]
fn worst_zone_loss_takes_the_fullest_zones() {
    let by_zone: BTreeMap<String, i32> = [("a", 3), ("b", 1), ("c", 2)].map(|(z, n)| (z.to_string(), n)).into();
    assert_eq!(ready_after_worst_zone_loss(&by_zone, 0), 6);
    assert_eq!(ready_after_worst_zone_loss(&by_zone, 1), 3);
    assert_eq!(ready_after_worst_zone_loss(&by_zone, 2), 1);
    assert_eq!(ready_after_worst_zone_loss(&by_zone, 3), 0);
    assert_eq!(ready_after_worst_zone_loss(&BTreeMap::new(), 1), 0);
}

fn node(zone: Option<&str>, ready: bool, unschedulable: bool, taint: Option<&str>) -> Node {
    Node {
        metadata: ObjectMeta {
            labels: zone.map(|z| [(ZONE_LABEL.to_string(), z.to_string())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            unschedulable: Some(unschedulable),
            taints: taint.map(|effect| {
                vec![Taint {
                    key: "node.kubernetes.io/unreachable".into(),
                    effect: effect.into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "Unknown" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

#[test]
fn usable_zones_need_a_ready_schedulable_untainted_node() {
    let nodes = vec![
        node(Some("zone-a"), true, false, None),
        node(Some("zone-a"), false, false, None),
        node(Some("zone-b"), false, false, None),
        node(Some("zone-c"), true, true, None),
        node(Some("zone-d"), true, false, Some("NoExecute")),
        node(Some("zone-e"), true, false, Some("PreferNoSchedule")),
        node(None, true, false, None),
    ];
    assert_eq!(usable_zones(&nodes, &[]), vec!["zone-a", "zone-e"]);
    assert_eq!(usable_zones(&nodes, &["zone-e".to_string(), "zone-b".to_string()]), vec!["zone-e"]);
}

/// Place `replicas` as evenly as possible (max skew 1) over `zones` zones.
fn even_spread(replicas: i32, zones: usize) -> BTreeMap<String, i32> {
    (0..zones)
        .map(|i| {
            let base = replicas / zones as i32;
            let extra = i32::from((i as i32) < replicas % zones as i32);
            (format!("zone-{i}"), base + extra)
        })
        .collect()
}

/// The smallest r keeping the guarantee, by trying every count from m on (the definition).
fn smallest_by_search(m: i32, zones: usize, f: u8) -> Option<i32> {
    (zones > f as usize).then(|| (m..).find(|&r| guaranteed_after_zone_loss(r, zones, f) >= m).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Up to the CRD's maximums: the closed form is exactly the smallest count, and fast.
    #[test]
    fn replicas_up_to_the_crd_maximum_are_minimal_and_quick(
        m in 1i32..=crate::api::MAX_REPLICAS, zones in 0usize..=16, f in 0u8..=2,
    ) {
        let started = std::time::Instant::now();
        let r = replicas_for(m, zones, f);
        let took = started.elapsed();
        prop_assert!(took < std::time::Duration::from_millis(50), "replicas_for({m}, {zones}, {f}) took {took:?}");
        prop_assert_eq!(r, smallest_by_search(m, zones, f));
        // An explicit count at the maximum is checked without overflow or a long search.
        let started = std::time::Instant::now();
        let plan = plan_replicas(Some(crate::api::MAX_REPLICAS), m, zones, f);
        prop_assert!(started.elapsed() < std::time::Duration::from_millis(50));
        prop_assert_eq!(plan.replicas, crate::api::MAX_REPLICAS);
    }

    #[test]
    fn computed_replicas_keep_the_guarantee_and_are_minimal(m in 1i32..200, zones in 0usize..8, f in 0u8..=2) {
        match replicas_for(m, zones, f) {
            None => prop_assert!(zones <= f as usize),
            Some(r) => {
                prop_assert!(zones > f as usize);
                // The guarantee holds for the worst even spread...
                prop_assert!(ready_after_worst_zone_loss(&even_spread(r, zones), f) >= m);
                prop_assert!(guaranteed_after_zone_loss(r, zones, f) >= m);
                // ...and one replica less breaks it.
                prop_assert!(guaranteed_after_zone_loss(r - 1, zones, f) < m);
                prop_assert!(ready_after_worst_zone_loss(&even_spread(r - 1, zones), f) < m);
            }
        }
    }

    #[test]
    fn explicit_replicas_are_never_changed(r in 1i32..300, m in 1i32..100, zones in 0usize..6, f in 0u8..=2) {
        let plan = plan_replicas(Some(r), m, zones, f);
        prop_assert_eq!(plan.replicas, r);
        prop_assert_eq!(plan.shortfall.is_none(), guaranteed_after_zone_loss(r, zones, f) >= m && zones > f as usize);
    }
}

fn node_down(name: &str, zone: &str, down_at: Option<i64>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(ZONE_LABEL.to_string(), zone.to_string())].into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if down_at.is_some() { "Unknown" } else { "True" }.into(),
                last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::from_second(down_at.unwrap_or(0)).unwrap(),
                )),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_zone_fails_over_once_all_its_nodes_are_down_for_long_enough() {
    let at = |s| jiff::Timestamp::from_second(s).unwrap();
    let thirty = std::time::Duration::from_secs(30);
    // zone-a: both nodes down, the last one since t=110; b and c up.
    let nodes = [
        node_down("a1", "zone-a", Some(100)),
        node_down("a2", "zone-a", Some(110)),
        node_down("b1", "zone-b", None),
        node_down("c1", "zone-c", None),
    ];
    assert!(zone_failover(&nodes, &[], at(139), thirty).0.is_empty(), "not yet: a2 is down for 29 s only");
    assert_eq!(
        zone_failover(&nodes, &[], at(125), thirty).1,
        Some(std::time::Duration::from_secs(15)),
        "look again then"
    );
    assert_eq!(zone_failover(&nodes, &[], at(140), thirty).0, ["zone-a"]);
    // A zone with one node still up is only partly disrupted: never.
    let partial =
        [node_down("a1", "zone-a", Some(0)), node_down("a2", "zone-a", None), node_down("b1", "zone-b", None)];
    assert!(zone_failover(&partial, &[], at(1000), thirty).0.is_empty());
    // Every zone down: never (the control plane, not the zones, is the likely problem).
    let all = [node_down("a1", "zone-a", Some(0)), node_down("b1", "zone-b", Some(0))];
    assert!(zone_failover(&all, &[], at(1000), thirty).0.is_empty());
    // Only the allowed zones count: with b not allowed, a and c decide.
    let allowed = ["zone-a".to_string(), "zone-c".to_string()];
    assert_eq!(zone_failover(&nodes, &allowed, at(140), thirty).0, ["zone-a"]);
    let only_a = ["zone-a".to_string()];
    assert!(zone_failover(&nodes, &only_a, at(1000), thirty).0.is_empty(), "no other allowed zone is up");
}

/// A Ready node in `zone` with these labels and taints (`key=value:Effect` or `key:Effect`).
fn labelled_node(name: &str, zone: &str, labels: &[(&str, &str)], taints: &[&str]) -> Node {
    let mut n = node(Some(zone), true, false, None);
    n.metadata.name = Some(name.into());
    n.metadata.labels.as_mut().unwrap().extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    n.spec.as_mut().unwrap().taints = Some(
        taints
            .iter()
            .map(|t| {
                let (kv, effect) = t.split_once(':').unwrap();
                let (key, value) = kv.split_once('=').map_or((kv, None), |(k, v)| (k, Some(v.to_string())));
                Taint { key: key.into(), value, effect: effect.into(), ..Default::default() }
            })
            .collect(),
    );
    n
}

fn constraints(template: serde_json::Value) -> NodeConstraints {
    NodeConstraints::of(Some(&serde_json::from_value(template).unwrap()))
}

#[test]
fn tolerations_follow_kubernetes_matching() {
    let taint = |key: &str, value: Option<&str>, effect: &str| Taint {
        key: key.into(),
        value: value.map(Into::into),
        effect: effect.into(),
        ..Default::default()
    };
    let t = |json: serde_json::Value| serde_json::from_value::<k8s_openapi::api::core::v1::Toleration>(json).unwrap();
    let gpu = taint("gpu", Some("yes"), "NoSchedule");
    assert!(tolerates(&t(serde_json::json!({"key": "gpu", "value": "yes"})), &gpu), "Equal is the default");
    assert!(!tolerates(&t(serde_json::json!({"key": "gpu", "value": "no"})), &gpu));
    assert!(tolerates(&t(serde_json::json!({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"})), &gpu));
    assert!(!tolerates(&t(serde_json::json!({"key": "gpu", "operator": "Exists", "effect": "NoExecute"})), &gpu));
    assert!(tolerates(&t(serde_json::json!({"operator": "Exists"})), &gpu), "an empty key with Exists tolerates all");
    assert!(!tolerates(&t(serde_json::json!({"operator": "Equal"})), &gpu));
}

#[test]
fn a_component_uses_the_zones_its_pod_template_allows() {
    let nodes = vec![
        labelled_node("a-1", "zone-a", &[("disk", "ssd"), ("gen", "5")], &[]),
        labelled_node("b-1", "zone-b", &[("disk", "ssd"), ("gen", "3")], &[]),
        labelled_node("c-1", "zone-c", &[("disk", "hdd")], &[]),
        labelled_node("c-2", "zone-c", &[("disk", "ssd")], &["dedicated=batch:NoSchedule"]),
        labelled_node("d-1", "zone-d", &[("disk", "ssd")], &["node.kubernetes.io/unreachable:NoExecute"]),
    ];
    let zones = |c: &NodeConstraints| component_zones(&nodes, &[], c);
    assert_eq!(zones(&NodeConstraints::default()), ["zone-a", "zone-b", "zone-c"]);
    // nodeSelector: zone-c's only ssd node is tainted, zone-d's is down.
    let ssd = constraints(serde_json::json!({"spec": {"nodeSelector": {"disk": "ssd"}}}));
    assert_eq!(zones(&ssd), ["zone-a", "zone-b"]);
    // Tolerating the taint brings zone-c back; nothing makes a lost node usable.
    let batch = constraints(serde_json::json!({"spec": {"nodeSelector": {"disk": "ssd"}, "tolerations": [
        {"key": "dedicated", "operator": "Exists"}, {"operator": "Exists"}]}}));
    assert_eq!(zones(&batch), ["zone-a", "zone-b", "zone-c"]);
    // Required affinity: terms ORed, expressions ANDed, Gt compares integers, matchFields by name.
    let affinity = |terms: serde_json::Value| {
        constraints(serde_json::json!({"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}}))
    };
    let newer =
        affinity(serde_json::json!([{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}]));
    assert_eq!(zones(&newer), ["zone-a"]);
    let either = affinity(serde_json::json!([
        {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c-1"]}]}
    ]));
    assert_eq!(zones(&either), ["zone-a", "zone-c"]);
    let not_hdd = affinity(serde_json::json!([{"matchExpressions": [
        {"key": "disk", "operator": "NotIn", "values": ["hdd"]}, {"key": "gen", "operator": "Exists"}]}]));
    assert_eq!(zones(&not_hdd), ["zone-a", "zone-b"]);
    // The allow-list still applies.
    assert_eq!(component_zones(&nodes, &["zone-b".into(), "zone-c".into()], &ssd), ["zone-b"]);
}

#[test]
fn app_zones_are_planned_per_component() {
    let nodes = [
        labelled_node("a-1", "zone-a", &[("pool", "x")], &[]),
        labelled_node("b-1", "zone-b", &[("pool", "x")], &[]),
        labelled_node("c-1", "zone-c", &[], &[]),
    ];
    let refs: Vec<&Node> = nodes.iter().collect();
    let app: ResilientApp = serde_json::from_value(serde_json::json!({
        "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "metadata": {"name": "a"},
        "spec": {"components": [
            {"name": "web", "image": "x", "minAvailable": 4},
            {"name": "pinned", "image": "x", "minAvailable": 4, "podTemplate": {"spec": {"nodeSelector": {"pool": "x"}}}}
        ]}
    }))
    .unwrap();
    let planned = plan_app_zones(&refs, &app, None);
    assert_eq!(planned.zones, ["zone-a", "zone-b", "zone-c"]);
    assert_eq!(planned.components.keys().collect::<Vec<_>>(), ["pinned"]);
    assert_eq!(planned.components["pinned"], ["zone-a", "zone-b"]);
    // Every zone down: each component keeps the zones last reported for it.
    let down: Vec<Node> = nodes
        .iter()
        .cloned()
        .map(|mut n| {
            n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "Unknown".into();
            n
        })
        .collect();
    let down_refs: Vec<&Node> = down.iter().collect();
    let last = crate::api::ResilientAppStatus {
        zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
        components: vec![crate::api::ComponentStatus {
            name: "pinned".into(),
            zones: vec!["zone-b".into(), "zone-c".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let planned = plan_app_zones(&down_refs, &app, Some(&last));
    assert!(planned.no_usable_zones);
    assert_eq!(planned.components["pinned"], ["zone-b", "zone-c"]);
}

#[test]
fn placeholders_cover_what_a_surviving_zone_receives_in_the_worst_loss() {
    // minAvailable 4 over 3 zones: 6 replicas, 2 per zone; losing one, 8 over 2 zones: 4 per zone.
    assert_eq!(placeholders_per_zone(None, 4, 6, 3, 1), 2);
    // minAvailable 2: 3 replicas, 1 per zone; after the loss 4 over 2 zones: 2 per zone.
    assert_eq!(placeholders_per_zone(None, 2, 3, 3, 1), 1);
    // Uneven: 7 explicit replicas over 3 zones (2 or 3 per zone), the same 7 over 2 zones
    // afterwards: a zone holding 2 may have to take up to 4.
    assert_eq!(placeholders_per_zone(Some(7), 4, 7, 3, 1), 2);
    // Two zones tolerated out of three: one zone must take everything (best effort m + f = 6).
    assert_eq!(placeholders_per_zone(None, 4, 12, 3, 2), 2);
    // Nothing tolerated, or no zone would survive: nothing to reserve.
    assert_eq!(placeholders_per_zone(None, 4, 4, 3, 0), 0);
    assert_eq!(placeholders_per_zone(None, 4, 5, 1, 1), 0);
    assert_eq!(placeholders_per_zone(None, 4, 0, 3, 1), 0);
}

proptest! {
    /// Whatever the counts, a surviving zone never receives more replacements than it reserves.
    #[test]
    fn reservation_covers_every_single_zone_loss(m in 1i32..40, z in 2usize..6) {
        let r = replicas_for(m, z, 1).unwrap();
        let per_zone = placeholders_per_zone(None, m, r, z, 1);
        let after = plan_replicas(None, m, z - 1, 1).replicas;
        // Any placement with skew <= 1 before and after: the emptiest zone before may become the
        // fullest one after.
        let most_after = crate::resilience::even_spread(after, z - 1).max().unwrap();
        let least_before = crate::resilience::even_spread(r, z).min().unwrap();
        let received = most_after - least_before;
        prop_assert!(per_zone >= received.max(0));
        prop_assert!(per_zone >= 0);
    }
}

#[test]
fn a_lost_zone_stays_known_for_stateful_components() {
    let nodes = [
        node(Some("zone-a"), true, false, None),
        node(Some("zone-b"), false, false, Some("NoExecute")),
        node(Some("zone-c"), true, false, None),
    ];
    let planned = plan_zones(&nodes, &[], &[]);
    assert_eq!(planned.zones, ["zone-a", "zone-c"]);
    assert_eq!(planned.known, ["zone-a", "zone-b", "zone-c"]);
    // The allow-list filters known zones too.
    let allowed = plan_zones(&nodes, &["zone-a".to_string(), "zone-b".to_string()], &[]);
    assert_eq!(allowed.known, ["zone-a", "zone-b"]);
}
