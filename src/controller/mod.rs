//! The ResilientApp controller: watches, caches, and the reconcile pipeline
//! (validate -> observe -> render -> apply + prune -> status).

mod apply;
pub mod diff;
mod error;
mod index;
mod reconcile;
pub mod status;
mod watch;

pub use error::{Error, Result, error_chain};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Node, Pod, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use self::index::Cache;
use crate::api::{LABEL_APP, LABEL_MANAGED_BY, MANAGER, ResilientApp};
use crate::metrics::Metrics;
use crate::telemetry::Health;

/// Read-only caches of everything the operator owns or observes, kept by watches. Children and
/// pods are indexed by app.
#[derive(Clone)]
pub struct Stores {
    pub namespaces: Cache<Namespace>,
    pub resource_quotas: Cache<ResourceQuota>,
    pub limit_ranges: Cache<LimitRange>,
    pub network_policies: Cache<NetworkPolicy>,
    pub role_bindings: Cache<RoleBinding>,
    pub deployments: Cache<Deployment>,
    pub pod_disruption_budgets: Cache<PodDisruptionBudget>,
    pub services: Cache<Service>,
    pub nodes: Store<Node>,
    pub pods: Cache<Pod>,
}

impl Stores {
    /// Wait until every cache has finished its first list, logging each one.
    ///
    /// kube's `Store::wait_until_ready` wakes only the last task that polled it, so exactly one
    /// task calls this; everyone else waits on the [`Synced`] signal it sets.
    async fn wait_until_ready(&self) {
        macro_rules! each {
            ($($field:ident),*) => {$(
                if self.$field.store.wait_until_ready().await.is_ok() {
                    debug!(cache = stringify!($field), "cache synced");
                }
            )*};
        }
        each!(
            namespaces,
            resource_quotas,
            limit_ranges,
            network_policies,
            role_bindings,
            deployments,
            pod_disruption_budgets,
            services,
            pods
        );
        if self.nodes.wait_until_ready().await.is_ok() {
            debug!(cache = "nodes", "cache synced");
        }
    }
}

/// Set once every cache has synced; any number of tasks can wait for it.
#[derive(Clone)]
pub struct Synced(tokio::sync::watch::Receiver<bool>);

impl Synced {
    async fn wait(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.0.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|synced| *synced)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::CachesNotReady(timeout)),
        }
    }
}

/// Shared state of every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub stores: Stores,
    /// Every cache has synced.
    pub synced: Synced,
    pub metrics: Arc<Metrics>,
    /// Re-check every app this often even without events.
    pub resync: Duration,
    /// Consecutive failures per app, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The status last written per app uid. The watch cache can lag behind our own writes; this
    /// keeps a lagging cache from causing a second identical write or a duplicate Event.
    last_status: Mutex<HashMap<String, crate::api::ResilientAppStatus>>,
}

/// Options of `resilient-operator run` that reach the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Re-check every app this often even without events (drift of unwatched fields, clock-based state).
    pub resync: Duration,
}

/// The label selector of every object the operator creates.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGER}")
}

/// Run the controller until a shutdown signal arrives.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    reporter: Reporter,
) -> anyhow::Result<()> {
    let managed = watcher::Config::default().labels(&managed_selector());
    let apps: Api<ResilientApp> = Api::all(client.clone());

    // Children: cached (without managedFields) and mapped to their owner by ownerReference.
    let (namespaces, ns_stream) = watch::owned::<Namespace>(&client, managed.clone());
    let (resource_quotas, rq_stream) = watch::owned::<ResourceQuota>(&client, managed.clone());
    let (limit_ranges, lr_stream) = watch::owned::<LimitRange>(&client, managed.clone());
    let (network_policies, np_stream) = watch::owned::<NetworkPolicy>(&client, managed.clone());
    let (role_bindings, rb_stream) = watch::owned::<RoleBinding>(&client, managed.clone());
    let (deployments, dep_stream) = watch::owned::<Deployment>(&client, managed.clone());
    let (pod_disruption_budgets, pdb_stream) = watch::owned::<PodDisruptionBudget>(&client, managed.clone());
    let (services, svc_stream) = watch::owned::<Service>(&client, managed);
    // Nodes and pods: trimmed to what placement needs, and filtered to the changes that matter.
    let (nodes, node_stream) = watch::nodes(&client);
    let (pods, pod_stream) = watch::pods(&client);

    let stores = Stores {
        namespaces,
        resource_quotas,
        limit_ranges,
        network_policies,
        role_bindings,
        deployments,
        pod_disruption_budgets,
        services,
        nodes,
        pods,
    };
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    {
        let stores = stores.clone();
        tokio::spawn(async move {
            stores.wait_until_ready().await;
            info!("caches synced");
            let _ = synced_tx.send(true);
            health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        stores,
        synced: Synced(synced_rx),
        metrics,
        resync: settings.resync,
        failures: Mutex::new(HashMap::new()),
        last_status: Mutex::new(HashMap::new()),
    });

    let controller = Controller::new(apps, watcher::Config::default());
    let app_store = controller.store();
    controller
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .watches_stream(ns_stream, watch::owner)
        .watches_stream(rq_stream, watch::owner)
        .watches_stream(lr_stream, watch::owner)
        .watches_stream(np_stream, watch::owner)
        .watches_stream(rb_stream, watch::owner)
        .watches_stream(dep_stream, watch::owner)
        .watches_stream(pdb_stream, watch::owner)
        .watches_stream(svc_stream, watch::owner)
        .watches_stream(pod_stream, |pod| pod.labels().get(LABEL_APP).map(|app| ObjectRef::<ResilientApp>::new(app)))
        .watches_stream(node_stream, move |node| watch::apps_in_zone_of(&app_store, &node))
        .shutdown_on_signal()
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                // An app deleted while it was queued: nothing to do.
                Err(controller::Error::ObjectNotFound(obj)) => debug!(app = %obj.name, "deleted before its reconcile"),
                Err(e) => warn!(error = %e, "controller event"),
            }
        })
        .await;
    info!("controller stopped");
    Ok(())
}

fn error_policy(app: Arc<ResilientApp>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = app.name_any();
    let attempt = {
        let mut failures = ctx.failures.lock().expect("failures lock");
        let n = failures.entry(name.clone()).or_insert(0);
        *n += 1;
        *n
    };
    ctx.metrics.reconcile_failed(error.category());
    // 1s, 2s, 4s ... capped at 5 minutes.
    let delay = Duration::from_secs(1u64 << attempt.min(9).saturating_sub(1)).min(Duration::from_secs(300));
    warn!(app = %name, attempt, retry_in = ?delay, error = %error_chain(error), "reconcile failed");
    Action::requeue(delay)
}
