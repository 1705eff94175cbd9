//! `cartstream-producer`: simulate shoppers and publish their events to Kafka.
//!
//! Publishes the product and user dimensions to their compacted topics first, then events to
//! the raw topic, keyed by `user_session` so that one session's events stay in order on one
//! partition (sessionization and funnels need that order; users spread sessions evenly).
//! Delivery is idempotent with `acks=all`; on exit (count reached, duration over, or SIGTERM) it
//! flushes and reports sent, failed and rate.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cartstream_events::types::{Product, RawEvent, User};
use cartstream_events::{Encoder, RegistryArgs};
use cartstream_kafka::{KafkaArgs, Topic, TopicNames};
use cartstream_producer::catalog::Catalog;
use cartstream_producer::sim::{SimConfig, Simulator};
use cartstream_runtime::ServiceArgs;
use clap::Parser;
use prometheus::{register_int_counter, register_int_counter_vec, IntCounter, IntCounterVec};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

#[derive(Parser)]
#[command(
    name = "cartstream-producer",
    version,
    about = "Simulate shoppers and publish Avro purchase events, products and users to Kafka"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    names: TopicNames,
    #[command(flatten)]
    service: ServiceArgs,
    /// Stop after this many events (default: run until --duration or SIGTERM).
    #[arg(long, env = "PRODUCER_COUNT")]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, env = "PRODUCER_DURATION_SECS")]
    duration_secs: Option<u64>,
    /// Events per second; 0 sends as fast as possible.
    #[arg(long, env = "PRODUCER_RATE", default_value_t = 1000)]
    rate: u64,
    /// Seed of the simulation; the same seed gives the same catalog and events.
    #[arg(long, env = "PRODUCER_SEED", default_value_t = 42)]
    seed: u64,
    /// Products in the synthetic catalog.
    #[arg(long, default_value_t = 5000)]
    products: usize,
    /// Users of the synthetic catalog.
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    /// Shoppers active at the same time.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Do not publish the product and user dimensions.
    #[arg(long)]
    skip_dimensions: bool,
}

struct Metrics {
    sent: IntCounterVec,
    failed: IntCounter,
    dimensions: IntCounterVec,
}

impl Metrics {
    fn register() -> anyhow::Result<Self> {
        Ok(Metrics {
            sent: register_int_counter_vec!(
                "cartstream_producer_events_sent_total",
                "Events handed to Kafka, by event type",
                &["event_type"]
            )?,
            failed: register_int_counter!(
                "cartstream_producer_send_errors_total",
                "Records whose delivery failed after retries"
            )?,
            dimensions: register_int_counter_vec!(
                "cartstream_producer_dimension_records_total",
                "Dimension records published, by topic",
                &["topic"]
            )?,
        })
    }
}

/// Counts deliveries from librdkafka's callback thread.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

