//! Ground truth: the exact KPIs a correct pipeline must compute from what was sent.
//!
//! The producer feeds every record it hands to Kafka into a [`GroundTruth`], in send order, and
//! writes it as JSON at the end (`--ground-truth PATH`). The definitions, which end-to-end tests
//! rely on:
//!
//! - A record is **rejected** when a cleaner must refuse it: it does not decode (`bad_magic`,
//!   `unknown_schema_id`), or it breaks a rule of the cleaner, checked in this order, the first
//!   failure naming it: `missing_event_id` (blank), `missing_user_session` (null or blank),
//!   `unknown_event_type` (not view/cart/remove_from_cart/purchase, any case),
//!   `invalid_event_time` (not a timestamp), `future_event_time` (more than
//!   [`MAX_FUTURE_MS`] after `source.sent_at`), `invalid_price` (not finite and > 0),
//!   `invalid_quantity` (< 1), `invalid_id` (`product_id` or `user_id` ≤ 0), `invalid_currency`
//!   (not three letters).
//! - A valid record whose `event_id` was already counted is a **duplicate**: counted once, the
//!   first copy sent wins. Its distance is how far the stream's event time (the latest counted
//!   event time when it was sent) had moved past the original's event time.
//! - Every other record is a counted **event**. All KPIs are over counted events only.
//! - An event's **minute** is its event time (UTC) truncated to the minute. Its category is
//!   `category_code` trimmed and lower-cased, `unknown` when null or blank (as the cleaner
//!   normalises it).
//! - **Revenue** is `price × quantity` of purchase events, summed per currency in integer cents
//!   (prices rounded to cents first), so it is exact; `units` is the sum of their quantities.
//! - **Sessions** are the distinct `user_session` values of counted events; a session is
//!   **converted** when it has at least one counted purchase; the conversion rate is
//!   converted / sessions.
//! - An event's **lateness** is how far the stream's event time had moved past its own when it
//!   was sent (0 when it was the newest so far). Across partitions a consumer sees another order,
//!   so lateness is about the send order, the order of one partition at best.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use cartstream_events::types::{EventType, RawEvent};
use serde::Serialize;

use crate::clock::{format_rfc3339, parse_event_time, MINUTE_MS};

/// How far an event may lie in the future of its `sent_at` (the cleaner's default).
pub const MAX_FUTURE_MS: i64 = 3_600_000;

/// The cleaner's verdict on a decoded raw event: `Ok(event time)` or the rejection code.
pub fn validate(ev: &RawEvent) -> Result<(i64, EventType), &'static str> {
    if ev.event_id.trim().is_empty() {
        return Err("missing_event_id");
    }
    if ev
        .user_session
        .as_deref()
        .map(str::trim)
        .unwrap_or("")
        .is_empty()
    {
        return Err("missing_user_session");
    }
    let kind = EventType::parse(&ev.event_type).ok_or("unknown_event_type")?;
    let t = parse_event_time(&ev.event_time).ok_or("invalid_event_time")?;
    if t > ev.source.sent_at.saturating_add(MAX_FUTURE_MS) {
        return Err("future_event_time");
    }
    if !(ev.price.is_finite() && ev.price > 0.0) {
        return Err("invalid_price");
    }
    if ev.quantity < 1 {
        return Err("invalid_quantity");
    }
    if ev.product_id <= 0 || ev.user_id <= 0 {
        return Err("invalid_id");
    }
    let c = ev.currency.trim();
    if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err("invalid_currency");
    }
    Ok((t, kind))
}

/// Counts of one group (a minute, a category, all).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub views: u64,
    pub carts: u64,
    pub removals: u64,
    pub purchases: u64,
    /// Units purchased.
    pub units: u64,
    /// Purchase revenue per currency, in cents.
    pub revenue_cents: BTreeMap<String, i64>,
}

impl Counts {
    fn add(&mut self, kind: EventType, ev: &RawEvent) {
        match kind {
            EventType::View => self.views += 1,
            EventType::Cart => self.carts += 1,
            EventType::RemoveFromCart => self.removals += 1,
            EventType::Purchase => {
                self.purchases += 1;
                self.units += ev.quantity as u64;
                let cents = (ev.price * 100.0).round() as i64 * i64::from(ev.quantity);
                let cur = ev.currency.trim().to_ascii_uppercase();
                *self.revenue_cents.entry(cur).or_default() += cents;
            }
        }
    }

