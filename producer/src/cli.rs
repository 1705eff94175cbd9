//! The command line. Every flag of a service has an environment variable; the subcommands are
//! `simulate` (the default when none is given), `replay` and `load-catalog`.

use std::path::PathBuf;

use cartstream_events::RegistryArgs;
use cartstream_kafka::{KafkaArgs, TopicNames};
use cartstream_runtime::ServiceArgs;
use clap::{Args, Parser, Subcommand};

use crate::faults::Malformed;
use crate::progress::ProgressMode;
use crate::replay::{GuestUsers, ProductIds};

/// The end-of-input mark written to every partition of the raw topic once a bounded run's
/// records are all acknowledged (see `cartstream_kafka::control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EndMark {
    /// "Nothing more will come": every window and session may close.
    Max,
    /// "Nothing before the run's highest event time will come".
    Last,
    /// No mark: the input goes on (live).
    None,
}

#[derive(Parser)]
#[command(
    name = "cartstream-producer",
    version,
    about = "Simulate shoppers, replay REES46 event files and load catalogs: Avro purchase events, products and users to Kafka",
    long_about = "Simulate shoppers, replay REES46 event files and load catalogs: Avro purchase events, \
products and users to Kafka.\n\nWithout a subcommand it simulates (the flags below are those of \
`simulate`). Events are keyed by user_session, so one session's events stay in order on one \
partition.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub simulate: SimulateArgs,
}

#[derive(Subcommand)]
pub enum Command {
    /// Simulate shoppers (the default).
    Simulate(Box<SimulateArgs>),
    /// Replay a file in the REES46 layout (plain or gzip).
    Replay(Box<ReplayArgs>),
    /// Publish a catalog (a Steam-style CSV, or the synthetic one) and users to the dimension topics.
    LoadCatalog(Box<LoadCatalogArgs>),
}

/// Flags of every subcommand.
#[derive(Args, Clone)]
pub struct Common {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub names: TopicNames,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Encode everything but send nothing (no Kafka, no registry): for sizing and timing. A
    /// replay also prints its column mapping, the first rows as they would be sent and the
    /// rejections and duplicates to expect.
    #[arg(long, env = "PRODUCER_DRY_RUN")]
    pub dry_run: bool,
    /// Progress display: a bar on a terminal, plain lines otherwise (auto), or forced.
    #[arg(long, env = "PRODUCER_PROGRESS", value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// The kind of shop simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// A multi-category store in the REES46 style, open around the clock, prices in USD.
    Default,
    /// An online gift shop like the UCI Online Retail export: store hours and closed days,
    /// weekly and yearly seasonality with a November-December peak, guest checkouts, SKU
    /// product ids, orders repeating a SKU at other quantities, prices in GBP.
    Retail,
}

/// The shop: its products and users.
#[derive(Args, Clone)]
pub struct CatalogArgs {
    /// The shop: default, or retail (store hours, seasons, guests, SKUs; see the README).
    /// load-catalog with the same --profile, --seed, --products and --users publishes the
    /// catalog that simulate shops in.
    #[arg(long, env = "PRODUCER_PROFILE", value_enum, default_value_t = Profile::Default)]
    pub profile: Profile,
    /// Products of the synthetic catalog (ignored with --steam-csv).
    #[arg(long, env = "PRODUCER_PRODUCTS", default_value_t = 5000)]
    pub products: usize,
    /// Users (synthetic, with country, device and segment).
    #[arg(long, env = "PRODUCER_USERS", default_value_t = 20_000)]
    pub users: usize,
    /// Use the games of a CSV in the Steam store dataset layout as the catalog (genres become
    /// categories games.<genre>).
    #[arg(long, env = "PRODUCER_STEAM_CSV")]
    pub steam_csv: Option<PathBuf>,
    /// Currency of the prices in --steam-csv.
    #[arg(long, env = "PRODUCER_CATALOG_CURRENCY", default_value = "USD")]
    pub catalog_currency: String,
}

