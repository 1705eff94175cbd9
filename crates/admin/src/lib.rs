//! Operations on a cartstream deployment: bootstrap (topics + schemas), inspect (read a topic
//! back and summarise it), and schema compatibility checks. The binary `cartstream-admin` is a
//! thin CLI over these functions, which integration tests call directly.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use cartstream_events::registry::Compatibility;
use cartstream_events::types::RawEvent;
use cartstream_events::{codec, Contract, Decoder, Registry};
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
    let specs: Vec<TopicSpec> = Topic::ALL
        .iter()
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
    for t in Topic::ALL {
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
    /// For raw event topics: count and revenue (price x quantity of purchases) per event type.
    pub by_event_type: BTreeMap<String, (usize, f64)>,
    pub samples: Vec<serde_json::Value>,
}

/// Reads `topic` from the beginning to its current end and summarises it. Raw event topics are
/// decoded as raw events (counts per event type); other topics generically.
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
    let is_raw = topic.ends_with(Topic::Raw.base_name());
    let raw_decoder = Decoder::<RawEvent>::with_reader(registry.clone(), Contract::RAW_CURRENT);
    let mut s = TopicSummary {
        records: messages.len(),
        ..Default::default()
    };
    for m in &messages {
        *s.by_partition.entry(m.partition()).or_default() += 1;
        let bytes = m.payload().unwrap_or_default();
        match codec::decode_value(&registry, bytes).await {
            Ok((id, value)) => {
                *s.by_schema_id.entry(id).or_default() += 1;
                if s.samples.len() < samples {
                    if let Ok(json) = serde_json::Value::try_from(value) {
                        s.samples.push(json);
                    }
                }
                if is_raw {
                    match raw_decoder.decode(bytes).await {
                        Ok(ev) => {
                            let e = s.by_event_type.entry(ev.event_type.clone()).or_default();
                            e.0 += 1;
                            if ev.event_type == "purchase" {
                                e.1 += ev.price * f64::from(ev.quantity);
                            }
                        }
                        Err(err) => *s.decode_errors.entry(err.code()).or_default() += 1,
                    }
                }
            }
            Err(err) => *s.decode_errors.entry(err.code()).or_default() += 1,
        }
    }
    Ok(s)
}
