//! `cartstream-detector`: trend, suspicious-user, price-anomaly and data-quality alerts, exactly
//! once.
//!
//! Inputs and rules (`cartstream_processors::detect`):
//! - `kpi.windows` (the windower's final windows, one record per dimension value, window and
//!   currency, keyed by all of these, so one subject's windows are spread over partitions): the
//!   final tumbling product and category windows of `--trend-window` are forwarded, in the same
//!   transaction, to the internal topic `<group>.by-subject` keyed by `<dimension>/<value>`.
//! - `<group>.by-subject`: the currencies of a window are summed, and the window is judged once
//!   the partition's clock is `--trend-lag-windows` past it: its purchases against the subject's
//!   own last `--trend-history` windows.
//! - `purchases.enriched` (keyed by `user_session`): each purchase is compared with its catalog
//!   price (`--price-tolerance`, events in `--catalog-currency` only: the enriched event does not
//!   carry the catalog's currency), and forwarded, in the same transaction, to the internal
//!   repartition topic `<group>.by-user` keyed by `user_id`, so that all purchases of one user meet
//!   on one partition whatever their session.
//! - `<group>.by-user`: purchases per user in event-time tumbling windows of `--user-window`;
//!   more than `--user-max-purchases` in one window raises an alert once the window is final
//!   (watermark past its end + `--user-grace`). A purchase later than that is dead-lettered as
//!   `late_event`.
//!
//! **Watermarks of the repartition topics.** Forwarded records interleave in whatever order this
//! process consumed its input partitions, so the newest record seen is no watermark. After every
//! batch each owned input partition's watermark (enriched: highest event time; `kpi.windows`:
//! how far the windower has written it, below) is broadcast as a marker to every partition of
//! the repartition topic, behind the records forwarded from it; a repartition partition's watermark (clock) is the
//! lowest mark over all input partitions (`detect::SourceMarks`). An input partition without
//! records for `--idle-timeout` adopts the lowest watermark of this instance's active ones (the
//! highest of all when every one is idle), so a silent partition does not hold everything back.
//!
//! **How far a `kpi.windows` partition is complete.** Every merge partition of the windower
//! writes to every `kpi.windows` partition, and they progress unevenly (a fast replay runs one
//! ahead of another), so the newest window seen in a partition is no watermark: a slower merge
//! partition may still write older windows to it, which would then be judged too late and lost
//! from the baselines (two replays of one file would disagree). With `--trend-clock marks` (the
//! default) the partition's watermark is the lowest of the windower's watermark records
//! (`cartstream_kafka::control`, stream `window/<trend-window>/<trend-window>`) over all its
//! merge partitions, once each has sent one; window records do not move it.
//! `--trend-clock windows` keeps the newest final window start, for a `kpi.windows` written by
//! something that sends no watermark records. The combined marks are not persisted: after a
//! restart a partition waits for the next record of every merge partition (each sends one
//! whenever it closes windows).
//!
//! - **Quality gates** (`cartstream_processors::quality`): every enriched event and every dead
//!   letter of the cleaner (`purchases.dlq`, `stage = cleaner`) is counted into its event-time
//!   window of `--gate-window` (a dead letter's time: the `event_time` of its payload when that
//!   decodes and parses, else the highest time assigned so far on its dead-letter partition);
//!   each batch's partial counts go to partition 0 of `<group>.by-user` (key `~quality`), behind
//!   them the gate's own markers of every enriched and dead-letter partition (key
//!   `~quality-marker`). There the window is final once the lowest mark is past its end +
//!   `--gate-grace` and is judged once: unknown rate per field (`--gate-unknown`), reject rate per
//!   reason (`--gate-reject-rate`), volume against its last `--gate-history` windows
//!   (`--gate-volume-low`, `--gate-volume-high`); each breach is a `data_quality` alert, and the
//!   first window passing every gate after a breach raises one of severity `info`
//!   (`data_quality/gate/all/<start>`). An idle dead-letter partition (usually: there are few
//!   rejects) adopts the lowest mark of this instance's enriched partitions (their end of input
//!   included), so it never holds the gate back: its rejects were written by the cleaner before the
//!   enriched events that follow them.
//!
//! Alerts go to `alerts.raised` (key: the subject id) with deterministic ids (type, subject,
//! window), so a replay raises the same ids.
//!
//! **State.** Trend baselines, windows waiting to be judged, and the open per-user windows (with
//! the clocks and watermarks) are written to
//! the changelog `<group>.changelog` in the transaction of the batch that changed them
//! (partition = the repartition partition, compacted, tombstones when a window closes) and rebuilt
//! from it on assignment and after an aborted batch. A restart therefore resumes with the same
//! baselines; nothing is re-read from `kpi.windows`.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cartstream_events::types::{
    Alert, AlertType, DeadLetter, EnrichedEvent, EventType, KpiWindow, RawEvent,
};
use cartstream_events::{Decoder, Encoder, Registry};
use cartstream_kafka::admin::{self, TopicSpec};
use cartstream_kafka::control::EndMarks;
use cartstream_kafka::{read, KafkaArgs, Topic};
use cartstream_processors::detect::{
    decode_marker, encode_marker, price_anomaly, PriceCheck, PriceConfig, SubjectWindow,
    TrendConfig, TrendStage, UserBursts, UserConfig, MARKER_KEY,
};
use cartstream_processors::quality::{
    decode_partial, encode_partial, Counts, GateConfig, Judged, QualityGate, FIELDS, PARTIAL_KEY,
    QUALITY_MARKER_KEY,
};
use cartstream_processors::session::{idle_target, parse_duration_ms};
use cartstream_stream::{
    EndOfInput, Input, Output, ProcessError, Processor, ProcessorArgs, Progress, StageMetrics,
};
use clap::Parser;
use prometheus::{
    register_gauge_vec, register_int_counter_vec, register_int_gauge_vec, GaugeVec, IntCounterVec,
    IntGaugeVec,
};
use rdkafka::Message;
use std::collections::BTreeMap;

