//! A year of the simulator's retail profile (store hours, closed Saturdays and Christmas, a
//! November peak, guest checkouts, repeated order lines) written to `purchases.raw` before the
//! pipeline starts, with the end-of-input mark after its last event, then read by every stage
//! as fast as it can: every stage and the model service start on a year of backlog, on skewed
//! partitions (a session's events share a partition, some hold more than others).
//!
//! Checked: no event is late anywhere (the late topic, the dead letters, every stage's late
//! counter, the model service's late windows), every hourly KPI window up to the last event's
//! hour is closed and every session is closed by the end-of-input mark, and the model
//! service's champion is trained once on everything (`end_of_input`), its training range ending
//! within a day of the last event — not on some early weeks read while catching up.
//!
//! Sized for a debug build: the profile's default density (measured: 273,962 events, 21,808
//! sessions, 175,701 hourly windows over 3,939 hours; written in 17 s, read and the model
//! trained in 147 s), hourly windows and hourly model periods.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use cartstream_events::types::{DeadLetter, KpiWindow};
use cartstream_events::Decoder;
use cartstream_kafka::Topic;
use cartstream_testkit as kit;
use common::{bin_dir, free_ports, repo_root, topic_records, Generation};
use rdkafka::Message;
use serde_json::Value;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retail_year_read_as_a_backlog_closes_everything_with_no_late_event() {
    let kafka = kit::kafka();
    let prefix = kit::unique("year");
    let work = repo_root()
        .join("target/e2e")
        .join(prefix.trim_end_matches('.'));
    std::fs::create_dir_all(&work).unwrap();
    let base = free_ports(10);
    let gen = Generation {
        name: prefix.clone(),
        prefix: prefix.clone(),
        source_prefix: prefix.clone(),
        keyspace: kit::unique_ident("year"),
        lake: work.join("lake"),
        models: work.join("models"),
        port_base: base,
    };
    let truth_path = work.join("truth.json");

    // The catalog and a year of events, all in the topics before any stage runs.
    let out = Command::new(bin_dir().join("cartstream-admin"))
        .args(["--topic-prefix", &prefix, "bootstrap"])
        .output()
        .unwrap();
    assert!(out.status.success(), "bootstrap: {out:?}");
    let sent = Instant::now();
    // A year in about 17 s of sending (the profile's density, 200 products, 1,500 users).
    let out = Command::new(bin_dir().join("cartstream-producer"))
        .args(["simulate", "--topic-prefix", &prefix, "--profile", "retail"])
        .args([
            "--start-time",
            "2025-01-01T00:00:00Z",
            "--end-time",
            "+365d",
        ])
        .args(["--rate", "3000", "--speed", "2160000", "--seed", "11"])
        .args(["--products", "200", "--users", "1500"])
        .args(["--end-of-input", "max", "--metrics-addr", "off"])
        .args(["--progress", "off", "--ground-truth"])
        .arg(&truth_path)
        .env("KAFKA_BROKERS", kit::brokers())
        .env("SCHEMA_REGISTRY_URL", kit::registry_url())
        .output()
        .unwrap();
    assert!(out.status.success(), "simulate: {out:?}");
    let truth: Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    let last = truth["event_time_max"].as_i64().unwrap();
    let first = truth["event_time_min"].as_i64().unwrap_or(last - 365 * DAY);
    println!(
        "sent a year ({} .. {}) in {:.1} s: {}",
        first,
        last,
        sent.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
    );
    assert!(last - first > 300 * DAY, "the history spans a year");

    // Every stage on a year of backlog, with hourly windows and hourly model periods.
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/pipeline.sh"))
        .arg("start")
        .current_dir(repo_root());
    gen.env(&mut cmd);
    cmd.env("WINDOW_SIZE", "1h")
        .env("MODEL_PERIOD_MS", HOUR.to_string())
        .env("MODEL_WINDOW_SIZE_MS", HOUR.to_string());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "pipeline.sh start: {out:?}");

    // Until the model service has trained on the end of input (or 6 minutes).
    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{}", base + 9);
    let model_metrics = format!("http://127.0.0.1:{}/metrics", base + 7);
    let deadline = Instant::now() + Duration::from_secs(360);
    let champion = loop {
        let m: Option<Value> = match http.get(format!("{api}/v1/model")).send().await {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        if let Some(m) = m.filter(|m| m["trigger"] == "end_of_input") {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no end-of-input champion after 6 minutes; model service metrics: {:?}\n{}",
            kit::scrape_metrics(&model_metrics)
                .await
                .into_iter()
                .filter(|(k, _)| k.starts_with("cartstream_model_"))
                .collect::<Vec<_>>(),
            gen.logs_tail()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    gen.wait_caught_up();
    println!(
        "pipeline: a year read and the model trained in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // No late event anywhere.
    let late = topic_records(&prefix, Topic::Late).await.len();
    assert_eq!(late, 0, "events on the late topic");
    let dd = Decoder::<DeadLetter>::new(kit::registry());
    let mut dead_by_code: HashMap<String, usize> = HashMap::new();
    for m in topic_records(&prefix, Topic::DeadLetters).await {
        let d = dd.decode(m.payload().unwrap()).await.unwrap();
        *dead_by_code.entry(d.error_code).or_default() += 1;
    }
    assert_eq!(
        dead_by_code.get("late_event"),
        None,
        "late dead letters: {dead_by_code:?}"
    );
    for (i, stage) in ["windower", "sessionizer", "detector"].iter().enumerate() {
        let m =
            kit::scrape_metrics(&format!("http://127.0.0.1:{}/metrics", base + 2 + i as u16)).await;
        assert!(!m.is_empty(), "{stage}'s metrics");
        assert_eq!(
            kit::metric_total(&m, "cartstream_processor_late_events_total"),
            0.0,
            "{stage} counted late events"
        );
    }
    let mm = kit::scrape_metrics(&model_metrics).await;
    assert_eq!(
        mm.get("cartstream_model_input_records_total{outcome=\"late\"}")
            .copied()
            .unwrap_or(0.0),
        0.0,
        "the model service set windows aside as late"
    );

    // Every hourly window up to the last event's hour is closed (final), none twice.
    let kd = Decoder::<KpiWindow>::new(kit::registry());
    let mut starts = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for m in topic_records(&prefix, Topic::KpiWindows).await {
        let w = kd.decode(m.payload().unwrap()).await.unwrap();
        assert!(w.is_final, "an early result in kpi.windows");
        assert_eq!(w.window_size_ms, HOUR);
        assert!(
            keys.insert((
                format!("{:?}", w.dimension),
                w.dimension_value.clone(),
                w.window_start,
                w.currency.clone()
            )),
            "a window twice"
        );
        starts.insert(w.window_start);
    }
    assert_eq!(
        starts.last().copied(),
        Some(last - last.rem_euclid(HOUR)),
        "the last event's hour is closed by the end of input"
    );
    let sessions = topic_records(&prefix, Topic::Sessions).await.len();
    let want_sessions = truth["sessions"]["total"].as_u64();
    println!(
        "{} events, {} hourly windows over {} hours, {sessions} sessions closed (ground truth {want_sessions:?})",
        truth["events"],
        keys.len(),
        starts.len()
    );
    // Distinct user sessions of the ground truth: the simulator's sessions never pause for the
    // sessionizer's 30-minute gap, so each is one closed session; fewer means some were left open.
    assert_eq!(
        sessions as u64,
        want_sessions.unwrap(),
        "sessions closed against the ground truth's"
    );

    // The champion: trained once on everything, its range ending within a day of the last event.
    let to = champion["training_to_ms"].as_i64().unwrap();
    println!(
        "champion {} trained by {} to {} ({} h before the last event), decision {}",
        champion["version"],
        champion["trigger"],
        to,
        (last - to) / HOUR,
        champion["decision"]
    );
    assert!(
        (last - to).abs() <= DAY,
        "the champion's training range ends {} h away from the last event",
        (last - to) / HOUR
    );

    drop(gen);
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
    let _ = std::fs::remove_dir_all(&work);
}
