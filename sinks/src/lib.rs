//! cartstream sinks.
//!
//! - [`cql`]: connecting to ScyllaDB/Cassandra (auth, keyspace) and the idempotent migrations
//!   of `sinks/cql/`.
//! - [`rows`]: the natural-key rows written for each record type, as pure functions.

pub mod cql;
pub mod rows;
