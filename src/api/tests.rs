use super::*;
use kube::CustomResourceExt;

#[test]
fn committed_crds_match_the_generator() {
    let generated = crate::cli::crd_yaml().unwrap();
    for (path, committed) in [
        ("crds/resilientapps.resilient.dev.yaml", include_str!("../../crds/resilientapps.resilient.dev.yaml")),
        (
            "config/crd/resilientapps.resilient.dev.yaml",
            include_str!("../../config/crd/resilientapps.resilient.dev.yaml"),
        ),
    ] {
        assert!(committed == generated, "{path} is stale: run `make crd`");
    }
}

#[test]
fn crd_names_scope_and_columns() {
    let crd = ResilientApp::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.plural, "resilientapps");
    assert_eq!(crd.spec.names.short_names, Some(vec!["rapp".to_string(), "rapps".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> =
        version.additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["Ready", "Tolerant", "Zones", "Age", "Message"]);
}

#[test]
fn target_namespace_defaults_to_the_name() {
    let spec: ResilientAppSpec = serde_json::from_value(serde_json::json!({"components": []})).unwrap();
    let mut app = ResilientApp::new("shop", spec);
    assert_eq!(app.target_namespace(), "shop");
    app.spec.namespace = Some("shop-prod".into());
    assert_eq!(app.target_namespace(), "shop-prod");
}
