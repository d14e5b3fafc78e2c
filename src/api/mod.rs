//! The `ResilientApp` custom resource (`resilient.dev/v1alpha1`), as fixed by `docs/api.md`.
//!
//! Every rule the API server can check by itself is in the schema or in CEL, so bad input is
//! rejected at `kubectl apply` with a message that names the field.

mod conditions;
pub mod pod_template;

pub use conditions::{ConditionType, Conditions};

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscalerBehavior, MetricSpec};
use k8s_openapi::api::core::v1::{ContainerPort, EnvVar, PodTemplateSpec, Probe, ResourceRequirements};
use k8s_openapi::api::networking::v1::{NetworkPolicyEgressRule, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Labels every generated object carries.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "resilient-operator";
pub const LABEL_APP: &str = "resilient.dev/app";
pub const LABEL_COMPONENT: &str = "resilient.dev/component";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Put on every ResilientApp: the operator deletes (or keeps) what the app owns itself.
pub const FINALIZER: &str = "resilient.dev/cleanup";
/// On a namespace kept after its app was deleted: the name of that app, which may adopt it again.
pub const LABEL_RETAINED_FROM: &str = "resilient.dev/retained-from";

/// Upper bounds keep the CEL cost estimate of the validation rules bounded.
const MAX_COMPONENTS: u32 = 32;
/// The largest minAvailable and replicas of a component. The API server does not enforce
/// `format: int32` for custom resources: without a maximum, a value past i32 is stored and then
/// cannot be read, and huge values size quotas of hundreds of thousands of pods.
pub const MAX_REPLICAS: i32 = 10_000;
/// The largest explicit `quota.pods`.
pub const MAX_QUOTA_PODS: i32 = 1_000_000;
const MAX_GROUPS: u32 = 64;

/// `default` and `kube-*` belong to the cluster; no app may claim them. (The operator's own
/// namespace is refused by a ValidatingAdmissionPolicy in config/admission: its name is not known
/// to the CRD.)
const RESERVED_NAMESPACE_RULE: &str = "!((has(self.spec.__namespace__) ? self.spec.__namespace__ : self.metadata.name) == 'default' || (has(self.spec.__namespace__) ? self.spec.__namespace__ : self.metadata.name).startsWith('kube-'))";
const RESERVED_NAMESPACE_MESSAGE: &str = "'spec.namespace (or metadata.name when spec.namespace is absent) may not be ' + (has(self.spec.__namespace__) ? self.spec.__namespace__ : self.metadata.name) + ': default and kube-* belong to the cluster, choose another namespace'";

/// Groups no access list may name, whoever asks: `system:` groups are Kubernetes' own
/// (`system:authenticated` / `system:unauthenticated`: everyone; `system:masters`: cluster-admin;
/// `system:serviceaccounts`: every ServiceAccount; `system:nodes`: every kubelet). Only
/// `system:serviceaccounts:<namespace>`, the ServiceAccounts of one namespace, may be listed.
macro_rules! group_rule {
    () => {
        "self.all(g, !g.startsWith('system:') || g.matches('^system:serviceaccounts:[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))"
    };
}
macro_rules! group_message {
    ($field:literal) => {
        concat!(
            $field,
            " may not name system:authenticated, system:unauthenticated, system:masters, system:serviceaccounts ",
            "or any other system: group: those belong to Kubernetes (everyone, cluster-admins, every ServiceAccount, ",
            "every node); only system:serviceaccounts:<namespace> may be listed"
        )
    };
}

/// A whole application: its namespace, guardrails and zone-spread workloads.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "resilient.dev",
    version = "v1alpha1",
    kind = "ResilientApp",
    plural = "resilientapps",
    shortname = "rapp",
    shortname = "rapps",
    status = "ResilientAppStatus",
    derive = "PartialEq",
    doc = "An application that survives the loss of a zone: its namespace, guardrails and zone-spread components.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Tolerant", type_ = "string", json_path = ".status.conditions[?(@.type==\"ZoneFailureTolerant\")].status"),
    printcolumn(name = "Zones", type_ = "string", json_path = ".status.zones"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].message", priority = 1),
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name must be at most 63 characters (it is used as a label value)"),
    validation = Rule::new("has(self.spec.__namespace__) || self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name names the app namespace, so it must be a DNS label (lowercase letters, digits, '-'), or set spec.namespace"),
    validation = Rule::new("(has(self.spec.__namespace__) ? self.spec.__namespace__ : self.metadata.name) == (has(oldSelf.spec.__namespace__) ? oldSelf.spec.__namespace__ : oldSelf.metadata.name)")
        .message("spec.namespace is immutable: create a new ResilientApp to move an app to another namespace")
        .field_path(".spec.namespace"),
    validation = Rule::new(RESERVED_NAMESPACE_RULE)
        .message(Message::Expression(RESERVED_NAMESPACE_MESSAGE.into()))
        .field_path(".spec.namespace"),
)]
#[x_kube(
    validation = Rule::new("self.components.all(c, !has(c.allowFrom) || c.allowFrom.all(a, self.components.exists(d, d.name == a)))")
        .message("spec.components[].allowFrom may only name components of this app")
        .field_path(".components"),
    validation = Rule::new("self.components.all(c, self.components.exists_one(d, d.name == c.name))")
        .message("spec.components[].name must be unique within the app")
        .field_path(".components"),
    validation = Rule::new(pod_template::FAILOVER_TOLERATION_RULE)
        .message(pod_template::FAILOVER_TOLERATION_MESSAGE)
        .field_path(".components"),
)]
#[serde(rename_all = "camelCase")]
pub struct ResilientAppSpec {
    /// Namespace the app lives in. Defaults to metadata.name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,

