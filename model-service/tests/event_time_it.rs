//! The model service in event time, on the real stack (Kafka, schema registry; forecasts not
//! written): four months of hourly `kpi.windows` of 5 categories, the service's default model
//! settings.
//!
//! 1. Fast: the whole history is in the topic before the service starts (a backlog). The
//!    service reads it without training anything until it is caught up, then trains one model
//!    (`initial`) whose training range ends at the newest closed period, with the same hold-out
//!    figures as the batch `train` over the same topic; no window is late.
//! 2. The end of input is declared (`cartstream-admin end-input`'s function): the service
//!    closes the last period and trains once on everything (`end_of_input`): training range at
//!    the end of the history, the same figures as `train` (which reads the marks too).
//! 3. Paced: the same history written in weekly steps into a second namespace while a second
//!    service runs, caught up after every step (so it retrains on its event-time schedule),
//!    then the end of input: the same champion figures as the fast run and `train`.
//! 4. The guarded API: reads need no token; retrain and rollback answer 401 without one and 403
//!    with a wrong one; a second retrain within the cooldown, or while one runs, gets 429 with
//!    Retry-After; the token is in no log line and not in `--help`.

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
use common::{send_periods, wait_for, Service};
use rdkafka::producer::FutureProducer;
use serde_json::Value;

const PERIOD_MS: i64 = 3_600_000;
const START: i64 = 24 * 3000;
const PERIODS: i64 = 24 * 120;
const END: i64 = START + PERIODS;
const TOKEN: &str = "it-token-7d1f9c0e5b";

fn base_env(cmd: &mut Command, prefix: &str, store: &str) {
    cmd.env("KAFKA_BROKERS", kit::brokers())
        .env("SCHEMA_REGISTRY_URL", kit::registry_url())
        .env("TOPIC_PREFIX", prefix)
        .env("MODEL_STORE_URL", store)
        .env("MODEL_WINDOW_SIZE_MS", PERIOD_MS.to_string())
        // windows written here directly, without the windower's watermark records
        .env("MODEL_WINDOW_CLOCK", "windows");
}

