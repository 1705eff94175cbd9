//! The model service as a process on the real stack (Kafka, schema registry, Cassandra, models
//! on local disk): three weeks of hourly `kpi.windows` history of 5 categories with known
//! seasonality, then a demand shift (x2.5) injected into the live stream. Asserted through the
//! service's `/metrics` and API, step by step:
//! 1. the first model is trained from the replayed history, beats seasonal-naive and is promoted;
//!    forecasts are served (with 4xx on bad queries) and written to `forecasts_by_category`;
//!    live sMAPE is below the threshold;
//! 2. after the shift the live error (or drift) crosses its threshold and retrains are triggered;
//! 3. a challenger is promoted (a new champion version);
//! 4. the live error over a full window is back below the threshold;
//! 5. a rollback through the API moves the champion back; SIGTERM exits cleanly.
//!
//! The time scale is real hours in event time: the test writes windows as fast as the service
//! reads them, so four weeks of periods take seconds. Thresholds: `MODEL_ERROR_THRESHOLD=0.4`,
//! `MODEL_PSI_THRESHOLD=0.5`, hold-out 24 periods, training window 168 (the same settings as the
//! in-memory scenario `monitor::tests::demand_shift_is_detected_and_a_retrain_recovers`).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cartstream_events::types::KpiWindow;
use cartstream_events::Encoder;
use cartstream_kafka::{Topic, TopicNames};
use cartstream_model_service::synth::Synth;
use cartstream_testkit as kit;
use common::{stream_periods, wait_for, Service};
use rdkafka::producer::FutureProducer;

const PERIOD_MS: i64 = 3_600_000;
const START: i64 = 24 * 3000;
const SHIFT_AT: i64 = START + 24 * 21;
const ERROR_THRESHOLD: f64 = 0.4;

