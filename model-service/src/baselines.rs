//! The baselines a model must beat, same (series, origin, step) indexing as [`crate::features`].

/// Season length of the seasonal-naive baseline, in periods (one week of hours: it repeats both
/// the daily and the weekly pattern).
pub const SEASON: usize = 168;
/// Window of the moving-average baseline, in periods.
pub const MOVING_AVERAGE: usize = 24;

/// The value one season before the target: `y[t + h - SEASON]`.
pub fn seasonal_naive(y: &[f64], t: usize, h: usize) -> Option<f64> {
    (t + h).checked_sub(SEASON).and_then(|i| y.get(i)).copied()
}

/// The mean of the last [`MOVING_AVERAGE`] periods up to the origin, for every step.
pub fn moving_average(y: &[f64], t: usize) -> Option<f64> {
    if t + 1 < MOVING_AVERAGE || t >= y.len() {
        return None;
    }
    Some(y[t + 1 - MOVING_AVERAGE..=t].iter().sum::<f64>() / MOVING_AVERAGE as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_by_hand() {
        let y: Vec<f64> = (0..200).map(|i| f64::from(i % 7)).collect();
        // target 170 + 3 = 173 -> y[5] = 5
        assert_eq!(seasonal_naive(&y, 170, 3), Some(5.0));
        assert_eq!(seasonal_naive(&y, 10, 3), None);
        // y[0..24] = 0..6,0..6,0..6,0,1,2 -> sum 3*21 + 3 = 66
        assert_eq!(moving_average(&y, 23), Some(66.0 / 24.0));
        assert_eq!(moving_average(&y, 22), None);
    }
}
