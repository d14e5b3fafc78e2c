//! The install manifests: `config/default` renders with kustomize and passes a server-side
//! dry-run apply on the local cluster.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn config_default_renders_and_passes_a_server_side_dry_run() {
    let client = client().await;
    ensure_crd(&client).await;
    let default = root().join("config/default");
    let rendered = kubectl(&["kustomize", default.to_str().unwrap()], None);
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let text = String::from_utf8(rendered.stdout).unwrap();
    for kind in [
        "kind: CustomResourceDefinition",
        "kind: ClusterRole\n",
        "kind: ClusterRoleBinding",
        "kind: ServiceAccount",
        "kind: Role\n",
        "kind: Deployment",
        "kind: PodDisruptionBudget",
        "kind: Namespace",
        "kind: ValidatingAdmissionPolicy\n",
        "kind: ValidatingAdmissionPolicyBinding",
        "name: resilient-app-author",
    ] {
        assert!(text.contains(kind), "config/default lacks {kind:?}");
    }
    // The operator namespace must exist for a dry run of the objects inside it.
    let _ = kubectl(&["create", "namespace", "resilient-system"], None);
    let dry_run = kubectl(
        &["apply", "--server-side", "--dry-run=server", "--force-conflicts", "-k", default.to_str().unwrap()],
        None,
    );
    assert!(dry_run.status.success(), "{}", String::from_utf8_lossy(&dry_run.stderr));
    let out = String::from_utf8_lossy(&dry_run.stdout);
    for object in [
        "deployment.apps/resilient-operator",
        "validatingadmissionpolicy.admissionregistration.k8s.io/resilient-app-requests",
        "validatingadmissionpolicy.admissionregistration.k8s.io/resilient-operator-scope",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/resilient-operator-scope",
        "clusterrole.rbac.authorization.k8s.io/resilient-app-author",
    ] {
        assert!(out.contains(&format!("{object} serverside-applied (server dry run)")), "{object} missing in:\n{out}");
    }
}
