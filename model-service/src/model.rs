//! Training, evaluation and prediction.
//!
//! The model is *direct multi-step*: for each step `h` in `1..=horizon` and each target
//! (purchases, revenue) one ridge regression maps the features of [`crate::features`] at origin
//! `t` to `y[t + h] / scale`. One model serves every series (the scale makes them comparable).
//! The fit is smartcore's ridge computation (standardised columns, `(Z'Z + alpha I) w = Z'y`
//! solved with smartcore's Cholesky) on statistics accumulated in one sparse pass over the rows;
//! `RidgeRegression::fit` itself materialises `X'` and multiplies generically, which took 270 s
//! for a year of 50 hourly series instead of seconds. The coefficients are mapped back to raw
//! units, so the artefact is plain numbers: prediction is one dot product per step and the
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
use smartcore::linalg::traits::cholesky::CholeskyDecomposable;

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

/// Sufficient statistics of one least-squares problem, accumulated row by row: the rows are never
/// stored (a year of 50 hourly series is 430 000 rows per step), and the one-hot calendar columns
/// make each row sparse (9 non-zeros of 38), so a row costs ~45 products instead of ~720.
#[derive(Debug, Clone)]
struct Moments {
    p: usize,
    n: usize,
    sx: Vec<f64>,
    /// Upper triangle of X'X, row-major p x p.
    sxx: Vec<f64>,
    sxy: Vec<f64>,
    sy: f64,
    syy: f64,
}

impl Moments {
    fn new(p: usize) -> Self {
        Moments {
            p,
            n: 0,
            sx: vec![0.0; p],
            sxx: vec![0.0; p * p],
            sxy: vec![0.0; p],
            sy: 0.0,
            syy: 0.0,
        }
    }

    fn add(&mut self, x: &[f64], y: f64, nz: &mut Vec<usize>) {
        nz.clear();
        nz.extend((0..self.p).filter(|&j| x[j] != 0.0));
        self.n += 1;
        self.sy += y;
        self.syy += y * y;
        for (a, &j) in nz.iter().enumerate() {
            let xj = x[j];
            self.sx[j] += xj;
            self.sxy[j] += xj * y;
            let row = &mut self.sxx[j * self.p..(j + 1) * self.p];
            for &k in &nz[a..] {
                row[k] += xj * x[k];
            }
        }
    }

    /// Ridge on standardised columns (constant columns get coefficient 0), solved with
    /// smartcore's Cholesky on the normal equations `(Z'Z + alpha I) w = Z'y`: the computation of
    /// smartcore's `RidgeRegression::fit`, on the accumulated statistics. Returns the model in raw
    /// units and the residual standard deviation.
    fn solve(&self, alpha: f64) -> Result<(Linear, f64), TrainError> {
        let (p, n) = (self.p, self.n);
        if n <= p {
            return Err(TrainError::Fit(format!("{n} rows for {p} features")));
        }
        let nf = n as f64;
        let mean: Vec<f64> = self.sx.iter().map(|v| v / nf).collect();
        let ymean = self.sy / nf;
        let cov = |j: usize, k: usize| {
            let (j, k) = if j <= k { (j, k) } else { (k, j) };
            self.sxx[j * p + k] - nf * mean[j] * mean[k]
        };
        let sd: Vec<f64> = (0..p)
            .map(|j| {
                let v = (cov(j, j) / nf).max(0.0).sqrt();
                if v < 1e-9 {
                    0.0
                } else {
                    v
                }
            })
            .collect();
        let mut zz = Vec::with_capacity(p * p);
        for j in 0..p {
            for k in 0..p {
                let v = if sd[j] == 0.0 || sd[k] == 0.0 {
                    0.0
                } else {
                    cov(j, k) / (sd[j] * sd[k])
                };
                zz.push(v + if j == k { alpha } else { 0.0 });
            }
        }
        let zy: Vec<f64> = (0..p)
            .map(|j| {
                if sd[j] == 0.0 {
                    0.0
                } else {
                    (self.sxy[j] - nf * mean[j] * ymean) / sd[j]
                }
            })
            .collect();
        let a = DenseMatrix::new(p, p, zz, false).map_err(|e| TrainError::Fit(e.to_string()))?;
        let b = DenseMatrix::new(p, 1, zy.clone(), false)
            .map_err(|e| TrainError::Fit(e.to_string()))?;
        let w = a
            .cholesky_solve_mut(b)
            .map_err(|e| TrainError::Fit(e.to_string()))?;
        let wz: Vec<f64> = (0..p).map(|j| *w.get((j, 0))).collect();
        let coef: Vec<f64> = (0..p)
            .map(|j| if sd[j] == 0.0 { 0.0 } else { wz[j] / sd[j] })
            .collect();
        if coef.iter().any(|c| !c.is_finite()) {
            return Err(TrainError::Fit("non-finite coefficients".into()));
        }
        let intercept = ymean - coef.iter().zip(&mean).map(|(c, m)| c * m).sum::<f64>();
        // SSE of centred data: y'y - 2 w'X'y + w'X'Xw, in raw units.
        let yy = self.syy - nf * ymean * ymean;
        let xy: f64 = (0..p)
            .map(|j| coef[j] * (self.sxy[j] - nf * mean[j] * ymean))
            .sum();
        let mut xx = 0.0;
        for j in 0..p {
            if coef[j] == 0.0 {
                continue;
            }
            for k in 0..p {
                xx += coef[j] * coef[k] * cov(j, k);
            }
        }
        let sse = (yy - 2.0 * xy + xx).max(0.0);
        Ok((Linear { coef, intercept }, (sse / nf).sqrt()))
    }
}

