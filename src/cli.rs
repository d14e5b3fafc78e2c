//! Command line: `run`, `crd`, `render`, `simulate` (and, as `kubectl-resilient`, [`crate::plugin`]).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;
use serde::Serialize;

use crate::api::ResilientApp;
use crate::controller::{self, Settings};
use crate::metrics::Metrics;
use crate::render::{self, Plan};
use crate::resilience::Shortfall;

/// The version and the commit this binary was built from (build.rs).
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RESILIENT_COMMIT"), ", ", env!("RESILIENT_TARGET"), ")");

/// A Kubernetes operator that turns one ResilientApp into a namespace with guardrails and
/// workloads that survive the loss of a zone.
#[derive(Parser, Debug)]
#[command(name = "resilient-operator", version = VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller against the cluster of KUBECONFIG (or the in-cluster config).
    Run(RunArgs),
    /// Print the ResilientApp CustomResourceDefinition as YAML.
    Crd,
    /// Print every object the operator would create for a ResilientApp, without a cluster.
    Render(RenderArgs),
    /// What losing zones would do to every ResilientApp right now: ready pods left, whether
    /// minAvailable holds, whether the replacements fit. Exits 1 when a guarantee would break.
    Simulate(SimulateArgs),
}

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// A zone to lose; repeat for several zones lost at once.
    #[arg(long = "zone", required = true)]
    pub zones: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Reconciles running at once.
    ///
    /// 128: a pass that writes waits on the API server (a Service create can take seconds under
    /// load), so a new app must not wait behind slow ones; but every pass in flight holds its
    /// rendered children and answers, so more slots only raise the memory of a burst. How many of
    /// their writes go to the API server at once is `--writes-in-flight`.
    #[arg(long, env = "RESILIENT_CONCURRENCY", default_value_t = 128)]
    pub concurrency: u16,
    /// Writes (creates, applies, deletes, Events) in flight to the API server at once, 1 to 1024;
    /// further writes wait their turn, first come first served. Reads and watches are not counted.
    ///
    /// A burst of new apps on a saturated API server: with every pass writing at once (128 passes,
    /// several writes each) the API server spent about a third more CPU per app and the whole
    /// burst took longer than with 16 passes (bench/notes.md). Too few turns cap the rate instead:
    /// 16 writes of about 150 ms each under load are about 10 new apps per second.
    #[arg(long, env = "RESILIENT_WRITES_IN_FLIGHT", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub writes_in_flight: u16,
    /// Seconds between two checks of an app when nothing changes (drift of fields nobody watches),
    /// 1 to 86400.
    #[arg(long, env = "RESILIENT_RESYNC_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub resync_seconds: u64,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "RESILIENT_METRICS_ADDRESS", default_value = "127.0.0.1:8080")]
    pub metrics_address: std::net::SocketAddr,
    /// Log format.
    #[arg(long, env = "RESILIENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Reconcile only while holding a Lease, so that several replicas can run for availability.
    #[arg(long, env = "RESILIENT_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: POD_NAMESPACE, else "default").
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "resilient-operator")]
    pub lease_name: String,
    /// Seconds a leader may go without renewing before a standby takes over.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds before expiry at which the leader renews.
    #[arg(long, default_value_t = 5)]
    pub lease_grace_seconds: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// The ResilientApp manifest (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Usable zones to render for, comma separated (the cluster would read them from its Nodes).
    #[arg(long, value_delimiter = ',', required = true)]
    pub zones: Vec<String>,
}

pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Crd => print_crd(),
        Command::Render(args) => render_cmd(&args),
        Command::Run(args) => run_cmd(args),
        Command::Simulate(args) => simulate_cmd(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// How long a graceful shutdown may take before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn run_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        // First, so that a signal is honoured in every state, caches never synced included.
        let shutdown = crate::shutdown::on_signals(SHUTDOWN_GRACE)?;
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(crate::telemetry::Health::default());
        crate::telemetry::serve(args.metrics_address, metrics.clone(), health.clone())
            .await
            .with_context(|| format!("listening on {}", args.metrics_address))?;
        let settings = Settings {
            concurrency: args.concurrency,
            writes_in_flight: args.writes_in_flight,
            resync: Duration::from_secs(args.resync_seconds),
        };
        metrics.build_info(VERSION, &settings, args.leader_elect);
        let reporter =
            kube::runtime::events::Reporter { controller: crate::api::MANAGER.to_string(), instance: Some(identity()) };
        if !args.leader_elect {
            metrics.set_leader(true);
            let client = operator_client(crate::leader::Fence::open(), settings.writes_in_flight).await?;
            let leading = std::future::ready(());
            return controller::run(client, settings, metrics, health, reporter, leading, shutdown).await;
        }
        let lease = crate::leader::LeaseSettings {
            namespace: args.leader_election_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity(),
            duration: Duration::from_secs(args.lease_duration_seconds),
            grace: Duration::from_secs(args.lease_grace_seconds),
        };
        // Writes stay fenced off until the lease is held and confirmed.
        let fence = crate::leader::Fence::closed();
        let client = operator_client(fence.clone(), settings.writes_in_flight).await?;
        let lease_client = lease_client().await?;
        let (leading_tx, mut leading_rx) = tokio::sync::watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let elect = {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut stop_rx = stop_rx;
                let mut leadership = tokio::select! {
                    leadership = crate::leader::acquire(lease_client.clone(), &lease) => leadership,
                    // Shut down as a standby: nothing to release.
                    _ = &mut stop_rx => return,
                };
                let watchdog = crate::leader::watchdog(lease_client, lease.clone(), fence.clone());
                metrics.set_leader(true);
                let _ = leading_tx.send(true);
                tokio::select! {
                    () = leadership.lost() => {
                        // Another instance may already be reconciling: stop at once; a restart
                        // makes this one a standby again.
                        fence.close();
                        tracing::error!("lost the leader lease; exiting");
                        std::process::exit(1);
                    }
                    _ = stop_rx => {
                        watchdog.abort();
                        fence.close();
                        metrics.set_leader(false);
                        leadership.release().await;
                    }
                }
            })
        };
        let leading = async move {
            let _ = leading_rx.wait_for(|leading| *leading).await;
        };
        let result = controller::run(client, settings, metrics.clone(), health, reporter, leading, shutdown).await;
        // Release the lease at once (if held), so that a standby takes over without waiting.
        let _ = stop_tx.send(());
        if !elect.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(3), elect).await;
        }
        result
    })?;
    Ok(ExitCode::SUCCESS)
}

/// This instance's name: POD_NAME in a cluster, else host name and process id.
pub fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        format!("{}-{}", if host.is_empty() { "local" } else { &host }, std::process::id())
    })
}

/// The user agent of every request the operator sends, so the API server's audit log and metrics
/// can tell its requests apart.
pub const USER_AGENT: &str = concat!("resilient-operator/", env!("CARGO_PKG_VERSION"));

/// The client configuration from KUBECONFIG or the in-cluster config, identified by
/// [`USER_AGENT`] and the instance [`identity`].
async fn client_config() -> anyhow::Result<kube::Config> {
    let mut config = kube::Config::infer().await.context("loading the Kubernetes client configuration")?;
    // No blanket retry of 429: for evictions it means "the PodDisruptionBudget says no" and the
    // answer must come back at once; reconciles and watches have their own backoff.
    config.default_retry = false;
    config.connect_timeout = Some(Duration::from_secs(10));
    let agent = format!("{USER_AGENT} ({})", identity());
    let agent = http::HeaderValue::from_str(&agent).unwrap_or(http::HeaderValue::from_static(USER_AGENT));
    config.headers.push((http::header::USER_AGENT, agent));
    Ok(config)
}

/// Writes in flight for commands other than `run` (which has `--writes-in-flight`).
const DEFAULT_WRITES_IN_FLIGHT: u16 = 32;

/// The operator's client. Every request but a read passes the `fence`: a replica that may no
/// longer hold the leader lease sends no write at all. At most `writes_in_flight` writes are in
/// flight at once ([`WriteLimit`]).
pub async fn operator_client(fence: Arc<crate::leader::Fence>, writes_in_flight: u16) -> anyhow::Result<kube::Client> {
    let config = client_config().await?;
    let fenced = tower::filter::FilterLayer::new(move |req: http::Request<kube::client::Body>| {
        let read = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
        if read || fence.allows_writes() {
            Ok(req)
        } else {
            Err(tower::BoxError::from("not the leader (or the lease could not be confirmed): write refused"))
        }
    });
    Ok(http2_client(&config, writes_in_flight)?.with_layer(&fenced).build())
}

