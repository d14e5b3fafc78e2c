//! NetworkPolicies of a Strict namespace: deny everything, then allow DNS, traffic inside the
//! app as `allowFrom` says, and the `ingressFrom` / `egressTo` extras.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::RenderContext;
use crate::api::{Component, Isolation, LABEL_APP, LABEL_COMPONENT, ResilientApp};

pub const DEFAULT_DENY: &str = "resilient-default-deny";
/// Egress to DNS and to the app's own pods, in one policy of two rules (egress only: the deny
/// stays a policy of its own, see docs/api.md).
pub const ALLOW_EGRESS: &str = "resilient-allow-dns-and-app-egress";
pub const ALLOW_INGRESS_EXTRA: &str = "resilient-allow-ingress-from";
pub const ALLOW_EGRESS_EXTRA: &str = "resilient-allow-egress-to";

fn all_pods() -> LabelSelector {
    LabelSelector::default()
}

fn policy(ctx: &RenderContext, name: &str, pod_selector: LabelSelector, types: &[&str]) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ctx.meta(name, ctx.labels()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types: Some(types.iter().map(|t| t.to_string()).collect()),
            ..Default::default()
        }),
    }
}

fn selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: Some(labels), ..Default::default() }
}

/// The component's ports, as NetworkPolicy ports.
fn service_ports(component: &Component) -> Vec<NetworkPolicyPort> {
    component
        .ports
        .iter()
        .map(|port| NetworkPolicyPort {
            port: Some(IntOrString::Int(port.container_port)),
            protocol: Some(port.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
            ..Default::default()
        })
        .collect()
}

/// A component whose Service nothing may reach under Strict isolation: no `allowFrom`, and no
/// `ingressFrom` on the app.
pub fn unreachable_service(app: &ResilientApp, component: &Component) -> bool {
    let network = &app.spec.network;
    network.isolation == Isolation::Strict
        && component.service.is_some()
        && component.allow_from.is_empty()
        && network.ingress_from.is_empty()
}

pub(super) fn network_policies(ctx: &RenderContext) -> Vec<NetworkPolicy> {
    let network = &ctx.app.spec.network;
    if network.isolation == Isolation::None {
        return Vec::new();
    }
    let mut out = vec![policy(ctx, DEFAULT_DENY, all_pods(), &["Ingress", "Egress"])];

    // Every pod may reach DNS (port 53 in kube-system) and open connections to the app's pods;
    // what those accept is decided by the per-component ingress policies below.
    let dns = NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(selector(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "kube-system".to_string(),
            )]))),
            ..Default::default()
        }]),
        ports: Some(
            ["UDP", "TCP"]
                .map(|protocol| NetworkPolicyPort {
                    port: Some(IntOrString::Int(53)),
                    protocol: Some(protocol.to_string()),
                    ..Default::default()
                })
                .to_vec(),
        ),
    };
    let intra = NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(selector(BTreeMap::from([(LABEL_APP.to_string(), ctx.name.clone())]))),
            ..Default::default()
        }]),
        ports: None,
    };
    let mut egress = policy(ctx, ALLOW_EGRESS, all_pods(), &["Egress"]);
    egress.spec.as_mut().unwrap().egress = Some(vec![dns, intra]);
    out.push(egress);

    for component in &ctx.app.spec.components {
        if component.allow_from.is_empty() {
            continue;
        }
        let mut p = policy(
            ctx,
            &format!("resilient-{}-ingress", component.name),
            selector(ctx.selector_labels(&component.name)),
            &["Ingress"],
        );
        let from = NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(LABEL_APP.to_string(), ctx.name.clone())])),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: LABEL_COMPONENT.to_string(),
                    operator: "In".to_string(),
                    values: Some(component.allow_from.clone()),
                }]),
            }),
            ..Default::default()
        };
        let ports = service_ports(component);
        p.spec.as_mut().unwrap().ingress = Some(vec![NetworkPolicyIngressRule {
            from: Some(vec![from]),
            ports: if ports.is_empty() { None } else { Some(ports) },
        }]);
        out.push(p);
    }

    // ingressFrom admits its peers only to the app's entry points, the components with a Service
    // and no allowFrom (a component with allowFrom takes only what it names), on their ports.
    if !network.ingress_from.is_empty() {
        for component in ctx.app.spec.components.iter().filter(|c| c.service.is_some() && c.allow_from.is_empty()) {
            let mut p = policy(
                ctx,
                &format!("{ALLOW_INGRESS_EXTRA}-to-{}", component.name),
                selector(ctx.selector_labels(&component.name)),
                &["Ingress"],
            );
            let ports = service_ports(component);
            p.spec.as_mut().unwrap().ingress = Some(vec![NetworkPolicyIngressRule {
                from: Some(network.ingress_from.clone()),
                ports: (!ports.is_empty()).then_some(ports),
            }]);
            out.push(p);
        }
    }
    if !network.egress_to.is_empty() {
        let mut p = policy(ctx, ALLOW_EGRESS_EXTRA, all_pods(), &["Egress"]);
        p.spec.as_mut().unwrap().egress = Some(network.egress_to.clone());
        out.push(p);
    }
    out
}