    /// Pod Security Standard enforced on the namespace (enforce, warn and audit labels).
    #[serde(default)]
    pub pod_security: PodSecurityLevel,

    /// What deleting the app does to its namespace. Retain (default): the operator's children go,
    /// the namespace goes only if nothing else is left in it, else it is kept and labelled
    /// resilient.dev/retained-from. Delete: the namespace and everything in it. Orphan: everything
    /// keeps running, without the operator.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How many zones may be lost at once, and how fast pods fail over.
    #[serde(default)]
    pub resilience: Resilience,

    /// ResourceQuota hard limits. Fields left out are computed from the components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,

    /// LimitRange container defaults. Defaults: request 100m/128Mi, limit 500m/512Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,

    /// Network isolation of the namespace.
    #[serde(default)]
    pub network: Network,

    /// Groups bound to the built-in admin, edit and view ClusterRoles in the app namespace.
    #[serde(default)]
    pub access: Access,

    /// The microservices of the app.
    #[schemars(length(min = 1, max = MAX_COMPONENTS))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub components: Vec<Component>,
}

/// What deleting a ResilientApp does to what it owns.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the operator's children; delete the namespace only when nothing else is left in it.
    #[default]
    Retain,
    /// Delete the namespace and everything in it.
    Delete,
    /// Leave everything running and drop the operator's ownership.
    Orphan,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    #[default]
    Restricted,
    Baseline,
    Privileged,
}

impl PodSecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restricted => "restricted",
            Self::Baseline => "baseline",
            Self::Privileged => "privileged",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resilience {
    /// Zones that may be lost at once while every component keeps minAvailable ready pods.
    #[serde(default = "default_zone_failures")]
    #[schemars(range(min = 0, max = 2))]
    pub zone_failures_tolerated: u8,

    /// Allow-list of zones. Empty: every zone with ready, schedulable nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63)))]
    pub zones: Vec<String>,

    /// Seconds pods stay bound to an unreachable or not-ready node before they are replaced
    /// (the Kubernetes default is 300).
    #[serde(default = "default_failover_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub failover_seconds: u32,

    /// Restore an even spread after a lost zone comes back.
    #[serde(default = "default_true")]
    pub rebalance: bool,

    /// Keep placeholder pods (lowest priority, preempted by replacements) in every zone, sized to
    /// the replacements that zone would receive in the worst loss of zoneFailuresTolerated zones.
    /// They count against the app's quota.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reserve_capacity: bool,
}

