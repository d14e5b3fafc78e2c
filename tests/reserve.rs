//! `resilience.reserveCapacity` on the real scheduler: three small kwok nodes in zones of their
//! own, nearly filled by pods that may not preempt. Without a reservation the replacements of a
//! lost zone stay Pending; with it, placeholder pods hold their room, the replacements preempt
//! them and run, and `FailoverCapacityReserved` says whether every placeholder is scheduled.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use resilient_operator::api::ResilientApp;
use serde_json::{Value, json};

const ZONES: [&str; 3] = ["rz-a", "rz-b", "rz-c"];
const FILLER_CLASS: &str = "reserve-test-no-preemption";

/// Brings a zone back even when an assertion fails half-way.
struct ZoneGuard(&'static str);
impl Drop for ZoneGuard {
    fn drop(&mut self) {
        cluster_sh(&["zone-up", self.0]);
    }
}

/// Removes the test's nodes, filler namespace and app even when it fails.
struct Cleanup {
    nodes: Vec<String>,
    fillers: String,
    app: String,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "resilientapp", &self.app, "--ignore-not-found", "--wait=false"], None);
        let _ = kubectl(&["delete", "namespace", &self.fillers, "--ignore-not-found", "--wait=false"], None);
        for n in &self.nodes {
            let _ = kubectl(&["delete", "node", n, "--ignore-not-found", "--wait=false"], None);
        }
        let _ = kubectl(&["delete", "priorityclass", FILLER_CLASS, "--ignore-not-found", "--wait=false"], None);
    }
}

/// A kwok node with 1 CPU, managed (heartbeats) by the cluster's kwok.
fn small_node(name: &str, zone: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kwok.x-k8s.io/managed": "true", "type": "kwok",
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/region": "region-1", "topology.kubernetes.io/zone": zone,
            }
        },
        "spec": {"providerID": format!("kwok://{name}")},
        "status": {
            "capacity": {"cpu": "1", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "1", "memory": "4Gi", "pods": "110"},
        }
    }))
    .unwrap()
}

fn app(name: &str, reserve: bool) -> Value {
    json!({
        "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp",
        "metadata": {"name": name},
        "spec": {
            "deletionPolicy": "Delete",
            "resilience": {"zones": ZONES, "failoverSeconds": 10, "reserveCapacity": reserve},
            "components": [{
                "name": "web", "image": "registry.example/web:1", "minAvailable": 2,
                "ports": [{"name": "http", "containerPort": 8080}],
                "resources": {"requests": {"cpu": "300m", "memory": "64Mi"}, "limits": {"cpu": "300m", "memory": "64Mi"}}
            }]
        }
    })
}

/// One pod per node that may not preempt anything (its PriorityClass says Never), taking `cpu`.
async fn fill(client: &Client, ns: &str, nodes: &[String], cpu: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for node in nodes {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("filler-{node}"), "labels": {"filler": "true"}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "priorityClassName": FILLER_CLASS,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "filler", "image": "registry.example/filler:1",
                                "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]
            }
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.expect("creating a filler pod");
    }
    wait_for_seen("the filler pods to run", Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default().labels("filler=true")).await.map_err(|e| e.to_string())?;
        if list.items.len() == nodes.len() && list.items.iter().all(resilient_operator::resilience::pod_ready) {
            return Ok(());
        }
        // What else takes the nodes' room.
        let mut on_nodes = Vec::new();
        for node in nodes {
            let fields = format!("spec.nodeName={node}");
            let here = Api::<Pod>::all(client.clone()).list(&ListParams::default().fields(&fields)).await;
            let names: Vec<String> = here
                .map(|l| l.items)
                .unwrap_or_default()
                .iter()
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            on_nodes.push(format!("{node}: {names:?}"));
        }
        Err(format!(
            "{} filler pods, ready: {}; pods on the nodes: {}",
            list.items.len(),
            list.items.iter().filter(|p| resilient_operator::resilience::pod_ready(p)).count(),
            on_nodes.join("; ")
        ))
    })
    .await;
}

