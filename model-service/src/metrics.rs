//! Forecast error measures and the population stability index. Pure functions on slices.

/// Mean absolute error; `None` for empty or mismatched inputs.
pub fn mae(actual: &[f64], forecast: &[f64]) -> Option<f64> {
    if actual.is_empty() || actual.len() != forecast.len() {
        return None;
    }
    let sum: f64 = actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| (a - f).abs())
        .sum();
    Some(sum / actual.len() as f64)
}

/// Symmetric mean absolute percentage error as a fraction in `[0, 2]`:
/// mean of `2 |a - f| / (|a| + |f|)`, a point where both are 0 counting as 0.
pub fn smape(actual: &[f64], forecast: &[f64]) -> Option<f64> {
    if actual.is_empty() || actual.len() != forecast.len() {
        return None;
    }
    let sum: f64 = actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| smape_point(*a, *f))
        .sum();
    Some(sum / actual.len() as f64)
}

/// sMAPE over the points with a non-zero actual, where it means something: at a zero actual
/// every non-zero forecast scores the maximum 2 whatever its size (0.01 as much as 100), so a
/// shop's closed hours would dominate it. `None` without such a point.
pub fn smape_nonzero(actual: &[f64], forecast: &[f64]) -> Option<f64> {
    if actual.len() != forecast.len() {
        return None;
    }
    let (n, sum) = actual
        .iter()
        .zip(forecast)
        .filter(|(a, _)| **a != 0.0)
        .fold((0usize, 0.0), |(n, s), (a, f)| {
            (n + 1, s + smape_point(*a, *f))
        });
    (n > 0).then(|| sum / n as f64)
}

/// Weighted absolute percentage error `sum |a - f| / sum |a|`: the MAE relative to the mean
/// level, defined with zeros among the actuals. `None` when every actual is 0 or the inputs
/// differ in length.
pub fn wape(actual: &[f64], forecast: &[f64]) -> Option<f64> {
    if actual.is_empty() || actual.len() != forecast.len() {
        return None;
    }
    let total: f64 = actual.iter().map(|a| a.abs()).sum();
    let err: f64 = actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| (a - f).abs())
        .sum();
    (total > 0.0).then(|| err / total)
}

/// Share of the actuals inside `[lower, upper]` (bounds included). `None` for empty or
/// mismatched inputs.
pub fn coverage(actual: &[f64], lower: &[f64], upper: &[f64]) -> Option<f64> {
    if actual.is_empty() || actual.len() != lower.len() || actual.len() != upper.len() {
        return None;
    }
    let inside = actual
        .iter()
        .zip(lower.iter().zip(upper))
        .filter(|(a, (l, u))| *l <= *a && *a <= *u)
        .count();
    Some(inside as f64 / actual.len() as f64)
}

pub fn smape_point(actual: f64, forecast: f64) -> f64 {
    let denom = actual.abs() + forecast.abs();
    if denom == 0.0 {
        0.0
    } else {
        2.0 * (actual - forecast).abs() / denom
    }
}

/// `model / baseline` (below 1: the model is better). `None` when the baseline is perfect.
pub fn relative(model: f64, baseline: f64) -> Option<f64> {
    if baseline > 0.0 && model.is_finite() {
        Some(model / baseline)
    } else {
        None
    }
}

/// Bin edges of a reference sample: the `bins - 1` inner quantiles, deduplicated (a value `v`
/// falls in bin `k` = number of edges `<= v`).
pub fn quantile_edges(values: &[f64], bins: usize) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() || bins < 2 {
        return Vec::new();
    }
    sorted.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = (1..bins)
        .map(|k| sorted[(k * sorted.len() / bins).min(sorted.len() - 1)])
        .collect();
    edges.dedup();
    edges
}

/// Share of `values` in each of the `edges.len() + 1` bins.
pub fn bin_shares(values: &[f64], edges: &[f64]) -> Vec<f64> {
    let mut counts = vec![0usize; edges.len() + 1];
    let mut n = 0usize;
    for v in values.iter().filter(|v| v.is_finite()) {
        counts[edges.partition_point(|e| e <= v)] += 1;
        n += 1;
    }
    counts
        .into_iter()
        .map(|c| if n == 0 { 0.0 } else { c as f64 / n as f64 })
        .collect()
}

