//! Deleting an app never silently deletes data: deletionPolicy Retain, Delete and Orphan, adoption
//! of a retained namespace, the upgrade from namespaces owned by the app, and a prune that never
//! touches a look-alike.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolume, PersistentVolumeClaim, ResourceQuota, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use resilient_operator::api::ResilientApp;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);

fn app(name: &str, policy: &str) -> Value {
    json!({
        "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp",
        "metadata": {"name": name},
        "spec": {
            "deletionPolicy": policy,
            "access": {"viewers": ["team-a"]},
            "components": [
                {"name": "web", "image": "x", "minAvailable": 2, "ports": [{"name": "http", "containerPort": 8080}], "service": {}},
                {"name": "worker", "image": "x", "minAvailable": 1}
            ]
        }
    })
}

async fn ready(client: &Client, name: &str) -> ResilientApp {
    wait_status(client, name, "Ready=True", TIMEOUT, |s| is_true(s, "Ready") && condition(s, "Reconciling").is_none())
        .await
}

async fn delete_and_wait_gone(client: &Client, name: &str) {
    let apps: Api<ResilientApp> = Api::all(client.clone());
    apps.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for(&format!("{name} to be gone (its finalizer removed)"), TIMEOUT, || async {
        apps.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

async fn names<K>(client: &Client, ns: &str) -> Vec<String>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut v: Vec<String> =
        api.list(&ListParams::default()).await.unwrap().items.iter().map(|o| o.name_any()).collect();
    v.sort();
    v
}

/// A PersistentVolumeClaim bound to a static PersistentVolume, a Secret and a ConfigMap: a team's data.
async fn add_data(client: &Client, ns: &str) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": format!("{ns}-data")},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "static",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": format!("/tmp/resilient-tests/{ns}")}}
    }))
    .unwrap();
    pvs.create(&PostParams::default(), &pv).await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "static", "volumeName": format!("{ns}-data"),
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    pvcs.create(&PostParams::default(), &pvc).await.unwrap();
    wait_for("the claim to bind to the static volume", TIMEOUT, || async {
        let pvc = pvcs.get("data").await.ok()?;
        (pvc.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "db-password"}, "stringData": {"password": "s3cret"}}))
            .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"a": "b"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retain_keeps_the_data_and_the_same_app_adopts_it_and_delete_removes_it() {
    let client = setup().await;
    let name = unique("keep");
    apply_app(&client, &app(&name, "Retain")).await;
    ready(&client, &name).await;
    add_data(&client, &name).await;

    delete_and_wait_gone(&client, &name).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces.get(&name).await.expect("the namespace with data must be kept");
    assert!(ns.metadata.deletion_timestamp.is_none(), "the namespace is being deleted");
    assert_eq!(ns.labels().get("resilient.dev/retained-from"), Some(&name));
    assert!(!ns.labels().contains_key("resilient.dev/app"), "still labelled as the app's: {:?}", ns.labels());
    assert!(ns.owner_references().is_empty());
    // The data is there, exactly; the operator's children are gone.
    assert_eq!(names::<PersistentVolumeClaim>(&client, &name).await, ["data"]);
    assert_eq!(names::<Secret>(&client, &name).await, ["db-password"]);
    assert_eq!(names::<ConfigMap>(&client, &name).await, ["kube-root-ca.crt", "settings"]);
    wait_for("the operator's children to be gone", TIMEOUT, || async {
        let gone = names::<Deployment>(&client, &name).await.is_empty()
            && names::<Service>(&client, &name).await.is_empty()
            && names::<PodDisruptionBudget>(&client, &name).await.is_empty()
            && names::<NetworkPolicy>(&client, &name).await.is_empty()
            && names::<ResourceQuota>(&client, &name).await.is_empty()
            && names::<LimitRange>(&client, &name).await.is_empty()
            && names::<k8s_openapi::api::rbac::v1::RoleBinding>(&client, &name).await.is_empty();
        gone.then_some(())
    })
    .await;
    let note = event_message(&client, &name, "NamespaceRetained", Duration::from_secs(30)).await;
    assert!(note.contains("1 PersistentVolumeClaim, 1 Secret, 1 ConfigMap"), "{note}");

    // The same app again adopts its namespace and its data.
    apply_app(&client, &app(&name, "Delete")).await;
    ready(&client, &name).await;
    let ns = namespaces.get(&name).await.unwrap();
    assert_eq!(ns.labels().get("resilient.dev/app"), Some(&name));
    assert!(!ns.labels().contains_key("resilient.dev/retained-from"));
    assert_eq!(names::<PersistentVolumeClaim>(&client, &name).await, ["data"]);
    event_message(&client, &name, "NamespaceAdopted", Duration::from_secs(30)).await;

    // deletionPolicy Delete: the namespace goes, with everything in it.
    delete_and_wait_gone(&client, &name).await;
    wait_for("the namespace to be deleted", TIMEOUT, || async {
        namespaces.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let _ = pvs.delete(&format!("{name}-data"), &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orphan_leaves_everything_running_without_owner_references() {
    let client = setup().await;
    let name = unique("orphan");
    apply_app(&client, &app(&name, "Orphan")).await;
    ready(&client, &name).await;
    delete_and_wait_gone(&client, &name).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    for d in ["web", "worker"] {
        let d = deployments.get(d).await.expect("the Deployment must keep running");
        assert!(d.metadata.deletion_timestamp.is_none());
        assert!(d.owner_references().is_empty(), "{:?}", d.owner_references());
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &name);
    assert!(services.get("web").await.unwrap().owner_references().is_empty());
    let ns = Api::<Namespace>::all(client.clone()).get(&name).await.unwrap();
    assert_eq!(ns.labels().get("resilient.dev/retained-from"), Some(&name));
    event_message(&client, &name, "Orphaned", Duration::from_secs(30)).await;
    let _ = Api::<Namespace>::all(client.clone()).delete(&name, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_owned_by_the_app_loses_that_owner_reference() {
    let client = setup().await;
    let name = unique("upgrade");
    let created = apply_app(&client, &app(&name, "Retain")).await;
    ready(&client, &name).await;
    // What earlier versions applied: the namespace with a controller reference to the app.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let old = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "name": name,
            "uid": created.uid().unwrap(), "controller": true, "blockOwnerDeletion": true
        }]}
    });
    let patched =
        namespaces.patch(&name, &PatchParams::apply("resilient-operator"), &Patch::Apply(&old)).await.unwrap();
    assert!(!patched.owner_references().is_empty());
    wait_for("the operator to drop the namespace's owner reference", TIMEOUT, || async {
        namespaces.get(&name).await.ok()?.owner_references().is_empty().then_some(())
    })
    .await;
    delete_and_wait_gone(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_never_touches_a_look_alike() {
    let client = setup().await;
    let name = unique("alike");
    apply_app(&client, &app(&name, "Delete")).await;
    ready(&client, &name).await;
    // A user's Service with exactly the labels of the app's children, but no owner reference.
    let services: Api<Service> = Api::namespaced(client.clone(), &name);
    let alike: Service = serde_json::from_value(json!({
        "metadata": {"name": "worker", "labels": {
            "app.kubernetes.io/managed-by": "resilient-operator", "resilient.dev/app": name, "resilient.dev/component": "worker"}},
        "spec": {"ports": [{"port": 80}], "selector": {"resilient.dev/app": name}}
    }))
    .unwrap();
    services.create(&PostParams::default(), &alike).await.unwrap();
    // Removing the worker component prunes its Deployment and PDB: a real prune pass.
    let mut fewer = app(&name, "Delete");
    fewer["spec"]["components"].as_array_mut().unwrap().pop();
    apply_app(&client, &fewer).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    wait_for("the worker Deployment to be pruned", TIMEOUT, || async {
        deployments.get_opt("worker").await.ok()?.is_none().then_some(())
    })
    .await;
    ready(&client, &name).await;
    let kept = services.get("worker").await.expect("the look-alike Service must survive the prune");
    assert!(kept.metadata.deletion_timestamp.is_none());
    delete_and_wait_gone(&client, &name).await;
}

/// config/admission-finalizer: the finalizer is set at admission, so the operator never writes a
/// new app just to add it; a later server-side apply of the same manifest by its author keeps it
/// (the author does not own it), and deletion works as with the operator's own finalizer.
///
/// The shipped policy is applied as it is; the binding is this test's own and selects only the
/// apps labelled for it (a binding for every app would put finalizers on the inert apps other
/// test binaries create and delete without an operator).
#[tokio::test(flavor = "multi_thread")]
async fn the_admission_policy_sets_the_finalizer_and_spares_the_operator_a_write() {
    let client = setup().await;
    let file = std::fs::read_to_string(root().join("config/admission-finalizer/finalizer_policy.yaml")).unwrap();
    let policy = file.split("\n---\n").find(|doc| doc.contains("kind: MutatingAdmissionPolicy\n")).unwrap();
    let out = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(policy));
    assert!(out.status.success(), "applying the policy: {}", String::from_utf8_lossy(&out.stderr));
    let label = unique("finalizer-policy");
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1beta1", "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": label},
        "spec": {"policyName": "resilient-app-finalizer",
                 "matchResources": {"objectSelector": {"matchLabels": {"resilient-tests/finalizer-policy": label}}}}
    });
    let out = kubectl(&["apply", "--server-side", "-f", "-"], Some(&binding.to_string()));
    assert!(out.status.success(), "binding: {}", String::from_utf8_lossy(&out.stderr));
    let labelled = |name: &str| {
        let mut a = app(name, "Retain");
        a["metadata"]["labels"] = json!({"resilient-tests/finalizer-policy": label});
        a
    };
    // Policies reach the admission plugin through an informer: a server-side dry run tells when.
    let apps: Api<ResilientApp> = Api::all(client.clone());
    let probe = unique("finalizer-probe");
    wait_for("the finalizer policy to be in effect", Duration::from_secs(60), || async {
        let dry = PatchParams::apply("resilient-tests").dry_run();
        let made = apps.patch(&probe, &dry, &Patch::Apply(labelled(&probe))).await.ok()?;
        made.finalizers().iter().any(|f| f == resilient_operator::api::FINALIZER).then_some(())
    })
    .await;

    let since = audit_now();
    let (with_policy, without) = (unique("finalizer-admitted"), unique("finalizer-by-operator"));
    apply_app(&client, &labelled(&with_policy)).await;
    apply_app(&client, &app(&without, "Retain")).await;
    ready(&client, &with_policy).await;
    ready(&client, &without).await;
    // Writes to the app object itself (not its status) by the operator: the finalizer patch.
    let finalizer_writes = |name: &str| {
        let name = name.to_string();
        audited_requests(resilient_operator::cli::USER_AGENT, &since, move |e| {
            let r = &e["objectRef"];
            r["resource"] == "resilientapps"
                && r["name"] == name.as_str()
                && r["subresource"].is_null()
                && WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default())
        })
        .values()
        .sum::<u64>()
    };
    // The control: the same count is not zero for an app the policy does not select.
    assert!(finalizer_writes(&without) >= 1, "the operator adds the finalizer of an app the policy skips");
    assert_eq!(finalizer_writes(&with_policy), 0, "the operator wrote an app that had its finalizer from admission");

    // The author applies the same manifest again: the finalizer stays, it is nobody's field.
    let again = apply_app(&client, &labelled(&with_policy)).await;
    assert!(again.finalizers().iter().any(|f| f == resilient_operator::api::FINALIZER), "{:?}", again.finalizers());
    let owned_by_author = again.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some("resilient-tests")
            && m.fields_v1.as_ref().is_some_and(|f| f.0.to_string().contains("f:finalizers"))
    });
    assert!(!owned_by_author, "the author's field manager owns the finalizer: {:?}", again.managed_fields());

    // Deleting works as before: the operator cleans up and lets the app go.
    delete_and_wait_gone(&client, &with_policy).await;
    delete_and_wait_gone(&client, &without).await;
    let _ = kubectl(&["delete", "mutatingadmissionpolicybinding", &label], None);
}
