//! The ScyllaDB sink: consumes the enriched events, KPI windows, closed sessions and alerts and
//! upserts them into the real-time tables.
//!
//! # Commit protocol
//!
//! 1. Gather a batch (up to `--batch-size` records or `--batch-linger-ms`).
//! 2. Decode every record; an undecodable one is dead-lettered (delivery awaited). A registry
//!    outage is transient: the record is decoded again after a backoff, never dead-lettered.
//! 3. Write every row with at most `--max-in-flight` concurrent requests (a semaphore-like
//!    bound: `buffer_unordered`), so the database is never handed more than it can queue. A
//!    failed write (timeout, overload, node down) is retried with exponential backoff, forever,
//!    until it succeeds or the sink is asked to stop.
//! 4. Only when every write of the batch succeeded, commit per partition the offset after the
//!    batch's last record. So the committed offset is always the highest offset whose writes
//!    (and those of every record before it) succeeded.
//!
//! A crash anywhere replays from the committed offsets; every write is an upsert on the
//! record's natural key (and KPI windows carry their emission time as write timestamp), so a
//! replay leaves the tables as they were. A database outage stalls the sink (no commits, no
//! reads past the batch) and it resumes where it was once the database answers again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cartstream_events::types::{Alert, EnrichedEvent, KpiWindow, Session};
use cartstream_events::{DecodeError, Decoder, Registry};
use cartstream_kafka::{KafkaArgs, Topic, TopicNames};
use cartstream_runtime::{Health, Shutdown};
use futures::StreamExt;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use scylla::client::session::Session as CqlSession;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;

use crate::cql::CqlArgs;
use crate::dlq::DeadLetters;
use crate::metrics::SinkMetrics;
use crate::rows;
use crate::source::{self, GroupArgs, Owned, Rebalance};

const SINK: &str = "scylla";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsistencyArg {
    Any,
    One,
    Two,
    Three,
    Quorum,
    All,
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Any => Consistency::Any,
            ConsistencyArg::One => Consistency::One,
            ConsistencyArg::Two => Consistency::Two,
            ConsistencyArg::Three => Consistency::Three,
            ConsistencyArg::Quorum => Consistency::Quorum,
            ConsistencyArg::All => Consistency::All,
            ConsistencyArg::LocalQuorum => Consistency::LocalQuorum,
            ConsistencyArg::EachQuorum => Consistency::EachQuorum,
            ConsistencyArg::LocalOne => Consistency::LocalOne,
        }
    }
}

/// Flags of `cartstream-scylla-sink run`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScyllaSinkArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Consistency level of every write.
    #[arg(long, env = "SCYLLA_CONSISTENCY", value_enum, default_value_t = ConsistencyArg::LocalQuorum)]
    pub consistency: ConsistencyArg,
    /// TTL of events_by_user rows, in seconds (0: keep forever).
    #[arg(long, env = "EVENTS_TTL_SECS", default_value_t = 7 * 86_400)]
    pub events_ttl_secs: i32,
    /// TTL of kpi_by_dimension rows, in seconds (0: keep forever).
    #[arg(long, env = "KPI_TTL_SECS", default_value_t = 90 * 86_400)]
    pub kpi_ttl_secs: i32,
    /// TTL of sessions_by_user rows, in seconds (0: keep forever).
    #[arg(long, env = "SESSIONS_TTL_SECS", default_value_t = 30 * 86_400)]
    pub sessions_ttl_secs: i32,
    /// TTL of alerts_by_day rows, in seconds (0: keep forever).
    #[arg(long, env = "ALERTS_TTL_SECS", default_value_t = 90 * 86_400)]
    pub alerts_ttl_secs: i32,
    /// Most concurrent writes (the backpressure bound).
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Most records per batch (one offset commit per batch).
    #[arg(long, env = "BATCH_SIZE", default_value_t = 5_000)]
    pub batch_size: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 200)]
    pub batch_linger_ms: u64,
    /// Per-request timeout of a write, in milliseconds (then it is retried).
    #[arg(long, env = "WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// Apply the CQL migrations before consuming.
    #[arg(long, env = "MIGRATE", default_value_t = false)]
    pub migrate: bool,
    /// Input topics (base names, the topic prefix is added).
    #[arg(
        long,
        env = "SCYLLA_SINK_TOPICS",
        value_delimiter = ',',
        default_value = "purchases.enriched,kpi.windows,sessions.closed,alerts.raised"
    )]
    pub topics: Vec<String>,
}

