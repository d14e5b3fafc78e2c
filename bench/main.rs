//! `resilient-bench`: the scenarios of `make bench` against the local cluster.
//!
//! 1. single apps on an idle cluster, then bursts of apps created at a fixed rate: time from
//!    creating a ResilientApp to all its children existing (from the API server's audit log);
//! 2. what the operator sent per verb, per app and for a full resync (a restart) of apps in sync;
//! 3. operator memory and CPU at each size (and the control plane's CPU beside it);
//! 4. drift repair; 5. restart. Scenario 6 (zone outage) is `bench/zone-outage.sh`, whose JSON
//!    is folded into the results.
//!
//! Writes the results as JSON and renders them as Markdown (bench/report.rs). Run through
//! `bench/run.sh` (`make bench`), which starts the cluster and builds the release binaries.

mod bare;
mod measure;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use resilient_operator::api::ResilientApp;
use serde_json::{Value, json};

use measure::{Histogram, Request, Summary, Usage};

#[derive(Parser, Debug)]
struct Args {
    /// Apps created one at a time on the idle cluster, each waited for.
    #[arg(long, default_value_t = 20)]
    singles: usize,
    /// First size: apps in the cluster (the singles included) for the small memory point.
    #[arg(long, default_value_t = 100)]
    small: usize,
    /// Apps created at --rate on a cluster without apps (the small ones are deleted first).
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// Grow to this many apps after the burst, at the same rate (0: skip).
    #[arg(long, default_value_t = 5000)]
    large: usize,
    /// Creations per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Drift repairs to time (half deleted Deployments, half scaled ones).
    #[arg(long, default_value_t = 50)]
    drift_samples: usize,
    /// The operator binary (release build).
    #[arg(long, default_value = "target/release/resilient-operator")]
    operator: PathBuf,
    /// Kubeconfig the operator runs with (its ServiceAccount).
    #[arg(long, default_value = ".cluster/operator.kubeconfig")]
    operator_kubeconfig: PathBuf,
    /// Admin kubeconfig of the local cluster, for the bench itself.
    #[arg(long, default_value = ".cluster/kubeconfig")]
    kubeconfig: PathBuf,
    /// The API server's audit log.
    #[arg(long, default_value = ".cluster/logs/audit.log")]
    audit_log: PathBuf,
    /// Pid files of the control plane (e2e/cluster.sh).
    #[arg(long, default_value = ".cluster/pids")]
    pids: PathBuf,
    /// JSON written by bench/zone-outage.sh (one per zone size), folded into the results.
    #[arg(long)]
    zone_outage: Vec<PathBuf>,
    /// Run the bare-client baseline before the burst (same apps, same rate, no operator).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    bare: bool,
    /// Facts about the run gathered by bench/run.sh (versions, mode), as a JSON object.
    #[arg(long)]
    conditions: Option<PathBuf>,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results.json")]
    results: PathBuf,
    /// Where the Markdown report goes.
    #[arg(long, default_value = "docs/benchmarks.md")]
    doc: PathBuf,
    /// Hand-written notes appended to the report (history, context), if the file exists.
    #[arg(long, default_value = "bench/notes.md")]
    notes: PathBuf,
    /// The operator's log.
    #[arg(long, default_value = "bench/out/operator.log")]
    operator_log: PathBuf,
    /// Only render the report from existing results (no cluster needed).
    #[arg(long)]
    report_only: bool,
}

const OPERATOR_AGENT: &str = resilient_operator::cli::USER_AGENT;
const BENCH_AGENT: &str = "resilient-bench";
const BARE_AGENT: &str = "resilient-bench-bare";
const PREFIX: &str = "load-";
const BARE_PREFIX: &str = "bare-";
const METRICS: &str = "127.0.0.1:18090";

fn log(msg: impl std::fmt::Display) {
    eprintln!("[bench {}] {msg}", jiff::Zoned::now().strftime("%H:%M:%S"));
}

fn app_name(i: usize) -> String {
    format!("{PREFIX}{i:05}")
}

fn app(name: &str) -> Value {
    json!({
        "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp",
        "metadata": {"name": name, "labels": {"bench": "load"}},
        "spec": {
            "resilience": {"zoneFailuresTolerated": 0},
            "components": [{"name": "web", "image": "registry.example/web:1", "minAvailable": 1,
                            "ports": [{"containerPort": 8080}], "service": {}}]
        }
    })
}

struct Operator {
    child: Child,
    ticks: f64,
}

impl Operator {
    fn start(args: &Args, ticks: f64) -> anyhow::Result<Self> {
        // Its readiness and metrics are read on this address: an operator left by an earlier,
        // killed run would answer for this one (and its writes count as this one's).
        if std::net::TcpStream::connect(METRICS).is_ok() {
            bail!("something already listens on {METRICS} (an operator of an earlier run?): stop it first");
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&args.operator_log)?;
        let child = Command::new(&args.operator)
            .args(["run", "--metrics-address", METRICS])
            .env("KUBECONFIG", &args.operator_kubeconfig)
            .env("POD_NAME", "bench")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the operator")?;
        Ok(Self { child, ticks })
    }

