//! The reconciler against the local control plane: every child with the right fields, bad input
//! rejected at admission, drift put back, orphans pruned, foreign namespaces left alone, garbage
//! collection, and zero writes once in sync.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, LimitRange, Namespace, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use resilient_operator::api::ResilientApp;
use serde_json::{Value, json};

const READY_TIMEOUT: Duration = Duration::from_secs(90);

async fn ready(client: &Client, name: &str) -> ResilientApp {
    wait_status(client, name, "Ready=True", READY_TIMEOUT, |s| {
        is_true(s, "Ready") && condition(s, "Reconciling").is_none()
    })
    .await
}

fn labels_of<K: Resource>(o: &K) -> BTreeMap<String, String> {
    o.meta().labels.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn example_app_gets_every_child_with_the_right_fields() {
    let client = setup().await;
    let name = unique("shop");
    let app = apply_app(&client, &example("shop.yaml", &name)).await;
    let uid = app.uid().unwrap();
    let app = ready(&client, &name).await;
    let status = app.status.clone().unwrap();
    assert_eq!(status.zones, ["zone-a", "zone-b", "zone-c"]);
    assert!(is_true(&status, "ZoneFailureTolerant"), "{:?}", status.conditions);
    for c in &status.conditions {
        assert_eq!(c.observed_generation, app.metadata.generation, "{}", c.type_);
        assert!(!c.reason.is_empty() && !c.message.is_empty(), "{c:?}");
    }
    let web = status.components.iter().find(|c| c.name == "web").unwrap();
    assert_eq!((web.replicas, web.ready_replicas, web.ready_after_worst_zone_loss), (6, 6, 4));
    assert_eq!(web.ready_by_zone, BTreeMap::from([("zone-a".into(), 2), ("zone-b".into(), 2), ("zone-c".into(), 2)]));

    let ns: Namespace = Api::all(client.clone()).get(&name).await.unwrap();
    let ns_labels = labels_of(&ns);
    assert_eq!(ns_labels["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(ns_labels["pod-security.kubernetes.io/warn"], "restricted");
    assert_eq!(ns_labels["pod-security.kubernetes.io/audit"], "restricted");
    // The namespace is the app's by label, never by owner reference: deleting the app must not
    // garbage-collect it (deletionPolicy decides, see tests/deletion.rs).
    assert!(ns.owner_references().is_empty(), "{:?}", ns.owner_references());
    assert_eq!(ns_labels["resilient.dev/app"], name);

    // Every namespaced child: labels and controller reference.
    let check = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let labels = meta.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "resilient-operator");
        assert_eq!(labels["resilient.dev/app"], name);
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), (uid.as_str(), Some(true)));
    };
    let quotas: Vec<ResourceQuota> =
        Api::namespaced(client.clone(), &name).list(&ListParams::default()).await.unwrap().items;
    assert_eq!(quotas.len(), 1);
    let hard = quotas[0].spec.clone().unwrap().hard.unwrap();
    assert_eq!(hard["pods"].0, "19");
    quotas.iter().for_each(|o| check(&o.metadata));
    let lrs: Vec<LimitRange> = Api::namespaced(client.clone(), &name).list(&ListParams::default()).await.unwrap().items;
    assert_eq!(lrs.len(), 1);
    let policies: Vec<NetworkPolicy> =
        Api::namespaced(client.clone(), &name).list(&ListParams::default()).await.unwrap().items;
    let mut policy_names: Vec<String> = policies.iter().map(|p| p.name_any()).collect();
    policy_names.sort();
    assert_eq!(
        policy_names,
        [
            "resilient-allow-dns-and-app-egress",
            "resilient-allow-ingress-from-to-web",
            "resilient-api-ingress",
            "resilient-default-deny"
        ]
    );
    policies.iter().for_each(|o| check(&o.metadata));
    let bindings: Vec<RoleBinding> =
        Api::namespaced(client.clone(), &name).list(&ListParams::default()).await.unwrap().items;
    let roles: BTreeMap<String, String> = bindings.iter().map(|b| (b.name_any(), b.role_ref.name.clone())).collect();
    assert_eq!(
        roles,
        BTreeMap::from([("resilient-admins".into(), "admin".into()), ("resilient-viewers".into(), "view".into())])
    );
    let deployments: Vec<Deployment> =
        Api::namespaced(client.clone(), &name).list(&ListParams::default()).await.unwrap().items;
    let replicas: BTreeMap<String, i32> =
        deployments.iter().map(|d| (d.name_any(), d.spec.as_ref().unwrap().replicas.unwrap())).collect();
    assert_eq!(replicas, BTreeMap::from([("api".into(), 3), ("web".into(), 6), ("worker".into(), 2)]));
    for d in &deployments {
        check(&d.metadata);
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let tsc = pod.topology_spread_constraints.as_ref().unwrap();
        assert!(
            tsc.iter()
                .any(|t| t.topology_key == "topology.kubernetes.io/zone" && t.when_unsatisfiable == "DoNotSchedule")
        );
        let tol = pod.tolerations.as_ref().unwrap();
        assert!(tol.iter().any(
            |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                && t.toleration_seconds == Some(30)
        ));
    }
    let pdbs: Vec<PodDisruptionBudget> =
        Api::namespaced(client.clone(), &name).list(&ListParams::default()).await.unwrap().items;
    assert_eq!(pdbs.len(), 3);
    let services: Vec<Service> =
        Api::namespaced(client.clone(), &name).list(&ListParams::default()).await.unwrap().items;
    let mut svc_names: Vec<String> = services.iter().map(|s| s.name_any()).collect();
    svc_names.sort();
    assert_eq!(svc_names, ["api", "web"]);

    // What a person sees.
    let get = kubectl(&["get", "rapp", &name], None);
    let text = String::from_utf8_lossy(&get.stdout);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "TOLERANT", "ZONES", "AGE"]);
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], [name.as_str(), "True", "True"]);
    let wide = String::from_utf8_lossy(&kubectl(&["get", "rapp", &name, "-o", "wide"], None).stdout).to_string();
    assert!(wide.contains("MESSAGE") && wide.contains("3 components are at or above minAvailable"), "{wide}");
    let describe = String::from_utf8_lossy(&kubectl(&["describe", "rapp", &name], None).stdout).to_string();
    assert!(
        describe.contains("ZoneFailureTolerant") && describe.contains("every component keeps minAvailable"),
        "{describe}"
    );

    delete_app(&client, &name).await;
}

