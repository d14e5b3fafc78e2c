//! The binary as a kubectl plugin: linked as `kubectl-resilient` into a directory on PATH, the
//! cluster's own kubectl finds it and runs `kubectl resilient status | simulate | render` against
//! the local cluster, with kubectl's connection flags.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A directory holding only `kubectl-resilient`, a symlink to the built binary.
fn plugin_dir() -> PathBuf {
    let dir = root().join(".cluster").join(unique("plugin-bin"));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_resilient-operator"), dir.join("kubectl-resilient")).unwrap();
    dir
}

/// `kubectl resilient ARGS` through the cluster's kubectl, with the plugin directory first on PATH.
/// `kubeconfig`: the KUBECONFIG environment variable (None: unset, so only flags can tell).
fn kubectl_resilient(plugin_dir: &PathBuf, args: &[&str], kubeconfig: Option<&PathBuf>) -> Output {
    let env = cluster_env();
    let path = format!("{}:{}", plugin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = std::process::Command::new(env.bin_dir.join("kubectl"));
    cmd.arg("resilient").args(args).env("PATH", path).env_remove("KUBECONFIG").env("HOME", plugin_dir);
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    cmd.output().expect("kubectl resilient")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl resilient failed ({:?}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_resilient_reads_the_cluster_like_kubectl() {
    let client = setup().await;
    let name = unique("plug");
    apply_app(&client, &example("hello.yaml", &name)).await;
    wait_status(&client, &name, "Ready and zone-failure tolerant", Duration::from_secs(120), |s| {
        is_true(s, "Ready") && is_true(s, "ZoneFailureTolerant")
    })
    .await;
    let dir = plugin_dir();
    let kubeconfig = cluster_env().kubeconfig.clone();

    // kubectl finds the plugin on PATH, and the plugin reads KUBECONFIG and its current context.
    let list = ok(kubectl_resilient(&dir, &["status", "-n", &name, "-o", "json"], Some(&kubeconfig)));
    let rows: Vec<Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(rows.len(), 1, "-n keeps only the app of that namespace: {list}");
    let row = &rows[0];
    assert_eq!((row["app"].as_str(), row["component"].as_str()), (Some(name.as_str()), Some("hello")));
    assert_eq!(row["minAvailable"], 2);
    assert_eq!(row["tolerant"], true);
    let by_zone = row["readyByZone"].as_object().unwrap();
    assert_eq!(by_zone.keys().collect::<Vec<_>>(), ["zone-a", "zone-b", "zone-c"]);
    let total: i64 = by_zone.values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(Some(total), row["ready"].as_i64(), "ready pods by zone add up to the ready pods");
    assert!(total >= 2);

    // The table, read as a person would.
    let table = ok(kubectl_resilient(&dir, &["status", &name], Some(&kubeconfig)));
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["APP", "COMPONENT", "READY/MIN", "ZONE-A", "ZONE-B", "ZONE-C", "TOLERANT"], "{table}");
    assert_eq!(lines[1][..3], [name.as_str(), "hello", &format!("{total}/2")], "{table}");
    assert_eq!(lines[1][6], "True", "{table}");
    let yaml = ok(kubectl_resilient(&dir, &["status", &name, "-o", "yaml"], Some(&kubeconfig)));
    assert!(yaml.contains(&format!("app: {name}")), "{yaml}");
    let wide = ok(kubectl_resilient(&dir, &["status", &name, "-o", "wide"], Some(&kubeconfig)));
    assert!(wide.lines().next().unwrap().contains("AFTER WORST LOSS"), "{wide}");
    let missing = kubectl_resilient(&dir, &["status", "no-such-app"], Some(&kubeconfig));
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("not found"));

    // --kubeconfig and --context: a kubeconfig whose current context points nowhere fails, unless
    // --context picks the one that works.
    let admin = std::fs::read_to_string(&kubeconfig).unwrap();
    let broken = admin
        .replace("current-context: resilient-dev", "current-context: nowhere")
        .replace(
            "contexts:\n",
            "contexts:\n- name: nowhere\n  context: {cluster: nowhere, user: resilient-dev-admin}\n",
        )
        .replace("clusters:\n", "clusters:\n- name: nowhere\n  cluster: {server: \"https://127.0.0.1:1\"}\n");
    let two_contexts = dir.join("two-contexts.kubeconfig");
    std::fs::write(&two_contexts, broken).unwrap();
    let path = two_contexts.to_str().unwrap();
    let refused = kubectl_resilient(&dir, &["status", "--kubeconfig", path], None);
    assert!(!refused.status.success(), "the current context points to 127.0.0.1:1");
    let chosen =
        ok(kubectl_resilient(&dir, &["--context", "resilient-dev", "status", &name, "--kubeconfig", path], None));
    assert!(chosen.contains(&name), "{chosen}");

    // simulate and render, as the plugin.
    let simulated =
        ok(kubectl_resilient(&dir, &["simulate", "--zone", "zone-a", "-n", &name, "-o", "json"], Some(&kubeconfig)));
    let report: Value = serde_json::from_str(&simulated).unwrap();
    assert_eq!(report["survivingZones"], serde_json::json!(["zone-b", "zone-c"]));
    assert_eq!(report["components"].as_array().unwrap().len(), 1, "{simulated}");
    assert_eq!(report["components"][0]["guaranteeHolds"], true, "{simulated}");
    let example = root().join("examples/hello.yaml");
    let rendered = ok(kubectl_resilient(&dir, &["render", "-f", example.to_str().unwrap()], Some(&kubeconfig)));
    assert!(
        rendered.contains("over zones [zone-a, zone-b, zone-c]"),
        "zones read from the cluster's nodes:\n{rendered}"
    );
    assert!(rendered.contains("kind: Deployment"), "{rendered}");

    // The operator binary itself is unchanged (its version names the commit it was built from).
    let version =
        std::process::Command::new(env!("CARGO_BIN_EXE_resilient-operator")).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    assert!(
        version.starts_with(concat!("resilient-operator ", env!("CARGO_PKG_VERSION"), " (commit "))
            && version.ends_with(')'),
        "{version}"
    );

    let _ = std::fs::remove_dir_all(&dir);
    let api: kube::Api<resilient_operator::api::ResilientApp> = kube::Api::all(client.clone());
    api.delete(&name, &Default::default()).await.unwrap();
    wait_for("the app to be deleted (the operator of this binary cleans up)", Duration::from_secs(60), || async {
        api.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
}
