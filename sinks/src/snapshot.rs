//! Daily snapshots of the dimension tables (`catalog.products`, `catalog.users`) in the lake:
//! the dimensions of the lake's star schema.
//!
//! # What a snapshot is
//!
//! `<lake>/snapshot=<topic>/date=YYYY-MM-DD/snapshot.parquet` holds every key of the compacted
//! dimension topic once, with its latest value, as the lake sink knew it on that date. Dates are
//! the lake's own event-time dates (those of the fact records it writes), not the wall clock, so a
//! replayed year gets one snapshot per replayed day and a BI tool joins the facts of a date to the
//! dimension snapshot of the same date. (Daily snapshots, not SCD type 2: each date is a complete
//! table; the changelog itself can still be written with `--topics catalog.products`.)
//!
//! # How it is kept
//!
//! A reader of its own (no consumer group, nothing committed) reads each dimension topic from
//! its beginning into a table keyed by the Kafka key (a tombstone removes the key), like the
//! enricher's tables; no snapshot is written before it has reached the ends of the topic seen
//! at start. The sink then writes, on its 500 ms tick ([`Schedule`]):
//!
//! - the snapshot of every date its fact tables hold rows of (in the lake at start, or written
//!   since), once, when the lake has none yet;
//! - the snapshot of the current date (the date of the latest event time written), again each
//!   `--snapshot-every-secs` while the table changes, and once more when the current date moves
//!   on (its final state).
//!
//! A file is replaced in one put (atomic on a directory and on S3), so a reader sees a whole
//! snapshot, each key once. A date whose snapshot a previous run left and that is behind the
//! current date is never rewritten: it holds the state of its day (within
//! `--snapshot-every-secs` of its end if that run stopped during the day). Values written with
//! older writer schemas are resolved to the newest one (the registry's BACKWARD rule guarantees
//! it can), so each snapshot has one schema.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::Schema;
use apache_avro::types::Value;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use cartstream_events::{wire, Registry, RegistryError};
use cartstream_kafka::KafkaArgs;
use cartstream_runtime::Shutdown;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::avro_arrow;
use crate::metrics::SinkMetrics;

pub const SNAPSHOT_FILE: &str = "snapshot.parquet";
const DAY_MS: i64 = 86_400_000;

/// The epoch day of an epoch-millisecond time (UTC).
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// `snapshot=<topic>/date=YYYY-MM-DD` of an epoch day.
pub fn snapshot_dir(topic: &str, day: i64) -> String {
    format!(
        "snapshot={topic}/date={}",
        cartstream_events::time::utc_date(day * DAY_MS)
    )
}

/// The epoch day of a path holding a `date=YYYY-MM-DD` segment.
pub fn parse_day(path: &str) -> Option<i64> {
    let date = path.split('/').find_map(|s| s.strip_prefix("date="))?;
    let mut it = date.split('-');
    let (y, m, d) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    Some(cartstream_events::time::days_from_civil(y, m, d))
}

// ------------------------------------------------------------------------------------------
// When to write (pure)

/// Which snapshot dates of one dimension are due (see the module docs). Times are milliseconds
/// of any monotonic clock.
#[derive(Debug, Default)]
pub struct Schedule {
    /// Dates with a snapshot in the lake before this run.
    pub existing: BTreeSet<i64>,
    /// Dates written by this run: (table version written, when).
    written: BTreeMap<i64, (u64, i64)>,
    clock_day: Option<i64>,
}

impl Schedule {
    pub fn new(existing: BTreeSet<i64>) -> Self {
        Schedule {
            existing,
            ..Schedule::default()
        }
    }

