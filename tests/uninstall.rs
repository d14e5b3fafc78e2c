//! Uninstalling: deleting the ResilientApp CRD while apps exist deletes no namespace and stops no
//! workload, whatever the apps' deletionPolicy. A test binary of its own: it deletes the CRD.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_crd_deletes_no_namespace() {
    let client = setup().await;
    let names = [unique("uninst-retain"), unique("uninst-delete")];
    for (name, policy) in names.iter().zip(["Retain", "Delete"]) {
        let app = json!({
            "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "metadata": {"name": name},
            "spec": {"deletionPolicy": policy, "components": [{"name": "web", "image": "x", "minAvailable": 2}]}
        });
        apply_app(&client, &app).await;
    }
    for name in &names {
        wait_status(&client, name, "Ready=True", Duration::from_secs(120), |s| is_true(s, "Ready")).await;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("resilientapps.resilient.dev", &DeleteParams::default()).await.unwrap();
    wait_for("the CRD to be gone", Duration::from_secs(120), || async {
        crds.get_opt("resilientapps.resilient.dev").await.ok()?.is_none().then_some(())
    })
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in &names {
        let ns = namespaces.get(name).await.unwrap_or_else(|e| panic!("namespace {name} was deleted: {e}"));
        assert!(ns.metadata.deletion_timestamp.is_none(), "namespace {name} is being deleted");
        assert_eq!(ns.labels().get("resilient.dev/retained-from"), Some(name));
        // The workloads keep running: no owner reference left for garbage collection to follow.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), name);
        let web = deployments.get("web").await.unwrap_or_else(|e| panic!("{name}/web was deleted: {e}"));
        assert!(web.owner_references().is_empty());
        assert!(web.metadata.deletion_timestamp.is_none());
    }
    // Put the CRD back for whatever runs next, and clean up.
    ensure_crd(&client).await;
    for name in &names {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
}
