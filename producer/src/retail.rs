//! The retail profile: an online gift shop with store hours, modelled on the public UCI "Online
//! Retail" export (a UK shop's orders of a year: invoices from 07:00 to 20:00, none on Saturdays
//! or over Christmas, a November peak, a quarter of the lines without a customer, the same SKU on
//! several lines of an invoice at other quantities).
//!
//! Pure, no clock: [`StoreHours`] says when the shop takes orders and how much demand there is at
//! an instant (hour of day × day of week × day of year, each curve normalised to a mean of 1 over
//! its period with the closed hours and days counted as 0, so `--rate` stays the mean rate over
//! a week), [`quantity`] draws an order line's quantity, and [`Catalog::retail`] makes the shop's
//! catalog: SKU-like codes (`85123A`) mapped to stable ids in `[2^52, 2^53)` exactly as `replay
//! --product-ids sku` maps them, priced in GBP. The simulator ([`crate::sim`]) uses them: no
//! session acts while the shop is closed, guests shop as the anonymous user of their session (the
//! id `replay --guest-users anonymous` gives), and orders repeat lines.

use cartstream_events::time::civil_from_days;
use cartstream_events::types::Product;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::catalog::{category_id, Catalog};
use crate::replay::sku_product_id;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Orders per hour of day (UTC) in the UCI export, relative: a morning ramp, a lunchtime peak, a
/// slow afternoon. Hours the shop is closed get 0 whatever this says.
const HOURLY: [f64; 24] = [
    0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.8, 1.6, 2.6, 3.4, 3.9, 4.6, 4.3, 3.6, 3.3, 2.4, 1.2, 0.8,
    0.6, 0.5, 0.4, 0.3, 0.2,
];
/// Orders per day of week, Monday first (Thursday busiest, Sunday a quiet day).
const WEEKLY: [f64; 7] = [1.0, 1.1, 1.05, 1.25, 0.85, 0.8, 0.65];
/// Demand through the year, (day of year from 0, level), linear in between: flat spring and
/// summer, an autumn ramp to a November–early-December peak, the post-Christmas lull.
const YEARLY: [(f64, f64); 11] = [
    (0.0, 0.75),
    (45.0, 0.8),
    (105.0, 0.95),
    (196.0, 1.0),
    (258.0, 1.35),
    (288.0, 1.6),
    (319.0, 2.0),
    (340.0, 2.0),
    (354.0, 1.3),
    (360.0, 0.8),
    (366.0, 0.75),
];

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Day of week of a day number since 1970-01-01 (a Thursday), Monday = 0.
pub fn weekday(days: i64) -> usize {
    (days + 3).rem_euclid(7) as usize
}

/// (month, day) of an instant, UTC.
fn month_day(ms: i64) -> (u32, u32) {
    let (_, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    (m, d)
}

/// Day of the year from 0, with a fraction, of an instant (UTC).
fn day_of_year(ms: i64) -> f64 {
    let days = ms.div_euclid(DAY_MS);
    let (y, _, _) = civil_from_days(days);
    let jan1 = cartstream_events::time::days_from_civil(y, 1, 1);
    (days - jan1) as f64 + ms.rem_euclid(DAY_MS) as f64 / DAY_MS as f64
}

fn yearly(doy: f64) -> f64 {
    for w in YEARLY.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if doy < x1 {
            return y0 + (y1 - y0) * (doy - x0) / (x1 - x0);
        }
    }
    YEARLY[YEARLY.len() - 1].1
}

/// A closed period of the calendar: month-day `from` to `to` inclusive (may wrap over the new
/// year, as 12-24..01-03 does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedDates {
    pub from: (u32, u32),
    pub to: (u32, u32),
}

impl ClosedDates {
    fn contains(&self, md: (u32, u32)) -> bool {
        if self.from <= self.to {
            self.from <= md && md <= self.to
        } else {
            md >= self.from || md <= self.to
        }
    }
}

/// When the shop takes orders and how much demand it sees.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreHours {
    /// Open from this hour (UTC, inclusive)...
    pub open_from: u32,
    /// ... to this one (exclusive); `open_from > open_to` wraps over midnight, equal is all day.
    pub open_to: u32,
    /// Closed all day on these weekdays (Monday = 0).
    pub closed_days: [bool; 7],
    pub closed_dates: Vec<ClosedDates>,
    /// Hour-of-day, weekly and yearly curves; off: flat demand while open.
    pub seasonality: bool,
    hourly: [f64; 24],
    weekly: [f64; 7],
    yearly_mean: f64,
}

