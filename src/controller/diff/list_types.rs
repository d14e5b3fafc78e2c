//! How the API server merges each list of the kinds the operator writes: the `x-kubernetes-list-type`
//! (and, where only the older strategic-merge markers are set, `x-kubernetes-patch-strategy` /
//! `x-kubernetes-patch-merge-key`) of every array in their OpenAPI v3 schema, the same reading
//! server-side apply makes of it.
//!
//! The table is generated from the API server's `/openapi/v3` and committed (`list_types.json`,
//! `make list-types`); `tests/ownership.rs` checks it against the live server. It is built into the
//! binary rather than read at startup because the objects the operator writes are k8s-openapi
//! types of one Kubernetes version (the `v1_35` feature): a table of that version's schema is the
//! one that matches them, the comparison stays pure (no client, no I/O, usable from a watch event),
//! and there is no startup request that could fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use serde_json::Value;

/// The kinds whose lists the table holds, as (group, version, kind): every kind the operator
/// writes, and those it is about to (StatefulSet, HorizontalPodAutoscaler).
pub const KINDS: &[(&str, &str, &str)] = &[
    ("", "v1", "Namespace"),
    ("", "v1", "ResourceQuota"),
    ("", "v1", "LimitRange"),
    ("", "v1", "Service"),
    ("", "v1", "ServiceAccount"),
    ("", "v1", "PersistentVolumeClaim"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("policy", "v1", "PodDisruptionBudget"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler"),
];

/// The committed table.
pub const COMMITTED: &str = include_str!("list_types.json");

/// Lists that are atomic in the schema but compared by their entries: see [`ListType::Entries`].
/// (Path suffixes, so they hold for every pod template.)
const COMPARED_BY_ENTRIES: &[&str] = &["spec.tolerations"];

/// A key field of a keyed list, with the value the server gives it when an entry leaves it out
/// (a port's `protocol` is `"TCP"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub field: String,
    pub default: Option<Value>,
}

impl Key {
    /// The key's value in an entry, defaulted as the server does.
    pub fn of<'a>(&'a self, entry: &'a Value) -> Option<&'a Value> {
        entry.get(&self.field).filter(|v| !v.is_null()).or(self.default.as_ref())
    }

    fn to_table(&self) -> String {
        match &self.default {
            Some(default) => format!("{}={default}", self.field),
            None => self.field.clone(),
        }
    }

    fn from_table(s: &str) -> Option<Self> {
        Some(match s.split_once('=') {
            Some((field, default)) => Key { field: field.into(), default: Some(serde_json::from_str(default).ok()?) },
            None => Key { field: s.into(), default: None },
        })
    }
}

/// How a list merges, and so how it is compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole by whoever applies it: compared whole, in order.
    Atomic,
    /// A set of scalars; each manager owns its members: the operator's members must be present.
    Set,
    /// Entries identified by these key fields; each manager owns its entries: the operator's
    /// entries must be present by key, whatever else is there.
    Map(Vec<Key>),
    /// Atomic in the schema (pod `tolerations`), but each entry stands on its own: the operator's
    /// entries must all be present, others' are ignored. An operator decision, not the schema's
    /// (see docs/api.md, "Field ownership").
    Entries,
}

impl ListType {
    /// The form used in the committed table: `atomic`, `set`, `map(key,key="default")`.
    pub fn to_table(&self) -> String {
        match self {
            ListType::Atomic | ListType::Entries => "atomic".into(),
            ListType::Set => "set".into(),
            ListType::Map(keys) => format!("map({})", keys.iter().map(Key::to_table).collect::<Vec<_>>().join(",")),
        }
    }

    fn from_table(s: &str) -> Option<Self> {
        match s {
            "atomic" => Some(ListType::Atomic),
            "set" => Some(ListType::Set),
            _ => {
                let keys = s.strip_prefix("map(")?.strip_suffix(')')?;
                Some(ListType::Map(keys.split(',').map(Key::from_table).collect::<Option<_>>()?))
            }
        }
    }

