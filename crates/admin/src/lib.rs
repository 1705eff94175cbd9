//! Operations on a cartstream deployment: bootstrap (topics + schemas), inspect (read a topic
//! back and summarise it), and schema compatibility checks. The binary `cartstream-admin` is a
//! thin CLI over these functions, which integration tests call directly. [`end_input`] declares
//! the end of input of any topic (the control record of `cartstream_kafka::control`);
//! [`lake_query`] runs the lake's SQL queries (`sql/`) with DuckDB.

pub mod lake_query;
pub mod offsets;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use cartstream_events::registry::Compatibility;
use cartstream_events::{codec, Registry};
use cartstream_kafka::admin::{self, Outcome, TopicSpec};
use cartstream_kafka::{KafkaArgs, Topic, TopicNames};
use rdkafka::Message;
use std::sync::Arc;

/// What `bootstrap` did.
#[derive(Debug, Default)]
pub struct BootstrapReport {
    pub topics: Vec<(String, Outcome)>,
    /// (subject, contract file, schema id)
    pub schemas: Vec<(String, &'static str, u32)>,
}

/// Creates every topic of the catalog and registers every schema, with BACKWARD compatibility
/// on each subject. Idempotent.
pub async fn bootstrap(
    kafka: &KafkaArgs,
    registry: &Registry,
    names: &TopicNames,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<BootstrapReport> {
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || k.check(Duration::from_secs(30))).await??;
    let admin = admin::admin_client(&kafka.admin()?)?;
    // A replay generation reads the source topics of another namespace: never touch those.
    let specs: Vec<TopicSpec> = Topic::ALL
        .iter()
        .filter(|t| names.owns(**t))
        .map(|t| TopicSpec {
            name: names.name(*t),
            partitions: t.partitions(partitions),
            replication,
            configs: t.configs(),
        })
        .collect();
    let topics = admin::ensure_topics(&admin, &specs, Duration::from_secs(30))
        .await
        .with_context(|| format!("creating topics on {}", kafka.brokers))?;

    let mut schemas = Vec::new();
    for t in Topic::ALL.into_iter().filter(|t| names.owns(*t)) {
        let subject = names.subject(t);
        for (i, contract) in t.contracts().iter().enumerate() {
            let id = registry
                .register(&subject, contract.avsc())
                .await
                .with_context(|| format!("registering {} under {subject}", contract.file_name()))?;
            if i == 0 {
                // Set after the first registration: some registries only know a subject once
                // it has a version.
                registry
                    .set_compatibility(&subject, Compatibility::Backward)
                    .await
                    .with_context(|| format!("setting BACKWARD compatibility on {subject}"))?;
            }
            schemas.push((subject.clone(), contract.file_name(), id));
        }
    }
    Ok(BootstrapReport { topics, schemas })
}

/// What `inspect` found in a topic.
#[derive(Debug, Default)]
pub struct TopicSummary {
    pub records: usize,
    pub by_partition: BTreeMap<i32, usize>,
    pub by_schema_id: BTreeMap<u32, usize>,
    pub decode_errors: BTreeMap<&'static str, usize>,
    /// For event topics: count and revenue (price x quantity of purchases) per event type.
    pub by_event_type: BTreeMap<String, (usize, f64)>,
    /// For the dead-letter topic: count per error code.
    pub by_error_code: BTreeMap<String, usize>,
    pub samples: Vec<serde_json::Value>,
}

/// Reads `topic` from the beginning to its current end (committed records only) and summarises
/// it. Records are decoded with their writer schemas from the registry, whatever the topic.
pub async fn inspect(
    kafka: &KafkaArgs,
    registry: Arc<Registry>,
    topic: &str,
    samples: usize,
    timeout: Duration,
) -> anyhow::Result<TopicSummary> {
    let config = kafka.consumer("cartstream-admin-inspect")?;
    let topic_owned = topic.to_string();
    let messages = tokio::task::spawn_blocking(move || {
        cartstream_kafka::read::read_to_end(&config, &topic_owned, timeout)
    })
    .await??;
    let mut s = TopicSummary {
        records: messages.len(),
        ..Default::default()
    };
    for m in &messages {
        *s.by_partition.entry(m.partition()).or_default() += 1;
        let Some(bytes) = m.payload() else {
            *s.decode_errors.entry("tombstone").or_default() += 1;
            continue;
        };
        match codec::decode_value(&registry, bytes).await {
            Ok((id, value)) => {
                *s.by_schema_id.entry(id).or_default() += 1;
                let Ok(json) = serde_json::Value::try_from(value) else {
                    continue;
                };
                if let Some(t) = json.get("event_type").and_then(|t| t.as_str()) {
                    let e = s.by_event_type.entry(t.to_string()).or_default();
                    e.0 += 1;
                    if t == "purchase" {
                        let price = json.get("price").and_then(|p| p.as_f64()).unwrap_or(0.0);
                        let qty = json.get("quantity").and_then(|q| q.as_f64()).unwrap_or(1.0);
                        e.1 += price * qty;
                    }
                }
                if let Some(code) = json.get("error_code").and_then(|c| c.as_str()) {
                    *s.by_error_code.entry(code.to_string()).or_default() += 1;
                }
                if s.samples.len() < samples {
                    s.samples.push(json);
                }
            }
            Err(err) => *s.decode_errors.entry(err.code()).or_default() += 1,
        }
    }
    Ok(s)
}

/// Writes the end-of-input mark `watermark` (epoch ms, `i64::MAX` for "nothing more will come")
/// to every partition of `topic` and waits for each to be acknowledged. Returns (partition,
/// offset) of each mark. Run it once the topic's producers have stopped: a record written after
/// the mark is behind the end the mark declared.
pub async fn end_input(
    kafka: &KafkaArgs,
    topic: &str,
    watermark: i64,
    timeout: Duration,
) -> anyhow::Result<Vec<(i32, i64)>> {
    use cartstream_kafka::control::{self, EndOfInput};
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let producer: FutureProducer = kafka
        .producer()?
        .create()
        .with_context(|| format!("creating a Kafka producer for {}", kafka.brokers))?;
    let n = cartstream_kafka::admin::topic_partition_count(producer.client(), topic, timeout)?;
    let mark = EndOfInput::at(watermark);
    let mut out = Vec::new();
    for p in 0..n {
        let record = FutureRecord::to(topic)
            .partition(p)
            .key(control::CONTROL_KEY)
            .payload(&[][..])
            .headers(control::owned_headers(&mark));
        let delivery = producer
            .send(record, timeout)
            .await
            .map_err(|(e, _)| anyhow::anyhow!("cannot write the mark to {topic}/{p}: {e}"))?;
        out.push((delivery.partition, delivery.offset));
    }
    Ok(out)
}
