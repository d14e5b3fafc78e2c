//! The ResilientApp controller: watches and caches, and one reconcile per app, a pipeline of typed
//! steps (`reconcile.rs` reads top to bottom):
//! 1. plan (pure): the zones to plan for and every component's replicas ([`crate::render::Plan`]);
//! 2. gate (pure, `gate.rs`): spec, namespace and quota checks -> `Validated` or `Blocked`;
//! 3. render (pure) and apply (`apply.rs`): server-side apply of what differs, prune -> `Applied`;
//! 4. observe the pods, maybe rebalance one, then status (pure, `status.rs`): the status, the
//!    Events of its transitions and the requeue, written only when the status changed.

mod apply;
mod cleanup;
pub mod diff;
mod error;
pub mod gate;
mod index;
mod reconcile;
pub mod status;
mod watch;

pub use error::{Error, Result, error_chain};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Node, Pod, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use self::index::Cache;
use crate::api::{LABEL_MANAGED_BY, MANAGER, ResilientApp, ResilientAppStatus};
use crate::metrics::Metrics;
use crate::render::child_kinds;
use crate::telemetry::Health;

macro_rules! define_stores {
    ($($kind:ident: $field:ident,)*) => {
        /// Read-only caches of everything the operator owns or observes, kept by watches. Children
        /// and pods are indexed by app.
        #[derive(Clone)]
        pub struct Stores {
            $(pub $field: Cache<$kind>,)*
            pub nodes: Store<Node>,
            pub pods: Cache<Pod>,
        }

        impl Stores {
            /// Wait until every cache has finished its first list, logging each one.
            ///
            /// kube's `Store::wait_until_ready` wakes only the last task that polled it, so exactly
            /// one task calls this; everyone else waits on the [`Synced`] signal it sets.
            async fn wait_until_ready(&self) {
                $(
                    if self.$field.wait_until_ready().await.is_ok() {
                        debug!(cache = stringify!($field), "cache synced");
                    }
                )*
                if self.pods.wait_until_ready().await.is_ok() {
                    debug!(cache = "pods", "cache synced");
                }
                if self.nodes.wait_until_ready().await.is_ok() {
                    debug!(cache = "nodes", "cache synced");
                }
            }

            /// Start a cached, label-selected watch of every child kind, plus nodes and pods.
            /// Returns the stores and the stream of apps whose children or pods changed, and of
            /// the node changes (mapped to apps by the controller).
            fn watch(client: &Client) -> (Self, ChildTriggers, watch::NodeStream, watch::PodStream) {
                let managed = list_config().labels(&managed_selector());
                let mut triggers = Vec::new();
                $(
                    let ($field, stream) = watch::owned::<$kind>(client, managed.clone());
                    triggers.push(stream);
                )*
                let (nodes, node_stream) = watch::nodes(client);
                let (pods, pod_stream) = watch::pods(client);
                let stores = Self { $($field,)* nodes, pods };
                (stores, futures::stream::select_all(triggers), node_stream, pod_stream)
            }
        }
    };
}
child_kinds!(define_stores);

/// A ResilientApp as the watch delivers it: decoded, or, for one that cannot be (a value stored
/// under an older, looser CRD), its metadata and the error. One undecodable app must never stop
/// the list and watch of all the others.
pub type GuardedApp = kube::core::DeserializeGuard<ResilientApp>;

