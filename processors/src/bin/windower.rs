//! `cartstream-windower`: event-time KPI windows per dimension value, exact, exactly once.
//!
//! Reads `purchases.enriched`, writes final (and optionally early) window results to
//! `kpi.windows` and events later than the grace period to `purchases.late`. Two stages run in
//! this one process, each on the shared transactional loop with its own consumer group (see
//! `cartstream_processors::win_stage` for why this is exact):
//!
//! 1. `windower-pre` (group `<group>-pre`) reads the enriched events, keeps a watermark per input
//!    partition, sets late events aside and writes per-batch partial aggregates per
//!    (dimension value, pane) to the internal topic `<group>-pre.repartition`, keyed by the
//!    dimension value, followed by a watermark marker broadcast to every partition of it. A
//!    partition without records for `--idle-timeout` adopts the lowest watermark of the active
//!    partitions (this instance's, and other instances' as seen from the markers on partition 0,
//!    where each instance re-sends its markers as a heartbeat), or the highest known when none is
//!    active, so it stops holding windows open. Its state (the watermark of
//!    each input partition) is in the compacted `<group>-pre.changelog`.
//! 2. `windower` (group `<group>`) reads the repartition topic, merges partials into panes and
//!    emits a window when the minimum watermark over all input partitions passes its end plus
//!    grace. Its state (panes with exact user sets, upstream watermarks) is in the compacted
//!    `<group>.changelog`, written in the same transaction as the outputs and restored on
//!    assignment, so results are exact across `kill -9` and rebalances. After its results,
//!    each partition writes a watermark record (`cartstream_kafka::control`, stream
//!    `window/<size>/<slide>`) to every `kpi.windows` partition: every final window starting
//!    before it has been written. All merge partitions write to every `kpi.windows` partition,
//!    so only these records (the lowest over all merge partitions) tell a reader such as the
//!    detector how far a `kpi.windows` partition is complete.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cartstream_events::types::{Dimension, EnrichedEvent, KpiWindow, LateEvent};
use cartstream_events::{Decoder, Encoder, Registry};
use cartstream_kafka::admin::{self, TopicSpec};
use cartstream_kafka::{read, KafkaArgs, Topic};
use cartstream_processors::kpi_metrics::KpiMetrics;
use cartstream_processors::win_stage::{
    self, Checkpoint, MergeState, PartitionMark, PreStage, Repartitioned, WinConfig, WindowResult,
    CHECKPOINT_KEY,
};
use cartstream_processors::window::WindowSpec;
use cartstream_runtime::Shutdown;
use cartstream_stream::{
    Input, LoopArgs, Output, ProcessError, Processor, ProcessorArgs, Progress, StageMetrics,
    Topology,
};
use clap::Parser;
use prometheus::{register_int_counter_vec, IntCounterVec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

const STAGE_PRE: &str = "windower-pre";
const STAGE: &str = "windower";
const MARK_KEY: &[u8] = b"wm";
/// Most window results one repartition partition emits per tick (one transaction): when the
/// watermark jumps far (a restart after a pause, many small slides), the rest follows in the
/// next ticks instead of one huge transaction.
const MAX_RESULTS_PER_TICK: usize = 20_000;
/// Target size of a bundle of partials on the repartition topic (records stay well under 1 MB).
const BUNDLE_BYTES: usize = 256 * 1024;

/// Parses `500ms`, `30s`, `1m`, `10m`, `1h` or plain milliseconds.
fn parse_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 30s, 1m, 10m, 1h)"))?;
    let mult = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => return Err(format!("unknown unit '{other}' in '{s}' (ms, s, m, h)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too long"))
}

