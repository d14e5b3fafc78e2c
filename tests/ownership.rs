//! Field ownership against the local control plane: "in sync" follows Kubernetes' list semantics.
//! Containers, env entries, tolerations, labels and annotations another field manager adds cost no
//! write; a field the operator owns that someone changes is put back. The list-type table the
//! comparison uses is the live API server's OpenAPI schema.
//!
//! `RESILIENT_WRITE_LIST_TYPES=1 cargo test --test ownership list_types` (`make list-types`)
//! rewrites `src/controller/diff/list_types.json` from the live schema instead of checking it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use resilient_operator::api::ResilientApp;
use resilient_operator::controller::diff::list_types::{self, Table};
use serde_json::{Value, json};

const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the operator of this test re-checks every app without an event.
const RESYNC_SECONDS: u64 = 2;
/// How long an owned field may stay changed before the test fails.
const PUT_BACK_TIMEOUT: Duration = Duration::from_secs(30);
/// The field manager playing a webhook, a GitOps tool or a person with kubectl.
const OTHER: &str = "someone-else";
/// A second one, changing fields the operator owns.
const EDITOR: &str = "an-editor";

/// Tests that take a zone down hold the write side; the others the read side, so they never see
/// an outage they did not cause.
static ZONES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// GET a path of the API server as JSON.
async fn get_json(client: &Client, path: &str) -> Value {
    let request = http::Request::get(path).body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The OpenAPI v3 documents of the group-versions of `list_types::KINDS`.
async fn openapi_documents(client: &Client) -> Vec<Value> {
    let index = get_json(client, "/openapi/v3").await;
    let mut group_versions: Vec<String> = list_types::KINDS
        .iter()
        .map(|(group, version, _)| match *group {
            "" => format!("api/{version}"),
            group => format!("apis/{group}/{version}"),
        })
        .collect();
    group_versions.sort();
    group_versions.dedup();
    let mut documents = Vec::new();
    for gv in group_versions {
        let url = index["paths"][&gv]["serverRelativeURL"].as_str().unwrap_or_else(|| panic!("no /openapi/v3/{gv}"));
        documents.push(get_json(client, url).await);
    }
    documents
}

#[tokio::test(flavor = "multi_thread")]
async fn list_types_match_the_live_schema() {
    let client = client().await;
    let live = list_types::from_openapi(&openapi_documents(&client).await, list_types::KINDS).unwrap();
    let path = root().join("src/controller/diff/list_types.json");
    if std::env::var_os("RESILIENT_WRITE_LIST_TYPES").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&live).unwrap() + "\n").unwrap();
    }
    let committed: Table = serde_json::from_str(list_types::COMMITTED).unwrap();
    for (kind, lists) in &live {
        assert_eq!(
            committed.get(kind),
            Some(lists),
            "{kind}: list_types.json differs from the live schema; run `make list-types`"
        );
    }
    assert_eq!(committed.len(), live.len(), "list_types.json holds kinds the operator no longer writes");
    // What the comparison relies on, read from the live schema itself.
    let deployment = &live["apps/v1/Deployment"];
    assert_eq!(deployment["spec.template.spec.containers"], "map(name)");
    assert_eq!(deployment["spec.template.spec.containers[].env"], "map(name)");
    assert_eq!(deployment["spec.template.spec.containers[].ports"], r#"map(containerPort,protocol="TCP")"#);
    assert_eq!(deployment["spec.template.spec.containers[].args"], "atomic");
    assert_eq!(deployment["spec.template.spec.tolerations"], "atomic");
    assert_eq!(live["v1/Service"]["spec.ports"], r#"map(port,protocol="TCP")"#);
}

/// The operator of this test binary, with a short resync: (metrics port, user agent). It dies with
/// the test process (PR_SET_PDEATHSIG, from a thread that lives as long as it).
fn operator() -> &'static (u16, String) {
    static OPERATOR: OnceLock<(u16, String)> = OnceLock::new();
    OPERATOR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let identity = unique("ownership");
            let mut op = OperatorProcess::spawn(&identity, &["--resync-seconds", &RESYNC_SECONDS.to_string()]);
            tx.send((op.metrics_port, op.user_agent())).unwrap();
            let status = op.child.wait();
            eprintln!("operator exited: {status:?}");
        });
        rx.recv().expect("the operator thread")
    })
}