const STAGE: &str = "detector";

#[derive(Parser)]
#[command(
    name = "cartstream-detector",
    version,
    about = "Raise trend, suspicious-user, price-anomaly and data-quality alerts, exactly once"
)]
struct Cli {
    #[command(flatten)]
    common: ProcessorArgs,
    /// Size of the tumbling kpi.windows windows the trend rule watches.
    #[arg(long, env = "TREND_WINDOW", default_value = "1m", value_parser = parse_duration_ms)]
    trend_window: i64,
    /// Windows of history per product/category (the baseline).
    #[arg(long, env = "TREND_HISTORY", default_value_t = 30)]
    trend_history: usize,
    /// Windows of history a key needs before it can alert.
    #[arg(long, env = "TREND_MIN_HISTORY", default_value_t = 10)]
    trend_min_history: usize,
    /// Standard deviations above the baseline mean (the spread is at least sqrt(mean) and 1).
    #[arg(long, env = "TREND_K", default_value_t = 4.0)]
    trend_k: f64,
    /// Fewest purchases in a window for a trend alert.
    #[arg(long, env = "TREND_MIN_VOLUME", default_value_t = 10)]
    trend_min_volume: i64,
    /// Least ratio of the window's purchases to the baseline mean.
    #[arg(long, env = "TREND_MIN_RATIO", default_value_t = 3.0)]
    trend_min_ratio: f64,
    /// Windows a by-subject partition's clock (newest window start seen) must be past a window
    /// before it is judged: time for its records from other kpi.windows partitions (one per
    /// currency) to arrive.
    #[arg(long, env = "TREND_LAG_WINDOWS", default_value_t = 2)]
    trend_lag_windows: i64,
    /// What tells how far a kpi.windows partition is complete: `marks`, the windower's
    /// watermark records (exact at any speed), or `windows`, the newest final window start seen
    /// (for a kpi.windows written by something that sends no watermark records; a window of a
    /// writer that is behind may then be judged too late).
    #[arg(long, env = "TREND_CLOCK", value_enum, default_value_t = TrendClock::Marks)]
    trend_clock: TrendClock,
    /// Event-time window of the suspicious-user rule.
    #[arg(long, env = "USER_WINDOW", default_value = "1m", value_parser = parse_duration_ms)]
    user_window: i64,
    /// More purchases than this by one user in one window raise an alert.
    #[arg(long, env = "USER_MAX_PURCHASES", default_value_t = 10)]
    user_max_purchases: u32,
    /// How late a purchase may reach the per-user windows.
    #[arg(long, env = "USER_GRACE", default_value = "2m", value_parser = parse_duration_ms)]
    user_grace: i64,
    /// How long an input partition (enriched, kpi.windows) must be caught up (no unread records)
    /// before it adopts
    /// the lowest watermark of the instance's active ones (the highest of all when every one is
    /// idle) for the markers it sends to the repartition topics.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration_ms)]
    idle_timeout: i64,
    /// Largest normal relative distance between a purchase's price and the catalog price.
    #[arg(long, env = "PRICE_TOLERANCE", default_value_t = 0.5)]
    price_tolerance: f64,
    /// Currency of catalog prices; purchases in other currencies are not price-checked.
    #[arg(long, env = "CATALOG_CURRENCY", default_value = "USD")]
    catalog_currency: String,
    /// Event-time window of the quality gates.
    #[arg(long, env = "GATE_WINDOW", default_value = "1m", value_parser = parse_duration_ms)]
    gate_window: i64,
    /// How late an event or dead letter may reach its quality window.
    #[arg(long, env = "GATE_GRACE", default_value = "2m", value_parser = parse_duration_ms)]
    gate_grace: i64,
    /// Largest normal unknown rate per enriched field, FIELD=RATE,... (fields: brand, category,
    /// product, user, user_country, user_device, user_segment; a field not named is not gated).
    #[arg(
        long,
        env = "GATE_UNKNOWN",
        default_value = "brand=0.3,category=0.3,product=0.1,user=0.1",
        value_parser = parse_gate_unknown
    )]
    gate_unknown: [f64; FIELDS.len()],
    /// Largest normal share of a window's records the cleaner rejects for any one reason (0: off).
    #[arg(long, env = "GATE_REJECT_RATE", default_value_t = 0.05)]
    gate_reject_rate: f64,
    /// A window's records below this fraction of the mean of its recent windows breach the
    /// volume gate (0: off).
    #[arg(long, env = "GATE_VOLUME_LOW", default_value_t = 0.2)]
    gate_volume_low: f64,
    /// A window's records above this multiple of the recent mean breach the volume gate (0: off).
    #[arg(long, env = "GATE_VOLUME_HIGH", default_value_t = 0.0)]
    gate_volume_high: f64,
    /// Windows of history of the volume gate.
    #[arg(long, env = "GATE_HISTORY", default_value_t = 30)]
    gate_history: usize,
    /// Windows of history before the volume gate judges.
    #[arg(long, env = "GATE_MIN_HISTORY", default_value_t = 10)]
    gate_min_history: usize,
    /// Fewest records in a window (or in the recent mean, for the volume gate) for the gates to
    /// judge it.
    #[arg(long, env = "GATE_MIN_EVENTS", default_value_t = 50)]
    gate_min_events: u64,
}

fn parse_gate_unknown(s: &str) -> Result<[f64; FIELDS.len()], String> {
    GateConfig::parse_unknown(s)
}

struct Metrics {
    alerts: IntCounterVec,
    price_checks: IntCounterVec,
    baselines: IntGaugeVec,
    quality_rate: GaugeVec,
    quality_records: IntGaugeVec,
    quality_baseline: prometheus::Gauge,
    quality_window: prometheus::IntGauge,
    quality_breaches: IntCounterVec,
    quality_windows: prometheus::IntCounter,
}

