//! What deleting a ResilientApp does, by its `deletionPolicy`, before its finalizer goes:
//! - `Retain`: delete the operator's children; delete the namespace only if nothing else is left
//!   in it, else keep it labelled `resilient.dev/retained-from` (an app of the same name adopts it);
//! - `Delete`: delete the namespace and everything in it;
//! - `Orphan`, and every app while the CRD itself is being deleted: keep everything running, drop
//!   the operator's owner references, and mark the namespace as retained.
//!
//! Only a namespace that belongs to the app is ever touched. The decisions (`leftover`,
//! `retention_note`) are pure; the rest is I/O.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::info;

use super::Context;
use super::apply::{Scoped, controlled_by};
use super::error::{Error, Result};
use super::gate::{NamespaceVerdict, namespace_verdict};
use super::status::Notice;
use crate::api::{DeletionPolicy, LABEL_APP, LABEL_MANAGED_BY, LABEL_RETAINED_FROM, MANAGER, ResilientApp};
use crate::render::child_kinds;

/// The ClusterRole (shipped in config/rbac) that lets the operator list what is left in a namespace
/// while it cleans up; bound in that namespace only, only for the cleanup.
pub const CLEANUP_ROLE: &str = "resilient-operator-cleanup";
/// How long a fresh RoleBinding may take to reach the API server's authorizer.
const RBAC_PROPAGATION: Duration = Duration::from_secs(10);

/// Clean up after a deleted app; the finalizer is removed when this returns Ok.
pub(super) async fn cleanup(app: &ResilientApp, ctx: &Context) -> Result<Action> {
    let (name, namespace) = (app.name_any(), app.target_namespace());
    let ns = super::reconcile::read_namespace(ctx, &namespace).await?;
    let notice = match ns {
        Some(ns) if namespace_verdict(Some(&ns), app) == NamespaceVerdict::Ours => {
            let uninstalling = crd_being_deleted(ctx).await?;
            match app.spec.deletion_policy {
                _ if uninstalling => {
                    release(ctx, app, &ns).await?;
                    notice(
                        "NamespaceRetained",
                        format!(
                            "the ResilientApp CRD is being deleted: namespace {namespace} and everything in it keep running, without owner references to the app"
                        ),
                    )
                }
                DeletionPolicy::Orphan => {
                    release(ctx, app, &ns).await?;
                    notice(
                        "Orphaned",
                        format!(
                            "deletionPolicy Orphan: namespace {namespace} and everything in it keep running, without owner references to the app"
                        ),
                    )
                }
                DeletionPolicy::Delete => {
                    delete_namespace(ctx, &ns).await?;
                    notice(
                        "NamespaceDeleted",
                        format!("deletionPolicy Delete: namespace {namespace} is deleted with everything in it"),
                    )
                }
                DeletionPolicy::Retain => retain(ctx, app, &ns).await?,
            }
        }
        _ => {
            notice("NothingToCleanUp", format!("namespace {namespace} is not this app's (or is gone): left untouched"))
        }
    };
    info!(app = %name, reason = notice.reason, "{}", notice.note);
    super::reconcile::publish(ctx, app, &notice).await;
    ctx.forget(&name);
    Ok(Action::await_change())
}

fn notice(reason: &str, note: String) -> Notice {
    Notice { type_: EventType::Normal, reason: reason.to_string(), action: "Cleanup", note }
}

async fn crd_being_deleted(ctx: &Context) -> Result<bool> {
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let crd = crds
        .get_metadata_opt("resilientapps.resilient.dev")
        .await
        .map_err(|e| Error::Cleanup(format!("reading the ResilientApp CRD: {e}")))?;
    Ok(crd.is_none_or(|c| c.metadata.deletion_timestamp.is_some()))
}

