//! The three commands, wired to Kafka: `simulate`, `replay` and `load-catalog`.
//!
//! Each registers its schemas, then runs its send loop on a blocking thread (the loop is CPU
//! work plus non-blocking hand-overs to librdkafka; pacing sleeps), and at the end flushes and
//! reports sent, failed and rate. Records are keyed by `user_session`: a session's events stay in
//! order on one partition (sessionization and funnels need that order), the copies of a
//! duplicated event meet on the same partition (where the cleaner's per-partition dedup sees
//! them), and sessions spread load evenly where user ids would not (one heavy user or bot would
//! make a hot partition). Dimension records are keyed by their id in decimal text.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use cartstream_events::types::{Product, RawEvent, SourceMeta, User};
use cartstream_events::{Contract, Encoder};
use cartstream_kafka::control::{self, EndOfInput};
use cartstream_kafka::{Topic, TopicNames};
use cartstream_runtime::Shutdown;
use serde_json::json;

use crate::catalog::{is_known_currency, known_currencies, Catalog};
use crate::cli::{
    CatalogArgs, Common, EndMark, LoadCatalogArgs, Profile, ReplayArgs, SimulateArgs,
};
use crate::clock::{format_rfc3339_into, parse_duration_ms, parse_instant, Pacer};
use crate::fastavro::FastRawWriter;
use crate::faults::{Delay, FaultConfig, Injector, Kind, Malformed, UNKNOWN_SCHEMA_ID};
use crate::metrics::Metrics;
use crate::output::Output;
use crate::progress::Progress;
use crate::replay::{self, Item};
use crate::retail::StoreHours;
use crate::sim::{blank_event, RetailConfig, SimConfig, Simulator, Step, Trend, TrendTarget};
use crate::truth::{validate, GroundTruth};

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The encoders of one run.
pub struct Encoders {
    pub events: Encoder<RawEvent>,
    /// The hand-written writer of the same bytes, when it verified against `events`.
    pub fast: Option<FastRawWriter>,
    pub unknown_schema: Encoder<RawEvent>,
    pub products: Encoder<Product>,
    pub users: Encoder<User>,
}

impl Encoders {
    fn new(
        events: Encoder<RawEvent>,
        unknown_schema: Encoder<RawEvent>,
        products: Encoder<Product>,
        users: Encoder<User>,
    ) -> Self {
        let fast = FastRawWriter::verified(&events);
        if fast.is_none() {
            tracing::warn!(
                "the fast raw event writer does not match the schema; using the generic encoder"
            );
        }
        Encoders {
            events,
            fast,
            unknown_schema,
            products,
            users,
        }
    }

    /// Appends a framed raw event to `buf`.
    pub fn encode_event(&self, ev: &RawEvent, buf: &mut Vec<u8>) -> anyhow::Result<()> {
        match &self.fast {
            Some(f) => f.encode_into(ev, buf),
            None => self.events.encode_into(ev, buf)?,
        }
        Ok(())
    }
}

/// Registers the schemas (or, in a dry run, uses fixed ids) and checks that Kafka answers.
pub async fn connect(common: &Common, metrics: &Metrics) -> anyhow::Result<(Encoders, Output)> {
    let unknown_schema = Encoder::with_id(Contract::RAW_CURRENT, UNKNOWN_SCHEMA_ID);
    if common.dry_run {
        return Ok((
            Encoders::new(
                Encoder::with_id(Contract::RAW_CURRENT, 1),
                unknown_schema,
                Encoder::with_id(Contract::Product, 2),
                Encoder::with_id(Contract::User, 3),
            ),
            Output::dry_run(),
        ));
    }
    let kafka = common.kafka.clone();
    tokio::task::spawn_blocking(move || kafka.check(Duration::from_secs(30))).await??;
    let registry = common.registry.connect()?;
    let names = &common.names;
    let at = || format!("registering schemas at {}", registry.url());
    let encoders = Encoders::new(
        Encoder::register(&registry, &names.subject(Topic::Raw))
            .await
            .with_context(at)?,
        unknown_schema,
        Encoder::register(&registry, &names.subject(Topic::Products))
            .await
            .with_context(at)?,
        Encoder::register(&registry, &names.subject(Topic::Users))
            .await
            .with_context(at)?,
    );
    let output = Output::kafka(
        &common.kafka,
        Some(metrics.delivered.clone()),
        Some(metrics.send_errors.clone()),
    )?;
    Ok((encoders, output))
}

/// The catalog of a run: the Steam CSV's games or synthetic products, and synthetic users.
pub fn load_catalog(args: &CatalogArgs, seed: u64, now_ms: i64) -> anyhow::Result<Catalog> {
    if args.profile == Profile::Retail {
        if args.steam_csv.is_some() {
            anyhow::bail!(
                "--profile retail has its own catalog: --steam-csv is for the default one"
            );
        }
        return Ok(Catalog::retail(
            seed,
            args.products.max(1),
            args.users.max(1),
            now_ms,
        ));
    }
    let users = Catalog::synthetic_users(seed, args.users.max(1), now_ms);
    let Some(path) = &args.steam_csv else {
        let mut c = Catalog::synthetic(seed, args.products.max(1), 0, now_ms);
        c.users = users;
        return Ok(c);
    };
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open --steam-csv {}", path.display()))?;
    let input = replay::decompress(file)?;
    let steam = crate::steam::load(input, &args.catalog_currency, now_ms)
        .with_context(|| format!("loading {}", path.display()))?;
    let skipped: u64 = steam.skipped.values().sum();
    println!(
        "steam catalog {}: {} rows, {} products, {skipped} rows skipped {:?}",
        path.display(),
        steam.rows,
        steam.products.len(),
        steam.skipped
    );
    if steam.products.is_empty() {
        anyhow::bail!("{} holds no usable product", path.display());
    }
    Ok(Catalog {
        products: steam.products,
        users,
    })
}

