//! The same binary as a kubectl plugin: installed (copied or linked) as `kubectl-resilient` on PATH,
//! it answers `kubectl resilient status | simulate | render`, with kubectl's conventions:
//! `--kubeconfig`, `--context`, `--cluster`, `--user`, `-n/--namespace`, `-o json|yaml|wide`.
//!
//! ResilientApps are cluster-scoped, so the context's namespace is not a filter (as for any
//! cluster-scoped kind in kubectl); an explicit `-n NS` keeps only the apps whose namespace
//! (`spec.namespace`, else the app name) is NS.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Serialize;

use crate::api::ResilientApp;
use crate::cli;
use crate::status::{in_namespace, status_rows, status_table};

/// The file name kubectl looks for on PATH to run `kubectl resilient`.
pub const PLUGIN_BINARY: &str = "kubectl-resilient";

/// Whether the process was started as the kubectl plugin (argv[0] is `kubectl-resilient`).
pub fn invoked_as_plugin(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name().is_some_and(|n| n == PLUGIN_BINARY || n == "kubectl-resilient.exe")
}

/// ResilientApps from kubectl: readiness by zone, what losing a zone would do, what an app renders to.
#[derive(Parser, Debug)]
#[command(name = "kubectl resilient", bin_name = "kubectl resilient", version)]
pub struct PluginCli {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// kubectl's connection flags. Without them: KUBECONFIG (or ~/.kube/config) and its current
/// context, else the in-cluster configuration.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct KubeArgs {
    /// Path to the kubeconfig file to use.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig cluster to use.
    #[arg(long, global = true)]
    pub cluster: Option<String>,
    /// The kubeconfig user to use.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Only apps whose namespace (spec.namespace, else the app name) is this one. ResilientApps are
    /// cluster-scoped: the context's namespace does not filter.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Per app and component: ready pods against minAvailable, ready pods by zone, and whether it
    /// survives the loss of its worst zone(s), from the apps' status.
    Status(StatusArgs),
    /// What losing zones would do to every app right now. Exits 1 when a guarantee would break.
    Simulate(PluginSimulateArgs),
    /// Print every object the operator would create for a ResilientApp.
    Render(PluginRenderArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table with more columns.
    Wide,
    Json,
    Yaml,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Only these apps (default: all).
    pub apps: Vec<String>,
    /// Output format (default: a table).
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Output>,
}

#[derive(clap::Args, Debug)]
pub struct PluginSimulateArgs {
    /// A zone to lose; repeat for several zones lost at once.
    #[arg(long = "zone", required = true)]
    pub zones: Vec<String>,
    /// Output format (default: a table; wide is the same table).
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Output>,
}

#[derive(clap::Args, Debug)]
pub struct PluginRenderArgs {
    /// The ResilientApp manifest (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Usable zones to render for, comma separated. Default: the zones of the cluster's ready,
    /// schedulable nodes (within the app's spec.resilience.zones), as the operator would see them.
    #[arg(long, value_delimiter = ',')]
    pub zones: Option<Vec<String>>,
}

pub fn main(cli: PluginCli) -> ExitCode {
    let result = match cli.command {
        PluginCommand::Status(args) => status_cmd(&cli.kube, &args),
        PluginCommand::Simulate(args) => simulate_cmd(&cli.kube, &args),
        PluginCommand::Render(args) => render_cmd(&cli.kube, &args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A client as kubectl would build it from these flags.
pub async fn client(args: &KubeArgs) -> anyhow::Result<kube::Client> {
    let options =
        KubeConfigOptions { context: args.context.clone(), cluster: args.cluster.clone(), user: args.user.clone() };
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if args.context.is_none() && args.cluster.is_none() && args.user.is_none() => {
            kube::Config::infer().await.context("loading the Kubernetes client configuration")?
        }
        None => kube::Config::from_kubeconfig(&options).await.context("loading the kubeconfig")?,
    };
    let agent = concat!("kubectl-resilient/", env!("CARGO_PKG_VERSION"));
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(agent)));
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn list_apps(client: &kube::Client, namespace: Option<&str>) -> anyhow::Result<Vec<ResilientApp>> {
    Ok(in_namespace(crate::cli::list_readable_apps(client).await?, namespace))
}

fn print_structured<T: Serialize>(value: &T, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&serde_json::to_value(value)?)?),
        Output::Wide => unreachable!("wide is a table"),
    }
    Ok(())
}

