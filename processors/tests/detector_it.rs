//! The detector through the real pipeline: producer (trend scenario) -> cleaner -> enricher ->
//! windower (the real one, tumbling 1 minute) -> detector, with the detector killed (SIGKILL) and
//! restarted mid-run.
//!
//! The simulated run is steady for 45 minutes (10 windows of warm-up, then 35 windows in which a
//! trend alert can be raised) and then `kids.toys` trends for 6 minutes. Checked:
//! - a trend alert for the category `kids.toys` within two windows of the burst (the first minute
//!   of the trend whose purchases of the category reach the minimum volume, from the producer's
//!   ground truth);
//! - no trend alert before the trend starts, and none during it for subjects unrelated to the
//!   trend (the false alarms; the count is printed);
//! - after the run, a bot buying 15 times within a minute under 15 different sessions (so on
//!   several enriched partitions) raises one suspicious-user alert, through the by-user
//!   repartition;
//! - one purchase at five times its catalog price raises one price-anomaly alert, and the steady
//!   run raises none;
//! - every alert id is unique (exactly once through the kills).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cartstream_events::types::{Alert, AlertType, DeadLetter, Product, RawEvent, SourceMeta};
use cartstream_events::{Decoder, Encoder};
use cartstream_kafka::{Topic, TopicNames};
use cartstream_producer::cli::{Cli, Command as ProducerCommand};
use cartstream_testkit as kit;
use cartstream_testkit::{read_all, StackEnv};
use clap::Parser;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const BOT_USER: i64 = 987_654_321;
const CATEGORY: &str = "kids.toys";