#[derive(Args, Clone)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Stop after this many events (distinct events: duplicates and malformed records come on top).
    #[arg(long, env = "PRODUCER_COUNT")]
    pub count: Option<u64>,
    /// Stop after this many seconds of wall-clock time.
    #[arg(long, env = "PRODUCER_DURATION_SECS")]
    pub duration_secs: Option<f64>,
    /// Events per second of wall-clock time (on average over a simulated day); 0 sends as fast as
    /// possible.
    #[arg(long, env = "PRODUCER_RATE", default_value_t = 1000.0)]
    pub rate: f64,
    /// Seed: the same seed, flags and catalog give the same events (and, with --start-time, the
    /// same event times).
    #[arg(long, env = "PRODUCER_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Mean concurrent shopper sessions; with the rate it sets the think time.
    #[arg(long, env = "PRODUCER_SESSIONS", default_value_t = 1000)]
    pub sessions: usize,
    /// Mean pause between two events of a session, in seconds of event time (default: sessions /
    /// rate, between 0.01 and 60).
    #[arg(long, env = "PRODUCER_THINK_SECS")]
    pub think_secs: Option<f64>,
    /// Inactivity that ends a session, in seconds of event time; a session never pauses this
    /// long, a user who does comes back with a new session.
    #[arg(long, env = "PRODUCER_SESSION_GAP_SECS", default_value_t = 1800)]
    pub session_gap_secs: u64,
    /// Run on a simulated clock starting at this time (RFC 3339, YYYY-MM-DD, epoch ms, or now):
    /// event times are computed, reproducible and follow the hour-of-day curve. Default: live,
    /// event time is the wall clock.
    #[arg(long, env = "PRODUCER_START_TIME")]
    pub start_time: Option<String>,
    /// With --start-time: stop before the first event at or after this event time, an offset
    /// from the start (+365d, +36h) or a time; a bounded run like --count.
    #[arg(long, env = "PRODUCER_END_TIME")]
    pub end_time: Option<String>,
    /// Simulated seconds per wall-clock second with --start-time (3600: an hour a second). With
    /// --rate 0 the simulated world still has --rate 1000's density.
    #[arg(long, env = "PRODUCER_SPEED", default_value_t = 1.0)]
    pub speed: f64,
    /// No hour-of-day seasonality on the simulated clock.
    #[arg(long, env = "PRODUCER_NO_SEASONALITY")]
    pub no_seasonality: bool,
    /// Currencies shoppers pay in, comma-separated: users pay in their country's currency when
    /// listed, else in the first one. Default: USD (GBP with --profile retail).
    #[arg(long, env = "PRODUCER_CURRENCIES", value_delimiter = ',')]
    pub currencies: Vec<String>,
    /// With --profile retail: the hours (UTC) the shop takes orders, FROM-TO in whole hours, TO
    /// excluded (22-6 wraps over midnight, 0-24 is all day). Default 7-20.
    #[arg(long, env = "PRODUCER_OPEN_HOURS")]
    pub open_hours: Option<String>,
    /// With --profile retail: weekdays the shop is closed, comma-separated (mon..sun), or none.
    /// Default sat.
    #[arg(long, env = "PRODUCER_CLOSED_DAYS")]
    pub closed_days: Option<String>,
    /// With --profile retail: dates the shop is closed every year, MM-DD or MM-DD..MM-DD (may
    /// wrap over the new year), comma-separated, or none. Default 12-24..01-03.
    #[arg(long, env = "PRODUCER_CLOSED_DATES")]
    pub closed_dates: Option<String>,
    /// With --profile retail: share of sessions that are guest checkouts (the session's
    /// anonymous user, an id in [2^51, 2^52), as replay gives rows without a user). Default 0.25.
    #[arg(long, env = "PRODUCER_GUEST_SHARE")]
    pub guest_share: Option<f64>,
    /// With --profile retail: chance per cart action, with a non-empty cart, of adding a product
    /// already in it again at another quantity (its own order line, its own event id).
    /// Default 0.15.
    #[arg(long, env = "PRODUCER_REPEAT_LINE_SHARE")]
    pub repeat_line_share: Option<f64>,
    /// Do not publish the product and user dimensions.
    #[arg(long, env = "PRODUCER_SKIP_DIMENSIONS")]
    pub skip_dimensions: bool,
    /// Before simulating, read the product topic to its end and shop at the prices it holds
    /// (the latest record of each product of the catalog): for a run that follows another
    /// one, whose price changes the enricher and the detector already see.
    #[arg(long, env = "PRODUCER_PRICES_FROM_TOPIC")]
    pub prices_from_topic: bool,
    /// Change one product's price this often (event time, e.g. 30s, 5m; 0 for never) and
    /// publish it to the product topic.
    #[arg(long, env = "PRODUCER_PRICE_CHANGE_EVERY", default_value = "60s")]
    pub price_change_every: String,
    /// Start a trend at this time: an offset from the start (+90s, +1h) or an absolute time.
    #[arg(long, env = "PRODUCER_TREND_AT")]
    pub trend_at: Option<String>,
    /// Product id that trends (default: the 100th most popular, or --trend-category).
    #[arg(long, env = "PRODUCER_TREND_PRODUCT")]
    pub trend_product: Option<i64>,
    /// Category code that trends, e.g. kids.toys or games.action.
    #[arg(
        long,
        env = "PRODUCER_TREND_CATEGORY",
        conflicts_with = "trend_product"
    )]
    pub trend_category: Option<String>,
    /// How long the trend lasts (event time).
    #[arg(long, env = "PRODUCER_TREND_FOR", default_value = "10m")]
    pub trend_for: String,
    /// Share of all views that go to the trend target while it trends.
    #[arg(long, env = "PRODUCER_TREND_SHARE", default_value_t = 0.3)]
    pub trend_share: f64,
    /// Factor on the cart probability of the trend target.
    #[arg(long, env = "PRODUCER_TREND_CART_BOOST", default_value_t = 2.0)]
    pub trend_cart_boost: f64,
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Write the ground truth (exact KPIs of what was sent, JSON) to this file at the end.
    #[arg(long, env = "PRODUCER_GROUND_TRUTH")]
    pub ground_truth: Option<PathBuf>,
    /// With --count, --duration-secs or --end-time: at the end, once every record is acknowledged, write an
    /// end-of-input mark to every partition of the raw topic (max: nothing more will come; last:
    /// nothing before the last event time sent). Default none: the input is live.
    #[arg(long, env = "PRODUCER_END_OF_INPUT", value_enum, default_value_t = EndMark::None)]
    pub end_of_input: EndMark,
}

