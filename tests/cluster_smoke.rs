//! The local control plane is real: the scheduler spreads a plain Deployment across the three
//! zones, and when a zone goes dark the node lifecycle controller taints its nodes, the pods are
//! evicted and replaced in the surviving zones.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

/// Brings the zone back even when an assertion fails half-way.
struct ZoneGuard(&'static str);
impl Drop for ZoneGuard {
    fn drop(&mut self) {
        cluster_sh(&["zone-up", self.0]);
    }
}

/// Running, not-terminating pods by zone, and the number of Pending pods.
async fn placement(client: &Client, ns: &str) -> (BTreeMap<String, usize>, usize) {
    let zones = node_zones(client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut by_zone = BTreeMap::new();
    let mut pending = 0;
    for pod in pods.list(&ListParams::default()).await.unwrap() {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        match phase.as_str() {
            "Running" => {
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                *by_zone.entry(zones.get(&node).cloned().unwrap_or_default()).or_insert(0) += 1;
            }
            "Pending" => pending += 1,
            _ => {}
        }
    }
    (by_zone, pending)
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_spreads_and_a_lost_zone_is_replaced() {
    let client = client().await;
    let ns = unique("smoke");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    wait_for("the default ServiceAccount", Duration::from_secs(60), || async { sas.get_opt("default").await.ok()? })
        .await;

    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "spread"},
        "spec": {
            "replicas": 6,
            "selector": {"matchLabels": {"app": "spread"}},
            "template": {
                "metadata": {"labels": {"app": "spread"}},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.example/app:1"}],
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule", "nodeTaintsPolicy": "Honor",
                        "labelSelector": {"matchLabels": {"app": "spread"}}
                    }],
                    "tolerations": [
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
                    ]
                }
            }
        }
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments.create(&PostParams::default(), &deployment).await.unwrap();

    let spread = wait_for("6 pods Running, 2 per zone", Duration::from_secs(90), || async {
        let (by_zone, _) = placement(&client, &ns).await;
        (by_zone.values().sum::<usize>() == 6).then_some(by_zone)
    })
    .await;
    assert_eq!(spread, BTreeMap::from([("zone-a".into(), 2), ("zone-b".into(), 2), ("zone-c".into(), 2)]));

    cluster_sh(&["zone-down", "zone-a"]);
    let guard = ZoneGuard("zone-a");
    let (by_zone, pending) =
        wait_for("replacements Running in zone-b and zone-c", Duration::from_secs(150), || async {
            let (by_zone, pending) = placement(&client, &ns).await;
            let outside_a: usize = by_zone.iter().filter(|(z, _)| z.as_str() != "zone-a").map(|(_, n)| n).sum();
            (outside_a == 6).then_some((by_zone, pending))
        })
        .await;
    assert_eq!(by_zone, BTreeMap::from([("zone-b".into(), 3), ("zone-c".into(), 3)]));
    assert_eq!(pending, 0, "no replacement may stay Pending");

    drop(guard); // zone-up waits until the zone's nodes are Ready again
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default().labels("topology.kubernetes.io/zone=zone-a")).await.unwrap() {
        let name = node.name_any();
        let ready = node.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True", "{name} is not Ready after zone-up");
    }
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
}