/// One decoded record, ready to write.
pub enum Row {
    Event(EnrichedEvent),
    Kpi(KpiWindow),
    Session(Session),
    Alert(Alert),
}

impl Row {
    fn target(&self) -> &'static str {
        match self {
            Row::Event(_) => "events_by_user",
            Row::Kpi(_) => "kpi_by_dimension",
            Row::Session(_) => "sessions_by_user",
            Row::Alert(_) => "alerts_by_day",
        }
    }
}

/// Prepared statements and the TTLs, shared by every write.
pub struct Writer {
    session: Arc<CqlSession>,
    event: PreparedStatement,
    kpi: PreparedStatement,
    sessions: PreparedStatement,
    alert: PreparedStatement,
    args: ScyllaSinkArgs,
}

impl Writer {
    pub async fn prepare(
        session: Arc<CqlSession>,
        keyspace: &str,
        args: &ScyllaSinkArgs,
    ) -> anyhow::Result<Self> {
        let prep = |cql: String| {
            let session = session.clone();
            let consistency: Consistency = args.consistency.into();
            let timeout = Duration::from_millis(args.write_timeout_ms);
            async move {
                let mut p = session
                    .prepare(cql.as_str())
                    .await
                    .with_context(|| format!("preparing {cql}"))?;
                p.set_consistency(consistency);
                p.set_is_idempotent(true);
                p.set_request_timeout(Some(timeout));
                anyhow::Ok(p)
            }
        };
        Ok(Writer {
            event: prep(rows::insert_event_cql(keyspace)).await?,
            kpi: prep(rows::insert_kpi_cql(keyspace)).await?,
            sessions: prep(rows::insert_session_cql(keyspace)).await?,
            alert: prep(rows::insert_alert_cql(keyspace)).await?,
            session,
            args: args.clone(),
        })
    }

    /// One upsert, no retry.
    pub async fn write_once(&self, row: &Row) -> anyhow::Result<()> {
        let a = &self.args;
        let r = match row {
            Row::Event(e) => {
                self.session
                    .execute_unpaged(&self.event, rows::event_row(e, a.events_ttl_secs))
                    .await
            }
            Row::Kpi(k) => {
                self.session
                    .execute_unpaged(&self.kpi, rows::kpi_row(k, a.kpi_ttl_secs))
                    .await
            }
            Row::Session(s) => {
                self.session
                    .execute_unpaged(&self.sessions, rows::session_row(s, a.sessions_ttl_secs))
                    .await
            }
            Row::Alert(x) => {
                self.session
                    .execute_unpaged(&self.alert, rows::alert_row(x, a.alerts_ttl_secs))
                    .await
            }
        };
        r.map(|_| ()).map_err(anyhow::Error::from)
    }

