use super::*;
use crate::api::ResilientAppSpec;
use k8s_openapi::api::core::v1::{
    NodeCondition, NodeSpec, NodeStatus, PodCondition, PodSpec, PodStatus, ResourceQuotaStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn node(name: &str, zone: &str, cpu: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("topology.kubernetes.io/zone".to_string(), zone.to_string())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(
                [("cpu", cpu), ("memory", "32Gi"), ("pods", "110")]
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .into(),
            ),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn pod(name: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            labels: Some(
                [("resilient.dev/app", "shop"), ("resilient.dev/component", "web")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec { node_name: Some(node.into()), ..Default::default() }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() }]),
            ..Default::default()
        }),
    }
}

fn app() -> ResilientApp {
    let spec: ResilientAppSpec = serde_json::from_value(serde_json::json!({
        "components": [{"name": "web", "image": "x", "minAvailable": 4,
                        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1"}}}]
    }))
    .unwrap();
    ResilientApp::new("shop", spec)
}

fn cluster(cpu_b: &str) -> (Vec<Node>, Vec<Pod>) {
    let nodes = vec![node("na", "zone-a", "8"), node("nb", "zone-b", cpu_b), node("nc", "zone-c", "8")];
    let pods =
        ["na", "na", "nb", "nb", "nc", "nc"].iter().enumerate().map(|(i, n)| pod(&format!("web-{i}"), n)).collect();
    (nodes, pods)
}

#[test]
fn losing_one_zone_of_an_even_spread_keeps_the_guarantee() {
    let (nodes, pods) = cluster("8");
    let apps = [app()];
    let lost = ["zone-a".to_string()];
    let report = simulate(&SimulationInput { apps: &apps, nodes: &nodes, pods: &pods, quotas: &[], lost_zones: &lost });
    let c = &report.components[0];
    assert_eq!((c.ready_now, c.ready_after_loss, c.guarantee_holds), (6, 4, true));
    // Two zones left: the operator runs 8 replicas, 4 per zone, so 4 new pods.
    assert_eq!((c.replicas_after, c.replacements, c.replacements_fit), (8, 4, true));
    assert!(report.all_hold());
    assert_eq!(report.surviving_zones, ["zone-b", "zone-c"]);
    assert!(table(&report).contains("1 of 1 components keep minAvailable"));
}

#[test]
fn losing_two_zones_breaks_it_and_says_why() {
    let (nodes, pods) = cluster("8");
    let apps = [app()];
    let lost = ["zone-a".to_string(), "zone-b".to_string()];
    let report = simulate(&SimulationInput { apps: &apps, nodes: &nodes, pods: &pods, quotas: &[], lost_zones: &lost });
    let c = &report.components[0];
    assert_eq!((c.ready_after_loss, c.guarantee_holds), (2, false));
    assert!(!report.all_hold());
    assert!(c.notes.iter().any(|n| n.contains("no longer tolerates")));
}

#[test]
fn no_room_in_a_surviving_zone_is_reported() {
    // zone-b's node has 2.5 CPUs: its two pods use 2, so two more of 1 CPU do not fit.
    let (nodes, mut pods) = cluster("2500m");
    for p in &mut pods {
        p.spec.as_mut().unwrap().containers = vec![k8s_openapi::api::core::v1::Container {
            name: "web".into(),
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: Some([("cpu".to_string(), Quantity("1".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }];
    }
    let apps = [app()];
    let lost = ["zone-a".to_string()];
    let report = simulate(&SimulationInput { apps: &apps, nodes: &nodes, pods: &pods, quotas: &[], lost_zones: &lost });
    let c = &report.components[0];
    assert!(c.guarantee_holds, "what is left still holds");
    assert!(!c.replacements_fit);
    assert!(c.notes.iter().any(|n| n.starts_with("zone-b has no node with room")), "{:?}", c.notes);
}

#[test]
fn quota_headroom_is_checked() {
    let (nodes, pods) = cluster("8");
    let quota = ResourceQuota {
        metadata: ObjectMeta { name: Some("q".into()), namespace: Some("shop".into()), ..Default::default() },
        status: Some(ResourceQuotaStatus {
            hard: Some([("pods".to_string(), Quantity("8".into()))].into()),
            used: Some([("pods".to_string(), Quantity("6".into()))].into()),
        }),
        ..Default::default()
    };
    let apps = [app()];
    let lost = ["zone-a".to_string()];
    let quotas = [quota];
    let report =
        simulate(&SimulationInput { apps: &apps, nodes: &nodes, pods: &pods, quotas: &quotas, lost_zones: &lost });
    let c = &report.components[0];
    assert!(!c.replacements_fit);
    assert!(c.notes.iter().any(|n| n.contains("quota pods")), "{:?}", c.notes);
}

#[test]
fn a_component_is_simulated_over_the_zones_its_pod_template_allows() {
    // web may only run on pool=x nodes, in zone-a and zone-b; zone-c has room but is not its zone.
    let (mut nodes, _) = cluster("8");
    for n in &mut nodes[..2] {
        n.metadata.labels.as_mut().unwrap().insert("pool".into(), "x".into());
    }
    let pods: Vec<Pod> =
        ["na", "na", "nb", "nb"].iter().enumerate().map(|(i, n)| pod(&format!("web-{i}"), n)).collect();
    let mut a = app();
    a.spec.components[0].min_available = 2;
    a.spec.components[0].pod_template =
        Some(serde_json::from_value(serde_json::json!({"spec": {"nodeSelector": {"pool": "x"}}})).unwrap());
    let apps = [a];
    // Losing zone-c changes nothing for web.
    let lost_c = ["zone-c".to_string()];
    let report =
        simulate(&SimulationInput { apps: &apps, nodes: &nodes, pods: &pods, quotas: &[], lost_zones: &lost_c });
    let c = &report.components[0];
    assert_eq!((c.ready_after_loss, c.replicas_after, c.replacements), (4, 4, 0));
    // Losing zone-a leaves web one zone: best effort m + f = 3 replicas, one new pod, all in zone-b.
    let lost_a = ["zone-a".to_string()];
    let report =
        simulate(&SimulationInput { apps: &apps, nodes: &nodes, pods: &pods, quotas: &[], lost_zones: &lost_a });
    let c = &report.components[0];
    assert_eq!((c.ready_after_loss, c.guarantee_holds), (2, true));
    assert_eq!((c.replicas_after, c.replacements, c.replacements_fit), (3, 1, true));
    assert!(c.notes.iter().any(|n| n.contains("with 1 zone(s) left")), "{:?}", c.notes);
}

#[test]
fn a_stateful_component_gets_no_replacements() {
    let (nodes, pods) = cluster("8");
    let mut a = app();
    a.spec.components[0].volume_claims =
        vec![serde_json::from_value(serde_json::json!({"name": "data", "size": "1Gi", "mountPath": "/data"})).unwrap()];
    let apps = [a];
    let lost = ["zone-a".to_string()];
    let report = simulate(&SimulationInput { apps: &apps, nodes: &nodes, pods: &pods, quotas: &[], lost_zones: &lost });
    let c = &report.components[0];
    assert_eq!((c.ready_after_loss, c.guarantee_holds), (4, true));
    assert_eq!((c.replicas_after, c.replacements, c.replacements_fit), (6, 0, true));
    assert!(c.notes[0].starts_with("replacements 0 (zonal volumes)"));
    assert!(table(&report).contains("0 (zonal volumes)"), "{}", table(&report));
}

#[test]
fn placeholders_make_room_for_replacements() {
    // zone-b's node has 3 CPUs: its two pods use 2; two placeholders of 0.5 CPU hold the rest.
    let (nodes, mut pods) = cluster("3");
    let cpu = |c: &str| {
        vec![k8s_openapi::api::core::v1::Container {
            name: "x".into(),
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: Some([("cpu".to_string(), Quantity(c.into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }]
    };
    for p in &mut pods {
        p.spec.as_mut().unwrap().containers = cpu("1");
    }
    for i in 0..2 {
        let mut ph = pod(&format!("ph-{i}"), "nb");
        ph.metadata.labels = Some([(crate::render::LABEL_PLACEHOLDER_FOR.to_string(), "web".to_string())].into());
        ph.spec.as_mut().unwrap().containers = cpu("500m");
        pods.push(ph);
    }
    let mut a = app();
    a.spec.resilience.reserve_capacity = true;
    let apps = [a];
    let lost = ["zone-a".to_string()];
    let report = simulate(&SimulationInput { apps: &apps, nodes: &nodes, pods: &pods, quotas: &[], lost_zones: &lost });
    let c = &report.components[0];
    // Two replacements of 1 CPU each in zone-b: only one fits the 1 CPU the placeholders hold.
    assert!(!c.replacements_fit, "{:?}", c.notes);
    // With 4 CPUs the placeholders' room makes it fit, and only that room.
    let (mut nodes, _) = cluster("4");
    nodes[1] = node("nb", "zone-b", "4");
    for p in pods.iter_mut().filter(|p| p.name_any().starts_with("ph-")) {
        p.spec.as_mut().unwrap().containers = cpu("1");
    }
    let report = simulate(&SimulationInput { apps: &apps, nodes: &nodes, pods: &pods, quotas: &[], lost_zones: &lost });
    let c = &report.components[0];
    assert_eq!((c.replacements_fit, c.replacements_fit_without_reservation), (true, Some(false)), "{:?}", c.notes);
    assert!(table(&report).contains("yes (reserved)"));
}

#[test]
fn an_autoscaled_component_reports_its_live_count_and_keeps_it_through_a_loss() {
    let (nodes, pods) = cluster("8");
    let mut autoscaled = app();
    autoscaled.spec.components[0].autoscaling =
        Some(serde_json::from_value(serde_json::json!({"maxReplicas": 12})).unwrap());
    let lost = ["zone-a".to_string()];
    let report_for = |live: i32| {
        let mut a = autoscaled.clone();
        a.status = Some(crate::api::ResilientAppStatus {
            components: vec![crate::api::ComponentStatus { name: "web".into(), replicas: live, ..Default::default() }],
            ..Default::default()
        });
        simulate(&SimulationInput { apps: &[a], nodes: &nodes, pods: &pods, quotas: &[], lost_zones: &lost })
    };
    // The autoscaler runs 6, the floor for two zones is 8: the operator raises minReplicas to 8.
    let report = report_for(6);
    let c = &report.components[0];
    assert_eq!((c.replicas_now, c.replicas_after, c.replacements), (6, 8, 4));
    assert!(c.notes.iter().any(|n| n.contains("minReplicas to 8")), "{:?}", c.notes);
    // The autoscaler runs 10 (more than the floor): all 10 stay, 5 per surviving zone.
    let report = report_for(10);
    let c = &report.components[0];
    assert_eq!((c.replicas_now, c.replicas_after, c.replacements), (10, 10, 6));
    assert!(table(&report).contains("REPLICAS NOW"));
}
