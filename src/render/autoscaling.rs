//! Per autoscaled component: a HorizontalPodAutoscaler whose floor is the zone-survival replica count.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};

use super::RenderContext;
use crate::api::{Autoscaling, Component};

/// Average CPU utilization (of requests) the autoscaler keeps when the component names no metric.
pub const DEFAULT_CPU_UTILIZATION: i32 = 80;

/// Only server-side applies of this field manager ever set an autoscaled Deployment's `replicas`,
/// once, when the operator hands them over to the autoscaler (see `controller/apply.rs`).
pub const REPLICAS_HANDOFF_MANAGER: &str = "resilient-operator-replicas-handoff";
/// Set on a Deployment, by [`REPLICAS_HANDOFF_MANAGER`] only, once its replicas are the autoscaler's.
pub const ANNOTATION_REPLICAS_HANDED_OFF: &str = "resilient.dev/replicas-handed-off";

fn default_metrics() -> Vec<MetricSpec> {
    vec![MetricSpec {
        type_: "Resource".to_string(),
        resource: Some(ResourceMetricSource {
            name: "cpu".to_string(),
            target: MetricTarget {
                type_: "Utilization".to_string(),
                average_utilization: Some(DEFAULT_CPU_UTILIZATION),
                ..Default::default()
            },
        }),
        ..Default::default()
    }]
}

/// The component's HorizontalPodAutoscaler, `None` without `autoscaling`. `floor` is the replica
/// count of the plan: what keeps minAvailable through the loss of the tolerated zones.
pub(super) fn horizontal_pod_autoscaler(
    ctx: &RenderContext,
    component: &Component,
    floor: i32,
) -> Option<HorizontalPodAutoscaler> {
    let Autoscaling { max_replicas, metrics, behavior } = component.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: ctx.meta(&component.name, ctx.component_labels(&component.name)),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: "Deployment".to_string(),
                name: component.name.clone(),
            },
            min_replicas: Some(floor),
            max_replicas: *max_replicas,
            metrics: Some(if metrics.is_empty() { default_metrics() } else { metrics.clone() }),
            behavior: behavior.clone(),
        }),
        status: None,
    })
}

/// The most replicas a component may run: maxReplicas when autoscaled, else its planned replicas.
pub fn replicas_ceiling(component: &Component, planned: i32) -> i32 {
    component.autoscaling.as_ref().map_or(planned, |a| a.max_replicas.max(planned))
}

/// An autoscaled component's Deployment leaves `replicas` to the autoscaler, and its rollouts may
/// surge as the quota allows for maxReplicas.
pub(super) fn leave_replicas_to_autoscaler(
    deployment: &mut k8s_openapi::api::apps::v1::Deployment,
    component: &Component,
) {
    let Some(autoscaling) = &component.autoscaling else {
        return;
    };
    let Some(spec) = deployment.spec.as_mut() else {
        return;
    };
    spec.replicas = None;
    if let Some(rolling) = spec.strategy.as_mut().and_then(|s| s.rolling_update.as_mut()) {
        rolling.max_surge = Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(super::surge_for(
            autoscaling.max_replicas,
        )));
    }
}

