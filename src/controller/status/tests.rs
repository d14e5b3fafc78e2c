use super::*;
use crate::api::ResilientAppSpec;
use crate::controller::gate::{Blocked, Validated};
use crate::render::Warning;
use k8s_openapi::api::core::v1::{Node, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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

fn observed(pods: Vec<Arc<Pod>>) -> Observed {
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|z| Node {
            metadata: ObjectMeta {
                name: Some(format!("node-{z}")),
                labels: Some([(crate::api::ZONE_LABEL.to_string(), format!("zone-{z}"))].into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    Observed { deployments: HashMap::new(), pods, node_zones: ZoneMap::of(&nodes), ..Default::default() }
}

fn ok(a: &ResilientApp, zones: &[String]) -> Gate {
    Ok(Validated { plan: Plan::for_zones(a, zones), warnings: vec![], create_namespace: false, adopting: false })
}

/// The outcome of one pass that wrote `writes` changes, from an empty previous status.
fn outcome(a: &ResilientApp, gate: &Gate, obs: &Observed, writes: usize) -> Outcome {
    let pass = Pass {
        app: a,
        gate,
        observed: obs,
        writes,
        rebalanced: Rebalanced::Nothing,
        attempt: 0,
        failed_over: None,
        failover_in: None,
    };
    compute(&pass, &ResilientAppStatus::default(), &t(1), Duration::from_secs(300))
}

fn t(secs: i64) -> Time {
    Time(jiff::Timestamp::from_second(secs).unwrap())
}

fn cond(o: &Outcome, t: ConditionType) -> Option<&Condition> {
    find(&o.status.conditions, t)
}

#[test]
fn even_spread_is_tolerant() {
    let a = app(4);
    let pods = ["a", "a", "b", "b", "c", "c"].iter().map(|n| pod(&format!("node-{n}"), true)).collect();
    let o = outcome(&a, &ok(&a, &zones()), &observed(pods), 0);
    let web = &o.status.components[0];
    assert_eq!((web.replicas, web.ready_replicas, web.ready_after_worst_zone_loss), (6, 6, 4));
    assert_eq!(web.ready_by_zone["zone-b"], 2);
    assert_eq!(cond(&o, ConditionType::Ready).unwrap().status, "True");
    let zft = cond(&o, ConditionType::ZoneFailureTolerant).unwrap();
    assert_eq!(zft.status, "True", "{zft:?}");
    assert_eq!(o.status.zones, zones());
}

#[test]
fn lopsided_placement_is_at_risk_and_says_which_zone() {
    let a = app(4);
    let pods = ["a", "b", "b", "b", "c", "c"].iter().map(|n| pod(&format!("node-{n}"), true)).collect();
    let o = outcome(&a, &ok(&a, &zones()), &observed(pods), 0);
    let zft = cond(&o, ConditionType::ZoneFailureTolerant).unwrap();
    assert_eq!((zft.status.as_str(), zft.reason.as_str()), ("False", "PlacementAtRisk"));
    assert_eq!(zft.message, "web: losing zone-b would leave 3 ready pods, minAvailable is 4");
    // Availability now is fine.
    assert_eq!(cond(&o, ConditionType::Ready).unwrap().status, "True");
}

#[test]
fn unready_and_terminating_pods_do_not_count() {
    let a = app(4);
    let mut terminating = (*pod("node-a", true)).clone();
    terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    let pods = vec![pod("node-a", false), Arc::new(terminating), pod("node-b", true), pod("node-c", true)];
    let o = outcome(&a, &ok(&a, &zones()), &observed(pods), 0);
    assert_eq!(o.status.components[0].ready_replicas, 2);
    let ready = cond(&o, ConditionType::Ready).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "MinAvailableNotMet"));
    assert_eq!(ready.message, "web: 2 of minAvailable 4 ready");
    assert_eq!(cond(&o, ConditionType::Reconciling).unwrap().reason, "Progressing");
}

#[test]
fn too_few_zones_is_reported() {
    let a = app(2);
    let z = vec!["zone-a".to_string()];
    let o = outcome(&a, &ok(&a, &z), &observed(vec![]), 0);
    assert_eq!(o.status.components[0].replicas, 3);
    let zft = cond(&o, ConditionType::ZoneFailureTolerant).unwrap();
    assert_eq!((zft.status.as_str(), zft.reason.as_str()), ("False", "InsufficientZones"));
    assert!(zft.message.starts_with("1 zone is usable (zone-a)"), "{}", zft.message);
}

#[test]
fn blockers_stall_and_never_reconcile() {
    let a = app(2);
    let gate = Err(Blocked { plan: Plan::for_zones(&a, &zones()), why: Blocker::NamespaceConflict("taken".into()) });
    let o = outcome(&a, &gate, &observed(vec![]), 0);
    let stalled = cond(&o, ConditionType::Stalled).unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "NamespaceConflict"));
    assert!(cond(&o, ConditionType::Reconciling).is_none());
    assert_eq!(cond(&o, ConditionType::Ready).unwrap().status, "False");
    // The plan is still reported.
    assert_eq!(o.status.components[0].replicas, 3);
    // A new app that is stalled says so in an Event at once.
    assert_eq!(o.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), ["NamespaceConflict"]);
}

