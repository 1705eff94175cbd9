//! Live accuracy, drift, and the decisions to retrain and promote: [`Engine`], a state machine
//! with no I/O and no clock (time is the index of the last closed period).
//!
//! At every closed period the engine
//! 1. scores the champion's one-step forecasts of that period against the actuals (live MAE and
//!    sMAPE per target, and seasonal-naive's MAE on the same points for the relative error), over
//!    the last `live_window_periods` periods since the champion was installed;
//! 2. appends the period to the history and computes the step-1 continuous features of the new
//!    origin; their distribution over the live window against the champion's training
//!    distribution gives a PSI per feature;
//! 3. forecasts the next `horizon` periods of every series with the champion;
//! 4. says whether to retrain: `initial` (no champion, enough history), `error` (live sMAPE of a
//!    target above `error_threshold` over a full window), `drift` (a feature's PSI above
//!    `psi_threshold` over a full window), `schedule` (`retrain_every_periods` since the
//!    champion's training); never within `cooldown_periods` of the last attempt.
//!
//! [`Engine::retrain`] trains a challenger and decides ([`decide`]): `rejected_baseline` when its
//! hold-out MAE is not below seasonal-naive's by `seasonal_naive_margin` *and* the moving
//! average's by `moving_average_margin` on every target (purchases and revenue),
//! `rejected_no_gain` when it is not at least `promote_margin` below the champion's on the same
//! points on every target, `promoted` otherwise; every rejection lists each target and baseline
//! (or champion) that was not beaten. The caller stores every candidate and installs promoted
//! ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::baselines;
use crate::features::N_CONTINUOUS;
use crate::metrics;
use crate::model::Family;
use crate::model::{self, Evaluation, Metadata, Model, Target, TrainConfig, TrainError};
use crate::series::{History, Obs};

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub error_threshold: f64,
    pub psi_threshold: f64,
    pub promote_margin: f64,
    /// A challenger's hold-out MAE must be this fraction below seasonal-naive's, on every target.
    pub seasonal_naive_margin: f64,
    /// ... and this fraction below the moving average's, on every target.
    pub moving_average_margin: f64,
    pub cooldown_periods: usize,
    pub live_window_periods: usize,
    /// Periods of live features compared with the training distribution (a week by default:
    /// a shorter window sees the weekly pattern itself as drift).
    pub psi_window_periods: usize,
    /// 0: no scheduled retraining.
    pub retrain_every_periods: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            error_threshold: 0.35,
            psi_threshold: 0.25,
            promote_margin: 0.05,
            seasonal_naive_margin: 0.0,
            moving_average_margin: 0.0,
            cooldown_periods: 6,
            live_window_periods: 24,
            psi_window_periods: 168,
            retrain_every_periods: 168,
        }
    }
}

/// The model in service.
#[derive(Debug, Clone)]
pub struct Champion {
    pub model: Arc<Model>,
    pub meta: Metadata,
}

/// One forecast period of one series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ForecastPoint {
    pub period_start_ms: i64,
    pub purchases: f64,
    pub purchases_lower: f64,
    pub purchases_upper: f64,
    pub revenue: f64,
    pub revenue_lower: f64,
    pub revenue_upper: f64,
}

/// The champion's forecasts of every series from the newest origin.
/// The `model_version` of the forecasts served before any model is promoted
/// (the moving-average baseline).
pub const BASELINE_VERSION: &str = "baseline-moving-average";

#[derive(Debug, Clone, Serialize)]
pub struct ForecastSet {
    pub model_version: String,
    /// Start of the first forecast period.
    pub from_ms: i64,
    pub period_ms: i64,
    pub horizon: usize,
    pub series: HashMap<String, Vec<ForecastPoint>>,
}

/// Live figures after a period (the service's gauges).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveStats {
    pub periods: usize,
    pub mae: [Option<f64>; 2],
    pub smape: [Option<f64>; 2],
    pub relative_to_seasonal_naive: [Option<f64>; 2],
    pub psi: Vec<Option<f64>>,
}

impl LiveStats {
    pub fn max_psi(&self) -> Option<f64> {
        self.psi.iter().flatten().copied().reduce(f64::max)
    }