    fn metrics(&self) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(METRICS).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    }

    /// Whether /readyz answers 200: every cache has synced.
    fn ready(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(METRICS) else { return false };
        if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        s.read_to_string(&mut body).is_ok() && body.starts_with("HTTP/1.1 200")
    }

    fn metric(&self, name: &str) -> f64 {
        self.metrics().map(|m| measure::metric_sum(&m, name)).unwrap_or(0.0)
    }

    /// The settings the running operator reports (its build_info metric's labels).
    fn settings(&self) -> Value {
        let metrics = self.metrics().unwrap_or_default();
        let Some(line) = metrics.lines().find(|l| l.starts_with("resilient_operator_build_info{")) else {
            return Value::Null;
        };
        let labels = line.split_once('{').and_then(|(_, r)| r.rsplit_once('}')).map(|(l, _)| l).unwrap_or_default();
        let map: serde_json::Map<String, Value> = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.to_string(), json!(v.trim_end_matches('"'))))
            .collect();
        Value::Object(map)
    }

    /// Writes the operator counted since it started (every verb and kind).
    fn writes(&self) -> f64 {
        self.metric("resilient_operator_api_writes_total")
    }

    /// Apps the operator has reconciled at least once since it started.
    fn apps_seen(&self) -> f64 {
        self.metric("resilient_operator_apps")
    }

    fn usage(&self) -> Usage {
        measure::usage(self.child.id(), self.ticks)
    }

    fn stop(mut self) {
        // SIGTERM: a clean shutdown, as in a rolling restart.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    /// A run that fails half-way does not leave its operator running (a no-op after `stop`).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").arg(self.child.id().to_string()).status();
            let _ = self.child.wait();
        }
    }
}

