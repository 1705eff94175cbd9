//! The lake sink against the real broker and registry, read back by an independent reader
//! (pyarrow, installed from PyPI by `sinks/tests/lake_reader/setup.sh`):
//!
//! - enriched events trickle in (spread over three event hours, a few undecodable records among
//!   them, and from the middle on written with a newer schema that adds an optional field) while
//!   the sink is SIGKILLed again and again and twice exits on purpose right after an upload,
//!   before that upload's offset commit;
//! - the lake then holds every event exactly once, in the right Hive partition, zstd-compressed,
//!   with the new column in the new files and the old files still readable; the undecodable
//!   records are dead-lettered;
//! - compaction, killed once between its merged upload and its deletes and then run again,
//!   keeps the row count and the content digest.
//!
//! Size: `CARTSTREAM_LAKE_EVENTS` (default 12 000).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use cartstream_events::types::EnrichedEvent;
use cartstream_events::{Contract, Encoder};
use cartstream_kafka::{Topic, TopicNames};
use cartstream_testkit as kit;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_cartstream-lake-sink");

fn events() -> usize {
    std::env::var("CARTSTREAM_LAKE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12_000)
}

/// The enriched event schema plus an optional `coupon` field (a compatible evolution).
fn v2_schema() -> String {
    let mut v: serde_json::Value = serde_json::from_str(Contract::EnrichedEvent.avsc()).unwrap();
    v["fields"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "coupon", "type": ["null", "string"], "default": null}
    ));
    v.to_string()
}

/// A v2 record: the v1 body plus the trailing union of `coupon` (Avro appends fields in order).
fn as_v2(v1: &[u8], v2_id: u32, coupon: &str) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&v2_id.to_be_bytes());
    out.extend_from_slice(&v1[5..]);
    out.push(2); // union branch 1 (string), zigzag
    out.push((coupon.len() as u8) << 1);
    out.extend_from_slice(coupon.as_bytes());
    out
}

struct Sent {
    ids: BTreeSet<String>,
    v2: usize,
    garbage: usize,
}

async fn produce(names: TopicNames, n: usize, spread: Duration) -> Sent {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let subject = names.subject(Topic::Enriched);
    let enc: Encoder<EnrichedEvent> = Encoder::register(&registry, &subject).await.unwrap();
    let v2_id = registry.register(&subject, &v2_schema()).await.unwrap();
    let topic = names.name(Topic::Enriched);
    let mut tx = common::Sender::new(&kafka);
    let started = Instant::now();
    let mut sent = Sent {
        ids: BTreeSet::new(),
        v2: 0,
        garbage: 0,
    };
    for i in 0..n {
        let e = common::event(i);
        if i % 500 == 250 {
            tx.send(&topic, &e.user_session, b"\x01not avro").await;
            sent.garbage += 1;
        }
        let v1 = enc.encode(&e).unwrap();
        let payload = if i >= n * 2 / 3 {
            sent.v2 += 1;
            as_v2(&v1, v2_id, &format!("c{}", i % 10))
        } else {
            v1
        };
        tx.send(&topic, &e.user_session, &payload).await;
        sent.ids.insert(e.event_id);
        if i % 500 == 499 {
            tx.flush().await;
            let due = started + spread.mul_f64(i as f64 / n as f64);
            tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
        }
    }
    tx.flush().await;
    sent
}

