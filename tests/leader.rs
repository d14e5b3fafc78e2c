//! High availability: two operator processes, one Lease. Only the leader reconciles; after a
//! `kill -9` of the leader the standby takes over within the lease duration, reconciles new apps,
//! and re-applies nothing for the apps already in sync.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kube::Api;
use kube::api::DeleteParams;
use resilient_operator::api::ResilientApp;
use serde_json::Value;

const LEASE_SECONDS: u64 = 6;

fn is_leader(op: &OperatorProcess) -> Option<bool> {
    let text = op.metrics()?;
    Some(metric_sum(&text, "resilient_operator_leader ") == 1.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_leader_is_replaced_by_the_standby_and_nothing_is_applied_twice() {
    let client = client().await;
    ensure_crd(&client).await;
    let lease = unique("lease");
    let duration = LEASE_SECONDS.to_string();
    let args = [
        "--leader-elect",
        "--leader-election-namespace",
        "resilient-system",
        "--lease-name",
        &lease,
        "--lease-duration-seconds",
        &duration,
        "--lease-grace-seconds",
        "2",
    ];
    let suffix = unique("op");
    let mut first = OperatorProcess::spawn(&format!("{suffix}-1"), &args);
    let mut second = OperatorProcess::spawn(&format!("{suffix}-2"), &args);

    // Exactly one leader.
    let leader_is_first = wait_for("one leader", Duration::from_secs(60), || async {
        match (is_leader(&first)?, is_leader(&second)?) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    })
    .await;
    let (leader, standby) = if leader_is_first { (&mut first, &mut second) } else { (&mut second, &mut first) };

    // The leader reconciles.
    let name = unique("ha");
    apply_app(&client, &example("hello.yaml", &name)).await;
    wait_status(&client, &name, "Ready", Duration::from_secs(90), |s| {
        is_true(s, "Ready") && condition(s, "Reconciling").is_none()
    })
    .await;
    let standby_agent = format!("{} ({})", resilient_operator::cli::USER_AGENT, standby.identity);
    // Lease requests aside (trying to acquire is its job), the standby sent no write.
    let standby_writes = audited_requests(&standby_agent, "", |e| {
        e["objectRef"]["resource"] != "leases" && WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default())
    });
    assert!(standby_writes.is_empty(), "the standby wrote while it was not the leader: {standby_writes:?}");

    // kill -9 the leader: the standby takes over within the lease duration (plus its retry period).
    let since = audit_now();
    leader.kill();
    let killed = Instant::now();
    wait_for("the standby to lead", Duration::from_secs(LEASE_SECONDS * 4), || async {
        is_leader(standby)?.then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("standby took over {takeover:?} after the leader was killed (lease {LEASE_SECONDS}s)");
    assert!(takeover <= Duration::from_secs(LEASE_SECONDS * 2), "takeover took {takeover:?}");

    // The new leader works...
    let second_app = unique("ha");
    apply_app(&client, &example("hello.yaml", &second_app)).await;
    wait_status(&client, &second_app, "Ready", Duration::from_secs(90), |s| is_true(s, "Ready")).await;
    // ...and re-applied nothing of the app that was already in sync.
    let ns = name.clone();
    let rewrites = audited_requests(&standby_agent, &since, |e: &Value| {
        let r = &e["objectRef"];
        (r["namespace"] == ns.as_str() || r["name"] == ns.as_str())
            && WRITE_VERBS.contains(&e["verb"].as_str().unwrap_or_default())
    });
    assert!(rewrites.is_empty(), "the new leader re-applied an app in sync: {rewrites:?}");

    let apps: Api<ResilientApp> = Api::all(client.clone());
    for n in [name, second_app] {
        let _ = apps.delete(&n, &DeleteParams::default()).await;
    }
}
