//! Data-quality gates on the real stack: known enriched events (and cleaner dead letters) on the
//! real topics -> the real `cartstream-detector` (its quality gates) -> `alerts.raised` -> the real
//! `cartstream-lake-sink` with `--quality-pause`.
//!
//! - A burst of unknown brands in one event-time minute crosses the brand gate: exactly one
//!   breach alert (`data_quality/field/brand/<minute>`) and, after the next clean minute, the clear
//!   alert; the lake sink pauses on the breach (its committed offsets and its files do not move
//!   while more events arrive, a clear alert does not resume it in `resume` mode), resumes on
//!   `POST /lake/resume`, and the lake then holds every event exactly once (an independent pyarrow
//!   reader); a restart after the resume does not pause again.
//! - In `until-clear` mode the clear alert resumes the sink by itself, nothing lost or doubled.
//! - A steady stream (5 % unknown brands, 1 % rejects) raises no data_quality alert while the
//!   gates judged every minute (the detector's metrics: windows judged, the last window's rates).
//!
//! Needs `cartstream-detector` built (`cargo build -p cartstream-processors --bin cartstream-detector`).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cartstream_events::types::{
    Alert, AlertType, DeadLetter, EnrichedEvent, RawEvent, Severity, SourceMeta,
};
use cartstream_events::{Decoder, Encoder};
use cartstream_kafka::{read, KafkaArgs, Topic, TopicNames};
use cartstream_testkit as kit;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const LAKE: &str = env!("CARGO_BIN_EXE_cartstream-lake-sink");
const MIN: i64 = 60_000;
/// A minute-aligned start in the past (2026-11-20T00:00Z).
const BASE: i64 = common::T0;
const PER_WINDOW: usize = 120;
const PARTITIONS: i32 = 3;

fn detector_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let b = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("cartstream-detector");
    assert!(
        b.is_file(),
        "{} is not built: run `cargo build -p cartstream-processors --bin cartstream-detector`",
        b.display()
    );
    b
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request on loopback; the body of the answer.
fn http(port: u16, method: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

fn gate(port: u16) -> serde_json::Value {
    let body = http(port, "GET", "/lake/gate").unwrap_or_default();
    serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null)
}

/// Event `i` of the minute `w`; `unknown_brand` of each minute's events have no brand.
fn event(w: i64, i: usize, unknown_brand: usize) -> EnrichedEvent {
    let mut e = common::event(i);
    e.event_id = format!("w{w}-{i}");
    e.event_time = BASE + w * MIN + (i as i64 * MIN) / PER_WINDOW as i64;
    e.user_session = format!("s-{w}-{}", i % 40);
    if i < unknown_brand {
        e.brand = "unknown".into();
    }
    e
}

struct Tx {
    producer: FutureProducer,
    enc: Encoder<EnrichedEvent>,
    topic: String,
    sent: Vec<String>,
}

impl Tx {
    async fn new(kafka: &KafkaArgs, names: &TopicNames) -> Self {
        Tx {
            producer: kafka.producer().unwrap().create().unwrap(),
            enc: Encoder::register(&kit::registry(), &names.subject(Topic::Enriched))
                .await
                .unwrap(),
            topic: names.name(Topic::Enriched),
            sent: Vec::new(),
        }
    }

