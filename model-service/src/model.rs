//! Training, evaluation and prediction.
//!
//! The model is *direct multi-step*: for each step `h` in `1..=horizon` and each target
//! (purchases, revenue) one ridge regression (smartcore, Cholesky solver) maps the features of
//! [`crate::features`] at origin `t` to `y[t + h] / scale`. One model serves every series (the
//! scale makes them comparable). Columns are standardised before the fit and the coefficients are
//! mapped back, so the artefact is plain numbers: prediction is one dot product per step and the
//! artefact is JSON that any version of this service can read.
//!
//! Split of a history of `n` periods: the last `holdout` periods are the targets of the
//! evaluation; training origins end `horizon` periods before them (no target of training falls in
//! the hold-out) and reach back at most `train_window` origins. After the evaluation the model is
//! refitted on the window ending at the last period, so the served model has seen the newest data;
//! the figures in its metadata are those of the hold-out fit.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::ridge_regression::{
    RidgeRegression, RidgeRegressionParameters, RidgeRegressionSolverName,
};

use crate::baselines;
use crate::features::{self, LOOKBACK, MAX_HORIZON, N_CONTINUOUS, N_FEATURES};
use crate::metrics;
use crate::series::{History, SeriesData};
use crate::synth::mix;

/// Fewest training origins a fit accepts.
pub const MIN_TRAIN_ORIGINS: usize = 24;
/// Bins of the drift reference of each continuous feature.
pub const PSI_BINS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Purchases,
    Revenue,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Purchases, Target::Revenue];

    pub fn label(self) -> &'static str {
        match self {
            Target::Purchases => "purchases",
            Target::Revenue => "revenue",
        }
    }

    pub fn values(self, s: &SeriesData) -> &[f64] {
        match self {
            Target::Purchases => &s.purchases,
            Target::Revenue => &s.revenue,
        }
    }
}

/// `y = coef . x + intercept`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub coef: Vec<f64>,
    pub intercept: f64,
}

impl Linear {
    pub fn predict(&self, x: &[f64]) -> f64 {
        self.coef.iter().zip(x).map(|(c, v)| c * v).sum::<f64>() + self.intercept
    }
}

/// The per-step models of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetModel {
    pub steps: Vec<Linear>,
    /// Standard deviation of the training residuals per step, in scale units (the interval).
    pub resid_std: Vec<f64>,
}

/// The training distribution of each continuous feature, for PSI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub features: Vec<String>,
    pub edges: Vec<Vec<f64>>,
    pub shares: Vec<Vec<f64>>,
}

/// The artefact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub horizon: usize,
    pub period_ms: i64,
    pub features: Vec<String>,
    pub purchases: TargetModel,
    pub revenue: TargetModel,
    pub reference: Reference,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub horizon: usize,
    pub holdout_periods: usize,
    pub train_window_periods: usize,
    /// Rows per fit above which origins are sampled (deterministically).
    pub max_rows: usize,
    pub alpha: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            horizon: 6,
            holdout_periods: 48,
            train_window_periods: 24 * 28,
            max_rows: 60_000,
            alpha: 1.0,
        }
    }
}

impl TrainConfig {
    /// Periods of history a training needs at least.
    pub fn min_history(&self) -> usize {
        LOOKBACK + MIN_TRAIN_ORIGINS + self.horizon + self.holdout_periods
    }

    /// History to keep so a training gets its full window.
    pub fn history_capacity(&self) -> usize {
        LOOKBACK + self.train_window_periods + self.horizon + self.holdout_periods + 24
    }
}

/// Errors of one target and its baselines over the same points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetEval {
    pub points: usize,
    pub mae: f64,
    pub smape: f64,
    pub seasonal_naive_mae: f64,
    pub seasonal_naive_smape: f64,
    pub moving_average_mae: f64,
    pub moving_average_smape: f64,
    /// MAE of the model / MAE of seasonal-naive (below 1: better).
    pub relative_to_seasonal_naive: Option<f64>,
    pub relative_to_moving_average: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Period range of the evaluated targets, epoch ms `[from, to)`.
    pub from_ms: i64,
    pub to_ms: i64,
    pub purchases: TargetEval,
    pub revenue: TargetEval,
}

