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
//! Guards ([`ApiGuard`]): with a token configured (`--api-token` / `MODEL_API_TOKEN`) every
//! mutating route (rollback, retrain) needs `Authorization: Bearer <token>`: 401 without one,
//! 403 with a wrong one (compared in constant time); reads stay open. One manual retrain runs
//! at a time and the next waits for the retrain cooldown (wall clock: it protects the machine,
//! unlike the event-time cooldown of automatic retrains): 429 with `Retry-After` otherwise.
//! Every request has a deadline (`--api-timeout-secs`): 503 when it passes (a retrain already
//! started goes on and is stored).
//!
//! Errors are JSON `{"error": "..."}`: 400 for a bad query (unknown parameter, both or neither of
//! category/product, a value over 256 bytes, horizon outside `1..=horizon`), 404 for an unknown
//! series, 503 before a day of history is read, 409 when a rollback has nowhere to go, 413/414
//! for oversized bodies or query strings. Until a model is promoted, forecasts are the moving
//! average's (`model_version` `baseline-moving-average`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
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

/// The API's guards: the bearer token of the mutating routes, the manual retrain limits and
/// the request deadline.
pub struct ApiGuard {
    token: Option<String>,
    retrain_cooldown: Duration,
    request_timeout: Duration,
    retrain: Mutex<RetrainState>,
}

#[derive(Default)]
struct RetrainState {
    running: bool,
    finished: Option<Instant>,
}

impl std::fmt::Debug for ApiGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiGuard")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("retrain_cooldown", &self.retrain_cooldown)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Held while a manual retrain runs (moved into the engine's command); dropping it ends the
/// retrain and starts the cooldown.
pub struct RetrainPermit {
    guard: Arc<ApiGuard>,
}

impl Drop for RetrainPermit {
    fn drop(&mut self) {
        let mut s = self.guard.retrain.lock().unwrap_or_else(|p| p.into_inner());
        s.running = false;
        s.finished = Some(Instant::now());
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token: 401.
    Missing,
    /// A token, not the configured one: 403.
    Wrong,
}

/// Equality of two byte strings in time that depends on their lengths only, not on where they
/// differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = a.len() ^ b.len();
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box((x ^ y) as usize);
    }
    diff == 0
}

impl ApiGuard {
    /// `token`: None (or empty) leaves the mutating routes open (the API binds to loopback by
    /// default).
    pub fn new(
        token: Option<String>,
        retrain_cooldown: Duration,
        request_timeout: Duration,
    ) -> Self {
        ApiGuard {
            token: token.filter(|t| !t.is_empty()),
            retrain_cooldown,
            request_timeout,
            retrain: Mutex::new(RetrainState::default()),
        }
    }

    /// No token, no retrain limit beyond one at a time, a 60 s deadline.
    pub fn open() -> Self {
        Self::new(None, Duration::ZERO, Duration::from_secs(60))
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks the `Authorization` header of a mutating request.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(want) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty());
        match given {
            None => Err(Refusal::Missing),
            Some(t) if constant_time_eq(t.as_bytes(), want.as_bytes()) => Ok(()),
            Some(_) => Err(Refusal::Wrong),
        }
    }

    /// Starts a manual retrain at `now`, or says in how many seconds to come back.
    pub fn start_retrain(self: &Arc<Self>, now: Instant) -> Result<RetrainPermit, u64> {
        let mut s = self.retrain.lock().unwrap_or_else(|p| p.into_inner());
        let wait = if s.running {
            Some(self.retrain_cooldown.max(Duration::from_secs(1)))
        } else {
            s.finished
                .map(|f| (f + self.retrain_cooldown).saturating_duration_since(now))
                .filter(|d| !d.is_zero())
        };
        if let Some(d) = wait {
            // whole seconds, rounded up
            return Err(d.as_millis().div_ceil(1000).max(1) as u64);
        }
        s.running = true;
        Ok(RetrainPermit {
            guard: self.clone(),
        })
    }
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Missing => {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "this route needs Authorization: Bearer <token>",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
        Refusal::Wrong => error(StatusCode::FORBIDDEN, "wrong bearer token"),
    }
}

