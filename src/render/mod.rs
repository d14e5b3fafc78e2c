//! Pure builders: a validated `ResilientApp` and the usable zones in, every child object out.
//! No client and no async, so this is where most unit tests live.

mod autoscaling;
mod namespace;
mod network;
mod placeholder;
mod quota;
mod validate;
mod workload;

pub use autoscaling::{
    ANNOTATION_REPLICAS_HANDED_OFF, DEFAULT_CPU_UTILIZATION, REPLICAS_HANDOFF_MANAGER, max_replicas_errors,
    replicas_ceiling,
};
pub use placeholder::{
    LABEL_PLACEHOLDER_FOR, LABEL_PLACEHOLDER_ZONE, PAUSE_IMAGE, PRIORITY_CLASS, Reservation, placeholder_name,
    reservations,
};
pub use quota::{compute_quota, surge_for};
pub use validate::{QuotaFit, SpecError, forbidden_fields, quota_fit, reservation_fit, validate};
pub use workload::HEADLESS_SUFFIX;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::{Component, LABEL_APP, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGER, ResilientApp};
use crate::resilience::{PlannedZones, ReplicaPlan, plan_replicas};

/// The zones an app is planned for and the replica plan of every component, computed once per
/// pass and shared by validation, rendering and status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub zones: Vec<String>,
    /// No zone is usable now; `zones` are the last ones seen (see [`PlannedZones`]).
    pub no_usable_zones: bool,
    /// By component name.
    pub replicas: BTreeMap<String, ReplicaPlan>,
    /// The zones of each component whose pod template narrows or widens `zones`, by name.
    pub component_zones: BTreeMap<String, Vec<String>>,
}

impl Plan {
    /// The plan for `app` over `zones`.
    /// Each component's replicas are planned for its own zones (see [`PlannedZones::components`]).
    pub fn new(app: &ResilientApp, zones: PlannedZones) -> Self {
        let tolerated = app.spec.resilience.zone_failures_tolerated;
        let zones_of = |name: &str| zones.components.get(name).unwrap_or(&zones.zones);
        let replicas = app
            .spec
            .components
            .iter()
            .map(|c| {
                // Stateful pods cannot move: a zone lost now must not raise their replicas, so
                // they are planned for their zones plus the allowed zones that are lost.
                let count = if c.is_stateful() {
                    let mut all: BTreeSet<&String> = zones_of(&c.name).iter().collect();
                    all.extend(zones.known.iter().filter(|z| !zones.zones.contains(z)));
                    all.len()
                } else {
                    zones_of(&c.name).len()
                };
                (c.name.clone(), plan_replicas(c.replicas, c.min_available, count, tolerated))
            })
            .collect();
        Self { zones: zones.zones, no_usable_zones: zones.no_usable_zones, replicas, component_zones: zones.components }
    }

    /// The plan for `app` over zones that are all usable, by every component (the `render`
    /// command, tests).
    pub fn for_zones(app: &ResilientApp, zones: &[String]) -> Self {
        Self::new(app, PlannedZones { zones: zones.to_vec(), known: zones.to_vec(), ..Default::default() })
    }

    /// The zones a component can use.
    pub fn zones_of(&self, component: &str) -> &[String] {
        self.component_zones.get(component).unwrap_or(&self.zones)
    }

    /// Replicas planned for a component (its minAvailable if it is not in the plan).
    pub fn replicas_of(&self, component: &Component) -> i32 {
        self.replicas.get(&component.name).map_or(component.min_available, |p| p.replicas)
    }
}

/// Everything one ResilientApp should own, as built from its spec and its [`Plan`].
///
/// [`Desired::into_steps`] destructures this without `..`, so a kind added here but never applied
/// does not compile.
#[derive(Clone, Debug)]
pub struct Desired {
    pub namespace: Namespace,
    pub resource_quota: ResourceQuota,
    pub limit_range: LimitRange,
    pub network_policies: Vec<NetworkPolicy>,
    pub role_bindings: Vec<RoleBinding>,
    pub deployments: Vec<Deployment>,
    /// Stateful components (with volumeClaims).
    pub stateful_sets: Vec<StatefulSet>,
    pub pod_disruption_budgets: Vec<PodDisruptionBudget>,
    /// The components' Services and the headless Services of stateful components.
    pub services: Vec<Service>,
    /// The placeholder Deployments of `resilience.reserveCapacity`.
    pub placeholders: Vec<Deployment>,
    pub horizontal_pod_autoscalers: Vec<HorizontalPodAutoscaler>,
}

