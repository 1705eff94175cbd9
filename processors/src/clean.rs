//! Validation and normalisation of raw events.
//!
//! Rules, in the order they are checked (the first failure is the reason given):
//!
//! | code | rule |
//! |---|---|
//! | `missing_event_id` | `event_id` is present and not blank |
//! | `missing_user_session` | `user_session` is present and not blank |
//! | `unknown_event_type` | `event_type` is view, cart, remove_from_cart or purchase (any case) |
//! | `invalid_event_time` | `event_time` parses: `YYYY-MM-DD HH:MM:SS[.fff] UTC`, RFC 3339 with an offset, `YYYY-MM-DD HH:MM:SS` (taken as UTC), or epoch milliseconds |
//! | `future_event_time` | `event_time` is at most [`Rules::max_future_ms`] after the producer's `sent_at` (never the processor's clock: a replay judges the same) |
//! | `invalid_price` | `price` is finite and > 0 |
//! | `invalid_quantity` | `quantity` >= 1 |
//! | `invalid_id` | `product_id` and `user_id` are > 0 |
//! | `invalid_currency` | `currency` is three ASCII letters (upper-cased) |
//! | `out_of_range` | `price` <= [`Rules::max_price`] (default 1,000,000 in the event's currency) and `quantity` <= [`Rules::max_quantity`] (default 10,000) |
//!
//! The bounds come last, so a record that breaks another rule keeps that rule's code. They keep
//! every accepted `price x quantity` (at most 10^16 micro-units with the defaults) far inside the
//! integer sums of the windower and the sessionizer (i128 micro-units, see `window::Agg`): prices
//! in the REES46 data set stay in the thousands and an order line of 10,000 units is
//! already a wholesale load, so a value above them is a fault (a price in cents sent as units, a
//! quantity field holding an id), not a purchase.
//!
//! Normalisation: times become UTC epoch milliseconds; blank or missing `brand` and
//! `category_code` become `unknown`; both are trimmed and lower-cased.

use cartstream_events::types::{CleanEvent, EventType, RawEvent};
use chrono::{DateTime, NaiveDateTime};

/// Why a raw event was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable, machine-readable reason (dead-letter `error_code`, metric label).
    pub code: &'static str,
    pub message: String,
}

fn reject(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        code,
        message: message.into(),
    }
}

/// Every code [`clean`] can return, for metrics and docs.
pub const REJECTION_CODES: &[&str] = &[
    "missing_event_id",
    "missing_user_session",
    "unknown_event_type",
    "invalid_event_time",
    "future_event_time",
    "invalid_price",
    "invalid_quantity",
    "invalid_id",
    "invalid_currency",
    "out_of_range",
];

/// Default upper bound of `price`, in the event's currency.
pub const DEFAULT_MAX_PRICE: f64 = 1_000_000.0;
/// Default upper bound of `quantity`.
pub const DEFAULT_MAX_QUANTITY: i32 = 10_000;
/// Highest `--max-price` accepted: its micro-units (10^18) still fit an i64, so a line
/// (`price x quantity`, at most 10^18 x (2^31 - 1) micro-units) fits an i128 with room for
/// 8 x 10^10 of them in one sum.
pub const MAX_PRICE_LIMIT: f64 = 1e12;

/// Tunable limits of the rules.
#[derive(Debug, Clone)]
pub struct Rules {
    /// How far an event may lie in the future of the moment its producer sent it.
    pub max_future_ms: i64,
    /// Highest accepted `price` (inclusive), in the event's currency.
    pub max_price: f64,
    /// Highest accepted `quantity` (inclusive).
    pub max_quantity: i32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_future_ms: 3_600_000,
            max_price: DEFAULT_MAX_PRICE,
            max_quantity: DEFAULT_MAX_QUANTITY,
        }
    }
}

impl Rules {
    /// Checks the bounds given on the command line: `max_price` finite, > 0 and at most
    /// [`MAX_PRICE_LIMIT`]; `max_quantity` >= 1.
    pub fn check(&self) -> Result<(), String> {
        if !(self.max_price.is_finite()
            && self.max_price > 0.0
            && self.max_price <= MAX_PRICE_LIMIT)
        {
            return Err(format!(
                "--max-price {} must be > 0 and at most {MAX_PRICE_LIMIT}",
                self.max_price
            ));
        }
        if self.max_quantity < 1 {
            return Err(format!(
                "--max-quantity {} must be at least 1",
                self.max_quantity
            ));
        }
        Ok(())
    }
}

/// The text `unknown`, used for missing categorical values.
pub const UNKNOWN: &str = "unknown";

fn categorical(v: Option<&str>) -> String {
    match v.map(str::trim) {
        Some(s) if !s.is_empty() => s.to_lowercase(),
        _ => UNKNOWN.to_string(),
    }
}