#[test]
fn waiting_reconciles_without_stalling() {
    let a = app(2);
    let gate = Err(Blocked { plan: Plan::for_zones(&a, &zones()), why: Blocker::Waiting("namespace going".into()) });
    let o = outcome(&a, &gate, &observed(vec![]), 0);
    let r = cond(&o, ConditionType::Reconciling).unwrap();
    assert_eq!((r.reason.as_str(), r.message.as_str()), ("Waiting", "namespace going"));
    assert!(cond(&o, ConditionType::Stalled).is_none());
    assert!(o.events.is_empty());
}

#[test]
fn writes_mean_applying() {
    let a = app(2);
    let pods = ["a", "b", "c"].iter().map(|n| pod(&format!("node-{n}"), true)).collect();
    let o = outcome(&a, &ok(&a, &zones()), &observed(pods), 2);
    let r = cond(&o, ConditionType::Reconciling).unwrap();
    assert_eq!((r.reason.as_str(), r.message.as_str()), ("Applying", "applied 2 changes to the cluster"));
}

#[test]
fn the_requeue_is_chosen_in_one_place() {
    let a = app(2);
    let obs = observed(vec![]);
    let plan = Plan::for_zones(&a, &zones());
    let resync = Duration::from_secs(300);
    let action = |gate: &Gate, rebalanced: Rebalanced| {
        requeue(
            &Pass {
                app: &a,
                gate,
                observed: &obs,
                writes: 0,
                rebalanced,
                attempt: 3,
                failed_over: None,
                failover_in: None,
            },
            resync,
        )
    };
    let blocked = |why| Err(Blocked { plan: plan.clone(), why });
    assert_eq!(action(&blocked(Blocker::InvalidSpec(vec![])), Rebalanced::Nothing), Action::await_change());
    assert_eq!(
        action(&blocked(Blocker::QuotaTooSmall("q".into())), Rebalanced::Nothing),
        Action::requeue(STALLED_RETRY)
    );
    assert_eq!(
        action(&blocked(Blocker::NamespaceConflict("n".into())), Rebalanced::Nothing),
        Action::requeue(STALLED_RETRY)
    );
    assert_eq!(action(&blocked(Blocker::Waiting("w".into())), Rebalanced::Nothing), Action::requeue(WAITING_RETRY));
    assert_eq!(
        action(&blocked(Blocker::NamespaceStuck("s".into())), Rebalanced::Nothing),
        Action::requeue(STALLED_RETRY)
    );
    // A rejected write backs off with the number of consecutive rejections (3 here).
    assert_eq!(
        action(&blocked(Blocker::Rejected("r".into())), Rebalanced::Nothing),
        Action::requeue(Duration::from_secs(4))
    );
    assert_eq!(action(&ok(&a, &zones()), Rebalanced::Moved("moved".into())), Action::requeue(REBALANCE_RETRY));
    // An eviction refused for now (the PodDisruptionBudget's counters lag): no event may follow,
    // so the pass is not left to wait for one.
    assert_eq!(action(&ok(&a, &zones()), Rebalanced::Refused), Action::requeue(REBALANCE_RETRY));
    // In sync: nothing requeued, the resync sweep comes back to it.
    assert_eq!(action(&ok(&a, &zones()), Rebalanced::Nothing), Action::await_change());
    assert!(parked(&blocked(Blocker::InvalidSpec(vec![]))) && parked(&blocked(Blocker::ForbiddenField(vec![]))));
    assert!(!parked(&blocked(Blocker::QuotaTooSmall("q".into()))) && !parked(&ok(&a, &zones())));
    // A zone down everywhere for less than failoverSeconds: look again when it will be time.
    let gate = ok(&a, &zones());
    let soon = Pass {
        app: &a,
        gate: &gate,
        observed: &obs,
        writes: 0,
        rebalanced: Rebalanced::Nothing,
        attempt: 0,
        failed_over: None,
        failover_in: Some(Duration::from_secs(12)),
    };
    assert_eq!(requeue(&soon, resync), Action::requeue(Duration::from_secs(12)));
}

