//! Event-time windows: assignment, pane-based aggregation, watermarks and grace.
//!
//! Not wired to a binary yet (the windower service is issue 5); this is its pure core.
//!
//! - A [`WindowSpec`] is tumbling (`slide == size`) or hopping (`slide < size`, `size` a multiple of
//!   `slide`). Window starts are multiples of `slide` since the epoch; an event at `t` belongs to
//!   every window `[s, s + size)` with `s <= t < s + size` (`size / slide` windows).
//! - Aggregates are kept per *pane* (`[k * slide, (k + 1) * slide)`) and key, and a window's result is
//!   the merge of its `size / slide` panes at emit time. An event updates one pane whatever the
//!   slide, so a small slide costs merges at emit time, not per event.
//! - Sums are exact integers (money in micro-units, i128), so results do not depend on arrival
//!   order. The cleaner bounds price (at most 10^12, 10^6 by default) and quantity, so a line is at
//!   most 10^18 x (2^31 - 1) micro-units and an i128 sum holds 8 x 10^10 of them; the sums saturate
//!   rather than wrap or panic beyond that (property-tested below).
//! - The watermark is the highest event time seen minus the allowed lateness; a window is final once
//!   `watermark >= end + grace`. An event whose every window is already final is *too late* and is
//!   returned to the caller (for the late topic), never dropped silently.

use std::collections::{BTreeMap, HashSet};

use cartstream_events::types::EventType;

/// Size and slide of a window, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub size_ms: i64,
    pub slide_ms: i64,
}

impl WindowSpec {
    pub fn tumbling(size_ms: i64) -> Result<Self, String> {
        Self::hopping(size_ms, size_ms)
    }

    pub fn hopping(size_ms: i64, slide_ms: i64) -> Result<Self, String> {
        if slide_ms <= 0 || size_ms <= 0 {
            return Err(format!(
                "window size {size_ms} ms and slide {slide_ms} ms must be positive"
            ));
        }
        if size_ms % slide_ms != 0 {
            return Err(format!(
                "window size {size_ms} ms must be a multiple of the slide {slide_ms} ms"
            ));
        }
        Ok(WindowSpec { size_ms, slide_ms })
    }

    /// Panes per window.
    pub fn panes(&self) -> i64 {
        self.size_ms / self.slide_ms
    }

    pub fn pane_of(&self, t: i64) -> i64 {
        t.div_euclid(self.slide_ms)
    }

    /// Starts of the windows containing `t`, oldest first.
    pub fn windows_of(&self, t: i64) -> impl Iterator<Item = i64> + '_ {
        let last = self.pane_of(t) * self.slide_ms;
        let n = self.panes();
        (0..n).rev().map(move |k| last - k * self.slide_ms)
    }
}

/// Micro-units per currency unit: sums of prices stay exact integers.
pub const MICROS: f64 = 1_000_000.0;

/// A price in micro-units, rounded (never panics: NaN gives 0, beyond i128 saturates).
pub fn price_micros(price: f64) -> i128 {
    (price * MICROS).round() as i128
}

/// Price x quantity in micro-units, exact for every price the cleaner can accept.
pub fn line_micros(price: f64, quantity: i32) -> i128 {
    price_micros(price).saturating_mul(i128::from(quantity))
}

/// Aggregates of one key over one pane or window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agg {
    pub views: i64,
    pub carts: i64,
    pub removals: i64,
    pub purchases: i64,
    pub units: i64,
    /// Sum of price x quantity over purchases, in micro-units.
    pub revenue_micros: i128,
    /// Sum of unit prices over purchases, in micro-units (for the average price).
    pub price_micros: i128,
    pub users: HashSet<i64>,
}

impl Agg {
    pub fn add(&mut self, event_type: EventType, price: f64, quantity: i32, user_id: i64) {
        match event_type {
            EventType::View => self.views += 1,
            EventType::Cart => self.carts += 1,
            EventType::RemoveFromCart => self.removals += 1,
            EventType::Purchase => {
                self.purchases += 1;
                self.units = self.units.saturating_add(i64::from(quantity));
                self.revenue_micros = self
                    .revenue_micros
                    .saturating_add(line_micros(price, quantity));
                self.price_micros = self.price_micros.saturating_add(price_micros(price));
            }
        }
        self.users.insert(user_id);
    }

