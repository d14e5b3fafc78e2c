//! ResourceQuota and LimitRange of the app namespace.
//!
//! The computed quota leaves room for every pod the app can legitimately run at once: the replicas,
//! the rollout surge, and the replacements started while pods of a lost zone are still terminating.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::placeholder::reservations;
use super::{Plan, RenderContext};
use crate::api::ResilientApp;
use crate::resilience::{ContainerDefaults, Footprint, PodResources, per_zone_ceiling, quantity_value};

/// Extra pods a rolling update may start (maxSurge): a quarter of the replicas, at least one.
pub fn surge_for(replicas: i32) -> i32 {
    ((replicas + 3) / 4).max(1)
}

/// Replacement pods that may run beside terminating pods of `tolerated` lost zones.
fn failover_headroom(replicas: i32, zones: usize, tolerated: u8) -> i32 {
    if zones == 0 {
        return 0;
    }
    per_zone_ceiling(replicas, zones) * i32::from(tolerated)
}

pub(super) fn limit_range(ctx: &RenderContext) -> LimitRange {
    let d = ContainerDefaults::of(ctx.app);
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

pub(super) fn cpu_quantity(cores: f64) -> Quantity {
    Quantity(format!("{}m", (cores * 1000.0).ceil() as i64))
}

pub(super) fn memory_quantity(bytes: f64) -> Quantity {
    Quantity(format!("{}Mi", (bytes / (1024.0 * 1024.0)).ceil() as i64))
}

/// Whole GiB when the sum is one (claims are usually sized in Gi), else MiB rounded up.
fn storage_quantity(bytes: f64) -> Quantity {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    if bytes % GIB == 0.0 { Quantity(format!("{}Gi", (bytes / GIB) as i64)) } else { memory_quantity(bytes) }
}

/// Pods a component may run at once: a Deployment's replicas, rollout surge and failover headroom;
/// a StatefulSet's replicas alone (it rolls one pod at a time and never replaces a pod elsewhere).
fn pod_budget(stateful: bool, replicas: i32, zones: usize, tolerated: u8) -> i32 {
    if stateful {
        return replicas;
    }
    replicas + surge_for(replicas) + failover_headroom(replicas, zones, tolerated)
}

/// Storage of stateful components: (bytes requested, claims), one set of claims per replica.
/// Claims outlive a scale-down (whenScaled: Retain), so this is sized for the planned replicas.
pub fn storage_budget(app: &ResilientApp, plan: &Plan) -> (f64, i64) {
    let (mut bytes, mut claims) = (0.0, 0i64);
    for c in app.spec.components.iter().filter(|c| c.is_stateful()) {
        let replicas = plan.replicas_of(c);
        bytes += c.volume_claims.iter().map(|v| quantity_value(&v.size)).sum::<f64>() * f64::from(replicas);
        claims += i64::from(replicas) * c.volume_claims.len() as i64;
    }
    (bytes, claims)
}

/// The ResourceQuota hard limits computed from the components:
/// (replicas + surge + failover headroom) x per-pod requests and limits, and that many pods; the
/// placeholders of reserveCapacity twice over (a preempted placeholder is recreated, Pending,
/// while the replacement that preempted it runs); with stateful components, their storage and
/// claims (`requests.storage`, `persistentvolumeclaims`); an autoscaled component counts
/// with maxReplicas as its replicas.
pub fn compute_quota(app: &ResilientApp, plan: &Plan) -> BTreeMap<String, Quantity> {
    let d = ContainerDefaults::of(app);
    let tolerated = app.spec.resilience.zone_failures_tolerated;
    let (mut requests, mut limits) = (Footprint::default(), Footprint::default());
    for component in &app.spec.components {
        // An autoscaled component may run up to maxReplicas.
        let replicas = super::replicas_ceiling(component, plan.replicas_of(component));
        let budget = pod_budget(component.is_stateful(), replicas, plan.zones_of(&component.name).len(), tolerated);
        let per_pod = PodResources::of(component, &d);
        requests += per_pod.requests.times(budget);
        limits += per_pod.limits.times(budget);
    }
    for r in reservations(app, plan) {
        // Placeholders' limits equal their requests.
        requests += r.per_pod.times(2 * r.count);
        limits += r.per_pod.times(2 * r.count);
    }
    let mut hard = BTreeMap::from([
        ("requests.cpu".to_string(), cpu_quantity(requests.cpu)),
        ("requests.memory".to_string(), memory_quantity(requests.memory)),
        ("limits.cpu".to_string(), cpu_quantity(limits.cpu)),
        ("limits.memory".to_string(), memory_quantity(limits.memory)),
        ("pods".to_string(), Quantity(requests.pods.to_string())),
    ]);
    if app.spec.components.iter().any(|c| c.is_stateful()) {
        let (bytes, claims) = storage_budget(app, plan);
        hard.insert("requests.storage".to_string(), storage_quantity(bytes));
        hard.insert("persistentvolumeclaims".to_string(), Quantity(claims.to_string()));
    }
    hard
}

pub(super) fn resource_quota(ctx: &RenderContext, plan: &Plan) -> ResourceQuota {
    let mut hard = compute_quota(ctx.app, plan);
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