    /// One upsert, retried with backoff until it succeeds; `Err` only when shutdown came first.
    pub async fn write(&self, row: &Row, shutdown: &Shutdown) -> Result<(), Stopped> {
        let m = SinkMetrics::get();
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut attempts = 0u32;
        loop {
            match self.write_once(row).await {
                Ok(()) => {
                    m.write_seconds
                        .with_label_values(&[SINK])
                        .observe(started.elapsed().as_secs_f64());
                    m.rows_written
                        .with_label_values(&[SINK, row.target()])
                        .inc();
                    return Ok(());
                }
                Err(e) => {
                    attempts += 1;
                    m.retries.with_label_values(&[SINK, "write"]).inc();
                    if should_warn() {
                        tracing::warn!(error = %format!("{e:#}"), attempts, table = row.target(), "write failed, retrying (one line per second at most)");
                    }
                    if source::sleep_or_shutdown(backoff, shutdown).await {
                        return Err(Stopped);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// At most one warning per second for failed writes: during an outage every in-flight write
/// fails at once.
fn should_warn() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::dlq::now_ms() as u64 / 1000;
    LAST.swap(now, Ordering::Relaxed) != now
}

/// The sink was asked to stop before its work was done: nothing may be committed.
#[derive(Debug)]
pub struct Stopped;

/// Connects to the database, waiting (with backoff) while it is not reachable.
pub async fn connect_waiting(cql: &CqlArgs, shutdown: &Shutdown) -> anyhow::Result<CqlSession> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match cql.connect().await {
            Ok(s) => return Ok(s),
            Err(e) => {
                let text = format!("{e:#}");
                // Wrong credentials or a bad keyspace name will not fix themselves.
                if text.contains("must be 1-48") || text.to_lowercase().contains("authenticat") {
                    return Err(e);
                }
                tracing::warn!(error = %text, "database not reachable, waiting");
                SinkMetrics::get()
                    .retries
                    .with_label_values(&[SINK, "connect"])
                    .inc();
                if source::sleep_or_shutdown(backoff, shutdown).await {
                    anyhow::bail!("stopped while waiting for the database");
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

struct Decoders {
    topics: BTreeMap<String, Kind>,
    event: Decoder<EnrichedEvent>,
    kpi: Decoder<KpiWindow>,
    session: Decoder<Session>,
    alert: Decoder<Alert>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Event,
    Kpi,
    Session,
    Alert,
}

impl Decoders {
    async fn decode(&self, msg: &OwnedMessage) -> Result<Row, DecodeError> {
        let payload = msg.payload().unwrap_or_default();
        let kind = self.topics.get(msg.topic()).copied().unwrap_or(Kind::Event);
        Ok(match kind {
            Kind::Event => Row::Event(self.event.decode(payload).await?),
            Kind::Kpi => Row::Kpi(self.kpi.decode(payload).await?),
            Kind::Session => Row::Session(self.session.decode(payload).await?),
            Kind::Alert => Row::Alert(self.alert.decode(payload).await?),
        })
    }
}

/// Everything `run` needs.
pub struct Context<'a> {
    pub kafka: &'a KafkaArgs,
    pub registry: Arc<Registry>,
    pub names: &'a TopicNames,
    pub cql: &'a CqlArgs,
    pub args: &'a ScyllaSinkArgs,
    pub shutdown: &'a Shutdown,
    pub health: &'a Health,
}

/// Runs the sink until shutdown (see the module docs).
pub async fn run(ctx: Context<'_>) -> anyhow::Result<()> {
    let Context {
        kafka,
        registry,
        names,
        cql,
        args,
        shutdown,
        health,
    } = ctx;
    let m = SinkMetrics::get();
    m.zero(SINK, &["write", "decode", "commit"], &[]);
    anyhow::ensure!(args.max_in_flight > 0, "--max-in-flight must be at least 1");
    let mut topics = BTreeMap::new();
    for base in &args.topics {
        let kind = match base.as_str() {
            "purchases.enriched" => Kind::Event,
            "kpi.windows" => Kind::Kpi,
            "sessions.closed" => Kind::Session,
            "alerts.raised" => Kind::Alert,
            other => anyhow::bail!(
                "--topics: {other} is not one of purchases.enriched, kpi.windows, sessions.closed, alerts.raised"
            ),
        };
        topics.insert(format!("{}{base}", names.topic_prefix), kind);
    }
    let decoders = Decoders {
        topics,
        event: Decoder::new(registry.clone()),
        kpi: Decoder::new(registry.clone()),
        session: Decoder::new(registry.clone()),
        alert: Decoder::new(registry.clone()),
    };

    let session = Arc::new(connect_waiting(cql, shutdown).await?);
    if args.migrate {
        let report = crate::cql::migrate(&session, cql).await?;
        tracing::info!(applied = ?report.applied, "migrations");
    }
    session
        .use_keyspace(&cql.keyspace, false)
        .await
        .with_context(|| {
            format!(
                "keyspace {} (run `cartstream-scylla-sink migrate` first)",
                cql.keyspace
            )
        })?;
    let writer = Writer::prepare(session.clone(), &cql.keyspace, args).await?;
    let dlq = DeadLetters::new(
        kafka,
        &registry,
        names.name(Topic::DeadLetters),
        &names.subject(Topic::DeadLetters),
        "scylla-sink",
    )
    .await?;

    let group = args.group.group("scylla-sink", &names.topic_prefix);
    let inputs: Vec<String> = decoders.topics.keys().cloned().collect();
    let consumer =
        source::consumer(kafka, &group, args.group.instance_id.as_deref(), &inputs).await?;
    source::spawn_lag_reporter(kafka, &group, inputs.clone(), SINK, shutdown.clone());
    tracing::info!(group, inputs = ?inputs, keyspace = %cql.keyspace, max_in_flight = args.max_in_flight, "writing");
    health.set_ready(true);

    let linger = Duration::from_millis(args.batch_linger_ms);
    let mut owned = Owned::default();
    let in_flight = m.in_flight.with_label_values(&[SINK]);
    while !shutdown.is_triggered() {
        // 1. Gather.
        let mut batch: Vec<OwnedMessage> = Vec::with_capacity(args.batch_size);
        let deadline = Instant::now() + linger;
        while batch.len() < args.batch_size {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut received = None;
            tokio::select! {
                _ = shutdown.wait() => break,
                r = tokio::time::timeout(left, consumer.recv()) => match r {
                    Ok(Ok(msg)) => received = Some(msg.detach()),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "consume error");
                        if consumer.context().errors.auth_failed() {
                            anyhow::bail!("Kafka refused our credentials: {}", consumer.context().errors.auth_error().unwrap_or_default());
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => break,
                },
            }
            for ev in consumer.context().take_events() {
                if let Rebalance::Revoked(ps) = &ev {
                    batch.retain(|m| {
                        !ps.iter()
                            .any(|(t, p)| t == m.topic() && *p == m.partition())
                    });
                }
                tracing::info!(event = ?ev, "rebalance");
                owned.apply(&ev);
            }
            if let Some(msg) = received {
                if owned.contains(msg.topic(), msg.partition()) {
                    batch.push(msg);
                }
            }
        }
        if batch.is_empty() {
            continue;
        }

        m.consumed
            .with_label_values(&[SINK])
            .inc_by(batch.len() as u64);
        m.consumed_bytes.with_label_values(&[SINK]).inc_by(
            batch
                .iter()
                .map(|b| b.payload().map_or(0, <[u8]>::len) as u64)
                .sum(),
        );
        let gathered = Instant::now();
        // 2. Decode; dead-letter what cannot be.
        let mut rows_: Vec<Row> = Vec::with_capacity(batch.len());
        for msg in &batch {
            // An end-of-input mark (cartstream_kafka::control) has no row; its offset commits
            // with the batch.
            if matches!(cartstream_kafka::control::control_of(msg), Ok(Some(_))) {
                continue;
            }
            let mut backoff = Duration::from_millis(200);
            loop {
                match decoders.decode(msg).await {
                    Ok(r) => {
                        rows_.push(r);
                        break;
                    }
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "registry unavailable, retrying");
                        m.retries.with_label_values(&[SINK, "decode"]).inc();
                        if source::sleep_or_shutdown(backoff, shutdown).await {
                            return finish(health);
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                    Err(e) => {
                        let (code, text, id) = (e.code(), e.to_string(), e.schema_id());
                        let mut backoff = Duration::from_millis(200);
                        while let Err(err) = dlq.send(msg, code, text.clone(), id).await {
                            tracing::warn!(error = %format!("{err:#}"), "dead letter not delivered, retrying");
                            if source::sleep_or_shutdown(backoff, shutdown).await {
                                return finish(health);
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                        break;
                    }
                }
            }
        }

        // 3. Write, bounded.
        let writer = &writer;
        let gauge = &in_flight;
        let results: Vec<Result<(), Stopped>> = futures::stream::iter(rows_.iter())
            .map(|r| async move {
                gauge.inc();
                let out = writer.write(r, shutdown).await;
                gauge.dec();
                out
            })
            .buffer_unordered(args.max_in_flight)
            .collect()
            .await;
        if results.iter().any(Result::is_err) {
            // Stopped mid-batch: commit nothing, the batch is replayed by the next run.
            return finish(health);
        }

        let written = Instant::now();
        // 4. Commit what the writes cover.
        let mut next: BTreeMap<(String, i32), (i64, Option<String>)> = BTreeMap::new();
        for msg in &batch {
            let e = next
                .entry((msg.topic().to_string(), msg.partition()))
                .or_insert((msg.offset() + 1, None));
            e.0 = e.0.max(msg.offset() + 1);
        }
        let mut backoff = Duration::from_millis(200);
        for attempt in 1.. {
            match source::commit(&consumer, &next) {
                Ok(()) => {
                    m.commits.with_label_values(&[SINK]).inc();
                    break;
                }
                Err(e) if attempt < 5 => {
                    tracing::warn!(error = %format!("{e:#}"), "commit failed, retrying");
                    m.retries.with_label_values(&[SINK, "commit"]).inc();
                    if source::sleep_or_shutdown(backoff, shutdown).await {
                        return finish(health);
                    }
                    backoff *= 2;
                }
                // Not fatal: the writes are idempotent, a later commit or a replay covers them.
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "commit failed, moving on");
                    break;
                }
            }
        }
        tracing::debug!(
            records = batch.len(),
            write_ms = (written - gathered).as_millis() as u64,
            commit_ms = written.elapsed().as_millis() as u64,
            "batch"
        );
    }
    consumer.unsubscribe();
    finish(health)
}

fn finish(health: &Health) -> anyhow::Result<()> {
    health.set_ready(false);
    tracing::info!("scylla sink stopped");
    Ok(())
}