fn start(prefix: &str, keyspace: &str, store: &str) -> Service {
    let (mp, ap) = (kit::free_port(), kit::free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_cartstream-model-service"))
        .arg("run")
        .env("KAFKA_BROKERS", kit::brokers())
        .env("SCHEMA_REGISTRY_URL", kit::registry_url())
        .env("SCYLLA_URI", kit::scylla_uri())
        .env("SCYLLA_KEYSPACE", keyspace)
        .env("TOPIC_PREFIX", prefix)
        .env("METRICS_ADDR", format!("127.0.0.1:{mp}"))
        .env("HTTP_ADDR", format!("127.0.0.1:{ap}"))
        .env("MODEL_STORE_URL", store)
        .env("MODEL_WINDOW_SIZE_MS", PERIOD_MS.to_string())
        // windows written here directly, without the windower's watermark records
        .env("MODEL_WINDOW_CLOCK", "windows")
        .env("MODEL_HOLDOUT_PERIODS", "24")
        .env("MODEL_TRAIN_WINDOW_PERIODS", "168")
        .env("MODEL_ERROR_THRESHOLD", ERROR_THRESHOLD.to_string())
        .env("MODEL_PSI_THRESHOLD", "0.5")
        .env("MODEL_RETRAIN_EVERY_PERIODS", "0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Service {
        child,
        metrics: format!("http://127.0.0.1:{mp}/metrics"),
        api: format!("http://127.0.0.1:{ap}"),
        log: None,
    }
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(f64::NAN)
}

async fn create_forecast_table(keyspace: &str) -> scylla::client::session::Session {
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(kit::scylla_uri())
        .build()
        .await
        .unwrap();
    session
        .query_unpaged(
            format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            &[],
        )
        .await
        .unwrap();
    // The sinks' migration file itself (cartstream-scylla-sink migrate applies the same text).
    let cql = include_str!("../../sinks/cql/0001_realtime_tables.cql");
    let text: String = cql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    for stmt in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        session
            .query_unpaged(stmt.replace("{keyspace}", keyspace), &[])
            .await
            .unwrap();
    }
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_shift_triggers_retrain_promotion_and_recovery() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    kit::require("the CQL database", &kit::scylla_uri());
    let prefix = kit::unique("model");
    let names = TopicNames::with_prefix(prefix.clone());
    cartstream_admin::bootstrap(&kafka, &registry, &names, 3, 1)
        .await
        .unwrap();
    let keyspace = kit::unique_ident("model");
    let session = create_forecast_table(&keyspace).await;
    let store = std::env::temp_dir().join(format!("cartstream-model-it-{}", &keyspace));
    let store = store.to_str().unwrap().to_string();

    let topic = names.name(Topic::KpiWindows);
    let enc: Encoder<KpiWindow> = Encoder::register(&registry, &names.subject(Topic::KpiWindows))
        .await
        .unwrap();
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    let mut synth = Synth::new(5, 3);
    synth.shift_at = Some(SHIFT_AT);
    synth.shift_factor = 2.5;

    // History: three weeks less a day, before the service starts (it replays the topic from
    // the beginning and trains its first champion once caught up, on the newest history).
    let live_from = SHIFT_AT - 24;
    stream_periods(&producer, &topic, &enc, &synth, PERIOD_MS, START..live_from).await;
    let mut svc = start(&prefix, &keyspace, &store);
    let closed = "cartstream_model_periods_closed_total";
    let m = wait_for(
        &mut svc,
        "history replayed and a first champion",
        Duration::from_secs(90),
        |m| {
            get(m, closed) >= (live_from - START - 1) as f64
                && get(m, "cartstream_model_caught_up") == 1.0
                && get(m, "cartstream_model_champion_version") >= 1.0
        },
    )
    .await;
    assert_eq!(
        get(&m, "cartstream_model_live_window_periods"),
        0.0,
        "no live period before the champion serves"
    );
    // A day live before the shift: the champion is judged on it.
    stream_periods(
        &producer,
        &topic,
        &enc,
        &synth,
        PERIOD_MS,
        live_from..SHIFT_AT,
    )
    .await;
    let m = wait_for(
        &mut svc,
        "a day of live periods",
        Duration::from_secs(60),
        |m| {
            get(m, closed) >= (SHIFT_AT - START - 1) as f64
                && get(m, "cartstream_model_live_window_periods") >= 23.0
        },
    )
    .await;
    let smape = "cartstream_model_live_smape{target=\"purchases\"}";
    let promoted = "cartstream_model_decisions_total{decision=\"promoted\"}";
    let before = get(&m, smape);
    let version_before = get(&m, "cartstream_model_champion_version");
    let promoted_before = get(&m, promoted);
    eprintln!(
        "step 1: champion v{version_before}, live sMAPE {before:.3}, hold-out relative to seasonal-naive {:.3}",
        get(&m, "cartstream_model_holdout_relative_error{target=\"purchases\"}")
    );
    assert!(
        before < ERROR_THRESHOLD,
        "live sMAPE before the shift {before}"
    );
    assert!(
        get(
            &m,
            "cartstream_model_holdout_relative_error{target=\"purchases\"}"
        ) < 1.0
    );
    assert_eq!(get(&m, "cartstream_model_caught_up"), 1.0);

    // The API: a forecast, and clear 4xx errors.
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/v1/forecast?category=cat000&horizon=3", svc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["points"].as_array().unwrap().len(), 3, "{body}");
    assert!(
        body["points"][0]["purchases"].as_f64().unwrap() > 0.0,
        "{body}"
    );
    assert_eq!(
        body["points"][0]["period_start_ms"].as_i64().unwrap(),
        (SHIFT_AT - 1) * PERIOD_MS,
        "the first forecast period follows the last closed one"
    );
    for (q, status) in [
        ("category=cat000&horizon=99", 400),
        ("category=cat000&horizon=0", 400),
        ("category=cat000&product=1", 400),
        ("", 400),
        ("category=cat000&bogus=1", 400),
        ("category=nope", 404),
        (&format!("category={}", "x".repeat(300)), 400),
        (&format!("category={}", "x".repeat(2000)), 414),
    ] {
        let r = http
            .get(format!("{}/v1/forecast?{q}", svc.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{q}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(
            e["error"].as_str().is_some_and(|s| !s.is_empty()),
            "{q}: {e}"
        );
    }
    let info: serde_json::Value = http
        .get(format!("{}/v1/model", svc.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["version"], format!("v{:06}", version_before as u32));
    assert_eq!(info["data_fingerprint"].as_str().unwrap().len(), 16);

    // Forecast rows reach the table.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = session
            .query_unpaged(
                format!("SELECT purchases FROM {keyspace}.forecasts_by_category WHERE category = 'cat000' AND day = ?"),
                (cartstream_events::time::utc_date((SHIFT_AT - 1) * PERIOD_MS),),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .rows_num();
        if rows > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no forecast rows in {keyspace}.forecasts_by_category"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The shift, streamed in steps of 12 periods; the metrics are read after each step.
    let mut max_smape = before;
    let mut max_psi = 0.0f64;
    let mut promoted_at = None;
    let mut recovered_at = None;
    let mut next = SHIFT_AT;
    while next < SHIFT_AT + 24 * 6 && recovered_at.is_none() {
        stream_periods(&producer, &topic, &enc, &synth, PERIOD_MS, next..next + 12).await;
        next += 12;
        let m = wait_for(
            &mut svc,
            "periods of the shift",
            Duration::from_secs(60),
            |m| get(m, closed) >= (next - START - 1) as f64,
        )
        .await;
        let s = get(&m, smape);
        let psi = m
            .iter()
            .filter(|(k, _)| k.starts_with("cartstream_model_drift_psi"))
            .map(|(_, v)| *v)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        max_smape = max_smape.max(if s.is_finite() { s } else { 0.0 });
        max_psi = max_psi.max(psi);
        let version = get(&m, "cartstream_model_champion_version");
        eprintln!(
            "+{:3} periods: live sMAPE {s:.3} ({} periods), max PSI {psi:.3}, champion v{version}, retrains error {} drift {}, decisions promoted {} no_gain {} baseline {}",
            next - SHIFT_AT,
            get(&m, "cartstream_model_live_window_periods"),
            get(&m, "cartstream_model_retrains_total{trigger=\"error\"}"),
            get(&m, "cartstream_model_retrains_total{trigger=\"drift\"}"),
            get(&m, promoted),
            get(&m, "cartstream_model_decisions_total{decision=\"rejected_no_gain\"}"),
            get(&m, "cartstream_model_decisions_total{decision=\"rejected_baseline\"}"),
        );
        if promoted_at.is_none() && version > version_before && get(&m, promoted) > promoted_before
        {
            promoted_at = Some(next - SHIFT_AT);
        }
        if promoted_at.is_some()
            && get(&m, "cartstream_model_live_window_periods") >= 24.0
            && s < ERROR_THRESHOLD
        {
            recovered_at = Some(next - SHIFT_AT);
        }
    }
    let m = kit::scrape_metrics(&svc.metrics).await;
    let triggered = get(&m, "cartstream_model_retrains_total{trigger=\"error\"}")
        + get(&m, "cartstream_model_retrains_total{trigger=\"drift\"}");
    assert!(
        max_smape > ERROR_THRESHOLD || max_psi > 0.5,
        "the shift crossed no threshold: sMAPE {max_smape}, PSI {max_psi}"
    );
    assert!(triggered >= 1.0, "no retrain on error or drift");
    assert!(
        promoted_at.is_some(),
        "no challenger promoted after the shift"
    );
    assert!(
        recovered_at.is_some(),
        "live error did not come back below the threshold"
    );
    eprintln!("shift: peak live sMAPE {max_smape:.3}, promoted by +{promoted_at:?}, recovered by +{recovered_at:?}");

    // The offline `train` command on the same topic (read to its end), stored without promotion.
    let out = Command::new(env!("CARGO_BIN_EXE_cartstream-model-service"))
        .args(["train", "--no-promote"])
        .env("KAFKA_BROKERS", kit::brokers())
        .env("SCHEMA_REGISTRY_URL", kit::registry_url())
        .env("TOPIC_PREFIX", &prefix)
        .env("MODEL_STORE_URL", &store)
        .env("MODEL_WINDOW_SIZE_MS", PERIOD_MS.to_string())
        // windows written here directly, without the windower's watermark records
        .env("MODEL_WINDOW_CLOCK", "windows")
        .env("MODEL_HOLDOUT_PERIODS", "24")
        .env("MODEL_TRAIN_WINDOW_PERIODS", "168")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "train: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("relative to seasonal-naive"), "{stdout}");
    eprintln!(
        "offline train: {}",
        stdout.lines().next().unwrap_or_default()
    );

    // Rollback through the API, then a clean stop.
    let version_now = get(&m, "cartstream_model_champion_version");
    let r = http
        .post(format!("{}/v1/rollback", svc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = wait_for(&mut svc, "rollback", Duration::from_secs(10), |m| {
        get(m, "cartstream_model_champion_version") < version_now
            && get(m, "cartstream_model_decisions_total{decision=\"rollback\"}") >= 1.0
    })
    .await;
    assert!(get(&m, "cartstream_model_champion_version") >= 1.0);

    let pid = svc.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = svc.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 15 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit after SIGTERM: {status}");

    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&store);
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
