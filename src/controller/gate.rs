//! The gate of a reconcile: may this app's children be applied now? Pure: the caller reads the
//! namespace and the nodes, this decides.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};

use crate::api::{LABEL_APP, LABEL_MANAGED_BY, LABEL_RETAINED_FROM, MANAGER, ResilientApp};
use crate::render::{self, Desired, Plan, QuotaFit, SpecError, Warning};

/// Why an app's children are not applied in this pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Blocker {
    /// The spec has a problem CEL could not catch: wait for a change.
    InvalidSpec(Vec<SpecError>),
    /// A pod template sets fields the operator owns (stored before CEL rejected them): wait for a change.
    ForbiddenField(Vec<SpecError>),
    /// The namespace exists and is not this app's: never adopted or touched.
    NamespaceConflict(String),
    /// `spec.quota` cannot hold even the replicas.
    QuotaTooSmall(String),
    /// Something must finish first (the namespace is being deleted): look again shortly.
    Waiting(String),
    /// The namespace has been terminating for longer than a deletion should take.
    NamespaceStuck(String),
    /// The API server refused a write for good (admission, validation, authorization).
    Rejected(String),
}

impl Blocker {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::ForbiddenField(_) => "ForbiddenField",
            Self::NamespaceConflict(_) => "NamespaceConflict",
            Self::QuotaTooSmall(_) => "QuotaTooSmall",
            Self::Waiting(_) => "Waiting",
            Self::NamespaceStuck(_) => "NamespaceStuck",
            Self::Rejected(_) => "Rejected",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::InvalidSpec(errors) | Self::ForbiddenField(errors) => {
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            }
            Self::NamespaceConflict(m)
            | Self::QuotaTooSmall(m)
            | Self::Waiting(m)
            | Self::NamespaceStuck(m)
            | Self::Rejected(m) => m.clone(),
        }
    }

    /// Terminal until something changes (`Stalled`), as opposed to waiting (`Reconciling`).
    pub fn is_stalled(&self) -> bool {
        !matches!(self, Self::Waiting(_))
    }
}

/// The app may be applied: its plan, and what the pass must know on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    pub plan: Plan,
    /// Warnings for the Ready message and Events.
    pub warnings: Vec<Warning>,
    /// The namespace does not exist: create it (never apply over one that appeared meanwhile).
    pub create_namespace: bool,
    /// The namespace was retained from an earlier app of this name and is adopted now.
    pub adopting: bool,
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
    /// It does not exist: create it.
    Absent,
    /// This app's: labelled for it, or (from earlier versions) controlled by it.
    Ours,
    /// Kept when an app of this name was deleted: adopt it.
    Retained,
    /// Someone else's: never adopted or touched.
    Conflict(String),
    /// Being deleted, or left over from a deleted app of the same name: look again shortly.
    Wait(String),
}

/// Does `namespace` (None: it does not exist) belong to `app`?
pub fn namespace_verdict(namespace: Option<&Namespace>, app: &ResilientApp) -> NamespaceVerdict {
    let Some(ns) = namespace else {
        return NamespaceVerdict::Absent;
    };
    let (name, app_name, uid) = (ns.name_any(), app.name_any(), app.uid().unwrap_or_default());
    let label = |key: &str| ns.labels().get(key).map(String::as_str);
    let managed = label(LABEL_MANAGED_BY) == Some(MANAGER);
    let labelled_for = managed.then(|| label(LABEL_APP)).flatten();
    let retained_from = managed.then(|| label(LABEL_RETAINED_FROM)).flatten();
    // Earlier versions put a controller owner reference to the app on the namespace.
    let owner = ns.owner_references().iter().find(|o| o.controller == Some(true) && o.kind == "ResilientApp");
    let ours = labelled_for == Some(app_name.as_str()) || owner.is_some_and(|o| o.uid == uid);
    let an_app = labelled_for.is_some() || retained_from.is_some() || owner.is_some();
    if ns.meta().deletion_timestamp.is_some() && an_app {
        return NamespaceVerdict::Wait(format!("namespace {name} is being deleted; it is recreated once it is gone"));
    }
    if ours {
        return NamespaceVerdict::Ours;
    }
    if let Some(o) = owner.filter(|o| o.name == app_name) {
        return NamespaceVerdict::Wait(format!(
            "namespace {name} still belongs to a deleted ResilientApp {} (uid {}); waiting for garbage collection",
            o.name, o.uid
        ));
    }
    if retained_from == Some(app_name.as_str()) && labelled_for.is_none() && owner.is_none() {
        return NamespaceVerdict::Retained;
    }
    let whose =
        match (labelled_for, retained_from, owner, ns.owner_references().iter().find(|o| o.controller == Some(true))) {
            (Some(other), ..) => format!("belongs to ResilientApp {other}"),
            (None, Some(other), ..) => format!("was retained from ResilientApp {other}"),
            (None, None, Some(o), _) | (None, None, None, Some(o)) => format!("is controlled by {} {}", o.kind, o.name),
            (None, None, None, None) => "is not owned by this ResilientApp".to_string(),
        };
    NamespaceVerdict::Conflict(format!(
        "namespace {name} already exists and {whose}; it is left untouched (delete it, or set spec.namespace to another name)"
    ))
}

