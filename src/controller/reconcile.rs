//! One reconcile of one ResilientApp: validate -> observe -> render -> apply + prune -> status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{EvictParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{field, info, instrument, warn};

use super::Context;
use super::apply::Applier;
use super::error::{Error, Result, error_chain};
use super::status::{Blocker, Observed, PassOutcome, component_statuses, conditions};
use crate::api::{LABEL_COMPONENT, MANAGER, ResilientApp, ResilientAppStatus};
use crate::render::{self, Desired, QuotaFit};
use crate::resilience::{
    PodPlacement, RebalanceInput, allowed_zones_healthy, choose_move, node_zone, pod_ready, usable_zones,
};

/// How long to wait for the caches before giving up on a pass (and retrying with backoff).
const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// After an eviction, look again this soon (pod events usually come first).
const REBALANCE_RETRY: Duration = Duration::from_secs(5);
/// A namespace being deleted is checked again after this long.
const NAMESPACE_TERMINATING_RETRY: Duration = Duration::from_secs(5);

#[instrument(skip_all, fields(app = %app.name_any(), generation = app.metadata.generation, writes = field::Empty))]
pub(super) async fn reconcile(app: Arc<ResilientApp>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.synced.wait(CACHE_SYNC_TIMEOUT).await?;
    if app.meta().deletion_timestamp.is_some() {
        ctx.metrics.forget_app(&app.name_any());
        ctx.last_status.lock().expect("status lock").remove(&app.uid().unwrap_or_default());
        // Garbage collection removes every child through the owner references.
        return Ok(Action::await_change());
    }
    let result = reconcile_app(&app, &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    tracing::debug!(took_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "reconciled");
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&app.name_any());
    } else if let Err(e) = &result {
        publish(&ctx, &app, EventType::Warning, "ReconcileError", e.category(), &error_chain(e)).await;
    }
    result
}

async fn reconcile_app(app: &ResilientApp, ctx: &Context) -> Result<Action> {
    let name = app.name_any();
    let namespace = app.target_namespace();
    // One snapshot of the node cache for the whole pass.
    let nodes: Vec<Arc<Node>> = ctx.stores.nodes.state();
    let mut zones = usable_zones(nodes.iter().map(|n| n.as_ref()), &app.spec.resilience.zones);
    let mut outcome = PassOutcome::default();
    // No usable zone at all (every node cordoned, or node monitoring down) says more about the
    // cluster than about zones: like the node lifecycle controller in full disruption, change
    // nothing and keep planning for the last zones seen until one is back.
    if zones.is_empty()
        && let Some(last) = app.status.as_ref().map(|s| s.zones.clone()).filter(|z| !z.is_empty())
    {
        outcome.no_usable_zones = true;
        zones = last;
    }
    let plans = render::replica_plans(app, &zones);

    // Validate: what CEL cannot check. A bad spec waits for a change.
    let errors = render::validate(app);
    if !errors.is_empty() {
        outcome.blocker = Some(Blocker::InvalidSpec(errors));
    } else {
        match namespace_state(app, ctx, &namespace).await? {
            NamespaceState::Usable => {}
            NamespaceState::Conflict(m) => outcome.blocker = Some(Blocker::NamespaceConflict(m)),
            NamespaceState::Wait(m) => outcome.waiting = Some(m),
        }
    }
    if outcome.blocker.is_none() && outcome.waiting.is_none() {
        match render::quota_fit(app, &plans) {
            QuotaFit::TooSmall(m) => outcome.blocker = Some(Blocker::QuotaTooSmall(m)),
            QuotaFit::NoRoomForSurge(m) => outcome.warning = Some(m),
            QuotaFit::Fits => {}
        }
    }

    let mut requeue = ctx.resync;
    if let Some(waiting) = &outcome.waiting {
        // The namespace is being deleted (or still belongs to a deleted app of the same name):
        // put it back once it is gone.
        info!(app = %name, namespace, "{waiting}");
        requeue = NAMESPACE_TERMINATING_RETRY;
    } else if outcome.blocker.is_none() {
        let desired = render::render(app, &zones);
        let applier = Applier::new(ctx, name.clone());
        apply_all(&applier, &namespace, desired).await?;
        outcome.writes = applier.writes();
        tracing::Span::current().record("writes", outcome.writes);
    }

    // Observe placement and write status when it changed.
    let observed = observe(app, ctx, &namespace, &nodes, &zones, &plans);
    // Rebalance only in a pass that changed nothing else, so each move starts from a settled state.
    let may_rebalance = outcome.blocker.is_none()
        && !outcome.no_usable_zones
        && outcome.waiting.is_none()
        && outcome.writes == 0
        && app.spec.resilience.rebalance;
    if may_rebalance && let Some(moved) = rebalance(app, ctx, &namespace, &nodes, &observed).await? {
        publish(ctx, app, EventType::Normal, "Rebalanced", "Rebalance", &moved).await;
        requeue = REBALANCE_RETRY;
    }
    let components = component_statuses(app, &observed);
    let wanted = conditions(app, &observed, &components, &outcome);
    let uid = app.uid().unwrap_or_default();
    let cached = ctx.last_status.lock().expect("status lock").get(&uid).cloned();
    let previous = cached.unwrap_or_else(|| app.status.clone().unwrap_or_default());
    let now = Time(jiff::Timestamp::now());
    let status = ResilientAppStatus {
        observed_generation: app.metadata.generation,
        zones: zones.clone(),
        conditions: wanted.into_status(&previous.conditions, app.metadata.generation, &now),
        components,
    };
    if status != previous {
        write_status(ctx, app, &status).await?;
        ctx.last_status.lock().expect("status lock").insert(uid, status.clone());
        publish_transitions(ctx, app, &previous.conditions, &status.conditions, outcome.warning.as_deref()).await;
    }
    ctx.metrics.observe_app(&name, &status);

    Ok(match outcome.blocker {
        Some(Blocker::InvalidSpec(_)) => Action::await_change(),
        // A conflicting namespace or a too-small quota can be fixed outside the spec: look again later.
        Some(_) => Action::requeue(Duration::from_secs(60)),
        None => Action::requeue(requeue),
    })
}

