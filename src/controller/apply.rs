//! Server-side apply of what changed, and deletion of children that no longer belong.

use std::collections::BTreeSet;
use std::fmt::Debug;

use futures::future::try_join_all;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info};

use super::Context;
use super::diff;
use super::error::{Error, Result};
use super::gate::Validated;
use super::index::{Cache, Compact, Verdict};
use crate::api::{LABEL_COMPONENT, LABEL_RETAINED_FROM, MANAGER, ResilientApp};
use crate::render::{ANNOTATION_REPLICAS_HANDED_OFF, Child, Desired, Plan, REPLICAS_HANDOFF_MANAGER, child_kinds};

fn fingerprint(value: &serde_json::Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut h);
    h.finish()
}

/// Children written whose write the cache has not shown yet: a pass that runs before the watch
/// event of its own write arrives would otherwise write the same object again.
#[derive(Default)]
pub struct Written(std::sync::Mutex<std::collections::HashMap<String, Write>>);

/// A write: the hash of what was written, the version the cache showed before it, and when.
type Write = (u64, Option<String>, std::time::Instant);

/// How long a write vouches for an object the cache has not caught up with.
const WRITTEN_TRUSTED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl Written {
    /// Whether this very desired state (`hash`) was written over the version the cache still
    /// shows (`live_version`; None: absent), recently.
    fn in_flight(&self, key: &str, hash: u64, live_version: Option<&str>) -> bool {
        let mut map = self.0.lock().expect("written lock");
        match map.get(key) {
            Some((h, before, at))
                if *h == hash && before.as_deref() == live_version && at.elapsed() < WRITTEN_TRUSTED_FOR =>
            {
                true
            }
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    fn wrote(&self, key: String, hash: u64, over: Option<String>) {
        self.0.lock().expect("written lock").insert(key, (hash, over, std::time::Instant::now()));
    }

    fn forget(&self, key: &str) {
        let mut map = self.0.lock().expect("written lock");
        if !map.is_empty() {
            map.remove(key);
        }
    }
}

/// Whether `meta`'s controller owner reference points at the object with `uid`.
pub(super) fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
}

/// How to reach objects of a scope: the app's namespace for namespaced kinds, the cluster for the
/// Namespace itself.
pub(super) trait Scoped {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(client: kube::Client, namespace: &str) -> Api<K>;
}

impl Scoped for k8s_openapi::NamespaceResourceScope {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(client: kube::Client, namespace: &str) -> Api<K> {
        Api::namespaced(client, namespace)
    }
}

impl Scoped for k8s_openapi::ClusterResourceScope {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(client: kube::Client, _: &str) -> Api<K> {
        Api::all(client)
    }
}

/// What applying an app's desired state did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Children created, updated or deleted.
    pub writes: usize,
}

/// Render the app and apply every child in the order of [`Desired::into_steps`] (each step
/// concurrently), then delete the children of the app that no longer belong.
pub(super) async fn apply(ctx: &Context, app: &ResilientApp, validated: &Validated) -> Result<Applied> {
    let (name, namespace, uid) = (app.name_any(), app.target_namespace(), app.uid().unwrap_or_default());
    let applier = Applier {
        ctx,
        app: &name,
        namespace: &namespace,
        uid: &uid,
        create_namespace: validated.create_namespace,
        plan: &validated.plan,
    };
    let desired: Desired = validated.render(app);
    let mut writes = 0;
    let mut keep: Vec<Child> = Vec::new();
    for step in desired.into_steps() {
        writes += try_join_all(step.iter().map(|child| applier.apply_child(child))).await?.iter().sum::<usize>();
        keep.extend(step);
    }
    writes += applier.prune(&keep).await?;
    Ok(Applied { writes })
}

struct Applier<'a> {
    ctx: &'a Context,
    app: &'a str,
    /// The app's namespace: where every namespaced child lives.
    namespace: &'a str,
    /// The app's uid: its children, and only they, carry a controller reference to it.
    uid: &'a str,
    /// The namespace does not exist yet: create it.
    create_namespace: bool,
    /// The replicas of every component (an autoscaled Deployment starts with its floor).
    plan: &'a Plan,
}

