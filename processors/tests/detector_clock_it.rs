//! How far a `kpi.windows` partition is complete, when two windower merge partitions write to
//! it and one is far behind the other (a fast replay: one merge partition's batches come first).
//!
//! The test writes `kpi.windows` itself, as two merge partitions of a windower would: "writer
//! 0" the windows of category `a` for 36 minutes, each minute followed by its watermark record
//! (`cartstream_kafka::control`, stream `window/60000/60000`) on every partition; then, once the
//! detector has read all that, "writer 1" the same for category `b`. Both categories have 5
//! purchases a minute and 40 in minute 30.
//!
//! - `--trend-clock marks` (the default): nothing is judged while writer 1 has sent no
//!   watermark; then both trends are raised with the baseline of 30 windows of 5, and no window
//!   is dead-lettered as late.
//! - `--trend-clock windows` (the newest window seen, the rule before watermark records): writer
//!   0's windows move the clock, writer 1's then arrive after their minutes were judged, are
//!   dead-lettered as `late_event`, and `b`'s trend is lost. This is what made two replays of one
//!   file raise different alerts.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cartstream_events::types::{Alert, DeadLetter, Dimension, KpiWindow};
use cartstream_events::{Decoder, Encoder};
use cartstream_kafka::control::{self, Mark, CONTROL_KEY};
use cartstream_kafka::{read, KafkaArgs, Topic, TopicNames};
use cartstream_testkit::{self as kit, ChildGuard};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const MINUTE: i64 = 60_000;
const T0: i64 = 1_790_000_040_000 - 1_790_000_040_000 % MINUTE;
const MINUTES: i64 = 36;
const BURST: i64 = 30;
const PARTITIONS: i32 = 4;

fn detector(prefix: &str, clock: &str) -> ChildGuard {
    let bin = env!("CARGO_BIN_EXE_cartstream-detector");
    ChildGuard(
        Command::new(bin)
            .args([
                "--topic-prefix",
                prefix,
                "--metrics-addr",
                "off",
                "--instance-id",
                "d0",
                "--idle-timeout",
                "3s",
                "--trend-clock",
                clock,
            ])
            .env("KAFKA_BROKERS", kit::brokers())
            .env("SCHEMA_REGISTRY_URL", kit::registry_url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}")),
    )
}