/// A namespace deleted longer ago than this is reported as stuck instead of waited for quietly.
pub const NAMESPACE_STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// Why a terminating namespace is still there, if it has been for longer than
/// [`NAMESPACE_STUCK_AFTER`]: its finalizers and what the namespace controller says is left.
pub fn stuck_namespace(ns: &Namespace, now: &Time) -> Option<String> {
    let since = ns.meta().deletion_timestamp.as_ref()?;
    let waited = now.0.duration_since(since.0);
    if waited < jiff::SignedDuration::try_from(NAMESPACE_STUCK_AFTER).ok()? {
        return None;
    }
    let finalizers = ns.spec.as_ref().and_then(|s| s.finalizers.clone()).unwrap_or_default();
    let mut why: Vec<String> = Vec::new();
    if !finalizers.is_empty() {
        why.push(format!("finalizers {}", finalizers.join(", ")));
    }
    for c in ns.status.as_ref().and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
        if c.status == "True" {
            why.push(format!("{}: {}", c.type_, c.message.as_deref().unwrap_or_default()));
        }
    }
    Some(format!(
        "namespace {} has been terminating for {}s; something keeps it ({}); the app is recreated once it is gone",
        ns.name_any(),
        waited.as_secs(),
        if why.is_empty() { "nothing reported".to_string() } else { why.join("; ") }
    ))
}

