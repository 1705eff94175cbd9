//! Where records go: Kafka (idempotent, `acks=all`, lz4, batched: [`KafkaArgs::producer`]) or
//! nowhere (`--dry-run`, which encodes and counts but sends nothing).
//!
//! Sending is synchronous and never blocks on the network: a record is handed to librdkafka's
//! queue, and when that queue is full the caller waits a millisecond and tries again (the
//! back-pressure a producer faster than its brokers needs). Delivery reports are counted on
//! librdkafka's thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cartstream_kafka::control::{self, EndOfInput};
use cartstream_kafka::KafkaArgs;
use cartstream_runtime::Shutdown;
use prometheus::IntCounter;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

/// Delivery outcomes, counted from librdkafka's callback thread.
#[derive(Default)]
pub struct Deliveries {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl Deliveries {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub struct Ctx {
    deliveries: Arc<Deliveries>,
    delivered: Option<IntCounter>,
    errors: Option<IntCounter>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.deliveries.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = &self.delivered {
                    c.inc();
                }
            }
            Err((e, _)) => {
                self.deliveries.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = &self.errors {
                    c.inc();
                }
                let mut first = self
                    .deliveries
                    .first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Kafka, or a dry run.
pub enum Output {
    Kafka {
        producer: ThreadedProducer<Ctx>,
        deliveries: Arc<Deliveries>,
    },
    DryRun {
        deliveries: Arc<Deliveries>,
    },
}

impl Output {
    /// A producer with the shared throughput settings. librdkafka's queue is raised to a million
    /// records so that small records are not throttled by count before bytes.
    pub fn kafka(
        kafka: &KafkaArgs,
        delivered: Option<IntCounter>,
        errors: Option<IntCounter>,
    ) -> anyhow::Result<Self> {
        let mut config = kafka.producer()?;
        if !kafka
            .kafka_options
            .iter()
            .any(|(k, _)| k == "queue.buffering.max.messages")
        {
            config.set("queue.buffering.max.messages", "1000000");
        }
        let deliveries = Arc::new(Deliveries::default());
        let producer = config
            .create_with_context(Ctx {
                deliveries: deliveries.clone(),
                delivered,
                errors,
            })
            .with_context(|| format!("creating a Kafka producer for {}", kafka.brokers))?;
        Ok(Output::Kafka {
            producer,
            deliveries,
        })
    }

    pub fn dry_run() -> Self {
        Output::DryRun {
            deliveries: Arc::new(Deliveries::default()),
        }
    }

    pub fn deliveries(&self) -> &Arc<Deliveries> {
        match self {
            Output::Kafka { deliveries, .. } | Output::DryRun { deliveries } => deliveries,
        }
    }

    /// Hands one record to Kafka, waiting while librdkafka's queue is full. Fails on shutdown
    /// during such a wait, or on an error that is not about the queue.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        let producer = match self {
            Output::Kafka { producer, .. } => producer,
            Output::DryRun { deliveries } => {
                deliveries.delivered.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        loop {
            let mut record = BaseRecord::to(topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if shutdown.is_triggered() {
                        anyhow::bail!("shutdown while the send queue was full");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(anyhow::anyhow!("cannot send to {topic}: {e}")),
            }
        }
    }

    /// The number of partitions of `topic` (a dry run: `None`).
    pub fn partitions(&self, topic: &str, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let producer = match self {
            Output::Kafka { producer, .. } => producer,
            Output::DryRun { .. } => return Ok(None),
        };
        cartstream_kafka::admin::topic_partition_count(producer.client(), topic, timeout).map(Some)
    }

    /// Writes the end-of-input control record `mark` to every partition of `topic` (see
    /// `cartstream_kafka::control`), then waits until they are acknowledged. Call it after the
    /// data records are flushed: a mark must not overtake them. Returns the partitions written
    /// (0 in a dry run).
    pub fn end_of_input(
        &self,
        topic: &str,
        mark: &EndOfInput,
        timeout: Duration,
    ) -> anyhow::Result<i32> {
        let Some(n) = self.partitions(topic, timeout)? else {
            return Ok(0);
        };
        let Output::Kafka { producer, .. } = self else {
            return Ok(0);
        };
        let failed = self.deliveries().failed();
        for p in 0..n {
            let record = BaseRecord::to(topic)
                .partition(p)
                .key(control::CONTROL_KEY)
                .payload(&[][..])
                .headers(control::owned_headers(mark));
            producer.send(record).map_err(|(e, _)| {
                anyhow::anyhow!("cannot send the end-of-input mark to {topic}/{p}: {e}")
            })?;
        }
        self.flush(timeout)?;
        if self.deliveries().failed() > failed {
            anyhow::bail!(
                "the end-of-input mark was not delivered to every partition of {topic}: {}",
                self.deliveries().first_error().unwrap_or_default()
            );
        }
        Ok(n)
    }

    /// Records handed over but not acknowledged yet.
    pub fn in_flight(&self) -> i32 {
        match self {
            Output::Kafka { producer, .. } => producer.in_flight_count(),
            Output::DryRun { .. } => 0,
        }
    }

    /// Waits until every record handed over is acknowledged or failed.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        match self {
            Output::Kafka { producer, .. } => producer
                .flush(timeout)
                .map_err(|e| anyhow::anyhow!("flush did not complete within {timeout:?}: {e}")),
            Output::DryRun { .. } => Ok(()),
        }
    }
}
