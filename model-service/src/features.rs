//! The feature vector of one forecast: series `y` (purchases or revenue per period), origin `t`
//! (the last known period), step `h` (the target is period `t + h`).
//!
//! Level features are divided by the scale `s` = mean of the last [`LOOKBACK`] periods up to `t`,
//! and the model predicts `y[t + h] / s`: one model serves small and large series, and a series
//! whose level moves keeps its shape. Calendar features are one-hot on the target period.

/// Periods of history every feature needs before and including the origin (one week of hours).
pub const LOOKBACK: usize = 168;
/// Largest step the lag features allow (`lag_day` looks at `t + h - 24`).
pub const MAX_HORIZON: usize = 24;
/// Features whose distribution is watched for drift (PSI); the calendar one-hots are not.
pub const CONTINUOUS: [&str; 7] = [
    "last",
    "lag_day",
    "lag_week",
    "same_hour_mean_7d",
    "rolling_mean_24",
    "rolling_mean_6",
    "price",
];
pub const N_CONTINUOUS: usize = CONTINUOUS.len();
pub const N_FEATURES: usize = N_CONTINUOUS + 24 + 7;

/// Names of every feature, in vector order.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = CONTINUOUS.iter().map(|s| s.to_string()).collect();
    v.extend((0..24).map(|h| format!("hour_of_day_{h}")));
    v.extend((0..7).map(|d| format!("day_of_week_{d}")));
    v
}

/// Hour of day of period index `idx` (UTC with one-hour periods).
pub fn hour_of_day(idx: i64) -> usize {
    idx.rem_euclid(24) as usize
}

/// Day of week of period index `idx`, Monday = 0 (the epoch, day 0, was a Thursday).
pub fn day_of_week(idx: i64) -> usize {
    (idx.div_euclid(24) + 3).rem_euclid(7) as usize
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Scale at origin `t`: the mean of `y[t - 167 ..= t]`; `None` without a full week of history or
/// when the series sold nothing that week (its forecast is then 0).
pub fn scale(y: &[f64], t: usize) -> Option<f64> {
    if t + 1 < LOOKBACK || t >= y.len() {
        return None;
    }
    let s = mean(&y[t + 1 - LOOKBACK..=t]);
    (s > 0.0).then_some(s)
}

/// Price feature: the average unit price at `t` over its mean of the week (1 when unknown).
/// `price` holds NaN for periods without purchases.
pub fn price_ratio(price: &[f64], t: usize) -> f64 {
    if t >= price.len() {
        return 1.0;
    }
    let lo = (t + 1).saturating_sub(LOOKBACK);
    let known: Vec<f64> = price[lo..=t]
        .iter()
        .copied()
        .filter(|p| p.is_finite() && *p > 0.0)
        .collect();
    let m = mean(&known);
    // The latest known price within the week.
    let last = price[lo..=t]
        .iter()
        .rev()
        .find(|p| p.is_finite() && **p > 0.0);
    match last {
        Some(p) if m > 0.0 => p / m,
        _ => 1.0,
    }
}

/// Writes the features of (origin `t`, step `h`) into `out` (length [`N_FEATURES`]).
/// `target_idx` is the absolute period index of `t + h`, `s` the [`scale`] at `t`, `price_feature`
/// the [`price_ratio`] at `t`. The caller guarantees `t + 1 >= LOOKBACK`, `1 <= h <= MAX_HORIZON`.
pub fn write(
    y: &[f64],
    t: usize,
    h: usize,
    target_idx: i64,
    s: f64,
    price_feature: f64,
    out: &mut [f64],
) {
    debug_assert!(t + 1 >= LOOKBACK && (1..=MAX_HORIZON).contains(&h) && out.len() == N_FEATURES);
    let at = |back: usize| y[t + h - back];
    out.fill(0.0);
    out[0] = y[t] / s;
    out[1] = at(24) / s;
    out[2] = at(168) / s;
    out[3] = (1..=7).map(|k| at(24 * k)).sum::<f64>() / 7.0 / s;
    out[4] = mean(&y[t + 1 - 24..=t]) / s;
    out[5] = mean(&y[t + 1 - 6..=t]) / s;
    out[6] = price_feature;
    out[N_CONTINUOUS + hour_of_day(target_idx)] = 1.0;
    out[N_CONTINUOUS + 24 + day_of_week(target_idx)] = 1.0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_by_hand() {
        // 2026-11-29 (a Sunday) 13:00 UTC = 1_795_957_200_000 ms
        let idx = 1_795_957_200_000i64 / 3_600_000;
        assert_eq!(hour_of_day(idx), 13);
        assert_eq!(day_of_week(idx), 6);
        // the next day, Monday
        assert_eq!(day_of_week(idx + 24), 0);
        // epoch: Thursday 00:00
        assert_eq!(day_of_week(0), 3);
        assert_eq!(hour_of_day(-1), 23);
        assert_eq!(day_of_week(-1), 2);
    }

    #[test]
    fn features_by_hand() {
        // y[i] = i: scale at t = 167 is mean(0..=167) = 83.5
        let y: Vec<f64> = (0..200).map(f64::from).collect();
        let t = 167;
        let s = scale(&y, t).unwrap();
        assert_eq!(s, 83.5);
        let mut out = vec![0.0; N_FEATURES];
        write(&y, t, 2, 26, s, 1.0, &mut out);
        assert_eq!(out[0], 167.0 / 83.5); // last
        assert_eq!(out[1], 145.0 / 83.5); // y[169 - 24]
        assert_eq!(out[2], 1.0 / 83.5); // y[169 - 168]
                                        // same hour over 7 days: y[145], y[121], ..., y[1] -> mean 73
        assert_eq!(out[3], 73.0 / 83.5);
        // rolling means: mean(144..=167) = 155.5, mean(162..=167) = 164.5
        assert_eq!(out[4], 155.5 / 83.5);
        assert_eq!(out[5], 164.5 / 83.5);
        assert_eq!(out[6], 1.0);
        // target index 26: hour 2, day 1 after the epoch Thursday -> Friday = 4
        assert_eq!(out[N_CONTINUOUS + 2], 1.0);
        assert_eq!(out[N_CONTINUOUS + 24 + 4], 1.0);
        assert_eq!(out.iter().skip(N_CONTINUOUS).sum::<f64>(), 2.0);
        assert_eq!(names().len(), N_FEATURES);
    }

    #[test]
    fn scale_needs_a_week_and_sales() {
        let y = vec![0.0; 200];
        assert_eq!(scale(&y, 180), None);
        let y = vec![2.0; 200];
        assert_eq!(scale(&y, 166), None);
        assert_eq!(scale(&y, 167), Some(2.0));
    }

    #[test]
    fn price_ratio_by_hand() {
        let mut p = vec![f64::NAN; 10];
        assert_eq!(price_ratio(&p, 9), 1.0);
        p[2] = 10.0;
        p[5] = 20.0;
        // last known 20, week mean 15
        assert!((price_ratio(&p, 9) - 20.0 / 15.0).abs() < 1e-12);
    }
}
