//! Stopping on SIGTERM or Ctrl-C within a few seconds, whatever the operator is doing: the first
//! signal starts a graceful shutdown (reconciles in flight finish, the lease is released); if that
//! has not ended after the grace period, or on a second signal, the process exits.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

/// Resolves once a shutdown was asked for; cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Wait until a shutdown is asked for.
    pub async fn requested(mut self) {
        let _ = self.0.wait_for(|asked| *asked).await;
    }

    /// A shutdown that is asked for by sending `true`, for tests and embedding.
    pub fn manual() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }
}

/// Listen for SIGTERM and SIGINT. After the first, `grace` is given to a graceful shutdown; then,
/// or at the second signal, the process exits (status 0: it was asked to stop).
pub fn on_signals(grace: Duration) -> std::io::Result<Shutdown> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, shutdown) = Shutdown::manual();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        let _ = tx.send(true);
        tokio::select! {
            () = tokio::time::sleep(grace) => warn!(?grace, "graceful shutdown took too long; exiting"),
            _ = term.recv() => warn!("second signal; exiting"),
            _ = int.recv() => warn!("second signal; exiting"),
        }
        std::process::exit(0);
    });
    Ok(shutdown)
}
