//! Fault injection: the operator survives its own failure modes. Each scenario injects a fault
//! into the real control plane (or the operator), waits with a deadline, and checks what must
//! hold. The scenarios run one at a time (they restart shared components) with operators of their
//! own, so this binary starts no shared operator.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use resilient_operator::api::ResilientApp;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// One scenario at a time: they restart the API server and etcd, and each runs its own operator.
static SERIAL: Mutex<()> = Mutex::const_new(());

const READY: Duration = Duration::from_secs(180);

fn app(name: &str) -> Value {
    json!({
        "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "metadata": {"name": name},
        "spec": {"deletionPolicy": "Delete", "components": [
            {"name": "web", "image": "x", "minAvailable": 2, "ports": [{"name": "http", "containerPort": 8080}], "service": {}}
        ]}
    })
}

/// Server-side apply an app, retrying while the API server is away (it may be restarting).
async fn apply_retrying(client: &Client, value: &Value) {
    let api: Api<ResilientApp> = Api::all(client.clone());
    let name = value["metadata"]["name"].as_str().unwrap().to_string();
    wait_for(&format!("applying {name}"), Duration::from_secs(120), || async {
        api.patch(&name, &PatchParams::apply("resilient-tests").force(), &Patch::Apply(value)).await.ok().map(|_| ())
    })
    .await;
}

async fn all_ready(client: &Client, names: &[String], timeout: Duration) {
    let api: Api<ResilientApp> = Api::all(client.clone());
    let started = Instant::now();
    wait_for(&format!("{} apps to be Ready", names.len()), timeout, || async {
        for name in names {
            let app = api.get(name).await.ok()?;
            let s = app.status.as_ref()?;
            let ready = s.observed_generation == app.metadata.generation
                && is_true(s, "Ready")
                && condition(s, "Reconciling").is_none();
            if !ready {
                return None;
            }
        }
        Some(())
    })
    .await;
    eprintln!("{} apps Ready {:?} after the wait began", names.len(), started.elapsed());
}

/// Every app's namespace holds exactly one Deployment, one ReplicaSet and its replicas: nothing was
/// created twice.
async fn nothing_duplicated(client: &Client, names: &[String]) {
    for name in names {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), name);
        let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), name);
        let pods: Api<Pod> = Api::namespaced(client.clone(), name);
        let d = deployments.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(d.len(), 1, "{name}: {} Deployments", d.len());
        let rs = replica_sets.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(rs.len(), 1, "{name}: {} ReplicaSets", rs.len());
        let replicas = d[0].spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let live = pods.list(&ListParams::default()).await.unwrap().items;
        let live = live.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count() as i32;
        assert_eq!(live, replicas, "{name}: {live} pods for {replicas} replicas");
    }
}

async fn delete_apps(client: &Client, names: &[String]) {
    let api: Api<ResilientApp> = Api::all(client.clone());
    for name in names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
}

/// An operator of this scenario (no leader election), ready: caches synced.
async fn operator(identity: &str) -> OperatorProcess {
    let op = OperatorProcess::spawn(identity, &["--resync-seconds", "3600"]);
    wait_for(&format!("operator {identity} /readyz"), Duration::from_secs(60), || async {
        http_get(op.metrics_port, "/readyz").filter(|(code, _)| *code == 200)
    })
    .await;
    op
}

