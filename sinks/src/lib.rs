//! cartstream sinks: the real-time tables (ScyllaDB / Cassandra) and the Parquet history lake.
//!
//! - [`cql`]: connecting to ScyllaDB/Cassandra (auth, keyspace) and the idempotent migrations
//!   of `sinks/cql/`.
//! - [`rows`]: the natural-key rows written for each record type, as pure functions.
//! - [`scylla`]: `cartstream-scylla-sink run`: bounded, retried upserts; offsets after writes.
//! - [`avro_arrow`]: Arrow schemas derived from Avro schemas and record batches built from Avro
//!   values (pure).
//! - [`lake`]: `cartstream-lake-sink`: Parquet files named by offset range, uploaded through
//!   `object_store`, offsets after uploads; compaction of closed hours (on a schedule too).
//! - [`gate`]: the lake sink's pause on a breached data-quality gate (`--quality-pause`) and its
//!   control endpoint (`POST /lake/resume`).
//! - [`snapshot`]: daily snapshots of the dimension topics in the lake (the star schema's
//!   dimensions).
//! - [`source`], [`dlq`], [`metrics`]: the Kafka consumer, dead letters and metrics both share.

pub mod avro_arrow;
pub mod cql;
pub mod dlq;
pub mod gate;
pub mod lake;
pub mod metrics;
pub mod rows;
pub mod scylla;
pub mod snapshot;
pub mod source;