/// What the registry stores next to the artefact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Set by the registry when the artefact is stored.
    pub version: String,
    pub created_at_ms: i64,
    pub trainer: String,
    pub period_ms: i64,
    pub horizon: usize,
    pub features: Vec<String>,
    /// Targets of the training rows, epoch ms `[from, to)` (the refit window).
    pub training_from_ms: i64,
    pub training_to_ms: i64,
    pub series: usize,
    pub rows_per_fit: usize,
    /// FNV-1a of the series names and values of the training range.
    pub data_fingerprint: String,
    pub holdout: Evaluation,
    pub training_seconds: f64,
    /// Why it was trained (initial, error, drift, schedule, manual, offline).
    pub trigger: String,
    /// What was decided (promoted, rejected_baseline, rejected_no_gain, ...), set by the caller.
    pub decision: String,
    /// The champion's figures on the same hold-out, when there was one.
    pub champion_holdout: Option<Evaluation>,
    pub champion_version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("not enough history: {have} periods, training needs at least {need}")]
    NotEnoughHistory { have: usize, need: usize },
    #[error("horizon {0} must be within 1..={MAX_HORIZON}, holdout at least the horizon")]
    BadConfig(usize),
    #[error("no series with sales in the training range")]
    NoRows,
    #[error("fit failed: {0}")]
    Fit(String),
}

pub struct Trained {
    pub model: Model,
    pub meta: Metadata,
}

/// Position ranges (inclusive) of origins.
#[derive(Debug, Clone, Copy)]
struct Origins {
    lo: usize,
    hi: usize,
}

fn split(n: usize, cfg: &TrainConfig) -> Result<(Origins, Origins), TrainError> {
    if !(1..=MAX_HORIZON).contains(&cfg.horizon) || cfg.holdout_periods < cfg.horizon {
        return Err(TrainError::BadConfig(cfg.horizon));
    }
    if n < cfg.min_history() {
        return Err(TrainError::NotEnoughHistory {
            have: n,
            need: cfg.min_history(),
        });
    }
    let eval = Origins {
        lo: n - cfg.holdout_periods - 1,
        hi: n - 1 - cfg.horizon,
    };
    let hi = eval.lo - cfg.horizon;
    let lo = (LOOKBACK - 1).max((hi + 1).saturating_sub(cfg.train_window_periods));
    Ok((eval, Origins { lo, hi }))
}

/// Training rows of every step and target over `origins`: `x[step]` row-major, `y[target][step]`.
struct Rows {
    n: usize,
    x: Vec<Vec<f64>>,
    y: [Vec<Vec<f64>>; 2],
    /// Continuous features of the step-1 purchase rows (drift reference).
    continuous: Vec<Vec<f64>>,
}

fn build_rows(h: &History, o: Origins, horizon: usize, max_rows: usize) -> Rows {
    let total = h.series.len() * (o.hi + 1 - o.lo);
    let stride = total.div_ceil(max_rows.max(1)).max(1) as u64;
    let mut rows = Rows {
        n: 0,
        x: vec![Vec::new(); horizon],
        y: [vec![Vec::new(); horizon], vec![Vec::new(); horizon]],
        continuous: vec![Vec::new(); N_CONTINUOUS],
    };
    let mut buf = vec![0.0; N_FEATURES];
    for (si, s) in h.series.values().enumerate() {
        for t in o.lo..=o.hi {
            if stride > 1 && !mix(((si as u64) << 32) ^ t as u64).is_multiple_of(stride) {
                continue;
            }
            let p = features::price_ratio(&s.price, t);
            let scales = [
                features::scale(&s.purchases, t),
                features::scale(&s.revenue, t),
            ];
            let (Some(sp), Some(sr)) = (scales[0], scales[1]) else {
                continue;
            };
            rows.n += 1;
            for step in 1..=horizon {
                let idx = h.index_of(t + step);
                features::write(&s.purchases, t, step, idx, sp, p, &mut buf);
                rows.x[step - 1].extend_from_slice(&buf);
                if step == 1 {
                    for (j, c) in rows.continuous.iter_mut().enumerate() {
                        c.push(buf[j]);
                    }
                }
                rows.y[0][step - 1].push(s.purchases[t + step] / sp);
                rows.y[1][step - 1].push(s.revenue[t + step] / sr);
            }
        }
    }
    rows
}

