//! Admission on a shared cluster (config/admission, the CRD's CEL rules, config/rbac): what app
//! authors may ask for, and what the operator's own ServiceAccount may write.
//!
//! App authors are impersonated users (`kubectl --as --as-group`) holding only the shipped
//! `resilient-app-author` ClusterRole; the operator is a `kubectl` with a token of its
//! ServiceAccount (tests/common `operator_kubeconfig`). RBAC and policies take a moment to reach
//! the API server's caches, so every expectation is polled until it holds or its deadline passes.
//! No operator runs in this binary: the apps created here stay inert and are deleted at the end.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{EvictParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use resilient_operator::api::ResilientApp;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Run kubectl; Ok(stdout) or Err(stderr).
fn run(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let out = kubectl(args, stdin);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn must(args: &[&str], stdin: Option<&str>) -> String {
    run(args, stdin).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

/// Retry `attempt` until it returns Ok, or panic after DEADLINE with the last error.
fn eventually(what: &str, attempt: impl FnMut() -> Result<(), String>) {
    if let Err(e) = poll(what, attempt) {
        panic!("{e}");
    }
}

fn poll(what: &str, mut attempt: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match attempt() {
            Ok(()) => return Ok(()),
            Err(last) if Instant::now() >= deadline => {
                return Err(format!("{what}: not so after {DEADLINE:?}; last: {last}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Somebody who writes apps: a user in a group of their own, with the shipped author role.
struct Author {
    user: String,
    group: String,
    cleanup: Cleanup,
}

impl Author {
    fn new(prefix: &str) -> Self {
        ensure_installed();
        let user = unique(prefix);
        let author = Author { group: format!("{user}-team"), cleanup: Cleanup::new(&user), user };
        let binding = format!("{}-author", author.user);
        author.cleanup.delete_later(&["clusterrolebinding", &binding]);
        must(
            &[
                "create",
                "clusterrolebinding",
                &binding,
                "--clusterrole=resilient-app-author",
                &format!("--user={}", author.user),
            ],
            None,
        );
        let user = author.user.clone();
        eventually(&format!("{user} may create resilientapps"), || {
            let can = run(&["auth", "can-i", "create", "resilientapps.resilient.dev", &format!("--as={user}")], None);
            can.ok().filter(|o| o.trim() == "yes").map(|_| ()).ok_or_else(|| "no".to_string())
        });
        author
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let identity = [format!("--as={}", self.user), format!("--as-group={}", self.group)];
        let all: Vec<&str> = identity.iter().map(String::as_str).chain(args.iter().copied()).collect();
        run(&all, stdin)
    }

    /// Grant a ClusterRole with these rules to the author's group, cluster-wide.
    fn grant(&self, name: &str, rules: Value) {
        let role = format!("{}-{name}", self.user);
        let manifest = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": role, "labels": {"resilient.dev/test": self.cleanup.label}},
            "rules": rules,
        });
        must(&["apply", "-f", "-"], Some(&manifest.to_string()));
        self.cleanup.delete_later(&["clusterrole", &role]);
        self.cleanup.delete_later(&["clusterrolebinding", &role]);
        must(
            &[
                "create",
                "clusterrolebinding",
                &role,
                &format!("--clusterrole={role}"),
                &format!("--group={}", self.group),
            ],
            None,
        );
    }
}

/// Deletes what a test created when it ends, passed or not.
struct Cleanup {
    label: String,
    objects: std::sync::Mutex<Vec<Vec<String>>>,
}

impl Cleanup {
    fn new(label: &str) -> Self {
        Cleanup { label: label.to_string(), objects: Default::default() }
    }
    fn delete_later(&self, kind_name_and_flags: &[&str]) {
        self.objects.lock().unwrap().push(kind_name_and_flags.iter().map(|s| s.to_string()).collect());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for object in self.objects.lock().unwrap().iter().rev() {
            let mut args = vec!["delete", "--ignore-not-found", "--wait=false"];
            args.extend(object.iter().map(String::as_str));
            let _ = run(&args, None);
        }
    }
}

/// config/rbac and config/admission on the cluster (as config/default installs them), and both
/// policies answering: the CRD too, since its CEL rules are part of what is tested.
fn ensure_installed() {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let crd = root().join("config/crd");
        run(&["apply", "--server-side", "--force-conflicts", "-k", crd.to_str().unwrap()], None)?;
        // A CRD just created has no conditions for a moment, and `kubectl wait` fails on that.
        poll("the CRD to be Established", || {
            run(&["wait", "--for=condition=Established", "crd/resilientapps.resilient.dev", "--timeout=30s"], None)
                .map(drop)
        })?;
        operator_kubeconfig();
        poll("the app policy to deny the operator's namespace", || {
            let probe = app(&unique("probe"), json!({"namespace": "resilient-system"}));
            expect_denied(run(&create_dry_run(), Some(&probe)), &["namespace of resilient-operator"])
        })?;
        poll("the operator policy to deny a Service in default", || {
            let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe", "namespace": "default"},
                "spec": {"ports": [{"port": 80}]}});
            expect_denied(as_operator(&create_dry_run(), Some(&svc.to_string())), &["resilient-operator may not create"])
        })?;
        // A field name the type checker does not know (a typo) would make an expression fail at
        // run time, and with failurePolicy Fail deny everything it matches.
        for policy in ["resilient-app-requests", "resilient-operator-scope"] {
            let status = run(&["get", "validatingadmissionpolicy", policy, "-o", "jsonpath={.status.typeChecking}"], None)?;
            if status.contains("expressionWarnings") {
                return Err(format!("{policy} does not type-check: {status}"));
            }
        }
        Ok(())
    });
    if let Err(e) = installed {
        panic!("config/admission is not working: {e}");
    }
}

fn create_dry_run() -> Vec<&'static str> {
    vec!["create", "--dry-run=server", "-f", "-"]
}

