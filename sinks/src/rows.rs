//! Mapping records to the rows of the real-time tables. Pure: no session, no clock.

use cartstream_events::types::EnrichedEvent;
use scylla::value::CqlTimestamp;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_buckets_are_utc_dates() {
        assert_eq!(day_bucket(0), "1970-01-01");
        assert_eq!(day_bucket(-1), "1969-12-31");
        assert_eq!(day_bucket(1_569_888_004_000), "2019-10-01");
        assert_eq!(day_bucket(951_782_400_000), "2000-02-29");
        assert_eq!(day_bucket(1_795_996_799_999), "2026-11-29");
        assert_eq!(day_bucket(1_795_996_800_000), "2026-11-30");
    }
}
