//! Shared harness of the integration and end-to-end tests: the local control plane of
//! `e2e/cluster.sh`, the CRD, one operator process per test binary, and polling helpers.
//!
//! There is no skipping: without a running cluster every test fails and says how to start one.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, CustomResourceExt};
use resilient_operator::api::{ResilientApp, ResilientAppStatus};
use serde_json::{Value, json};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// KUBECONFIG and the directory of the matching kubectl, from `e2e/cluster.sh env`.
pub struct ClusterEnv {
    pub kubeconfig: PathBuf,
    pub bin_dir: PathBuf,
}

pub fn cluster_env() -> &'static ClusterEnv {
    static ENV: OnceLock<ClusterEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let out = Command::new(root().join("e2e/cluster.sh")).arg("env").output().expect("running e2e/cluster.sh env");
        let text = String::from_utf8_lossy(&out.stdout);
        let value = |prefix: &str| {
            text.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().trim_end_matches(":$PATH").to_string())
        };
        match (out.status.success(), value("export KUBECONFIG="), value("export PATH=")) {
            (true, Some(kubeconfig), Some(bin)) => ClusterEnv { kubeconfig: kubeconfig.into(), bin_dir: bin.into() },
            _ => panic!(
                "no local cluster: start it with `e2e/cluster.sh up` (`make test` does it).\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    })
}

/// A client of the local cluster (the test's own identity, not the operator's).
pub async fn client() -> Client {
    let env = cluster_env();
    let kubeconfig = kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("reading the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kubeconfig of the local cluster");
    let mut config = config;
    // A 429 from the Eviction API is an answer (the PDB said no), not something to retry.
    config.default_retry = false;
    let client = Client::try_from(config).expect("client");
    client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("the local cluster does not answer ({e}); start it with `e2e/cluster.sh up`"));
    client
}

/// Run the kubectl built with the cluster, against it.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let env = cluster_env();
    let mut cmd = Command::new(env.bin_dir.join("kubectl"));
    cmd.args(args).env("KUBECONFIG", &env.kubeconfig);
    if let Some(input) = stdin {
        use std::io::Write;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().expect("kubectl output")
    } else {
        cmd.output().expect("kubectl")
    }
}

/// Run `e2e/cluster.sh` with arguments and fail loudly if it fails.
pub fn cluster_sh(args: &[&str]) {
    let out = Command::new(root().join("e2e/cluster.sh")).args(args).output().expect("e2e/cluster.sh");
    assert!(
        out.status.success(),
        "e2e/cluster.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Install (or update) the committed CRD and wait until it is served.
pub async fn ensure_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ResilientApp::crd();
    crds.patch("resilientapps.resilient.dev", &PatchParams::apply("resilient-tests").force(), &Patch::Apply(&crd))
        .await
        .expect("applying the CRD");
    wait_for("the CRD to be established", Duration::from_secs(30), || async {
        let crd = crds.get("resilientapps.resilient.dev").await.ok()?;
        let established = crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;
}

static METRICS_PORT: OnceLock<u16> = OnceLock::new();

/// A kubeconfig that authenticates as the operator's own ServiceAccount (config/rbac), with a
/// token from `kubectl create token`: every operator the tests start runs with exactly the
/// permissions the manifests grant, and within the admission policies of config/admission, so a
/// missing or wrong rule fails the tests.
pub fn operator_kubeconfig() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let _ = kubectl(&["create", "namespace", "resilient-system"], None);
        // config/rbac, config/admission and config/priority, as config/default installs them: the
        // operator also runs inside the ValidatingAdmissionPolicy that confines its ServiceAccount.
        for dir in ["config/rbac", "config/admission", "config/priority"] {
            let path = root().join(dir);
            let applied = kubectl(&["apply", "--server-side", "--force-conflicts", "-k", path.to_str().unwrap()], None);
            assert!(applied.status.success(), "applying {dir}: {}", String::from_utf8_lossy(&applied.stderr));
        }
        let token = kubectl(&["create", "token", "resilient-operator", "-n", "resilient-system", "--duration=24h"], None);
        assert!(token.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&token.stderr));
        let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
        let admin = std::fs::read_to_string(&cluster_env().kubeconfig).unwrap();
        let server = admin
            .lines()
            .find_map(|l| l.split("server: \"").nth(1).and_then(|s| s.split('"').next()))
            .expect("server in the kubeconfig")
            .to_string();
        let ca = root().join(".cluster/pki/ca.crt");
        let path = root().join(".cluster/operator.kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {{server: \"{server}\", certificate-authority: \"{}\"}}\nusers:\n- name: resilient-operator\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: operator\n  context: {{cluster: local, user: resilient-operator}}\ncurrent-context: operator\n",
            ca.display()
        );
        std::fs::write(&path, config).unwrap();
        path
    })
}