    /// Sends minutes `ws`, each event in time order on partition `i % 3` (every partition gets
    /// records of every minute, so the gate's clock moves on all of them).
    async fn minutes(&mut self, ws: std::ops::Range<i64>, unknown_of: impl Fn(i64) -> usize) {
        let mut pending = Vec::new();
        for w in ws {
            for i in 0..PER_WINDOW {
                let e = event(w, i, unknown_of(w));
                let bytes = self.enc.encode(&e).unwrap();
                let rec = FutureRecord::to(&self.topic)
                    .partition(i as i32 % PARTITIONS)
                    .key(&e.user_session)
                    .payload(&bytes);
                pending.push(self.producer.send_result(rec).map_err(|(e, _)| e).unwrap());
                self.sent.push(e.event_id);
            }
        }
        for f in pending {
            f.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
}

async fn alerts(kafka: &KafkaArgs, names: &TopicNames) -> Vec<Alert> {
    let msgs = read::read_to_end(
        &kafka.consumer("it-verify").unwrap(),
        &names.name(Topic::Alerts),
        Duration::from_secs(30),
    )
    .unwrap();
    let dec: Decoder<Alert> = Decoder::new(kit::registry());
    let mut out = Vec::new();
    for m in msgs {
        if let Some(p) = m.payload().filter(|p| !p.is_empty()) {
            if let Ok(a) = dec.decode(p).await {
                out.push(a);
            }
        }
    }
    out
}

fn dq(alerts: &[Alert]) -> Vec<String> {
    let mut v: Vec<String> = alerts
        .iter()
        .filter(|a| a.alert_type == AlertType::DataQuality)
        .map(|a| a.alert_id.clone())
        .collect();
    v.sort();
    v
}

fn committed(kafka: &KafkaArgs, group: &str, topics: &[String]) -> BTreeMap<(String, i32), i64> {
    let c: BaseConsumer = kafka.consumer(group).unwrap().create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..PARTITIONS {
            tpl.add_partition(t, p);
        }
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            ((e.topic().to_string(), e.partition()), o)
        })
        .collect()
}

fn lake_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.to_string_lossy().to_string());
            }
        }
    }
    out.sort();
    out
}