/// Population stability index `sum (live - ref) * ln(live / ref)` over bins, shares floored at
/// `1e-4` so an empty bin counts as rare instead of infinite. 0 = same distribution; the usual
/// reading is < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
pub fn psi(reference: &[f64], live: &[f64]) -> Option<f64> {
    if reference.is_empty() || reference.len() != live.len() {
        return None;
    }
    const FLOOR: f64 = 1e-4;
    Some(
        reference
            .iter()
            .zip(live)
            .map(|(r, l)| {
                let (r, l) = (r.max(FLOOR), l.max(FLOOR));
                (l - r) * (l / r).ln()
            })
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn mae_by_hand() {
        // |10-8| + |0-1| + |5-5| = 3, over 3 points
        assert!(close(
            mae(&[10.0, 0.0, 5.0], &[8.0, 1.0, 5.0]).unwrap(),
            1.0
        ));
        assert_eq!(mae(&[], &[]), None);
        assert_eq!(mae(&[1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn smape_by_hand() {
        // 2*2/18 = 0.2222.., 2*1/1 = 2, 0 (both zero) -> mean 0.740740..
        let s = smape(&[10.0, 0.0, 0.0], &[8.0, 1.0, 0.0]).unwrap();
        assert!(close(s, (4.0 / 18.0 + 2.0 + 0.0) / 3.0), "{s}");
        assert!(close(smape_point(100.0, 100.0), 0.0));
        assert!(close(smape_point(100.0, 50.0), 100.0 / 150.0));
    }

    #[test]
    fn zero_safe_measures_by_hand() {
        let a = [10.0, 0.0, 0.0, 5.0];
        let f = [8.0, 1.0, 0.0, 5.0];
        // only the non-zero actuals: (2*2/18 + 0) / 2
        assert!(close(smape_nonzero(&a, &f).unwrap(), 4.0 / 18.0 / 2.0));
        assert_eq!(smape_nonzero(&[0.0, 0.0], &[1.0, 0.0]), None);
        // (2 + 1 + 0 + 0) / 15
        assert!(close(wape(&a, &f).unwrap(), 3.0 / 15.0));
        assert_eq!(wape(&[0.0], &[1.0]), None);
        // 10 in [9, 11], 0 in [0, 0], 0 not in [1, 2], 5 in [5, 5]
        let c = coverage(&a, &[9.0, 0.0, 1.0, 5.0], &[11.0, 0.0, 2.0, 5.0]).unwrap();
        assert!(close(c, 0.75));
        assert_eq!(coverage(&[], &[], &[]), None);
    }

    #[test]
    fn relative_error() {
        assert!(close(relative(2.0, 4.0).unwrap(), 0.5));
        assert_eq!(relative(2.0, 0.0), None);
    }

    #[test]
    fn psi_by_hand() {
        // ref [0.5, 0.5], live [0.9, 0.1]:
        // (0.9-0.5) ln(1.8) + (0.1-0.5) ln(0.2) = 0.4*0.587787 + 0.4*1.609438 = 0.878890
        let p = psi(&[0.5, 0.5], &[0.9, 0.1]).unwrap();
        assert!((p - 0.878_890).abs() < 1e-5, "{p}");
        assert!(close(psi(&[0.2, 0.3, 0.5], &[0.2, 0.3, 0.5]).unwrap(), 0.0));
    }

    #[test]
    fn bins_by_hand() {
        let reference: Vec<f64> = (0..10).map(f64::from).collect();
        // quartile edges of 0..9: indices 2, 5, 7 -> 2, 5, 7
        let edges = quantile_edges(&reference, 4);
        assert_eq!(edges, vec![2.0, 5.0, 7.0]);
        // 0,1 | 2,3,4 | 5,6 | 7,8,9
        let shares = bin_shares(&reference, &edges);
        assert_eq!(shares, vec![0.2, 0.3, 0.2, 0.3]);
        // shifting everything up by 10 puts all in the last bin
        let shifted: Vec<f64> = reference.iter().map(|v| v + 10.0).collect();
        assert_eq!(bin_shares(&shifted, &edges), vec![0.0, 0.0, 0.0, 1.0]);
        assert!(psi(&shares, &bin_shares(&shifted, &edges)).unwrap() > 1.0);
    }

    proptest! {
        #[test]
        fn psi_is_non_negative_and_zero_on_itself(raw in proptest::collection::vec(0.01f64..1.0, 2..12),
                                                   other in proptest::collection::vec(0.01f64..1.0, 2..12)) {
            let norm = |v: &[f64]| { let s: f64 = v.iter().sum(); v.iter().map(|x| x / s).collect::<Vec<_>>() };
            let a = norm(&raw);
            prop_assert!(psi(&a, &a).unwrap().abs() < 1e-12);
            if other.len() == raw.len() {
                let b = norm(&other);
                prop_assert!(psi(&a, &b).unwrap() >= -1e-12);
            }
        }

        #[test]
        fn smape_is_bounded(a in proptest::collection::vec(0.0f64..1e6, 1..50), f in proptest::collection::vec(0.0f64..1e6, 1..50)) {
            let n = a.len().min(f.len());
            let s = smape(&a[..n], &f[..n]).unwrap();
            prop_assert!((0.0..=2.0).contains(&s));
            prop_assert!(mae(&a[..n], &f[..n]).unwrap() >= 0.0);
        }
    }
}