    /// What the schema extensions of an array say, read as server-side apply reads them: an
    /// explicit list type wins; else a `merge` patch strategy makes a map on the merge key (a set
    /// without one); else the list is atomic. `item` is the items' schema, where key defaults are.
    fn from_schema(array: &Value, item: &Value) -> Self {
        let key = |field: &str| Key {
            field: field.to_string(),
            default: item["properties"][field].get("default").filter(|_| !is_required(item, field)).cloned(),
        };
        match array.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => return ListType::Set,
            Some("map") => {
                let keys = array["x-kubernetes-list-map-keys"].as_array().into_iter().flatten();
                return ListType::Map(keys.filter_map(Value::as_str).map(key).collect());
            }
            Some(_) => return ListType::Atomic,
            None => {}
        }
        let strategy = array.get("x-kubernetes-patch-strategy").and_then(Value::as_str).unwrap_or_default();
        if strategy.split(',').any(|s| s == "merge") {
            return match array.get("x-kubernetes-patch-merge-key").and_then(Value::as_str) {
                Some(field) => ListType::Map(vec![key(field)]),
                None => ListType::Set,
            };
        }
        ListType::Atomic
    }
}

/// Per kind (`apiVersion/kind`, as in the objects: `apps/v1/Deployment`, `v1/Service`), the list
/// type of every array by path: field names joined by `.`, `[]` for a list's items, `{}` for a
/// map's values (`spec.template.spec.containers[].env`).
pub type Table = BTreeMap<String, BTreeMap<String, String>>;

/// The table of `kinds` from OpenAPI v3 documents (one per group-version, as served at
/// `/openapi/v3/apis/<group>/<version>` and `/openapi/v3/api/v1`).
pub fn from_openapi(documents: &[Value], kinds: &[(&str, &str, &str)]) -> Result<Table, String> {
    let mut table = Table::new();
    for &(group, version, kind) in kinds {
        let (schemas, root) = documents
            .iter()
            .filter_map(|d| d["components"]["schemas"].as_object())
            .find_map(|schemas| schemas.values().find(|s| is_kind(s, group, version, kind)).map(|root| (schemas, root)))
            .ok_or_else(|| format!("no schema for {group}/{version} {kind}"))?;
        let mut lists = BTreeMap::new();
        walk(schemas, root, "", &mut lists, &mut Vec::new());
        let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        table.insert(format!("{api_version}/{kind}"), lists);
    }
    Ok(table)
}

fn is_required(schema: &Value, field: &str) -> bool {
    schema["required"].as_array().is_some_and(|r| r.iter().any(|f| f == field))
}

/// A schema with its reference (`$ref`, or `allOf: [{$ref}]` beside a description) followed.
fn resolve<'a>(schemas: &'a serde_json::Map<String, Value>, schema: &'a Value) -> (&'a Value, Option<&'a str>) {
    let reference = schema["$ref"].as_str().or_else(|| match schema["allOf"].as_array().map(Vec::as_slice) {
        Some([only]) => only["$ref"].as_str(),
        _ => None,
    });
    match reference.map(|r| r.trim_start_matches("#/components/schemas/")) {
        Some(name) => (schemas.get(name).unwrap_or(&Value::Null), Some(name)),
        None => (schema, None),
    }
}

fn is_kind(schema: &Value, group: &str, version: &str, kind: &str) -> bool {
    schema["x-kubernetes-group-version-kind"].as_array().into_iter().flatten().any(|gvk| {
        gvk["group"].as_str() == Some(group)
            && gvk["version"].as_str() == Some(version)
            && gvk["kind"].as_str() == Some(kind)
    })
}

/// Record the list type of every array under `schema`, at `path`.
fn walk<'a>(
    schemas: &'a serde_json::Map<String, Value>,
    schema: &'a Value,
    path: &str,
    lists: &mut BTreeMap<String, String>,
    seen: &mut Vec<&'a str>,
) {
    if let (target, Some(name)) = resolve(schemas, schema) {
        // Recursive types (none in these kinds today) end where they recur.
        if !seen.contains(&name) {
            seen.push(name);
            walk(schemas, target, path, lists, seen);
            seen.pop();
        }
        return;
    }
    if schema["type"] == "array" {
        let (item, _) = resolve(schemas, &schema["items"]);
        lists.insert(path.to_string(), ListType::from_schema(schema, item).to_table());
        walk(schemas, &schema["items"], &format!("{path}[]"), lists, seen);
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (field, property) in properties {
            let path = if path.is_empty() { field.clone() } else { format!("{path}.{field}") };
            walk(schemas, property, &path, lists, seen);
        }
    }
    if schema["additionalProperties"].is_object() {
        walk(schemas, &schema["additionalProperties"], &format!("{path}.{{}}"), lists, seen);
    }
}