async fn delete_app(client: &Client, name: &str) {
    let api: Api<ResilientApp> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// kubectl apply of `app` must fail with every one of `expected` in the error.
fn rejected(app: &Value, expected: &[&str]) {
    let out = kubectl(&["apply", "-f", "-"], Some(&app.to_string()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted, but should be rejected: {app}");
    for e in expected {
        assert!(stderr.contains(e), "error does not name `{e}`:\n{stderr}");
    }
}

fn minimal(name: &str) -> Value {
    json!({
        "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp",
        "metadata": {"name": name},
        "spec": {"components": [{"name": "web", "image": "x", "minAvailable": 2}]}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_rejected_at_admission_naming_the_field() {
    let client = setup().await;
    let name = unique("bad");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut app = minimal(&name);
        f(&mut app);
        app
    };
    rejected(&with(&|a| a["spec"]["components"] = json!([])), &["spec.components", "at least 1 item"]);
    rejected(
        &with(
            &|a| a["spec"]["components"] = json!([{"name": "web", "image": "x", "minAvailable": 1}, {"name": "web", "image": "y", "minAvailable": 1}]),
        ),
        &["spec.components", "Duplicate value"],
    );
    rejected(&with(&|a| a["spec"]["components"][0]["name"] = json!("Web_1")), &["spec.components[0].name"]);
    rejected(&with(&|a| a["spec"]["components"][0]["minAvailable"] = json!(0)), &["spec.components[0].minAvailable"]);
    rejected(
        &with(&|a| a["spec"]["resilience"] = json!({"zoneFailuresTolerated": 3})),
        &["spec.resilience.zoneFailuresTolerated"],
    );
    rejected(
        &with(&|a| a["spec"]["components"][0]["replicas"] = json!(1)),
        &["spec.components[0].replicas", "must be >= minAvailable"],
    );
    rejected(&with(&|a| a["spec"]["podSecurity"] = json!("open")), &["spec.podSecurity", "Unsupported value"]);
    rejected(
        &with(&|a| a["spec"]["network"] = json!({"isolation": "Loose"})),
        &["spec.network.isolation", "Unsupported value"],
    );
    rejected(
        &with(&|a| a["spec"]["components"][0]["allowFrom"] = json!(["nope"])),
        &["spec.components", "allowFrom may only name components of this app"],
    );
    rejected(&with(&|a| a["metadata"]["name"] = json!("not.a.label")), &["metadata.name"]);

    // spec.namespace may not change once set (or defaulted).
    let ok = kubectl(&["apply", "-f", "-"], Some(&minimal(&name).to_string()));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    rejected(&with(&|a| a["spec"]["namespace"] = json!("elsewhere")), &["spec.namespace", "immutable"]);
    // The operator keeps serving other apps and this one.
    ready(&client, &name).await;
    delete_app(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_and_edited_children_are_put_back() {
    let client = setup().await;
    let name = unique("drift");
    apply_app(&client, &example("hello.yaml", &name)).await;
    ready(&client, &name).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &name);
    let original = deployments.get("hello").await.unwrap();

    // Deleted Deployment: recreated.
    deployments.delete("hello", &DeleteParams::default()).await.unwrap();
    wait_for("the Deployment to come back", Duration::from_secs(30), || async {
        let d = deployments.get_opt("hello").await.ok()??;
        (d.uid() != original.uid()).then_some(())
    })
    .await;

    // Scaled down by hand: scaled back.
    let scaled = kubectl(&["scale", "deployment/hello", "-n", &name, "--replicas=1"], None);
    assert!(scaled.status.success(), "{}", String::from_utf8_lossy(&scaled.stderr));
    wait_for("replicas to be put back to 3", Duration::from_secs(30), || async {
        let d = deployments.get("hello").await.ok()?;
        (d.spec?.replicas == Some(3)).then_some(())
    })
    .await;

    // Spread removed: put back.
    let patch = json!([{"op": "remove", "path": "/spec/template/spec/topologySpreadConstraints"}]);
    let out = kubectl(&["patch", "deployment/hello", "-n", &name, "--type=json", "-p", &patch.to_string()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the zone spread to be put back", Duration::from_secs(30), || async {
        let d = deployments.get("hello").await.ok()?;
        let tsc = d.spec?.template.spec?.topology_spread_constraints?;
        tsc.iter().any(|t| t.topology_key == "topology.kubernetes.io/zone").then_some(())
    })
    .await;

    // NetworkPolicy loosened: put back.
    let loosen = json!({"spec": {"policyTypes": ["Ingress"]}});
    let out = kubectl(
        &["patch", "networkpolicy/resilient-default-deny", "-n", &name, "--type=merge", "-p", &loosen.to_string()],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("default-deny egress to be put back", Duration::from_secs(30), || async {
        let p = policies.get("resilient-default-deny").await.ok()?;
        (p.spec?.policy_types? == ["Ingress", "Egress"]).then_some(())
    })
    .await;

    // NetworkPolicy deleted: recreated.
    policies.delete("resilient-allow-dns-and-app-egress", &DeleteParams::default()).await.unwrap();
    wait_for("the egress policy to come back", Duration::from_secs(30), || async {
        policies.get_opt("resilient-allow-dns-and-app-egress").await.ok()?.map(|_| ())
    })
    .await;
    ready(&client, &name).await;
    delete_app(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_component_deletes_its_children() {
    let client = setup().await;
    let name = unique("prune");
    let mut app = example("hello.yaml", &name);
    app["spec"]["components"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "worker", "image": "x", "minAvailable": 1, "ports": [{"containerPort": 80}], "service": {}, "allowFrom": ["hello"]}));
    apply_app(&client, &app).await;
    ready(&client, &name).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &name);
    let services: Api<Service> = Api::namespaced(client.clone(), &name);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &name);
    assert!(deployments.get_opt("worker").await.unwrap().is_some());
    assert!(policies.get_opt("resilient-worker-ingress").await.unwrap().is_some());

    apply_app(&client, &example("hello.yaml", &name)).await;
    wait_for("the worker's children to be deleted", Duration::from_secs(30), || async {
        let gone = deployments.get_opt("worker").await.ok()?.is_none()
            && pdbs.get_opt("worker").await.ok()?.is_none()
            && services.get_opt("worker").await.ok()?.is_none()
            && policies.get_opt("resilient-worker-ingress").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    assert!(deployments.get_opt("hello").await.unwrap().is_some(), "the remaining component must stay");
    delete_app(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_namespace_is_never_adopted() {
    let client = setup().await;
    let name = unique("taken");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let foreign: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": "someone-else"}}})).unwrap();
    namespaces.create(&PostParams::default(), &foreign).await.unwrap();
    let before = namespaces.get(&name).await.unwrap();

    apply_app(&client, &example("hello.yaml", &name)).await;
    let app = wait_status(&client, &name, "Stalled=NamespaceConflict", READY_TIMEOUT, |s| {
        condition(s, "Stalled").is_some_and(|c| c.reason == "NamespaceConflict")
    })
    .await;
    let status = app.status.unwrap();
    assert!(condition(&status, "Reconciling").is_none(), "Reconciling and Stalled together");
    let ready = condition(&status, "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NamespaceConflict"));
    assert!(ready.message.contains(&format!("namespace {name} already exists")), "{}", ready.message);

    let events: Api<Event> = Api::all(client.clone());
    wait_for("a NamespaceConflict warning Event", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("NamespaceConflict") && e.type_.as_deref() == Some("Warning"))
            .then_some(())
    })
    .await;

    let after = namespaces.get(&name).await.unwrap();
    assert_eq!(after.metadata.labels, before.metadata.labels, "labels of a foreign namespace changed");
    assert_eq!(after.metadata.owner_references, None);
    assert_eq!(after.resource_version(), before.resource_version(), "the foreign namespace was written to");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    assert!(deployments.list(&ListParams::default()).await.unwrap().items.is_empty());

    delete_app(&client, &name).await;
    namespaces.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_app_whose_namespace_holds_nothing_else_deletes_the_namespace() {
    let client = setup().await;
    let name = unique("gc");
    apply_app(&client, &example("hello.yaml", &name)).await;
    ready(&client, &name).await;
    delete_app(&client, &name).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // deletionPolicy Retain (the default) with nothing but the operator's objects in it.
    wait_for("the namespace to be deleted", Duration::from_secs(120), || async {
        namespaces.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_in_sync_costs_no_writes() {
    let client = setup().await;
    let name = unique("quiet");
    apply_app(&client, &example("shop.yaml", &name)).await;
    ready(&client, &name).await;
    let snapshot = children_versions(&client, &name).await;
    let since = audit_now();
    let apps: Api<ResilientApp> = Api::all(client.clone());
    for i in 0..5 {
        // Each annotation change is an event on the app: a full reconcile that must find nothing to do.
        let before = metric_sum(&operator_metrics(), "resilient_operator_reconciles_total");
        let patch = json!({"metadata": {"annotations": {"test.resilient.dev/resync": i.to_string()}}});
        apps.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        wait_for("the operator to reconcile", Duration::from_secs(30), || async {
            (metric_sum(&operator_metrics(), "resilient_operator_reconciles_total") > before).then_some(())
        })
        .await;
    }
    // The audit backend is blocking: a request is in the log before its response is sent.
    let ns = name.clone();
    let writes_about_app = |e: &Value| {
        let r = &e["objectRef"];
        let about_app = r["namespace"] == ns.as_str()
            || r["name"] == ns.as_str()
            || r["name"].as_str().is_some_and(|n| n.starts_with(&format!("{ns}.")));
        about_app && WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default())
    };
    // The same count over the app's whole life is not zero: the filter does see the operator.
    let all = audited_requests(resilient_operator::cli::USER_AGENT, "", writes_about_app);
    // Three components: at least their Deployments, PDBs and Services, the quota, the limits, the
    // NetworkPolicies, the finalizer and the status.
    assert!(all.get("patch").copied().unwrap_or(0) >= 12, "the audit log shows no operator writes at all: {all:?}");
    let writes = audited_requests(resilient_operator::cli::USER_AGENT, &since, writes_about_app);
    assert!(writes.is_empty(), "writes by the operator while in sync: {writes:?}");
    assert_eq!(children_versions(&client, &name).await, snapshot, "a child changed while in sync");
    delete_app(&client, &name).await;
}

async fn children_versions(client: &Client, ns: &str) -> BTreeMap<String, String> {
    async fn versions<K>(client: &Client, ns: &str, out: &mut BTreeMap<String, String>)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        for o in
            api.list(&ListParams::default().labels("app.kubernetes.io/managed-by=resilient-operator")).await.unwrap()
        {
            out.insert(format!("{}/{}", K::kind(&()), o.name_any()), o.resource_version().unwrap_or_default());
        }
    }
    let mut out = BTreeMap::new();
    versions::<ResourceQuota>(client, ns, &mut out).await;
    versions::<LimitRange>(client, ns, &mut out).await;
    versions::<NetworkPolicy>(client, ns, &mut out).await;
    versions::<RoleBinding>(client, ns, &mut out).await;
    versions::<Service>(client, ns, &mut out).await;
    versions::<PodDisruptionBudget>(client, ns, &mut out).await;
    versions::<Deployment>(client, ns, &mut out).await;
    let namespace: Namespace = Api::all(client.clone()).get(ns).await.unwrap();
    out.insert("Namespace".into(), namespace.resource_version().unwrap_or_default());
    out
}

/// What Flux sees: kstatus (sigs.k8s.io/cli-utils, built as e2e/tools/kstatus) reads the
/// conditions as Current, InProgress and Failed.
#[tokio::test(flavor = "multi_thread")]
async fn flux_kstatus_reads_current_in_progress_and_failed() {
    let client = setup().await;
    let current = unique("ks-current");
    let progressing = unique("ks-progress");
    let failed = unique("ks-failed");
    apply_app(&client, &example("hello.yaml", &current)).await;
    // Pods pinned to a zone that does not exist stay Pending: the app keeps rolling out.
    let mut pending = example("hello.yaml", &progressing);
    pending["spec"]["resilience"] = json!({"zones": ["zone-x"]});
    apply_app(&client, &pending).await;
    // A foreign namespace: stalled.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": failed}})).unwrap())
        .await
        .unwrap();
    apply_app(&client, &example("hello.yaml", &failed)).await;

    ready(&client, &current).await;
    wait_status(&client, &progressing, "Reconciling", READY_TIMEOUT, |s| is_true(s, "Reconciling")).await;
    wait_status(&client, &failed, "Stalled", READY_TIMEOUT, |s| is_true(s, "Stalled")).await;

    let apps: Api<ResilientApp> = Api::all(client.clone());
    let mut input = String::new();
    for name in [&current, &progressing, &failed] {
        let mut obj = serde_json::to_value(apps.get(name).await.unwrap()).unwrap();
        obj["metadata"]["managedFields"] = Value::Null;
        input.push_str(&obj.to_string());
        input.push('\n');
    }
    let kstatus = cluster_env().bin_dir.join("kstatus");
    let mut child = std::process::Command::new(&kstatus)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", kstatus.display()));
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let results: BTreeMap<String, String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["name"].as_str().unwrap().to_string(), v["status"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(results[&current], "Current", "{results:?}");
    assert_eq!(results[&progressing], "InProgress", "{results:?}");
    assert_eq!(results[&failed], "Failed", "{results:?}");

    for name in [&current, &progressing, &failed] {
        delete_app(&client, name).await;
    }
    namespaces.delete(&failed, &DeleteParams::default()).await.unwrap();
}

/// Deleting the app's namespace by hand: the operator waits until it is gone (Reconciling,
/// reason Waiting) and then creates it, and everything in it, again.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_namespace_comes_back() {
    let client = setup().await;
    let name = unique("ns-back");
    apply_app(&client, &example("hello.yaml", &name)).await;
    ready(&client, &name).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let old = namespaces.get(&name).await.unwrap().uid();
    namespaces.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_for("a new namespace", Duration::from_secs(120), || async {
        let ns = namespaces.get_opt(&name).await.ok()??;
        (ns.uid() != old && ns.metadata.deletion_timestamp.is_none()).then_some(())
    })
    .await;
    ready(&client, &name).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    assert!(deployments.get_opt("hello").await.unwrap().is_some());
    delete_app(&client, &name).await;
}
