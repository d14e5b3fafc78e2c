//! Per component: a Deployment (or, with volumeClaims, a StatefulSet and its headless Service)
//! spread across zones, a PodDisruptionBudget and a Service. Both workloads share one pod template.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodTemplateSpec, Probe, SeccompProfile,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Toleration, TopologySpreadConstraint,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::RenderContext;
use super::quota::surge_for;
use crate::api::{Component, DeletionPolicy, PodSecurityLevel, ZONE_LABEL};

pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The suffix of a stateful component's headless Service (stable pod names: `<pod>.<component>-headless`).
pub const HEADLESS_SUFFIX: &str = "-headless";

fn spread(
    ctx: &RenderContext,
    component: &str,
    key: &str,
    when_unsatisfiable: &str,
    per_revision: bool,
) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.to_string(),
        when_unsatisfiable: when_unsatisfiable.to_string(),
        label_selector: Some(LabelSelector {
            match_labels: Some(ctx.selector_labels(component)),
            ..Default::default()
        }),
        // Each rollout revision of a Deployment is spread on its own. StatefulSet pods keep their
        // volumes, so they are spread as one set.
        match_label_keys: per_revision.then(|| vec!["pod-template-hash".to_string()]),
        // Tainted (lost) nodes are not a domain, so replacements schedule in the surviving zones.
        node_taints_policy: Some("Honor".to_string()),
        node_affinity_policy: Some("Honor".to_string()),
        // No minDomains: with fewer eligible domains than minDomains the global minimum is taken
        // as 0, which would keep replacements Pending during a zone outage.
        min_domains: None,
    }
}

/// The pod securityContext under the PSA level: the template's, with what the level needs set
/// over it (restricted: non-root and a seccomp profile; baseline: a seccomp profile other than
/// Unconfined). A user, group or fsGroup of the template's is kept.
fn pod_security(level: PodSecurityLevel, template: Option<PodSecurityContext>) -> Option<PodSecurityContext> {
    if level == PodSecurityLevel::Privileged {
        return template;
    }
    let mut sc = template.unwrap_or_default();
    // The template may choose its own profile (Localhost); never none or Unconfined.
    if sc.seccomp_profile.as_ref().is_none_or(|p| p.type_ == "Unconfined") {
        sc.seccomp_profile = Some(SeccompProfile { type_: "RuntimeDefault".to_string(), localhost_profile: None });
    }
    if level == PodSecurityLevel::Restricted {
        sc.run_as_non_root = Some(true);
    }
    Some(sc)
}

/// A container's securityContext under the PSA level: the template's, with what the level needs
/// set over it (restricted: no privilege escalation, every capability dropped; baseline: no
/// privilege escalation unless the template asks for it).
fn container_security(level: PodSecurityLevel, template: Option<SecurityContext>) -> Option<SecurityContext> {
    if level == PodSecurityLevel::Privileged {
        return template;
    }
    let mut sc = template.unwrap_or_default();
    // The pod's profile applies; a container may not opt out of it.
    if sc.seccomp_profile.as_ref().is_some_and(|p| p.type_ == "Unconfined") {
        sc.seccomp_profile = None;
    }
    match level {
        PodSecurityLevel::Privileged => Some(sc),
        PodSecurityLevel::Baseline => {
            sc.allow_privilege_escalation.get_or_insert(false);
            Some(sc)
        }
        PodSecurityLevel::Restricted => {
            if sc.run_as_non_root == Some(false) {
                sc.run_as_non_root = None;
            }
            sc.allow_privilege_escalation = Some(false);
            let caps = sc.capabilities.get_or_insert_with(Default::default);
            let drop = caps.drop.get_or_insert_with(Vec::new);
            if !drop.iter().any(|c| c == "ALL") {
                drop.insert(0, "ALL".to_string());
            }
            Some(sc)
        }
    }
}

/// The component's readinessProbe, or a TCP check of its first port: without one a pod counts as
/// ready once its container starts, and minAvailable would guarantee only "started".
fn readiness_probe(component: &Component) -> Option<Probe> {
    component.readiness_probe.as_deref().cloned().or_else(|| {
        let port = component.ports.first()?;
        Some(Probe {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(port.container_port), host: None }),
            period_seconds: Some(5),
            ..Default::default()
        })
    })
}