/// Apps whose children changed, from the watches of every child kind.
type ChildTriggers = futures::stream::SelectAll<watch::AppTriggers>;

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
    /// Publishes Events that may repeat (kube's recorder turns a repeat within 6 minutes into a
    /// series: one Event with a count). It keeps every Event it published in those 6 minutes.
    pub recorder: Recorder,
    /// Who publishes: spec warnings, once per generation by construction, go through a recorder
    /// of their own (no series, and no copy of each app's warning kept for 6 minutes: heaptrack
    /// showed that cache's hash table alone at 4.4 MB while 1,000 new apps were created).
    pub reporter: Reporter,
    pub stores: Stores,
    /// Every cache has synced.
    pub synced: Synced,
    pub metrics: Arc<Metrics>,
    /// Re-check every app this often even without events.
    pub resync: Duration,
    /// What the controller remembers per app, forgotten when the app is deleted (shared with the
    /// app watch, which tells the echo of a status write from a change).
    memory: Arc<Mutex<Memory>>,
    /// The apps' statuses, kept apart from the app cache.
    statuses: AppStatuses,
    /// Children written that the caches have not shown yet.
    written: apply::Written,
    /// Asked to stop: a pass waiting for the caches gives up at once.
    shutdown: crate::shutdown::Shutdown,
}

/// Per-app state kept between reconciles, by app name.
#[derive(Default)]
pub struct Memory {
    /// Consecutive failures, for exponential backoff.
    failures: HashMap<String, u32>,
    /// The status last written, with the uid of the app it was written for. The watch cache can
    /// lag behind our own writes; this keeps a lagging cache from causing a second identical
    /// write or a duplicate Event.
    last_status: HashMap<String, (String, ResilientAppStatus)>,
    /// When the first pass of a generation whose status is not written yet ran (uid, generation).
    first_pass: HashMap<String, (String, Option<i64>, Instant)>,
    /// What the passes of each app (by name) have seen: kept for every app, so small.
    seen: HashMap<Box<str>, Seen>,
    /// Apps waiting for a change of their own (an invalid spec): the resync sweep leaves them.
    parked: std::collections::HashSet<String>,
}

/// What the passes of one app have seen, for the Events worth publishing.
struct Seen {
    /// A hash of the app's uid: a new app of the same name starts over.
    uid: u64,
    /// Seen Ready by this process, or Ready when first seen.
    been_ready: bool,
    /// The generation whose spec warnings `warned` holds.
    generation: Option<i64>,
    /// Hashes of the spec warnings already published for `generation`: once per generation each.
    warned: Vec<u64>,
}

/// How long the first status of a generation may wait for the rollout to settle.
pub const FIRST_STATUS_HOLD: Duration = Duration::from_secs(10);

fn is_ready(status: &ResilientAppStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == crate::api::ConditionType::Ready.as_str() && c.status == "True")
}

/// Ready, and nothing left to roll out (no `Reconciling`).
fn is_settled(status: &ResilientAppStatus) -> bool {
    is_ready(status)
        && !status
            .conditions
            .iter()
            .any(|c| c.type_ == crate::api::ConditionType::Reconciling.as_str() && c.status == "True")
}

impl Memory {
    /// The status last written for this app (this uid), if any.
    pub fn last_status(&self, name: &str, uid: &str) -> Option<&ResilientAppStatus> {
        self.last_status.get(name).filter(|(u, _)| u == uid).map(|(_, s)| s)
    }

    pub fn wrote_status(&mut self, name: &str, uid: &str, status: ResilientAppStatus) {
        self.last_status.insert(name.to_string(), (uid.to_string(), status));
    }

    /// The cache shows the status last written: no need to remember it any more.
    pub fn cache_caught_up(&mut self, name: &str) {
        self.last_status.remove(name);
    }

    /// Whether `app`, as a watch event delivers it, is the echo of this process's own status
    /// write and nothing else: the status is the one last written for this uid, it describes the
    /// current spec (observedGeneration), and the app is not being deleted. Such an event shows a
    /// pass nothing new. The copy of the status written is dropped either way once the cache shows
    /// it (the cache holds it from here on).
    fn status_echo(&mut self, app: &ResilientApp) -> bool {
        let name = app.name_any();
        let Some(written) = self.last_status(&name, &app.uid().unwrap_or_default()) else {
            return false;
        };
        if app.status.as_ref() != Some(written) {
            return false;
        }
        let echo = app.meta().deletion_timestamp.is_none() && app.meta().generation == written.observed_generation;
        self.cache_caught_up(&name);
        echo
    }

