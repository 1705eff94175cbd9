//! Synthetic demand with known structure, for tests, the benchmark and `train --synthetic`.
//!
//! Category `c` at period `i` sells Poisson(`rate`) orders with
//! `rate = base_c * daily(hour) * weekly(day) * promo * shift`:
//! - `base_c` between 6 and 40 orders per period;
//! - `daily`: a smooth curve peaking at 20:00 (x1.7) with a night low (x0.3);
//! - `weekly`: Saturday and Sunday x1.35, Monday x0.9;
//! - `promo`: on one day in five (per category) the price drops 20 % from 08:00 to 20:00 and
//!   demand rises x1.4;
//! - `shift`: from `shift_at` on, demand is multiplied by `shift_factor` (the injected change).
//!
//! Units are orders plus Poisson(0.1 x orders) extra units; revenue is units x price.

use std::collections::HashMap;

use cartstream_events::types::{Dimension, KpiWindow};

use crate::features::{day_of_week, hour_of_day};
use crate::series::{History, Obs};

#[derive(Debug, Clone)]
pub struct Synth {
    pub categories: usize,
    pub seed: u64,
    pub shift_at: Option<i64>,
    pub shift_factor: f64,
}

impl Synth {
    pub fn new(categories: usize, seed: u64) -> Self {
        Synth {
            categories,
            seed,
            shift_at: None,
            shift_factor: 1.0,
        }
    }

    pub fn name(c: usize) -> String {
        format!("cat{c:03}")
    }

    fn base(&self, c: usize) -> f64 {
        6.0 + (mix(self.seed ^ (c as u64 * 0x9e37)) % 35) as f64
    }

    fn promo(&self, c: usize, idx: i64) -> bool {
        let day = idx.div_euclid(24) as u64;
        let h = hour_of_day(idx);
        mix(self.seed ^ ((c as u64) << 20) ^ day.wrapping_mul(0x5851_f42d)).is_multiple_of(5)
            && (8..20).contains(&h)
    }

    /// Unit price of category `c` at period `idx`.
    pub fn price(&self, c: usize, idx: i64) -> f64 {
        let list = 10.0 + 5.0 * (c % 9) as f64;
        if self.promo(c, idx) {
            list * 0.8
        } else {
            list
        }
    }

    /// Expected orders of category `c` at period `idx`.
    pub fn rate(&self, c: usize, idx: i64) -> f64 {
        let hour = hour_of_day(idx) as f64;
        let daily = 1.0 + 0.7 * (std::f64::consts::TAU * (hour - 14.0) / 24.0).sin();
        let weekly = match day_of_week(idx) {
            5 | 6 => 1.35,
            0 => 0.9,
            _ => 1.0,
        };
        let promo = if self.promo(c, idx) { 1.4 } else { 1.0 };
        let shift = match self.shift_at {
            Some(s) if idx >= s => self.shift_factor,
            _ => 1.0,
        };
        self.base(c) * daily * weekly * promo * shift
    }

    /// The sampled figures of category `c` at period `idx` (deterministic in the seed).
    pub fn obs(&self, c: usize, idx: i64) -> Obs {
        let mut rng = Rng(mix(self.seed ^ ((c as u64) << 40) ^ idx as u64));
        let orders = rng.poisson(self.rate(c, idx));
        let units = orders + rng.poisson(0.1 * orders);
        Obs {
            purchases: orders,
            units,
            revenue: units * self.price(c, idx),
        }
    }

    /// Periods `from..to` of every category, as closed history.
    pub fn history(&self, period_ms: i64, from: i64, to: i64) -> History {
        let mut h = History::new(period_ms, (to - from).max(1) as usize);
        for idx in from..to {
            h.push(idx, &self.period(idx));
        }
        h
    }

    pub fn period(&self, idx: i64) -> HashMap<String, Obs> {
        (0..self.categories)
            .map(|c| (format!("category/{}", Self::name(c)), self.obs(c, idx)))
            .collect()
    }

    /// The final `kpi.windows` records of period `idx` (one tumbling window per category).
    pub fn windows(&self, period_ms: i64, idx: i64) -> Vec<KpiWindow> {
        (0..self.categories)
            .map(|c| {
                let o = self.obs(c, idx);
                let start = idx * period_ms;
                KpiWindow {
                    window_start: start,
                    window_end: start + period_ms,
                    window_size_ms: period_ms,
                    window_slide_ms: period_ms,
                    dimension: Dimension::Category,
                    dimension_value: Self::name(c),
                    views: (o.purchases * 20.0) as i64,
                    carts: (o.purchases * 3.0) as i64,
                    removals: o.purchases as i64,
                    purchases: o.purchases as i64,
                    units: o.units as i64,
                    revenue: o.revenue,
                    currency: "USD".into(),
                    avg_price: (o.units > 0.0).then(|| o.revenue / o.units),
                    conversion_rate: None,
                    distinct_users: o.purchases as i64,
                    is_final: true,
                    emitted_at: start + period_ms,
                }
            })
            .collect()
    }
}

/// splitmix64 finaliser: a well-mixed hash of a 64-bit value.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small deterministic generator (splitmix64 stream).
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (mix(self.0) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Poisson sample: Knuth's method for small means, a rounded normal for large ones.
    fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda <= 0.0 {
            return 0.0;
        }
        if lambda > 40.0 {
            let u1 = self.next_f64().max(1e-12);
            let u2 = self.next_f64();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            return (lambda + z * lambda.sqrt()).round().max(0.0);
        }
        let l = (-lambda).exp();
        let mut k = 0.0;
        let mut p = 1.0;
        loop {
            p *= self.next_f64();
            if p <= l {
                return k;
            }
            k += 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_close_to_the_rate() {
        let s = Synth::new(3, 7);
        assert_eq!(s.obs(1, 500), s.obs(1, 500));
        let n = 2000;
        let mean: f64 = (0..n)
            .map(|i| s.obs(2, 1000 + i * 24).purchases)
            .sum::<f64>()
            / n as f64;
        let rate: f64 = (0..n).map(|i| s.rate(2, 1000 + i * 24)).sum::<f64>() / n as f64;
        assert!((mean - rate).abs() / rate < 0.05, "{mean} vs {rate}");
    }

    #[test]
    fn shift_multiplies_demand() {
        let mut s = Synth::new(1, 1);
        let before = s.rate(0, 100);
        s.shift_at = Some(50);
        s.shift_factor = 2.5;
        assert!((s.rate(0, 100) - 2.5 * before).abs() < 1e-9);
        assert_eq!(s.rate(0, 49), Synth::new(1, 1).rate(0, 49));
    }
}
