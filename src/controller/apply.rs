//! Server-side apply of what changed, and deletion of children that no longer belong.

use std::collections::BTreeSet;
use std::fmt::Debug;

use futures::future::try_join_all;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info};

use super::Context;
use super::diff;
use super::error::{Error, Result};
use super::index::Cache;
use crate::api::MANAGER;
use crate::render::{Child, Desired, child_kinds};

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

/// Apply every desired child in the order of [`Desired::into_steps`] (each step concurrently),
/// then delete the children of the app that no longer belong.
pub(super) async fn apply(ctx: &Context, app: &str, namespace: &str, desired: Desired) -> Result<Applied> {
    let applier = Applier { ctx, app, namespace };
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
}

impl Applier<'_> {
    async fn apply_child(&self, child: &Child) -> Result<usize> {
        macro_rules! dispatch {
            ($($kind:ident: $field:ident,)*) => {
                match child {
                    $(Child::$kind(o) => self.apply(&self.ctx.stores.$field, o).await,)*
                }
            };
        }
        child_kinds!(dispatch)
    }

    /// Apply `desired` unless the cached live object already contains all of it. Returns the
    /// number of writes (0 or 1).
    async fn apply<K>(&self, store: &Cache<K>, desired: &K) -> Result<usize>
    where
        K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
        K::Scope: Scoped,
    {
        let kind = K::kind(&()).to_string();
        let name = desired.name_any();
        let mut key = ObjectRef::<K>::new(&name);
        if let Some(ns) = desired.namespace() {
            key = key.within(&ns);
        }
        let want = serde_json::to_value(desired).map_err(|source| Error::Serialize { kind: kind.clone(), source })?;
        if let Some(live) = store.get(&key) {
            let have = serde_json::to_value(live.as_ref())
                .map_err(|source| Error::Serialize { kind: kind.clone(), source })?;
            if diff::contains(&have, &want) {
                return Ok(0);
            }
            info!(app = %self.app, %kind, name, "putting back drifted object");
        } else {
            debug!(app = %self.app, %kind, name, "creating object");
        }
        K::Scope::api::<K>(self.ctx.client.clone(), self.namespace)
            .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(desired))
            .await
            .map_err(|source| Error::Apply { kind: kind.clone(), name: name.clone(), source })?;
        self.ctx.metrics.api_write("apply", &kind);
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
        K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
        K::Scope: Scoped,
    {
        let kind = K::kind(&()).to_string();
        let keep: BTreeSet<&str> = keep
            .iter()
            .map(Child::kind_and_meta)
            .filter(|(k, _)| *k == kind)
            .filter_map(|(_, meta)| meta.name.as_deref())
            .collect();
        let stale: Vec<String> = store
            .of_app(self.app)
            .iter()
            .filter(|o| o.namespace().as_deref() == Some(self.namespace))
            .filter(|o| o.meta().deletion_timestamp.is_none())
            .map(|o| o.name_any())
            .filter(|n| !keep.contains(n.as_str()))
            .collect();
        for name in &stale {
            info!(app = %self.app, %kind, name, "deleting object that no longer belongs");
            match K::Scope::api::<K>(self.ctx.client.clone(), self.namespace)
                .delete(name, &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(source) => return Err(Error::Delete { kind, name: name.clone(), source }),
            }
            self.ctx.metrics.api_write("delete", &kind);
        }
        Ok(stale.len())
    }
}
