//! The loop itself; the protocol is described in the crate docs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use cartstream_events::types::DeadLetter;
use cartstream_events::{Encoder, Registry};
use cartstream_kafka::context::ErrorContext;
use cartstream_kafka::control::{self, EndMarks, EndOfInput, CONTROL_KEY};
use cartstream_kafka::KafkaArgs;
use cartstream_runtime::{Health, Shutdown};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::idle::{Progress, Sample};
use crate::metrics::StageMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Kafka transactions: outputs and input offsets commit atomically.
    ExactlyOnce,
    /// Outputs flushed, then offsets committed: a crash may duplicate outputs.
    AtLeastOnce,
}

/// Flags of the loop, shared by every processor.
#[derive(Debug, Clone, clap::Args)]
pub struct LoopArgs {
    /// Consumer group; instances with the same group share the input partitions
    /// [default: <topic prefix>cartstream-<stage>].
    #[arg(long, env = "CONSUMER_GROUP")]
    pub group: Option<String>,
    /// Processing guarantee.
    #[arg(long, env = "PROCESSING_MODE", value_enum, default_value_t = Mode::ExactlyOnce)]
    pub mode: Mode,
    /// Most records per batch (one transaction per batch).
    #[arg(long, env = "BATCH_SIZE", default_value_t = 10_000)]
    pub batch_size: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 100)]
    pub batch_linger_ms: u64,
    /// Stable name of this instance (distinct per instance of a group, e.g. the pod name). With
    /// it the instance is a static group member and its transactional id is
    /// <group>-<instance-id>: a restart after a crash takes its partitions back at once and fences
    /// its previous incarnation. Without it, a random name is used and a crash costs a rebalance
    /// after the session timeout.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
}

impl LoopArgs {
    /// The group: the flag, or one per stage and topic namespace, so pipelines with different
    /// prefixes never share a group.
    pub fn group(&self, stage: &str, topic_prefix: &str) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("{topic_prefix}cartstream-{stage}"))
    }

    fn instance(&self) -> String {
        self.instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "0".to_string())
    }
}

/// One input record.
pub struct Input<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

struct OutRecord {
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    /// `None`: a tombstone (deletes the key from a compacted topic).
    payload: Option<Vec<u8>>,
    kind: &'static str,
}

/// An end-of-input mark or a watermark to write to every partition of `topic`.
struct Forward {
    topic: String,
    mark: EndOfInput,
    /// The stream a watermark is about ([`control::STREAM_HEADER`]).
    stream: Option<String>,
    /// The input partition it comes from and the input topic.
    from_topic: String,
    from_partition: i32,
}

/// What processing a batch produced.
#[derive(Default)]
pub struct Output {
    records: Vec<OutRecord>,
    dead: Vec<DeadLetter>,
    deduplicated: u64,
    forwards: Vec<Forward>,
}

impl Output {
    /// An output record (partitioned by key).
    pub fn send(&mut self, topic: &str, key: Option<&[u8]>, payload: Vec<u8>) {
        self.records.push(OutRecord {
            topic: topic.to_string(),
            partition: None,
            key: key.map(<[u8]>::to_vec),
            payload: Some(payload),
            kind: "data",
        });
    }

    /// An output record to an explicit partition (e.g. a watermark marker broadcast to every
    /// partition of a repartition topic).
    pub fn send_to(&mut self, topic: &str, partition: i32, key: Option<&[u8]>, payload: Vec<u8>) {
        self.records.push(OutRecord {
            topic: topic.to_string(),
            partition: Some(partition),
            key: key.map(<[u8]>::to_vec),
            payload: Some(payload),
            kind: "data",
        });
    }