    pub fn merge(&mut self, other: &Agg) {
        self.views += other.views;
        self.carts += other.carts;
        self.removals += other.removals;
        self.purchases += other.purchases;
        self.units = self.units.saturating_add(other.units);
        self.revenue_micros = self.revenue_micros.saturating_add(other.revenue_micros);
        self.price_micros = self.price_micros.saturating_add(other.price_micros);
        self.users.extend(other.users.iter().copied());
    }

    pub fn revenue(&self) -> f64 {
        self.revenue_micros as f64 / MICROS
    }

    pub fn avg_price(&self) -> Option<f64> {
        (self.purchases > 0).then(|| self.price_micros as f64 / MICROS / self.purchases as f64)
    }

    pub fn conversion_rate(&self) -> Option<f64> {
        (self.views > 0).then(|| self.purchases as f64 / self.views as f64)
    }
}

/// One final window result.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed<K> {
    pub key: K,
    pub window_start: i64,
    pub agg: Agg,
}

/// Windows of one spec over keys `K`, with a watermark and a grace period.
#[derive(Debug)]
pub struct Windows<K: Ord + Clone> {
    spec: WindowSpec,
    grace_ms: i64,
    /// pane -> key -> aggregate
    panes: BTreeMap<i64, BTreeMap<K, Agg>>,
    max_time: i64,
    /// Windows with a start below this are final (emitted).
    next_open: i64,
}

impl<K: Ord + Clone> Windows<K> {
    pub fn new(spec: WindowSpec, grace_ms: i64) -> Self {
        Windows {
            spec,
            grace_ms: grace_ms.max(0),
            panes: BTreeMap::new(),
            max_time: i64::MIN,
            next_open: i64::MIN,
        }
    }

    pub fn watermark(&self) -> i64 {
        self.max_time
    }

    /// Open (pane, key) aggregates: a memory measure.
    pub fn open_aggregates(&self) -> usize {
        self.panes.values().map(BTreeMap::len).sum()
    }

    /// Adds an event; `Err(lateness_ms)` when every window it belongs to is already final.
    pub fn add(&mut self, key: K, t: i64, f: impl FnOnce(&mut Agg)) -> Result<(), i64> {
        let last_start = self.spec.pane_of(t) * self.spec.slide_ms;
        if last_start < self.next_open {
            // The newest window holding t closed at last_start + size + grace.
            return Err(self.max_time - (last_start + self.spec.size_ms));
        }
        f(self
            .panes
            .entry(self.spec.pane_of(t))
            .or_default()
            .entry(key)
            .or_default());
        self.max_time = self.max_time.max(t);
        Ok(())
    }

    /// Moves the watermark to at least `t` without an event (idle partitions, punctuation).
    pub fn advance_to(&mut self, t: i64) {
        self.max_time = self.max_time.max(t);
    }

