//! Watch streams and caches: children by label, nodes and pods trimmed to what placement needs.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::GuardedApp;
use super::index::{Cache, Compact, News};
use crate::api::LABEL_APP;

/// How a failed watch retries: 0.5 s doubling up to 8 s, with jitter, starting over after two
/// minutes without failure. kube's default goes up to 30 s, which after an API server restart
/// (403s while its authorizer warms up, then 410 for a resourceVersion compacted meanwhile) left the
/// operator blind for most of a minute; one operator's dozen watches retrying every 8 s cost the
/// API server nothing.
pub fn watch_backoff() -> kube::runtime::utils::ResetTimerBackoff<Exponential> {
    kube::runtime::utils::ResetTimerBackoff::new(Exponential::default(), std::time::Duration::from_secs(120))
}

/// backon's exponential backoff, restartable.
pub struct Exponential {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
}

impl Default for Exponential {
    fn default() -> Self {
        use backon::BackoffBuilder as _;
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(500))
            .with_max_delay(std::time::Duration::from_secs(8))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self { builder, delays: builder.build() }
    }
}

impl Iterator for Exponential {
    type Item = std::time::Duration;
    fn next(&mut self) -> Option<Self::Item> {
        self.delays.next()
    }
}

impl kube::runtime::utils::Backoff for Exponential {
    fn reset(&mut self) {
        use backon::BackoffBuilder as _;
        self.delays = self.builder.build();
    }
}

/// The reference the controller queues apps by.
pub type AppRef = ObjectRef<GuardedApp>;
use crate::resilience::{node_usable, node_zone};

/// The apps whose children changed, and what changed.
pub type AppTriggers = BoxStream<'static, (AppRef, News)>;
/// Nodes whose usability or zone changed.
pub type NodeStream = BoxStream<'static, Result<Node, watcher::Error>>;
/// Pods of apps whose placement or readiness changed.
pub type PodStream = BoxStream<'static, Result<Pod, watcher::Error>>;

/// A cached, label-selected watch of one child kind, indexed by app, and the stream of the apps
/// owning the objects it sees change.
pub fn owned<K>(client: &Client, config: watcher::Config) -> (Cache<K>, AppTriggers)
where
    K: Compact + DeserializeOwned,
{
    let cache = Cache::<K>::default();
    let kept = cache.clone();
    // Only events that show a pass something new reach the controller: a status update the cache
    // keeps nothing of would cost a pass that finds nothing to do (a new app's quota changes with
    // each pod, its PodDisruptionBudget with each ready one).
    let stream = watcher(Api::<K>::all(client.clone()), config)
        .backoff(watch_backoff())
        .filter_map(move |event| {
            futures::future::ready(match event {
                Ok(event) => match (kept.apply(&event), event) {
                    (News::None, _) => None,
                    (
                        news,
                        watcher::Event::Apply(child) | watcher::Event::InitApply(child) | watcher::Event::Delete(child),
                    ) => owner(child).map(|app| (app, news)),
                    _ => None,
                },
                Err(e) => {
                    // The watcher backs off and retries by itself.
                    warn!(kind = %K::kind(&()), error = %e, "watch of a child kind failed");
                    None
                }
            })
        })
        .boxed();
    (cache, stream)
}

/// The apps to reconcile, from `triggers`: an app whose child is new, changed or deleted at once;
/// one whose children's status alone changed (a rollout's counters, a pod ready) at the end of a
/// `window` that starts with the first such trigger, once however many came meanwhile.
///
/// A new app's rollout brings about six status changes in a second or two (Deployment counters
/// and pods), each a pass that renders and checks every child to find nothing to write; the
/// status they feed is only written once the rollout settles. Drift, by contrast, is repaired at
/// once.
pub fn coalesced(
    triggers: impl Stream<Item = (AppRef, News)> + Send + 'static,
    window: std::time::Duration,
) -> Coalesced {
    Coalesced {
        triggers: Some(triggers.boxed()),
        window,
        waiting: Vec::new(),
        seen: std::collections::HashSet::new(),
        flush: None,
        due: std::collections::VecDeque::new(),
    }
}

