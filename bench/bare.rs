//! The bare-client baseline: the same children the operator writes for an app, rendered by
//! `render`, sent by a minimal client (a create of the namespace, then server-side applies in the
//! operator's order, each step concurrently) at the same offered rate, with no operator running.
//! What it reaches is what the API server gives any client; the operator's throughput is compared
//! with it in the same run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use resilient_operator::api::{MANAGER, ResilientApp};
use resilient_operator::render::{Child, Plan, render};
use serde_json::Value;

/// One app's children as the bare client sends them: steps of objects (JSON), the Namespace first.
pub fn children(app: &ResilientApp, zones: &[String]) -> Vec<Vec<Value>> {
    let plan = Plan::for_zones(app, zones);
    render(app, &plan)
        .into_steps()
        .into_iter()
        .map(|step| {
            step.iter()
                .map(|child: &Child| {
                    let mut v = serde_json::to_value(child).expect("a rendered child serializes");
                    // No owner: the app does not exist, and the garbage collector would delete them.
                    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("ownerReferences");
                    }
                    v
                })
                .collect()
        })
        .collect()
}

/// What one app cost the bare client.
pub struct Outcome {
    /// Seconds from the offered time to the last child answered, when every request got a 2xx.
    pub seconds: Option<f64>,
    pub requests: usize,
    pub error: Option<String>,
}

fn api_for(client: &Client, obj: &Value) -> Api<DynamicObject> {
    let (group, version) = match obj["apiVersion"].as_str().unwrap_or("v1").split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), obj["apiVersion"].as_str().unwrap_or("v1").to_string()),
    };
    let gvk = GroupVersionKind { group, version, kind: obj["kind"].as_str().unwrap_or_default().to_string() };
    let ar = ApiResource::from_gvk(&gvk);
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// Whether the operator would try this again: throttled (429), a server error, or no answer.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// `call` until it succeeds or fails for good, backing off as the operator does after a failed pass
/// (1 s, 2 s, 4 s ...); `requests` counts every attempt.
async fn retrying<T, F, Fut>(requests: &mut usize, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 0;
    loop {
        *requests += 1;
        match call().await {
            Err(e) if transient(&e) && attempt < 8 => {
                attempt += 1;
                tokio::time::sleep(resilient_operator::controller::backoff_delay(attempt)).await;
            }
            other => return other,
        }
    }
}

/// Send one app's children; `offered` is when the app was due. Throttled and failed requests are
/// retried as the operator retries them, so both sides of the comparison get the same treatment.
pub async fn send(client: Client, steps: Vec<Vec<Value>>, offered: Instant) -> Outcome {
    let mut requests = 0;
    let fail = |requests, e: kube::Error| Outcome { seconds: None, requests, error: Some(e.to_string()) };
    for (i, step) in steps.into_iter().enumerate() {
        if i == 0 {
            // The namespace is created, never applied over (as the operator does).
            for ns in step {
                let ns: Namespace = serde_json::from_value(ns).expect("a rendered namespace");
                let params = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
                let api = Api::<Namespace>::all(client.clone());
                if let Err(e) = retrying(&mut requests, || api.create(&params, &ns)).await {
                    return fail(requests, e);
                }
            }
            continue;
        }
        let writes = step.iter().map(|obj| {
            let api = api_for(&client, obj);
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            async move {
                let mut requests = 0;
                let params = PatchParams::apply(MANAGER).force();
                let patch = Patch::Apply(obj);
                let result = retrying(&mut requests, || api.patch(&name, &params, &patch)).await;
                (requests, result)
            }
        });
        for (n, result) in futures::future::join_all(writes).await {
            requests += n;
            if let Err(e) = result {
                return fail(requests, e);
            }
        }
    }
    Outcome { seconds: Some(offered.elapsed().as_secs_f64()), requests, error: None }
}

/// Offer `names` at `rate` per second (open loop) and wait for every answer.
pub async fn run(client: &Client, apps: Vec<ResilientApp>, zones: &[String], rate: f64) -> BTreeMap<String, Outcome> {
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    for (k, app) in apps.into_iter().enumerate() {
        let due = started + period * k as u32;
        tokio::time::sleep_until(due.into()).await;
        let name = app.metadata.name.clone().unwrap_or_default();
        let steps = children(&app, zones);
        let client = client.clone();
        tasks.spawn(async move { (name, send(client, steps, due).await) });
    }
    let mut out = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok((name, outcome)) = done {
            out.insert(name, outcome);
        }
    }
    out
}
