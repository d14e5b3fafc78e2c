use std::time::Duration;

/// Everything a reconcile can fail with. Spec problems are not errors: they go to status and
/// wait for a change. These are the transient failures that back off and retry.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("applying {kind} {name}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}")]
    Delete {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("evicting pod {name}")]
    Evict {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading namespace {name}")]
    ReadNamespace {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading StorageClass {name}")]
    ReadStorageClass {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing status")]
    Status(#[source] kube::Error),
    #[error("namespace {0} appeared before the operator could create it; it is not adopted")]
    NamespaceTaken(String),
    #[error("cleaning up after the deleted app: {0}")]
    Cleanup(String),
    #[error("{0}")]
    Finalizer(String),
    #[error("caches did not sync within {0:?}")]
    CachesNotReady(Duration),
    #[error("serializing {kind}")]
    Serialize {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The API server's message when this is a write it refuses for good (bad request,
    /// forbidden by RBAC or an admission policy, invalid): retrying the same write cannot help
    /// until something else changes. `None` for everything transient (timeouts, 404, 409, 429, 5xx).
    pub fn rejection(&self) -> Option<String> {
        let (what, source) = match self {
            Self::Apply { kind, name, source } => (format!("applying {kind} {name}"), source),
            Self::Delete { kind, name, source } => (format!("deleting {kind} {name}"), source),
            _ => return None,
        };
        match source {
            kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422) => Some(format!("{what}: {}", s.message)),
            _ => None,
        }
    }

    /// A small fixed set of categories, for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::Evict { .. } => "evict",
            Self::ReadNamespace { .. } | Self::ReadStorageClass { .. } => "read",
            Self::Status(_) => "status",
            Self::NamespaceTaken(_) => "namespace",
            Self::Cleanup(_) => "cleanup",
            Self::Finalizer(_) => "finalizer",
            Self::CachesNotReady(_) => "cache",
            Self::Serialize { .. } => "internal",
        }
    }
}

/// The error and all its causes, one after the other.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