/// Publishes products and users to their compacted topics, keyed by id.
pub fn publish_dimensions(
    catalog: &Catalog,
    users: bool,
    enc: &Encoders,
    out: &Output,
    names: &TopicNames,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let (pt, ut) = (names.name(Topic::Products), names.name(Topic::Users));
    let mut buf = Vec::with_capacity(512);
    for p in &catalog.products {
        buf.clear();
        enc.products.encode_into(p, &mut buf)?;
        out.send(
            &pt,
            Some(p.product_id.to_string().as_bytes()),
            &buf,
            shutdown,
        )?;
    }
    metrics
        .dimensions
        .with_label_values(&["product"])
        .inc_by(catalog.products.len() as u64);
    if users {
        for u in &catalog.users {
            buf.clear();
            enc.users.encode_into(u, &mut buf)?;
            out.send(&ut, Some(u.user_id.to_string().as_bytes()), &buf, shutdown)?;
        }
        metrics
            .dimensions
            .with_label_values(&["user"])
            .inc_by(catalog.users.len() as u64);
    }
    let n = catalog.products.len() as u64 + if users { catalog.users.len() as u64 } else { 0 };
    metrics.records_dimension.inc_by(n);
    Ok(())
}

/// What a send loop did.
#[derive(Debug, Default)]
pub struct Totals {
    pub records: u64,
    pub events: u64,
    pub duplicates: u64,
    pub late: u64,
    pub malformed: u64,
    pub bytes: u64,
}

/// Flushes, then prints the closing report; fails when records were not delivered.
fn finish(
    out: &Output,
    totals: &Totals,
    started: Instant,
    what: &str,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    if let Err(e) = out.flush(Duration::from_secs(120)) {
        tracing::error!(error = %e, "flush did not complete");
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let d = out.deliveries();
    let mean = if totals.records > 0 {
        totals.bytes as f64 / totals.records as f64
    } else {
        0.0
    };
    println!(
        "done: sent {} records ({} events, {} duplicates, {} malformed; {} late) in {secs:.2}s \
         ({:.0} records/s), delivered {}, failed {}, mean record size {mean:.0} bytes{}{}",
        totals.records,
        totals.events,
        totals.duplicates,
        totals.malformed,
        totals.late,
        totals.records as f64 / secs,
        d.delivered(),
        d.failed(),
        if matches!(out, Output::DryRun { .. }) {
            " (dry run: nothing sent)"
        } else {
            ""
        },
        if shutdown.is_triggered() {
            " (stopped by signal)"
        } else {
            ""
        },
    );
    let _ = what;
    if d.failed() > 0 {
        anyhow::bail!(
            "{} records were not delivered; first error: {}",
            d.failed(),
            d.first_error().unwrap_or_default()
        );
    }
    Ok(())
}

fn write_truth(path: &Path, truth: &GroundTruth) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&truth.to_json())?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("cannot write the ground truth to {}", path.display()))?;
    println!("ground truth written to {}", path.display());
    Ok(())
}

/// The simulator's configuration from the flags.
pub fn sim_config(
    args: &SimulateArgs,
    catalog: &Catalog,
    now_ms: i64,
    producer_id: String,
) -> anyhow::Result<SimConfig> {
    let start_ms = match &args.start_time {
        Some(s) => parse_instant(s, now_ms).map_err(anyhow::Error::msg)?,
        None => now_ms,
    };
    let live = args.start_time.is_none();
    if !(args.speed.is_finite() && args.speed > 0.0) {
        anyhow::bail!("--speed must be above 0");
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        anyhow::bail!("--rate must be 0 (as fast as possible) or more");
    }
    let speed = if live { 1.0 } else { args.speed };
    let rate = if args.rate > 0.0 { args.rate } else { 1000.0 };
    let retail = retail_config(args)?;
    let currencies = if !args.currencies.is_empty() {
        args.currencies.clone()
    } else if retail.is_some() {
        vec!["GBP".to_string()]
    } else {
        vec!["USD".to_string()]
    };
    for c in &currencies {
        if !is_known_currency(c) {
            anyhow::bail!(
                "--currencies: {c} is not one the simulator knows ({})",
                known_currencies().join(", ")
            );
        }
    }
    let trend = match &args.trend_at {
        None => None,
        Some(at) => {
            let from_ms = match at.strip_prefix('+') {
                Some(rel) => start_ms + parse_duration_ms(rel).map_err(anyhow::Error::msg)?,
                None => parse_instant(at, now_ms).map_err(anyhow::Error::msg)?,
            };
            let len = parse_duration_ms(&args.trend_for).map_err(anyhow::Error::msg)?;
            let target = match (&args.trend_category, args.trend_product) {
                (Some(c), _) => TrendTarget::Category(c.clone()),
                (None, Some(p)) => TrendTarget::Product(p),
                (None, None) => {
                    let sellable: Vec<&Product> =
                        catalog.products.iter().filter(|p| p.price > 0.0).collect();
                    let p = sellable
                        .get(99.min(sellable.len().saturating_sub(1)))
                        .ok_or_else(|| anyhow::anyhow!("no product to trend"))?;
                    TrendTarget::Product(p.product_id)
                }
            };
            Some(Trend {
                target,
                from_ms,
                to_ms: from_ms + len,
                share: args.trend_share.clamp(0.0, 1.0),
                cart_boost: args.trend_cart_boost.max(0.0),
            })
        }
    };
    let every = parse_duration_ms(&args.price_change_every).map_err(anyhow::Error::msg)?;
    Ok(SimConfig {
        seed: args.seed,
        producer_id,
        system: "simulator".into(),
        start_ms,
        events_per_sec: rate / speed,
        seasonality: !live && !args.no_seasonality,
        sessions: args.sessions.max(1),
        think_ms: args.think_secs.map(|s| s * 1000.0),
        session_gap_ms: args.session_gap_secs.max(1) as i64 * 1000,
        popularity_skew: 1.1,
        funnel: if retail.is_some() {
            RetailConfig::funnel()
        } else {
            Default::default()
        },
        currencies,
        trend,
        price_change_every_ms: (every > 0).then_some(every),
        retail,
    })
}

