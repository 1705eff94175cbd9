//! The model service: demand forecasts per category (and product) that watch their own accuracy
//! and retrain themselves.
//!
//! Layout (pure logic first, I/O last):
//! - [`series`]: `kpi.windows` records aggregated into one value per base period (default one
//!   hour) and series (`category/<code>`, `product/<id>`), aligned on one period index.
//! - [`features`]: the feature vector of one (series, origin, step): lags, rolling means,
//!   hour-of-week profile, trend, level, year position, hour-of-day, day-of-week, price; all level
//!   features divided by the series' last-week mean; closed slots.
//! - [`metrics`]: MAE, WAPE, sMAPE (also on non-zero actuals only), coverage, relative error, PSI.
//! - [`baselines`]: seasonal-naive (one week back) and moving-average forecasts.
//! - [`model`]: training (smartcore ridge regression, one direct model per step and target, in
//!   one of three families), hold-out evaluation and rolling-origin backtest against the
//!   baselines, prediction, the serialisable artefact.
//! - [`monitor`]: live accuracy, drift and the retrain/promotion decisions ([`monitor::Engine`]).
//! - [`schedule`]: when to retrain, in event time (never while catching up on a backlog; once
//!   on everything at the end of input).
//! - [`synth`]: synthetic history with known structure, the simulator's shape and a retail
//!   shop's year (tests, bench, `train` and `backtest` on synthetic history).
//! - [`registry`]: versioned artefacts, metadata and the champion pointer in object storage.
//! - [`service`], [`api`]: the Kafka reader, the CQL writer, the metrics and the HTTP API.
//!
//! Time is counted in base periods: period index `i` covers `[i * period_ms, (i + 1) * period_ms)`.
//! Hour-of-day is `i mod 24` and day-of-week `(i div 24 + 3) mod 7` (Monday = 0), which are the
//! UTC calendar with one-hour periods and a compressed calendar with shorter ones (tests).

pub mod api;
pub mod baselines;
pub mod features;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod registry;
pub mod schedule;
pub mod series;
pub mod service;
pub mod synth;
pub mod telemetry;