    /// Emits every window that became final, oldest first, and forgets panes no open window needs.
    pub fn close(&mut self) -> Vec<Closed<K>> {
        let mut out = Vec::new();
        if self.max_time == i64::MIN {
            return out;
        }
        // Final: end + grace <= watermark, i.e. start <= watermark - grace - size.
        let last_final_start = (self.max_time - self.grace_ms - self.spec.size_ms)
            .div_euclid(self.spec.slide_ms)
            * self.spec.slide_ms;
        let Some((&first_pane, _)) = self.panes.first_key_value() else {
            self.next_open = self.next_open.max(last_final_start + self.spec.slide_ms);
            return out;
        };
        // The oldest window that holds data and is not emitted yet.
        let mut start =
            ((first_pane - (self.spec.panes() - 1)) * self.spec.slide_ms).max(self.next_open);
        while start <= last_final_start {
            let from = self.spec.pane_of(start);
            let mut merged: BTreeMap<K, Agg> = BTreeMap::new();
            for (_, keys) in self.panes.range(from..from + self.spec.panes()) {
                for (k, agg) in keys {
                    merged.entry(k.clone()).or_default().merge(agg);
                }
            }
            out.extend(merged.into_iter().map(|(key, agg)| Closed {
                key,
                window_start: start,
                agg,
            }));
            start += self.spec.slide_ms;
        }
        self.next_open = self.next_open.max(last_final_start + self.spec.slide_ms);
        // A pane is needed while some window containing it is open: keep panes >= next_open's pane.
        let keep_from = self.spec.pane_of(self.next_open);
        self.panes = self.panes.split_off(&keep_from);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn view(a: &mut Agg) {
        a.add(EventType::View, 0.0, 1, 1);
    }

    #[test]
    fn specs_are_checked_and_windows_assigned() {
        assert!(WindowSpec::hopping(600, 70).is_err());
        assert!(WindowSpec::tumbling(0).is_err());
        let h = WindowSpec::hopping(600, 60).unwrap();
        let w: Vec<_> = h.windows_of(125).collect();
        assert_eq!(w.len(), 10);
        assert_eq!((w[0], w[9]), (-420, 120));
        assert!(w.iter().all(|s| *s <= 125 && 125 < s + 600));
        let t = WindowSpec::tumbling(60).unwrap();
        assert_eq!(t.windows_of(-1).collect::<Vec<_>>(), vec![-60]);
    }

    #[test]
    fn tumbling_windows_close_after_grace_and_late_events_are_returned() {
        let mut w: Windows<&str> = Windows::new(WindowSpec::tumbling(60).unwrap(), 10);
        w.add("a", 5, view).unwrap();
        w.add("a", 59, view).unwrap();
        w.add("b", 61, view).unwrap();
        assert!(w.close().is_empty(), "watermark 61 < 60 + 10");
        w.add("a", 70, view).unwrap();
        let closed = w.close();
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].key, closed[0].window_start, closed[0].agg.views),
            ("a", 0, 2)
        );
        // Within grace of a closed window's successor: still accepted.
        w.add("a", 65, view).unwrap();
        // Its window [0, 60) is final: too late, with its lateness.
        assert_eq!(w.add("a", 30, view), Err(10));
        w.advance_to(130);
        let closed = w.close();
        let a = closed.iter().find(|c| c.key == "a").unwrap();
        assert_eq!((a.window_start, a.agg.views), (60, 2));
        assert_eq!(w.open_aggregates(), 0);
    }

    #[test]
    fn money_is_exact_and_rates_are_derived() {
        let mut a = Agg::default();
        a.add(EventType::View, 0.1, 1, 1);
        a.add(EventType::Purchase, 0.1, 3, 2);
        a.add(EventType::Purchase, 0.2, 1, 2);
        assert_eq!(a.revenue_micros, 500_000);
        assert_eq!(a.avg_price(), Some(0.15));
        assert_eq!(a.conversion_rate(), Some(2.0));
        assert_eq!(a.users.len(), 2);
    }

    /// The largest line the cleaner accepts with its default bounds.
    const MAX_PRICE: f64 = crate::clean::DEFAULT_MAX_PRICE;
    const MAX_QTY: i32 = crate::clean::DEFAULT_MAX_QUANTITY;

    #[test]
    fn a_million_maximal_purchases_sum_exactly() {
        // 10^6 lines of 10^16 micro-units: 10^22, a thousand times past i64::MAX (~9.2 x 10^18);
        // the i64 sums overflowed after 923 such lines.
        let mut a = Agg::default();
        for _ in 0..1_000_000 {
            a.add(EventType::Purchase, MAX_PRICE, MAX_QTY, 1);
        }
        assert_eq!(a.revenue_micros, 10_i128.pow(22));
        assert_eq!(a.price_micros, 10_i128.pow(18));
        assert_eq!(a.units, 10_000_000_000);
        assert_eq!(a.revenue(), 1e16);
        assert_eq!(a.avg_price(), Some(MAX_PRICE));
        // The widest bounds the cleaner allows (--max-price 1e12, any i32 quantity) stay exact too.
        let line = line_micros(crate::clean::MAX_PRICE_LIMIT, i32::MAX);
        assert_eq!(line, 10_i128.pow(18) * i128::from(i32::MAX));
        let mut b = Agg::default();
        for _ in 0..1_000 {
            b.add(
                EventType::Purchase,
                crate::clean::MAX_PRICE_LIMIT,
                i32::MAX,
                1,
            );
        }
        assert_eq!(b.revenue_micros, 1_000 * line);
        // Values no cleaner accepts neither wrap nor panic.
        let mut c = Agg::default();
        c.add(EventType::Purchase, f64::MAX, i32::MAX, 1);
        c.add(EventType::Purchase, f64::MAX, i32::MAX, 1);
        c.merge(&c.clone());
        assert_eq!(c.revenue_micros, i128::MAX);
        c.add(EventType::Purchase, f64::NAN, -5, 1);
        assert_eq!(line_micros(f64::NAN, 3), 0);
    }

    proptest! {
        /// Any number of purchases of any accepted price and quantity, added to panes in any
        /// grouping and merged in any order, sums exactly to the direct i128 sum: no overflow, no
        /// panic, no dependence on grouping.
        #[test]
        fn accepted_money_sums_are_exact(
            lines in proptest::collection::vec(
                (prop_oneof![Just(MAX_PRICE), 0.000_001..=MAX_PRICE], prop_oneof![Just(MAX_QTY), 1..=MAX_QTY]),
                1..400,
            ),
            repeat in 1u32..1_500,
            panes in 1usize..8,
        ) {
            let mut parts = vec![Agg::default(); panes];
            let mut expected: i128 = 0;
            let mut prices: i128 = 0;
            for r in 0..repeat {
                for (i, (p, q)) in lines.iter().enumerate() {
                    parts[(i + r as usize) % panes].add(EventType::Purchase, *p, *q, 1);
                    let pm = (p * MICROS).round() as i128;
                    expected += pm * i128::from(*q);
                    prices += pm;
                }
            }
            let mut all = Agg::default();
            for p in parts.iter().rev() {
                all.merge(p);
            }
            prop_assert_eq!(all.revenue_micros, expected);
            prop_assert_eq!(all.price_micros, prices);
            prop_assert_eq!(all.purchases, i64::from(repeat) * lines.len() as i64);
            prop_assert!(all.revenue_micros < i128::MAX / 1_000_000, "far from saturation");
        }
    }

    proptest! {
        /// Every on-time event lands in exactly the windows it belongs to, counts are conserved,
        /// and the result does not depend on the order of arrival within the grace period.
        #[test]
        fn hopping_results_match_a_direct_count_in_any_order(
            mut times in proptest::collection::vec(0i64..2_000, 1..200),
            slide in prop::sample::select(vec![10i64, 20, 50, 100]),
            panes in 1i64..6,
            seed in any::<u64>(),
        ) {
            let spec = WindowSpec::hopping(slide * panes, slide).unwrap();
            let grace = 5_000; // everything is on time
            let run = |ts: &[i64]| {
                let mut w: Windows<u8> = Windows::new(spec, grace);
                for t in ts {
                    w.add((t % 3) as u8, *t, |a| a.add(EventType::View, 0.0, 1, *t)).unwrap();
                }
                w.advance_to(100_000);
                w.close().into_iter().map(|c| ((c.window_start, c.key), c.agg.views)).collect::<BTreeMap<_, _>>()
            };
            let got = run(&times);
            // Direct count.
            let mut expect: BTreeMap<(i64, u8), i64> = BTreeMap::new();
            for t in &times {
                for s in spec.windows_of(*t) {
                    *expect.entry((s, (t % 3) as u8)).or_default() += 1;
                }
            }
            prop_assert_eq!(&got, &expect);
            let total: i64 = got.values().sum();
            prop_assert_eq!(total, times.len() as i64 * spec.panes());
            // Another arrival order gives the same result.
            let n = times.len();
            let mut x = seed;
            for i in (1..n).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                times.swap(i, (x >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(run(&times), got);
        }
    }
}