/// Apply every desired child, then delete the ones that no longer belong.
///
/// In four steps, each a set of concurrent applies (a new app costs four API round trips, not
/// one per child): the Namespace; its quota and container defaults, so the first pods already get them;
/// NetworkPolicies, RoleBindings, Services and PDBs, so default-deny is in place before any pod
/// exists; then the Deployments.
async fn apply_all(applier: &Applier<'_>, namespace: &str, desired: Desired) -> Result<()> {
    // Destructured without `..`: a kind added to Desired but not applied here does not compile.
    let Desired {
        namespace: ns,
        resource_quota,
        limit_range,
        network_policies,
        role_bindings,
        deployments,
        pod_disruption_budgets,
        services,
    } = desired;
    let ctx = applier.ctx;
    let client = &ctx.client;
    let s = &ctx.stores;
    applier.apply(&Api::all(client.clone()), &s.namespaces, &ns).await?;
    let quotas = Api::namespaced(client.clone(), namespace);
    let limit_ranges = Api::namespaced(client.clone(), namespace);
    futures::try_join!(
        applier.apply(&quotas, &s.resource_quotas, &resource_quota),
        applier.apply(&limit_ranges, &s.limit_ranges, &limit_range),
    )?;
    let policies = Api::namespaced(client.clone(), namespace);
    let bindings = Api::namespaced(client.clone(), namespace);
    let svcs = Api::namespaced(client.clone(), namespace);
    let pdbs = Api::namespaced(client.clone(), namespace);
    futures::try_join!(
        applier.apply_each(&policies, &s.network_policies, &network_policies),
        applier.apply_each(&bindings, &s.role_bindings, &role_bindings),
        applier.apply_each(&svcs, &s.services, &services),
        applier.apply_each(&pdbs, &s.pod_disruption_budgets, &pod_disruption_budgets),
    )?;
    let deps = Api::namespaced(client.clone(), namespace);
    applier.apply_each(&deps, &s.deployments, &deployments).await?;

    applier.prune(&deps, &s.deployments, namespace, &deployments).await?;
    applier.prune(&pdbs, &s.pod_disruption_budgets, namespace, &pod_disruption_budgets).await?;
    applier.prune(&svcs, &s.services, namespace, &services).await?;
    applier.prune(&bindings, &s.role_bindings, namespace, &role_bindings).await?;
    applier.prune(&policies, &s.network_policies, namespace, &network_policies).await?;
    Ok(())
}

