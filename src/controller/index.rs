//! Compact caches of the operator's children and of the apps' pods.
//!
//! A cache keeps, per object, what the operator reads (identity, the `resilient.dev/*` labels, the
//! controlling app, deletion, and per kind a few fields: a workload's replicas and rollout counters,
//! a pod's node and readiness, a namespace's labels and owners) and a verdict instead of the object:
//! "does this object hold the desired state with digest D". The verdict is taken by the first pass
//! that compares the object with its desired state (while the cache still holds the object it
//! received), and kept while the object's content does not change (status updates do not count).
//! So memory grows with the number of objects by a few hundred bytes each, not by their size.
//!
//! Objects are kept by namespace and name: an app's children live in its namespace, so a pass
//! finds them with a range scan instead of a second index.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStatus, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, Pod, PodCondition, PodSpec, PodStatus, ResourceQuota, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde::Serialize;
use serde_json::Value;

use super::diff;
use crate::api::{LABEL_APP, ResilientApp};
use crate::render::ANNOTATION_REPLICAS_HANDED_OFF;

/// Only labels under this prefix are kept: they are the only ones the operator reads.
const KEPT_LABELS: &str = "resilient.dev/";

/// What a cache keeps of an object of a kind, and how it gives the object back.
pub trait Compact: Resource<DynamicType = ()> + Clone + Debug + Serialize + Send + Sync + Sized + 'static {
    /// The fields of this kind kept beside the common metadata.
    type Kept: PartialEq + Send + Sync + 'static;
    /// Whether passes compare objects of this kind with a desired state (children: yes; pods: no).
    const JUDGED: bool = true;
    fn keep(&self) -> Self::Kept;
    /// The object as the cache knows it: `meta` (name, namespace, uid, resourceVersion,
    /// generation, the kept labels, the controller reference, deletion) plus the kept fields.
    fn rebuild(meta: ObjectMeta, kept: &Self::Kept) -> Self;
}

macro_rules! plain {
    ($($kind:ident),*) => {$(
        impl Compact for $kind {
            type Kept = ();
            fn keep(&self) {}
            fn rebuild(metadata: ObjectMeta, _: &()) -> Self {
                $kind { metadata, ..Default::default() }
            }
        }
    )*};
}
plain!(ResourceQuota, LimitRange, NetworkPolicy, RoleBinding, Service, PodDisruptionBudget, HorizontalPodAutoscaler);

/// A workload's replicas, whether they are handed over to an autoscaler, and its rollout counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    replicas: Option<i32>,
    handed_off: bool,
    observed_generation: Option<i64>,
    status_replicas: Option<i32>,
    updated: Option<i32>,
    ready: Option<i32>,
    available: Option<i32>,
    /// StatefulSets only: the current and update revisions are equal.
    revisions_equal: bool,
}

fn with_handoff(mut meta: ObjectMeta, handed_off: bool) -> ObjectMeta {
    if handed_off {
        meta.annotations = Some([(ANNOTATION_REPLICAS_HANDED_OFF.to_string(), "true".to_string())].into());
    }
    meta
}

fn handed_off(meta: &ObjectMeta) -> bool {
    meta.annotations.as_ref().is_some_and(|a| a.contains_key(ANNOTATION_REPLICAS_HANDED_OFF))
}

impl Compact for Deployment {
    type Kept = Workload;
    fn keep(&self) -> Workload {
        let st = self.status.clone().unwrap_or_default();
        Workload {
            replicas: self.spec.as_ref().and_then(|s| s.replicas),
            handed_off: handed_off(&self.metadata),
            observed_generation: st.observed_generation,
            status_replicas: st.replicas,
            updated: st.updated_replicas,
            ready: st.ready_replicas,
            available: st.available_replicas,
            revisions_equal: true,
        }
    }
    fn rebuild(meta: ObjectMeta, w: &Workload) -> Self {
        Deployment {
            metadata: with_handoff(meta, w.handed_off),
            spec: Some(DeploymentSpec { replicas: w.replicas, ..Default::default() }),
            status: Some(DeploymentStatus {
                observed_generation: w.observed_generation,
                replicas: w.status_replicas,
                updated_replicas: w.updated,
                ready_replicas: w.ready,
                available_replicas: w.available,
                ..Default::default()
            }),
        }
    }
}