#[test]
fn rebalancing_only_in_a_settled_pass() {
    let mut a = app(2);
    let good = ok(&a, &zones());
    assert!(may_rebalance(&a, &good, 0));
    assert!(!may_rebalance(&a, &good, 1), "not in a pass that wrote");
    let mut fallback = Plan::for_zones(&a, &zones());
    fallback.no_usable_zones = true;
    assert!(!may_rebalance(
        &a,
        &Ok(Validated { plan: fallback, warnings: vec![], create_namespace: false, adopting: false }),
        0
    ));
    let waiting = Err(Blocked { plan: Plan::for_zones(&a, &zones()), why: Blocker::Waiting("w".into()) });
    assert!(!may_rebalance(&a, &waiting, 0));
    a.spec.resilience.rebalance = false;
    assert!(!may_rebalance(&a, &good, 0));
}

fn c(type_: ConditionType, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.as_str().into(),
        status: status.into(),
        reason: reason.into(),
        message: format!("{reason} message"),
        observed_generation: None,
        last_transition_time: t(1),
    }
}

fn reasons(events: &[Notice]) -> Vec<(EventType, &str)> {
    events.iter().map(|e| (e.type_, e.reason.as_str())).collect()
}

#[test]
fn transitions_publish_flips_not_steady_states() {
    use ConditionType::*;
    let ready = c(Ready, "True", "MinAvailableMet");
    let tolerant = c(ZoneFailureTolerant, "True", "ZoneLossSurvivable");
    // Nothing changed: no Event.
    assert!(transitions(&[ready.clone(), tolerant.clone()], &[ready.clone(), tolerant.clone()], &[]).is_empty());
    // A new app's first status is not a transition.
    assert!(transitions(&[], &[ready.clone(), tolerant.clone()], &[]).is_empty());
    // Losing availability and tolerance: two warnings; getting them back: two normal Events.
    let down = [c(Ready, "False", "MinAvailableNotMet"), c(ZoneFailureTolerant, "False", "PlacementAtRisk")];
    assert_eq!(
        reasons(&transitions(&[ready.clone(), tolerant.clone()], &down, &[])),
        [(EventType::Warning, "PlacementAtRisk"), (EventType::Warning, "MinAvailableNotMet")]
    );
    assert_eq!(
        reasons(&transitions(&down, &[ready.clone(), tolerant.clone()], &[])),
        [(EventType::Normal, "ZoneLossSurvivable"), (EventType::Normal, "MinAvailableMet")]
    );
    // A changed reason with the same status is a transition too.
    let other = c(ZoneFailureTolerant, "False", "InsufficientZones");
    assert_eq!(reasons(&transitions(&[down[1].clone()], &[other], &[])), [(EventType::Warning, "InsufficientZones")]);
    // Stalled is reported even on the first status.
    let stalled = c(Stalled, "True", "QuotaTooSmall");
    assert_eq!(reasons(&transitions(&[], &[stalled], &[])), [(EventType::Warning, "QuotaTooSmall")]);
    // A quota warning once: not again while the Ready message already carries it.
    let w = [Warning { reason: "QuotaNoSurgeRoom", message: "spec.quota.pods leaves no room".into() }];
    assert_eq!(reasons(&transitions(&[], &[], &w)), [(EventType::Warning, "QuotaNoSurgeRoom")]);
    let mut with_warning = ready.clone();
    with_warning.message = format!("ok; warning: {}", w[0].message);
    assert!(transitions(&[with_warning.clone()], &[with_warning], &w).is_empty());
}

