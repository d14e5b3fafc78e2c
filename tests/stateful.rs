//! Stateful components on zonal volumes, on the real scheduler and controller manager: a
//! StorageClass that waits for the first consumer, static local PersistentVolumes pinned to one
//! kwok node each, a zone outage that keeps minAvailable with zero replacements, and the same pods
//! back on the same volumes when the zone returns; deletionPolicy Retain keeps the claims.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Event, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota, Service,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use resilient_operator::api::ResilientApp;
use serde_json::{Value, json};

const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

/// Brings a zone back even when an assertion fails half-way.
struct ZoneGuard(&'static str);
impl Drop for ZoneGuard {
    fn drop(&mut self) {
        cluster_sh(&["zone-up", self.0]);
    }
}

/// Deletes the app's namespace, StorageClass and volumes of a test even when it fails (the
/// namespace and the class are named like the app).
struct StorageGuard {
    class: String,
    volumes: Vec<String>,
}
impl Drop for StorageGuard {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "resilientapp", &self.class, "--ignore-not-found", "--wait=false"], None);
        let _ = kubectl(&["delete", "namespace", &self.class, "--ignore-not-found", "--wait=false"], None);
        let _ = kubectl(&["delete", "storageclass", &self.class, "--ignore-not-found", "--wait=false"], None);
        for pv in &self.volumes {
            let _ = kubectl(&["delete", "pv", pv, "--ignore-not-found", "--wait=false"], None);
        }
    }
}

/// A WaitForFirstConsumer class without a provisioner, and one local volume per kwok node of the
/// three zones, each pinned to its node.
async fn local_storage(client: &Client, class: &str, nodes: &HashMap<String, String>) -> StorageGuard {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let sc: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": class},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }))
    .unwrap();
    classes.create(&PostParams::default(), &sc).await.expect("creating the StorageClass");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let mut volumes = Vec::new();
    for (node, zone) in nodes.iter().filter(|(_, z)| ZONES.contains(&z.as_str())) {
        let name = format!("{class}-{node}");
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": class,
                "local": {"path": format!("/mnt/{class}")},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                ]}]}},
            }
        }))
        .unwrap();
        pvs.create(&PostParams::default(), &pv).await.expect("creating a local PersistentVolume");
        volumes.push(name);
    }
    StorageGuard { class: class.to_string(), volumes }
}

fn app(name: &str, class: &str) -> Value {
    json!({
        "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp",
        "metadata": {"name": name},
        "spec": {
            "deletionPolicy": "Retain",
            "resilience": {"zones": ZONES},
            "components": [{
                "name": "db", "image": "registry.example/db:1", "minAvailable": 2,
                "ports": [{"name": "sql", "containerPort": 5432}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "volumeClaims": [{"name": "data", "size": "1Gi", "storageClassName": class, "mountPath": "/var/lib/db"}]
            }]
        }
    })
}

/// Per pod of the namespace: (uid, node, ready, terminating).
async fn pods_of(client: &Client, ns: &str) -> BTreeMap<String, (String, String, bool, bool)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let ready = resilient_operator::resilience::pod_ready(&p);
            let terminating = p.metadata.deletion_timestamp.is_some();
            (p.name_any(), (p.uid().unwrap_or_default(), node, ready, terminating))
        })
        .collect()
}