/// Parses the accepted event time formats to UTC epoch milliseconds.
pub fn parse_event_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    let naive = s.strip_suffix(" UTC").unwrap_or(s);
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(naive, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

/// Validates and normalises one raw event.
pub fn clean(raw: &RawEvent, rules: &Rules) -> Result<CleanEvent, Rejection> {
    let event_id = raw.event_id.trim();
    if event_id.is_empty() {
        return Err(reject("missing_event_id", "event_id is empty"));
    }
    let session = raw.user_session.as_deref().map(str::trim).unwrap_or("");
    if session.is_empty() {
        return Err(reject("missing_user_session", "user_session is missing"));
    }
    let event_type = EventType::parse(&raw.event_type).ok_or_else(|| {
        reject(
            "unknown_event_type",
            format!(
                "event_type {:?} is not one of view, cart, remove_from_cart, purchase",
                truncate(&raw.event_type)
            ),
        )
    })?;
    let event_time = parse_event_time(&raw.event_time).ok_or_else(|| {
        reject(
            "invalid_event_time",
            format!(
                "event_time {:?} is not a timestamp",
                truncate(&raw.event_time)
            ),
        )
    })?;
    if event_time > raw.source.sent_at.saturating_add(rules.max_future_ms) {
        return Err(reject(
            "future_event_time",
            format!(
                "event_time is {} s after the event was sent (limit {} s)",
                (event_time - raw.source.sent_at) / 1000,
                rules.max_future_ms / 1000
            ),
        ));
    }
    if !(raw.price.is_finite() && raw.price > 0.0) {
        return Err(reject(
            "invalid_price",
            format!("price {} is not positive", raw.price),
        ));
    }
    if raw.quantity < 1 {
        return Err(reject(
            "invalid_quantity",
            format!("quantity {} is below 1", raw.quantity),
        ));
    }
    if raw.product_id <= 0 || raw.user_id <= 0 {
        return Err(reject(
            "invalid_id",
            format!(
                "product_id {} / user_id {} must be positive",
                raw.product_id, raw.user_id
            ),
        ));
    }
    let currency = raw.currency.trim();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(reject(
            "invalid_currency",
            format!("currency {:?} is not an ISO 4217 code", truncate(currency)),
        ));
    }
    if raw.price > rules.max_price {
        return Err(reject(
            "out_of_range",
            format!("price {} is above the limit {}", raw.price, rules.max_price),
        ));
    }
    if raw.quantity > rules.max_quantity {
        return Err(reject(
            "out_of_range",
            format!(
                "quantity {} is above the limit {}",
                raw.quantity, rules.max_quantity
            ),
        ));
    }
    Ok(CleanEvent {
        event_id: event_id.to_string(),
        event_time,
        event_type,
        product_id: raw.product_id,
        category_id: raw.category_id,
        category_code: categorical(raw.category_code.as_deref()),
        brand: categorical(raw.brand.as_deref()),
        price: raw.price,
        currency: currency.to_ascii_uppercase(),
        quantity: raw.quantity,
        user_id: raw.user_id,
        user_session: session.to_string(),
        channel: raw.channel.clone(),
        source_system: raw.source.system.clone(),
    })
}