async fn setup_with_operator() -> Client {
    let client = client().await;
    ensure_crd(&client).await;
    let (port, _) = operator();
    wait_for("the operator's /readyz to answer 200 (caches synced)", Duration::from_secs(60), || async {
        http_get(*port, "/readyz").filter(|(code, _)| *code == 200)
    })
    .await;
    client
}

fn reconciles() -> f64 {
    metric_sum(&metrics_of(operator().0).unwrap_or_default(), "resilient_operator_reconciles_total")
}

/// Server-side apply as another field manager (the whole intent of that manager: what it applied
/// before and leaves out now is removed).
async fn apply_as<K>(manager: &str, api: &Api<K>, name: &str, patch: Value, force: bool) -> K
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = PatchParams::apply(manager);
    params.force = force;
    api.patch(name, &params, &Patch::Apply(&patch))
        .await
        .unwrap_or_else(|e| panic!("applying as {manager}: {e}\n{patch}"))
}

/// Writes of this test's operator to the app's children (its namespace and the Namespace itself;
/// not its status, Events, or the evictions of rebalancing) since `since`, by verb.
fn child_writes(app: &str, since: &str) -> BTreeMap<String, u64> {
    audited_requests(&operator().1, since, |e| {
        let r = &e["objectRef"];
        let child = (r["namespace"] == app && r["resource"] != "events" && r["resource"] != "pods")
            || (r["resource"] == "namespaces" && r["name"] == app);
        child && WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default())
    })
}

fn app(name: &str) -> Value {
    let mut app = example("hello.yaml", name);
    app["spec"]["components"][0]["env"] = json!([{"name": "GREETING", "value": "hello"}]);
    app
}