/// Retain: delete the operator's children, then the namespace if nothing else is in it.
async fn retain(ctx: &Context, app: &ResilientApp, ns: &Namespace) -> Result<Notice> {
    let namespace = ns.name_any();
    delete_children(ctx, app, &namespace).await?;
    let left = inventory(ctx, app, &namespace).await?;
    match retention_note(&left) {
        None => {
            delete_namespace(ctx, ns).await?;
            Ok(notice(
                "NamespaceDeleted",
                format!("namespace {namespace} held nothing but the operator's objects and is deleted"),
            ))
        }
        Some(kept) => {
            mark_retained(ctx, app, ns).await?;
            Ok(notice(
                "NamespaceRetained",
                format!(
                    "namespace {namespace} is kept because it still holds {kept}; the operator's objects are deleted. A ResilientApp named {} adopts it again; delete it by hand when the data is no longer needed",
                    app.name_any()
                ),
            ))
        }
    }
}

/// Delete every child of the app in its namespace (controlled by this app's uid; that very object).
async fn delete_children(ctx: &Context, app: &ResilientApp, namespace: &str) -> Result<()> {
    let (name, uid) = (app.name_any(), app.uid().unwrap_or_default());
    macro_rules! each_kind {
        ($($kind:ident: $field:ident,)*) => {$(
            for child in ctx.stores.$field.of_app(&name, namespace) {
                if !controlled_by(child.meta(), &uid) {
                    continue;
                }
                let api = <$kind as Resource>::Scope::api::<$kind>(ctx.client.clone(), namespace);
                let params = DeleteParams {
                    preconditions: Some(Preconditions { uid: child.uid(), resource_version: None }),
                    ..DeleteParams::background()
                };
                match api.delete(&child.name_any(), &params).await {
                    Ok(_) => ctx.metrics.api_write("delete", stringify!($kind)),
                    Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 409 => {}
                    Err(e) => return Err(Error::Cleanup(format!("deleting {} {}: {e}", stringify!($kind), child.name_any()))),
                }
            }
        )*};
    }
    // The Namespace is cluster-scoped: never matched by the namespace filter above.
    child_kinds!(each_kind);
    Ok(())
}

/// Orphan (and uninstall): drop the owner references of the children, mark the namespace retained.
async fn release(ctx: &Context, app: &ResilientApp, ns: &Namespace) -> Result<()> {
    let (name, uid, namespace) = (app.name_any(), app.uid().unwrap_or_default(), ns.name_any());
    let patch = Patch::Merge(serde_json::json!({"metadata": {"ownerReferences": null}}));
    macro_rules! each_kind {
        ($($kind:ident: $field:ident,)*) => {$(
            for child in ctx.stores.$field.of_app(&name, &namespace) {
                if !controlled_by(child.meta(), &uid) {
                    continue;
                }
                let api = <$kind as Resource>::Scope::api::<$kind>(ctx.client.clone(), &namespace);
                match api.patch(&child.name_any(), &PatchParams::default(), &patch).await {
                    Ok(_) => ctx.metrics.api_write("patch", stringify!($kind)),
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => return Err(Error::Cleanup(format!("releasing {} {}: {e}", stringify!($kind), child.name_any()))),
                }
            }
        )*};
    }
    child_kinds!(each_kind);
    mark_retained(ctx, app, ns).await
}

/// The namespace stays: it no longer belongs to the app, and an app of the same name may adopt it.
/// The managed-by and Pod Security labels stay (the operator may only write namespaces it manages).
async fn mark_retained(ctx: &Context, app: &ResilientApp, ns: &Namespace) -> Result<()> {
    // A merge patch, not an apply: the labels were set by a create and by applies alike.
    let patch = serde_json::json!({"metadata": {"labels": {LABEL_APP: null, LABEL_RETAINED_FROM: app.name_any()}}});
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    api.patch(&ns.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::Cleanup(format!("labelling namespace {} as retained: {e}", ns.name_any())))?;
    ctx.metrics.api_write("patch", "Namespace");
    Ok(())
}

async fn delete_namespace(ctx: &Context, ns: &Namespace) -> Result<()> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: ns.uid(), resource_version: None }),
        ..DeleteParams::background()
    };
    match api.delete(&ns.name_any(), &params).await {
        Ok(_) => ctx.metrics.api_write("delete", "Namespace"),
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => return Err(Error::Cleanup(format!("deleting namespace {}: {e}", ns.name_any()))),
    }
    Ok(())
}

/// One object found in the namespace: its kind (for the count) and metadata.
pub struct Found {
    pub kind: &'static str,
    pub meta: ObjectMeta,
}