    pub fn max_smape(&self) -> Option<f64> {
        self.smape.iter().flatten().copied().reduce(f64::max)
    }
}

/// A trained challenger and what was decided about it.
pub struct Candidate {
    pub model: Model,
    pub meta: Metadata,
    pub promote: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct LivePoint {
    actual: [f64; 2],
    forecast: [f64; 2],
    seasonal_naive: [Option<f64>; 2],
}

pub struct Engine {
    pub cfg: MonitorConfig,
    pub train: TrainConfig,
    history: History,
    champion: Option<Champion>,
    /// Step-1 forecasts of the next period, per series.
    pending: HashMap<String, [f64; 2]>,
    live: VecDeque<Vec<LivePoint>>,
    live_features: VecDeque<Vec<Vec<f64>>>,
    last_attempt: Option<i64>,
    /// Last scheduled attempt: a rejected scheduled challenger waits a whole period again.
    schedule_from: Option<i64>,
    /// Every partition declared its end of input.
    input_ended: bool,
    /// The history's next index at the last end-of-input training.
    end_trained_at: Option<i64>,
    forecasts: Option<Arc<ForecastSet>>,
    stats: LiveStats,
}

impl Engine {
    pub fn new(train: TrainConfig, cfg: MonitorConfig, period_ms: i64) -> Self {
        let capacity = train.history_capacity();
        Engine {
            cfg,
            train,
            history: History::new(period_ms, capacity),
            champion: None,
            pending: HashMap::new(),
            live: VecDeque::new(),
            live_features: VecDeque::new(),
            last_attempt: None,
            schedule_from: None,
            input_ended: false,
            end_trained_at: None,
            forecasts: None,
            stats: LiveStats::default(),
        }
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn champion(&self) -> Option<&Champion> {
        self.champion.as_ref()
    }

    pub fn forecasts(&self) -> Option<Arc<ForecastSet>> {
        self.forecasts.clone()
    }

    pub fn stats(&self) -> &LiveStats {
        &self.stats
    }

    /// The family whose continuous features the drift window holds: the champion's, else the
    /// one being trained.
    fn feature_family(&self) -> Family {
        self.champion
            .as_ref()
            .map_or(self.train.family, |c| c.model.family)
    }

    /// Puts a model in service: live figures restart, forecasts are recomputed at once.
    pub fn install(&mut self, champion: Champion) {
        if champion.model.family != self.feature_family() {
            // The drift window holds another family's features.
            self.live_features.clear();
        }
        self.champion = Some(champion);
        // Live features describe the input, not the model: they stay.
        self.live.clear();
        self.stats = LiveStats::default();
        self.refresh_forecasts();
    }

    /// Takes the figures of closed period `idx`. Whether to retrain is asked separately
    /// ([`Engine::due`]), once the caller knows whether it is caught up on its input.
    pub fn close_period(&mut self, idx: i64, obs: &HashMap<String, Obs>) {
        if self.history.len > 0 && idx < self.history.next_index() {
            return;
        }
        // 1. score the pending one-step forecasts (only when they were for this very period)
        let scored = self.history.len > 0 && idx == self.history.next_index();
        let mut points = Vec::new();
        if scored && self.champion.is_some() {
            for (key, f) in &self.pending {
                let o = obs.get(key).copied().unwrap_or_default();
                let sn = |t: Target| {
                    self.history.series.get(key).and_then(|s| {
                        let y = t.values(s);
                        let back = baselines::SEASON - 1;
                        y.len().checked_sub(back + 1).map(|_| y[y.len() - 1 - back])
                    })
                };
                points.push(LivePoint {
                    actual: [o.purchases, o.revenue],
                    forecast: *f,
                    seasonal_naive: [sn(Target::Purchases), sn(Target::Revenue)],
                });
            }
        }
        // 2. history and live features
        self.history.push(idx, obs);
        let t = self.history.len - 1;
        let t_idx = self.history.index_of(t);
        let family = self.feature_family();
        let feats: Vec<Vec<f64>> = self
            .history
            .series
            .values()
            .filter_map(|s| crate::model::live_features(family, s, t, t_idx))
            .collect();
        if self.champion.is_some() {
            self.live.push_back(points);
            while self.live.len() > self.cfg.live_window_periods {
                self.live.pop_front();
            }
        }
        self.live_features.push_back(feats);
        while self.live_features.len() > self.cfg.psi_window_periods {
            self.live_features.pop_front();
        }
        self.compute_stats();
        // 3. forecasts
        self.refresh_forecasts();
    }

    /// Every partition of the input declared its end: the next [`Engine::due`] asks for one
    /// training on everything (`end_of_input`).
    pub fn set_input_ended(&mut self, ended: bool) {
        self.input_ended = ended;
    }

    /// The retrain due now ([`crate::schedule::due`] on the newest history): `caught_up` says
    /// whether nothing is left unread on the input.
    pub fn due(&self, caught_up: bool) -> Option<&'static str> {
        crate::schedule::due(&self.schedule_state(caught_up), &self.policy())
    }