/// The revenue models use the revenue series' own features; rows are built per target.
fn target_rows(h: &History, o: Origins, horizon: usize, max_rows: usize, target: Target) -> Rows {
    match target {
        Target::Purchases => build_rows(h, o, horizon, max_rows),
        Target::Revenue => {
            let mut swapped = h.clone();
            for s in swapped.series.values_mut() {
                std::mem::swap(&mut s.purchases, &mut s.revenue);
            }
            build_rows(&swapped, o, horizon, max_rows)
        }
    }
}

/// Ridge fit on standardised columns, mapped back to raw coefficients.
fn fit(x: &[f64], y: &[f64], p: usize, alpha: f64) -> Result<(Linear, f64), TrainError> {
    let n = y.len();
    if n <= p {
        return Err(TrainError::Fit(format!("{n} rows for {p} features")));
    }
    let mut mean = vec![0.0; p];
    let mut sd = vec![0.0; p];
    for row in x.chunks_exact(p) {
        for j in 0..p {
            mean[j] += row[j];
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    for row in x.chunks_exact(p) {
        for j in 0..p {
            sd[j] += (row[j] - mean[j]).powi(2);
        }
    }
    for s in sd.iter_mut() {
        *s = (*s / n as f64).sqrt();
        if *s < 1e-9 {
            *s = 1.0; // a constant column: centred to 0, its coefficient stays 0
        }
    }
    let xs: Vec<f64> = x
        .chunks_exact(p)
        .flat_map(|row| {
            (0..p)
                .map(|j| (row[j] - mean[j]) / sd[j])
                .collect::<Vec<_>>()
        })
        .collect();
    let ymean = y.iter().sum::<f64>() / n as f64;
    let yc: Vec<f64> = y.iter().map(|v| v - ymean).collect();
    let m = DenseMatrix::new(n, p, xs, false).map_err(|e| TrainError::Fit(e.to_string()))?;
    let params = RidgeRegressionParameters::default()
        .with_alpha(alpha)
        .with_normalize(false)
        .with_solver(RidgeRegressionSolverName::Cholesky);
    let r = RidgeRegression::fit(&m, &yc, params).map_err(|e| TrainError::Fit(e.to_string()))?;
    let w = r.coefficients();
    let coef: Vec<f64> = (0..p).map(|j| *w.get((j, 0)) / sd[j]).collect();
    if coef.iter().any(|c| !c.is_finite()) {
        return Err(TrainError::Fit("non-finite coefficients".into()));
    }
    let intercept = ymean - coef.iter().zip(&mean).map(|(c, m)| c * m).sum::<f64>();
    let lin = Linear { coef, intercept };
    let sse: f64 = x
        .chunks_exact(p)
        .zip(y)
        .map(|(row, t)| (lin.predict(row) - t).powi(2))
        .sum();
    Ok((lin, (sse / n as f64).sqrt()))
}

fn fit_all(h: &History, o: Origins, cfg: &TrainConfig) -> Result<(Model, usize), TrainError> {
    let mut targets = Vec::new();
    let mut reference = None;
    let mut n_rows = 0;
    for target in Target::ALL {
        let rows = target_rows(h, o, cfg.horizon, cfg.max_rows, target);
        if rows.n <= N_FEATURES {
            return Err(TrainError::NoRows);
        }
        n_rows = rows.n;
        let mut tm = TargetModel {
            steps: Vec::new(),
            resid_std: Vec::new(),
        };
        for step in 0..cfg.horizon {
            let (lin, sd) = fit(&rows.x[step], &rows.y[0][step], N_FEATURES, cfg.alpha)?;
            tm.steps.push(lin);
            tm.resid_std.push(sd);
        }
        if target == Target::Purchases {
            let edges: Vec<Vec<f64>> = rows
                .continuous
                .iter()
                .map(|c| metrics::quantile_edges(c, PSI_BINS))
                .collect();
            let shares = rows
                .continuous
                .iter()
                .zip(&edges)
                .map(|(c, e)| metrics::bin_shares(c, e))
                .collect();
            reference = Some(Reference {
                features: features::CONTINUOUS.iter().map(|s| s.to_string()).collect(),
                edges,
                shares,
            });
        }
        targets.push(tm);
    }
    let revenue = targets.pop().ok_or(TrainError::NoRows)?;
    let purchases = targets.pop().ok_or(TrainError::NoRows)?;
    Ok((
        Model {
            horizon: cfg.horizon,
            period_ms: h.period_ms,
            features: features::names(),
            purchases,
            revenue,
            reference: reference.ok_or(TrainError::NoRows)?,
        },
        n_rows,
    ))
}

fn fingerprint(h: &History, from: usize, to: usize) -> String {
    let mut f: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            f ^= u64::from(*b);
            f = f.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&h.index_of(from).to_le_bytes());
    for (k, s) in &h.series {
        eat(k.as_bytes());
        for i in from..to.min(s.purchases.len()) {
            eat(&s.purchases[i].to_bits().to_le_bytes());
            eat(&s.revenue[i].to_bits().to_le_bytes());
        }
    }
    format!("{f:016x}")
}

/// Trains on the history, evaluates on the hold-out against the baselines, refits on the newest
/// window.
pub fn train(
    h: &History,
    cfg: &TrainConfig,
    trigger: &str,
    now_ms: i64,
) -> Result<Trained, TrainError> {
    let started = Instant::now();
    let (eval_o, train_o) = split(h.len, cfg)?;
    let (held_out_model, _) = fit_all(h, train_o, cfg)?;
    let holdout = evaluate_origins(&held_out_model, h, eval_o.lo, eval_o.hi);
    // Refit: the same window length, ending at the newest complete target.
    let hi = h.len - 1 - cfg.horizon;
    let refit_o = Origins {
        lo: (LOOKBACK - 1).max((hi + 1).saturating_sub(cfg.train_window_periods)),
        hi,
    };
    let (model, rows) = fit_all(h, refit_o, cfg)?;
    let meta = Metadata {
        version: String::new(),
        created_at_ms: now_ms,
        trainer: format!(
            "smartcore ridge regression (alpha {}), direct multi-step, {} features",
            cfg.alpha, N_FEATURES
        ),
        period_ms: h.period_ms,
        horizon: cfg.horizon,
        features: features::names(),
        training_from_ms: h.period_start_ms(h.index_of(refit_o.lo + 1)),
        training_to_ms: h.period_start_ms(h.index_of(refit_o.hi + cfg.horizon + 1)),
        series: h.series.len(),
        rows_per_fit: rows,
        data_fingerprint: fingerprint(h, refit_o.lo + 1 - LOOKBACK, refit_o.hi + cfg.horizon + 1),
        holdout,
        training_seconds: started.elapsed().as_secs_f64(),
        trigger: trigger.to_string(),
        decision: String::new(),
        champion_holdout: None,
        champion_version: None,
    };
    Ok(Trained { model, meta })
}

/// The hold-out origins the training would use for a history of this length (for comparing a
/// champion on the same points).
pub fn evaluate_holdout(
    model: &Model,
    h: &History,
    cfg: &TrainConfig,
) -> Result<Evaluation, TrainError> {
    let (eval_o, _) = split(h.len, cfg)?;
    Ok(evaluate_origins(model, h, eval_o.lo, eval_o.hi))
}

fn target_eval(a: &[f64], f: &[f64], sn: &[f64], ma: &[f64]) -> TargetEval {
    let mae = metrics::mae(a, f).unwrap_or(f64::NAN);
    let sn_mae = metrics::mae(a, sn).unwrap_or(f64::NAN);
    let ma_mae = metrics::mae(a, ma).unwrap_or(f64::NAN);
    TargetEval {
        points: a.len(),
        mae,
        smape: metrics::smape(a, f).unwrap_or(f64::NAN),
        seasonal_naive_mae: sn_mae,
        seasonal_naive_smape: metrics::smape(a, sn).unwrap_or(f64::NAN),
        moving_average_mae: ma_mae,
        moving_average_smape: metrics::smape(a, ma).unwrap_or(f64::NAN),
        relative_to_seasonal_naive: metrics::relative(mae, sn_mae),
        relative_to_moving_average: metrics::relative(mae, ma_mae),
    }
}

/// Every step of every series at origins `lo..=hi` (positions), against both baselines.
pub fn evaluate_origins(model: &Model, h: &History, lo: usize, hi: usize) -> Evaluation {
    let mut evals = Vec::new();
    for target in Target::ALL {
        let (mut a, mut f, mut sn, mut ma) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for s in h.series.values() {
            let y = target.values(s);
            for t in lo..=hi {
                let fc = model.forecast_at(s, target, t, h.index_of(t));
                for step in 1..=model.horizon.min(y.len().saturating_sub(t + 1)) {
                    let (Some(snv), Some(mav)) = (
                        baselines::seasonal_naive(y, t, step),
                        baselines::moving_average(y, t),
                    ) else {
                        continue;
                    };
                    a.push(y[t + step]);
                    f.push(fc[step - 1].value);
                    sn.push(snv);
                    ma.push(mav);
                }
            }
        }
        evals.push(target_eval(&a, &f, &sn, &ma));
    }
    let revenue = evals
        .pop()
        .unwrap_or_else(|| target_eval(&[], &[], &[], &[]));
    let purchases = evals
        .pop()
        .unwrap_or_else(|| target_eval(&[], &[], &[], &[]));
    Evaluation {
        from_ms: h.period_start_ms(h.index_of(lo + 1)),
        to_ms: h.period_start_ms(h.index_of(hi + model.horizon + 1)),
        purchases,
        revenue,
    }
}

/// One forecast point of one target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
}

