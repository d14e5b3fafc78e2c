//! One reconcile of one ResilientApp: plan -> gate -> render + apply -> observe (+ rebalance) ->
//! status. The pure steps live in `gate.rs`, `crate::render` and `status.rs`; this file does the I/O.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ApiResource, DynamicObject, EvictParams, Patch, PatchParams};
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, field, info, instrument, warn};

use super::Context;
use super::GuardedApp;
use super::apply::{Applied, apply};
use super::cleanup::cleanup;
use super::error::{Error, Result, error_chain};
use super::gate::{Blocked, Blocker, Gate, gate, plan_of};
use super::status::{self, Notice, Observed, Pass, Rebalanced, may_rebalance};
use crate::api::{FINALIZER, LABEL_COMPONENT, MANAGER, ResilientApp, ResilientAppStatus};
use crate::render::{Plan, StorageClassModes, storage_classes, storage_warnings};
use crate::resilience::{
    PodPlacement, RebalanceInput, ZoneMap, allowed_zones_healthy, choose_move, plan_app_zones, pod_ready, zone_failover,
};

/// How long to wait for the caches before giving up on a pass (and retrying with backoff).
const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

#[instrument(skip_all, fields(app = %guarded.name_any(), generation = guarded.meta().generation, writes = field::Empty))]
pub(super) async fn reconcile(guarded: Arc<GuardedApp>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    tokio::select! {
        synced = ctx.synced.wait(CACHE_SYNC_TIMEOUT) => synced?,
        () = ctx.shutdown.clone().requested() => return Ok(Action::await_change()),
    }
    let app = match &guarded.0 {
        Ok(app) => {
            let mut app = app.clone();
            app.status = ctx.statuses.get(&app.name_any());
            Arc::new(app)
        }
        Err(invalid) => return undecodable(&guarded, invalid, &ctx).await,
    };
    let api: Api<ResilientApp> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, app.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(app) => reconcile_app(&app, &ctx).await,
            FinalizerEvent::Cleanup(app) => cleanup(&app, &ctx).await,
        }
    })
    .await
    .or_else(|e| match e {
        // Removed already, by an earlier pass: the app is gone.
        finalizer::Error::RemoveFinalizer(kube::Error::Api(s)) if s.is_not_found() => Ok(Action::await_change()),
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => Err(e),
        other => Err(Error::Finalizer(error_chain(&other))),
    });
    ctx.metrics.reconciled(started.elapsed());
    debug!(took_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "reconciled");
    if let Err(e) = &result {
        let notice = Notice {
            type_: EventType::Warning,
            reason: "ReconcileError".into(),
            action: e.category(),
            note: error_chain(e),
        };
        publish(&ctx, app.as_ref(), &notice).await;
    }
    result
}

/// An app whose stored object cannot be decoded (stored under an older, looser CRD): say so in
/// its status and an Event, touch nothing else, and wait until someone fixes the object. An app
/// being deleted is let go (its finalizer removed), with its namespace left as it is.
async fn undecodable(guarded: &GuardedApp, invalid: &InvalidObject, ctx: &Context) -> Result<Action> {
    let (name, uid) = (guarded.name_any(), guarded.uid().unwrap_or_default());
    let message = format!("the stored ResilientApp cannot be read, so nothing is reconciled for it: {}", invalid.error);
    warn!(app = %name, error = %invalid.error, "undecodable ResilientApp");
    // Untyped: the API server answers with the object, which cannot be decoded either.
    let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &ApiResource::erase::<ResilientApp>(&()));
    let finalizers = guarded.finalizers();
    if guarded.meta().deletion_timestamp.is_some() && finalizers.iter().any(|f| f == FINALIZER) {
        let kept: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
        let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": guarded.resource_version()}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::Finalizer(e.to_string()))?;
        let note = format!("{message}; it is deleted without cleanup: its namespace is left as it is");
        publish(
            ctx,
            guarded,
            &Notice { type_: EventType::Warning, reason: "InvalidObject".into(), action: "Cleanup", note },
        )
        .await;
        return Ok(Action::await_change());
    }
    let previous = ctx.memory.lock().expect("memory lock").last_status(&name, &uid).cloned().unwrap_or_default();
    let status =
        status::undecodable(&previous, guarded.meta().generation, &message, &status::stamp(jiff::Timestamp::now()));
    if status != previous {
        publish(
            ctx,
            guarded,
            &Notice { type_: EventType::Warning, reason: "InvalidObject".into(), action: "Decode", note: message },
        )
        .await;
        // The status may be refused too (the stored spec fails today's schema): the Event told.
        if let Err(e) = write_status_of(ctx, &name, &uid, &status).await {
            warn!(app = %name, error = %e, "could not write the status of an undecodable app");
        }
    }
    Ok(Action::await_change())
}