#[derive(Parser)]
#[command(
    name = "cartstream-windower",
    version,
    about = "Event-time KPI windows (tumbling or hopping) per dimension value, exact, exactly once; \
             late events to purchases.late"
)]
struct Cli {
    #[command(flatten)]
    common: ProcessorArgs,
    /// Window size (e.g. 1m, 10m, 30s, 500ms).
    #[arg(long, env = "WINDOW_SIZE", default_value = "1m", value_parser = parse_ms)]
    window_size: i64,
    /// Window slide: hopping windows of --window-size every --window-slide (the size must be a
    /// multiple of it) [default: the size, i.e. tumbling].
    #[arg(long, env = "WINDOW_SLIDE", value_parser = parse_ms)]
    window_slide: Option<i64>,
    /// How long after its end (in event time, by the watermark) a window still takes events.
    #[arg(long, env = "GRACE", default_value = "30s", value_parser = parse_ms)]
    grace: i64,
    /// Allowed out-of-orderness: a partition's watermark is its highest event time minus this.
    #[arg(long, env = "MAX_OUT_OF_ORDER", default_value = "5s", value_parser = parse_ms)]
    max_out_of_order: i64,
    /// A partition caught up for this long (no unread records: a backlog is never idle) stops
    /// holding the watermark back:
    /// it adopts the lowest watermark of the active partitions, this instance's or others' (the
    /// highest known when none is active).
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "30s", value_parser = parse_ms)]
    idle_timeout: i64,
    /// Emit early (is_final=false) results of the open windows that changed, at most this often
    /// (e.g. 10s) [default: off, final results only].
    #[arg(long, env = "EARLY_UPDATES", value_parser = parse_ms)]
    early_updates: Option<i64>,
    /// Business KPI metrics (cartstream_kpi_*): most categories with a label of their own (the
    /// rest is "other").
    #[arg(long, env = "KPI_METRICS_CATEGORIES", default_value_t = 200)]
    kpi_metrics_categories: usize,
    /// Business KPI metrics: best sellers of the latest window exported by rank.
    #[arg(long, env = "KPI_METRICS_TOP_PRODUCTS", default_value_t = 10)]
    kpi_metrics_top_products: usize,
}

struct Metrics {
    emitted: IntCounterVec,
    idle: IntCounterVec,
    stale: IntCounterVec,
}

impl Metrics {
    fn register() -> anyhow::Result<Self> {
        Ok(Metrics {
            emitted: register_int_counter_vec!(
                "cartstream_windower_windows_emitted_total",
                "Window results written to kpi.windows, final or early",
                &["kind"]
            )?,
            idle: register_int_counter_vec!(
                "cartstream_windower_idle_advances_total",
                "Watermark advances of an idle input partition to the instance's active ones",
                &["partition"]
            )?,
            stale: register_int_counter_vec!(
                "cartstream_windower_stale_partials_total",
                "Partials for windows already final (impossible by design; must stay 0)",
                &["stage"]
            )?,
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lag_seconds(wm: i64) -> f64 {
    if wm == i64::MIN {
        0.0
    } else {
        (now_ms() - wm) as f64 / 1000.0
    }
}

/// Reads partitions of a compacted changelog to the end.
async fn read_changelog(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    let mut config = kafka.consumer(&format!("{group}-restore"))?;
    config.set("enable.partition.eof", "false");
    let topic = topic.to_string();
    let wanted = partitions.to_vec();
    tokio::task::spawn_blocking(move || {
        read::read_partitions_to_end(&config, &topic, Some(&wanted), Duration::from_secs(300))
    })
    .await?
}

/// Reads offsets `[from, to)` of one partition (committed records only).
async fn read_range(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    if from >= to {
        return Ok(Vec::new());
    }
    let mut config = kafka.consumer(&format!("{group}-replay"))?;
    config.set("enable.partition.eof", "false");
    config.set("enable.auto.commit", "false");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(from))?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut out = Vec::new();
        loop {
            if let Some(r) = consumer.poll(Duration::from_millis(200)) {
                let m = r?;
                let o = m.offset();
                if o < to {
                    out.push(m.detach());
                }
                // The record at to - 1 is the last one processed: a committed record.
                if o >= to - 1 {
                    return Ok(out);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "replaying {topic} [{partition}] {from}..{to}: only {} records within 300 s",
                out.len()
            );
        }
    })
    .await?
}

// ---------------------------------------------------------------------------------------------
// Stage 1

/// The latest marker of every input partition as read from partition 0 of the repartition topic
/// (markers go to every partition): watermark, idle flag, arrival. Lets idle partitions of this
/// instance follow the active partitions other instances own.
type Remote = Arc<Mutex<HashMap<i32, (i64, bool, Instant)>>>;

/// Follows the markers on a thread of its own until shutdown (committed records only, from the
/// end: only partitions whose watermark moves matter).
fn follow_markers(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    remote: Remote,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut config = kafka.consumer(&format!("{group}-markers"))?;
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::End)?;
    consumer.assign(&tpl)?;
    std::thread::Builder::new()
        .name("windower-markers".into())
        .spawn(move || {
            while !shutdown.is_triggered() {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        if let Some(Repartitioned::Marker {
                            partition,
                            watermark,
                            idle,
                        }) = m.payload().and_then(Repartitioned::decode)
                        {
                            remote
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(partition, (watermark, idle, Instant::now()));
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "reading watermark markers");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    None => {}
                }
            }
        })?;
    Ok(())
}