/// Start the operator binary once for this test process, as its ServiceAccount. It dies with the
/// process (PR_SET_PDEATHSIG, set from a thread that lives as long as the operator).
pub fn start_operator() {
    METRICS_PORT.get_or_init(|| {
        let binary = std::env::args().next().unwrap_or_default();
        let name = Path::new(&binary).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        let identity = format!("tests-{}", name.split('-').next().unwrap_or("tests"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut operator = OperatorProcess::spawn(&identity, &["--resync-seconds", "3600"]);
            tx.send(operator.metrics_port).unwrap();
            let status = operator.child.wait();
            eprintln!("operator exited: {status:?}");
        });
        rx.recv().expect("the operator thread")
    });
}

/// The operator's /metrics text.
pub fn operator_metrics() -> String {
    try_operator_metrics().expect("operator metrics endpoint")
}

fn try_operator_metrics() -> Option<String> {
    metrics_of(*METRICS_PORT.get().expect("operator started"))
}

/// Zone of every node, by node name.
pub async fn node_zones(client: &Client) -> std::collections::HashMap<String, String> {
    use kube::ResourceExt;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| (n.name_any(), n.labels()["topology.kubernetes.io/zone"].clone()))
        .collect()
}

/// Sum of a metric's samples whose line starts with `prefix` (name plus optional labels).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Wait until the operator is ready: `/readyz` answers 200 only once its caches are synced.
pub async fn wait_operator_ready() {
    let port = *METRICS_PORT.get().expect("operator started");
    wait_for("the operator's /readyz to answer 200 (caches synced)", Duration::from_secs(60), || async {
        http_get(port, "/readyz").filter(|(code, _)| *code == 200)
    })
    .await;
}

/// Everything a test needs: the cluster, the CRD and a running operator.
pub async fn setup() -> Client {
    let client = client().await;
    ensure_crd(&client).await;
    start_operator();
    wait_operator_ready().await;
    client
}

/// Poll `f` every 250 ms until it returns Some, or panic after `timeout` saying what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_seen(what, timeout, || {
        let polled = f();
        async move { polled.await.ok_or_else(String::new) }
    })
    .await
}

/// Like [`wait_for`], and a timeout says what was last seen: `f` returns `Err(what it sees)`
/// until the wait is over (an empty one says nothing more).
pub async fn wait_for_seen<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                let seen = if seen.is_empty() { seen } else { format!("; last seen: {seen}") };
                panic!("timed out after {timeout:?} waiting for {what}{seen}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The message of the first Event on ResilientApp `app` with `reason`, waiting up to `timeout`.
pub async fn event_message(client: &Client, app: &str, reason: &str, timeout: Duration) -> String {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::all(client.clone());
    let fields = format!("involvedObject.name={app}");
    wait_for(&format!("a {reason} Event on {app}"), timeout, || async {
        let list = events.list(&kube::api::ListParams::default().fields(&fields)).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some(reason)).and_then(|e| e.message)
    })
    .await
}

/// Deletes ResilientApp `.0` when dropped, also when the test fails: an app left behind is
/// reconciled by the operators of the test binaries that run later, and spreads into the zones
/// they add (a reserve test's small nodes then have no room left for its fillers).
pub struct DeleteApp(pub String);

