//! `cartstream-sessionizer`: session windows per `user_session` over the enriched events.
//!
//! Reads `purchases.enriched` (keyed by `user_session`, so a session's events share a partition)
//! and writes one record per closed session to `sessions.closed` (key `session_id`), exactly once
//! (see `cartstream-stream`). The session logic is `cartstream_processors::session`: inactivity
//! gap `--gap`, event-time watermark per input partition, `--grace` for late events; an event more
//! than the grace behind its partition's watermark goes to the dead-letter topic with the code
//! `late_event` (its lateness in the message, its bytes kept for a replay).
//!
//! **Idle partitions.** A partition caught up (no unread records) for `--idle-timeout`
//! adopts the lowest watermark of this instance's active partitions, or the highest of all when
//! every partition is idle (the windower's rule), so its sessions close while the others move on.
//! This is safe as long as an event is never more than the grace behind the newest event of the
//! whole stream; pick the timeout above the longest stall one upstream partition may have. With `--idle-wall-advance`, when *every* partition is idle, the
//! watermarks also move with the wall clock (for live event time only: a stall upstream longer
//! than the grace then turns the events it held back into late events).
//!
//! **State.** The open sessions and the watermark of each input partition are written, at the end
//! of every batch and in its transaction, to the changelog topic `<group>.changelog`
//! (co-partitioned with the input, compacted; key `user_session`, value the open sessions of that
//! key, a tombstone once they closed; the watermark under a key that is never valid UTF-8). A newly
//! assigned partition is rebuilt from it (committed records only) before its first record, so a
//! `kill -9` or a rebalance changes nothing in the output. After an aborted batch the state of
//! every owned partition is rebuilt the same way before the batch is retried.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartstream_events::types::Session;
use cartstream_events::{wire, Decoder, Encoder, Registry};
use cartstream_kafka::admin::{self, TopicSpec};
use cartstream_kafka::{read, KafkaArgs, Topic};
use cartstream_processors::session::{
    idle_target, parse_duration_ms, SessionConfig, SessionEvent, Sessions,
};
use cartstream_stream::{
    Input, Output, ProcessError, Processor, ProcessorArgs, Progress, StageMetrics,
};
use clap::Parser;
use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounterVec, IntGaugeVec};
use rdkafka::Message;

const STAGE: &str = "sessionizer";

#[derive(Parser)]
#[command(
    name = "cartstream-sessionizer",
    version,
    about = "Session windows per user_session over the enriched events, exactly once"
)]
struct Cli {
    #[command(flatten)]
    common: ProcessorArgs,
    /// Inactivity gap that ends a session, in event time (e.g. 30m, 90s).
    #[arg(long, env = "SESSION_GAP", default_value = "30m", value_parser = parse_duration_ms)]
    gap: i64,
    /// How far behind its partition's watermark an event may arrive and still be sessionized
    /// (later ones are dead-lettered as late_event). A session is emitted once the watermark
    /// passes its end + gap + grace.
    #[arg(long, env = "SESSION_GRACE", default_value = "5m", value_parser = parse_duration_ms)]
    grace: i64,
    /// How long a partition must be caught up (no unread records) to count as idle: it adopts the lowest
    /// watermark of this instance's active partitions (the highest of all when all are idle).
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration_ms)]
    idle_timeout: i64,
    /// When every partition is idle, advance the watermarks with the wall clock (live event time
    /// only; see the docs).
    #[arg(long, env = "IDLE_WALL_ADVANCE", default_value_t = false)]
    idle_wall_advance: bool,
}

/// Metrics of this stage besides the loop's (`StageMetrics`: watermark lag, late events).
struct Metrics {
    open: IntGaugeVec,
    closed: IntCounterVec,
}