impl Compact for StatefulSet {
    type Kept = Workload;
    fn keep(&self) -> Workload {
        let st = self.status.clone().unwrap_or_default();
        Workload {
            replicas: self.spec.as_ref().and_then(|s| s.replicas),
            handed_off: handed_off(&self.metadata),
            observed_generation: st.observed_generation,
            status_replicas: Some(st.replicas),
            updated: st.updated_replicas,
            ready: st.ready_replicas,
            available: st.available_replicas,
            revisions_equal: st.current_revision == st.update_revision,
        }
    }
    fn rebuild(meta: ObjectMeta, w: &Workload) -> Self {
        // Equal revisions or not is all a pass asks of them.
        let (current, update) = if w.revisions_equal { (None, None) } else { (Some("current"), Some("update")) };
        StatefulSet {
            metadata: with_handoff(meta, w.handed_off),
            spec: Some(StatefulSetSpec { replicas: w.replicas, ..Default::default() }),
            status: Some(StatefulSetStatus {
                observed_generation: w.observed_generation,
                replicas: w.status_replicas.unwrap_or(0),
                updated_replicas: w.updated,
                ready_replicas: w.ready,
                available_replicas: w.available,
                current_revision: current.map(Into::into),
                update_revision: update.map(Into::into),
                ..Default::default()
            }),
        }
    }
}

/// A namespace is kept with all its labels, owners, finalizers and status (the gate reads them),
/// as JSON text: one allocation instead of one per label, owner and condition.
impl Compact for Namespace {
    type Kept = Box<str>;
    fn keep(&self) -> Box<str> {
        let kept = Namespace {
            metadata: ObjectMeta {
                labels: self.metadata.labels.clone(),
                owner_references: self.metadata.owner_references.clone(),
                deletion_timestamp: self.metadata.deletion_timestamp.clone(),
                ..Default::default()
            },
            spec: self.spec.clone(),
            status: self.status.clone(),
        };
        serde_json::to_string(&kept).unwrap_or_default().into_boxed_str()
    }
    fn rebuild(meta: ObjectMeta, kept: &Box<str>) -> Self {
        let kept: Namespace = serde_json::from_str(kept).unwrap_or_default();
        Namespace {
            metadata: ObjectMeta {
                labels: kept.metadata.labels,
                owner_references: kept.metadata.owner_references,
                deletion_timestamp: kept.metadata.deletion_timestamp,
                ..meta
            },
            spec: kept.spec,
            status: kept.status,
        }
    }
}

/// A pod's node, phase and readiness.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodPlace {
    node: Option<Box<str>>,
    phase: Option<Box<str>>,
    /// The status of its Ready condition.
    ready: Option<Box<str>>,
}

impl Compact for Pod {
    type Kept = PodPlace;
    const JUDGED: bool = false;
    fn keep(&self) -> PodPlace {
        let status = self.status.as_ref();
        PodPlace {
            node: self.spec.as_ref().and_then(|s| s.node_name.as_deref()).map(Into::into),
            phase: status.and_then(|s| s.phase.as_deref()).map(Into::into),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.as_str().into()),
        }
    }
    fn rebuild(metadata: ObjectMeta, p: &PodPlace) -> Self {
        Pod {
            metadata,
            spec: Some(PodSpec { node_name: p.node.as_deref().map(Into::into), ..Default::default() }),
            status: Some(PodStatus {
                phase: p.phase.as_deref().map(Into::into),
                conditions: p
                    .ready
                    .as_deref()
                    .map(|s| vec![PodCondition { type_: "Ready".into(), status: s.into(), ..Default::default() }]),
                ..Default::default()
            }),
        }
    }
}

/// A uid or a resourceVersion, kept without an allocation in its usual form (a lowercase UUID, a
/// decimal number) and as text otherwise: it always gives back exactly the text it was made of.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Uuid(uuid::Bytes),
    Number(u64),
    Text(Box<str>),
}

impl Token {
    fn of(text: &str) -> Self {
        if let Ok(uuid) = uuid::Uuid::try_parse(text)
            && uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()) == text
        {
            return Token::Uuid(*uuid.as_bytes());
        }
        match text.parse::<u64>() {
            Ok(n) if n.to_string() == text => Token::Number(n),
            _ => Token::Text(text.into()),
        }
    }

    fn text(&self) -> String {
        match self {
            Token::Uuid(bytes) => uuid::Uuid::from_bytes(*bytes).hyphenated().to_string(),
            Token::Number(n) => n.to_string(),
            Token::Text(t) => t.to_string(),
        }
    }
}