/// A store-hours setting that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HoursError {
    #[error("expected open hours as FROM-TO in whole hours 0..24 (e.g. 7-20), got {0:?}")]
    BadHours(String),
    #[error("expected weekdays as mon,tue,...,sun (or none), got {0:?}")]
    BadDay(String),
    #[error(
        "expected closed dates as MM-DD or MM-DD..MM-DD, comma-separated (or none), got {0:?}"
    )]
    BadDate(String),
    #[error("the shop is never open")]
    NeverOpen,
}

fn parse_md(s: &str) -> Option<(u32, u32)> {
    let (m, d) = s.trim().split_once('-')?;
    let (m, d): (u32, u32) = (m.parse().ok()?, d.parse().ok()?);
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((m, d))
}

impl StoreHours {
    /// The UCI export's shop: 07:00–20:00 UTC, closed on Saturdays and from Christmas Eve to
    /// the 3rd of January.
    pub fn online_retail() -> Self {
        StoreHours::parse("7-20", "sat", "12-24..01-03", true).expect("valid defaults")
    }

    /// From the flags' text: hours `7-20`, days `sat,sun` (or `none`), dates `12-25,12-31..01-01`
    /// (or `none`).
    pub fn parse(
        hours: &str,
        days: &str,
        dates: &str,
        seasonality: bool,
    ) -> Result<Self, HoursError> {
        let bad_hours = || HoursError::BadHours(hours.to_string());
        let (from, to) = hours.trim().split_once('-').ok_or_else(bad_hours)?;
        let (open_from, open_to): (u32, u32) = (
            from.trim().parse().map_err(|_| bad_hours())?,
            to.trim().parse().map_err(|_| bad_hours())?,
        );
        if open_from > 24 || open_to > 24 {
            return Err(bad_hours());
        }
        let (open_from, open_to) = (open_from % 24, open_to % 24);
        let mut closed_days = [false; 7];
        if !days.trim().eq_ignore_ascii_case("none") && !days.trim().is_empty() {
            for d in days.split(',') {
                let d = d.trim().to_ascii_lowercase();
                let i = WEEKDAYS
                    .iter()
                    .position(|w| d.starts_with(w) && !d.is_empty())
                    .ok_or_else(|| HoursError::BadDay(days.to_string()))?;
                closed_days[i] = true;
            }
        }
        let mut closed_dates = Vec::new();
        if !dates.trim().eq_ignore_ascii_case("none") && !dates.trim().is_empty() {
            for part in dates.split(',') {
                let bad = || HoursError::BadDate(dates.to_string());
                let (from, to) = match part.split_once("..") {
                    Some((a, b)) => (parse_md(a).ok_or_else(bad)?, parse_md(b).ok_or_else(bad)?),
                    None => {
                        let md = parse_md(part).ok_or_else(bad)?;
                        (md, md)
                    }
                };
                closed_dates.push(ClosedDates { from, to });
            }
        }
        let mut h = StoreHours {
            open_from,
            open_to,
            closed_days,
            closed_dates,
            seasonality,
            hourly: [0.0; 24],
            weekly: [0.0; 7],
            yearly_mean: 1.0,
        };
        let open_hours: Vec<usize> = (0..24).filter(|i| h.hour_open(*i as u32)).collect();
        let open_days: Vec<usize> = (0..7).filter(|i| !h.closed_days[*i]).collect();
        if open_hours.is_empty() || open_days.is_empty() {
            return Err(HoursError::NeverOpen);
        }
        let curve = |i: usize, c: &[f64]| if seasonality { c[i] } else { 1.0 };
        let hsum: f64 = open_hours.iter().map(|i| curve(*i, &HOURLY)).sum();
        for i in &open_hours {
            h.hourly[*i] = curve(*i, &HOURLY) * 24.0 / hsum;
        }
        let wsum: f64 = open_days.iter().map(|i| curve(*i, &WEEKLY)).sum();
        for i in &open_days {
            h.weekly[*i] = curve(*i, &WEEKLY) * 7.0 / wsum;
        }
        if seasonality {
            let n = 365 * 24;
            h.yearly_mean =
                (0..n).map(|k| yearly(k as f64 / 24.0)).sum::<f64>() / f64::from(n as u32);
        }
        if (0..366).all(|d| h.closed_dates.iter().any(|c| c.contains(md_of_doy(d)))) {
            return Err(HoursError::NeverOpen);
        }
        Ok(h)
    }

