//! The running service: reads `kpi.windows` from its beginning (the history is rebuilt by
//! replay, nothing is committed), feeds closed periods to the [`Engine`], stores every trained
//! model in the registry, writes the champion's forecasts to `forecasts_by_category`, exports
//! the metrics, and answers the HTTP API.
//!
//! Threads: the engine runs on one blocking thread (a `BaseConsumer` poll loop; training is CPU
//! work and runs inline); the API, the CQL
//! writer and the metrics endpoint run on the tokio runtime. They share the newest forecasts and
//! champion through [`Shared`]; the API sends rollback and retrain commands to the engine thread.
//!
//! Event time: automatic retrains are asked of [`crate::schedule::due`] on the newest history,
//! and only once the service is caught up (every partition at its end offset, nothing read for
//! the idle timeout) or every partition declared its end of input; while it reads a backlog it
//! closes periods and keeps its live figures, but trains nothing.

use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use cartstream_events::types::KpiWindow;
use cartstream_events::Decoder;
use cartstream_kafka::KafkaArgs;
use cartstream_runtime::{Health, Shutdown};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use tokio::sync::{oneshot, watch};

use crate::features::MAX_HORIZON;
use crate::model::{Metadata, TrainConfig};
use crate::monitor::{Champion, Engine, ForecastSet, MonitorConfig};
use crate::registry::ModelRegistry;
use crate::schedule::CatchUp;
use crate::series::{Accepted, Aggregator};
use crate::telemetry as tm;

/// Training and monitoring settings (shared by `run` and `train`).
/// What closes a period of the history ([`ModelArgs::window_clock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WindowClock {
    Marks,
    Windows,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Base period in ms: history, features and forecasts are per period (3600000 = hourly;
    /// shorter periods compress the calendar, e.g. for tests).
    #[arg(long, env = "MODEL_PERIOD_MS", default_value_t = 3_600_000)]
    pub period_ms: i64,
    /// Size of the tumbling kpi.windows windows to read (must divide the period; the windower's
    /// default is 1 min); other sizes are ignored, so hopping or other windows are never counted
    /// twice.
    #[arg(long, env = "MODEL_WINDOW_SIZE_MS", default_value_t = 60_000)]
    pub window_size_ms: i64,
    /// What closes a period: the windower's watermark records on kpi.windows (`marks`: every
    /// writer of a partition has passed it; exact whatever the speed and skew of the writers),
    /// or the windows seen and the partitions' ends (`windows`: for a kpi.windows topic written
    /// without watermark records). End-of-input marks close periods in both.
    #[arg(long, env = "MODEL_WINDOW_CLOCK", value_enum, default_value_t = WindowClock::Marks)]
    pub window_clock: WindowClock,
    /// Also forecast product series (served by the API, not exported as gauges).
    #[arg(long, env = "MODEL_PRODUCTS")]
    pub products: bool,
    /// Periods forecast ahead (1-24).
    #[arg(long, env = "MODEL_HORIZON", default_value_t = 6)]
    pub horizon: usize,
    /// Periods held out at the end of the history to evaluate a model against the baselines.
    #[arg(long, env = "MODEL_HOLDOUT_PERIODS", default_value_t = 48)]
    pub holdout_periods: usize,
    /// Training origins (periods) of a fit, the newest ones.
    #[arg(long, env = "MODEL_TRAIN_WINDOW_PERIODS", default_value_t = 672)]
    pub train_window_periods: usize,
    /// Rows per fit above which origins are sampled.
    #[arg(long, env = "MODEL_MAX_ROWS", default_value_t = 60_000)]
    pub max_rows: usize,
    /// Ridge regularisation.
    #[arg(long, env = "MODEL_ALPHA", default_value_t = 1.0)]
    pub alpha: f64,
    /// Model family: ridge-profile-log (hour-of-week profile, trend, level, year position, lags;
    /// closed slots forecast as 0; fitted on log1p of the target), ridge-profile (the same on the
    /// target itself) or ridge-lags (the first model: lags and hour/day one-hots).
    #[arg(long, env = "MODEL_FAMILY", value_enum, default_value_t = crate::model::Family::RidgeProfileLog)]
    pub family: crate::model::Family,
    /// Retrain when the live sMAPE (0..2) of a target over a full live window exceeds this.
    #[arg(long, env = "MODEL_ERROR_THRESHOLD", default_value_t = 0.35)]
    pub error_threshold: f64,
    /// Retrain when a feature's PSI over a full drift window exceeds this.
    #[arg(long, env = "MODEL_PSI_THRESHOLD", default_value_t = 0.25)]
    pub psi_threshold: f64,
    /// A challenger replaces the champion only if its hold-out MAE is this fraction lower than
    /// the champion's on the same points, on every target (purchases and revenue).
    #[arg(long, env = "MODEL_PROMOTE_MARGIN", default_value_t = 0.05)]
    pub promote_margin: f64,
    /// ... and this fraction lower than seasonal-naive's, on every target.
    #[arg(long, env = "MODEL_SEASONAL_NAIVE_MARGIN", default_value_t = 0.0)]
    pub seasonal_naive_margin: f64,
    /// ... and this fraction lower than the moving average's, on every target.
    #[arg(long, env = "MODEL_MOVING_AVERAGE_MARGIN", default_value_t = 0.0)]
    pub moving_average_margin: f64,
    /// Periods (event time) between two automatic retrain attempts at least.
    #[arg(long, env = "MODEL_COOLDOWN_PERIODS", default_value_t = 6)]
    pub cooldown_periods: usize,
    /// Periods of live accuracy.
    #[arg(long, env = "MODEL_LIVE_WINDOW_PERIODS", default_value_t = 24)]
    pub live_window_periods: usize,
    /// Periods of live features for drift.
    #[arg(long, env = "MODEL_PSI_WINDOW_PERIODS", default_value_t = 168)]
    pub psi_window_periods: usize,
    /// Retrain when the champion's training data ends this many periods (event time) before the
    /// newest closed period, at most once per this many periods (0: only on error or drift).
    #[arg(long, env = "MODEL_RETRAIN_EVERY_PERIODS", default_value_t = 168)]
    pub retrain_every_periods: usize,
    /// Where models live: a directory, file:///dir or s3://bucket/prefix (AWS_* variables).
    #[arg(long, env = "MODEL_STORE_URL", default_value = "./.models")]
    pub model_store: String,
}

