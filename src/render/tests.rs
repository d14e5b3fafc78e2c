use super::*;
use crate::api::{Component, ResilientAppSpec};
use k8s_openapi::api::core::v1::{ContainerPort, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Render for zones that are all usable.
fn render(app: &ResilientApp, zones: &[String]) -> Desired {
    super::render(app, &Plan::for_zones(app, zones))
}

fn zones(n: usize) -> Vec<String> {
    ["zone-a", "zone-b", "zone-c", "zone-d"][..n].iter().map(|z| z.to_string()).collect()
}

fn component(name: &str, min_available: i32) -> Component {
    serde_json::from_value(serde_json::json!({
        "name": name, "image": "registry.example/app:1", "minAvailable": min_available,
        "ports": [{"name": "http", "containerPort": 8080}],
    }))
    .unwrap()
}

fn app(components: Vec<Component>) -> ResilientApp {
    let spec: ResilientAppSpec = serde_json::from_value(serde_json::json!({"components": []})).unwrap();
    let mut app = ResilientApp::new("shop", ResilientAppSpec { components, ..spec });
    app.metadata.uid = Some("1234".into());
    app
}

fn q(s: &str) -> Quantity {
    Quantity(s.into())
}

#[test]
fn defaults_from_an_almost_empty_spec() {
    let spec: ResilientAppSpec =
        serde_json::from_value(serde_json::json!({"components": [{"name": "web", "image": "x", "minAvailable": 2}]}))
            .unwrap();
    assert_eq!(spec.resilience.zone_failures_tolerated, 1);
    assert_eq!(spec.resilience.failover_seconds, 30);
    assert!(spec.resilience.rebalance);
    assert_eq!(spec.pod_security, crate::api::PodSecurityLevel::Restricted);
    assert_eq!(spec.network.isolation, crate::api::Isolation::Strict);
}

#[test]
fn every_child_is_labelled_and_owned() {
    let mut web = component("web", 4);
    web.service = Some(Default::default());
    let mut a = app(vec![web, component("worker", 1)]);
    a.spec.access.viewers = vec!["devs".into()];
    let d = render(&a, &zones(3));
    // The namespace is labelled, never owned: deleting the app must not garbage-collect its data.
    assert!(d.namespace.metadata.owner_references.is_none());
    let mut metas = vec![&d.namespace.metadata, &d.resource_quota.metadata, &d.limit_range.metadata];
    metas.extend(d.network_policies.iter().map(|o| &o.metadata));
    metas.extend(d.role_bindings.iter().map(|o| &o.metadata));
    metas.extend(d.deployments.iter().map(|o| &o.metadata));
    metas.extend(d.pod_disruption_budgets.iter().map(|o| &o.metadata));
    metas.extend(d.services.iter().map(|o| &o.metadata));
    assert_eq!(metas.len(), 3 + 2 + 1 + 2 + 2 + 1);
    for m in metas {
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "resilient-operator");
        assert_eq!(labels["resilient.dev/app"], "shop");
        assert!(!labels.contains_key("app.kubernetes.io/instance"));
        assert!(!labels.contains_key("argocd.argoproj.io/instance"));
        if m.name.as_deref() != Some("shop") {
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
                ("ResilientApp", "1234", Some(true))
            );
            assert_eq!(m.namespace.as_deref(), Some("shop"));
        }
    }
}

#[test]
fn namespace_carries_pod_security_labels() {
    let mut a = app(vec![component("web", 1)]);
    a.spec.pod_security = crate::api::PodSecurityLevel::Baseline;
    a.spec.namespace = Some("shop-prod".into());
    let ns = render(&a, &zones(3)).namespace;
    assert_eq!(ns.metadata.name.as_deref(), Some("shop-prod"));
    let labels = ns.metadata.labels.unwrap();
    for mode in ["enforce", "warn", "audit"] {
        assert_eq!(labels[&format!("pod-security.kubernetes.io/{mode}")], "baseline");
    }
}

