//! Metrics of both sinks, labelled by sink (`scylla`, `lake`) and, where it is bounded, by
//! table or topic.

use std::sync::OnceLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};

pub struct SinkMetrics {
    /// Records read from Kafka, and their value bytes.
    pub consumed: IntCounterVec,
    pub consumed_bytes: IntCounterVec,
    /// Records consumed and written (rows upserted / rows in uploaded files), per target.
    pub rows_written: IntCounterVec,
    pub write_seconds: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub files_written: IntCounterVec,
    pub bytes_written: IntCounterVec,
    pub retries: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub commits: IntCounterVec,
    pub lag: IntGaugeVec,
    /// Records read and deliberately not written (control marks, early KPI window updates,
    /// unreadable dimension records), by reason.
    pub skipped: IntCounterVec,
    /// Scheduled compaction runs by outcome, their duration, and what they did.
    pub compactions: IntCounterVec,
    pub compaction_seconds: HistogramVec,
    pub compacted_files: IntCounterVec,
}

impl SinkMetrics {
    pub fn get() -> &'static SinkMetrics {
        static M: OnceLock<SinkMetrics> = OnceLock::new();
        M.get_or_init(|| SinkMetrics::register().expect("sink metrics register once"))
    }

    /// Creates the series a sink exports at zero, so dashboards and alert rules see a sink that
    /// has not retried (or uploaded) yet as 0 rather than as no data.
    pub fn zero(&self, sink: &str, retries: &[&str], file_kinds: &[&str]) {
        self.consumed.with_label_values(&[sink]);
        self.commits.with_label_values(&[sink]);
        self.in_flight.with_label_values(&[sink]);
        for what in retries {
            self.retries.with_label_values(&[sink, what]);
        }
        for kind in file_kinds {
            self.files_written.with_label_values(&[sink, kind]);
            self.bytes_written.with_label_values(&[sink, kind]);
        }
    }

    fn register() -> prometheus::Result<Self> {
        Ok(SinkMetrics {
            consumed: register_int_counter_vec!(
                "cartstream_sink_consumed_total",
                "Records read from the input topics (written, dead-lettered or buffered)",
                &["sink"]
            )?,
            consumed_bytes: register_int_counter_vec!(
                "cartstream_sink_consumed_bytes_total",
                "Value bytes of the records read from the input topics",
                &["sink"]
            )?,
            rows_written: register_int_counter_vec!(
                "cartstream_sink_rows_written_total",
                "Rows written (CQL upserts, or rows of uploaded Parquet files), by sink and target",
                &["sink", "target"]
            )?,
            write_seconds: register_histogram_vec!(
                "cartstream_sink_write_seconds",
                "Latency of one write (a CQL upsert, or one Parquet upload), retries included",
                &["sink"],
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0
                ]
            )?,
            in_flight: register_int_gauge_vec!(
                "cartstream_sink_in_flight_writes",
                "Writes started and not finished",
                &["sink"]
            )?,
            files_written: register_int_counter_vec!(
                "cartstream_sink_files_written_total",
                "Files uploaded to the object store, by kind (flush or compaction)",
                &["sink", "kind"]
            )?,
            bytes_written: register_int_counter_vec!(
                "cartstream_sink_bytes_written_total",
                "Bytes uploaded to the object store",
                &["sink", "kind"]
            )?,
            retries: register_int_counter_vec!(
                "cartstream_sink_retries_total",
                "Writes or commits retried after a transient error",
                &["sink", "what"]
            )?,
            dead_lettered: register_int_counter_vec!(
                "cartstream_sink_dead_lettered_total",
                "Records sent to the dead-letter topic, by error code",
                &["sink", "code"]
            )?,
            commits: register_int_counter_vec!(
                "cartstream_sink_commits_total",
                "Offset commits after successful writes",
                &["sink"]
            )?,
            lag: register_int_gauge_vec!(
                "cartstream_sink_commit_lag_records",
                "Records between the committed offset and the end of each input partition",
                &["sink", "topic", "partition"]
            )?,
            skipped: register_int_counter_vec!(
                "cartstream_sink_skipped_total",
                "Records read and deliberately not written, by reason (control, early_window, bad_dimension)",
                &["sink", "reason"]
            )?,
            compactions: register_int_counter_vec!(
                "cartstream_sink_compactions_total",
                "Scheduled compaction runs of the lake sink, by outcome (ok, error)",
                &["sink", "outcome"]
            )?,
            compaction_seconds: register_histogram_vec!(
                "cartstream_sink_compaction_seconds",
                "Duration of one scheduled compaction run over every input topic",
                &["sink"],
                vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0]
            )?,
            compacted_files: register_int_counter_vec!(
                "cartstream_sink_compacted_files_total",
                "Files compaction handled: inputs merged, merged files written, covered leftovers deleted",
                &["sink", "what"]
            )?,
        })
    }
}