type Http2Service = tower::util::BoxService<
    http::Request<kube::client::Body>,
    http::Response<Box<kube::client::DynBody>>,
    tower::BoxError,
>;

/// kube's client stack with an HTTP/2 connection to the API server instead of HTTP/1.1.
///
/// kube's default client speaks HTTP/1.1 only: one connection per request in flight. A burst of
/// new apps had about 240 connections open at once (heaptrack: 9.6 MB of TLS and read buffers
/// with 3,000 apps, kept in the idle pool after the burst), each a TLS handshake for the API server.
/// Over HTTP/2 every request and watch shares one connection, as with client-go. Keep-alive pings
/// find a dead connection; HTTP/1.1 stays the fallback where a server does not offer h2, with at
/// most 8 idle connections kept. Known limit: kube-apiserver allows 100 streams at once per
/// HTTP/2 connection and the watches hold a dozen of them. It was suspected of capping a burst's
/// throughput; profiles of the API server showed the machine's CPU does that (bench/notes.md).
fn http2_client(
    config: &kube::Config,
    writes_in_flight: u16,
) -> anyhow::Result<kube::client::ClientBuilder<Http2Service>> {
    use kube::client::{ConfigExt as _, DynBody};
    use tower::ServiceExt as _;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    // An HTTP/2 request is several writes (HEADERS, DATA): with Nagle's algorithm the second
    // waits for the ACK of the first, which the server delays by 40 ms. A new app on an idle
    // cluster took 150 ms to get its children instead of 30 (four steps, one wait each).
    http.set_nodelay(true);
    let mut tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config().context("the client's TLS configuration")?)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = name.clone().try_into().context("tls-server-name")?;
        tls = tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let mut connector = hyper_timeout::TimeoutConnector::new(tls.enable_all_versions().wrap_connector(http));
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(8)
        .build(connector);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().context("the client's credentials")?)
        .layer(config.extra_headers_layer().context("the client's headers")?)
        .map_err(tower::BoxError::from)
        .layer(WriteLimitLayer::new(writes_in_flight))
        .service(client)
        .map_response(|response| {
            response.map(|body| Box::new(http_body_util::BodyExt::map_err(body, tower::BoxError::from)) as Box<DynBody>)
        })
        .boxed();
    Ok(kube::client::ClientBuilder::new(service, config.default_namespace.clone()))
}

/// At most `n` writes (any method but GET and HEAD) in flight through the service at once; the
/// others wait for a turn in the order they came (tokio's semaphore is fair). A turn lasts until
/// the response's head arrives. Reads, lists and watches (long-lived GETs) pass freely.
///
/// It keeps a burst from flooding a saturated API server: the writes of 128 passes at once made
/// every request cost it more CPU (bench/notes.md), and no pass can starve: the earliest waiting
/// write goes first.
#[derive(Clone)]
struct WriteLimitLayer(Arc<tokio::sync::Semaphore>);

impl WriteLimitLayer {
    fn new(n: u16) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(usize::from(n.max(1)))))
    }
}

impl<S> tower::Layer<S> for WriteLimitLayer {
    type Service = WriteLimit<S>;

    fn layer(&self, inner: S) -> WriteLimit<S> {
        WriteLimit { inner, turns: self.0.clone() }
    }
}

#[derive(Clone)]
struct WriteLimit<S> {
    inner: S,
    turns: Arc<tokio::sync::Semaphore>,
}

impl<S, B> tower::Service<http::Request<B>> for WriteLimit<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures::FutureExt as _;
        if matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
            return self.inner.call(request).boxed();
        }
        // The service made ready is the one that must be called: keep it, leave a clone behind.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let turns = self.turns.clone();
        async move {
            // Never closed: the semaphore lives as long as the layer.
            let _turn = turns.acquire_owned().await.expect("the write semaphore is never closed");
            ready.call(request).await
        }
        .boxed()
    }
}

/// A client for the leader Lease alone, with short timeouts: a renewal must fail fast on a dead
/// connection, never hang while the other connections keep writing.
async fn lease_client() -> anyhow::Result<kube::Client> {
    let mut config = client_config().await?;
    config.connect_timeout = Some(Duration::from_secs(3));
    config.read_timeout = Some(Duration::from_secs(5));
    config.write_timeout = Some(Duration::from_secs(5));
    config.reset_reader_on_write = true;
    kube::Client::try_from(config).context("creating the lease client")
}

