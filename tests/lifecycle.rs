//! The operator's memory follows the apps: a deleted app leaves nothing behind (its metrics series,
//! last status, failure count). In a test binary of its own, so that no other test creates or
//! deletes apps meanwhile.

mod common;

use std::time::Duration;

use common::*;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use resilient_operator::api::ResilientApp;
use serde_json::json;

/// Apps the operator counts in `resilient_operator_apps` (every app it has a status for).
fn counted() -> f64 {
    metric_sum(&operator_metrics(), "resilient_operator_apps{")
}

/// Wait until the operator counts exactly the apps that exist.
async fn counts_exactly_the_apps(client: &kube::Client, what: &str) -> f64 {
    let apps: Api<ResilientApp> = Api::all(client.clone());
    wait_for(what, Duration::from_secs(90), || async {
        let existing = apps.list(&ListParams::default()).await.ok()?.items.len() as f64;
        (counted() == existing).then_some(existing)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_app_leaves_nothing_behind() {
    let client = setup().await;
    let before = counts_exactly_the_apps(&client, "the operator to count every existing app").await;
    let apps: Api<ResilientApp> = Api::all(client.clone());
    let names: Vec<String> = (0..3).map(|_| unique("forget")).collect();
    for name in &names {
        let app = json!({
            "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp",
            "metadata": {"name": name},
            "spec": {"components": [{"name": "web", "image": "x", "minAvailable": 2}]}
        });
        apps.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(&app)).await.unwrap();
    }
    let with = counts_exactly_the_apps(&client, "the three new apps to be counted").await;
    assert_eq!(with, before + 3.0);
    for name in &names {
        apps.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in &names {
        wait_for(&format!("{name} to be gone (cleaned up, finalizer removed)"), Duration::from_secs(90), || async {
            apps.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    // Without forgetting, the gauge would keep the three deleted apps for ever.
    let after = counts_exactly_the_apps(&client, "the deleted apps to be forgotten").await;
    assert_eq!(after, before);
}
