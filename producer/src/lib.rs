//! cartstream-producer: the input side of the pipeline. It simulates shoppers, replays real event
//! files and loads catalogs, and publishes Avro purchase events to `purchases.raw` and the product
//! and user dimensions to their compacted topics.
//!
//! Layout — pure logic first (no Kafka, no clock, no I/O; unit- and property-tested):
//! - [`sim`]: shoppers as a discrete-event simulation in event time (funnel, inactivity gaps,
//!   Zipf popularity, seasonality, currencies, quantities, trends, price changes).
//! - [`retail`]: the retail profile's store hours, demand curves (day, week, year), order-line
//!   quantities and SKU catalog.
//! - [`faults`]: fault injection at chosen ratios (duplicates near and far, late and out-of-order
//!   events, malformed records of eight kinds).
//! - [`replay`]: REES46 rows parsed by header name, messy rows sent or skipped with a reason,
//!   deterministic `event_id`s.
//! - [`truth`]: the ground truth, the exact KPIs a correct pipeline must compute from what was
//!   sent.
//! - [`catalog`], [`steam`], [`zipf`], [`clock`]: catalogs, the Steam CSV loader, popularity,
//!   time formatting, seasonality and pacing.
//!
//! - [`fastavro`]: the raw event's Avro bytes written by hand (the hot path), verified against
//!   the schema-driven encoder.
//!
//! Then the I/O: [`output`] (Kafka or a dry run), [`metrics`], [`progress`], [`cli`] and [`run`]
//! (the three commands). `producer/README.md` is the user's guide: the CLI, the keys, the
//! event-id rule and the ground-truth definitions.
//!
//! Guarantees: with a seed, the simulator is deterministic (and with `--start-time`, so are event
//! times); delivery is idempotent with `acks=all`; no input row or record stops a run; a run that
//! could not deliver everything exits non-zero after saying how many records failed.

pub mod catalog;
pub mod cli;
pub mod clock;
pub mod fastavro;
pub mod faults;
pub mod metrics;
pub mod output;
pub mod progress;
pub mod replay;
pub mod retail;
pub mod run;
pub mod sim;
pub mod steam;
pub mod truth;
pub mod zipf;