/// The one list of the kinds the operator creates, in apply order, each with the field of its
/// cache in the controller's stores. Call it with a macro that takes `Kind: field, ...`.
macro_rules! child_kinds {
    ($callback:ident) => {
        $callback! {
            Namespace: namespaces,
            ResourceQuota: resource_quotas,
            LimitRange: limit_ranges,
            NetworkPolicy: network_policies,
            RoleBinding: role_bindings,
            Service: services,
            PodDisruptionBudget: pod_disruption_budgets,
            Deployment: deployments,
            StatefulSet: stateful_sets,
            HorizontalPodAutoscaler: horizontal_pod_autoscalers,
        }
    };
}
pub(crate) use child_kinds;

macro_rules! define_child {
    ($($kind:ident: $field:ident,)*) => {
        /// One object the operator creates, of any child kind.
        #[derive(Clone, Debug, serde::Serialize)]
        #[serde(untagged)]
        #[allow(clippy::large_enum_variant, reason = "a handful per pass, moved once: boxing buys nothing")]
        pub enum Child {
            $($kind($kind),)*
        }

        impl Child {
            /// The object's kind and metadata.
            pub fn kind_and_meta(&self) -> (&'static str, &ObjectMeta) {
                match self {
                    $(Child::$kind(o) => (stringify!($kind), o.meta()),)*
                }
            }
        }
    };
}
child_kinds!(define_child);

impl Desired {
    /// The children in the order they are applied: each step is a set of objects that may be
    /// applied concurrently, and each step starts once the previous one is done. The Namespace;
    /// its quota and container defaults, so the first pods already get them; NetworkPolicies,
    /// RoleBindings, Services and PDBs, so default-deny is in place before any pod exists; then the
    /// Deployments and StatefulSets; then the placeholders (the app's own pods take quota first);
    /// then the HorizontalPodAutoscalers, once the Deployments they scale exist and their replicas
    /// have been handed over.
    pub fn into_steps(self) -> [Vec<Child>; 6] {
        let Desired {
            namespace,
            resource_quota,
            limit_range,
            network_policies,
            role_bindings,
            deployments,
            stateful_sets,
            pod_disruption_budgets,
            services,
            placeholders,
            horizontal_pod_autoscalers,
        } = self;
        let mut policies_and_access: Vec<Child> = Vec::new();
        policies_and_access.extend(network_policies.into_iter().map(Child::NetworkPolicy));
        policies_and_access.extend(role_bindings.into_iter().map(Child::RoleBinding));
        policies_and_access.extend(services.into_iter().map(Child::Service));
        policies_and_access.extend(pod_disruption_budgets.into_iter().map(Child::PodDisruptionBudget));
        [
            vec![Child::Namespace(namespace)],
            vec![Child::ResourceQuota(resource_quota), Child::LimitRange(limit_range)],
            policies_and_access,
            deployments
                .into_iter()
                .map(Child::Deployment)
                .chain(stateful_sets.into_iter().map(Child::StatefulSet))
                .collect(),
            placeholders.into_iter().map(Child::Deployment).collect(),
            horizontal_pod_autoscalers.into_iter().map(Child::HorizontalPodAutoscaler).collect(),
        ]
    }
}

/// Something about the spec that works but guarantees less than it seems to: published as an
/// Event and carried in the Ready message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub reason: &'static str,
    pub message: String,
}

/// The warnings of a spec (pure).
pub fn warnings(app: &ResilientApp) -> Vec<Warning> {
    let mut out = Vec::new();
    for c in &app.spec.components {
        if network::unreachable_service(app, c) {
            out.push(Warning {
                reason: "UnreachableService",
                message: format!(
                    "components[{}] has a Service that nothing may reach under Strict isolation: set its allowFrom or spec.network.ingressFrom",
                    c.name
                ),
            });
        }
        if c.readiness_probe.is_none() && c.ports.is_empty() {
            out.push(Warning {
                reason: "NoReadinessCheck",
                message: format!(
                    "components[{}] has neither ports nor a readinessProbe: its pods count as ready once started, so minAvailable guarantees only started pods",
                    c.name
                ),
            });
        }
    }
    out
}

/// How a StorageClass named by a volume claim binds its volumes: its `volumeBindingMode`
/// (`Immediate` when unset), or `None` when there is no such class.
pub type StorageClassModes = BTreeMap<String, Option<String>>;

