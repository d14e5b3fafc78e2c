//! `components[].podTemplate` against the local control plane: what it adds reaches the
//! Deployment under the operator's fields, a nodeSelector narrows the component's zones (and its
//! replicas with them), the quota counts sidecars and init containers, the token is mounted only
//! with a ServiceAccount, and the fields the operator owns are rejected at admission by name (and,
//! in an app stored before those rules, stall it with the field named).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ResourceQuota, ServiceAccount};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Labels kwok nodes for the test and takes the label off again, whatever happens.
struct NodeLabel {
    key: String,
    nodes: Vec<String>,
}

impl NodeLabel {
    async fn put(client: &Client, key: &str, nodes: &[&str]) -> Self {
        let api: Api<Node> = Api::all(client.clone());
        for n in nodes {
            api.patch(n, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {key: "yes"}}})))
                .await
                .unwrap();
        }
        Self { key: key.to_string(), nodes: nodes.iter().map(|n| n.to_string()).collect() }
    }

    async fn add(&mut self, client: &Client, node: &str) {
        let api: Api<Node> = Api::all(client.clone());
        let patch = json!({"metadata": {"labels": {&self.key: "yes"}}});
        api.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        self.nodes.push(node.to_string());
    }
}

impl Drop for NodeLabel {
    fn drop(&mut self) {
        for n in &self.nodes {
            let _ = kubectl(&["label", "node", n, &format!("{}-", self.key)], None);
        }
    }
}

/// Deletes the test's app (and, by deletionPolicy Delete, its namespace).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "rapp", &self.0, "--wait=false"], None);
    }
}