fn status_cmd(kube: &KubeArgs, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let apps = runtime()?.block_on(async {
        let client = client(kube).await?;
        list_apps(&client, kube.namespace.as_deref()).await
    })?;
    let apps: Vec<ResilientApp> =
        apps.into_iter().filter(|a| args.apps.is_empty() || args.apps.contains(&a.name())).collect();
    if let Some(missing) = args.apps.iter().find(|n| !apps.iter().any(|a| &a.name() == *n)) {
        anyhow::bail!("resilientapps.resilient.dev \"{missing}\" not found");
    }
    let rows = status_rows(&apps);
    match args.output {
        None => print!("{}", status_table(&rows, false)),
        Some(Output::Wide) => print!("{}", status_table(&rows, true)),
        Some(format) => print_structured(&rows, format)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn simulate_cmd(kube: &KubeArgs, args: &PluginSimulateArgs) -> anyhow::Result<ExitCode> {
    let report = runtime()?.block_on(async {
        let client = client(kube).await?;
        cli::simulation(&client, &args.zones, kube.namespace.as_deref()).await
    })?;
    match args.output {
        None | Some(Output::Wide) => print!("{}", crate::simulate::table(&report)),
        Some(format) => print_structured(&report, format)?,
    }
    Ok(if report.all_hold() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn render_cmd(kube: &KubeArgs, args: &PluginRenderArgs) -> anyhow::Result<ExitCode> {
    let app = match cli::read_app(&args.file)? {
        Ok(app) => app,
        Err(code) => return Ok(code),
    };
    let plan = match &args.zones {
        Some(zones) => crate::render::Plan::for_zones(&app, zones),
        // Each component over the zones its pod template lets it use, as the operator plans it.
        None => runtime()?.block_on(async {
            use k8s_openapi::api::core::v1::Node;
            let client = client(kube).await?;
            let nodes = Api::<Node>::all(client).list(&ListParams::default()).await.context("listing nodes")?;
            let nodes: Vec<&Node> = nodes.items.iter().collect();
            anyhow::Ok(crate::render::Plan::new(&app, crate::resilience::plan_app_zones(&nodes, &app, None)))
        })?,
    };
    print!("{}", cli::render_plan_yaml(&app, &plan)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_plugin_is_recognised_by_its_file_name_only() {
        assert!(invoked_as_plugin(OsStr::new("kubectl-resilient")));
        assert!(invoked_as_plugin(OsStr::new("/home/me/.local/bin/kubectl-resilient")));
        assert!(!invoked_as_plugin(OsStr::new("/usr/bin/resilient-operator")));
        assert!(!invoked_as_plugin(OsStr::new("kubectl-resilient-old")));
        assert!(!invoked_as_plugin(OsStr::new("/opt/kubectl-resilient/resilient-operator")));
    }

    #[test]
    fn kubectl_flags_parse_before_or_after_the_subcommand() {
        let cli = PluginCli::try_parse_from([
            "kubectl-resilient",
            "--context",
            "prod",
            "status",
            "-n",
            "shop",
            "-o",
            "wide",
            "--kubeconfig",
            "/tmp/k",
        ])
        .unwrap();
        assert_eq!(cli.kube.context.as_deref(), Some("prod"));
        assert_eq!(cli.kube.namespace.as_deref(), Some("shop"));
        assert_eq!(cli.kube.kubeconfig.as_deref(), Some(Path::new("/tmp/k")));
        assert!(matches!(cli.command, PluginCommand::Status(StatusArgs { output: Some(Output::Wide), .. })));
        let simulate = PluginCli::try_parse_from(["k", "simulate", "--zone", "zone-a", "-o", "yaml"]).unwrap();
        assert!(
            matches!(simulate.command, PluginCommand::Simulate(PluginSimulateArgs { ref zones, output: Some(Output::Yaml) }) if zones == &["zone-a"])
        );
        assert!(PluginCli::try_parse_from(["k", "status", "-o", "table"]).is_err(), "only json, yaml and wide");
        let render = PluginCli::try_parse_from(["k", "render", "-f", "app.yaml"]).unwrap();
        assert!(matches!(render.command, PluginCommand::Render(PluginRenderArgs { zones: None, .. })));
    }

    #[test]
    fn help_speaks_of_kubectl_resilient() {
        let usage = PluginCli::command().render_usage().to_string();
        assert!(usage.contains("kubectl resilient"), "{usage}");
        PluginCli::command().debug_assert();
    }
}
