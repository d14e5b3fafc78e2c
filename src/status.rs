//! `kubectl resilient status`: per app and component, ready pods against `minAvailable`, ready pods
//! by zone and whether the component survives the loss of its worst zone(s), read from the
//! ResilientApps' status. Pure: the caller lists the apps.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::api::ResilientApp;

/// One component of one app, as its app's status reports it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow {
    pub app: String,
    pub namespace: String,
    pub component: String,
    /// Ready pods (0 until the operator has reported the component).
    pub ready: i32,
    pub min_available: i32,
    pub replicas: i32,
    /// The app's usable zones, each with its ready pods of this component (0 included).
    pub ready_by_zone: BTreeMap<String, i32>,
    pub ready_after_worst_zone_loss: i32,
    /// `readyAfterWorstZoneLoss >= minAvailable`; `None` before the operator has reported.
    pub tolerant: Option<bool>,
    /// The app's `Ready` condition: True, False or Unknown.
    pub app_ready: String,
    /// The message of the app's `Ready` condition.
    pub message: String,
}

/// One row per component of every app, sorted by app then component order in the spec. A
/// component the status does not mention yet is reported with no ready pods and unknown tolerance.
pub fn status_rows(apps: &[ResilientApp]) -> Vec<StatusRow> {
    let mut apps: Vec<&ResilientApp> = apps.iter().collect();
    apps.sort_by_key(|a| a.name());
    let mut rows = Vec::new();
    for app in apps {
        let status = app.status.clone().unwrap_or_default();
        let ready_condition = status.conditions.iter().find(|c| c.type_ == "Ready");
        let app_ready = ready_condition.map_or("Unknown", |c| c.status.as_str()).to_string();
        let message = ready_condition.map(|c| c.message.clone()).unwrap_or_default();
        for component in &app.spec.components {
            let observed = status.components.iter().find(|c| c.name == component.name);
            // The component's own zones (its pod template may narrow them); "-" in the table elsewhere.
            let zones = observed.map(|c| &c.zones).filter(|z| !z.is_empty()).unwrap_or(&status.zones);
            let mut ready_by_zone: BTreeMap<String, i32> = zones.iter().map(|z| (z.clone(), 0)).collect();
            if let Some(c) = observed {
                ready_by_zone.extend(c.ready_by_zone.iter().map(|(z, n)| (z.clone(), *n)));
            }
            rows.push(StatusRow {
                app: app.name(),
                namespace: app.target_namespace(),
                component: component.name.clone(),
                ready: observed.map_or(0, |c| c.ready_replicas),
                min_available: observed.map_or(component.min_available, |c| c.min_available),
                replicas: observed.map_or(0, |c| c.replicas),
                ready_by_zone,
                ready_after_worst_zone_loss: observed.map_or(0, |c| c.ready_after_worst_zone_loss),
                tolerant: observed.map(|c| c.ready_after_worst_zone_loss >= c.min_available),
                app_ready: app_ready.clone(),
                message: message.clone(),
            });
        }
    }
    rows
}

/// Only the apps whose namespace (spec.namespace, else the app name) is `namespace`.
pub fn in_namespace(apps: Vec<ResilientApp>, namespace: Option<&str>) -> Vec<ResilientApp> {
    match namespace {
        None => apps,
        Some(ns) => apps.into_iter().filter(|a| a.target_namespace() == ns).collect(),
    }
}

/// The rows as a kubectl-style table: a column per zone (upper case), `-` where the app does not
/// use the zone. `wide` adds the namespace, replicas, ready pods after the worst zone loss, the
/// app's Ready condition and its message.
pub fn status_table(rows: &[StatusRow], wide: bool) -> String {
    if rows.is_empty() {
        return "No ResilientApps found.\n".to_string();
    }
    let zones: BTreeSet<&String> = rows.iter().flat_map(|r| r.ready_by_zone.keys()).collect();
    let mut header: Vec<String> = vec!["APP".into()];
    if wide {
        header.push("NAMESPACE".into());
    }
    header.extend(["COMPONENT".to_string(), "READY/MIN".to_string()]);
    header.extend(zones.iter().map(|z| z.to_uppercase()));
    header.push("TOLERANT".into());
    if wide {
        header.extend(["REPLICAS", "AFTER WORST LOSS", "APP READY", "MESSAGE"].map(String::from));
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![r.app.clone()];
            if wide {
                cells.push(r.namespace.clone());
            }
            cells.extend([r.component.clone(), format!("{}/{}", r.ready, r.min_available)]);
            cells.extend(zones.iter().map(|z| r.ready_by_zone.get(*z).map_or("-".to_string(), i32::to_string)));
            cells.push(match r.tolerant {
                Some(true) => "True".into(),
                Some(false) => "False".into(),
                None => "Unknown".into(),
            });
            if wide {
                cells.extend([
                    r.replicas.to_string(),
                    r.ready_after_worst_zone_loss.to_string(),
                    r.app_ready.clone(),
                    r.message.clone(),
                ]);
            }
            cells
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| table.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("   ").trim_end())
    };
    let mut out = line(&header);
    for r in &table {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests;
