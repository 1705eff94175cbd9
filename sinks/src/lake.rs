//! The history lake: every record of the input topics, once, in Parquet files on an object
//! store (a local directory by default, S3 or MinIO by URL).
//!
//! # The star schema
//!
//! By default the sink writes the facts `purchases.enriched`, `sessions.closed`, `kpi.windows`
//! (final windows only: early updates, `is_final = false`, are skipped unless
//! `--early-windows keep`) and `alerts.raised`, and keeps daily snapshots of the dimensions
//! `catalog.products` and `catalog.users` under `snapshot=<topic>/date=YYYY-MM-DD/`
//! ([`crate::snapshot`]). End-of-input control records are never written (their offsets still
//! belong to the flushed ranges). The queries of `sql/` read this layout with DuckDB
//! (`cartstream-admin lake-query`).
//!
//! # Layout
//!
//! `<lake>/topic=<topic>/date=YYYY-MM-DD/hour=HH/<partition>-<first>-<last>.parquet`, Hive-style,
//! by the record's event time (UTC; `<topic>` is the full name, namespace prefix included; the first of `event_time`, `window_start`, `session_start`,
//! `detected_at`, `failed_at`, `updated_at` the schema has, else the Kafka timestamp). The name
//! holds the Kafka partition and the offset range of the *flush* the file belongs to: one flush
//! of a partition writes one file per hour its records fall in, all with the same name. Files are
//! zstd-compressed with row groups of `--row-group-rows`; each file's columns are the Arrow
//! mapping of its records' writer schema ([`crate::avro_arrow`]).
//!
//! # Commit protocol (no loss, no duplicate)
//!
//! Per partition, records are buffered until `--max-file-records`, `--max-file-bytes` (Avro
//! bytes) or `--max-file-age-secs` since the first buffered record, or a writer schema change,
//! or shutdown. Then, for the buffered range `[F, L]`:
//!
//! 1. commit offset `F` with metadata `lake:cut=L` (an intent: "the flush starting at F ends at L");
//! 2. upload the flush's files (retried until they succeed);
//! 3. commit offset `L + 1` (no metadata).
//!
//! A crash before 3 restarts at `F`; the sink reads the intent and cuts its first flush exactly at
//! `L`, so it uploads the same file names again (overwriting, never adding). A crash before 1
//! uploaded nothing. So the lake holds each record once, whatever is killed when.
//!
//! # Compaction and the reader rule
//!
//! `compact` merges the small files of each closed hour, per partition, into files of up to
//! `--target-bytes`, named by the union of their ranges (`<p>-<min first>-<max last>.parquet`),
//! and only then deletes the inputs. **Readers ignore a file whose range lies within the range of
//! another file of the same partition in the same hour directory**: such a file's rows are all in
//! the larger one. So a crash between the merged upload and the deletes changes nothing a reader
//! sees, and the next compaction deletes the leftovers. Plain readers that do not apply the rule
//! see the truth whenever no compaction is half-done (the normal state).
//!
//! The sink runs compaction itself every `--compact-every-secs` (default 900 s, 0: never) over
//! every input topic, for the partitions it owns at that moment, in a task beside the writing
//! (it merges only the files it listed; a flush rewritten meanwhile is covered by the reader
//! rule). Metrics: `cartstream_sink_compactions_total{outcome}`, `cartstream_sink_compaction_seconds`,
//! `cartstream_sink_compacted_files_total{what=inputs|merged|covered_deleted}` and the files and
//! bytes of kind `compaction`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::Schema;
use apache_avro::types::Value;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use cartstream_events::{wire, Registry, RegistryError};
use cartstream_kafka::{KafkaArgs, Topic, TopicNames};
use cartstream_runtime::{Health, Shutdown};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};

use crate::avro_arrow;
use crate::dlq::DeadLetters;
use crate::gate::{self as qgate, Decision, GateMetrics, PauseMode, SharedGate};
use crate::metrics::SinkMetrics;
use crate::snapshot;
use crate::source::{self, GroupArgs, Owned, Rebalance};

const SINK: &str = "lake";
const CUT_PREFIX: &str = "lake:cut=";
/// Fields the lake partitions by, in order of preference.
pub const TIME_FIELDS: &[&str] = &[
    "event_time",
    "window_start",
    "session_start",
    "detected_at",
    "failed_at",
    "updated_at",
];

// ------------------------------------------------------------------------------------------
// Names (pure)

/// `topic=<t>/date=YYYY-MM-DD/hour=HH` of an epoch-millisecond time.
pub fn hour_dir(topic: &str, ms: i64) -> String {
    let hour = ms.div_euclid(3_600_000).rem_euclid(24);
    format!(
        "topic={topic}/date={}/hour={hour:02}",
        cartstream_events::time::utc_date(ms)
    )
}

/// Start of the hour of `hour_dir`'s `date=`/`hour=` segments, in epoch milliseconds.
pub fn hour_start(dir: &str) -> Option<i64> {
    let date = dir.split('/').find_map(|s| s.strip_prefix("date="))?;
    let hour: i64 = dir
        .split('/')
        .find_map(|s| s.strip_prefix("hour="))?
        .parse()
        .ok()?;
    let mut it = date.split('-');
    let (y, m, d) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    Some(cartstream_events::time::days_from_civil(y, m, d) * 86_400_000 + hour * 3_600_000)
}

pub fn file_name(partition: i32, first: i64, last: i64) -> String {
    format!("{partition}-{first}-{last}.parquet")
}

/// `(partition, first, last)` of a file name made by [`file_name`].
pub fn parse_file_name(name: &str) -> Option<(i32, i64, i64)> {
    let stem = name.strip_suffix(".parquet")?;
    let mut it = stem.splitn(3, '-');
    let p = it.next()?.parse().ok()?;
    let f: i64 = it.next()?.parse().ok()?;
    let l: i64 = it.next()?.parse().ok()?;
    (f <= l).then_some((p, f, l))
}

/// The files of one hour directory a reader must skip: those whose range lies within another
/// file's range of the same partition (see the module docs). Input: `(partition, first, last)`.
pub fn covered(files: &[(i32, i64, i64)]) -> Vec<bool> {
    files
        .iter()
        .map(|&(p, f, l)| {
            files
                .iter()
                .any(|&(q, g, m)| q == p && g <= f && l <= m && (g, m) != (f, l))
        })
        .collect()
}

/// The cut recorded by step 1 of the commit protocol, from a committed offset's metadata.
pub fn parse_cut(metadata: &str) -> Option<i64> {
    metadata.strip_prefix(CUT_PREFIX)?.parse().ok()
}

