//! A cache with a per-app index: a reconcile finds its own children and pods by the app label
//! instead of scanning every cached object, so its cost does not grow with the number of apps.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::api::LABEL_APP;

/// A reflector store plus the objects of each app (by the `resilient.dev/app` label).
pub struct Cache<K: Resource<DynamicType = ()> + 'static> {
    pub store: Store<K>,
    index: AppIndex<K>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), index: self.index.clone() }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cache<K> {
    pub fn new(store: Store<K>, index: AppIndex<K>) -> Self {
        Self { store, index }
    }

    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.store.get(key)
    }

    /// Every cached object labelled as belonging to `app`. The store is updated a step before
    /// the index, so the label is checked again on the object itself.
    pub fn of_app(&self, app: &str) -> Vec<Arc<K>> {
        self.index
            .refs(app)
            .iter()
            .filter_map(|r| self.store.get(r))
            .filter(|o| o.meta().labels.as_ref().and_then(|l| l.get(LABEL_APP)).is_some_and(|a| a == app))
            .collect()
    }
}

/// Object references by app, kept by the same watch events that fill the store.
pub struct AppIndex<K: Resource<DynamicType = ()> + 'static>(Arc<RwLock<Index<K>>>);

impl<K: Resource<DynamicType = ()> + 'static> Clone for AppIndex<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Default for AppIndex<K> {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(Index { by_app: HashMap::new(), app_of: HashMap::new(), relisting: None })))
    }
}

struct Index<K: Resource<DynamicType = ()> + 'static> {
    by_app: HashMap<String, HashSet<ObjectRef<K>>>,
    app_of: HashMap<ObjectRef<K>, String>,
    /// Objects of a relist in progress (between Init and InitDone), which replaces everything.
    relisting: Option<Vec<(ObjectRef<K>, String)>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Index<K> {
    fn insert(&mut self, key: ObjectRef<K>, app: Option<String>) {
        self.remove(&key);
        if let Some(app) = app {
            self.by_app.entry(app.clone()).or_default().insert(key.clone());
            self.app_of.insert(key, app);
        }
    }

    fn remove(&mut self, key: &ObjectRef<K>) {
        if let Some(app) = self.app_of.remove(key)
            && let Some(set) = self.by_app.get_mut(&app)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_app.remove(&app);
            }
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> AppIndex<K> {
    fn refs(&self, app: &str) -> Vec<ObjectRef<K>> {
        let index = self.0.read().expect("index lock");
        index.by_app.get(app).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Follow one watch event, as the reflector does for the store.
    pub fn apply(&self, event: &watcher::Event<K>) {
        let app_of = |o: &K| o.meta().labels.as_ref().and_then(|l| l.get(LABEL_APP)).cloned();
        let mut index = self.0.write().expect("index lock");
        match event {
            watcher::Event::Apply(o) => index.insert(ObjectRef::from_obj(o), app_of(o)),
            watcher::Event::Delete(o) => index.remove(&ObjectRef::from_obj(o)),
            watcher::Event::Init => index.relisting = Some(Vec::new()),
            watcher::Event::InitApply(o) => {
                if let (Some(list), Some(app)) = (index.relisting.as_mut(), app_of(o)) {
                    list.push((ObjectRef::from_obj(o), app));
                }
            }
            watcher::Event::InitDone => {
                let list = index.relisting.take().unwrap_or_default();
                index.by_app.clear();
                index.app_of.clear();
                for (key, app) in list {
                    index.insert(key, Some(app));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;

    fn pod(name: &str, app: Option<&str>) -> Pod {
        let labels = app.map(|a| [(LABEL_APP.to_string(), a.to_string())].into());
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(index: &AppIndex<Pod>, app: &str) -> Vec<String> {
        let mut v: Vec<String> = index.refs(app).into_iter().map(|r| r.name).collect();
        v.sort();
        v
    }

    #[test]
    fn follows_applies_relabels_deletes_and_relists() {
        let index = AppIndex::<Pod>::default();
        index.apply(&watcher::Event::Apply(pod("a", Some("x"))));
        index.apply(&watcher::Event::Apply(pod("b", Some("x"))));
        index.apply(&watcher::Event::Apply(pod("c", None)));
        assert_eq!(names(&index, "x"), ["a", "b"]);
        // The label moved: the object leaves its old app.
        index.apply(&watcher::Event::Apply(pod("b", Some("y"))));
        assert_eq!((names(&index, "x"), names(&index, "y")), (vec!["a".to_string()], vec!["b".to_string()]));
        index.apply(&watcher::Event::Delete(pod("a", Some("x"))));
        assert!(names(&index, "x").is_empty());
        // A relist replaces everything once it is done, and not before.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod("d", Some("x"))));
        assert_eq!(names(&index, "y"), ["b"]);
        index.apply(&watcher::Event::InitDone);
        assert_eq!((names(&index, "x"), names(&index, "y")), (vec!["d".to_string()], vec![]));
    }

    #[test]
    fn of_app_rechecks_the_label_when_the_store_is_a_step_ahead() {
        let (store, mut writer) = kube::runtime::reflector::store::<Pod>();
        let index = AppIndex::<Pod>::default();
        for p in [pod("a", Some("x")), pod("b", Some("x"))] {
            let event = watcher::Event::Apply(p);
            writer.apply_watcher_event(&event);
            index.apply(&event);
        }
        let cache = Cache::new(store, index);
        // The store has seen b move to y; the index has not yet.
        writer.apply_watcher_event(&watcher::Event::Apply(pod("b", Some("y"))));
        let names: Vec<String> = cache.of_app("x").iter().map(|p| p.meta().name.clone().unwrap()).collect();
        assert_eq!(names, ["a"]);
    }
}
