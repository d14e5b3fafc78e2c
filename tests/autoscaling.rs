//! Autoscaling with a zone-survival floor, on the local cluster: the HorizontalPodAutoscaler of
//! kube-controller-manager scales a component up from the CPU usage kwok reports through
//! metrics-server, the operator hands `replicas` over without the Deployment ever dropping to 1 and
//! never writes them back, `minReplicas` follows a zone outage, and the spec errors are reported.
//!
//! The test that takes a zone down holds the write side of ZONES; the others hold the read side,
//! so their floors are computed for three zones.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use resilient_operator::api::ResilientApp;
use resilient_operator::render::{ANNOTATION_REPLICAS_HANDED_OFF, REPLICAS_HANDOFF_MANAGER};
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

/// One component `web` (100m CPU requested, so kwok's usage is a utilization), with `extra` merged
/// into it (autoscaling, replicas).
fn app(name: &str, min_available: i32, extra: Value) -> Value {
    let mut web = json!({"name": "web", "image": "registry.example/web:1", "minAvailable": min_available,
                         "ports": [{"name": "http", "containerPort": 8080}],
                         "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}});
    for (k, v) in extra.as_object().unwrap() {
        web[k] = v.clone();
    }
    json!({"apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "metadata": {"name": name},
           "spec": {"components": [web]}})
}

/// Every `spec.replicas` the Deployment `web` of a namespace had, as its watch delivered them.
struct ReplicaHistory {
    seen: Arc<Mutex<Vec<i32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplicaHistory {
    fn start(client: &Client, namespace: &str) -> Self {
        let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream =
                watcher(api, watcher::Config::default().fields("metadata.name=web")).applied_objects().boxed();
            while let Some(event) = stream.next().await {
                if let Ok(d) = event {
                    let replicas = d.spec.and_then(|s| s.replicas).unwrap_or(-1);
                    let mut seen = out.lock().unwrap();
                    if seen.last() != Some(&replicas) {
                        seen.push(replicas);
                    }
                }
            }
        });
        Self { seen, task }
    }

    fn values(&self) -> Vec<i32> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ReplicaHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Who owns the Deployment's `spec.replicas`: the managers whose managedFields list it.
fn replica_owners(d: &Deployment) -> Vec<String> {
    d.managed_fields()
        .iter()
        .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some()))
        .map(|m| format!("{}/{}", m.manager.as_deref().unwrap_or(""), m.operation.as_deref().unwrap_or("")))
        .collect()
}

async fn hpa(client: &Client, namespace: &str) -> Option<HorizontalPodAutoscaler> {
    Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), namespace).get_opt("web").await.ok().flatten()
}

fn min_replicas(h: &HorizontalPodAutoscaler) -> Option<i32> {
    h.spec.as_ref()?.min_replicas
}

async fn live_replicas(client: &Client, namespace: &str) -> Option<i32> {
    Api::<Deployment>::namespaced(client.clone(), namespace).get("web").await.ok()?.spec?.replicas
}

/// `simulate --zone zone-a -o json`, the outcome of this app's component.
fn simulated(app: &str) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_resilient-operator"))
        .args(["simulate", "--zone", "zone-a", "-o", "json"])
        .env("KUBECONFIG", &cluster_env().kubeconfig)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("simulate output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    report["components"].as_array().unwrap().iter().find(|c| c["app"] == app).cloned().expect("the app is simulated")
}