/// What is left in the namespace besides the app's own children, for the decision to keep it.
/// The operator lists it through a RoleBinding to [`CLEANUP_ROLE`] made in that namespace only
/// (its own ServiceAccount may not read Secrets anywhere else), removed again afterwards.
async fn inventory(ctx: &Context, app: &ResilientApp, namespace: &str) -> Result<Vec<Found>> {
    let binding = cleanup_binding(ctx, namespace).await?;
    let deadline = Instant::now() + RBAC_PROPAGATION;
    let found = loop {
        match list_everything(ctx, namespace).await {
            Ok(found) => break found,
            // The new binding may not have reached the authorizer yet.
            Err(kube::Error::Api(s)) if s.code == 403 && binding.is_some() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(Error::Cleanup(format!("listing what is left in namespace {namespace}: {e}"))),
        }
    };
    if let Some(name) = binding {
        let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), namespace);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(Error::Cleanup(format!("deleting RoleBinding {name}: {e}"))),
        }
    }
    let uid = app.uid().unwrap_or_default();
    Ok(found.into_iter().filter(|f| leftover(f, &uid)).collect())
}

/// A RoleBinding of [`CLEANUP_ROLE`] to the operator's own ServiceAccount in `namespace`; `None`
/// when the operator does not run as a ServiceAccount (then its own rights must do).
async fn cleanup_binding(ctx: &Context, namespace: &str) -> Result<Option<String>> {
    let review = Api::<SelfSubjectReview>::all(ctx.client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| Error::Cleanup(format!("asking the API server who the operator is: {e}")))?;
    let user = review.status.and_then(|s| s.user_info).and_then(|u| u.username).unwrap_or_default();
    let Some((sa_namespace, sa_name)) = user.strip_prefix("system:serviceaccount:").and_then(|s| s.split_once(':'))
    else {
        return Ok(None);
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(CLEANUP_ROLE.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some([(LABEL_MANAGED_BY.to_string(), MANAGER.to_string())].into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: CLEANUP_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa_name.into(),
            namespace: Some(sa_namespace.into()),
            api_group: None,
        }]),
    };
    let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(CLEANUP_ROLE, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&binding))
        .await
        .map_err(|e| Error::Cleanup(format!("binding {CLEANUP_ROLE} in namespace {namespace}: {e}")))?;
    ctx.metrics.api_write("apply", "RoleBinding");
    Ok(Some(CLEANUP_ROLE.to_string()))
}

async fn list_kind<K>(ctx: &Context, namespace: &str, kind: &'static str, out: &mut Vec<Found>) -> kube::Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    out.extend(
        api.list_metadata(&ListParams::default()).await?.items.into_iter().map(|o| Found { kind, meta: o.metadata }),
    );
    Ok(())
}

/// Metadata of everything in the namespace that holds data or runs something.
async fn list_everything(ctx: &Context, namespace: &str) -> kube::Result<Vec<Found>> {
    let mut out = Vec::new();
    list_kind::<PersistentVolumeClaim>(ctx, namespace, "PersistentVolumeClaim", &mut out).await?;
    list_kind::<Secret>(ctx, namespace, "Secret", &mut out).await?;
    list_kind::<ConfigMap>(ctx, namespace, "ConfigMap", &mut out).await?;
    list_kind::<ServiceAccount>(ctx, namespace, "ServiceAccount", &mut out).await?;
    list_kind::<Pod>(ctx, namespace, "Pod", &mut out).await?;
    list_kind::<Service>(ctx, namespace, "Service", &mut out).await?;
    list_kind::<Deployment>(ctx, namespace, "Deployment", &mut out).await?;
    list_kind::<StatefulSet>(ctx, namespace, "StatefulSet", &mut out).await?;
    list_kind::<DaemonSet>(ctx, namespace, "DaemonSet", &mut out).await?;
    list_kind::<ReplicaSet>(ctx, namespace, "ReplicaSet", &mut out).await?;
    list_kind::<Job>(ctx, namespace, "Job", &mut out).await?;
    list_kind::<CronJob>(ctx, namespace, "CronJob", &mut out).await?;
    list_kind::<Role>(ctx, namespace, "Role", &mut out).await?;
    list_kind::<RoleBinding>(ctx, namespace, "RoleBinding", &mut out).await?;
    Ok(out)
}

