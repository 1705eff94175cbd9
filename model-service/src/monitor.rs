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
    champion_since: i64,
    /// Last scheduled attempt: a rejected scheduled challenger waits a whole period again.
    schedule_from: i64,
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
            champion_since: 0,
            schedule_from: 0,
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
        self.champion_since = self.history.next_index();
        self.refresh_forecasts();
    }

    /// Takes the figures of closed period `idx`; returns the retrain trigger, if any.
    pub fn close_period(&mut self, idx: i64, obs: &HashMap<String, Obs>) -> Option<&'static str> {
        if self.history.len > 0 && idx < self.history.next_index() {
            return None;
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
        // 4. trigger
        self.trigger()
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
            self.forecasts = None;
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

    fn trigger(&self) -> Option<&'static str> {
        let now = self.history.next_index();
        if self
            .last_attempt
            .is_some_and(|a| now - a < self.cfg.cooldown_periods as i64)
        {
            return None;
        }
        if self.champion.is_none() {
            return (self.history.len >= self.train.min_history()).then_some("initial");
        }
        let full = self.live.len() >= self.cfg.live_window_periods;
        if full
            && self
                .stats
                .max_smape()
                .is_some_and(|e| e > self.cfg.error_threshold)
        {
            return Some("error");
        }
        let psi_full = self.live_features.len() >= self.cfg.psi_window_periods;
        if psi_full
            && self
                .stats
                .max_psi()
                .is_some_and(|p| p > self.cfg.psi_threshold)
        {
            return Some("drift");
        }
        let every = self.cfg.retrain_every_periods as i64;
        if every > 0 && now - self.champion_since.max(self.schedule_from) >= every {
            return Some("schedule");
        }
        None
    }

    /// Trains a challenger on the history and decides whether it replaces the champion.
    pub fn retrain(&mut self, trigger: &str, now_ms: i64) -> Result<Candidate, TrainError> {
        self.last_attempt = Some(self.history.next_index());
        if trigger == "schedule" {
            self.schedule_from = self.history.next_index();
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
        let d = decide(&meta.holdout, champ.as_ref(), &self.cfg);
        let promote = d.promote;
        meta.decision = d.decision.into();
        meta.reasons = d.reasons;
        if let Some(c) = &self.champion {
            meta.champion_holdout = champ;
            meta.champion_version = Some(c.meta.version.clone());
        }
        if self.champion.is_none() && !promote {
            // Try again after the cooldown, not at every period.
            self.champion_since = self.history.next_index();
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
            if let Some(trigger) = e.close_period(idx, &synth.period(idx)) {
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
            if let Some(t) = e.close_period(idx, &synth.period(idx)) {
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