async fn poll<F, Fut>(what: &str, timeout: Duration, every: Duration, mut done: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    while !done().await? {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
    Ok(start.elapsed())
}

struct Bench {
    args: Args,
    client: Client,
    apps: Api<ResilientApp>,
    operator: Option<Operator>,
    ticks: f64,
    pids: BTreeMap<String, u32>,
    /// Watched, not polled: the bench sends no request inside a measured window to learn progress.
    watched: Watched,
}

/// Caches kept by watches the bench starts before any measured window.
struct Watched {
    deployments: Store<Deployment>,
    apps: Store<ResilientApp>,
}

impl Watched {
    async fn start(client: &Client) -> anyhow::Result<Self> {
        let (deployments, writer) = reflector::store();
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=resilient-operator");
        let stream = watcher(Api::<Deployment>::all(client.clone()), config)
            .default_backoff()
            .modify(|d: &mut Deployment| d.metadata.managed_fields = None)
            .reflect(writer);
        tokio::spawn(stream.for_each(|_| futures::future::ready(())));
        let (apps, writer) = reflector::store();
        let stream = watcher(Api::<ResilientApp>::all(client.clone()), watcher::Config::default().labels("bench=load"))
            .default_backoff()
            .modify(|a: &mut ResilientApp| a.metadata.managed_fields = None)
            .reflect(writer);
        tokio::spawn(stream.for_each(|_| futures::future::ready(())));
        deployments.wait_until_ready().await?;
        apps.wait_until_ready().await?;
        Ok(Self { deployments, apps })
    }

    /// Deployments in namespaces starting with `prefix`: (existing, with every replica ready).
    fn deployments(&self, prefix: &str) -> (usize, usize) {
        let ours: Vec<Arc<Deployment>> = self
            .deployments
            .state()
            .into_iter()
            .filter(|d| d.namespace().is_some_and(|n| n.starts_with(prefix)))
            .collect();
        let ready = ours
            .iter()
            .filter(|d| {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) >= want
            })
            .count();
        (ours.len(), ready)
    }

    fn app_ready(&self, name: &str) -> bool {
        self.apps.get(&kube::runtime::reflector::ObjectRef::new(name)).is_some_and(|a| {
            a.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    }

    fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments.get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
    }
}

/// CPU seconds of the control plane's processes at one moment.
type CpuSnapshot = BTreeMap<String, Usage>;

impl Bench {
    fn operator(&self) -> &Operator {
        self.operator.as_ref().expect("operator running")
    }

    async fn start_operator(&mut self) -> anyhow::Result<()> {
        let op = Operator::start(&self.args, self.ticks)?;
        self.operator = Some(op);
        poll("the operator's /metrics", Duration::from_secs(60), Duration::from_millis(10), || async {
            Ok(self.operator().metrics().is_some())
        })
        .await?;
        Ok(())
    }

    /// Starts the operator and waits until its caches have synced, so that its first lists fall
    /// outside the next measured window.
    async fn start_operator_synced(&mut self) -> anyhow::Result<()> {
        self.start_operator().await?;
        poll("the operator's caches", Duration::from_secs(120), Duration::from_millis(10), || async {
            Ok(self.operator().ready())
        })
        .await?;
        Ok(())
    }

    fn cluster_usage(&self) -> CpuSnapshot {
        self.pids.iter().map(|(n, pid)| (n.clone(), measure::usage(*pid, self.ticks))).collect()
    }

    async fn apiserver_histogram(&self) -> Histogram {
        let text = self.client.request_text(http::Request::get("/metrics").body(vec![]).unwrap()).await;
        text.map(|t| {
            Histogram::parse(
                &t,
                "apiserver_request_duration_seconds",
                &["verb=\"WATCH\"", "verb=\"CONNECT\"", "verb=\"WATCHLIST\""],
            )
        })
        .unwrap_or_default()
    }

    async fn create(&self, name: &str) -> anyhow::Result<()> {
        self.apps.patch(name, &PatchParams::apply(BENCH_AGENT).force(), &Patch::Apply(app(name))).await?;
        Ok(())
    }

    /// Waits until ResilientApps are served for server-side apply, as the bench creates them. On a
    /// cluster just started, a dry-run `create` (bench/run.sh) was accepted and the first apply two
    /// seconds later still answered 503 ("Resource kind ... not found"); the API server serves a
    /// new CRD's apply once its schema's models are built.
    async fn wait_served(&self) -> anyhow::Result<()> {
        let name = "bench-served-check";
        let params = PatchParams::apply(BENCH_AGENT).force().dry_run();
        let started = Instant::now();
        loop {
            match self.apps.patch(name, &params, &Patch::Apply(app(name))).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s))
                    if (s.code == 503 || s.code == 429) && started.elapsed() < Duration::from_secs(60) =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => bail!("ResilientApps are not served for server-side apply: {e}"),
            }
        }
    }

    /// Deletes every bench app and waits until their namespaces are gone.
    async fn delete_all(&self) -> anyhow::Result<()> {
        // A CRD that was just installed answers 429 for a moment while its storage initializes.
        let mut tries = 0;
        while let Err(e) =
            self.apps.delete_collection(&DeleteParams::default(), &ListParams::default().labels("bench=load")).await
        {
            tries += 1;
            if tries > 30 {
                return Err(e.into());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let took = poll(
            "the bench apps and their namespaces to be gone",
            Duration::from_secs(900),
            Duration::from_secs(2),
            || async {
                let apps = self.apps.list_metadata(&ListParams::default().labels("bench=load")).await?.items.len();
                let ns = namespaces.list_metadata(&ListParams::default()).await?;
                let left = ns.items.iter().filter(|n| n.name_any().starts_with(PREFIX)).count();
                Ok(apps == 0 && left == 0)
            },
        )
        .await?;
        log(format!("bench apps and namespaces gone ({:.0} s)", took.as_secs_f64()));
        Ok(())
    }

    /// Deployments of bench apps: (existing, with every replica ready), from the watch.
    fn deployments(&self) -> (usize, usize) {
        self.watched.deployments(PREFIX)
    }

    async fn running_pods(&self) -> anyhow::Result<usize> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let list = api.list_metadata(&ListParams::default().fields("status.phase=Running")).await?;
        Ok(list.items.iter().filter(|p| p.namespace().is_some_and(|n| n.starts_with(PREFIX))).count())
    }

    /// Waits until `apps` bench Deployments exist and are ready and the operator has written
    /// nothing for 10 s. Returns whether that happened before the deadline.
    async fn settle(&self, apps: usize) -> anyhow::Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(1200);
        let mut last = (self.operator().writes(), Instant::now());
        let mut deployments_ready = false;
        let mut checked = Instant::now() - Duration::from_secs(60);
        let mut reported = Instant::now();
        loop {
            if Instant::now() > deadline {
                log("not settled after 20 minutes; measuring anyway");
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let w = self.operator().writes();
            if w != last.0 {
                last = (w, Instant::now());
            }
            if !deployments_ready && checked.elapsed() > Duration::from_secs(5) {
                checked = Instant::now();
                let (exist, ready) = self.deployments();
                deployments_ready = exist >= apps && ready >= apps;
                if reported.elapsed() > Duration::from_secs(30) {
                    reported = Instant::now();
                    log(format!("settling: {exist}/{apps} Deployments, {ready} ready"));
                }
            }
            if deployments_ready && last.1.elapsed() >= Duration::from_secs(10) {
                return Ok(true);
            }
        }
    }

    /// Creates apps `from..to` at the configured rate, waits until all are settled, and measures.
    async fn grow(&mut self, label: &str, from: usize, to: usize) -> anyhow::Result<Value> {
        let n = to - from;
        log(format!("{label}: creating {n} apps at {}/s ({} in the cluster after)", self.args.rate, to));
        let since = measure::now();
        let cpu0 = self.cluster_usage();
        let op0 = self.operator().usage();
        let hist0 = self.apiserver_histogram().await;
        let started = Instant::now();
        let started_epoch = measure::now();
        let period = Duration::from_secs_f64(1.0 / self.args.rate);
        let mut peak = op0.rss_mib;
        let step = (n / 10).max(10);
        // Open loop: one creation every period whether or not the earlier ones were answered, so a
        // slow API server shows up as latency, not as a lower rate. A creation counts only when it
        // was answered with a 2xx.
        let mut creates = tokio::task::JoinSet::new();
        let mut offered: BTreeMap<String, f64> = BTreeMap::new();
        let mut failed: Vec<String> = Vec::new();
        let collect = |done: Result<(String, Result<(), kube::Error>), tokio::task::JoinError>,
                       offered: &mut BTreeMap<String, f64>,
                       failed: &mut Vec<String>| {
            match done {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(e))) => {
                    offered.remove(&name);
                    failed.push(format!("{name}: {e}"));
                }
                Err(e) => failed.push(e.to_string()),
            }
        };
        for (k, i) in (from..to).enumerate() {
            let due = started + period * k as u32;
            tokio::time::sleep_until(due.into()).await;
            let (apps, name) = (self.apps.clone(), app_name(i));
            offered.insert(name.clone(), started_epoch + (period * k as u32).as_secs_f64());
            creates.spawn(async move {
                let r = apps.patch(&name, &PatchParams::apply(BENCH_AGENT).force(), &Patch::Apply(app(&name))).await;
                (name, r.map(|_| ()))
            });
            while let Some(done) = creates.try_join_next() {
                collect(done, &mut offered, &mut failed);
            }
            if (k + 1) % step == 0 {
                peak = peak.max(self.operator().usage().rss_mib);
                log(format!("{label}: {} of {n} sent", k + 1));
            }
        }
        while let Some(done) = creates.join_next().await {
            collect(done, &mut offered, &mut failed);
        }
        if !failed.is_empty() {
            log(format!("{label}: {} creations were not answered with a 2xx, e.g. {}", failed.len(), failed[0]));
        }
        let creating = started.elapsed().as_secs_f64();
        // All children written: every app has its Deployment (the last child the operator applies),
        // as the watch tells. Apps that never get there are reported, not waited for forever.
        let expected = to - failed.len();
        let all_children =
            poll("every app's Deployment", Duration::from_secs(900), Duration::from_millis(200), || async {
                Ok(self.deployments().0 >= expected)
            })
            .await
            .map(|_| started.elapsed().as_secs_f64())
            .ok();
        log(format!("{label}: every app has its children {all_children:?} s after the first was created"));
        let settled = self.settle(expected).await?;
        let wall = started.elapsed().as_secs_f64();
        let until = measure::now();
        let op1 = self.operator().usage();
        let cpu1 = self.cluster_usage();
        let hist = self.apiserver_histogram().await.minus(&hist0);
        let pods = self.running_pods().await?;
        let requests = measure::audit(&self.args.audit_log, since, until)?;
        let latency = children_latency(&requests, &offered, OPERATOR_AGENT);
        let without: Vec<&String> = offered.keys().filter(|n| !latency.contains_key(*n)).collect();
        let throughput = throughput(&latency, &offered);
        let ops: Vec<&Request> = requests.iter().filter(|r| r.user_agent.starts_with(OPERATOR_AGENT)).collect();
        let per_verb = measure::per_verb(ops.iter().copied());
        let per_resource = measure::per_resource(ops.iter().copied());
        let total: u64 = per_verb.values().sum();
        let components: BTreeMap<String, Value> = cpu1
            .iter()
            .map(|(name, u)| {
                let cpu = u.cpu_seconds - cpu0.get(name).map(|u| u.cpu_seconds).unwrap_or(0.0);
                (name.clone(), json!({"cpuSeconds": cpu, "coreShare": cpu / wall, "rssMiB": u.rss_mib}))
            })
            .collect();
        let op_cpu = op1.cpu_seconds - op0.cpu_seconds;
        let latency = Summary::of(latency.values().copied().collect());
        log(format!(
            "{label}: apply-to-children p50 {:.2} s p99 {:.2} s; {:.1} operator requests per app; {:.1} apps/s; operator RSS {:.0} MiB; {} apps without children",
            latency.p50,
            latency.p99,
            total as f64 / n as f64,
            throughput,
            op1.rss_mib,
            without.len()
        ));
        Ok(json!({
            "label": label, "appsCreated": n, "appsInCluster": to, "rate": self.args.rate,
            "creationsFailed": failed.len(), "creationFailureSamples": failed.iter().take(5).collect::<Vec<_>>(),
            "appsWithoutChildren": without.len(), "appsWithoutChildrenSamples": without.iter().take(10).collect::<Vec<_>>(),
            "creatingSeconds": creating, "allChildrenSeconds": all_children, "settled": settled, "wallSeconds": wall,
            "applyToChildrenSeconds": latency, "appsPerSecond": throughput,
            "operatorRequestsPerVerb": per_verb, "operatorRequestsPerResource": per_resource,
            "operatorRequestsPerApp": total as f64 / n as f64,
            "operatorWrites": ops.iter().filter(|r| r.is_write()).count(),
            "apiServerSecondsForOperatorRequests": Summary::of(ops.iter().map(|r| r.seconds()).collect()),
            "apiServer": {"requests": hist.count(), "p50": hist.quantile(0.5), "p99": hist.quantile(0.99),
                          "requestsPerSecond": hist.count() / wall},
            "controlPlane": components,
            "operator": {"steadyRssMiB": op1.rss_mib, "peakRssMiB": peak.max(op1.peak_rss_mib), "cpuSeconds": op_cpu,
                         "coreShare": op_cpu / wall},
            "podsRunning": pods,
        }))
    }

    /// The bare-client baseline: `n` apps' children (rendered by `render`) sent at the same rate
    /// by a minimal client, with the operator stopped. Its namespaces are deleted afterwards.
    async fn bare(&mut self, n: usize) -> anyhow::Result<Value> {
        log(format!("bare client: {n} apps' children at {}/s, no operator", self.args.rate));
        if let Some(op) = self.operator.take() {
            op.stop();
        }
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let nodes = nodes.list(&ListParams::default()).await?.items;
        let zones = resilient_operator::resilience::plan_zones(nodes.iter(), &[], &[]).zones;
        let apps: Vec<ResilientApp> = (0..n)
            .map(|i| {
                let name = format!("{BARE_PREFIX}{i:05}");
                serde_json::from_value(app(&name)).expect("the bench app is a ResilientApp")
            })
            .collect();
        // The operator's own identity (its ServiceAccount token): the API server's priority and
        // fairness puts both in the same priority level, so the comparison is like for like.
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.args.operator_kubeconfig)?;
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        config.default_retry = false;
        config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(BARE_AGENT)));
        let client = Client::try_from(config)?;
        let since = measure::now();
        let hist0 = self.apiserver_histogram().await;
        let cpu0 = self.cluster_usage();
        let started = Instant::now();
        let outcomes = bare::run(&client, apps, &zones, self.args.rate).await;
        let wall = started.elapsed().as_secs_f64();
        let until = measure::now();
        let cpu1 = self.cluster_usage();
        let hist = self.apiserver_histogram().await.minus(&hist0);
        let requests = measure::audit(&self.args.audit_log, since, until)?;
        let mine: Vec<&Request> = requests.iter().filter(|r| r.user_agent.starts_with(BARE_AGENT)).collect();
        let ok: Vec<f64> = outcomes.values().filter_map(|o| o.seconds).collect();
        let errors: Vec<String> =
            outcomes.iter().filter_map(|(n, o)| o.error.as_ref().map(|e| format!("{n}: {e}"))).collect();
        let sent: usize = outcomes.values().map(|o| o.requests).sum();
        let latency = Summary::of(ok.clone());
        let throughput = ok.len() as f64 / wall;
        let cpu: f64 =
            cpu1.iter().map(|(k, u)| u.cpu_seconds - cpu0.get(k).map(|u| u.cpu_seconds).unwrap_or(0.0)).sum();
        log(format!(
            "bare client: p50 {:.2} s p99 {:.2} s, {:.1} apps/s, {} failed",
            latency.p50,
            latency.p99,
            throughput,
            errors.len()
        ));
        log("deleting the bare client's namespaces");
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        for name in outcomes.keys() {
            let _ = namespaces.delete(name, &DeleteParams::background()).await;
        }
        poll("the bare client's namespaces to be gone", Duration::from_secs(900), Duration::from_secs(2), || async {
            let ns = namespaces.list_metadata(&ListParams::default()).await?;
            Ok(!ns.items.iter().any(|n| n.name_any().starts_with(BARE_PREFIX)))
        })
        .await?;
        self.start_operator_synced().await?;
        Ok(json!({
            "apps": n, "rate": self.args.rate, "appsCompleted": ok.len(), "failed": errors.len(),
            "failureSamples": errors.iter().take(5).collect::<Vec<_>>(),
            "applyToChildrenSeconds": latency, "appsPerSecond": throughput, "wallSeconds": wall,
            "requestsPerApp": sent as f64 / n as f64, "requestsPerVerb": measure::per_verb(mine.iter().copied()),
            "apiServer": {"requests": hist.count(), "p50": hist.quantile(0.5), "p99": hist.quantile(0.99),
                          "requestsPerSecond": hist.count() / wall},
            "controlPlaneCoreShare": cpu / wall,
        }))
    }

    /// Restarts the operator with `apps` apps in sync: time until it has reconciled every one,
    /// and every request it made (the target: no writes).
    async fn restart(&mut self, apps: usize) -> anyhow::Result<Value> {
        log(format!("restarting the operator with {apps} apps in sync"));
        if let Some(op) = self.operator.take() {
            op.stop();
        }
        let since = measure::now();
        let t0 = Instant::now();
        self.start_operator().await?;
        let all = poll(
            "the restarted operator to reconcile every app",
            Duration::from_secs(1800),
            Duration::from_millis(10),
            || async { Ok(self.operator().apps_seen() >= apps as f64) },
        )
        .await
        .map(|_| t0.elapsed().as_secs_f64())?;
        // Keep watching for 15 s more: writes arriving late count too.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let usage = self.operator().usage();
        let requests = measure::audit(&self.args.audit_log, since, measure::now())?;
        let ops: Vec<&Request> = requests.iter().filter(|r| r.user_agent.starts_with(OPERATOR_AGENT)).collect();
        let writes: Vec<String> = ops
            .iter()
            .filter(|r| r.is_write() && r.resource != "leases")
            .map(|r| format!("{} {} {}/{}", r.verb, r.resource, r.namespace, r.name))
            .collect();
        log(format!("restart: all {apps} apps reconciled after {all:.2} s, {} writes", writes.len()));
        Ok(json!({
            "apps": apps, "allReconciledSeconds": all, "requestsPerVerb": measure::per_verb(ops.iter().copied()),
            "writes": writes.len(), "writeSamples": writes.iter().take(10).collect::<Vec<_>>(),
            "rssMiB": usage.rss_mib, "peakRssMiB": usage.peak_rss_mib, "cpuSeconds": usage.cpu_seconds,
        }))
    }

    /// Single apps on an idle cluster, each created after the previous one is Ready.
    async fn singles(&self, n: usize) -> anyhow::Result<Value> {
        log(format!("single apps on the idle cluster: {n}, one at a time"));
        self.wait_served().await?;
        let since = measure::now();
        let mut ready = Vec::new();
        let mut offered = BTreeMap::new();
        for i in 0..n {
            let name = app_name(i);
            offered.insert(name.clone(), measure::now());
            self.create(&name).await?;
            // Ready as the bench's watch of the apps tells: no polling of the API server.
            let took =
                poll(&format!("{name} to be Ready"), Duration::from_secs(120), Duration::from_millis(5), || async {
                    Ok(self.watched.app_ready(&name))
                })
                .await?;
            ready.push(took.as_secs_f64());
        }
        let requests = measure::audit(&self.args.audit_log, since, measure::now())?;
        let latency = children_latency(&requests, &offered, OPERATOR_AGENT);
        let without = offered.keys().filter(|n| !latency.contains_key(*n)).count();
        let latency = Summary::of(latency.into_values().collect());
        let ops: Vec<&Request> = requests.iter().filter(|r| r.user_agent.starts_with(OPERATOR_AGENT)).collect();
        log(format!("singles: apply-to-children p50 {:.3} s p99 {:.3} s", latency.p50, latency.p99));
        Ok(json!({
            "apps": n, "applyToChildrenSeconds": latency, "readySeconds": Summary::of(ready),
            "appsWithoutChildren": without,
            "operatorRequestsPerVerb": measure::per_verb(ops.iter().copied()),
            "operatorRequestsPerResource": measure::per_resource(ops.iter().copied()),
            "operatorRequestsPerApp": ops.len() as f64 / n as f64,
            "apiServerSecondsForOperatorRequests": Summary::of(ops.iter().map(|r| r.seconds()).collect()),
        }))
    }

    /// Deletes (even samples) or scales to zero (odd samples) an app's Deployment and times the repair.
    async fn drift(&self, samples: usize, apps: usize) -> anyhow::Result<Value> {
        log(format!("drift repair: {samples} samples"));
        let (mut deleted, mut edited) = (Vec::new(), Vec::new());
        for k in 0..samples {
            // Spread the samples over the apps.
            let ns = app_name(k * apps / samples.max(1));
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
            let before = self.watched.deployment(&ns, "web").context("a bench app's Deployment")?;
            let t0 = Instant::now();
            if k % 2 == 0 {
                let uid = before.metadata.uid.clone();
                api.delete("web", &DeleteParams::default()).await?;
                poll(
                    "the deleted Deployment to come back",
                    Duration::from_secs(120),
                    Duration::from_millis(5),
                    || async { Ok(self.watched.deployment(&ns, "web").is_some_and(|d| d.metadata.uid != uid)) },
                )
                .await?;
                deleted.push(t0.elapsed().as_secs_f64());
            } else {
                let want = before.spec.as_ref().and_then(|s| s.replicas);
                api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}}))).await?;
                poll(
                    "the scaled Deployment to be put back",
                    Duration::from_secs(120),
                    Duration::from_millis(5),
                    || async {
                        Ok(self.watched.deployment(&ns, "web").and_then(|d| d.spec.as_ref()?.replicas) == want)
                    },
                )
                .await?;
                edited.push(t0.elapsed().as_secs_f64());
            }
        }
        let (deleted, edited) = (Summary::of(deleted), Summary::of(edited));
        log(format!(
            "drift: deleted p50 {:.3} s p99 {:.3} s; scaled p50 {:.3} s p99 {:.3} s",
            deleted.p50, deleted.p99, edited.p50, edited.p99
        ));
        Ok(json!({"appsInCluster": apps, "deletedDeployment": deleted, "scaledDeployment": edited}))
    }
}