impl Metrics {
    fn register() -> anyhow::Result<Self> {
        Ok(Metrics {
            open: register_int_gauge_vec!(
                "cartstream_processor_open_sessions",
                "Sessions open in memory, waiting for the watermark",
                &["stage"]
            )?,
            closed: register_int_counter_vec!(
                "cartstream_sessionizer_sessions_closed_total",
                "Sessions emitted, by converted (true/false)",
                &["converted"]
            )?,
        })
    }
}

struct Part {
    sessions: Sessions,
    /// Records arrived since the last tick (the clock is read once per batch, not per record).
    fresh: bool,
    last_record: Instant,
    /// Watermark right after the last record (base of the wall-clock advance).
    last_watermark: i64,
}

struct Sessionizer {
    decoder: Decoder<SessionEvent>,
    encoder: Encoder<Session>,
    cfg: SessionConfig,
    out_topic: String,
    changelog: String,
    idle_timeout: Duration,
    idle_wall_advance: bool,
    /// The input topic (for the idleness rule of the loop's [`Progress`]).
    input_topic: String,
    /// Owned partitions idle (caught up for the idle timeout) as of the last sample.
    idle_now: HashSet<i32>,
    /// Partitions whose end of input arrived in this batch: forwarded after their sessions.
    pending_ends: Vec<(i32, i64)>,
    parts: HashMap<i32, Part>,
    /// Set by a rollback: rebuild every owned partition from the changelog before going on.
    restore_all: bool,
    kafka: KafkaArgs,
    group: String,
    metrics: Metrics,
    late: u64,
}

impl Sessionizer {
    async fn restore(&mut self, ids: &[i32]) -> anyhow::Result<()> {
        let mut config = self.kafka.consumer(&format!("{}-restore", self.group))?;
        config.set("enable.partition.eof", "false");
        let topic = self.changelog.clone();
        let wanted = ids.to_vec();
        let records = tokio::task::spawn_blocking(move || {
            read::read_partitions_to_end(&config, &topic, Some(&wanted), Duration::from_secs(300))
        })
        .await??;
        for p in ids {
            self.parts.insert(
                *p,
                Part {
                    sessions: Sessions::new(self.cfg),
                    fresh: false,
                    last_record: Instant::now(),
                    last_watermark: i64::MIN,
                },
            );
        }
        let n = records.len();
        for m in records {
            let Some(part) = self.parts.get_mut(&m.partition()) else {
                continue;
            };
            let (Some(key), value) = (m.key(), m.payload().unwrap_or_default()) else {
                continue;
            };
            part.sessions.restore(key, value).map_err(|e| {
                anyhow::anyhow!(
                    "bad changelog record at {}[{}]@{}: {e}",
                    self.changelog,
                    m.partition(),
                    m.offset()
                )
            })?;
        }
        for p in ids {
            if let Some(part) = self.parts.get_mut(p) {
                part.sessions.clear_changes();
                part.last_watermark = part.sessions.watermark();
            }
        }
        tracing::info!(partitions = ?ids, records = n, open = self.open_sessions(), "sessions restored from {}", self.changelog);
        Ok(())
    }

    async fn restore_if_rolled_back(&mut self) -> Result<(), ProcessError> {
        if self.restore_all {
            let ids: Vec<i32> = self.parts.keys().copied().collect();
            self.restore(&ids).await.map_err(ProcessError::Transient)?;
            self.restore_all = false;
        }
        Ok(())
    }

    fn open_sessions(&self) -> usize {
        self.parts
            .values()
            .map(|p| p.sessions.open_sessions())
            .sum()
    }
}

impl Processor for Sessionizer {
    async fn on_assigned(&mut self, partitions: &[(String, i32)]) -> anyhow::Result<()> {
        let ids: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        self.restore(&ids).await
    }

    fn on_revoked(&mut self, partitions: &[(String, i32)]) {
        for (_, p) in partitions {
            self.parts.remove(p);
        }
    }

