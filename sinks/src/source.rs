//! The Kafka side of both sinks: a consumer in a group that commits by hand, per partition,
//! only what the sink has durably written.
//!
//! Unlike the processors' loop there is no transaction: the output is a database or an object
//! store, so the protocol is "write, then commit the offsets the writes cover". A crash between
//! the two replays those records, which the sinks make harmless (idempotent upserts; file names
//! derived from offsets).
//!
//! Rebalances are eager and every assigned partition starts at its committed offset (as in
//! `cartstream-stream`); the sink is told about revocations so it drops what it buffered for
//! partitions it no longer owns (the new owner reads them again from the committed offset).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use cartstream_kafka::context::ErrorContext;
use cartstream_kafka::KafkaArgs;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// A change of the assignment, applied by the sink between records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalance {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

pub struct SourceContext {
    pub errors: ErrorContext,
    events: Mutex<Vec<Rebalance>>,
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason)
    }
}

impl ConsumerContext for SourceContext {
    /// Every assigned partition starts at its committed offset (see the module docs).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut start = tpl.clone();
                match consumer.committed_offsets(tpl.clone(), Duration::from_secs(30)) {
                    Ok(committed) => {
                        for e in committed.elements() {
                            if let Offset::Offset(o) = e.offset() {
                                let _ = start.set_partition_offset(
                                    e.topic(),
                                    e.partition(),
                                    Offset::Offset(o),
                                );
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read committed offsets of the assignment");
                        self.errors
                            .record_error(&format!("cannot read committed offsets: {e}"));
                        return;
                    }
                }
                if let Err(e) = consumer.assign(&start) {
                    tracing::error!(error = %e, "assign failed");
                    return;
                }
                self.push(Rebalance::Assigned(partitions_of(&start)));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.push(Rebalance::Revoked(partitions_of(tpl)));
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

impl SourceContext {
    fn push(&self, ev: Rebalance) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ev);
    }

    /// Rebalances since the last call, in order.
    pub fn take_events(&self) -> Vec<Rebalance> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

pub type SourceConsumer = StreamConsumer<SourceContext>;

/// A consumer of `topics` in `group`, committing by hand (`read_committed`, eager assignment).
pub async fn consumer(
    kafka: &KafkaArgs,
    group: &str,
    instance_id: Option<&str>,
    topics: &[String],
) -> anyhow::Result<SourceConsumer> {
    let check = kafka.clone();
    tokio::task::spawn_blocking(move || check.check(Duration::from_secs(30))).await??;
    let mut conf = kafka.consumer(group)?;
    if let Some(id) = instance_id {
        conf.set("group.instance.id", format!("{group}-{id}"));
    }
    let c: SourceConsumer = conf.create_with_context(SourceContext {
        errors: ErrorContext::default(),
        events: Mutex::new(Vec::new()),
    })?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    c.subscribe(&refs)?;
    Ok(c)
}

/// Which partitions the sink owns now, kept from the rebalance events.
#[derive(Debug, Default)]
pub struct Owned(HashMap<String, HashSet<i32>>);

impl Owned {
    pub fn apply(&mut self, ev: &Rebalance) {
        match ev {
            Rebalance::Assigned(ps) => {
                for (t, p) in ps {
                    self.0.entry(t.clone()).or_default().insert(*p);
                }
            }
            Rebalance::Revoked(ps) => {
                for (t, p) in ps {
                    if let Some(s) = self.0.get_mut(t) {
                        s.remove(p);
                    }
                }
            }
        }
    }

    /// The partitions of `topic` owned now, in order.
    pub fn partitions(&self, topic: &str) -> Vec<i32> {
        let mut ps: Vec<i32> = self
            .0
            .get(topic)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        ps.sort_unstable();
        ps
    }

    pub fn contains(&self, topic: &str, partition: i32) -> bool {
        self.0.get(topic).is_some_and(|s| s.contains(&partition))
    }
}

/// Commits `next` (topic, partition) -> next offset to read, with optional metadata per
/// partition, synchronously.
pub fn commit(
    consumer: &SourceConsumer,
    next: &BTreeMap<(String, i32), (i64, Option<String>)>,
) -> anyhow::Result<()> {
    if next.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), (o, meta)) in next {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
        if let (Some(m), Some(mut e)) = (meta, tpl.find_partition(t, *p)) {
            e.set_metadata(m.as_str());
        }
    }
    tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync))
        .map_err(|e| anyhow::anyhow!("committing offsets: {e}"))
}