/// See [`coalesced`].
pub struct Coalesced {
    /// `None` once it ended.
    triggers: Option<BoxStream<'static, (AppRef, News)>>,
    window: std::time::Duration,
    /// Apps with a status change in the current window, in the order they came.
    waiting: Vec<AppRef>,
    seen: std::collections::HashSet<AppRef>,
    /// The end of the current window.
    flush: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Apps to hand out now.
    due: std::collections::VecDeque<AppRef>,
}

impl Stream for Coalesced {
    type Item = AppRef;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<AppRef>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if let Some(app) = this.due.pop_front() {
                return Poll::Ready(Some(app));
            }
            while let Some(triggers) = this.triggers.as_mut() {
                match triggers.poll_next_unpin(cx) {
                    Poll::Ready(Some((app, News::Status))) => {
                        if this.seen.insert(app.clone()) {
                            this.waiting.push(app);
                        }
                        if this.flush.is_none() {
                            this.flush = Some(Box::pin(tokio::time::sleep(this.window)));
                        }
                    }
                    Poll::Ready(Some((app, _))) => this.due.push_back(app),
                    Poll::Ready(None) => this.triggers = None,
                    Poll::Pending => break,
                }
            }
            let window_over = this.flush.as_mut().is_some_and(|flush| flush.as_mut().poll(cx).is_ready());
            if window_over || (this.triggers.is_none() && !this.waiting.is_empty()) {
                this.flush = None;
                this.seen.clear();
                this.due.extend(this.waiting.drain(..));
            }
            if !this.due.is_empty() {
                continue;
            }
            return match this.triggers {
                None => Poll::Ready(None),
                Some(_) => Poll::Pending,
            };
        }
    }
}

/// Keeps `cache` in step with the events of its watch.
fn caching<K: Compact>(cache: Cache<K>) -> impl Fn(&Result<watcher::Event<K>, watcher::Error>) + Send + 'static {
    move |event| {
        if let Ok(event) = event {
            let _ = cache.apply(event);
        }
    }
}

/// Nodes, keeping labels, taints, schedulability, readiness and allocatable resources only.
/// Only changes of usability, zone, labels or taints reach the controller (a component's
/// nodeSelector, affinity and tolerations decide its zones from the last two).
pub fn nodes(client: &Client) -> (Store<Node>, NodeStream) {
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<Node>::all(client.clone()), super::list_config())
        .backoff(watch_backoff())
        .modify(trim_node)
        .reflect(writer);
    let stream = changed_only(stream, |n: &Node| {
        let taints: Vec<(&str, Option<&str>, &str)> = (n.spec.as_ref().and_then(|s| s.taints.as_ref()))
            .into_iter()
            .flatten()
            .map(|t| (t.key.as_str(), t.value.as_deref(), t.effect.as_str()))
            .collect();
        fingerprint(&(node_zone(n), node_usable(n), &n.metadata.labels, taints))
    })
    .boxed();
    (reader, stream)
}

/// Pods of ResilientApps, keeping labels, node, readiness and deletion only.
/// Only changes of placement or readiness reach the controller.
pub fn pods(client: &Client) -> (Cache<Pod>, PodStream) {
    let cache = Cache::<Pod>::default();
    let config = super::list_config().labels(&format!("{},{LABEL_APP}", super::managed_selector()));
    let stream = watcher(Api::<Pod>::all(client.clone()), config)
        .backoff(watch_backoff())
        .modify(trim_pod)
        .inspect(caching(cache.clone()));
    let stream = changed_only(stream, |p: &Pod| {
        fingerprint(&(
            p.spec.as_ref().and_then(|s| s.node_name.clone()),
            crate::resilience::pod_ready(p),
            p.metadata.deletion_timestamp.is_some(),
        ))
    })
    .filter(|pod| futures::future::ready(pod.as_ref().is_err() || pod.as_ref().is_ok_and(placed)))
    .boxed();
    (cache, stream)
}

/// Whether a pod's change can matter to a pass: one on a node (placement and readiness are what
/// passes read of pods), or being deleted. A new pod not yet scheduled cannot (its scheduling is
/// the next event), nor can an unscheduled one deleted.
fn placed(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) || pod.metadata.deletion_timestamp.is_some()
}

