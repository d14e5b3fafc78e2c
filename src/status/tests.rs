use super::*;
use serde_json::json;

fn app(name: &str, spec_extra: serde_json::Value, status: Option<serde_json::Value>) -> ResilientApp {
    let mut spec = json!({"components": [
        {"name": "web", "image": "x", "minAvailable": 2},
        {"name": "worker", "image": "x", "minAvailable": 1}
    ]});
    spec.as_object_mut().unwrap().extend(spec_extra.as_object().unwrap().clone());
    let mut app = json!({"apiVersion": "resilient.dev/v1alpha1", "kind": "ResilientApp",
                         "metadata": {"name": name}, "spec": spec});
    if let Some(s) = status {
        app["status"] = s;
    }
    serde_json::from_value(app).unwrap()
}

fn shop() -> ResilientApp {
    app(
        "shop",
        json!({}),
        Some(json!({
            "zones": ["zone-a", "zone-b", "zone-c"],
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "all ready",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "components": [
                {"name": "web", "replicas": 3, "readyReplicas": 3, "minAvailable": 2,
                 "readyByZone": {"zone-a": 1, "zone-b": 1, "zone-c": 1}, "readyAfterWorstZoneLoss": 2},
                {"name": "worker", "replicas": 2, "readyReplicas": 1, "minAvailable": 1,
                 "readyByZone": {"zone-a": 1}, "readyAfterWorstZoneLoss": 0}
            ]
        })),
    )
}

#[test]
fn rows_read_ready_pods_by_zone_and_tolerance_from_the_status() {
    let rows = status_rows(&[shop()]);
    assert_eq!(rows.len(), 2);
    let web = &rows[0];
    assert_eq!((web.app.as_str(), web.component.as_str(), web.ready, web.min_available), ("shop", "web", 3, 2));
    assert_eq!(web.tolerant, Some(true));
    assert_eq!(web.app_ready, "True");
    let worker = &rows[1];
    // Every usable zone has a count, 0 where no pod is ready.
    assert_eq!(
        worker.ready_by_zone,
        [("zone-a", 1), ("zone-b", 0), ("zone-c", 0)].map(|(z, n)| (z.to_string(), n)).into()
    );
    assert_eq!(worker.tolerant, Some(false), "0 ready after losing zone-a < minAvailable 1");
}

#[test]
fn an_app_not_reported_yet_has_unknown_tolerance_and_no_ready_pods() {
    let rows = status_rows(&[app("new", json!({"namespace": "team-new"}), None)]);
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].ready, rows[0].min_available, rows[0].tolerant), (0, 2, None));
    assert_eq!(rows[0].namespace, "team-new");
    assert_eq!(rows[0].app_ready, "Unknown");
    assert!(rows[0].ready_by_zone.is_empty());
}

#[test]
fn the_table_has_a_column_per_zone_and_dashes_where_an_app_has_no_such_zone() {
    let mut two_zones = shop();
    two_zones.metadata.name = Some("api".into());
    let status = two_zones.status.as_mut().unwrap();
    status.zones = vec!["zone-a".into(), "zone-b".into()];
    for c in &mut status.components {
        c.ready_by_zone.remove("zone-c");
    }
    let table = status_table(&status_rows(&[shop(), two_zones]), false);
    let lines: Vec<&str> = table.lines().collect();
    let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(words(lines[0]), ["APP", "COMPONENT", "READY/MIN", "ZONE-A", "ZONE-B", "ZONE-C", "TOLERANT"]);
    // Sorted by app name: api before shop.
    assert_eq!(words(lines[1]), ["api", "web", "3/2", "1", "1", "-", "True"]);
    assert_eq!(words(lines[4]), ["shop", "worker", "1/1", "1", "0", "0", "False"]);
    // Columns line up: every cell of a column starts where its header does.
    let at = lines[0].find("TOLERANT").unwrap();
    assert!(lines[1..].iter().all(|l| l[at..].starts_with("True") || l[at..].starts_with("False")), "{table}");
}

#[test]
fn wide_adds_namespace_replicas_worst_loss_and_the_ready_message() {
    let table = status_table(&status_rows(&[shop()]), true);
    let header = table.lines().next().unwrap();
    for column in ["NAMESPACE", "REPLICAS", "AFTER WORST LOSS", "APP READY", "MESSAGE"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(table.lines().nth(1).unwrap().ends_with("all ready"), "{table}");
    assert_eq!(status_table(&[], false), "No ResilientApps found.\n");
}

#[test]
fn namespace_filter_matches_spec_namespace_or_the_app_name() {
    let apps = vec![shop(), app("other", json!({"namespace": "shop-two"}), None)];
    let names = |apps: Vec<ResilientApp>| apps.iter().map(|a| a.name()).collect::<Vec<_>>();
    assert_eq!(names(in_namespace(apps.clone(), Some("shop"))), ["shop"]);
    assert_eq!(names(in_namespace(apps.clone(), Some("shop-two"))), ["other"]);
    assert_eq!(names(in_namespace(apps, None)), ["shop", "other"]);
}