    /// Whether to hold back writing `status`, and for how long at most: the first status of a
    /// generation (`settling`) waits, while the app is not Ready or still rolling out, up to [`FIRST_STATUS_HOLD`]
    /// after the first pass that wanted to write it, so a new app's rollout costs one status write
    /// instead of one per step (created, scheduled, ready). Anything else is written at once.
    pub fn hold_first_status(
        &mut self,
        name: &str,
        uid: &str,
        status: &ResilientAppStatus,
        settling: bool,
        now: Instant,
    ) -> Option<Duration> {
        let generation = status.observed_generation;
        if !settling || is_settled(status) {
            self.first_pass.remove(name);
            return None;
        }
        let entry = self.first_pass.entry(name.to_string()).or_insert_with(|| (uid.to_string(), generation, now));
        if entry.0 != uid || entry.1 != generation {
            *entry = (uid.to_string(), generation, now);
        }
        let left = FIRST_STATUS_HOLD.saturating_sub(now.saturating_duration_since(entry.2));
        if left.is_zero() {
            self.first_pass.remove(name);
            return None;
        }
        Some(left)
    }

    /// The Events of a pass worth publishing: not the recoveries (Ready, ZoneFailureTolerant
    /// turning True) of an app that has never been Ready (a new app coming up is routine), and
    /// not a spec warning already published for this generation.
    pub fn worth_publishing(
        &mut self,
        name: &str,
        uid: &str,
        status: &ResilientAppStatus,
        events: Vec<status::Notice>,
    ) -> Vec<status::Notice> {
        let (uid, generation) = (watch::fingerprint(uid), status.observed_generation);
        let fresh = || Seen { uid, been_ready: false, generation, warned: Vec::new() };
        let seen = self.seen.entry(name.into()).or_insert_with(fresh);
        if seen.uid != uid {
            *seen = fresh();
        }
        if seen.generation != generation {
            seen.generation = generation;
            seen.warned.clear();
        }
        let was_ready = seen.been_ready;
        seen.been_ready |= is_ready(status);
        events
            .into_iter()
            .filter(|e| was_ready || !status::is_recovery(e))
            .filter(|e| {
                if !status::is_spec_warning(e) {
                    return true;
                }
                let note = watch::fingerprint(e.note.as_str());
                if seen.warned.contains(&note) {
                    return false;
                }
                seen.warned.push(note);
                true
            })
            .collect()
    }

    /// Whether the app waits for a change of its own (`parked`), set after every pass.
    pub fn park(&mut self, name: &str, parked: bool) {
        match parked {
            true => self.parked.insert(name.to_string()),
            false => self.parked.remove(name),
        };
    }

