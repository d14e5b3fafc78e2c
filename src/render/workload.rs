//! Per component: a Deployment spread across zones, a PodDisruptionBudget and a Service.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Service, ServicePort,
    ServiceSpec, TCPSocketAction, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::RenderContext;
use super::quota::surge_for;
use crate::api::{Component, PodSecurityLevel, ZONE_LABEL};

pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

fn spread(ctx: &RenderContext, component: &str, key: &str, when_unsatisfiable: &str) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.to_string(),
        when_unsatisfiable: when_unsatisfiable.to_string(),
        label_selector: Some(LabelSelector {
            match_labels: Some(ctx.selector_labels(component)),
            ..Default::default()
        }),
        // Each rollout revision is spread on its own.
        match_label_keys: Some(vec!["pod-template-hash".to_string()]),
        // Tainted (lost) nodes are not a domain, so replacements schedule in the surviving zones.
        node_taints_policy: Some("Honor".to_string()),
        node_affinity_policy: Some("Honor".to_string()),
        // No minDomains: with fewer eligible domains than minDomains the global minimum is taken
        // as 0, which would keep replacements Pending during a zone outage.
        min_domains: None,
    }
}

fn security_contexts(level: PodSecurityLevel) -> (Option<PodSecurityContext>, Option<SecurityContext>) {
    let runtime_default = || Some(SeccompProfile { type_: "RuntimeDefault".to_string(), localhost_profile: None });
    match level {
        PodSecurityLevel::Restricted => (
            Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: runtime_default(),
                ..Default::default()
            }),
            Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), add: None }),
                ..Default::default()
            }),
        ),
        PodSecurityLevel::Baseline => (
            Some(PodSecurityContext { seccomp_profile: runtime_default(), ..Default::default() }),
            Some(SecurityContext { allow_privilege_escalation: Some(false), ..Default::default() }),
        ),
        PodSecurityLevel::Privileged => (None, None),
    }
}

/// The component's readinessProbe, or a TCP check of its first port: without one a pod counts as
/// ready once its container starts, and minAvailable would guarantee only "started".
fn readiness_probe(component: &Component) -> Option<Probe> {
    component.readiness_probe.clone().or_else(|| {
        let port = component.ports.first()?;
        Some(Probe {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(port.container_port), host: None }),
            period_seconds: Some(5),
            ..Default::default()
        })
    })
}

pub(super) fn deployment(ctx: &RenderContext, component: &Component, replicas: i32) -> Deployment {
    let resilience = &ctx.app.spec.resilience;
    let failover = i64::from(resilience.failover_seconds);
    let tolerations = [TAINT_UNREACHABLE, TAINT_NOT_READY]
        .map(|key| Toleration {
            key: Some(key.to_string()),
            operator: Some("Exists".to_string()),
            effect: Some("NoExecute".to_string()),
            toleration_seconds: Some(failover),
            value: None,
        })
        .to_vec();
    let affinity = (!resilience.zones.is_empty()).then(|| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: ZONE_LABEL.to_string(),
                        operator: "In".to_string(),
                        values: Some(resilience.zones.clone()),
                    }]),
                    match_fields: None,
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let (pod_security, container_security) = security_contexts(ctx.app.spec.pod_security);
    let container = Container {
        name: component.name.clone(),
        image: Some(component.image.clone()),
        command: (!component.command.is_empty()).then(|| component.command.clone()),
        args: (!component.args.is_empty()).then(|| component.args.clone()),
        env: (!component.env.is_empty()).then(|| component.env.clone()),
        ports: (!component.ports.is_empty()).then(|| component.ports.clone()),
        resources: component.resources.clone(),
        readiness_probe: readiness_probe(component),
        liveness_probe: component.liveness_probe.clone(),
        security_context: container_security,
        ..Default::default()
    };
    let mut pod_labels = ctx.component_labels(&component.name);
    pod_labels.insert("app.kubernetes.io/name".to_string(), component.name.clone());
    pod_labels.insert("app.kubernetes.io/part-of".to_string(), ctx.name.clone());
    Deployment {
        metadata: ctx.meta(&component.name, ctx.component_labels(&component.name)),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(ctx.selector_labels(&component.name)), ..Default::default() },
            // Never fewer ready pods than replicas during a rollout: new pods come up first.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(surge_for(replicas))),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: pod_security,
                    tolerations: Some(tolerations),
                    affinity,
                    topology_spread_constraints: Some(vec![
                        spread(ctx, &component.name, ZONE_LABEL, "DoNotSchedule"),
                        spread(ctx, &component.name, HOSTNAME_LABEL, "ScheduleAnyway"),
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// `maxUnavailable = replicas - minAvailable`, but never 0: a PDB that blocks every drain would
/// stop node maintenance for good.
pub(super) fn pod_disruption_budget(ctx: &RenderContext, component: &Component, replicas: i32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ctx.meta(&component.name, ctx.component_labels(&component.name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int((replicas - component.min_available).max(1))),
            selector: Some(LabelSelector {
                match_labels: Some(ctx.selector_labels(&component.name)),
                ..Default::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            min_available: None,
        }),
        status: None,
    }
}

pub(super) fn service(ctx: &RenderContext, component: &Component) -> Option<Service> {
    let service = component.service.as_ref()?;
    let ports = component
        .ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone(),
            port: p.container_port,
            target_port: Some(IntOrString::Int(p.container_port)),
            protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
            ..Default::default()
        })
        .collect();
    Some(Service {
        metadata: ctx.meta(&component.name, ctx.component_labels(&component.name)),
        spec: Some(ServiceSpec {
            type_: Some(service.type_.as_str().to_string()),
            selector: Some(ctx.selector_labels(&component.name)),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    })
}
