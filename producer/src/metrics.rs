//! The producer's Prometheus metrics, named once here (`cartstream_producer_*`, counters end in
//! `_total`, labels from small fixed sets only).

use prometheus::{
    register_gauge, register_int_counter, register_int_counter_vec, Gauge, IntCounter,
    IntCounterVec,
};

use crate::faults::Malformed;

/// Handles resolved once, so the hot path only does atomic adds.
pub struct Metrics {
    /// Distinct events sent, by event type (view, cart, remove_from_cart, purchase, other).
    pub events: [IntCounter; 5],
    /// Every record handed to Kafka, by kind: event, duplicate, malformed, dimension.
    pub records_event: IntCounter,
    pub records_duplicate: IntCounter,
    pub records_malformed: IntCounter,
    pub records_dimension: IntCounter,
    pub faults: IntCounterVec,
    pub delivered: IntCounter,
    pub send_errors: IntCounter,
    pub dimensions: IntCounterVec,
    pub price_changes: IntCounter,
    pub replay_rows: IntCounterVec,
    pub event_time: Gauge,
    pub bytes: IntCounter,
}

pub const EVENT_TYPES: [&str; 5] = ["view", "cart", "remove_from_cart", "purchase", "other"];

impl Metrics {
    pub fn register() -> anyhow::Result<Self> {
        let events = register_int_counter_vec!(
            "cartstream_producer_events_sent_total",
            "Distinct events handed to Kafka (duplicates and malformed records excluded), by event type",
            &["event_type"]
        )?;
        let records = register_int_counter_vec!(
            "cartstream_producer_records_sent_total",
            "Records handed to Kafka, by kind (event, duplicate, malformed, dimension)",
            &["kind"]
        )?;
        let faults = register_int_counter_vec!(
            "cartstream_producer_faults_injected_total",
            "Faults injected on purpose, by fault (duplicate, late, or a malformed kind)",
            &["fault"]
        )?;
        for f in ["duplicate", "late"]
            .into_iter()
            .chain(Malformed::ALL.iter().map(|m| m.as_str()))
        {
            faults.with_label_values(&[f]);
        }
        let replay_rows = register_int_counter_vec!(
            "cartstream_producer_replay_rows_total",
            "Rows of replayed files, by outcome (sent, or the reason it was skipped)",
            &["outcome"]
        )?;
        Ok(Metrics {
            events: EVENT_TYPES.map(|t| events.with_label_values(&[t])),
            records_event: records.with_label_values(&["event"]),
            records_duplicate: records.with_label_values(&["duplicate"]),
            records_malformed: records.with_label_values(&["malformed"]),
            records_dimension: records.with_label_values(&["dimension"]),
            faults,
            delivered: register_int_counter!(
                "cartstream_producer_records_delivered_total",
                "Records Kafka acknowledged"
            )?,
            send_errors: register_int_counter!(
                "cartstream_producer_send_errors_total",
                "Records whose delivery failed after retries"
            )?,
            dimensions: register_int_counter_vec!(
                "cartstream_producer_dimension_records_total",
                "Dimension records published, by dimension (product, user)",
                &["dimension"]
            )?,
            price_changes: register_int_counter!(
                "cartstream_producer_price_changes_total",
                "Product price changes published while running"
            )?,
            replay_rows,
            event_time: register_gauge!(
                "cartstream_producer_event_time_seconds",
                "Event time of the latest event sent, seconds since the epoch"
            )?,
            bytes: register_int_counter!(
                "cartstream_producer_sent_bytes_total",
                "Bytes of record values handed to Kafka"
            )?,
        })
    }

    /// The counter of an event type.
    pub fn event(&self, event_type: &str) -> &IntCounter {
        let i = EVENT_TYPES[..4]
            .iter()
            .position(|t| *t == event_type)
            .unwrap_or(4);
        &self.events[i]
    }
}
