//! Event types, Avro contracts and the Confluent wire-format codec of cartstream.
//!
//! Layout:
//! - [`contracts`]: every `.avsc` file of `schemas/`, compiled into the binary and parsed once; the
//!   one place that says which schema a record type is written with.
//! - [`types`]: the Rust shape of each contract (serde structs mirroring the Avro records).
//! - [`wire`]: the Confluent framing (magic byte `0x00`, big-endian 4-byte schema id, Avro body).
//! - [`registry`]: a caching client of a Confluent-compatible schema registry.
//! - [`time`]: calendar arithmetic on UTC epoch times.
//! - [`codec`]: [`codec::Encoder`] and [`codec::Decoder`], which put the three together.
//!
//! Guarantees: decoding never panics on any input; every failure is a typed [`DecodeError`] with a
//! stable [`DecodeError::code`] for dead-letter records, and says whether it is transient (the
//! registry was unreachable: retry, do not dead-letter) or permanent (bad record). Formats know
//! nothing of Kafka: a decoder takes bytes, not messages.

pub mod codec;
pub mod contracts;
pub mod registry;
pub mod time;
pub mod types;
pub mod wire;

pub use codec::{DecodeError, Decoder, EncodeError, Encoder};
pub use contracts::Contract;
pub use registry::{Compatibility, Registry, RegistryArgs, RegistryConfig, RegistryError};
