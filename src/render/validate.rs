//! Checks the API server cannot make by itself (CEL and the schema catch the rest at admission).

use std::fmt;

use k8s_openapi::api::core::v1::ResourceRequirements;

use super::Plan;
use super::placeholder::reservations;
use super::quota::surge_for;
use crate::api::{ResilientApp, pod_template};
use crate::resilience::{ContainerDefaults, Dimension, Footprint, PodResources, quantity_value};

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

/// Pod-template fields the operator owns (CEL rejects them at admission; an app stored before
/// those rules existed is caught here), each with its full path.
pub fn forbidden_fields(app: &ResilientApp) -> Vec<SpecError> {
    let failover = app.spec.resilience.failover_seconds;
    app.spec
        .components
        .iter()
        .filter_map(|c| Some((c, c.pod_template.as_ref()?)))
        .flat_map(|(c, t)| {
            pod_template::forbidden_fields(t, failover).into_iter().map(move |f| SpecError {
                field: format!("spec.components[{}].podTemplate.{}", c.name, f.path),
                message: f.message,
            })
        })
        .collect()
}

/// Spec problems that would make generated pods invalid.
pub fn validate(app: &ResilientApp) -> Vec<SpecError> {
    let mut errors = Vec::new();
    let d = ContainerDefaults::of(app);
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
        let spec = c.pod_template.as_ref().and_then(|t| t.spec.as_ref());
        let template_main = spec.and_then(|s| s.containers.iter().find(|t| t.name == c.name));
        let main = c.resources.as_ref().or(template_main.and_then(|t| t.resources.as_ref()));
        check_resources(&format!("spec.components[{}].resources", c.name), main, &d, &mut errors);
        // The template's other containers: a request above the limit the LimitRange gives them
        // would only show as pods the ReplicaSet cannot create.
        let Some(spec) = spec else {
            continue;
        };
        let sidecars = spec.containers.iter().filter(|t| t.name != c.name).map(|t| ("containers", t));
        let inits = spec.init_containers.iter().flatten().map(|t| ("initContainers", t));
        for (list, t) in sidecars.chain(inits) {
            let field = format!("spec.components[{}].podTemplate.spec.{list}[{}].resources", c.name, t.name);
            check_resources(&field, t.resources.as_ref(), &d, &mut errors);
        }
    }
    errors
}

/// A container's requests must not exceed its limits, or, without a limit, the namespace default.
fn check_resources(
    field: &str,
    res: Option<&ResourceRequirements>,
    d: &ContainerDefaults,
    errors: &mut Vec<SpecError>,
) {
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    for (key, default_limit) in [("cpu", &d.limit_cpu), ("memory", &d.limit_memory)] {
        let Some(request) = requests.and_then(|r| r.get(key)) else {
            continue;
        };
        match limits.and_then(|l| l.get(key)) {
            Some(limit) if quantity_value(request) > quantity_value(limit) => errors.push(SpecError {
                field: format!("{field}.requests.{key}"),
                message: format!("{} is above its limit {}", request.0, limit.0),
            }),
            None if quantity_value(request) > quantity_value(default_limit) => errors.push(SpecError {
                field: format!("{field}.requests.{key}"),
                message: format!(
                    "{} is above the namespace default limit {}; set resources.limits.{key} or raise spec.limits.default.{key}",
                    request.0, default_limit.0
                ),
            }),
            _ => {}
        }
    }
}

fn hard_limits(quota: &crate::api::Quota) -> Footprint {
    Footprint {
        cpu: quota.cpu.as_ref().map_or(f64::INFINITY, quantity_value),
        memory: quota.memory.as_ref().map_or(f64::INFINITY, quantity_value),
        pods: quota.pods.map_or(f64::INFINITY, f64::from),
    }
}

fn field(d: Dimension) -> &'static str {
    match d {
        Dimension::Cpu => "spec.quota.cpu",
        Dimension::Memory => "spec.quota.memory",
        Dimension::Pods => "spec.quota.pods",
    }
}

/// With reserveCapacity and an explicit `spec.quota`: a message when the quota cannot hold the
/// replicas and every placeholder at once (the placeholders it refuses hold no room).
pub fn reservation_fit(app: &ResilientApp, plan: &Plan) -> Option<String> {
    let quota = app.spec.quota.as_ref()?;
    let reserved: Footprint = reservations(app, plan).iter().map(|r| r.per_pod.times(r.count)).sum();
    if reserved.pods == 0.0 {
        return None;
    }
    let d = ContainerDefaults::of(app);
    let replicas: Footprint =
        app.spec.components.iter().map(|c| PodResources::of(c, &d).requests.times(plan.replicas_of(c))).sum();
    let need = replicas + reserved;
    let short = need.exceeds(&hard_limits(quota))?;
    Some(format!(
        "{} cannot hold the replicas and the placeholders of reserveCapacity at once ({} needed): some placeholders are refused and reserve nothing",
        field(short),
        short.describe(need.get(short))
    ))
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

/// Compare `spec.quota` (when given) with the replicas and rollout surge of every component (for an
/// autoscaled one: its floor, then maxReplicas and their surge).
pub fn quota_fit(app: &ResilientApp, plan: &Plan) -> QuotaFit {
    let Some(quota) = &app.spec.quota else {
        return QuotaFit::Fits;
    };
    let d = ContainerDefaults::of(app);
    let (mut base, mut surge) = (Footprint::default(), Footprint::default());
    for c in &app.spec.components {
        let replicas = plan.replicas_of(c);
        // An autoscaled component needs its floor now, and room to grow to maxReplicas.
        let ceiling = super::replicas_ceiling(c, replicas);
        let per_pod = PodResources::of(c, &d).requests;
        base += per_pod.times(replicas);
        // A StatefulSet rolls one pod at a time: no surge. An autoscaled component may grow to
        // maxReplicas.
        surge += per_pod.times(ceiling + if c.is_stateful() { 0 } else { surge_for(ceiling) });
    }
    let hard = hard_limits(quota);
    if let Some(d) = base.exceeds(&hard) {
        return QuotaFit::TooSmall(format!(
            "{} is too small: the components need {} for their replicas alone",
            field(d),
            d.describe(base.get(d))
        ));
    }
    if let Some(d) = surge.exceeds(&hard) {
        return QuotaFit::NoRoomForSurge(format!(
            "{} leaves no room for rollout surge pods: replicas plus surge need {}; rollouts will wait for quota",
            field(d),
            d.describe(surge.get(d))
        ));
    }
    QuotaFit::Fits
}