impl Metrics {
    fn register() -> anyhow::Result<Self> {
        Ok(Metrics {
            alerts: register_int_counter_vec!(
                "cartstream_detector_alerts_total",
                "Alerts raised, by type",
                &["alert_type"]
            )?,
            price_checks: register_int_counter_vec!(
                "cartstream_detector_price_checks_total",
                "Purchases with a catalog price checked, by result (normal, anomaly, other_currency)",
                &["result"]
            )?,
            baselines: register_int_gauge_vec!(
                "cartstream_detector_baselines",
                "Products and categories with a trend baseline in memory",
                &["stage"]
            )?,
            quality_rate: register_gauge_vec!(
                "cartstream_quality_rate",
                "Rates of the latest judged quality window: unknown share per enriched field (gate=field), share rejected by the cleaner per reason (gate=reject)",
                &["gate", "subject"]
            )?,
            quality_records: register_int_gauge_vec!(
                "cartstream_quality_window_records",
                "Records of the latest judged quality window, by kind (events, rejects)",
                &["kind"]
            )?,
            quality_baseline: prometheus::register_gauge!(
                "cartstream_quality_volume_baseline",
                "Mean records of the windows before the latest judged one (the volume gate's baseline)"
            )?,
            quality_window: prometheus::register_int_gauge!(
                "cartstream_quality_window_start_seconds",
                "Event-time start of the latest judged quality window"
            )?,
            quality_breaches: register_int_counter_vec!(
                "cartstream_quality_breaches_total",
                "Quality-gate breaches (each one a data_quality alert), by gate and subject",
                &["gate", "subject"]
            )?,
            quality_windows: prometheus::register_int_counter!(
                "cartstream_quality_windows_total",
                "Quality windows judged"
            )?,
        })
    }
}

fn type_label(t: AlertType) -> &'static str {
    match t {
        AlertType::Trend => "trend",
        AlertType::SuspiciousUser => "suspicious_user",
        AlertType::PriceAnomaly => "price_anomaly",
        AlertType::DataQuality => "data_quality",
    }
}

/// An input partition whose watermark is broadcast to a repartition topic ([`SourceMarks`]).
struct Source {
    watermark: i64,
    sent: i64,
}

impl Source {
    fn new() -> Self {
        Source {
            watermark: i64::MIN,
            sent: i64::MIN,
        }
    }

    fn saw(&mut self, t: i64) {
        self.watermark = self.watermark.max(t);
    }
}