/// Keeps user-supplied text in messages short.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartstream_events::types::SourceMeta;
    use proptest::prelude::*;

    fn raw() -> RawEvent {
        RawEvent {
            event_id: " e-1 ".into(),
            event_time: "2019-10-01 00:00:04 UTC".into(),
            event_type: "Purchase".into(),
            product_id: 1,
            category_id: 2,
            category_code: Some("  Electronics.Smartphone ".into()),
            brand: Some("".into()),
            price: 10.5,
            currency: "usd".into(),
            quantity: 2,
            user_id: 3,
            user_session: Some("s".into()),
            channel: None,
            source: SourceMeta {
                system: "replay".into(),
                producer_id: "p".into(),
                file: None,
                line: None,
                sent_at: 1_569_888_004_000,
            },
        }
    }

    #[test]
    fn a_good_event_is_normalised() {
        let c = clean(&raw(), &Rules::default()).unwrap();
        assert_eq!(c.event_id, "e-1");
        assert_eq!(c.event_time, 1_569_888_004_000);
        assert_eq!(c.event_type, EventType::Purchase);
        assert_eq!(c.category_code, "electronics.smartphone");
        assert_eq!(c.brand, UNKNOWN);
        assert_eq!(c.currency, "USD");
        assert_eq!(c.source_system, "replay");
    }

    #[test]
    fn every_rule_has_its_code() {
        type Mutation = Box<dyn Fn(&mut RawEvent)>;
        let r = Rules::default();
        let cases: Vec<(&str, Mutation)> = vec![
            ("missing_event_id", Box::new(|e| e.event_id = "  ".into())),
            ("missing_user_session", Box::new(|e| e.user_session = None)),
            (
                "missing_user_session",
                Box::new(|e| e.user_session = Some(" ".into())),
            ),
            (
                "unknown_event_type",
                Box::new(|e| e.event_type = "wishlist".into()),
            ),
            (
                "invalid_event_time",
                Box::new(|e| e.event_time = "yesterday".into()),
            ),
            ("invalid_event_time", Box::new(|e| e.event_time = "".into())),
            (
                "future_event_time",
                Box::new(|e| e.event_time = "2030-01-01T00:00:00Z".into()),
            ),
            ("invalid_price", Box::new(|e| e.price = 0.0)),
            ("invalid_price", Box::new(|e| e.price = -3.0)),
            ("invalid_price", Box::new(|e| e.price = f64::NAN)),
            ("invalid_price", Box::new(|e| e.price = f64::INFINITY)),
            ("invalid_quantity", Box::new(|e| e.quantity = 0)),
            ("invalid_id", Box::new(|e| e.product_id = 0)),
            ("invalid_id", Box::new(|e| e.user_id = -1)),
            (
                "invalid_currency",
                Box::new(|e| e.currency = "dollars".into()),
            ),
            ("invalid_currency", Box::new(|e| e.currency = "U$D".into())),
            ("out_of_range", Box::new(|e| e.price = 1_000_000.01)),
            ("out_of_range", Box::new(|e| e.price = f64::MAX)),
            ("out_of_range", Box::new(|e| e.quantity = 10_001)),
            ("out_of_range", Box::new(|e| e.quantity = i32::MAX)),
            // The bounds come last: another broken rule keeps its own code.
            (
                "invalid_currency",
                Box::new(|e| {
                    e.price = 5e6;
                    e.currency = "".into()
                }),
            ),
        ];
        for (code, mutate) in cases {
            let mut e = raw();
            mutate(&mut e);
            let got = clean(&e, &r).unwrap_err();
            assert_eq!(got.code, code, "{e:?}");
            assert!(REJECTION_CODES.contains(&got.code));
            assert!(!got.message.is_empty());
        }
    }

    #[test]
    fn the_bounds_are_inclusive_and_configurable() {
        let r = Rules::default();
        let mut e = raw();
        e.price = DEFAULT_MAX_PRICE;
        e.quantity = DEFAULT_MAX_QUANTITY;
        assert!(clean(&e, &r).is_ok(), "the limits themselves are accepted");
        let tight = Rules {
            max_price: 10.0,
            max_quantity: 1,
            ..Rules::default()
        };
        e.price = 10.0;
        e.quantity = 1;
        assert!(clean(&e, &tight).is_ok());
        e.price = 10.5;
        assert_eq!(clean(&e, &tight).unwrap_err().code, "out_of_range");
        e.price = 10.0;
        e.quantity = 2;
        let got = clean(&e, &tight).unwrap_err();
        assert_eq!(got.code, "out_of_range");
        assert!(got.message.contains("quantity 2"), "{}", got.message);
    }

    #[test]
    fn bad_bounds_are_refused() {
        assert!(Rules::default().check().is_ok());
        for (p, q) in [
            (0.0, 5),
            (f64::NAN, 5),
            (f64::INFINITY, 5),
            (2e12, 5),
            (5.0, 0),
        ] {
            let r = Rules {
                max_price: p,
                max_quantity: q,
                ..Rules::default()
            };
            assert!(r.check().is_err(), "{p} {q}");
        }
    }

    #[test]
    fn time_formats() {
        let ms = 1_569_888_004_123;
        for s in [
            "2019-10-01 00:00:04.123 UTC",
            "2019-10-01T00:00:04.123Z",
            "2019-10-01T02:00:04.123+02:00",
            "2019-10-01 00:00:04.123",
            "1569888004123",
        ] {
            assert_eq!(parse_event_time(s), Some(ms), "{s}");
        }
        assert_eq!(
            parse_event_time("2019-10-01 00:00:04 UTC"),
            Some(1_569_888_004_000)
        );
        assert_eq!(parse_event_time("2019-13-01 00:00:04 UTC"), None);
    }

    proptest! {
        #[test]
        fn clean_never_panics_and_output_satisfies_the_rules(
            id in ".{0,8}", ty in "[a-zA-Z_]{0,18}", time in ".{0,30}", price in any::<f64>(),
            qty in any::<i32>(), pid in any::<i64>(), uid in any::<i64>(), session in proptest::option::of(".{0,5}"),
            currency in ".{0,4}",
        ) {
            let mut e = raw();
            e.event_id = id; e.event_type = ty; e.event_time = time; e.price = price; e.quantity = qty;
            e.product_id = pid; e.user_id = uid; e.user_session = session; e.currency = currency;
            if let Ok(c) = clean(&e, &Rules::default()) {
                prop_assert!(c.price > 0.0 && c.price <= DEFAULT_MAX_PRICE);
                prop_assert!(c.quantity >= 1 && c.quantity <= DEFAULT_MAX_QUANTITY);
                prop_assert!(c.product_id > 0 && c.user_id > 0);
                prop_assert!(!c.event_id.is_empty() && !c.user_session.is_empty());
                prop_assert!(c.event_time <= e.source.sent_at + 3_600_000);
                prop_assert_eq!(c.currency.len(), 3);
            }
        }
    }
}
