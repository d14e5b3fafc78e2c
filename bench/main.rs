//! `resilient-bench`: creates ResilientApps at a fixed rate against the local cluster and measures
//! what `make bench` reports. Latency and API cost come from the API server's own audit log
//! (what it received and when it answered), memory and CPU from /proc of the operator process.
//!
//! Run through `bench/run.sh` (`make bench`), which starts the cluster and builds the release binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use resilient_operator::api::ResilientApp;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// ResilientApps to create.
    #[arg(long, default_value_t = 1000)]
    apps: usize,
    /// Creations per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Drift repairs to time.
    #[arg(long, default_value_t = 20)]
    drift_samples: usize,
    /// The operator binary (release build).
    #[arg(long)]
    operator: PathBuf,
    /// Kubeconfig of the local cluster.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The API server's audit log.
    #[arg(long)]
    audit_log: PathBuf,
    /// Where to write the results.
    #[arg(long, default_value = "bench/out/results.json")]
    out: PathBuf,
}

const USER_AGENT: &str = resilient_operator::cli::USER_AGENT;
const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    json!({"count": values.len(), "p50": percentile(&values, 50.0), "p99": percentile(&values, 99.0),
           "max": values.last().copied().unwrap_or(f64::NAN)})
}

fn ts(s: &str) -> f64 {
    s.parse::<jiff::Timestamp>().map(|t| t.as_nanosecond() as f64 / 1e9).unwrap_or(f64::NAN)
}

/// Audit events (ResponseComplete) received at or after `since` (seconds since the epoch).
fn audit_events(path: &PathBuf, since: f64) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| ts(e["requestReceivedTimestamp"].as_str().unwrap_or_default()) >= since)
        .collect())
}

fn now() -> f64 {
    jiff::Timestamp::now().as_nanosecond() as f64 / 1e9
}

struct Operator {
    child: Child,
}

impl Operator {
    fn start(args: &Args) -> anyhow::Result<Self> {
        let log = std::fs::File::create("bench/out/operator.log")?;
        let child = Command::new(&args.operator)
            .args(["run", "--metrics-address", "127.0.0.1:18090"])
            .env("KUBECONFIG", &args.kubeconfig)
            .env("POD_NAME", "bench")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the operator")?;
        Ok(Self { child })
    }

    fn metrics(&self) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:18090").ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    }

