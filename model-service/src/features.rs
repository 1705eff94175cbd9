//! The feature vector of one forecast: series `y` (purchases or revenue per period), origin `t`
//! (the last known period), step `h` (the target is period `t + h`).
//!
//! Level features are divided by the scale `s` = mean of the last [`LOOKBACK`] periods up to `t`,
//! and the model predicts `y[t + h] / s`: one model serves small and large series, and a series
//! whose level moves keeps its shape. Calendar features are one-hot on the target period.

/// Periods of history every feature needs before and including the origin (one week of hours).
pub const LOOKBACK: usize = 168;
/// Weeks of the hour-of-week profile at most (fewer while the history is shorter).
pub const PROFILE_WEEKS: usize = 4;
/// Periods of history the profile features use at most before the origin.
pub const PROFILE_LOOKBACK: usize = 168 * PROFILE_WEEKS;
/// Largest step the lag features allow (`lag_day` looks at `t + h - 24`).
pub const MAX_HORIZON: usize = 24;
/// Features whose distribution is watched for drift (PSI); the calendar features are not. The
/// lag family ([`LAG_CONTINUOUS`] = today's model) uses the first seven, the profile family all.
pub const CONTINUOUS: [&str; 12] = [
    "last",
    "lag_day",
    "lag_week",
    "same_hour_mean_7d",
    "rolling_mean_24",
    "rolling_mean_6",
    "price",
    "hour_of_week_mean",
    "week_trend",
    "profile_x_trend",
    "level_24",
    "profile_x_level_24",
];
/// Continuous features of the lag family.
pub const LAG_CONTINUOUS: usize = 7;
pub const N_CONTINUOUS: usize = CONTINUOUS.len();
/// Features of the lag family: its continuous ones, hour-of-day and day-of-week one-hots.
pub const N_LAG_FEATURES: usize = LAG_CONTINUOUS + 24 + 7;
/// Features of the profile family: every continuous one, year position (sin, cos), the one-hots.
pub const N_FEATURES: usize = N_CONTINUOUS + 2 + 24 + 7;

/// Names of the features of the lag family (today's model), in vector order.
pub fn lag_names() -> Vec<String> {
    let mut v: Vec<String> = CONTINUOUS[..LAG_CONTINUOUS]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend((0..24).map(|h| format!("hour_of_day_{h}")));
    v.extend((0..7).map(|d| format!("day_of_week_{d}")));
    v
}

/// Names of every feature of the profile family, in vector order.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = CONTINUOUS.iter().map(|s| s.to_string()).collect();
    v.extend(["year_sin".to_string(), "year_cos".to_string()]);
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

/// Day of the year (1-366) of period index `idx`, counted as hours since the epoch (the UTC
/// calendar with one-hour periods).
pub fn day_of_year(idx: i64) -> usize {
    use chrono::Datelike;
    chrono::DateTime::from_timestamp(idx.saturating_mul(3600), 0)
        .map_or(1, |d| d.ordinal() as usize)
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

/// Writes the features of the lag family (today's model) for (origin `t`, step `h`) into `out`
/// (length [`N_LAG_FEATURES`]). `target_idx` is the absolute period index of `t + h`, `s` the
/// [`scale`] at `t`, `price_feature` the [`price_ratio`] at `t`. The caller guarantees
/// `t + 1 >= LOOKBACK`, `1 <= h <= MAX_HORIZON`.
pub fn write(
    y: &[f64],
    t: usize,
    h: usize,
    target_idx: i64,
    s: f64,
    price_feature: f64,
    out: &mut [f64],
) {
    debug_assert!(
        t + 1 >= LOOKBACK && (1..=MAX_HORIZON).contains(&h) && out.len() >= N_LAG_FEATURES
    );
    let at = |back: usize| y[t + h - back];
    out.fill(0.0);
    out[0] = y[t] / s;
    out[1] = at(24) / s;
    out[2] = at(168) / s;
    out[3] = (1..=7).map(|k| at(24 * k)).sum::<f64>() / 7.0 / s;
    out[4] = mean(&y[t + 1 - 24..=t]) / s;
    out[5] = mean(&y[t + 1 - 6..=t]) / s;
    out[6] = price_feature;
    out[LAG_CONTINUOUS + hour_of_day(target_idx)] = 1.0;
    out[LAG_CONTINUOUS + 24 + day_of_week(target_idx)] = 1.0;
}

/// Weeks of profile available for target position `tau`: `min(PROFILE_WEEKS, tau / 168)`.
pub fn profile_weeks(tau: usize) -> usize {
    (tau / 168).min(PROFILE_WEEKS)
}

/// Whether target position `tau` is a closed slot: the same hour of the week sold nothing in
/// each of the last [`PROFILE_WEEKS`] weeks (at least two weeks of history). Such a slot is
/// forecast as 0 (and not used for training): a shop's night, its closed day.
pub fn closed(y: &[f64], tau: usize) -> bool {
    let k = profile_weeks(tau);
    k >= 2 && tau < y.len() + 168 && (1..=k).all(|w| y[tau - 168 * w] == 0.0)
}

/// What the profile features of one origin share across steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OriginStats {
    pub scale: f64,
    pub price: f64,
    pub rolling_24: f64,
    pub rolling_6: f64,
    /// This week's mean over the previous week's (1 when unknown), clipped to [0, 5].
    pub week_trend: f64,
    /// The last 24 periods against the same 24 periods of the profile weeks (1 when unknown),
    /// clipped to [0, 5].
    pub level_24: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b).clamp(0.0, 5.0)
    } else {
        1.0
    }
}