/// For every app offered (name -> when it was due, seconds since the epoch): seconds until the
/// first 2xx-answered write of its last child by `agent`. Apps missing a child are left out.
fn children_latency(requests: &[Request], offered: &BTreeMap<String, f64>, agent: &str) -> BTreeMap<String, f64> {
    let mut first_write: BTreeMap<(&str, &str, &str), f64> = BTreeMap::new();
    for r in requests {
        if r.user_agent.starts_with(agent)
            && r.ok()
            && matches!(r.verb.as_str(), "create" | "patch" | "update")
            && r.subresource.is_empty()
            && !matches!(r.resource.as_str(), "events" | "resilientapps" | "leases")
        {
            let t = first_write.entry((&r.resource, &r.namespace, &r.name)).or_insert(r.answered);
            *t = t.min(r.answered);
        }
    }
    let mut last: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for ((resource, namespace, name), t) in first_write {
        let app = if resource == "namespaces" { name } else { namespace };
        let e = last.entry(app).or_insert((0, t));
        *e = (e.0 + 1, e.1.max(t));
    }
    // Every kind the app has must be there: the most children any app got is what each needs.
    let needed = last.values().map(|(n, _)| *n).max().unwrap_or(0);
    offered
        .iter()
        .filter_map(|(n, due)| {
            let (count, t) = last.get(n.as_str())?;
            (*count == needed && t >= due).then(|| (n.clone(), t - due))
        })
        .collect()
}

