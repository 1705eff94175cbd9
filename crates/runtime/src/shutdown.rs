//! One shutdown signal for a whole service.

use tokio_util::sync::CancellationToken;

/// Fires once, on SIGINT/SIGTERM or when [`Shutdown::trigger`] is called. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A token that only fires when triggered (tests, embedded use).
    pub fn new() -> Self {
        Shutdown(CancellationToken::new())
    }

    /// A token that fires on the first SIGINT or SIGTERM. A second signal exits at once, for an
    /// operator whose graceful shutdown is stuck.
    pub fn on_signals() -> Self {
        let token = Shutdown::new();
        let fire = token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(
                "shutdown requested, finishing in-flight work (signal again to exit now)"
            );
            fire.trigger();
            wait_for_signal().await;
            tracing::warn!("second signal, exiting without a clean shutdown");
            std::process::exit(130);
        });
        token
    }

    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes when shutdown was requested.
    pub async fn wait(&self) {
        self.0.cancelled().await
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without handlers the default disposition (exit) stays in force; never complete.
        _ => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_clone() {
        let s = Shutdown::new();
        let c = s.clone();
        assert!(!c.is_triggered());
        let waiter = tokio::spawn(async move { c.wait().await });
        s.trigger();
        waiter.await.expect("waiter completes");
        assert!(s.is_triggered());
    }
}