/// The list types under one point of an object: a tree of the committed table's paths.
#[derive(Debug, Default)]
pub struct Node {
    fields: HashMap<String, Node>,
    /// A list's items.
    items: Option<Box<Node>>,
    /// A map's values.
    values: Option<Box<Node>>,
    /// This point is a list of this type.
    list: Option<ListType>,
}

impl Node {
    /// The node of a field (or, in a map, of any key's value).
    pub fn field(&self, name: &str) -> Option<&Node> {
        self.fields.get(name).or(self.values.as_deref())
    }

    /// The node of a list's items.
    pub fn items(&self) -> Option<&Node> {
        self.items.as_deref()
    }

    /// The list type here; a list the table does not know is atomic, as in Kubernetes.
    pub fn list(&self) -> &ListType {
        self.list.as_ref().unwrap_or(&ListType::Atomic)
    }

    fn insert(&mut self, path: &str, list: ListType) {
        let mut node = self;
        for segment in path.split('.') {
            let field = segment.trim_end_matches("[]");
            node = match field {
                "{}" => node.values.get_or_insert_default(),
                _ => node.fields.entry(field.to_string()).or_default(),
            };
            for _ in 0..(segment.len() - field.len()) / 2 {
                node = node.items.get_or_insert_default();
            }
        }
        node.list = Some(list);
    }
}

/// The committed table as trees, by `apiVersion/kind`, with the [`ListType::Entries`] overrides.
static TREES: LazyLock<HashMap<String, Node>> = LazyLock::new(|| trees(COMMITTED).expect("list_types.json parses"));

fn trees(text: &str) -> Result<HashMap<String, Node>, String> {
    let table: Table = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut trees = HashMap::new();
    for (kind, lists) in table {
        let mut root = Node::default();
        for (path, form) in lists {
            let mut list = ListType::from_table(&form).ok_or_else(|| format!("{kind} {path}: bad list type {form}"))?;
            if list == ListType::Atomic && COMPARED_BY_ENTRIES.iter().any(|suffix| path.ends_with(suffix)) {
                list = ListType::Entries;
            }
            root.insert(&path, list);
        }
        trees.insert(kind, root);
    }
    Ok(trees)
}