fn read_lake(lake: &str, topic: &str) -> serde_json::Value {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lake_reader");
    let setup = Command::new("bash")
        .arg(format!("{root}/setup.sh"))
        .output()
        .unwrap();
    assert!(setup.status.success(), "installing pyarrow failed");
    let python = String::from_utf8(setup.stdout).unwrap().trim().to_string();
    let out = Command::new(python)
        .args([&format!("{root}/read_lake.py"), lake, topic])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn spawn_detector(prefix: &str, metrics: &str) -> common::Guard {
    common::Guard(common::spawn(
        detector_bin().to_str().unwrap(),
        &[
            "--topic-prefix",
            prefix,
            "--metrics-addr",
            metrics,
            "--instance-id",
            "q",
            "--idle-timeout",
            "2s",
            "--gate-grace",
            "5s",
            "--gate-min-history",
            "3",
            "--gate-min-events",
            "50",
        ],
        &[],
    ))
}

fn spawn_lake(prefix: &str, lake: &str, mode: &str, control: u16) -> common::Guard {
    let control = format!("127.0.0.1:{control}");
    common::Guard(common::spawn(
        LAKE,
        &[
            "--lake-url",
            lake,
            "run",
            "--topic-prefix",
            prefix,
            "--metrics-addr",
            "off",
            "--instance-id",
            "q",
            "--max-file-age-secs",
            "1",
            "--snapshots",
            "",
            "--compact-every-secs",
            "0",
            "--quality-pause",
            mode,
            "--control-addr",
            &control,
        ],
        &[],
    ))
}

async fn wait_for(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn setup(tag: &str) -> (KafkaArgs, String, TopicNames) {
    let kafka = kit::kafka();
    let prefix = kit::unique(tag);
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &kit::registry(), &names, PARTITIONS, 1)
        .await
        .unwrap();
    (kafka, prefix, names)
}

/// The burst: minutes 0-5 steady (6 of 120 unknown brands), minute 6 with 96 unknown, minute 7
/// steady. Minute 6 is final once every partition is past 7:05 (minute 7's events).
const BURST: i64 = 6;

fn unknown_of(w: i64) -> usize {
    if w == BURST {
        96
    } else {
        6
    }
}

async fn burst_then_pause(mode: &str) {
    let (kafka, prefix, names) = setup(&format!("qgate{}", &mode[..3])).await;
    let tmp = std::env::temp_dir().join(format!("cartstream-{prefix}q"));
    let lake = tmp.join("lake");
    let lake_s = lake.to_str().unwrap().to_string();
    let control = free_port();
    let _det = spawn_detector(&prefix, "off");
    let mut sink = spawn_lake(&prefix, &lake_s, mode, control);
    let mut tx = Tx::new(&kafka, &names).await;
    let started = Instant::now();
    tx.minutes(0..8, unknown_of).await;

    let breach = format!("data_quality/field/brand/{}", BASE + BURST * MIN);
    let clear = format!("data_quality/gate/all/{}", BASE + (BURST + 1) * MIN);
    wait_for("the lake sink to pause on the breach", 120, async || {
        gate(control)["paused"] == true
    })
    .await;
    let paused_after = started.elapsed();
    let g = gate(control);
    assert_eq!(g["paused_by"], breach.as_str(), "{g}");
    assert_eq!(dq(&alerts(&kafka, &names).await), vec![breach.clone()]);

    // Paused: more events (minutes 8-10, which also close minute 7: the clear alert) and
    // nothing committed, no file written.
    let topics: Vec<String> = [Topic::Enriched, Topic::Alerts]
        .iter()
        .map(|t| names.name(*t))
        .collect();
    let group = format!("{prefix}cartstream-lake-sink");
    let offsets = committed(&kafka, &group, &topics);
    let files = lake_files(&lake);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        committed(&kafka, &group, &topics),
        offsets,
        "paused: nothing committed"
    );
    assert_eq!(lake_files(&lake), files, "paused: no file written");
    tx.minutes(8..11, unknown_of).await;
    wait_for("the clear alert", 60, async || {
        dq(&alerts(&kafka, &names).await).contains(&clear)
    })
    .await;
    let mut resumed_by = "clear alert";
    if mode == "resume" {
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            gate(control)["paused"],
            true,
            "the clear alert does not resume in resume mode"
        );
        assert_eq!(
            committed(&kafka, &group, &topics),
            offsets,
            "paused: nothing committed"
        );
        assert_eq!(lake_files(&lake), files, "paused: no file written");
        assert_eq!(
            http(control, "POST", "/lake/resume")
                .unwrap_or_default()
                .trim(),
            "resuming"
        );
        resumed_by = "POST /lake/resume";
    }
    wait_for("the lake sink to resume", 30, async || {
        gate(control)["paused"] == false
    })
    .await;
    assert_eq!(gate(control)["resumes"], 1);
    wait_for("the lake sink to catch up", 120, async || {
        common::caught_up(&kafka, &group, &[names.name(Topic::Enriched)])
    })
    .await;
    assert!(common::terminate(&mut sink.0).success());

    let r = read_lake(&lake_s, &names.name(Topic::Enriched));
    let mut sent = tx.sent.clone();
    sent.sort();
    assert_eq!(r["rows"], sent.len(), "every event once");
    assert_eq!(r["duplicates"], serde_json::json!({}), "no event twice");
    let ids: Vec<String> = serde_json::from_value(r["ids"].clone()).unwrap();
    assert_eq!(ids, sent, "exactly the events sent");
    let all = alerts(&kafka, &names).await;
    assert_eq!(
        dq(&all),
        vec![breach.clone(), clear.clone()],
        "one breach, one clear"
    );
    let b = all.iter().find(|a| a.alert_id == breach).unwrap();
    assert_eq!(b.severity, Severity::Warning);
    assert!((b.observed - 0.8).abs() < 1e-9, "{}", b.observed);

    // A restart after the resume does not pause again on the same alert.
    let mut again = spawn_lake(&prefix, &lake_s, mode, control);
    wait_for("the restarted sink's endpoint", 30, async || {
        gate(control)["paused"] == false
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        gate(control)["pauses"],
        0,
        "no pause after a restart: {}",
        gate(control)
    );
    assert!(common::terminate(&mut again.0).success());
    eprintln!(
        "quality gate ({mode}): {} events sent, paused {:.1}s after the first event by {breach}, resumed by {resumed_by}; lake rows {}, duplicates 0",
        sent.len(),
        paused_after.as_secs_f64(),
        r["rows"]
    );
    std::fs::remove_dir_all(&tmp).ok();
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unknown_brands_pauses_the_lake_until_resumed() {
    burst_then_pause("resume").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unknown_brands_pauses_the_lake_until_the_gates_clear() {
    burst_then_pause("until-clear").await;
}

fn raw(i: usize, t: i64) -> RawEvent {
    RawEvent {
        event_id: format!("bad-{i}"),
        event_time: t.to_string(),
        event_type: "purchase".into(),
        product_id: 1,
        category_id: 1,
        category_code: None,
        brand: None,
        price: -1.0,
        currency: "USD".into(),
        quantity: 1,
        user_id: 1,
        user_session: Some("s".into()),
        channel: None,
        source: SourceMeta {
            system: "it".into(),
            producer_id: "it".into(),
            file: None,
            line: None,
            sent_at: t,
        },
    }
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_raises_no_data_quality_alert() {
    let (kafka, prefix, names) = setup("qsteady").await;
    let port = free_port();
    let _det = spawn_detector(&prefix, &format!("127.0.0.1:{port}"));
    let mut tx = Tx::new(&kafka, &names).await;
    const MINUTES: i64 = 15;
    // 2 of each minute's 122 records rejected by the cleaner as invalid_price (dead letters whose payload is
    // the raw event, so their event time is known).
    let raw_enc: Encoder<RawEvent> =
        Encoder::register(&kit::registry(), &names.subject(Topic::Raw))
            .await
            .unwrap();
    let dl_enc: Encoder<DeadLetter> =
        Encoder::register(&kit::registry(), &names.subject(Topic::DeadLetters))
            .await
            .unwrap();
    let mut s = common::Sender::new(&kafka);
    for w in 0..MINUTES {
        for k in 0..2 {
            let t = BASE + w * MIN + 1000 * k;
            let d = DeadLetter {
                error_code: "invalid_price".into(),
                message: "price -1".into(),
                stage: "cleaner".into(),
                source_topic: names.name(Topic::Raw),
                source_partition: 0,
                source_offset: w * 2 + k,
                source_timestamp: Some(t),
                schema_id: None,
                key: None,
                payload: Some(raw_enc.encode(&raw(k as usize, t)).unwrap()),
                failed_at: t,
            };
            s.send(
                &names.name(Topic::DeadLetters),
                "s",
                &dl_enc.encode(&d).unwrap(),
            )
            .await;
        }
    }
    s.flush().await;
    // The events after the dead letters: the cleaner writes a reject before the enriched events
    // that follow it.
    tx.minutes(0..MINUTES, |_| 6).await;
    cartstream_admin::end_input(
        &kafka,
        &names.name(Topic::Enriched),
        i64::MAX,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let mut text = String::new();
    wait_for("every minute judged", 120, async || {
        text = http(port, "GET", "/metrics").unwrap_or_default();
        metric(&text, "cartstream_quality_windows_total") == Some(MINUTES as f64)
    })
    .await;
    let all = alerts(&kafka, &names).await;
    assert_eq!(
        dq(&all),
        Vec::<String>::new(),
        "a steady stream raises no data_quality alert"
    );
    let brand = metric(
        &text,
        "cartstream_quality_rate{gate=\"field\",subject=\"brand\"}",
    )
    .unwrap();
    assert!(
        (brand - 0.05).abs() < 1e-9,
        "last minute's unknown brand rate {brand}"
    );
    let rej = metric(
        &text,
        "cartstream_quality_rate{gate=\"reject\",subject=\"invalid_price\"}",
    )
    .unwrap();
    assert!(
        (rej - 2.0 / 122.0).abs() < 1e-9,
        "last minute's reject rate {rej}"
    );
    assert_eq!(
        metric(&text, "cartstream_quality_window_records{kind=\"events\"}"),
        Some(120.0)
    );
    assert_eq!(
        metric(&text, "cartstream_quality_window_records{kind=\"rejects\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "cartstream_quality_window_start_seconds"),
        Some(((BASE + (MINUTES - 1) * MIN) / 1000) as f64)
    );
    eprintln!(
        "steady: {MINUTES} minutes x {PER_WINDOW} events + 2 rejects judged, 0 data_quality alerts; last minute brand {brand:.3}, invalid_price {rej:.4}"
    );
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
