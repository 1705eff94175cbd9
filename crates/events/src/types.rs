//! Rust shapes of the Avro contracts.
//!
//! Field names and order mirror the `.avsc` files; a test encodes and decodes every type through
//! its schema, so a drift between the two fails the build's tests. Timestamps are UTC epoch
//! milliseconds (`timestamp-millis`).

use serde::{Deserialize, Serialize};

use crate::contracts::Contract;

/// A type with an Avro contract: what it is written with and read as.
pub trait AvroRecord: Serialize + for<'de> Deserialize<'de> + Send + Sync + 'static {
    /// The schema values of this type are written with, and read as.
    const CONTRACT: Contract;
}

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceMeta {
    pub system: String,
    pub producer_id: String,
    pub file: Option<String>,
    pub line: Option<i64>,
    pub sent_at: i64,
}

/// A raw shopper event (`purchases.raw`), current version (v2).
///
/// The serde name is the Avro record name: the schema-aware decoder checks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "PurchaseEvent")]
pub struct RawEvent {
    pub event_id: String,
    pub event_time: String,
    pub event_type: String,
    pub product_id: i64,
    pub category_id: i64,
    pub category_code: Option<String>,
    pub brand: Option<String>,
    pub price: f64,
    pub currency: String,
    pub quantity: i32,
    pub user_id: i64,
    pub user_session: Option<String>,
    /// Added in v2; `None` when read from a v1 record.
    #[serde(default)]
    pub channel: Option<String>,
    pub source: SourceMeta,
}

impl AvroRecord for RawEvent {
    const CONTRACT: Contract = Contract::RAW_CURRENT;
}

/// The four event types of the funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    View,
    Cart,
    RemoveFromCart,
    Purchase,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::View,
        EventType::Cart,
        EventType::RemoveFromCart,
        EventType::Purchase,
    ];

    /// The name used in the data and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::View => "view",
            EventType::Cart => "cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::Purchase => "purchase",
        }
    }

    /// Parses the controlled vocabulary, ignoring ASCII case and surrounding blanks.
    pub fn parse(s: &str) -> Option<EventType> {
        let s = s.trim();
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }
}

/// A validated event (`purchases.clean`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanEvent {
    pub event_id: String,
    pub event_time: i64,
    pub event_type: EventType,
    pub product_id: i64,
    pub category_id: i64,
    pub category_code: String,
    pub brand: String,
    pub price: f64,
    pub currency: String,
    pub quantity: i32,
    pub user_id: i64,
    pub user_session: String,
    pub channel: Option<String>,
    pub source_system: String,
}

impl AvroRecord for CleanEvent {
    const CONTRACT: Contract = Contract::CleanEvent;
}

/// A clean event joined with its dimensions (`purchases.enriched`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedEvent {
    pub event_id: String,
    pub event_time: i64,
    pub event_type: EventType,
    pub product_id: i64,
    pub category_id: i64,
    pub category_code: String,
    pub brand: String,
    pub price: f64,
    pub currency: String,
    pub quantity: i32,
    pub user_id: i64,
    pub user_session: String,
    pub channel: Option<String>,
    pub source_system: String,
    pub product_known: bool,
    pub product_name: String,
    pub catalog_price: Option<f64>,
    pub user_known: bool,
    pub user_country: String,
    pub user_device: String,
    pub user_segment: String,
}

impl AvroRecord for EnrichedEvent {
    const CONTRACT: Contract = Contract::EnrichedEvent;
}

/// Product dimension (`catalog.products`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub product_id: i64,
    pub name: String,
    pub category_id: i64,
    pub category_code: String,
    pub brand: String,
    pub price: f64,
    pub currency: String,
    pub catalog: String,
    /// Days since 1970-01-01.
    pub release_date: Option<i32>,
    pub genres: Vec<String>,
    pub tags: Vec<String>,
    pub updated_at: i64,
}

impl AvroRecord for Product {
    const CONTRACT: Contract = Contract::Product;
}

/// User dimension (`catalog.users`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub user_id: i64,
    pub country: String,
    pub device: String,
    pub segment: String,
    pub updated_at: i64,
}

impl AvroRecord for User {
    const CONTRACT: Contract = Contract::User;
}

/// What a KPI window is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    All,
    Category,
    Product,
    Brand,
    EventType,
}

