//! `cartstream-cleaner`: validates, normalises and deduplicates raw events.
//!
//! Reads `purchases.raw`, writes `purchases.clean` (key `user_session`), rejects to
//! `purchases.dlq` with a reason, exactly once (see `cartstream-stream`). Deduplication state is
//! kept per input partition and written, in the same transaction as the outputs, to a compacted
//! changelog topic `<group>.changelog` (key `event_id`, value the event time); a restarted or
//! newly assigned instance rebuilds it from there before processing, so a duplicate arriving
//! after a crash is still dropped.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cartstream_events::types::{CleanEvent, RawEvent};
use cartstream_events::{wire, Decoder, Encoder, Registry};
use cartstream_kafka::admin::{self, TopicSpec};
use cartstream_kafka::{read, KafkaArgs, Topic};
use cartstream_processors::clean::{self, Rules};
use cartstream_processors::dedup::{Dedup, Verdict};
use cartstream_stream::{Input, Output, ProcessError, Processor, ProcessorArgs};
use clap::Parser;
use rdkafka::Message;

const STAGE: &str = "cleaner";

#[derive(Parser)]
#[command(
    name = "cartstream-cleaner",
    version,
    about = "Validate, normalise and deduplicate raw purchase events, exactly once"
)]
struct Cli {
    #[command(flatten)]
    common: ProcessorArgs,
    /// Event-time horizon of deduplication, in hours: a copy of an event is dropped if it comes
    /// within this much event time of the newest event seen on its partition.
    #[arg(long, env = "DEDUP_HORIZON_HOURS", default_value_t = 24.0)]
    dedup_horizon_hours: f64,
    /// Most event ids remembered per input partition (memory bound; the oldest go first).
    #[arg(long, env = "DEDUP_MAX_ENTRIES", default_value_t = 2_000_000)]
    dedup_max_entries: usize,
    /// How far an event may lie after the moment its producer sent it, in seconds.
    #[arg(long, env = "MAX_FUTURE_SECS", default_value_t = 3600)]
    max_future_secs: i64,
    /// Highest accepted price, in the event's currency; above it the event is dead-lettered as
    /// `out_of_range` (at most 1e12, so that money sums stay exact).
    #[arg(long, env = "MAX_PRICE", default_value_t = clean::DEFAULT_MAX_PRICE)]
    max_price: f64,
    /// Highest accepted quantity; above it the event is dead-lettered as `out_of_range`.
    #[arg(long, env = "MAX_QUANTITY", default_value_t = clean::DEFAULT_MAX_QUANTITY)]
    max_quantity: i32,
}

struct Cleaner {
    decoder: Decoder<RawEvent>,
    encoder: Encoder<CleanEvent>,
    rules: Rules,
    out_topic: String,
    changelog: String,
    horizon_ms: i64,
    max_entries: usize,
    dedup: HashMap<i32, Dedup>,
    kafka: KafkaArgs,
    group: String,
}

impl Processor for Cleaner {
    async fn on_assigned(&mut self, partitions: &[(String, i32)]) -> anyhow::Result<()> {
        let ids: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let mut config = self.kafka.consumer(&format!("{}-restore", self.group))?;
        config.set("enable.partition.eof", "false");
        let topic = self.changelog.clone();
        let wanted = ids.clone();
        let records = tokio::task::spawn_blocking(move || {
            read::read_partitions_to_end(&config, &topic, Some(&wanted), Duration::from_secs(300))
        })
        .await??;
        for p in &ids {
            self.dedup
                .insert(*p, Dedup::new(self.horizon_ms, self.max_entries));
        }
        let mut restored = 0usize;
        for m in records {
            let (Some(key), Some(value)) = (m.key(), m.payload()) else {
                continue;
            };
            let (Ok(id), Ok(time)) = (std::str::from_utf8(key), <[u8; 8]>::try_from(value)) else {
                continue;
            };
            if let Some(d) = self.dedup.get_mut(&m.partition()) {
                d.restore(id.to_string(), i64::from_be_bytes(time));
                restored += 1;
            }
        }
        tracing::info!(partitions = ?ids, restored, "dedup state restored from {}", self.changelog);
        Ok(())
    }