/// The main container: the template's container of the component's name, with the component's
/// own fields set over it. Env entries and ports of the template not named by the component stay.
fn main_container(component: &Component, template: Option<Container>, level: PodSecurityLevel) -> Container {
    let mut c = template.unwrap_or_default();
    c.name = component.name.clone();
    c.image = Some(component.image.clone());
    if !component.command.is_empty() {
        c.command = Some(component.command.clone());
    }
    if !component.args.is_empty() {
        c.args = Some(component.args.clone());
    }
    if !component.env.is_empty() {
        let mut env: Vec<EnvVar> = c.env.take().unwrap_or_default();
        env.retain(|e| !component.env.iter().any(|o| o.name == e.name));
        env.extend(component.env.iter().cloned());
        c.env = Some(env);
    }
    if !component.ports.is_empty() {
        let mut ports = component.ports.clone();
        let same = |a: &ContainerPort, b: &ContainerPort| {
            a.container_port == b.container_port
                && a.protocol.as_deref().unwrap_or("TCP") == b.protocol.as_deref().unwrap_or("TCP")
        };
        ports.extend(
            c.ports.take().unwrap_or_default().into_iter().filter(|p| !component.ports.iter().any(|o| same(o, p))),
        );
        c.ports = Some(ports);
    }
    if component.resources.is_some() {
        c.resources = component.resources.clone();
    }
    if component.readiness_probe.is_some() || c.readiness_probe.is_none() {
        c.readiness_probe = readiness_probe(component);
    }
    if component.liveness_probe.is_some() {
        c.liveness_probe = component.liveness_probe.as_deref().cloned();
    }
    c.security_context = container_security(level, c.security_context.take());
    c
}

/// Required node affinity: the template's, with the zone allow-list ANDed into every term.
pub(super) fn affinity(template: Option<Affinity>, zones: &[String]) -> Option<Affinity> {
    if zones.is_empty() {
        return template;
    }
    let zone_term = NodeSelectorRequirement {
        key: ZONE_LABEL.to_string(),
        operator: "In".to_string(),
        values: Some(zones.to_vec()),
    };
    let mut affinity = template.unwrap_or_default();
    let node = affinity.node_affinity.get_or_insert_with(Default::default);
    let required = node
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector { node_selector_terms: Vec::new() });
    if required.node_selector_terms.is_empty() {
        required.node_selector_terms.push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_expressions.get_or_insert_with(Vec::new).push(zone_term.clone());
    }
    Some(affinity)
}