#[test]
fn deployment_spreads_across_zones_and_fails_over_fast() {
    let mut a = app(vec![component("web", 4)]);
    a.spec.resilience.failover_seconds = 12;
    let d = render(&a, &zones(3));
    let dep = &d.deployments[0];
    let spec = dep.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(6));
    let rolling = spec.strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(2)));
    let pod = spec.template.spec.as_ref().unwrap();
    let tsc = pod.topology_spread_constraints.as_ref().unwrap();
    let zone = tsc.iter().find(|t| t.topology_key == "topology.kubernetes.io/zone").unwrap();
    assert_eq!((zone.max_skew, zone.when_unsatisfiable.as_str()), (1, "DoNotSchedule"));
    assert_eq!(zone.node_taints_policy.as_deref(), Some("Honor"));
    assert_eq!(zone.match_label_keys.as_deref(), Some(&["pod-template-hash".to_string()][..]));
    assert_eq!(zone.min_domains, None);
    let host = tsc.iter().find(|t| t.topology_key == "kubernetes.io/hostname").unwrap();
    assert_eq!(host.when_unsatisfiable, "ScheduleAnyway");
    let tolerations = pod.tolerations.as_ref().unwrap();
    for key in ["node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"] {
        let t = tolerations.iter().find(|t| t.key.as_deref() == Some(key)).unwrap();
        assert_eq!((t.effect.as_deref(), t.toleration_seconds), (Some("NoExecute"), Some(12)));
    }
    // Pods carry the selector labels.
    let labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(&labels[k], v);
    }
    assert!(pod.affinity.is_none());
}

#[test]
fn restricted_pods_pass_pod_security() {
    let d = render(&app(vec![component("web", 1)]), &zones(3));
    let pod = d.deployments[0].spec.as_ref().unwrap().template.spec.clone().unwrap();
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
}

#[test]
fn zone_allow_list_becomes_node_affinity() {
    let mut a = app(vec![component("web", 2)]);
    a.spec.resilience.zones = vec!["zone-a".into(), "zone-b".into()];
    let d = render(&a, &zones(2));
    let pod = d.deployments[0].spec.as_ref().unwrap().template.spec.clone().unwrap();
    let term = &pod
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms[0];
    let expr = &term.match_expressions.as_ref().unwrap()[0];
    assert_eq!(expr.key, "topology.kubernetes.io/zone");
    assert_eq!(expr.values.as_deref(), Some(&["zone-a".to_string(), "zone-b".to_string()][..]));
    // Two zones, one may be lost: all of minAvailable must fit in one zone.
    assert_eq!(d.deployments[0].spec.as_ref().unwrap().replicas, Some(4));
}

#[test]
fn pdb_allows_what_the_guarantee_allows_but_never_blocks_drains() {
    let mut a = app(vec![component("web", 4), component("solo", 2)]);
    a.spec.components[1].replicas = Some(2);
    let d = render(&a, &zones(3));
    let pdb = |i: usize| d.pod_disruption_budgets[i].spec.clone().unwrap();
    assert_eq!(pdb(0).max_unavailable, Some(IntOrString::Int(2)));
    assert_eq!(pdb(0).unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));
    assert_eq!(pdb(1).max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn service_only_for_components_that_ask() {
    let mut web = component("web", 2);
    web.service = Some(crate::api::ComponentService { type_: crate::api::ServiceType::LoadBalancer });
    let d = render(&app(vec![web, component("worker", 1)]), &zones(3));
    assert_eq!(d.services.len(), 1);
    let spec = d.services[0].spec.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8080));
}

#[test]
fn strict_network_policies() {
    let mut api = component("api", 2);
    api.allow_from = vec!["web".into()];
    api.service = Some(Default::default());
    let mut web = component("web", 2);
    web.service = Some(Default::default());
    let mut a = app(vec![web, api]);
    a.spec.network.ingress_from = vec![
        serde_json::from_value(serde_json::json!({"namespaceSelector": {"matchLabels": {"name": "ingress"}}})).unwrap(),
    ];
    let d = render(&a, &zones(3));
    let names: Vec<_> = d.network_policies.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "resilient-default-deny",
            "resilient-allow-dns-and-app-egress",
            "resilient-api-ingress",
            "resilient-allow-ingress-from-to-web"
        ]
    );
    // ingressFrom reaches only the entry point (web: a Service, no allowFrom), not api (which takes
    // only web), and only on web's ports.
    let extra = d.network_policies[3].spec.clone().unwrap();
    assert_eq!(extra.pod_selector.unwrap().match_labels.unwrap()["resilient.dev/component"], "web");
    let rule = &extra.ingress.unwrap()[0];
    assert_eq!(
        rule.ports.as_ref().unwrap().iter().map(|p| p.port.clone()).collect::<Vec<_>>(),
        [Some(IntOrString::Int(8080))]
    );
    let deny = d.network_policies[0].spec.clone().unwrap();
    assert_eq!(deny.policy_types, Some(vec!["Ingress".to_string(), "Egress".to_string()]));
    assert!(deny.ingress.is_none() && deny.egress.is_none());
    // Egress only (never with the deny: see docs/api.md), to DNS on 53 and to the app's pods.
    let egress = d.network_policies[1].spec.clone().unwrap();
    assert_eq!(egress.policy_types, Some(vec!["Egress".to_string()]));
    let rules = egress.egress.unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0].ports.as_ref().unwrap().iter().map(|p| p.port.clone()).collect::<Vec<_>>(),
        [Some(IntOrString::Int(53)), Some(IntOrString::Int(53))]
    );
    assert!(rules[1].ports.is_none() && rules[1].to.as_ref().unwrap()[0].pod_selector.is_some());
    let api_in = d.network_policies[2].spec.clone().unwrap();
    let rule = &api_in.ingress.unwrap()[0];
    let from = rule.from.as_ref().unwrap()[0].pod_selector.clone().unwrap();
    assert_eq!(from.match_expressions.unwrap()[0].values, Some(vec!["web".to_string()]));
    assert_eq!(rule.ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(8080)));

    a.spec.network.isolation = crate::api::Isolation::None;
    assert!(render(&a, &zones(3)).network_policies.is_empty());
}