    fn policy(&self) -> crate::schedule::Policy {
        crate::schedule::Policy {
            cooldown_periods: self.cfg.cooldown_periods as i64,
            retrain_every_periods: self.cfg.retrain_every_periods as i64,
            error_threshold: self.cfg.error_threshold,
            psi_threshold: self.cfg.psi_threshold,
        }
    }

    /// What the schedule looks at.
    pub fn schedule_state(&self, caught_up: bool) -> crate::schedule::State {
        let period_ms = self.history.period_ms.max(1);
        crate::schedule::State {
            now: self.history.next_index(),
            history_len: self.history.len,
            min_history: self.train.min_history(),
            caught_up,
            input_ended: self.input_ended,
            end_trained_at: self.end_trained_at,
            last_attempt: self.last_attempt,
            champion_trained_to: self
                .champion
                .as_ref()
                .map(|c| c.meta.training_to_ms.div_euclid(period_ms)),
            schedule_from: self.schedule_from,
            live_full: self.live.len() >= self.cfg.live_window_periods,
            max_smape: self.stats.max_smape(),
            psi_full: self.live_features.len() >= self.cfg.psi_window_periods,
            max_psi: self.stats.max_psi(),
        }
    }

    fn compute_stats(&mut self) {
        let mut s = LiveStats {
            periods: self.live.len(),
            psi: vec![None; N_CONTINUOUS],
            ..LiveStats::default()
        };
        for k in 0..2 {
            let pts = self.live.iter().flatten();
            let (a, f): (Vec<f64>, Vec<f64>) = pts.map(|p| (p.actual[k], p.forecast[k])).unzip();
            s.mae[k] = metrics::mae(&a, &f);
            s.smape[k] = metrics::smape(&a, &f);
            let with_sn: Vec<(f64, f64, f64)> = self
                .live
                .iter()
                .flatten()
                .filter_map(|p| p.seasonal_naive[k].map(|sn| (p.actual[k], p.forecast[k], sn)))
                .collect();
            let a: Vec<f64> = with_sn.iter().map(|p| p.0).collect();
            let f: Vec<f64> = with_sn.iter().map(|p| p.1).collect();
            let sn: Vec<f64> = with_sn.iter().map(|p| p.2).collect();
            if let (Some(m), Some(b)) = (metrics::mae(&a, &f), metrics::mae(&a, &sn)) {
                s.relative_to_seasonal_naive[k] = metrics::relative(m, b);
            }
        }
        if let Some(c) = &self.champion {
            let r = &c.model.reference;
            for (j, slot) in s.psi.iter_mut().enumerate() {
                if j >= r.edges.len() {
                    break;
                }
                let values: Vec<f64> = self
                    .live_features
                    .iter()
                    .flatten()
                    .filter_map(|v| v.get(j).copied())
                    .collect();
                if values.is_empty() {
                    continue;
                }
                let live = metrics::bin_shares(&values, &r.edges[j]);
                *slot = metrics::psi(&r.shares[j], &live);
            }
        }
        self.stats = s;
    }