fn app(name: &str, label: &str) -> Value {
    json!({
        "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp",
        "metadata": {"name": name},
        "spec": {
            "deletionPolicy": "Delete",
            "components": [
                {
                    "name": "web", "image": "registry.example/web:1", "minAvailable": 2,
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "podTemplate": {
                        "metadata": {"annotations": {"prometheus.io/scrape": "true"}},
                        "spec": {
                            "serviceAccountName": "web",
                            "securityContext": {"runAsUser": 65532},
                            "nodeSelector": {label: "yes"},
                            "volumes": [{"name": "config", "configMap": {"name": "web-config"}}],
                            "containers": [
                                {"name": "web", "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}]},
                                {"name": "proxy", "image": "registry.example/proxy:2",
                                 "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}
                            ],
                            "initContainers": [
                                {"name": "migrate", "image": "registry.example/migrate:1",
                                 "resources": {"requests": {"cpu": "1", "memory": "256Mi"},
                                               "limits": {"cpu": "1", "memory": "256Mi"}}}
                            ]
                        }
                    }
                },
                {"name": "plain", "image": "registry.example/plain:1", "minAvailable": 1,
                 "ports": [{"name": "http", "containerPort": 8080}]}
            ]
        }
    })
}

fn component<'a>(
    app: &'a resilient_operator::api::ResilientApp,
    name: &str,
) -> &'a resilient_operator::api::ComponentStatus {
    app.status.as_ref().unwrap().components.iter().find(|c| c.name == name).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_template_reaches_the_deployment_and_its_node_selector_decides_the_zones() {
    let started = Instant::now();
    let client = setup().await;
    let name = unique("pt");
    let label = format!("pt.resilient.test/{name}");
    // Both kwok nodes of zone-a and zone-b carry the label; no node of zone-c does.
    let mut labelled = NodeLabel::put(&client, &label, &["node-a-1", "node-a-2", "node-b-1", "node-b-2"]).await;
    let _cleanup = Cleanup(name.clone());
    apply_app(&client, &app(&name, &label)).await;

    // The pods need their ServiceAccount (and the volume its ConfigMap) in the app's namespace.
    wait_for("the app namespace", TIMEOUT, || async {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()).get_opt(&name).await.ok()?
    })
    .await;
    let sa = serde_json::from_value::<ServiceAccount>(json!({"metadata": {"name": "web"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &name).create(&PostParams::default(), &sa).await.unwrap();
    let cm =
        serde_json::from_value::<ConfigMap>(json!({"metadata": {"name": "web-config"}, "data": {"a": "b"}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &name).create(&PostParams::default(), &cm).await.unwrap();

    // Ready, and in sync: a pass that finds the merged template already live writes nothing
    // (a template field that always looked changed would keep Reconciling True).
    let ready = wait_status(&client, &name, "Ready and in sync, web planned for zone-a and zone-b", TIMEOUT, |s| {
        is_true(s, "Ready")
            && condition(s, "Reconciling").is_none()
            && s.components.iter().any(|c| c.name == "web" && c.ready_replicas == c.replicas)
    })
    .await;
    let status = ready.status.clone().unwrap();
    assert_eq!(status.zones, ["zone-a", "zone-b", "zone-c"], "the app's zones stay the cluster's");
    let web = component(&ready, "web");
    assert_eq!(web.zones, ["zone-a", "zone-b"]);
    // minAvailable 2 through the loss of one of two zones: 4 replicas (3 would do over three zones).
    assert_eq!((web.replicas, web.ready_replicas, web.ready_after_worst_zone_loss), (4, 4, 2));
    assert_eq!(web.ready_by_zone, BTreeMap::from([("zone-a".to_string(), 2), ("zone-b".to_string(), 2)]));
    let plain = component(&ready, "plain");
    assert_eq!((plain.zones.len(), plain.replicas), (3, 2));
    assert!(is_true(&status, "ZoneFailureTolerant"), "{:?}", status.conditions);

    // The Deployment has everything the template added, under the operator's fields.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    let dep = deployments.get("web").await.unwrap();
    let template = dep.spec.unwrap().template;
    assert_eq!(template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["prometheus.io/scrape"], "true");
    let spec = template.spec.unwrap();
    let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(containers, ["web", "proxy"]);
    let main = &spec.containers[0];
    assert_eq!(main.image.as_deref(), Some("registry.example/web:1"));
    assert_eq!(main.volume_mounts.as_ref().unwrap()[0].mount_path, "/etc/web");
    assert!(main.readiness_probe.as_ref().unwrap().tcp_socket.is_some(), "the default readiness check stays");
    assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, "migrate");
    assert_eq!(spec.volumes.as_ref().unwrap()[0].config_map.as_ref().unwrap().name, "web-config");
    assert_eq!(spec.service_account_name.as_deref(), Some("web"));
    assert_eq!(spec.automount_service_account_token, None, "a named ServiceAccount keeps its token");
    assert_eq!(spec.node_selector.as_ref().unwrap()[&label], "yes");
    let sc = spec.security_context.unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_non_root), (Some(65532), Some(true)));
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        assert_eq!(c.security_context.as_ref().unwrap().allow_privilege_escalation, Some(false), "{}", c.name);
    }
    let plain_spec = deployments.get("plain").await.unwrap().spec.unwrap().template.spec.unwrap();
    assert_eq!(plain_spec.automount_service_account_token, Some(false), "no ServiceAccount, no token");

    // The pods really run only where the selector lets them.
    let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), &name)
        .list(&ListParams::default().labels("resilient.dev/component=web"))
        .await
        .unwrap()
        .items;
    let zones = node_zones(&client).await;
    for p in &pods {
        let node = p.spec.as_ref().unwrap().node_name.clone().unwrap_or_default();
        assert!(["zone-a", "zone-b"].contains(&zones[&node].as_str()), "{} on {node}", p.name_any());
    }

    // Quota: per web pod max(100m main + 50m sidecar, 1 core init) = 1 core, 256Mi; plain 100m,
    // 128Mi. Pods: web 4 + 1 surge + 2 failover headroom; plain 2 + 1 + 1.
    let quota = Api::<ResourceQuota>::namespaced(client.clone(), &name).get("resilient-quota").await.unwrap();
    let hard = quota.spec.unwrap().hard.unwrap();
    assert_eq!(hard["pods"].0, "11");
    assert_eq!(hard["requests.cpu"].0, "7400m");
    assert_eq!(hard["requests.memory"].0, format!("{}Mi", 7 * 256 + 4 * 128));
    eprintln!("web on zone-a and zone-b, 4 replicas, after {:?}", started.elapsed());

    // A zone-c node gains the label: web's zones and replicas follow (the node watch sees labels).
    labelled.add(&client, "node-c-1").await;
    let widened = wait_status(&client, &name, "web planned for three zones", TIMEOUT, |s| {
        s.components.iter().any(|c| c.name == "web" && c.zones.len() == 3 && c.replicas == 3)
    })
    .await;
    assert_eq!(component(&widened, "web").zones, ["zone-a", "zone-b", "zone-c"]);
    wait_for("the web Deployment scaled to 3", TIMEOUT, || async {
        (deployments.get("web").await.ok()?.spec?.replicas == Some(3)).then_some(())
    })
    .await;
    eprintln!("widened to three zones after {:?}", started.elapsed());
}