/// A minimal ResilientApp with these spec fields.
fn app(name: &str, spec: Value) -> String {
    let mut spec = spec;
    spec["components"] = json!([{"name": "web", "image": "registry.k8s.io/pause:3.10", "minAvailable": 1}]);
    json!({"apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "metadata": {"name": name}, "spec": spec})
        .to_string()
}

/// Ok when the request was refused with a message containing every one of `needles`.
fn expect_denied(result: Result<String, String>, needles: &[&str]) -> Result<(), String> {
    match result {
        Ok(out) => Err(format!("allowed: {out}")),
        Err(e) if needles.iter().all(|n| e.contains(n)) => Ok(()),
        Err(e) => Err(format!("denied, but the message lacks one of {needles:?}: {e}")),
    }
}

fn expect_allowed(result: Result<String, String>) -> Result<(), String> {
    result.map(|_| ())
}

/// kubectl with the operator's ServiceAccount token.
fn as_operator(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let kubeconfig = format!("--kubeconfig={}", operator_kubeconfig().display());
    let all: Vec<&str> = std::iter::once(kubeconfig.as_str()).chain(args.iter().copied()).collect();
    run(&all, stdin)
}

async fn operator_client() -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(operator_kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_security_above_restricted_needs_use_on_the_level() {
    let alice = Author::new("alice");
    let created = |a: &Author, spec: Value| a.kubectl(&create_dry_run(), Some(&app(&unique("psa"), spec)));

    eventually("restricted is allowed to an author", || {
        expect_allowed(created(&alice, json!({"podSecurity": "restricted"})))
    });
    for level in ["baseline", "privileged"] {
        let permission = format!("use podsecuritylevels/{level}");
        eventually(&format!("{level} is denied to an author"), || {
            expect_denied(
                created(&alice, json!({"podSecurity": level})),
                &["spec.podSecurity", &permission, &alice.user],
            )
        });
    }

    // `use` on baseline grants baseline, not privileged.
    alice.grant("baseline", json!([{"apiGroups": ["resilient.dev"], "resources": ["podsecuritylevels"], "resourceNames": ["baseline"], "verbs": ["use"]}]));
    eventually("baseline is allowed once granted", || {
        expect_allowed(created(&alice, json!({"podSecurity": "baseline"})))
    });
    eventually("privileged is still denied", || {
        expect_denied(
            created(&alice, json!({"podSecurity": "privileged"})),
            &["spec.podSecurity", "use podsecuritylevels/privileged"],
        )
    });

    // Updates: only a raise needs the permission; lowering and unchanged levels pass.
    let name = unique("psa-upd");
    alice.cleanup.delete_later(&["rapp", &name]);
    alice.kubectl(&["create", "-f", "-"], Some(&app(&name, json!({"podSecurity": "baseline"})))).unwrap();
    let set_level = |level: &str| {
        let patch = json!({"spec": {"podSecurity": level}}).to_string();
        alice.kubectl(&["patch", "rapp", &name, "--type=merge", "-p", &patch], None)
    };
    expect_denied(set_level("privileged"), &["spec.podSecurity", "use podsecuritylevels/privileged"]).unwrap();
    expect_allowed(set_level("restricted")).unwrap();
    expect_allowed(set_level("baseline")).unwrap();

    // An app an admin made privileged stays editable by its author, as long as the level stays.
    let approved = unique("psa-approved");
    alice.cleanup.delete_later(&["rapp", &approved]);
    must(&["create", "-f", "-"], Some(&app(&approved, json!({"podSecurity": "privileged"}))));
    let edit = json!({"spec": {"resilience": {"failoverSeconds": 20}}}).to_string();
    expect_allowed(alice.kubectl(&["patch", "rapp", &approved, "--type=merge", "-p", &edit], None)).unwrap();

    alice.grant("privileged", json!([{"apiGroups": ["resilient.dev"], "resources": ["podsecuritylevels"], "resourceNames": ["privileged"], "verbs": ["use"]}]));
    eventually("privileged is allowed once granted", || expect_allowed(set_level("privileged")));
}

#[tokio::test(flavor = "multi_thread")]
async fn access_groups_need_bind_on_the_cluster_role() {
    let bob = Author::new("bob");
    let lists = [("admins", "admin"), ("editors", "edit"), ("viewers", "view")];
    let with_group = |a: &Author, list: &str, namespace: Option<&str>| {
        let mut spec = json!({"access": {list: [format!("{}-devs", a.group)]}});
        if let Some(ns) = namespace {
            spec["namespace"] = json!(ns);
        }
        a.kubectl(&create_dry_run(), Some(&app(&unique("acc"), spec)))
    };
    for (list, role) in lists {
        let field = format!("spec.access.{list}");
        let permission = format!("bind clusterroles/{role}");
        eventually(&format!("{field} is denied to an author"), || {
            expect_denied(with_group(&bob, list, None), &[&field, &permission, &bob.user, "-devs"])
        });
    }

    // bind on admin only: admins pass, the other lists still need their own role.
    let bind = |role: &str| json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": [role], "verbs": ["bind"]}]);
    bob.grant("bind-admin", bind("admin"));
    eventually("admins allowed with bind on admin", || expect_allowed(with_group(&bob, "admins", None)));
    expect_denied(with_group(&bob, "editors", None), &["spec.access.editors", "bind clusterroles/edit"]).unwrap();
    expect_denied(with_group(&bob, "viewers", None), &["spec.access.viewers", "bind clusterroles/view"]).unwrap();
    bob.grant("bind-edit-view", json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["edit", "view"], "verbs": ["bind"]}]));
    eventually("editors allowed with bind on edit", || expect_allowed(with_group(&bob, "editors", None)));
    eventually("viewers allowed with bind on view", || expect_allowed(with_group(&bob, "viewers", None)));

    // As in RBAC, bind is checked in the app's namespace: a RoleBinding there is enough, there only.
    let carol = Author::new("carol");
    let namespace = unique("acc-ns");
    carol.cleanup.delete_later(&["namespace", &namespace]);
    must(&["create", "namespace", &namespace], None);
    let role = format!("{}-bind-view", carol.user);
    carol.cleanup.delete_later(&["clusterrole", &role]);
    must(
        &[
            "create",
            "clusterrole",
            &role,
            "--verb=bind",
            "--resource=clusterroles.rbac.authorization.k8s.io",
            "--resource-name=view",
        ],
        None,
    );
    must(
        &[
            "create",
            "rolebinding",
            "bind-view",
            "-n",
            &namespace,
            &format!("--clusterrole={role}"),
            &format!("--group={}", carol.group),
        ],
        None,
    );
    eventually("viewers allowed in the namespace where bind is granted", || {
        expect_allowed(with_group(&carol, "viewers", Some(&namespace)))
    });
    expect_denied(
        with_group(&carol, "viewers", Some(&unique("elsewhere"))),
        &["spec.access.viewers", "bind clusterroles/view"],
    )
    .unwrap();

    // Updates: keeping or removing groups someone else added needs nothing; adding one does.
    let name = unique("acc-upd");
    bob.cleanup.delete_later(&["rapp", &name]);
    must(&["create", "-f", "-"], Some(&app(&name, json!({"access": {"admins": ["ops"]}}))));
    let set_admins = |groups: Value| {
        let patch = json!({"spec": {"access": {"admins": groups}, "resilience": {"failoverSeconds": 25}}}).to_string();
        carol.kubectl(&["patch", "rapp", &name, "--type=merge", "-p", &patch], None)
    };
    expect_allowed(set_admins(json!(["ops"]))).unwrap();
    expect_denied(
        set_admins(json!(["ops", "intruders"])),
        &["spec.access.admins: adding intruders", "bind clusterroles/admin"],
    )
    .unwrap();
    expect_allowed(set_admins(json!([]))).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn system_groups_are_refused_for_everyone() {
    ensure_installed();
    for list in ["admins", "editors", "viewers"] {
        for group in [
            "system:authenticated",
            "system:unauthenticated",
            "system:masters",
            "system:serviceaccounts",
            "system:nodes",
        ] {
            // As the cluster admin of the tests (system:masters): the CRD refuses it anyway.
            let spec = json!({"access": {list: ["ops", group]}});
            let field = format!("spec.access.{list}");
            let needles = [
                &field,
                "may not name system:authenticated, system:unauthenticated, system:masters, system:serviceaccounts or any other system: group",
            ];
            expect_denied(run(&create_dry_run(), Some(&app(&unique("sys"), spec))), &needles).unwrap();
        }
    }
    // The ServiceAccounts of one namespace are a group like any other.
    let spec = json!({"access": {"viewers": ["system:serviceaccounts:ci"]}});
    run(&create_dry_run(), Some(&app(&unique("sys"), spec))).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reserved_namespaces_are_refused() {
    let dave = Author::new("dave");
    for namespace in ["kube-system", "kube-public", "default", "resilient-system"] {
        let by_spec = app(&unique("res"), json!({"namespace": namespace}));
        let needles = ["spec.namespace", &format!("may not be {namespace}")];
        eventually(&format!("{namespace} denied to an author"), || {
            expect_denied(dave.kubectl(&create_dry_run(), Some(&by_spec)), &needles)
        });
        expect_denied(run(&create_dry_run(), Some(&by_spec)), &needles).unwrap();
        // The namespace defaults to the app's name.
        expect_denied(run(&create_dry_run(), Some(&app(namespace, json!({})))), &needles).unwrap();
    }
}

/// A namespace as the operator creates it, and one that is not its own.
fn namespaces(cleanup: &Cleanup) -> (String, String) {
    let managed = unique("op-managed");
    let foreign = unique("op-foreign");
    cleanup.delete_later(&["namespace", &managed]);
    cleanup.delete_later(&["namespace", &foreign]);
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": managed, "labels": {MANAGED_BY: "resilient-operator"}}});
    eventually("the operator creates a labelled namespace", || {
        expect_allowed(as_operator(&["create", "-f", "-"], Some(&ns.to_string())))
    });
    must(&["create", "namespace", &foreign], None);
    (managed, foreign)
}

fn deployment(namespace: &str) -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]}},
        },
    })
    .to_string()
}