/// What a timed-out wait needs to be understood from a CI log alone: the namespace's pods (node,
/// phase, conditions, deletion), the lost node's taints and the namespace's latest Events, on one
/// line each.
fn cluster_state(ns: &str, node: &str) -> String {
    let out = |args: &[&str]| {
        let o = kubectl(args, None);
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let pods = out(&[
        "get",
        "pods",
        "-n",
        ns,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} uid={.metadata.uid} node={.spec.nodeName} phase={.status.phase} deleting={.metadata.deletionTimestamp} conditions={.status.conditions[*].type}={.status.conditions[*].status} {.status.conditions[*].message}{\"\\n\"}{end}",
    ]);
    let taints = out(&["get", "node", node, "-o", "jsonpath={.spec.taints}"]);
    let events = out(&[
        "get",
        "events",
        "-n",
        ns,
        "--sort-by=.lastTimestamp",
        "-o",
        "jsonpath={range .items[*]}{.lastTimestamp} {.involvedObject.kind}/{.involvedObject.name} {.reason}: {.message}{\"\\n\"}{end}",
    ]);
    let events: Vec<&str> = events.lines().collect();
    let recent = events[events.len().saturating_sub(12)..].join("\n  ");
    format!("pods:\n  {}\n{node} taints: {taints}\nlast events:\n  {recent}", pods.trim().replace('\n', "\n  "))
}

/// Claim name -> bound volume name.
async fn claims_of(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    pvcs.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| (c.name_any(), c.spec.and_then(|s| s.volume_name).unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stateful_component_survives_a_zone_loss_without_replacements_and_keeps_its_volumes() {
    let client = setup().await;
    let name = unique("ledger");
    let nodes = node_zones(&client).await;
    let _storage = local_storage(&client, &name, &nodes).await;
    apply_app(&client, &app(&name, &name)).await;

    // 3 zones, minAvailable 2: 3 replicas, one per zone, each on a volume of its own zone.
    // Reconciling gone too: the StatefulSet's rollout is recognised as finished.
    let st = wait_status(&client, &name, "Ready, ZoneFailureTolerant, not Reconciling", Duration::from_secs(90), |s| {
        is_true(s, "Ready")
            && is_true(s, "ZoneFailureTolerant")
            && s.components[0].ready_replicas == 3
            && condition(s, "Reconciling").is_none()
    })
    .await
    .status
    .unwrap();
    let db = &st.components[0];
    assert_eq!(db.replicas, 3);
    assert_eq!(db.ready_by_zone, BTreeMap::from([("zone-a".into(), 1), ("zone-b".into(), 1), ("zone-c".into(), 1)]));
    let tolerant = condition(&st, "ZoneFailureTolerant").unwrap();
    assert!(tolerant.message.ends_with("db: replacements 0 (zonal volumes)"), "{}", tolerant.message);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &name);
    let set = sts.get("db").await.expect("a StatefulSet, not a Deployment");
    let spec = set.spec.clone().unwrap();
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(spec.service_name.as_deref(), Some("db-headless"));
    let retention = spec.persistent_volume_claim_retention_policy.unwrap();
    assert_eq!((retention.when_deleted.as_deref(), retention.when_scaled.as_deref()), (Some("Retain"), Some("Retain")));
    let headless = Api::<Service>::namespaced(client.clone(), &name).get("db-headless").await.unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let quota = Api::<ResourceQuota>::namespaced(client.clone(), &name).get("resilient-quota").await.unwrap();
    let hard = quota.spec.unwrap().hard.unwrap();
    assert_eq!((hard["requests.storage"].0.as_str(), hard["persistentvolumeclaims"].0.as_str()), ("3Gi", "3"));

    assert_in_sync_costs_no_writes(&client, &name).await;
    let before = pods_of(&client, &name).await;
    let claims = claims_of(&client, &name).await;
    assert_eq!(claims.len(), 3, "{claims:?}");
    for (pod, (_, node, ..)) in &before {
        let volume = &claims[&format!("data-{pod}")];
        assert_eq!(volume, &format!("{name}-{node}"), "{pod}'s claim is bound to the volume of its own node");
    }
    let (lost_pod, (lost_uid, lost_node, ..)) =
        before.iter().find(|(_, (_, node, ..))| nodes[node] == "zone-a").map(|(p, v)| (p.clone(), v.clone())).unwrap();

    // What the operator predicts for losing zone-a.
    let predicted = simulate_component("zone-a", &name);
    assert_eq!(predicted["readyAfterLoss"], 2, "{predicted}");
    assert_eq!(predicted["guaranteeHolds"], true);
    assert_eq!(predicted["replicasAfter"], 3);
    assert_eq!(predicted["replacements"], 0);
    assert!(predicted["notes"][0].as_str().unwrap().starts_with("replacements 0 (zonal volumes)"), "{predicted}");

    // The outage.
    let outage = Instant::now();
    cluster_sh(&["zone-down", "zone-a"]);
    let guard = ZoneGuard("zone-a");
    let mut lowest = 3;
    let mut timeline = Vec::new();
    let mut last = String::new();
    // Through the taint, failoverSeconds (30 s) and well past the operator's zone failover, and
    // until the taint manager has evicted the lost pod (its tolerationSeconds is failoverSeconds;
    // about 60 s here, later on a loaded machine). The fake kubelet makes only a Pending pod
    // ready: a pod still Running (not Ready) when its zone returns would stay not Ready, where a
    // real kubelet would report it ready again; evicted, it is replaced by the same pod (name,
    // node, volume) when the zone returns.
    let mut evicted = false;
    while outage.elapsed() < Duration::from_secs(95) || (!evicted && outage.elapsed() < Duration::from_secs(240)) {
        let now = pods_of(&client, &name).await;
        let ready = now.values().filter(|(_, _, r, t)| *r && !*t).count();
        lowest = lowest.min(ready);
        let lost = now.get(&lost_pod).expect("the lost zone's pod is never force-deleted");
        assert_eq!((&lost.0, &lost.1), (&lost_uid, &lost_node), "the lost zone's pod is neither replaced nor moved");
        assert_eq!(now.len(), 3, "no replacement pod: {now:?}");
        let replicas = sts.get("db").await.unwrap().spec.unwrap().replicas;
        assert_eq!(replicas, Some(3), "the StatefulSet is not scaled up during the outage");
        evicted |= lost.3;
        let line = format!("ready {ready}, {lost_pod} ready={} terminating={}", lost.2, lost.3);
        if line != last {
            timeline.push(format!("{:>5.1}s {line}", outage.elapsed().as_secs_f64()));
            last = line;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("outage timeline:\n{}", timeline.join("\n"));
    assert!(lowest >= 2, "ready pods dropped to {lowest}");
    assert!(timeline.iter().any(|l| l.contains("ready=false")), "the zone was lost: {timeline:?}");
    assert!(evicted, "the taint manager evicts the lost pod within 240 s: {timeline:?}");
    let during = wait_status(&client, &name, "the status of the outage", Duration::from_secs(30), |s| {
        s.zones == ["zone-b", "zone-c"]
    })
    .await
    .status
    .unwrap();
    let db = &during.components[0];
    assert_eq!((db.replicas, db.ready_replicas), (3, 2), "{during:?}");
    assert!(is_true(&during, "Ready"));
    let tolerant = condition(&during, "ZoneFailureTolerant").unwrap();
    assert!(tolerant.message.contains("db: replacements 0 (zonal volumes)"), "{}", tolerant.message);
    assert_eq!(db.ready_replicas, predicted["readyAfterLoss"].as_i64().unwrap() as i32, "status and simulate agree");
    let events: Api<Event> = Api::all(client.clone());
    let failovers = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ZoneFailover"))
        .count();
    assert_eq!(failovers, 0, "the operator deletes no stateful pod to fail a zone over");

    // The zone returns: the same pods (by name) on the same nodes and volumes.
    let back = Instant::now();
    drop(guard);
    let up = back.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        let now = pods_of(&client, &name).await;
        if now.len() == 3 && now.values().all(|(_, _, r, t)| *r && !*t) {
            break now;
        }
        if Instant::now() > deadline {
            panic!(
                "all three pods not ready 120s after zone-up returned (zone-up took {up:?}); {}",
                cluster_state(&name, &lost_node)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("zone-up took {up:?}; 3 of 3 ready again {:?} after it", back.elapsed() - up);
    for (pod, (_, node, ..)) in &before {
        assert_eq!(&after[pod].1, node, "{pod} is back on its node");
    }
    assert_eq!(claims_of(&client, &name).await, claims, "every claim is still bound to the same volume");

    // Deleting the app (Retain) keeps the claims, and the namespace with them.
    Api::<ResilientApp>::all(client.clone()).delete(&name, &DeleteParams::default()).await.unwrap();
    let note = event_message(&client, &name, "NamespaceRetained", Duration::from_secs(60)).await;
    assert!(note.contains("3 PersistentVolumeClaims"), "{note}");
    let ns = Api::<Namespace>::all(client.clone()).get(&name).await.unwrap();
    assert_eq!(ns.labels().get("resilient.dev/retained-from"), Some(&name));
    assert_eq!(claims_of(&client, &name).await, claims);
    let _ = kubectl(&["delete", "namespace", &name, "--wait=false"], None);
    // The claims protect the volumes until the namespace is gone.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &name);
    for claim in claims.keys() {
        let _ =
            pvcs.patch(claim, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_cannot_switch_between_deployment_and_stateful_set() {
    let client = setup().await;
    let name = unique("switch");
    let api: Api<ResilientApp> = Api::all(client.clone());
    let mut spec = app(&name, "zonal");
    spec["spec"]["deletionPolicy"] = json!("Delete");
    spec["spec"]["components"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "web", "image": "registry.example/web:1", "minAvailable": 1}));
    apply_app(&client, &spec).await;
    let refused = |changed: Value| {
        let api = api.clone();
        let name = name.clone();
        async move {
            let err = api
                .patch(&name, &PatchParams::apply("resilient-tests").force(), &Patch::Apply(&changed))
                .await
                .expect_err("the API server refuses the change");
            err.to_string()
        }
    };
    let mut no_claims = spec.clone();
    no_claims["spec"]["components"][0].as_object_mut().unwrap().remove("volumeClaims");
    let m = refused(no_claims).await;
    assert!(m.contains("volumeClaims cannot be added or removed"), "{m}");
    let mut claims_added = spec.clone();
    claims_added["spec"]["components"][1]["volumeClaims"] = spec["spec"]["components"][0]["volumeClaims"].clone();
    let m = refused(claims_added).await;
    assert!(m.contains("volumeClaims cannot be added or removed"), "{m}");
    let mut resized = spec.clone();
    resized["spec"]["components"][0]["volumeClaims"][0]["size"] = json!("2Gi");
    let m = refused(resized).await;
    assert!(m.contains("volumeClaims is immutable"), "{m}");
    let mut reserved_name = spec.clone();
    reserved_name["spec"]["components"][1]["name"] = json!("web-placeholder-x");
    let m = refused(reserved_name).await;
    assert!(m.contains("may not contain '-placeholder'"), "{m}");
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_for("the app to be cleaned up and gone", Duration::from_secs(60), || async {
        api.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
}
