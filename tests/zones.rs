//! Surviving a zone failure on the real scheduler and controller manager, with kwok nodes going
//! dark: live survivability status, fast failover, rebalancing when the zone returns, the replica
//! math on real zones, PDB-limited drains, and `simulate` against the real outage.
//!
//! Tests that take zones down hold the write side of ZONES; tests that only read placements hold
//! the read side, so they never see an outage they did not cause.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, EvictParams, ListParams};
use kube::{Api, Client, ResourceExt};
use resilient_operator::api::ResilientApp;
use serde_json::{Value, json};
use tokio::sync::RwLock;

static ZONES: RwLock<()> = RwLock::const_new(());

/// Brings a zone back even when an assertion fails half-way.
struct ZoneGuard(&'static str);
impl Drop for ZoneGuard {
    fn drop(&mut self) {
        cluster_sh(&["zone-up", self.0]);
    }
}

fn app(name: &str, min_available: i32, resilience: Value) -> Value {
    json!({
        "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp",
        "metadata": {"name": name},
        "spec": {
            "resilience": resilience,
            "components": [{"name": "web", "image": "registry.example/web:1", "minAvailable": min_available,
                            "ports": [{"name": "http", "containerPort": 8080}]}]
        }
    })
}

/// Ready, not-terminating pods of the app by zone, and all live (not terminating) pods by zone.
async fn placement(
    client: &Client,
    ns: &str,
    zones: &HashMap<String, String>,
) -> (BTreeMap<String, i32>, BTreeMap<String, i32>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut ready = BTreeMap::new();
    let mut live = BTreeMap::new();
    for pod in pods.list(&ListParams::default()).await.unwrap() {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let zone = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .and_then(|n| zones.get(n))
            .cloned()
            .unwrap_or_else(|| "unscheduled".into());
        *live.entry(zone.clone()).or_insert(0) += 1;
        if resilient_operator::resilience::pod_ready(&pod) {
            *ready.entry(zone).or_insert(0) += 1;
        }
    }
    (ready, live)
}

fn total(m: &BTreeMap<String, i32>) -> i32 {
    m.values().sum()
}

#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    ready: i32,
    app_ready: bool,
}

/// Samples ready pods and the app's Ready condition every second until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(client: Client, name: String, zones: HashMap<String, String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let apps: Api<ResilientApp> = Api::all(client.clone());
            while !s.load(Ordering::SeqCst) {
                let (ready, _) = placement(&client, &name, &zones).await;
                let app_ready =
                    apps.get(&name).await.ok().and_then(|a| a.status).is_some_and(|st| is_true(&st, "Ready"));
                out.lock().unwrap().push(Sample { at: started.elapsed(), ready: total(&ready), app_ready });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Sampler { stop, samples, task }
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.samples.lock().unwrap().clone()
    }
}

