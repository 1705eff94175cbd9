//! The service's Prometheus metrics, defined in one place (`cartstream_model_*`). Labels are
//! bounded: targets, features, decisions, triggers, routes, and categories (a catalog dimension,
//! capped by `--gauge-series-max`); never product ids.

use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_gauge_vec, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, Gauge, GaugeVec, HistogramVec, IntCounter,
    IntCounterVec, IntGauge,
};

use crate::features::CONTINUOUS;
use crate::model::{Metadata, Target};
use crate::monitor::LiveStats;

fn must<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("metric registration: {e}"))
}

pub static INPUT_RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    must(register_int_counter_vec!(
        "cartstream_model_input_records_total",
        "kpi.windows records read, by outcome (used, not_final, other_dimension, other_window_size, late, invalid, undecodable)",
        &["outcome"]
    ))
});
pub static PERIODS: LazyLock<IntCounter> = LazyLock::new(|| {
    must(register_int_counter!(
        "cartstream_model_periods_closed_total",
        "base periods closed and added to the history"
    ))
});
pub static LAST_PERIOD: LazyLock<IntGauge> = LazyLock::new(|| {
    must(register_int_gauge!(
        "cartstream_model_last_period_start_seconds",
        "start of the newest closed period (event time)"
    ))
});
pub static SERIES: LazyLock<IntGauge> = LazyLock::new(|| {
    must(register_int_gauge!(
        "cartstream_model_series",
        "series in the history"
    ))
});
pub static LIVE_SMAPE: LazyLock<GaugeVec> = LazyLock::new(|| {
    must(register_gauge_vec!(
        "cartstream_model_live_smape",
        "sMAPE (0..2) of the champion's one-step forecasts over the live window",
        &["target"]
    ))
});
pub static LIVE_MAE: LazyLock<GaugeVec> = LazyLock::new(|| {
    must(register_gauge_vec!(
        "cartstream_model_live_mae",
        "MAE of the champion's one-step forecasts over the live window",
        &["target"]
    ))
});
pub static LIVE_RELATIVE: LazyLock<GaugeVec> = LazyLock::new(|| {
    must(register_gauge_vec!(
        "cartstream_model_live_relative_error",
        "live MAE of the champion / MAE of seasonal-naive on the same points",
        &["target"]
    ))
});
pub static LIVE_PERIODS: LazyLock<IntGauge> = LazyLock::new(|| {
    must(register_int_gauge!(
        "cartstream_model_live_window_periods",
        "periods scored in the live window of the current champion"
    ))
});
pub static PSI: LazyLock<GaugeVec> = LazyLock::new(|| {
    must(register_gauge_vec!(
        "cartstream_model_drift_psi",
        "population stability index of each feature, live window against the champion's training data",
        &["feature"]
    ))
});
pub static DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    must(register_int_counter_vec!(
        "cartstream_model_decisions_total",
        "retrain outcomes: promoted, rejected_baseline, rejected_no_gain, failed, rollback",
        &["decision"]
    ))
});
pub static RETRAINS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    must(register_int_counter_vec!(
        "cartstream_model_retrains_total",
        "trainings started, by trigger (initial, error, drift, schedule, manual)",
        &["trigger"]
    ))
});
pub static TRAINING_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    must(register_histogram_vec!(
        "cartstream_model_training_duration_seconds",
        "time to train and evaluate a challenger",
        &["trigger"],
        vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0]
    ))
});
pub static CHAMPION_VERSION: LazyLock<IntGauge> = LazyLock::new(|| {
    must(register_int_gauge!(
        "cartstream_model_champion_version",
        "number of the champion's version (0: none)"
    ))
});
pub static HOLDOUT: LazyLock<GaugeVec> = LazyLock::new(|| {
    must(register_gauge_vec!(
        "cartstream_model_holdout_mae",
        "hold-out MAE of the champion and the baselines at its training",
        &["target", "model"]
    ))
});
pub static HOLDOUT_RELATIVE: LazyLock<GaugeVec> = LazyLock::new(|| {
    must(register_gauge_vec!(
        "cartstream_model_holdout_relative_error",
        "hold-out MAE of the champion / MAE of seasonal-naive at its training",
        &["target"]
    ))
});
pub static FORECAST: LazyLock<GaugeVec> = LazyLock::new(|| {
    must(register_gauge_vec!(
        "cartstream_model_forecast_next_period",
        "the champion's forecast of the next period per category",
        &["category", "target"]
    ))
});
pub static FORECAST_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    must(register_int_counter_vec!(
        "cartstream_model_forecast_rows_total",
        "forecast rows written to forecasts_by_category, by outcome (ok, error)",
        &["outcome"]
    ))
});
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    must(register_int_counter_vec!(
        "cartstream_model_http_requests_total",
        "API requests by route and status class",
        &["route", "status"]
    ))
});
pub static HTTP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    must(register_histogram_vec!(
        "cartstream_model_http_request_duration_seconds",
        "API handler time by route",
        &["route"],
        vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25]
    ))
});
pub static LAG_READY: LazyLock<Gauge> = LazyLock::new(|| {
    must(register_gauge!(
        "cartstream_model_caught_up",
        "1 once the input topic was read to its end at least once"
    ))
});