fn role_binding(namespace: &str, role: &str) -> String {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": format!("ops-{role}"), "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"}],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_token_does_its_normal_work() {
    ensure_installed();
    let cleanup = Cleanup::new("op-normal");
    let (managed, _) = namespaces(&cleanup);
    let create = ["create", "-f", "-"];
    as_operator(&create, Some(&deployment(&managed))).unwrap();
    as_operator(&create, Some(&role_binding(&managed, "edit"))).unwrap();
    let relabel = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}).to_string();
    as_operator(&["patch", "namespace", &managed, "--type=merge", "-p", &relabel], None).unwrap();
    as_operator(&["delete", "deployment", "web", "-n", &managed], None).unwrap();

    // Events of the cluster-scoped ResilientApp land in `default`.
    let event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": unique("op-event"), "namespace": "default"},
        "eventTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "reportingController": "resilient.dev/operator", "reportingInstance": "tests",
        "action": "Reconcile", "reason": "Test", "type": "Normal", "note": "admission test",
        "regarding": {"apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "name": "op-test"},
    });
    as_operator(&create, Some(&event.to_string())).unwrap();

    // Its leader Lease, in its own namespace.
    let lease_name = unique("op-lease");
    cleanup.delete_later(&["lease", &lease_name, "-n", "resilient-system"]);
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": lease_name, "namespace": "resilient-system"}, "spec": {"holderIdentity": "tests"}});
    as_operator(&create, Some(&lease.to_string())).unwrap();
    as_operator(
        &[
            "patch",
            "lease",
            &lease_name,
            "-n",
            "resilient-system",
            "--type=merge",
            "-p",
            r#"{"spec":{"holderIdentity":"other"}}"#,
        ],
        None,
    )
    .unwrap();

    // The status of a ResilientApp (cluster-scoped).
    let name = unique("op-status");
    cleanup.delete_later(&["rapp", &name]);
    must(&create, Some(&app(&name, json!({}))));
    let status = json!({"status": {"zones": ["zone-a"]}});
    Api::<ResilientApp>::all(operator_client().await)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("the operator may write the status of a ResilientApp");

    // Evictions (rebalancing) in its namespaces.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "evictee"},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client().await, &managed).create(&PostParams::default(), &pod).await.unwrap();
    Api::<Pod>::namespaced(operator_client().await, &managed)
        .evict("evictee", &EvictParams::default())
        .await
        .expect("the operator may evict in its namespace");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_operator_token_stays_in_its_namespaces() {
    ensure_installed();
    let cleanup = Cleanup::new("op-stolen");
    let (managed, foreign) = namespaces(&cleanup);
    let create = ["create", "-f", "-"];
    let outside = "writes only in namespaces labelled app.kubernetes.io/managed-by=resilient-operator";

    // kube-system: relabel it (e.g. to lift Pod Security), run something in it.
    let label = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}).to_string();
    expect_denied(
        as_operator(&["patch", "namespace", "kube-system", "--type=merge", "-p", &label], None),
        &["Forbidden", "may not update namespace kube-system", "before and after"],
    )
    .unwrap();
    expect_denied(
        as_operator(&create, Some(&deployment("kube-system"))),
        &["may not create deployments.apps", outside],
    )
    .unwrap();
    expect_denied(as_operator(&create, Some(&deployment("default"))), &["Forbidden", "namespace default", outside])
        .unwrap();
    expect_denied(as_operator(&create, Some(&deployment(&foreign))), &[outside]).unwrap();

    // Adopting a namespace by labelling it, or dropping the label to escape: both refused.
    let adopt = json!({"metadata": {"labels": {MANAGED_BY: "resilient-operator"}}}).to_string();
    expect_denied(
        as_operator(&["patch", "namespace", &foreign, "--type=merge", "-p", &adopt], None),
        &[&format!("may not update namespace {foreign}")],
    )
    .unwrap();
    let drop_label = format!(r#"{{"metadata":{{"labels":{{"{MANAGED_BY}":null}}}}}}"#);
    expect_denied(
        as_operator(&["patch", "namespace", &managed, "--type=merge", "-p", &drop_label], None),
        &[&format!("may not update namespace {managed}")],
    )
    .unwrap();
    let unlabelled = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": unique("op-unlabelled")}});
    expect_denied(as_operator(&create, Some(&unlabelled.to_string())), &["may not create namespace"]).unwrap();

    // cluster-admin, anywhere: RBAC already refuses (the operator may bind only admin/edit/view).
    for namespace in ["kube-system", "default", managed.as_str()] {
        expect_denied(as_operator(&create, Some(&role_binding(namespace, "cluster-admin"))), &["Forbidden"]).unwrap();
    }
    // Other cluster-scoped objects: none (RBAC, then the policy).
    let crb = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": unique("op-crb")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"}],
    });
    expect_denied(as_operator(&create, Some(&crb.to_string())), &["Forbidden"]).unwrap();

    // Eviction outside its namespaces.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "not-yours"},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client().await, &foreign).create(&PostParams::default(), &pod).await.unwrap();
    let refused =
        Api::<Pod>::namespaced(operator_client().await, &foreign).evict("not-yours", &EvictParams::default()).await;
    match refused {
        Err(kube::Error::Api(status)) if status.code == 403 && status.message.contains(outside) => {}
        other => panic!("evicting a pod in {foreign} as the operator: {other:?}"),
    }
}