/// `kubectl create` of `app` must fail, naming `field` and saying `why`.
fn rejected(app: &Value, field: &str, why: &str) {
    let out = kubectl(&["create", "-f", "-"], Some(&app.to_string()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted, but should be rejected: {app}");
    assert!(stderr.contains(field) && stderr.contains(why), "error does not name `{field}` / `{why}`:\n{stderr}");
}

/// Puts the generated CRD back, whatever happens.
struct RestoreCrd;

impl Drop for RestoreCrd {
    fn drop(&mut self) {
        let crd =
            serde_json::to_string(&<resilient_operator::api::ResilientApp as kube::CustomResourceExt>::crd()).unwrap();
        let out = kubectl(
            &["apply", "--server-side", "--force-conflicts", "--field-manager=resilient-tests", "-f", "-"],
            Some(&crd),
        );
        assert!(out.status.success() || std::thread::panicking(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn owned_fields_are_rejected_at_admission_and_stall_an_app_stored_before_the_rules() {
    let started = Instant::now();
    let client = setup().await;
    let name = unique("pt-bad");
    let with = |template: Value| {
        json!({
            "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp", "metadata": {"name": name},
            "spec": {"resilience": {"failoverSeconds": 20},
                     "components": [{"name": "web", "image": "x", "minAvailable": 2, "podTemplate": template}]}
        })
    };
    rejected(
        &with(json!({"spec": {"nodeName": "node-a-1"}})),
        "spec.components[0].podTemplate.spec.nodeName",
        "may not be set",
    );
    rejected(
        &with(json!({"metadata": {"labels": {"resilient.dev/component": "api"}}})),
        "spec.components[0].podTemplate.metadata.labels",
        "resilient.dev/* labels",
    );
    rejected(
        &with(json!({"spec": {"topologySpreadConstraints": [
            {"maxSkew": 3, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}]}})),
        "spec.components[0].podTemplate.spec.topologySpreadConstraints",
        "topology.kubernetes.io/zone",
    );
    let toleration = |seconds: Option<i64>| {
        let mut t = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"});
        if let Some(s) = seconds {
            t["tolerationSeconds"] = json!(s);
        }
        with(json!({"spec": {"tolerations": [t]}}))
    };
    for longer in [Some(21), None] {
        rejected(&toleration(longer), "spec.components[].podTemplate.spec.tolerations", "failoverSeconds");
    }
    // Within failoverSeconds, other tolerations and a template without containers are fine.
    let fine = toleration(Some(20));
    let out = kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&fine.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The schema is the full PodTemplateSpec: types are checked, and kubectl explain knows it.
    rejected(
        &with(json!({"spec": {"containers": "proxy"}})),
        "spec.components[0].podTemplate.spec.containers",
        "array",
    );
    let explain = kubectl(&["explain", "resilientapps.spec.components.podTemplate.spec.containers"], None);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.status.success() && text.contains("volumeMounts") && text.contains("envFrom"), "{text}");
    eprintln!("admission checks after {:?}", started.elapsed());

    // An app stored before these rules existed (CRD upgrades do not re-validate stored objects):
    // the operator stalls it itself, naming the field. Served without the component rules for a
    // moment, the CRD takes the app; then it is put back.
    let restore = RestoreCrd;
    let mut crd =
        serde_json::to_value(<resilient_operator::api::ResilientApp as kube::CustomResourceExt>::crd()).unwrap();
    let component = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["components"]
        ["items"];
    component.as_object_mut().unwrap().remove("x-kubernetes-validations").expect("the component's CEL rules");
    let out = kubectl(
        &["apply", "--server-side", "--force-conflicts", "--field-manager=resilient-tests", "-f", "-"],
        Some(&crd.to_string()),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut stored = with(json!({"spec": {"nodeName": "node-a-1"}}));
    stored["spec"]["deletionPolicy"] = json!("Delete");
    let _cleanup = Cleanup(name.clone());
    wait_for("the CRD without its component rules served", TIMEOUT, || async {
        kubectl(&["create", "-f", "-"], Some(&stored.to_string())).status.success().then_some(())
    })
    .await;
    drop(restore);
    let stalled = wait_status(&client, &name, "Stalled with reason ForbiddenField", TIMEOUT, |s| {
        condition(s, "Stalled").is_some_and(|c| c.status == "True" && c.reason == "ForbiddenField")
    })
    .await;
    let message = &condition(stalled.status.as_ref().unwrap(), "Stalled").unwrap().message;
    assert!(message.starts_with("spec.components[web].podTemplate.spec.nodeName: may not be set"), "{message}");
    let event = event_message(&client, &name, "ForbiddenField", TIMEOUT).await;
    assert!(event.contains("spec.components[web].podTemplate.spec.nodeName"), "{event}");
    // Nothing was created for it.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &name);
    assert!(deployments.list(&ListParams::default()).await.map(|l| l.items.is_empty()).unwrap_or(true));
    eprintln!("stored app stalled after {:?}", started.elapsed());
}