impl Model {
    pub fn target(&self, t: Target) -> &TargetModel {
        match t {
            Target::Purchases => &self.purchases,
            Target::Revenue => &self.revenue,
        }
    }

    /// Forecasts of steps `1..=horizon` from origin position `t` (absolute period index
    /// `t_idx`). A series without sales in its last week forecasts 0.
    pub fn forecast_at(&self, s: &SeriesData, target: Target, t: usize, t_idx: i64) -> Vec<Point> {
        let y = target.values(s);
        let zero = Point {
            value: 0.0,
            lower: 0.0,
            upper: 0.0,
        };
        let Some(scale) = features::scale(y, t) else {
            return vec![zero; self.horizon];
        };
        let p = features::price_ratio(&s.price, t);
        let tm = self.target(target);
        let mut buf = vec![0.0; N_FEATURES];
        (1..=self.horizon)
            .map(|step| {
                features::write(y, t, step, t_idx + step as i64, scale, p, &mut buf);
                let v = (tm.steps[step - 1].predict(&buf) * scale).max(0.0);
                let half = 1.96 * tm.resid_std[step - 1] * scale;
                Point {
                    value: v,
                    lower: (v - half).max(0.0),
                    upper: v + half,
                }
            })
            .collect()
    }

    /// Continuous features of step 1 at origin `t` (for drift), `None` without a scale.
    pub fn live_features(s: &SeriesData, t: usize, t_idx: i64) -> Option<Vec<f64>> {
        let scale = features::scale(&s.purchases, t)?;
        let mut buf = vec![0.0; N_FEATURES];
        features::write(
            &s.purchases,
            t,
            1,
            t_idx + 1,
            scale,
            features::price_ratio(&s.price, t),
            &mut buf,
        );
        buf.truncate(N_CONTINUOUS);
        Some(buf)
    }