/// The metadata every cached object keeps, in few allocations: tens of thousands of records
/// (about ten per app) made most of the operator's memory when each field was a `String`.
#[derive(Clone, Debug, PartialEq)]
struct Meta {
    uid: Option<Token>,
    resource_version: Option<Token>,
    generation: Option<i64>,
    /// The `resilient.dev/*` labels, one `key=value` per line (neither contains `=` or a newline).
    labels: Box<str>,
    /// The uid of the ResilientApp in the object's controller reference, and its name.
    controller: Option<(Token, Box<str>)>,
    deletion: Option<Time>,
}

impl Meta {
    fn of(meta: &ObjectMeta) -> Self {
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true) && o.kind == ResilientApp::kind(&()))
            .map(|o| (Token::of(&o.uid), o.name.as_str().into()));
        let mut labels = String::new();
        for (k, v) in meta.labels.iter().flatten().filter(|(k, _)| k.starts_with(KEPT_LABELS)) {
            labels.push_str(k);
            labels.push('=');
            labels.push_str(v);
            labels.push('\n');
        }
        Meta {
            uid: meta.uid.as_deref().map(Token::of),
            resource_version: meta.resource_version.as_deref().map(Token::of),
            generation: meta.generation,
            labels: labels.into_boxed_str(),
            controller,
            deletion: meta.deletion_timestamp.clone(),
        }
    }

    fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.lines().filter_map(|line| line.split_once('='))
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn resource_version(&self) -> Option<String> {
        self.resource_version.as_ref().map(Token::text)
    }

    fn object_meta(&self, namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
            uid: self.uid.as_ref().map(Token::text),
            resource_version: self.resource_version(),
            generation: self.generation,
            labels: (!self.labels.is_empty())
                .then(|| self.labels().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            owner_references: self.controller.as_ref().map(|(uid, name)| {
                vec![OwnerReference {
                    api_version: ResilientApp::api_version(&()).to_string(),
                    kind: ResilientApp::kind(&()).to_string(),
                    name: name.to_string(),
                    uid: uid.text(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            deletion_timestamp: self.deletion.clone(),
            ..Default::default()
        }
    }
}

/// The verdict of a pass on an object: whether it held the desired state with this digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Judged {
    desired: u64,
    holds: bool,
}

struct Entry<K: Compact> {
    meta: Meta,
    kept: K::Kept,
    /// A digest of the object without its status and resourceVersion: a status update keeps the verdict.
    content: u64,
    judged: Option<Judged>,
    /// The object as received ([`content`]: JSON text, LZ4-compressed), until a pass has judged
    /// it. After a restart every child waits for its first pass at once: as text they took about
    /// 8 KB per app (40 MB with 5,000 apps); compressed about a third of that.
    full: Option<Box<[u8]>>,
}

/// `namespace/name` (neither may contain a `/`); cluster-scoped objects have an empty namespace.
/// One allocation per object; an app's objects are the range starting at `namespace/`.
type Key = Box<str>;

fn key(namespace: &str, name: &str) -> Key {
    format!("{namespace}/{name}").into_boxed_str()
}

struct Inner<K: Compact> {
    /// Entries are boxed: a B-tree node holds eleven slots, about half of them empty when the
    /// keys arrive in order (as a list brings them), and a slot is a key and a pointer, not a record.
    objects: BTreeMap<Key, Box<Entry<K>>>,
    /// Objects of a relist in progress (between Init and InitDone), which replaces everything.
    relisting: Option<BTreeMap<Key, Box<Entry<K>>>>,
}

/// What [`Cache::judge`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No such object in the cache.
    Absent,
    /// It holds the desired state.
    Holds,
    /// It does not, or the cache cannot tell any more (judged against another desired state).
    Differs,
}

/// A compact cache of one kind, kept by the events of its watch.
pub struct Cache<K: Compact> {
    inner: Arc<RwLock<Inner<K>>>,
    ready: tokio::sync::watch::Receiver<bool>,
    ready_tx: Arc<tokio::sync::watch::Sender<bool>>,
    _kind: PhantomData<fn() -> K>,
}

impl<K: Compact> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ready: self.ready.clone(),
            ready_tx: self.ready_tx.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K: Compact> Default for Cache<K> {
    fn default() -> Self {
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        Self {
            inner: Arc::new(RwLock::new(Inner { objects: BTreeMap::new(), relisting: None })),
            ready,
            ready_tx: Arc::new(ready_tx),
            _kind: PhantomData,
        }
    }
}

fn key_of(meta: &ObjectMeta) -> Key {
    key(meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default())
}

fn key_of_ref<K: Compact>(r: &ObjectRef<K>) -> Key {
    key(r.namespace.as_deref().unwrap_or_default(), &r.name)
}

fn hash_of(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// A digest of what an object holds, leaving out what changes without its content changing.
/// The object as JSON text without its status, resourceVersion and managedFields (what a pass
/// compares with the desired state), and a digest of that text (what a verdict is kept for).
fn content<K: Serialize>(obj: &K) -> (u64, Box<str>) {
    let Ok(mut value) = serde_json::to_value(obj) else {
        return (0, Box::from(""));
    };
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
    }
    let text = value.to_string();
    (hash_of(&text), text.into_boxed_str())
}

impl<K: Compact> Cache<K> {
    /// Wait until the first list has been received.
    pub async fn wait_until_ready(&self) -> Result<(), tokio::sync::watch::error::RecvError> {
        self.ready.clone().wait_for(|r| *r).await.map(|_| ())
    }

    /// The object as the cache knows it (see [`Compact::rebuild`]).
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        let inner = self.inner.read().expect("cache lock");
        let entry = inner.objects.get(&key_of_ref(key))?;
        let (ns, name) = (key.namespace.as_deref().unwrap_or_default(), key.name.as_str());
        Some(Arc::new(K::rebuild(entry.meta.object_meta(ns, name), &entry.kept)))
    }

    /// The cached objects in `namespace` labelled as belonging to `app`.
    pub fn of_app(&self, app: &str, namespace: &str) -> Vec<Arc<K>> {
        let inner = self.inner.read().expect("cache lock");
        let prefix = key(namespace, "");
        inner
            .objects
            .range::<str, _>((std::ops::Bound::Included(&*prefix), std::ops::Bound::Unbounded))
            .map_while(|(k, e)| k.strip_prefix(&*prefix).map(|name| (name, e)))
            .filter(|(_, e)| e.meta.label(LABEL_APP) == Some(app))
            .map(|(name, e)| Arc::new(K::rebuild(e.meta.object_meta(namespace, name), &e.kept)))
            .collect()
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        self.inner.read().expect("cache lock").objects.len()
    }

    /// Whether the cached object `key` holds `want` (the desired state, as JSON, whose digest is
    /// `desired`), and its resourceVersion. The first pass after the object changed compares it
    /// field by field ([`diff::contains`]) and leaves a verdict in place of the object.
    pub fn judge(&self, key: &ObjectRef<K>, want: &Value, desired: u64) -> (Verdict, Option<String>) {
        let mut inner = self.inner.write().expect("cache lock");
        let Some(entry) = inner.objects.get_mut(&key_of_ref(key)) else {
            return (Verdict::Absent, None);
        };
        let version = entry.meta.resource_version();
        if let Some(full) = entry.full.take() {
            let have = lz4_flex::decompress_size_prepended(&full).ok();
            let holds = have
                .and_then(|text| serde_json::from_slice::<Value>(&text).ok())
                .is_some_and(|have| diff::contains(&have, want));
            entry.judged = Some(Judged { desired, holds });
        }
        let verdict = match entry.judged {
            Some(j) if j.desired == desired && j.holds => Verdict::Holds,
            _ => Verdict::Differs,
        };
        (verdict, version)
    }

    /// Judge the object an apply of `want` returned: when the cache already shows that version
    /// (an apply that changed nothing), the verdict is taken now; otherwise its watch event
    /// brings the object and the next pass judges it.
    pub fn wrote(&self, written: &K, want: &Value, desired: u64) {
        let key = key_of(written.meta());
        let mut inner = self.inner.write().expect("cache lock");
        if let Some(entry) = inner.objects.get_mut(&key)
            && let Some(version) = written.meta().resource_version.as_deref()
            && entry.meta.resource_version == Some(Token::of(version))
        {
            let holds = serde_json::to_value(written).is_ok_and(|have| diff::contains(&have, want));
            entry.full = None;
            entry.judged = Some(Judged { desired, holds });
        }
    }

    /// Follow one watch event. Returns whether it shows something a pass can see: an object
    /// new to the cache, deleted, or whose content (all but status and resourceVersion) changed
    /// ([`News::Content`]), or whose kept status fields alone changed (a Deployment's rollout
    /// counters, [`News::Status`]); not a status update the cache keeps nothing of (a quota's
    /// usage, a PodDisruptionBudget's counters) nor a relist of what the cache already holds.
    pub fn apply(&self, event: &watcher::Event<K>) -> News {
        let mut inner = self.inner.write().expect("cache lock");
        match event {
            watcher::Event::Apply(obj) => {
                let (entry, news) = entry_for(&inner.objects, obj);
                inner.objects.insert(key_of(obj.meta()), entry);
                news
            }
            watcher::Event::Delete(obj) => {
                inner.objects.remove(&key_of(obj.meta()));
                News::Content
            }
            watcher::Event::Init => {
                inner.relisting = Some(BTreeMap::new());
                News::None
            }
            watcher::Event::InitApply(obj) => {
                let (entry, news) = entry_for(&inner.objects, obj);
                inner.relisting.get_or_insert_default().insert(key_of(obj.meta()), entry);
                news
            }
            watcher::Event::InitDone => {
                inner.objects = inner.relisting.take().unwrap_or_default();
                self.ready_tx.send_replace(true);
                News::None
            }
        }
    }
}

/// What a watch event shows a pass (see [`Cache::apply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum News {
    /// Nothing a pass reads.
    None,
    /// Only kept status fields: what the app's status shows, never a reason to write a child.
    Status,
    /// A new, changed (drifted) or deleted object.
    Content,
}

