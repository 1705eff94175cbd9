//! Mapping records to the rows of the real-time tables. Pure: no session, no clock.
//!
//! Every row is keyed by the record's natural key, so writing a record twice leaves one row.
//! KPI windows are written `USING TIMESTAMP` [`kpi_write_timestamp`]: the window's `emitted_at`
//! (microseconds), plus one for a final update, so the latest update of a window wins whatever
//! order the writes arrive in, a final update beats an early one emitted in the same
//! millisecond, and a replay writes the same cells with the same timestamps (no change).

use cartstream_events::types::{Alert, Dimension, EnrichedEvent, KpiWindow, Session};
use scylla::value::CqlTimestamp;
use scylla::SerializeRow;

/// The UTC day of an epoch-millisecond timestamp as `YYYY-MM-DD`: the time bucket of the
/// partition keys.
pub fn day_bucket(ms: i64) -> String {
    cartstream_events::time::utc_date(ms)
}

/// Insert of one event into `events_by_user`; the bound values are [`event_row`]'s.
pub fn insert_event_cql(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.events_by_user (user_id, day, event_time, event_id, event_type, \
         product_id, category_code, brand, price, quantity, currency, user_session) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
    )
}

pub type EventRow<'a> = (
    i64,
    String,
    CqlTimestamp,
    &'a str,
    &'static str,
    i64,
    &'a str,
    &'a str,
    f64,
    i32,
    &'a str,
    &'a str,
    i32,
);

/// The values of [`insert_event_cql`] for one event, with its TTL in seconds.
pub fn event_row(e: &EnrichedEvent, ttl_secs: i32) -> EventRow<'_> {
    (
        e.user_id,
        day_bucket(e.event_time),
        CqlTimestamp(e.event_time),
        &e.event_id,
        e.event_type.as_str(),
        e.product_id,
        &e.category_code,
        &e.brand,
        e.price,
        e.quantity,
        &e.currency,
        &e.user_session,
        ttl_secs,
    )
}

pub fn dimension_name(d: Dimension) -> &'static str {
    match d {
        Dimension::All => "all",
        Dimension::Category => "category",
        Dimension::Product => "product",
        Dimension::Brand => "brand",
        Dimension::EventType => "event_type",
    }
}

/// Upsert of one KPI window into `kpi_by_dimension`; the bound values are [`kpi_row`]'s.
pub fn insert_kpi_cql(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.kpi_by_dimension (dimension, dimension_value, day, window_start, \
         window_size_ms, window_end, views, carts, removals, purchases, units, revenue, currency, \
         avg_price, conversion_rate, distinct_users, is_final, emitted_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
    )
}

/// The write timestamp of a KPI window (microseconds): see the module docs.
pub fn kpi_write_timestamp(k: &KpiWindow) -> i64 {
    k.emitted_at.saturating_mul(1000) + i64::from(k.is_final)
}

#[derive(Debug, SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
pub struct KpiRow<'a> {
    dimension: &'static str,
    dimension_value: &'a str,
    day: String,
    window_start: CqlTimestamp,
    window_size_ms: i64,
    window_end: CqlTimestamp,
    views: i64,
    carts: i64,
    removals: i64,
    purchases: i64,
    units: i64,
    revenue: f64,
    currency: &'a str,
    avg_price: Option<f64>,
    conversion_rate: Option<f64>,
    distinct_users: i64,
    is_final: bool,
    emitted_at: CqlTimestamp,
    ttl: i32,
    timestamp: i64,
}

pub fn kpi_row(k: &KpiWindow, ttl_secs: i32) -> KpiRow<'_> {
    KpiRow {
        dimension: dimension_name(k.dimension),
        dimension_value: &k.dimension_value,
        day: day_bucket(k.window_start),
        window_start: CqlTimestamp(k.window_start),
        window_size_ms: k.window_size_ms,
        window_end: CqlTimestamp(k.window_end),
        views: k.views,
        carts: k.carts,
        removals: k.removals,
        purchases: k.purchases,
        units: k.units,
        revenue: k.revenue,
        currency: &k.currency,
        avg_price: k.avg_price,
        conversion_rate: k.conversion_rate,
        distinct_users: k.distinct_users,
        is_final: k.is_final,
        emitted_at: CqlTimestamp(k.emitted_at),
        ttl: ttl_secs,
        timestamp: kpi_write_timestamp(k),
    }
}

/// Upsert of one closed session into `sessions_by_user` (bucketed by the session's start day).
pub fn insert_session_cql(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.sessions_by_user (user_id, day, session_start, session_id, \
         session_end, duration_ms, country, device, segment, views, carts, removals, purchases, \
         revenue, currency, converted, order_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
    )
}