#[test]
fn computed_quota_covers_replicas_surge_and_failover() {
    let mut web = component("web", 4); // 6 replicas over 3 zones, surge 2, failover 2
    web.resources = Some(ResourceRequirements {
        requests: Some([("cpu".to_string(), q("250m")), ("memory".to_string(), q("256Mi"))].into()),
        limits: Some([("memory".to_string(), q("512Mi"))].into()),
        ..Default::default()
    });
    let a = app(vec![web]);
    let hard = render(&a, &zones(3)).resource_quota.spec.unwrap().hard.unwrap();
    assert_eq!(hard["pods"], q("10"));
    assert_eq!(hard["requests.cpu"], q("2500m"));
    assert_eq!(hard["requests.memory"], q("2560Mi"));
    assert_eq!(hard["limits.cpu"], q("5000m")); // namespace default limit 500m
    assert_eq!(hard["limits.memory"], q("5120Mi"));
}

#[test]
fn explicit_quota_wins_and_is_checked() {
    let mut a = app(vec![component("web", 4)]);
    a.spec.quota = Some(crate::api::Quota { cpu: Some(q("8")), memory: None, pods: Some(7) });
    let plan = Plan::for_zones(&a, &zones(3));
    let hard = render(&a, &zones(3)).resource_quota.spec.unwrap().hard.unwrap();
    assert_eq!(hard["requests.cpu"], q("8"));
    assert_eq!(hard["pods"], q("7"));
    assert!(matches!(quota_fit(&a, &plan), QuotaFit::NoRoomForSurge(m) if m.contains("spec.quota.pods")));
    a.spec.quota.as_mut().unwrap().pods = Some(5);
    assert!(matches!(quota_fit(&a, &plan), QuotaFit::TooSmall(m) if m.contains("spec.quota.pods")));
    a.spec.quota.as_mut().unwrap().pods = Some(40);
    assert_eq!(quota_fit(&a, &plan), QuotaFit::Fits);
}

#[test]
fn validation_names_the_field() {
    let mut web = component("web", 1);
    web.resources =
        Some(ResourceRequirements { requests: Some([("cpu".to_string(), q("2"))].into()), ..Default::default() });
    let errors = validate(&app(vec![web.clone()]));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "spec.components[web].resources.requests.cpu");
    web.resources.as_mut().unwrap().limits = Some([("cpu".to_string(), q("2"))].into());
    assert!(validate(&app(vec![web])).is_empty());
}

#[test]
fn ports_survive_into_container() {
    let mut web = component("web", 1);
    web.ports.push(ContainerPort { name: Some("metrics".into()), container_port: 9090, ..Default::default() });
    let d = render(&app(vec![web]), &zones(3));
    let c = &d.deployments[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.ports.as_ref().unwrap().len(), 2);
}

#[test]
fn quota_at_the_crd_maximums_neither_overflows_nor_panics() {
    let max = crate::api::MAX_REPLICAS;
    let components: Vec<Component> = (0..32).map(|i| component(&format!("c{i}"), max)).collect();
    let mut a = app(components);
    a.spec.resilience.zone_failures_tolerated = 2;
    let plan = Plan::for_zones(&a, &zones(3));
    assert_eq!(plan.replicas["c0"].replicas, 3 * max);
    let hard = super::render(&a, &plan).resource_quota.spec.unwrap().hard.unwrap();
    // (30,000 replicas + 7,500 surge + 20,000 failover headroom) x 32 components.
    assert_eq!(hard["pods"], Quantity("1840000".into()));
    assert_eq!(quota_fit(&a, &plan), QuotaFit::Fits);
}