fn writes_of(op: &OperatorProcess, since: &str, filter: impl Fn(&Value) -> bool) -> BTreeMap<String, u64> {
    audited_requests(&op.user_agent(), since, |e| {
        WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default()) && filter(e)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn api_server_killed_while_apps_are_created() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    let mut op = operator(&unique("faults-apiserver")).await;
    let names: Vec<String> = (0..30).map(|_| unique("kill-api")).collect();
    for (i, name) in names.iter().enumerate() {
        apply_retrying(&client, &app(name)).await;
        if i == 10 {
            cluster_sh(&["restart", "apiserver"]);
        }
    }
    all_ready(&client, &names, READY).await;
    nothing_duplicated(&client, &names).await;
    assert!(op.exited().is_none(), "the operator exited: {:?}", op.exited());
    delete_apps(&client, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_restarted_and_history_compacted() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    let mut op = operator(&unique("faults-etcd")).await;
    let names: Vec<String> = (0..10).map(|_| unique("etcd")).collect();
    for (i, name) in names.iter().enumerate() {
        apply_retrying(&client, &app(name)).await;
        if i == 5 {
            cluster_sh(&["restart", "etcd"]);
        }
    }
    all_ready(&client, &names, READY).await;
    // Compacting the history makes every watch list again from scratch.
    cluster_sh(&["compact"]);
    // The watches work after the relist: a deleted Deployment comes back, a new app gets going.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &names[0]);
    let uid = deployments.get("web").await.unwrap().uid();
    deployments.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("the deleted Deployment to be put back after the relist", Duration::from_secs(60), || async {
        let d = deployments.get_opt("web").await.ok()??;
        (d.uid() != uid).then_some(())
    })
    .await;
    let late = unique("etcd-late");
    apply_retrying(&client, &app(&late)).await;
    let mut all = names.clone();
    all.push(late);
    all_ready(&client, &all, READY).await;
    nothing_duplicated(&client, &all).await;
    assert!(op.exited().is_none(), "the operator exited: {:?}", op.exited());
    delete_apps(&client, &all).await;
}

const LEASE_SECONDS: u64 = 6;

fn leader_args(lease: &str) -> Vec<String> {
    [
        "--leader-elect",
        "--leader-election-namespace",
        "resilient-system",
        "--lease-name",
        lease,
        "--lease-duration-seconds",
        &LEASE_SECONDS.to_string(),
        "--lease-grace-seconds",
        "2",
        "--resync-seconds",
        "3600",
    ]
    .map(String::from)
    .to_vec()
}

fn is_leader(op: &OperatorProcess) -> Option<bool> {
    Some(metric_sum(&op.metrics()?, "resilient_operator_leader ") == 1.0)
}

fn not_lease_or_event(e: &Value) -> bool {
    !matches!(e["objectRef"]["resource"].as_str(), Some("leases" | "events"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_leader_writes_nothing_after_the_takeover() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    let lease = unique("pause-lease");
    let args = leader_args(&lease);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let suffix = unique("pause");
    let mut a = OperatorProcess::spawn(&format!("{suffix}-a"), &args);
    let mut b = OperatorProcess::spawn(&format!("{suffix}-b"), &args);
    let first_leads = wait_for("one leader", Duration::from_secs(60), || async {
        match (is_leader(&a)?, is_leader(&b)?) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    })
    .await;
    let (leader, standby) = if first_leads { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let busy = unique("pause-app");
    apply_retrying(&client, &app(&busy)).await;
    all_ready(&client, std::slice::from_ref(&busy), READY).await;

    // Freeze the leader for longer than the lease; the standby takes over meanwhile.
    leader.signal(libc::SIGSTOP);
    wait_for("the standby to take over", Duration::from_secs(LEASE_SECONDS * 4), || async {
        is_leader(standby)?.then_some(())
    })
    .await;
    let takeover = audit_now();
    // Work for the new leader while the old one wakes up: it must write none of it.
    let names: Vec<String> = (0..5).map(|_| unique("pause-after")).collect();
    for name in &names {
        apply_retrying(&client, &app(name)).await;
    }
    leader.signal(libc::SIGCONT);
    let woke = Instant::now();
    wait_exit(leader, "the old leader to step down (exit)", Duration::from_secs(30)).await;
    eprintln!("the old leader exited {:?} after SIGCONT", woke.elapsed());
    all_ready(&client, &names, READY).await;
    let old = writes_of(leader, &takeover, not_lease_or_event);
    assert!(old.is_empty(), "the old leader wrote after the takeover: {old:?}");
    let new = writes_of(standby, &takeover, not_lease_or_event);
    assert!(!new.is_empty(), "the new leader wrote nothing: the check would be vacuous");
    let mut all = names.clone();
    all.push(busy);
    delete_apps(&client, &all).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_started_together_never_both_write() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    let mut names = Vec::new();
    for round in 0..20 {
        let lease = unique("race-lease");
        let args = leader_args(&lease);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let since = audit_now();
        let suffix = unique("race");
        let mut a = OperatorProcess::spawn(&format!("{suffix}-a"), &args);
        let mut b = OperatorProcess::spawn(&format!("{suffix}-b"), &args);
        let name = unique("race-app");
        apply_retrying(&client, &app(&name)).await;
        all_ready(&client, std::slice::from_ref(&name), READY).await;
        names.push(name);
        let writers: Vec<&OperatorProcess> =
            [&a, &b].into_iter().filter(|op| !writes_of(op, &since, not_lease_or_event).is_empty()).collect();
        assert_eq!(writers.len(), 1, "round {round}: {} replicas wrote", writers.len());
        a.kill();
        b.kill();
    }
    delete_apps(&client, &names).await;
    // Their apps go once an operator cleans up: the next scenarios start one.
}

/// The CRD with the maximums of minAvailable and replicas taken out, like an older, looser version.
fn looser_crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(<ResilientApp as kube::CustomResourceExt>::crd()).unwrap();
    let component = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["components"]
        ["items"]["properties"];
    for field in ["minAvailable", "replicas"] {
        component[field].as_object_mut().unwrap().remove("maximum");
    }
    serde_json::from_value(crd).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_app_is_reported_and_stops_no_other_app() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "resilientapps.resilient.dev",
        &PatchParams::apply("resilient-tests").force(),
        &Patch::Apply(&looser_crd()),
    )
    .await
    .unwrap();
    let poison = unique("poison");
    let mut bad = app(&poison);
    bad["spec"]["components"][0]["minAvailable"] = json!(99_999_999_999_i64);
    wait_for("the looser CRD to accept the poison app", Duration::from_secs(30), || async {
        Api::<DynamicObject>::all_with(client.clone(), &ApiResource::erase::<ResilientApp>(&()))
            .patch(&poison, &PatchParams::apply("resilient-tests").force(), &Patch::Apply(&bad))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    // The real CRD back: the stored object stays as it is, and can no longer be read as an i32.
    ensure_crd(&client).await;
    let names: Vec<String> = (0..10).map(|_| unique("beside-poison")).collect();
    for name in &names {
        apply_retrying(&client, &app(name)).await;
    }
    let mut op = operator(&unique("faults-poison")).await;
    all_ready(&client, &names, READY).await;
    let note = event_message(&client, &poison, "InvalidObject", Duration::from_secs(60)).await;
    assert!(note.contains("99999999999"), "{note}");
    assert!(op.exited().is_none(), "the operator exited: {:?}", op.exited());
    // Deleting it lets it go (its finalizer, if any, is removed) without touching anything else.
    let raw = Api::<DynamicObject>::all_with(client.clone(), &ApiResource::erase::<ResilientApp>(&()));
    let _ = raw.delete(&poison, &DeleteParams::default()).await;
    wait_for("the poison app to be gone", Duration::from_secs(60), || async {
        raw.get_opt(&poison).await.ok()?.is_none().then_some(())
    })
    .await;
    delete_apps(&client, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_killed_while_applying_converges_and_rewrites_nothing_in_sync() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    let mut first = operator(&unique("faults-kill")).await;
    let settled: Vec<String> = (0..10).map(|_| unique("settled")).collect();
    for name in &settled {
        apply_retrying(&client, &app(name)).await;
    }
    all_ready(&client, &settled, READY).await;
    let names: Vec<String> = (0..20).map(|_| unique("midway")).collect();
    for (i, name) in names.iter().enumerate() {
        apply_retrying(&client, &app(name)).await;
        if i == 8 {
            first.kill();
        }
    }
    let since = audit_now();
    let second = operator(&unique("faults-kill-again")).await;
    let mut all = settled.clone();
    all.extend(names.iter().cloned());
    all_ready(&client, &all, READY).await;
    nothing_duplicated(&client, &all).await;
    let touches_settled = |e: &Value| {
        let r = &e["objectRef"];
        settled.iter().any(|n| r["namespace"] == n.as_str() || r["name"] == n.as_str())
    };
    let rewrites = writes_of(&second, &since, |e| not_lease_or_event(e) && touches_settled(e));
    assert!(rewrites.is_empty(), "apps in sync were written again after the restart: {rewrites:?}");
    let fresh = writes_of(&second, &since, not_lease_or_event);
    assert!(!fresh.is_empty(), "the restarted operator wrote nothing: the check would be vacuous");
    delete_apps(&client, &all).await;
    drop(second);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_rejected_by_admission_stalls_that_app_only() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    let victim = unique("denied");
    let policy = format!("deny-{victim}");
    let manifests = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules: [{{apiGroups: [apps], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [deployments]}}]
  validations:
    - expression: "!has(object.metadata.labels) || !('resilient.dev/app' in object.metadata.labels) || object.metadata.labels['resilient.dev/app'] != '{victim}'"
      message: "deployments are frozen in {victim} by policy {policy}"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec: {{policyName: {policy}, validationActions: [Deny]}}
"#
    );
    let out = kubectl(&["apply", "-f", "-"], Some(&manifests));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The policy is in force once a (dry-run) Deployment with the app's label is refused.
    let probe = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "probe", "namespace": "default", "labels": {"resilient.dev/app": victim}},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
                 "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
    wait_for("the admission policy to be in force", Duration::from_secs(60), || async {
        let out = kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&probe.to_string()));
        (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("frozen")).then_some(())
    })
    .await;
    let _op = operator(&unique("faults-denied")).await;
    let others: Vec<String> = (0..3).map(|_| unique("allowed")).collect();
    apply_retrying(&client, &app(&victim)).await;
    for name in &others {
        apply_retrying(&client, &app(name)).await;
    }
    let stalled = wait_status(&client, &victim, "Stalled=Rejected", READY, |s| {
        condition(s, "Stalled").is_some_and(|c| c.reason == "Rejected")
    })
    .await;
    let message = condition(stalled.status.as_ref().unwrap(), "Stalled").unwrap().message.clone();
    assert!(message.contains(&format!("frozen in {victim} by policy {policy}")), "{message}");
    assert!(message.contains("Deployment web"), "{message}");
    all_ready(&client, &others, READY).await;
    let _ = kubectl(&["delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", &policy], None);
    // Once the policy is gone the app recovers by itself (the rejection is retried with backoff).
    all_ready(&client, std::slice::from_ref(&victim), READY).await;
    let mut all = others.clone();
    all.push(victim);
    delete_apps(&client, &all).await;
}

/// A kubeconfig whose server nothing listens on: the caches never sync.
fn unreachable_kubeconfig() -> PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = root().join(format!(".cluster/unreachable-{port}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: x, cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: x, user: {{token: x}}}}]\ncontexts: [{{name: x, context: {{cluster: x, user: x}}}}]\ncurrent-context: x\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Poll until the process exits, or fail after `timeout` saying what was awaited.
async fn wait_exit(op: &mut OperatorProcess, what: &str, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = op.exited() {
            return status;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stops_soon_after_sigterm(op: &mut OperatorProcess, state: &str) -> Duration {
    op.signal(libc::SIGTERM);
    let sent = Instant::now();
    let status = wait_exit(op, &format!("the operator ({state}) to exit after SIGTERM"), Duration::from_secs(12)).await;
    let took = sent.elapsed();
    eprintln!("{state}: exited {status:?} {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(8), "{state}: took {took:?}");
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_operator_within_seconds_in_every_state() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    // Caches never synced: the API server is unreachable.
    let mut lost = OperatorProcess::spawn_with_kubeconfig(&unique("term-unreachable"), &[], &unreachable_kubeconfig());
    wait_for("the operator to serve /healthz", Duration::from_secs(30), || async {
        http_get(lost.metrics_port, "/healthz").map(|_| ())
    })
    .await;
    stops_soon_after_sigterm(&mut lost, "caches never synced").await;

    // A standby waiting for the lease.
    let lease = unique("term-lease");
    let args = leader_args(&lease);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let leader = OperatorProcess::spawn(&unique("term-leader"), &args);
    wait_for("a leader", Duration::from_secs(60), || async { is_leader(&leader)?.then_some(()) }).await;
    let mut standby = OperatorProcess::spawn(&unique("term-standby"), &args);
    wait_for("the standby to be ready", Duration::from_secs(60), || async {
        http_get(standby.metrics_port, "/readyz").filter(|(code, _)| *code == 200)
    })
    .await;
    stops_soon_after_sigterm(&mut standby, "standby").await;

    // The leader with reconciles in flight.
    let names: Vec<String> = (0..15).map(|_| unique("term-busy")).collect();
    for name in &names {
        apply_retrying(&client, &app(name)).await;
    }
    let mut leader = leader;
    stops_soon_after_sigterm(&mut leader, "leader with reconciles in flight").await;
    // It let the lease go: another replica takes over at once, not after the lease expires.
    let next = OperatorProcess::spawn(&unique("term-next"), &args);
    let started = Instant::now();
    wait_for("the next replica to lead", Duration::from_secs(LEASE_SECONDS * 3), || async {
        is_leader(&next)?.then_some(())
    })
    .await;
    eprintln!("the next replica led {:?} after starting", started.elapsed());
    all_ready(&client, &names, READY).await;
    delete_apps(&client, &names).await;
    // Let this operator clean the apps up before it goes.
    let api: Api<ResilientApp> = Api::all(client.clone());
    wait_for("the apps to be cleaned up", Duration::from_secs(120), || async {
        for name in &names {
            api.get_opt(name).await.ok()?.is_none().then_some(())?;
        }
        Some(())
    })
    .await;
    drop(next);
}
