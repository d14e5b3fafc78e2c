//! The gate of a reconcile: may this app's children be applied now? Pure: the caller reads the
//! namespace and the nodes, this decides.

use k8s_openapi::api::core::v1::Namespace;
use kube::{Resource, ResourceExt};

use crate::api::ResilientApp;
use crate::render::{self, Desired, Plan, QuotaFit, SpecError};

/// Why an app's children are not applied in this pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Blocker {
    /// The spec has a problem CEL could not catch: wait for a change.
    InvalidSpec(Vec<SpecError>),
    /// The namespace exists and is not this app's: never adopted or touched.
    NamespaceConflict(String),
    /// `spec.quota` cannot hold even the replicas.
    QuotaTooSmall(String),
    /// Something must finish first (the namespace is being deleted): look again shortly.
    Waiting(String),
}

impl Blocker {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::NamespaceConflict(_) => "NamespaceConflict",
            Self::QuotaTooSmall(_) => "QuotaTooSmall",
            Self::Waiting(_) => "Waiting",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::InvalidSpec(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            Self::NamespaceConflict(m) | Self::QuotaTooSmall(m) | Self::Waiting(m) => m.clone(),
        }
    }

    /// Terminal until something changes (`Stalled`), as opposed to waiting (`Reconciling`).
    pub fn is_stalled(&self) -> bool {
        !matches!(self, Self::Waiting(_))
    }
}

/// The app may be applied: its plan, and a warning for the Ready message, if any.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    pub plan: Plan,
    pub warning: Option<String>,
}

impl Validated {
    pub fn render(&self, app: &ResilientApp) -> Desired {
        render::render(app, &self.plan)
    }
}

/// The app may not be applied now; the plan is still reported in the status.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocked {
    pub plan: Plan,
    pub why: Blocker,
}

pub type Gate = Result<Validated, Blocked>;

/// The plan of a gate's verdict, whichever it is.
pub fn plan_of(gate: &Gate) -> &Plan {
    match gate {
        Ok(v) => &v.plan,
        Err(b) => &b.plan,
    }
}

/// What the app's namespace, as it exists now, means for the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceVerdict {
    /// Absent (it will be created) or controlled by this app.
    Usable,
    /// Someone else's: never adopted or touched.
    Conflict(String),
    /// Being deleted, or left over from a deleted app of the same name: look again shortly.
    Wait(String),
}

/// Does `namespace` (None: it does not exist) belong to `app`?
pub fn namespace_verdict(namespace: Option<&Namespace>, app: &ResilientApp) -> NamespaceVerdict {
    let Some(ns) = namespace else {
        return NamespaceVerdict::Usable;
    };
    let name = ns.name_any();
    let uid = app.uid().unwrap_or_default();
    let controller = ns.owner_references().iter().find(|o| o.controller == Some(true));
    let ours = controller.is_some_and(|o| o.uid == uid);
    let an_app = controller.is_some_and(|o| o.kind == "ResilientApp");
    if ns.meta().deletion_timestamp.is_some() && (ours || an_app) {
        return NamespaceVerdict::Wait(format!("namespace {name} is being deleted; it is recreated once it is gone"));
    }
    match controller {
        _ if ours => NamespaceVerdict::Usable,
        Some(o) if o.kind == "ResilientApp" && o.name == app.name_any() => NamespaceVerdict::Wait(format!(
            "namespace {name} still belongs to a deleted ResilientApp {} (uid {}); waiting for garbage collection",
            o.name, o.uid
        )),
        Some(o) => NamespaceVerdict::Conflict(format!(
            "namespace {name} already exists and is controlled by {} {}; it is left untouched",
            o.kind, o.name
        )),
        None => NamespaceVerdict::Conflict(format!(
            "namespace {name} already exists and is not owned by this ResilientApp; it is left untouched (delete it, or set spec.namespace to another name)"
        )),
    }
}

