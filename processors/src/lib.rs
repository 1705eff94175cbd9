//! The logic of cartstream's stream processors, apart from any I/O.
//!
//! - [`clean`]: validation and normalisation rules of the cleaner, each rejection with a stable
//!   code for the dead-letter topic.
//! - [`dedup`]: deduplication by `event_id` over an event-time horizon with bounded memory.
//! - [`detect`]: the detector's rules (trends against each key's own baseline, purchases per
//!   user and minute, prices far from the catalog) and their changelog encoding.
//! - [`enrich`]: the join of clean events with the product and user dimension tables.
//! - [`kpi_metrics`]: business KPIs of final windows as bounded Prometheus metrics.
//! - [`quality`]: data-quality gates per event-time window (unknown rate of each enriched field,
//!   reject rate by reason, volume against its recent level) and their changelog encoding.
//! - [`session`]: session windows per `user_session` (inactivity gap, watermark, grace, merges,
//!   changelog encoding), the sessionizer's core.
//! - [`window`]: event-time tumbling and hopping windows on panes, watermark and grace (the
//!   windower's core).
//! - [`win_stage`]: the windower's two stages (per-partition watermarks, partials and late
//!   events; exact merge and close per repartition partition) and their wire/changelog codecs.
//!
//! Everything here is a plain function or a small state machine: no Kafka, no clock, no network,
//! so every rule is unit- and property-tested in microseconds. The binaries wire them to the
//! shared Kafka loop.

pub mod clean;
pub mod dedup;
pub mod detect;
pub mod enrich;
pub mod kpi_metrics;
pub mod quality;
pub mod session;
pub mod win_stage;
pub mod window;