/// The policy, not only RBAC: even if the operator's ClusterRole were widened to bind
/// cluster-admin (a mistake in an overlay), the policy still refuses the binding.
#[tokio::test(flavor = "multi_thread")]
async fn the_policy_refuses_binding_cluster_admin_even_if_rbac_allowed_it() {
    ensure_installed();
    let cleanup = Cleanup::new("op-widened");
    let (managed, _) = namespaces(&cleanup);
    let widened = unique("op-widened");
    cleanup.delete_later(&["clusterrole", &widened]);
    cleanup.delete_later(&["clusterrolebinding", &widened]);
    must(
        &[
            "create",
            "clusterrole",
            &widened,
            "--verb=bind",
            "--resource=clusterroles.rbac.authorization.k8s.io",
            "--resource-name=cluster-admin",
        ],
        None,
    );
    must(
        &[
            "create",
            "clusterrolebinding",
            &widened,
            &format!("--clusterrole={widened}"),
            "--serviceaccount=resilient-system:resilient-operator",
        ],
        None,
    );
    for namespace in [managed.as_str(), "kube-system"] {
        eventually(&format!("binding cluster-admin in {namespace} refused by the policy"), || {
            let needles: &[&str] = if namespace == managed {
                &["may not bind ClusterRole cluster-admin", "only the ClusterRoles admin, edit and view"]
            } else {
                &["may not create rolebindings"]
            };
            expect_denied(as_operator(&["create", "-f", "-"], Some(&role_binding(namespace, "cluster-admin"))), needles)
        });
    }
}