#[test]
fn a_rebalance_is_an_event_and_a_quick_look_again() {
    let a = app(2);
    let gate = ok(&a, &zones());
    let obs = observed(vec![]);
    let pass = Pass {
        app: &a,
        gate: &gate,
        observed: &obs,
        writes: 0,
        rebalanced: Rebalanced::Moved("web: evicted p".into()),
        attempt: 0,
        failed_over: None,
        failover_in: None,
    };
    let o = compute(&pass, &ResilientAppStatus::default(), &t(1), Duration::from_secs(300));
    assert_eq!(o.events[0].reason, "Rebalanced");
    assert_eq!(o.events[0].note, "web: evicted p");
    assert_eq!(o.action, Action::requeue(REBALANCE_RETRY));
}

#[test]
fn a_rejected_write_stalls_with_the_api_servers_message() {
    let a = app(2);
    let why = Blocker::Rejected("applying Deployment web: denied by policy no-web".into());
    let gate = Err(Blocked { plan: Plan::for_zones(&a, &zones()), why });
    let o = outcome(&a, &gate, &observed(vec![]), 0);
    let stalled = cond(&o, ConditionType::Stalled).unwrap();
    assert_eq!(stalled.reason, "Rejected");
    assert!(stalled.message.contains("denied by policy no-web"));
    assert!(cond(&o, ConditionType::Reconciling).is_none());
    assert_eq!(cond(&o, ConditionType::Ready).unwrap().status, "False");
}

#[test]
fn an_undecodable_app_is_stalled_and_keeps_transition_times() {
    let first = undecodable(&ResilientAppStatus::default(), Some(1), "cannot read", &t(10));
    assert_eq!(find(&first.conditions, ConditionType::Stalled).unwrap().reason, "InvalidObject");
    let again = undecodable(&first, Some(1), "cannot read", &t(20));
    assert_eq!(again, first, "nothing changed: no second write");
}

fn placeholder(node: Option<&str>) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: ObjectMeta {
            labels: Some([(crate::render::LABEL_PLACEHOLDER_FOR.to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec { node_name: node.map(str::to_string), ..Default::default() }),
        ..Default::default()
    })
}