#[derive(Args, Clone)]
pub struct FaultArgs {
    /// Ratio of events also sent a second time with the same event_id.
    #[arg(long, env = "PRODUCER_DUPLICATE_RATIO", default_value_t = 0.0)]
    pub duplicate_ratio: f64,
    /// Share of the duplicates sent much later rather than right after the original.
    #[arg(long, env = "PRODUCER_DUPLICATE_FAR_SHARE", default_value_t = 0.25)]
    pub duplicate_far_share: f64,
    /// How much later (event time) far duplicates come: 5m, 1m..10m (uniform) or exp:2m.
    #[arg(long, env = "PRODUCER_DUPLICATE_FAR_DELAY", default_value = "1m..10m")]
    pub duplicate_far_delay: String,
    /// Ratio of events held back and sent late, out of order.
    #[arg(long, env = "PRODUCER_LATE_RATIO", default_value_t = 0.0)]
    pub late_ratio: f64,
    /// How late (event time behind the stream): 30s, 5s..5m (uniform) or exp:1m.
    #[arg(long, env = "PRODUCER_LATE_DELAY", default_value = "5s..5m")]
    pub late_delay: String,
    /// Ratio of extra malformed records per event.
    #[arg(long, env = "PRODUCER_MALFORMED_RATIO", default_value_t = 0.0)]
    pub malformed_ratio: f64,
    /// Kinds of malformed records, comma-separated (default: all).
    #[arg(
        long,
        env = "PRODUCER_MALFORMED_KINDS",
        value_enum,
        value_delimiter = ','
    )]
    pub malformed_kinds: Vec<Malformed>,
}

