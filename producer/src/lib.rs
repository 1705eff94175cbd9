//! The shopper simulator behind `cartstream-producer`.
//!
//! Pure and deterministic: given a seed, [`catalog::Catalog::synthetic`] and
//! [`sim::Simulator`] produce the same products, users and events every time, with no I/O and no
//! clock (event times come from the caller). The binary adds Kafka, rate control and progress.

pub mod catalog;
pub mod sim;
pub mod zipf;