    /// The dates to write now: `days` are the dates the fact tables got rows of, `clock_day`
    /// the date of the latest event time written, `version` the table's current version.
    pub fn due(
        &mut self,
        days: &BTreeSet<i64>,
        clock_day: Option<i64>,
        version: u64,
        now: i64,
        every: i64,
    ) -> Vec<i64> {
        let mut out = BTreeSet::new();
        for d in days {
            if !self.existing.contains(d) && !self.written.contains_key(d) {
                out.insert(*d);
            }
        }
        if let Some(c) = clock_day {
            // The previous current date is over: its final state, if it changed since.
            if let Some(p) = self.clock_day.filter(|p| *p < c) {
                if self.written.get(&p).is_none_or(|(v, _)| *v != version) {
                    out.insert(p);
                }
            }
            match self.written.get(&c) {
                None => {
                    out.insert(c);
                }
                Some((v, at)) if *v != version && now - at >= every => {
                    out.insert(c);
                }
                Some(_) => {}
            }
            if self.clock_day.is_none_or(|p| p < c) {
                self.clock_day = Some(c);
            }
        }
        out.into_iter().collect()
    }

    /// Records that `day`'s snapshot of table version `version` is in the lake.
    pub fn done(&mut self, day: i64, version: u64, now: i64) {
        self.written.insert(day, (version, now));
    }
}

// ------------------------------------------------------------------------------------------
// The table