#[derive(Args, Clone)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: Common,
    /// The file to replay: CSV in the REES46 layout, plain or gzip.
    #[arg(long, env = "PRODUCER_FILE")]
    pub file: PathBuf,
    /// Speed factor: 0 as fast as possible, 1 real time (gaps in event time preserved), N for
    /// N times real time.
    #[arg(long, env = "PRODUCER_SPEED", default_value_t = 0.0)]
    pub speed: f64,
    /// With a speed, shorten gaps in event time longer than this (e.g. 1m).
    #[arg(long, env = "PRODUCER_MAX_GAP")]
    pub max_gap: Option<String>,
    /// Map a column of the file to a REES46 column, as target=name (repeatable), e.g.
    /// --column event_time=timestamp.
    #[arg(long = "column", env = "PRODUCER_COLUMNS", value_delimiter = ';', value_parser = parse_mapping)]
    pub columns: Vec<(String, String)>,
    /// Give a column the same value on every row, as target=value (repeatable), e.g.
    /// --set event_type=purchase; it replaces a column of that name in the file.
    #[arg(long = "set", env = "PRODUCER_SET", value_delimiter = ';', value_parser = parse_mapping)]
    pub set: Vec<(String, String)>,
    /// How product_id is read: number (integers) or sku (strings such as 85123A, each mapped to
    /// a stable id in [2^52, 2^53)).
    #[arg(long, env = "PRODUCER_PRODUCT_IDS", value_enum, default_value_t = ProductIds::Number)]
    pub product_ids: ProductIds,
    /// Rows without a user_id (guest checkouts): anonymous (one stable id per user_session, in
    /// [2^51, 2^52)) or reject (skipped as guest_user, counted in the report).
    #[arg(long, env = "PRODUCER_GUEST_USERS", value_enum, default_value_t = GuestUsers::Anonymous)]
    pub guest_users: GuestUsers,
    /// The file's time format as a chrono strftime pattern (UTC unless it has %z), e.g.
    /// "%m/%d/%Y %H:%M"; matching times are sent as RFC 3339. Default: the formats the cleaner
    /// reads, sent as written.
    #[arg(long, env = "PRODUCER_TIME_FORMAT")]
    pub time_format: Option<String>,
    /// With --dry-run: how many rows to print as they would be sent.
    #[arg(long, env = "PRODUCER_SAMPLE_ROWS", default_value_t = 5)]
    pub sample_rows: usize,
    /// Once every row is acknowledged, write an end-of-input mark to every partition of the raw
    /// topic: max (nothing more will come), last (nothing before the replay's highest event
    /// time) or none.
    #[arg(long, env = "PRODUCER_END_OF_INPUT", value_enum, default_value_t = EndMark::Max)]
    pub end_of_input: EndMark,
    /// Currency of the events when the file has no currency column.
    #[arg(long, env = "PRODUCER_CURRENCY", default_value = "USD")]
    pub currency: String,
    /// Move event times so that the first event happens now (ids stay those of the file's rows).
    #[arg(long, env = "PRODUCER_SHIFT_TO_NOW")]
    pub shift_to_now: bool,
    /// Stop after this many rows.
    #[arg(long, env = "PRODUCER_LIMIT")]
    pub limit: Option<u64>,
    /// Write the replay report (rows sent, skipped by reason with line numbers) as JSON here.
    #[arg(long, env = "PRODUCER_REPORT")]
    pub report: Option<PathBuf>,
    /// Write the ground truth (exact KPIs of what was sent, JSON) to this file at the end.
    #[arg(long, env = "PRODUCER_GROUND_TRUTH")]
    pub ground_truth: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct LoadCatalogArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Seed of the synthetic products and users.
    #[arg(long, env = "PRODUCER_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Publish products only.
    #[arg(long, env = "PRODUCER_SKIP_USERS")]
    pub skip_users: bool,
}

