//! The HTTP endpoint of every service: `/metrics` (Prometheus text format), `/healthz`
//! (the process serves requests) and `/readyz` (the service did its start-up work and is
//! processing; 503 until then and after shutdown began).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, TextEncoder};

use crate::Shutdown;

/// Readiness of a service, shared between its work and its endpoint.
#[derive(Clone, Debug)]
pub struct Health {
    name: &'static str,
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn new(name: &'static str) -> Self {
        Health {
            name,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Binds `addr` and serves the endpoint until `shutdown` fires; returns the bound address (useful
/// with port 0).
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: Shutdown,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    let bound = listener.local_addr()?;
    let app = router(health);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

fn router(health: Health) -> Router {
    let ready = health.clone();
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(move || async move { (StatusCode::OK, format!("{} ok\n", health.name)) }),
        )
        .route(
            "/readyz",
            get(move || async move {
                if ready.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
}

async fn metrics() -> impl IntoResponse {
    let families = prometheus::gather();
    let mut body = Vec::new();
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endpoints_report_health_readiness_and_metrics() {
        let counter = prometheus::register_int_counter!(
            "cartstream_test_http_probe_total",
            "probe counter of the http test"
        )
        .expect("registers");
        counter.inc_by(3);
        let health = Health::new("probe");
        let shutdown = Shutdown::new();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .expect("binds");
        let base = format!("http://{addr}");
        let get = |p: &str| reqwest::get(format!("{base}{p}"));

        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        health.set_ready(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let text = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(
            text.contains("cartstream_test_http_probe_total 3"),
            "{text}"
        );

        shutdown.trigger();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(get("/healthz").await.is_err(), "endpoint stops on shutdown");
    }
}