impl Drop for DeleteApp {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "resilientapp", &self.0, "--ignore-not-found", "--wait=false"], None);
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    // Unique within the process by the counter (mixing it with the clock once made two names of
    // one test equal); the pid and the clock keep names of other runs and processes apart.
    format!("{prefix}-{:x}{:02x}-{n:x}", std::process::id(), nanos & 0xff)
}

/// An example from `examples/` with another name (so tests can run side by side).
pub fn example(file: &str, name: &str) -> Value {
    let text = std::fs::read_to_string(root().join("examples").join(file)).unwrap();
    let mut app: Value = serde_saphyr::from_str(&text).unwrap();
    app["metadata"]["name"] = Value::String(name.to_string());
    app
}

pub async fn apply_app(client: &Client, app: &Value) -> ResilientApp {
    let api: Api<ResilientApp> = Api::all(client.clone());
    let name = app["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply("resilient-tests").force(), &Patch::Apply(app))
        .await
        .unwrap_or_else(|e| panic!("applying ResilientApp {name}: {e}"))
}

pub fn condition<'a>(
    status: &'a ResilientAppStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Wait until the app's status is for its current generation and `check` accepts it.
pub async fn wait_status<F>(client: &Client, name: &str, what: &str, timeout: Duration, check: F) -> ResilientApp
where
    F: Fn(&ResilientAppStatus) -> bool,
{
    let api: Api<ResilientApp> = Api::all(client.clone());
    wait_for(&format!("{name}: {what}"), timeout, || async {
        let app = api.get(name).await.ok()?;
        let status = app.status.as_ref()?;
        (status.observed_generation == app.metadata.generation && check(status)).then_some(app)
    })
    .await
}

pub fn is_true(status: &ResilientAppStatus, type_: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == "True")
}

/// Requests of a user agent in the API server's audit log, from `since` on, that `filter` keeps:
/// counts by verb.
pub fn audited_requests(user_agent: &str, since: &str, filter: impl Fn(&Value) -> bool) -> BTreeMap<String, u64> {
    let path = root().join(".cluster/logs/audit.log");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let ua = event["userAgent"].as_str().unwrap_or_default();
        let at = event["requestReceivedTimestamp"].as_str().unwrap_or_default();
        if ua.starts_with(user_agent) && at >= since && event["stage"] == "ResponseComplete" && filter(&event) {
            *counts.entry(event["verb"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Now, in the format of audit timestamps (RFC 3339 with microseconds, UTC).
pub fn audit_now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// An operator process started by a test, killed when dropped (or when the test process dies).
pub struct OperatorProcess {
    pub child: std::process::Child,
    pub metrics_port: u16,
    pub identity: String,
}

impl OperatorProcess {
    /// Start `resilient-operator run` with extra arguments, as instance `identity`.
    pub fn spawn(identity: &str, extra_args: &[&str]) -> Self {
        Self::spawn_with_kubeconfig(identity, extra_args, operator_kubeconfig())
    }

    /// The same, against another kubeconfig (an unreachable server, say).
    pub fn spawn_with_kubeconfig(identity: &str, extra_args: &[&str], kubeconfig: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let logs = root().join(".cluster/logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = std::fs::File::create(logs.join(format!("operator-{identity}.log"))).unwrap();
        let address = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_resilient-operator"));
        cmd.args(["run", "--metrics-address", &address])
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,resilient_operator=debug,kube_lease_manager=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting the operator");
        OperatorProcess { child, metrics_port: port, identity: identity.to_string() }
    }

    /// The /metrics text, if the process answers.
    pub fn metrics(&self) -> Option<String> {
        metrics_of(self.metrics_port)
    }

    /// Send a signal (SIGTERM, SIGSTOP, SIGCONT...).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The user agent of this instance's requests.
    pub fn user_agent(&self) -> String {
        format!("{} ({})", resilient_operator::cli::USER_AGENT, self.identity)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET /metrics on a local port.
pub fn metrics_of(port: u16) -> Option<String> {
    http_get(port, "/metrics").map(|(_, body)| body)
}

/// GET a path on a local port: the status code and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Some((code, body))
}

/// Real kubelet nodes of the local cluster (`e2e/cluster.sh` starts one per zone): name -> zone.
pub async fn real_nodes(client: &Client) -> BTreeMap<String, String> {
    use kube::ResourceExt;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes
        .list(&kube::api::ListParams::default().labels("type=real"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| (n.name_any(), n.labels().get("topology.kubernetes.io/zone").cloned().unwrap_or_default()))
        .collect()
}

/// Puts the pods of the given namespaces on the real nodes: binds the cluster's
/// MutatingAdmissionPolicy `resilient-dev-real-nodes` (a toleration of the real nodes' taint and a
/// node selector) to them, and waits until the API server applies it. Unbound when dropped.
pub struct RealNodeBinding(String);

impl RealNodeBinding {
    pub async fn create(name: &str, namespaces: &[&str]) -> Self {
        let probe = format!("{name}-probe");
        let mut all: Vec<&str> = namespaces.to_vec();
        all.push(&probe);
        let binding = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1beta1", "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": "resilient-dev-real-nodes", "matchResources": {"namespaceSelector": {
                "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": all}]}}}
        });
        let out = kubectl(&["apply", "--server-side", "-f", "-"], Some(&binding.to_string()));
        assert!(out.status.success(), "binding {name}: {}", String::from_utf8_lossy(&out.stderr));
        let _ = kubectl(&["create", "namespace", &probe], None);
        let guard = RealNodeBinding(name.to_string());
        // Policies and bindings reach the admission plugin through an informer: probe with a
        // server-side dry run until a pod comes back mutated.
        wait_for(&format!("binding {name} in effect"), Duration::from_secs(60), || async {
            let out = kubectl(
                &[
                    "run",
                    "probe",
                    "-n",
                    &probe,
                    "--image=probe",
                    "--dry-run=server",
                    "-o",
                    "jsonpath={.spec.nodeSelector}",
                ],
                None,
            );
            String::from_utf8_lossy(&out.stdout).contains("resilient.dev/real-node").then_some(())
        })
        .await;
        let _ = kubectl(&["delete", "namespace", &probe, "--wait=false"], None);
        guard
    }
}

