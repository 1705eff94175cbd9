//! `cartstream-enricher`: joins clean events with the product and user dimensions.
//!
//! The dimensions are tables built from the compacted `catalog.products` and `catalog.users`
//! topics (like a GlobalKTable: every instance reads every partition). They are fully loaded up to
//! the end offsets seen at start before the first event is joined, then followed live, so an
//! update (a price change) is seen by the events processed after it arrives. Events whose product
//! or user is unknown are enriched with explicit unknowns and counted, never dropped.
//! Reads `purchases.clean`, writes `purchases.enriched` exactly once.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cartstream_events::types::{CleanEvent, EnrichedEvent, Product, User};
use cartstream_events::{Decoder, Encoder, Registry};
use cartstream_kafka::{KafkaArgs, Topic};
use cartstream_processors::enrich::{enrich, Tables};
use cartstream_runtime::Shutdown;
use cartstream_stream::{Input, Output, ProcessError, Processor, ProcessorArgs};
use clap::Parser;
use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounterVec, IntGaugeVec};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};

const STAGE: &str = "enricher";

#[derive(Parser)]
#[command(
    name = "cartstream-enricher",
    version,
    about = "Join clean purchase events with the product and user dimensions, exactly once"
)]
struct Cli {
    #[command(flatten)]
    common: ProcessorArgs,
}

struct Metrics {
    unknown: IntCounterVec,
    updates: IntCounterVec,
    size: IntGaugeVec,
}

impl Metrics {
    fn register() -> anyhow::Result<Self> {
        Ok(Metrics {
            unknown: register_int_counter_vec!(
                "cartstream_enricher_unknown_dimension_total",
                "Events joined with an unknown product or user",
                &["dimension"]
            )?,
            updates: register_int_counter_vec!(
                "cartstream_enricher_dimension_updates_total",
                "Dimension records applied (including the initial load), by outcome",
                &["dimension", "outcome"]
            )?,
            size: register_int_gauge_vec!(
                "cartstream_enricher_dimension_table_rows",
                "Rows of each dimension table",
                &["dimension"]
            )?,
        })
    }
}

struct Enricher {
    decoder: Decoder<CleanEvent>,
    encoder: Encoder<EnrichedEvent>,
    tables: Arc<RwLock<Tables>>,
    out_topic: String,
    metrics: Arc<Metrics>,
}

impl Processor for Enricher {
    async fn on_assigned(&mut self, _: &[(String, i32)]) -> anyhow::Result<()> {
        Ok(())
    }

    fn on_revoked(&mut self, _: &[(String, i32)]) {}

    /// Stateless for event time: the end of input goes downstream as it came.
    async fn on_end_of_input(
        &mut self,
        input: &Input<'_>,
        end: i64,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        out.forward_end(&self.out_topic, input, end);
        Ok(())
    }
    async fn process(&mut self, input: &Input<'_>, out: &mut Output) -> Result<(), ProcessError> {
        let clean = match self.decoder.decode(input.payload.unwrap_or_default()).await {
            Ok(c) => c,
            Err(e) if e.is_transient() => return Err(ProcessError::Transient(e.into())),
            Err(e) => {
                out.dead_letter(input, STAGE, e.code(), e.to_string(), e.schema_id());
                return Ok(());
            }
        };
        let enriched = {
            let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
            enrich(clean, &tables)
        };
        if !enriched.product_known {
            self.metrics.unknown.with_label_values(&["product"]).inc();
        }
        if !enriched.user_known {
            self.metrics.unknown.with_label_values(&["user"]).inc();
        }
        let bytes = self
            .encoder
            .encode(&enriched)
            .map_err(|e| ProcessError::Fatal(e.into()))?;
        out.send(
            &self.out_topic,
            Some(enriched.user_session.as_bytes()),
            bytes,
        );
        Ok(())
    }

    fn commit(&mut self) {}

    fn rollback(&mut self) {}
}