    fn refresh_forecasts(&mut self) {
        self.pending.clear();
        let Some(c) = &self.champion else {
            self.forecasts = self.baseline_forecasts();
            return;
        };
        if self.history.len == 0 {
            return;
        }
        let t = self.history.len - 1;
        let t_idx = self.history.index_of(t);
        let period_ms = self.history.period_ms;
        let mut series = HashMap::with_capacity(self.history.series.len());
        for (key, s) in &self.history.series {
            let p = c.model.forecast_at(s, Target::Purchases, t, t_idx);
            let r = c.model.forecast_at(s, Target::Revenue, t, t_idx);
            let points: Vec<ForecastPoint> = p
                .iter()
                .zip(&r)
                .enumerate()
                .map(|(i, (p, r))| ForecastPoint {
                    period_start_ms: (t_idx + 1 + i as i64) * period_ms,
                    purchases: p.value,
                    purchases_lower: p.lower,
                    purchases_upper: p.upper,
                    revenue: r.value,
                    revenue_lower: r.lower,
                    revenue_upper: r.upper,
                })
                .collect();
            if let Some(first) = points.first() {
                self.pending
                    .insert(key.clone(), [first.purchases, first.revenue]);
            }
            series.insert(key.clone(), points);
        }
        self.forecasts = Some(Arc::new(ForecastSet {
            model_version: c.meta.version.clone(),
            from_ms: (t_idx + 1) * period_ms,
            period_ms,
            horizon: c.model.horizon,
            series,
        }));
    }

    /// Before any model is promoted (none trained yet, or none beat the baselines): the
    /// moving-average baseline's forecasts, so the API answers with the best a model has to
    /// beat rather than nothing (`model_version` [`BASELINE_VERSION`]). The interval is the
    /// window's mean +- 1.96 standard deviations, at least 0. Not scored as live accuracy.
    fn baseline_forecasts(&self) -> Option<Arc<ForecastSet>> {
        use crate::baselines::{moving_average, MOVING_AVERAGE};
        if self.history.len < MOVING_AVERAGE {
            return None;
        }
        let t = self.history.len - 1;
        let t_idx = self.history.index_of(t);
        let period_ms = self.history.period_ms;
        let horizon = self.train.horizon;
        let band = |y: &[f64]| -> Option<(f64, f64, f64)> {
            let m = moving_average(y, t)?;
            let w = &y[t + 1 - MOVING_AVERAGE..=t];
            let var = w.iter().map(|v| (v - m).powi(2)).sum::<f64>() / MOVING_AVERAGE as f64;
            let half = 1.96 * var.sqrt();
            Some((m, (m - half).max(0.0), m + half))
        };
        let mut series = HashMap::with_capacity(self.history.series.len());
        for (key, s) in &self.history.series {
            let (Some(p), Some(r)) = (band(&s.purchases), band(&s.revenue)) else {
                continue;
            };
            let points = (0..horizon)
                .map(|i| ForecastPoint {
                    period_start_ms: (t_idx + 1 + i as i64) * period_ms,
                    purchases: p.0,
                    purchases_lower: p.1,
                    purchases_upper: p.2,
                    revenue: r.0,
                    revenue_lower: r.1,
                    revenue_upper: r.2,
                })
                .collect();
            series.insert(key.clone(), points);
        }
        Some(Arc::new(ForecastSet {
            model_version: BASELINE_VERSION.to_string(),
            from_ms: (t_idx + 1) * period_ms,
            period_ms,
            horizon,
            series,
        }))
    }

    /// Trains a challenger on the history and decides whether it replaces the champion.
    pub fn retrain(&mut self, trigger: &str, now_ms: i64) -> Result<Candidate, TrainError> {
        self.last_attempt = Some(self.history.next_index());
        if trigger == crate::schedule::SCHEDULE {
            self.schedule_from = Some(self.history.next_index());
        }
        let rebuild = trigger == crate::schedule::END_OF_INPUT;
        if rebuild {
            self.end_trained_at = Some(self.history.next_index());
        }
        let trained = model::train(&self.history, &self.train, trigger, now_ms)?;
        let mut meta = trained.meta;
        let champ = match &self.champion {
            Some(c) => Some(model::evaluate_holdout(
                &c.model,
                &self.history,
                &self.train,
            )?),
            None => None,
        };
        // At the end of input the model trained on everything is the rebuild of the replay: it
        // must beat the baselines, not the champion (trained on a prefix of the same history, at
        // a point that depends on how fast the replay was read); the champion's figures on the
        // same hold-out are still recorded.
        let d = decide(
            &meta.holdout,
            champ.as_ref().filter(|_| !rebuild),
            &self.cfg,
        );
        let promote = d.promote;
        meta.decision = d.decision.into();
        meta.reasons = d.reasons;
        if let Some(c) = &self.champion {
            meta.champion_holdout = champ;
            meta.champion_version = Some(c.meta.version.clone());
        }
        Ok(Candidate {
            model: trained.model,
            meta,
            promote,
        })
    }