impl Drop for RealNodeBinding {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "mutatingadmissionpolicybinding", &self.0, "--ignore-not-found"], None);
    }
}

/// `agnhost connect` from a pod: Ok when a TCP connection opens within 3 s, else what agnhost
/// said (TIMEOUT for a packet dropped by a NetworkPolicy, DNS for a name that does not resolve).
pub fn connect_from(namespace: &str, pod: &str, target: &str) -> Result<(), String> {
    let out = kubectl(&["exec", "-n", namespace, pod, "--", "/agnhost", "connect", "--timeout=3s", target], None);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
            .trim()
            .to_string())
    }
}

/// Reconciles of an app in sync (triggered by annotation changes) write nothing about it.
pub async fn assert_in_sync_costs_no_writes(client: &Client, name: &str) {
    let since = audit_now();
    let apps: Api<ResilientApp> = Api::all(client.clone());
    for i in 0..3 {
        let before = metric_sum(&operator_metrics(), "resilient_operator_reconciles_total");
        let patch = json!({"metadata": {"annotations": {"test.resilient.dev/resync": i.to_string()}}});
        apps.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        wait_for("the operator to reconcile", Duration::from_secs(30), || async {
            (metric_sum(&operator_metrics(), "resilient_operator_reconciles_total") > before).then_some(())
        })
        .await;
    }
    let writes = audited_requests(resilient_operator::cli::USER_AGENT, &since, |e: &Value| {
        let r = &e["objectRef"];
        let about_app = r["namespace"] == name || r["name"] == name;
        about_app && WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default())
    });
    assert!(writes.is_empty(), "writes by the operator while in sync: {writes:?}");
}

/// The app's component in `resilient-operator simulate --zone ZONE -o json`.
pub fn simulate_component(zone: &str, app: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_resilient-operator"))
        .args(["simulate", "--zone", zone, "-o", "json"])
        .env("KUBECONFIG", &cluster_env().kubeconfig)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("simulate output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    report["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["app"] == app)
        .cloned()
        .expect("simulate reports the app")
}