impl Default for Resilience {
    fn default() -> Self {
        Self {
            zone_failures_tolerated: default_zone_failures(),
            zones: Vec::new(),
            failover_seconds: default_failover_seconds(),
            rebalance: true,
            reserve_capacity: false,
        }
    }
}

fn default_zone_failures() -> u8 {
    1
}
fn default_failover_seconds() -> u32 {
    30
}
fn default_true() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_QUOTA_PODS))]
    pub pods: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Requests given to containers that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_request: Option<CpuMemory>,
    /// Limits given to containers that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<CpuMemory>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CpuMemory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Strict: default-deny ingress and egress, DNS allowed, components talk only as allowFrom says.
    #[serde(default)]
    pub isolation: Isolation,
    /// Extra peers allowed in to every component (for example the ingress controller's namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_from: Vec<NetworkPolicyPeer>,
    /// Extra destinations (peers and ports) every pod of the app may reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_to: Vec<NetworkPolicyEgressRule>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Isolation {
    #[default]
    Strict,
    None,
}

/// Who may add a group here is decided at admission (config/admission): the requester must be
/// allowed to `bind` the ClusterRole, as Kubernetes requires for a RoleBinding.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct Access {
    /// Groups bound to the `admin` ClusterRole in the app namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_GROUPS), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new(group_rule!()).message(group_message!("spec.access.admins")))]
    pub admins: Vec<String>,
    /// Groups bound to the `edit` ClusterRole in the app namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_GROUPS), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new(group_rule!()).message(group_message!("spec.access.editors")))]
    pub editors: Vec<String>,
    /// Groups bound to the `view` ClusterRole in the app namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_GROUPS), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new(group_rule!()).message(group_message!("spec.access.viewers")))]
    pub viewers: Vec<String>,
}

/// One microservice of the app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.replicas) || self.replicas >= self.minAvailable")
        .message("spec.components[].replicas must be >= minAvailable")
        .field_path(".replicas"),
    validation = Rule::new(pod_template::NODE_NAME_RULE)
        .message(pod_template::NODE_NAME_MESSAGE)
        .field_path(".podTemplate.spec.nodeName"),
    validation = Rule::new(pod_template::LABELS_RULE)
        .message(pod_template::LABELS_MESSAGE)
        .field_path(".podTemplate.metadata.labels"),
    validation = Rule::new(pod_template::ZONE_SPREAD_RULE)
        .message(pod_template::ZONE_SPREAD_MESSAGE)
        .field_path(".podTemplate.spec.topologySpreadConstraints"),
    validation = Rule::new("has(self.volumeClaims) == has(oldSelf.volumeClaims)")
        .message("spec.components[].volumeClaims cannot be added or removed: a component is a StatefulSet (with volumeClaims) or a Deployment for its whole life; add a component under another name and remove this one")
        .field_path(".volumeClaims"),
    validation = Rule::new("!has(self.volumeClaims) || size(self.name) <= 52")
        .message("spec.components[].name of a component with volumeClaims must be at most 52 characters (StatefulSet pods are labelled with the name plus a revision hash)")
        .field_path(".name"),
    validation = Rule::new("!self.name.contains('-placeholder')")
        .message("spec.components[].name may not contain '-placeholder': those names are reserved for the placeholder pods of resilience.reserveCapacity")
        .field_path(".name"),
    validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))")
        .message("spec.components[].replicas and spec.components[].autoscaling are mutually exclusive: with autoscaling the HorizontalPodAutoscaler sets the replicas, between the zone-survival floor and autoscaling.maxReplicas")
        .field_path(".autoscaling"),
    validation = Rule::new("!(has(self.volumeClaims) && has(self.autoscaling))")
        .message("spec.components[].autoscaling is not supported with volumeClaims: a stateful component's pods are pinned to their zonal volumes, so its replicas stay as planned")
        .field_path(".autoscaling"),
)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    /// DNS-1035 label, unique in the list: names the Deployment, PodDisruptionBudget and Service.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub image: String,
    /// Ready pods guaranteed even while zoneFailuresTolerated zones are down.
    #[schemars(range(min = 1, max = MAX_REPLICAS))]
    pub min_available: i32,
    /// Replica count. When absent it is computed from minAvailable and the usable zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_REPLICAS))]
    pub replicas: Option<i32>,
    /// A HorizontalPodAutoscaler sets the replicas, never below the zone-survival replica count.
    /// Mutually exclusive with replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Box<Probe>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Box<Probe>>,
    /// When present, a Service exposes the component's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ComponentService>,
    /// Components of this app allowed to connect to this one under Strict isolation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_COMPONENTS), inner(length(min = 1, max = 63)))]
    pub allow_from: Vec<String>,
    /// core/v1 PodTemplateSpec merged under what the operator owns: the container named like the
    /// component merges into the main container, any other is a sidecar; volumes, init containers,
    /// nodeSelector, affinity, tolerations (added to the operator's), ServiceAccount, pod
    /// securityContext, labels and annotations are kept. The operator's fields win; it owns
    /// nodeName, the resilient.dev/* labels, the zone spread and the failover tolerations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = pod_template::pod_template_schema)]
    pub pod_template: Option<Box<PodTemplateSpec>>,
    /// Persistent volumes of every pod: present, the component is a StatefulSet (one claim per pod
    /// and entry) instead of a Deployment. Immutable, like a StatefulSet's volumeClaimTemplates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.components[].volumeClaims is immutable (a StatefulSet's volumeClaimTemplates cannot change)"))]
    pub volume_claims: Vec<VolumeClaim>,
}