/// Touches every metric so it is listed from the start.
pub fn register_all() {
    for o in [
        "used",
        "not_final",
        "other_dimension",
        "other_window_size",
        "late",
        "invalid",
        "undecodable",
    ] {
        INPUT_RECORDS.with_label_values(&[o]);
    }
    for d in [
        "promoted",
        "rejected_baseline",
        "rejected_no_gain",
        "failed",
        "rollback",
    ] {
        DECISIONS.with_label_values(&[d]);
    }
    for t in ["initial", "error", "drift", "schedule", "manual"] {
        RETRAINS.with_label_values(&[t]);
    }
    for o in ["ok", "error"] {
        FORECAST_ROWS.with_label_values(&[o]);
    }
    LazyLock::force(&PERIODS);
    LazyLock::force(&LAST_PERIOD);
    LazyLock::force(&SERIES);
    LazyLock::force(&LIVE_PERIODS);
    LazyLock::force(&CHAMPION_VERSION);
    LazyLock::force(&LAG_READY);
    LazyLock::force(&TRAINING_SECONDS);
    LazyLock::force(&HTTP_SECONDS);
    LazyLock::force(&HTTP_REQUESTS);
}

fn set_opt(g: &Gauge, v: Option<f64>) {
    g.set(v.unwrap_or(f64::NAN));
}

/// Exports the live figures after a period.
pub fn export_live(s: &LiveStats) {
    for (k, t) in Target::ALL.iter().enumerate() {
        set_opt(&LIVE_SMAPE.with_label_values(&[t.label()]), s.smape[k]);
        set_opt(&LIVE_MAE.with_label_values(&[t.label()]), s.mae[k]);
        set_opt(
            &LIVE_RELATIVE.with_label_values(&[t.label()]),
            s.relative_to_seasonal_naive[k],
        );
    }
    LIVE_PERIODS.set(s.periods as i64);
    for (j, f) in CONTINUOUS.iter().enumerate() {
        set_opt(
            &PSI.with_label_values(&[f]),
            s.psi.get(j).copied().flatten(),
        );
    }
}

/// Exports what is known of the champion.
pub fn export_champion(meta: &Metadata) {
    CHAMPION_VERSION.set(crate::registry::version_number(&meta.version).map_or(0, i64::from));
    for (t, e) in [
        ("purchases", &meta.holdout.purchases),
        ("revenue", &meta.holdout.revenue),
    ] {
        HOLDOUT.with_label_values(&[t, "champion"]).set(e.mae);
    }
    export_baselines(meta);
    for (t, e) in [
        ("purchases", &meta.holdout.purchases),
        ("revenue", &meta.holdout.revenue),
    ] {
        set_opt(
            &HOLDOUT_RELATIVE.with_label_values(&[t]),
            e.relative_to_seasonal_naive,
        );
    }
}

/// Exports the baselines' hold-out MAE of an evaluation (the champion's, or the latest
/// challenger's while there is no champion).
pub fn export_baselines(meta: &Metadata) {
    for (t, e) in [
        ("purchases", &meta.holdout.purchases),
        ("revenue", &meta.holdout.revenue),
    ] {
        HOLDOUT
            .with_label_values(&[t, "seasonal_naive"])
            .set(e.seasonal_naive_mae);
        HOLDOUT
            .with_label_values(&[t, "moving_average"])
            .set(e.moving_average_mae);
    }
}