async fn reconcile_app(app: &ResilientApp, ctx: &Context) -> Result<Action> {
    let (name, namespace) = (app.name_any(), app.target_namespace());
    let nodes: Vec<Arc<Node>> = ctx.stores.nodes.state();
    let node_refs: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
    let plan = Plan::new(app, plan_app_zones(&node_refs, app, app.status.as_ref()));
    // Exact for the failover clock; in whole seconds for everything the status shows.
    let exact = jiff::Timestamp::now();
    let now = status::stamp(exact);
    // The namespace as the cache knows it; one missing there is created (no GET first). A create
    // answered 409 means it exists after all (someone else's, or ours and the cache lags): only
    // then is it read from the API server and the gate decided again.
    let cached = ctx.stores.namespaces.get(&ObjectRef::new(&namespace));
    let storage = storage_class_modes(ctx, app).await?;
    let gated = |ns: Option<&Namespace>| {
        let mut gated = gate(app, plan.clone(), ns, &now);
        if let Ok(validated) = &mut gated {
            validated.warnings.extend(storage_warnings(app, &storage));
        }
        gated
    };
    let (gate, applied) = match apply_if_open(ctx, app, gated(cached.as_deref())).await {
        Err(Error::NamespaceTaken(_)) => {
            let live = read_namespace(ctx, &namespace).await?;
            apply_if_open(ctx, app, gated(live.as_deref())).await?
        }
        other => other?,
    };
    let attempt = ctx.count_rejections(&name, &gate);
    ctx.memory.lock().expect("memory lock").park(&name, status::parked(&gate));
    tracing::Span::current().record("writes", applied.writes);
    let observed = observe(ctx, &name, &namespace, &nodes);
    let failover = Duration::from_secs(u64::from(app.spec.resilience.failover_seconds));
    let (lost, failover_in) =
        zone_failover(nodes.iter().map(AsRef::as_ref), &app.spec.resilience.zones, exact, failover);
    let failed_over = match &gate {
        Ok(_) if !lost.is_empty() => fail_over(ctx, app, &namespace, &observed, &lost).await?,
        _ => None,
    };
    let rebalanced = match lost.is_empty() && may_rebalance(app, &gate, applied.writes) {
        true => rebalance(ctx, app, &namespace, &nodes, &gate, &observed).await?,
        false => Rebalanced::Nothing,
    };
    let writes = applied.writes + usize::from(failed_over.is_some());
    let pass = Pass { app, gate: &gate, observed: &observed, writes, rebalanced, attempt, failed_over, failover_in };
    let previous = previous_status(ctx, app);
    let outcome = status::compute(&pass, &previous, &now, ctx.resync);
    let uid = app.uid().unwrap_or_default();
    if outcome.status != previous {
        let settling = gate.is_ok() && outcome.status.observed_generation != previous.observed_generation;
        let held = ctx.memory.lock().expect("memory lock").hold_first_status(
            &name,
            &uid,
            &outcome.status,
            settling,
            Instant::now(),
        );
        if let Some(left) = held {
            // The first status of a generation waits for the rollout to settle (or for the hold to
            // end): one status write per new app instead of one per step of its rollout. What this
            // pass did (adopt, fail over, rebalance) is told now; the status changes wait with it.
            debug!(app = %name, left_ms = left.as_millis() as u64, "first status of this generation held back");
            for notice in outcome.events.iter().filter(|e| status::is_one_off(e)) {
                publish(ctx, app, notice).await;
            }
            return Ok(Action::requeue(left));
        }
        write_status_of(ctx, &name, &uid, &outcome.status).await?;
    }
    let events = ctx.memory.lock().expect("memory lock").worth_publishing(&name, &uid, &outcome.status, outcome.events);
    for notice in &events {
        publish(ctx, app, notice).await;
    }
    ctx.metrics.observe_app(&name, &outcome.status);
    Ok(outcome.action)
}

/// Apply the app's children when the gate is open. A write the API server refuses for good
/// (admission, validation, RBAC) closes the gate (`Rejected`, with its message); anything else
/// (timeouts, 429, 5xx) is an error to retry.
async fn apply_if_open(ctx: &Context, app: &ResilientApp, gate: Gate) -> Result<(Gate, Applied)> {
    let applied = match &gate {
        Ok(validated) => apply(ctx, app, validated).await,
        Err(blocked) => {
            info!(app = %app.name_any(), reason = blocked.why.reason(), "not applying: {}", blocked.why.message());
            Ok(Applied::default())
        }
    };
    match applied {
        Ok(applied) => Ok((gate, applied)),
        Err(e) => Ok((Err(rejected(gate, e)?), Applied::default())),
    }
}

