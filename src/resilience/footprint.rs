//! What pods ask for, in one type: CPU (cores), memory (bytes) and pod slots. Quota sizing, quota
//! fit, node capacity and simulation all do their arithmetic on [`Footprint`].

use std::collections::BTreeMap;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub, SubAssign};

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube_quantity::ParsedQuantity;

use crate::api::{Component, CpuMemory, ResilientApp};

pub const DEFAULT_REQUEST_CPU: &str = "100m";
pub const DEFAULT_REQUEST_MEMORY: &str = "128Mi";
pub const DEFAULT_LIMIT_CPU: &str = "500m";
pub const DEFAULT_LIMIT_MEMORY: &str = "512Mi";

/// CPU in cores, memory in bytes, and a number of pods.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Footprint {
    pub cpu: f64,
    pub memory: f64,
    pub pods: f64,
}

/// One dimension of a [`Footprint`], for messages that name what does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Cpu,
    Memory,
    Pods,
}

impl Dimension {
    pub const ALL: [Dimension; 3] = [Dimension::Cpu, Dimension::Memory, Dimension::Pods];

    /// An amount of this dimension the way people read it: `1250m CPU`, `512Mi memory`, `7 pods`.
    pub fn describe(self, amount: f64) -> String {
        match self {
            Self::Cpu => format!("{}m CPU", (amount * 1000.0).ceil()),
            Self::Memory => format!("{}Mi memory", (amount / 1_048_576.0).ceil()),
            Self::Pods => format!("{amount} pods"),
        }
    }
}

impl Footprint {
    /// No limit in any dimension.
    pub const UNBOUNDED: Footprint = Footprint { cpu: f64::INFINITY, memory: f64::INFINITY, pods: f64::INFINITY };

    /// `n` pods of this footprint each.
    pub fn times(self, n: i32) -> Self {
        let n = f64::from(n);
        Self { cpu: self.cpu * n, memory: self.memory * n, pods: self.pods * n }
    }

    pub fn get(&self, d: Dimension) -> f64 {
        match d {
            Dimension::Cpu => self.cpu,
            Dimension::Memory => self.memory,
            Dimension::Pods => self.pods,
        }
    }

    fn get_mut(&mut self, d: Dimension) -> &mut f64 {
        match d {
            Dimension::Cpu => &mut self.cpu,
            Dimension::Memory => &mut self.memory,
            Dimension::Pods => &mut self.pods,
        }
    }

    /// The first dimension in which `self` needs more than `room` has (with a little tolerance for
    /// floating point), if any.
    pub fn exceeds(&self, room: &Footprint) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|&d| self.get(d) > room.get(d) + 1e-9)
    }

    /// Whether `self` fits in `room` in every dimension.
    pub fn fits_in(&self, room: &Footprint) -> bool {
        self.exceeds(room).is_none()
    }

    /// Set one dimension (for limits given one field at a time).
    pub fn with(mut self, d: Dimension, value: f64) -> Self {
        *self.get_mut(d) = value;
        self
    }
}

impl Add for Footprint {
    type Output = Footprint;
    fn add(self, o: Footprint) -> Footprint {
        Footprint { cpu: self.cpu + o.cpu, memory: self.memory + o.memory, pods: self.pods + o.pods }
    }
}

impl AddAssign for Footprint {
    fn add_assign(&mut self, o: Footprint) {
        *self = *self + o;
    }
}

impl Sub for Footprint {
    type Output = Footprint;
    fn sub(self, o: Footprint) -> Footprint {
        Footprint { cpu: self.cpu - o.cpu, memory: self.memory - o.memory, pods: self.pods - o.pods }
    }
}

impl SubAssign for Footprint {
    fn sub_assign(&mut self, o: Footprint) {
        *self = *self - o;
    }
}

impl Sum for Footprint {
    fn sum<I: Iterator<Item = Footprint>>(iter: I) -> Footprint {
        iter.fold(Footprint::default(), Add::add)
    }
}

/// The numeric value of a quantity (cores or bytes); 0 when it does not parse (the schema
/// already rejects malformed quantities).
pub fn quantity_value(q: &Quantity) -> f64 {
    ParsedQuantity::try_from(q).ok().and_then(|p| p.to_bytes_f64()).unwrap_or(0.0)
}