fn simulate_cmd(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        let client = operator_client(crate::leader::Fence::open(), DEFAULT_WRITES_IN_FLIGHT).await?;
        simulation(&client, &args.zones, None).await
    })?;
    match args.output {
        OutputFormat::Table => print!("{}", crate::simulate::table(&report)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.all_hold() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Every ResilientApp that can be decoded; one that cannot (stored under an older, looser CRD)
/// is named on standard error and left out, so it never hides all the others.
pub async fn list_readable_apps(client: &kube::Client) -> anyhow::Result<Vec<ResilientApp>> {
    use kube::api::{Api, ListParams};
    let listed = Api::<crate::controller::GuardedApp>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing ResilientApps")?;
    Ok(listed
        .items
        .into_iter()
        .filter_map(|guarded| match guarded.0 {
            Ok(app) => Some(app),
            Err(invalid) => {
                let name = invalid.metadata.name.unwrap_or_default();
                eprintln!("warning: ResilientApp {name} cannot be read and is left out: {}", invalid.error);
                None
            }
        })
        .collect())
}

/// List what `simulate` needs and simulate the loss of `zones`, for every app or only those whose
/// namespace is `namespace`.
pub async fn simulation(
    client: &kube::Client,
    zones: &[String],
    namespace: Option<&str>,
) -> anyhow::Result<crate::simulate::SimulationReport> {
    use k8s_openapi::api::core::v1::{Node, Pod, ResourceQuota};
    use kube::api::{Api, ListParams};
    let apps = crate::status::in_namespace(list_readable_apps(client).await?, namespace);
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.context("listing nodes")?;
    let pods = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await.context("listing pods")?;
    let managed = ListParams::default().labels(&controller::managed_selector());
    let quotas = Api::<ResourceQuota>::all(client.clone()).list(&managed).await.context("listing resource quotas")?;
    let input = crate::simulate::SimulationInput {
        apps: &apps,
        nodes: &nodes.items,
        pods: &pods.items,
        quotas: &quotas.items,
        lost_zones: zones,
    };
    Ok(crate::simulate::simulate(&input))
}

fn to_yaml<T: Serialize>(value: &T) -> anyhow::Result<String> {
    // Through serde_json first, so the output matches what the API server would get.
    let json = serde_json::to_value(value)?;
    Ok(serde_saphyr::to_string(&json)?)
}

fn print_crd() -> anyhow::Result<ExitCode> {
    print!("{}", crd_yaml()?);
    Ok(ExitCode::SUCCESS)
}

/// The CRD as committed in `crds/resilientapps.resilient.dev.yaml`.
pub fn crd_yaml() -> anyhow::Result<String> {
    to_yaml(&ResilientApp::crd())
}

fn render_cmd(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let app = match read_app(&args.file)? {
        Ok(app) => app,
        Err(code) => return Ok(code),
    };
    print!("{}", render_yaml(&app, &args.zones)?);
    Ok(ExitCode::SUCCESS)
}

/// A ResilientApp from a file (`-`: standard input), or the exit code after printing why it is
/// invalid.
pub fn read_app(file: &std::path::Path) -> anyhow::Result<Result<ResilientApp, ExitCode>> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let app: ResilientApp =
        serde_saphyr::from_str(&text).with_context(|| format!("{} is not a ResilientApp", file.display()))?;
    let errors = render::validate(&app);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("invalid: {e}");
        }
        return Ok(Err(ExitCode::FAILURE));
    }
    Ok(Ok(app))
}

/// Every generated object as a multi-document YAML stream, in the order the operator applies them,
/// with the replica plan of each component as a comment.
pub fn render_yaml(app: &ResilientApp, zones: &[String]) -> anyhow::Result<String> {
    render_plan_yaml(app, &Plan::for_zones(app, zones))
}

