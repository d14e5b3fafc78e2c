//! Server-side apply of what changed, and deletion of children that no longer belong.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Applies children of one app and counts the writes it made. Shared by the concurrent applies
/// of one reconcile.
pub(super) struct Applier<'a> {
    pub ctx: &'a Context,
    pub app: String,
    writes: AtomicUsize,
}

impl<'a> Applier<'a> {
    pub fn new(ctx: &'a Context, app: String) -> Self {
        Self { ctx, app, writes: AtomicUsize::new(0) }
    }

    /// Writes sent so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::Relaxed)
    }

    /// Apply every object of `desired` concurrently (see [`Self::apply`]).
    pub async fn apply_each<K>(&self, api: &Api<K>, store: &Cache<K>, desired: &[K]) -> Result<()>
    where
        K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    {
        try_join_all(desired.iter().map(|d| self.apply(api, store, d))).await.map(|_| ())
    }

    /// Apply `desired` unless the cached live object already contains all of it.
    pub async fn apply<K>(&self, api: &Api<K>, store: &Cache<K>, desired: &K) -> Result<()>
    where
        K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
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
                return Ok(());
            }
            info!(app = %self.app, %kind, name, "putting back drifted object");
        } else {
            debug!(app = %self.app, %kind, name, "creating object");
        }
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(desired))
            .await
            .map_err(|source| Error::Apply { kind: kind.clone(), name: name.clone(), source })?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.ctx.metrics.api_write("apply", &kind);
        Ok(())
    }

    /// Delete cached children of this app in `namespace` that are not in `keep`.
    pub async fn prune<K>(&self, api: &Api<K>, store: &Cache<K>, namespace: &str, keep: &[K]) -> Result<()>
    where
        K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        let keep: BTreeSet<String> = keep.iter().map(ResourceExt::name_any).collect();
        let stale: Vec<String> = store
            .of_app(&self.app)
            .iter()
            .filter(|o| o.namespace().as_deref() == Some(namespace))
            .filter(|o| o.meta().deletion_timestamp.is_none())
            .map(|o| o.name_any())
            .filter(|n| !keep.contains(n))
            .collect();
        for name in stale {
            info!(app = %self.app, kind = %K::kind(&()), name, "deleting object that no longer belongs");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(source) => {
                    return Err(Error::Delete { kind: K::kind(&()).to_string(), name, source });
                }
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.ctx.metrics.api_write("delete", &K::kind(&()));
        }
        Ok(())
    }
}