/// Aggregates of one window and one dimension value (`kpi.windows`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KpiWindow {
    pub window_start: i64,
    pub window_end: i64,
    pub window_size_ms: i64,
    pub window_slide_ms: i64,
    pub dimension: Dimension,
    pub dimension_value: String,
    pub views: i64,
    pub carts: i64,
    pub removals: i64,
    pub purchases: i64,
    pub units: i64,
    pub revenue: f64,
    pub currency: String,
    pub avg_price: Option<f64>,
    pub conversion_rate: Option<f64>,
    pub distinct_users: i64,
    pub is_final: bool,
    pub emitted_at: i64,
}

impl AvroRecord for KpiWindow {
    const CONTRACT: Contract = Contract::KpiWindow;
}

/// One closed shopper session (`sessions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub session_id: String,
    pub user_id: i64,
    pub user_country: String,
    pub user_device: String,
    pub user_segment: String,
    pub session_start: i64,
    pub session_end: i64,
    pub duration_ms: i64,
    pub views: i64,
    pub carts: i64,
    pub removals: i64,
    pub purchases: i64,
    pub revenue: f64,
    pub currency: String,
    pub converted: bool,
    pub order_id: Option<String>,
}

impl AvroRecord for Session {
    const CONTRACT: Contract = Contract::Session;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertType {
    Trend,
    SuspiciousUser,
    PriceAnomaly,
    DataQuality,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// An alert (`alerts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub alert_type: AlertType,
    pub severity: Severity,
    pub subject_kind: String,
    pub subject_id: String,
    pub window_start: i64,
    pub window_end: i64,
    pub observed: f64,
    pub baseline: f64,
    pub threshold: f64,
    pub message: String,
    pub detected_at: i64,
}

impl AvroRecord for Alert {
    const CONTRACT: Contract = Contract::Alert;
}

/// A record a stage could not process (`purchases.dlq`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub error_code: String,
    pub message: String,
    pub stage: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub source_timestamp: Option<i64>,
    pub schema_id: Option<i32>,
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub payload: Option<Vec<u8>>,
    pub failed_at: i64,
}

impl AvroRecord for DeadLetter {
    const CONTRACT: Contract = Contract::DeadLetter;
}

/// An enriched event later than the windower's grace period (`purchases.late`): counted in no
/// window, kept here with how late it was and the window it missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateEvent {
    pub event: EnrichedEvent,
    pub lateness_ms: i64,
    pub watermark: i64,
    pub window_start: i64,
    pub window_end: i64,
    pub window_size_ms: i64,
    pub window_slide_ms: i64,
    pub grace_ms: i64,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub detected_at: i64,
}

impl AvroRecord for LateEvent {
    const CONTRACT: Contract = Contract::LateEvent;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decoder, Encoder};

    #[test]
    fn late_event_round_trips_through_its_schema() {
        let value = LateEvent {
            event: EnrichedEvent {
                event_id: "e".into(),
                event_time: 1,
                event_type: EventType::Purchase,
                product_id: 2,
                category_id: 3,
                category_code: "a.b".into(),
                brand: "b".into(),
                price: 1.5,
                currency: "USD".into(),
                quantity: 3,
                user_id: 4,
                user_session: "s".into(),
                channel: None,
                source_system: "sim".into(),
                product_known: true,
                product_name: "p".into(),
                catalog_price: Some(1.5),
                user_known: false,
                user_country: "unknown".into(),
                user_device: "unknown".into(),
                user_segment: "unknown".into(),
            },
            lateness_ms: 7,
            watermark: 120_007,
            window_start: 0,
            window_end: 60_000,
            window_size_ms: 60_000,
            window_slide_ms: 60_000,
            grace_ms: 60_000,
            source_topic: "purchases.enriched".into(),
            source_partition: 2,
            source_offset: 9,
            detected_at: 10,
        };
        let bytes = Encoder::<LateEvent>::with_id(Contract::LateEvent, 7)
            .encode(&value)
            .expect("encodes");
        let back = Decoder::<LateEvent>::fixed([(7, Contract::LateEvent)], Contract::LateEvent)
            .decode_cached(&bytes)
            .expect("fixed table")
            .expect("decodes");
        assert_eq!(back, value);
    }
}