async fn delete_app(client: &Client, name: &str) {
    let _ = Api::<ResilientApp>::all(client.clone()).delete(name, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_autoscaled_component_starts_at_its_floor_and_hands_replicas_over() {
    let client = setup().await;
    let _zones = ZONES.read().await;
    let name = unique("hpa-new");
    let history = ReplicaHistory::start(&client, &name);
    apply_app(&client, &app(&name, 2, json!({"autoscaling": {"maxReplicas": 9}}))).await;

    // 3 zones, minAvailable 2: a floor of 3.
    let h = wait_for("the HPA with minReplicas 3", Duration::from_secs(60), || async {
        hpa(&client, &name).await.filter(|h| min_replicas(h) == Some(3))
    })
    .await;
    let spec = h.spec.unwrap();
    assert_eq!(spec.max_replicas, 9);
    assert_eq!(spec.scale_target_ref.name, "web");
    let cpu = spec.metrics.unwrap()[0].resource.clone().unwrap();
    assert_eq!((cpu.name.as_str(), cpu.target.average_utilization), ("cpu", Some(80)));

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    let d = wait_for("the replicas handed over", Duration::from_secs(30), || async {
        let d = deployments.get("web").await.ok()?;
        (d.annotations().contains_key(ANNOTATION_REPLICAS_HANDED_OFF) && d.spec.as_ref()?.replicas == Some(3))
            .then_some(d)
    })
    .await;
    // The operator's own manager no longer owns replicas; the handoff manager (or the autoscaler,
    // if it scaled meanwhile) does, so the field stays when the operator applies without it.
    let owners = replica_owners(&d);
    assert!(!owners.contains(&"resilient-operator/Apply".to_string()), "replicas still the operator's: {owners:?}");
    assert!(!owners.is_empty(), "nobody owns replicas: {owners:?}");
    wait_status(&client, &name, "Ready with 3 replicas", Duration::from_secs(90), |s| {
        is_true(s, "Ready") && s.components[0].replicas == 3 && s.components[0].ready_replicas == 3
    })
    .await;
    // An unrelated change makes the operator apply the Deployment again, without replicas: they stay.
    let mut changed = app(&name, 2, json!({"autoscaling": {"maxReplicas": 9}}));
    changed["spec"]["components"][0]["image"] = json!("registry.example/web:2");
    apply_app(&client, &changed).await;
    wait_for("the new image rolled out", Duration::from_secs(60), || async {
        let d = deployments.get("web").await.ok()?;
        let image = d.spec.as_ref()?.template.spec.as_ref()?.containers[0].image.clone()?;
        let st = d.status?;
        (image == "registry.example/web:2" && st.updated_replicas == Some(3) && st.replicas == Some(3)).then_some(())
    })
    .await;
    let values = history.values();
    assert_eq!(values.first(), Some(&3), "the Deployment was created with its floor: {values:?}");
    assert!(values.iter().all(|r| *r == 3), "replicas changed during the handoff: {values:?}");
    delete_app(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn load_scales_up_the_operator_keeps_out_and_the_floor_follows_a_zone_outage() {
    let client = setup().await;
    let _zones = ZONES.write().await;
    let name = unique("hpa-load");
    let history = ReplicaHistory::start(&client, &name);
    // Without autoscaling first: 6 replicas (3 zones, minAvailable 4), owned by the operator.
    apply_app(&client, &app(&name, 4, json!({}))).await;
    wait_status(&client, &name, "6 ready", Duration::from_secs(90), |s| s.components[0].ready_replicas == 6).await;

    // Switch to autoscaling: the running Deployment's replicas are handed over at 6.
    let autoscaled = app(
        &name,
        4,
        json!({"autoscaling": {"maxReplicas": 12, "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0}}}}),
    );
    apply_app(&client, &autoscaled).await;
    wait_for("the HPA with minReplicas 6", Duration::from_secs(60), || async {
        hpa(&client, &name).await.filter(|h| min_replicas(h) == Some(6))
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    wait_for("the replicas handed over", Duration::from_secs(30), || async {
        let d = deployments.get("web").await.ok()?;
        d.annotations().contains_key(ANNOTATION_REPLICAS_HANDED_OFF).then_some(())
    })
    .await;
    let d = deployments.get("web").await.unwrap();
    let owners = replica_owners(&d);
    assert!(!owners.contains(&"resilient-operator/Apply".to_string()), "{owners:?}");
    assert!(owners.contains(&format!("{REPLICAS_HANDOFF_MANAGER}/Apply")), "{owners:?}");
    wait_status(&client, &name, "the switch reconciled", Duration::from_secs(60), |s| {
        s.components[0].ready_replicas == 6 && !is_true(s, "Reconciling")
    })
    .await;

    // Load: every pod reports 200m CPU of its 100m request (200 % against a target of 80 %).
    let since = audit_now();
    let started = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &name);
    let load = json!({"metadata": {"annotations": {"kwok.x-k8s.io/usage-cpu": "200m"}}});
    for pod in pods.list(&ListParams::default()).await.unwrap() {
        pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&load)).await.unwrap();
    }
    let scaled = wait_for("the HPA controller to scale the Deployment above 6", Duration::from_secs(180), || async {
        live_replicas(&client, &name).await.filter(|r| *r > 6)
    })
    .await;
    eprintln!("scaled up to {scaled} replicas {:?} after the load began", started.elapsed());
    let owners = replica_owners(&deployments.get("web").await.unwrap());
    eprintln!("replicas owned by {owners:?} after the scale-up");
    assert!(!owners.contains(&"resilient-operator/Apply".to_string()), "{owners:?}");
    // Status and simulate report the live count, not the floor.
    let live_now = wait_for("the status to report the live count", Duration::from_secs(60), || async {
        let live = live_replicas(&client, &name).await?;
        let app = Api::<ResilientApp>::all(client.clone()).get(&name).await.ok()?;
        (app.status?.components[0].replicas == live && live > 6).then_some(live)
    })
    .await;
    let sim = simulated(&name);
    assert!(sim["replicasNow"].as_i64().unwrap() > 6, "{sim}");
    assert!(sim["replicasAfter"].as_i64().unwrap() >= 8, "{sim}");
    eprintln!("status and simulate report {live_now} replicas");
    // Wait for two more HPA syncs (15 s each) and the scale-up to settle; the operator never fights it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settle = Instant::now() + Duration::from_secs(35);
    while Instant::now() < settle {
        let r = live_replicas(&client, &name).await.unwrap();
        assert!(r >= scaled, "replicas went back from {scaled} to {r}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let in_namespace = |e: &Value| e["objectRef"]["namespace"] == name.as_str();
    let deployment_writes = audited_requests(resilient_operator::cli::USER_AGENT, &since, |e| {
        in_namespace(e)
            && e["objectRef"]["resource"] == "deployments"
            && WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default())
    });
    assert!(
        deployment_writes.is_empty(),
        "the operator wrote the Deployment during the scale-up: {deployment_writes:?}"
    );
    // The same query finds the operator's writes before the load (creation, handoff): it can fail.
    let earlier = audited_requests(resilient_operator::cli::USER_AGENT, "", |e| {
        in_namespace(e) && e["objectRef"]["resource"] == "deployments" && e["verb"] == "patch"
    });
    assert!(earlier.get("patch").is_some_and(|n| *n >= 3), "{earlier:?}");

    // A zone outage raises the floor to 8 (two zones left), its return lowers it back to 6.
    cluster_sh(&["zone-down", "zone-c"]);
    let guard = ZoneGuard("zone-c");
    let outage = Instant::now();
    wait_for("minReplicas 8 while zone-c is down", Duration::from_secs(120), || async {
        hpa(&client, &name).await.filter(|h| min_replicas(h) == Some(8))
    })
    .await;
    eprintln!("minReplicas raised to 8 {:?} after zone-c went down", outage.elapsed());
    let back = Instant::now();
    drop(guard);
    wait_for("minReplicas 6 once zone-c is back", Duration::from_secs(120), || async {
        hpa(&client, &name).await.filter(|h| min_replicas(h) == Some(6))
    })
    .await;
    eprintln!("minReplicas back to 6 {:?} after zone-up began (it waits for the nodes to be Ready)", back.elapsed());

    // Without autoscaling again: the HPA is pruned and the operator owns replicas (6) again.
    apply_app(&client, &app(&name, 4, json!({}))).await;
    wait_for("the HPA pruned and 6 replicas", Duration::from_secs(60), || async {
        let gone = hpa(&client, &name).await.is_none();
        let d = deployments.get("web").await.ok()?;
        let marker = d.annotations().contains_key(ANNOTATION_REPLICAS_HANDED_OFF);
        (gone && !marker && d.spec?.replicas == Some(6)).then_some(())
    })
    .await;
    let owners = replica_owners(&deployments.get("web").await.unwrap());
    assert!(owners.contains(&"resilient-operator/Apply".to_string()), "{owners:?}");
    assert!(!owners.iter().any(|o| o.starts_with(REPLICAS_HANDOFF_MANAGER)), "{owners:?}");
    let values = history.values();
    assert!(values.iter().all(|r| *r >= 6), "replicas dropped below the floor: {values:?}");
    eprintln!("replicas over the test: {values:?}");
    delete_app(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_replicas_below_the_floor_is_stalled_with_both_numbers() {
    let client = setup().await;
    let _zones = ZONES.read().await;
    let name = unique("hpa-max");
    apply_app(&client, &app(&name, 4, json!({"autoscaling": {"maxReplicas": 5}}))).await;
    let stalled = wait_status(&client, &name, "Stalled", Duration::from_secs(60), |s| is_true(s, "Stalled")).await;
    let c = condition(stalled.status.as_ref().unwrap(), "Stalled").unwrap();
    assert_eq!(c.reason, "InvalidSpec");
    assert!(c.message.contains("maxReplicas 5 is below the zone-survival floor 6"), "{}", c.message);
    assert!(hpa(&client, &name).await.is_none(), "nothing is applied while Stalled");
    delete_app(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn autoscaling_and_replicas_are_rejected_together() {
    let client = setup().await;
    let name = unique("hpa-cel");
    let both = app(&name, 2, json!({"replicas": 3, "autoscaling": {"maxReplicas": 6}}));
    let err = Api::<ResilientApp>::all(client.clone())
        .patch(&name, &PatchParams::apply("resilient-tests").force(), &Patch::Apply(&both))
        .await
        .expect_err("replicas and autoscaling together are rejected");
    let message = err.to_string();
    assert!(
        message.contains("spec.components[].replicas and spec.components[].autoscaling are mutually exclusive"),
        "{message}"
    );
    let stateful = app(
        &name,
        2,
        json!({"autoscaling": {"maxReplicas": 6}, "volumeClaims": [{"name": "data", "size": "1Gi", "mountPath": "/data"}]}),
    );
    let err = Api::<ResilientApp>::all(client.clone())
        .patch(&name, &PatchParams::apply("resilient-tests").force(), &Patch::Apply(&stateful))
        .await
        .expect_err("autoscaling with volumeClaims is rejected");
    assert!(err.to_string().contains("autoscaling is not supported with volumeClaims"), "{err}");
}