fn trim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    let spec = node.spec.take().unwrap_or_default();
    node.spec = Some(NodeSpec { taints: spec.taints, unschedulable: spec.unschedulable, ..Default::default() });
    let status = node.status.take().unwrap_or_default();
    node.status = Some(NodeStatus {
        allocatable: status.allocatable,
        conditions: status.conditions.map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect()),
        ..Default::default()
    });
}

fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    let spec = pod.spec.take().unwrap_or_default();
    pod.spec = Some(PodSpec { node_name: spec.node_name, containers: Vec::new(), ..Default::default() });
    let status = pod.status.take().unwrap_or_default();
    pod.status = Some(PodStatus {
        phase: status.phase,
        conditions: status.conditions.map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect()),
        ..Default::default()
    });
}

/// A hash of `value`, the same for the same value within this process.
pub(super) fn fingerprint<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Objects whose fingerprint changed since last seen, and every deleted object.
fn changed_only<K, S, F>(stream: S, fingerprint_of: F) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    F: Fn(&K) -> u64 + Send + 'static,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    stream.flat_map(move |event| {
        let out = match event {
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                let key = key_of(&obj);
                let h = fingerprint_of(&obj);
                if seen.insert(key, h) == Some(h) { None } else { Some(Ok(obj)) }
            }
            Ok(watcher::Event::Delete(obj)) => {
                seen.remove(&key_of(&obj));
                Some(Ok(obj))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        futures::stream::iter(out)
    })
}

fn key_of<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.meta().namespace.as_deref().unwrap_or(""), obj.meta().name.as_deref().unwrap_or(""))
}

/// The ResilientApp controlling a child: its controller reference (cluster-scoped, so the reference
/// carries no namespace: kube's `owns` would put the child's namespace in it and split one app into
/// two queue entries), or, for the Namespace, which has no owner reference, its app label.
pub fn owner<K: Resource>(child: K) -> Option<AppRef> {
    let meta = child.meta();
    let controller =
        meta.owner_references.iter().flatten().find(|o| {
            o.controller == Some(true) && o.kind == "ResilientApp" && o.api_version == "resilient.dev/v1alpha1"
        });
    match controller {
        Some(o) => Some(ObjectRef::new(&o.name)),
        None if meta.namespace.is_none() => meta.labels.as_ref()?.get(LABEL_APP).map(|app| ObjectRef::new(app)),
        None => None,
    }
}

/// The app of a pod, by its app label.
pub fn app_of_pod(pod: Pod) -> Option<AppRef> {
    pod.labels().get(LABEL_APP).map(|app| ObjectRef::new(app))
}

/// The apps whose usable zones a node change can affect: those allowing the node's zone (and
/// every app that cannot be decoded, which is reported on every pass).
pub fn apps_in_zone_of(apps: &Store<GuardedApp>, node: &Node) -> Vec<AppRef> {
    let Some(zone) = node_zone(node) else {
        return Vec::new();
    };
    apps.state()
        .iter()
        .filter(|app| match &app.0 {
            Ok(app) => app.spec.resilience.zones.is_empty() || app.spec.resilience.zones.iter().any(|z| z == zone),
            Err(_) => false,
        })
        .map(|app| ObjectRef::from_obj(app.as_ref()))
        .collect()
}

/// The slot of `resync`'s `slots` an app's resync falls in: a hash of its name (FNV-1a, the same
/// in every process), so each app comes back at the same point of every round.
pub fn resync_slot(name: &str, slots: u64) -> u64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    hash % slots.max(1)
}