    /// Marks a retrain attempt that failed outside [`Engine::retrain`] (e.g. storage).
    pub fn note_attempt(&mut self) {
        self.last_attempt = Some(self.history.next_index());
    }
}

/// What [`decide`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub promote: bool,
    /// `promoted`, `rejected_baseline` or `rejected_no_gain`.
    pub decision: &'static str,
    /// One line per target and baseline (or the champion) not beaten by its margin.
    pub reasons: Vec<String>,
}

fn shortfall(target: Target, what: &str, mae: f64, other: f64, margin: f64) -> Option<String> {
    let limit = (1.0 - margin) * other;
    // NaN (no points) never passes.
    let beaten = mae.is_finite() && limit.is_finite() && mae < limit;
    (!beaten).then(|| {
        format!(
            "{}: MAE {mae:.3} not below {limit:.3} ({what} MAE {other:.3} less {:.1} %)",
            target.label(),
            100.0 * margin
        )
    })
}

/// Promotion rule: a challenger (`ch`, its hold-out evaluation) replaces the champion only if on
/// every target its MAE is below seasonal-naive's and the moving average's by their margins,
/// and below the champion's (`champion`, the champion's evaluation on the same points) by the
/// promotion margin.
pub fn decide(ch: &Evaluation, champion: Option<&Evaluation>, cfg: &MonitorConfig) -> Decision {
    let mut reasons = Vec::new();
    for t in Target::ALL {
        let e = ch.target(t);
        reasons.extend(shortfall(
            t,
            "seasonal-naive",
            e.mae,
            e.seasonal_naive_mae,
            cfg.seasonal_naive_margin,
        ));
        reasons.extend(shortfall(
            t,
            "moving-average",
            e.mae,
            e.moving_average_mae,
            cfg.moving_average_margin,
        ));
    }
    if !reasons.is_empty() {
        return Decision {
            promote: false,
            decision: "rejected_baseline",
            reasons,
        };
    }
    if let Some(c) = champion {
        for t in Target::ALL {
            reasons.extend(shortfall(
                t,
                "champion",
                ch.target(t).mae,
                c.target(t).mae,
                cfg.promote_margin,
            ));
        }
        if !reasons.is_empty() {
            return Decision {
                promote: false,
                decision: "rejected_no_gain",
                reasons,
            };
        }
    }
    Decision {
        promote: true,
        decision: "promoted",
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Synth;

    /// The whole loop without I/O: history, an injected demand shift, error and drift crossing
    /// their thresholds, retrains, a promotion, and live error back below the threshold.
    #[test]
    fn demand_shift_is_detected_and_a_retrain_recovers() {
        let (train, cfg) = scenario_config();
        let mut synth = Synth::new(5, 3);
        let start = 24 * 3000i64;
        let shift_at = start + 24 * 21;
        synth.shift_at = Some(shift_at);
        synth.shift_factor = 2.5;
        let mut e = Engine::new(train, cfg.clone(), 3_600_000);
        let mut version = 0;
        let mut log = Vec::new();
        let mut before_shift = None;
        let mut peak_after = 0.0f64;
        let mut promoted_after_shift = None;
        let mut recovered = None;
        for idx in start..shift_at + 24 * 7 {
            e.close_period(idx, &synth.period(idx));
            if let Some(trigger) = e.due(true) {
                let mut cand = e.retrain(trigger, 0).unwrap();
                log.push((idx - shift_at, trigger, cand.meta.decision.clone()));
                if cand.promote {
                    version += 1;
                    cand.meta.version = format!("v{version}");
                    if idx > shift_at {
                        promoted_after_shift.get_or_insert(idx - shift_at);
                    }
                    e.install(Champion {
                        model: Arc::new(cand.model),
                        meta: cand.meta,
                    });
                }
            }
            let s = e.stats();
            if idx == shift_at - 1 {
                before_shift = s.smape[0];
            }

            if idx >= shift_at {
                peak_after = peak_after.max(s.smape[0].unwrap_or(0.0));
            }
            if promoted_after_shift.is_some()
                && recovered.is_none()
                && s.periods >= cfg.live_window_periods
                && s.max_smape().is_some_and(|v| v < cfg.error_threshold)
            {
                recovered = Some(idx - shift_at);
            }
        }
        eprintln!("decisions (periods after shift, trigger, decision): {log:?}");
        eprintln!("live sMAPE before shift {before_shift:?}, peak after {peak_after}, promoted after shift at +{promoted_after_shift:?}, recovered at +{recovered:?}");
        assert!(before_shift.unwrap() < cfg.error_threshold);
        assert!(peak_after > cfg.error_threshold);
        assert!(promoted_after_shift.is_some(), "{log:?}");
        assert!(recovered.is_some(), "{log:?}");
    }

    #[test]
    fn schedule_retrains_once_per_period_of_the_schedule() {
        let (train, mut cfg) = scenario_config();
        cfg.retrain_every_periods = 48;
        cfg.error_threshold = 10.0;
        cfg.psi_threshold = 100.0;
        let synth = Synth::new(3, 5);
        let mut e = Engine::new(train, cfg, 3_600_000);
        let mut triggers = Vec::new();
        let start = 24 * 1000;
        for idx in start..start + 24 * 10 + 240 {
            e.close_period(idx, &synth.period(idx));
            if let Some(t) = e.due(true) {
                let mut c = e.retrain(t, 0).unwrap();
                triggers.push(t);
                if c.promote {
                    c.meta.version = "v".into();
                    e.install(Champion {
                        model: Arc::new(c.model),
                        meta: c.meta,
                    });
                }
            }
        }
        let scheduled = triggers.iter().filter(|t| **t == "schedule").count();
        // 480 periods, the champion from about period 220 on: every 48 periods, never more often
        assert!((4..=6).contains(&scheduled), "{triggers:?}");
    }

    /// Feeds `periods` of synthetic history period by period, asking `due` with the given
    /// catching-up pattern and declaring the end of input after the last period; returns the
    /// attempts and the final champion's metadata.
    fn replay(
        periods: std::ops::Range<i64>,
        caught_up: &dyn Fn(i64) -> bool,
        cfg: &MonitorConfig,
        train: &TrainConfig,
    ) -> (Vec<(i64, &'static str, String)>, Metadata) {
        let synth = Synth::new(4, 11);
        let mut e = Engine::new(train.clone(), cfg.clone(), 3_600_000);
        let mut log = Vec::new();
        let mut version = 0;
        let last = periods.end - 1;
        let mut step = |e: &mut Engine, idx: i64, caught: bool| {
            if let Some(t) = e.due(caught) {
                let mut c = e.retrain(t, 0).unwrap();
                log.push((idx, t, c.meta.decision.clone()));
                if c.promote {
                    version += 1;
                    c.meta.version = format!("v{version}");
                    e.install(Champion {
                        model: Arc::new(c.model),
                        meta: c.meta,
                    });
                }
            }
        };
        for idx in periods {
            e.close_period(idx, &synth.period(idx));
            step(&mut e, idx, caught_up(idx));
        }
        e.set_input_ended(true);
        step(&mut e, last, false);
        step(&mut e, last, true); // caught up after the end: nothing more
        let meta = e.champion().map(|c| c.meta.clone());
        let meta = meta.unwrap_or_else(|| panic!("no champion: {log:?}"));
        (log, meta)
    }

    /// The same history as a backlog (caught up only at the end), lived period by period
    /// (caught up always), and trained offline in one go: the backlog evaluates one challenger,
    /// every run ends with a champion trained to the last period, with the same hold-out figures.
    #[test]
    fn backlog_paced_and_offline_give_the_same_champion() {
        let (train, mut cfg) = scenario_config();
        cfg.retrain_every_periods = 168;
        let start = 24 * 3000;
        let periods = start..start + 24 * 7 * 10;
        let (fast, fast_meta) = replay(periods.clone(), &|_| false, &cfg, &train);
        let (paced, paced_meta) = replay(periods.clone(), &|_| true, &cfg, &train);
        eprintln!("backlog: {fast:?}\npaced: {paced:?}");
        assert_eq!(fast.len(), 1, "{fast:?}");
        assert_eq!(fast[0].1, crate::schedule::END_OF_INPUT);
        assert!(
            paced.len() > 3,
            "the paced run retrains on its schedule: {paced:?}"
        );
        assert_eq!(
            paced.last().map(|a| a.1),
            Some(crate::schedule::END_OF_INPUT)
        );
        let end_ms = periods.end * 3_600_000;
        for m in [&fast_meta, &paced_meta] {
            assert_eq!(m.training_to_ms, end_ms, "trained to the last period");
            assert_eq!(m.trigger, crate::schedule::END_OF_INPUT);
        }
        // offline: the history in one go, then one training
        let synth = Synth::new(4, 11);
        let mut e = Engine::new(train.clone(), cfg.clone(), 3_600_000);
        for idx in periods {
            e.close_period(idx, &synth.period(idx));
        }
        let offline = e.retrain("offline", 0).unwrap().meta;
        for m in [&fast_meta, &paced_meta] {
            assert_eq!(m.holdout, offline.holdout);
            assert_eq!(m.data_fingerprint, offline.data_fingerprint);
            assert_eq!(m.training_from_ms, offline.training_from_ms);
        }
    }

    /// A backlog without an end of input: nothing while catching up, then the first model on the
    /// newest history once caught up.
    #[test]
    fn catching_up_trains_nothing_until_caught_up() {
        let (train, cfg) = scenario_config();
        let synth = Synth::new(3, 5);
        let mut e = Engine::new(train, cfg, 3_600_000);
        let start = 24 * 1000;
        let end = start + 24 * 30;
        for idx in start..end {
            e.close_period(idx, &synth.period(idx));
            assert_eq!(e.due(false), None, "catching up at {idx}");
        }
        assert_eq!(e.due(true), Some(crate::schedule::INITIAL));
        let c = e.retrain(crate::schedule::INITIAL, 0).unwrap();
        assert_eq!(c.meta.training_to_ms, end * 3_600_000);
    }

    /// Before a model is promoted the moving average is served (after a day of history), and
    /// the champion's forecasts replace it once one is installed.
    #[test]
    fn the_moving_average_is_served_until_a_model_is_promoted() {
        let (train, cfg) = scenario_config();
        let synth = Synth::new(2, 9);
        let mut e = Engine::new(train.clone(), cfg, 3_600_000);
        let start = 24 * 1000;
        for idx in start..start + 23 {
            e.close_period(idx, &synth.period(idx));
        }
        assert!(
            e.forecasts().is_none(),
            "no forecast before a day of history"
        );
        for idx in start + 23..start + 24 * 30 {
            e.close_period(idx, &synth.period(idx));
        }
        let f = e.forecasts().expect("the baseline is served");
        assert_eq!(f.model_version, BASELINE_VERSION);
        assert_eq!(f.horizon, train.horizon);
        let t = e.history().len - 1;
        for (key, points) in &f.series {
            let s = &e.history().series[key];
            let want = crate::baselines::moving_average(&s.purchases, t).unwrap();
            assert_eq!(points.len(), train.horizon);
            for p in points {
                assert!((p.purchases - want).abs() < 1e-9, "{key}: {p:?}");
                assert!(p.purchases_lower <= p.purchases && p.purchases <= p.purchases_upper);
                assert!(p.purchases_lower >= 0.0 && p.revenue_lower >= 0.0);
            }
        }
        let c = e.retrain(crate::schedule::INITIAL, 0).unwrap();
        e.install(Champion {
            model: Arc::new(c.model),
            meta: c.meta.clone(),
        });
        assert_eq!(e.forecasts().unwrap().model_version, c.meta.version);
    }

    fn eval_with(p: (f64, f64, f64), r: (f64, f64, f64)) -> Evaluation {
        let te = |(mae, sn, ma): (f64, f64, f64)| {
            let mut pts = model::Points::default();
            // one point per figure is enough: summary() computes the MAEs
            pts.step.push(1);
            pts.actual.push(0.0);
            pts.forecast.push(mae);
            pts.lower.push(0.0);
            pts.upper.push(mae);
            pts.seasonal_naive.push(sn);
            pts.moving_average.push(ma);
            pts.summary(1)
        };
        Evaluation {
            from_ms: 0,
            to_ms: 1,
            purchases: te(p),
            revenue: te(r),
        }
    }

    #[test]
    fn a_challenger_better_on_purchases_but_worse_on_revenue_is_not_promoted() {
        let cfg = MonitorConfig::default();
        // purchases: 28.6 vs seasonal-naive 35 and moving average 40 (wins);
        // revenue: 3322 vs seasonal-naive 3163 (loses) and moving average 5000
        let ch = eval_with((28.6, 35.0, 40.0), (3322.0, 3163.0, 5000.0));
        let d = decide(&ch, None, &cfg);
        assert!(!d.promote);
        assert_eq!(d.decision, "rejected_baseline");
        assert_eq!(d.reasons.len(), 1, "{:?}", d.reasons);
        assert!(d.reasons[0].starts_with("revenue:"), "{:?}", d.reasons);
        assert!(d.reasons[0].contains("seasonal-naive"), "{:?}", d.reasons);
        // losing to the moving average on revenue only is also a rejection, said so
        let ch = eval_with((28.6, 35.0, 40.0), (3000.0, 3163.0, 2900.0));
        let d = decide(&ch, None, &cfg);
        assert_eq!(d.decision, "rejected_baseline");
        assert!(d.reasons[0].starts_with("revenue:") && d.reasons[0].contains("moving-average"));
        // the margins apply: 3000 vs 3163 is 5.2 % below, not 10 %
        let strict = MonitorConfig {
            seasonal_naive_margin: 0.10,
            ..cfg.clone()
        };
        let ch = eval_with((28.6, 35.0, 40.0), (3000.0, 3163.0, 5000.0));
        assert!(decide(&ch, None, &cfg).promote);
        let d = decide(&ch, None, &strict);
        assert!(!d.promote);
        assert!(d.reasons[0].starts_with("revenue:"), "{:?}", d.reasons);
    }

    #[test]
    fn the_champion_must_be_beaten_on_every_target() {
        let cfg = MonitorConfig::default();
        let ch = eval_with((20.0, 35.0, 40.0), (3000.0, 4000.0, 5000.0));
        // the champion: worse on purchases, better on revenue
        let champ = eval_with((25.0, 35.0, 40.0), (2900.0, 4000.0, 5000.0));
        let d = decide(&ch, Some(&champ), &cfg);
        assert!(!d.promote);
        assert_eq!(d.decision, "rejected_no_gain");
        assert_eq!(d.reasons.len(), 1);
        assert!(d.reasons[0].starts_with("revenue:") && d.reasons[0].contains("champion"));
        // better on both by more than 5 %
        let champ = eval_with((25.0, 35.0, 40.0), (3200.0, 4000.0, 5000.0));
        let d = decide(&ch, Some(&champ), &cfg);
        assert!(d.promote, "{:?}", d.reasons);
        assert_eq!(d.decision, "promoted");
        assert!(d.reasons.is_empty());
    }

    pub fn scenario_config() -> (TrainConfig, MonitorConfig) {
        (
            TrainConfig {
                horizon: 6,
                holdout_periods: 24,
                train_window_periods: 168,
                max_rows: 60_000,
                alpha: 1.0,
                family: crate::model::Family::default(),
            },
            MonitorConfig {
                error_threshold: 0.4,
                psi_threshold: 0.5,
                promote_margin: 0.05,
                seasonal_naive_margin: 0.0,
                moving_average_margin: 0.0,
                cooldown_periods: 6,
                live_window_periods: 24,
                psi_window_periods: 168,
                retrain_every_periods: 0,
            },
        )
    }
}