    /// True when nothing was emitted (no record, no dead letter, no mark).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.dead.is_empty() && self.forwards.is_empty()
    }

    /// Forwards an end-of-input mark received on `input`'s partition to every partition of
    /// `topic`: "no record derived from an event before `watermark` of that input partition will
    /// come any more". Written after the records sent before it, in the same transaction; the
    /// next stage combines the marks of every input partition ([`control::EndMarks`]).
    pub fn forward_end(&mut self, topic: &str, input: &Input<'_>, watermark: i64) {
        self.forwards.push(Forward {
            topic: topic.to_string(),
            mark: EndOfInput::at(watermark),
            stream: None,
            from_topic: input.topic.to_string(),
            from_partition: input.partition,
        });
    }

    /// Writes a watermark record to every partition of `topic`, after the records sent before
    /// it: "every record of `stream` derived from input partition `(from_topic, from_partition)`
    /// that belongs before `watermark` has been written". A stage whose output partitions get
    /// records from several of its input partitions sends these so that the next stage knows
    /// how far each output partition is complete ([`Processor::on_watermark`]).
    pub fn send_watermark(
        &mut self,
        topic: &str,
        from_topic: &str,
        from_partition: i32,
        stream: &str,
        watermark: i64,
    ) {
        self.forwards.push(Forward {
            topic: topic.to_string(),
            mark: control::Mark::progress(watermark),
            stream: Some(stream.to_string()),
            from_topic: from_topic.to_string(),
            from_partition,
        });
    }

    /// Forwards an end-of-input mark that this stage makes on its own for its input partition
    /// `(from_topic, from_partition)` (e.g. closing on idleness is not one: only marks from a
    /// bounded source are forwarded).
    pub fn forward_end_of(
        &mut self,
        topic: &str,
        from_topic: &str,
        from_partition: i32,
        watermark: i64,
    ) {
        self.forwards.push(Forward {
            topic: topic.to_string(),
            mark: EndOfInput::at(watermark),
            stream: None,
            from_topic: from_topic.to_string(),
            from_partition,
        });
    }

    /// A state changelog record, to the partition of its input.
    pub fn changelog(&mut self, topic: &str, partition: i32, key: &[u8], payload: Vec<u8>) {
        self.records.push(OutRecord {
            topic: topic.to_string(),
            partition: Some(partition),
            key: Some(key.to_vec()),
            payload: Some(payload),
            kind: "changelog",
        });
    }

    /// A state changelog tombstone (null value: compaction deletes the key), to `partition`.
    pub fn changelog_delete(&mut self, topic: &str, partition: i32, key: &[u8]) {
        self.records.push(OutRecord {
            topic: topic.to_string(),
            partition: Some(partition),
            key: Some(key.to_vec()),
            payload: None,
            kind: "changelog",
        });
    }

    /// Rejects `input` to the dead-letter topic.
    pub fn dead_letter(
        &mut self,
        input: &Input<'_>,
        stage: &str,
        code: &'static str,
        message: String,
        schema_id: Option<u32>,
    ) {
        self.dead.push(DeadLetter {
            error_code: code.to_string(),
            message,
            stage: stage.to_string(),
            source_topic: input.topic.to_string(),
            source_partition: input.partition,
            source_offset: input.offset,
            source_timestamp: input.timestamp,
            schema_id: schema_id.map(|i| i as i32),
            key: input.key.map(<[u8]>::to_vec),
            payload: input.payload.map(<[u8]>::to_vec),
            failed_at: now_ms(),
        });
    }

    /// Counts an input dropped as a duplicate.
    pub fn deduplicated(&mut self) {
        self.deduplicated += 1;
    }
}

/// A failure that is not the record's fault.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Worth retrying the batch later (registry or broker unavailable).
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// The processor cannot go on.
    #[error("fatal: {0:#}")]
    Fatal(anyhow::Error),
}

