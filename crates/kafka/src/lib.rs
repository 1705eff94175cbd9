//! cartstream's Kafka plumbing, written once for every service.
//!
//! - [`config`]: `--brokers` and security flags (SASL/SCRAM, TLS) turned into librdkafka client
//!   configurations for consumers, producers and admin clients. Secrets never reach logs.
//! - [`topics`]: the topic catalog: every topic's name, partitions, configs and value contract.
//! - [`admin`]: idempotent creation of the catalog's topics.
//! - [`read`]: reading a topic from the beginning to its current end (tools, tests, the demo).
//! - [`control`]: control records (the end-of-input mark) and how a stage tracks them.

pub mod admin;
pub mod config;
pub mod context;
pub mod control;
pub mod read;
pub mod topics;

pub use config::KafkaArgs;
pub use topics::{Topic, TopicNames};
