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
//!
//! [`Synth::retail`] is a second profile, shaped like a year of a real online retailer's orders
//! (the UCI "Online Retail" shop: open office hours, closed on Saturdays, a Christmas peak):
//! - open 08:00-19:59 UTC, closed at night (rate 0), on Saturdays and from 24 December to
//!   1 January;
//! - `hourly`: a midday peak (x1.5 at 12:00) falling to x0.4 at 19:00;
//! - `weekly`: Thursday x1.2, Tuesday x1.05, Friday x0.85, Sunday x0.6;
//! - `yearly`: a cosine with its low in late May (x0.75) and its high in late November (x1.25),
//!   times a Christmas peak `1 + 0.8 exp(-((doy - 335) / 18)^2)` (early December);
//! - `base_c` between 2 and 31 orders per open hour;
//! - baskets: each order has about 12 units (Poisson 11 extra units per order, times a per-hour
//!   basket factor `exp(0.35 z)`), at a list price of 1.5-5.5 per unit with +-10 % hourly noise,
//!   so revenue is far noisier than purchases.

use std::collections::HashMap;

use cartstream_events::types::{Dimension, KpiWindow};

use crate::features::{day_of_week, day_of_year, hour_of_day};
use crate::series::{History, Obs};

/// Which demand shape a [`Synth`] draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The simulator's shape: open around the clock, daily and weekly seasonality, promotions.
    Today,
    /// A retail shop's year: store hours, a closed day, weekly and yearly seasonality, Christmas.
    Retail,
}

#[derive(Debug, Clone)]
pub struct Synth {
    pub categories: usize,
    pub seed: u64,
    pub shift_at: Option<i64>,
    pub shift_factor: f64,
    pub profile: Profile,
}

/// Retail opening hours (UTC), `[from, to)`.
pub const RETAIL_OPEN: std::ops::Range<usize> = 8..20;
/// Retail closed day of the week (Monday = 0): Saturday.
pub const RETAIL_CLOSED_DAY: usize = 5;
/// Start of the retail year used by the CLI, tests and benchmark: 2025-12-01 00:00 UTC (the
/// history then ends on 2026-11-30, in the run-up to Christmas, like the public data set).
pub const RETAIL_START: i64 = 20_423 * 24;

impl Synth {
    pub fn new(categories: usize, seed: u64) -> Self {
        Synth {
            categories,
            seed,
            shift_at: None,
            shift_factor: 1.0,
            profile: Profile::Today,
        }
    }

    /// The retail profile (see the module doc).
    pub fn retail(categories: usize, seed: u64) -> Self {
        Synth {
            profile: Profile::Retail,
            ..Synth::new(categories, seed)
        }
    }

    /// Whether the retail shop is open in period `idx`.
    pub fn retail_open(idx: i64) -> bool {
        let doy = day_of_year(idx);
        // 24 December (doy 358, 359 in leap years; the difference does not matter here) to 1 January
        RETAIL_OPEN.contains(&hour_of_day(idx))
            && day_of_week(idx) != RETAIL_CLOSED_DAY
            && !(358..=366).contains(&doy)
            && doy != 1
    }