/// Ridge fit of rows `x` (row-major, `p` columns) to `y`.
#[cfg(test)]
fn fit(x: &[f64], y: &[f64], p: usize, alpha: f64) -> Result<(Linear, f64), TrainError> {
    let mut m = Moments::new(p);
    let mut nz = Vec::new();
    for (row, t) in x.chunks_exact(p).zip(y) {
        m.add(row, *t, &mut nz);
    }
    m.solve(alpha)
}

/// The statistics of every step of one target over `origins`, and (for purchases) the
/// continuous step-1 features of the drift reference.
fn accumulate(
    h: &History,
    o: Origins,
    horizon: usize,
    max_rows: usize,
    target: Target,
) -> (Vec<Moments>, Vec<Vec<f64>>, usize) {
    let total = h.series.len() * (o.hi + 1 - o.lo);
    let stride = total.div_ceil(max_rows.max(1)).max(1) as u64;
    let mut steps = vec![Moments::new(N_FEATURES); horizon];
    let mut continuous = vec![Vec::new(); N_CONTINUOUS];
    let mut buf = vec![0.0; N_FEATURES];
    let mut nz = Vec::with_capacity(N_FEATURES);
    let mut rows = 0;
    for (si, s) in h.series.values().enumerate() {
        let y = target.values(s);
        for t in o.lo..=o.hi {
            if stride > 1 && !mix(((si as u64) << 32) ^ t as u64).is_multiple_of(stride) {
                continue;
            }
            let Some(scale) = features::scale(y, t) else {
                continue;
            };
            let p = features::price_ratio(&s.price, t);
            rows += 1;
            for (step, m) in steps.iter_mut().enumerate().map(|(i, m)| (i + 1, m)) {
                features::write(y, t, step, h.index_of(t + step), scale, p, &mut buf);
                if step == 1 && target == Target::Purchases {
                    for (j, c) in continuous.iter_mut().enumerate() {
                        c.push(buf[j]);
                    }
                }
                m.add(&buf, y[t + step] / scale, &mut nz);
            }
        }
    }
    (steps, continuous, rows)
}

fn fit_all(h: &History, o: Origins, cfg: &TrainConfig) -> Result<(Model, usize), TrainError> {
    let mut targets = Vec::new();
    let mut reference = None;
    let mut n_rows = 0;
    for target in Target::ALL {
        let (steps, continuous, rows) = accumulate(h, o, cfg.horizon, cfg.max_rows, target);
        if rows <= N_FEATURES {
            return Err(TrainError::NoRows);
        }
        n_rows = rows;
        let mut tm = TargetModel {
            steps: Vec::new(),
            resid_std: Vec::new(),
        };
        for m in &steps {
            let (lin, sd) = m.solve(cfg.alpha)?;
            tm.steps.push(lin);
            tm.resid_std.push(sd);
        }
        if target == Target::Purchases {
            let edges: Vec<Vec<f64>> = continuous
                .iter()
                .map(|c| metrics::quantile_edges(c, PSI_BINS))
                .collect();
            let shares = continuous
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
            "ridge regression (alpha {}, smartcore Cholesky), direct multi-step, {} features",
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