/// The entry for an object just received, and whether it is news (see [`Cache::apply`]). A
/// verdict on the same content carries over (a status update, a relist); otherwise the object is
/// kept until a pass judges it.
fn entry_for<K: Compact>(objects: &BTreeMap<Key, Box<Entry<K>>>, obj: &K) -> (Box<Entry<K>>, News) {
    let (meta, kept) = (Meta::of(obj.meta()), obj.keep());
    let before = objects.get(&key_of(obj.meta())).filter(|e| e.meta.uid == meta.uid);
    if !K::JUDGED {
        let news = match before {
            Some(e) if e.meta.deletion == meta.deletion && e.meta.labels == meta.labels => match e.kept == kept {
                true => News::None,
                false => News::Status,
            },
            _ => News::Content,
        };
        return (Box::new(Entry { meta, kept, content: 0, judged: None, full: None }), news);
    }
    let (content, text) = content(obj);
    let same = before.filter(|e| e.content == content);
    let news = match same {
        None => News::Content,
        Some(e) if e.kept != kept => News::Status,
        Some(_) => News::None,
    };
    let judged = same.and_then(|e| e.judged);
    let full = judged.is_none().then(|| lz4_flex::compress_prepend_size(text.as_bytes()).into_boxed_slice());
    (Box::new(Entry { meta, kept, content, judged, full }), news)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(app: Option<&str>) -> Option<BTreeMap<String, String>> {
        let mut l: BTreeMap<String, String> = [("app.kubernetes.io/name".to_string(), "x".to_string())].into();
        if let Some(a) = app {
            l.insert(LABEL_APP.to_string(), a.to_string());
        }
        Some(l)
    }

    fn pod(name: &str, ns: &str, app: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: labels(app),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: Some("node-1".into()), ..Default::default() }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![
                    PodCondition { type_: "PodScheduled".into(), status: "True".into(), ..Default::default() },
                    PodCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() },
                ]),
                ..Default::default()
            }),
        }
    }

    fn names<K: Compact>(cache: &Cache<K>, app: &str, ns: &str) -> Vec<String> {
        cache.of_app(app, ns).iter().map(|o| o.meta().name.clone().unwrap()).collect()
    }

    #[test]
    fn uids_and_versions_come_back_exactly_as_they_were_given() {
        for text in [
            "55091a69-be77-407c-be56-b967d5272d98",
            "55091A69-BE77-407C-BE56-B967D5272D98",
            "{55091a69-be77-407c-be56-b967d5272d98}",
            "1349",
            "0",
            "007",
            "18446744073709551616",
            "",
            "opaque/version",
        ] {
            assert_eq!(Token::of(text).text(), text);
        }
        assert!(matches!(Token::of("55091a69-be77-407c-be56-b967d5272d98"), Token::Uuid(_)));
        assert!(matches!(Token::of("1349"), Token::Number(1349)));
        assert!(matches!(Token::of("007"), Token::Text(_)));
    }

    #[test]
    fn a_record_gives_back_the_metadata_it_keeps() {
        let meta: ObjectMeta = serde_json::from_value(json!({
            "name": "web", "namespace": "shop", "uid": "55091a69-be77-407c-be56-b967d5272d98",
            "resourceVersion": "42", "generation": 3, "deletionTimestamp": "2026-11-28T06:37:15Z",
            "labels": {LABEL_APP: "shop", "resilient.dev/component": "web", "app.kubernetes.io/name": "web"},
            "annotations": {"a": "b"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "u-other"},
                {"apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "name": "shop",
                 "uid": "0a5f0c4e-7d0e-4b6a-9d5e-1c2b3a4d5e6f", "controller": true}]
        }))
        .unwrap();
        let back = Meta::of(&meta).object_meta("shop", "web");
        let expected: ObjectMeta = serde_json::from_value(json!({
            "name": "web", "namespace": "shop", "uid": "55091a69-be77-407c-be56-b967d5272d98",
            "resourceVersion": "42", "generation": 3, "deletionTimestamp": "2026-11-28T06:37:15Z",
            "labels": {LABEL_APP: "shop", "resilient.dev/component": "web"},
            "ownerReferences": [{"apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "name": "shop",
                 "uid": "0a5f0c4e-7d0e-4b6a-9d5e-1c2b3a4d5e6f", "controller": true}]
        }))
        .unwrap();
        assert_eq!(back, expected);
        assert_eq!(Meta::of(&meta).label("resilient.dev/component"), Some("web"));
        assert_eq!(Meta::of(&meta).label("resilient.dev/comp"), None);
    }

    #[test]
    fn a_namespace_comes_back_with_what_the_gate_reads() {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": "shop", "uid": "u1", "resourceVersion": "7",
                "labels": {LABEL_APP: "shop", "pod-security.kubernetes.io/enforce": "restricted"},
                "annotations": {"x": "y"}, "finalizers": ["f"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u-c"}]},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Terminating"}
        }))
        .unwrap();
        let cache = Cache::<Namespace>::default();
        cache.apply(&watcher::Event::Apply(ns.clone()));
        let back = cache.get(&ObjectRef::new("shop")).unwrap();
        assert_eq!(back.metadata.labels, ns.metadata.labels, "every label, not only resilient.dev/ ones");
        assert_eq!(back.metadata.owner_references, ns.metadata.owner_references);
        assert_eq!((&back.spec, &back.status), (&ns.spec, &ns.status));
        assert_eq!(back.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(cache.of_app("shop", "").len(), 1, "cluster-scoped: the empty namespace");
    }

    #[test]
    fn only_what_a_pass_can_see_is_news() {
        let pdb = |version: &str, label: &str, healthy: i32| -> PodDisruptionBudget {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": version,
                             "labels": {LABEL_APP: "shop", "tier": label}},
                "spec": {"minAvailable": 1},
                "status": {"currentHealthy": healthy, "desiredHealthy": 1, "disruptionsAllowed": 0, "expectedPods": 1}
            }))
            .unwrap()
        };
        let cache = Cache::<PodDisruptionBudget>::default();
        let news = |event| cache.apply(&event);
        assert_eq!(news(watcher::Event::Apply(pdb("1", "a", 0))), News::Content, "new");
        assert_eq!(
            news(watcher::Event::Apply(pdb("2", "a", 1))),
            News::None,
            "a status update the cache keeps nothing of"
        );
        assert_eq!(news(watcher::Event::Apply(pdb("3", "b", 1))), News::Content, "content (a label) changed");
        assert_eq!(news(watcher::Event::Init), News::None);
        assert_eq!(news(watcher::Event::InitApply(pdb("3", "b", 1))), News::None, "relisted as it was");
        assert_eq!(news(watcher::Event::InitDone), News::None);
        assert_eq!(news(watcher::Event::Delete(pdb("4", "b", 1))), News::Content, "deleted");

        let deployment = |version: &str, replicas: i32, ready: i32| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "shop", "uid": "u2", "resourceVersion": version},
                "spec": {"replicas": replicas, "selector": {}, "template": {}},
                "status": {"replicas": 2, "readyReplicas": ready, "conditions": [{"type": "Available", "status": "False"}]}
            }))
            .unwrap()
        };
        let cache = Cache::<Deployment>::default();
        let news = |event| cache.apply(&event);
        assert_eq!(news(watcher::Event::Apply(deployment("1", 2, 1))), News::Content);
        assert_eq!(
            news(watcher::Event::Apply(deployment("2", 2, 2))),
            News::Status,
            "a rollout counter the status reads"
        );
        let mut other_condition = deployment("3", 2, 2);
        other_condition.status.as_mut().unwrap().conditions = None;
        assert_eq!(news(watcher::Event::Apply(other_condition)), News::None, "status the cache does not keep");
        assert_eq!(news(watcher::Event::Apply(deployment("4", 5, 2))), News::Content, "scaled by someone: drift");

        let cache = Cache::<Pod>::default();
        let news = |event| cache.apply(&event);
        let mut unready = pod("p", "shop", Some("shop"));
        unready.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].status = "False".into();
        assert_eq!(news(watcher::Event::Apply(unready)), News::Content, "new");
        assert_eq!(news(watcher::Event::Apply(pod("p", "shop", Some("shop")))), News::Status, "ready now");
        assert_eq!(news(watcher::Event::Apply(pod("p", "shop", Some("shop")))), News::None);
        assert_eq!(news(watcher::Event::Apply(pod("p", "shop", Some("other")))), News::Content, "relabelled");
    }

    #[test]
    fn follows_applies_relabels_deletes_and_relists() {
        let cache = Cache::<Pod>::default();
        cache.apply(&watcher::Event::Apply(pod("a", "x", Some("x"))));
        cache.apply(&watcher::Event::Apply(pod("b", "x", Some("x"))));
        cache.apply(&watcher::Event::Apply(pod("c", "x", None)));
        cache.apply(&watcher::Event::Apply(pod("a", "xy", Some("x"))));
        assert_eq!(names(&cache, "x", "x"), ["a", "b"], "only this namespace, only this app");
        // The label moved: the object leaves its old app.
        cache.apply(&watcher::Event::Apply(pod("b", "x", Some("y"))));
        assert_eq!((names(&cache, "x", "x"), names(&cache, "y", "x")), (vec!["a".to_string()], vec!["b".to_string()]));
        cache.apply(&watcher::Event::Delete(pod("a", "x", Some("x"))));
        assert!(names(&cache, "x", "x").is_empty());
        // A relist replaces everything once it is done, and not before.
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(pod("d", "x", Some("x"))));
        assert_eq!(names(&cache, "y", "x"), ["b"]);
        cache.apply(&watcher::Event::InitDone);
        assert_eq!((names(&cache, "x", "x"), names(&cache, "y", "x")), (vec!["d".to_string()], vec![]));
    }

    #[test]
    fn a_pod_comes_back_with_what_placement_reads() {
        let cache = Cache::<Pod>::default();
        let mut p = pod("a", "x", Some("x"));
        p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        cache.apply(&watcher::Event::Apply(p));
        let back = cache.get(&ObjectRef::new("a").within("x")).unwrap();
        assert_eq!(back.spec.as_ref().unwrap().node_name.as_deref(), Some("node-1"));
        assert!(crate::resilience::pod_ready(&back));
        assert_eq!(back.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
        assert!(back.metadata.deletion_timestamp.is_some());
        // Only the resilient.dev/ labels are kept.
        assert_eq!(back.metadata.labels, Some([(LABEL_APP.to_string(), "x".to_string())].into()));
    }

    #[test]
    fn a_deployment_keeps_its_replicas_handoff_controller_and_counters() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-d", "generation": 3, "resourceVersion": "9",
                "labels": {LABEL_APP: "shop", "resilient.dev/component": "web"},
                "annotations": {ANNOTATION_REPLICAS_HANDED_OFF: "true", "other": "x"},
                "ownerReferences": [{"apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "name": "shop",
                    "uid": "u-app", "controller": true}]},
            "spec": {"replicas": 6, "selector": {}, "template": {"spec": {"containers": [{"name": "web", "image": "x"}]}}},
            "status": {"observedGeneration": 3, "replicas": 6, "updatedReplicas": 6, "readyReplicas": 5, "availableReplicas": 5}
        }))
        .unwrap();
        let cache = Cache::<Deployment>::default();
        cache.apply(&watcher::Event::Apply(d.clone()));
        let back = cache.get(&ObjectRef::new("web").within("shop")).unwrap();
        let mut expected = Deployment::rebuild(Meta::of(&d.metadata).object_meta("shop", "web"), &d.keep());
        expected.metadata.annotations = Some([(ANNOTATION_REPLICAS_HANDED_OFF.to_string(), "true".to_string())].into());
        assert_eq!(*back, expected);
        assert_eq!(back.spec.as_ref().unwrap().replicas, Some(6));
        assert_eq!(back.metadata.generation, Some(3));
        assert!(super::super::apply::controlled_by(&back.metadata, "u-app"));
        assert_eq!(back.status.as_ref().unwrap().ready_replicas, Some(5));
        assert_eq!(cache.of_app("shop", "shop").len(), 1);
    }

    fn service(rv: &str, port: i32, status_ip: Option<&str>) -> Service {
        let mut s: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": rv,
                         "labels": {LABEL_APP: "shop"}},
            "spec": {"ports": [{"port": port, "protocol": "TCP"}], "type": "ClusterIP"}
        }))
        .unwrap();
        if let Some(ip) = status_ip {
            s.status = Some(serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": ip}]}})).unwrap());
        }
        s
    }

    #[test]
    fn a_verdict_is_taken_once_and_kept_until_the_content_changes() {
        let cache = Cache::<Service>::default();
        let key = ObjectRef::<Service>::new("web").within("shop");
        let want = json!({"spec": {"ports": [{"port": 80}]}});
        assert_eq!(cache.judge(&key, &want, 1).0, Verdict::Absent);
        cache.apply(&watcher::Event::Apply(service("1", 80, None)));
        assert_eq!(cache.judge(&key, &want, 1), (Verdict::Holds, Some("1".into())));
        assert!(cache.inner.read().unwrap().objects.values().all(|e| e.full.is_none()), "the object is dropped");
        // Another desired state cannot be judged without the object: it is a difference.
        assert_eq!(cache.judge(&key, &json!({"spec": {"ports": [{"port": 81}]}}), 2).0, Verdict::Differs);
        assert_eq!(cache.judge(&key, &want, 1).0, Verdict::Holds);
        // A status update keeps the verdict; a changed spec is judged again.
        cache.apply(&watcher::Event::Apply(service("2", 80, Some("10.0.0.1"))));
        assert!(cache.inner.read().unwrap().objects.values().all(|e| e.full.is_none()));
        assert_eq!(cache.judge(&key, &want, 1), (Verdict::Holds, Some("2".into())));
        cache.apply(&watcher::Event::Apply(service("3", 90, None)));
        assert_eq!(cache.judge(&key, &want, 1).0, Verdict::Differs);
        // An apply whose answer the cache already shows (it changed nothing) is judged from the answer.
        let cache = Cache::<Service>::default();
        cache.apply(&watcher::Event::Apply(service("5", 80, None)));
        let other = json!({"spec": {"type": "ClusterIP"}});
        assert_eq!(cache.judge(&key, &want, 1).0, Verdict::Holds);
        assert_eq!(cache.judge(&key, &other, 7).0, Verdict::Differs);
        cache.wrote(&service("5", 80, None), &other, 7);
        assert_eq!(cache.judge(&key, &other, 7).0, Verdict::Holds);
        // A newer version than the cache shows: left to its watch event.
        cache.wrote(&service("6", 80, None), &want, 1);
        assert_eq!(cache.judge(&key, &want, 1).0, Verdict::Differs);
    }

    #[test]
    fn a_relist_keeps_verdicts_of_unchanged_objects_and_a_new_object_of_the_same_name_is_judged_again() {
        let cache = Cache::<Service>::default();
        let key = ObjectRef::<Service>::new("web").within("shop");
        let want = json!({"spec": {"ports": [{"port": 80}]}});
        cache.apply(&watcher::Event::Apply(service("1", 80, None)));
        assert_eq!(cache.judge(&key, &want, 1).0, Verdict::Holds);
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(service("1", 80, None)));
        cache.apply(&watcher::Event::InitDone);
        assert!(cache.inner.read().unwrap().objects.values().all(|e| e.full.is_none()));
        let mut recreated = service("4", 80, None);
        recreated.metadata.uid = Some("u2".into());
        cache.apply(&watcher::Event::Apply(recreated));
        assert!(cache.inner.read().unwrap().objects.values().all(|e| e.full.is_some()));
        assert_eq!(cache.judge(&key, &want, 1).0, Verdict::Holds);
    }
}