/// Validation, the namespace verdict and the quota fit, in that order: the first problem blocks.
pub fn gate(app: &ResilientApp, plan: Plan, namespace: Option<&Namespace>) -> Gate {
    let errors = render::validate(app);
    if !errors.is_empty() {
        return Err(Blocked { plan, why: Blocker::InvalidSpec(errors) });
    }
    match namespace_verdict(namespace, app) {
        NamespaceVerdict::Usable => {}
        NamespaceVerdict::Conflict(m) => return Err(Blocked { plan, why: Blocker::NamespaceConflict(m) }),
        NamespaceVerdict::Wait(m) => return Err(Blocked { plan, why: Blocker::Waiting(m) }),
    }
    match render::quota_fit(app, &plan) {
        QuotaFit::TooSmall(m) => Err(Blocked { plan, why: Blocker::QuotaTooSmall(m) }),
        QuotaFit::NoRoomForSurge(m) => Ok(Validated { plan, warning: Some(m) }),
        QuotaFit::Fits => Ok(Validated { plan, warning: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ResilientAppSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    fn app() -> ResilientApp {
        let spec: ResilientAppSpec = serde_json::from_value(serde_json::json!({
            "components": [{"name": "web", "image": "x", "minAvailable": 2}]
        }))
        .unwrap();
        let mut a = ResilientApp::new("shop", spec);
        a.metadata.uid = Some("uid-1".into());
        a
    }

    fn ns(owner: Option<(&str, &str, &str)>, deleting: bool) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                owner_references: owner.map(|(kind, name, uid)| {
                    vec![OwnerReference {
                        api_version: "resilient.dev/v1alpha1".into(),
                        kind: kind.into(),
                        name: name.into(),
                        uid: uid.into(),
                        controller: Some(true),
                        block_owner_deletion: None,
                    }]
                }),
                deletion_timestamp: deleting.then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn namespace_verdicts() {
        let a = app();
        assert_eq!(namespace_verdict(None, &a), NamespaceVerdict::Usable);
        assert_eq!(
            namespace_verdict(Some(&ns(Some(("ResilientApp", "shop", "uid-1")), false)), &a),
            NamespaceVerdict::Usable
        );
        // Ours, or any app's, being deleted: wait and recreate.
        assert!(matches!(
            namespace_verdict(Some(&ns(Some(("ResilientApp", "shop", "uid-1")), true)), &a),
            NamespaceVerdict::Wait(m) if m.contains("being deleted")
        ));
        assert!(matches!(
            namespace_verdict(Some(&ns(Some(("ResilientApp", "other", "uid-9")), true)), &a),
            NamespaceVerdict::Wait(_)
        ));
        // Left over from a deleted app of the same name (another uid): wait for garbage collection.
        assert!(matches!(
            namespace_verdict(Some(&ns(Some(("ResilientApp", "shop", "uid-0")), false)), &a),
            NamespaceVerdict::Wait(m) if m.contains("uid-0")
        ));
        // Another app's, or another controller's, or nobody's: never touched.
        assert!(matches!(
            namespace_verdict(Some(&ns(Some(("ResilientApp", "other", "uid-9")), false)), &a),
            NamespaceVerdict::Conflict(m) if m.contains("ResilientApp other")
        ));
        assert!(matches!(
            namespace_verdict(Some(&ns(Some(("HelmRelease", "x", "uid-7")), true)), &a),
            NamespaceVerdict::Conflict(m) if m.contains("HelmRelease x")
        ));
        assert!(matches!(
            namespace_verdict(Some(&ns(None, false)), &a),
            NamespaceVerdict::Conflict(m) if m.contains("not owned by this ResilientApp")
        ));
    }

    #[test]
    fn gate_checks_spec_then_namespace_then_quota() {
        let zones = ["zone-a", "zone-b", "zone-c"].map(String::from);
        let mut a = app();
        let plan = Plan::for_zones(&a, &zones);
        let ok = gate(&a, plan.clone(), None).unwrap();
        assert_eq!((ok.plan.replicas["web"].replicas, ok.warning), (3, None));
        let conflict = gate(&a, plan.clone(), Some(&ns(None, false))).unwrap_err();
        assert_eq!(conflict.why.reason(), "NamespaceConflict");
        assert!(conflict.why.is_stalled());
        let waiting = gate(&a, plan.clone(), Some(&ns(Some(("ResilientApp", "shop", "uid-1")), true))).unwrap_err();
        assert!(!waiting.why.is_stalled());
        // Quota: too small blocks, no surge room only warns.
        a.spec.quota = Some(crate::api::Quota { cpu: None, memory: None, pods: Some(2) });
        assert_eq!(gate(&a, plan.clone(), None).unwrap_err().why.reason(), "QuotaTooSmall");
        a.spec.quota = Some(crate::api::Quota { cpu: None, memory: None, pods: Some(3) });
        assert!(gate(&a, plan.clone(), None).unwrap().warning.is_some_and(|w| w.contains("spec.quota.pods")));
        // An invalid spec wins over everything else.
        a.spec.limits = Some(serde_json::from_value(serde_json::json!({"defaultRequest": {"cpu": "2"}})).unwrap());
        let invalid = gate(&a, plan, Some(&ns(None, false))).unwrap_err();
        assert!(matches!(invalid.why, Blocker::InvalidSpec(ref e) if e[0].field == "spec.limits.defaultRequest.cpu"));
    }
}