/// Autoscaled components whose maxReplicas is below the floor of `plan`: the autoscaler could not
/// keep minAvailable through a zone loss (and the API server refuses minReplicas > maxReplicas).
pub fn max_replicas_errors(app: &crate::api::ResilientApp, plan: &super::Plan) -> Vec<super::SpecError> {
    app.spec
        .components
        .iter()
        .filter_map(|c| {
            let max = c.autoscaling.as_ref()?.max_replicas;
            let floor = plan.replicas_of(c);
            (max < floor).then(|| super::SpecError {
                field: format!("spec.components[{}].autoscaling.maxReplicas", c.name),
                message: format!(
                    "maxReplicas {max} is below the zone-survival floor {floor} (the replicas that keep minAvailable {} through the loss of {} of the {} usable zones); raise maxReplicas to at least {floor}",
                    c.min_available,
                    app.spec.resilience.zone_failures_tolerated,
                    plan.zones_of(&c.name).len()
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{Plan, quota_fit, render, validate::QuotaFit};
    use super::*;
    use crate::api::{ResilientApp, ResilientAppSpec};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn app(autoscaling: serde_json::Value) -> ResilientApp {
        let spec: ResilientAppSpec = serde_json::from_value(serde_json::json!({"components": [
            {"name": "web", "image": "x", "minAvailable": 4, "autoscaling": autoscaling,
             "resources": {"requests": {"cpu": "100m"}}},
            {"name": "worker", "image": "x", "minAvailable": 1},
        ]}))
        .unwrap();
        let mut app = ResilientApp::new("shop", spec);
        app.metadata.uid = Some("1234".into());
        app
    }

    fn zones(n: usize) -> Vec<String> {
        ["zone-a", "zone-b", "zone-c"][..n].iter().map(|z| z.to_string()).collect()
    }

    #[test]
    fn the_autoscaler_floor_is_the_zone_survival_count_and_follows_the_zones() {
        let a = app(serde_json::json!({"maxReplicas": 30}));
        let desired = render(&a, &Plan::for_zones(&a, &zones(3)));
        // Only the autoscaled component gets an autoscaler.
        assert_eq!(desired.horizontal_pod_autoscalers.len(), 1);
        let hpa = &desired.horizontal_pod_autoscalers[0];
        assert_eq!(hpa.metadata.name.as_deref(), Some("web"));
        assert_eq!(hpa.metadata.owner_references.as_ref().unwrap()[0].uid, "1234");
        let spec = hpa.spec.as_ref().unwrap();
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(6), 30));
        assert_eq!(spec.scale_target_ref.kind, "Deployment");
        assert_eq!(spec.scale_target_ref.name, "web");
        // Default metric: average CPU utilization 80 %.
        let metric = &spec.metrics.as_ref().unwrap()[0];
        assert_eq!(metric.type_, "Resource");
        let resource = metric.resource.as_ref().unwrap();
        assert_eq!((resource.name.as_str(), resource.target.average_utilization), ("cpu", Some(80)));
        // A zone lost: 8 keep 4 ready through the loss of one of the two left.
        let two = render(&a, &Plan::for_zones(&a, &zones(2)));
        assert_eq!(two.horizontal_pod_autoscalers[0].spec.as_ref().unwrap().min_replicas, Some(8));
    }

    #[test]
    fn the_autoscaled_deployment_leaves_replicas_to_the_autoscaler() {
        let a = app(serde_json::json!({"maxReplicas": 30}));
        let desired = render(&a, &Plan::for_zones(&a, &zones(3)));
        let spec = |name: &str| {
            desired.deployments.iter().find(|d| d.metadata.name.as_deref() == Some(name)).unwrap().spec.clone().unwrap()
        };
        let web = spec("web");
        assert_eq!(web.replicas, None);
        // Surge as the quota allows for maxReplicas (a quarter of 30).
        let surge = web.strategy.unwrap().rolling_update.unwrap().max_surge;
        assert_eq!(surge, Some(IntOrString::Int(8)));
        // The PDB keeps the floor's budget: 6 - 4.
        let pdb = desired.pod_disruption_budgets.iter().find(|p| p.metadata.name.as_deref() == Some("web")).unwrap();
        assert_eq!(pdb.spec.as_ref().unwrap().max_unavailable, Some(IntOrString::Int(2)));
        assert_eq!(spec("worker").replicas, Some(2));
    }

    #[test]
    fn given_metrics_and_behavior_are_passed_through() {
        let a = app(serde_json::json!({
            "maxReplicas": 12,
            "metrics": [{"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "200Mi"}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
        }));
        let desired = render(&a, &Plan::for_zones(&a, &zones(3)));
        let spec = desired.horizontal_pod_autoscalers[0].spec.clone().unwrap();
        let metrics = spec.metrics.unwrap();
        assert_eq!(metrics.len(), 1);
        let resource = metrics[0].resource.as_ref().unwrap();
        assert_eq!(resource.name, "memory");
        assert_eq!(resource.target.average_value, Some(Quantity("200Mi".into())));
        assert_eq!(spec.behavior.unwrap().scale_down.unwrap().stabilization_window_seconds, Some(60));
    }

    #[test]
    fn the_quota_is_sized_for_max_replicas_plus_surge() {
        let a = app(serde_json::json!({"maxReplicas": 10}));
        let desired = render(&a, &Plan::for_zones(&a, &zones(3)));
        let hard = desired.resource_quota.spec.unwrap().hard.unwrap();
        // web: 10 + surge 3 + failover ceil(10/3) = 17 pods; worker: 2 + 1 + 1 = 4.
        assert_eq!(hard["pods"], Quantity("21".into()));
        assert_eq!(hard["requests.cpu"], Quantity("2100m".into())); // 17 x 100m + 4 x 100m (default)
        // An explicit quota that holds the floor but not maxReplicas warns: no room to grow.
        let mut small = a.clone();
        small.spec.quota = Some(crate::api::Quota { cpu: None, memory: None, pods: Some(10) });
        let plan = Plan::for_zones(&small, &zones(3));
        assert!(matches!(quota_fit(&small, &plan), QuotaFit::NoRoomForSurge(m) if m.contains("spec.quota.pods")));
    }

    #[test]
    fn max_replicas_below_the_floor_names_both_numbers() {
        let a = app(serde_json::json!({"maxReplicas": 7}));
        assert!(max_replicas_errors(&a, &Plan::for_zones(&a, &zones(3))).is_empty());
        let errors = max_replicas_errors(&a, &Plan::for_zones(&a, &zones(2)));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.components[web].autoscaling.maxReplicas");
        assert!(
            errors[0].message.contains("maxReplicas 7 is below the zone-survival floor 8"),
            "{}",
            errors[0].message
        );
        // Equal to the floor is fine.
        let at = app(serde_json::json!({"maxReplicas": 6}));
        assert!(max_replicas_errors(&at, &Plan::for_zones(&at, &zones(3))).is_empty());
    }

    #[test]
    fn the_ceiling_is_max_replicas_for_autoscaled_components_only() {
        let a = app(serde_json::json!({"maxReplicas": 10}));
        assert_eq!(replicas_ceiling(&a.spec.components[0], 6), 10);
        assert_eq!(replicas_ceiling(&a.spec.components[1], 2), 2);
    }
}