/// The `cpu`, `memory` and `pods` entries of a resource list (allocatable, quota hard or used).
/// A missing entry is `missing` (0 for capacity, unbounded for a quota).
pub fn footprint_of(list: &BTreeMap<String, Quantity>, keys: [&str; 3], missing: f64) -> Footprint {
    let get = |k: &str| list.get(k).map_or(missing, quantity_value);
    Footprint { cpu: get(keys[0]), memory: get(keys[1]), pods: get(keys[2]) }
}

/// The container defaults of an app's namespace: `spec.limits` merged over the built-in defaults.
pub struct ContainerDefaults {
    pub request_cpu: Quantity,
    pub request_memory: Quantity,
    pub limit_cpu: Quantity,
    pub limit_memory: Quantity,
}

impl ContainerDefaults {
    pub fn of(app: &ResilientApp) -> Self {
        let limits = app.spec.limits.clone().unwrap_or_default();
        let pick = |cm: &Option<CpuMemory>, cpu: bool, fallback: &str| {
            cm.as_ref()
                .and_then(|cm| if cpu { cm.cpu.clone() } else { cm.memory.clone() })
                .unwrap_or_else(|| Quantity(fallback.to_string()))
        };
        Self {
            request_cpu: pick(&limits.default_request, true, DEFAULT_REQUEST_CPU),
            request_memory: pick(&limits.default_request, false, DEFAULT_REQUEST_MEMORY),
            limit_cpu: pick(&limits.default, true, DEFAULT_LIMIT_CPU),
            limit_memory: pick(&limits.default, false, DEFAULT_LIMIT_MEMORY),
        }
    }
}

/// What one pod of a component asks for and may use, after the LimitRange defaults apply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodResources {
    /// Requests (and one pod).
    pub requests: Footprint,
    /// Limits (and one pod).
    pub limits: Footprint,
}

impl PodResources {
    /// Kubernetes' effective pod resources (what the scheduler and ResourceQuota count): every
    /// container (the main one and sidecars) plus the restartable init containers (native
    /// sidecars) run together; a plain init container runs alone, beside the native sidecars
    /// started before it; the pod needs the larger of the two. Each container's own requests and
    /// limits are first defaulted as the API server and the namespace LimitRange do.
    pub fn of(component: &Component, d: &ContainerDefaults) -> Self {
        let spec = component.pod_template.as_ref().and_then(|t| t.spec.as_ref());
        let template_main = spec
            .and_then(|s| s.containers.iter().find(|c| c.name == component.name))
            .and_then(|c| c.resources.as_ref());
        let main = container_resources(component.resources.as_ref().or(template_main), d);
        let sidecars = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .filter(|c| c.name != component.name)
            .map(|c| container_resources(c.resources.as_ref(), d));
        let mut running = sidecars.fold(main, |a, b| (a.0 + b.0, a.1 + b.1));
        // Init containers in order: native sidecars add to what runs; the others run one at a time.
        let (mut init_peak, mut started) =
            ((Footprint::default(), Footprint::default()), (Footprint::default(), Footprint::default()));
        for init in spec.and_then(|s| s.init_containers.as_ref()).into_iter().flatten() {
            let r = container_resources(init.resources.as_ref(), d);
            if init.restart_policy.as_deref() == Some("Always") {
                started = (started.0 + r.0, started.1 + r.1);
            } else {
                init_peak = (max(init_peak.0, started.0 + r.0), max(init_peak.1, started.1 + r.1));
            }
        }
        running = (running.0 + started.0, running.1 + started.1);
        let one_pod = |f: Footprint| f.with(Dimension::Pods, 1.0);
        Self { requests: one_pod(max(running.0, init_peak.0)), limits: one_pod(max(running.1, init_peak.1)) }
    }
}

/// Per dimension, the larger.
fn max(a: Footprint, b: Footprint) -> Footprint {
    Footprint { cpu: a.cpu.max(b.cpu), memory: a.memory.max(b.memory), pods: a.pods.max(b.pods) }
}