struct Pre {
    decoder: Decoder<EnrichedEvent>,
    late_encoder: Encoder<LateEvent>,
    stage: PreStage,
    late_topic: String,
    repartition: String,
    repartition_partitions: i32,
    changelog: String,
    last_seen: HashMap<i32, Instant>,
    idle_timeout: Duration,
    /// The input topic (for the idleness rule of the loop's [`Progress`]).
    input_topic: String,
    /// Owned partitions that are idle (caught up for the idle timeout), as of the last sample.
    idle_now: HashSet<i32>,
    /// Owned partitions whose end of input has been declared: never active, never adopted from.
    ended: HashSet<i32>,
    remote: Remote,
    last_heartbeat: Instant,
    kafka: KafkaArgs,
    group: String,
    metrics: Arc<Metrics>,
}

impl Processor for Pre {
    async fn on_assigned(&mut self, partitions: &[(String, i32)]) -> anyhow::Result<()> {
        let ids: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let records = read_changelog(&self.kafka, &self.group, &self.changelog, &ids).await?;
        let mut marks: HashMap<i32, PartitionMark> = HashMap::new();
        for m in records {
            if m.key() != Some(MARK_KEY) {
                continue;
            }
            if let Some(mark) = m.payload().and_then(PartitionMark::decode) {
                marks.insert(m.partition(), mark);
            }
        }
        let now = Instant::now();
        for p in &ids {
            self.stage.assign(*p, marks.get(p).copied());
            self.last_seen.insert(*p, now);
        }
        tracing::info!(partitions = ?ids, restored = ?marks, "watermarks restored from {}", self.changelog);
        Ok(())
    }

    fn on_revoked(&mut self, partitions: &[(String, i32)]) {
        for (_, p) in partitions {
            self.stage.revoke(*p);
            self.last_seen.remove(p);
            self.ended.remove(p);
        }
    }

    fn on_progress(&mut self, progress: &Progress) {
        self.idle_now = progress.idle_partitions(
            &self.input_topic,
            self.last_seen.keys().copied(),
            self.idle_timeout,
            Instant::now(),
        );
    }

    async fn on_end_of_input(
        &mut self,
        input: &Input<'_>,
        end: i64,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        // No event before `end` will come: every window ending by then is complete.
        let grace = self.stage.cfg.grace_ms;
        self.stage
            .advance(input.partition, end.saturating_add(grace));
        self.ended.insert(input.partition);
        tracing::info!(partition = input.partition, end, "end of input");
        // After the marker on_tick writes for the advanced watermark (records precede marks).
        out.forward_end(&self.repartition, input, end);
        Ok(())
    }

    async fn process(&mut self, input: &Input<'_>, out: &mut Output) -> Result<(), ProcessError> {
        let payload = input.payload.unwrap_or_default();
        let event = match self.decoder.decode(payload).await {
            Ok(e) => e,
            Err(e) if e.is_transient() => return Err(ProcessError::Transient(e.into())),
            Err(e) => {
                out.dead_letter(input, STAGE_PRE, e.code(), e.to_string(), e.schema_id());
                return Ok(());
            }
        };
        self.last_seen.insert(input.partition, Instant::now());
        if let Err(late) = self.stage.observe(input.partition, &event) {
            let cfg = self.stage.cfg;
            let record = LateEvent {
                event,
                lateness_ms: late.lateness_ms,
                watermark: late.watermark,
                window_start: late.window_start,
                window_end: late.window_end,
                window_size_ms: cfg.spec.size_ms,
                window_slide_ms: cfg.spec.slide_ms,
                grace_ms: cfg.grace_ms,
                source_topic: input.topic.to_string(),
                source_partition: input.partition,
                source_offset: input.offset,
                detected_at: now_ms(),
            };
            let bytes = self
                .late_encoder
                .encode(&record)
                .map_err(|e| ProcessError::Fatal(e.into()))?;
            out.send(&self.late_topic, input.key, bytes);
            StageMetrics::get()
                .late_events
                .with_label_values(&[STAGE])
                .inc();
        }
        Ok(())
    }