#[derive(Debug, SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
pub struct SessionRow<'a> {
    user_id: i64,
    day: String,
    session_start: CqlTimestamp,
    session_id: &'a str,
    session_end: CqlTimestamp,
    duration_ms: i64,
    country: &'a str,
    device: &'a str,
    segment: &'a str,
    views: i64,
    carts: i64,
    removals: i64,
    purchases: i64,
    revenue: f64,
    currency: &'a str,
    converted: bool,
    order_id: Option<&'a str>,
    ttl: i32,
}

pub fn session_row(s: &Session, ttl_secs: i32) -> SessionRow<'_> {
    SessionRow {
        user_id: s.user_id,
        day: day_bucket(s.session_start),
        session_start: CqlTimestamp(s.session_start),
        session_id: &s.session_id,
        session_end: CqlTimestamp(s.session_end),
        duration_ms: s.duration_ms,
        country: &s.user_country,
        device: &s.user_device,
        segment: &s.user_segment,
        views: s.views,
        carts: s.carts,
        removals: s.removals,
        purchases: s.purchases,
        revenue: s.revenue,
        currency: &s.currency,
        converted: s.converted,
        order_id: s.order_id.as_deref(),
        ttl: ttl_secs,
    }
}

/// Upsert of one alert into `alerts_by_day` (bucketed by the detection day).
pub fn insert_alert_cql(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.alerts_by_day (day, detected_at, alert_id, alert_type, severity, \
         subject_kind, subject_id, window_start, window_end, observed, baseline, threshold, \
         message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
    )
}

#[derive(Debug, SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
pub struct AlertRow<'a> {
    day: String,
    detected_at: CqlTimestamp,
    alert_id: &'a str,
    alert_type: &'static str,
    severity: &'static str,
    subject_kind: &'a str,
    subject_id: &'a str,
    window_start: CqlTimestamp,
    window_end: CqlTimestamp,
    observed: f64,
    baseline: f64,
    threshold: f64,
    message: &'a str,
    ttl: i32,
}

pub fn alert_row(a: &Alert, ttl_secs: i32) -> AlertRow<'_> {
    use cartstream_events::types::{AlertType, Severity};
    AlertRow {
        day: day_bucket(a.detected_at),
        detected_at: CqlTimestamp(a.detected_at),
        alert_id: &a.alert_id,
        alert_type: match a.alert_type {
            AlertType::Trend => "trend",
            AlertType::SuspiciousUser => "suspicious_user",
            AlertType::PriceAnomaly => "price_anomaly",
            AlertType::DataQuality => "data_quality",
        },
        severity: match a.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        },
        subject_kind: &a.subject_kind,
        subject_id: &a.subject_id,
        window_start: CqlTimestamp(a.window_start),
        window_end: CqlTimestamp(a.window_end),
        observed: a.observed,
        baseline: a.baseline,
        threshold: a.threshold,
        message: &a.message,
        ttl: ttl_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn day_buckets_are_utc_dates() {
        assert_eq!(day_bucket(0), "1970-01-01");
        assert_eq!(day_bucket(-1), "1969-12-31");
        assert_eq!(day_bucket(1_569_888_004_000), "2019-10-01");
        assert_eq!(day_bucket(951_782_400_000), "2000-02-29");
        assert_eq!(day_bucket(1_795_996_799_999), "2026-11-29");
        assert_eq!(day_bucket(1_795_996_800_000), "2026-11-30");
    }

    fn kpi(emitted_at: i64, is_final: bool) -> KpiWindow {
        KpiWindow {
            window_start: 1_795_996_740_000,
            window_end: 1_795_996_800_000,
            window_size_ms: 60_000,
            window_slide_ms: 60_000,
            dimension: Dimension::Category,
            dimension_value: "kids.toys".into(),
            views: 1,
            carts: 0,
            removals: 0,
            purchases: 0,
            units: 0,
            revenue: 0.0,
            currency: "USD".into(),
            avg_price: None,
            conversion_rate: None,
            distinct_users: 1,
            is_final,
            emitted_at,
        }
    }

    #[test]
    fn kpi_rows_are_bucketed_by_window_start() {
        let k = kpi(1_795_996_801_000, true);
        let r = kpi_row(&k, 60);
        assert_eq!(r.day, "2026-11-29");
        assert_eq!(r.dimension, "category");
        assert_eq!(r.timestamp, 1_795_996_801_000_001);
    }

    proptest! {
        /// A later emission always wins; at the same emission time, the final update wins.
        #[test]
        fn later_or_final_updates_win(a in 0i64..4_000_000_000_000, d in 0i64..1_000_000, fa: bool, fb: bool) {
            let early = kpi(a, fa);
            let late = kpi(a + d, fb);
            if d > 0 {
                prop_assert!(kpi_write_timestamp(&late) > kpi_write_timestamp(&early));
            } else if fb && !fa {
                prop_assert!(kpi_write_timestamp(&late) > kpi_write_timestamp(&early));
            } else if fa == fb {
                prop_assert_eq!(kpi_write_timestamp(&late), kpi_write_timestamp(&early));
            }
        }
    }
}