fn pod_spec(d: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn toleration_keys(d: &Deployment) -> Vec<String> {
    pod_spec(d).tolerations.iter().flatten().filter_map(|t| t.key.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn what_others_add_costs_no_write_and_what_the_operator_owns_is_put_back() {
    let client = setup_with_operator().await;
    let _zones = ZONES.read().await;
    let name = unique("owned");
    let _delete = DeleteApp(name.clone());
    apply_app(&client, &app(&name)).await;
    wait_status(&client, &name, "Ready and not Reconciling", READY_TIMEOUT, |s| {
        is_true(s, "Ready") && condition(s, "Reconciling").is_none()
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    let services: Api<Service> = Api::namespaced(client.clone(), &name);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let original = deployments.get("hello").await.unwrap();
    let original_service = services.get("hello").await.unwrap();
    let replicas = original.spec.as_ref().unwrap().replicas.unwrap();
    let image = pod_spec(&original).containers[0].image.clone().unwrap();
    let operators_tolerations = pod_spec(&original).tolerations.clone().unwrap();
    assert!(toleration_keys(&original).contains(&"node.kubernetes.io/unreachable".to_string()));

    // Another manager adds a sidecar, an env entry, a toleration and an annotation to the
    // Deployment, and a label and an annotation to the Service and the Namespace.
    let since = audit_now();
    let head = |kind: &str, api_version: &str| {
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name.clone(),
            "labels": {"example.com/team": "payments"}, "annotations": {"example.com/note": "added by someone else"}}})
    };
    let mut patch = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello", "annotations": {"example.com/injected": "true"}},
        "spec": {"template": {"spec": {"containers": [
            {"name": "hello", "env": [{"name": "INJECTED", "value": "1"}]},
            // Small enough to fit the app's quota, which has no room for a sidecar of the
            // LimitRange's default size.
            // The example runs under `restricted`: an injected sidecar must pass it too.
            {"name": "proxy", "image": "registry.example/proxy:2",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                    "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "10m", "memory": "16Mi"}}}]}}}});
    // Containers and env entries are keyed lists: no conflict, no force.
    apply_as(OTHER, &deployments, "hello", patch.clone(), false).await;
    // Tolerations are an atomic list the operator owns: adding one takes a forced apply (of the
    // whole list), after which the other manager owns it all, the operator's entries included.
    let mut tolerations = serde_json::to_value(&operators_tolerations).unwrap();
    tolerations.as_array_mut().unwrap().push(json!(
        {"key": "example.com/dedicated", "operator": "Equal", "value": "payments", "effect": "NoSchedule"}));
    patch["spec"]["template"]["spec"]["tolerations"] = tolerations;
    let refused = deployments.patch("hello", &PatchParams::apply(OTHER), &Patch::Apply(&patch)).await;
    assert!(matches!(&refused, Err(kube::Error::Api(s)) if s.is_conflict()), "{refused:?}");
    apply_as(OTHER, &deployments, "hello", patch.clone(), true).await;
    let mut service_patch = head("Service", "v1");
    service_patch["metadata"]["namespace"] = json!(name);
    service_patch["metadata"]["name"] = json!("hello");
    apply_as(OTHER, &services, "hello", service_patch, false).await;
    apply_as(OTHER, &namespaces, &name, head("Namespace", "v1"), false).await;

    // The new pod template rolls out (Reconciling, reason Progressing, as kstatus wants), but the
    // operator applies nothing (never reason Applying); then several resyncs of every app with no
    // write and no Reconciling at all.
    let apps: Api<ResilientApp> = Api::all(client.clone());
    wait_for("the rollout others caused to end", READY_TIMEOUT, || async {
        let app = apps.get(&name).await.ok()?;
        let reconciling = app.status.as_ref().and_then(|s| condition(s, "Reconciling").cloned());
        assert!(
            reconciling.as_ref().is_none_or(|c| c.reason == "Progressing"),
            "the operator applied while only others' fields changed: {reconciling:?}"
        );
        reconciling.is_none().then_some(())
    })
    .await;
    let passes = 4.0 * apps.list(&Default::default()).await.unwrap().items.len() as f64;
    let (before, started) = (reconciles(), Instant::now());
    wait_for("four resyncs", Duration::from_secs(60), || async {
        let app = apps.get(&name).await.ok()?;
        let reconciling = app.status.as_ref().and_then(|s| condition(s, "Reconciling").cloned());
        assert!(reconciling.is_none(), "Reconciling while only others' fields changed: {reconciling:?}");
        let enough = reconciles() >= before + passes && started.elapsed() >= Duration::from_secs(4 * RESYNC_SECONDS);
        enough.then_some(())
    })
    .await;
    let writes = child_writes(&name, &since);
    assert!(writes.is_empty(), "the operator wrote to children while they held all it owns: {writes:?}");
    eprintln!("others' additions: {} passes over {:?}, no child write", reconciles() - before, started.elapsed());
    let live = deployments.get("hello").await.unwrap();
    let containers: Vec<&str> = pod_spec(&live).containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(containers, ["hello", "proxy"]);
    assert!(toleration_keys(&live).contains(&"example.com/dedicated".to_string()));

    // Owned fields changed by others are put back: the image, the replicas (no autoscaling), a
    // port of the Service, and the operator's own tolerations.
    let since = audit_now();
    apply_as(
        EDITOR,
        &deployments,
        "hello",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hello"},
            "spec": {"replicas": replicas + 4,
                "template": {"spec": {"containers": [{"name": "hello", "image": "registry.example/other:1"}]}}}}),
        true,
    )
    .await;
    let changed = Instant::now();
    let put_back = wait_for("image and replicas put back", PUT_BACK_TIMEOUT, || async {
        let d = deployments.get("hello").await.ok()?;
        let same =
            d.spec.as_ref()?.replicas == Some(replicas) && pod_spec(&d).containers[0].image.as_ref() == Some(&image);
        same.then_some(d)
    })
    .await;
    eprintln!("image and replicas put back after {:?}", changed.elapsed());
    let env: Vec<&str> = pod_spec(&put_back).containers[0].env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(env, ["GREETING", "INJECTED"], "the put-back kept others' env entry");
    assert_eq!(pod_spec(&put_back).containers.len(), 2, "the put-back kept the sidecar");

    // A `kubectl edit` of the Service's port (an update, not an apply: it replaces the list and
    // takes it over) sends its traffic elsewhere.
    let original_port = original_service.spec.as_ref().unwrap().ports.clone().unwrap()[0].clone();
    let mut edited = serde_json::to_value(&original_port).unwrap();
    edited["targetPort"] = json!(9999);
    let ports = json!({"spec": {"ports": [edited]}});
    services.patch("hello", &PatchParams::default(), &Patch::Merge(&ports)).await.unwrap();
    let changed = Instant::now();
    wait_for("the Service's port put back", PUT_BACK_TIMEOUT, || async {
        let s = services.get("hello").await.ok()?;
        s.spec?
            .ports?
            .iter()
            .any(|p| p.port == original_port.port && p.target_port == original_port.target_port)
            .then_some(())
    })
    .await;

    eprintln!("Service port put back after {:?}", changed.elapsed());

    // The other manager, owning the whole atomic list, drops the operator's tolerations.
    patch["spec"]["template"]["spec"]["tolerations"] = json!([
        {"key": "example.com/dedicated", "operator": "Equal", "value": "payments", "effect": "NoSchedule"}]);
    apply_as(OTHER, &deployments, "hello", patch, true).await;
    let changed = Instant::now();
    let restored = wait_for("the operator's tolerations put back", PUT_BACK_TIMEOUT, || async {
        let d = deployments.get("hello").await.ok()?;
        (pod_spec(&d).tolerations.as_ref() == Some(&operators_tolerations)).then_some(d)
    })
    .await;
    eprintln!("tolerations put back after {:?}", changed.elapsed());
    // Putting back an atomic list applies it whole: the other manager's entry is gone (docs/api.md).
    assert!(!toleration_keys(&restored).contains(&"example.com/dedicated".to_string()));
    let writes = child_writes(&name, &since);
    assert!(writes.get("patch").copied().unwrap_or(0) >= 3, "the put-backs are not in the audit log: {writes:?}");

    // Others' labels and annotations were never the operator's to remove.
    let ns = namespaces.get(&name).await.unwrap();
    assert_eq!(ns.metadata.labels.unwrap()["example.com/team"], "payments");
    let service = services.get("hello").await.unwrap();
    assert_eq!(service.metadata.annotations.unwrap()["example.com/note"], "added by someone else");
    assert_eq!(restored.metadata.annotations.unwrap()["example.com/injected"], "true");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_operator_stops_setting_is_removed() {
    let client = setup_with_operator().await;
    let _zones = ZONES.read().await;
    let name = unique("dropped");
    let _delete = DeleteApp(name.clone());
    let mut spec = app(&name);
    apply_app(&client, &spec).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    wait_for("the Deployment with its env var", READY_TIMEOUT, || async {
        let d = deployments.get_opt("hello").await.ok()??;
        pod_spec(&d).containers[0].env.is_some().then_some(())
    })
    .await;
    // The live object still holds everything the new desired state sets; only the digest in
    // `resilient.dev/applied` says it changed, and the apply that follows drops the env var.
    spec["spec"]["components"][0]["env"] = json!([]);
    apply_app(&client, &spec).await;
    wait_for("the env var the app no longer names removed", PUT_BACK_TIMEOUT, || async {
        let d = deployments.get("hello").await.ok()?;
        pod_spec(&d).containers[0].env.as_ref().is_none_or(Vec::is_empty).then_some(())
    })
    .await;
}

/// Brings a zone back even when an assertion fails half-way.
struct ZoneGuard(&'static str);
impl Drop for ZoneGuard {
    fn drop(&mut self) {
        cluster_sh(&["zone-up", self.0]);
    }
}

/// Ready, not-terminating pods of the app by zone.
async fn ready_by_zone(client: &Client, ns: &str, zones: &HashMap<String, String>) -> BTreeMap<String, i32> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut ready = BTreeMap::new();
    for pod in pods.list(&ListParams::default()).await.unwrap() {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let is_ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if pod.metadata.deletion_timestamp.is_none() && is_ready {
            *ready.entry(zones.get(&node).cloned().unwrap_or_default()).or_insert(0) += 1;
        }
    }
    ready
}

/// What a failed wait for an even spread reports: the ready pods by zone, every pod not ready or
/// terminating, the nodes not usable, and the app's conditions.
async fn what_holds_the_spread(client: &Client, name: &str, ready: BTreeMap<String, i32>) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), name);
    let unsettled: Vec<String> = (pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default())
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() || !resilient_operator::resilience::pod_ready(p))
        .map(|p| format!("{} on {:?}", p.name_any(), p.spec.and_then(|s| s.node_name)))
        .collect();
    let nodes: Api<Node> = Api::all(client.clone());
    let unusable: Vec<String> = (nodes.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default())
        .into_iter()
        .filter(|n| !resilient_operator::resilience::node_usable(n))
        .map(|n| n.name_any())
        .collect();
    let conditions: Vec<String> = (Api::<ResilientApp>::all(client.clone()).get(name).await.ok())
        .and_then(|a| a.status)
        .map(|s| s.conditions.into_iter().map(|c| format!("{}={} ({})", c.type_, c.status, c.reason)).collect())
        .unwrap_or_default();
    format!(
        "ready by zone {ready:?}; not ready or terminating {unsettled:?}; unusable nodes {unusable:?}; conditions {conditions:?}"
    )
}

/// Rebalancing waits for a pass that writes nothing. With a sidecar another manager injected, a
/// comparison by list position wrote on every pass, so a zone that came back was never
/// rebalanced.
#[tokio::test(flavor = "multi_thread")]
async fn a_returned_zone_is_rebalanced_with_a_sidecar_injected() {
    let client = setup_with_operator().await;
    let _zones = ZONES.write().await;
    let zones = node_zones(&client).await;
    let name = unique("sidecar");
    let _delete = DeleteApp(name.clone());
    let app = json!({"apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "metadata": {"name": name},
        "spec": {"components": [{"name": "web", "image": "registry.example/web:1", "minAvailable": 4,
            "ports": [{"name": "http", "containerPort": 8080}]}]}});
    apply_app(&client, &app).await;
    let even = BTreeMap::from([("zone-a".to_string(), 2), ("zone-b".to_string(), 2), ("zone-c".to_string(), 2)]);
    wait_status(&client, &name, "6 ready, not Reconciling", READY_TIMEOUT, |s| {
        s.components[0].ready_replicas == 6 && condition(s, "Reconciling").is_none()
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    let sidecar = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "registry.example/proxy:2",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "10m", "memory": "16Mi"}}}]}}}});
    apply_as(OTHER, &deployments, "web", sidecar, false).await;
    wait_for("the sidecar rolled out, spread evenly", READY_TIMEOUT, || async {
        let d = deployments.get("web").await.ok()?;
        let st = d.status?;
        let rolled = st.updated_replicas == Some(6) && st.replicas == Some(6) && st.ready_replicas == Some(6);
        (rolled && ready_by_zone(&client, &name, &zones).await == even).then_some(())
    })
    .await;

    cluster_sh(&["zone-down", "zone-a"]);
    let guard = ZoneGuard("zone-a");
    wait_for("8 ready pods in zone-b and zone-c", Duration::from_secs(120), || async {
        let ready = ready_by_zone(&client, &name, &zones).await;
        (!ready.contains_key("zone-a") && ready.values().sum::<i32>() >= 8).then_some(())
    })
    .await;
    drop(guard);
    let back = Instant::now();
    wait_for_seen("the spread to be 2/2/2 again", Duration::from_secs(180), || async {
        let ready = ready_by_zone(&client, &name, &zones).await;
        if ready == even {
            return Ok(());
        }
        Err(what_holds_the_spread(&client, &name, ready).await)
    })
    .await;
    eprintln!("rebalanced with a sidecar {:?} after the zone returned", back.elapsed());
    let events: Api<Event> = Api::all(client.clone());
    let fields = format!("involvedObject.name={name}");
    let rebalanced = events.list(&ListParams::default().fields(&fields)).await.unwrap().items;
    assert!(rebalanced.iter().any(|e| e.reason.as_deref() == Some("Rebalanced")), "no Rebalanced event");
    let d = deployments.get("web").await.unwrap();
    assert_eq!(pod_spec(&d).containers.len(), 2, "the sidecar is still there");
}