/// `--end-time`: the event time a simulated run stops at (`+365d` from the start, or a time).
pub fn end_time_ms(args: &SimulateArgs, start_ms: i64, now_ms: i64) -> anyhow::Result<Option<i64>> {
    let Some(at) = &args.end_time else {
        return Ok(None);
    };
    if args.start_time.is_none() {
        anyhow::bail!("--end-time is an event time of the simulated clock: give --start-time");
    }
    let end = match at.strip_prefix('+') {
        Some(rel) => start_ms + parse_duration_ms(rel).map_err(anyhow::Error::msg)?,
        None => parse_instant(at, now_ms).map_err(anyhow::Error::msg)?,
    };
    if end <= start_ms {
        anyhow::bail!("--end-time must come after --start-time");
    }
    Ok(Some(end))
}

/// The retail profile's settings from the flags; `None` for the default profile, whose shop
/// takes none of them.
pub fn retail_config(args: &SimulateArgs) -> anyhow::Result<Option<RetailConfig>> {
    if args.catalog.profile != Profile::Retail {
        let given = [
            ("--open-hours", args.open_hours.is_some()),
            ("--closed-days", args.closed_days.is_some()),
            ("--closed-dates", args.closed_dates.is_some()),
            ("--guest-share", args.guest_share.is_some()),
            ("--repeat-line-share", args.repeat_line_share.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            anyhow::bail!("{flag} is a setting of --profile retail");
        }
        return Ok(None);
    }
    if args.start_time.is_none() {
        anyhow::bail!(
            "--profile retail runs on a simulated clock (its store hours are in event time): give \
             --start-time (now for the present, with --speed 1 for real time)"
        );
    }
    let mut r = RetailConfig::online_retail();
    r.hours = StoreHours::parse(
        args.open_hours.as_deref().unwrap_or("7-20"),
        args.closed_days.as_deref().unwrap_or("sat"),
        args.closed_dates.as_deref().unwrap_or("12-24..01-03"),
        !args.no_seasonality,
    )?;
    for (flag, v, into) in [
        ("--guest-share", args.guest_share, &mut r.guest_share),
        (
            "--repeat-line-share",
            args.repeat_line_share,
            &mut r.repeat_line,
        ),
    ] {
        if let Some(v) = v {
            if !(0.0..=1.0).contains(&v) {
                anyhow::bail!("{flag} must be between 0 and 1, not {v}");
            }
            *into = v;
        }
    }
    Ok(Some(r))
}

pub fn fault_config(args: &SimulateArgs) -> anyhow::Result<FaultConfig> {
    let f = &args.faults;
    for (name, r) in [
        ("--duplicate-ratio", f.duplicate_ratio),
        ("--late-ratio", f.late_ratio),
        ("--malformed-ratio", f.malformed_ratio),
        ("--duplicate-far-share", f.duplicate_far_share),
    ] {
        if !(0.0..=1.0).contains(&r) {
            anyhow::bail!("{name} must be between 0 and 1, not {r}");
        }
    }
    Ok(FaultConfig {
        seed: args.seed,
        duplicate_ratio: f.duplicate_ratio,
        duplicate_far_share: f.duplicate_far_share,
        duplicate_far_delay: Delay::parse(&f.duplicate_far_delay).map_err(anyhow::Error::msg)?,
        late_ratio: f.late_ratio,
        late_delay: Delay::parse(&f.late_delay).map_err(anyhow::Error::msg)?,
        malformed_ratio: f.malformed_ratio,
        malformed_kinds: if f.malformed_kinds.is_empty() {
            Malformed::ALL.to_vec()
        } else {
            f.malformed_kinds.clone()
        },
    })
}

/// `simulate`: dimensions first, then events until the count, the duration or a signal.
pub async fn simulate(
    args: SimulateArgs,
    shutdown: Shutdown,
    metrics: Metrics,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let now = wall_ms();
    let producer_id = format!("producer-{}", std::process::id());
    let catalog = load_catalog(&args.catalog, args.seed, now)?;
    let config = sim_config(&args, &catalog, now, producer_id)?;
    let faults = fault_config(&args)?;
    let end_ms = end_time_ms(&args, config.start_ms, now)?;
    if args.end_of_input != EndMark::None
        && args.count.is_none()
        && args.duration_secs.is_none()
        && end_ms.is_none()
    {
        anyhow::bail!(
            "--end-of-input needs a bounded run: give --count, --duration-secs or --end-time"
        );
    }
    let (enc, out) = connect(&args.common, &metrics).await?;
    let names = args.common.names.clone();
    let mut catalog = catalog;
    if args.prices_from_topic {
        prices_from_topic(&args.common, &mut catalog).await?;
    }
    if !args.skip_dimensions {
        publish_dimensions(&catalog, true, &enc, &out, &names, &metrics, &shutdown)?;
        println!(
            "dimensions: {} products to {}, {} users to {}",
            catalog.products.len(),
            names.name(Topic::Products),
            catalog.users.len(),
            names.name(Topic::Users)
        );
    }
    let sim = Simulator::new(catalog, config.clone())?;
    on_ready();
    tokio::task::spawn_blocking(move || {
        simulate_loop(
            &args, sim, config, end_ms, faults, &enc, &out, &metrics, &shutdown,
        )
    })
    .await?
}

/// `--prices-from-topic`: the catalog's prices from the product topic as it is now.
async fn prices_from_topic(common: &Common, catalog: &mut Catalog) -> anyhow::Result<()> {
    let topic = common.names.name(Topic::Products);
    if common.dry_run {
        println!("prices: not read from {topic} (dry run)");
        return Ok(());
    }
    let config = common.kafka.consumer("cartstream-producer")?;
    let t = topic.clone();
    let mut records = tokio::task::spawn_blocking(move || {
        cartstream_kafka::read::read_to_end(&config, &t, Duration::from_secs(60))
    })
    .await?
    .with_context(|| format!("--prices-from-topic: reading {topic}"))?;
    // One id is always on one partition: its records in offset order, oldest first.
    records.sort_by_key(|m| (rdkafka::Message::partition(m), rdkafka::Message::offset(m)));
    let decoder = cartstream_events::Decoder::<Product>::new(common.registry.connect()?);
    let mut products = Vec::with_capacity(records.len());
    let mut undecodable = 0u64;
    for m in &records {
        match decoder
            .decode(rdkafka::Message::payload(m).unwrap_or_default())
            .await
        {
            Ok(p) => products.push(p),
            Err(e) if e.is_transient() => {
                return Err(anyhow::Error::new(e).context(format!("decoding {topic}")))
            }
            Err(_) => undecodable += 1,
        }
    }
    let sync = catalog.take_prices(products);
    println!(
        "prices: {} of {} products found on {topic} ({} records, {undecodable} undecodable), {} \
         priced differently from the generated catalog",
        sync.matched,
        catalog.products.len(),
        records.len(),
        sync.changed
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn simulate_loop(
    args: &SimulateArgs,
    mut sim: Simulator,
    config: SimConfig,
    end_ms: Option<i64>,
    faults: FaultConfig,
    enc: &Encoders,
    out: &Output,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let live = args.start_time.is_none();
    let speed = if live { 1.0 } else { args.speed };
    let raw_topic = args.common.names.name(Topic::Raw);
    let products_topic = args.common.names.name(Topic::Products);
    let mut truth = args.ground_truth.as_ref().map(|_| {
        let mut t = GroundTruth::new();
        t.watch(sim.trend_product_ids());
        t
    });
    let clean = faults.is_clean();
    let mut injector = Injector::new(faults.clone());
    let mut emissions = Vec::new();
    let mut progress = Progress::new(args.common.progress, args.count, "events");
    let started = Instant::now();
    let deadline = args
        .duration_secs
        .map(|s| started + Duration::from_secs_f64(s.max(0.0)));
    let mut totals = Totals::default();
    let mut ev = blank_event();
    let mut buf = Vec::with_capacity(512);
    let mut clock_ms = i64::MIN;
    tracing::info!(
        topic = %raw_topic,
        rate = args.rate,
        count = ?args.count,
        clock = if live { "live" } else { "simulated" },
        think_ms = sim.think_ms(),
        "sending events"
    );
    let mut check = 0u32;
    loop {
        if args.count.is_some_and(|c| totals.events >= c) {
            break;
        }
        check = check.wrapping_add(1);
        if (check.is_multiple_of(256) || args.rate > 0.0)
            && (shutdown.is_triggered() || deadline.is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
        let step = sim.next(&mut ev);
        let step_ms = match &step {
            Step::PriceChange { time_ms, .. } | Step::Event { time_ms } => *time_ms,
        };
        if end_ms.is_some_and(|e| step_ms >= e) {
            break;
        }
        let time_ms = match step {
            Step::PriceChange { product, .. } => {
                buf.clear();
                enc.products.encode_into(&product, &mut buf)?;
                let key = product.product_id.to_string();
                out.send(&products_topic, Some(key.as_bytes()), &buf, shutdown)?;
                metrics.price_changes.inc();
                metrics.records_dimension.inc();
                if let Some(t) = truth.as_mut() {
                    t.record_price_change();
                }
                continue;
            }
            Step::Event { time_ms } => time_ms,
        };
        if args.rate > 0.0 {
            // Live: exactly --rate events per second. Simulated: due when the simulated clock
            // reaches the event (the rate then follows the hour of day).
            let due = if live {
                totals.events as f64 / args.rate
            } else {
                (time_ms - config.start_ms) as f64 / 1000.0 / speed
            };
            // In short naps: a simulated clock can wait long in wall time (a retail shop's
            // closed weekend at --speed 1), and a signal or the duration must still stop it.
            let mut stopped = false;
            loop {
                let wait = due - started.elapsed().as_secs_f64();
                if wait <= 0.001 {
                    break;
                }
                if shutdown.is_triggered() || deadline.is_some_and(|d| Instant::now() >= d) {
                    stopped = true;
                    break;
                }
                std::thread::sleep(Duration::from_secs_f64(wait.min(0.2)));
            }
            if stopped {
                break;
            }
        }
        let event_ms = if live { wall_ms() } else { time_ms };
        clock_ms = clock_ms.max(event_ms);
        let sent_at = if live { event_ms } else { clock_ms };
        ev.event_time.clear();
        format_rfc3339_into(event_ms, &mut ev.event_time);
        ev.source.sent_at = sent_at;
        if clean {
            buf.clear();
            enc.encode_event(&ev, &mut buf)?;
            let key = ev.user_session.as_deref().map(str::as_bytes);
            out.send(&raw_topic, key, &buf, shutdown)?;
            totals.records += 1;
            totals.events += 1;
            totals.bytes += buf.len() as u64;
            metrics.event(&ev.event_type).inc();
            metrics.records_event.inc();
            if let Some(t) = truth.as_mut() {
                t.record(&ev);
            }
        } else {
            injector.push(ev.clone(), event_ms, &mut emissions);
            totals.events += 1;
            for e in emissions.drain(..) {
                let now = if live { wall_ms() } else { clock_ms };
                send_emission(
                    e,
                    now,
                    enc,
                    out,
                    &raw_topic,
                    &mut buf,
                    &mut totals,
                    metrics,
                    truth.as_mut(),
                    shutdown,
                )?;
            }
        }
        metrics.event_time.set(event_ms as f64 / 1000.0);
        progress.update(totals.events, || {
            format!(
                "records {} delivered {} failed {} sessions {}",
                totals.records,
                out.deliveries().delivered(),
                out.deliveries().failed(),
                sim.active_sessions()
            )
        });
    }
    injector.finish(&mut emissions);
    for e in emissions.drain(..) {
        let now = if live { wall_ms() } else { clock_ms };
        send_emission(
            e,
            now,
            enc,
            out,
            &raw_topic,
            &mut buf,
            &mut totals,
            metrics,
            truth.as_mut(),
            shutdown,
        )?;
    }
    progress.finish();
    metrics.bytes.inc_by(totals.bytes);
    let mut result = finish(out, &totals, started, "events", shutdown);
    if result.is_ok() {
        let last = (clock_ms != i64::MIN).then_some(clock_ms);
        if let Err(e) = write_end_of_input(out, &raw_topic, args.end_of_input, last, shutdown) {
            result = Err(e);
        }
    }
    if let (Some(path), Some(t)) = (&args.ground_truth, truth.as_mut()) {
        let inj = injector.injected();
        t.extra.insert("source".into(), json!("simulate"));
        t.extra.insert(
            "injected".into(),
            json!({
                "duplicates": inj.duplicates,
                "duplicates_far": inj.duplicates_far,
                "late": inj.late,
                "malformed": inj.malformed,
            }),
        );
        t.extra.insert(
            "config".into(),
            json!({
                "seed": args.seed,
                "profile": format!("{:?}", args.catalog.profile).to_lowercase(),
                "clock": if live { "live" } else { "simulated" },
                "start_ms": config.start_ms,
                "speed": speed,
                "events_per_sec_event_time": config.events_per_sec,
                "session_gap_ms": config.session_gap_ms,
                "duplicate_ratio": faults.duplicate_ratio,
                "late_ratio": faults.late_ratio,
                "malformed_ratio": faults.malformed_ratio,
            }),
        );
        if let Some(tr) = &config.trend {
            t.extra.insert(
                "trend".into(),
                json!({
                    "target": match &tr.target { TrendTarget::Product(p) => json!({"product_id": p}), TrendTarget::Category(c) => json!({"category_code": c}) },
                    "product_ids": sim.trend_product_ids(),
                    "from_ms": tr.from_ms,
                    "to_ms": tr.to_ms,
                    "share": tr.share,
                }),
            );
        }
        write_truth(path, t)?;
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn send_emission(
    mut e: crate::faults::Emission,
    now_ms: i64,
    enc: &Encoders,
    out: &Output,
    topic: &str,
    buf: &mut Vec<u8>,
    totals: &mut Totals,
    metrics: &Metrics,
    truth: Option<&mut GroundTruth>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    e.event.source.sent_at = now_ms;
    buf.clear();
    let mut undecodable = None;
    match (&e.kind, e.raw_bytes.take()) {
        (Kind::Malformed(Malformed::GarbageBytes), Some(bytes)) => {
            *buf = bytes;
            undecodable = Some("bad_magic");
        }
        (Kind::Malformed(Malformed::UnknownSchemaId), _) => {
            enc.unknown_schema.encode_into(&e.event, buf)?;
            undecodable = Some("unknown_schema_id");
        }
        _ => enc.encode_event(&e.event, buf)?,
    }
    let key = e.event.user_session.as_deref().map(str::as_bytes);
    out.send(topic, key, buf, shutdown)?;
    totals.records += 1;
    totals.bytes += buf.len() as u64;
    match &e.kind {
        Kind::Original => {
            metrics.records_event.inc();
            metrics.event(&e.event.event_type).inc();
        }
        Kind::Late { .. } => {
            totals.late += 1;
            metrics.records_event.inc();
            metrics.event(&e.event.event_type).inc();
            metrics.faults.with_label_values(&["late"]).inc();
        }
        Kind::Duplicate { .. } => {
            totals.duplicates += 1;
            metrics.records_duplicate.inc();
            metrics.faults.with_label_values(&["duplicate"]).inc();
        }
        Kind::Malformed(m) => {
            totals.malformed += 1;
            metrics.records_malformed.inc();
            metrics.faults.with_label_values(&[m.as_str()]).inc();
        }
    }
    if let Some(t) = truth {
        match undecodable {
            Some(code) => t.record_undecodable(code),
            None => t.record(&e.event),
        }
    }
    Ok(())
}

/// What a replay skipped, by reason, with the first line numbers.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayReport {
    pub file: String,
    pub rows: u64,
    pub sent: u64,
    pub skipped: BTreeMap<&'static str, SkipDetail>,
    /// Rows sent that a cleaner must reject, by its rejection code.
    pub cleaner_will_reject: BTreeMap<&'static str, u64>,
    /// Rows sent without a user, as the anonymous user of their session.
    pub guests: u64,
    /// Distinct SKUs (`--product-ids sku`).
    pub skus: u64,
    /// SKUs whose derived id another SKU of the file already had (their events merge).
    pub sku_collisions: Vec<(String, String)>,
    /// With `--dry-run`: rows sent whose event id an earlier row of the file already had (exact
    /// duplicates, which the cleaner drops).
    pub duplicate_ids: Option<u64>,
    /// Highest event time sent (ms), when any row's time parsed.
    pub max_event_time: Option<i64>,
    /// The end-of-input mark written after the rows (`max` or ms), and to how many partitions.
    pub end_of_input: Option<serde_json::Value>,
    /// Set when the end of the file could not be read (e.g. a truncated gzip stream).
    pub unreadable_rest: Option<serde_json::Value>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct SkipDetail {
    pub count: u64,
    /// The first line numbers (1-based, the header is line 1).
    pub lines: Vec<u64>,
}

/// The mapping of a replay from its flags.
pub fn replay_mapping(args: &ReplayArgs) -> replay::Mapping {
    replay::Mapping {
        columns: args.columns.clone(),
        constants: args.set.clone(),
        product_ids: args.product_ids,
        guests: args.guest_users,
        time_format: args.time_format.clone(),
    }
}

/// The mapping as `--dry-run` prints it.
pub fn describe_mapping(cols: &replay::Columns, default_currency: &str) -> String {
    use replay::Source;
    let mut out = String::from("mapping (target <- source):\n");
    for (target, source) in cols.sources() {
        let from = match (target, source) {
            (_, Some(Source::Column(i, name))) => format!("column {name:?} (#{})", i + 1),
            (_, Some(Source::Constant(v))) => format!("constant {v:?}"),
            ("category_id", None) => "none: 0".to_string(),
            ("quantity", None) => "none: 1".to_string(),
            ("currency", None) => format!("none: {default_currency} (--currency)"),
            ("event_id", None) => "none: derived from the row's content".to_string(),
            (_, None) => "none: null".to_string(),
        };
        let note = match (target, cols.product_ids()) {
            ("product_id", replay::ProductIds::Sku) => {
                " as a SKU, mapped to a stable id in [2^52, 2^53)"
            }
            _ => "",
        };
        out.push_str(&format!("  {target:<14} <- {from}{note}\n"));
    }
    let unused = cols.unused();
    if !unused.is_empty() {
        out.push_str(&format!("  unused columns: {}\n", unused.join(", ")));
    }
    out
}

/// The end-of-input mark of a bounded run, from the flag and the highest event time sent.
pub fn end_mark(flag: EndMark, max_event_time: Option<i64>) -> Option<EndOfInput> {
    match flag {
        EndMark::None => None,
        EndMark::Max => Some(EndOfInput::end()),
        EndMark::Last => max_event_time.map(EndOfInput::at),
    }
}

/// Writes the run's end-of-input mark (after `finish` flushed the data records), reporting it.
fn write_end_of_input(
    out: &Output,
    topic: &str,
    flag: EndMark,
    max_event_time: Option<i64>,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<serde_json::Value>> {
    if flag == EndMark::None {
        return Ok(None);
    }
    if shutdown.is_triggered() {
        println!("end of input: not written (stopped by signal: the input did not end)");
        return Ok(None);
    }
    let Some(mark) = end_mark(flag, max_event_time) else {
        println!("end of input: not written (--end-of-input last, but no event time was sent)");
        return Ok(None);
    };
    let shown = control::format_watermark(mark.watermark);
    if matches!(out, Output::DryRun { .. }) {
        println!("end of input: would write watermark {shown} to every partition of {topic}");
        return Ok(Some(json!({"watermark": shown, "partitions": 0})));
    }
    let n = out.end_of_input(topic, &mark, Duration::from_secs(60))?;
    println!("end of input: watermark {shown} written to {n} partitions of {topic}");
    Ok(Some(json!({"watermark": shown, "partitions": n})))
}

/// `replay`: every row of the file that forms an event, once, in file order.
pub async fn replay(
    args: ReplayArgs,
    shutdown: Shutdown,
    metrics: Metrics,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open --file {}", args.file.display()))?;
    let input =
        replay::decompress(file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let rows = replay::Rows::new(input, &replay_mapping(&args))
        .with_context(|| format!("reading the header of {}", args.file.display()))?;
    let max_gap = match &args.max_gap {
        Some(g) => Some(parse_duration_ms(g).map_err(anyhow::Error::msg)?),
        None => None,
    };
    if args.common.dry_run {
        println!("dry run of {}: nothing is sent", args.file.display());
        print!("{}", describe_mapping(rows.columns(), &args.currency));
    }
    let (enc, out) = connect(&args.common, &metrics).await?;
    on_ready();
    tokio::task::spawn_blocking(move || {
        replay_loop(&args, rows, max_gap, &enc, &out, &metrics, &shutdown)
    })
    .await?
}

fn replay_loop(
    args: &ReplayArgs,
    rows: replay::Rows<Box<dyn std::io::Read + Send>>,
    max_gap: Option<i64>,
    enc: &Encoders,
    out: &Output,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let topic = args.common.names.name(Topic::Raw);
    let file_name = args.file.file_name().map_or_else(
        || args.file.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let producer_id = format!("producer-{}", std::process::id());
    let mut truth = args.ground_truth.as_ref().map(|_| GroundTruth::new());
    let mut report = ReplayReport {
        file: args.file.display().to_string(),
        ..Default::default()
    };
    let dry_run = args.common.dry_run;
    let mut ids_seen: Option<HashSet<String>> = dry_run.then(HashSet::new);
    let mut skus: HashMap<i64, String> = HashMap::new();
    let mut samples = 0usize;
    let mut pacer = Pacer::new(args.speed, max_gap);
    let mut shift: Option<i64> = None;
    let mut progress = Progress::new(args.common.progress, args.limit, "rows");
    let mut totals = Totals::default();
    let mut buf = Vec::with_capacity(512);
    let started = Instant::now();
    let sent_counter = metrics.replay_rows.with_label_values(&["sent"]);
    for item in rows {
        if shutdown.is_triggered() || args.limit.is_some_and(|l| report.rows >= l) {
            break;
        }
        match item {
            Item::Skipped { line, reason } => {
                report.rows += 1;
                let d = report.skipped.entry(reason.as_str()).or_default();
                d.count += 1;
                if d.lines.len() < 20 {
                    d.lines.push(line);
                }
                metrics
                    .replay_rows
                    .with_label_values(&[reason.as_str()])
                    .inc();
            }
            Item::Unreadable { line, error } => {
                tracing::warn!(line, error = %error, "the rest of the file cannot be read");
                report.unreadable_rest = Some(json!({"after_line": line, "error": error}));
                metrics
                    .replay_rows
                    .with_label_values(&["unreadable_rest"])
                    .inc();
            }
            Item::Row { line, row } => {
                report.rows += 1;
                let time = row.time_ms;
                if let Some(due) = pacer.due_secs(time) {
                    let wait = due - started.elapsed().as_secs_f64();
                    if wait > 0.001 {
                        std::thread::sleep(Duration::from_secs_f64(wait));
                    }
                }
                if row.guest {
                    report.guests += 1;
                }
                if let Some(sku) = &row.sku {
                    match skus.get(&row.product_id) {
                        None => {
                            skus.insert(row.product_id, sku.clone());
                        }
                        Some(first) if first != sku => {
                            if report.sku_collisions.len() < 20 {
                                report.sku_collisions.push((first.clone(), sku.clone()));
                            }
                        }
                        Some(_) => {}
                    }
                }
                let now = wall_ms();
                let meta = SourceMeta {
                    system: "replay".into(),
                    producer_id: producer_id.clone(),
                    file: Some(file_name.clone()),
                    line: Some(line as i64),
                    sent_at: now,
                };
                let mut ev = row.into_event(&args.currency, meta);
                let mut sent_time = time;
                if let (true, Some(t)) = (args.shift_to_now, time) {
                    let s = *shift.get_or_insert(now - t);
                    ev.event_time.clear();
                    format_rfc3339_into(t + s, &mut ev.event_time);
                    sent_time = Some(t + s);
                }
                if let Some(t) = sent_time {
                    report.max_event_time = Some(report.max_event_time.map_or(t, |m| m.max(t)));
                }
                buf.clear();
                enc.encode_event(&ev, &mut buf)?;
                let key = ev.user_session.as_deref().map(str::as_bytes);
                out.send(&topic, key, &buf, shutdown)?;
                report.sent += 1;
                totals.records += 1;
                totals.events += 1;
                totals.bytes += buf.len() as u64;
                sent_counter.inc();
                metrics.records_event.inc();
                metrics.event(&ev.event_type).inc();
                if let Err(code) = validate(&ev) {
                    *report.cleaner_will_reject.entry(code).or_default() += 1;
                } else if let Some(seen) = ids_seen.as_mut() {
                    if !seen.insert(ev.event_id.clone()) {
                        *report.duplicate_ids.get_or_insert(0) += 1;
                    }
                }
                if dry_run && samples < args.sample_rows {
                    samples += 1;
                    println!(
                        "row {line} as sent (key {:?}): {}",
                        ev.user_session.as_deref().unwrap_or(""),
                        serde_json::to_string(&ev)?
                    );
                }
                if let Some(t) = time {
                    metrics.event_time.set(t as f64 / 1000.0);
                }
                if let Some(t) = truth.as_mut() {
                    t.record(&ev);
                }
            }
        }
        progress.update(report.rows, || {
            format!(
                "sent {} delivered {} skipped {}",
                report.sent,
                out.deliveries().delivered(),
                report.rows - report.sent
            )
        });
    }
    progress.finish();
    report.skus = skus.len() as u64;
    if dry_run {
        report.duplicate_ids.get_or_insert(0);
    }
    metrics.bytes.inc_by(totals.bytes);
    let mut result = finish(out, &totals, started, "rows", shutdown);
    if result.is_ok() {
        match write_end_of_input(
            out,
            &topic,
            args.end_of_input,
            report.max_event_time,
            shutdown,
        ) {
            Ok(v) => report.end_of_input = v,
            Err(e) => result = Err(e),
        }
    }
    let skipped: u64 = report.skipped.values().map(|d| d.count).sum();
    println!(
        "replay {}: {} rows, {} sent, {skipped} skipped",
        report.file, report.rows, report.sent
    );
    for (reason, d) in &report.skipped {
        println!("  skipped {reason}: {} (lines {:?})", d.count, d.lines);
    }
    for (code, n) in &report.cleaner_will_reject {
        println!("  sent, the cleaner will reject as {code}: {n}");
    }
    if let Some(n) = report.duplicate_ids {
        println!("  sent, the cleaner will drop as exact duplicates: {n}");
    }
    if report.guests > 0 {
        println!("  guest rows sent as anonymous users: {}", report.guests);
    }
    if args.product_ids == replay::ProductIds::Sku {
        println!(
            "  distinct SKUs: {} (id collisions: {})",
            report.skus,
            report.sku_collisions.len()
        );
    }
    if let Some(u) = &report.unreadable_rest {
        println!("  the rest of the file could not be read: {u}");
    }
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    if let (Some(path), Some(t)) = (&args.ground_truth, truth.as_mut()) {
        t.extra.insert("source".into(), json!("replay"));
        t.extra
            .insert("replay".into(), serde_json::to_value(&report)?);
        write_truth(path, t)?;
    }
    result
}

/// `load-catalog`: products (and users) to the dimension topics, then exit.
pub async fn load_catalog_cmd(
    args: LoadCatalogArgs,
    shutdown: Shutdown,
    metrics: Metrics,
) -> anyhow::Result<()> {
    let now = wall_ms();
    let catalog = load_catalog(&args.catalog, args.seed, now)?;
    let (enc, out) = connect(&args.common, &metrics).await?;
    let started = Instant::now();
    let names = args.common.names.clone();
    let users = !args.skip_users;
    tokio::task::spawn_blocking(move || {
        publish_dimensions(&catalog, users, &enc, &out, &names, &metrics, &shutdown)?;
        let n = catalog.products.len() as u64 + if users { catalog.users.len() as u64 } else { 0 };
        println!(
            "catalog: {} products to {}{}",
            catalog.products.len(),
            names.name(Topic::Products),
            if users {
                format!(
                    ", {} users to {}",
                    catalog.users.len(),
                    names.name(Topic::Users)
                )
            } else {
                String::new()
            }
        );
        let totals = Totals {
            records: n,
            ..Totals::default()
        };
        finish(&out, &totals, started, "records", &shutdown)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulate_args(flags: &[&str]) -> SimulateArgs {
        use clap::Parser;
        let mut argv = vec!["p", "simulate"];
        argv.extend(flags);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            Some(crate::cli::Command::Simulate(a)) => *a,
            _ => panic!("simulate"),
        }
    }

    #[test]
    fn end_time_and_retail_settings_are_checked() {
        let day = 86_400_000;
        let a = simulate_args(&["--start-time", "2026-01-01", "--end-time", "+365d"]);
        assert_eq!(end_time_ms(&a, 0, 0).unwrap(), Some(365 * day));
        let a = simulate_args(&["--start-time", "2026-01-02", "--end-time", "2026-01-01"]);
        assert!(
            end_time_ms(&a, 1_767_312_000_000, 0).is_err(),
            "before the start"
        );
        assert!(end_time_ms(&simulate_args(&["--end-time", "+1d"]), 0, 0).is_err());
        assert_eq!(end_time_ms(&simulate_args(&[]), 0, 0).unwrap(), None);

        let catalog = Catalog::retail(1, 10, 10, 0);
        let ok = |flags: &[&str]| sim_config(&simulate_args(flags), &catalog, 0, "p".into());
        let c = ok(&["--profile", "retail", "--start-time", "2026-11-01"]).unwrap();
        assert_eq!(c.currencies, vec!["GBP"], "the retail shop's currency");
        assert!(c.retail.is_some());
        let c = ok(&["--start-time", "2026-11-01"]).unwrap();
        assert_eq!(
            (c.currencies, c.retail.is_none()),
            (vec!["USD".into()], true)
        );
        for bad in [
            &["--profile", "retail"][..],
            &["--start-time", "2026-11-01", "--closed-days", "sun"],
            &[
                "--profile",
                "retail",
                "--start-time",
                "now",
                "--guest-share",
                "1.5",
            ],
            &[
                "--profile",
                "retail",
                "--start-time",
                "now",
                "--open-hours",
                "9",
            ],
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_end_mark_follows_the_flag() {
        assert_eq!(end_mark(EndMark::None, Some(5)), None);
        assert_eq!(end_mark(EndMark::Max, None), Some(EndOfInput::end()));
        assert_eq!(end_mark(EndMark::Last, Some(5)), Some(EndOfInput::at(5)));
        assert_eq!(
            end_mark(EndMark::Last, None),
            None,
            "nothing timed was sent"
        );
    }
}