impl ModelArgs {
    /// The period aggregator these settings describe (period, window size, clock).
    pub fn aggregator(&self) -> anyhow::Result<Aggregator> {
        let mut a = Aggregator::new(self.period_ms, self.window_size_ms, self.products)
            .map_err(|e| anyhow::anyhow!("--window-size-ms / --period-ms: {e}"))?;
        a.use_marks(self.window_clock == WindowClock::Marks);
        Ok(a)
    }

    /// The stream name of the windows read, as the windower's watermark records name it.
    pub fn window_stream(&self) -> String {
        cartstream_kafka::control::window_stream(self.window_size_ms, self.window_size_ms)
    }

    pub fn train_config(&self) -> anyhow::Result<TrainConfig> {
        if !(1..=MAX_HORIZON).contains(&self.horizon) {
            anyhow::bail!(
                "--horizon {} must be within 1..={MAX_HORIZON}",
                self.horizon
            );
        }
        if self.holdout_periods < self.horizon {
            anyhow::bail!("--holdout-periods must be at least --horizon");
        }
        if self.train_window_periods < crate::model::MIN_TRAIN_ORIGINS {
            anyhow::bail!(
                "--train-window-periods must be at least {}",
                crate::model::MIN_TRAIN_ORIGINS
            );
        }
        Ok(TrainConfig {
            horizon: self.horizon,
            holdout_periods: self.holdout_periods,
            train_window_periods: self.train_window_periods,
            max_rows: self.max_rows.max(1000),
            alpha: self.alpha,
            family: self.family,
        })
    }

    pub fn monitor_config(&self) -> MonitorConfig {
        MonitorConfig {
            error_threshold: self.error_threshold,
            psi_threshold: self.psi_threshold,
            promote_margin: self.promote_margin,
            seasonal_naive_margin: self.seasonal_naive_margin,
            moving_average_margin: self.moving_average_margin,
            cooldown_periods: self.cooldown_periods,
            live_window_periods: self.live_window_periods.max(1),
            psi_window_periods: self.psi_window_periods.max(1),
            retrain_every_periods: self.retrain_every_periods,
        }
    }
}