/// The StorageClasses the app's volume claims name.
pub fn storage_classes(app: &ResilientApp) -> Vec<String> {
    let mut names: Vec<String> = app
        .spec
        .components
        .iter()
        .flat_map(|c| c.volume_claims.iter().filter_map(|v| v.storage_class_name.clone()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Warnings about the StorageClasses of the volume claims (pure): a class that binds volumes
/// before the pod is scheduled may put a pod's volume in another zone than the spread wants (the
/// pod then follows its volume, and the spread, so the guarantee, is lost); a class that does not
/// exist leaves the claims Pending.
pub fn storage_warnings(app: &ResilientApp, modes: &StorageClassModes) -> Vec<Warning> {
    let mut out = Vec::new();
    for c in &app.spec.components {
        for v in &c.volume_claims {
            let Some(class) = &v.storage_class_name else {
                continue;
            };
            match modes.get(class) {
                Some(Some(mode)) if mode == "WaitForFirstConsumer" => {}
                Some(Some(mode)) => out.push(Warning {
                    reason: "StorageClassBindsEarly",
                    message: format!(
                        "components[{}].volumeClaims[{}]: StorageClass {class} has volumeBindingMode {}, not WaitForFirstConsumer: volumes are created before the scheduler picks a zone, so pods follow their volumes and the zone spread is not guaranteed",
                        c.name,
                        v.name,
                        mode
                    ),
                }),
                // Not looked up (the class could not be read): nothing to say.
                None => {}
                Some(None) => out.push(Warning {
                    reason: "StorageClassMissing",
                    message: format!(
                        "components[{}].volumeClaims[{}]: StorageClass {class} does not exist: the claims stay Pending",
                        c.name, v.name
                    ),
                }),
            }
        }
    }
    out
}

/// Build every child of `app` for its plan. Call [`validate`] first.
pub fn render(app: &ResilientApp, plan: &Plan) -> Desired {
    let ctx = RenderContext::new(app);
    let mut deployments = Vec::new();
    let mut stateful_sets = Vec::new();
    let mut pod_disruption_budgets = Vec::new();
    let mut services = Vec::new();
    let mut horizontal_pod_autoscalers = Vec::new();
    for component in &app.spec.components {
        let replicas = plan.replicas_of(component);
        if component.is_stateful() {
            stateful_sets.push(workload::stateful_set(&ctx, component, replicas));
            services.push(workload::headless_service(&ctx, component));
        } else {
            let mut deployment = workload::deployment(&ctx, component, replicas);
            autoscaling::leave_replicas_to_autoscaler(&mut deployment, component);
            deployments.push(deployment);
            horizontal_pod_autoscalers.extend(autoscaling::horizontal_pod_autoscaler(&ctx, component, replicas));
        }
        pod_disruption_budgets.push(workload::pod_disruption_budget(&ctx, component, replicas));
        if let Some(service) = workload::service(&ctx, component) {
            services.push(service);
        }
    }
    Desired {
        namespace: namespace::namespace(&ctx),
        resource_quota: quota::resource_quota(&ctx, plan),
        limit_range: quota::limit_range(&ctx),
        network_policies: network::network_policies(&ctx),
        role_bindings: namespace::role_bindings(&ctx),
        deployments,
        stateful_sets,
        pod_disruption_budgets,
        services,
        placeholders: placeholder::placeholder_deployments(&ctx, plan),
        horizontal_pod_autoscalers,
    }
}

/// What every builder needs: the app, its namespace, labels and owner reference.
pub(crate) struct RenderContext<'a> {
    pub app: &'a ResilientApp,
    pub name: String,
    pub namespace: String,
    owner: Option<OwnerReference>,
}

impl<'a> RenderContext<'a> {
    fn new(app: &'a ResilientApp) -> Self {
        Self {
            app,
            name: app.name(),
            namespace: app.target_namespace(),
            // Without a uid (render from a file) there is no owner to point at.
            owner: app.controller_owner_ref(&()),
        }
    }

    /// Labels of every child: managed-by and the app. Never GitOps instance labels.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
            (LABEL_APP.to_string(), self.name.clone()),
        ])
    }

    pub fn component_labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels();
        labels.insert(LABEL_COMPONENT.to_string(), component.to_string());
        labels
    }

    /// The labels that select a component's pods (stable for the life of the Deployment).
    pub fn selector_labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_APP.to_string(), self.name.clone()),
            (LABEL_COMPONENT.to_string(), component.to_string()),
        ])
    }

    /// Metadata of a namespaced child.
    pub fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: self.owner.clone().map(|o| vec![o]),
            ..Default::default()
        }
    }

    /// Metadata of the Namespace itself (cluster-scoped). No owner reference: deleting the app
    /// follows its deletionPolicy, and garbage collection must never take the app's data with it.
    pub fn namespace_meta(&self, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta { name: Some(self.namespace.clone()), labels: Some(labels), ..Default::default() }
    }
}

#[cfg(test)]
mod tests;