struct Ctx(Arc<Deliveries>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let service = cli.service.init("cartstream-producer").await?;
    let metrics = Metrics::register()?;
    let registry = cli.registry.connect()?;
    let raw_topic = cli.names.name(Topic::Raw);
    let events: Encoder<RawEvent> = Encoder::register(&registry, &cli.names.subject(Topic::Raw))
        .await
        .with_context(|| format!("registering the raw event schema at {}", registry.url()))?;
    let deliveries = Arc::new(Deliveries::default());
    let producer: ThreadedProducer<Ctx> = cli
        .kafka
        .producer()?
        .create_with_context(Ctx(deliveries.clone()))
        .with_context(|| format!("creating a Kafka producer for {}", cli.kafka.brokers))?;

    let now = chrono::Utc::now().timestamp_millis();
    let catalog = Catalog::synthetic(cli.seed, cli.products.max(1), cli.users.max(1), now);
    if !cli.skip_dimensions {
        let products: Encoder<Product> =
            Encoder::register(&registry, &cli.names.subject(Topic::Products)).await?;
        let users: Encoder<User> =
            Encoder::register(&registry, &cli.names.subject(Topic::Users)).await?;
        let (pt, ut) = (
            cli.names.name(Topic::Products),
            cli.names.name(Topic::Users),
        );
        for p in &catalog.products {
            send(
                &producer,
                &pt,
                &p.product_id.to_string(),
                &products.encode(p)?,
                &service.shutdown,
            )
            .await?;
        }
        for u in &catalog.users {
            send(
                &producer,
                &ut,
                &u.user_id.to_string(),
                &users.encode(u)?,
                &service.shutdown,
            )
            .await?;
        }
        metrics
            .dimensions
            .with_label_values(&[pt.as_str()])
            .inc_by(catalog.products.len() as u64);
        metrics
            .dimensions
            .with_label_values(&[ut.as_str()])
            .inc_by(catalog.users.len() as u64);
        tracing::info!(
            products = catalog.products.len(),
            users = catalog.users.len(),
            "dimensions published"
        );
    }

    let mut sim = Simulator::new(
        catalog,
        SimConfig {
            seed: cli.seed,
            concurrent_sessions: cli.sessions,
            producer_id: format!("producer-{}", std::process::id()),
            ..SimConfig::default()
        },
    );
    service.health.set_ready(true);
    let started = Instant::now();
    let deadline = cli.duration_secs.map(|s| started + Duration::from_secs(s));
    let mut sent: u64 = 0;
    let mut last_report = Instant::now();
    let mut buf = Vec::with_capacity(512);
    tracing::info!(topic = %raw_topic, rate = cli.rate, count = ?cli.count, "sending events");
    while !service.shutdown.is_triggered()
        && cli.count.is_none_or(|c| sent < c)
        && deadline.is_none_or(|d| Instant::now() < d)
    {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let ev = sim.next_event(now_ms);
        buf.clear();
        events.encode_into(&ev, &mut buf)?;
        let key = ev.user_session.as_deref().unwrap_or_default();
        send(&producer, &raw_topic, key, &buf, &service.shutdown).await?;
        metrics
            .sent
            .with_label_values(&[ev.event_type.as_str()])
            .inc();
        sent += 1;
        if cli.rate > 0 {
            // Pace against the start so rounding never accumulates.
            let due = started + Duration::from_secs_f64(sent as f64 / cli.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        } else if sent % 4096 == 0 {
            tokio::task::yield_now().await;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            report(sent, &deliveries, started, false);
        }
    }
    let flushed =
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(60))).await?;
    if let Err(e) = flushed {
        tracing::error!(error = %e, "flush did not complete");
    }
    metrics
        .failed
        .inc_by(deliveries.failed.load(Ordering::Relaxed));
    report(sent, &deliveries, started, true);
    let failed = deliveries.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = deliveries
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        anyhow::bail!(
            "{failed} events were not delivered; first error: {}",
            first.unwrap_or_default()
        );
    }
    Ok(())
}

fn report(sent: u64, d: &Deliveries, started: Instant, last: bool) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let delivered = d.delivered.load(Ordering::Relaxed);
    let failed = d.failed.load(Ordering::Relaxed);
    let line = format!(
        "{}sent {sent} events in {secs:.1}s ({:.0}/s), delivered {delivered}, failed {failed}",
        if last { "done: " } else { "" },
        sent as f64 / secs
    );
    if last {
        println!("{line}");
    } else {
        eprintln!("{line}");
    }
}

/// Enqueues one record, waiting while librdkafka's queue is full.
async fn send(
    producer: &ThreadedProducer<Ctx>,
    topic: &str,
    key: &str,
    payload: &[u8],
    shutdown: &cartstream_runtime::Shutdown,
) -> anyhow::Result<()> {
    loop {
        match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                if shutdown.is_triggered() {
                    anyhow::bail!("shutdown while the send queue was full");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(anyhow::anyhow!("cannot send to {topic}: {e}")),
        }
    }
}