    fn hour_open(&self, hour: u32) -> bool {
        match self.open_from.cmp(&self.open_to) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => hour >= self.open_from && hour < self.open_to,
            std::cmp::Ordering::Greater => hour >= self.open_from || hour < self.open_to,
        }
    }

    /// Whether the shop takes orders at `ms`.
    pub fn is_open(&self, ms: i64) -> bool {
        let days = ms.div_euclid(DAY_MS);
        let hour = (ms.rem_euclid(DAY_MS) / HOUR_MS) as u32;
        self.hour_open(hour)
            && !self.closed_days[weekday(days)]
            && !self.closed_dates.iter().any(|c| c.contains(month_day(ms)))
    }

    /// The first instant at or after `ms` when the shop is open (whole hours).
    pub fn next_open(&self, ms: i64) -> i64 {
        if self.is_open(ms) {
            return ms;
        }
        let mut t = (ms.div_euclid(HOUR_MS) + 1) * HOUR_MS;
        // Construction guarantees an open hour within a year (and a bit: closed dates wrap).
        for _ in 0..(400 * 24) {
            if self.is_open(t) {
                return t;
            }
            t += HOUR_MS;
        }
        t
    }

    /// Demand at `ms` relative to the mean (0 while closed): the hour-of-day curve × the weekly
    /// curve × the yearly one, each with a mean of 1 over its period.
    pub fn demand(&self, ms: i64) -> f64 {
        if !self.is_open(ms) {
            return 0.0;
        }
        let days = ms.div_euclid(DAY_MS);
        let hour = (ms.rem_euclid(DAY_MS) / HOUR_MS) as usize;
        let year = if self.seasonality {
            yearly(day_of_year(ms)) / self.yearly_mean
        } else {
            1.0
        };
        self.hourly[hour] * self.weekly[weekday(days)] * year
    }
}

/// (month, day) of a day of a non-leap year, from 0.
fn md_of_doy(doy: i64) -> (u32, u32) {
    let (_, m, d) = civil_from_days(cartstream_events::time::days_from_civil(2025, 1, 1) + doy);
    (m, d)
}

/// Quantities of order lines as a wholesale gift shop sells them: singles, packs of 2 to 12, a
/// few dozens.
const QUANTITIES: &[(i32, u32)] = &[
    (1, 30),
    (2, 14),
    (3, 6),
    (4, 8),
    (6, 12),
    (8, 4),
    (10, 5),
    (12, 14),
    (24, 5),
    (48, 2),
];

/// An order line's quantity; never `not` (a repeated line of a product comes at another
/// quantity).
pub fn quantity(rng: &mut impl Rng, not: Option<i32>) -> i32 {
    let total: u32 = QUANTITIES
        .iter()
        .filter(|(q, _)| Some(*q) != not)
        .map(|(_, w)| w)
        .sum();
    let mut x = rng.random_range(0..total);
    for (q, w) in QUANTITIES.iter().filter(|(q, _)| Some(*q) != not) {
        if x < *w {
            return *q;
        }
        x -= w;
    }
    1
}

/// Departments of the gift shop with a typical unit price range each (GBP).
const DEPARTMENTS: &[(&str, f64, f64)] = &[
    ("home.decor.candles", 0.4, 6.0),
    ("home.decor.signs", 0.8, 8.0),
    ("kitchen.storage", 1.2, 12.0),
    ("kitchen.baking", 0.6, 6.0),
    ("gifts.christmas", 0.3, 9.0),
    ("stationery.cards", 0.3, 3.0),
    ("bags.lunch", 1.6, 5.0),
    ("garden.ornaments", 1.0, 15.0),
    ("toys.retro", 0.4, 10.0),
];
const SUPPLIERS: &[&str] = &[
    "regency",
    "jumbo",
    "lovebird",
    "vintage_co",
    "retrospot",
    "paisley",
];
const WORDS: &[&str] = &[
    "white",
    "red",
    "heart",
    "hanging",
    "vintage",
    "jumbo",
    "regency",
    "retrospot",
    "spotty",
    "paisley",
    "union",
    "jack",
    "rose",
    "woodland",
    "christmas",
    "pink",
    "blue",
    "glass",
    "metal",
];