// ------------------------------------------------------------------------------------------
// Object store

/// Where the lake is.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Lake location: a directory (created if missing), `file:///abs/path`, or
    /// `s3://bucket/prefix` (credentials, region and endpoint from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT; AWS_ALLOW_HTTP=true for MinIO over http).
    #[arg(long, env = "OBJECT_STORE_URL", default_value = "./lake")]
    pub lake_url: String,
}

/// An object store and the path prefix of the lake in it.
#[derive(Clone, Debug)]
pub struct Lake {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
}

impl StoreArgs {
    pub fn open(&self) -> anyhow::Result<Lake> {
        let url = self.lake_url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .with_context(|| format!("S3 lake {url}"))?;
            return Ok(Lake {
                store: Arc::new(store),
                prefix: Path::from(prefix.trim_matches('/')),
            });
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        anyhow::ensure!(
            !dir.contains("://"),
            "--lake-url {url}: only directories, file:// and s3:// are supported"
        );
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the lake directory {dir}"))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("lake directory {dir}"))?;
        Ok(Lake {
            store: Arc::new(store),
            prefix: Path::default(),
        })
    }
}

impl Lake {
    pub fn path(&self, rel: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix.as_ref()))
        }
    }

    /// Every Parquet file under `rel` (recursively): (path relative to the lake, size).
    pub async fn list(&self, rel: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let base = self.path(rel);
        let metas: Vec<_> = self.store.list(Some(&base)).try_collect().await?;
        let skip = if self.prefix.as_ref().is_empty() {
            0
        } else {
            self.prefix.as_ref().len() + 1
        };
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .map(|m| (m.location.as_ref()[skip..].to_string(), m.size))
            .collect();
        out.sort();
        Ok(out)
    }
}

// ------------------------------------------------------------------------------------------
// Parquet

/// How files are written.
#[derive(Debug, Clone, clap::Args)]
pub struct ParquetArgs {
    /// Rows per Parquet row group.
    #[arg(long, env = "ROW_GROUP_ROWS", default_value_t = 128 * 1024)]
    pub row_group_rows: usize,
    /// zstd level (1-22).
    #[arg(long, env = "ZSTD_LEVEL", default_value_t = 3)]
    pub zstd_level: i32,
}

impl ParquetArgs {
    fn props(&self) -> anyhow::Result<WriterProperties> {
        Ok(WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(self.zstd_level)?))
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_created_by("cartstream-lake-sink".into())
            .build())
    }
}

/// Encodes batches (of one schema) into one Parquet file in memory.
pub fn parquet_bytes(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    args: &ParquetArgs,
) -> anyhow::Result<Vec<u8>> {
    let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(args.props()?))?;
    for b in batches {
        w.write(b)?;
    }
    Ok(w.into_inner()?)
}

async fn put_retrying(
    lake: &Lake,
    rel: &str,
    body: Vec<u8>,
    kind: &'static str,
    shutdown: Option<&Shutdown>,
) -> anyhow::Result<()> {
    let m = SinkMetrics::get();
    let path = lake.path(rel);
    let len = body.len() as u64;
    let payload = PutPayload::from(Bytes::from(body));
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        m.in_flight.with_label_values(&[SINK]).inc();
        let r = lake.store.put(&path, payload.clone()).await;
        m.in_flight.with_label_values(&[SINK]).dec();
        match r {
            Ok(_) => break,
            Err(e) => {
                attempts += 1;
                m.retries.with_label_values(&[SINK, "upload"]).inc();
                tracing::warn!(error = %e, path = %path, attempts, "upload failed, retrying");
                // A stop request is honoured only by the sink, which replays the range later.
                if let Some(s) = shutdown {
                    if source::sleep_or_shutdown(backoff, s).await {
                        anyhow::bail!("stopped while uploading {path}");
                    }
                } else if attempts >= 10 {
                    anyhow::bail!("uploading {path}: {e}");
                } else {
                    tokio::time::sleep(backoff).await;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    m.write_seconds
        .with_label_values(&[SINK])
        .observe(started.elapsed().as_secs_f64());
    m.files_written.with_label_values(&[SINK, kind]).inc();
    m.bytes_written.with_label_values(&[SINK, kind]).inc_by(len);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The sink

/// Flags of `cartstream-lake-sink run`.
#[derive(Debug, Clone, clap::Args)]
pub struct LakeSinkArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    #[command(flatten)]
    pub parquet: ParquetArgs,
    /// Input topics (base names; the topic prefix is added): by default the star schema's facts,
    /// enriched events, closed sessions, final KPI windows and alerts.
    #[arg(
        long,
        env = "LAKE_SINK_TOPICS",
        value_delimiter = ',',
        default_value = "purchases.enriched,sessions.closed,kpi.windows,alerts.raised"
    )]
    pub topics: Vec<String>,
    /// Early KPI window updates (`is_final = false`): skip (the lake keeps final windows only,
    /// one row per window) or keep (every emission).
    #[arg(long, env = "LAKE_EARLY_WINDOWS", value_enum, default_value_t = EarlyWindows::Skip)]
    pub early_windows: EarlyWindows,
    /// Dimension topics (base names) to keep daily snapshots of, under
    /// `snapshot=<topic>/date=YYYY-MM-DD/` ("" for none).
    #[arg(
        long,
        env = "LAKE_SNAPSHOTS",
        value_delimiter = ',',
        default_value = "catalog.products,catalog.users"
    )]
    pub snapshots: Vec<String>,
    /// Rewrite the current date's snapshot at most this often while its dimension changes.
    #[arg(long, env = "LAKE_SNAPSHOT_EVERY_SECS", default_value_t = 300)]
    pub snapshot_every_secs: u64,
    /// Compact the closed hours of every input topic this often, for the partitions this
    /// instance owns (0: never; `compact` does it by hand).
    #[arg(long, env = "LAKE_COMPACT_EVERY_SECS", default_value_t = 900)]
    pub compact_every_secs: u64,
    /// Scheduled compaction: an hour is closed this many seconds after its end (wall clock).
    #[arg(long, env = "LAKE_COMPACT_CLOSED_AFTER_SECS", default_value_t = 3600)]
    pub compact_closed_after_secs: i64,
    /// Scheduled compaction: merge up to this many bytes of input per output file.
    #[arg(long, env = "LAKE_COMPACT_TARGET_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub compact_target_bytes: u64,
    /// Rotate a partition's file after this many records.
    #[arg(long, env = "MAX_FILE_RECORDS", default_value_t = 500_000)]
    pub max_file_records: usize,
    /// Rotate a partition's file after this many bytes of Avro input.
    #[arg(long, env = "MAX_FILE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_file_bytes: usize,
    /// Rotate a partition's file this many seconds after its first record (the latency bound).
    #[arg(long, env = "MAX_FILE_AGE_SECS", default_value_t = 60)]
    pub max_file_age_secs: u64,
    /// What a breached data-quality gate (a `data_quality` alert on alerts.raised, one of the
    /// inputs) does: nothing (`off`), pause the sink until `POST /lake/resume` on
    /// `--control-addr` (`resume`), or pause it until the gates' clear alert (`until-clear`).
    /// Paused, the sink commits nothing and loses nothing (see `cartstream_sinks::gate`).
    #[arg(long, env = "LAKE_QUALITY_PAUSE", value_enum, default_value_t = PauseMode::Off)]
    pub quality_pause: PauseMode,
    /// Address of the control endpoint (`GET /lake/gate`, `POST /lake/resume`), or `off`.
    #[arg(long, env = "LAKE_CONTROL_ADDR", default_value = "off")]
    pub control_addr: String,
}

