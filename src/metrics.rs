//! Prometheus metrics of the operator.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::{ConditionType, ResilientAppStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    verb: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    concurrency: String,
    writes_in_flight: String,
    resync_seconds: String,
    leader_elect: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TolerantLabels {
    tolerant: String,
}

pub struct Metrics {
    pub registry: Registry,
    reconciles: Counter,
    failures: Family<CategoryLabels, Counter>,
    duration: Histogram,
    writes: Family<WriteLabels, Counter>,
    apps: Family<TolerantLabels, Gauge>,
    usable_zones: Gauge,
    leader: Gauge,
    build: Family<BuildLabels, Gauge>,
    /// Last known ZoneFailureTolerant status per app, to keep the apps gauge exact.
    tolerant_by_app: Mutex<HashMap<Box<str>, &'static str>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("resilient_operator");
        let reconciles = Counter::default();
        let failures = Family::<CategoryLabels, Counter>::default();
        let duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let writes = Family::<WriteLabels, Counter>::default();
        let apps = Family::<TolerantLabels, Gauge>::default();
        let usable_zones = Gauge::default();
        let leader = Gauge::default();
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "1, labelled with the version (commit) and the settings it runs with",
            build.clone(),
        );
        registry.register("reconciles", "Reconciles finished", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciles by category", failures.clone());
        registry.register("reconcile_duration_seconds", "Time of one reconcile", duration.clone());
        registry.register("api_writes", "Writes sent to the API server, by verb and kind", writes.clone());
        registry.register("apps", "ResilientApps by their ZoneFailureTolerant status", apps.clone());
        registry.register("usable_zones", "Usable zones seen in the last reconcile", usable_zones.clone());
        registry.register("leader", "1 when this instance holds the leader lease", leader.clone());
        Self {
            registry,
            reconciles,
            failures,
            duration,
            writes,
            apps,
            usable_zones,
            leader,
            build,
            tolerant_by_app: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn reconcile_failed(&self, category: &str) {
        self.failures.get_or_create(&CategoryLabels { category: category.to_string() }).inc();
    }

    pub fn api_write(&self, verb: &str, kind: &str) {
        self.writes.get_or_create(&WriteLabels { verb: verb.to_string(), kind: kind.to_string() }).inc();
    }

    /// The version and the settings of this process, for whoever measures it.
    pub fn build_info(&self, version: &str, settings: &crate::controller::Settings, leader_elect: bool) {
        let labels = BuildLabels {
            version: version.to_string(),
            concurrency: settings.concurrency.to_string(),
            writes_in_flight: settings.writes_in_flight.to_string(),
            resync_seconds: settings.resync.as_secs().to_string(),
            leader_elect: leader_elect.to_string(),
        };
        self.build.get_or_create(&labels).set(1);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Track an app's ZoneFailureTolerant status and the usable zones it saw.
    pub fn observe_app(&self, name: &str, status: &ResilientAppStatus) {
        let tolerant = match status
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::ZoneFailureTolerant.as_str())
            .map(|c| c.status.as_str())
        {
            Some("True") => "True",
            Some("False") => "False",
            _ => "Unknown",
        };
        self.usable_zones.set(status.zones.len() as i64);
        let mut by_app = self.tolerant_by_app.lock().expect("metrics lock");
        if let Some(old) = by_app.insert(name.into(), tolerant) {
            self.apps.get_or_create(&TolerantLabels { tolerant: old.to_string() }).dec();
        }
        self.apps.get_or_create(&TolerantLabels { tolerant: tolerant.to_string() }).inc();
    }

    /// Forget a deleted app.
    pub fn forget_app(&self, name: &str) {
        if let Some(old) = self.tolerant_by_app.lock().expect("metrics lock").remove(name) {
            self.apps.get_or_create(&TolerantLabels { tolerant: old.to_string() }).dec();
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding metrics to a String");
        out
    }
}