/// Whether an object found in the namespace is someone's data or workload, as opposed to the app's
/// own children (being deleted), what Kubernetes puts into every namespace, and what a counted
/// workload controls.
pub fn leftover(found: &Found, app_uid: &str) -> bool {
    let meta = &found.meta;
    let name = meta.name.as_deref().unwrap_or_default();
    let controlled = meta.owner_references.iter().flatten().any(|o| o.controller == Some(true));
    let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).map(String::as_str);
    let automatic = match found.kind {
        "ConfigMap" => name == "kube-root-ca.crt",
        "ServiceAccount" => name == "default",
        "Secret" => annotation("kubernetes.io/service-account.name") == Some("default"),
        "RoleBinding" => name == CLEANUP_ROLE,
        // Run by a workload that is counted itself (or by the app's own Deployments).
        "Pod" | "ReplicaSet" | "Job" => controlled,
        _ => false,
    };
    !automatic && !controlled_by(meta, app_uid)
}

/// What keeps the namespace, counted by kind ("2 PersistentVolumeClaims, 1 Secret"), or `None`
/// when nothing does.
pub fn retention_note(left: &[Found]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for f in left {
        *counts.entry(f.kind).or_default() += 1;
    }
    // Data first, in the order a person looks for it.
    let order = ["PersistentVolumeClaim", "Secret", "ConfigMap"];
    let mut kinds: Vec<(&str, usize)> = counts.into_iter().collect();
    kinds.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(order.len()));
    let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}{}", if *n == 1 { "" } else { "s" })).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn found(kind: &'static str, name: &str, controller_uid: Option<&str>) -> Found {
        Found {
            kind,
            meta: ObjectMeta {
                name: Some(name.into()),
                owner_references: controller_uid
                    .map(|uid| vec![OwnerReference { uid: uid.into(), controller: Some(true), ..Default::default() }]),
                ..Default::default()
            },
        }
    }

    #[test]
    fn what_kubernetes_and_the_app_put_there_does_not_keep_a_namespace() {
        let app = "uid-app";
        assert!(!leftover(&found("ConfigMap", "kube-root-ca.crt", None), app));
        assert!(!leftover(&found("ServiceAccount", "default", None), app));
        let mut token = found("Secret", "default-token-x", None);
        token.meta.annotations = Some([("kubernetes.io/service-account.name".into(), "default".into())].into());
        assert!(!leftover(&token, app));
        assert!(!leftover(&found("RoleBinding", CLEANUP_ROLE, None), app));
        // The app's own children (still being deleted) and what its Deployments run.
        assert!(!leftover(&found("Deployment", "web", Some(app)), app));
        assert!(!leftover(&found("Service", "web", Some(app)), app));
        assert!(!leftover(&found("Pod", "web-abc", Some("uid-rs")), app));
        assert!(!leftover(&found("ReplicaSet", "web-abc", Some("uid-deploy")), app));
    }

    #[test]
    fn data_and_foreign_workloads_keep_a_namespace() {
        let app = "uid-app";
        assert!(leftover(&found("PersistentVolumeClaim", "data", None), app));
        assert!(leftover(&found("Secret", "db-password", None), app));
        assert!(leftover(&found("ConfigMap", "settings", None), app));
        assert!(leftover(&found("ServiceAccount", "ci", None), app));
        // A look-alike (the app's labels, no owner reference) is someone else's.
        assert!(leftover(&found("Service", "web-copy", None), app));
        assert!(leftover(&found("Deployment", "other", Some("uid-someone")), app));
        assert!(leftover(&found("Pod", "debug", None), app));
        assert!(leftover(&found("StatefulSet", "db", None), app));
    }

    #[test]
    fn the_note_counts_what_kept_it() {
        assert_eq!(retention_note(&[]), None);
        let left = [
            found("ConfigMap", "settings", None),
            found("PersistentVolumeClaim", "a", None),
            found("Secret", "s", None),
            found("PersistentVolumeClaim", "b", None),
        ];
        assert_eq!(retention_note(&left).as_deref(), Some("2 PersistentVolumeClaims, 1 Secret, 1 ConfigMap"));
    }
}