/// What the lake does with early KPI window updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EarlyWindows {
    Skip,
    Keep,
}

/// A decoded record waiting for its flush.
struct Buffered {
    time_ms: i64,
    value: Value,
}

/// What one partition has buffered.
struct Part {
    topic: String,
    partition: i32,
    schema_id: Option<u32>,
    first: Option<i64>,
    last: i64,
    records: Vec<Buffered>,
    bytes: usize,
    opened: Instant,
    /// The intent found at assignment: the first flush must end exactly here.
    cut: Option<i64>,
}

impl Part {
    fn new(topic: String, partition: i32, cut: Option<i64>) -> Self {
        Part {
            topic,
            partition,
            schema_id: None,
            first: None,
            last: -1,
            records: Vec::new(),
            bytes: 0,
            opened: Instant::now(),
            cut,
        }
    }
}

/// Writer schemas and their Arrow mapping, by schema id.
struct Schemas {
    registry: Arc<Registry>,
    by_id: HashMap<u32, Arc<Plan>>,
}

struct Plan {
    reader: GenericDatumReader<'static>,
    arrow: SchemaRef,
    time_field: Option<usize>,
    /// The boolean `is_final` field (KPI windows), if the schema has one.
    final_field: Option<usize>,
}

enum DecodeFailure {
    Transient(String),
    Permanent {
        code: &'static str,
        message: String,
        schema_id: Option<u32>,
    },
}

impl Schemas {
    async fn plan(&mut self, id: u32) -> Result<Arc<Plan>, DecodeFailure> {
        if let Some(p) = self.by_id.get(&id) {
            return Ok(p.clone());
        }
        let writer: &'static Schema = match self.registry.schema(id).await {
            Ok(s) => s,
            Err(RegistryError::NotFound(_)) => {
                return Err(DecodeFailure::Permanent {
                    code: "unknown_schema_id",
                    message: format!("schema id {id} is not in the schema registry"),
                    schema_id: Some(id),
                })
            }
            Err(e) if e.is_transient() => return Err(DecodeFailure::Transient(e.to_string())),
            Err(e) => {
                return Err(DecodeFailure::Permanent {
                    code: "registry_error",
                    message: e.to_string(),
                    schema_id: Some(id),
                })
            }
        };
        let bad = |code: &'static str, message: String| DecodeFailure::Permanent {
            code,
            message,
            schema_id: Some(id),
        };
        let arrow = avro_arrow::arrow_schema(writer)
            .map_err(|e| bad("unsupported_schema", e.to_string()))?;
        let reader = GenericDatumReader::builder(writer)
            .human_readable(false)
            .build()
            .map_err(|e| bad("incompatible_schema", e.to_string()))?;
        let plan = Arc::new(Plan {
            reader,
            arrow,
            time_field: avro_arrow::time_field(writer, TIME_FIELDS),
            final_field: avro_arrow::bool_field(writer, "is_final"),
        });
        self.by_id.insert(id, plan.clone());
        Ok(plan)
    }

    async fn decode(&mut self, payload: &[u8]) -> Result<(u32, Arc<Plan>, Value), DecodeFailure> {
        let (id, body) = wire::split(payload).map_err(|e| {
            let e = cartstream_events::DecodeError::from(e);
            DecodeFailure::Permanent {
                code: e.code(),
                message: e.to_string(),
                schema_id: None,
            }
        })?;
        let plan = self.plan(id).await?;
        let mut rest = body;
        let value = plan
            .reader
            .read_value(&mut rest)
            .map_err(|e| DecodeFailure::Permanent {
                code: "malformed_avro",
                message: e.to_string(),
                schema_id: Some(id),
            })?;
        if !rest.is_empty() {
            return Err(DecodeFailure::Permanent {
                code: "malformed_avro",
                message: format!("{} trailing bytes after the record", rest.len()),
                schema_id: Some(id),
            });
        }
        Ok((id, plan, value))
    }
}

/// Everything `run` needs.
pub struct Context<'a> {
    pub kafka: &'a KafkaArgs,
    pub registry: Arc<Registry>,
    pub names: &'a TopicNames,
    pub lake: Lake,
    pub args: &'a LakeSinkArgs,
    pub shutdown: &'a Shutdown,
    pub health: &'a Health,
}

struct Sink<'a> {
    lake: Lake,
    args: &'a LakeSinkArgs,
    schemas: Schemas,
    parts: BTreeMap<(String, i32), Part>,
    consumer: source::SourceConsumer,
    shutdown: &'a Shutdown,
    /// Debug hook for the crash tests: exit the process right after the N-th upload, before its
    /// offset commit (CARTSTREAM_LAKE_EXIT_AFTER_UPLOADS).
    exit_after_uploads: Option<u64>,
    uploads: u64,
    /// Daily dimension snapshots (see [`crate::snapshot`]).
    snapshots: Vec<Snapshots>,
    /// The input topics (full names).
    inputs: Vec<String>,
    /// Epoch days the fact topics got rows of in this run, and the latest event time written.
    fact_days: BTreeSet<i64>,
    clock_ms: Option<i64>,
    started: Instant,
    /// The quality pause (see [`crate::gate`]): the alerts topic, its decoder, the shared state.
    alerts_topic: String,
    alert_dec: cartstream_events::Decoder<cartstream_events::types::Alert>,
    gate: SharedGate,
    paused: bool,
}