fn spawn(bin: &str, prefix: &str, instance: &str, extra: &[&str]) -> Child {
    Command::new(bin)
        .args([
            "--topic-prefix",
            prefix,
            "--metrics-addr",
            "off",
            "--instance-id",
            instance,
        ])
        .args(extra)
        .stack_env()
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// Simulated minutes before the trend: `CARTSTREAM_DETECTOR_STEADY_MINUTES` (default 45; e.g. 300
/// for a five-hour false-alarm run by hand).
fn steady_minutes() -> u64 {
    std::env::var("CARTSTREAM_DETECTOR_STEADY_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45)
}

async fn simulate(prefix: String, truth: std::path::PathBuf) {
    let truth = truth.to_string_lossy().to_string();
    // About 660 events per simulated minute; the run ends some 9 minutes after the trend starts.
    let steady = steady_minutes();
    let count = ((steady + 9) * 700).to_string();
    let trend_at = format!("+{steady}m");
    let cli = Cli::try_parse_from([
        "cartstream-producer",
        "simulate",
        "--topic-prefix",
        &prefix,
        "--brokers",
        &kit::brokers(),
        "--schema-registry-url",
        &kit::registry_url(),
        "--metrics-addr",
        "off",
        "--progress",
        "off",
        "--seed",
        "9",
        "--count",
        &count,
        "--rate",
        "1500",
        "--start-time",
        "2026-11-01T08:00:00Z",
        "--speed",
        "142",
        "--no-seasonality",
        "--sessions",
        "400",
        "--session-gap-secs",
        "600",
        "--products",
        "300",
        "--users",
        "3000",
        "--trend-at",
        &trend_at,
        "--trend-for",
        "6m",
        "--trend-category",
        CATEGORY,
        "--duplicate-ratio",
        "0.01",
        "--ground-truth",
        &truth,
    ])
    .unwrap();
    let Some(ProducerCommand::Simulate(args)) = cli.command else {
        panic!("simulate expected");
    };
    let metrics = cartstream_producer::metrics::Metrics::register().unwrap();
    cartstream_producer::run::simulate(*args, cartstream_runtime::Shutdown::new(), metrics, || {})
        .await
        .unwrap();
}

fn raw(id: &str, session: &str, user: i64, t: i64, product: &Product, price: f64) -> RawEvent {
    RawEvent {
        event_id: id.into(),
        event_time: t.to_string(),
        event_type: "purchase".into(),
        product_id: product.product_id,
        category_id: product.category_id,
        category_code: Some(product.category_code.clone()),
        brand: Some(product.brand.clone()),
        price,
        currency: product.currency.clone(),
        quantity: 1,
        user_id: user,
        user_session: Some(session.into()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trends_bots_and_prices_raise_the_right_alerts_and_a_steady_run_none() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("detect");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 4, 1)
        .await
        .unwrap();
    let truth_path =
        std::env::temp_dir().join(format!("{}truth.json", prefix.trim_end_matches('.')));

    let cleaner = env!("CARGO_BIN_EXE_cartstream-cleaner");
    let enricher = env!("CARGO_BIN_EXE_cartstream-enricher");
    let windower = env!("CARGO_BIN_EXE_cartstream-windower");
    let detector = env!("CARGO_BIN_EXE_cartstream-detector");
    let win_args = [
        "--window-size",
        "1m",
        "--grace",
        "2m",
        "--idle-timeout",
        "3s",
    ];
    let det_args = ["--idle-timeout", "3s"];
    let mut procs: Vec<Child> = vec![
        spawn(cleaner, &prefix, "c0", &[]),
        spawn(enricher, &prefix, "e0", &[]),
        spawn(windower, &prefix, "w0", &win_args),
        spawn(detector, &prefix, "d0", &det_args),
    ];
    let producing = tokio::spawn(simulate(prefix.clone(), truth_path.clone()));
    // Two kill -9s of the detector while it works; it must resume with its baselines.
    for wait in [8, 9] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        procs[3].kill().unwrap();
        procs[3].wait().unwrap();
        procs[3] = spawn(detector, &prefix, "d0", &det_args);
    }
    producing.await.unwrap();
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&truth_path);
    let trend_from = truth["trend"]["from_ms"].as_i64().unwrap();
    let end = truth["event_time_max"].as_i64().unwrap();
    // The burst: the first minute of the trend whose category purchases reach the minimum volume.
    let burst = truth["watched_purchases_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["minute"].as_i64().unwrap(),
                m["purchases"].as_i64().unwrap(),
            )
        })
        .find(|(m, n)| *m >= trend_from && *n >= 10)
        .map(|(m, _)| m)
        .expect("the trend's purchases reach 10 per minute");

    // After the run: a bot and a price anomaly, then one purchase a day later (end of input).
    // The catalog as the enricher sees it now: the latest version of each product (prices change
    // during the run, and products are keyed by id, so the last record of a key is the latest).
    let latest: BTreeMap<i64, Product> = {
        let dec = Decoder::<Product>::new(registry.clone());
        let mut m = BTreeMap::new();
        for r in read_all(&kafka, &names.name(Topic::Products)) {
            let p = dec.decode(r.payload().unwrap()).await.unwrap();
            m.insert(p.product_id, p);
        }
        m
    };
    let product = latest
        .values()
        .find(|p| p.price > 1.0 && p.category_code != CATEGORY)
        .unwrap()
        .clone();
    let products: Vec<Product> = latest
        .values()
        .filter(|p| p.price > 0.0 && p.currency == product.currency)
        .cloned()
        .collect();
    let m0 = (end / 60_000 + 2) * 60_000;
    let enc: Encoder<RawEvent> = Encoder::register(&registry, &names.subject(Topic::Raw))
        .await
        .unwrap();
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    let mut injected = Vec::new();
    for i in 0..15 {
        let p = &products[i % products.len()];
        injected.push(raw(
            &format!("bot-{i}"),
            &format!("bot-session-{i}"),
            BOT_USER,
            m0 + 1_000 * i as i64,
            p,
            p.price,
        ));
    }
    injected.push(raw(
        "it-price-anomaly",
        "it-anomaly-session",
        42,
        m0 + 20_000,
        &product,
        (product.price * 5.0 * 100.0).round() / 100.0,
    ));
    let end_of_input = raw(
        "it-end-of-input",
        "it-end-session",
        BOT_USER,
        m0 + 86_400_000,
        &product,
        product.price,
    );
    for e in &injected {
        producer
            .send(
                FutureRecord::to(&names.name(Topic::Raw))
                    .key(e.user_session.as_deref().unwrap())
                    .payload(&enc.encode(e).unwrap()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    // The end of input only once the injected purchases went through (their sessions are on other
    // partitions: sent at once, it could overtake them and close the bot's window early).
    tokio::time::sleep(Duration::from_secs(8)).await;
    producer
        .send(
            FutureRecord::to(&names.name(Topic::Raw))
                .key(end_of_input.user_session.as_deref().unwrap())
                .payload(&enc.encode(&end_of_input).unwrap()),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    // Wait for the trend, bot and price alerts.
    let dec = Decoder::<Alert>::new(registry.clone());
    let mut alerts: Vec<Alert> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    let wanted = |a: &[Alert]| {
        a.iter().any(|x| x.alert_type == AlertType::SuspiciousUser)
            && a.iter().any(|x| x.alert_type == AlertType::PriceAnomaly)
            && a.iter()
                .any(|x| x.alert_type == AlertType::Trend && x.subject_id == CATEGORY)
    };
    while Instant::now() < deadline {
        let (k, t) = (kafka.clone(), names.name(Topic::Alerts));
        let msgs = tokio::task::spawn_blocking(move || read_all(&k, &t))
            .await
            .unwrap();
        alerts.clear();
        for m in &msgs {
            alerts.push(dec.decode(m.payload().unwrap()).await.unwrap());
        }
        if wanted(&alerts) {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let (k, t) = (kafka.clone(), names.name(Topic::Alerts));
            let msgs = tokio::task::spawn_blocking(move || read_all(&k, &t))
                .await
                .unwrap();
            alerts.clear();
            for m in &msgs {
                alerts.push(dec.decode(m.payload().unwrap()).await.unwrap());
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for mut c in procs {
        let _ = c.kill();
        let _ = c.wait();
    }
    for a in &alerts {
        eprintln!(
            "alert {} [{:?}] observed {} baseline {:.2} threshold {:.2}: {}",
            a.alert_id, a.severity, a.observed, a.baseline, a.threshold, a.message
        );
    }

    // Exactly once: no id twice.
    let mut ids = HashSet::new();
    for a in &alerts {
        assert!(
            ids.insert(a.alert_id.clone()),
            "alert twice: {}",
            a.alert_id
        );
    }

    // The trend, within two windows of the burst.
    let trend: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.alert_type == AlertType::Trend && a.subject_id == CATEGORY)
        .collect();
    assert_eq!(trend.len(), 1, "one alert per burst: {trend:?}");
    assert_eq!(trend[0].subject_kind, "category");
    assert!(
        trend[0].window_start >= trend_from && trend[0].window_start <= burst + 2 * 60_000,
        "trend alert for the window at {} (trend from {trend_from}, burst at {burst})",
        trend[0].window_start
    );

    // False alarms: trend alerts before the trend, or for subjects unrelated to it, before the
    // injected events.
    let related: HashSet<String> = truth["trend"]["product_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap().to_string())
        .chain([CATEGORY.to_string()])
        .collect();
    let false_alarms: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.alert_type == AlertType::Trend && a.window_start < m0)
        .filter(|a| a.window_start < trend_from || !related.contains(&a.subject_id))
        .collect();
    let steady_minutes = (trend_from - truth["event_time_min"].as_i64().unwrap()) / 60_000;
    eprintln!(
        "detector: {} trend false alarms over {steady_minutes} steady simulated minutes and the trend; trend alert at window {} (burst {burst}, trend from {trend_from})",
        false_alarms.len(),
        trend[0].window_start
    );
    assert!(
        steady_minutes as u64 + 1 >= self::steady_minutes(),
        "{steady_minutes} steady minutes"
    );
    assert!(false_alarms.is_empty(), "false alarms: {false_alarms:?}");

    // The bot, through the by-user repartition.
    let bots: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.alert_type == AlertType::SuspiciousUser)
        .collect();
    assert_eq!(bots.len(), 1, "{bots:?}");
    assert_eq!(bots[0].subject_id, BOT_USER.to_string());
    assert_eq!(bots[0].observed, 15.0);
    assert_eq!(
        bots[0].alert_id,
        format!("suspicious_user/user/{BOT_USER}/{m0}")
    );

    // The price anomaly, and nothing else.
    let prices: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.alert_type == AlertType::PriceAnomaly)
        .collect();
    assert_eq!(prices.len(), 1, "{prices:?}");
    assert_eq!(prices[0].subject_id, product.product_id.to_string());
    assert_eq!(
        prices[0].alert_id,
        format!(
            "price_anomaly/product/{}/it-price-anomaly",
            product.product_id
        )
    );

    // Nothing was too late for the detector.
    let dlq = Decoder::<DeadLetter>::new(registry.clone());
    for m in read_all(&kafka, &names.name(Topic::DeadLetters)) {
        let d = dlq.decode(m.payload().unwrap()).await.unwrap();
        assert_ne!(
            d.stage, "detector",
            "dead-lettered: {} {}",
            d.error_code, d.message
        );
    }

    let by_type: BTreeMap<String, usize> = alerts.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(format!("{:?}", a.alert_type)).or_default() += 1;
        m
    });
    eprintln!("alerts by type: {by_type:?}");
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
