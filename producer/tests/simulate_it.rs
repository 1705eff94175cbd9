//! The simulator against the real broker and registry: what it sends decodes with the
//! registered schemas, the injected fault ratios are what was asked, the dimensions are on their
//! compacted topics keyed by id, and the ground-truth file equals what is on the topic.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::{BTreeMap, HashMap};

use cartstream_events::types::{Product, RawEvent, User};
use cartstream_events::Decoder;
use cartstream_kafka::read::key_str;
use cartstream_kafka::Topic;
use cartstream_producer::truth::{validate, GroundTruth};
use common::{stdout, temp_path, Namespace};
use rdkafka::Message;

/// Within `k` standard deviations of a binomial(n, p) count.
fn within(count: u64, n: u64, p: f64, k: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (count as f64 - mean).abs() <= k * sd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_faults_have_the_asked_ratios_and_the_ground_truth_matches_the_topic() {
    let ns = Namespace::new("psim").await;
    let truth_path = temp_path("truth.json");
    let n: u64 = 4000;
    let out = ns.run(&[
        "simulate",
        "--count",
        &n.to_string(),
        "--rate",
        "0",
        "--seed",
        "7",
        "--products",
        "300",
        "--users",
        "500",
        "--start-time",
        "2026-11-01T08:00:00Z",
        // With --rate 0 the world has --rate 1000's density: 1000 / 600 events per second of
        // event time, so 4000 events cover 40 minutes.
        "--speed",
        "600",
        "--currencies",
        "USD,EUR,GBP",
        "--price-change-every",
        "30s",
        "--duplicate-ratio",
        "0.05",
        "--late-ratio",
        "0.05",
        "--late-delay",
        "5s..2m",
        "--malformed-ratio",
        "0.05",
        "--ground-truth",
        truth_path.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert!(text.contains("failed 0"), "{text}");

    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    let injected = &truth["injected"];
    let dups = injected["duplicates"].as_u64().unwrap();
    let late = injected["late"].as_u64().unwrap();
    let malformed: u64 = injected["malformed"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    // Stated tolerance: each injected count is within 4 standard deviations of n × ratio.
    for (what, count) in [
        ("duplicates", dups),
        ("late", late),
        ("malformed", malformed),
    ] {
        assert!(within(count, n, 0.05, 4.0), "{what}: {count} of {n}");
    }

    // Read everything back and judge it with the registered schemas.
    let records = ns.read(Topic::Raw);
    assert_eq!(records.len() as u64, n + dups + malformed);
    let decoder = Decoder::<RawEvent>::new(ns.registry.clone());
    let mut on_topic = GroundTruth::new();
    let mut codes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut seen: HashMap<String, u32> = HashMap::new();
    // Per partition, in offset order: events behind the partition's newest event time.
    let mut by_partition: BTreeMap<i32, Vec<_>> = BTreeMap::new();
    for m in &records {
        by_partition.entry(m.partition()).or_default().push(m);
    }
    let mut behind = 0u64;
    for msgs in by_partition.values_mut() {
        msgs.sort_by_key(|m| m.offset());
        let mut newest = i64::MIN;
        for m in msgs.iter() {
            let payload = m.payload().unwrap_or_default();
            match decoder.decode(payload).await {
                Err(e) => {
                    assert!(!e.is_transient(), "{e}");
                    *codes.entry(e.code()).or_default() += 1;
                    on_topic.record_undecodable(e.code());
                }
                Ok(ev) => {
                    // Keyed by session: every copy of an event has the same key.
                    assert_eq!(key_str(m), ev.user_session.as_deref());
                    if let Ok((t, _)) = validate(&ev) {
                        let copies = seen.entry(ev.event_id.clone()).or_default();
                        *copies += 1;
                        if *copies == 1 {
                            if t < newest {
                                behind += 1;
                            }
                            newest = newest.max(t);
                        }
                    }
                    on_topic.record(&ev);
                }
            }
        }
    }
    assert_eq!(
        codes.get("bad_magic").copied(),
        injected["malformed"]["garbage_bytes"].as_u64()
    );
    assert_eq!(
        codes.get("unknown_schema_id").copied(),
        injected["malformed"]["unknown_schema_id"].as_u64()
    );
    // Every decodable malformed record is rejected by the cleaner's rules, every good one passes.
    let rejected_decoded: u64 = on_topic
        .rejected()
        .iter()
        .filter(|(k, _)| !["bad_magic", "unknown_schema_id"].contains(k))
        .map(|(_, v)| v)
        .sum();
    let decodable_malformed = malformed
        - injected["malformed"]["garbage_bytes"].as_u64().unwrap_or(0)
        - injected["malformed"]["unknown_schema_id"]
            .as_u64()
            .unwrap_or(0);
    assert_eq!(rejected_decoded, decodable_malformed);
    assert_eq!(on_topic.events(), n);
    assert_eq!(on_topic.duplicates(), dups);
    assert_eq!(seen.values().filter(|c| **c == 2).count() as u64, dups);
    // Late events are behind on their partition too (a few may not be, when no newer event of
    // their partition was sent before them).
    assert!(
        behind <= late && behind as f64 >= 0.7 * late as f64,
        "behind {behind}, late {late}"
    );

    // The ground truth file equals the topic's content, section by section.
    let topic_json = on_topic.to_json();
    for key in [
        "records_sent",
        "events",
        "duplicates",
        "rejected",
        "totals",
        "per_minute",
        "per_category",
        "sessions",
        "event_time_min",
        "event_time_max",
    ] {
        assert_eq!(truth[key], topic_json[key], "ground truth section {key}");
    }
    let currencies = truth["totals"]["revenue"].as_object().unwrap();
    assert!(currencies.len() >= 2, "several currencies: {currencies:?}");
    assert!(truth["sessions"]["converted"].as_u64().unwrap() > 0);
    assert!(truth["per_minute"].as_array().unwrap().len() > 30);

    // Dimensions: every product and user keyed by its id, plus the price changes.
    let price_changes = truth["price_changes"].as_u64().unwrap();
    assert!(price_changes > 0);
    let products = ns.read(Topic::Products);
    assert_eq!(products.len() as u64, 300 + price_changes);
    let pdec = Decoder::<Product>::new(ns.registry.clone());
    for m in &products {
        let p = pdec
            .decode(m.payload().unwrap())
            .await
            .expect("product decodes");
        assert_eq!(key_str(m), Some(p.product_id.to_string().as_str()));
    }
    let users = ns.read(Topic::Users);
    assert_eq!(users.len(), 500);
    let udec = Decoder::<User>::new(ns.registry.clone());
    let u = udec.decode(users[0].payload().unwrap()).await.unwrap();
    assert!(!u.country.is_empty() && !u.device.is_empty() && !u.segment.is_empty());
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trend_shows_in_the_ground_truth_and_the_default_command_still_works() {
    let ns = Namespace::new("ptrend").await;
    let truth_path = temp_path("trend.json");
    // No subcommand: the demo's form.
    let out = ns.run(&[
        "--count",
        "6000",
        "--rate",
        "0",
        "--products",
        "500",
        "--users",
        "800",
        "--start-time",
        "2026-11-01T12:00:00Z",
        // 5 events per second of event time: 6000 events cover 20 minutes.
        "--speed",
        "200",
        "--trend-at",
        "+5m",
        "--trend-for",
        "5m",
        "--trend-share",
        "0.4",
        "--ground-truth",
        truth_path.to_str().unwrap(),
    ]);
    assert!(
        stdout(&out).contains("sent 6000 records"),
        "{}",
        stdout(&out)
    );
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    let from = truth["trend"]["from_ms"].as_i64().unwrap();
    let to = truth["trend"]["to_ms"].as_i64().unwrap();
    let mut before = 0;
    let mut during = 0;
    for m in truth["watched_purchases_per_minute"].as_array().unwrap() {
        let (t, n) = (
            m["minute"].as_i64().unwrap(),
            m["purchases"].as_u64().unwrap(),
        );
        if t < from {
            before += n;
        } else if t < to {
            during += n;
        }
    }
    assert!(
        during > 5 * before.max(1),
        "before {before}, during {during}"
    );
    assert_eq!(ns.read(Topic::Raw).len(), 6000);
    ns.cleanup().await;
}
