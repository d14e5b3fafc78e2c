//! Checks the API server cannot make by itself (CEL and the schema catch the rest at admission).

use std::collections::BTreeMap;
use std::fmt;

use super::quota::{effective_defaults, pod_resources, quantity_value, surge_for};
use crate::api::ResilientApp;
use crate::resilience::ReplicaPlan;

/// A problem in the spec, with the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Spec problems that would make generated pods invalid.
pub fn validate(app: &ResilientApp) -> Vec<SpecError> {
    let mut errors = Vec::new();
    let d = effective_defaults(app);
    for (key, default_limit, default_request) in
        [("cpu", &d.limit_cpu, &d.request_cpu), ("memory", &d.limit_memory, &d.request_memory)]
    {
        if quantity_value(default_request) > quantity_value(default_limit) {
            errors.push(SpecError {
                field: format!("spec.limits.defaultRequest.{key}"),
                message: format!(
                    "{} is above the default limit {} (spec.limits.default.{key})",
                    default_request.0, default_limit.0
                ),
            });
        }
    }
    for c in &app.spec.components {
        let res = c.resources.as_ref();
        let requests = res.and_then(|r| r.requests.as_ref());
        let limits = res.and_then(|r| r.limits.as_ref());
        for (key, default_limit) in [("cpu", &d.limit_cpu), ("memory", &d.limit_memory)] {
            let Some(request) = requests.and_then(|r| r.get(key)) else {
                continue;
            };
            match limits.and_then(|l| l.get(key)) {
                Some(limit) if quantity_value(request) > quantity_value(limit) => errors.push(SpecError {
                    field: format!("spec.components[{}].resources.requests.{key}", c.name),
                    message: format!("{} is above its limit {}", request.0, limit.0),
                }),
                None if quantity_value(request) > quantity_value(default_limit) => errors.push(SpecError {
                    field: format!("spec.components[{}].resources.requests.{key}", c.name),
                    message: format!(
                        "{} is above the namespace default limit {}; set resources.limits.{key} or raise spec.limits.default.{key}",
                        request.0, default_limit.0
                    ),
                }),
                _ => {}
            }
        }
    }
    errors
}

/// How an explicit `spec.quota` compares with what the components need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuotaFit {
    Fits,
    /// The replicas fit, but rollouts cannot start their surge pods.
    NoRoomForSurge(String),
    /// Not even the replicas fit.
    TooSmall(String),
}

/// Compare `spec.quota` (when given) with the replicas and rollout surge of every component.
pub fn quota_fit(app: &ResilientApp, plans: &BTreeMap<String, ReplicaPlan>) -> QuotaFit {
    let Some(quota) = &app.spec.quota else {
        return QuotaFit::Fits;
    };
    let d = effective_defaults(app);
    let (mut base, mut surge) = ([0.0f64; 3], [0.0f64; 3]);
    for c in &app.spec.components {
        let replicas = plans.get(&c.name).map_or(c.min_available, |p| p.replicas);
        let per_pod = pod_resources(c, &d);
        let per = [per_pod[0].1, per_pod[1].1, 1.0];
        for i in 0..3 {
            base[i] += per[i] * f64::from(replicas);
            surge[i] += per[i] * f64::from(replicas + surge_for(replicas));
        }
    }
    let hard = [
        ("spec.quota.cpu", quota.cpu.as_ref().map(quantity_value)),
        ("spec.quota.memory", quota.memory.as_ref().map(quantity_value)),
        ("spec.quota.pods", quota.pods.map(f64::from)),
    ];
    let fmt_need = |i: usize, v: f64| match i {
        0 => format!("{}m CPU", (v * 1000.0).ceil()),
        1 => format!("{}Mi memory", (v / 1048576.0).ceil()),
        _ => format!("{v} pods"),
    };
    for (i, (field, limit)) in hard.iter().enumerate() {
        if let Some(limit) = limit
            && base[i] > *limit + 1e-9
        {
            return QuotaFit::TooSmall(format!(
                "{field} is too small: the components need {} for their replicas alone",
                fmt_need(i, base[i])
            ));
        }
    }
    for (i, (field, limit)) in hard.iter().enumerate() {
        if let Some(limit) = limit
            && surge[i] > *limit + 1e-9
        {
            return QuotaFit::NoRoomForSurge(format!(
                "{field} leaves no room for rollout surge pods: replicas plus surge need {}; rollouts will wait for quota",
                fmt_need(i, surge[i])
            ));
        }
    }
    QuotaFit::Fits
}