/// The shared figures of origin `t`; `None` without a [`scale`].
pub fn origin_stats(y: &[f64], price: &[f64], t: usize) -> Option<OriginStats> {
    let scale = scale(y, t)?;
    let week_trend = if t + 1 >= 2 * LOOKBACK {
        ratio(scale, mean(&y[t + 1 - 2 * LOOKBACK..=t - LOOKBACK]))
    } else {
        1.0
    };
    let rolling_24 = mean(&y[t + 1 - 24..=t]);
    let k = ((t + 1 - 24) / 168).min(PROFILE_WEEKS);
    let level_24 = if k >= 1 {
        let past: f64 = (1..=k)
            .map(|w| mean(&y[t + 1 - 24 - 168 * w..=t - 168 * w]))
            .sum::<f64>()
            / k as f64;
        ratio(rolling_24, past)
    } else {
        1.0
    };
    Some(OriginStats {
        scale,
        price: price_ratio(price, t),
        rolling_24,
        rolling_6: mean(&y[t + 1 - 6..=t]),
        week_trend,
        level_24,
    })
}

/// Writes the features of the profile family for (origin `t`, step `h`) into `out` (length
/// [`N_FEATURES`]); `o` is [`origin_stats`] at `t`. Level features are in scale units.
pub fn write_profile(
    y: &[f64],
    t: usize,
    h: usize,
    target_idx: i64,
    o: &OriginStats,
    out: &mut [f64],
) {
    debug_assert!(t + 1 >= LOOKBACK && (1..=MAX_HORIZON).contains(&h) && out.len() == N_FEATURES);
    let tau = t + h;
    let s = o.scale;
    let at = |back: usize| y[tau - back];
    out.fill(0.0);
    out[0] = y[t] / s;
    out[1] = at(24) / s;
    out[2] = at(168) / s;
    out[3] = (1..=7).map(|k| at(24 * k)).sum::<f64>() / 7.0 / s;
    out[4] = o.rolling_24 / s;
    out[5] = o.rolling_6 / s;
    out[6] = o.price;
    let k = profile_weeks(tau).max(1);
    let profile = (1..=k).map(|w| at(168 * w)).sum::<f64>() / k as f64 / s;
    out[7] = profile;
    out[8] = o.week_trend;
    out[9] = profile * o.week_trend;
    out[10] = o.level_24;
    out[11] = profile * o.level_24;
    let year = std::f64::consts::TAU * day_of_year(target_idx) as f64 / 365.25;
    out[N_CONTINUOUS] = year.sin();
    out[N_CONTINUOUS + 1] = year.cos();
    out[N_CONTINUOUS + 2 + hour_of_day(target_idx)] = 1.0;
    out[N_CONTINUOUS + 2 + 24 + day_of_week(target_idx)] = 1.0;
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
        let mut out = vec![0.0; N_LAG_FEATURES];
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
        assert_eq!(out[LAG_CONTINUOUS + 2], 1.0);
        assert_eq!(out[LAG_CONTINUOUS + 24 + 4], 1.0);
        assert_eq!(out.iter().skip(LAG_CONTINUOUS).sum::<f64>(), 2.0);
        assert_eq!(lag_names().len(), N_LAG_FEATURES);
        assert_eq!(names().len(), N_FEATURES);
    }

    #[test]
    fn profile_features_by_hand() {
        // y[i] = 1 + (i mod 168) for four weeks and then some: every week is the same, so the
        // profile of the target's hour of the week is its value and trend and level are 1.
        let y: Vec<f64> = (0..800).map(|i| 1.0 + (i % 168) as f64).collect();
        let t = 700;
        let o = origin_stats(&y, &[], t).unwrap();
        assert_eq!(o.scale, 84.5); // mean of 1..=168
        assert_eq!(o.week_trend, 1.0);
        assert_eq!(o.level_24, 1.0);
        assert_eq!(o.price, 1.0);
        let mut out = vec![0.0; N_FEATURES];
        write_profile(&y, t, 3, 703, &o, &mut out);
        let target = y[703];
        assert_eq!(out[7], target / 84.5); // hour-of-week mean of 4 weeks
        assert_eq!(out[2], target / 84.5); // lag_week
        assert_eq!(out[9], out[7]);
        assert_eq!(out[11], out[7]);
        // 703 = day 29 (a Friday after the epoch Thursday), hour 7
        assert_eq!(out[N_CONTINUOUS + 2 + 7], 1.0);
        assert_eq!(out[N_CONTINUOUS + 2 + 24 + 4], 1.0);
        // day of year 30: angle 2 pi 30 / 365.25
        let a = std::f64::consts::TAU * 30.0 / 365.25;
        assert!((out[N_CONTINUOUS] - a.sin()).abs() < 1e-12);
        // demand doubling in the last week: trend 2, and the last day twice its profile
        let mut z = y.clone();
        for v in &mut z[t + 1 - 168..=t] {
            *v *= 2.0;
        }
        let o2 = origin_stats(&z, &[], t).unwrap();
        assert_eq!(o2.week_trend, 2.0);
        assert_eq!(o2.level_24, 2.0);
    }

    #[test]
    fn closed_needs_zeros_in_every_profile_week() {
        let mut y = vec![1.0; 800];
        for w in 1..=4 {
            y[760 - 168 * w] = 0.0;
        }
        assert!(closed(&y, 760));
        assert!(!closed(&y, 761));
        y[760 - 168 * 3] = 2.0;
        assert!(!closed(&y, 760), "one open week of four");
        // with fewer than two weeks of history nothing is closed
        let z = vec![0.0; 300];
        assert!(!closed(&z, 200));
        assert!(closed(&z, 340));
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