#[test]
fn readiness_defaults_to_a_tcp_check_of_the_first_port() {
    let mut worker = component("worker", 1);
    worker.ports.clear();
    let d = render(&app(vec![component("web", 2), worker]), &zones(3));
    let probe =
        |i: usize| d.deployments[i].spec.clone().unwrap().template.spec.unwrap().containers[0].readiness_probe.clone();
    assert_eq!(probe(0).unwrap().tcp_socket.unwrap().port, IntOrString::Int(8080));
    // Neither ports nor a probe: nothing to check (and a warning, below).
    assert!(probe(1).is_none());
}

#[test]
fn warnings_name_what_guarantees_less() {
    let mut web = component("web", 2);
    web.service = Some(Default::default());
    let mut worker = component("worker", 1);
    worker.ports.clear();
    let mut a = app(vec![web, worker]);
    let reasons = |a: &ResilientApp| warnings(a).into_iter().map(|w| (w.reason, w.message)).collect::<Vec<_>>();
    let found = reasons(&a);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, "UnreachableService");
    assert!(found[0].1.contains("components[web]"), "{}", found[0].1);
    assert_eq!(found[1].0, "NoReadinessCheck");
    assert!(found[1].1.contains("components[worker]"));
    // Reachable through ingressFrom (or allowFrom, or without isolation): no warning.
    a.spec.network.ingress_from =
        vec![serde_json::from_value(serde_json::json!({"namespaceSelector": {"matchLabels": {"x": "y"}}})).unwrap()];
    assert_eq!(reasons(&a).len(), 1);
}

/// A component with a pod template (given as JSON).
fn with_template(mut c: Component, template: serde_json::Value) -> Component {
    c.pod_template = Some(serde_json::from_value(template).unwrap());
    c
}

