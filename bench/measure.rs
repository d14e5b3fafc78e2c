//! Where the numbers come from: the API server's audit log and /metrics, /proc of the processes,
//! and the operator's own /metrics.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

/// p50 / p99 / max of a sample, in the unit it was given in.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if values.is_empty() {
                return f64::NAN;
            }
            let i = ((p / 100.0) * (values.len() as f64 - 1.0)).round() as usize;
            values[i.min(values.len() - 1)]
        };
        // A p99 of fewer than 100 samples would be the max under another name: left out (null).
        let p99 = if values.len() >= 100 { at(99.0) } else { f64::NAN };
        Self { count: values.len(), p50: at(50.0), p99, max: values.last().copied().unwrap_or(f64::NAN) }
    }
}

/// Seconds since the epoch.
pub fn now() -> f64 {
    jiff::Timestamp::now().as_nanosecond() as f64 / 1e9
}

fn ts(s: &str) -> f64 {
    s.parse::<jiff::Timestamp>().map(|t| t.as_nanosecond() as f64 / 1e9).unwrap_or(f64::NAN)
}

/// One request as the API server's audit log recorded it.
#[derive(Debug, Clone)]
pub struct Request {
    pub user_agent: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The response's status code.
    pub code: u16,
    /// When the API server received it and when it had answered (seconds since the epoch).
    pub received: f64,
    pub answered: f64,
}

impl Request {
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn seconds(&self) -> f64 {
        self.answered - self.received
    }
}

/// Every completed request received in `[since, until]`, from the audit log and its rotated
/// backups (`audit-<time>.log` beside it).
pub fn audit(log: &Path, since: f64, until: f64) -> anyhow::Result<Vec<Request>> {
    let dir = log.parent().unwrap_or(Path::new("."));
    let stem = log.file_stem().and_then(|s| s.to_str()).unwrap_or("audit").to_string();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&stem) && n.ends_with(".log")))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let reader = BufReader::new(std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?);
        for line in reader.lines() {
            let line = line?;
            if !line.contains("\"ResponseComplete\"") {
                continue;
            }
            let Ok(e) = serde_json::from_str::<Value>(&line) else { continue };
            let received = ts(e["requestReceivedTimestamp"].as_str().unwrap_or_default());
            if !(received >= since && received <= until) {
                continue;
            }
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let r = &e["objectRef"];
            out.push(Request {
                user_agent: s(&e["userAgent"]),
                verb: s(&e["verb"]),
                resource: s(&r["resource"]),
                subresource: s(&r["subresource"]),
                namespace: s(&r["namespace"]),
                name: s(&r["name"]),
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                received,
                answered: ts(e["stageTimestamp"].as_str().unwrap_or_default()),
            });
        }
    }
    Ok(out)
}

/// Requests per verb (and writes per resource) of one user agent.
pub fn per_verb<'a>(requests: impl Iterator<Item = &'a Request>) -> BTreeMap<String, u64> {
    let mut verbs = BTreeMap::new();
    for r in requests {
        *verbs.entry(r.verb.clone()).or_default() += 1;
    }
    verbs
}

/// Requests per "verb resource[/subresource] code" of one user agent.
pub fn per_resource<'a>(requests: impl Iterator<Item = &'a Request>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in requests {
        let sub = if r.subresource.is_empty() { String::new() } else { format!("/{}", r.subresource) };
        *out.entry(format!("{} {}{} {}", r.verb, r.resource, sub, r.code)).or_default() += 1;
    }
    out
}

/// CPU seconds and memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    #[serde(rename = "rssMiB")]
    pub rss_mib: f64,
    /// Peak RSS over the process's life (VmHWM).
    #[serde(rename = "peakRssMiB")]
    pub peak_rss_mib: f64,
    #[serde(rename = "cpuSeconds")]
    pub cpu_seconds: f64,
}

pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn usage(pid: u32, ticks: f64) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime are fields 14 and 15 of /proc/PID/stat: 11 and 12 after the ")" of the name.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Usage {
        rss_mib: kib("VmRSS:") / 1024.0,
        peak_rss_mib: kib("VmHWM:") / 1024.0,
        cpu_seconds: (field(11) + field(12)) / ticks,
    }
}

/// The control plane's processes (etcd, kube-apiserver, ...) from the pid files of e2e/cluster.sh.
pub fn cluster_pids(dir: &Path) -> BTreeMap<String, u32> {
    let mut pids = BTreeMap::new();
    for name in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"] {
        if let Some(pid) =
            std::fs::read_to_string(dir.join(format!("{name}.pid"))).ok().and_then(|s| s.trim().parse().ok())
        {
            pids.insert(name.to_string(), pid);
        }
    }
    pids
}

/// A cumulative histogram (upper bound -> count) summed over every label set of one metric.
#[derive(Debug, Clone, Default)]
pub struct Histogram(pub BTreeMap<u64, f64>);

impl Histogram {
    /// `name`'s buckets from a Prometheus text exposition, skipping series whose labels contain
    /// any of `skip` (e.g. `verb="WATCH"`).
    pub fn parse(text: &str, name: &str, skip: &[&str]) -> Self {
        let prefix = format!("{name}_bucket{{");
        let mut buckets = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with(&prefix)) {
            if skip.iter().any(|s| line.contains(s)) {
                continue;
            }
            let Some((labels, value)) = line.rsplit_once(' ') else { continue };
            let Some(le) = labels.split("le=\"").nth(1).and_then(|s| s.split('"').next()) else { continue };
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
            *buckets.entry(bound.to_bits()).or_default() += value.parse::<f64>().unwrap_or(0.0);
        }
        Self(buckets)
    }

    pub fn minus(&self, earlier: &Self) -> Self {
        Self(self.0.iter().map(|(b, v)| (*b, v - earlier.0.get(b).copied().unwrap_or(0.0))).collect())
    }

    pub fn count(&self) -> f64 {
        self.0.values().copied().fold(0.0, f64::max)
    }

    /// The q-quantile, interpolated inside its bucket as Prometheus' `histogram_quantile` does.
    pub fn quantile(&self, q: f64) -> f64 {
        let mut bounds: Vec<(f64, f64)> = self.0.iter().map(|(b, v)| (f64::from_bits(*b), *v)).collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = self.count();
        if total <= 0.0 {
            return f64::NAN;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (bound, cumulative) in bounds {
            if cumulative >= rank {
                if bound.is_infinite() {
                    return lower;
                }
                let inside = cumulative - below;
                return if inside <= 0.0 { bound } else { lower + (bound - lower) * (rank - below) / inside };
            }
            (lower, below) = (bound, cumulative);
        }
        lower
    }
}

/// The value of a metric without labels, or the sum over its label sets.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        let text = "x_bucket{verb=\"GET\",le=\"0.1\"} 50\nx_bucket{verb=\"GET\",le=\"1\"} 100\nx_bucket{verb=\"GET\",le=\"+Inf\"} 100\n\
                    x_bucket{verb=\"WATCH\",le=\"0.1\"} 7\n";
        let h = Histogram::parse(text, "x", &["verb=\"WATCH\""]);
        assert_eq!(h.count(), 100.0);
        assert!((h.quantile(0.5) - 0.1).abs() < 1e-9);
        assert!((h.quantile(0.99) - (0.1 + 0.9 * 49.0 / 50.0)).abs() < 1e-9);
    }

    #[test]
    fn summary_percentiles() {
        let s = Summary::of((1..=100).map(f64::from).collect());
        assert_eq!((s.count, s.p50, s.p99, s.max), (100, 51.0, 99.0, 100.0));
        assert!(Summary::of((1..=99).map(f64::from).collect()).p99.is_nan(), "no p99 from fewer than 100 samples");
    }
}