fn parse_mapping(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected target=name, got {s:?}"))?;
    if k.trim().is_empty() || v.trim().is_empty() {
        return Err(format!("expected target=name, got {s:?}"));
    }
    Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_no_subcommand_means_simulate() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "p",
            "--count",
            "5",
            "--rate",
            "2500",
            "--products",
            "2000",
            "--users",
            "5000",
            "--metrics-addr",
            "off",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.simulate.count, Some(5));
        assert_eq!(cli.simulate.catalog.products, 2000);
        assert_eq!(
            cli.simulate.end_of_input,
            EndMark::None,
            "a simulation is live"
        );
        assert_eq!(cli.simulate.catalog.profile, Profile::Default);
        assert!(cli.simulate.currencies.is_empty(), "the profile's currency");
        let cli = Cli::try_parse_from([
            "p",
            "simulate",
            "--profile",
            "retail",
            "--start-time",
            "2026-01-01",
            "--closed-days",
            "sat,sun",
            "--guest-share",
            "0.3",
        ])
        .unwrap();
        let Some(Command::Simulate(s)) = cli.command else {
            panic!("simulate")
        };
        assert_eq!(s.catalog.profile, Profile::Retail);
        assert_eq!(
            (s.closed_days.as_deref(), s.guest_share),
            (Some("sat,sun"), Some(0.3))
        );
        let cli = Cli::try_parse_from([
            "p",
            "replay",
            "--file",
            "x.csv.gz",
            "--speed",
            "60",
            "--column",
            "event_time=ts",
        ])
        .unwrap();
        let Some(Command::Replay(r)) = cli.command else {
            panic!("replay")
        };
        assert_eq!(r.columns, vec![("event_time".into(), "ts".into())]);
        assert_eq!(r.end_of_input, EndMark::Max, "a replay ends its input");
        assert_eq!(r.product_ids, ProductIds::Number);
        assert_eq!(r.guest_users, GuestUsers::Anonymous);
        let cli = Cli::try_parse_from([
            "p",
            "replay",
            "--file",
            "orders.csv",
            "--set",
            "event_type=purchase",
            "--set",
            "Currency=GBP",
            "--product-ids",
            "sku",
            "--guest-users",
            "reject",
            "--end-of-input",
            "last",
            "--time-format",
            "%m/%d/%Y %H:%M",
        ])
        .unwrap();
        let Some(Command::Replay(r)) = cli.command else {
            panic!("replay")
        };
        assert_eq!(
            r.set,
            vec![
                ("event_type".into(), "purchase".into()),
                ("currency".into(), "GBP".into())
            ]
        );
        assert_eq!(
            (r.product_ids, r.guest_users, r.end_of_input),
            (ProductIds::Sku, GuestUsers::Reject, EndMark::Last)
        );
        assert!(Cli::try_parse_from(["p", "replay", "--file", "f", "--set", "novalue"]).is_err());
        let cli = Cli::try_parse_from([
            "p",
            "simulate",
            "--malformed-kinds",
            "garbage-bytes,zero-price",
            "--malformed-ratio",
            "0.1",
        ])
        .unwrap();
        let Some(Command::Simulate(s)) = cli.command else {
            panic!("simulate")
        };
        assert_eq!(
            s.faults.malformed_kinds,
            vec![Malformed::GarbageBytes, Malformed::ZeroPrice]
        );
    }
}