    fn on_revoked(&mut self, partitions: &[(String, i32)]) {
        for (_, p) in partitions {
            self.dedup.remove(p);
        }
    }

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
        let payload = input.payload.unwrap_or_default();
        let raw = match self.decoder.decode(payload).await {
            Ok(r) => r,
            Err(e) if e.is_transient() => return Err(ProcessError::Transient(e.into())),
            Err(e) => {
                out.dead_letter(input, STAGE, e.code(), e.to_string(), e.schema_id());
                return Ok(());
            }
        };
        let clean = match clean::clean(&raw, &self.rules) {
            Ok(c) => c,
            Err(r) => {
                out.dead_letter(input, STAGE, r.code, r.message, wire::schema_id(payload));
                return Ok(());
            }
        };
        let dedup = self
            .dedup
            .entry(input.partition)
            .or_insert_with(|| Dedup::new(self.horizon_ms, self.max_entries));
        match dedup.observe(&clean.event_id, clean.event_time) {
            Verdict::Duplicate => {
                out.deduplicated();
                return Ok(());
            }
            Verdict::New => out.changelog(
                &self.changelog,
                input.partition,
                clean.event_id.as_bytes(),
                clean.event_time.to_be_bytes().to_vec(),
            ),
            Verdict::BeyondHorizon => {}
        }
        let bytes = self
            .encoder
            .encode(&clean)
            .map_err(|e| ProcessError::Fatal(e.into()))?;
        out.send(&self.out_topic, Some(clean.user_session.as_bytes()), bytes);
        Ok(())
    }

    fn commit(&mut self) {
        self.dedup.values_mut().for_each(Dedup::commit);
    }

    fn rollback(&mut self) {
        self.dedup.values_mut().for_each(Dedup::rollback);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cartstream_runtime::exit_code(run(cli).await)
}

/// Creates the changelog topic with as many partitions as the input (co-partitioned).
async fn ensure_changelog(
    kafka: &KafkaArgs,
    input: &str,
    changelog: &str,
    horizon_ms: i64,
) -> anyhow::Result<()> {
    let client = admin::admin_client(&kafka.admin()?)?;
    let partitions = admin::input_partitions(&client, input)?;
    let spec = TopicSpec {
        name: changelog.to_string(),
        partitions,
        replication: admin::internal_replication(&client)?,
        configs: vec![
            ("cleanup.policy", "compact,delete".to_string()),
            ("retention.ms", (horizon_ms + 3_600_000).to_string()),
        ],
    };
    admin::ensure_topics(&client, &[spec], Duration::from_secs(30)).await?;
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let rules = Rules {
        max_future_ms: cli.max_future_secs * 1000,
        max_price: cli.max_price,
        max_quantity: cli.max_quantity,
    };
    rules.check().map_err(anyhow::Error::msg)?;
    let c = &cli.common;
    let service = c.service.init("cartstream-cleaner").await?;
    let registry: Arc<Registry> = c.registry.connect()?;
    let names = &c.names;
    let group = c.group(STAGE);
    let input = names.name(Topic::Raw);
    // The group already carries the topic prefix.
    let changelog = format!("{group}.changelog");
    let horizon_ms = (cli.dedup_horizon_hours * 3_600_000.0) as i64;
    let k = c.kafka.clone();
    tokio::task::spawn_blocking(move || k.check(Duration::from_secs(30))).await??;
    ensure_changelog(&c.kafka, &input, &changelog, horizon_ms).await?;

    let cleaner = Cleaner {
        decoder: Decoder::new(registry.clone()),
        encoder: Encoder::register(&registry, &names.subject(Topic::Clean)).await?,
        rules,
        out_topic: names.name(Topic::Clean),
        changelog,
        horizon_ms,
        max_entries: cli.dedup_max_entries,
        dedup: HashMap::new(),
        kafka: c.kafka.clone(),
        group,
    };
    c.run(STAGE, &[input], &registry, cleaner, &service).await
}