fn pod_spec(d: &Desired, i: usize) -> &k8s_openapi::api::core::v1::PodSpec {
    d.deployments[i].spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

#[test]
fn pod_template_merges_under_what_the_operator_owns() {
    let mut web = component("web", 4);
    web.env = serde_json::from_value(serde_json::json!([{"name": "MODE", "value": "component"}])).unwrap();
    let web = with_template(
        web,
        serde_json::json!({
            "metadata": {"annotations": {"prometheus.io/scrape": "true"},
                         "labels": {"team": "shop", "app.kubernetes.io/name": "mine"}},
            "spec": {
                "serviceAccountName": "web",
                "securityContext": {"runAsUser": 65532, "fsGroup": 2000, "seccompProfile": {"type": "Unconfined"}},
                "volumes": [{"name": "config", "configMap": {"name": "web-config"}}],
                "containers": [
                    {"name": "proxy", "image": "proxy:2", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]},
                     "runAsNonRoot": false, "seccompProfile": {"type": "Unconfined"}}},
                    {"name": "web", "image": "ignored:0", "args": ["ignored"],
                     "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}],
                     "envFrom": [{"configMapRef": {"name": "web-env"}}],
                     "env": [{"name": "MODE", "value": "template"}, {"name": "EXTRA", "value": "1"}],
                     "ports": [{"containerPort": 8080}, {"name": "metrics", "containerPort": 9100}],
                     "securityContext": {"allowPrivilegeEscalation": true, "readOnlyRootFilesystem": true}}
                ],
                "initContainers": [{"name": "migrate", "image": "migrate:1"}],
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "shop", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["amd64"]}]},
                    {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["arm64"]}]}
                ]}}},
                "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname",
                                               "whenUnsatisfiable": "DoNotSchedule"}],
                "priorityClassName": "high",
                "imagePullSecrets": [{"name": "registry"}]
            }
        }),
    );
    let mut a = app(vec![web]);
    a.spec.resilience.zones = vec!["zone-a".into(), "zone-b".into()];
    let d = render(&a, &zones(2));
    let template = &d.deployments[0].spec.as_ref().unwrap().template;
    let meta = template.metadata.as_ref().unwrap();
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "shop");
    assert_eq!(labels["app.kubernetes.io/name"], "web", "the operator's labels win");
    assert_eq!(labels["resilient.dev/component"], "web");
    assert_eq!(meta.annotations.as_ref().unwrap()["prometheus.io/scrape"], "true");
    let spec = pod_spec(&d, 0);
    // The main container comes first, merged; the sidecar keeps its place after it.
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web", "proxy"]);
    let main = &spec.containers[0];
    assert_eq!(main.image.as_deref(), Some("registry.example/app:1"));
    assert_eq!(
        main.args.as_deref(),
        Some(&["ignored".to_string()][..]),
        "the template's args stay when the component has none"
    );
    assert_eq!(main.volume_mounts.as_ref().unwrap()[0].mount_path, "/etc/web");
    assert_eq!(main.env_from.as_ref().unwrap().len(), 1);
    let env: Vec<(&str, &str)> =
        main.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default())).collect();
    assert_eq!(env, [("EXTRA", "1"), ("MODE", "component")]);
    let ports: Vec<i32> = main.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(ports, [8080, 9100]);
    let sc = main.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false), "restricted wins over the template");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
    // Sidecars and init containers pass the level too, keeping what the level allows.
    let proxy = spec.containers[1].security_context.as_ref().unwrap();
    assert_eq!(proxy.allow_privilege_escalation, Some(false));
    assert_eq!(proxy.capabilities.as_ref().unwrap().add.as_deref(), Some(&["NET_BIND_SERVICE".to_string()][..]));
    assert_eq!((proxy.run_as_non_root, &proxy.seccomp_profile), (None, &None), "no opting out of the pod's");
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.security_context.as_ref().unwrap().capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &["ALL"]);
    // Pod securityContext: the template's user kept, non-root and RuntimeDefault set over it.
    let pod_sc = spec.security_context.as_ref().unwrap();
    assert_eq!((pod_sc.run_as_user, pod_sc.fs_group, pod_sc.run_as_non_root), (Some(65532), Some(2000), Some(true)));
    assert_eq!(pod_sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    assert_eq!(spec.volumes.as_ref().unwrap()[0].name, "config");
    assert_eq!(spec.service_account_name.as_deref(), Some("web"));
    assert_eq!(spec.automount_service_account_token, None, "a named ServiceAccount keeps its token");
    assert_eq!(spec.node_selector.as_ref().unwrap()["disk"], "ssd");
    assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
    assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "registry");
    // Tolerations: the operator's two, then the template's.
    let tolerations: Vec<&str> = spec.tolerations.iter().flatten().filter_map(|t| t.key.as_deref()).collect();
    assert_eq!(tolerations, ["node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready", "dedicated"]);
    // The zone allow-list is ANDed into every required term of the template.
    let terms = &spec.affinity.as_ref().unwrap().node_affinity.as_ref().unwrap();
    let terms = &terms.required_during_scheduling_ignored_during_execution.as_ref().unwrap().node_selector_terms;
    assert_eq!(terms.len(), 2);
    for term in terms {
        let keys: Vec<&str> = term.match_expressions.iter().flatten().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["arch", "topology.kubernetes.io/zone"]);
    }
    // The zone spread is the operator's; the template's hostname spread replaces the soft one.
    let spreads: Vec<(&str, &str, i32)> = spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .map(|t| (t.topology_key.as_str(), t.when_unsatisfiable.as_str(), t.max_skew))
        .collect();
    assert_eq!(
        spreads,
        [("topology.kubernetes.io/zone", "DoNotSchedule", 1), ("kubernetes.io/hostname", "DoNotSchedule", 2)]
    );
}

#[test]
fn no_token_without_a_service_account() {
    let plain = component("web", 2);
    let asks = with_template(component("api", 2), serde_json::json!({"spec": {"automountServiceAccountToken": true}}));
    let d = render(&app(vec![plain, asks]), &zones(3));
    assert_eq!(pod_spec(&d, 0).automount_service_account_token, Some(false));
    assert_eq!(pod_spec(&d, 1).automount_service_account_token, Some(true));
    assert_eq!(pod_spec(&d, 1).containers.len(), 1, "a template without containers adds none");
}

#[test]
fn template_security_under_each_level() {
    let t = serde_json::json!({"spec": {"securityContext": {"runAsUser": 1000},
        "containers": [{"name": "web", "securityContext": {"allowPrivilegeEscalation": true}}]}});
    let mut a = app(vec![with_template(component("web", 2), t)]);
    a.spec.pod_security = crate::api::PodSecurityLevel::Baseline;
    let d = render(&a, &zones(3));
    let spec = pod_spec(&d, 0);
    assert_eq!(spec.containers[0].security_context.as_ref().unwrap().allow_privilege_escalation, Some(true));
    assert_eq!(spec.security_context.as_ref().unwrap().run_as_non_root, None);
    assert_eq!(spec.security_context.as_ref().unwrap().run_as_user, Some(1000));
    a.spec.pod_security = crate::api::PodSecurityLevel::Privileged;
    let d = render(&a, &zones(3));
    let sc = pod_spec(&d, 0).security_context.as_ref().unwrap();
    assert!(sc.seccomp_profile.is_none() && sc.run_as_user == Some(1000), "privileged adds nothing: {sc:?}");
}