/// One container's (requests, limits), without pods: a request left out defaults to the
/// container's own limit (API defaulting), else to the namespace default (LimitRange); a limit
/// left out to the namespace default.
fn container_resources(res: Option<&ResourceRequirements>, d: &ContainerDefaults) -> (Footprint, Footprint) {
    let get = |section: Option<&BTreeMap<String, Quantity>>, key: &str| section.and_then(|s| s.get(key)).cloned();
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    let limit_cpu = get(limits, "cpu").unwrap_or_else(|| d.limit_cpu.clone());
    let limit_memory = get(limits, "memory").unwrap_or_else(|| d.limit_memory.clone());
    let request_cpu = get(requests, "cpu").or_else(|| get(limits, "cpu")).unwrap_or_else(|| d.request_cpu.clone());
    let request_memory =
        get(requests, "memory").or_else(|| get(limits, "memory")).unwrap_or_else(|| d.request_memory.clone());
    (
        Footprint { cpu: quantity_value(&request_cpu), memory: quantity_value(&request_memory), pods: 0.0 },
        Footprint { cpu: quantity_value(&limit_cpu), memory: quantity_value(&limit_memory), pods: 0.0 },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_and_fit() {
        let pod = Footprint { cpu: 0.25, memory: 256.0 * 1_048_576.0, pods: 1.0 };
        let six = pod.times(6);
        assert_eq!(six, Footprint { cpu: 1.5, memory: 1536.0 * 1_048_576.0, pods: 6.0 });
        assert_eq!(six - pod, pod.times(5));
        assert_eq!([pod, pod, pod].into_iter().sum::<Footprint>(), pod.times(3));
        let room = Footprint::UNBOUNDED.with(Dimension::Pods, 5.0);
        assert_eq!(six.exceeds(&room), Some(Dimension::Pods));
        assert!(pod.times(5).fits_in(&room));
        assert_eq!(Dimension::Cpu.describe(six.cpu), "1500m CPU");
        assert_eq!(Dimension::Memory.describe(six.memory), "1536Mi memory");
    }

    #[test]
    fn requests_default_to_limits_then_to_the_namespace() {
        let component: Component = serde_json::from_value(serde_json::json!({
            "name": "web", "image": "x", "minAvailable": 1,
            "resources": {"limits": {"cpu": "2"}, "requests": {"memory": "64Mi"}}
        }))
        .unwrap();
        let app: ResilientApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "metadata": {"name": "a"},
            "spec": {"components": [], "limits": {"default": {"memory": "1Gi"}}}
        }))
        .unwrap();
        let r = PodResources::of(&component, &ContainerDefaults::of(&app));
        assert_eq!(r.requests, Footprint { cpu: 2.0, memory: 64.0 * 1_048_576.0, pods: 1.0 });
        assert_eq!(r.limits, Footprint { cpu: 2.0, memory: 1024.0 * 1_048_576.0, pods: 1.0 });
    }

    #[test]
    fn effective_pod_resources_follow_kubernetes() {
        let app: ResilientApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "metadata": {"name": "a"},
            "spec": {"components": []}
        }))
        .unwrap();
        let d = ContainerDefaults::of(&app);
        let component: Component = serde_json::from_value(serde_json::json!({
            "name": "web", "image": "x", "minAvailable": 1,
            "podTemplate": {"spec": {
                // The template's main container resources apply when the component sets none.
                "containers": [
                    {"name": "web", "resources": {"requests": {"cpu": "1"}}},
                    {"name": "proxy", "resources": {"requests": {"cpu": "200m", "memory": "100Mi"}}}
                ],
                "initContainers": [
                    {"name": "log", "restartPolicy": "Always", "resources": {"requests": {"cpu": "300m", "memory": "1Mi"}}},
                    {"name": "setup", "resources": {"requests": {"cpu": "1700m", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}},
                    {"name": "first", "resources": {"requests": {"cpu": "100m"}}}
                ]
            }}
        }))
        .unwrap();
        let r = PodResources::of(&component, &d);
        // CPU: running 1 + 0.2 + 0.3 (native sidecar) = 1.5; "setup" runs beside "log": 0.3 + 1.7 = 2.0.
        assert!((r.requests.cpu - 2.0).abs() < 1e-9, "{:?}", r.requests);
        // Memory: running 128Mi (default) + 100Mi + 1Mi = 229Mi; "setup" beside "log": 2Gi + 1Mi.
        assert_eq!(r.requests.memory, (2048.0 + 1.0) * 1_048_576.0);
        assert_eq!(r.requests.pods, 1.0);
        // Limits: a container without one gets the namespace default (500m, 512Mi). Running:
        // 3 x 500m, 3 x 512Mi; "setup" beside "log": 2 + 500m, 2Gi + 512Mi.
        assert!((r.limits.cpu - 2.5).abs() < 1e-9 && r.limits.memory == 2560.0 * 1_048_576.0, "{:?}", r.limits);
    }
}