    pub fn events(&self) -> u64 {
        self.views + self.carts + self.removals + self.purchases
    }
}

/// Lateness or distance buckets, in event time.
const BUCKETS: [(&str, i64); 6] = [
    ("0", 0),
    ("le_1s", 1_000),
    ("le_1m", 60_000),
    ("le_5m", 300_000),
    ("le_15m", 900_000),
    ("le_1h", 3_600_000),
];

fn bucket(ms: i64) -> &'static str {
    BUCKETS
        .iter()
        .find(|(_, b)| ms <= *b)
        .map_or("gt_1h", |(n, _)| n)
}

fn key128(s: &str) -> u128 {
    if let Ok(u) = uuid::Uuid::parse_str(s) {
        return u.as_u128();
    }
    // Not a uuid: two independent 64-bit hashes (fixed keys, so stable within the process).
    let mut a = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (s, 0x5eed_u32).hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// What the injector or the replay did on purpose, reported next to what was observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InjectedReport {
    pub duplicates: u64,
    pub duplicates_far: u64,
    pub late: u64,
    pub malformed: BTreeMap<String, u64>,
}

/// The accumulated ground truth. See the module docs for what counts.
#[derive(Debug, Default)]
pub struct GroundTruth {
    records: u64,
    /// Event time of each counted event id (for duplicate distances).
    seen: HashMap<u128, i64>,
    sessions: HashMap<u128, bool>,
    rejected: BTreeMap<&'static str, u64>,
    duplicates: u64,
    duplicate_distance: BTreeMap<&'static str, u64>,
    lateness: BTreeMap<&'static str, u64>,
    max_lateness_ms: i64,
    stream_ms: Option<i64>,
    min_ms: Option<i64>,
    totals: Counts,
    per_minute: BTreeMap<i64, Counts>,
    per_category: BTreeMap<String, Counts>,
    per_product_purchases: HashMap<i64, u64>,
    price_changes: u64,
    /// Products whose purchases are also counted per minute (the trend target).
    watched: std::collections::HashSet<i64>,
    watched_per_minute: BTreeMap<i64, u64>,
    /// Extra sections (source, injected, trend, replay) set by the producer.
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl GroundTruth {
    pub fn new() -> Self {
        Self::default()
    }

    /// A record that could not be decoded, with the decoder's error code.
    pub fn record_undecodable(&mut self, code: &'static str) {
        self.records += 1;
        *self.rejected.entry(code).or_default() += 1;
    }

    /// Also count purchases of these products per minute (`watched_purchases_per_minute`).
    pub fn watch(&mut self, product_ids: impl IntoIterator<Item = i64>) {
        self.watched.extend(product_ids);
    }

    pub fn record_price_change(&mut self) {
        self.price_changes += 1;
    }

    /// A decoded record, in send order.
    pub fn record(&mut self, ev: &RawEvent) {
        self.records += 1;
        let (t, kind) = match validate(ev) {
            Ok(v) => v,
            Err(code) => {
                *self.rejected.entry(code).or_default() += 1;
                return;
            }
        };
        let id = key128(ev.event_id.trim());
        if let Some(original) = self.seen.get(&id).copied() {
            self.duplicates += 1;
            let distance = self.stream_ms.map_or(0, |s| (s - original).max(0));
            *self.duplicate_distance.entry(bucket(distance)).or_default() += 1;
            return;
        }
        self.seen.insert(id, t);
        let lateness = self.stream_ms.map_or(0, |s| (s - t).max(0));
        self.max_lateness_ms = self.max_lateness_ms.max(lateness);
        *self.lateness.entry(bucket(lateness)).or_default() += 1;
        self.stream_ms = Some(self.stream_ms.map_or(t, |s| s.max(t)));
        self.min_ms = Some(self.min_ms.map_or(t, |s| s.min(t)));

        self.totals.add(kind, ev);
        self.per_minute
            .entry(t.div_euclid(MINUTE_MS) * MINUTE_MS)
            .or_default()
            .add(kind, ev);
        let cat = match ev.category_code.as_deref().map(str::trim) {
            Some(c) if !c.is_empty() => c.to_lowercase(),
            _ => "unknown".to_string(),
        };
        self.per_category.entry(cat).or_default().add(kind, ev);
        let session = key128(ev.user_session.as_deref().unwrap_or("").trim());
        let converted = self.sessions.entry(session).or_default();
        if kind == EventType::Purchase {
            *converted = true;
            *self.per_product_purchases.entry(ev.product_id).or_default() += 1;
            if self.watched.contains(&ev.product_id) {
                *self
                    .watched_per_minute
                    .entry(t.div_euclid(MINUTE_MS) * MINUTE_MS)
                    .or_default() += 1;
            }
        }
    }

    /// Counted events so far.
    pub fn events(&self) -> u64 {
        self.totals.events()
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn rejected(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejected
    }

    pub fn totals(&self) -> &Counts {
        &self.totals
    }

    pub fn per_minute(&self) -> &BTreeMap<i64, Counts> {
        &self.per_minute
    }

    pub fn per_category(&self) -> &BTreeMap<String, Counts> {
        &self.per_category
    }

    pub fn purchases_of(&self, product_id: i64) -> u64 {
        self.per_product_purchases
            .get(&product_id)
            .copied()
            .unwrap_or(0)
    }

    /// (sessions, converted sessions).
    pub fn sessions(&self) -> (u64, u64) {
        let converted = self.sessions.values().filter(|c| **c).count() as u64;
        (self.sessions.len() as u64, converted)
    }

    /// The JSON document (format version 1).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let counts = |c: &Counts| {
            let mut v = serde_json::to_value(c).unwrap_or_default();
            let revenue: BTreeMap<&String, f64> = c
                .revenue_cents
                .iter()
                .map(|(k, cents)| (k, *cents as f64 / 100.0))
                .collect();
            v["revenue"] = json!(revenue);
            v["events"] = json!(c.events());
            v
        };
        let (sessions, converted) = self.sessions();
        let per_minute: Vec<_> = self
            .per_minute
            .iter()
            .map(|(m, c)| {
                let mut v = counts(c);
                v["minute"] = json!(m);
                v["minute_utc"] = json!(format_rfc3339(*m));
                v
            })
            .collect();
        let per_category: Vec<_> = self
            .per_category
            .iter()
            .map(|(k, c)| {
                let mut v = counts(c);
                v["category_code"] = json!(k);
                v
            })
            .collect();
        let mut doc = json!({
            "version": 1,
            "definitions": "events: distinct valid records (duplicates counted once, rejected records excluded); \
                minute: event time truncated to the UTC minute; revenue: price x quantity of purchases per \
                currency, exact in cents; sessions: distinct user_session of counted events, converted when \
                one has a purchase; rejected: by the cleaner's rejection code (or the decoder's for records \
                that do not decode); lateness and duplicate distance: event time the stream had moved past \
                the event, in send order. See producer/README.md.",
            "records_sent": self.records,
            "events": self.totals.events(),
            "duplicates": self.duplicates,
            "duplicate_distance": self.duplicate_distance,
            "rejected": self.rejected,
            "rejected_total": self.rejected.values().sum::<u64>(),
            "lateness": self.lateness,
            "max_lateness_ms": self.max_lateness_ms,
            "event_time_min": self.min_ms,
            "event_time_max": self.stream_ms,
            "totals": counts(&self.totals),
            "sessions": {
                "total": sessions,
                "converted": converted,
                "conversion_rate": if sessions > 0 { converted as f64 / sessions as f64 } else { 0.0 },
            },
            "per_minute": per_minute,
            "per_category": per_category,
            "price_changes": self.price_changes,
        });
        if !self.watched.is_empty() {
            let mut ids: Vec<_> = self.watched.iter().copied().collect();
            ids.sort_unstable();
            doc["watched_product_ids"] = json!(ids);
            doc["watched_purchases_per_minute"] = json!(self
                .watched_per_minute
                .iter()
                .map(
                    |(m, n)| json!({"minute": m, "minute_utc": format_rfc3339(*m), "purchases": n})
                )
                .collect::<Vec<_>>());
        }
        for (k, v) in &self.extra {
            doc[k] = v.clone();
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartstream_events::types::SourceMeta;

    fn ev(id: &str, t: &str, kind: &str, price: f64, qty: i32, session: &str) -> RawEvent {
        RawEvent {
            event_id: id.into(),
            event_time: t.into(),
            event_type: kind.into(),
            product_id: 7,
            category_id: 1,
            category_code: Some(" Kids.Toys ".into()),
            brand: None,
            price,
            currency: "usd".into(),
            quantity: qty,
            user_id: 3,
            user_session: Some(session.into()),
            channel: None,
            source: SourceMeta {
                system: "t".into(),
                producer_id: "t".into(),
                file: None,
                line: None,
                sent_at: 1_600_000_000_000,
            },
        }
    }

    #[test]
    fn counts_dedups_rejects_and_revenue_are_exact() {
        let mut g = GroundTruth::new();
        let t1 = "2020-09-13 12:26:40 UTC"; // 1_600_000_000_000
        let t2 = "2020-09-13 12:27:41 UTC";
        g.record(&ev("a", t1, "view", 10.0, 1, "s1"));
        g.record(&ev("b", t2, "purchase", 0.1, 3, "s1"));
        g.record(&ev("b", t2, "purchase", 0.1, 3, "s1")); // duplicate
        g.record(&ev("c", t1, "cart", 0.0, 1, "s2")); // zero price
        g.record(&ev("", t1, "view", 1.0, 1, "s2"));
        g.record(&ev("d", t1, "click", 1.0, 1, "s2"));
        g.record(&ev("e", "2021-09-13 12:26:40 UTC", "view", 1.0, 1, "s2"));
        g.record(&ev("f", t1, "view", 1.0, 1, "  "));
        g.record(&ev("g", t1, "view", 0.2, 1, "s3")); // late: stream is at t2
        g.record_undecodable("bad_magic");
        assert_eq!(g.events(), 3);
        assert_eq!(g.duplicates(), 1);
        assert_eq!(g.totals().revenue_cents["USD"], 30);
        assert_eq!(g.totals().units, 3);
        let rej: Vec<_> = g.rejected().iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            rej,
            vec![
                ("bad_magic", 1),
                ("future_event_time", 1),
                ("invalid_price", 1),
                ("missing_event_id", 1),
                ("missing_user_session", 1),
                ("unknown_event_type", 1),
            ]
        );
        assert_eq!(g.sessions(), (2, 1));
        assert_eq!(g.per_minute().len(), 2);
        assert_eq!(g.per_category()["kids.toys"].events(), 3);
        let j = g.to_json();
        assert_eq!(j["records_sent"], 10);
        assert_eq!(j["totals"]["revenue"]["USD"], 0.3);
        assert_eq!(j["lateness"]["le_5m"], 1);
        assert_eq!(j["max_lateness_ms"], 61_000);
        assert_eq!(j["sessions"]["conversion_rate"], 0.5);
        assert_eq!(j["per_minute"][0]["minute_utc"], "2020-09-13T12:26:00.000Z");
    }

    #[test]
    fn validation_follows_the_cleaner_order() {
        let mut e = ev("", "nope", "click", -1.0, 0, "");
        assert_eq!(validate(&e), Err("missing_event_id"));
        e.event_id = "x".into();
        assert_eq!(validate(&e), Err("missing_user_session"));
        e.user_session = Some("s".into());
        assert_eq!(validate(&e), Err("unknown_event_type"));
        e.event_type = " VIEW ".into();
        assert_eq!(validate(&e), Err("invalid_event_time"));
        e.event_time = "2020-09-13T12:26:40Z".into();
        assert_eq!(validate(&e), Err("invalid_price"));
        e.price = 1.0;
        assert_eq!(validate(&e), Err("invalid_quantity"));
        e.quantity = 1;
        e.user_id = 0;
        assert_eq!(validate(&e), Err("invalid_id"));
        e.user_id = 1;
        e.currency = "US".into();
        assert_eq!(validate(&e), Err("invalid_currency"));
        e.currency = "eur".into();
        assert!(validate(&e).is_ok());
    }
}