async fn unfill(client: &Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _ = pods.delete_collection(&DeleteParams::default().grace_period(0), &ListParams::default()).await;
    wait_for("the filler pods to be gone", Duration::from_secs(60), || async {
        pods.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
}

/// The app's component pods (placeholders left out): ready by zone, and how many are unscheduled.
async fn web_pods(
    client: &Client,
    ns: &str,
    zones: &std::collections::HashMap<String, String>,
) -> (BTreeMap<String, i32>, i32) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (mut ready, mut pending) = (BTreeMap::new(), 0);
    for p in pods.list(&ListParams::default().labels("resilient.dev/component=web")).await.unwrap() {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match p.spec.as_ref().and_then(|s| s.node_name.as_ref()).and_then(|n| zones.get(n)) {
            None => pending += 1,
            Some(z) if resilient_operator::resilience::pod_ready(&p) => *ready.entry(z.clone()).or_insert(0) += 1,
            Some(_) => {}
        }
    }
    (ready, pending)
}

fn reserved(app: &ResilientApp) -> Option<(String, String, String)> {
    let c = condition(app.status.as_ref()?, "FailoverCapacityReserved")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread")]
async fn replacements_preempt_the_reservation_and_stay_pending_without_it() {
    let client = setup().await;
    let name = unique("reserve");
    let fillers = format!("{name}-fillers");
    let node_names: Vec<String> = ZONES.iter().map(|z| format!("{name}-{z}")).collect();
    let _cleanup = Cleanup { nodes: node_names.clone(), fillers: fillers.clone(), app: name.clone() };
    let nodes: Api<Node> = Api::all(client.clone());
    for (n, z) in node_names.iter().zip(ZONES) {
        nodes.create(&PostParams::default(), &small_node(n, z)).await.expect("creating a small kwok node");
    }
    let _ = kubectl(
        &[
            "create",
            "priorityclass",
            FILLER_CLASS,
            "--value=0",
            "--preemption-policy=Never",
            "--description=reserve test fillers",
        ],
        None,
    );
    let _ = kubectl(&["create", "namespace", &fillers], None);
    let zones = node_zones(&client).await;
    wait_for("the small nodes to be Ready", Duration::from_secs(60), || async {
        let all = node_names.iter().all(|n| zones.contains_key(n));
        let ready = futures::future::join_all(node_names.iter().map(|n| nodes.get(n))).await.into_iter().all(|n| {
            n.ok()
                .and_then(|n| n.status?.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        (all && ready).then_some(())
    })
    .await;

    // No reservation; every node keeps 100m free besides the app's own pod.
    apply_app(&client, &app(&name, false)).await;
    wait_status(&client, &name, "Ready with one pod per zone", Duration::from_secs(90), |s| {
        is_true(s, "Ready") && s.components[0].ready_replicas == 3
    })
    .await;
    fill(&client, &fillers, &node_names, "600m").await;
    let predicted = simulate_component("rz-a", &name);
    assert_eq!(
        (predicted["replicasAfter"].as_i64(), predicted["replacementsFit"].as_bool()),
        (Some(4), Some(false)),
        "{predicted}"
    );

    let outage = Instant::now();
    cluster_sh(&["zone-down", "rz-a"]);
    let guard = ZoneGuard("rz-a");
    // The node grace period (20 s) and failoverSeconds (10 s) pass; the replacements find no room.
    let (ready, pending) = wait_for("replacements Pending in rz-b and rz-c", Duration::from_secs(90), || async {
        let (ready, pending) = web_pods(&client, &name, &zones).await;
        (outage.elapsed() > Duration::from_secs(45) && pending >= 1 && !ready.contains_key("rz-a"))
            .then_some((ready, pending))
    })
    .await;
    eprintln!("without a reservation, {:?} after the outage: ready {ready:?}, {pending} Pending", outage.elapsed());
    assert_eq!(ready, BTreeMap::from([("rz-b".into(), 1), ("rz-c".into(), 1)]), "nothing was replaced");
    drop(guard);
    wait_for("one ready pod per zone again, none Pending", Duration::from_secs(120), || async {
        let (ready, pending) = web_pods(&client, &name, &zones).await;
        (pending == 0 && ready == BTreeMap::from([("rz-a".into(), 1), ("rz-b".into(), 1), ("rz-c".into(), 1)]))
            .then_some(())
    })
    .await;

    // Reserve capacity: the fillers hold the room, so the placeholders cannot schedule.
    apply_app(&client, &app(&name, true)).await;
    let pending = wait_for("FailoverCapacityReserved False naming the zones", Duration::from_secs(60), || async {
        let app = Api::<ResilientApp>::all(client.clone()).get(&name).await.ok()?;
        reserved(&app).filter(|(s, ..)| s == "False")
    })
    .await;
    assert_eq!(pending.1, "PlaceholdersPending");
    for z in ZONES {
        assert!(
            pending.2.contains(&format!("{z}: 1 of 1 placeholders for web (300m CPU and 64Mi memory each) Pending")),
            "{}",
            pending.2
        );
    }

    // Room again: the placeholders schedule; fillers that may not preempt take only what is left.
    unfill(&client, &fillers).await;
    let held = wait_for("FailoverCapacityReserved True", Duration::from_secs(60), || async {
        let app = Api::<ResilientApp>::all(client.clone()).get(&name).await.ok()?;
        reserved(&app).filter(|(s, ..)| s == "True")
    })
    .await;
    assert_eq!(held.1, "CapacityReserved", "{held:?}");
    fill(&client, &fillers, &node_names, "400m").await;
    assert_in_sync_costs_no_writes(&client, &name).await;
    let predicted = simulate_component("rz-a", &name);
    assert_eq!(predicted["replacementsFit"], true, "{predicted}");
    assert_eq!(predicted["replacementsFitWithoutReservation"], false, "{predicted}");

    let outage = Instant::now();
    cluster_sh(&["zone-down", "rz-a"]);
    let guard = ZoneGuard("rz-a");
    let took = wait_for("4 replicas ready in rz-b and rz-c", Duration::from_secs(90), || async {
        let (ready, pending) = web_pods(&client, &name, &zones).await;
        (pending == 0 && ready == BTreeMap::from([("rz-b".into(), 2), ("rz-c".into(), 2)])).then(|| outage.elapsed())
    })
    .await;
    eprintln!("with the reservation: every replacement Running {took:?} after the zone went dark");
    // Node monitor grace period (20 s locally) + failoverSeconds (10 s) + scheduling.
    assert!(took < Duration::from_secs(20 + 10 + 30), "replacements took {took:?}");
    let events: Api<Event> = Api::namespaced(client.clone(), &name);
    let preempted = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Preempted"))
        .count();
    assert!(preempted >= 1, "the replacements preempted placeholders");
    let during = wait_for("FailoverCapacityReserved False during the outage", Duration::from_secs(30), || async {
        let app = Api::<ResilientApp>::all(client.clone()).get(&name).await.ok()?;
        reserved(&app).filter(|(s, ..)| s == "False")
    })
    .await;
    eprintln!("during the outage: {during:?}");
    drop(guard);
}
