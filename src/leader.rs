//! Leader election on a coordination.k8s.io Lease (kube-lease-manager): only the holder
//! reconciles; a standby takes over when the holder stops renewing.

use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Where the lease lives and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// A holder that has not renewed for this long loses the lease.
    pub duration: Duration,
    /// The holder renews this long before the lease would expire.
    pub grace: Duration,
}

/// The held lease. Dropping it without [`Leadership::release`] lets it expire instead.
pub struct Leadership {
    rx: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Wait until this instance holds the lease. A failed API request (the lease manager stops on
/// any error but a conflict) is retried with backoff: a standby must not exit on a transient
/// error of the API server.
pub async fn acquire(client: Client, settings: &LeaseSettings) -> Leadership {
    let mut delay = Duration::from_secs(1);
    loop {
        match try_acquire(client.clone(), settings).await {
            Ok(leadership) => return leadership,
            Err(e) => {
                warn!(error = %format!("{e:#}"), retry_in = ?delay, "leader election failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn try_acquire(client: Client, settings: &LeaseSettings) -> anyhow::Result<Leadership> {
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration.as_secs())
        .with_grace(settings.grace.as_secs())
        .with_field_manager(crate::api::MANAGER)
        .build()
        .await
        .with_context(|| format!("preparing the lease {}/{}", settings.namespace, settings.name))?;
    let (mut rx, task) = manager.watch().await;
    info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity, "waiting for the leader lease");
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            let why = match task.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => "it returned".to_string(),
                Err(e) => e.to_string(),
            };
            anyhow::bail!("the lease manager stopped: {why}");
        }
    }
    info!(identity = %settings.identity, "acquired the leader lease");
    Ok(Leadership { rx, task })
}

impl Leadership {
    /// Resolves when the lease is lost (another instance took it, or it could not be renewed).
    pub async fn lost(&mut self) {
        loop {
            if !*self.rx.borrow_and_update() {
                return;
            }
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Give the lease up now, so a standby takes over without waiting for it to expire.
    pub async fn release(self) {
        drop(self.rx);
        match self.task.await {
            Ok(Ok(_)) => info!("released the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the leader lease"),
            Err(e) => tracing::warn!(error = %e, "lease task failed"),
        }
    }
}