    /// One more consecutive failure; returns how many there are now.
    pub fn failed(&mut self, name: &str) -> u32 {
        let n = self.failures.entry(name.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    pub fn succeeded(&mut self, name: &str) {
        self.failures.remove(name);
    }

    /// Forget everything about a deleted app.
    pub fn forget(&mut self, name: &str) {
        self.failures.remove(name);
        self.last_status.remove(name);
        self.first_pass.remove(name);
        self.seen.remove(name);
        self.parked.remove(name);
    }

    /// Apps anything is remembered about.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.failures.keys().chain(self.last_status.keys()).collect::<std::collections::BTreeSet<_>>().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Context {
    /// Consecutive passes whose writes were rejected, this one included (0, and the count reset,
    /// when this one was not), for the back-off.
    fn count_rejections(&self, name: &str, gate: &gate::Gate) -> u32 {
        let mut memory = self.memory.lock().expect("memory lock");
        match gate {
            Err(b) if matches!(b.why, gate::Blocker::Rejected(_)) => memory.failed(name),
            _ => {
                memory.succeeded(name);
                0
            }
        }
    }

    /// Count one more consecutive failure of the app, and how long to wait before the next try.
    fn backoff(&self, name: &str) -> Duration {
        backoff_delay(self.memory.lock().expect("memory lock").failed(name))
    }

    /// Whether the resync sweep leaves this app to its own requeue: its spec waits for a change,
    /// or its passes fail and back off.
    fn skips_resync(&self, name: &str) -> bool {
        let memory = self.memory.lock().expect("memory lock");
        memory.parked.contains(name) || memory.failures.contains_key(name)
    }

    /// Forget a deleted app: its status, failures and metrics.
    fn forget(&self, name: &str) {
        self.memory.lock().expect("memory lock").forget(name);
        self.statuses.forget(name);
        self.metrics.forget_app(name);
    }
}

/// Options of `resilient-operator run` that reach the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Writes in flight to the API server at once (the client's limit; recorded in build_info).
    pub writes_in_flight: u16,
    /// Re-check every app this often even without events (drift of unwatched fields, clock-based state).
    pub resync: Duration,
}

/// How long status changes of an app's children are gathered into one pass ([`watch::coalesced`]).
const STATUS_WINDOW: Duration = Duration::from_millis(500);

/// Lists in pages of 100 (kube's default is 500): a relist of 11 caches at once holds one page of
/// each in memory beside the caches, so smaller pages lower the peak of a restart.
pub fn list_config() -> watcher::Config {
    watcher::Config::default().page_size(100)
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
    leading: impl std::future::Future<Output = ()>,
    shutdown: crate::shutdown::Shutdown,
) -> anyhow::Result<()> {
    let apps: Api<GuardedApp> = Api::all(client.clone());
    let (stores, child_triggers, node_stream, pod_stream) = Stores::watch(&client);
    // The apps themselves, trimmed (see `trim_app`).
    let (app_store, app_writer) = kube::runtime::reflector::store::<GuardedApp>();
    // "Listed" comes from the stream itself: the controller also waits on the store, and kube's
    // `Store::wait_until_ready` wakes only one of two waiters.
    let (apps_listed_tx, mut apps_listed) = tokio::sync::watch::channel(false);
    let statuses = AppStatuses::default();
    let (kept, deleted) = (statuses.clone(), statuses.clone());
    let memory = Arc::new(Mutex::new(Memory::default()));
    // The echo of a status write of ours triggers no pass (see `Memory::status_echo`): it is
    // marked here, before the status goes from the app into `statuses`, and skipped below once
    // the cache holds it. Relists (`InitApply`) always trigger.
    let echoes: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let (heard, skipped, echo_memory) = (echoes.clone(), echoes, memory.clone());
    let mut app_stream = watcher(apps, list_config())
        .backoff(watch::watch_backoff())
        .map_ok(move |event| {
            if let watcher::Event::Apply(kube::core::DeserializeGuard(Ok(app))) = &event
                && echo_memory.lock().expect("memory lock").status_echo(app)
            {
                heard.lock().expect("echoes lock").insert(app.name_any());
            }
            event.modify(|app| trim_app(app, &kept))
        })
        .reflect(app_writer)
        .inspect(move |event| match event {
            Ok(watcher::Event::InitDone) => {
                let _ = apps_listed_tx.send(true);
            }
            Ok(watcher::Event::Delete(app)) => deleted.forget(&app.name_any()),
            _ => {}
        })
        .applied_objects()
        .try_filter(move |app| futures::future::ready(!skipped.lock().expect("echoes lock").remove(&app.name_any())))
        .boxed();
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    {
        let stores = stores.clone();
        tokio::spawn(async move {
            stores.wait_until_ready().await;
            if apps_listed.wait_for(|listed| *listed).await.is_ok() {
                debug!(cache = "apps", "cache synced");
            }
            info!("caches synced");
            let _ = synced_tx.send(true);
            health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let synced_then = {
        let mut rx = synced_rx.clone();
        async move {
            let _ = rx.wait_for(|synced| *synced).await;
        }
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        client,
        stores,
        synced: Synced(synced_rx),
        metrics,
        resync: settings.resync,
        memory,
        statuses,
        written: apply::Written::default(),
        shutdown: shutdown.clone(),
    });

    // The caches run (and /readyz turns true once they are synced) whether or not this replica
    // leads: until it does, their streams are drained here and nothing is reconciled. Once it
    // leads, every app in the cache is reconciled, so nothing seen meanwhile is missed.
    let (mut child_triggers, mut node_stream, mut pod_stream) = (child_triggers, node_stream, pod_stream);
    let mut leading = std::pin::pin!(leading);
    let mut stop = std::pin::pin!(shutdown.clone().requested());
    loop {
        tokio::select! {
            () = &mut leading => break,
            () = &mut stop => {
                info!("shut down before leading");
                return Ok(());
            }
            Some(_) = child_triggers.next() => {}
            Some(_) = node_stream.next() => {}
            Some(_) = pod_stream.next() => {}
            Some(_) = app_stream.next() => {}
        }
    }
    // A pod's placement or readiness is status: it never makes a pass write a child.
    let pod_triggers = pod_stream.filter_map(|pod| {
        futures::future::ready(match pod {
            Ok(pod) => watch::app_of_pod(pod).map(|app| (app, index::News::Status)),
            Err(e) => {
                // The watcher backs off and retries by itself.
                warn!(error = %e, "watch of pods failed");
                None
            }
        })
    });
    let controller = Controller::for_stream(app_stream, app_store.clone());
    let forget = ctx.clone();
    let swept = ctx.clone();
    let sweep = watch::resync_sweep(app_store.clone(), settings.resync, move |app| {
        app.0.is_err() || app.meta().deletion_timestamp.is_some() || swept.skips_resync(&app.name_any())
    });
    controller
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        // Once the caches (the apps' included) are synced: an app drained before this replica led
        // is in the cache by then.
        .reconcile_all_on(futures::stream::once(synced_then))
        .reconcile_on(watch::coalesced(futures::stream::select(child_triggers, pod_triggers), STATUS_WINDOW))
        .reconcile_on(sweep)
        .watches_stream(node_stream, move |node| watch::apps_in_zone_of(&app_store, &node))
        .graceful_shutdown_on(shutdown.requested())
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok(_) => {}
                // Without a finalizer kube does not reconcile a deleted app: this is where the
                // controller learns it is gone, so forget it here.
                Err(controller::Error::ObjectNotFound(obj)) => {
                    debug!(app = %obj.name, "deleted; forgetting it");
                    forget.forget(&obj.name);
                }
                Err(e) => warn!(error = %e, "controller event"),
            }
            futures::future::ready(())
        })
        .await;
    info!("controller stopped");
    Ok(())
}