/// One dimension's table and snapshot schedule.
struct Snapshots {
    topic: String,
    table: snapshot::SharedTable,
    schedule: snapshot::Schedule,
}

/// Runs the sink until shutdown (see the module docs); on shutdown, flushes every partition.
pub async fn run(ctx: Context<'_>) -> anyhow::Result<()> {
    let Context {
        kafka,
        registry,
        names,
        lake,
        args,
        shutdown,
        health,
    } = ctx;
    let dlq = DeadLetters::new(
        kafka,
        &registry,
        names.name(Topic::DeadLetters),
        &names.subject(Topic::DeadLetters),
        "lake-sink",
    )
    .await?;
    let group = args.group.group("lake-sink", &names.topic_prefix);
    let inputs: Vec<String> = args
        .topics
        .iter()
        .map(|t| format!("{}{t}", names.topic_prefix))
        .collect();
    let consumer =
        source::consumer(kafka, &group, args.group.instance_id.as_deref(), &inputs).await?;
    source::spawn_lag_reporter(kafka, &group, inputs.clone(), SINK, shutdown.clone());
    let m = SinkMetrics::get();
    m.zero(
        SINK,
        &["upload", "decode", "commit"],
        &["flush", "snapshot", "compaction"],
    );
    for reason in ["control", "early_window", "bad_dimension"] {
        m.skipped.with_label_values(&[SINK, reason]);
    }
    for outcome in ["ok", "error"] {
        m.compactions.with_label_values(&[SINK, outcome]);
    }
    let mut snapshots = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for base in args.snapshots.iter().filter(|t| !t.trim().is_empty()) {
        // The snapshot's directory is named in the lake's own namespace; the dimension is read
        // where it lives: a replay generation reads the source namespace's catalog topics.
        let topic = format!("{}{}", names.topic_prefix, base.trim());
        let source = Topic::ALL
            .into_iter()
            .find(|t| t.base_name() == base.trim())
            .map_or_else(|| topic.clone(), |t| names.name(t));
        let existing: BTreeSet<i64> = lake
            .list(&format!("snapshot={topic}/"))
            .await
            .with_context(|| format!("listing the snapshots of {topic}"))?
            .iter()
            .filter_map(|(p, _)| snapshot::parse_day(p))
            .collect();
        let table = snapshot::SharedTable::default();
        readers.spawn(snapshot::read_dimension(
            kafka.clone(),
            format!("{group}-snapshots"),
            registry.clone(),
            source,
            table.clone(),
            shutdown.clone(),
        ));
        snapshots.push(Snapshots {
            topic,
            table,
            schedule: snapshot::Schedule::new(existing),
        });
    }
    let alerts_topic = names.name(Topic::Alerts);
    let gate = SharedGate::default();
    GateMetrics::get().paused.set(0);
    for e in ["pause", "resume_command", "resume_clear"] {
        GateMetrics::get().events.with_label_values(&[e]);
    }
    if args.quality_pause != PauseMode::Off && !inputs.contains(&alerts_topic) {
        anyhow::bail!("--quality-pause needs {alerts_topic} among the --topics");
    }
    if args.control_addr != "off" {
        let addr = args
            .control_addr
            .parse()
            .with_context(|| format!("--control-addr {:?}", args.control_addr))?;
        let bound = qgate::serve_control(addr, gate.clone(), shutdown.clone()).await?;
        tracing::info!(%bound, "lake control endpoint");
    } else if args.quality_pause == PauseMode::Resume {
        anyhow::bail!(
            "--quality-pause resume needs --control-addr (the resume command's endpoint)"
        );
    }
    tracing::info!(group, inputs = ?inputs, lake = %lake.store, prefix = %lake.prefix, quality_pause = ?args.quality_pause, "writing");
    health.set_ready(true);
    let mut sink = Sink {
        lake,
        args,
        alert_dec: cartstream_events::Decoder::new(registry.clone()),
        schemas: Schemas {
            registry,
            by_id: HashMap::new(),
        },
        parts: BTreeMap::new(),
        consumer,
        shutdown,
        exit_after_uploads: std::env::var("CARTSTREAM_LAKE_EXIT_AFTER_UPLOADS")
            .ok()
            .and_then(|v| v.parse().ok()),
        uploads: 0,
        snapshots,
        inputs: inputs.clone(),
        fact_days: BTreeSet::new(),
        clock_ms: None,
        started: Instant::now(),
        alerts_topic,
        gate,
        paused: false,
    };
    if !sink.snapshots.is_empty() {
        // Every date the lake's facts have rows of gets a snapshot, also those a previous run
        // wrote facts of and stopped before their snapshot.
        for t in &sink.inputs {
            for (path, _) in sink.lake.list(&format!("topic={t}/")).await? {
                if let Some(d) = snapshot::parse_day(&path) {
                    sink.fact_days.insert(d);
                }
            }
        }
    }
    let mut compaction: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_compaction = Instant::now();
    let mut owned = Owned::default();
    let mut last_tick = Instant::now();
    while !shutdown.is_triggered() {
        let mut received = None;
        tokio::select! {
            _ = shutdown.wait() => {}
            r = tokio::time::timeout(Duration::from_millis(200), sink.consumer.recv()) => match r {
                Ok(Ok(msg)) => received = Some(msg.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consume error");
                    if sink.consumer.context().errors.auth_failed() {
                        anyhow::bail!("Kafka refused our credentials: {}", sink.consumer.context().errors.auth_error().unwrap_or_default());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => {}
            },
        }
        for ev in sink.consumer.context().take_events() {
            tracing::info!(event = ?ev, "rebalance");
            owned.apply(&ev);
            match &ev {
                Rebalance::Revoked(ps) => {
                    for k in ps {
                        sink.parts.remove(k);
                    }
                }
                Rebalance::Assigned(ps) => {
                    for (t, p) in ps {
                        let (_, meta) = source::committed(&sink.consumer, t, *p)?;
                        let cut = parse_cut(&meta);
                        if let Some(c) = cut {
                            tracing::info!(topic = %t, partition = p, cut = c, "resuming an interrupted flush: cutting at its recorded end");
                        }
                        sink.parts
                            .insert((t.clone(), *p), Part::new(t.clone(), *p, cut));
                    }
                    if sink.paused {
                        sink.set_fetching(false);
                    }
                }
            }
        }
        let resume = sink.paused && qgate::lock(&sink.gate).resume_requested;
        if resume {
            sink.resume("resume_command").await?;
        }
        if let Some(msg) = received {
            // Stopped while the registry or the dead-letter topic was unavailable.
            if owned.contains(msg.topic(), msg.partition()) && sink.accept(&msg, &dlq).await? {
                break;
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(500) {
            last_tick = Instant::now();
            let max_age = Duration::from_secs(sink.args.max_file_age_secs);
            let paused = sink.paused;
            let due: Vec<(String, i32)> = sink
                .parts
                .iter()
                .filter(|(_, p)| {
                    !paused && p.first.is_some() && p.cut.is_none() && p.opened.elapsed() >= max_age
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in due {
                sink.flush(&k).await?;
            }
            sink.snapshot_tick().await?;
            // A dimension reader that fails (bad credentials, a missing topic) stops the sink:
            // its snapshots would silently stop otherwise.
            if let Some(r) = readers.try_join_next() {
                r.context("dimension reader panicked")?
                    .context("dimension reader")?;
            }
            let every = sink.args.compact_every_secs;
            if every > 0
                && last_compaction.elapsed() >= Duration::from_secs(every)
                && compaction.as_ref().is_none_or(|h| h.is_finished())
            {
                last_compaction = Instant::now();
                compaction = Some(spawn_compaction(&sink, &owned));
            }
        }
    }
    if let Some(h) = compaction {
        // Compaction is crash-safe (the reader rule): stopping it half-way is harmless.
        h.abort();
    }
    readers.abort_all();
    // Graceful stop: flush what is buffered (a partition waiting for its recorded cut is left
    // to the next run, which replays it to the same cut). Paused: nothing (the next run reads
    // the breach alert again and pauses again).
    health.set_ready(false);
    let paused = sink.paused;
    let keys: Vec<_> = sink
        .parts
        .iter()
        .filter(|(_, p)| !paused && p.first.is_some() && p.cut.is_none())
        .map(|(k, _)| k.clone())
        .collect();
    for k in keys {
        if let Err(e) = sink.flush(&k).await {
            tracing::warn!(error = %format!("{e:#}"), "flush on shutdown failed; the next run replays it");
        }
    }
    if let Err(e) = sink.snapshot_tick().await {
        tracing::warn!(error = %format!("{e:#}"), "snapshots on shutdown failed; the next run writes them");
    }
    sink.consumer.unsubscribe();
    tracing::info!("lake sink stopped");
    Ok(())
}

impl Sink<'_> {
    /// Buffers one record (or dead-letters it), flushing when a rotation rule says so.
    /// Returns true when shutdown interrupted it.
    async fn accept(&mut self, msg: &OwnedMessage, dlq: &DeadLetters) -> anyhow::Result<bool> {
        let key = (msg.topic().to_string(), msg.partition());
        let offset = msg.offset();
        let m = SinkMetrics::get();
        m.consumed.with_label_values(&[SINK]).inc();
        m.consumed_bytes
            .with_label_values(&[SINK])
            .inc_by(msg.payload().map_or(0, <[u8]>::len) as u64);
        // An end-of-input mark (cartstream_kafka::control) has nothing to write; its offset
        // still belongs to the partition's range.
        let control = matches!(cartstream_kafka::control::control_of(msg), Ok(Some(_)));
        if control {
            m.skipped.with_label_values(&[SINK, "control"]).inc();
        } else {
            // Decode; a registry outage is retried, a bad record dead-lettered (its offset still
            // belongs to the partition's range).
            let mut backoff = Duration::from_millis(200);
            let decoded = loop {
                let Some(payload) = msg.payload().filter(|p| !p.is_empty()) else {
                    break Err((
                        "empty_record",
                        "record has no value (tombstone)".to_string(),
                        None,
                    ));
                };
                match self.schemas.decode(payload).await {
                    Ok(v) => break Ok(v),
                    Err(DecodeFailure::Transient(e)) => {
                        tracing::warn!(error = %e, "registry unavailable, retrying");
                        SinkMetrics::get()
                            .retries
                            .with_label_values(&[SINK, "decode"])
                            .inc();
                        if source::sleep_or_shutdown(backoff, self.shutdown).await {
                            return Ok(true);
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                    Err(DecodeFailure::Permanent {
                        code,
                        message,
                        schema_id,
                    }) => break Err((code, message, schema_id)),
                }
            };
            // A schema change closes the current file first, so each file has one schema.
            if let Ok((id, _, _)) = &decoded {
                let change = self
                    .parts
                    .get(&key)
                    .is_some_and(|p| p.first.is_some() && p.schema_id.is_some_and(|s| s != *id));
                if change {
                    self.flush(&key).await?;
                }
            }
            match decoded {
                Ok((id, plan, value)) => {
                    let time_ms = plan
                        .time_field
                        .and_then(|i| avro_arrow::time_value(&value, i))
                        .or_else(|| msg.timestamp().to_millis())
                        .unwrap_or(0);
                    // An early KPI window update: its final emission follows (the offset still
                    // belongs to the partition's range).
                    let early = self.args.early_windows == EarlyWindows::Skip
                        && plan
                            .final_field
                            .and_then(|i| avro_arrow::bool_value(&value, i))
                            == Some(false);
                    if key.0 == self.alerts_topic && self.args.quality_pause != PauseMode::Off {
                        self.gate_alert(msg).await?;
                    }
                    let part = self.part(&key);
                    part.schema_id = Some(id);
                    if early {
                        m.skipped.with_label_values(&[SINK, "early_window"]).inc();
                    } else {
                        part.records.push(Buffered { time_ms, value });
                        part.bytes += msg.payload().map_or(0, <[u8]>::len);
                    }
                }
                Err((code, message, schema_id)) => {
                    let mut backoff = Duration::from_millis(200);
                    while let Err(e) = dlq.send(msg, code, message.clone(), schema_id).await {
                        tracing::warn!(error = %format!("{e:#}"), "dead letter not delivered, retrying");
                        if source::sleep_or_shutdown(backoff, self.shutdown).await {
                            return Ok(true);
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        let (max_records, max_bytes) = (self.args.max_file_records, self.args.max_file_bytes);
        let paused = self.paused;
        let part = self.part(&key);
        if part.first.is_none() {
            part.first = Some(offset);
            part.opened = Instant::now();
        }
        part.last = offset;
        let due = match part.cut {
            // Replaying a recorded cut: those files exist already (a pause does not stop it).
            Some(cut) => offset >= cut,
            None => !paused && (part.records.len() >= max_records || part.bytes >= max_bytes),
        };
        if due {
            self.flush(&key).await?;
        }
        Ok(false)
    }

    /// Writes the dimension snapshots that are due (see [`crate::snapshot`]).
    async fn snapshot_tick(&mut self) -> anyhow::Result<()> {
        let clock_day = self.clock_ms.map(snapshot::day_of);
        let now = self.started.elapsed().as_millis() as i64;
        let every = (self.args.snapshot_every_secs * 1000) as i64;
        for i in 0..self.snapshots.len() {
            let s = &mut self.snapshots[i];
            let (version, ready) = {
                let t = snapshot::lock(&s.table);
                (t.version, t.caught_up && !t.is_empty())
            };
            if !ready {
                continue;
            }
            let due = s
                .schedule
                .due(&self.fact_days, clock_day, version, now, every);
            for day in due {
                let s = &mut self.snapshots[i];
                let built = {
                    let t = snapshot::lock(&s.table);
                    t.batch().map(|b| (t.version, b))
                };
                let (version, Some((schema, batch))) =
                    built.with_context(|| format!("snapshot of {}", s.topic))?
                else {
                    continue;
                };
                let rows = batch.num_rows();
                let body = parquet_bytes(&schema, &[batch], &self.args.parquet)?;
                let rel = format!(
                    "{}/{}",
                    snapshot::snapshot_dir(&s.topic, day),
                    snapshot::SNAPSHOT_FILE
                );
                put_retrying(&self.lake, &rel, body, "snapshot", Some(self.shutdown)).await?;
                s.schedule.done(day, version, now);
                SinkMetrics::get()
                    .rows_written
                    .with_label_values(&[SINK, "snapshot"])
                    .inc_by(rows as u64);
                tracing::debug!(rel, rows, version, "snapshot written");
            }
        }
        Ok(())
    }

    /// Applies the pause rule to an alert record (see [`crate::gate`]).
    async fn gate_alert(&mut self, msg: &OwnedMessage) -> anyhow::Result<()> {
        let Some(payload) = msg.payload() else {
            return Ok(());
        };
        let alert = match self.alert_dec.decode(payload).await {
            Ok(a) => a,
            // The generic decode above succeeded: an alert this build cannot read is no breach.
            Err(e) => {
                tracing::warn!(error = %e, "alert not readable for the quality pause");
                return Ok(());
            }
        };
        match qgate::decide(self.args.quality_pause, self.paused, &alert) {
            Decision::Nothing => {
                if self.paused
                    && alert.alert_type == cartstream_events::types::AlertType::DataQuality
                {
                    qgate::lock(&self.gate).breaches += 1;
                }
            }
            Decision::Pause => {
                tracing::warn!(alert = %alert.alert_id, message = %alert.message, "data-quality gate breached: lake sink paused (nothing is committed until it resumes)");
                self.paused = true;
                {
                    let mut g = qgate::lock(&self.gate);
                    g.paused_by = Some(alert.alert_id.clone());
                    g.breaches = 1;
                    g.resume_requested = false;
                    g.pauses += 1;
                }
                GateMetrics::get().paused.set(1);
                GateMetrics::get()
                    .events
                    .with_label_values(&["pause"])
                    .inc();
                self.set_fetching(false);
            }
            Decision::Resume => self.resume("resume_clear").await?,
        }
        Ok(())
    }

    /// Pauses (or resumes) fetching of every owned partition except the alerts'.
    fn set_fetching(&self, on: bool) {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (t, p) in self.parts.keys() {
            if *t != self.alerts_topic {
                tpl.add_partition(t, *p);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let r = if on {
            self.consumer.resume(&tpl)
        } else {
            self.consumer.pause(&tpl)
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, on, "pausing/resuming fetches failed");
        }
    }

    /// Ends a pause: fetching again, and the alert partitions flushed at once (so a restart does
    /// not pause again on the same alert).
    async fn resume(&mut self, why: &'static str) -> anyhow::Result<()> {
        self.paused = false;
        {
            let mut g = qgate::lock(&self.gate);
            tracing::info!(paused_by = ?g.paused_by, breaches = g.breaches, why, "lake sink resumed");
            g.paused_by = None;
            g.resume_requested = false;
            g.resumes += 1;
        }
        GateMetrics::get().paused.set(0);
        GateMetrics::get().events.with_label_values(&[why]).inc();
        self.set_fetching(true);
        let keys: Vec<_> = self
            .parts
            .iter()
            .filter(|(k, p)| k.0 == self.alerts_topic && p.first.is_some() && p.cut.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.flush(&k).await?;
        }
        Ok(())
    }

    fn part(&mut self, key: &(String, i32)) -> &mut Part {
        self.parts
            .entry(key.clone())
            .or_insert_with(|| Part::new(key.0.clone(), key.1, None))
    }

    /// Steps 1-3 of the commit protocol for one partition.
    async fn flush(&mut self, key: &(String, i32)) -> anyhow::Result<()> {
        let Some(part) = self.parts.get_mut(key) else {
            return Ok(());
        };
        let Some(first) = part.first else {
            return Ok(());
        };
        let last = part.last;
        let records = std::mem::take(&mut part.records);
        let schema_id = part.schema_id;
        let had_cut = part.cut.is_some();
        let (topic, partition) = (part.topic.clone(), part.partition);
        *part = Part::new(topic.clone(), partition, None);

        // 1. The intent (not needed when replaying a recorded one: it is already there).
        if !had_cut {
            let mut intent = BTreeMap::new();
            intent.insert(
                (topic.clone(), partition),
                (first, Some(format!("{CUT_PREFIX}{last}"))),
            );
            source::commit(&self.consumer, &intent).context("recording the flush intent")?;
        }
        // 2. Upload one file per hour.
        if let Some(id) = schema_id {
            let plan = self
                .schemas
                .plan(id)
                .await
                .map_err(|_| anyhow::anyhow!("schema {id} vanished from the cache"))?;
            let mut by_hour: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
            let fact = !self.snapshots.iter().any(|s| s.topic == topic);
            for r in &records {
                if fact {
                    self.fact_days.insert(snapshot::day_of(r.time_ms));
                    self.clock_ms = Some(self.clock_ms.map_or(r.time_ms, |c| c.max(r.time_ms)));
                }
                by_hour
                    .entry(hour_dir(&topic, r.time_ms))
                    .or_default()
                    .push(&r.value);
            }
            for (dir, rows) in by_hour {
                let batch = avro_arrow::record_batch(&plan.arrow, &rows)
                    .with_context(|| format!("building a batch of {topic}[{partition}]"))?;
                let body = parquet_bytes(&plan.arrow, &[batch], &self.args.parquet)?;
                let rel = format!("{dir}/{}", file_name(partition, first, last));
                put_retrying(&self.lake, &rel, body, "flush", Some(self.shutdown)).await?;
                SinkMetrics::get()
                    .rows_written
                    .with_label_values(&[SINK, "parquet"])
                    .inc_by(rows.len() as u64);
                self.uploads += 1;
                if self.exit_after_uploads == Some(self.uploads) {
                    tracing::warn!(rel, "CARTSTREAM_LAKE_EXIT_AFTER_UPLOADS: exiting after an upload, before its commit");
                    std::process::exit(86);
                }
            }
        }
        // 3. The offsets the upload covers.
        let mut done = BTreeMap::new();
        done.insert((topic.clone(), partition), (last + 1, Some(String::new())));
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            match source::commit(&self.consumer, &done) {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    SinkMetrics::get()
                        .retries
                        .with_label_values(&[SINK, "commit"])
                        .inc();
                    if attempt >= 5 {
                        // The intent stays: a restart cuts at `last` again, rewriting the same
                        // files. Exiting is safe; going on would break the intent's meaning.
                        return Err(e.context("committing after an upload"));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        SinkMetrics::get().commits.with_label_values(&[SINK]).inc();
        tracing::debug!(
            topic,
            partition,
            first,
            last,
            rows = records.len(),
            "flushed"
        );
        Ok(())
    }
}

/// One scheduled compaction of every input topic's closed hours, for the partitions this
/// instance owns now, in a task of its own (the sink goes on writing: compaction only merges
/// files it listed, and the reader rule covers a flush rewritten meanwhile).
fn spawn_compaction(sink: &Sink<'_>, owned: &Owned) -> tokio::task::JoinHandle<()> {
    let lake = sink.lake.clone();
    let jobs: Vec<CompactArgs> = sink
        .inputs
        .iter()
        .filter_map(|topic| {
            let parts = owned.partitions(topic);
            (!parts.is_empty()).then(|| CompactArgs {
                parquet: sink.args.parquet.clone(),
                topic: topic.clone(),
                target_bytes: sink.args.compact_target_bytes,
                closed_after_secs: sink.args.compact_closed_after_secs,
                partitions: Some(parts),
            })
        })
        .collect();
    tokio::spawn(async move {
        let m = SinkMetrics::get();
        let started = Instant::now();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut outcome = "ok";
        for args in &jobs {
            match compact(&lake, args, now).await {
                Ok(r) => {
                    if r.merged_files + r.covered_deleted > 0 {
                        tracing::info!(topic = %args.topic, hours = r.hours, merged = r.merged_files, inputs = r.inputs_merged, rows = r.rows, covered_deleted = r.covered_deleted, "compacted");
                    }
                }
                Err(e) => {
                    outcome = "error";
                    tracing::warn!(topic = %args.topic, error = %format!("{e:#}"), "scheduled compaction failed; the next run retries");
                }
            }
        }
        m.compactions.with_label_values(&[SINK, outcome]).inc();
        m.compaction_seconds
            .with_label_values(&[SINK])
            .observe(started.elapsed().as_secs_f64());
    })
}

// ------------------------------------------------------------------------------------------
// Compaction

/// Flags of `cartstream-lake-sink compact`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompactArgs {
    #[command(flatten)]
    pub parquet: ParquetArgs,
    /// Topic whose hours to compact (full name, with any prefix).
    #[arg(long, env = "COMPACT_TOPIC", default_value = "purchases.enriched")]
    pub topic: String,
    /// Merge up to this many bytes of input per output file.
    #[arg(long, env = "COMPACT_TARGET_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub target_bytes: u64,
    /// An hour is closed (compactable) this many seconds after its end.
    #[arg(long, env = "COMPACT_CLOSED_AFTER_SECS", default_value_t = 3600)]
    pub closed_after_secs: i64,
    /// Only these Kafka partitions' files (the scheduled compaction: those the instance owns).
    #[arg(skip)]
    pub partitions: Option<Vec<i32>>,
}

/// What `compact` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub hours: usize,
    pub merged_files: usize,
    pub inputs_merged: usize,
    pub covered_deleted: usize,
    pub rows: u64,
}

/// Groups the live files of one partition (sorted by first offset) into runs to merge: runs of
/// consecutive files whose sizes add up to at most `target` (a run of one is left alone).
pub fn plan_runs(files: &[(i64, i64, u64)], target: u64) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut size = 0u64;
    for (i, f) in files.iter().enumerate() {
        if i > start && size + f.2 > target {
            if i - start > 1 {
                runs.push(start..i);
            }
            start = i;
            size = 0;
        }
        size += f.2;
    }
    if files.len() - start > 1 {
        runs.push(start..files.len());
    }
    runs
}

struct Group {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    inputs: Vec<(i64, i64, String)>,
}

/// Deletes a file; one already gone (another compaction got there first) is fine.
async fn delete_if_there(lake: &Lake, rel: &str) -> anyhow::Result<()> {
    match lake.store.delete(&lake.path(rel)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting {rel}")),
    }
}

/// Merges the small files of every closed hour of `args.topic` (see the module docs).
pub async fn compact(
    lake: &Lake,
    args: &CompactArgs,
    now_ms: i64,
) -> anyhow::Result<CompactReport> {
    let m = SinkMetrics::get();
    let mut report = CompactReport::default();
    let files = lake.list(&format!("topic={}/", args.topic)).await?;
    let mut by_dir: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (path, size) in files {
        if let Some((dir, name)) = path.rsplit_once('/') {
            by_dir
                .entry(dir.to_string())
                .or_default()
                .push((name.to_string(), size));
        }
    }
    for (dir, files) in by_dir {
        let Some(start) = hour_start(&dir) else {
            continue;
        };
        if start + 3_600_000 + args.closed_after_secs * 1000 > now_ms {
            continue;
        }
        report.hours += 1;
        let parsed: Vec<(String, u64, (i32, i64, i64))> = files
            .into_iter()
            .filter_map(|(n, s)| parse_file_name(&n).map(|r| (n, s, r)))
            .collect();
        let ranges: Vec<(i32, i64, i64)> = parsed.iter().map(|f| f.2).collect();
        let cov = covered(&ranges);
        let mut live: BTreeMap<i32, Vec<(i64, i64, u64, String)>> = BTreeMap::new();
        for ((name, size, (p, f, l)), c) in parsed.into_iter().zip(cov) {
            if args.partitions.as_ref().is_some_and(|ps| !ps.contains(&p)) {
                continue;
            }
            if c {
                delete_if_there(lake, &format!("{dir}/{name}")).await?;
                report.covered_deleted += 1;
                m.compacted_files
                    .with_label_values(&[SINK, "covered_deleted"])
                    .inc();
            } else {
                live.entry(p).or_default().push((f, l, size, name));
            }
        }
        for (p, mut files) in live {
            files.sort();
            let sizes: Vec<(i64, i64, u64)> = files.iter().map(|f| (f.0, f.1, f.2)).collect();
            for run in plan_runs(&sizes, args.target_bytes) {
                // A file of another schema than the one before starts a new group: each merged
                // file has one schema.
                let mut groups: Vec<Group> = Vec::new();
                for f in &files[run] {
                    let bytes = lake
                        .store
                        .get(&lake.path(&format!("{dir}/{}", f.3)))
                        .await?
                        .bytes()
                        .await?;
                    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
                    let s = builder.schema().clone();
                    let reader = builder.build()?;
                    if groups
                        .last()
                        .is_none_or(|g| g.schema.fields() != s.fields())
                    {
                        groups.push(Group {
                            schema: s,
                            batches: Vec::new(),
                            inputs: Vec::new(),
                        });
                    }
                    let Some(g) = groups.last_mut() else {
                        continue;
                    };
                    for b in reader {
                        g.batches.push(b?);
                    }
                    g.inputs.push((f.0, f.1, f.3.clone()));
                }
                for g in groups.into_iter().filter(|g| g.inputs.len() >= 2) {
                    let first = g.inputs.iter().map(|f| f.0).min().unwrap_or(0);
                    let last = g.inputs.iter().map(|f| f.1).max().unwrap_or(0);
                    let rows: usize = g.batches.iter().map(RecordBatch::num_rows).sum();
                    let body = parquet_bytes(&g.schema, &g.batches, &args.parquet)?;
                    let rel = format!("{dir}/{}", file_name(p, first, last));
                    // Merged file first, then the inputs (now covered) go.
                    put_retrying(lake, &rel, body, "compaction", None).await?;
                    if std::env::var_os("CARTSTREAM_COMPACT_EXIT_AFTER_MERGE").is_some() {
                        // Debug hook of the crash test: the merged file is up, its inputs not deleted.
                        tracing::warn!(rel, "CARTSTREAM_COMPACT_EXIT_AFTER_MERGE: exiting before deleting the inputs");
                        std::process::exit(86);
                    }
                    for f in &g.inputs {
                        delete_if_there(lake, &format!("{dir}/{}", f.2)).await?;
                    }
                    m.compacted_files.with_label_values(&[SINK, "merged"]).inc();
                    m.compacted_files
                        .with_label_values(&[SINK, "inputs"])
                        .inc_by(g.inputs.len() as u64);
                    report.merged_files += 1;
                    report.inputs_merged += g.inputs.len();
                    report.rows += rows as u64;
                    m.rows_written
                        .with_label_values(&[SINK, "compaction"])
                        .inc_by(rows as u64);
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hour_dirs_are_hive_partitions_in_utc() {
        assert_eq!(hour_dir("t", 0), "topic=t/date=1970-01-01/hour=00");
        assert_eq!(hour_dir("t", -1), "topic=t/date=1969-12-31/hour=23");
        assert_eq!(
            hour_dir("purchases.enriched", 1_795_996_799_999),
            "topic=purchases.enriched/date=2026-11-29/hour=23"
        );
        assert_eq!(
            hour_start("topic=t/date=2026-11-29/hour=23"),
            Some(1_795_993_200_000)
        );
    }

    #[test]
    fn file_names_round_trip_and_reject_garbage() {
        assert_eq!(parse_file_name(&file_name(3, 10, 99)), Some((3, 10, 99)));
        for bad in [
            "x.parquet",
            "1-2.parquet",
            "1-9-3.parquet",
            "1-2-3.csv",
            "a-1-2.parquet",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
        assert_eq!(parse_cut("lake:cut=42"), Some(42));
        assert_eq!(parse_cut(""), None);
    }

    #[test]
    fn covered_files_are_those_inside_another_range_of_the_same_partition() {
        let files = [
            (0, 0, 99),
            (0, 100, 199),
            (0, 0, 199),
            (1, 0, 99),
            (0, 200, 299),
        ];
        assert_eq!(covered(&files), vec![true, true, false, false, false]);
    }

    #[test]
    fn runs_respect_the_target() {
        let f = |s: &[u64]| -> Vec<(i64, i64, u64)> {
            s.iter()
                .enumerate()
                .map(|(i, s)| (i as i64 * 10, i as i64 * 10 + 9, *s))
                .collect()
        };
        assert_eq!(plan_runs(&f(&[10, 10, 10]), 100), vec![0..3]);
        assert_eq!(plan_runs(&f(&[60, 60, 60, 10]), 100), vec![2..4]);
        assert_eq!(
            plan_runs(&f(&[200, 10]), 100),
            Vec::<std::ops::Range<usize>>::new()
        );
        assert!(plan_runs(&f(&[]), 100).is_empty());
    }

    proptest! {
        /// Merging any runs of a partition's files and keeping the inputs (a crash before the
        /// deletes): the files a reader keeps cover every offset exactly once.
        #[test]
        fn the_reader_rule_sees_each_offset_once(
            lens in proptest::collection::vec(1i64..20, 1..20),
            merges in proptest::collection::vec((0usize..20, 1usize..6), 0..4),
        ) {
            let mut files = Vec::new();
            let mut o = 0;
            for l in &lens {
                files.push((0, o, o + l - 1));
                o += l;
            }
            let base = files.clone();
            for (start, n) in merges {
                if start >= base.len() { continue; }
                let end = (start + n).min(base.len());
                let merged = (0, base[start].1, base[end - 1].2);
                if !files.contains(&merged) { files.push(merged); }
            }
            let cov = covered(&files);
            let mut seen = vec![0u32; o as usize];
            for (f, c) in files.iter().zip(&cov) {
                if !c {
                    for x in f.1..=f.2 { seen[x as usize] += 1; }
                }
            }
            // Overlapping merges (that compaction never makes: it merges disjoint runs) aside,
            // every offset is read exactly once.
            let overlapping = files.iter().zip(&cov).filter(|(_, c)| !**c).any(|(a, _)| {
                files.iter().zip(&cov).filter(|(_, c)| !**c).any(|(b, _)| a != b && a.1 <= b.2 && b.1 <= a.2)
            });
            if !overlapping {
                prop_assert!(seen.iter().all(|s| *s == 1), "{files:?} {seen:?}");
            }
        }
    }
}