    async fn on_tick(&mut self, out: &mut Output) -> Result<(), ProcessError> {
        // Idle partitions adopt the lowest watermark of the active ones: this instance's
        // partitions that are not idle (idle = caught up for the idle timeout, see
        // cartstream_stream::idle: a backlog is never idle), and other instances' partitions
        // whose markers (not idle ones) arrived within it. Partitions whose end of input was
        // declared take no part.
        let now = Instant::now();
        let ended = |p: &i32, wm: i64| wm == i64::MAX || self.ended.contains(p);
        let (active, idle): (Vec<_>, Vec<_>) = self
            .stage
            .partitions()
            .filter(|(p, m)| !ended(p, m.watermark))
            .partition(|(p, _)| !self.idle_now.contains(p));
        let mut active_wms: Vec<i64> = active.iter().map(|(_, m)| m.watermark).collect();
        let mut all_wms: Vec<i64> = self
            .stage
            .partitions()
            .filter(|(p, m)| !ended(p, m.watermark))
            .map(|(_, m)| m.watermark)
            .collect();
        for (p, (wm, was_idle, at)) in self.remote.lock().unwrap_or_else(|p| p.into_inner()).iter()
        {
            if self.last_seen.contains_key(p) {
                continue; // ours
            }
            if *wm == i64::MAX {
                continue; // ended
            }
            all_wms.push(*wm);
            if !was_idle && now.duration_since(*at) < self.idle_timeout {
                active_wms.push(*wm);
            }
        }
        // With no active partition anywhere (the stream went quiet, or right after a restart),
        // the idle ones follow the most advanced one.
        let target = if active_wms.is_empty() {
            all_wms.into_iter().max()
        } else {
            active_wms.into_iter().min()
        };
        if let Some(target) = target {
            if target != i64::MIN {
                for (p, m) in idle {
                    if m.watermark < target {
                        self.stage.advance(p, target);
                        self.metrics.idle.with_label_values(&[&p.to_string()]).inc();
                    }
                }
            }
        }
        let active_now: Vec<i32> = active.iter().map(|(p, _)| *p).collect();
        let drained = self.stage.drain();
        for (r, bundle) in
            win_stage::bundles(drained.partials, self.repartition_partitions, BUNDLE_BYTES)
        {
            out.send_to(&self.repartition, r, None, bundle);
        }
        for (p, mark, idle) in drained.marks {
            let marker = Repartitioned::Marker {
                partition: p,
                watermark: mark.watermark,
                idle,
            }
            .encode();
            for r in 0..self.repartition_partitions {
                out.send_to(&self.repartition, r, Some(MARK_KEY), marker.clone());
            }
            out.changelog(&self.changelog, p, MARK_KEY, mark.encode());
        }
        // Heartbeat: the markers of every owned partition again, to partition 0 only (where
        // other instances follow them), so an instance that just started learns them and an
        // active partition whose event time stands still still counts as active.
        let every =
            (self.idle_timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(10));
        if self.last_heartbeat.elapsed() >= every {
            self.last_heartbeat = Instant::now();
            tracing::debug!(
                local = ?self.stage.partitions().collect::<Vec<_>>(),
                active = ?active_now,
                remote = ?self.remote.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(p, (w, i, at))| (*p, *w, *i, at.elapsed().as_millis())).collect::<Vec<_>>(),
                "watermarks"
            );
            for (p, mark) in self.stage.partitions() {
                if mark.watermark == i64::MIN {
                    continue;
                }
                let marker = Repartitioned::Marker {
                    partition: p,
                    watermark: mark.watermark,
                    idle: !active_now.contains(&p),
                };
                out.send_to(&self.repartition, 0, Some(MARK_KEY), marker.encode());
            }
        }
        let wm = self
            .stage
            .partitions()
            .map(|(_, m)| m.watermark)
            .min()
            .unwrap_or(i64::MIN);
        StageMetrics::get()
            .watermark_lag
            .with_label_values(&[STAGE_PRE])
            .set(lag_seconds(wm));
        Ok(())
    }

    fn commit(&mut self) {
        self.stage.commit();
    }

    fn rollback(&mut self) {
        self.stage.rollback();
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2

struct Merge {
    cfg: WinConfig,
    upstream: usize,
    states: HashMap<i32, MergeState>,
    changelog: String,
    /// The repartition topic (replayed on restore).
    input: String,
    out_topic: String,
    encoder: Encoder<KpiWindow>,
    kafka: KafkaArgs,
    group: String,
    needs_restore: bool,
    early_every: Option<Duration>,
    last_early: Instant,
    last_gauges: Instant,
    metrics: Arc<Metrics>,
    /// Business KPI metrics, fed with the final tumbling windows of committed batches.
    kpi: KpiMetrics,
    pending_kpi: Vec<KpiWindow>,
    /// Repartition partitions whose end of input arrived in this batch: close everything it
    /// allows in this tick and forward the mark to the output after the results.
    pending_ends: Vec<(i32, i64)>,
    /// Per repartition partition, the watermark last written to `kpi.windows` (not persisted:
    /// after a restart or an abort it is sent again; receivers keep the highest).
    marks_sent: HashMap<i32, i64>,
    /// The stream name of this spec's windows in those watermark records.
    stream: String,
}

impl Merge {
    /// Rebuilds the state of `ids`: the checkpoint from the changelog, then a replay of the
    /// repartition partition from its `replay_from` to its `next_offset`.
    async fn restore(&mut self, ids: &[i32]) -> anyhow::Result<()> {
        let records = read_changelog(&self.kafka, &self.group, &self.changelog, ids).await?;
        let mut checkpoints: HashMap<i32, Checkpoint> = HashMap::new();
        for m in &records {
            if m.key() != Some(CHECKPOINT_KEY) {
                continue;
            }
            let cp = m.payload().and_then(Checkpoint::decode).with_context(|| {
                format!(
                    "unreadable checkpoint in {} [{}]",
                    self.changelog,
                    m.partition()
                )
            })?;
            checkpoints.insert(m.partition(), cp);
        }
        for p in ids {
            let mut state = match checkpoints.get(p) {
                None => MergeState::new(self.cfg, self.upstream),
                Some(cp) => {
                    let mut state = MergeState::from_checkpoint(self.cfg, self.upstream, cp);
                    let started = Instant::now();
                    let replay = read_range(
                        &self.kafka,
                        &self.group,
                        &self.input,
                        *p,
                        cp.replay_from,
                        cp.next_offset,
                    )
                    .await?;
                    let n = replay.len();
                    for m in replay {
                        match m.payload().and_then(Repartitioned::decode) {
                            Some(Repartitioned::Bundle(entries)) => {
                                for (k, pane, agg) in entries {
                                    state.apply_partial(k, pane, &agg, m.offset());
                                }
                            }
                            Some(Repartitioned::Marker {
                                partition,
                                watermark,
                                ..
                            }) => state.apply_marker(partition, watermark, m.offset()),
                            None => {} // dead-lettered when it was first read
                        }
                    }
                    tracing::info!(
                        partition = p,
                        records = n,
                        from = cp.replay_from,
                        to = cp.next_offset,
                        ms = started.elapsed().as_millis() as u64,
                        "replayed"
                    );
                    state
                }
            };
            state.restored();
            tracing::info!(
                partition = p,
                panes = state.open_panes(),
                watermark = state.watermark(),
                "window state restored"
            );
            self.states.insert(*p, state);
        }
        Ok(())
    }

    async fn restore_if_needed(&mut self) -> Result<(), ProcessError> {
        if self.needs_restore {
            let ids: Vec<i32> = self.states.keys().copied().collect();
            self.restore(&ids).await.map_err(ProcessError::Transient)?;
            self.needs_restore = false;
        }
        Ok(())
    }

    fn emit(&mut self, w: &WindowResult, out: &mut Output) -> Result<(), ProcessError> {
        let spec = self.cfg.spec;
        let k = &w.key;
        let record = KpiWindow {
            window_start: w.window_start,
            window_end: w.window_start + spec.size_ms,
            window_size_ms: spec.size_ms,
            window_slide_ms: spec.slide_ms,
            dimension: k.dimension,
            dimension_value: k.value.clone(),
            views: w.agg.views,
            carts: w.agg.carts,
            removals: w.agg.removals,
            purchases: w.agg.purchases,
            units: w.agg.units,
            revenue: w.agg.revenue(),
            currency: k.currency.clone(),
            avg_price: w.agg.avg_price(),
            conversion_rate: w.agg.conversion_rate(),
            distinct_users: w.agg.users.len() as i64,
            is_final: w.is_final,
            emitted_at: now_ms(),
        };
        let bytes = self
            .encoder
            .encode(&record)
            .map_err(|e| ProcessError::Fatal(e.into()))?;
        let key = window_key(
            k.dimension,
            &k.value,
            w.window_start,
            spec.size_ms,
            &k.currency,
        );
        out.send(&self.out_topic, Some(key.as_bytes()), bytes);
        if record.is_final && spec.size_ms == spec.slide_ms {
            self.pending_kpi.push(record);
        }
        Ok(())
    }
}

/// Record key of a window result: `dimension/value/window_start/size/currency`.
fn window_key(d: Dimension, value: &str, start: i64, size: i64, currency: &str) -> String {
    format!(
        "{}/{value}/{start}/{size}/{currency}",
        win_stage::dimension_name(d)
    )
}

impl Processor for Merge {
    async fn on_assigned(&mut self, partitions: &[(String, i32)]) -> anyhow::Result<()> {
        let ids: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        self.restore(&ids).await
    }

    fn on_revoked(&mut self, partitions: &[(String, i32)]) {
        for (_, p) in partitions {
            self.states.remove(p);
            self.marks_sent.remove(p);
        }
    }

    async fn process(&mut self, input: &Input<'_>, out: &mut Output) -> Result<(), ProcessError> {
        self.restore_if_needed().await?;
        let decoded = input.payload.and_then(Repartitioned::decode);
        let Some(state) = self.states.get_mut(&input.partition) else {
            return Ok(());
        };
        match decoded {
            Some(Repartitioned::Marker {
                partition,
                watermark,
                ..
            }) => state.apply_marker(partition, watermark, input.offset),
            Some(Repartitioned::Bundle(entries)) => {
                for (k, pane, agg) in entries {
                    state.apply_partial(k, pane, &agg, input.offset);
                }
            }
            None => out.dead_letter(
                input,
                STAGE,
                "bad_repartition_record",
                "not a partial aggregate or watermark marker".into(),
                None,
            ),
        }
        Ok(())
    }

    async fn on_tick(&mut self, out: &mut Output) -> Result<(), ProcessError> {
        self.restore_if_needed().await?;
        let early = self
            .early_every
            .is_some_and(|every| self.last_early.elapsed() >= every);
        if early {
            self.last_early = Instant::now();
        }
        let mut parts: Vec<i32> = self.states.keys().copied().collect();
        parts.sort_unstable();
        let mut results = Vec::new();
        let mut checkpoints = Vec::new();
        let mut stale = 0;
        let ends = std::mem::take(&mut self.pending_ends);
        for p in &parts {
            let Some(state) = self.states.get_mut(p) else {
                continue;
            };
            // At the end of input, everything it closes goes out before the forwarded mark.
            let most = if ends.iter().any(|(q, _)| q == p) {
                usize::MAX
            } else {
                MAX_RESULTS_PER_TICK
            };
            results.extend(state.close_at_most(most));
            if early {
                results.extend(state.early_updates());
            }
            if let Some(cp) = state.checkpoint() {
                checkpoints.push((*p, cp));
            }
            stale += std::mem::take(&mut state.stale);
        }
        for w in &results {
            self.emit(w, out)?;
            self.metrics
                .emitted
                .with_label_values(&[if w.is_final { "final" } else { "early" }])
                .inc();
        }
        for (p, cp) in checkpoints {
            out.changelog(&self.changelog, p, CHECKPOINT_KEY, cp.encode());
        }
        // Each repartition partition writes to every kpi.windows partition, so the newest window
        // in one of them says nothing about the others' progress: after its results, each
        // partition writes how far it has emitted (every final window starting before it).
        for p in &parts {
            let Some(state) = self.states.get(p) else {
                continue;
            };
            let done = state.emitted_before();
            let sent = self.marks_sent.entry(*p).or_insert(i64::MIN);
            if done != i64::MIN && done > *sent {
                out.send_watermark(&self.out_topic, &self.input, *p, &self.stream, done);
                *sent = done;
            }
        }
        for (p, end) in ends {
            tracing::info!(partition = p, end, "end of input: forwarded");
            out.forward_end_of(&self.out_topic, &self.input, p, end);
        }
        if stale > 0 {
            self.metrics.stale.with_label_values(&[STAGE]).inc_by(stale);
            tracing::error!(stale, "partials for final windows (a bug): not counted");
        }
        if self.last_gauges.elapsed() >= Duration::from_secs(2) {
            self.last_gauges = Instant::now();
            let m = StageMetrics::get();
            let wm = self
                .states
                .values()
                .map(MergeState::watermark)
                .min()
                .unwrap_or(i64::MIN);
            m.watermark_lag
                .with_label_values(&[STAGE])
                .set(lag_seconds(wm));
            m.open_windows.with_label_values(&[STAGE]).set(
                self.states
                    .values()
                    .map(MergeState::open_windows)
                    .sum::<usize>() as i64,
            );
        }
        Ok(())
    }

    fn commit(&mut self) {
        if !self.pending_kpi.is_empty() {
            for w in std::mem::take(&mut self.pending_kpi) {
                self.kpi.observe(&w);
            }
            self.kpi.flush();
        }
    }

    async fn on_end_of_input(
        &mut self,
        input: &Input<'_>,
        end: i64,
        _out: &mut Output,
    ) -> Result<(), ProcessError> {
        self.restore_if_needed().await?;
        self.pending_ends.push((input.partition, end));
        Ok(())
    }

    fn rollback(&mut self) {
        self.pending_kpi.clear();
        self.pending_ends.clear();
        self.marks_sent.clear();
        // Changes since the last commit are not separable: rebuild from the changelog (which
        // holds exactly the committed state) before the next record.
        self.needs_restore = true;
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cartstream_runtime::exit_code(run(cli).await)
}

/// Creates the internal topics (as many partitions as the input) if missing.
async fn ensure_internal(
    kafka: &KafkaArgs,
    input: &str,
    repartition: &str,
    changelogs: &[&str],
) -> anyhow::Result<i32> {
    let client = admin::admin_client(&kafka.admin()?)?;
    let partitions = admin::input_partitions(&client, input)?;
    let replication = admin::internal_replication(&client)?;
    let mut specs = vec![TopicSpec {
        name: repartition.to_string(),
        partitions,
        replication,
        configs: vec![
            ("cleanup.policy", "delete".to_string()),
            ("retention.ms", (7 * 24 * 3_600_000i64).to_string()),
        ],
    }];
    for c in changelogs {
        specs.push(TopicSpec {
            name: (*c).to_string(),
            partitions,
            replication,
            configs: vec![
                ("cleanup.policy", "compact".to_string()),
                ("min.cleanable.dirty.ratio", "0.1".to_string()),
                ("segment.ms", (3_600_000).to_string()),
            ],
        });
    }
    admin::ensure_topics(&client, &specs, Duration::from_secs(30)).await?;
    if let Some(r) = admin::partition_counts(&client, Duration::from_secs(30))?.get(repartition) {
        anyhow::ensure!(
            *r == partitions,
            "{repartition} has {r} partitions, {input} {partitions}: recreate it"
        );
    }
    Ok(partitions)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = &cli.common;
    let spec = WindowSpec::hopping(cli.window_size, cli.window_slide.unwrap_or(cli.window_size))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(cli.grace >= 0, "--grace must not be negative");
    anyhow::ensure!(
        cli.max_out_of_order >= 0,
        "--max-out-of-order must not be negative"
    );
    anyhow::ensure!(cli.idle_timeout > 0, "--idle-timeout must be positive");
    let cfg = WinConfig {
        spec,
        grace_ms: cli.grace,
        out_of_order_ms: cli.max_out_of_order,
    };
    let service = c.service.init("cartstream-windower").await?;
    let registry: Arc<Registry> = c.registry.connect()?;
    let names = &c.names;
    let metrics = Arc::new(Metrics::register()?);

    let merge_group = c.group(STAGE);
    let pre_group = match &c.stream.group {
        Some(g) => format!("{g}-pre"),
        None => c.group(STAGE_PRE),
    };
    let input = names.name(Topic::Enriched);
    let repartition = format!("{pre_group}.repartition");
    let pre_changelog = format!("{pre_group}.changelog");
    let merge_changelog = format!("{merge_group}.changelog");
    let k = c.kafka.clone();
    tokio::task::spawn_blocking(move || k.check(Duration::from_secs(30))).await??;
    let partitions = ensure_internal(
        &c.kafka,
        &input,
        &repartition,
        &[&pre_changelog, &merge_changelog],
    )
    .await?;
    tracing::info!(
        size_ms = spec.size_ms,
        slide_ms = spec.slide_ms,
        grace_ms = cfg.grace_ms,
        out_of_order_ms = cfg.out_of_order_ms,
        partitions,
        %repartition,
        "windows"
    );

    let remote: Remote = Arc::default();
    follow_markers(
        &c.kafka,
        &pre_group,
        &repartition,
        remote.clone(),
        service.shutdown.clone(),
    )?;
    let pre = Pre {
        decoder: Decoder::new(registry.clone()),
        late_encoder: Encoder::register(&registry, &names.subject(Topic::Late)).await?,
        stage: PreStage::new(cfg),
        late_topic: names.name(Topic::Late),
        repartition: repartition.clone(),
        repartition_partitions: partitions,
        changelog: pre_changelog,
        last_seen: HashMap::new(),
        idle_timeout: Duration::from_millis(cli.idle_timeout as u64),
        input_topic: input.clone(),
        idle_now: HashSet::new(),
        ended: HashSet::new(),
        remote: remote.clone(),
        last_heartbeat: Instant::now(),
        kafka: c.kafka.clone(),
        group: pre_group.clone(),
        metrics: metrics.clone(),
    };
    let merge = Merge {
        cfg,
        upstream: usize::try_from(partitions)?,
        states: HashMap::new(),
        changelog: merge_changelog,
        input: repartition.clone(),
        out_topic: names.name(Topic::KpiWindows),
        encoder: Encoder::register(&registry, &names.subject(Topic::KpiWindows)).await?,
        kafka: c.kafka.clone(),
        group: merge_group.clone(),
        needs_restore: false,
        early_every: cli
            .early_updates
            .map(|ms| Duration::from_millis(ms.max(0) as u64)),
        last_early: Instant::now(),
        last_gauges: Instant::now(),
        metrics,
        kpi: KpiMetrics::register(
            prometheus::default_registry(),
            cli.kpi_metrics_categories,
            cli.kpi_metrics_top_products,
        )?,
        pending_kpi: Vec::new(),
        pending_ends: Vec::new(),
        marks_sent: HashMap::new(),
        stream: win_stage::window_stream(cfg.spec.size_ms, cfg.spec.slide_ms),
    };
    let dlq = names.name(Topic::DeadLetters);
    let dlq_subject = names.subject(Topic::DeadLetters);
    let pre_inputs = [input];
    let merge_inputs = [repartition];
    let pre_args = LoopArgs {
        group: Some(pre_group.clone()),
        ..c.stream.clone()
    };
    let merge_args = LoopArgs {
        group: Some(merge_group.clone()),
        ..c.stream.clone()
    };
    // Stage 1 runs on a thread and runtime of its own: the loop blocks its thread while it commits
    // or serves a rebalance, and two loops sharing one task could stall each other's consumer
    // group protocol.
    let stage1 = {
        let kafka = c.kafka.clone();
        let registry = registry.clone();
        let shutdown = service.shutdown.clone();
        let health = service.health.clone();
        let (pre_group, dlq, dlq_subject) = (pre_group.clone(), dlq.clone(), dlq_subject.clone());
        std::thread::Builder::new()
            .name("windower-pre".into())
            .spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("windower-pre-rt")
                    .enable_all()
                    .build()?;
                let r = rt.block_on(cartstream_stream::run(
                    Topology {
                        stage: STAGE_PRE,
                        group: &pre_group,
                        inputs: &pre_inputs,
                        dead_letter_topic: &dlq,
                        dead_letter_subject: &dlq_subject,
                    },
                    &pre_args,
                    &kafka,
                    &registry,
                    pre,
                    &shutdown,
                    &health,
                ));
                if r.is_err() {
                    shutdown.trigger();
                }
                r
            })?
    };
    let stage2 = cartstream_stream::run(
        Topology {
            stage: STAGE,
            group: &merge_group,
            inputs: &merge_inputs,
            dead_letter_topic: &dlq,
            dead_letter_subject: &dlq_subject,
        },
        &merge_args,
        &c.kafka,
        &registry,
        merge,
        &service.shutdown,
        &service.health,
    )
    .await;
    // Both loops run until shutdown; if one fails, stop the other too.
    if stage2.is_err() {
        service.shutdown.trigger();
    }
    let stage1 = tokio::task::spawn_blocking(move || stage1.join())
        .await?
        .map_err(|_| anyhow::anyhow!("stage windower-pre panicked"))?;
    stage1.context("stage windower-pre")?;
    stage2.context("stage windower")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_ms("1m"), Ok(60_000));
        assert_eq!(parse_ms("500ms"), Ok(500));
        assert_eq!(parse_ms("30s"), Ok(30_000));
        assert_eq!(parse_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_ms("250"), Ok(250));
        assert!(parse_ms("1d").is_err());
        assert!(parse_ms("m").is_err());
    }

    #[test]
    fn window_keys_name_the_window() {
        assert_eq!(
            window_key(Dimension::Product, "42", 60_000, 60_000, "USD"),
            "product/42/60000/60000/USD"
        );
    }
}