/// A stage of the pipeline: what to do with each record, and its state's life cycle.
#[allow(async_fn_in_trait)]
pub trait Processor {
    /// Partitions were assigned: restore their state before their first record.
    async fn on_assigned(&mut self, partitions: &[(String, i32)]) -> anyhow::Result<()>;
    /// Partitions were revoked: drop their state.
    fn on_revoked(&mut self, partitions: &[(String, i32)]);
    /// Processes one record into `out`. Bad records are dead-lettered through `out`, not errors.
    async fn process(&mut self, input: &Input<'_>, out: &mut Output) -> Result<(), ProcessError>;
    /// Time-driven work (closing windows/sessions when a partition went idle, early updates): called
    /// after every batch's records and, when no record arrives, at least every `--batch-linger-ms`,
    /// inside the same transaction as the batch (an empty batch with tick output gets its own
    /// transaction). Records it emits commit atomically with the state changes made in it.
    async fn on_tick(&mut self, out: &mut Output) -> Result<(), ProcessError> {
        let _ = out;
        Ok(())
    }
    /// The consumer's progress (which partitions have unread records, which are idle) was
    /// sampled: called before every [`Processor::on_tick`]. Stages that close windows or sessions
    /// on idleness take the rule from here ([`Progress::is_idle`]), never from their own clocks.
    fn on_progress(&mut self, progress: &Progress) {
        let _ = progress;
    }
    /// The end of input of `input`'s partition moved to `end` ("no event before `end` will
    /// come on it any more"; `i64::MAX`: nothing at all): every upstream partition has declared
    /// it with an end-of-input mark (see `cartstream_kafka::control`; the loop combines and
    /// persists the marks). Close what it allows and forward it downstream
    /// ([`Output::forward_end`]), in this batch's transaction. The default does neither.
    async fn on_end_of_input(
        &mut self,
        input: &Input<'_>,
        end: i64,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        let _ = (input, end, out);
        Ok(())
    }
    /// A watermark record arrived on `input`'s partition (sent upstream with
    /// [`Output::send_watermark`]; `mark.source` says which upstream partition it speaks for,
    /// `stream` which stream). The receiver combines them (e.g. with a
    /// `cartstream_kafka::control::EndMarks` of its own: the lowest over every upstream
    /// partition once each has sent one). The default ignores them.
    async fn on_watermark(
        &mut self,
        input: &Input<'_>,
        mark: &EndOfInput,
        stream: Option<&str>,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        let _ = (input, mark, stream, out);
        Ok(())
    }
    /// The batch committed: keep the state changes made since the last commit.
    fn commit(&mut self);
    /// The batch aborted: undo the state changes made since the last commit.
    fn rollback(&mut self);
}

enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// One statistics sample: when, and (topic, partition, unread records).
type Samples = (Instant, Vec<(String, i32, i64)>);

struct LoopContext {
    stage: &'static str,
    errors: ErrorContext,
    events: Mutex<Vec<RebalanceEvent>>,
    samples: Mutex<Option<Samples>>,
    /// The offset each owned partition was assigned at (-1: none committed, read from the start).
    starts: Mutex<HashMap<(String, i32), i64>>,
}

impl ClientContext for LoopContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason)
    }

    fn stats(&self, stats: Statistics) {
        let m = StageMetrics::get();
        let at = Instant::now();
        let mut sample = Vec::new();
        let starts = self
            .starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (topic, t) in &stats.topics {
            for (p, s) in &t.partitions {
                if *p < 0 {
                    continue;
                }
                if let Some(lag) = partition_lag(s) {
                    m.lag
                        .with_label_values(&[self.stage, topic.as_str(), &p.to_string()])
                        .set(lag);
                }
                let start = starts.get(&(topic.clone(), *p)).copied();
                if let Some(unread) = unread_records(s, start) {
                    sample.push((topic.clone(), *p, unread));
                }
            }
        }
        *self.samples.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, sample));
    }
}

/// The end of a partition being fetched: the last stable offset (what `read_committed` can
/// see), else the high watermark. `None` while it is not fetched or not known yet.
fn partition_end(s: &rdkafka::statistics::Partition) -> Option<i64> {
    if s.fetch_state != "active" {
        return None;
    }
    let end = if s.ls_offset >= 0 {
        s.ls_offset
    } else {
        s.hi_offset
    };
    (end >= 0).then_some(end)
}

/// Records behind the end of a partition we consume. librdkafka's own `consumer_lag` is measured
/// from the consumer's committed offset, which it never learns in exactly-once mode (offsets go
/// through the producer's transaction), so it stays -1 there. The position the loop has consumed to
/// (`app_offset`) against the last stable offset (the end visible to `read_committed`) works in
/// both modes; it may count the current, not yet committed batch as done.
fn partition_lag(s: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = partition_end(s)?;
    if s.app_offset >= 0 {
        Some((end - s.app_offset).max(0))
    } else if s.committed_offset >= 0 {
        Some((end - s.committed_offset).max(0))
    } else {
        // Nothing consumed yet on this assignment: behind by what lies after the fetch position
        // (the committed offset the partition was assigned at).
        (s.next_offset >= 0).then(|| (end - s.next_offset).max(0))
    }
}

/// Records of a partition not yet handed to the application, for the idleness rule. Unlike
/// [`partition_lag`] it never counts prefetched records as read: before the application has
/// polled anything of the partition since its assignment (`app_offset` unset), the position is
/// the offset it was assigned at, or the partition's start when none was committed. librdkafka
/// moves `app_offset` past transaction markers as the application polls over them, so a
/// transactional input that has been read to its end shows 0.
fn unread_records(s: &rdkafka::statistics::Partition, start: Option<i64>) -> Option<i64> {
    let end = partition_end(s)?;
    let position = if s.app_offset >= 0 {
        s.app_offset
    } else {
        match start {
            Some(o) if o >= 0 => o,
            _ if s.lo_offset >= 0 => s.lo_offset,
            _ => return None,
        }
    };
    Some((end - position).max(0))
}

