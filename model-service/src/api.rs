//! The HTTP API (JSON).
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/forecast?category=C[&horizon=N]` | the champion's forecast of category `C` for the next `N` periods (default: the model's horizon) |
//! | `GET /v1/forecast?product=P[&horizon=N]` | the same for a product (with `--products`) |
//! | `GET /v1/model` | the champion's metadata: version, training range, features, hold-out metrics, fingerprint |
//! | `GET /v1/models` | every stored version's metadata, oldest first |
//! | `POST /v1/rollback` | makes the previous champion the champion again |
//! | `POST /v1/retrain` | trains a challenger now (trigger `manual`) and returns its metadata and decision |
//! | `GET /healthz`, `GET /metrics` | liveness and the Prometheus metrics (also on `METRICS_ADDR`) |
//!
//! Errors are JSON `{"error": "..."}`: 400 for a bad query (unknown parameter, both or neither of
//! category/product, a value over 256 bytes, horizon outside `1..=horizon`), 404 for an unknown
//! series, 503 before a model is in service, 409 when a rollback has nowhere to go, 413/414 for
//! oversized bodies or query strings.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::monitor::ForecastPoint;
use crate::service::{Command, Shared};
use crate::telemetry as tm;

/// Longest accepted query string and series value.
pub const MAX_QUERY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastQuery {
    pub category: Option<String>,
    pub product: Option<String>,
    pub horizon: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct ForecastResponse<'a> {
    pub dimension: &'static str,
    pub value: &'a str,
    pub model_version: &'a str,
    pub period_ms: i64,
    pub horizon: usize,
    pub points: &'a [ForecastPoint],
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn observe(route: &'static str, started: Instant, r: Response) -> Response {
    tm::HTTP_SECONDS
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    let class = match r.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    tm::HTTP_REQUESTS.with_label_values(&[route, class]).inc();
    r
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/forecast", get(forecast))
        .route("/v1/model", get(model))
        .route("/v1/models", get(models))
        .route("/v1/rollback", post(rollback))
        .route("/v1/retrain", post(retrain))
        .route(
            "/healthz",
            get(|| async { "cartstream-model-service ok\n" }),
        )
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(1024))
        .with_state(shared)
}

async fn forecast(
    State(shared): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
    q: Result<Query<ForecastQuery>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    observe("forecast", started, forecast_inner(&shared, raw, q))
}

fn forecast_inner(
    shared: &Shared,
    raw: Option<String>,
    q: Result<Query<ForecastQuery>, QueryRejection>,
) -> Response {
    if raw.as_ref().is_some_and(|r| r.len() > MAX_QUERY_BYTES) {
        return error(
            StatusCode::URI_TOO_LONG,
            format!("query string over {MAX_QUERY_BYTES} bytes"),
        );
    }
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (dimension, value) = match (&q.category, &q.product) {
        (Some(c), None) => ("category", c.as_str()),
        (None, Some(p)) => ("product", p.as_str()),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of category or product",
            )
        }
    };
    if value.is_empty() || value.len() > MAX_VALUE_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{dimension} must be 1-{MAX_VALUE_BYTES} bytes"),
        );
    }
    let Some(set) = shared.forecasts() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model in service yet (not enough history, or still replaying)",
        );
    };
    let horizon = q.horizon.unwrap_or(set.horizon);
    if horizon == 0 || horizon > set.horizon {
        return error(
            StatusCode::BAD_REQUEST,
            format!("horizon must be within 1..={}", set.horizon),
        );
    }
    let key = format!("{dimension}/{value}");
    let Some(points) = set.series.get(&key) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no {dimension} {value:?} in the history"),
        );
    };
    Json(ForecastResponse {
        dimension,
        value,
        model_version: &set.model_version,
        period_ms: set.period_ms,
        horizon,
        points: &points[..horizon.min(points.len())],
    })
    .into_response()
}

async fn model(State(shared): State<Arc<Shared>>) -> Response {
    let started = Instant::now();
    let r = match shared.champion() {
        Some(m) => Json(m).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no model in service yet"),
    };
    observe("model", started, r)
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let started = Instant::now();
    let r = match shared.registry.list().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    };
    observe("models", started, r)
}

async fn command(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<Result<crate::model::Metadata, String>>) -> Command,
    conflict: StatusCode,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if shared.commands.send(make(tx)).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the engine is stopping");
    }
    match rx.await {
        Ok(Ok(meta)) => Json(meta).into_response(),
        Ok(Err(e)) => error(conflict, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the engine is stopping"),
    }
}

// The body is read (and ignored) so the size limit applies: 413 over 1 KiB.
async fn rollback(State(shared): State<Arc<Shared>>, _body: axum::body::Bytes) -> Response {
    let started = Instant::now();
    let r = command(&shared, Command::Rollback, StatusCode::CONFLICT).await;
    observe("rollback", started, r)
}

async fn retrain(State(shared): State<Arc<Shared>>, _body: axum::body::Bytes) -> Response {
    let started = Instant::now();
    let r = command(&shared, Command::Retrain, StatusCode::UNPROCESSABLE_ENTITY).await;
    observe("retrain", started, r)
}

async fn metrics() -> Response {
    use prometheus::Encoder;
    let mut body = Vec::new();
    match prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