/// The list types of the object's kind (by its `apiVersion` and `kind`), if the table has it.
pub fn of(object: &Value) -> Option<&'static Node> {
    let (api_version, kind) = (object["apiVersion"].as_str()?, object["kind"].as_str()?);
    TREES.get(&format!("{api_version}/{kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_types_read_like_server_side_apply() {
        let t = |s: Value| ListType::from_schema(&s, &json!({}));
        let k = |f: &str| Key { field: f.into(), default: None };
        assert_eq!(
            t(json!({"x-kubernetes-list-type": "atomic", "x-kubernetes-patch-strategy": "merge"})),
            ListType::Atomic
        );
        assert_eq!(t(json!({"x-kubernetes-list-type": "set"})), ListType::Set);
        assert_eq!(
            t(json!({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["containerPort", "protocol"],
                "x-kubernetes-patch-merge-key": "containerPort"})),
            ListType::Map(vec![k("containerPort"), k("protocol")])
        );
        let port = json!({"required": ["containerPort"], "properties": {
            "containerPort": {"type": "integer", "default": 0}, "protocol": {"type": "string", "default": "TCP"}}});
        assert_eq!(
            ListType::from_schema(
                &json!({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["containerPort", "protocol"]}),
                &port
            ),
            ListType::Map(vec![k("containerPort"), Key { field: "protocol".into(), default: Some(json!("TCP")) }])
        );
        assert_eq!(
            t(json!({"x-kubernetes-patch-strategy": "merge,retainKeys", "x-kubernetes-patch-merge-key": "name"})),
            ListType::Map(vec![k("name")])
        );
        assert_eq!(t(json!({"x-kubernetes-patch-strategy": "merge"})), ListType::Set);
        assert_eq!(t(json!({"x-kubernetes-patch-strategy": "retainKeys"})), ListType::Atomic);
        assert_eq!(t(json!({})), ListType::Atomic);
    }

    #[test]
    fn the_table_round_trips_through_its_text_form() {
        let port = Key { field: "port".into(), default: None };
        let protocol = Key { field: "protocol".into(), default: Some(json!("TCP")) };
        assert_eq!(ListType::Map(vec![port.clone(), protocol.clone()]).to_table(), r#"map(port,protocol="TCP")"#);
        for list in [ListType::Atomic, ListType::Set, ListType::Map(vec![port, protocol])] {
            assert_eq!(ListType::from_table(&list.to_table()), Some(list));
        }
        assert_eq!(ListType::from_table("map(name"), None);
    }

    #[test]
    fn paths_walk_through_refs_items_and_map_values() {
        let doc = json!({"components": {"schemas": {
            "Thing": {"x-kubernetes-group-version-kind": [{"group": "g", "version": "v1", "kind": "Thing"}],
                "properties": {
                    "spec": {"allOf": [{"$ref": "#/components/schemas/Spec"}], "description": "d"},
                    "byName": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Spec"}}}},
            "Spec": {"properties": {
                "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                    "items": {"$ref": "#/components/schemas/Item"}},
                "self": {"$ref": "#/components/schemas/Spec"}}},
            "Item": {"properties": {"args": {"type": "array", "items": {"type": "string"}},
                "grid": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}}}}
        }}});
        let table = from_openapi(&[doc], &[("g", "v1", "Thing")]).unwrap();
        let lists: Vec<(&str, &str)> = table["g/v1/Thing"].iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
        assert_eq!(
            lists,
            [
                ("byName.{}.items", "map(name)"),
                ("byName.{}.items[].args", "atomic"),
                ("byName.{}.items[].grid", "atomic"),
                ("byName.{}.items[].grid[]", "atomic"),
                ("spec.items", "map(name)"),
                ("spec.items[].args", "atomic"),
                ("spec.items[].grid", "atomic"),
                ("spec.items[].grid[]", "atomic"),
            ]
        );
        assert!(from_openapi(&[], &[("g", "v1", "Thing")]).is_err());
    }

    #[test]
    fn trees_find_lists_by_path_and_override_tolerations() {
        let text = r#"{"apps/v1/Deployment": {
            "spec.template.spec.containers": "map(name)",
            "spec.template.spec.containers[].env": "map(name)",
            "spec.template.spec.tolerations": "atomic",
            "metadata.labels.{}.odd": "set",
            "grid[]": "set"}}"#;
        let parsed = trees(text).unwrap();
        let root = &parsed["apps/v1/Deployment"];
        let pod = root.field("spec").unwrap().field("template").unwrap().field("spec").unwrap();
        let containers = pod.field("containers").unwrap();
        let by_name = ListType::Map(vec![Key { field: "name".into(), default: None }]);
        assert_eq!(containers.list(), &by_name);
        assert_eq!(containers.items().unwrap().field("env").unwrap().list(), &by_name);
        assert_eq!(pod.field("tolerations").unwrap().list(), &ListType::Entries);
        assert!(pod.field("volumes").is_none());
        let labels = root.field("metadata").unwrap().field("labels").unwrap();
        assert_eq!(labels.field("any-key").unwrap().field("odd").unwrap().list(), &ListType::Set);
        assert_eq!(root.field("grid").unwrap().list(), &ListType::Atomic);
        assert_eq!(root.field("grid").unwrap().items().unwrap().list(), &ListType::Set);
        assert!(trees(r#"{"v1/X": {"a": "mapp"}}"#).is_err());
    }

    #[test]
    fn the_committed_table_covers_every_child_kind() {
        macro_rules! each_kind {
            ($($kind:ident: $field:ident,)*) => {
                $(
                    let value = serde_json::to_value(<$kind as Default>::default()).unwrap();
                    assert!(of(&value).is_some(), "list_types.json has no {}: add it to KINDS and run make list-types", stringify!($kind));
                )*
            };
        }
        #[allow(unused_imports, reason = "whichever kinds child_kinds! names")]
        use k8s_openapi::api::{
            apps::v1::*, autoscaling::v2::*, core::v1::*, networking::v1::*, policy::v1::*, rbac::v1::*,
        };
        crate::render::child_kinds!(each_kind);
    }
}