fn read_lake(lake: &str, topic: &str) -> serde_json::Value {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lake_reader");
    let setup = Command::new("bash")
        .arg(format!("{root}/setup.sh"))
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "installing pyarrow failed: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_holds_every_event_once_through_kills_and_compaction() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("lake");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 3, 1)
        .await
        .unwrap();
    let topic = names.name(Topic::Enriched);
    let lake_dir = std::env::temp_dir().join(format!("cartstream-{}lake", prefix));
    let lake = lake_dir.to_str().unwrap().to_string();
    let n = events();
    let producing = tokio::spawn(produce(names.clone(), n, Duration::from_secs(20)));

    let args = [
        "--lake-url",
        lake.as_str(),
        "run",
        "--topic-prefix",
        prefix.as_str(),
        "--metrics-addr",
        "off",
        "--instance-id",
        "it",
        "--max-file-records",
        "700",
        "--max-file-age-secs",
        "1",
    ];
    let mut child = common::Guard(common::spawn(BIN, &args, &[]));
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (mut kills, mut planned_exits) = (0, 0);
    for round in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1200..2500))).await;
        if round % 4 == 3 {
            // Let it exit by itself right after its 2nd upload, before the commit.
            common::kill9(&mut child.0);
            child.0 = common::spawn(BIN, &args, &[("CARTSTREAM_LAKE_EXIT_AFTER_UPLOADS", "2")]);
            let deadline = Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(s) = child.0.try_wait().unwrap() {
                    break s;
                }
                assert!(Instant::now() < deadline, "the upload hook did not fire");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(status.code(), Some(86), "exited through the upload hook");
            planned_exits += 1;
        } else {
            common::kill9(&mut child.0);
            kills += 1;
        }
        child.0 = common::spawn(BIN, &args, &[]);
    }
    let sent = producing.await.unwrap();
    let group = format!("{prefix}cartstream-lake-sink");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !common::caught_up(&kafka, &group, std::slice::from_ref(&topic)) {
        assert!(Instant::now() < deadline, "the lake sink did not catch up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(common::terminate(&mut child.0).success(), "graceful exit");

    let r = read_lake(&lake, &topic);
    let ids: BTreeSet<String> = serde_json::from_value(r["ids"].clone()).unwrap();
    assert_eq!(r["duplicates"], serde_json::json!({}), "no event twice");
    assert_eq!(ids.len(), sent.ids.len(), "no event lost");
    assert_eq!(ids, sent.ids);
    assert_eq!(r["rows"].as_u64().unwrap() as usize, sent.ids.len());
    // The sink itself never leaves overlapping files (a replay rewrites the same names), so the
    // reader rule has nothing to hide before compaction.
    assert_eq!(r["files_skipped"].as_u64().unwrap(), 0);
    assert_eq!(r["hive_errors"], serde_json::json!([]));
    assert_eq!(r["compression"], serde_json::json!(["ZSTD"]));
    let sets: Vec<Vec<String>> = serde_json::from_value(r["column_sets"].clone()).unwrap();
    assert_eq!(sets.len(), 2, "old and new schema files: {sets:?}");
    assert!(sets.iter().any(|s| s.contains(&"coupon".to_string())));
    assert!(sets.iter().any(|s| !s.contains(&"coupon".to_string())));
    assert_eq!(r["non_null"]["coupon"].as_u64().unwrap() as usize, sent.v2);
    assert_eq!(r["non_null"]["channel"].as_u64().unwrap(), 0);

    let dead = common::dead_letters(
        &kafka,
        registry.clone(),
        &names.name(Topic::DeadLetters),
        "lake-sink",
    )
    .await;
    assert_eq!(dead.len(), sent.garbage, "{dead:?}");
    assert!(dead.iter().all(|d| d.3 == "bad_magic"));

    // Compaction: crash between the merged upload and the deletes, then again to the end.
    let files_before = r["files_kept"].as_u64().unwrap();
    let compact = |env: Option<(&str, &str)>| {
        let mut c = Command::new(BIN);
        c.args([
            "--lake-url",
            &lake,
            "compact",
            "--topic",
            &topic,
            "--closed-after-secs",
            "0",
        ]);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let crashed = compact(Some(("CARTSTREAM_COMPACT_EXIT_AFTER_MERGE", "1")));
    assert_eq!(crashed.status.code(), Some(86));
    let mid = read_lake(&lake, &topic);
    assert!(
        mid["files_skipped"].as_u64().unwrap() >= 2,
        "inputs left behind are covered"
    );
    assert_eq!(mid["rows"], r["rows"]);
    assert_eq!(mid["digest"], r["digest"]);
    let done = compact(None);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let after = read_lake(&lake, &topic);
    assert_eq!(after["rows"], r["rows"], "compaction keeps the row count");
    assert_eq!(after["digest"], r["digest"], "compaction keeps the content");
    assert_eq!(
        after["files_skipped"].as_u64().unwrap(),
        0,
        "leftovers deleted"
    );
    let files_after = after["files_kept"].as_u64().unwrap();
    // At most one file per partition, hour and schema is left.
    assert!(
        files_after <= 3 * 3 * 2 && files_after < files_before,
        "{files_before} files -> {files_after}"
    );
    eprintln!(
        "lake: {} events ({} with the new field), {} dead letters, {kills} kills, {planned_exits} exits between upload and commit; {files_before} files compacted to {files_after}",
        sent.ids.len(),
        sent.v2,
        dead.len()
    );
    std::fs::remove_dir_all(&lake_dir).unwrap();
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let code = body
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body)
}

/// With a long latency bound nothing is flushed while running; SIGTERM must flush it all, and
/// the health and metrics endpoints report the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_and_the_endpoints_report() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("lakestop");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 2, 1)
        .await
        .unwrap();
    let topic = names.name(Topic::Enriched);
    let lake_dir = std::env::temp_dir().join(format!("cartstream-{}lake", prefix));
    let lake = lake_dir.to_str().unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = common::Guard(common::spawn(
        BIN,
        &[
            "--lake-url",
            &lake,
            "run",
            "--topic-prefix",
            &prefix,
            "--metrics-addr",
            &addr,
            "--max-file-age-secs",
            "600",
        ],
        &[],
    ));
    let enc: Encoder<EnrichedEvent> = Encoder::register(&registry, &names.subject(Topic::Enriched))
        .await
        .unwrap();
    let mut tx = common::Sender::new(&kafka);
    for i in 0..1000 {
        let e = common::event(i);
        tx.send(&topic, &e.user_session, &enc.encode(&e).unwrap())
            .await;
    }
    tx.flush().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready =
            std::net::TcpStream::connect(&addr).is_ok() && http_get(&addr, "/readyz").0 == 200;
        if ready {
            let (_, metrics) = http_get(&addr, "/metrics");
            if metrics.contains("cartstream_sink_consumed_total{sink=\"lake\"} 1000") {
                // The series may be exported at zero from the start, or not yet.
                let flushed = metrics
                    .lines()
                    .find(|l| {
                        l.starts_with(
                            "cartstream_sink_files_written_total{kind=\"flush\",sink=\"lake\"}",
                        )
                    })
                    .is_some_and(|l| !l.ends_with(" 0"));
                assert!(!flushed, "nothing flushed yet: {metrics}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not consume the records"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert!(common::terminate(&mut child.0).success(), "graceful exit");
    let group = format!("{prefix}cartstream-lake-sink");
    assert!(
        common::caught_up(&kafka, &group, std::slice::from_ref(&topic)),
        "offsets committed on shutdown"
    );
    let r = read_lake(&lake, &topic);
    assert_eq!(r["rows"].as_u64().unwrap(), 1000, "flushed on SIGTERM");
    assert_eq!(r["duplicates"], serde_json::json!({}));
    std::fs::remove_dir_all(&lake_dir).unwrap();
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