/// The gate's verdict turned into `Rejected` when `error` is a write the API server refuses for
/// good; the error itself otherwise.
fn rejected(gate: Gate, error: Error) -> Result<Blocked> {
    let Some(message) = error.rejection() else {
        return Err(error);
    };
    let plan = match gate {
        Ok(v) => v.plan,
        Err(b) => b.plan,
    };
    warn!(error = %error_chain(&error), "the API server refused a write");
    Ok(Blocked { plan, why: Blocker::Rejected(message) })
}

/// The app's namespace: from the cache of ours, else (someone else's, or the cache lags) from the
/// API server. `None` when it does not exist.
pub(super) async fn read_namespace(ctx: &Context, name: &str) -> Result<Option<Arc<Namespace>>> {
    if let Some(ns) = ctx.stores.namespaces.get(&ObjectRef::new(name)) {
        return Ok(Some(ns));
    }
    match Api::<Namespace>::all(ctx.client.clone()).get_opt(name).await {
        Ok(ns) => Ok(ns.map(Arc::new)),
        Err(source) => Err(Error::ReadNamespace { name: name.to_string(), source }),
    }
}

/// The volumeBindingMode of every StorageClass the app's volume claims name (`None`: no such
/// class). Read only for apps with stateful components.
async fn storage_class_modes(ctx: &Context, app: &ResilientApp) -> Result<StorageClassModes> {
    let api: Api<StorageClass> = Api::all(ctx.client.clone());
    let mut modes = StorageClassModes::new();
    for name in storage_classes(app) {
        let class =
            api.get_opt(&name).await.map_err(|source| Error::ReadStorageClass { name: name.clone(), source })?;
        let mode = class.map(|c| c.volume_binding_mode.unwrap_or_else(|| "Immediate".to_string()));
        modes.insert(name, mode);
    }
    Ok(modes)
}

/// The app's Deployments and StatefulSets (by component) and pods in its namespace, and the zone
/// of every node.
fn observe(ctx: &Context, name: &str, namespace: &str, nodes: &[Arc<Node>]) -> Observed {
    let deployments = ctx
        .stores
        .deployments
        .of_app(name, namespace)
        .into_iter()
        .filter_map(|d| d.labels().get(LABEL_COMPONENT).cloned().map(|c| (c, d)))
        .collect();
    let stateful_sets = ctx
        .stores
        .stateful_sets
        .of_app(name, namespace)
        .into_iter()
        .filter_map(|d| d.labels().get(LABEL_COMPONENT).cloned().map(|c| (c, d)))
        .collect();
    let pods = ctx.stores.pods.of_app(name, namespace);
    Observed { deployments, stateful_sets, pods, node_zones: ZoneMap::of(nodes.iter().map(AsRef::as_ref)) }
}

/// Whether a pod belongs to a stateful component of `app`: it is bound to a zonal volume, so it
/// is never deleted to fail over nor evicted to rebalance (at most one pod per identity).
fn stateful_pod(app: &ResilientApp, pod: &Pod) -> bool {
    let component = pod.labels().get(LABEL_COMPONENT);
    app.spec.components.iter().any(|c| c.is_stateful() && Some(&c.name) == component)
}

/// The status this pass starts from: the one last written (the watch cache can lag behind our own
/// writes), else the app's own. Once the cache shows the status written, it is forgotten: the
/// cache holds it, and a copy per app is memory for nothing.
fn previous_status(ctx: &Context, app: &ResilientApp) -> ResilientAppStatus {
    let mut memory = ctx.memory.lock().expect("memory lock");
    let name = app.name_any();
    match memory.last_status(&name, &app.uid().unwrap_or_default()) {
        Some(written) if Some(written) != app.status.as_ref() => written.clone(),
        Some(_) => {
            memory.cache_caught_up(&name);
            app.status.clone().unwrap_or_default()
        }
        None => app.status.clone().unwrap_or_default(),
    }
}