#[test]
fn failover_capacity_reserved_names_the_zone_and_what_is_pending() {
    let mut a = app(4);
    let pods: Vec<Arc<Pod>> = ["a", "a", "b", "b", "c", "c"].iter().map(|n| pod(&format!("node-{n}"), true)).collect();
    // Off: no such condition.
    let o = outcome(&a, &ok(&a, &zones()), &observed(pods.clone()), 0);
    assert!(cond(&o, ConditionType::FailoverCapacityReserved).is_none());
    a.spec.resilience.reserve_capacity = true;
    // 2 placeholders per zone wanted; zone-b has one, the other is Pending.
    let mut with = pods.clone();
    with.extend(["node-a", "node-a", "node-b", "node-c", "node-c"].map(|n| placeholder(Some(n))));
    with.push(placeholder(None));
    let o = outcome(&a, &ok(&a, &zones()), &observed(with.clone()), 0);
    let c = cond(&o, ConditionType::FailoverCapacityReserved).unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "PlaceholdersPending"));
    assert_eq!(c.message, "zone-b: 1 of 2 placeholders for web (100m CPU and 128Mi memory each) Pending");
    // All scheduled: True, and a recovery Event when it flips.
    with.pop();
    with.push(placeholder(Some("node-b")));
    let pass = Pass {
        app: &a,
        gate: &ok(&a, &zones()),
        observed: &observed(with),
        writes: 0,
        rebalanced: Rebalanced::Nothing,
        attempt: 0,
        failed_over: None,
        failover_in: None,
    };
    let next = compute(&pass, &o.status, &t(2), Duration::from_secs(300));
    let c = cond(&next, ConditionType::FailoverCapacityReserved).unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "CapacityReserved"), "{}", c.message);
    assert!(next.events.iter().any(|e| e.reason == "CapacityReserved" && e.type_ == EventType::Normal));
}

#[test]
fn stateful_components_say_they_get_no_replacements() {
    let spec: ResilientAppSpec = serde_json::from_value(serde_json::json!({
        "components": [{"name": "web", "image": "x", "minAvailable": 2, "ports": [{"containerPort": 80}],
                        "volumeClaims": [{"name": "data", "size": "1Gi", "mountPath": "/data"}]}]
    }))
    .unwrap();
    let a = ResilientApp::new("shop", spec);
    let pods = ["a", "b", "c"].iter().map(|n| pod(&format!("node-{n}"), true)).collect();
    let o = outcome(&a, &ok(&a, &zones()), &observed(pods), 0);
    let zft = cond(&o, ConditionType::ZoneFailureTolerant).unwrap();
    assert_eq!(zft.status, "True");
    assert!(zft.message.ends_with("; web: replacements 0 (zonal volumes)"), "{}", zft.message);
}

#[test]
fn an_autoscaled_component_reports_the_live_replicas() {
    let mut a = app(4);
    let deployment = |replicas: Option<i32>| {
        Arc::new(Deployment {
            spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec { replicas, ..Default::default() }),
            ..Default::default()
        })
    };
    let plan = Plan::for_zones(&a, &zones());
    let mut obs = observed(vec![]);
    obs.deployments.insert("web".into(), deployment(Some(11)));
    // Without autoscaling the plan is what runs (a drifted count is put back).
    assert_eq!(component_statuses(&a, &plan, &obs)[0].replicas, 6);
    a.spec.components[0].autoscaling = Some(serde_json::from_value(serde_json::json!({"maxReplicas": 20})).unwrap());
    assert_eq!(component_statuses(&a, &plan, &obs)[0].replicas, 11);
    // Before the Deployment exists: the floor it starts with.
    obs.deployments.clear();
    assert_eq!(component_statuses(&a, &plan, &obs)[0].replicas, 6);
}

#[test]
fn max_replicas_below_the_floor_is_stalled_with_both_numbers() {
    let mut a = app(4);
    a.spec.components[0].autoscaling = Some(serde_json::from_value(serde_json::json!({"maxReplicas": 5})).unwrap());
    let gate =
        crate::controller::gate::gate(&a, Plan::for_zones(&a, &zones()), None, &Time(jiff::Timestamp::UNIX_EPOCH));
    let out = outcome(&a, &gate, &observed(vec![]), 0);
    let stalled = find(&out.status.conditions, ConditionType::Stalled).expect("Stalled");
    assert_eq!(stalled.reason, "InvalidSpec");
    assert!(stalled.message.contains("maxReplicas 5 is below the zone-survival floor 6"), "{}", stalled.message);
}