    async fn process(&mut self, input: &Input<'_>, out: &mut Output) -> Result<(), ProcessError> {
        self.restore_if_rolled_back().await?;
        let payload = input.payload.unwrap_or_default();
        let event = match self.decoder.decode(payload).await {
            Ok(e) => e,
            Err(e) if e.is_transient() => return Err(ProcessError::Transient(e.into())),
            Err(e) => {
                out.dead_letter(input, STAGE, e.code(), e.to_string(), e.schema_id());
                return Ok(());
            }
        };
        let cfg = self.cfg;
        let part = self.parts.entry(input.partition).or_insert_with(|| Part {
            sessions: Sessions::new(cfg),
            fresh: false,
            last_record: Instant::now(),
            last_watermark: i64::MIN,
        });
        part.fresh = true;
        match part.sessions.add(&event) {
            Ok(()) => {}
            Err(late) => {
                self.late += 1;
                out.dead_letter(
                    input,
                    STAGE,
                    "late_event",
                    format!(
                        "event {} of session {} is {} ms behind the partition's watermark {} (grace {} ms): its session may already be closed",
                        event.event_id, event.user_session, late.lateness_ms, part.sessions.watermark(), cfg.grace_ms
                    ),
                    wire::schema_id(payload),
                );
            }
        }
        part.last_watermark = part.sessions.watermark();
        Ok(())
    }

    async fn on_tick(&mut self, out: &mut Output) -> Result<(), ProcessError> {
        self.restore_if_rolled_back().await?;
        let now = Instant::now();
        for p in self.parts.values_mut() {
            if std::mem::take(&mut p.fresh) {
                p.last_record = now;
            }
        }
        // Idle means caught up (cartstream_stream::idle): a partition with unread records is
        // never idle, however long this instance takes to get to it. Partitions at their end of
        // input (watermark at the top) neither hold others back nor are followed.
        let idle_now = &self.idle_now;
        let ended = |p: &Part| p.sessions.watermark() == i64::MAX;
        let target = idle_target(
            self.parts
                .iter()
                .filter(|(_, p)| !ended(p))
                .map(|(k, p)| (p.sessions.watermark(), idle_now.contains(k))),
        );
        let all_idle = self.parts.keys().all(|k| idle_now.contains(k));
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut slowest = i64::MAX;
        for (p, part) in self.parts.iter_mut() {
            if idle_now.contains(p) && !ended(part) {
                if let Some(t) = target {
                    part.sessions.advance_to(t);
                }
                if all_idle && self.idle_wall_advance && part.last_watermark != i64::MIN {
                    // Whole seconds, so an idle instance does not rewrite its watermark every tick.
                    let secs = now.duration_since(part.last_record).as_secs() as i64;
                    part.sessions
                        .advance_to(part.last_watermark.saturating_add(secs * 1000));
                }
            }
            for (key, s) in part.sessions.close() {
                let session = s.to_session(&key);
                let bytes = self
                    .encoder
                    .encode(&session)
                    .map_err(|e| ProcessError::Fatal(e.into()))?;
                self.metrics
                    .closed
                    .with_label_values(&[if session.converted { "true" } else { "false" }])
                    .inc();
                out.send(&self.out_topic, Some(session.session_id.as_bytes()), bytes);
            }
            for (key, value) in part.sessions.take_changes() {
                if value.is_empty() {
                    out.changelog_delete(&self.changelog, *p, &key);
                } else {
                    out.changelog(&self.changelog, *p, &key, value);
                }
            }
            let wm = part.sessions.watermark();
            if wm != i64::MIN {
                slowest = slowest.min(wm);
            }
        }
        for (p, end) in std::mem::take(&mut self.pending_ends) {
            tracing::info!(
                partition = p,
                end,
                "end of input: sessions closed, mark forwarded"
            );
            out.forward_end_of(&self.out_topic, &self.input_topic, p, end);
        }
        if slowest != i64::MAX {
            StageMetrics::get()
                .watermark_lag
                .with_label_values(&[STAGE])
                .set((wall_ms - slowest) as f64 / 1000.0);
        }
        self.metrics
            .open
            .with_label_values(&[STAGE])
            .set(self.open_sessions() as i64);
        Ok(())
    }