/// The status of every app as the watch last delivered it, kept beside the app cache as JSON text
/// compressed with LZ4 against a dictionary of typical statuses (a typed status is about twice the
/// size of its text, and the text of a new app's status about 850 bytes, mostly the same keys,
/// condition types, reasons and messages in every app), and put back on the app at the start of
/// each pass.
#[derive(Clone, Default)]
pub struct AppStatuses(Arc<Mutex<HashMap<String, Box<[u8]>>>>);

/// What statuses are compressed against: typical statuses (`status_dictionary.json`) as serde
/// writes them, so in the field order of the text they are compared with.
static STATUS_DICTIONARY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let samples: Vec<ResilientAppStatus> =
        serde_json::from_str(include_str!("status_dictionary.json")).expect("the status dictionary is statuses");
    samples.iter().flat_map(|s| serde_json::to_vec(s).expect("a status serializes")).collect()
});

fn compress_status(status: &ResilientAppStatus) -> Option<Box<[u8]>> {
    let text = serde_json::to_vec(status).ok()?;
    Some(lz4_flex::block::compress_prepend_size_with_dict(&text, &STATUS_DICTIONARY).into_boxed_slice())
}

fn decompress_status(kept: &[u8]) -> Option<ResilientAppStatus> {
    let text = lz4_flex::block::decompress_size_prepended_with_dict(kept, &STATUS_DICTIONARY).ok()?;
    serde_json::from_slice(&text).ok()
}