/// One merge partition's output: the category's windows, each followed by a watermark record.
async fn write(
    producer: &FutureProducer,
    enc: &Encoder<KpiWindow>,
    topic: &str,
    writer: i32,
    category: &str,
) {
    for m in 0..MINUTES {
        let start = T0 + m * MINUTE;
        let w = KpiWindow {
            window_start: start,
            window_end: start + MINUTE,
            window_size_ms: MINUTE,
            window_slide_ms: MINUTE,
            dimension: Dimension::Category,
            dimension_value: category.to_string(),
            views: 0,
            carts: 0,
            removals: 0,
            purchases: if m == BURST { 40 } else { 5 },
            units: 0,
            revenue: 0.0,
            currency: "EUR".into(),
            avg_price: None,
            conversion_rate: None,
            distinct_users: 1,
            is_final: true,
            emitted_at: start + 2 * MINUTE,
        };
        let key = format!("category/{category}/{start}/{MINUTE}/EUR");
        let payload = enc.encode(&w).unwrap();
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        let headers = control::owned_headers_of_stream(
            &Mark::progress(start + MINUTE).forwarded(writer, 2),
            Some("window/60000/60000"),
        );
        for p in 0..PARTITIONS {
            producer
                .send(
                    FutureRecord::to(topic)
                        .partition(p)
                        .key(CONTROL_KEY)
                        .payload(&[][..])
                        .headers(headers.clone()),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
}

async fn read_topic(kafka: &KafkaArgs, topic: String) -> Vec<rdkafka::message::OwnedMessage> {
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || {
        read::read_to_end(
            &k.consumer("it-verify").unwrap(),
            &topic,
            Duration::from_secs(60),
        )
        .unwrap()
    })
    .await
    .unwrap()
}

async fn alerts(kafka: &KafkaArgs, names: &TopicNames, dec: &Decoder<Alert>) -> Vec<Alert> {
    let mut out = Vec::new();
    for m in read_topic(kafka, names.name(Topic::Alerts)).await {
        out.push(dec.decode(m.payload().unwrap()).await.unwrap());
    }
    out
}

async fn late_events(kafka: &KafkaArgs, names: &TopicNames, dec: &Decoder<DeadLetter>) -> usize {
    let mut n = 0;
    for m in read_topic(kafka, names.name(Topic::DeadLetters)).await {
        let d = dec.decode(m.payload().unwrap()).await.unwrap();
        if d.error_code == "late_event" && d.stage == "detector" {
            n += 1;
        }
    }
    n
}

/// Runs the scenario with `--trend-clock clock`; returns (alerts before writer 1, alerts at
/// the end, late windows).
async fn scenario(clock: &str) -> (Vec<Alert>, Vec<Alert>, usize) {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("detclock");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, PARTITIONS, 1)
        .await
        .unwrap();
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    let enc = Encoder::<KpiWindow>::register(&registry, &names.subject(Topic::KpiWindows))
        .await
        .unwrap();
    let alert_dec = Decoder::<Alert>::new(registry.clone());
    let dlq_dec = Decoder::<DeadLetter>::new(registry.clone());
    let _det = detector(&prefix, clock);
    let kpi = names.name(Topic::KpiWindows);

    write(&producer, &enc, &kpi, 0, "a").await;
    // Until writer 0's burst is judged (windows clock) or long enough for the detector to have
    // read everything writer 0 wrote (marks clock: nothing can be judged yet).
    let deadline = Instant::now() + Duration::from_secs(if clock == "marks" { 25 } else { 90 });
    let mut before = Vec::new();
    while Instant::now() < deadline {
        before = alerts(&kafka, &names, &alert_dec).await;
        if !before.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    write(&producer, &enc, &kpi, 1, "b").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut after, mut late) = (Vec::new(), 0);
    while Instant::now() < deadline {
        after = alerts(&kafka, &names, &alert_dec).await;
        late = late_events(&kafka, &names, &dlq_dec).await;
        if after.len() >= 2 || late > 0 {
            // Let whatever else would come arrive.
            tokio::time::sleep(Duration::from_secs(4)).await;
            after = alerts(&kafka, &names, &alert_dec).await;
            late = late_events(&kafka, &names, &dlq_dec).await;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(_det);
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
    (before, after, late)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_partition_behind_the_others_loses_no_window_to_the_trend_rule() {
    let burst = format!("{}", T0 + BURST * MINUTE);
    let (before, after, late) = scenario("marks").await;
    for a in &after {
        eprintln!(
            "marks: {} baseline {:.2}: {}",
            a.alert_id, a.baseline, a.message
        );
    }
    assert!(
        before.is_empty(),
        "judged while a merge partition had not sent its watermark: {before:?}"
    );
    assert_eq!(late, 0, "windows dead-lettered as late");
    let mut ids: Vec<&str> = after.iter().map(|a| a.alert_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            format!("trend/category/a/{burst}"),
            format!("trend/category/b/{burst}")
        ]
    );
    for a in &after {
        assert!(
            (a.baseline - 5.0).abs() < 1e-9,
            "baseline of {} is {} (30 windows of 5 expected)",
            a.alert_id,
            a.baseline
        );
    }

    // The same input with the newest window seen as the clock: writer 1's windows come after
    // their minutes were judged.
    let (before, after, late) = scenario("windows").await;
    eprintln!(
        "windows: {} alerts before writer 1, {} after, {late} late",
        before.len(),
        after.len()
    );
    assert!(
        before
            .iter()
            .any(|a| a.alert_id == format!("trend/category/a/{burst}")),
        "writer 0's burst was not judged on its own windows: {before:?}"
    );
    assert!(late > 0, "no window of the writer behind was judged late");
    assert!(
        !after
            .iter()
            .any(|a| a.alert_id == format!("trend/category/b/{burst}")),
        "the writer behind had its trend judged although its windows came late"
    );
}
