//! ResourceQuota and LimitRange of the app namespace.
//!
//! The computed quota leaves room for every pod the app can legitimately run at once: the replicas,
//! the rollout surge, and the replacements started while pods of a lost zone are still terminating.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube_quantity::ParsedQuantity;

use super::RenderContext;
use crate::api::{Component, CpuMemory, ResilientApp};
use crate::resilience::ReplicaPlan;

pub const DEFAULT_REQUEST_CPU: &str = "100m";
pub const DEFAULT_REQUEST_MEMORY: &str = "128Mi";
pub const DEFAULT_LIMIT_CPU: &str = "500m";
pub const DEFAULT_LIMIT_MEMORY: &str = "512Mi";

/// Extra pods a rolling update may start (maxSurge): a quarter of the replicas, at least one.
pub fn surge_for(replicas: i32) -> i32 {
    ((replicas + 3) / 4).max(1)
}

/// Replacement pods that may run beside terminating pods of `tolerated` lost zones.
fn failover_headroom(replicas: i32, zones: usize, tolerated: u8) -> i32 {
    if zones == 0 {
        return 0;
    }
    let per_zone = (replicas + zones as i32 - 1) / zones as i32;
    per_zone * i32::from(tolerated)
}

/// The container defaults of the namespace: `spec.limits` merged over the built-in defaults.
pub(crate) struct EffectiveDefaults {
    pub request_cpu: Quantity,
    pub request_memory: Quantity,
    pub limit_cpu: Quantity,
    pub limit_memory: Quantity,
}

pub(crate) fn effective_defaults(app: &ResilientApp) -> EffectiveDefaults {
    let limits = app.spec.limits.clone().unwrap_or_default();
    let pick = |cm: &Option<CpuMemory>, cpu: bool, fallback: &str| {
        cm.as_ref()
            .and_then(|cm| if cpu { cm.cpu.clone() } else { cm.memory.clone() })
            .unwrap_or_else(|| Quantity(fallback.to_string()))
    };
    EffectiveDefaults {
        request_cpu: pick(&limits.default_request, true, DEFAULT_REQUEST_CPU),
        request_memory: pick(&limits.default_request, false, DEFAULT_REQUEST_MEMORY),
        limit_cpu: pick(&limits.default, true, DEFAULT_LIMIT_CPU),
        limit_memory: pick(&limits.default, false, DEFAULT_LIMIT_MEMORY),
    }
}

pub(super) fn limit_range(ctx: &RenderContext) -> LimitRange {
    let d = effective_defaults(ctx.app);
    LimitRange {
        metadata: ctx.meta("resilient-defaults", ctx.labels()),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: Some(BTreeMap::from([("cpu".into(), d.limit_cpu), ("memory".into(), d.limit_memory)])),
                default_request: Some(BTreeMap::from([
                    ("cpu".into(), d.request_cpu),
                    ("memory".into(), d.request_memory),
                ])),
                ..Default::default()
            }],
        }),
    }
}

/// What one pod of a component asks for, after the LimitRange defaults apply.
/// A request left out defaults to the container's own limit, else to the namespace default.
pub(crate) fn pod_resources(component: &Component, d: &EffectiveDefaults) -> [(&'static str, f64); 4] {
    let get = |section: Option<&BTreeMap<String, Quantity>>, key: &str| section.and_then(|s| s.get(key)).cloned();
    let res = component.resources.as_ref();
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    let limit_cpu = get(limits, "cpu").unwrap_or_else(|| d.limit_cpu.clone());
    let limit_memory = get(limits, "memory").unwrap_or_else(|| d.limit_memory.clone());
    let request_cpu = get(requests, "cpu").or_else(|| get(limits, "cpu")).unwrap_or_else(|| d.request_cpu.clone());
    let request_memory =
        get(requests, "memory").or_else(|| get(limits, "memory")).unwrap_or_else(|| d.request_memory.clone());
    [
        ("requests.cpu", quantity_value(&request_cpu)),
        ("requests.memory", quantity_value(&request_memory)),
        ("limits.cpu", quantity_value(&limit_cpu)),
        ("limits.memory", quantity_value(&limit_memory)),
    ]
}

/// The numeric value of a quantity (cores or bytes); 0 when it does not parse (the schema
/// already rejects malformed quantities).
pub(crate) fn quantity_value(q: &Quantity) -> f64 {
    ParsedQuantity::try_from(q).ok().and_then(|p| p.to_bytes_f64()).unwrap_or(0.0)
}

fn cpu_quantity(cores: f64) -> Quantity {
    Quantity(format!("{}m", (cores * 1000.0).ceil() as i64))
}

fn memory_quantity(bytes: f64) -> Quantity {
    Quantity(format!("{}Mi", (bytes / (1024.0 * 1024.0)).ceil() as i64))
}

/// The ResourceQuota hard limits computed from the components:
/// (replicas + surge + failover headroom) x per-pod requests and limits, and that many pods.
pub fn compute_quota(
    app: &ResilientApp,
    plans: &BTreeMap<String, ReplicaPlan>,
    zones: usize,
) -> BTreeMap<String, Quantity> {
    let d = effective_defaults(app);
    let tolerated = app.spec.resilience.zone_failures_tolerated;
    let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
    let mut pods = 0;
    for component in &app.spec.components {
        let replicas = plans.get(&component.name).map_or(component.min_available, |p| p.replicas);
        let budget = replicas + surge_for(replicas) + failover_headroom(replicas, zones, tolerated);
        pods += budget;
        for (key, per_pod) in pod_resources(component, &d) {
            *totals.entry(key).or_default() += per_pod * f64::from(budget);
        }
    }
    let mut hard = BTreeMap::new();
    for (key, total) in totals {
        let q = if key.ends_with("cpu") { cpu_quantity(total) } else { memory_quantity(total) };
        hard.insert(key.to_string(), q);
    }
    hard.insert("pods".into(), Quantity(pods.to_string()));
    hard
}

pub(super) fn resource_quota(ctx: &RenderContext, plans: &BTreeMap<String, ReplicaPlan>) -> ResourceQuota {
    let mut hard = compute_quota(ctx.app, plans, ctx.zones.len());
    // Explicit values win over computed ones. Like ResourceQuota's own `cpu` and `memory`, they
    // bound requests; the limits stay computed from the components.
    if let Some(q) = &ctx.app.spec.quota {
        if let Some(cpu) = &q.cpu {
            hard.insert("requests.cpu".into(), cpu.clone());
        }
        if let Some(memory) = &q.memory {
            hard.insert("requests.memory".into(), memory.clone());
        }
        if let Some(pods) = q.pods {
            hard.insert("pods".into(), Quantity(pods.to_string()));
        }
    }
    ResourceQuota {
        metadata: ctx.meta("resilient-quota", ctx.labels()),
        spec: Some(ResourceQuotaSpec { hard: Some(hard), ..Default::default() }),
        ..Default::default()
    }
}