fn simulate(zone: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_resilient-operator"))
        .args(["simulate", "--zone", zone, "-o", "json"])
        .env("KUBECONFIG", &cluster_env().kubeconfig)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("simulate output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)))
}

async fn delete_app(client: &Client, name: &str) {
    let _ = Api::<ResilientApp>::all(client.clone()).delete(name, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_zone_is_survived_replaced_fast_and_rebalanced_when_it_returns() {
    let client = setup().await;
    let _zones = ZONES.write().await;
    let name = unique("outage");
    let zones = node_zones(&client).await;
    apply_app(&client, &app(&name, 4, json!({}))).await;

    // 3 zones, minAvailable 4: 6 replicas, 2 per zone, tolerant.
    let app_now = wait_status(&client, &name, "Ready and ZoneFailureTolerant", Duration::from_secs(90), |s| {
        is_true(s, "Ready") && is_true(s, "ZoneFailureTolerant") && s.components[0].ready_replicas == 6
    })
    .await;
    let web = &app_now.status.as_ref().unwrap().components[0];
    assert_eq!(web.replicas, 6);
    assert_eq!(web.ready_by_zone, BTreeMap::from([("zone-a".into(), 2), ("zone-b".into(), 2), ("zone-c".into(), 2)]));
    assert_eq!(web.ready_after_worst_zone_loss, 4);
    let (ready, _) = placement(&client, &name, &zones).await;
    assert_eq!(ready, BTreeMap::from([("zone-a".into(), 2), ("zone-b".into(), 2), ("zone-c".into(), 2)]));

    // What the operator predicts for losing zone-a.
    let report = simulate("zone-a");
    let predicted = report["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["app"] == name.as_str())
        .cloned()
        .expect("simulate reports the app");
    assert_eq!(predicted["readyAfterLoss"], 4, "{predicted}");
    assert_eq!(predicted["guaranteeHolds"], true);
    assert_eq!(predicted["replicasAfter"], 8);
    assert_eq!(predicted["replacementsFit"], true);

    // The outage.
    let sampler = Sampler::start(client.clone(), name.clone(), zones.clone());
    let outage = Instant::now();
    cluster_sh(&["zone-down", "zone-a"]);
    let guard = ZoneGuard("zone-a");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    let replaced_after = wait_for("replacements Running in zone-b and zone-c", Duration::from_secs(90), || async {
        let want = deployments.get("web").await.ok()?.spec?.replicas?;
        let (ready, live) = placement(&client, &name, &zones).await;
        let in_a = live.get("zone-a").copied().unwrap_or(0);
        let pending = live.get("unscheduled").copied().unwrap_or(0);
        let survivors = ready.get("zone-b").copied().unwrap_or(0) + ready.get("zone-c").copied().unwrap_or(0);
        (in_a == 0 && pending == 0 && survivors >= want).then(|| (outage.elapsed(), want, ready))
    })
    .await;
    let (took, replicas_during, ready_during) = replaced_after;
    assert_eq!(
        replicas_during,
        predicted["replicasAfter"].as_i64().unwrap() as i32,
        "simulate predicted the replica count"
    );
    assert_eq!(ready_during, BTreeMap::from([("zone-b".into(), 4), ("zone-c".into(), 4)]));
    eprintln!("outage: replacements Running in the surviving zones after {took:?}");
    // The operator failed the whole zone over once it had been down for failoverSeconds, without
    // waiting for the node lifecycle controller to taint the zone's nodes one at a time (10 s apart).
    let failover = event_message(&client, &name, "ZoneFailover", Duration::from_secs(30)).await;
    assert!(failover.starts_with("zone-a lost for failoverSeconds: deleted"), "{failover}");

    // The status says what happened.
    let during = wait_status(&client, &name, "status for two zones", Duration::from_secs(30), |s| {
        s.zones == ["zone-b", "zone-c"] && s.components[0].ready_replicas == 8
    })
    .await;
    let st = during.status.unwrap();
    assert!(is_true(&st, "Ready"));
    let tolerant = condition(&st, "ZoneFailureTolerant").unwrap();
    assert!(tolerant.message.contains("2 usable zones (zone-b, zone-c)"), "{}", tolerant.message);

    let samples = sampler.snapshot();
    let worst = samples.iter().min_by_key(|s| s.ready).unwrap().clone();
    let lowest = worst.ready;
    eprintln!("outage: lowest ready count {lowest}, {:?} after the outage began", worst.at);
    assert!(lowest >= 4, "ready pods dropped to {lowest} during the outage: {samples:?}");
    assert!(samples.iter().all(|s| s.app_ready), "Ready flipped during a survivable outage: {samples:?}");
    assert!(
        lowest >= predicted["readyAfterLoss"].as_i64().unwrap() as i32,
        "simulate promised at least {} ready, the outage went down to {lowest}",
        predicted["readyAfterLoss"]
    );

    // The zone returns: back to 6 replicas spread 2/2/2, never below minAvailable.
    drop(guard);
    let back = Instant::now();
    let spread = wait_for("the spread to be 2/2/2 again", Duration::from_secs(120), || async {
        let (ready, live) = placement(&client, &name, &zones).await;
        let even = ready == BTreeMap::from([("zone-a".into(), 2), ("zone-b".into(), 2), ("zone-c".into(), 2)]);
        (even && total(&live) == 6).then_some(ready)
    })
    .await;
    eprintln!("rebalanced to {spread:?} {:?} after the zone returned", back.elapsed());
    let samples = sampler.stop().await;
    let lowest = samples.iter().map(|s| s.ready).min().unwrap();
    assert!(lowest >= 4, "ready pods dropped to {lowest}: {samples:?}");
    assert!(samples.iter().all(|s| s.app_ready), "Ready flipped: {samples:?}");
    let events: Api<Event> = Api::all(client.clone());
    let rebalanced = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Rebalanced"))
        .count();
    assert!(rebalanced >= 1, "no Rebalanced event");
    delete_app(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_counts_follow_the_zones() {
    let client = setup().await;
    let _zones = ZONES.read().await;
    let zones = node_zones(&client).await;
    let two = unique("two-zones");
    let tolerate_two = unique("tolerate-two");
    let single = unique("single-zone");
    apply_app(&client, &app(&two, 4, json!({"zones": ["zone-a", "zone-b"]}))).await;
    apply_app(&client, &app(&tolerate_two, 4, json!({"zoneFailuresTolerated": 2}))).await;
    apply_app(&client, &app(&single, 2, json!({"zones": ["zone-c"]}))).await;

    // Allow-list of two zones: everything of minAvailable must fit in one zone.
    let a = wait_status(&client, &two, "8 ready in zone-a and zone-b", Duration::from_secs(90), |s| {
        s.components[0].ready_replicas == 8 && is_true(s, "ZoneFailureTolerant")
    })
    .await;
    assert_eq!(a.status.unwrap().zones, ["zone-a", "zone-b"]);
    let (ready, _) = placement(&client, &two, &zones).await;
    assert_eq!(ready, BTreeMap::from([("zone-a".into(), 4), ("zone-b".into(), 4)]));

    // Two of three zones may be lost: one zone must hold minAvailable.
    wait_status(&client, &tolerate_two, "12 ready", Duration::from_secs(90), |s| {
        s.components[0].ready_replicas == 12 && is_true(s, "ZoneFailureTolerant")
    })
    .await;
    let (ready, _) = placement(&client, &tolerate_two, &zones).await;
    assert_eq!(ready, BTreeMap::from([("zone-a".into(), 4), ("zone-b".into(), 4), ("zone-c".into(), 4)]));

    // A single allowed zone cannot tolerate its loss: best effort minAvailable + 1, and said so.
    let c = wait_status(&client, &single, "InsufficientZones", Duration::from_secs(90), |s| {
        s.components[0].ready_replicas == 3
            && condition(s, "ZoneFailureTolerant")
                .is_some_and(|c| c.status == "False" && c.reason == "InsufficientZones")
    })
    .await;
    let st = c.status.unwrap();
    assert!(is_true(&st, "Ready"), "the app is available, only not zone-failure tolerant");
    assert_eq!(st.components[0].replicas, 3);
    let (ready, _) = placement(&client, &single, &zones).await;
    assert_eq!(ready, BTreeMap::from([("zone-c".into(), 3)]));
    for n in [two, tolerate_two, single] {
        delete_app(&client, &n).await;
    }
}

/// Uncordons a node even when an assertion fails half-way.
struct Uncordon(String);
impl Drop for Uncordon {
    fn drop(&mut self) {
        let _ = kubectl(&["uncordon", &self.0], None);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_is_limited_by_the_pdb_and_still_succeeds() {
    let client = setup().await;
    let _zones = ZONES.write().await;
    let zones = node_zones(&client).await;
    let started = Instant::now();
    let name = unique("drain");
    let mut spec = app(&name, 4, json!({}));
    spec["spec"]["components"][0]["replicas"] = json!(6);
    apply_app(&client, &spec).await;
    wait_status(&client, &name, "6 ready", Duration::from_secs(90), |s| {
        is_true(s, "Ready") && s.components[0].ready_replicas == 6
    })
    .await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &name);
    wait_for("the PDB to allow 2 disruptions", Duration::from_secs(30), || async {
        (pdbs.get("web").await.ok()?.status?.disruptions_allowed == 2).then_some(())
    })
    .await;

    // With every node cordoned an evicted pod cannot be replaced, so the PDB (maxUnavailable 2)
    // lets two evictions through and refuses the third. (Explicit replicas: the count does not
    // follow the usable zones while they are cordoned one by one.)
    let cordons: Vec<Uncordon> = zones
        .keys()
        .map(|n| {
            let out = kubectl(&["cordon", n], None);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            Uncordon(n.clone())
        })
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &name);
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && resilient_operator::resilience::pod_ready(p))
        .take(3)
        .map(|p| p.name_any())
        .collect();
    let mut results = Vec::new();
    for n in &names {
        results.push(pods.evict(n, &EvictParams::default()).await);
    }
    let refused = results.iter().filter(|r| matches!(r, Err(kube::Error::Api(s)) if s.code == 429)).count();
    let evicted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!((evicted, refused), (2, 1), "{results:?}");
    let (ready, _) = placement(&client, &name, &zones).await;
    assert_eq!(total(&ready), 4, "the PDB keeps exactly minAvailable ready");
    drop(cordons);
    eprintln!("evictions checked after {:?}", started.elapsed());

    // A whole node drained: kubectl retries until the PDB allows each eviction, and succeeds.
    wait_status(&client, &name, "6 ready again", Duration::from_secs(60), |s| s.components[0].ready_replicas == 6)
        .await;
    let node = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .find_map(|p| p.spec.as_ref()?.node_name.clone())
        .unwrap();
    let _uncordon = Uncordon(node.clone());
    eprintln!("draining {node} after {:?}", started.elapsed());
    let drained = kubectl(&["drain", &node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s"], None);
    assert!(drained.status.success(), "drain failed: {}", String::from_utf8_lossy(&drained.stderr));
    let on_node = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
        })
        .count();
    assert_eq!(on_node, 0, "pods left on the drained node");
    let (ready, _) = placement(&client, &name, &zones).await;
    assert!(total(&ready) >= 4);
    delete_app(&client, &name).await;
}
