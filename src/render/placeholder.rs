//! `resilience.reserveCapacity`: placeholder pods that hold room in every zone for the
//! replacements it would receive in the worst tolerated zone loss.
//!
//! Preemption is the replacements' doing: they run at the default priority (0) with the default
//! `PreemptLowerPriority`, and the placeholders' PriorityClass (`resilient-placeholder`, -10,
//! installed by config/ and the chart) is below every app pod. The class's own preemptionPolicy
//! only says what placeholders may do to others (nothing sits below them); `Never` there would not
//! make them any easier to preempt. A placeholder stops at once (grace period 0), so the room is
//! free for the replacement the moment the scheduler picks its victims.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::quota::{cpu_quantity, memory_quantity};
use super::workload::affinity;
use super::{Plan, RenderContext};
use crate::api::{LABEL_APP, ResilientApp};
use crate::resilience::{ContainerDefaults, Footprint, PodResources, placeholders_per_zone};

/// The PriorityClass of every placeholder pod (config/priority and the chart install it).
pub const PRIORITY_CLASS: &str = "resilient-placeholder";
/// What a placeholder runs: nothing.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// On placeholder Deployments and pods: the component they hold room for. (Not
/// `resilient.dev/component`: placeholders are not pods of the component.)
pub const LABEL_PLACEHOLDER_FOR: &str = "resilient.dev/placeholder-for";
/// On placeholder Deployments and pods: the zone they hold room in.
pub const LABEL_PLACEHOLDER_ZONE: &str = "resilient.dev/placeholder-zone";

/// Room held in one zone for one component's replacements.
#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    pub component: String,
    pub zone: String,
    /// Placeholder pods, each the size of one pod of the component.
    pub count: i32,
    /// What one pod of the component requests.
    pub per_pod: Footprint,
}

/// The reservations of `app` for its plan (pure): per stateless component and zone it can use, the
/// replacements that zone receives in the worst loss of `zoneFailuresTolerated` other zones.
/// Stateful components get none: their pods are never replaced elsewhere.
pub fn reservations(app: &ResilientApp, plan: &Plan) -> Vec<Reservation> {
    if !app.spec.resilience.reserve_capacity {
        return Vec::new();
    }
    let defaults = ContainerDefaults::of(app);
    let tolerated = app.spec.resilience.zone_failures_tolerated;
    let mut out = Vec::new();
    for c in app.spec.components.iter().filter(|c| !c.is_stateful()) {
        let zones = plan.zones_of(&c.name);
        let count = placeholders_per_zone(c.replicas, c.min_available, plan.replicas_of(c), zones.len(), tolerated);
        if count == 0 {
            continue;
        }
        let per_pod = PodResources::of(c, &defaults).requests;
        for zone in zones {
            out.push(Reservation { component: c.name.clone(), zone: zone.clone(), count, per_pod });
        }
    }
    out
}

/// The name of the placeholder Deployment of `component` in `zone` (component names may not
/// contain `-placeholder`, so it never collides with a component's own workload).
pub fn placeholder_name(component: &str, zone: &str) -> String {
    let zone: String =
        zone.to_ascii_lowercase().chars().map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' }).collect();
    format!("{component}-placeholder-{}", zone.trim_matches('-'))
}

/// One Deployment of pause pods per reservation, pinned to its zone.
pub(super) fn placeholder_deployments(ctx: &RenderContext, plan: &Plan) -> Vec<Deployment> {
    reservations(ctx.app, plan).iter().map(|r| placeholder_deployment(ctx, r)).collect()
}

fn placeholder_deployment(ctx: &RenderContext, r: &Reservation) -> Deployment {
    let mut labels = ctx.labels();
    labels.insert(LABEL_PLACEHOLDER_FOR.to_string(), r.component.clone());
    labels.insert(LABEL_PLACEHOLDER_ZONE.to_string(), r.zone.clone());
    let selector = [LABEL_APP, LABEL_PLACEHOLDER_FOR, LABEL_PLACEHOLDER_ZONE]
        .into_iter()
        .map(|k| (k.to_string(), labels[k].clone()))
        .collect();
    let size =
        [("cpu".to_string(), cpu_quantity(r.per_pod.cpu)), ("memory".to_string(), memory_quantity(r.per_pod.memory))];
    let container = Container {
        name: "placeholder".to_string(),
        image: Some(PAUSE_IMAGE.to_string()),
        resources: Some(ResourceRequirements {
            requests: Some(size.clone().into()),
            limits: Some(size.into()),
            claims: None,
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), add: None }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: ctx.meta(&placeholder_name(&r.component, &r.zone), labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(r.count),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            // A resized reservation never holds twice the room (and quota) while it rolls.
            strategy: Some(DeploymentStrategy { type_: Some("Recreate".to_string()), rolling_update: None }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    priority_class_name: Some(PRIORITY_CLASS.to_string()),
                    termination_grace_period_seconds: Some(0),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    affinity: affinity(None, std::slice::from_ref(&r.zone)),
                    // Passes the `restricted` Pod Security level whatever the app's level is.
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65535),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}
