//! Business KPIs as Prometheus metrics, fed by the windower's final tumbling windows, for the
//! "Business KPIs" dashboard (`grafana/dashboards/business-kpis.json`).
//!
//! The exact numbers live in `kpi.windows` (and the ScyllaDB table built from it); these metrics are
//! the live view of them with bounded label cardinality:
//!
//! | metric | labels | from |
//! |---|---|---|
//! | `cartstream_kpi_events_total` | `event_type` | `all` windows: views, carts, removals, purchases |
//! | `cartstream_kpi_units_total` | | `all` windows |
//! | `cartstream_kpi_revenue_total` | `currency` | `all` windows |
//! | `cartstream_kpi_distinct_users` | | latest `all` window |
//! | `cartstream_kpi_conversion_rate` | | latest `all` window (purchases / views) |
//! | `cartstream_kpi_window_end_seconds` | | event time of the latest final window |
//! | `cartstream_kpi_category_purchases_total`, `..._revenue_total` | `category` | `category` windows; at most `max_categories` values, then `other` |
//! | `cartstream_kpi_top_product_purchases` | `rank`, `product` | the `top_products` best sellers of the latest closed window |
//!
//! Only final windows whose slide equals their size count: hopping windows overlap, so summing
//! them would count every event several times.

use std::collections::{BTreeMap, HashSet};

use cartstream_events::types::{Dimension, KpiWindow};
use prometheus::{CounterVec, Gauge, GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

/// What the exporter keeps: the product ranking of the window being filled.
pub struct KpiMetrics {
    events: IntCounterVec,
    units: IntCounter,
    revenue: CounterVec,
    distinct_users: Gauge,
    conversion: Gauge,
    window_end: Gauge,
    category_purchases: IntCounterVec,
    category_revenue: CounterVec,
    top_products: GaugeVec,
    max_categories: usize,
    top_n: usize,
    categories: HashSet<String>,
    /// Latest window start seen for products, and its products by purchases.
    product_window: i64,
    products: BTreeMap<String, i64>,
}

impl KpiMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(
        registry: &Registry,
        max_categories: usize,
        top_n: usize,
    ) -> prometheus::Result<Self> {
        let m = Self {
            events: IntCounterVec::new(
                Opts::new(
                    "cartstream_kpi_events_total",
                    "Events in final tumbling windows, by type (event time).",
                ),
                &["event_type"],
            )?,
            units: IntCounter::new(
                "cartstream_kpi_units_total",
                "Units purchased in final tumbling windows.",
            )?,
            revenue: CounterVec::new(
                Opts::new(
                    "cartstream_kpi_revenue_total",
                    "Revenue (price x quantity of purchases) in final tumbling windows.",
                ),
                &["currency"],
            )?,
            distinct_users: Gauge::new(
                "cartstream_kpi_distinct_users",
                "Distinct users of the latest final window.",
            )?,
            conversion: Gauge::new(
                "cartstream_kpi_conversion_rate",
                "Purchases / views of the latest final window with views.",
            )?,
            window_end: Gauge::new(
                "cartstream_kpi_window_end_seconds",
                "End (event time, Unix seconds) of the latest final window.",
            )?,
            category_purchases: IntCounterVec::new(
                Opts::new(
                    "cartstream_kpi_category_purchases_total",
                    "Purchases per category in final tumbling windows (bounded; the rest is `other`).",
                ),
                &["category"],
            )?,
            category_revenue: CounterVec::new(
                Opts::new(
                    "cartstream_kpi_category_revenue_total",
                    "Revenue per category in final tumbling windows (bounded; the rest is `other`).",
                ),
                &["category"],
            )?,
            top_products: GaugeVec::new(
                Opts::new(
                    "cartstream_kpi_top_product_purchases",
                    "Best-selling products of the latest closed window, by rank (1 = best).",
                ),
                &["rank", "product"],
            )?,
            max_categories,
            top_n,
            categories: HashSet::new(),
            product_window: i64::MIN,
            products: BTreeMap::new(),
        };
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.units.clone()))?;
        registry.register(Box::new(m.revenue.clone()))?;
        registry.register(Box::new(m.distinct_users.clone()))?;
        registry.register(Box::new(m.conversion.clone()))?;
        registry.register(Box::new(m.window_end.clone()))?;
        registry.register(Box::new(m.category_purchases.clone()))?;
        registry.register(Box::new(m.category_revenue.clone()))?;
        registry.register(Box::new(m.top_products.clone()))?;
        Ok(m)
    }

    /// Takes one emitted window into account (early updates and hopping windows are ignored).
    pub fn observe(&mut self, w: &KpiWindow) {
        if !w.is_final || w.window_slide_ms != w.window_size_ms {
            return;
        }
        match w.dimension {
            Dimension::All => {
                for (t, n) in [
                    ("view", w.views),
                    ("cart", w.carts),
                    ("remove_from_cart", w.removals),
                    ("purchase", w.purchases),
                ] {
                    self.events.with_label_values(&[t]).inc_by(n.max(0) as u64);
                }
                self.units.inc_by(w.units.max(0) as u64);
                if w.revenue > 0.0 {
                    self.revenue
                        .with_label_values(&[w.currency.as_str()])
                        .inc_by(w.revenue);
                }
                self.distinct_users.set(w.distinct_users as f64);
                if let Some(c) = w.conversion_rate {
                    self.conversion.set(c);
                }
                let end = w.window_end as f64 / 1000.0;
                if end > self.window_end.get() {
                    self.window_end.set(end);
                }
            }
            Dimension::Category => {
                let label = if self.categories.contains(&w.dimension_value) {
                    w.dimension_value.as_str()
                } else if self.categories.len() < self.max_categories {
                    self.categories.insert(w.dimension_value.clone());
                    w.dimension_value.as_str()
                } else {
                    "other"
                };
                self.category_purchases
                    .with_label_values(&[label])
                    .inc_by(w.purchases.max(0) as u64);
                if w.revenue > 0.0 {
                    self.category_revenue
                        .with_label_values(&[label])
                        .inc_by(w.revenue);
                }
            }
            Dimension::Product => {
                if w.window_start > self.product_window {
                    // A newer window starts: publish the ranking of the one before.
                    self.publish_products();
                    self.product_window = w.window_start;
                    self.products.clear();
                }
                if w.window_start == self.product_window && w.purchases > 0 {
                    *self.products.entry(w.dimension_value.clone()).or_default() += w.purchases;
                }
            }
            Dimension::Brand | Dimension::EventType => {}
        }
    }

    /// Publishes the ranking of the window being filled (call when the windower is idle, so the
    /// latest window shows without waiting for the next one).
    pub fn flush(&mut self) {
        self.publish_products();
    }

    fn publish_products(&mut self) {
        if self.products.is_empty() {
            return;
        }
        self.top_products.reset();
        for (rank, (product, n)) in top(&self.products, self.top_n).into_iter().enumerate() {
            self.top_products
                .with_label_values(&[&(rank + 1).to_string(), product])
                .set(n as f64);
        }
    }
}