    fn reconciles(&self) -> f64 {
        self.metrics()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("resilient_operator_reconciles_total "))?
                    .split(' ')
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// Writes the operator counted (all verbs and kinds).
    fn writes(&self) -> f64 {
        self.metrics()
            .map(|m| {
                m.lines()
                    .filter(|l| l.starts_with("resilient_operator_api_writes_total"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// (RSS MiB, peak RSS MiB, CPU seconds) from /proc.
    fn usage(&self) -> (f64, f64, f64) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of /proc/PID/stat; after the ")" they are 11 and 12.
        let hz = 100.0;
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0, (ticks(11) + ticks(12)) / hz)
    }

    fn stop(mut self) {
        // SIGTERM: a clean shutdown, like a rolling restart.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn app(name: &str) -> Value {
    json!({
        "apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp",
        "metadata": {"name": name, "labels": {"bench": "true"}},
        "spec": {
            "resilience": {"zoneFailuresTolerated": 0},
            "components": [{"name": "web", "image": "registry.example/web:1", "minAvailable": 1,
                            "ports": [{"containerPort": 8080}], "service": {}}]
        }
    })
}

async fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(start.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all("bench/out")?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.default_retry = false;
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static("resilient-bench")));
    let client = Client::try_from(config)?;
    let apps: Api<ResilientApp> = Api::all(client.clone());
    let mut results = serde_json::Map::new();

    eprintln!("[bench] removing apps of earlier runs");
    // A CRD that was just installed answers 429 for a moment while its storage initializes.
    let mut tries = 0;
    while let Err(e) =
        apps.delete_collection(&DeleteParams::default(), &ListParams::default().labels("bench=true")).await
    {
        tries += 1;
        if tries > 30 {
            return Err(e.into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    while !apps.list_metadata(&ListParams::default().labels("bench=true")).await?.items.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let operator = Operator::start(&args)?;
    wait_until("the operator", Duration::from_secs(60), || operator.metrics().is_some()).await?;
    let idle = operator.usage();

    // 1 + 2: create apps at a fixed rate; latency and API cost from the audit log.
    eprintln!("[bench] creating {} apps at {}/s", args.apps, args.rate);
    let since = now();
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut peak_rss: f64 = 0.0;
    for i in 0..args.apps {
        let due = started + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let name = format!("bench-{i:05}");
        apps.patch(&name, &PatchParams::apply("resilient-bench").force(), &Patch::Apply(app(&name))).await?;
        if i % 100 == 99 {
            peak_rss = peak_rss.max(operator.usage().0);
            eprintln!("[bench] {} apps created", i + 1);
        }
    }
    let deployments: Api<Deployment> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let selector = ListParams::default().labels("app.kubernetes.io/managed-by=resilient-operator");
        let n = deployments.list_metadata(&selector).await?.items.len();
        if n >= args.apps {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {} apps got their Deployment within 15 minutes (see bench/out/operator.log)", args.apps);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let created_in = started.elapsed();
    let events = audit_events(&args.audit_log, since)?;
    let mut created_at: BTreeMap<String, f64> = BTreeMap::new();
    let mut last_child: BTreeMap<String, f64> = BTreeMap::new();
    let mut per_verb: BTreeMap<String, u64> = BTreeMap::new();
    let mut request_seconds = Vec::new();
    for e in &events {
        let ua = e["userAgent"].as_str().unwrap_or_default();
        let done = ts(e["stageTimestamp"].as_str().unwrap_or_default());
        let r = &e["objectRef"];
        if ua.starts_with("resilient-bench")
            && r["resource"] == "resilientapps"
            && e["verb"] == "patch"
            && let Some(n) = r["name"].as_str()
        {
            created_at.entry(n.to_string()).or_insert(done);
        }
        if ua.starts_with(USER_AGENT) {
            *per_verb.entry(e["verb"].as_str().unwrap_or_default().to_string()).or_default() += 1;
            request_seconds.push(done - ts(e["requestReceivedTimestamp"].as_str().unwrap_or_default()));
            if WRITES.contains(&e["verb"].as_str().unwrap_or_default())
                && let Some(ns) = r["namespace"].as_str()
            {
                let t = last_child.entry(ns.to_string()).or_insert(done);
                *t = t.max(done);
            }
        }
    }
    let latency: Vec<f64> = created_at
        .iter()
        .filter_map(|(name, t0)| last_child.get(name).map(|t1| t1 - t0))
        .filter(|d| *d >= 0.0)
        .collect();
    let busy = operator.usage();
    results.insert(
        "create".into(),
        json!({
            "apps": args.apps, "rate": args.rate, "allChildrenAfterSeconds": created_in.as_secs_f64(),
            "applyToChildrenSeconds": summary(latency),
            "operatorRequestsPerVerb": per_verb,
            "operatorRequestsPerApp": per_verb.values().sum::<u64>() as f64 / args.apps as f64,
            "apiServerSecondsForOperatorRequests": summary(request_seconds),
        }),
    );

    // 4: drift repair.
    eprintln!("[bench] timing {} drift repairs", args.drift_samples);
    let mut repairs = Vec::new();
    for i in 0..args.drift_samples.min(args.apps) {
        let ns = format!("bench-{i:05}");
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let old = api.get("web").await?.metadata.uid;
        let t0 = Instant::now();
        api.delete("web", &DeleteParams::default()).await?;
        loop {
            if let Ok(Some(d)) = api.get_opt("web").await
                && d.metadata.uid != old
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        repairs.push(t0.elapsed().as_secs_f64());
    }
    results.insert("driftRepairSeconds".into(), summary(repairs));

    // 3: memory and CPU with every app in sync: wait until the operator has written nothing for 10 s.
    let mut last = (operator.writes(), Instant::now());
    let settle_deadline = Instant::now() + Duration::from_secs(600);
    while last.1.elapsed() < Duration::from_secs(10) && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let w = operator.writes();
        if w != last.0 {
            last = (w, Instant::now());
        }
    }
    let steady = operator.usage();
    results.insert(
        "operator".into(),
        json!({"idleRssMiB": idle.0, "steadyRssMiB": steady.0, "peakRssMiB": steady.1.max(peak_rss).max(busy.1),
               "cpuSecondsDuringCreate": busy.2 - idle.2, "cpuSecondsTotal": steady.2}),
    );

    // 5: restart with every app in sync: time to reconcile them all, and the writes it made.
    eprintln!("[bench] restarting the operator");
    operator.stop();
    let since = now();
    let t0 = Instant::now();
    let operator = Operator::start(&args)?;
    wait_until("the restarted operator to reconcile every app", Duration::from_secs(1800), || {
        operator.reconciles() >= args.apps as f64
    })
    .await?;
    let restart = t0.elapsed();
    let writes: u64 = audit_events(&args.audit_log, since)?
        .iter()
        .filter(|e| e["userAgent"].as_str().unwrap_or_default().starts_with(USER_AGENT))
        .filter(|e| WRITES.contains(&e["verb"].as_str().unwrap_or_default()))
        .count() as u64;
    results.insert("restart".into(), json!({"allReconciledSeconds": restart.as_secs_f64(), "writes": writes}));
    operator.stop();

    let out = serde_json::to_string_pretty(&Value::Object(results))?;
    std::fs::write(&args.out, &out)?;
    println!("{out}");
    Ok(())
}
