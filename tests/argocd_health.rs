//! The Argo CD health check (docs/gitops/argocd/health.lua) on every sample of
//! docs/gitops/argocd/health-samples.yaml, in Lua 5.1 like Argo CD's gopher-lua.

use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::Value;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn argocd_health_check_reads_the_conditions_right() {
    let script = std::fs::read_to_string(root().join("docs/gitops/argocd/health.lua")).unwrap();
    let samples: Vec<Value> = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("docs/gitops/argocd/health-samples.yaml")).unwrap(),
    )
    .unwrap();
    assert!(samples.len() >= 7);
    for sample in samples {
        let lua = Lua::new();
        lua.globals().set("obj", lua.to_value(&sample["object"]).unwrap()).unwrap();
        let hs: Table = lua.load(&script).eval().unwrap_or_else(|e| panic!("{}: {e}", sample["name"]));
        let status: String = hs.get("status").unwrap();
        let message: String = hs.get("message").unwrap();
        assert_eq!(status, sample["expect"].as_str().unwrap(), "{}: {message}", sample["name"]);
        if let Some(part) = sample["message_contains"].as_str() {
            assert!(message.contains(part), "{}: message {message:?} lacks {part:?}", sample["name"]);
        }
    }
}
