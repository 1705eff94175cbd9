//! Metrics every processor exports, labelled by stage.

use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
    GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec,
};
use std::sync::OnceLock;

pub struct StageMetrics {
    pub consumed: IntCounterVec,
    pub produced: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub deduplicated: IntCounterVec,
    pub latency: HistogramVec,
    pub batch_seconds: HistogramVec,
    pub lag: IntGaugeVec,
    pub transactions: IntCounterVec,
    pub rebalances: IntCounterVec,
    pub retries: IntCounterVec,
    pub stale_records: IntCounterVec,
    /// Event-time stages: wall clock minus the stage's watermark.
    pub watermark_lag: GaugeVec,
    /// Event-time stages: windows (or sessions) holding data and not final yet.
    pub open_windows: IntGaugeVec,
    /// Event-time stages: events later than the grace period, set aside to a late topic.
    pub late_events: IntCounterVec,
    pub end_marks: IntCounterVec,
}

impl StageMetrics {
    /// The process-wide instance (metrics are registered once per process).
    pub fn get() -> &'static StageMetrics {
        static M: OnceLock<StageMetrics> = OnceLock::new();
        M.get_or_init(|| StageMetrics::register().expect("stage metrics register once"))
    }

    fn register() -> prometheus::Result<Self> {
        Ok(StageMetrics {
            consumed: register_int_counter_vec!(
                "cartstream_processor_consumed_total",
                "Input records consumed and processed in a committed batch",
                &["stage"]
            )?,
            produced: register_int_counter_vec!(
                "cartstream_processor_produced_total",
                "Output records committed, by topic kind (data or changelog)",
                &["stage", "output"]
            )?,
            dead_lettered: register_int_counter_vec!(
                "cartstream_processor_dead_lettered_total",
                "Input records sent to the dead-letter topic, by error code",
                &["stage", "code"]
            )?,
            deduplicated: register_int_counter_vec!(
                "cartstream_processor_deduplicated_total",
                "Input records dropped as duplicates",
                &["stage"]
            )?,
            latency: register_histogram_vec!(
                "cartstream_processor_latency_seconds",
                "Time from a record's Kafka timestamp to the commit of its batch",
                &["stage"],
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
            )?,
            batch_seconds: register_histogram_vec!(
                "cartstream_processor_batch_seconds",
                "Time to process and commit one batch",
                &["stage"],
                vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
            )?,
            lag: register_int_gauge_vec!(
                "cartstream_processor_consumer_lag_records",
                "Records between the committed position and the end of each input partition",
                &["stage", "topic", "partition"]
            )?,
            transactions: register_int_counter_vec!(
                "cartstream_processor_transactions_total",
                "Batches committed or aborted",
                &["stage", "result"]
            )?,
            rebalances: register_int_counter_vec!(
                "cartstream_processor_rebalances_total",
                "Partition assignments and revocations",
                &["stage", "kind"]
            )?,
            retries: register_int_counter_vec!(
                "cartstream_processor_retries_total",
                "Batches retried after a transient error",
                &["stage"]
            )?,
            stale_records: register_int_counter_vec!(
                "cartstream_processor_stale_records_total",
                "Records delivered for a partition no longer assigned, dropped (its new owner reads them)",
                &["stage"]
            )?,
            watermark_lag: register_gauge_vec!(
                "cartstream_processor_watermark_lag_seconds",
                "Wall clock minus the event-time watermark (event-time stages)",
                &["stage"]
            )?,
            open_windows: register_int_gauge_vec!(
                "cartstream_processor_open_windows",
                "Windows or sessions holding data and not final yet (event-time stages)",
                &["stage"]
            )?,
            end_marks: register_int_counter_vec!(
                "cartstream_processor_end_of_input_marks_total",
                "End-of-input marks received: complete (the partition's end moved) or partial (waiting for other upstream partitions)",
                &["stage", "state"]
            )?,
            late_events: register_int_counter_vec!(
                "cartstream_processor_late_events_total",
                "Events later than the grace period, sent to a late topic (never dropped)",
                &["stage"]
            )?,
        })
    }
}
