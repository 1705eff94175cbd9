//! Candidate model families on the same rolling-origin hold-outs (the comparison table of
//! model-service/README.md), on both synthetic histories:
//! - the ridge families of the service (`ridge_profile_log`, `ridge_profile`, `ridge_lags`),
//!   through `model::backtest`;
//! - smartcore's random forest and gradient-boosted trees (`XGRegressor`) on the rows and target
//!   of `ridge_profile_log` (same features, same closed slots forecast as 0, same sampling), one
//!   per step and target, refitted at each fold. They are compared, not served.
//!
//!   cargo run --release -p cartstream-model-service --example compare
//!
//! `COMPARE_CATEGORIES` (default 20), `COMPARE_FOLDS` (4), `COMPARE_TREE_ROWS` (origins per tree
//! fit, default 4000), `COMPARE_PROFILES` (`retail,today`).

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use cartstream_model_service::model::{self, Family, Point, Target, TrainConfig};
use cartstream_model_service::series::History;
use cartstream_model_service::synth::{Synth, RETAIL_START};
use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::xgboost::{XGRegressor, XGRegressorParameters};

fn env(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Predictor = Box<dyn Fn(&[f64]) -> f64>;

#[derive(Clone, Copy)]
enum Trees {
    Forest,
    Boosted,
}

impl Trees {
    fn label(self) -> &'static str {
        match self {
            Trees::Forest => "random_forest (30 trees, depth 12, leaf 5)",
            Trees::Boosted => "xgboost (100 rounds, depth 4, eta 0.1)",
        }
    }

    fn fit(self, x: Vec<Vec<f64>>, y: Vec<f64>) -> Predictor {
        let m = DenseMatrix::from_2d_vec(&x).unwrap();
        match self {
            Trees::Forest => {
                let p = RandomForestRegressorParameters::default()
                    .with_n_trees(30)
                    .with_max_depth(12)
                    .with_min_samples_leaf(5)
                    .with_m(15)
                    .with_seed(7);
                let f = RandomForestRegressor::fit(&m, &y, p).unwrap();
                Box::new(move |row: &[f64]| {
                    let x = DenseMatrix::from_2d_vec(&vec![row.to_vec()]).unwrap();
                    f.predict(&x).unwrap()[0]
                })
            }
            Trees::Boosted => {
                let p = XGRegressorParameters::default()
                    .with_n_estimators(100)
                    .with_max_depth(4)
                    .with_learning_rate(0.1)
                    .with_seed(7);
                let f = XGRegressor::fit(&m, &y, p).unwrap();
                Box::new(move |row: &[f64]| {
                    let x = DenseMatrix::from_2d_vec(&vec![row.to_vec()]).unwrap();
                    f.predict(&x).unwrap()[0]
                })
            }
        }
    }
}

/// Rolling-origin backtest of a tree learner, folds as `model::backtest`.
fn backtest_trees(
    h: &History,
    cfg: &TrainConfig,
    folds: usize,
    rows: usize,
    trees: Trees,
) -> [model::TargetEval; 2] {
    let family = Family::RidgeProfileLog;
    let mut all = [model::Points::default(), model::Points::default()];
    for k in 0..folds {
        let n = h.len - k * 168;
        let Ok(((elo, ehi), (tlo, thi))) = model::split_origins(n, cfg) else {
            break;
        };
        for (ti, target) in Target::ALL.into_iter().enumerate() {
            let mut xs = vec![Vec::new(); cfg.horizon];
            let mut ys = vec![Vec::new(); cfg.horizon];
            model::for_each_row(
                h,
                (tlo, thi),
                cfg.horizon,
                rows,
                family,
                target,
                |_, _, step, x, z| {
                    xs[step - 1].push(x.to_vec());
                    ys[step - 1].push(z);
                },
            );
            let models: Vec<Predictor> = xs
                .into_iter()
                .zip(ys)
                .map(|(x, y)| trees.fit(x, y))
                .collect();
            let mut buf = vec![0.0; family.n_features()];
            let p = model::collect(h, elo, ehi, cfg.horizon, |s, tg, t, t_idx| {
                if tg != target {
                    return Vec::new();
                }
                let y = tg.values(s);
                (1..=cfg.horizon)
                    .map(|step| {
                        if cartstream_model_service::features::closed(y, t + step) {
                            return Point::ZERO;
                        }
                        match family.row(s, tg, t, t_idx, step, &mut buf) {
                            None => Point::ZERO,
                            Some(scale) => {
                                let v = family.back(models[step - 1](&buf), scale);
                                Point {
                                    value: v,
                                    lower: v,
                                    upper: v,
                                }
                            }
                        }
                    })
                    .collect()
            });
            all[ti].extend(&p[ti]);
        }
    }
    [all[0].summary(cfg.horizon), all[1].summary(cfg.horizon)]
}