/// Applies the idle rule to `sources` and broadcasts the changed watermarks to every partition of
/// `topic`.
///
/// Idle means caught up (`cartstream_stream::idle`): `idle` holds the partitions with nothing
/// left to read for the idle timeout. Partitions at their end of input (watermark at the top)
/// neither hold the others back nor are followed.
fn broadcast_marks(
    sources: &mut HashMap<i32, Source>,
    idle: &HashSet<i32>,
    topic: &str,
    partitions: i32,
    out: &mut Output,
) {
    let target = idle_target(
        sources
            .iter()
            .filter(|(_, s)| s.watermark != i64::MAX)
            .map(|(p, s)| (s.watermark, idle.contains(p))),
    );
    for (p, s) in sources.iter_mut() {
        if let (Some(t), true) = (target, idle.contains(p) && s.watermark != i64::MAX) {
            s.watermark = s.watermark.max(t);
        }
        if s.watermark > s.sent {
            for r in 0..partitions {
                out.send_to(topic, r, Some(MARKER_KEY), encode_marker(*p, s.watermark));
            }
            s.sent = s.watermark;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TrendClock {
    Marks,
    Windows,
}

/// Counts of the current batch, added to the metrics when it commits.
#[derive(Default)]
struct Pending {
    alerts: HashMap<&'static str, u64>,
    price: HashMap<&'static str, u64>,
    late: u64,
    /// Quality windows judged in the batch, oldest first.
    judged: Vec<Judged>,
}

struct Detector {
    windows_dec: Decoder<KpiWindow>,
    events_dec: Decoder<EnrichedEvent>,
    alert_enc: Encoder<Alert>,
    kpi_topic: String,
    by_subject: String,
    trend_lag: i64,
    enriched_topic: String,
    by_user: String,
    alerts_topic: String,
    changelog: String,
    trend_cfg: TrendConfig,
    user_cfg: UserConfig,
    price_cfg: PriceConfig,
    idle_timeout: Duration,
    /// Owned enriched and kpi.windows partitions idle as of the last sample.
    idle_events: HashSet<i32>,
    idle_kpi: HashSet<i32>,
    /// Repartition partitions whose end of input arrived in this batch: (topic, partition, end),
    /// forwarded to the alerts after what they close.
    pending_ends: Vec<(String, i32, i64)>,
    trends: HashMap<i32, TrendStage>,
    users: HashMap<i32, UserBursts>,
    /// Owned enriched partitions (their event-time watermarks go to the by-user partitions).
    event_sources: HashMap<i32, Source>,
    /// Owned kpi.windows partitions (the newest start of the windows complete in them goes to
    /// by-subject).
    kpi_sources: HashMap<i32, Source>,
    trend_clock: TrendClock,
    /// The windower's watermark records on the kpi.windows partitions, combined over its merge
    /// partitions (`--trend-clock marks`).
    kpi_marks: EndMarks,
    /// The stream those records name: final windows of the trend rule's spec.
    kpi_stream: String,
    enriched_partitions: i32,
    kpi_partitions: i32,
    owned: HashSet<(String, i32)>,
    restore_all: bool,
    kafka: KafkaArgs,
    group: String,
    metrics: Metrics,
    pending: Pending,
    dlq_topic: String,
    dlq_partitions: i32,
    letters_dec: Decoder<DeadLetter>,
    raw_dec: Decoder<RawEvent>,
    gate_cfg: GateConfig,
    /// The gate (on the owner of by-user partition 0).
    gate: Option<QualityGate>,
    /// This batch's partial counts by window start.
    partials: BTreeMap<i64, Counts>,
    /// The gate's view of the owned enriched (index p) and dead-letter (index enriched + q)
    /// partitions.
    quality_sources: HashMap<i32, Source>,
    idle_dlq: HashSet<i32>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Detector {
    fn new_trend_stage(&self) -> TrendStage {
        TrendStage::with_sources(
            self.trend_cfg,
            self.trend_lag,
            self.kpi_partitions.max(0) as usize,
        )
    }

    fn new_gate(&self) -> QualityGate {
        QualityGate::new(
            self.gate_cfg.clone(),
            (self.enriched_partitions + self.dlq_partitions).max(0) as usize,
        )
    }

    /// Counts one cleaner dead letter into its quality window (see the module doc for its time).
    async fn count_reject(
        &mut self,
        input: &Input<'_>,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        let payload = input.payload.unwrap_or_default();
        let d = match self.letters_dec.decode(payload).await {
            Ok(d) => d,
            Err(e) if e.is_transient() => return Err(ProcessError::Transient(e.into())),
            Err(e) => {
                out.dead_letter(input, STAGE, e.code(), e.to_string(), e.schema_id());
                return Ok(());
            }
        };
        if d.stage != "cleaner" {
            return Ok(());
        }
        let mut time = None;
        if d.error_code != "future_event_time" && d.error_code != "invalid_event_time" {
            if let Some(p) = d.payload.as_deref() {
                match self.raw_dec.decode(p).await {
                    Ok(raw) => {
                        time = cartstream_processors::clean::parse_event_time(&raw.event_time)
                    }
                    Err(e) if e.is_transient() => return Err(ProcessError::Transient(e.into())),
                    Err(_) => {}
                }
            }
        }
        let source = self
            .quality_sources
            .entry(self.enriched_partitions + input.partition)
            .or_insert_with(Source::new);
        let t = match time {
            Some(t) => t,
            None if source.watermark != i64::MIN && source.watermark != i64::MAX => {
                source.watermark
            }
            None => d.source_timestamp.unwrap_or(d.failed_at),
        };
        source.saw(t);
        self.partials
            .entry(self.gate_cfg.window_of(t))
            .or_default()
            .add_reject(&d.error_code);
        Ok(())
    }

    /// Sends this batch's partial counts, then the gate's markers, to by-user partition 0.
    fn send_quality(&mut self, out: &mut Output) {
        for (w, c) in std::mem::take(&mut self.partials) {
            out.send_to(&self.by_user, 0, Some(PARTIAL_KEY), encode_partial(w, &c));
        }
        let n = self.enriched_partitions;
        let enriched: Vec<(i64, bool)> = self
            .quality_sources
            .iter()
            .filter(|(p, s)| **p < n && s.watermark != i64::MAX)
            .map(|(p, s)| (s.watermark, self.idle_events.contains(p)))
            .collect();
        let enriched_target = idle_target(enriched);
        // Idle dead-letter partitions follow the lowest enriched one (at its end included).
        let lowest_enriched = self
            .quality_sources
            .iter()
            .filter(|(p, _)| **p < n)
            .map(|(_, s)| s.watermark)
            .min()
            .filter(|w| *w != i64::MIN);
        let dlq_target = lowest_enriched.or_else(|| {
            idle_target(
                self.quality_sources
                    .iter()
                    .filter(|(p, _)| **p >= n)
                    .map(|(p, s)| (s.watermark, self.idle_dlq.contains(&(*p - n)))),
            )
        });
        for (p, s) in self.quality_sources.iter_mut() {
            let (idle, target) = if *p < n {
                (self.idle_events.contains(p), enriched_target)
            } else {
                (self.idle_dlq.contains(&(*p - n)), dlq_target)
            };
            if let (true, Some(t)) = (idle && s.watermark != i64::MAX, target) {
                s.watermark = s.watermark.max(t);
            }
            if s.watermark > s.sent {
                out.send_to(
                    &self.by_user,
                    0,
                    Some(QUALITY_MARKER_KEY),
                    encode_marker(*p, s.watermark),
                );
                s.sent = s.watermark;
            }
        }
    }

    fn new_user_bursts(&self) -> UserBursts {
        UserBursts::with_sources(self.user_cfg, self.enriched_partitions.max(0) as usize)
    }

    fn alert(&mut self, alert: &Alert, out: &mut Output) -> Result<(), ProcessError> {
        let bytes = self
            .alert_enc
            .encode(alert)
            .map_err(|e| ProcessError::Fatal(e.into()))?;
        out.send(&self.alerts_topic, Some(alert.subject_id.as_bytes()), bytes);
        *self
            .pending
            .alerts
            .entry(type_label(alert.alert_type))
            .or_default() += 1;
        Ok(())
    }

    /// Rebuilds the state of `parts` (input topic, partition) from the changelog.
    async fn restore(&mut self, parts: &[(String, i32)]) -> anyhow::Result<()> {
        let ids: Vec<i32> = parts
            .iter()
            .map(|(_, p)| *p)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for (t, p) in parts {
            if *t == self.by_subject {
                self.trends.insert(*p, self.new_trend_stage());
            } else if *t == self.by_user {
                self.users.insert(*p, self.new_user_bursts());
                if *p == 0 {
                    self.gate = Some(self.new_gate());
                }
            } else if *t == self.enriched_topic {
                self.event_sources.insert(*p, Source::new());
                self.quality_sources.insert(*p, Source::new());
            } else if *t == self.kpi_topic {
                self.kpi_sources.insert(*p, Source::new());
            } else if *t == self.dlq_topic {
                self.quality_sources
                    .insert(self.enriched_partitions + *p, Source::new());
            }
        }
        let mut config = self.kafka.consumer(&format!("{}-restore", self.group))?;
        config.set("enable.partition.eof", "false");
        let topic = self.changelog.clone();
        let records = tokio::task::spawn_blocking(move || {
            read::read_partitions_to_end(&config, &topic, Some(&ids), Duration::from_secs(300))
        })
        .await??;
        let wanted: HashSet<&(String, i32)> = parts.iter().collect();
        let n = records.len();
        for m in records {
            let Some(key) = m.key() else { continue };
            let value = m.payload().unwrap_or_default();
            let p = m.partition();
            let res = if QualityGate::owns_key(key) {
                match self.gate.as_mut() {
                    Some(g) if p == 0 && wanted.contains(&(self.by_user.clone(), 0)) => {
                        g.restore(key, value).map(|()| true)
                    }
                    _ => Ok(true),
                }
            } else if key.first() == Some(&b'u') || key == b"W" || key.first() == Some(&b'M') {
                match self.users.get_mut(&p) {
                    Some(u) if wanted.contains(&(self.by_user.clone(), p)) => u.restore(key, value),
                    _ => Ok(true),
                }
            } else {
                match self.trends.get_mut(&p) {
                    Some(t) if wanted.contains(&(self.by_subject.clone(), p)) => {
                        t.restore(key, value)
                    }
                    _ => Ok(true),
                }
            };
            match res {
                Ok(true) => {}
                Ok(false) => tracing::warn!(partition = p, "unknown changelog record skipped"),
                Err(e) => anyhow::bail!(
                    "bad changelog record at {}[{p}]@{}: {e}",
                    self.changelog,
                    m.offset()
                ),
            }
        }
        for (t, p) in parts {
            if *t == self.by_subject {
                if let Some(x) = self.trends.get_mut(p) {
                    x.clear_changes();
                }
            } else if *t == self.by_user {
                if let Some(x) = self.users.get_mut(p) {
                    x.clear_changes();
                }
                if *p == 0 {
                    if let Some(g) = self.gate.as_mut() {
                        g.clear_changes();
                    }
                }
            }
        }
        tracing::info!(partitions = ?parts, records = n, "detector state restored from {}", self.changelog);
        Ok(())
    }

    async fn restore_if_rolled_back(&mut self) -> Result<(), ProcessError> {
        if self.restore_all {
            let parts: Vec<(String, i32)> = self.owned.iter().cloned().collect();
            self.restore(&parts)
                .await
                .map_err(ProcessError::Transient)?;
            self.restore_all = false;
        }
        Ok(())
    }
}

impl Processor for Detector {
    async fn on_assigned(&mut self, partitions: &[(String, i32)]) -> anyhow::Result<()> {
        self.owned.extend(partitions.iter().cloned());
        self.restore(partitions).await
    }

    fn on_revoked(&mut self, partitions: &[(String, i32)]) {
        for (t, p) in partitions {
            self.owned.remove(&(t.clone(), *p));
            if *t == self.by_subject {
                self.trends.remove(p);
            } else if *t == self.by_user {
                self.users.remove(p);
                if *p == 0 {
                    self.gate = None;
                }
            } else if *t == self.enriched_topic {
                self.event_sources.remove(p);
                self.quality_sources.remove(p);
            } else if *t == self.dlq_topic {
                self.quality_sources
                    .remove(&(self.enriched_partitions + *p));
            } else if *t == self.kpi_topic {
                self.kpi_sources.remove(p);
                self.kpi_marks.forget(t, *p);
            }
        }
    }

    fn on_progress(&mut self, progress: &Progress) {
        let now = Instant::now();
        self.idle_events = progress.idle_partitions(
            &self.enriched_topic,
            self.event_sources.keys().copied(),
            self.idle_timeout,
            now,
        );
        self.idle_kpi = progress.idle_partitions(
            &self.kpi_topic,
            self.kpi_sources.keys().copied(),
            self.idle_timeout,
            now,
        );
        let n = self.enriched_partitions;
        self.idle_dlq = progress.idle_partitions(
            &self.dlq_topic,
            self.quality_sources
                .keys()
                .filter(|p| **p >= n)
                .map(|p| *p - n)
                .collect::<Vec<_>>(),
            self.idle_timeout,
            now,
        );
    }

    async fn on_end_of_input(
        &mut self,
        input: &Input<'_>,
        end: i64,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        self.restore_if_rolled_back().await?;
        if input.topic == self.enriched_topic {
            // No purchase before `end` will come: every user window ending by then is final.
            let s = self
                .event_sources
                .entry(input.partition)
                .or_insert_with(Source::new);
            s.watermark = s.watermark.max(end.saturating_add(self.user_cfg.grace_ms));
            let q = self
                .quality_sources
                .entry(input.partition)
                .or_insert_with(Source::new);
            q.watermark = q.watermark.max(end.saturating_add(self.gate_cfg.grace_ms));
            out.forward_end(&self.by_user, input, end);
        } else if input.topic == self.kpi_topic {
            // No window starting before `end` will come: judge every window waiting.
            let s = self
                .kpi_sources
                .entry(input.partition)
                .or_insert_with(Source::new);
            s.watermark = s.watermark.max(end);
            out.forward_end(&self.by_subject, input, end);
        } else {
            self.pending_ends
                .push((input.topic.to_string(), input.partition, end));
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        input: &Input<'_>,
        mark: &EndOfInput,
        stream: Option<&str>,
        _out: &mut Output,
    ) -> Result<(), ProcessError> {
        if input.topic != self.kpi_topic
            || self.trend_clock != TrendClock::Marks
            || stream != Some(self.kpi_stream.as_str())
        {
            return Ok(());
        }
        if let Some(before) = self.kpi_marks.observe(input.topic, input.partition, mark) {
            // Every window of the watched spec starting before `before` is in this partition:
            // the newest complete one starts a window earlier.
            self.kpi_sources
                .entry(input.partition)
                .or_insert_with(Source::new)
                .saw(before.saturating_sub(self.trend_cfg.window_ms));
        }
        Ok(())
    }

    async fn process(&mut self, input: &Input<'_>, out: &mut Output) -> Result<(), ProcessError> {
        self.restore_if_rolled_back().await?;
        let payload = input.payload.unwrap_or_default();
        if input.topic == self.dlq_topic {
            return self.count_reject(input, out).await;
        }
        if input.topic == self.by_user
            && (input.key == Some(PARTIAL_KEY) || input.key == Some(QUALITY_MARKER_KEY))
        {
            if self.gate.is_none() {
                self.gate = Some(self.new_gate());
            }
            let Some(gate) = self.gate.as_mut() else {
                return Ok(());
            };
            if input.key == Some(QUALITY_MARKER_KEY) {
                if let Some((source, wm)) = decode_marker(payload) {
                    gate.mark(source, wm);
                }
                return Ok(());
            }
            match decode_partial(payload) {
                Ok((w, c)) => {
                    if let Err(late) = gate.add(w, &c) {
                        self.pending.late += 1;
                        tracing::warn!(
                            window = w,
                            judged_up_to = late.judged_up_to,
                            records = c.volume(),
                            "quality partial after its window was judged: not counted"
                        );
                    }
                }
                Err(e) => out.dead_letter(input, STAGE, "malformed_record", e, None),
            }
            return Ok(());
        }
        if input.topic == self.by_user {
            if !self.users.contains_key(&input.partition) {
                let fresh = self.new_user_bursts();
                self.users.insert(input.partition, fresh);
            }
            let Some(part) = self.users.get_mut(&input.partition) else {
                return Ok(());
            };
            if let Some((source, wm)) = decode_marker(payload) {
                part.mark(source, wm);
                return Ok(());
            }
            let (Ok(t), Ok(u)) = (
                payload.get(..8).unwrap_or_default().try_into(),
                payload.get(8..16).unwrap_or_default().try_into(),
            ) else {
                out.dead_letter(
                    input,
                    STAGE,
                    "malformed_record",
                    "by-user record is not 16 bytes (time, user)".into(),
                    None,
                );
                return Ok(());
            };
            let (t, user) = (i64::from_be_bytes(t), i64::from_be_bytes(u));
            let cfg = self.user_cfg;
            if let Err(late) = part.add(user, t) {
                self.pending.late += 1;
                out.dead_letter(
                    input,
                    STAGE,
                    "late_event",
                    format!(
                        "purchase of user {user} at {t} is {} ms behind the watermark {}: its {} ms window is already final (grace {} ms)",
                        late.lateness_ms,
                        part.watermark(),
                        cfg.window_ms,
                        cfg.grace_ms
                    ),
                    None,
                );
            }
            return Ok(());
        }
        if input.topic == self.kpi_topic {
            // Forward the watched windows, keyed by subject, to the by-subject partitions.
            let w = match self.windows_dec.decode(payload).await {
                Ok(w) => w,
                Err(e) if e.is_transient() => return Err(ProcessError::Transient(e.into())),
                Err(e) => {
                    out.dead_letter(input, STAGE, e.code(), e.to_string(), e.schema_id());
                    return Ok(());
                }
            };
            if w.is_final && self.trend_clock == TrendClock::Windows {
                if let Some(s) = self.kpi_sources.get_mut(&input.partition) {
                    s.saw(w.window_start);
                }
            }
            if let Some(sw) = SubjectWindow::of(&w, &self.trend_cfg) {
                out.send(&self.by_subject, Some(sw.key().as_bytes()), sw.encode());
            }
            return Ok(());
        }
        if input.topic == self.by_subject {
            if !self.trends.contains_key(&input.partition) {
                let fresh = self.new_trend_stage();
                self.trends.insert(input.partition, fresh);
            }
            let Some(stage) = self.trends.get_mut(&input.partition) else {
                return Ok(());
            };
            if let Some((source, clock)) = decode_marker(payload) {
                stage.mark(source, clock);
                return Ok(());
            }
            let sw = match SubjectWindow::decode(payload) {
                Ok(sw) => sw,
                Err(e) => {
                    out.dead_letter(input, STAGE, "malformed_record", e, None);
                    return Ok(());
                }
            };
            if let Err(late) = stage.add(&sw) {
                self.pending.late += 1;
                out.dead_letter(
                    input,
                    STAGE,
                    "late_event",
                    format!(
                        "{} window at {} arrived after the windows up to {} were judged",
                        sw.key(),
                        sw.window_start,
                        late.judged_up_to
                    ),
                    None,
                );
            }
            return Ok(());
        }
        if input.topic != self.enriched_topic {
            return Err(ProcessError::Fatal(anyhow::anyhow!(
                "record of an unexpected topic {}",
                input.topic
            )));
        }
        let e = match self.events_dec.decode(payload).await {
            Ok(e) => e,
            Err(e) if e.is_transient() => return Err(ProcessError::Transient(e.into())),
            Err(e) => {
                out.dead_letter(input, STAGE, e.code(), e.to_string(), e.schema_id());
                return Ok(());
            }
        };
        self.event_sources
            .entry(input.partition)
            .or_insert_with(Source::new)
            .saw(e.event_time);
        self.quality_sources
            .entry(input.partition)
            .or_insert_with(Source::new)
            .saw(e.event_time);
        self.partials
            .entry(self.gate_cfg.window_of(e.event_time))
            .or_default()
            .add_event(&e);
        if e.event_type != EventType::Purchase {
            return Ok(());
        }
        let result = match price_anomaly(&e, &self.price_cfg, now_ms()) {
            PriceCheck::NotApplicable => None,
            PriceCheck::OtherCurrency => Some("other_currency"),
            PriceCheck::Normal => Some("normal"),
            PriceCheck::Anomaly(a) => {
                self.alert(&a, out)?;
                Some("anomaly")
            }
        };
        if let Some(r) = result {
            *self.pending.price.entry(r).or_default() += 1;
        }
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&e.event_time.to_be_bytes());
        v.extend_from_slice(&e.user_id.to_be_bytes());
        out.send(&self.by_user, Some(e.user_id.to_string().as_bytes()), v);
        Ok(())
    }

    async fn on_tick(&mut self, out: &mut Output) -> Result<(), ProcessError> {
        self.restore_if_rolled_back().await?;
        broadcast_marks(
            &mut self.event_sources,
            &self.idle_events,
            &self.by_user,
            self.enriched_partitions,
            out,
        );
        broadcast_marks(
            &mut self.kpi_sources,
            &self.idle_kpi,
            &self.by_subject,
            self.kpi_partitions,
            out,
        );
        let detected = now_ms();
        let mut alerts = Vec::new();
        let mut changes: Vec<(i32, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut slowest = i64::MAX;
        for (p, u) in self.users.iter_mut() {
            alerts.extend(u.close(detected));
            changes.extend(u.take_changes().into_iter().map(|(k, v)| (*p, k, v)));
            if u.watermark() != i64::MIN {
                slowest = slowest.min(u.watermark());
            }
        }
        for (p, t) in self.trends.iter_mut() {
            alerts.extend(t.judge(detected));
            changes.extend(t.take_changes().into_iter().map(|(k, v)| (*p, k, v)));
        }
        self.send_quality(out);
        if let Some(g) = self.gate.as_mut() {
            for j in g.judge(detected) {
                alerts.extend(j.alerts.iter().cloned());
                self.pending.judged.push(j);
            }
            changes.extend(g.take_changes().into_iter().map(|(k, v)| (0, k, v)));
        }
        for a in &alerts {
            self.alert(a, out)?;
        }
        // Only the by-user path forwards its end to the alerts: the alerts' partitions would
        // otherwise get marks of two upstream topics under one partition numbering.
        for (t, p, end) in std::mem::take(&mut self.pending_ends) {
            tracing::info!(topic = %t, partition = p, end, "end of input: closed");
            if t == self.by_user {
                out.forward_end_of(&self.alerts_topic, &t, p, end);
            }
        }
        for (p, k, v) in changes {
            if v.is_empty() {
                out.changelog_delete(&self.changelog, p, &k);
            } else {
                out.changelog(&self.changelog, p, &k, v);
            }
        }
        if slowest != i64::MAX {
            StageMetrics::get()
                .watermark_lag
                .with_label_values(&[STAGE])
                .set((detected - slowest) as f64 / 1000.0);
        }
        let open: usize = self.users.values().map(UserBursts::open_windows).sum();
        StageMetrics::get()
            .open_windows
            .with_label_values(&[STAGE])
            .set(open as i64);
        self.metrics
            .baselines
            .with_label_values(&[STAGE])
            .set(self.trends.values().map(TrendStage::keys).sum::<usize>() as i64);
        Ok(())
    }

    fn commit(&mut self) {
        let p = std::mem::take(&mut self.pending);
        for (t, n) in p.alerts {
            self.metrics.alerts.with_label_values(&[t]).inc_by(n);
        }
        for (r, n) in p.price {
            self.metrics.price_checks.with_label_values(&[r]).inc_by(n);
        }
        StageMetrics::get()
            .late_events
            .with_label_values(&[STAGE])
            .inc_by(p.late);
        let m = &self.metrics;
        for j in &p.judged {
            m.quality_windows.inc();
            for b in j.breaches() {
                m.quality_breaches
                    .with_label_values(&[&b.subject_kind, &b.subject_id])
                    .inc();
            }
        }
        if let Some(j) = p.judged.last() {
            let c = &j.counts;
            for (i, f) in FIELDS.iter().enumerate() {
                m.quality_rate
                    .with_label_values(&["field", f])
                    .set(c.unknown_rate(i));
            }
            for r in cartstream_processors::clean::REJECTION_CODES {
                m.quality_rate
                    .with_label_values(&["reject", r])
                    .set(c.reject_rate(r));
            }
            for r in c.rejects.keys() {
                m.quality_rate
                    .with_label_values(&["reject", r])
                    .set(c.reject_rate(r));
            }
            m.quality_records
                .with_label_values(&["events"])
                .set(c.events as i64);
            m.quality_records
                .with_label_values(&["rejects"])
                .set(c.rejected() as i64);
            m.quality_baseline.set(j.baseline.unwrap_or(0.0));
            m.quality_window.set(j.window_start / 1000);
        }
    }

    fn rollback(&mut self) {
        self.pending = Pending::default();
        self.pending_ends.clear();
        self.partials.clear();
        self.restore_all = true;
        // Markers of the aborted batch were not written: send them again.
        for s in self
            .event_sources
            .values_mut()
            .chain(self.kpi_sources.values_mut())
            .chain(self.quality_sources.values_mut())
        {
            s.sent = i64::MIN;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cartstream_runtime::exit_code(run(cli).await)
}

/// Creates the repartition topic (as many partitions as the enriched topic) and the changelog
/// (as many as the largest input).
async fn ensure_topics(
    kafka: &KafkaArgs,
    kpi: &str,
    enriched: &str,
    by_user: &str,
    by_subject: &str,
    changelog: &str,
) -> anyhow::Result<(i32, i32)> {
    let client = admin::admin_client(&kafka.admin()?)?;
    let counts = admin::partition_counts(&client, Duration::from_secs(30))?;
    let count = |t: &str| {
        counts.get(t).copied().with_context(|| {
            format!("input topic {t} does not exist: run cartstream-admin bootstrap")
        })
    };
    let (kpi_n, enriched_n) = (count(kpi)?, count(enriched)?);
    let replication = admin::internal_replication(&client)?;
    let week = (7 * 24 * 3_600_000_i64).to_string();
    let specs = [
        TopicSpec {
            name: by_user.to_string(),
            partitions: enriched_n,
            replication,
            configs: vec![
                ("cleanup.policy", "delete".to_string()),
                ("retention.ms", week.clone()),
            ],
        },
        TopicSpec {
            name: by_subject.to_string(),
            partitions: kpi_n,
            replication,
            configs: vec![
                ("cleanup.policy", "delete".to_string()),
                ("retention.ms", week.clone()),
            ],
        },
        TopicSpec {
            name: changelog.to_string(),
            partitions: kpi_n.max(enriched_n),
            replication,
            configs: vec![
                ("cleanup.policy", "compact,delete".to_string()),
                ("retention.ms", week),
                ("min.cleanable.dirty.ratio", "0.1".to_string()),
                ("segment.ms", 3_600_000_i64.to_string()),
            ],
        },
    ];
    admin::ensure_topics(&client, &specs, Duration::from_secs(30)).await?;
    Ok((kpi_n, enriched_n))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    anyhow::ensure!(
        cli.trend_window > 0 && cli.user_window > 0,
        "--trend-window and --user-window must be positive"
    );
    anyhow::ensure!(
        cli.price_tolerance > 0.0,
        "--price-tolerance must be positive"
    );
    let c = &cli.common;
    let service = c.service.init("cartstream-detector").await?;
    let metrics = Metrics::register()?;
    // Every gate's series from the start (0 until a window is judged), so dashboards and rules
    // see them before the first breach.
    for f in FIELDS {
        metrics.quality_rate.with_label_values(&["field", f]);
        metrics.quality_breaches.with_label_values(&["field", f]);
    }
    for r in cartstream_processors::clean::REJECTION_CODES {
        metrics.quality_rate.with_label_values(&["reject", r]);
        metrics.quality_breaches.with_label_values(&["reject", r]);
    }
    for v in ["low", "high"] {
        metrics.quality_breaches.with_label_values(&["volume", v]);
    }
    for k in ["events", "rejects"] {
        metrics.quality_records.with_label_values(&[k]);
    }
    let registry: Arc<Registry> = c.registry.connect()?;
    let names = &c.names;
    let group = c.group(STAGE);
    let kpi_topic = names.name(Topic::KpiWindows);
    let enriched_topic = names.name(Topic::Enriched);
    // The group already carries the topic prefix.
    let by_user = format!("{group}.by-user");
    let by_subject = format!("{group}.by-subject");
    let changelog = format!("{group}.changelog");
    let k = c.kafka.clone();
    tokio::task::spawn_blocking(move || k.check(Duration::from_secs(30))).await??;
    anyhow::ensure!(
        cli.gate_window > 0 && cli.gate_grace >= 0,
        "--gate-window must be positive and --gate-grace not negative"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&cli.gate_reject_rate)
            && cli.gate_volume_low >= 0.0
            && cli.gate_volume_high >= 0.0
            && (cli.gate_volume_high == 0.0 || cli.gate_volume_high > 1.0),
        "--gate-reject-rate must be within 0..1, --gate-volume-low not negative, --gate-volume-high 0 or above 1"
    );
    let dlq_topic = names.name(Topic::DeadLetters);
    let (kpi_partitions, enriched_partitions) = ensure_topics(
        &c.kafka,
        &kpi_topic,
        &enriched_topic,
        &by_user,
        &by_subject,
        &changelog,
    )
    .await?;

    let detector = Detector {
        windows_dec: Decoder::new(registry.clone()),
        events_dec: Decoder::new(registry.clone()),
        alert_enc: Encoder::register(&registry, &names.subject(Topic::Alerts)).await?,
        kpi_topic: kpi_topic.clone(),
        by_subject: by_subject.clone(),
        trend_lag: cli.trend_lag_windows,
        enriched_topic: enriched_topic.clone(),
        by_user: by_user.clone(),
        alerts_topic: names.name(Topic::Alerts),
        changelog,
        trend_cfg: TrendConfig {
            window_ms: cli.trend_window,
            history: cli.trend_history,
            min_history: cli.trend_min_history,
            k: cli.trend_k,
            min_volume: cli.trend_min_volume,
            min_ratio: cli.trend_min_ratio,
        },
        user_cfg: UserConfig {
            window_ms: cli.user_window,
            grace_ms: cli.user_grace,
            max_purchases: cli.user_max_purchases,
        },
        price_cfg: PriceConfig {
            tolerance: cli.price_tolerance,
            catalog_currency: cli.catalog_currency.clone(),
        },
        idle_timeout: Duration::from_millis(cli.idle_timeout.max(0) as u64),
        idle_events: HashSet::new(),
        idle_kpi: HashSet::new(),
        pending_ends: Vec::new(),
        trends: HashMap::new(),
        event_sources: HashMap::new(),
        kpi_sources: HashMap::new(),
        trend_clock: cli.trend_clock,
        kpi_marks: EndMarks::default(),
        kpi_stream: cartstream_processors::win_stage::window_stream(
            cli.trend_window,
            cli.trend_window,
        ),
        enriched_partitions,
        kpi_partitions,
        users: HashMap::new(),
        owned: HashSet::new(),
        restore_all: false,
        kafka: c.kafka.clone(),
        group,
        metrics,
        pending: Pending::default(),
        dlq_partitions: {
            let client = admin::admin_client(&c.kafka.admin()?)?;
            admin::partition_counts(&client, Duration::from_secs(30))?
                .get(&dlq_topic)
                .copied()
                .with_context(|| {
                    format!(
                        "input topic {dlq_topic} does not exist: run cartstream-admin bootstrap"
                    )
                })?
        },
        dlq_topic: dlq_topic.clone(),
        letters_dec: Decoder::new(registry.clone()),
        raw_dec: Decoder::new(registry.clone()),
        gate_cfg: GateConfig {
            window_ms: cli.gate_window,
            grace_ms: cli.gate_grace,
            unknown_rate: cli.gate_unknown,
            reject_rate: cli.gate_reject_rate,
            volume_low: cli.gate_volume_low,
            volume_high: cli.gate_volume_high,
            history: cli.gate_history.max(1),
            min_history: cli.gate_min_history,
            min_events: cli.gate_min_events,
        },
        gate: None,
        partials: BTreeMap::new(),
        quality_sources: HashMap::new(),
        idle_dlq: HashSet::new(),
    };
    tracing::info!(trend = ?detector.trend_cfg, user = ?detector.user_cfg, price = ?detector.price_cfg, gates = ?detector.gate_cfg, "detecting");
    c.run(
        STAGE,
        &[kpi_topic, enriched_topic, by_user, by_subject, dlq_topic],
        &registry,
        detector,
        &service,
    )
    .await
}