enum NamespaceState {
    /// Absent (it will be created) or controlled by this app.
    Usable,
    /// Someone else's: never adopted or touched.
    Conflict(String),
    /// Being deleted, or left over from a deleted app of the same name: look again shortly.
    Wait(String),
}

async fn namespace_state(app: &ResilientApp, ctx: &Context, namespace: &str) -> Result<NamespaceState> {
    let uid = app.uid().unwrap_or_default();
    let cached = ctx.stores.namespaces.get(&ObjectRef::new(namespace));
    let live: Option<Arc<Namespace>> = match cached {
        Some(ns) => Some(ns),
        // Not one of ours (or the cache lags): ask the API server.
        None => match Api::<Namespace>::all(ctx.client.clone()).get_opt(namespace).await {
            Ok(ns) => ns.map(Arc::new),
            Err(source) => {
                return Err(Error::ReadNamespace { name: namespace.to_string(), source });
            }
        },
    };
    let Some(ns) = live else {
        return Ok(NamespaceState::Usable);
    };
    let controller = ns.owner_references().iter().find(|o| o.controller == Some(true));
    let ours = controller.is_some_and(|o| o.uid == uid);
    if ns.meta().deletion_timestamp.is_some() && (ours || controller.is_some_and(|o| o.kind == "ResilientApp")) {
        return Ok(NamespaceState::Wait(format!(
            "namespace {namespace} is being deleted; it is recreated once it is gone"
        )));
    }
    Ok(match controller {
        _ if ours => NamespaceState::Usable,
        Some(o) if o.kind == "ResilientApp" && o.name == app.name_any() => NamespaceState::Wait(format!(
            "namespace {namespace} still belongs to a deleted ResilientApp {} (uid {}); waiting for garbage collection",
            o.name, o.uid
        )),
        Some(o) => NamespaceState::Conflict(format!(
            "namespace {namespace} already exists and is controlled by {} {}; it is left untouched",
            o.kind, o.name
        )),
        None => NamespaceState::Conflict(format!(
            "namespace {namespace} already exists and is not owned by this ResilientApp; it is left untouched (delete it, or set spec.namespace to another name)"
        )),
    })
}

fn observe<'a>(
    app: &ResilientApp,
    ctx: &Context,
    namespace: &str,
    nodes: &[Arc<Node>],
    zones: &'a [String],
    plans: &'a std::collections::BTreeMap<String, crate::resilience::ReplicaPlan>,
) -> Observed<'a> {
    let name = app.name_any();
    let deployments = ctx
        .stores
        .deployments
        .of_app(&name)
        .into_iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace))
        .filter_map(|d| d.labels().get(LABEL_COMPONENT).cloned().map(|c| (c, d)))
        .collect();
    let pods =
        ctx.stores.pods.of_app(&name).into_iter().filter(|p| p.namespace().as_deref() == Some(namespace)).collect();
    let node_zones: HashMap<String, String> =
        nodes.iter().filter_map(|n| node_zone(n).map(|z| (n.name_any(), z.to_string()))).collect();
    Observed { zones, plans, deployments, pods, node_zones }
}