/// A dimension topic as a table: the latest value of each key.
#[derive(Default)]
pub struct DimTable {
    /// Kafka key -> (writer schema id, value).
    rows: BTreeMap<Vec<u8>, (u32, Value)>,
    schemas: HashMap<u32, (&'static Schema, SchemaRef)>,
    /// Changes applied so far.
    pub version: u64,
    /// Whether the reader reached the ends of the topic it saw at start.
    pub caught_up: bool,
}

impl DimTable {
    pub fn upsert(
        &mut self,
        key: Vec<u8>,
        id: u32,
        schema: (&'static Schema, SchemaRef),
        v: Value,
    ) {
        self.schemas.entry(id).or_insert(schema);
        self.rows.insert(key, (id, v));
        self.version += 1;
    }

    pub fn remove(&mut self, key: &[u8]) {
        if self.rows.remove(key).is_some() {
            self.version += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every row as one batch of the newest writer schema (`None` when empty), keys in order.
    pub fn batch(&self) -> anyhow::Result<Option<(SchemaRef, RecordBatch)>> {
        let Some(newest) = self.rows.values().map(|(id, _)| *id).max() else {
            return Ok(None);
        };
        let (schema, arrow) = self
            .schemas
            .get(&newest)
            .ok_or_else(|| anyhow::anyhow!("schema {newest} of a row is not kept"))?;
        let mut resolved = Vec::new();
        for (id, v) in self.rows.values() {
            if *id != newest {
                resolved.push(v.clone().resolve(schema).map_err(|e| {
                    anyhow::anyhow!("resolving a value of schema {id} to schema {newest}: {e}")
                })?);
            }
        }
        let mut older = resolved.iter();
        let mut refs = Vec::with_capacity(self.rows.len());
        for (id, v) in self.rows.values() {
            if *id == newest {
                refs.push(v);
            } else if let Some(r) = older.next() {
                refs.push(r);
            }
        }
        let batch = avro_arrow::record_batch(arrow, &refs)?;
        Ok(Some((arrow.clone(), batch)))
    }
}

pub type SharedTable = Arc<Mutex<DimTable>>;

pub fn lock(t: &SharedTable) -> std::sync::MutexGuard<'_, DimTable> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

// ------------------------------------------------------------------------------------------
// The reader

struct Readers {
    registry: Arc<Registry>,
    by_id: HashMap<u32, (GenericDatumReader<'static>, &'static Schema, SchemaRef)>,
}

enum Failure {
    Transient(String),
    Permanent(String),
}

impl Readers {
    async fn decode(&mut self, payload: &[u8]) -> Result<(u32, Value), Failure> {
        let (id, body) = wire::split(payload).map_err(|e| Failure::Permanent(format!("{e:?}")))?;
        if !self.by_id.contains_key(&id) {
            let writer = match self.registry.schema(id).await {
                Ok(s) => s,
                Err(e @ RegistryError::NotFound(_)) => {
                    return Err(Failure::Permanent(e.to_string()))
                }
                Err(e) if e.is_transient() => return Err(Failure::Transient(e.to_string())),
                Err(e) => return Err(Failure::Permanent(e.to_string())),
            };
            let arrow =
                avro_arrow::arrow_schema(writer).map_err(|e| Failure::Permanent(e.to_string()))?;
            let reader = GenericDatumReader::builder(writer)
                .human_readable(false)
                .build()
                .map_err(|e| Failure::Permanent(e.to_string()))?;
            self.by_id.insert(id, (reader, writer, arrow));
        }
        let (reader, _, _) = &self.by_id[&id];
        let mut rest = body;
        let v = reader
            .read_value(&mut rest)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        Ok((id, v))
    }
}

/// Reads `topic` from its beginning into `table` until shutdown (see the module docs).
pub async fn read_dimension(
    kafka: KafkaArgs,
    group: String,
    registry: Arc<Registry>,
    topic: String,
    table: SharedTable,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut conf = kafka.consumer(&group)?;
    conf.set("enable.auto.commit", "false");
    conf.set("enable.partition.eof", "true");
    let c: StreamConsumer = conf.create()?;
    let t = topic.clone();
    let (c, pending) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let md = c.fetch_metadata(Some(&t), Duration::from_secs(30))?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|x| x.name() == t)
            .flat_map(|x| x.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!parts.is_empty(), "dimension topic {t} has no partitions");
        let mut tpl = TopicPartitionList::new();
        let mut pending = BTreeSet::new();
        for p in parts {
            tpl.add_partition_offset(&t, p, Offset::Beginning)?;
            let (low, high) = c.fetch_watermarks(&t, p, Duration::from_secs(30))?;
            if high > low {
                pending.insert(p);
            }
        }
        c.assign(&tpl)?;
        Ok((c, pending))
    })
    .await??;
    let mut pending = pending;
    if pending.is_empty() {
        lock(&table).caught_up = true;
    }
    let mut readers = Readers {
        registry,
        by_id: HashMap::new(),
    };
    let m = SinkMetrics::get();
    while !shutdown.is_triggered() {
        let msg = tokio::select! {
            _ = shutdown.wait() => break,
            r = tokio::time::timeout(Duration::from_millis(500), c.recv()) => r,
        };
        let msg = match msg {
            Err(_) => continue,
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                if pending.remove(&p) && pending.is_empty() {
                    let mut t = lock(&table);
                    t.caught_up = true;
                    tracing::info!(topic, keys = t.len(), "dimension table read");
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, topic, "dimension read error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Ok(Ok(msg)) => msg.detach(),
        };
        if matches!(cartstream_kafka::control::control_of(&msg), Ok(Some(_))) {
            continue;
        }
        let key = msg.key().unwrap_or_default().to_vec();
        let Some(payload) = msg.payload().filter(|p| !p.is_empty()) else {
            lock(&table).remove(&key);
            continue;
        };
        let mut backoff = Duration::from_millis(200);
        let decoded = loop {
            match readers.decode(payload).await {
                Err(Failure::Transient(e)) => {
                    tracing::warn!(error = %e, "registry unavailable, retrying");
                    if crate::source::sleep_or_shutdown(backoff, &shutdown).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                other => break other,
            }
        };
        match decoded {
            Ok((id, v)) => {
                let (_, writer, arrow) = &readers.by_id[&id];
                lock(&table).upsert(key, id, (*writer, arrow.clone()), v);
            }
            Err(Failure::Permanent(e)) | Err(Failure::Transient(e)) => {
                // The enricher dead-letters what it cannot read of this topic; a snapshot only
                // leaves the record out, and says so.
                m.skipped
                    .with_label_values(&["lake", "bad_dimension"])
                    .inc();
                tracing::warn!(error = %e, topic, partition = msg.partition(), offset = msg.offset(), "dimension record not readable, left out of snapshots");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(d: &[i64]) -> BTreeSet<i64> {
        d.iter().copied().collect()
    }

    #[test]
    fn dirs_and_days_round_trip() {
        let day = day_of(1_795_132_800_000);
        assert_eq!(
            snapshot_dir("catalog.products", day),
            "snapshot=catalog.products/date=2026-11-20"
        );
        assert_eq!(
            parse_day("snapshot=catalog.products/date=2026-11-20/snapshot.parquet"),
            Some(day)
        );
        assert_eq!(day_of(-1), -1);
        assert_eq!(parse_day("snapshot=x/date=2026-1x-20"), None);
    }

    #[test]
    fn each_fact_date_once_and_the_current_date_while_it_changes() {
        let mut s = Schedule::new(days(&[5]));
        // Facts of days 5 (a snapshot exists from before) and 6, clock in 6.
        assert_eq!(s.due(&days(&[5, 6]), Some(6), 1, 0, 1000), vec![6]);
        s.done(6, 1, 0);
        // Nothing changed: nothing due.
        assert!(s.due(&days(&[5, 6]), Some(6), 1, 5000, 1000).is_empty());
        // Changed, but too soon; then due.
        assert!(s.due(&days(&[5, 6]), Some(6), 2, 500, 1000).is_empty());
        assert_eq!(s.due(&days(&[5, 6]), Some(6), 2, 1500, 1000), vec![6]);
        s.done(6, 2, 1500);
        // The clock moves to 7 after a change: 6 gets its final state at once, 7 its first.
        assert_eq!(s.due(&days(&[5, 6, 7]), Some(7), 3, 1600, 1000), vec![6, 7]);
        s.done(6, 3, 1600);
        s.done(7, 3, 1600);
        // A late fact of day 3 (no snapshot yet): written once with the current state.
        assert_eq!(s.due(&days(&[3, 5, 6, 7]), Some(7), 3, 1700, 1000), vec![3]);
        s.done(3, 3, 1700);
        assert!(s
            .due(&days(&[3, 5, 6, 7]), Some(7), 3, 9000, 1000)
            .is_empty());
        // The clock never goes back: an older clock day changes nothing.
        assert!(s
            .due(&days(&[3, 5, 6, 7]), Some(6), 3, 9000, 1000)
            .is_empty());
    }

    #[test]
    fn a_restart_rewrites_its_current_date_but_not_the_closed_ones() {
        let mut s = Schedule::new(days(&[5, 6]));
        assert_eq!(s.due(&days(&[5, 6]), Some(6), 7, 0, 1000), vec![6]);
        s.done(6, 7, 0);
        assert!(s.due(&days(&[5, 6]), Some(6), 7, 10, 1000).is_empty());
        // Closing a date unchanged since its last write writes nothing again.
        assert_eq!(s.due(&days(&[5, 6, 7]), Some(7), 7, 20, 1000), vec![7]);
    }

    #[test]
    fn a_table_keeps_the_latest_value_per_key_and_drops_tombstones() {
        use cartstream_events::types::User;
        use cartstream_events::Contract;
        let schema = Contract::User.schema();
        let arrow = avro_arrow::arrow_schema(schema).unwrap();
        let user = |id: i64, country: &str| {
            apache_avro::to_value(User {
                user_id: id,
                country: country.into(),
                device: "mobile".into(),
                segment: "new".into(),
                updated_at: 1,
            })
            .unwrap()
            .resolve(schema)
            .unwrap()
        };
        let mut t = DimTable::default();
        assert!(t.batch().unwrap().is_none());
        t.upsert(b"1".to_vec(), 1, (schema, arrow.clone()), user(1, "DE"));
        t.upsert(b"2".to_vec(), 1, (schema, arrow.clone()), user(2, "FR"));
        t.upsert(b"1".to_vec(), 1, (schema, arrow.clone()), user(1, "PL"));
        t.remove(b"2");
        t.remove(b"9");
        assert_eq!(t.version, 4);
        let (_, b) = t.batch().unwrap().unwrap();
        assert_eq!(b.num_rows(), 1);
        let c = arrow_array::cast::AsArray::as_string::<i32>(b.column_by_name("country").unwrap());
        assert_eq!(c.value(0), "PL");
    }
}