/// The pod template of a component (a Deployment's now, a StatefulSet's as well): the component's
/// `podTemplate` with what the operator owns set over it. See docs/api.md, "podTemplate".
pub(super) fn pod_template(ctx: &RenderContext, component: &Component) -> PodTemplateSpec {
    let resilience = &ctx.app.spec.resilience;
    let level = ctx.app.spec.pod_security;
    let template = component.pod_template.clone().unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();

    let mut labels = meta.labels.take().unwrap_or_default();
    labels.extend(ctx.component_labels(&component.name));
    labels.insert("app.kubernetes.io/name".to_string(), component.name.clone());
    labels.insert("app.kubernetes.io/part-of".to_string(), ctx.name.clone());
    meta.labels = Some(labels);

    // The main container first, then the sidecars in their order.
    let mut containers = std::mem::take(&mut spec.containers);
    let main = containers.iter().position(|c| c.name == component.name).map(|i| containers.remove(i));
    let mut main = main_container(component, main, level);
    // A stateful component's claims, mounted in the main container.
    if component.is_stateful() {
        let mounts = main.volume_mounts.get_or_insert_with(Vec::new);
        mounts.retain(|m| !component.volume_claims.iter().any(|v| v.name == m.name));
        mounts.extend(component.volume_claims.iter().map(|v| VolumeMount {
            name: v.name.clone(),
            mount_path: v.mount_path.clone(),
            ..Default::default()
        }));
    }
    let mut all = vec![main];
    all.extend(containers.into_iter().map(|mut c| {
        c.security_context = container_security(level, c.security_context.take());
        c
    }));
    spec.containers = all;
    if let Some(init) = spec.init_containers.as_mut() {
        for c in init {
            c.security_context = container_security(level, c.security_context.take());
        }
    }
    spec.security_context = pod_security(level, spec.security_context.take());

    // A token only for pods that name a ServiceAccount (or ask for one).
    if spec.automount_service_account_token.is_none()
        && spec.service_account_name.as_deref().unwrap_or_default().is_empty()
        && spec.service_account.as_deref().unwrap_or_default().is_empty()
    {
        spec.automount_service_account_token = Some(false);
    }

    let failover = i64::from(resilience.failover_seconds);
    let mut tolerations: Vec<Toleration> = [TAINT_UNREACHABLE, TAINT_NOT_READY]
        .map(|key| Toleration {
            key: Some(key.to_string()),
            operator: Some("Exists".to_string()),
            effect: Some("NoExecute".to_string()),
            toleration_seconds: Some(failover),
            value: None,
        })
        .to_vec();
    tolerations.extend(spec.tolerations.take().unwrap_or_default());
    spec.tolerations = Some(tolerations);
    spec.affinity = affinity(spec.affinity.take(), &resilience.zones);

    // The zone spread is the operator's; a hostname spread of the template replaces its soft one.
    let own = spec.topology_spread_constraints.take().unwrap_or_default();
    let per_revision = !component.is_stateful();
    let mut spreads = vec![spread(ctx, &component.name, ZONE_LABEL, "DoNotSchedule", per_revision)];
    if !own.iter().any(|t| t.topology_key == HOSTNAME_LABEL) {
        spreads.push(spread(ctx, &component.name, HOSTNAME_LABEL, "ScheduleAnyway", per_revision));
    }
    spreads.extend(own.into_iter().filter(|t| t.topology_key != ZONE_LABEL));
    spec.topology_spread_constraints = Some(spreads);
    spec.node_name = None;

    PodTemplateSpec { metadata: Some(meta), spec: Some(spec) }
}

pub(super) fn deployment(ctx: &RenderContext, component: &Component, replicas: i32) -> Deployment {
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
            template: pod_template(ctx, component),
            ..Default::default()
        }),
        status: None,
    }
}

/// A stateful component: a StatefulSet whose pods each get their own claims. Pods start and stop
/// in parallel (no ordinal ordering: the zone spread, not the order, is what matters here); the
/// claims outlive the StatefulSet unless the app's deletionPolicy is Delete, and always outlive a
/// scale-down (the pod that comes back finds its data).
pub(super) fn stateful_set(ctx: &RenderContext, component: &Component, replicas: i32) -> StatefulSet {
    let when_deleted = match ctx.app.spec.deletion_policy {
        DeletionPolicy::Delete => "Delete",
        DeletionPolicy::Retain | DeletionPolicy::Orphan => "Retain",
    };
    let claims = component
        .volume_claims
        .iter()
        .map(|v| PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(v.name.clone()),
                labels: Some(ctx.component_labels(&component.name)),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                storage_class_name: v.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), v.size.clone())])),
                    limits: None,
                }),
                ..Default::default()
            }),
            status: None,
        })
        .collect();
    StatefulSet {
        metadata: ctx.meta(&component.name, ctx.component_labels(&component.name)),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(ctx.selector_labels(&component.name)), ..Default::default() },
            service_name: Some(format!("{}{HEADLESS_SUFFIX}", component.name)),
            pod_management_policy: Some("Parallel".to_string()),
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(when_deleted.to_string()),
                when_scaled: Some("Retain".to_string()),
            }),
            template: pod_template(ctx, component),
            volume_claim_templates: Some(claims),
            ..Default::default()
        }),
        status: None,
    }
}

/// The headless Service of a stateful component: a stable DNS name per pod, ready or not (peers
/// of a database find each other before they are ready).
pub(super) fn headless_service(ctx: &RenderContext, component: &Component) -> Service {
    Service {
        metadata: ctx.meta(&format!("{}{HEADLESS_SUFFIX}", component.name), ctx.component_labels(&component.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(ctx.selector_labels(&component.name)),
            ports: Some(service_ports(component)),
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        status: None,
    }
}

fn service_ports(component: &Component) -> Vec<ServicePort> {
    component
        .ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone(),
            port: p.container_port,
            target_port: Some(IntOrString::Int(p.container_port)),
            protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
            ..Default::default()
        })
        .collect()
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
    let ports = service_ports(component);
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