    /// Checks an artefact read from storage before it serves.
    pub fn validate(&self) -> Result<(), String> {
        let ok_target = |t: &TargetModel| {
            t.steps.len() == self.horizon
                && t.resid_std.len() == self.horizon
                && t.steps
                    .iter()
                    .all(|l| l.coef.len() == N_FEATURES && l.coef.iter().all(|c| c.is_finite()))
        };
        if !(1..=MAX_HORIZON).contains(&self.horizon) {
            return Err(format!("horizon {} out of range", self.horizon));
        }
        if self.features != features::names() {
            return Err("feature list differs from this version's".into());
        }
        if !ok_target(&self.purchases) || !ok_target(&self.revenue) {
            return Err("step models do not match the horizon and features".into());
        }
        if self.reference.edges.len() != N_CONTINUOUS || self.reference.shares.len() != N_CONTINUOUS
        {
            return Err("drift reference does not match the features".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Synth;

    #[test]
    fn fit_recovers_a_linear_function() {
        // y = 2 x0 - 3 x1 + 5, no noise, tiny ridge
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..200 {
            let (a, b) = (f64::from(i % 17), f64::from((i * 7) % 13));
            x.extend_from_slice(&[a, b, 1.0]); // a constant column is tolerated
            y.push(2.0 * a - 3.0 * b + 5.0);
        }
        let (lin, sd) = fit(&x, &y, 3, 1e-9).unwrap();
        assert!((lin.coef[0] - 2.0).abs() < 1e-6, "{lin:?}");
        assert!((lin.coef[1] + 3.0).abs() < 1e-6);
        assert_eq!(lin.coef[2], 0.0);
        assert!((lin.intercept - 5.0).abs() < 1e-5);
        assert!(sd < 1e-6);
    }

    #[test]
    fn split_by_hand() {
        let cfg = TrainConfig {
            horizon: 6,
            holdout_periods: 48,
            train_window_periods: 100,
            ..TrainConfig::default()
        };
        let (eval, train) = split(1000, &cfg).unwrap();
        // eval targets are positions 952..=999
        assert_eq!((eval.lo, eval.hi), (951, 993));
        // training targets end before 952: origin 945 + 6 = 951
        assert_eq!((train.lo, train.hi), (846, 945));
        assert!(matches!(
            split(cfg.min_history() - 1, &cfg),
            Err(TrainError::NotEnoughHistory { .. })
        ));
    }

    #[test]
    fn beats_seasonal_naive_on_synthetic_history() {
        let h = Synth::new(8, 42).history(3_600_000, 10_000, 10_000 + 24 * 42);
        let cfg = TrainConfig::default();
        let t = train(&h, &cfg, "test", 0).unwrap();
        let e = &t.meta.holdout;
        for te in [&e.purchases, &e.revenue] {
            let rel = te.relative_to_seasonal_naive.unwrap();
            assert!(
                rel < 0.85,
                "model MAE {} vs seasonal-naive {} (relative {rel})",
                te.mae,
                te.seasonal_naive_mae
            );
            assert!(te.mae < te.moving_average_mae, "{te:?}");
        }
        assert!(t.model.validate().is_ok());
        // the artefact round-trips through JSON
        let json = serde_json::to_string(&t.model).unwrap();
        let back: Model = serde_json::from_str(&json).unwrap();
        let coefs = |m: &Model| -> Vec<f64> {
            [&m.purchases, &m.revenue]
                .iter()
                .flat_map(|t| {
                    t.steps
                        .iter()
                        .flat_map(|l| l.coef.iter().copied().chain([l.intercept]))
                })
                .collect()
        };
        let diff = coefs(&back)
            .iter()
            .zip(coefs(&t.model))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-12, "{diff}");
        assert!(back.validate().is_ok());
        eprintln!(
            "held-out, 8 categories, 6 weeks: purchases MAE {:.3} sMAPE {:.3} vs seasonal-naive MAE {:.3} (relative {:.3}), moving-average MAE {:.3}; revenue relative {:.3}",
            e.purchases.mae, e.purchases.smape, e.purchases.seasonal_naive_mae,
            e.purchases.relative_to_seasonal_naive.unwrap(), e.purchases.moving_average_mae,
            e.revenue.relative_to_seasonal_naive.unwrap()
        );
        assert_eq!(t.meta.data_fingerprint.len(), 16);
    }
}
