//! The Helm chart (`charts/resilient-operator`): one source of truth with `config/`, linted, and
//! installed, upgraded and uninstalled on the local cluster with Helm built from Go modules
//! (`e2e/tools/helm`, on the path `e2e/cluster.sh env` prints as `HELM=`).
//!
//! A test binary of its own. The other test binaries apply `config/rbac` with fixed names
//! (ClusterRole `resilient-operator`, ServiceAccount `resilient-system/resilient-operator`, ...),
//! and Helm refuses to adopt objects it does not own (and would delete them on uninstall). So the
//! release on the cluster lives in a namespace of its own, with `fullnameOverride` naming its
//! cluster-scoped objects after that namespace, and leaves the fixed-name cleanup ClusterRole to
//! whoever installed it first. What the default values render is checked without a cluster, against
//! `kubectl kustomize config/default`, object by object.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use resilient_operator::api::ResilientApp;
use serde_json::{Value, json};

const CHART: &str = "charts/resilient-operator";
/// Labels and annotations Helm adds that `config/` has no reason to carry.
const HELM_LABELS: [&str; 4] =
    ["helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"];

/// The helm binary built by `e2e/cluster.sh build`.
fn helm_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = Command::new(root().join("e2e/cluster.sh")).arg("env").output().expect("running e2e/cluster.sh env");
        let text = String::from_utf8_lossy(&out.stdout);
        let path = text.lines().find_map(|l| l.strip_prefix("export HELM=")).map(|p| PathBuf::from(p.trim()));
        match path {
            Some(p) if out.status.success() && p.is_file() => p,
            _ => panic!(
                "no helm from `e2e/cluster.sh env` (stdout {text:?}); `e2e/cluster.sh up` builds it (`make test` does it).\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    })
}

/// Run helm against the local cluster, from the repository root.
fn helm(args: &[&str]) -> Output {
    Command::new(helm_path())
        .args(args)
        .current_dir(root())
        .env("KUBECONFIG", &cluster_env().kubeconfig)
        .output()
        .expect("running helm")
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every object of a multi-document YAML stream (empty documents dropped).
fn objects(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("a YAML stream");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Objects by kind/namespace/name, without Helm's own labels and annotations, and without the
/// empty label or annotation maps left behind.
fn normalised(objects: Vec<Value>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for mut o in objects {
        let meta = o["metadata"].as_object_mut().expect("metadata");
        for (field, drop) in [("labels", &HELM_LABELS[..]), ("annotations", &[][..])] {
            if let Some(map) = meta.get_mut(field).and_then(Value::as_object_mut) {
                map.retain(|k, _| !drop.contains(&k.as_str()) && !k.starts_with("helm.sh/"));
                if map.is_empty() {
                    meta.remove(field);
                }
            }
        }
        let key = format!(
            "{}/{}/{}",
            o["kind"].as_str().unwrap_or_default(),
            o["metadata"]["namespace"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        );
        assert!(out.insert(key.clone(), o).is_none(), "{key} rendered twice");
    }
    out
}

/// Where two JSON values first differ, as `path: config value != chart value`.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    format!("{path}.{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (p, q))| first_difference(p, q, format!("{path}[{i}]")))
        }
        // kustomize writes 1.0 as 1: the same number.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        // kustomize re-folds `>-` scalars whose lines are more indented (the CEL of
        // config/admission) and adds a blank line: the same text to CEL and to readers.
        (Value::String(x), Value::String(y)) if x.split_whitespace().eq(y.split_whitespace()) => None,
        _ => (a != b).then(|| format!("{path}: {a} != {b}")),
    }
}

fn kustomize_default() -> String {
    let out = kubectl(&["kustomize", root().join("config/default").to_str().unwrap()], None);
    assert!(out.status.success(), "kubectl kustomize config/default: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn template(extra: &[&str]) -> Output {
    let mut args = vec!["template", "resilient-operator", CHART, "--namespace", "resilient-system"];
    args.extend_from_slice(extra);
    helm(&args)
}

fn template_ok(extra: &[&str]) -> BTreeMap<String, Value> {
    let out = template(extra);
    assert!(out.status.success(), "helm template {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
    normalised(objects(&String::from_utf8(out.stdout).unwrap()))
}

#[test]
fn chart_default_values_render_exactly_what_config_default_renders() {
    let chart = template_ok(&["--include-crds"]);
    let config = normalised(objects(&kustomize_default()));
    let only = |a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>| {
        a.keys().filter(|k| !b.contains_key(*k)).cloned().collect::<Vec<_>>()
    };
    assert!(
        chart.keys().eq(config.keys()),
        "the chart and config/default render different objects.\nonly in the chart: {:?}\nonly in config/default: {:?}",
        only(&chart, &config),
        only(&config, &chart)
    );
    for (key, expected) in &config {
        let got = &chart[key];
        if let Some(difference) = first_difference(expected, got, String::new()) {
            panic!("{key} differs between config/default and the chart: {difference}");
        }
    }
    // Not vacuous: the comparison covered the operator itself and the CRD.
    assert!(config.contains_key("Deployment/resilient-system/resilient-operator"), "{:?}", config.keys());
    assert!(config.contains_key("CustomResourceDefinition//resilientapps.resilient.dev"), "{:?}", config.keys());
}

/// `admissionPolicies.finalizer`: off by default; on, exactly config/admission-finalizer, and a
/// clear failure where the cluster does not serve MutatingAdmissionPolicy.
#[test]
fn chart_finalizer_policy_is_config_admission_finalizer_and_needs_its_api() {
    let policy_keys = |o: &BTreeMap<String, Value>| {
        o.keys().filter(|k| k.starts_with("MutatingAdmissionPolicy")).cloned().collect::<Vec<_>>()
    };
    assert!(policy_keys(&template_ok(&[])).is_empty(), "the finalizer policy is rendered by default");
    let refused = template(&["--set", "admissionPolicies.finalizer=true"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("admissionPolicies.finalizer"), "{stderr}");
    let chart = template_ok(&[
        "--set",
        "admissionPolicies.finalizer=true",
        "--api-versions",
        "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy",
    ]);
    let out = kubectl(&["kustomize", root().join("config/admission-finalizer").to_str().unwrap()], None);
    assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    let config = normalised(objects(&String::from_utf8(out.stdout).unwrap()));
    assert_eq!(policy_keys(&chart), config.keys().cloned().collect::<Vec<_>>());
    for (key, expected) in &config {
        if let Some(difference) = first_difference(expected, &chart[key], String::new()) {
            panic!("{key} differs between config/admission-finalizer and the chart: {difference}");
        }
    }
}

#[test]
fn chart_crds_are_the_generated_crds_and_app_version_is_the_crate_version() {
    let generated = root().join("crds");
    let chart = root().join(CHART).join("crds");
    let names = |dir: &PathBuf| {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&generated),
        names(&chart),
        "charts/resilient-operator/crds must hold what crds/ holds (make crd)"
    );
    for name in names(&generated) {
        let a = std::fs::read_to_string(generated.join(&name)).unwrap();
        let b = std::fs::read_to_string(chart.join(&name)).unwrap();
        assert!(a == b, "{CHART}/crds/{name} differs from crds/{name}: run `make crd`");
    }
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root().join(CHART).join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"), "Chart.yaml appVersion is the crate version");
}

#[test]
fn chart_lints_and_its_values_change_what_they_say() {
    let lint = helm_ok(&["lint", "--strict", CHART]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let deployment =
        |objects: &BTreeMap<String, Value>| objects["Deployment/resilient-system/resilient-operator"].clone();
    let args = |d: &Value| -> Vec<String> {
        d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let defaults = template_ok(&[]);
    assert!(args(&deployment(&defaults)).contains(&"--leader-elect".to_string()));
    assert!(!defaults.keys().any(|k| k.starts_with("Service/") || k.starts_with("ServiceMonitor/")));

    let changed = template_ok(&[
        "--set",
        "replicas=1,logFormat=text,leaderElection.enabled=false,image.tag=9.9.9,image.pullPolicy=Always",
        "--set",
        "resources.limits.memory=1Gi,metrics.port=9090,extraArgs[0]=--concurrency=4",
    ]);
    let d = deployment(&changed);
    assert_eq!(d["spec"]["replicas"], 1);
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/resilient-dev/resilient-operator:9.9.9");
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(container["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(
        args(&d),
        ["run", "--metrics-address=0.0.0.0:9090", "--log-format=text", "--concurrency=4"],
        "no --leader-elect without leader election"
    );
    assert!(!changed.keys().any(|k| k.starts_with("Role/")), "no Lease Role without leader election");

    let without_ns = template_ok(&["--set", "namespace.create=false,rbac.cleanupRole.create=false"]);
    assert!(!without_ns.contains_key("Namespace//resilient-system"));
    assert!(!without_ns.contains_key("ClusterRole//resilient-operator-cleanup"));

    // The admission policies name the release's namespace and ServiceAccount.
    let out =
        helm(&["template", "ops", CHART, "-n", "ops", "--set", "admissionPolicies.enabled=true,fullnameOverride=op"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let policies = normalised(objects(&String::from_utf8(out.stdout).unwrap()));
    let scope = &policies["ValidatingAdmissionPolicy//resilient-operator-scope"];
    assert_eq!(
        scope["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:ops:op'"
    );
    let requests = &policies["ValidatingAdmissionPolicy//resilient-app-requests"];
    assert_eq!(requests["spec"]["variables"][0]["expression"], "'ops'");
    assert!(policies.contains_key("ValidatingAdmissionPolicyBinding//resilient-app-requests"));

    let with_service = template_ok(&["--set", "metrics.service.enabled=true"]);
    let service = &with_service["Service/resilient-system/resilient-operator-metrics"];
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(service["spec"]["selector"]["app.kubernetes.io/name"], "resilient-operator");

    // The ServiceMonitor needs the Prometheus Operator's API: without it, a clear failure.
    let refused = template(&["--set", "metrics.serviceMonitor.enabled=true"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("monitoring.coreos.com/v1"));
    let monitored = template_ok(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    ]);
    let monitor = &monitored["ServiceMonitor/resilient-system/resilient-operator"];
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert!(
        monitored.contains_key("Service/resilient-system/resilient-operator-metrics"),
        "the monitor implies the Service"
    );
}

async fn wait_deployment(client: &kube::Client, ns: &str, name: &str, what: &str, check: impl Fn(&Deployment) -> bool) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(what, Duration::from_secs(60), || async { api.get_opt(name).await.ok().flatten().filter(|d| check(d)) })
        .await;
}

fn container_args(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default()
}

fn can_i(verb_resource: &[&str], user: &str) -> bool {
    let mut args = vec!["auth", "can-i"];
    args.extend_from_slice(verb_resource);
    args.extend_from_slice(&["--as", user]);
    let out = kubectl(&args, None);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Whatever the test leaves, even when it fails half-way: a left-over release (its pods and PDB)
/// would block `kubectl drain` in tests/zones.rs.
struct CleanUp {
    release_namespace: String,
    app: String,
}

impl Drop for CleanUp {
    fn drop(&mut self) {
        let _ = helm(&["uninstall", "resilient-operator", "-n", &self.release_namespace, "--wait"]);
        let _ = kubectl(&["delete", "resilientapp", &self.app, "--ignore-not-found", "--wait=false"], None);
        for ns in [&self.app, &self.release_namespace] {
            let _ = kubectl(&["delete", "namespace", ns, "--ignore-not-found", "--wait=false"], None);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_upgrade_and_uninstall_keep_every_app_namespace() {
    let client = client().await;
    let ns = unique("helm-rop");
    let app_name = unique("helm-app");
    let _clean_up = CleanUp { release_namespace: ns.clone(), app: app_name.clone() };
    let release = "resilient-operator";
    let user = format!("system:serviceaccount:{ns}:{ns}");
    // Helm stores the release in its namespace, so the namespace exists first; the chart adopts it
    // (--take-ownership) to put the Pod Security labels on it, as docs/install.md says.
    let created = kubectl(&["create", "namespace", &ns], None);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    // Cluster-scoped objects with fixed names (the operator and config/ name them so) are left to
    // config/, which the other test binaries apply.
    let names = format!(
        "fullnameOverride={ns},rbac.cleanupRole.create=false,rbac.appAuthorRole.create=false,admissionPolicies.enabled=false"
    );
    helm_ok(&["install", release, CHART, "--namespace", &ns, "--take-ownership", "--set", &names]);

    // Everything is there, valid as the API server sees it.
    let list: Value = serde_json::from_str(&helm_ok(&["list", "-n", &ns, "-o", "json"])).unwrap();
    assert_eq!(list[0]["name"], release, "{list}");
    assert_eq!(list[0]["status"], "deployed", "{list}");
    assert_eq!(list[0]["app_version"], env!("CARGO_PKG_VERSION"), "{list}");
    wait_deployment(&client, &ns, &ns, "the operator Deployment with 2 replicas and leader election", |d| {
        d.spec.as_ref().and_then(|s| s.replicas) == Some(2)
            && container_args(d).iter().any(|a| a == "--log-format=json")
            && container_args(d).iter().any(|a| a == "--leader-elect")
    })
    .await;
    let namespace = Api::<Namespace>::all(client.clone()).get(&ns).await.unwrap();
    assert_eq!(namespace.labels().get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));
    assert_eq!(namespace.annotations().get("meta.helm.sh/release-name").map(String::as_str), Some(release));
    let role = Api::<ClusterRole>::all(client.clone()).get(&ns).await.expect("the operator ClusterRole");
    let config_role: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root().join("config/rbac/role.yaml")).unwrap()).unwrap();
    assert_eq!(
        serde_json::to_value(&role.rules).unwrap(),
        config_role["rules"],
        "the ClusterRole grants what config/rbac grants"
    );
    let binding = Api::<ClusterRoleBinding>::all(client.clone()).get(&ns).await.expect("the ClusterRoleBinding");
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!((subject.name.as_str(), subject.namespace.as_deref()), (ns.as_str(), Some(ns.as_str())));
    Api::<Role>::namespaced(client.clone(), &ns).get(&format!("{ns}-leader-election")).await.expect("the Lease Role");
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .get(&format!("{ns}-leader-election"))
        .await
        .expect("its binding");
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns).get(&ns).await.expect("the PDB");
    let crd = Api::<CustomResourceDefinition>::all(client.clone()).get("resilientapps.resilient.dev").await;
    assert!(crd.is_ok(), "the CRD is installed (from the chart's crds/ when missing)");
    // The ServiceAccount can do what the operator does, and no more.
    assert!(can_i(&["watch", "resilientapps.resilient.dev"], &user));
    assert!(can_i(&["patch", "leases.coordination.k8s.io", "-n", &ns], &user));
    assert!(!can_i(&["patch", "leases.coordination.k8s.io", "-n", "default"], &user));
    assert!(!can_i(&["list", "secrets", "-n", "default"], &user));

    // An upgrade that changes values reaches the Deployment.
    helm_ok(&["upgrade", release, CHART, "-n", &ns, "--reuse-values", "--set", "replicas=1,logFormat=text"]);
    wait_deployment(&client, &ns, &ns, "the upgraded Deployment: 1 replica, text logs", |d| {
        d.spec.as_ref().and_then(|s| s.replicas) == Some(1)
            && container_args(d).iter().any(|a| a == "--log-format=text")
            && !container_args(d).iter().any(|a| a == "--log-format=json")
    })
    .await;
    let history: Value = serde_json::from_str(&helm_ok(&["history", release, "-n", &ns, "-o", "json"])).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");

    // An app with data in its namespace (no operator runs in this test binary: the app only exists).
    apply_app(
        &client,
        &json!({"apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "metadata": {"name": app_name},
                "spec": {"components": [{"name": "web", "image": "x", "minAvailable": 1}]}}),
    )
    .await;
    let app_ns = kubectl(&["create", "namespace", &app_name], None);
    assert!(app_ns.status.success(), "{}", String::from_utf8_lossy(&app_ns.stderr));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &app_name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "data"}, "stringData": {"password": "kept"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();

    helm_ok(&["uninstall", release, "-n", &ns, "--wait"]);
    // The release is gone ...
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    wait_for("the release's Deployment and ClusterRole to be deleted", Duration::from_secs(60), || async {
        let gone = deployments.get_opt(&ns).await.ok()?.is_none() && cluster_roles.get_opt(&ns).await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    assert!(helm(&["status", release, "-n", &ns]).status.code() != Some(0), "the release record is gone");
    // ... and every app, its namespace and its data are not.
    let kept_ns = Api::<Namespace>::all(client.clone()).get(&app_name).await.expect("the app namespace is kept");
    assert!(kept_ns.metadata.deletion_timestamp.is_none(), "the app namespace is being deleted");
    let kept = secrets.get("data").await.expect("the Secret in the app namespace is kept");
    assert_eq!(kept.data.unwrap()["password"].0, b"kept");
    Api::<ResilientApp>::all(client.clone()).get(&app_name).await.expect("the ResilientApp is kept");
    Api::<CustomResourceDefinition>::all(client.clone())
        .get("resilientapps.resilient.dev")
        .await
        .expect("the CRD is kept (Helm never deletes crds/)");
    let operator_ns = Api::<Namespace>::all(client.clone()).get(&ns).await.expect("the operator namespace is kept");
    assert!(operator_ns.metadata.deletion_timestamp.is_none());
    // CleanUp deletes the app (no operator runs here, so it has no finalizer) and both namespaces.
}