fn start(prefix: &str, store: &str, retrain_cooldown_secs: u64) -> Service {
    let (mp, ap) = (kit::free_port(), kit::free_port());
    let log = std::env::temp_dir().join(format!("{prefix}-service.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cartstream-model-service"));
    cmd.arg("run");
    base_env(&mut cmd, prefix, store);
    let child = cmd
        .env("WRITE_FORECASTS", "false")
        .env("METRICS_ADDR", format!("127.0.0.1:{mp}"))
        .env("HTTP_ADDR", format!("127.0.0.1:{ap}"))
        .env("MODEL_IDLE_TIMEOUT_MS", "500")
        .env("MODEL_API_TOKEN", TOKEN)
        .env(
            "MODEL_API_RETRAIN_COOLDOWN_SECS",
            retrain_cooldown_secs.to_string(),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Service {
        child,
        metrics: format!("http://127.0.0.1:{mp}/metrics"),
        api: format!("http://127.0.0.1:{ap}"),
        log: Some(log),
    }
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

const CLOSED: &str = "cartstream_model_periods_closed_total";
const RETRAINS: &str = "cartstream_model_retrains_total";
const LATE: &str = "cartstream_model_input_records_total{outcome=\"late\"}";

async fn champion(http: &reqwest::Client, svc: &Service) -> Value {
    http.get(format!("{}/v1/model", svc.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `train` over the topic into a fresh store: the stored metadata.
fn batch_train(prefix: &str, tag: &str) -> Value {
    let store = std::env::temp_dir().join(format!("{prefix}-train-{tag}"));
    let _ = std::fs::remove_dir_all(&store);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cartstream-model-service"));
    cmd.arg("train");
    base_env(&mut cmd, prefix, store.to_str().unwrap());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "train: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::read_to_string(store.join("models/v000001/metadata.json")).unwrap();
    let _ = std::fs::remove_dir_all(&store);
    serde_json::from_str(&meta).unwrap()
}

fn figures(meta: &Value) -> (&Value, i64) {
    (&meta["holdout"], meta["training_to_ms"].as_i64().unwrap())
}

fn evaluations(svc: &Service) -> usize {
    std::fs::read_to_string(svc.log.as_ref().unwrap())
        .unwrap()
        .matches("challenger evaluated")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_end_of_input_and_paced_replay_give_the_batch_champion() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let synth = Synth::new(5, 3);
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    let http = reqwest::Client::new();

    // 1. Fast: a backlog of four months.
    let prefix = kit::unique("model-et");
    let names = TopicNames::with_prefix(prefix.clone());
    cartstream_admin::bootstrap(&kafka, &registry, &names, 3, 1)
        .await
        .unwrap();
    let topic = names.name(Topic::KpiWindows);
    let enc: Encoder<KpiWindow> = Encoder::register(&registry, &names.subject(Topic::KpiWindows))
        .await
        .unwrap();
    let t0 = Instant::now();
    send_periods(&producer, &topic, &enc, &synth, PERIOD_MS, START..END).await;
    eprintln!(
        "{} periods x 5 categories written in {:.1} s",
        PERIODS,
        t0.elapsed().as_secs_f64()
    );
    let store = std::env::temp_dir().join(format!("{prefix}-store"));
    let store = store.to_str().unwrap().to_string();
    let t0 = Instant::now();
    let mut svc = start(&prefix, &store, 60);
    let m = wait_for(
        &mut svc,
        "the backlog read and a first champion",
        Duration::from_secs(120),
        |m| {
            get(m, CLOSED) >= (PERIODS - 1) as f64
                && get(m, "cartstream_model_champion_version") >= 1.0
        },
    )
    .await;
    eprintln!(
        "backlog: read, caught up and trained in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // a moment for anything that would follow
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m2 = kit::scrape_metrics(&svc.metrics).await;
    assert_eq!(
        get(&m, CLOSED),
        (PERIODS - 1) as f64,
        "the newest period stays open"
    );
    assert_eq!(
        kit::metric_total(&m2, RETRAINS),
        1.0,
        "one challenger for the whole backlog"
    );
    assert_eq!(get(&m2, &format!("{RETRAINS}{{trigger=\"initial\"}}")), 1.0);
    assert_eq!(evaluations(&svc), 1);
    assert_eq!(get(&m2, LATE), 0.0, "no late window");
    let live = champion(&http, &svc).await;
    let batch = batch_train(&prefix, "open");
    let (h_live, to_live) = figures(&live);
    let (h_batch, to_batch) = figures(&batch);
    eprintln!(
        "backlog champion {} trained to period {} (history ends at {END}), purchases MAE {} vs batch train {}",
        live["version"],
        to_live / PERIOD_MS,
        h_live["purchases"]["mae"],
        h_batch["purchases"]["mae"]
    );
    assert_eq!(
        to_live,
        (END - 1) * PERIOD_MS,
        "trained to the newest closed period"
    );
    assert_eq!(to_live, to_batch);
    assert_eq!(h_live, h_batch, "the same hold-out figures as train");
    assert_eq!(live["data_fingerprint"], batch["data_fingerprint"]);

    // 2. The end of input: the last period closes, one training on everything.
    cartstream_admin::end_input(&kafka, &topic, i64::MAX, Duration::from_secs(30))
        .await
        .unwrap();
    wait_for(
        &mut svc,
        "the end-of-input training",
        Duration::from_secs(60),
        |m| get(m, &format!("{RETRAINS}{{trigger=\"end_of_input\"}}")) >= 1.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = kit::scrape_metrics(&svc.metrics).await;
    assert_eq!(get(&m, CLOSED), PERIODS as f64);
    assert_eq!(kit::metric_total(&m, RETRAINS), 2.0);
    assert_eq!(get(&m, LATE), 0.0);
    let fast = champion(&http, &svc).await;
    let batch_end = batch_train(&prefix, "ended");
    assert_eq!(fast["trigger"], "end_of_input");
    assert_eq!(fast["decision"], "promoted");
    assert_eq!(fast["training_to_ms"].as_i64().unwrap(), END * PERIOD_MS);
    assert_eq!(figures(&fast), figures(&batch_end));
    eprintln!(
        "end of input: champion {} trained to {} = the history's end; purchases MAE {} (train: {})",
        fast["version"],
        fast["training_to_ms"],
        fast["holdout"]["purchases"]["mae"],
        batch_end["holdout"]["purchases"]["mae"]
    );

    // 4a. The API of the fast service: open reads, guarded writes, the cooldown.
    let r = http
        .get(format!("{}/v1/forecast?category=cat000", svc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "reads need no token");
    let r = http
        .get(format!("{}/v1/models", svc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for route in ["retrain", "rollback"] {
        let url = format!("{}/v1/{route}", svc.api);
        let r = http.post(&url).send().await.unwrap();
        assert_eq!(r.status(), 401, "{route} without a token");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = http
            .post(&url)
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{route} with a wrong token");
    }
    let retrains_before = kit::metric_total(&kit::scrape_metrics(&svc.metrics).await, RETRAINS);
    assert_eq!(retrains_before, 2.0, "refused requests trained nothing");
    let url = format!("{}/v1/retrain", svc.api);
    let r = http.post(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = http.post(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 429, "a second retrain within the cooldown");
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after), "Retry-After {after}");
    assert_eq!(
        kit::metric_total(&kit::scrape_metrics(&svc.metrics).await, RETRAINS),
        3.0
    );

    // 3. Paced: the same history in weekly steps, the service caught up after each.
    let prefix_b = kit::unique("model-et-paced");
    let names_b = TopicNames::with_prefix(prefix_b.clone());
    cartstream_admin::bootstrap(&kafka, &registry, &names_b, 3, 1)
        .await
        .unwrap();
    let topic_b = names_b.name(Topic::KpiWindows);
    let enc_b: Encoder<KpiWindow> =
        Encoder::register(&registry, &names_b.subject(Topic::KpiWindows))
            .await
            .unwrap();
    let store_b = std::env::temp_dir().join(format!("{prefix_b}-store"));
    let store_b = store_b.to_str().unwrap().to_string();
    let mut paced = start(&prefix_b, &store_b, 0);
    let mut next = START;
    while next < END {
        let to = (next + 168).min(END);
        send_periods(&producer, &topic_b, &enc_b, &synth, PERIOD_MS, next..to).await;
        next = to;
        let step = next;
        wait_for(&mut paced, "a paced step", Duration::from_secs(60), |m| {
            get(m, CLOSED) >= (step - START - 1) as f64
                && get(m, "cartstream_model_caught_up") == 1.0
        })
        .await;
        // caught up (idle timeout 500 ms) and any retrain done before the next step
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    cartstream_admin::end_input(&kafka, &topic_b, i64::MAX, Duration::from_secs(30))
        .await
        .unwrap();
    wait_for(
        &mut paced,
        "the paced end-of-input training",
        Duration::from_secs(60),
        |m| get(m, &format!("{RETRAINS}{{trigger=\"end_of_input\"}}")) >= 1.0,
    )
    .await;
    // the counter moves when the training starts: wait for its champion
    let deadline = Instant::now() + Duration::from_secs(60);
    let paced_meta = loop {
        let c = champion(&http, &paced).await;
        if c["trigger"] == "end_of_input" || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let m = kit::scrape_metrics(&paced.metrics).await;
    eprintln!(
        "paced: {} challengers evaluated ({:?}), champion {} trained to {}",
        evaluations(&paced),
        m.iter()
            .filter(|(k, _)| k.starts_with(RETRAINS))
            .collect::<Vec<_>>(),
        paced_meta["version"],
        paced_meta["training_to_ms"]
    );
    assert!(
        kit::metric_total(&m, RETRAINS) >= 2.0,
        "the paced run retrains on its way"
    );
    assert_eq!(get(&m, LATE), 0.0);
    assert_eq!(paced_meta["trigger"], "end_of_input");
    assert_eq!(figures(&paced_meta), figures(&fast), "paced = fast");
    assert_eq!(paced_meta["data_fingerprint"], fast["data_fingerprint"]);

    // 4b. One retrain at a time (no cooldown on this service): of two at once, one waits.
    let url_b = format!("{}/v1/retrain", paced.api);
    let mut saw_429 = false;
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            http.post(&url_b).bearer_auth(TOKEN).send(),
            http.post(&url_b).bearer_auth(TOKEN).send()
        );
        let mut s = [a.unwrap(), b.unwrap()];
        s.sort_by_key(|r| r.status());
        assert_eq!(s[0].status(), 200, "one of them trains");
        if s[1].status() == 429 {
            assert!(s[1].headers().contains_key("retry-after"));
            saw_429 = true;
            break;
        }
        assert_eq!(s[1].status(), 200);
    }
    assert!(saw_429, "two retrains at once both ran");

    // The token is in no log line and not in --help.
    for s in [&svc, &paced] {
        let path = s.log.as_ref().unwrap();
        let log = std::fs::read_to_string(path).unwrap();
        assert!(log.contains("forecast API listening"));
        assert!(!log.contains(TOKEN), "the token is in {}", path.display());
    }
    let help = Command::new(env!("CARGO_BIN_EXE_cartstream-model-service"))
        .args(["run", "--help"])
        .env("MODEL_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--api-token"), "{help}");
    assert!(!help.contains(TOKEN), "{help}");

    for s in [&svc, &paced] {
        if let Some(l) = &s.log {
            let _ = std::fs::remove_file(l);
        }
    }
    drop(svc);
    drop(paced);
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_dir_all(&store_b);
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
    kit::delete_topics_with_prefix(&kafka, &prefix_b).await;
}
