use super::*;
use crate::api::ResilientAppSpec;
use crate::render::replica_plans;
use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

fn app(min_available: i32) -> ResilientApp {
    let spec: ResilientAppSpec = serde_json::from_value(serde_json::json!({
        "components": [{"name": "web", "image": "x", "minAvailable": min_available}]
    }))
    .unwrap();
    ResilientApp::new("shop", spec)
}

fn pod(node: &str, ready: bool) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: ObjectMeta {
            labels: Some([(LABEL_COMPONENT.to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec { node_name: Some(node.into()), ..Default::default() }),
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    })
}

fn zones() -> Vec<String> {
    vec!["zone-a".into(), "zone-b".into(), "zone-c".into()]
}

fn observed<'a>(zones: &'a [String], plans: &'a BTreeMap<String, ReplicaPlan>, pods: Vec<Arc<Pod>>) -> Observed<'a> {
    let node_zones = ["a", "b", "c"].iter().map(|z| (format!("node-{z}"), format!("zone-{z}"))).collect();
    Observed { zones, plans, deployments: HashMap::new(), pods, node_zones }
}

fn cond(c: &Conditions, t: ConditionType) -> Option<&(ConditionType, bool, String, String)> {
    c.wanted.iter().find(|(ty, ..)| *ty == t)
}

#[test]
fn even_spread_is_tolerant() {
    let a = app(4);
    let z = zones();
    let plans = replica_plans(&a, &z);
    let pods = ["a", "a", "b", "b", "c", "c"].iter().map(|n| pod(&format!("node-{n}"), true)).collect();
    let obs = observed(&z, &plans, pods);
    let comps = component_statuses(&a, &obs);
    assert_eq!(comps[0].ready_replicas, 6);
    assert_eq!(comps[0].ready_after_worst_zone_loss, 4);
    assert_eq!(comps[0].ready_by_zone["zone-b"], 2);
    let c = conditions(&a, &obs, &comps, &PassOutcome::default());
    assert!(cond(&c, ConditionType::Ready).unwrap().1);
    let zft = cond(&c, ConditionType::ZoneFailureTolerant).unwrap();
    assert!(zft.1, "{zft:?}");
}

#[test]
fn lopsided_placement_is_at_risk_and_says_which_zone() {
    let a = app(4);
    let z = zones();
    let plans = replica_plans(&a, &z);
    let pods = ["a", "b", "b", "b", "c", "c"].iter().map(|n| pod(&format!("node-{n}"), true)).collect();
    let obs = observed(&z, &plans, pods);
    let comps = component_statuses(&a, &obs);
    let c = conditions(&a, &obs, &comps, &PassOutcome::default());
    let (_, status, reason, message) = cond(&c, ConditionType::ZoneFailureTolerant).unwrap();
    assert!(!status);
    assert_eq!(reason, "PlacementAtRisk");
    assert_eq!(message, "web: losing zone-b would leave 3 ready pods, minAvailable is 4");
    // Availability now is fine.
    assert!(cond(&c, ConditionType::Ready).unwrap().1);
}

#[test]
fn unready_and_terminating_pods_do_not_count() {
    let a = app(4);
    let z = zones();
    let plans = replica_plans(&a, &z);
    let mut terminating = (*pod("node-a", true)).clone();
    terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    let pods = vec![pod("node-a", false), Arc::new(terminating), pod("node-b", true), pod("node-c", true)];
    let obs = observed(&z, &plans, pods);
    let comps = component_statuses(&a, &obs);
    assert_eq!(comps[0].ready_replicas, 2);
    let c = conditions(&a, &obs, &comps, &PassOutcome::default());
    let (_, ready, reason, message) = cond(&c, ConditionType::Ready).unwrap();
    assert!(!ready);
    assert_eq!(reason, "MinAvailableNotMet");
    assert_eq!(message, "web: 2 of minAvailable 4 ready");
    assert!(cond(&c, ConditionType::Reconciling).unwrap().1);
}

#[test]
fn too_few_zones_is_reported() {
    let a = app(2);
    let z = vec!["zone-a".to_string()];
    let plans = replica_plans(&a, &z);
    assert_eq!(plans["web"].replicas, 3);
    let obs = observed(&z, &plans, vec![]);
    let comps = component_statuses(&a, &obs);
    let c = conditions(&a, &obs, &comps, &PassOutcome::default());
    let (_, status, reason, message) = cond(&c, ConditionType::ZoneFailureTolerant).unwrap();
    assert!(!status);
    assert_eq!(reason, "InsufficientZones");
    assert!(message.starts_with("1 zone is usable (zone-a)"), "{message}");
}

#[test]
fn blockers_stall_and_never_reconcile() {
    let a = app(2);
    let z = zones();
    let plans = replica_plans(&a, &z);
    let obs = observed(&z, &plans, vec![]);
    let comps = component_statuses(&a, &obs);
    let outcome = PassOutcome { blocker: Some(Blocker::NamespaceConflict("taken".into())), ..Default::default() };
    let c = conditions(&a, &obs, &comps, &outcome);
    let stalled = cond(&c, ConditionType::Stalled).unwrap();
    assert!(stalled.1);
    assert_eq!(stalled.2, "NamespaceConflict");
    assert!(cond(&c, ConditionType::Reconciling).is_none());
    assert!(!cond(&c, ConditionType::Ready).unwrap().1);
}