impl Component {
    /// A component with volume claims runs as a StatefulSet on zonal volumes: its pods cannot move.
    pub fn is_stateful(&self) -> bool {
        !self.volume_claims.is_empty()
    }
}

/// One persistent volume per pod of a stateful component.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaim {
    /// Names the claim template, the pod volume and (with the pod name) each PersistentVolumeClaim.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Storage requested per pod.
    pub size: Quantity,
    /// Should have volumeBindingMode WaitForFirstConsumer (warned about otherwise): the volume is
    /// then created in the zone the scheduler chose for the pod, so the zone spread holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Where the main container mounts it.
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^/"))]
    pub mount_path: String,
}

/// An autoscaling/v2 HorizontalPodAutoscaler for the component. Its minReplicas is the replica
/// count that keeps minAvailable through the loss of zoneFailuresTolerated zones (the floor),
/// recomputed as zones are lost and come back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// The most replicas the autoscaler may run. Below the floor the app is Stalled.
    #[schemars(range(min = 1, max = MAX_REPLICAS))]
    pub max_replicas: i32,
    /// autoscaling/v2 MetricSpecs. Default: average CPU utilization 80 % of requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), transform = without_inner_descriptions)]
    pub metrics: Vec<MetricSpec>,
    /// autoscaling/v2 scaling behavior (stabilization windows, policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_inner_descriptions)]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// The autoscaling/v2 types are documented by Kubernetes (`kubectl explain hpa.spec`): their
/// descriptions are left out of the CRD, as for the pod template, to keep it small.
fn without_inner_descriptions(schema: &mut schemars::Schema) {
    if let Some(obj) = schema.as_object_mut() {
        obj.iter_mut().filter(|(k, _)| *k != "description").for_each(|(_, v)| pod_template::strip_descriptions(v));
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ComponentService {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Observed state, written only when it changes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResilientAppStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Usable zones for this app.
    #[serde(default)]
    pub zones: Vec<String>,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub components: Vec<ComponentStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub name: String,
    /// The zones this component can use: the app's usable zones its nodeSelector, node affinity
    /// and tolerations leave it. Its replicas are computed for these.
    #[serde(default)]
    pub zones: Vec<String>,
    /// The planned replicas, or, with autoscaling, what the autoscaler runs now.
    pub replicas: i32,
    pub ready_replicas: i32,
    pub min_available: i32,
    #[serde(default)]
    pub ready_by_zone: BTreeMap<String, i32>,
    pub ready_after_worst_zone_loss: i32,
}

impl ResilientApp {
    /// The namespace this app owns: spec.namespace or metadata.name.
    pub fn target_namespace(&self) -> String {
        self.spec.namespace.clone().unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    pub fn name(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