#[test]
fn forbidden_template_fields_are_named() {
    let t = serde_json::json!({
        "metadata": {"labels": {"resilient.dev/component": "other"}},
        "spec": {"nodeName": "node-a-1",
                 "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}],
                 "tolerations": [
                     {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
                     {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 31},
                     {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule"},
                     {"operator": "Exists"}
                 ]}
    });
    let a = app(vec![with_template(component("web", 2), t)]);
    let fields: Vec<String> = forbidden_fields(&a).into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "spec.components[web].podTemplate.metadata.labels[resilient.dev/component]",
            "spec.components[web].podTemplate.spec.nodeName",
            "spec.components[web].podTemplate.spec.topologySpreadConstraints[0]",
            "spec.components[web].podTemplate.spec.tolerations[1]",
            "spec.components[web].podTemplate.spec.tolerations[2]",
        ]
    );
    assert!(forbidden_fields(&app(vec![component("web", 2)])).is_empty());
}

#[test]
fn quota_counts_sidecars_and_the_largest_init_container() {
    let plain = app(vec![component("web", 2)]);
    let t = serde_json::json!({"spec": {
    "containers": [{"name": "proxy", "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}],
    "initContainers": [
        {"name": "small", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}},
        {"name": "big", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}}
    ]}});
    let with_init = app(vec![with_template(component("web", 2), t)]);
    let (before, after) = (
        quota::compute_quota(&plain, &Plan::for_zones(&plain, &zones(3))),
        quota::compute_quota(&with_init, &Plan::for_zones(&with_init, &zones(3))),
    );
    // 3 replicas + 1 surge + 1 failover headroom = 5 pods. Plain: 100m each (the default request);
    // with the template: max(100m + 50m running, 2 cores for the big init container) = 2 cores each.
    assert_eq!(before["requests.cpu"], q("500m"));
    assert_eq!(after["requests.cpu"], q("10000m"));
    assert_eq!(after["pods"], q("5"));
    // Memory: max(128Mi + 64Mi, 1Gi) = 1Gi each.
    assert_eq!(after["requests.memory"], q("5120Mi"));
}

#[test]
fn a_sidecar_request_above_the_default_limit_is_named() {
    let t = serde_json::json!({"spec": {
        "containers": [{"name": "proxy", "resources": {"requests": {"memory": "1Gi"}}}],
        "initContainers": [{"name": "setup", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]}});
    let a = app(vec![with_template(component("web", 2), t)]);
    let fields: Vec<String> = validate(&a).into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "spec.components[web].podTemplate.spec.containers[proxy].resources.requests.memory",
            "spec.components[web].podTemplate.spec.initContainers[setup].resources.requests.cpu",
        ]
    );
}

fn stateful(name: &str, min_available: i32) -> Component {
    serde_json::from_value(serde_json::json!({
        "name": name, "image": "registry.example/db:1", "minAvailable": min_available,
        "ports": [{"name": "sql", "containerPort": 5432}],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        "volumeClaims": [
            {"name": "data", "size": "10Gi", "storageClassName": "zonal", "mountPath": "/var/lib/db"},
            {"name": "wal", "size": "2Gi", "mountPath": "/var/lib/wal"}
        ]
    }))
    .unwrap()
}