/// Delete (gracefully, as taint eviction would) the app's pods in zones lost for failoverSeconds,
/// so that their ReplicaSets replace them at once in the zones that are up, instead of waiting for
/// the node lifecycle controller to taint the zone's nodes one at a time. Returns what was done.
/// Pods of stateful components stay: their volumes are in the lost zone, a replacement could not
/// run anywhere else, and deleting one whose node may still run it would break at-most-one.
async fn fail_over(
    ctx: &Context,
    app: &ResilientApp,
    namespace: &str,
    observed: &Observed,
    lost: &[String],
) -> Result<Option<String>> {
    let doomed: Vec<&Arc<Pod>> = observed
        .pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !stateful_pod(app, p))
        .filter(|p| observed.node_zones.zone_of(p).is_some_and(|z| lost.contains(z)))
        .collect();
    if doomed.is_empty() {
        return Ok(None);
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    for pod in &doomed {
        match api.delete(&pod.name_any(), &kube::api::DeleteParams::default()).await {
            Ok(_) => ctx.metrics.api_write("delete", "Pod"),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(source) => return Err(Error::Delete { kind: "Pod".into(), name: pod.name_any(), source }),
        }
    }
    let note = format!(
        "{} lost for failoverSeconds: deleted {} of its pods so that they are replaced in the zones that are up",
        lost.join(" and "),
        doomed.len()
    );
    info!(namespace, "{note}");
    Ok(Some(note))
}

/// Evict at most one pod of the app to restore an even spread, once every allowed zone is back.
async fn rebalance(
    ctx: &Context,
    app: &ResilientApp,
    namespace: &str,
    nodes: &[Arc<Node>],
    gate: &Gate,
    observed: &Observed,
) -> Result<Rebalanced> {
    let zones = &plan_of(gate).zones;
    let healthy = allowed_zones_healthy(nodes.iter().map(AsRef::as_ref), &app.spec.resilience.zones, zones);
    // Stateful pods cannot move: their volumes pin them to their zone.
    for component in app.spec.components.iter().filter(|c| !c.is_stateful()) {
        if !plan_of(gate).replicas.contains_key(&component.name) {
            continue;
        }
        let pods: Vec<PodPlacement> = observed
            .pods
            .iter()
            .filter(|p| p.labels().get(LABEL_COMPONENT) == Some(&component.name))
            .map(|p| PodPlacement {
                name: p.name_any(),
                zone: observed.node_zones.zone_of(p).cloned(),
                ready: pod_ready(p),
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
            .collect();
        let input = RebalanceInput {
            pods: &pods,
            usable_zones: plan_of(gate).zones_of(&component.name),
            all_zones_healthy: healthy,
            // An autoscaled component: spread what its autoscaler runs now.
            replicas: observed.replicas_of(component, plan_of(gate)),
            min_available: component.min_available,
        };
        let chosen = match choose_move(&input) {
            Ok(chosen) => chosen,
            Err(hold) => {
                debug!(app = %app.name_any(), component = %component.name, ?hold, "not rebalancing");
                continue;
            }
        };
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        match api.evict(&chosen.pod, &EvictParams::default()).await {
            Ok(_) => {}
            // The PodDisruptionBudget (or the API server's rate limit) says not now: try again soon.
            Err(kube::Error::Api(s)) if s.code == 429 => {
                debug!(app = %app.name_any(), pod = %chosen.pod, "eviction refused for now: {}", s.message);
                return Ok(Rebalanced::Refused);
            }
            // Gone meanwhile: its deletion triggers the next pass.
            Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(Rebalanced::Nothing),
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
        return Ok(Rebalanced::Moved(moved));
    }
    Ok(Rebalanced::Nothing)
}

async fn write_status_of(ctx: &Context, name: &str, uid: &str, status: &ResilientAppStatus) -> Result<()> {
    let api: Api<ResilientApp> = Api::all(ctx.client.clone());
    let patch = json!({
        "apiVersion": ResilientApp::api_version(&()),
        "kind": ResilientApp::kind(&()),
        "status": status,
    });
    // Remembered before the write: its echo can come through the watch before the response.
    ctx.memory.lock().expect("memory lock").wrote_status(name, uid, status.clone());
    if let Err(e) = api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await {
        // Not written: the next pass starts from what the cache shows.
        ctx.memory.lock().expect("memory lock").cache_caught_up(name);
        return Err(Error::Status(e));
    }
    ctx.metrics.api_write("apply", "ResilientApp/status");
    Ok(())
}

pub(super) async fn publish<K: Resource<DynamicType = ()>>(ctx: &Context, app: &K, notice: &Notice) {
    let event = Event {
        type_: notice.type_,
        reason: notice.reason.clone(),
        note: Some(notice.note.chars().take(1000).collect()),
        action: notice.action.to_string(),
        secondary: None,
    };
    let published = if super::status::is_spec_warning(notice) {
        kube::runtime::events::Recorder::new(ctx.client.clone(), ctx.reporter.clone())
            .publish(&event, &app.object_ref(&()))
            .await
    } else {
        ctx.recorder.publish(&event, &app.object_ref(&())).await
    };
    match published {
        Ok(()) => ctx.metrics.api_write("create", "Event"),
        Err(e) => warn!(app = %app.name_any(), error = %e, "failed to publish event"),
    }
}
