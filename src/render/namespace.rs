//! The app Namespace (with Pod Security Admission labels) and the access RoleBindings.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};

use super::RenderContext;

pub(super) fn namespace(ctx: &RenderContext) -> Namespace {
    let level = ctx.app.spec.pod_security.as_str();
    let mut labels = ctx.labels();
    for mode in ["enforce", "warn", "audit"] {
        labels.insert(format!("pod-security.kubernetes.io/{mode}"), level.to_string());
    }
    Namespace { metadata: ctx.namespace_meta(labels), ..Default::default() }
}

/// One RoleBinding per non-empty access list, to the built-in admin, edit and view ClusterRoles.
pub(super) fn role_bindings(ctx: &RenderContext) -> Vec<RoleBinding> {
    let access = &ctx.app.spec.access;
    [
        ("resilient-admins", "admin", &access.admins),
        ("resilient-editors", "edit", &access.editors),
        ("resilient-viewers", "view", &access.viewers),
    ]
    .into_iter()
    .filter(|(_, _, groups)| !groups.is_empty())
    .map(|(name, role, groups)| RoleBinding {
        metadata: ctx.meta(name, ctx.labels()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(
            groups
                .iter()
                .map(|g| Subject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Group".into(),
                    name: g.clone(),
                    namespace: None,
                })
                .collect(),
        ),
    })
    .collect()
}