impl Applier<'_> {
    async fn apply_child(&self, child: &Child) -> Result<usize> {
        match child {
            Child::Namespace(ns) => return self.apply_namespace(ns).await,
            Child::Deployment(d) => return self.apply_deployment(d).await,
            _ => {}
        }
        macro_rules! dispatch {
            ($($kind:ident: $field:ident,)*) => {
                match child {
                    $(Child::$kind(o) => self.apply(&self.ctx.stores.$field, o).await,)*
                }
            };
        }
        child_kinds!(dispatch)
    }

    /// Create the namespace if it does not exist (one that appears meanwhile is someone else's: it
    /// is never applied over), else apply it; drop the owner reference earlier versions put on it.
    async fn apply_namespace(&self, desired: &Namespace) -> Result<usize> {
        let api: Api<Namespace> = Api::all(self.ctx.client.clone());
        let name = desired.name_any();
        if self.create_namespace {
            info!(app = %self.app, name, "creating namespace");
            let desired =
                diff::stamped(desired).map_err(|source| Error::Serialize { kind: "Namespace".into(), source })?;
            return match api
                .create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &desired)
                .await
            {
                Ok(_) => {
                    self.ctx.metrics.api_write("create", "Namespace");
                    Ok(1)
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() => Err(Error::NamespaceTaken(name)),
                Err(source) => Err(Error::Apply { kind: "Namespace".into(), name, source }),
            };
        }
        let mut writes = self.apply(&self.ctx.stores.namespaces, desired).await?;
        let Some(live) = self.ctx.stores.namespaces.get(&ObjectRef::new(&name)) else {
            return Ok(writes);
        };
        // Garbage collection must never delete the namespace (and the app's data) with the app:
        // drop the owner reference earlier versions put there. An adopted namespace is no longer
        // "retained".
        let owned = live.owner_references().iter().any(|o| o.kind == "ResilientApp");
        let retained = live.labels().contains_key(LABEL_RETAINED_FROM);
        if owned || retained {
            info!(app = %self.app, name, owned, retained, "taking the namespace over from an earlier version or app");
            let mut patch = serde_json::json!({"metadata": {"labels": {LABEL_RETAINED_FROM: null}}});
            if owned {
                patch["metadata"]["ownerReferences"] = serde_json::Value::Null;
            }
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.map_err(|source| Error::Apply {
                kind: "Namespace".into(),
                name: name.clone(),
                source,
            })?;
            self.ctx.metrics.api_write("patch", "Namespace");
            writes += 1;
        }
        Ok(writes)
    }

    /// Apply a Deployment, handing its `replicas` over to the autoscaler (or taking them back)
    /// without the Deployment ever dropping to the default of 1 replica.
    ///
    /// Server-side apply removes a field when its only manager stops applying it. So before the
    /// operator's manager first applies an autoscaled Deployment without `replicas`, a second
    /// manager ([`REPLICAS_HANDOFF_MANAGER`]) applies the current count once (and a marker
    /// annotation): it co-owns the field, so the field stays when the operator lets go, and
    /// the autoscaler takes it over when it scales. Taking them back is the reverse: the
    /// operator applies `replicas` (forced: its value may be the live one already), then the
    /// handoff manager applies nothing, which releases the field and removes the marker.
    async fn apply_deployment(&self, desired: &Deployment) -> Result<usize> {
        let store = &self.ctx.stores.deployments;
        let name = desired.name_any();
        let autoscaled = desired.spec.as_ref().is_some_and(|s| s.replicas.is_none());
        let mut live = store.get(&ObjectRef::new(&name).within(self.namespace));
        if live.is_none() && autoscaled {
            // Not in the cache: new, or the cache lags. Writing the floor over an autoscaled
            // Deployment would fight its autoscaler, so ask the API server.
            live = Api::<Deployment>::namespaced(self.ctx.client.clone(), self.namespace)
                .get_opt(&name)
                .await
                .map_err(|source| Error::Apply { kind: "Deployment".into(), name: name.clone(), source })?
                .map(std::sync::Arc::new);
        }
        let handed_off = live.as_ref().is_some_and(|d| d.annotations().contains_key(ANNOTATION_REPLICAS_HANDED_OFF));
        match (autoscaled, handed_off) {
            (false, false) | (true, true) => self.apply(store, desired).await,
            (true, false) => {
                let mut writes = 0;
                let replicas = match live.as_ref().and_then(|d| d.spec.as_ref()?.replicas) {
                    Some(live) => live,
                    None => {
                        // A new Deployment starts at its floor, applied by the operator like any other.
                        let floor = self.floor_of(desired);
                        let mut first = desired.clone();
                        first.spec.get_or_insert_default().replicas = Some(floor);
                        writes += self.apply(store, &first).await?;
                        floor
                    }
                };
                info!(app = %self.app, name, replicas, "handing the Deployment's replicas over to its autoscaler");
                let handoff = serde_json::json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": name, "namespace": self.namespace,
                                 "annotations": {ANNOTATION_REPLICAS_HANDED_OFF: "true"}},
                    "spec": {"replicas": replicas},
                });
                self.apply_as(REPLICAS_HANDOFF_MANAGER, &name, &handoff).await?;
                // Applied now even when nothing else changed, so that the operator's manager
                // drops `replicas` at once.
                self.apply_as(MANAGER, &name, &self.stamped(desired)?).await?;
                Ok(writes + 2)
            }
            (false, true) => {
                info!(app = %self.app, name, "taking the Deployment's replicas back from its autoscaler");
                self.apply_as(MANAGER, &name, &self.stamped(desired)?).await?;
                let release = serde_json::json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": name, "namespace": self.namespace},
                });
                self.apply_as(REPLICAS_HANDOFF_MANAGER, &name, &release).await?;
                Ok(2)
            }
        }
    }

    /// The planned replicas of the component a Deployment runs.
    fn floor_of(&self, deployment: &Deployment) -> i32 {
        let component = deployment.labels().get(LABEL_COMPONENT).cloned().unwrap_or_default();
        self.plan.replicas.get(&component).map_or(1, |p| p.replicas)
    }

    /// `desired` with the digest of what the operator applies, as [`Self::apply`] sends it.
    fn stamped(&self, desired: &Deployment) -> Result<Deployment> {
        diff::stamped(desired).map_err(|source| Error::Serialize { kind: "Deployment".into(), source })
    }

    /// Server-side apply (forced) of a Deployment in the app namespace as `manager`.
    async fn apply_as<T: Serialize + Debug>(&self, manager: &str, name: &str, object: &T) -> Result<()> {
        Api::<Deployment>::namespaced(self.ctx.client.clone(), self.namespace)
            .patch(name, &PatchParams::apply(manager).force(), &Patch::Apply(object))
            .await
            .map_err(|source| Error::Apply { kind: "Deployment".into(), name: name.to_string(), source })?;
        self.ctx.metrics.api_write("apply", "Deployment");
        Ok(())
    }

    /// Apply `desired` (stamped with its digest) unless the cache's verdict is that the live object
    /// already contains all of it. Returns the number of writes (0 or 1).
    async fn apply<K>(&self, store: &Cache<K>, desired: &K) -> Result<usize>
    where
        K: Compact + DeserializeOwned,
        K::Scope: Scoped,
    {
        let kind = K::kind(&()).to_string();
        let name = desired.name_any();
        let mut key = ObjectRef::<K>::new(&name);
        if let Some(ns) = desired.namespace() {
            key = key.within(&ns);
        }
        let desired = diff::stamped(desired).map_err(|source| Error::Serialize { kind: kind.clone(), source })?;
        let want = serde_json::to_value(&desired).map_err(|source| Error::Serialize { kind: kind.clone(), source })?;
        let hash = fingerprint(&want);
        let (verdict, live_version) = store.judge(&key, &want, hash);
        let written_key = format!("{kind}/{}/{name}", self.namespace);
        if verdict == Verdict::Holds {
            self.ctx.written.forget(&written_key);
            return Ok(0);
        }
        if self.ctx.written.in_flight(&written_key, hash, live_version.as_deref()) {
            debug!(app = %self.app, %kind, name, "written already; the cache has not seen it yet");
            return Ok(0);
        }
        match verdict {
            Verdict::Absent => debug!(app = %self.app, %kind, name, "creating object"),
            _ => info!(app = %self.app, %kind, name, "applying changed or drifted object"),
        }
        let written = K::Scope::api::<K>(self.ctx.client.clone(), self.namespace)
            .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&desired))
            .await
            .map_err(|source| Error::Apply { kind: kind.clone(), name: name.clone(), source })?;
        self.ctx.metrics.api_write("apply", &kind);
        store.wrote(&written, &want, hash);
        self.ctx.written.wrote(written_key, hash, live_version);
        Ok(1)
    }

    /// Delete the app's cached children in its namespace that are not in `keep`. Returns the
    /// number of deletions. (The Namespace itself is cluster-scoped and never pruned.)
    async fn prune(&self, keep: &[Child]) -> Result<usize> {
        let mut writes = 0;
        macro_rules! each_kind {
            ($($kind:ident: $field:ident,)*) => {
                $(writes += self.prune_kind(&self.ctx.stores.$field, keep).await?;)*
            };
        }
        child_kinds!(each_kind);
        Ok(writes)
    }

    /// Delete the app's cached children of kind `K` in its namespace that are not in `keep`.
    async fn prune_kind<K>(&self, store: &Cache<K>, keep: &[Child]) -> Result<usize>
    where
        K: Compact + DeserializeOwned,
        K::Scope: Scoped,
    {
        let kind = K::kind(&()).to_string();
        let keep: BTreeSet<&str> = keep
            .iter()
            .map(Child::kind_and_meta)
            .filter(|(k, _)| *k == kind)
            .filter_map(|(_, meta)| meta.name.as_deref())
            .collect();
        // Only what this app controls (a look-alike with the same labels is someone else's), and
        // only that very object (the uid precondition), never one re-created under its name.
        let stale: Vec<(String, String)> = store
            .of_app(self.app, self.namespace)
            .iter()
            .filter(|o| o.meta().deletion_timestamp.is_none())
            .filter(|o| controlled_by(o.meta(), self.uid))
            .filter(|o| !keep.contains(o.name_any().as_str()))
            .filter_map(|o| Some((o.name_any(), o.uid()?)))
            .collect();
        for (name, uid) in &stale {
            info!(app = %self.app, %kind, name, "deleting object that no longer belongs");
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                ..DeleteParams::background()
            };
            match K::Scope::api::<K>(self.ctx.client.clone(), self.namespace).delete(name, &params).await {
                Ok(_) => {}
                // Gone already, or replaced by another object of that name (uid precondition).
                Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => {}
                Err(source) => return Err(Error::Delete { kind, name: name.clone(), source }),
            }
            self.ctx.metrics.api_write("delete", &kind);
        }
        Ok(stale.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_vouches_for_its_object_until_the_cache_shows_it_or_something_else() {
        let w = Written::default();
        let (key, hash) = ("Service/shop/web", 7);
        assert!(!w.in_flight(key, hash, None), "nothing written yet");
        w.wrote(key.into(), hash, None);
        // The cache still shows no object: the write is in flight.
        assert!(w.in_flight(key, hash, None));
        // Another desired state: write it.
        assert!(!w.in_flight(key, 8, None));
        w.wrote(key.into(), hash, Some("41".into()));
        assert!(w.in_flight(key, hash, Some("41")));
        // The cache moved on (our write, or someone else's change): decide from the cache again.
        assert!(!w.in_flight(key, hash, Some("42")));
        assert!(!w.in_flight(key, hash, Some("41")), "forgotten once the cache moved on");
    }
}
