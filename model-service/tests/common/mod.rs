//! Scaffolding shared by the model service's integration tests: a running service (killed on
//! drop), waiting on its metrics, and writing synthetic kpi windows to the real broker.

#![allow(dead_code)] // each test binary uses a part
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use cartstream_events::types::KpiWindow;
use cartstream_events::Encoder;
use cartstream_model_service::synth::Synth;
use cartstream_testkit as kit;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// A model service started by a test.
pub struct Service {
    pub child: Child,
    /// Its `/metrics` URL and its API base URL.
    pub metrics: String,
    pub api: String,
    /// Where its log goes, when not to the test's stderr.
    pub log: Option<PathBuf>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Until `ok` holds for the service's metrics (or `timeout`: fails with the model metrics).
pub async fn wait_for(
    svc: &mut Service,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = svc.child.try_wait().unwrap() {
            panic!("the service exited ({status}) while waiting for {what}");
        }
        let m = kit::scrape_metrics(&svc.metrics).await;
        if ok(&m) {
            return m;
        }
        if Instant::now() > deadline {
            let interesting: Vec<_> = m
                .iter()
                .filter(|(k, _)| k.starts_with("cartstream_model_") && !k.contains("bucket"))
                .collect();
            panic!("timed out waiting for {what}; metrics: {interesting:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The category windows of `periods` (of `period_ms`), keyed by series and window start.
fn records(
    enc: &Encoder<KpiWindow>,
    synth: &Synth,
    period_ms: i64,
    periods: std::ops::Range<i64>,
) -> Vec<(String, Vec<u8>)> {
    let mut records = Vec::new();
    for idx in periods {
        for w in synth.windows(period_ms, idx) {
            let key = format!("category/{}/{}", w.dimension_value, w.window_start);
            records.push((key, enc.encode(&w).unwrap()));
        }
    }
    records
}

/// Writes the windows of `periods` as fast as the producer takes them (a backlog).
pub async fn send_periods(
    producer: &FutureProducer,
    topic: &str,
    enc: &Encoder<KpiWindow>,
    synth: &Synth,
    period_ms: i64,
    periods: std::ops::Range<i64>,
) {
    let records = records(enc, synth, period_ms, periods);
    for chunk in records.chunks(2000) {
        let sends = chunk.iter().map(|(k, p)| {
            producer.send(
                FutureRecord::to(topic).key(k).payload(p),
                Duration::from_secs(30),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).unwrap();
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Writes the windows of `periods` one at a time, each acknowledged before the next (a live
/// stream: the service reads them as they come and stays caught up).
pub async fn stream_periods(
    producer: &FutureProducer,
    topic: &str,
    enc: &Encoder<KpiWindow>,
    synth: &Synth,
    period_ms: i64,
    periods: std::ops::Range<i64>,
) {
    for (key, payload) in records(enc, synth, period_ms, periods) {
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}