async fn deadline(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let limit = shared.guard.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("request not answered within {} s", limit.as_secs_f64()),
        ),
    }
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
        .layer(middleware::from_fn_with_state(shared.clone(), deadline))
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
            "no forecast yet (less than a day of history read)",
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

// The body is read (and ignored) so the size limit applies: 413 over 1 KiB. The token is
// checked first, so an unauthorised caller learns nothing else.
async fn rollback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Response {
    let started = Instant::now();
    let r = match shared.guard.authorize(&headers) {
        Err(e) => refused(e),
        Ok(()) => command(&shared, Command::Rollback, StatusCode::CONFLICT).await,
    };
    observe("rollback", started, r)
}

async fn retrain(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Response {
    let started = Instant::now();
    let r = match shared.guard.authorize(&headers) {
        Err(e) => refused(e),
        Ok(()) => match shared.guard.start_retrain(Instant::now()) {
            Err(secs) => {
                let mut resp = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("a retrain is running or just ran: retry in {secs} s"),
                );
                if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
                resp
            }
            Ok(permit) => {
                command(
                    &shared,
                    |tx| Command::Retrain(tx, permit),
                    StatusCode::UNPROCESSABLE_ENTITY,
                )
                .await
            }
        },
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            v.parse().unwrap_or_else(|_| unreachable!()),
        );
        h
    }

    #[test]
    fn token_rules() {
        let open = ApiGuard::open();
        assert_eq!(open.authorize(&HeaderMap::new()), Ok(()));
        let g = ApiGuard::new(
            Some("s3cret".into()),
            Duration::ZERO,
            Duration::from_secs(1),
        );
        assert_eq!(g.authorize(&HeaderMap::new()), Err(Refusal::Missing));
        assert_eq!(g.authorize(&bearer("Basic s3cret")), Err(Refusal::Missing));
        assert_eq!(g.authorize(&bearer("Bearer ")), Err(Refusal::Missing));
        assert_eq!(g.authorize(&bearer("Bearer s3cre")), Err(Refusal::Wrong));
        assert_eq!(g.authorize(&bearer("Bearer s3cret!")), Err(Refusal::Wrong));
        assert_eq!(g.authorize(&bearer("Bearer s3cret")), Ok(()));
        assert_eq!(g.authorize(&bearer("bearer  s3cret ")), Ok(()));
        let empty = ApiGuard::new(Some(String::new()), Duration::ZERO, Duration::from_secs(1));
        assert!(!empty.has_token(), "an empty token is no token");
        assert!(!format!("{g:?}").contains("s3cret"));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        for (a, b) in [
            ("", ""),
            ("a", ""),
            ("ab", "ab"),
            ("ab", "ac"),
            ("abc", "ab"),
        ] {
            assert_eq!(
                constant_time_eq(a.as_bytes(), b.as_bytes()),
                a == b,
                "{a} {b}"
            );
        }
    }

    #[test]
    fn one_retrain_at_a_time_then_the_cooldown() {
        let g = Arc::new(ApiGuard::new(
            None,
            Duration::from_secs(30),
            Duration::from_secs(1),
        ));
        let t0 = Instant::now();
        let permit = g.start_retrain(t0).unwrap_or_else(|_| unreachable!());
        assert_eq!(g.start_retrain(t0).err(), Some(30), "one is running");
        drop(permit);
        let wait = g.start_retrain(Instant::now()).err();
        assert!(wait.is_some_and(|s| (29..=30).contains(&s)), "{wait:?}");
        assert!(g
            .start_retrain(Instant::now() + Duration::from_secs(31))
            .is_ok());
    }
}