/// Where forecasts are written (the keyspace made by `cartstream-scylla-sink migrate`): the sinks'
/// connection flags (`--scylla-uri`, `--scylla-keyspace`, credentials) and the forecast rows' own.
#[derive(Clone, Debug, clap::Args)]
pub struct ForecastStoreArgs {
    #[command(flatten)]
    pub cql: cartstream_sinks::cql::CqlArgs,
    /// Write forecasts to forecasts_by_category (false: API and gauges only).
    #[arg(long, env = "WRITE_FORECASTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub write_forecasts: bool,
    /// Time to live of forecast rows, in seconds.
    #[arg(long, env = "FORECAST_TTL_SECS", default_value_t = 30 * 86_400)]
    pub forecast_ttl_secs: i32,
}

impl ForecastStoreArgs {
    pub async fn connect(&self) -> anyhow::Result<(Arc<Session>, PreparedStatement)> {
        let session = self.cql.connect().await?;
        let ks = &self.cql.keyspace;
        let insert = session
            .prepare(insert_forecast_cql(ks))
            .await
            .with_context(|| {
                format!("{ks}.forecasts_by_category is missing: run `cartstream-scylla-sink migrate` first")
            })?;
        Ok((Arc::new(session), insert))
    }
}

pub fn insert_forecast_cql(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.forecasts_by_category (category, day, horizon_start, model_version, \
         purchases, revenue, lower, upper, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
    )
}

pub enum Command {
    Rollback(oneshot::Sender<Result<Metadata, String>>),
    /// A manual retrain; the permit is dropped once it is done (the API's one-at-a-time rule).
    Retrain(
        oneshot::Sender<Result<Metadata, String>>,
        crate::api::RetrainPermit,
    ),
}

/// What the API reads.
pub struct Shared {
    pub forecasts: RwLock<Option<Arc<ForecastSet>>>,
    pub champion: RwLock<Option<Metadata>>,
    pub registry: ModelRegistry,
    pub commands: mpsc::Sender<Command>,
    pub guard: Arc<crate::api::ApiGuard>,
}

impl Shared {
    /// With an open API ([`crate::api::ApiGuard::open`]).
    pub fn new(registry: ModelRegistry, commands: mpsc::Sender<Command>) -> Self {
        Self::with_guard(registry, commands, crate::api::ApiGuard::open())
    }

    pub fn with_guard(
        registry: ModelRegistry,
        commands: mpsc::Sender<Command>,
        guard: crate::api::ApiGuard,
    ) -> Self {
        Shared {
            forecasts: RwLock::new(None),
            champion: RwLock::new(None),
            registry,
            commands,
            guard: Arc::new(guard),
        }
    }