/// Apps completed per second: apps with their children / (last completion - first offer).
fn throughput(latency: &BTreeMap<String, f64>, offered: &BTreeMap<String, f64>) -> f64 {
    let first = offered.values().copied().fold(f64::INFINITY, f64::min);
    let last = latency.iter().map(|(n, l)| offered[n] + l).fold(f64::NEG_INFINITY, f64::max);
    latency.len() as f64 / (last - first)
}

/// The flat summary the README and the docs quote: the goal numbers of issues 15 and 16.
fn summary(r: &Value) -> Value {
    let phase = |apps: u64| r["phases"].as_array().and_then(|p| p.iter().find(|p| p["appsInCluster"] == apps)).cloned();
    let burst = r["phases"].as_array().and_then(|p| p.iter().find(|p| p["appsInCluster"] == p["appsCreated"])).cloned();
    let outage =
        |nodes: u64| r["zoneOutages"].as_array().and_then(|o| o.iter().find(|o| o["nodesPerZone"] == nodes)).cloned();
    let large = r["zoneOutages"]
        .as_array()
        .and_then(|o| o.iter().max_by_key(|o| o["nodesPerZone"].as_u64().unwrap_or(0)))
        .cloned()
        .unwrap_or(Value::Null);
    let small = outage(2).unwrap_or(Value::Null);
    let ratio = match (burst.as_ref().map(|b| &b["appsPerSecond"]), r["bareClient"]["appsPerSecond"].as_f64()) {
        (Some(op), Some(bare)) if bare > 0.0 => json!(op.as_f64().map(|op| op / bare)),
        _ => Value::Null,
    };
    let noop = r["restarts"].as_array().and_then(|rs| rs.iter().filter_map(|x| x["writes"].as_u64()).max());
    json!({
        "commit": r["conditions"]["commit"],
        "rssMiB1000": phase(1000).map(|p| p["operator"]["steadyRssMiB"].clone()),
        "rssMiB5000": phase(5000).map(|p| p["operator"]["steadyRssMiB"].clone()),
        "requestsPerNewApp": burst.as_ref().map(|b| b["operatorRequestsPerApp"].clone()),
        "requestsPerNewAppIdle": r["singles"]["operatorRequestsPerApp"],
        "burstApps": burst.as_ref().map(|b| b["appsCreated"].clone()),
        "noopWrites": noop,
        "bareClientThroughputRatio": ratio,
        "applyToChildrenP99Ms": r["singles"]["applyToChildrenSeconds"]["p99"].as_f64().map(|s| s * 1000.0),
        "failoverSeconds": small["operator"]["recoveredSeconds"],
        "failoverSecondsLargeZone": large["operator"]["recoveredSeconds"],
        "failoverSecondsSetting": large["operator"]["failoverSeconds"],
        "largeZoneNodesPerZone": large["nodesPerZone"],
        "plainDeploymentFailoverSecondsLargeZone": large["plain"]["recoveredSeconds"],
    })
}