/// Follows both dimension topics from the beginning; `loaded` fires once the end offsets seen at
/// start are reached.
async fn follow_dimensions(
    kafka: KafkaArgs,
    registry: Arc<Registry>,
    topics: [String; 2],
    tables: Arc<RwLock<Tables>>,
    metrics: Arc<Metrics>,
    loaded: tokio::sync::oneshot::Sender<()>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut config = kafka.consumer("cartstream-enricher-dimensions")?;
    config.set("isolation.level", "read_committed");
    let consumer: StreamConsumer = config.create()?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining: HashMap<(String, i32), i64> = HashMap::new();
    let c = &consumer;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        for topic in &topics {
            let md = c.fetch_metadata(Some(topic), Duration::from_secs(30))?;
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .filter(|t| t.error().is_none())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "dimension topic {topic} does not exist: run cartstream-admin bootstrap"
                    )
                })?;
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                let (low, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(30))?;
                if high > low {
                    remaining.insert((topic.clone(), p.id()), high);
                }
            }
        }
        Ok(())
    })?;
    consumer.assign(&tpl)?;
    let products = Decoder::<Product>::new(registry.clone());
    let users = Decoder::<User>::new(registry);
    let mut loaded = Some(loaded);
    if remaining.is_empty() {
        loaded.take().map(|l| l.send(()));
    }
    loop {
        let msg = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "dimension consumer error");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let is_products = msg.topic() == topics[0];
        let dim = if is_products { "product" } else { "user" };
        let id = msg
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.trim().parse::<i64>().ok());
        let outcome = match (id, msg.payload()) {
            (None, _) => "bad_key",
            (Some(id), None) => {
                let mut t = tables.write().unwrap_or_else(|p| p.into_inner());
                if is_products {
                    t.apply_product(id, None)
                } else {
                    t.apply_user(id, None)
                }
                "deleted"
            }
            (Some(id), Some(bytes)) if is_products => match products.decode(bytes).await {
                Ok(p) => {
                    tables
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply_product(id, Some(p));
                    "applied"
                }
                Err(e) => {
                    tracing::warn!(error = %e, id, "undecodable product record skipped");
                    "undecodable"
                }
            },
            (Some(id), Some(bytes)) => match users.decode(bytes).await {
                Ok(u) => {
                    tables
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply_user(id, Some(u));
                    "applied"
                }
                Err(e) => {
                    tracing::warn!(error = %e, id, "undecodable user record skipped");
                    "undecodable"
                }
            },
        };
        metrics.updates.with_label_values(&[dim, outcome]).inc();
        {
            let t = tables.read().unwrap_or_else(|p| p.into_inner());
            metrics
                .size
                .with_label_values(&["product"])
                .set(t.products.len() as i64);
            metrics
                .size
                .with_label_values(&["user"])
                .set(t.users.len() as i64);
        }
        if loaded.is_some() {
            let key = (msg.topic().to_string(), msg.partition());
            if remaining
                .get(&key)
                .is_some_and(|high| msg.offset() + 1 >= *high)
            {
                remaining.remove(&key);
            }
            if remaining.is_empty() {
                loaded.take().map(|l| l.send(()));
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cartstream_runtime::exit_code(run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = &cli.common;
    let service = c.service.init("cartstream-enricher").await?;
    let registry = c.registry.connect()?;
    let names = &c.names;
    let k = c.kafka.clone();
    tokio::task::spawn_blocking(move || k.check(Duration::from_secs(30))).await??;
    let metrics = Arc::new(Metrics::register()?);
    let tables = Arc::new(RwLock::new(Tables::default()));
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    let follower = tokio::spawn(follow_dimensions(
        c.kafka.clone(),
        registry.clone(),
        [names.name(Topic::Products), names.name(Topic::Users)],
        tables.clone(),
        metrics.clone(),
        loaded_tx,
        service.shutdown.clone(),
    ));
    tracing::info!("loading the product and user dimensions");
    tokio::select! {
        r = loaded_rx => r.map_err(|_| anyhow::anyhow!("the dimension loader stopped before the tables were loaded"))?,
        _ = service.shutdown.wait() => return Ok(()),
    }
    {
        let t = tables.read().unwrap_or_else(|p| p.into_inner());
        tracing::info!(
            products = t.products.len(),
            users = t.users.len(),
            "dimensions loaded"
        );
    }
    let enricher = Enricher {
        decoder: Decoder::new(registry.clone()),
        encoder: Encoder::register(&registry, &names.subject(Topic::Enriched)).await?,
        tables,
        out_topic: names.name(Topic::Enriched),
        metrics,
    };
    let result = c
        .run(
            STAGE,
            &[names.name(Topic::Clean)],
            &registry,
            enricher,
            &service,
        )
        .await;
    service.shutdown.trigger();
    if let Ok(Err(e)) = follower.await {
        tracing::warn!(error = %format!("{e:#}"), "dimension follower stopped");
    }
    result
}