/// Evict at most one pod of the app to restore an even spread, once every allowed zone is back.
/// Returns what was moved, for the Event.
async fn rebalance(
    app: &ResilientApp,
    ctx: &Context,
    namespace: &str,
    nodes: &[Arc<Node>],
    observed: &Observed<'_>,
) -> Result<Option<String>> {
    let healthy = allowed_zones_healthy(nodes.iter().map(|n| n.as_ref()), &app.spec.resilience.zones, observed.zones);
    for component in &app.spec.components {
        let Some(plan) = observed.plans.get(&component.name) else {
            continue;
        };
        let pods: Vec<PodPlacement> = observed
            .pods
            .iter()
            .filter(|p| p.labels().get(LABEL_COMPONENT) == Some(&component.name))
            .map(|p| PodPlacement {
                name: p.name_any(),
                zone: observed.zone_of(p).cloned(),
                ready: pod_ready(p),
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
            .collect();
        let input = RebalanceInput {
            pods: &pods,
            usable_zones: observed.zones,
            all_zones_healthy: healthy,
            replicas: plan.replicas,
            min_available: component.min_available,
        };
        let Ok(chosen) = choose_move(&input) else {
            continue;
        };
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        match api.evict(&chosen.pod, &EvictParams::default()).await {
            Ok(_) => {}
            // The PodDisruptionBudget says not now: try again on the next pass.
            Err(kube::Error::Api(s)) if s.code == 429 || s.is_not_found() => return Ok(None),
            Err(source) => {
                return Err(Error::Evict { name: chosen.pod, source });
            }
        }
        ctx.metrics.api_write("create", "Pod/eviction");
        let counts: Vec<String> = chosen.counts.iter().map(|(z, n)| format!("{z}={n}")).collect();
        let moved = format!(
            "{}: evicted pod {} from {} so that it is rescheduled into {} (ready pods by zone: {})",
            component.name,
            chosen.pod,
            chosen.from_zone,
            chosen.to_zone,
            counts.join(", ")
        );
        info!(app = %app.name_any(), "{moved}");
        return Ok(Some(moved));
    }
    Ok(None)
}

async fn write_status(ctx: &Context, app: &ResilientApp, status: &ResilientAppStatus) -> Result<()> {
    let api: Api<ResilientApp> = Api::all(ctx.client.clone());
    let patch = json!({
        "apiVersion": ResilientApp::api_version(&()),
        "kind": ResilientApp::kind(&()),
        "status": status,
    });
    api.patch_status(&app.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::Status)?;
    ctx.metrics.api_write("apply", "ResilientApp/status");
    Ok(())
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Events for what changed in the conditions: warnings for new problems, normal events for recoveries.
async fn publish_transitions(
    ctx: &Context,
    app: &ResilientApp,
    old: &[Condition],
    new: &[Condition],
    warning: Option<&str>,
) {
    // A condition that flips or changes reason. The first status of a new app is not a
    // transition (its pods are simply not up yet), except for Stalled.
    let changed = |t: &str| {
        let (o, n) = (find(old, t), find(new, t));
        let flipped = o.map(|c| (&c.status, &c.reason)) != n.map(|c| (&c.status, &c.reason));
        (flipped && (o.is_some() || t == "Stalled")).then_some(n).flatten()
    };
    if let Some(c) = changed("Stalled") {
        publish(ctx, app, EventType::Warning, &c.reason, "Reconcile", &c.message).await;
    }
    if let Some(c) = changed("ZoneFailureTolerant") {
        let kind = if c.status == "True" { EventType::Normal } else { EventType::Warning };
        publish(ctx, app, kind, &c.reason, "CheckZoneFailure", &c.message).await;
    }
    if let Some(c) = changed("Ready") {
        let kind = if c.status == "True" { EventType::Normal } else { EventType::Warning };
        publish(ctx, app, kind, &c.reason, "CheckAvailability", &c.message).await;
    }
    if let Some(w) = warning {
        let already = find(old, "Ready").is_some_and(|c| c.message.contains(w));
        if !already {
            publish(ctx, app, EventType::Warning, "QuotaNoSurgeRoom", "CheckQuota", w).await;
        }
    }
}

async fn publish(ctx: &Context, app: &ResilientApp, type_: EventType, reason: &str, action: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &app.object_ref(&())).await {
        Ok(()) => ctx.metrics.api_write("create", "Event"),
        Err(e) => warn!(app = %app.name_any(), error = %e, "failed to publish event"),
    }
}