impl ConsumerContext for LoopContext {
    /// Eager rebalancing with explicit start offsets: every assigned partition starts at its
    /// committed offset. Records dropped from a batch because their partition was revoked must be
    /// read again; librdkafka, left to itself, may resume a partition that comes straight back
    /// to the same consumer from its fetch position instead, skipping them.
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
                    // Without committed offsets we cannot start safely: assign nothing, the
                    // loop sees no records and the next rebalance tries again.
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read committed offsets of the assignment");
                        self.errors
                            .record_error(&format!("cannot read committed offsets: {e}"));
                    }
                }
                {
                    let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
                    starts.clear();
                    for e in start.elements() {
                        let o = match e.offset() {
                            Offset::Offset(o) => o,
                            _ => -1,
                        };
                        starts.insert((e.topic().to_string(), e.partition()), o);
                    }
                }
                self.pre_rebalance(consumer, &Rebalance::Assign(tpl));
                if let Err(e) = consumer.assign(&start) {
                    tracing::error!(error = %e, "assign failed");
                }
                self.post_rebalance(consumer, &Rebalance::Assign(&start));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
                self.post_rebalance(consumer, &Rebalance::Revoke(tpl));
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(error = %code, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            StageMetrics::get()
                .rebalances
                .with_label_values(&[self.stage, "revoke"])
                .inc();
            self.events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(RebalanceEvent::Revoked(partitions_of(tpl)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                StageMetrics::get()
                    .rebalances
                    .with_label_values(&[self.stage, "assign"])
                    .inc();
                self.events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(RebalanceEvent::Assigned(partitions_of(tpl)));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

#[derive(Default)]
struct ProducerCtx {
    errors: ErrorContext,
    failed: AtomicU64,
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason)
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "delivery failed");
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where the loop writes and what it reads.
pub struct Topology<'a> {
    pub stage: &'static str,
    /// Consumer group (see [`LoopArgs::group`]).
    pub group: &'a str,
    pub inputs: &'a [String],
    pub dead_letter_topic: &'a str,
    pub dead_letter_subject: &'a str,
}

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `processor` until `shutdown` fires or a fatal error.
pub async fn run<P: Processor>(
    topology: Topology<'_>,
    args: &LoopArgs,
    kafka: &KafkaArgs,
    registry: &Registry,
    mut processor: P,
    shutdown: &Shutdown,
    health: &Health,
) -> anyhow::Result<()> {
    let stage = topology.stage;
    let m = StageMetrics::get();
    let group = topology.group.to_string();
    let eos = args.mode == Mode::ExactlyOnce;

    let check = kafka.clone();
    tokio::task::spawn_blocking(move || check.check(Duration::from_secs(30))).await??;
    let dlq: Encoder<DeadLetter> = Encoder::register(registry, topology.dead_letter_subject)
        .await
        .context("registering the dead-letter schema")?;

    let instance = args.instance();
    let mut cconf = kafka.consumer(&group)?;
    // Statistics feed the lag metric and the idleness rule (crate::idle): once a second.
    cconf.set("statistics.interval.ms", "1000");
    if args.instance_id.is_some() {
        cconf.set("group.instance.id", format!("{group}-{instance}"));
    }
    let consumer: StreamConsumer<LoopContext> = cconf.create_with_context(LoopContext {
        stage,
        errors: ErrorContext::default(),
        events: Mutex::new(Vec::new()),
        samples: Mutex::new(None),
        starts: Mutex::new(HashMap::new()),
    })?;
    let inputs: Vec<&str> = topology.inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&inputs)?;

    let mut pconf = kafka.producer()?;
    let txn_id = format!("{group}-{instance}");
    if eos {
        pconf.set("transactional.id", &txn_id);
        // A record must time out before its transaction does.
        let txn_ms = TXN_TIMEOUT.as_millis().to_string();
        pconf.set("transaction.timeout.ms", &txn_ms);
        pconf.set("message.timeout.ms", &txn_ms);
    }
    let producer: BaseProducer<ProducerCtx> = pconf.create_with_context(ProducerCtx::default())?;
    if eos {
        tokio::task::block_in_place(|| producer.init_transactions(TXN_TIMEOUT))
            .map_err(|e| anyhow::anyhow!("initialising transactions as {txn_id}: {e}"))?;
    }
    tracing::info!(stage, group, mode = ?args.mode, transactional_id = %txn_id, inputs = ?inputs, "processing");
    health.set_ready(true);

    let linger = Duration::from_millis(args.batch_linger_ms);
    // topic -> partitions owned now; looked up per record without allocating.
    let mut assigned: HashMap<String, HashSet<i32>> = HashMap::new();
    // (topic, partition) -> next offset this instance committed, while it owns the partition;
    // re-sent with a tick-only transaction so a fenced instance cannot commit tick output.
    let mut committed: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut progress = Progress::default();
    // End-of-input marks seen per input partition (tentative, and as of the last commit).
    let ends_topic = format!("{group}.end-marks");
    ensure_ends_topic(kafka, &ends_topic).await?;
    let mut ends = EndMarks::default();
    let mut ends_committed = EndMarks::default();
    let mut partition_counts: HashMap<String, i32> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_triggered() {
        // 1. Gather a batch.
        let mut batch: Vec<OwnedMessage> = Vec::with_capacity(args.batch_size);
        let deadline = Instant::now() + linger;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // The rebalance events below are applied on every pass, also when the linger ends
            // without a record: an idle consumer must still learn of revocations (or it would
            // keep acting on partitions it lost) and assignments (to restore their state).
            let mut done = left.is_zero() || batch.len() >= args.batch_size;
            let mut received = None;
            if !done {
                tokio::select! {
                    _ = shutdown.wait() => done = true,
                    r = tokio::time::timeout(left, consumer.recv()) => match r {
                        Ok(Ok(msg)) => received = Some(msg.detach()),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "consume error");
                            if consumer.context().errors.auth_failed() {
                                anyhow::bail!("Kafka refused our credentials: {}", consumer.context().errors.auth_error().unwrap_or_default());
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(_) => done = true,
                    },
                }
            }
            // Rebalances happen inside recv(): apply them before the next record.
            let events: Vec<RebalanceEvent> = std::mem::take(
                &mut *consumer
                    .context()
                    .events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            for ev in events {
                match ev {
                    RebalanceEvent::Revoked(ps) => {
                        let gone: HashSet<_> = ps.iter().cloned().collect();
                        batch.retain(|m| !gone.contains(&(m.topic().to_string(), m.partition())));
                        for (t, p) in &ps {
                            if let Some(owned) = assigned.get_mut(t) {
                                owned.remove(p);
                            }
                            committed.remove(&(t.clone(), *p));
                            progress.revoke(t, *p);
                            ends.forget(t, *p);
                            ends_committed.forget(t, *p);
                        }
                        processor.on_revoked(&ps);
                        tracing::info!(partitions = ?ps, "revoked");
                    }
                    RebalanceEvent::Assigned(ps) => {
                        restore_ends(kafka, &group, &ends_topic, &ps, &mut ends)
                            .await
                            .with_context(|| format!("restoring end-of-input marks of {ps:?}"))?;
                        ends_committed = ends.clone();
                        processor
                            .on_assigned(&ps)
                            .await
                            .with_context(|| format!("restoring state of {ps:?}"))?;
                        for (t, p) in &ps {
                            assigned.entry(t.clone()).or_default().insert(*p);
                            progress.assign(t, *p);
                        }
                        tracing::info!(partitions = ?ps, "assigned");
                    }
                }
            }
            // Only records of partitions we own now. librdkafka may still hand out records it
            // fetched before a revocation; processing one would commit its partition's offset
            // past the records dropped from the batch above, for a partition another instance
            // now reads from its committed offset.
            if let Some(msg) = received {
                if assigned
                    .get(msg.topic())
                    .is_some_and(|ps| ps.contains(&msg.partition()))
                {
                    progress.record(msg.topic(), msg.partition(), Instant::now());
                    batch.push(msg);
                } else {
                    m.stale_records.with_label_values(&[stage]).inc();
                }
            }
            if done || batch.len() >= args.batch_size {
                break;
            }
        }
        if batch.is_empty() && shutdown.is_triggered() {
            continue;
        }
        if let Some((at, sample)) = consumer
            .context()
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            for (t, p, unread) in sample {
                progress.sample(at, &t, p, Sample { unread });
            }
        }
        processor.on_progress(&progress);

        // 2-3. Process and commit.
        let started = Instant::now();
        match process_batch(
            &mut processor,
            &batch,
            eos,
            &producer,
            &consumer,
            &dlq,
            topology.dead_letter_topic,
            &committed,
            &mut partition_counts,
            &mut ends,
            &ends_topic,
            stage,
        )
        .await
        {
            Ok(None) => {
                // An empty batch whose tick emitted nothing: no transaction needed.
                processor.commit();
            }
            Ok(Some((out, tpl))) => {
                processor.commit();
                ends_committed = ends.clone();
                for e in tpl.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        committed.insert((e.topic().to_string(), e.partition()), o);
                    }
                }
                backoff = Duration::from_millis(100);
                m.transactions
                    .with_label_values(&[stage, "committed"])
                    .inc();
                m.consumed
                    .with_label_values(&[stage])
                    .inc_by(batch.len() as u64);
                m.deduplicated
                    .with_label_values(&[stage])
                    .inc_by(out.deduplicated);
                for r in &out.records {
                    m.produced.with_label_values(&[stage, r.kind]).inc();
                }
                for d in &out.dead {
                    m.dead_lettered
                        .with_label_values(&[stage, &d.error_code])
                        .inc();
                }
                let now = now_ms();
                let lat = m.latency.with_label_values(&[stage]);
                for msg in &batch {
                    if let Some(ts) = msg.timestamp().to_millis() {
                        lat.observe((now - ts).max(0) as f64 / 1000.0);
                    }
                }
                m.batch_seconds
                    .with_label_values(&[stage])
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(BatchError::Fatal(e)) => {
                if let Err(a) = abort(&producer, eos) {
                    tracing::warn!(error = %format!("{a:#}"), "abort after a fatal error failed");
                }
                return Err(e);
            }
            Err(BatchError::Retry(e)) => {
                m.transactions.with_label_values(&[stage, "aborted"]).inc();
                m.retries.with_label_values(&[stage]).inc();
                tracing::warn!(error = %format!("{e:#}"), backoff_ms = backoff.as_millis() as u64, "batch failed, rolling back and retrying");
                abort(&producer, eos).context("aborting the failed batch's transaction")?;
                processor.rollback();
                ends = ends_committed.clone();
                if !batch.is_empty() {
                    rewind(&consumer, &batch).context("seeking back after a failed batch")?;
                }
                if producer.context().errors.auth_failed() {
                    anyhow::bail!(
                        "Kafka refused our credentials: {}",
                        producer.context().errors.auth_error().unwrap_or_default()
                    );
                }
                tokio::select! {
                    _ = shutdown.wait() => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    health.set_ready(false);
    tracing::info!(stage, "shutting down: leaving the group");
    consumer.unsubscribe();
    tokio::task::block_in_place(|| producer.flush(Duration::from_secs(10)))?;
    Ok(())
}

enum BatchError {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

/// Aborts the open transaction, if any. The messages it purges produce delivery reports that
/// must be served while the abort waits for them (a `BaseProducer` has no thread doing it), so
/// the abort runs in short slices with the producer polled in between. Fails only when the
/// transaction cannot be aborted (fenced, fatal, or not within the transaction timeout): the
/// caller then exits, and a restart resumes from the committed offsets.
fn abort(producer: &BaseProducer<ProducerCtx>, eos: bool) -> anyhow::Result<()> {
    if !eos {
        return Ok(());
    }
    let deadline = Instant::now() + TXN_TIMEOUT;
    loop {
        producer.poll(Duration::ZERO);
        let r = tokio::task::block_in_place(|| {
            let r = producer.abort_transaction(Duration::from_millis(500));
            if r.is_err() {
                // Serve the delivery reports of purged messages before resuming the abort.
                for _ in 0..20 {
                    producer.poll(Duration::from_millis(10));
                }
            }
            r
        });
        match r {
            Ok(()) => return Ok(()),
            // No transaction was open (the batch failed before it began one).
            Err(KafkaError::Transaction(e)) if e.code() == RDKafkaErrorCode::State => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_fatal() => {
                anyhow::bail!("abort_transaction: {e}")
            }
            Err(e) => {
                if Instant::now() > deadline {
                    anyhow::bail!("abort_transaction did not complete within {TXN_TIMEOUT:?}: {e}");
                }
                tracing::debug!(error = %e, "abort_transaction not complete yet, resuming");
            }
        }
    }
}

/// Seeks every partition of `batch` back to its first offset in the batch.
fn rewind(consumer: &StreamConsumer<LoopContext>, batch: &[OwnedMessage]) -> anyhow::Result<()> {
    let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for m in batch {
        first
            .entry((m.topic().to_string(), m.partition()))
            .or_insert(m.offset());
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &first {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
    }
    let result = consumer.seek_partitions(tpl, Duration::from_secs(10))?;
    for e in result.elements() {
        if let Err(err) = e.error() {
            anyhow::bail!("cannot seek {}[{}] back: {err}", e.topic(), e.partition());
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn process_batch<P: Processor>(
    processor: &mut P,
    batch: &[OwnedMessage],
    eos: bool,
    producer: &BaseProducer<ProducerCtx>,
    consumer: &StreamConsumer<LoopContext>,
    dlq: &Encoder<DeadLetter>,
    dlq_topic: &str,
    committed: &BTreeMap<(String, i32), i64>,
    partition_counts: &mut HashMap<String, i32>,
    ends: &mut EndMarks,
    ends_topic: &str,
    stage: &str,
) -> Result<Option<(Output, TopicPartitionList)>, BatchError> {
    let retry = |e: KafkaError, what: &str| BatchError::Retry(anyhow::anyhow!("{what}: {e}"));
    let mut out = Output::default();
    for m in batch {
        let input = Input {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key(),
            payload: m.payload(),
        };
        let result = match control::control_of(m) {
            Ok(None) => processor.process(&input, &mut out).await,
            Ok(Some(mark)) if !mark.is_end_of_input() => {
                let stream = control::stream_of(m);
                processor
                    .on_watermark(&input, &mark, stream.as_deref(), &mut out)
                    .await
            }
            Ok(Some(mark)) => {
                let moved = ends.observe(input.topic, input.partition, &mark);
                if let Some(state) = ends.encode_partition(input.topic, input.partition) {
                    let key = format!("{}/{}", input.topic, input.partition).into_bytes();
                    out.records.push(OutRecord {
                        topic: ends_topic.to_string(),
                        partition: Some(0),
                        key: Some(key),
                        payload: Some(state),
                        kind: "changelog",
                    });
                }
                StageMetrics::get()
                    .end_marks
                    .with_label_values(&[
                        stage,
                        if moved.is_some() {
                            "complete"
                        } else {
                            "partial"
                        },
                    ])
                    .inc();
                match moved {
                    Some(end) => processor.on_end_of_input(&input, end, &mut out).await,
                    None => Ok(()),
                }
            }
            Err(e) => {
                out.dead_letter(&input, "control", "bad_control_record", e.to_string(), None);
                Ok(())
            }
        };
        match result {
            Ok(()) => {}
            Err(ProcessError::Transient(e)) => return Err(BatchError::Retry(e)),
            Err(ProcessError::Fatal(e)) => return Err(BatchError::Fatal(e)),
        }
    }
    match processor.on_tick(&mut out).await {
        Ok(()) => {}
        Err(ProcessError::Transient(e)) => return Err(BatchError::Retry(e)),
        Err(ProcessError::Fatal(e)) => return Err(BatchError::Fatal(e)),
    }
    if batch.is_empty() && out.is_empty() {
        return Ok(None);
    }
    // Every dead letter within the dead-letter topic's limit: a larger one would fail the
    // transaction forever (`MsgSizeTooLarge`); it becomes an `oversized` one ([`crate::dead`]).
    let mut dead_payloads = Vec::with_capacity(out.dead.len());
    for d in &mut out.dead {
        let mut bytes = dlq.encode(d).map_err(|e| BatchError::Fatal(e.into()))?;
        let key_len = d.key.as_ref().map_or(0, Vec::len);
        let oversized = if crate::dead::fits(bytes.len(), key_len) {
            None
        } else {
            let (fitted, oversized) = crate::dead::fit(d.clone(), bytes.len());
            *d = fitted;
            oversized
        };
        let headers = match oversized {
            None => None,
            Some(o) => {
                tracing::warn!(
                    stage,
                    code = %o.code,
                    value_bytes = o.value_size,
                    key_bytes = o.key_size,
                    topic = %d.source_topic,
                    partition = d.source_partition,
                    offset = d.source_offset,
                    "a dead letter over the dead-letter topic's limit is written as oversized"
                );
                bytes = dlq.encode(d).map_err(|e| BatchError::Fatal(e.into()))?;
                let mut h = OwnedHeaders::new();
                for (name, value) in o.headers() {
                    h = h.insert(Header {
                        key: name,
                        value: Some(value.as_bytes()),
                    });
                }
                Some(h)
            }
        };
        dead_payloads.push((bytes, headers));
    }
    if eos {
        producer
            .begin_transaction()
            .map_err(|e| retry(e, "begin_transaction"))?;
    }
    let failed_before = producer.context().failed.load(Ordering::Relaxed);
    for r in &out.records {
        let mut rec = BaseRecord::<[u8], [u8]>::to(&r.topic);
        if let Some(p) = r.payload.as_deref() {
            rec = rec.payload(p);
        }
        if let Some(k) = r.key.as_deref() {
            rec = rec.key(k);
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        send(producer, rec).map_err(|e| retry(e, "producing"))?;
    }
    for f in &out.forwards {
        let from = topic_partitions(producer, partition_counts, &f.from_topic)?;
        let to = topic_partitions(producer, partition_counts, &f.topic)?;
        let headers = control::owned_headers_of_stream(
            &f.mark.forwarded(f.from_partition, from),
            f.stream.as_deref(),
        );
        for p in 0..to {
            let rec = BaseRecord::<[u8], [u8]>::to(&f.topic)
                .partition(p)
                .key(CONTROL_KEY)
                .payload(&[][..])
                .headers(headers.clone());
            send(producer, rec).map_err(|e| retry(e, "forwarding a control record"))?;
        }
    }
    // A dead letter goes to the dead-letter partition of its source partition (modulo), not by
    // its key: the dead letters of one input partition keep that partition's order in one
    // dead-letter partition in every run and replay (a record without a key would otherwise
    // land on a random partition). With fewer dead-letter partitions than input partitions,
    // the inputs that share one interleave in processing order.
    let dlq_partitions = if out.dead.is_empty() {
        1
    } else {
        topic_partitions(producer, partition_counts, dlq_topic)?.max(1)
    };
    for (d, (payload, headers)) in out.dead.iter().zip(&dead_payloads) {
        let mut rec = BaseRecord::<[u8], [u8]>::to(dlq_topic)
            .payload(payload.as_slice())
            .partition(d.source_partition.rem_euclid(dlq_partitions));
        if let Some(k) = d.key.as_deref() {
            rec = rec.key(k);
        }
        if let Some(h) = headers {
            rec = rec.headers(h.clone());
        }
        send(producer, rec).map_err(|e| retry(e, "dead-lettering"))?;
    }
    let mut offsets: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = offsets
            .entry((m.topic(), m.partition()))
            .or_insert(m.offset());
        *e = (*e).max(m.offset());
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in offsets {
        tpl.add_partition_offset(t, p, Offset::Offset(o + 1))
            .map_err(|e| BatchError::Fatal(e.into()))?;
    }
    // A tick-only transaction re-commits the offsets this instance last committed: it moves no
    // input position, but the group metadata check still fences an instance that lost the group.
    let mut fence = TopicPartitionList::new();
    if batch.is_empty() {
        for ((t, p), o) in committed {
            fence
                .add_partition_offset(t, *p, Offset::Offset(*o))
                .map_err(|e| BatchError::Fatal(e.into()))?;
        }
    }
    let send_tpl = if batch.is_empty() { &fence } else { &tpl };
    tokio::task::block_in_place(|| {
        if eos {
            if send_tpl.count() > 0 {
                let cgm = consumer.group_metadata().ok_or_else(|| {
                    BatchError::Retry(anyhow::anyhow!("no consumer group metadata yet"))
                })?;
                producer
                    .send_offsets_to_transaction(send_tpl, &cgm, TXN_TIMEOUT)
                    .map_err(|e| retry(e, "send_offsets_to_transaction"))?;
            }
            producer
                .commit_transaction(TXN_TIMEOUT)
                .map_err(|e| retry(e, "commit_transaction"))
        } else {
            producer.flush(TXN_TIMEOUT).map_err(|e| retry(e, "flush"))?;
            if producer.context().failed.load(Ordering::Relaxed) > failed_before {
                return Err(BatchError::Retry(anyhow::anyhow!(
                    "some outputs were not delivered"
                )));
            }
            if tpl.count() == 0 {
                return Ok(());
            }
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| retry(e, "commit"))
        }
    })?;
    Ok(Some((out, tpl)))
}

/// Creates `<group>.end-marks`: one compacted partition, one record per input partition that
/// received end-of-input marks (its [`EndMarks`] state), written in the batch's transaction.
async fn ensure_ends_topic(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<()> {
    use cartstream_kafka::admin;
    let client = admin::admin_client(&kafka.admin()?)?;
    let spec = admin::TopicSpec {
        name: topic.to_string(),
        partitions: 1,
        replication: admin::internal_replication(&client)?,
        configs: vec![("cleanup.policy", "compact".to_string())],
    };
    admin::ensure_topics(&client, &[spec], Duration::from_secs(30))
        .await
        .with_context(|| format!("creating {topic}"))?;
    Ok(())
}

/// Reads the committed end-of-input state of `partitions` from `topic` into `ends`.
async fn restore_ends(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    partitions: &[(String, i32)],
    ends: &mut EndMarks,
) -> anyhow::Result<()> {
    let config = kafka.consumer(&format!("{group}-end-marks-restore"))?;
    let t = topic.to_string();
    let records = tokio::task::spawn_blocking(move || {
        cartstream_kafka::read::read_to_end(&config, &t, Duration::from_secs(60))
    })
    .await??;
    let wanted: HashMap<String, (String, i32)> = partitions
        .iter()
        .map(|(t, p)| (format!("{t}/{p}"), (t.clone(), *p)))
        .collect();
    for m in records {
        let Some((t, p)) = m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| wanted.get(k))
        else {
            continue;
        };
        ends.restore_partition(t, *p, m.payload().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("{topic}: {e}"))?;
    }
    Ok(())
}

/// The partition count of `topic`, from the cluster's metadata (cached: partitions of a topic a
/// stage reads or writes are not changed under a running pipeline).
fn topic_partitions(
    producer: &BaseProducer<ProducerCtx>,
    cache: &mut HashMap<String, i32>,
    topic: &str,
) -> Result<i32, BatchError> {
    if let Some(n) = cache.get(topic) {
        return Ok(*n);
    }
    let n = tokio::task::block_in_place(|| {
        cartstream_kafka::admin::topic_partition_count(
            producer.client(),
            topic,
            Duration::from_secs(10),
        )
    })
    .map_err(BatchError::Retry)?;
    cache.insert(topic.to_string(), n);
    Ok(n)
}

/// Enqueues a record, serving delivery reports while librdkafka's queue is full.
fn send<'a>(
    producer: &BaseProducer<ProducerCtx>,
    mut rec: BaseRecord<'a, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