/// Committed offset and metadata of one partition.
pub fn committed(
    consumer: &SourceConsumer,
    topic: &str,
    partition: i32,
) -> anyhow::Result<(Option<i64>, String)> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let c =
        tokio::task::block_in_place(|| consumer.committed_offsets(tpl, Duration::from_secs(30)))?;
    let e = c
        .find_partition(topic, partition)
        .ok_or_else(|| anyhow::anyhow!("no committed offset entry for {topic}[{partition}]"))?;
    let offset = match e.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    };
    Ok((offset, e.metadata().to_string()))
}

/// Largest gap between a committed offset and the end that may be transaction markers only.
const MARKER_PROBE_MAX: i64 = 4;

/// Whether `[from, end)` of a partition holds no record a `read_committed` reader sees (only
/// transaction markers or aborted records).
fn only_markers(c: &BaseConsumer, topic: &str, partition: i32, from: i64) -> bool {
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .is_err()
        || c.assign(&tpl).is_err()
    {
        return false;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut result = false;
    while std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => break,
            Some(Err(KafkaError::PartitionEOF(_))) => {
                result = true;
                break;
            }
            Some(Err(_)) | None => {}
        }
    }
    let _ = c.unassign();
    result
}

/// Reports the commit lag of `group` on `topics` (records between each partition's committed
/// offset and its end) every 10 s, from a client of its own, off the sink's hot path.
pub fn spawn_lag_reporter(
    kafka: &KafkaArgs,
    group: &str,
    topics: Vec<String>,
    sink: &'static str,
    shutdown: cartstream_runtime::Shutdown,
) {
    let Ok(mut conf) = kafka.consumer(group) else {
        return;
    };
    // The probe below reads (never commits) with the group's id: it only assigns partitions.
    conf.set("enable.partition.eof", "true");
    std::thread::spawn(move || {
        let Ok(c) = conf.create::<BaseConsumer>() else {
            return;
        };
        let gauge = &crate::metrics::SinkMetrics::get().lag;
        while !shutdown.is_triggered() {
            if let Ok(md) = c.fetch_metadata(None, Duration::from_secs(5)) {
                let mut tpl = TopicPartitionList::new();
                let mut ends = Vec::new();
                for t in md
                    .topics()
                    .iter()
                    .filter(|t| topics.iter().any(|x| x == t.name()))
                {
                    for p in t.partitions() {
                        if let Ok((_, high)) =
                            c.fetch_watermarks(t.name(), p.id(), Duration::from_secs(5))
                        {
                            tpl.add_partition(t.name(), p.id());
                            ends.push((t.name().to_string(), p.id(), high));
                        }
                    }
                }
                if let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(5)) {
                    for (t, p, high) in ends {
                        let done = committed
                            .find_partition(&t, p)
                            .and_then(|e| match e.offset() {
                                Offset::Offset(o) => Some(o),
                                _ => None,
                            })
                            .unwrap_or(0);
                        let mut lag = (high - done).max(0);
                        // The inputs are written in transactions: the commit marker after the
                        // last record takes an offset no reader ever sees, so a caught-up sink
                        // sits one or two offsets short of the end. Look whether any record
                        // lies in between.
                        if (1..=MARKER_PROBE_MAX).contains(&lag) && only_markers(&c, &t, p, done) {
                            lag = 0;
                        }
                        gauge
                            .with_label_values(&[sink, &t, &p.to_string()])
                            .set(lag);
                    }
                }
            }
            for _ in 0..100 {
                if shutdown.is_triggered() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
}

/// Consumer-group flags of a sink.
#[derive(Debug, Clone, clap::Args)]
pub struct GroupArgs {
    /// Consumer group [default: <topic prefix>cartstream-<sink>].
    #[arg(long, env = "CONSUMER_GROUP")]
    pub group: Option<String>,
    /// Stable name of this instance (static group membership: a restart takes its partitions
    /// back at once).
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
}

impl GroupArgs {
    pub fn group(&self, sink: &str, topic_prefix: &str) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("{topic_prefix}cartstream-{sink}"))
    }
}

/// Waits `backoff` unless shutdown comes first; returns whether shutdown came.
pub async fn sleep_or_shutdown(backoff: Duration, shutdown: &cartstream_runtime::Shutdown) -> bool {
    tokio::select! {
        _ = shutdown.wait() => true,
        _ = tokio::time::sleep(backoff) => false,
    }
}