impl AppStatuses {
    /// Take the status off `app` and keep it (or forget the last one, for an app without status).
    fn keep(&self, app: &mut ResilientApp) {
        let name = app.name_any();
        let mut statuses = self.0.lock().expect("statuses lock");
        match app.status.take().and_then(|s| compress_status(&s)) {
            Some(kept) => statuses.insert(name, kept),
            None => statuses.remove(&name),
        };
    }

    /// The status last delivered for the app `name`.
    fn get(&self, name: &str) -> Option<ResilientAppStatus> {
        let statuses = self.0.lock().expect("statuses lock");
        statuses.get(name).and_then(|kept| decompress_status(kept))
    }

    fn forget(&self, name: &str) {
        self.0.lock().expect("statuses lock").remove(name);
    }
}

/// What the cache keeps of an app: not its managedFields, labels or annotations (nothing reads
/// them; kubectl's last-applied annotation alone is a copy of the whole object), and its status
/// apart, as text (see [`AppStatuses`]).
fn trim_app(app: &mut GuardedApp, statuses: &AppStatuses) {
    let meta = app.meta_mut();
    meta.managed_fields = None;
    meta.labels = None;
    meta.annotations = None;
    if let Ok(app) = &mut app.0 {
        statuses.keep(app);
    }
}

fn error_policy(app: Arc<GuardedApp>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = app.name_any();
    let delay = ctx.backoff(&name);
    ctx.metrics.reconcile_failed(error.category());
    warn!(app = %name, retry_in = ?delay, error = %error_chain(error), "reconcile failed");
    Action::requeue(delay)
}