fn notes(args: &Args) -> Option<String> {
    std::fs::read_to_string(&args.notes).ok()
}

fn read_json(path: &Option<PathBuf>) -> anyhow::Result<Value> {
    match path {
        Some(p) if p.exists() => Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?),
        _ => Ok(Value::Null),
    }
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memoryGiB": (mem_kib / 1024.0 / 1024.0).round(),
        "cpu": cpu,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.report_only {
        let results: Value = serde_json::from_str(&std::fs::read_to_string(&args.results)?)?;
        std::fs::write(&args.doc, report::render(&results, notes(&args).as_deref()))?;
        log(format!("wrote {}", args.doc.display()));
        return Ok(());
    }
    if let Some(dir) = args.operator_log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.operator_log, "")?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.default_retry = false;
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(BENCH_AGENT)));
    let client = Client::try_from(config)?;
    let started = jiff::Timestamp::now();
    let mut conditions = read_json(&args.conditions)?;
    if !conditions.is_object() {
        conditions = json!({});
    }
    conditions["machine"] = machine();
    conditions["date"] = json!(started.strftime("%Y-%m-%d %H:%M UTC").to_string());
    conditions["kubernetes"] = json!(client.apiserver_version().await?.git_version);
    conditions["app"] = app("<name>")["spec"].clone();
    // What was measured, read from the binary and from the running operator, not typed in here.
    let version = Command::new(&args.operator).arg("--version").output().context("resilient-operator --version")?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    // "0.1.0 (commit abc1234, x86_64-unknown-linux-musl)"
    let built = version.split("(commit ").nth(1).map(|c| c.trim_end_matches(')')).unwrap_or("?");
    let (commit, target) = built.split_once(", ").unwrap_or((built, "?"));
    conditions["commit"] = json!(commit);
    let ticks = measure::clock_ticks();
    let pids = measure::cluster_pids(&args.pids);
    let watched = Watched::start(&client).await?;
    let mut bench = Bench { apps: Api::all(client.clone()), client, args, operator: None, ticks, pids, watched };

    log("removing the apps of earlier runs");
    // Their finalizers need the operator; the measured one starts fresh afterwards.
    bench.start_operator_synced().await?;
    bench.delete_all().await?;
    if let Some(op) = bench.operator.take() {
        op.stop();
    }
    bench.start_operator_synced().await?;
    conditions["operator"] = json!({
        "version": version, "build": format!("{}, {target}", std::env::var("OPERATOR_PROFILE").unwrap_or("release".into())), "settings": bench.operator().settings(),
        "credentials": "token of its ServiceAccount (config/rbac)",
    });
    let mut results = json!({"conditions": conditions, "phases": [], "restarts": []});
    results["operatorIdle"] = json!(bench.operator().usage());

    let args = &bench.args;
    let (singles, small, burst, large) = (args.singles, args.small.max(args.singles), args.burst, args.large);
    results["singles"] = bench.singles(singles).await?;
    if small > singles {
        let phase = bench.grow(&format!("{small} apps"), singles, small).await?;
        results["phases"].as_array_mut().unwrap().push(phase);
        let restart = bench.restart(small).await?;
        results["restarts"].as_array_mut().unwrap().push(restart);
    }
    if burst > 0 {
        log("removing the small apps: the burst starts from an empty cluster");
        bench.delete_all().await?;
        if bench.args.bare {
            results["bareClient"] = bench.bare(burst).await?;
        }
        let phase = bench.grow(&format!("{burst} apps"), 0, burst).await?;
        results["phases"].as_array_mut().unwrap().push(phase);
        results["drift"] = bench.drift(bench.args.drift_samples, burst).await?;
        bench.settle(burst).await?;
        let restart = bench.restart(burst).await?;
        results["restarts"].as_array_mut().unwrap().push(restart);
    }
    if large > burst {
        let phase = bench.grow(&format!("{large} apps"), burst, large).await?;
        results["phases"].as_array_mut().unwrap().push(phase);
        let restart = bench.restart(large).await?;
        results["restarts"].as_array_mut().unwrap().push(restart);
    }
    if let Some(op) = bench.operator.take() {
        op.stop();
    }
    let outages: Vec<Value> =
        bench.args.zone_outage.iter().map(|p| read_json(&Some(p.clone()))).collect::<anyhow::Result<_>>()?;
    results["zoneOutages"] = json!(outages.into_iter().filter(|o| !o.is_null()).collect::<Vec<_>>());
    results["summary"] = summary(&results);
    results["finished"] = json!(jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC").to_string());
    results["durationSeconds"] = json!((jiff::Timestamp::now() - started).get_seconds());

    std::fs::write(&bench.args.results, serde_json::to_string_pretty(&results)? + "\n")?;
    std::fs::write(&bench.args.doc, report::render(&results, notes(&bench.args).as_deref()))?;
    log(format!("wrote {} and {}", bench.args.results.display(), bench.args.doc.display()));
    Ok(())
}