    fn retail_rate(&self, c: usize, idx: i64) -> f64 {
        if !Self::retail_open(idx) {
            return 0.0;
        }
        const HOURLY: [f64; 12] = [0.5, 0.8, 1.1, 1.35, 1.5, 1.35, 1.2, 1.1, 1.0, 0.8, 0.6, 0.4];
        let hourly = HOURLY[hour_of_day(idx) - RETAIL_OPEN.start];
        let weekly = match day_of_week(idx) {
            1 => 1.05,
            3 => 1.2,
            4 => 0.85,
            6 => 0.6,
            _ => 1.0,
        };
        let doy = day_of_year(idx) as f64;
        let yearly = (1.0 + 0.25 * (std::f64::consts::TAU * (doy - 330.0) / 365.0).cos())
            * (1.0 + 0.8 * (-((doy - 335.0) / 18.0).powi(2)).exp());
        let base = 2.0 + (mix(self.seed ^ (c as u64 * 0x51ed)) % 30) as f64;
        let shift = match self.shift_at {
            Some(s) if idx >= s => self.shift_factor,
            _ => 1.0,
        };
        base * hourly * weekly * yearly * shift
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
        if self.profile == Profile::Retail {
            let list = 1.5 + 0.5 * (c % 9) as f64;
            let u = (mix(self.seed ^ ((c as u64) << 28) ^ (idx as u64).wrapping_mul(0x2545)) >> 11)
                as f64
                / (1u64 << 53) as f64;
            return list * (0.9 + 0.2 * u);
        }
        let list = 10.0 + 5.0 * (c % 9) as f64;
        if self.promo(c, idx) {
            list * 0.8
        } else {
            list
        }
    }

    /// Expected orders of category `c` at period `idx`.
    pub fn rate(&self, c: usize, idx: i64) -> f64 {
        if self.profile == Profile::Retail {
            return self.retail_rate(c, idx);
        }
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
        let units = if self.profile == Profile::Retail {
            let basket = (0.35 * rng.normal()).exp();
            orders + rng.poisson(11.0 * orders * basket)
        } else {
            orders + rng.poisson(0.1 * orders)
        };
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

    /// Standard normal sample (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(1e-12);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Poisson sample: Knuth's method for small means, a rounded normal for large ones.
    fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda <= 0.0 {
            return 0.0;
        }
        if lambda > 40.0 {
            let z = self.normal();
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
    fn retail_is_closed_at_night_on_saturdays_and_at_christmas() {
        let s = Synth::retail(4, 9);
        // 2026-06-04 (a Thursday) = day 20_608
        let thu = 20_608 * 24;
        assert_eq!(day_of_week(thu), 3);
        for c in 0..4 {
            for h in 0..24 {
                let open = (8..20).contains(&h);
                assert_eq!(s.rate(c, thu + h) > 0.0, open, "hour {h}");
                // the Saturday after
                assert_eq!(s.rate(c, thu + 48 + h), 0.0);
                assert_eq!(s.obs(c, thu + 48 + h).purchases, 0.0);
            }
        }
        // 2025-12-25 (day 20_447) at noon is closed, 2025-12-23 at noon open
        assert_eq!(s.rate(0, 20_447 * 24 + 12), 0.0);
        assert!(s.rate(0, 20_445 * 24 + 12) > 0.0);
        // midday above the evening, Thursday above Friday
        assert!(s.rate(1, thu + 12) > 2.0 * s.rate(1, thu + 19));
        assert!(s.rate(1, thu + 12) > s.rate(1, thu + 24 + 12));
    }

    #[test]
    fn retail_has_a_christmas_peak_and_noisy_baskets() {
        let s = Synth::retail(5, 9);
        let week = |day: i64| -> (f64, f64) {
            (0..168).fold((0.0, 0.0), |(p, r), i| {
                // category 4: list price 3.5
                let o = s.obs(4, day * 24 + i);
                (p + o.purchases, r + o.revenue)
            })
        };
        // first week of December 2026 (day 20_788) against the first week of June 2026 (20_605)
        let (dec, _) = week(20_788);
        let (jun, jun_rev) = week(20_605);
        assert!(dec > 2.0 * jun, "december {dec} vs june {jun}");
        // revenue per order near 12 units x 3.5
        let per_order = jun_rev / jun;
        assert!((25.0..70.0).contains(&per_order), "{per_order}");
        // a year of history from RETAIL_START ends on 2026-11-30
        let h = s.history(3_600_000, RETAIL_START, RETAIL_START + 24 * 365);
        assert_eq!(h.len, 8760);
        assert_eq!(day_of_year(h.index_of(h.len - 1)), 334);
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
