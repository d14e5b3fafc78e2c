//! Pure builders: a validated `ResilientApp` and the usable zones in, every child object out.
//! No client and no async, so this is where most unit tests live.

mod namespace;
mod network;
pub(crate) mod quota;
mod validate;
mod workload;

pub use quota::surge_for;
pub use validate::{QuotaFit, SpecError, quota_fit, validate};

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::{LABEL_APP, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGER, ResilientApp};
use crate::resilience::{ReplicaPlan, plan_replicas};

/// Everything one ResilientApp should own, as built from its spec and the usable zones.
///
/// The applier destructures this without `..`, so a kind added here but never applied does not compile.
#[derive(Clone, Debug)]
pub struct Desired {
    pub namespace: Namespace,
    pub resource_quota: ResourceQuota,
    pub limit_range: LimitRange,
    pub network_policies: Vec<NetworkPolicy>,
    pub role_bindings: Vec<RoleBinding>,
    pub deployments: Vec<Deployment>,
    pub pod_disruption_budgets: Vec<PodDisruptionBudget>,
    pub services: Vec<Service>,
}

/// The replica plan of every component, by component name.
pub fn replica_plans(app: &ResilientApp, zones: &[String]) -> BTreeMap<String, ReplicaPlan> {
    let tolerated = app.spec.resilience.zone_failures_tolerated;
    app.spec
        .components
        .iter()
        .map(|c| (c.name.clone(), plan_replicas(c.replicas, c.min_available, zones.len(), tolerated)))
        .collect()
}

/// Build every child of `app` for the usable `zones`. Call [`validate`] first.
pub fn render(app: &ResilientApp, zones: &[String]) -> Desired {
    let ctx = RenderContext::new(app, zones);
    let plans = replica_plans(app, zones);
    let mut deployments = Vec::new();
    let mut pod_disruption_budgets = Vec::new();
    let mut services = Vec::new();
    for component in &app.spec.components {
        let replicas = plans[&component.name].replicas;
        deployments.push(workload::deployment(&ctx, component, replicas));
        pod_disruption_budgets.push(workload::pod_disruption_budget(&ctx, component, replicas));
        if let Some(service) = workload::service(&ctx, component) {
            services.push(service);
        }
    }
    Desired {
        namespace: namespace::namespace(&ctx),
        resource_quota: quota::resource_quota(&ctx, &plans),
        limit_range: quota::limit_range(&ctx),
        network_policies: network::network_policies(&ctx),
        role_bindings: namespace::role_bindings(&ctx),
        deployments,
        pod_disruption_budgets,
        services,
    }
}

/// What every builder needs: the app, its namespace, labels and owner reference.
pub(crate) struct RenderContext<'a> {
    pub app: &'a ResilientApp,
    pub name: String,
    pub namespace: String,
    pub zones: &'a [String],
    owner: Option<OwnerReference>,
}

impl<'a> RenderContext<'a> {
    fn new(app: &'a ResilientApp, zones: &'a [String]) -> Self {
        Self {
            app,
            name: app.name(),
            namespace: app.target_namespace(),
            zones,
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

    /// Metadata of the Namespace itself (cluster-scoped).
    pub fn namespace_meta(&self, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: self.owner.clone().map(|o| vec![o]),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests;