/// The `n` entries with the most purchases, ties by key (deterministic).
fn top(counts: &BTreeMap<String, i64>, n: usize) -> Vec<(&str, i64)> {
    let mut v: Vec<(&str, i64)> = counts.iter().map(|(k, c)| (k.as_str(), *c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn window(dim: Dimension, value: &str, start: i64, purchases: i64, revenue: f64) -> KpiWindow {
        KpiWindow {
            window_start: start,
            window_end: start + 60_000,
            window_size_ms: 60_000,
            window_slide_ms: 60_000,
            dimension: dim,
            dimension_value: value.to_string(),
            views: 10,
            carts: 4,
            removals: 1,
            purchases,
            units: purchases * 2,
            revenue,
            currency: "USD".into(),
            avg_price: None,
            conversion_rate: Some(purchases as f64 / 10.0),
            distinct_users: 7,
            is_final: true,
            emitted_at: 0,
        }
    }

    fn value(reg: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let families = reg.gather();
        let family = families.iter().find(|f| f.name() == name)?;
        let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
        family
            .get_metric()
            .iter()
            .find(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| {
                if counter {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                }
            })
    }

    #[test]
    fn totals_count_final_tumbling_windows_only() {
        let reg = Registry::new();
        let mut k = KpiMetrics::register(&reg, 10, 3).unwrap();
        k.observe(&window(Dimension::All, "all", 0, 3, 30.0));
        k.observe(&window(Dimension::All, "all", 60_000, 2, 20.5));
        let mut early = window(Dimension::All, "all", 120_000, 5, 50.0);
        early.is_final = false;
        k.observe(&early);
        let mut hopping = window(Dimension::All, "all", 120_000, 5, 50.0);
        hopping.window_size_ms = 600_000;
        k.observe(&hopping);
        let ev = |t| value(&reg, "cartstream_kpi_events_total", &[("event_type", t)]);
        assert_eq!(ev("purchase"), Some(5.0));
        assert_eq!(ev("view"), Some(20.0));
        assert_eq!(ev("remove_from_cart"), Some(2.0));
        assert_eq!(value(&reg, "cartstream_kpi_units_total", &[]), Some(10.0));
        assert_eq!(
            value(&reg, "cartstream_kpi_revenue_total", &[("currency", "USD")]),
            Some(50.5)
        );
        assert_eq!(
            value(&reg, "cartstream_kpi_conversion_rate", &[]),
            Some(0.2)
        );
        assert_eq!(
            value(&reg, "cartstream_kpi_window_end_seconds", &[]),
            Some(120.0)
        );
    }

    #[test]
    fn categories_beyond_the_cap_fold_into_other() {
        let reg = Registry::new();
        let mut k = KpiMetrics::register(&reg, 2, 3).unwrap();
        for (c, p) in [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("a", 10)] {
            k.observe(&window(Dimension::Category, c, 0, p, p as f64));
        }
        let cat = |c| {
            value(
                &reg,
                "cartstream_kpi_category_purchases_total",
                &[("category", c)],
            )
        };
        assert_eq!(cat("a"), Some(11.0));
        assert_eq!(cat("b"), Some(2.0));
        assert_eq!(cat("other"), Some(7.0));
        assert_eq!(cat("c"), None);
    }

    #[test]
    fn top_products_of_the_latest_closed_window_replace_the_previous_ranking() {
        let reg = Registry::new();
        let mut k = KpiMetrics::register(&reg, 10, 2).unwrap();
        for (p, n) in [("1", 5), ("2", 9), ("3", 7)] {
            k.observe(&window(Dimension::Product, p, 0, n, 0.0));
        }
        // Nothing is published while the window is being filled...
        assert_eq!(
            value(
                &reg,
                "cartstream_kpi_top_product_purchases",
                &[("rank", "1")]
            ),
            None
        );
        // ...the next window publishes it: top 2 by purchases.
        k.observe(&window(Dimension::Product, "4", 60_000, 1, 0.0));
        let top = |r, p| {
            value(
                &reg,
                "cartstream_kpi_top_product_purchases",
                &[("rank", r), ("product", p)],
            )
        };
        assert_eq!(top("1", "2"), Some(9.0));
        assert_eq!(top("2", "3"), Some(7.0));
        assert_eq!(top("3", "1"), None);
        // A flush publishes the window being filled and drops the old ranking.
        k.flush();
        assert_eq!(top("1", "4"), Some(1.0));
        assert_eq!(top("1", "2"), None);
    }
}