/// Validation, the namespace verdict and the quota fit, in that order: the first problem blocks.
pub fn gate(app: &ResilientApp, plan: Plan, namespace: Option<&Namespace>, now: &Time) -> Gate {
    let forbidden = render::forbidden_fields(app);
    if !forbidden.is_empty() {
        return Err(Blocked { plan, why: Blocker::ForbiddenField(forbidden) });
    }
    let mut errors = render::validate(app);
    errors.extend(render::max_replicas_errors(app, &plan));
    if !errors.is_empty() {
        return Err(Blocked { plan, why: Blocker::InvalidSpec(errors) });
    }
    let verdict = namespace_verdict(namespace, app);
    let (create_namespace, adopting) = match verdict {
        NamespaceVerdict::Absent => (true, false),
        NamespaceVerdict::Ours => (false, false),
        NamespaceVerdict::Retained => (false, true),
        NamespaceVerdict::Conflict(m) => return Err(Blocked { plan, why: Blocker::NamespaceConflict(m) }),
        NamespaceVerdict::Wait(m) => {
            let why = match namespace.and_then(|ns| stuck_namespace(ns, now)) {
                Some(stuck) => Blocker::NamespaceStuck(stuck),
                None => Blocker::Waiting(m),
            };
            return Err(Blocked { plan, why });
        }
    };
    let mut warnings = render::warnings(app);
    match render::quota_fit(app, &plan) {
        QuotaFit::TooSmall(m) => return Err(Blocked { plan, why: Blocker::QuotaTooSmall(m) }),
        QuotaFit::NoRoomForSurge(message) => warnings.push(Warning { reason: "QuotaNoSurgeRoom", message }),
        QuotaFit::Fits => {}
    }
    if let Some(message) = render::reservation_fit(app, &plan) {
        warnings.push(Warning { reason: "QuotaNoReservationRoom", message });
    }
    Ok(Validated { plan, warnings, create_namespace, adopting })
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

    fn labelled(labels: &[(&str, &str)], deleting: bool) -> Namespace {
        let mut n = ns(None, deleting);
        n.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        n
    }

    const MANAGED: (&str, &str) = (LABEL_MANAGED_BY, MANAGER);

    /// Deleted at the epoch (see `ns`): "now" a minute later.
    fn now() -> Time {
        Time(jiff::Timestamp::from_second(60).unwrap())
    }

    #[test]
    fn a_namespace_terminating_for_too_long_is_reported_with_what_keeps_it() {
        let a = app();
        let plan = Plan::for_zones(&a, &["zone-a".to_string()]);
        let mut terminating = labelled(&[MANAGED, (LABEL_APP, "shop")], true);
        terminating.spec =
            Some(k8s_openapi::api::core::v1::NamespaceSpec { finalizers: Some(vec!["kubernetes".into()]) });
        terminating.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::NamespaceCondition {
                type_: "NamespaceContentRemaining".into(),
                status: "True".into(),
                message: Some("Some resources are remaining: persistentvolumeclaims. has 1 resource instances".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        // A minute: still waiting quietly.
        assert_eq!(gate(&a, plan.clone(), Some(&terminating), &now()).unwrap_err().why.reason(), "Waiting");
        // Past the limit: stuck, Stalled, with the finalizer and what is left.
        let later = Time(jiff::Timestamp::from_second(60 * 10).unwrap());
        let stuck = gate(&a, plan, Some(&terminating), &later).unwrap_err().why;
        assert!(stuck.is_stalled());
        assert_eq!(stuck.reason(), "NamespaceStuck");
        let m = stuck.message();
        assert!(
            m.contains("terminating for 600s")
                && m.contains("finalizers kubernetes")
                && m.contains("persistentvolumeclaims"),
            "{m}"
        );
    }

    #[test]
    fn namespace_verdicts() {
        use NamespaceVerdict::*;
        let a = app();
        assert_eq!(namespace_verdict(None, &a), Absent);
        // Labelled for this app: ours. Labelled by hand without the managed-by label: not ours.
        assert_eq!(namespace_verdict(Some(&labelled(&[MANAGED, (LABEL_APP, "shop")], false)), &a), Ours);
        assert!(matches!(namespace_verdict(Some(&labelled(&[(LABEL_APP, "shop")], false)), &a), Conflict(_)));
        // Upgrade: an earlier version's owner reference to this app (this uid) is ours too.
        assert_eq!(namespace_verdict(Some(&ns(Some(("ResilientApp", "shop", "uid-1")), false)), &a), Ours);
        // Retained from an app of this name: adopted; from another app: someone else's.
        assert_eq!(namespace_verdict(Some(&labelled(&[MANAGED, (LABEL_RETAINED_FROM, "shop")], false)), &a), Retained);
        assert!(matches!(
            namespace_verdict(Some(&labelled(&[MANAGED, (LABEL_RETAINED_FROM, "cart")], false)), &a),
            Conflict(m) if m.contains("retained from ResilientApp cart")
        ));
        // Ours, or any app's, being deleted: wait and recreate.
        assert!(matches!(
            namespace_verdict(Some(&labelled(&[MANAGED, (LABEL_APP, "shop")], true)), &a),
            Wait(m) if m.contains("being deleted")
        ));
        assert!(matches!(namespace_verdict(Some(&ns(Some(("ResilientApp", "other", "uid-9")), true)), &a), Wait(_)));
        // Left over from a deleted app of the same name (another uid, earlier version): wait for GC.
        assert!(matches!(
            namespace_verdict(Some(&ns(Some(("ResilientApp", "shop", "uid-0")), false)), &a),
            Wait(m) if m.contains("uid-0")
        ));
        // Another app's, another controller's, or nobody's: never touched.
        assert!(matches!(
            namespace_verdict(Some(&labelled(&[MANAGED, (LABEL_APP, "cart")], false)), &a),
            Conflict(m) if m.contains("belongs to ResilientApp cart")
        ));
        assert!(matches!(
            namespace_verdict(Some(&ns(Some(("ResilientApp", "other", "uid-9")), false)), &a),
            Conflict(m) if m.contains("ResilientApp other")
        ));
        assert!(matches!(
            namespace_verdict(Some(&ns(Some(("HelmRelease", "x", "uid-7")), true)), &a),
            Conflict(m) if m.contains("HelmRelease x")
        ));
        assert!(matches!(
            namespace_verdict(Some(&ns(None, false)), &a),
            Conflict(m) if m.contains("not owned by this ResilientApp")
        ));
    }

    #[test]
    fn gate_checks_spec_then_namespace_then_quota() {
        let zones = ["zone-a", "zone-b", "zone-c"].map(String::from);
        let mut a = app();
        let plan = Plan::for_zones(&a, &zones);
        let ok = gate(&a, plan.clone(), None, &now()).unwrap();
        assert_eq!((ok.plan.replicas["web"].replicas, ok.create_namespace), (3, true));
        // The component has neither ports nor a probe: a warning, not a block.
        assert_eq!(ok.warnings.iter().map(|w| w.reason).collect::<Vec<_>>(), ["NoReadinessCheck"]);
        let retained = labelled(&[MANAGED, (LABEL_RETAINED_FROM, "shop")], false);
        let adopt = gate(&a, plan.clone(), Some(&retained), &now()).unwrap();
        assert_eq!((adopt.create_namespace, adopt.adopting), (false, true));
        let conflict = gate(&a, plan.clone(), Some(&ns(None, false)), &now()).unwrap_err();
        assert_eq!(conflict.why.reason(), "NamespaceConflict");
        assert!(conflict.why.is_stalled());
        let waiting =
            gate(&a, plan.clone(), Some(&labelled(&[MANAGED, (LABEL_APP, "shop")], true)), &now()).unwrap_err();
        assert!(!waiting.why.is_stalled());
        // Quota: too small blocks, no surge room only warns.
        a.spec.quota = Some(crate::api::Quota { cpu: None, memory: None, pods: Some(2) });
        assert_eq!(gate(&a, plan.clone(), None, &now()).unwrap_err().why.reason(), "QuotaTooSmall");
        a.spec.quota = Some(crate::api::Quota { cpu: None, memory: None, pods: Some(3) });
        let warned = gate(&a, plan.clone(), None, &now()).unwrap().warnings;
        assert!(warned.iter().any(|w| w.reason == "QuotaNoSurgeRoom" && w.message.contains("spec.quota.pods")));
        // An invalid spec wins over everything else.
        a.spec.limits = Some(serde_json::from_value(serde_json::json!({"defaultRequest": {"cpu": "2"}})).unwrap());
        let invalid = gate(&a, plan, Some(&ns(None, false)), &now()).unwrap_err();
        assert!(matches!(invalid.why, Blocker::InvalidSpec(ref e) if e[0].field == "spec.limits.defaultRequest.cpu"));
    }

    #[test]
    fn a_forbidden_pod_template_field_stalls_the_app_with_the_field_named() {
        let mut a = app();
        a.spec.components[0].pod_template =
            Some(serde_json::from_value(serde_json::json!({"spec": {"nodeName": "node-a-1"}})).unwrap());
        let plan = Plan::for_zones(&a, &["zone-a".to_string()]);
        let blocked = gate(&a, plan, None, &now()).unwrap_err();
        assert!(blocked.why.is_stalled());
        assert_eq!(blocked.why.reason(), "ForbiddenField");
        assert!(
            blocked.why.message().starts_with("spec.components[web].podTemplate.spec.nodeName: "),
            "{}",
            blocked.why.message()
        );
    }
}
