//! Dead letters of the sinks: a record the sink cannot decode goes to the namespace's
//! dead-letter topic with a stable code and the original bytes, before its offset is committed.
//! Delivery is awaited, so a committed offset never covers a dead letter that was lost; a crash
//! between the two may send a dead letter twice (at least once), which operators can tell apart
//! by source topic/partition/offset.

use std::time::Duration;

use anyhow::Context;
use cartstream_events::types::DeadLetter;
use cartstream_events::{Encoder, Registry};
use cartstream_kafka::KafkaArgs;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::metrics::SinkMetrics;

pub struct DeadLetters {
    producer: FutureProducer,
    encoder: Encoder<DeadLetter>,
    topic: String,
    stage: &'static str,
}

impl DeadLetters {
    pub async fn new(
        kafka: &KafkaArgs,
        registry: &Registry,
        topic: String,
        subject: &str,
        stage: &'static str,
    ) -> anyhow::Result<Self> {
        let encoder = Encoder::register(registry, subject)
            .await
            .context("registering the dead-letter schema")?;
        let producer: FutureProducer = kafka.producer()?.create()?;
        Ok(DeadLetters {
            producer,
            encoder,
            topic,
            stage,
        })
    }

    /// Sends one dead letter and waits until the broker has it.
    pub async fn send(
        &self,
        msg: &OwnedMessage,
        code: &'static str,
        message: String,
        schema_id: Option<u32>,
    ) -> anyhow::Result<()> {
        let d = DeadLetter {
            error_code: code.to_string(),
            message,
            stage: self.stage.to_string(),
            source_topic: msg.topic().to_string(),
            source_partition: msg.partition(),
            source_offset: msg.offset(),
            source_timestamp: msg.timestamp().to_millis(),
            schema_id: schema_id.map(|i| i as i32),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            failed_at: now_ms(),
        };
        let payload = self.encoder.encode(&d)?;
        let mut rec = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(&payload);
        if let Some(k) = msg.key() {
            rec = rec.key(k);
        }
        self.producer
            .send(rec, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("dead-lettering to {}: {e}", self.topic))?;
        SinkMetrics::get()
            .dead_lettered
            .with_label_values(&[self.stage, code])
            .inc();
        Ok(())
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