/// 1s, 2s, 4s ... capped at 5 minutes, after the `attempt`-th consecutive failure.
pub fn backoff_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.clamp(1, 10).saturating_sub(1)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_kept_compressed_and_come_back_whole() {
        let text = r#"{"observedGeneration":3,"zones":["eu-1a","eu-1b","eu-1c"],"conditions":[
            {"lastTransitionTime":"2026-11-28T12:11:42Z","message":"2 components are at or above minAvailable",
             "observedGeneration":3,"reason":"MinAvailableMet","status":"True","type":"Ready"},
            {"lastTransitionTime":"2026-11-28T12:13:07Z","message":"every component keeps minAvailable ready pods if any 1 of the 3 usable zones (eu-1a, eu-1b, eu-1c) are lost",
             "observedGeneration":3,"reason":"ZoneLossSurvivable","status":"True","type":"ZoneFailureTolerant"}],
            "components":[{"name":"checkout","zones":["eu-1a","eu-1b","eu-1c"],"replicas":5,"readyReplicas":5,
             "minAvailable":3,"readyByZone":{"eu-1a":2,"eu-1b":2,"eu-1c":1},"readyAfterWorstZoneLoss":3},
             {"name":"worker","zones":["eu-1a","eu-1b"],"replicas":2,"readyReplicas":2,"minAvailable":1,
             "readyByZone":{"eu-1a":1,"eu-1b":1},"readyAfterWorstZoneLoss":1}]}"#;
        let status: ResilientAppStatus = serde_json::from_str(text).unwrap();
        let plain = serde_json::to_vec(&status).unwrap().len();
        let kept = compress_status(&status).unwrap();
        assert_eq!(decompress_status(&kept).as_ref(), Some(&status));
        eprintln!("status text {plain} bytes, kept {} bytes", kept.len());
        // Not one of the dictionary's samples (other zones, names and counts), still a third or less.
        assert!(kept.len() * 3 <= plain, "{} compressed bytes for {plain}", kept.len());
        let mut app = ResilientApp::new("shop", serde_json::from_value(serde_json::json!({"components": []})).unwrap());
        app.status = Some(status.clone());
        let statuses = AppStatuses::default();
        statuses.keep(&mut app);
        assert!(app.status.is_none());
        assert_eq!(statuses.get("shop"), Some(status));
        statuses.forget("shop");
        assert_eq!(statuses.get("shop"), None);
    }

    #[test]
    fn only_the_echo_of_our_own_status_write_is_an_echo() {
        let app = |uid: &str, generation: i64, observed: i64| {
            let mut app =
                ResilientApp::new("shop", serde_json::from_value(serde_json::json!({"components": []})).unwrap());
            app.metadata.uid = Some(uid.into());
            app.metadata.generation = Some(generation);
            app.status = Some(ResilientAppStatus { observed_generation: Some(observed), ..Default::default() });
            app
        };
        let written = app("uid-1", 2, 2).status.unwrap();
        let mut m = Memory::default();
        // Nothing written: any event is news.
        assert!(!m.status_echo(&app("uid-1", 2, 2)));
        m.wrote_status("shop", "uid-1", written.clone());
        // Another status (someone else's write, or an older one): news, and the copy is kept.
        assert!(!m.status_echo(&app("uid-1", 2, 1)));
        assert!(m.last_status("shop", "uid-1").is_some());
        // Another app of the same name: news.
        assert!(!m.status_echo(&app("uid-2", 2, 2)));
        // Our status, but the spec moved on meanwhile: news; the copy is dropped (the cache has it).
        assert!(!m.status_echo(&app("uid-1", 3, 2)));
        assert!(m.last_status("shop", "uid-1").is_none());
        // Our status on the spec it describes: the echo, once.
        m.wrote_status("shop", "uid-1", written.clone());
        assert!(m.status_echo(&app("uid-1", 2, 2)));
        assert!(m.last_status("shop", "uid-1").is_none());
        assert!(!m.status_echo(&app("uid-1", 2, 2)), "a later event with the same status is news");
        // Being deleted: news.
        m.wrote_status("shop", "uid-1", written);
        let mut deleting = app("uid-1", 2, 2);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        assert!(!m.status_echo(&deleting));
    }

    #[test]
    fn a_stamped_status_reads_back_equal() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        // The API server keeps whole seconds: a status stamped with a fraction would never equal
        // itself read back, and its echo would look like a change.
        let at: jiff::Timestamp = "2026-11-28T15:32:48.123456789Z".parse().unwrap();
        let status = |time| ResilientAppStatus {
            observed_generation: Some(1),
            conditions: vec![Condition {
                last_transition_time: time,
                message: "m".into(),
                observed_generation: Some(1),
                reason: "R".into(),
                status: "True".into(),
                type_: "Ready".into(),
            }],
            ..Default::default()
        };
        let read_back = |s: &ResilientAppStatus| -> ResilientAppStatus {
            serde_json::from_value(serde_json::to_value(s).unwrap()).unwrap()
        };
        let stamped = status(status::stamp(at));
        assert_eq!(read_back(&stamped), stamped);
        assert_eq!(stamped.conditions[0].last_transition_time.0.as_second(), at.as_second());
        let exact = status(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
        assert_ne!(read_back(&exact), exact, "the API's time format drops the fraction");
    }

    #[test]
    fn a_deleted_app_is_forgotten() {
        let mut m = Memory::default();
        m.wrote_status("shop", "uid-1", ResilientAppStatus::default());
        m.failed("shop");
        m.failed("other");
        assert_eq!(m.failed("other"), 2);
        assert_eq!(m.len(), 2);
        // A new app of the same name (another uid) does not inherit the old status.
        assert!(m.last_status("shop", "uid-2").is_none());
        assert!(m.last_status("shop", "uid-1").is_some());
        m.forget("shop");
        m.forget("other");
        assert!(m.is_empty());
        assert_eq!(m.failed("other"), 1, "backoff starts over for a new app of the same name");
    }

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn status(generation: i64, ready: bool) -> ResilientAppStatus {
        ResilientAppStatus {
            observed_generation: Some(generation),
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: "R".into(),
                message: String::new(),
                observed_generation: Some(generation),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_first_status_of_a_generation_waits_for_the_rollout_at_most_the_hold() {
        let mut m = Memory::default();
        let t0 = Instant::now();
        let not_ready = status(1, false);
        assert_eq!(m.hold_first_status("shop", "u1", &not_ready, true, t0), Some(FIRST_STATUS_HOLD));
        let later = t0 + Duration::from_secs(4);
        assert_eq!(
            m.hold_first_status("shop", "u1", &not_ready, true, later),
            Some(FIRST_STATUS_HOLD - Duration::from_secs(4))
        );
        // Ready but still rolling out: held; Ready and settled: written at once.
        let mut rolling = status(1, true);
        rolling.conditions.push(Condition {
            type_: "Reconciling".into(),
            status: "True".into(),
            ..rolling.conditions[0].clone()
        });
        assert!(m.hold_first_status("shop", "u1", &rolling, true, later).is_some());
        assert_eq!(m.hold_first_status("shop", "u1", &status(1, true), true, later), None);
        // Still not ready when the hold is over: written.
        assert!(m.hold_first_status("cart", "u2", &not_ready, true, t0).is_some());
        assert_eq!(m.hold_first_status("cart", "u2", &not_ready, true, t0 + FIRST_STATUS_HOLD), None);
        // Not the first status of a generation (a zone lost, say): never held.
        assert_eq!(m.hold_first_status("web", "u3", &not_ready, false, t0), None);
        // A new generation starts a new hold.
        assert!(m.hold_first_status("cart", "u2", &status(2, false), true, t0 + FIRST_STATUS_HOLD).is_some());
    }

    #[test]
    fn routine_events_are_not_published() {
        use kube::runtime::events::EventType;
        let notice =
            |type_, action, note: &str| status::Notice { type_, reason: "R".into(), action, note: note.into() };
        let ready = notice(EventType::Normal, "CheckAvailability", "ready");
        let tolerant = notice(EventType::Normal, "CheckZoneFailure", "tolerant");
        let lost = notice(EventType::Warning, "CheckAvailability", "below minAvailable");
        let warning = notice(EventType::Warning, "CheckSpec", "unreachable Service");
        let mut m = Memory::default();
        // A new app coming up: its first Ready is routine; the warning is said once.
        let out =
            m.worth_publishing("shop", "u1", &status(1, true), vec![ready.clone(), tolerant.clone(), warning.clone()]);
        assert_eq!(out, vec![warning.clone()]);
        assert_eq!(
            m.worth_publishing("shop", "u1", &status(1, false), vec![lost.clone(), warning.clone()]),
            vec![lost]
        );
        // Ready again after having been Ready: a recovery, published.
        assert_eq!(m.worth_publishing("shop", "u1", &status(1, true), vec![ready.clone()]), vec![ready.clone()]);
        // A new generation says its warnings again; a new app of the same name starts over.
        assert_eq!(m.worth_publishing("shop", "u1", &status(2, true), vec![warning.clone()]), vec![warning]);
        assert!(m.worth_publishing("shop", "u9", &status(1, true), vec![ready.clone()]).is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let delays: Vec<u64> = [1, 2, 3, 4, 9, 10, 40].map(|a| backoff_delay(a).as_secs()).to_vec();
        assert_eq!(delays, [1, 2, 4, 8, 256, 300, 300]);
    }
}