/// One table row; `intervals` false for learners without prediction intervals.
fn line(name: &str, e: [&model::TargetEval; 2], intervals: bool, secs: f64) {
    let rel = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.3}"));
    println!(
        "| {name} | {:.3} ({}) | {:.3} ({}) | {:.3} ({}) | {:.3} ({}) | {} / {} | {secs:.1} |",
        e[0].mae,
        rel(e[0].relative_to_seasonal_naive),
        e[1].mae,
        rel(e[1].relative_to_seasonal_naive),
        e[0].seasonal_naive_mae,
        rel(e[0].relative_to_moving_average),
        e[1].seasonal_naive_mae,
        rel(e[1].relative_to_moving_average),
        if intervals {
            rel(e[0].coverage)
        } else {
            "n/a".into()
        },
        if intervals {
            rel(e[1].coverage)
        } else {
            "n/a".into()
        },
    );
}

fn main() {
    let categories = env("COMPARE_CATEGORIES", 20);
    let folds = env("COMPARE_FOLDS", 4);
    let tree_rows = env("COMPARE_TREE_ROWS", 4000);
    let profiles = std::env::var("COMPARE_PROFILES").unwrap_or_else(|_| "retail,today".into());
    let cfg = TrainConfig::default();
    for profile in profiles.split(',') {
        let h = match profile {
            "retail" => Synth::retail(categories, 7).history(
                3_600_000,
                RETAIL_START,
                RETAIL_START + 24 * 365,
            ),
            _ => {
                let start = 24 * 20_000;
                Synth::new(categories, 7).history(3_600_000, start, start + 24 * 365)
            }
        };
        println!(
            "\n{profile}: {categories} categories x a year, {folds} folds of {} hold-out periods a week apart, horizon {}",
            cfg.holdout_periods, cfg.horizon
        );
        println!("| family | purchases MAE (vs seasonal-naive) | revenue MAE (vs seasonal-naive) | seasonal-naive purchases (model vs moving-average) | seasonal-naive revenue (model vs moving-average) | coverage purchases / revenue | seconds |");
        println!("|---|---|---|---|---|---|---|");
        for family in [
            Family::RidgeProfileLog,
            Family::RidgeProfile,
            Family::RidgeLags,
        ] {
            let c = TrainConfig {
                family,
                ..cfg.clone()
            };
            let t = Instant::now();
            let b = model::backtest(&h, &c, folds, 168).unwrap();
            line(
                family.label(),
                [&b.overall.purchases, &b.overall.revenue],
                true,
                t.elapsed().as_secs_f64(),
            );
        }
        for trees in [Trees::Forest, Trees::Boosted] {
            let t = Instant::now();
            let e = backtest_trees(&h, &cfg, folds, tree_rows, trees);
            line(
                &format!("{} on ridge_profile_log rows", trees.label()),
                [&e[0], &e[1]],
                false,
                t.elapsed().as_secs_f64(),
            );
        }
    }
}