    fn commit(&mut self) {
        // The state already holds the batch's changes; count what became final.
        StageMetrics::get()
            .late_events
            .with_label_values(&[STAGE])
            .inc_by(std::mem::take(&mut self.late));
    }

    fn rollback(&mut self) {
        self.late = 0;
        self.pending_ends.clear();
        self.restore_all = true;
    }

    fn on_progress(&mut self, progress: &Progress) {
        self.idle_now = progress.idle_partitions(
            &self.input_topic,
            self.parts.keys().copied(),
            self.idle_timeout,
            Instant::now(),
        );
    }

    async fn on_end_of_input(
        &mut self,
        input: &Input<'_>,
        end: i64,
        _out: &mut Output,
    ) -> Result<(), ProcessError> {
        self.restore_if_rolled_back().await?;
        // No event before `end` will come: a session whose gap has passed by then is final.
        let grace = self.cfg.grace_ms;
        if let Some(part) = self.parts.get_mut(&input.partition) {
            part.sessions.advance_to(end.saturating_add(grace));
        }
        self.pending_ends.push((input.partition, end));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cartstream_runtime::exit_code(run(cli).await)
}

/// Creates the changelog topic with as many partitions as the input (co-partitioned).
async fn ensure_changelog(kafka: &KafkaArgs, input: &str, changelog: &str) -> anyhow::Result<()> {
    let client = admin::admin_client(&kafka.admin()?)?;
    let partitions = admin::input_partitions(&client, input)?;
    let spec = TopicSpec {
        name: changelog.to_string(),
        partitions,
        replication: admin::internal_replication(&client)?,
        // Compacted; keys untouched for a week (wall clock) expire, like the input topic.
        configs: vec![
            ("cleanup.policy", "compact,delete".to_string()),
            ("retention.ms", (7 * 24 * 3_600_000_i64).to_string()),
            ("min.cleanable.dirty.ratio", "0.1".to_string()),
            ("segment.ms", (3_600_000_i64).to_string()),
        ],
    };
    admin::ensure_topics(&client, &[spec], Duration::from_secs(30)).await?;
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    anyhow::ensure!(cli.gap > 0, "--gap must be positive");
    let c = &cli.common;
    let service = c.service.init("cartstream-sessionizer").await?;
    let metrics = Metrics::register()?;
    let registry: Arc<Registry> = c.registry.connect()?;
    let names = &c.names;
    let group = c.group(STAGE);
    let input = names.name(Topic::Enriched);
    // The group already carries the topic prefix.
    let changelog = format!("{group}.changelog");
    let k = c.kafka.clone();
    tokio::task::spawn_blocking(move || k.check(Duration::from_secs(30))).await??;
    ensure_changelog(&c.kafka, &input, &changelog).await?;
    tracing::info!(
        gap_ms = cli.gap,
        grace_ms = cli.grace,
        idle_timeout_ms = cli.idle_timeout,
        idle_wall_advance = cli.idle_wall_advance,
        "sessionizing"
    );

    let sessionizer = Sessionizer {
        decoder: Decoder::new(registry.clone()),
        encoder: Encoder::register(&registry, &names.subject(Topic::Sessions)).await?,
        cfg: SessionConfig {
            gap_ms: cli.gap,
            grace_ms: cli.grace,
        },
        out_topic: names.name(Topic::Sessions),
        changelog,
        idle_timeout: Duration::from_millis(cli.idle_timeout.max(0) as u64),
        idle_wall_advance: cli.idle_wall_advance,
        input_topic: input.clone(),
        idle_now: HashSet::new(),
        pending_ends: Vec::new(),
        parts: HashMap::new(),
        restore_all: false,
        kafka: c.kafka.clone(),
        group,
        metrics,
        late: 0,
    };
    c.run(STAGE, &[input], &registry, sessionizer, &service)
        .await
}