/// Every app once per `resync` even without events, as one sweep over the app cache: the apps are
/// spread over the seconds of `resync` by [`resync_slot`], and each tick triggers those of its
/// slot. A pass that leaves an app in sync requeues nothing: a timer per app in kube's scheduler
/// held about 1 KB for each app, for good. Apps `skip` says no to (an invalid spec waiting for a
/// change, a failing app backing off, one being deleted) are left to their own requeue.
pub fn resync_sweep(
    apps: Store<GuardedApp>,
    resync: std::time::Duration,
    skip: impl Fn(&GuardedApp) -> bool + Send + Sync + 'static,
) -> impl Stream<Item = AppRef> + Send {
    let slots = resync.as_secs().clamp(1, 3600);
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + resync / slots as u32,
        (resync / slots as u32).max(std::time::Duration::from_millis(100)),
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let skip = std::sync::Arc::new(skip);
    futures::stream::unfold((ticks, 0_u64), move |(mut ticks, slot)| {
        let (apps, skip) = (apps.clone(), skip.clone());
        async move {
            ticks.tick().await;
            let due: Vec<AppRef> = apps
                .state()
                .iter()
                .filter(|app| resync_slot(&app.name_any(), slots) == slot && !skip(app))
                .map(|app| ObjectRef::from_obj(app.as_ref()))
                .collect();
            Some((futures::stream::iter(due), (ticks, (slot + 1) % slots)))
        }
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;
    use std::time::Duration;

    /// Drift goes through at once; status changes wait for the end of their window, once per app,
    /// in the order they came; the stream ends when its triggers end, with nothing held back.
    #[tokio::test(start_paused = true)]
    async fn status_changes_are_gathered_and_drift_is_not() {
        use futures::FutureExt as _;
        let (tx, rx) = futures::channel::mpsc::unbounded::<(AppRef, News)>();
        let mut apps = std::pin::pin!(coalesced(rx, Duration::from_millis(500)));
        let app = |name: &str| AppRef::new(name);
        let ready_now = |apps: &mut std::pin::Pin<&mut Coalesced>| {
            let mut out = Vec::new();
            while let Some(Some(a)) = apps.next().now_or_never() {
                out.push(a.name);
            }
            out
        };
        for (name, news) in [("b", News::Status), ("a", News::Status), ("b", News::Status), ("c", News::Content)] {
            tx.unbounded_send((app(name), news)).unwrap();
        }
        assert_eq!(ready_now(&mut apps), ["c"], "drift at once");
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(ready_now(&mut apps).is_empty(), "the window is not over");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(ready_now(&mut apps), ["b", "a"], "once each, in order");
        // A new window starts with the next status change.
        tx.unbounded_send((app("a"), News::Status)).unwrap();
        assert!(ready_now(&mut apps).is_empty());
        drop(tx);
        assert_eq!(ready_now(&mut apps), ["a"], "nothing held back when the triggers end");
        assert_eq!(apps.next().await, None);
    }

    #[test]
    fn the_resync_spreads_apps_evenly_over_its_seconds_and_keeps_each_in_its_slot() {
        let slots = 300;
        let mut per_slot = vec![0_u32; slots as usize];
        for i in 0..30_000 {
            let name = format!("app-{i:05}");
            let slot = resync_slot(&name, slots);
            assert_eq!(slot, resync_slot(&name, slots), "the same slot every round");
            per_slot[slot as usize] += 1;
        }
        // 100 per slot on average: none empty, none with more than twice its share.
        assert!(per_slot.iter().all(|n| (30..=200).contains(n)), "{per_slot:?}");
        assert_eq!(resync_slot("shop", 1), 0);
        assert_eq!(resync_slot("shop", 0), 0, "no slots: one");
    }

    #[test]
    fn only_pods_on_a_node_or_going_away_reach_the_controller() {
        let mut pod = Pod { spec: Some(PodSpec::default()), ..Default::default() };
        assert!(!placed(&pod), "created, not yet scheduled");
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
        assert!(placed(&pod), "deleted");
        pod.metadata.deletion_timestamp = None;
        pod.spec.as_mut().unwrap().node_name = Some("node-a-1".into());
        assert!(placed(&pod), "scheduled");
    }

    #[test]
    fn a_failed_watch_retries_within_seconds_and_starts_over_after_a_reset() {
        let mut b = Exponential::default();
        let delays: Vec<Duration> = (&mut b).take(12).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1), "{delays:?}");
        // Jitter adds at most the delay's own length: never above 16 s, and at 8 s or more once capped.
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(16)), "{delays:?}");
        assert!(delays[8..].iter().all(|d| *d >= Duration::from_secs(8)), "{delays:?}");
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_secs(1));
    }
}