/// [`render_yaml`] for a plan made from the cluster's nodes (each component over its own zones).
pub fn render_plan_yaml(app: &ResilientApp, plan: &Plan) -> anyhow::Result<String> {
    let f = app.spec.resilience.zone_failures_tolerated;
    let mut out = format!(
        "# ResilientApp {} over zones [{}], tolerating {f} zone failure(s)\n",
        app.name(),
        plan.zones.join(", ")
    );
    for (name, replicas) in &plan.replicas {
        if plan.component_zones.contains_key(name) {
            out.push_str(&format!("# component {name} can use zones [{}]\n", plan.zones_of(name).join(", ")));
        }
        let note = match replicas.shortfall {
            None => "keeps minAvailable through the loss".to_string(),
            Some(Shortfall::InsufficientZones { .. }) => {
                "NOT zone-failure tolerant: too few zones (best effort)".to_string()
            }
            Some(Shortfall::TooFewReplicas { needed, .. }) => {
                format!("NOT zone-failure tolerant: needs {needed} replicas")
            }
        };
        out.push_str(&format!("# component {name}: {} replicas, {note}\n", replicas.replicas));
    }
    for child in render::render(app, plan).into_steps().into_iter().flatten() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&child)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Writes wait for a turn, first come first served; reads never wait.
    #[tokio::test]
    async fn at_most_n_writes_are_in_flight_and_they_go_in_order() {
        use std::sync::Mutex;
        use tower::{Layer as _, Service as _, ServiceExt as _};
        type Gate = tokio::sync::oneshot::Receiver<()>;
        // Each request names itself in its URI and is answered when its gate opens.
        let started: Arc<Mutex<Vec<String>>> = Arc::default();
        let gates: Arc<Mutex<std::collections::HashMap<String, Gate>>> = Arc::default();
        let (log, waiting) = (started.clone(), gates.clone());
        let inner = tower::service_fn(move |request: http::Request<()>| {
            let (log, waiting) = (log.clone(), waiting.clone());
            async move {
                let name = request.uri().path().to_string();
                log.lock().unwrap().push(name.clone());
                let gate = waiting.lock().unwrap().remove(&name);
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                Ok::<_, std::convert::Infallible>(name)
            }
        });
        let service = WriteLimitLayer::new(2).layer(inner);
        let mut open = std::collections::HashMap::new();
        let mut answers = Vec::new();
        for (method, name) in [("POST", "/w1"), ("PATCH", "/w2"), ("DELETE", "/w3"), ("PATCH", "/w4"), ("GET", "/r1")] {
            let (tx, rx) = tokio::sync::oneshot::channel();
            gates.lock().unwrap().insert(name.to_string(), rx);
            open.insert(name, tx);
            let request = http::Request::builder().method(method).uri(name).body(()).unwrap();
            let mut service = service.clone();
            answers.push(tokio::spawn(async move { service.ready().await?.call(request).await }));
        }
        let started_now = || {
            let mut names = started.lock().unwrap().clone();
            names.sort();
            names
        };
        async fn wait_for(started: &std::sync::Mutex<Vec<String>>, n: usize) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while started.lock().unwrap().len() < n {
                assert!(tokio::time::Instant::now() < deadline, "only {:?} started", started.lock().unwrap());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Two writes and the read; the other writes wait.
        wait_for(&started, 3).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(started_now(), ["/r1", "/w1", "/w2"]);
        // An answer frees a turn for the earliest waiting write, not the latest.
        open.remove("/w1").unwrap().send(()).unwrap();
        wait_for(&started, 4).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(started_now(), ["/r1", "/w1", "/w2", "/w3"]);
        for (_, gate) in open {
            let _ = gate.send(());
        }
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
        assert_eq!(started.lock().unwrap().len(), 5);
    }

    #[test]
    fn the_writes_in_flight_are_checked() {
        let parse = |n: &str| Cli::try_parse_from(["resilient-operator", "run", &format!("--writes-in-flight={n}")]);
        assert!(parse("1").is_ok());
        assert!(parse("1024").is_ok());
        for bad in ["0", "1025", "-1"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("writes-in-flight"), "{err}");
        }
    }

    #[test]
    fn the_resync_period_is_checked() {
        let parse =
            |seconds: &str| Cli::try_parse_from(["resilient-operator", "run", &format!("--resync-seconds={seconds}")]);
        assert!(parse("2").is_ok());
        assert!(parse("86400").is_ok());
        // 0 would re-check every app all the time; a day is plenty for drift nobody watches.
        for bad in ["0", "86401", "-1"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("--resync-seconds"), "{bad}: {err}");
        }
    }
}