impl Catalog {
    /// The retail profile's shop from `seed`: `n_products` products with SKU-like codes (five
    /// digits, some with a letter: `85123A`), each product id the code's stable id in
    /// `[2^52, 2^53)` (the id `replay --product-ids sku` gives it, so an export of the same codes
    /// joins), priced in GBP; `n_users` synthetic users. The code is the product's first tag
    /// (`sku:85123A`) and starts its name.
    pub fn retail(seed: u64, n_products: usize, n_users: usize, now_ms: i64) -> Catalog {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x0e7a_11a7);
        let mut codes = std::collections::HashSet::new();
        let mut products = Vec::with_capacity(n_products);
        while products.len() < n_products {
            let n: u32 = rng.random_range(10_000..100_000);
            let sku = if rng.random::<f64>() < 0.2 {
                format!("{n}{}", char::from(b'A' + rng.random_range(0..6u8)))
            } else {
                n.to_string()
            };
            let (dept, lo, hi) = DEPARTMENTS[rng.random_range(0..DEPARTMENTS.len())];
            let price = (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp();
            let words: Vec<&str> = (0..3)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            let leaf = dept.rsplit('.').next().unwrap_or(dept);
            if !codes.insert(sku.clone()) {
                continue;
            }
            products.push(Product {
                product_id: sku_product_id(&sku),
                name: format!("{sku} {} {leaf}", words.join(" ")).to_uppercase(),
                category_id: category_id(dept),
                category_code: dept.to_string(),
                brand: SUPPLIERS[rng.random_range(0..SUPPLIERS.len())].to_string(),
                price: ((price * 100.0).round() / 100.0).max(0.01),
                currency: "GBP".to_string(),
                catalog: "retail".to_string(),
                release_date: None,
                genres: Vec::new(),
                tags: vec![format!("sku:{sku}")],
                updated_at: now_ms,
            });
        }
        Catalog {
            products,
            users: Catalog::synthetic_users(seed, n_users, now_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse_instant;
    use crate::replay::{GUEST_ID_BASE, SKU_ID_BASE};
    use proptest::prelude::*;

    fn at(s: &str) -> i64 {
        parse_instant(s, 0).unwrap()
    }

    #[test]
    fn the_online_retail_shop_is_closed_at_night_on_saturdays_and_over_christmas() {
        let h = StoreHours::online_retail();
        // 2026-11-05 is a Thursday, 2026-11-07 a Saturday.
        assert_eq!(weekday(at("2026-11-05").div_euclid(DAY_MS)), 3);
        assert!(h.is_open(at("2026-11-05T07:00:00Z")));
        assert!(h.is_open(at("2026-11-05T19:59:59Z")));
        assert!(!h.is_open(at("2026-11-05T20:00:00Z")));
        assert!(!h.is_open(at("2026-11-05T06:59:59Z")));
        assert!(!h.is_open(at("2026-11-07T12:00:00Z")), "Saturday");
        assert!(h.is_open(at("2026-11-08T12:00:00Z")), "Sunday");
        assert!(!h.is_open(at("2026-12-24T12:00:00Z")));
        assert!(!h.is_open(at("2027-01-01T12:00:00Z")));
        assert!(!h.is_open(at("2027-01-03T12:00:00Z")));
        assert!(h.is_open(at("2027-01-04T12:00:00Z")));
        assert_eq!(
            h.next_open(at("2026-11-06T20:30:00Z")),
            at("2026-11-08T07:00:00Z"),
            "Friday evening: Sunday morning"
        );
        assert_eq!(
            h.next_open(at("2026-12-23T21:00:00Z")),
            at("2027-01-04T07:00:00Z")
        );
        let t = at("2026-11-05T10:15:00Z");
        assert_eq!(h.next_open(t), t);
        assert_eq!(h.demand(at("2026-11-07T12:00:00Z")), 0.0);
    }

    #[test]
    fn demand_has_a_mean_of_one_and_its_curves_keep_their_ratios() {
        let h = StoreHours::parse("7-20", "sat", "none", true).unwrap();
        // Mean over a year, hour by hour: 1 (the closed hours count as 0).
        let start = at("2026-01-01");
        let n = 365 * 24;
        let mean: f64 = (0..n)
            .map(|k| h.demand(start + k * HOUR_MS + HOUR_MS / 2))
            .sum::<f64>()
            / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        // Thursday noon vs Sunday noon: the weekly curve; noon vs 8:00: the hourly one.
        // (in the flat top of the November peak, so the yearly curve is the same on both days)
        let thu = h.demand(at("2026-11-26T12:30:00Z"));
        let sun = h.demand(at("2026-11-29T12:30:00Z"));
        assert!((thu / sun - 1.25 / 0.65).abs() < 0.02, "{thu} / {sun}");
        let eight = h.demand(at("2026-11-26T08:30:00Z"));
        assert!((thu / eight - 4.6 / 1.6).abs() < 1e-9);
        // Mid-November vs mid-February, same weekday and hour: the holiday peak.
        let feb = h.demand(at("2026-02-12T12:30:00Z"));
        let nov = h.demand(at("2026-11-19T12:30:00Z"));
        assert!((2.3..2.7).contains(&(nov / feb)), "nov/feb {}", nov / feb);
        let flat = StoreHours::parse("7-20", "sat", "none", false).unwrap();
        assert_eq!(
            flat.demand(at("2026-11-05T12:30:00Z")),
            flat.demand(at("2026-02-08T08:30:00Z"))
        );
    }

    #[test]
    fn bad_store_hours_are_refused() {
        assert!(StoreHours::parse("7", "sat", "none", true).is_err());
        assert!(StoreHours::parse("7-25", "sat", "none", true).is_err());
        assert!(StoreHours::parse("7-20", "caturday", "none", true).is_err());
        assert!(StoreHours::parse("7-20", "sat", "13-01", true).is_err());
        assert_eq!(
            StoreHours::parse("7-20", "mon,tue,wed,thu,fri,sat,sun", "none", true),
            Err(HoursError::NeverOpen)
        );
        assert_eq!(
            StoreHours::parse("7-20", "none", "01-01..12-31", true),
            Err(HoursError::NeverOpen)
        );
        // Over midnight, and all day.
        let night = StoreHours::parse("22-6", "none", "none", true).unwrap();
        assert!(
            night.is_open(at("2026-11-05T23:00:00Z")) && night.is_open(at("2026-11-05T05:00:00Z"))
        );
        assert!(!night.is_open(at("2026-11-05T12:00:00Z")));
        assert!(StoreHours::parse("0-24", "none", "none", true)
            .unwrap()
            .is_open(at("2026-11-05T03:00:00Z")));
    }

    #[test]
    fn the_retail_catalog_has_sku_ids_in_their_range_priced_in_pounds() {
        let a = Catalog::retail(7, 500, 10, 0);
        assert_eq!(a.products, Catalog::retail(7, 500, 10, 0).products);
        let ids: std::collections::HashSet<i64> = a.products.iter().map(|p| p.product_id).collect();
        assert_eq!(ids.len(), 500);
        for p in &a.products {
            let sku = p.tags[0].strip_prefix("sku:").unwrap();
            assert_eq!(p.product_id, sku_product_id(sku), "replay's id of the SKU");
            assert!((SKU_ID_BASE..2 * SKU_ID_BASE).contains(&p.product_id));
            assert!(!(GUEST_ID_BASE..SKU_ID_BASE).contains(&p.product_id));
            assert!(p.price > 0.0 && p.currency == "GBP");
            assert!(p.name.starts_with(sku));
        }
        assert!(a
            .products
            .iter()
            .any(|p| p.tags[0].ends_with(|c: char| c.is_ascii_uppercase())));
    }

    proptest! {
        #[test]
        fn closed_instants_have_no_demand_and_next_open_is_the_first_open_hour(
            t in 1_700_000_000_000i64..1_900_000_000_000,
        ) {
            let h = StoreHours::online_retail();
            prop_assert_eq!(h.is_open(t), h.demand(t) > 0.0);
            let o = h.next_open(t);
            prop_assert!(o >= t && h.is_open(o));
            // Nothing open in between: the hour boundaries before it are closed.
            let mut b = (t.div_euclid(HOUR_MS) + 1) * HOUR_MS;
            while b < o {
                prop_assert!(!h.is_open(b));
                b += HOUR_MS;
            }
        }

        #[test]
        fn a_repeated_line_never_has_the_quantity_of_the_first(seed: u64, first in 1i32..50) {
            let mut rng = StdRng::seed_from_u64(seed);
            let q = quantity(&mut rng, Some(first));
            prop_assert!(q != first && q >= 1);
        }
    }
}