    pub fn forecasts(&self) -> Option<Arc<ForecastSet>> {
        self.forecasts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn champion(&self) -> Option<Metadata> {
        self.champion
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_forecasts(&self, f: Option<Arc<ForecastSet>>) {
        *self.forecasts.write().unwrap_or_else(|p| p.into_inner()) = f;
    }

    fn set_champion(&self, m: Option<Metadata>) {
        *self.champion.write().unwrap_or_else(|p| p.into_inner()) = m;
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The engine thread's world.
pub struct EngineLoop {
    pub kafka: KafkaArgs,
    pub topic: String,
    pub group: String,
    pub decoder: Decoder<KpiWindow>,
    pub engine: Engine,
    pub aggregator: Aggregator,
    /// The stream named by the watermark records of the windows read ([`ModelArgs::window_stream`]).
    pub window_stream: String,
    pub shared: Arc<Shared>,
    pub forecasts_tx: watch::Sender<Option<Arc<ForecastSet>>>,
    pub commands: mpsc::Receiver<Command>,
    pub shutdown: Shutdown,
    pub health: Health,
    pub handle: tokio::runtime::Handle,
    pub gauge_series_max: usize,
    /// Caught up = every partition keeps reaching its end; a partition that does not for this
    /// long reads a backlog ([`crate::schedule::CatchUp`]).
    pub idle_timeout: Duration,
}

impl EngineLoop {
    /// Installs the registry's champion, if any.
    pub fn install(&mut self, model: crate::model::Model, meta: Metadata) {
        tm::export_champion(&meta);
        self.shared.set_champion(Some(meta.clone()));
        self.engine.install(Champion {
            model: Arc::new(model),
            meta,
        });
        self.publish();
    }

    fn publish(&self) {
        let f = self.engine.forecasts();
        if let Some(set) = &f {
            let mut n = 0;
            for (key, points) in &set.series {
                let Some(cat) = key.strip_prefix("category/") else {
                    continue;
                };
                if n >= self.gauge_series_max {
                    break;
                }
                n += 1;
                if let Some(p) = points.first() {
                    tm::FORECAST
                        .with_label_values(&[cat, "purchases"])
                        .set(p.purchases);
                    tm::FORECAST
                        .with_label_values(&[cat, "revenue"])
                        .set(p.revenue);
                }
            }
        }
        self.shared.set_forecasts(f.clone());
        self.forecasts_tx.send_replace(f);
    }

    fn retrain(&mut self, trigger: &str) -> Result<Metadata, String> {
        tm::RETRAINS.with_label_values(&[trigger]).inc();
        let timer = tm::TRAINING_SECONDS
            .with_label_values(&[trigger])
            .start_timer();
        let result = self.engine.retrain(trigger, now_ms());
        timer.observe_duration();
        let mut cand = match result {
            Ok(c) => c,
            Err(e) => {
                tm::DECISIONS.with_label_values(&["failed"]).inc();
                tracing::warn!(trigger, error = %e, decision = "failed", "training failed");
                return Err(e.to_string());
            }
        };
        let registry = self.shared.registry.clone();
        let saved = self
            .handle
            .block_on(registry.save(&cand.model, &mut cand.meta));
        let version = match saved {
            Ok(v) => v,
            Err(e) => {
                self.engine.note_attempt();
                tm::DECISIONS.with_label_values(&["failed"]).inc();
                tracing::error!(trigger, error = %format!("{e:#}"), decision = "failed", "cannot store the model");
                return Err(format!("{e:#}"));
            }
        };
        let m = &cand.meta;
        let champ_mae = m.champion_holdout.as_ref().map(|c| c.purchases.mae);
        if cand.promote {
            if let Err(e) = self
                .handle
                .block_on(registry.promote(&version, trigger, now_ms()))
            {
                tm::DECISIONS.with_label_values(&["failed"]).inc();
                tracing::error!(trigger, version, error = %format!("{e:#}"), decision = "failed", "cannot move the champion pointer");
                return Err(format!("{e:#}"));
            }
        }
        tm::DECISIONS
            .with_label_values(&[m.decision.as_str()])
            .inc();
        tracing::info!(
            trigger,
            version,
            decision = %m.decision,
            holdout_mae = m.holdout.purchases.mae,
            holdout_revenue_mae = m.holdout.revenue.mae,
            reasons = %m.reasons.join("; "),
            holdout_smape = m.holdout.purchases.smape,
            seasonal_naive_mae = m.holdout.purchases.seasonal_naive_mae,
            relative_to_seasonal_naive = m.holdout.purchases.relative_to_seasonal_naive,
            champion_mae = champ_mae,
            champion = m.champion_version.as_deref(),
            seconds = m.training_seconds,
            "challenger evaluated"
        );
        let meta = cand.meta.clone();
        if !cand.promote && self.shared.champion().is_none() {
            // No champion: the baselines (the moving average is what is served) at this
            // evaluation, so the hold-out panel shows what a model has to beat.
            tm::export_baselines(&meta);
        }
        if cand.promote {
            self.install(cand.model, cand.meta);
        }
        Ok(meta)
    }

    fn rollback(&mut self) -> Result<Metadata, String> {
        let registry = self.shared.registry.clone();
        let loaded = self.handle.block_on(async {
            let p = registry.rollback(now_ms()).await?;
            registry.load(&p.version).await
        });
        match loaded {
            Ok((model, meta)) => {
                tm::DECISIONS.with_label_values(&["rollback"]).inc();
                tracing::info!(version = %meta.version, decision = "rollback", "rolled back");
                self.install(model, meta.clone());
                Ok(meta)
            }
            Err(e) => Err(format!("{e:#}")),
        }
    }

    fn commands(&mut self) {
        while let Ok(c) = self.commands.try_recv() {
            match c {
                Command::Rollback(reply) => {
                    let _ = reply.send(self.rollback());
                }
                Command::Retrain(reply, permit) => {
                    let _ = reply.send(self.retrain("manual"));
                    drop(permit);
                }
            }
        }
    }

    fn on_record(&mut self, partition: i32, bytes: Option<&[u8]>) {
        let Some(bytes) = bytes else {
            tm::INPUT_RECORDS.with_label_values(&["undecodable"]).inc();
            tracing::warn!(
                partition,
                reason = "empty_record",
                "kpi window without a value skipped"
            );
            return;
        };
        let decoded = loop {
            let r = match self.decoder.decode_cached(bytes) {
                Some(r) => r,
                None => self.handle.block_on(self.decoder.decode(bytes)),
            };
            match r {
                Err(e) if e.is_transient() && !self.shutdown.is_triggered() => {
                    tracing::warn!(error = %e, "schema registry unreachable, retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                other => break other,
            }
        };
        match decoded {
            Ok(w) => {
                let a = self.aggregator.accept(partition, &w);
                if a == Accepted::Late || a == Accepted::Invalid {
                    tracing::warn!(
                        partition,
                        outcome = a.label(),
                        window_start = w.window_start,
                        "kpi window not used"
                    );
                }
                tm::INPUT_RECORDS.with_label_values(&[a.label()]).inc();
            }
            Err(e) => {
                tm::INPUT_RECORDS.with_label_values(&["undecodable"]).inc();
                tracing::warn!(partition, reason = e.code(), error = %e, "kpi window cannot be decoded, skipped");
            }
        }
    }

    /// Closes every complete period. When closing relies on every partition being at its end,
    /// each end is checked first against the broker (on a client of its own, so the check does
    /// not wait behind this consumer's long-polling fetch): a partition that has records again
    /// holds the periods open until they are read, so that an end reached a moment ago never
    /// turns its own in-order windows into late ones.
    fn close_periods(&mut self, consumer: &BaseConsumer, ends: &BaseConsumer) {
        if !self.aggregator.would_close() {
            return;
        }
        if self.aggregator.relies_on_ends() {
            let at_end = self.aggregator.partitions_at_end();
            let mut moved = false;
            for (p, n) in unread_records(consumer, ends, &self.topic, &at_end) {
                if n != Some(0) {
                    self.aggregator.partition_busy(p);
                    moved = true;
                }
            }
            if moved && !self.aggregator.would_close() {
                return;
            }
        }
        for (idx, obs) in self.aggregator.drain_closed() {
            self.engine.close_period(idx, &obs);
            tm::PERIODS.inc();
            tm::LAST_PERIOD.set(idx * self.aggregator.period_ms() / 1000);
            tm::SERIES.set(self.engine.history().series.len() as i64);
            tm::export_live(self.engine.stats());
        }
        self.publish();
    }

    /// Retrains if one is due ([`crate::schedule::due`]) on the newest history.
    fn maybe_retrain(&mut self, caught_up: bool) {
        if let Some(t) = self.engine.due(caught_up) {
            let _ = self.retrain(t);
            self.publish();
        }
    }

    /// Reads until shutdown.
    pub fn run(mut self) -> anyhow::Result<()> {
        let mut config = self.kafka.consumer(&self.group)?;
        config.set("enable.partition.eof", "true");
        let consumer: BaseConsumer = config
            .create()
            .context("creating the kpi.windows consumer")?;
        let md = consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(15))
            .with_context(|| format!("reading the metadata of {}", self.topic))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            anyhow::bail!(
                "topic {} does not exist (run `cartstream-admin bootstrap`)",
                self.topic
            );
        }
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(&self.topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        // End offsets are asked on a connection of their own: on the reading consumer's, a
        // request waits behind its fetch, which long-polls at the end of the topic.
        let ends: BaseConsumer = self
            .kafka
            .consumer(&format!("{}-ends", self.group))?
            .create()
            .context("creating the end-offset client")?;
        self.aggregator.expect_partitions(&partitions);
        tracing::info!(topic = %self.topic, partitions = partitions.len(), idle_timeout_ms = self.idle_timeout.as_millis() as u64, "replaying kpi windows from the beginning");
        let mut marks = cartstream_kafka::control::EndMarks::default();
        let mut watermarks = cartstream_kafka::control::EndMarks::default();
        let mut follow = CatchUp::new(&partitions, self.idle_timeout);
        let mut was_caught_up = false;
        while !self.shutdown.is_triggered() {
            self.commands();
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    let p = m.partition();
                    follow.read(p);
                    match cartstream_kafka::control::control_of(&m) {
                        Ok(Some(mark)) => {
                            tm::INPUT_RECORDS.with_label_values(&["control"]).inc();
                            if mark.is_end_of_input() {
                                if let Some(end) = marks.observe(&self.topic, p, &mark) {
                                    self.aggregator.end_of_input(p, end);
                                    tracing::info!(partition = p, end = %cartstream_kafka::control::format_watermark(end), "end of input");
                                }
                            } else if cartstream_kafka::control::stream_of(&m).as_deref()
                                == Some(self.window_stream.as_str())
                            {
                                if let Some(before) = watermarks.observe(&self.topic, p, &mark) {
                                    self.aggregator.watermark_mark(p, before);
                                }
                            }
                        }
                        Ok(None) => self.on_record(p, m.payload()),
                        Err(e) => {
                            tm::INPUT_RECORDS.with_label_values(&["undecodable"]).inc();
                            tracing::warn!(partition = p, error = %e, "bad control record skipped");
                        }
                    }
                    self.close_periods(&consumer, &ends);
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.aggregator.partition_at_end(p);
                    follow.reached_end(p, Instant::now());
                    self.close_periods(&consumer, &ends);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka error while reading kpi.windows");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            let ended = self.aggregator.input_ended();
            self.engine.set_input_ended(ended);
            // Caught up (see [`CatchUp`]): every partition keeps reaching its end, which a
            // backlog never does, and the broker confirmed it once. Live traffic that never
            // pauses is caught up too.
            let now = Instant::now();
            follow.update(now);
            if follow.wants_check(now) {
                let ok = unread_records(&consumer, &ends, &self.topic, &partitions)
                    .iter()
                    .all(|(_, n)| *n == Some(0));
                follow.checked(ok, now);
            }
            let caught_up = follow.caught_up();
            if caught_up && !was_caught_up {
                tracing::info!(
                    periods = self.engine.history().len,
                    "caught up with kpi.windows"
                );
            }
            if caught_up && !self.health.is_ready() {
                tm::LAG_READY.set(1.0);
                self.health.set_ready(true);
            }
            was_caught_up = caught_up;
            if caught_up || ended {
                self.maybe_retrain(caught_up);
            }
        }
        self.health.set_ready(false);
        Ok(())
    }
}

/// Records of `partitions` not yet handed to the application: the partition's high watermark,
/// asked of the broker now (so nothing committed before this call is missed), against the
/// application's position. `None` when either is unknown. A transaction still open on a
/// partition counts as unread (its records sit below the high watermark), which only delays a
/// close.
pub fn unread_records(
    consumer: &BaseConsumer,
    ends: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Vec<(i32, Option<i64>)> {
    let positions = consumer.position().ok();
    partitions
        .iter()
        .map(|&p| {
            let hi = ends.fetch_watermarks(topic, p, Duration::from_secs(5)).ok();
            let pos = positions
                .as_ref()
                .and_then(|t| t.find_partition(topic, p))
                .map(|e| e.offset());
            let n = match (hi, pos) {
                (Some((lo, hi)), Some(Offset::Offset(o))) if hi >= 0 => {
                    Some((hi - o.max(lo.max(0))).max(0))
                }
                // nothing consumed on this assignment yet: only an empty partition is at its end
                (Some((lo, hi)), _) if hi >= 0 && lo >= 0 => Some((hi - lo).max(0)),
                _ => None,
            };
            (p, n)
        })
        .collect()
}

/// Writes each new forecast set to `forecasts_by_category` (category series only); a set that
/// arrives while one is being written replaces any set not yet written.
pub async fn write_forecasts(
    session: Arc<Session>,
    insert: PreparedStatement,
    ttl_secs: i32,
    mut rx: watch::Receiver<Option<Arc<ForecastSet>>>,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = shutdown.wait() => return,
        }
        let Some(set) = rx.borrow_and_update().clone() else {
            continue;
        };
        let created = CqlTimestamp(now_ms());
        let mut futs = Vec::new();
        for (key, pts) in &set.series {
            let Some(cat) = key.strip_prefix("category/") else {
                continue;
            };
            for p in pts {
                let values = (
                    cat.to_string(),
                    cartstream_events::time::utc_date(p.period_start_ms),
                    CqlTimestamp(p.period_start_ms),
                    set.model_version.clone(),
                    p.purchases,
                    p.revenue,
                    p.purchases_lower,
                    p.purchases_upper,
                    created,
                    ttl_secs,
                );
                let session = session.clone();
                let insert = insert.clone();
                futs.push(async move {
                    match session.execute_unpaged(&insert, values).await {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot write a forecast row");
                            false
                        }
                    }
                });
            }
        }
        let results: Vec<bool> = futures::stream::iter(futs)
            .buffer_unordered(32)
            .collect()
            .await;
        let ok = results.iter().filter(|b| **b).count();
        tm::FORECAST_ROWS
            .with_label_values(&["ok"])
            .inc_by(ok as u64);
        tm::FORECAST_ROWS
            .with_label_values(&["error"])
            .inc_by((results.len() - ok) as u64);
    }
}
