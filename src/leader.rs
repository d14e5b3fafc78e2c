//! Leader election on a coordination.k8s.io Lease (kube-lease-manager): only the holder
//! reconciles; a standby takes over when the holder stops renewing.
//!
//! Two replicas must never write at once. Each replica is its own field manager on the Lease, so
//! two that start together conflict instead of both believing they hold it. The lease is checked
//! every second through a client with short timeouts, and a [`Fence`] closes every write of the
//! operator's client as soon as the lease could have expired unconfirmed: a leader paused (SIGSTOP,
//! a long GC, a frozen VM) or cut off from the API server sends nothing once it wakes up, and then
//! steps down (exits) before anything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

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

impl LeaseSettings {
    /// This replica's field manager on the Lease: its own, so that two replicas conflict.
    pub fn field_manager(&self) -> String {
        let manager = format!("{}/{}", crate::api::MANAGER, self.identity);
        manager.chars().take(128).collect()
    }

    /// How long after a confirmed renewal this replica may still write: the lease duration less a
    /// margin for clock and scheduling delays, so it stops before a standby can take over.
    pub fn write_window(&self) -> Duration {
        self.duration.saturating_sub(self.grace / 2).max(Duration::from_secs(1))
    }
}

/// Whether this replica may write now. Open for good without leader election; with it, open
/// until `valid_until` (a monotonic time), moved forward at each confirmed renewal.
#[derive(Debug)]
pub struct Fence {
    start: Instant,
    /// Nanoseconds since `start` until which writes are allowed; `u64::MAX` = always.
    valid_until: AtomicU64,
}

impl Fence {
    /// A fence that never closes (no leader election).
    pub fn open() -> Arc<Self> {
        Arc::new(Self { start: Instant::now(), valid_until: AtomicU64::new(u64::MAX) })
    }

    /// A fence closed until the lease is confirmed.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self { start: Instant::now(), valid_until: AtomicU64::new(0) })
    }

    /// Allow writes until `window` from now.
    pub fn extend(&self, window: Duration) {
        let until = (Instant::now() + window).duration_since(self.start).as_nanos() as u64;
        self.valid_until.store(until, Ordering::SeqCst);
    }

    pub fn close(&self) {
        self.valid_until.store(0, Ordering::SeqCst);
    }

    pub fn allows_writes(&self) -> bool {
        let now = self.start.elapsed().as_nanos() as u64;
        now < self.valid_until.load(Ordering::SeqCst)
    }
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
        .with_field_manager(settings.field_manager())
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

/// What a look at the Lease says about this replica's hold on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Held by this replica, renewed recently enough: writes may go on for the write window.
    Confirmed,
    /// Held by another replica, or expired.
    Lost,
}

/// Pure: does `lease` (as read at `now`) show `identity` holding it, unexpired?
pub fn hold_of(lease: &Lease, identity: &str, now: jiff::Timestamp) -> Hold {
    let Some(spec) = lease.spec.as_ref() else {
        return Hold::Lost;
    };
    let ours = spec.holder_identity.as_deref() == Some(identity);
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    let duration = spec.lease_duration_seconds.unwrap_or(0);
    let expires = renewed.and_then(|r| r.checked_add(jiff::SignedDuration::from_secs(i64::from(duration))).ok());
    match expires {
        Some(expires) if ours && expires > now => Hold::Confirmed,
        _ => Hold::Lost,
    }
}

/// Check the lease every second while this replica leads: extend the fence on each confirmation,
/// and exit as soon as the lease is held by another replica, or could not be confirmed for the
/// write window (the fence has closed every write by then).
pub fn watchdog(lease_client: Client, settings: LeaseSettings, fence: Arc<Fence>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(lease_client, &settings.namespace);
        let mut confirmed = Instant::now();
        fence.extend(settings.write_window());
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match api.get(&settings.name).await.map(|l| hold_of(&l, &settings.identity, jiff::Timestamp::now())) {
                Ok(Hold::Confirmed) => {
                    confirmed = Instant::now();
                    fence.extend(settings.write_window());
                }
                Ok(Hold::Lost) => {
                    fence.close();
                    error!("the leader lease is held by another replica or expired; stepping down");
                    std::process::exit(1);
                }
                Err(e) if confirmed.elapsed() >= settings.write_window() => {
                    fence.close();
                    error!(error = %e, "the leader lease could not be confirmed before it may expire; stepping down");
                    std::process::exit(1);
                }
                Err(e) => warn!(error = %e, "could not read the leader lease; trying again"),
            }
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, renewed: i64, duration: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(jiff::Timestamp::from_second(renewed).unwrap())),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_hold_is_confirmed_only_for_this_replica_and_before_expiry() {
        let at = |s| jiff::Timestamp::from_second(s).unwrap();
        assert_eq!(hold_of(&lease("a", 100, 15), "a", at(110)), Hold::Confirmed);
        assert_eq!(hold_of(&lease("a", 100, 15), "a", at(115)), Hold::Lost, "expired");
        assert_eq!(hold_of(&lease("b", 100, 15), "a", at(101)), Hold::Lost, "someone else's");
        assert_eq!(hold_of(&Lease::default(), "a", at(101)), Hold::Lost);
    }

    #[test]
    fn the_fence_closes_when_the_window_passes() {
        assert!(Fence::open().allows_writes());
        let fence = Fence::closed();
        assert!(!fence.allows_writes());
        fence.extend(Duration::from_secs(60));
        assert!(fence.allows_writes());
        fence.extend(Duration::ZERO);
        assert!(!fence.allows_writes());
        fence.extend(Duration::from_secs(60));
        fence.close();
        assert!(!fence.allows_writes());
    }

    #[test]
    fn replicas_are_distinct_field_managers_and_stop_writing_before_expiry() {
        let s = |id: &str| LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: id.into(),
            duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
        };
        assert_ne!(s("pod-a").field_manager(), s("pod-b").field_manager());
        assert!(s("pod-a").write_window() < Duration::from_secs(15));
    }
}