#[test]
fn a_component_with_volume_claims_is_a_stateful_set_with_a_headless_service() {
    let a = app(vec![stateful("db", 2), component("web", 4)]);
    let d = render(&a, &zones(3));
    assert_eq!(d.deployments.iter().map(|x| x.metadata.name.clone().unwrap()).collect::<Vec<_>>(), ["web"]);
    assert_eq!(d.stateful_sets.len(), 1);
    let sts = d.stateful_sets[0].spec.clone().unwrap();
    assert_eq!(sts.replicas, Some(3));
    assert_eq!(sts.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(sts.service_name.as_deref(), Some("db-headless"));
    let claims = sts.volume_claim_templates.unwrap();
    assert_eq!(claims.iter().map(|c| c.metadata.name.clone().unwrap()).collect::<Vec<_>>(), ["data", "wal"]);
    let data = claims[0].spec.clone().unwrap();
    assert_eq!(data.storage_class_name.as_deref(), Some("zonal"));
    assert_eq!(data.resources.unwrap().requests.unwrap()["storage"], q("10Gi"));
    assert_eq!(claims[1].spec.clone().unwrap().storage_class_name, None, "the cluster default class");
    // The same pod template as a Deployment: zone spread (one set, no per-revision key),
    // tolerations, security; the claims mounted in the main container.
    let pod = sts.template.spec.unwrap();
    let zone_spread = &pod.topology_spread_constraints.as_ref().unwrap()[0];
    assert_eq!(
        (zone_spread.topology_key.as_str(), zone_spread.when_unsatisfiable.as_str()),
        ("topology.kubernetes.io/zone", "DoNotSchedule")
    );
    assert_eq!(zone_spread.match_label_keys, None);
    assert_eq!(pod.tolerations.as_ref().unwrap()[0].toleration_seconds, Some(30));
    let mounts = pod.containers[0].volume_mounts.clone().unwrap();
    assert_eq!(
        mounts.iter().map(|m| (m.name.as_str(), m.mount_path.as_str())).collect::<Vec<_>>(),
        [("data", "/var/lib/db"), ("wal", "/var/lib/wal")]
    );
    // Headless Service for stable names, besides the PDB.
    let headless = d.services.iter().find(|s| s.metadata.name.as_deref() == Some("db-headless")).unwrap();
    assert_eq!(headless.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
    assert!(d.pod_disruption_budgets.iter().any(|p| p.metadata.name.as_deref() == Some("db")));
    // A StatefulSet is applied with the Deployments.
    let steps = d.into_steps();
    assert!(steps[3].iter().any(|c| c.kind_and_meta().0 == "StatefulSet"));
}

#[test]
fn claims_follow_the_deletion_policy() {
    let policy = |p: crate::api::DeletionPolicy| {
        let mut a = app(vec![stateful("db", 2)]);
        a.spec.deletion_policy = p;
        let r = render(&a, &zones(3)).stateful_sets[0]
            .spec
            .clone()
            .unwrap()
            .persistent_volume_claim_retention_policy
            .unwrap();
        (r.when_deleted.unwrap(), r.when_scaled.unwrap())
    };
    use crate::api::DeletionPolicy::*;
    assert_eq!(policy(Retain), ("Retain".to_string(), "Retain".to_string()));
    assert_eq!(policy(Orphan), ("Retain".to_string(), "Retain".to_string()));
    assert_eq!(policy(Delete), ("Delete".to_string(), "Retain".to_string()));
}

#[test]
fn stateful_replicas_are_not_raised_while_a_zone_is_lost() {
    let a = app(vec![stateful("db", 2), component("web", 4)]);
    let lost = crate::resilience::PlannedZones {
        zones: vec!["zone-b".into(), "zone-c".into()],
        known: zones(3),
        ..Default::default()
    };
    let plan = Plan::new(&a, lost);
    assert_eq!(plan.replicas["db"].replicas, 3, "planned for the zones that exist, lost or not");
    assert_eq!(plan.replicas["web"].replicas, 8, "a Deployment is planned for the usable zones");
}

#[test]
fn quota_counts_storage_claims_and_no_surge_for_stateful_components() {
    let a = app(vec![stateful("db", 2)]);
    let hard = compute_quota(&a, &Plan::for_zones(&a, &zones(3)));
    // 3 replicas x (10Gi + 2Gi), 3 x 2 claims; pods: the replicas only (no surge, no replacement).
    assert_eq!(hard["requests.storage"], q("36Gi"));
    assert_eq!(hard["persistentvolumeclaims"], q("6"));
    assert_eq!(hard["pods"], q("3"));
    assert_eq!(hard["requests.cpu"], q("1500m"));
    // Without stateful components nothing about storage is added (existing apps are unchanged).
    let b = app(vec![component("web", 4)]);
    let hard = compute_quota(&b, &Plan::for_zones(&b, &zones(3)));
    assert!(!hard.contains_key("requests.storage") && !hard.contains_key("persistentvolumeclaims"));
}

#[test]
fn storage_classes_that_bind_early_or_do_not_exist_are_warned_about() {
    let a = app(vec![stateful("db", 2)]);
    assert_eq!(storage_classes(&a), ["zonal"]);
    let modes = |m: Option<&str>| StorageClassModes::from([("zonal".to_string(), m.map(str::to_string))]);
    assert!(storage_warnings(&a, &modes(Some("WaitForFirstConsumer"))).is_empty());
    let early = storage_warnings(&a, &modes(Some("Immediate")));
    assert_eq!(early.len(), 1);
    assert_eq!(early[0].reason, "StorageClassBindsEarly");
    assert!(early[0].message.contains("StorageClass zonal has volumeBindingMode Immediate"), "{}", early[0].message);
    assert_eq!(storage_warnings(&a, &modes(None))[0].reason, "StorageClassMissing");
}

#[test]
fn placeholders_reserve_room_per_zone_and_are_paid_for_in_the_quota() {
    let mut web = component("web", 4);
    web.resources = Some(ResourceRequirements {
        requests: Some([("cpu".to_string(), q("250m")), ("memory".to_string(), q("256Mi"))].into()),
        ..Default::default()
    });
    let mut a = app(vec![web, stateful("db", 2)]);
    let plan = Plan::for_zones(&a, &zones(3));
    let without = compute_quota(&a, &plan);
    assert!(render(&a, &zones(3)).placeholders.is_empty(), "off by default");
    a.spec.resilience.reserve_capacity = true;
    let r = reservations(&a, &plan);
    // web: 6 replicas (2 per zone) become 8 over two zones (4 per zone): 2 per zone. db: none.
    assert_eq!(
        r.iter().map(|r| (r.component.as_str(), r.zone.as_str(), r.count)).collect::<Vec<_>>(),
        [("web", "zone-a", 2), ("web", "zone-b", 2), ("web", "zone-c", 2)]
    );
    let d = render(&a, &zones(3));
    assert_eq!(d.placeholders.len(), 3);
    let p = &d.placeholders[0];
    assert_eq!(p.metadata.name.as_deref(), Some("web-placeholder-zone-a"));
    assert!(
        !p.metadata.labels.as_ref().unwrap().contains_key(crate::api::LABEL_COMPONENT),
        "not a pod of the component"
    );
    let spec = p.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.priority_class_name.as_deref(), Some(PRIORITY_CLASS));
    assert_eq!(pod.termination_grace_period_seconds, Some(0));
    assert_eq!(pod.containers[0].image.as_deref(), Some(PAUSE_IMAGE));
    let requests = pod.containers[0].resources.clone().unwrap().requests.unwrap();
    assert_eq!((&requests["cpu"], &requests["memory"]), (&q("250m"), &q("256Mi")));
    let terms =
        pod.affinity.unwrap().node_affinity.unwrap().required_during_scheduling_ignored_during_execution.unwrap();
    assert_eq!(
        terms.node_selector_terms[0].match_expressions.as_ref().unwrap()[0].values,
        Some(vec!["zone-a".to_string()])
    );
    // Placeholders are applied last, after the app's own workloads.
    let steps = render(&a, &zones(3)).into_steps();
    assert_eq!(steps[4].len(), 3);
    // Quota: 6 placeholders, twice over (a preempted one is recreated while its replacement runs).
    let with = compute_quota(&a, &plan);
    let pods = |h: &std::collections::BTreeMap<String, Quantity>| h["pods"].0.parse::<i32>().unwrap();
    assert_eq!(pods(&with) - pods(&without), 12);
    assert_eq!(with["requests.cpu"], q(&format!("{}m", 250 * 12 + 250 * 10 + 500 * 3)));
}

#[test]
fn placeholder_names_are_valid_for_any_zone_label() {
    assert_eq!(placeholder_name("web", "us-east-1a"), "web-placeholder-us-east-1a");
    assert_eq!(placeholder_name("web", "Zone_B.1"), "web-placeholder-zone-b-1");
}

#[test]
fn an_explicit_quota_without_room_for_the_placeholders_is_reported() {
    let mut a = app(vec![component("web", 4)]);
    a.spec.resilience.reserve_capacity = true;
    let plan = Plan::for_zones(&a, &zones(3));
    // 6 replicas + 6 placeholders.
    a.spec.quota = Some(crate::api::Quota { cpu: None, memory: None, pods: Some(12) });
    assert_eq!(reservation_fit(&a, &plan), None);
    a.spec.quota = Some(crate::api::Quota { cpu: None, memory: None, pods: Some(10) });
    let m = reservation_fit(&a, &plan).unwrap();
    assert!(
        m.starts_with("spec.quota.pods cannot hold the replicas and the placeholders") && m.contains("12 pods"),
        "{m}"
    );
    a.spec.resilience.reserve_capacity = false;
    assert_eq!(reservation_fit(&a, &plan), None);
}
