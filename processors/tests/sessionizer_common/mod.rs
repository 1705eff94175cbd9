//! Shared by `sessionizer_it.rs` and `sessionizer_scale_it.rs` (one producer per test process:
//! its metrics register once). See `sessionizer_it.rs` for what is checked.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cartstream_events::types::{
    DeadLetter, EnrichedEvent, EventType, RawEvent, Session, SourceMeta,
};
use cartstream_events::{Decoder, Encoder};
use cartstream_kafka::{KafkaArgs, Topic, TopicNames};
use cartstream_producer::cli::{Cli, Command as ProducerCommand};
use cartstream_testkit as kit;
use cartstream_testkit::{read_all, StackEnv};
use clap::Parser;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const GAP_MS: i64 = 60_000;
const FLUSH_SESSION: &str = "zz-end-of-input";

pub fn events() -> usize {
    std::env::var("CARTSTREAM_SESSION_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000)
}

pub fn spawn(bin: &str, prefix: &str, instance: &str, extra: &[&str]) -> Child {
    Command::new(bin)
        .args([
            "--topic-prefix",
            prefix,
            "--metrics-addr",
            "off",
            "--instance-id",
            instance,
            "--batch-size",
            "500",
        ])
        .args(extra)
        .stack_env()
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// The producer, in this process, as `cartstream-producer simulate ...` would run.
async fn simulate(prefix: String, n: usize, truth: std::path::PathBuf) {
    let count = n.to_string();
    let truth = truth.to_string_lossy().to_string();
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
        "5",
        "--count",
        &count,
        "--rate",
        "1000",
        "--start-time",
        "2026-11-01T08:00:00Z",
        "--speed",
        "50",
        "--no-seasonality",
        "--sessions",
        "200",
        "--session-gap-secs",
        "60",
        "--products",
        "300",
        "--users",
        "2000",
        "--currencies",
        "USD,EUR,GBP",
        "--late-ratio",
        "0.02",
        "--late-delay",
        "5s..2m",
        "--duplicate-ratio",
        "0.01",
        "--malformed-ratio",
        "0.005",
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

/// Valid raw events far after everything else, each on its own session (`keys` of them).
async fn send_end_of_input(kafka: &KafkaArgs, names: &TopicNames, at: i64, keys: usize) {
    let registry = kit::registry();
    let enc: Encoder<RawEvent> = Encoder::register(&registry, &names.subject(Topic::Raw))
        .await
        .unwrap();
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    for i in 0..keys {
        let session = format!("{FLUSH_SESSION}-{i}");
        let e = RawEvent {
            event_id: format!("end-of-input-{i}"),
            event_time: at.to_string(),
            event_type: "view".into(),
            product_id: 1,
            category_id: 1,
            category_code: None,
            brand: None,
            price: 1.0,
            currency: "USD".into(),
            quantity: 1,
            user_id: 1,
            user_session: Some(session.clone()),
            channel: None,
            source: SourceMeta {
                system: "it".into(),
                producer_id: "it".into(),
                file: None,
                line: None,
                sent_at: at,
            },
        };
        producer
            .send(
                FutureRecord::to(&names.name(Topic::Raw))
                    .key(&session)
                    .payload(&enc.encode(&e).unwrap()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Sessions computed independently of the sessionizer: per session key, events sorted by
/// (time, id), a new session after a pause of `GAP_MS` or more.
fn expected_sessions(events: &[EnrichedEvent]) -> BTreeMap<String, Session> {
    let mut by_key: HashMap<&str, Vec<&EnrichedEvent>> = HashMap::new();
    for e in events {
        by_key.entry(&e.user_session).or_default().push(e);
    }
    let mut out = BTreeMap::new();
    for (key, mut evs) in by_key {
        evs.sort_by(|a, b| (a.event_time, &a.event_id).cmp(&(b.event_time, &b.event_id)));
        let mut groups: Vec<Vec<&EnrichedEvent>> = Vec::new();
        for e in evs {
            match groups.last_mut() {
                Some(g) if e.event_time - g.last().unwrap().event_time < GAP_MS => g.push(e),
                _ => groups.push(vec![e]),
            }
        }
        for g in groups {
            let first = g[0];
            let purchases: Vec<&&EnrichedEvent> = g
                .iter()
                .filter(|e| e.event_type == EventType::Purchase)
                .collect();
            let count = |t: EventType| g.iter().filter(|e| e.event_type == t).count() as i64;
            let micros: i64 = purchases
                .iter()
                .map(|e| (e.price * 1e6).round() as i64 * i64::from(e.quantity))
                .sum();
            let start = first.event_time;
            let end = g.last().unwrap().event_time;
            let s = Session {
                session_id: format!("{key}@{start}"),
                user_id: first.user_id,
                user_country: first.user_country.clone(),
                user_device: first.user_device.clone(),
                user_segment: first.user_segment.clone(),
                session_start: start,
                session_end: end,
                duration_ms: end - start,
                views: count(EventType::View),
                carts: count(EventType::Cart),
                removals: count(EventType::RemoveFromCart),
                purchases: purchases.len() as i64,
                revenue: micros as f64 / 1e6,
                currency: purchases
                    .first()
                    .map_or(first.currency.clone(), |p| p.currency.clone()),
                converted: !purchases.is_empty(),
                order_id: purchases.first().map(|p| p.event_id.clone()),
            };
            out.insert(s.session_id.clone(), s);
        }
    }
    out
}

/// One run: `sessionizers` instances of the sessionizer; `plan` lists (process, seconds it stays
/// down) kills during production, process 0 = cleaner, 1 = enricher, 2.. = sessionizers.
pub async fn run(tag: &str, sessionizers: usize, plan: &[(usize, u64)]) {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique(tag);
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 4, 1)
        .await
        .unwrap();
    let n = events();
    let dir = std::env::temp_dir().join(format!("{}truth", prefix.trim_end_matches('.')));
    let truth_path = dir.with_extension("json");

    let cleaner = env!("CARGO_BIN_EXE_cartstream-cleaner");
    let enricher = env!("CARGO_BIN_EXE_cartstream-enricher");
    let sessionizer = env!("CARGO_BIN_EXE_cartstream-sessionizer");
    let sess_args = ["--gap", "60s", "--grace", "5m", "--idle-timeout", "3s"];
    let mut procs: Vec<(&str, String, Child)> = vec![
        (cleaner, "c0".into(), spawn(cleaner, &prefix, "c0", &[])),
        (enricher, "e0".into(), spawn(enricher, &prefix, "e0", &[])),
    ];
    for i in 0..sessionizers {
        let id = format!("s{i}");
        let child = spawn(sessionizer, &prefix, &id, &sess_args);
        procs.push((sessionizer, id, child));
    }
    let producing = tokio::spawn(simulate(prefix.clone(), n, truth_path.clone()));

    // Kill -9 during production; a process that stays down longer than the session timeout
    // (10 s) has its partitions taken over by another instance (a rebalance), then taken back.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut kills = 0;
    for (which, down) in plan {
        tokio::time::sleep(Duration::from_millis(rng.random_range(2_000..5_000))).await;
        if producing.is_finished() {
            break;
        }
        let (bin, instance, child) = &mut procs[*which];
        child.kill().unwrap();
        child.wait().unwrap();
        tokio::time::sleep(Duration::from_secs(*down)).await;
        let extra: &[&str] = if *which >= 2 { &sess_args } else { &[] };
        *child = spawn(bin, &prefix, instance, extra);
        kills += 1;
    }
    producing.await.unwrap();
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&truth_path);
    let expected_events = truth["events"].as_u64().unwrap() as usize;

    // Wait until every event is enriched, then send the end-of-input event.
    let enriched_topic = names.name(Topic::Enriched);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut enriched = Vec::new();
    while Instant::now() < deadline {
        let (k, t) = (kafka.clone(), enriched_topic.clone());
        enriched = tokio::task::spawn_blocking(move || read_all(&k, &t))
            .await
            .unwrap();
        if enriched.len() >= expected_events {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(enriched.len(), expected_events, "enriched events");
    let dec = Decoder::<EnrichedEvent>::new(registry.clone());
    let mut events = Vec::with_capacity(enriched.len());
    for m in &enriched {
        events.push(dec.decode(m.payload().unwrap()).await.unwrap());
    }
    let max_time = events.iter().map(|e| e.event_time).max().unwrap();
    // One instance: one end-of-input event, on one partition; the others must close their sessions
    // as idle partitions. Several instances: an instance whose partitions are all idle follows only
    // its own (the documented limit), so every partition gets an end-of-input event.
    let keys = if sessionizers == 1 { 1 } else { 64 };
    send_end_of_input(&kafka, &names, max_time + 24 * 3_600_000, keys).await;

    let expected = expected_sessions(&events);
    let sessions_topic = names.name(Topic::Sessions);
    let sdec = Decoder::<Session>::new(registry.clone());
    let mut got: Vec<Session> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let (k, t) = (kafka.clone(), sessions_topic.clone());
        let msgs = tokio::task::spawn_blocking(move || read_all(&k, &t))
            .await
            .unwrap();
        got.clear();
        for m in &msgs {
            got.push(sdec.decode(m.payload().unwrap()).await.unwrap());
        }
        if got.len() >= expected.len() {
            // Leave a last transaction the time to add a (wrong) extra session.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let (k, t) = (kafka.clone(), sessions_topic.clone());
            let msgs = tokio::task::spawn_blocking(move || read_all(&k, &t))
                .await
                .unwrap();
            got.clear();
            for m in &msgs {
                got.push(sdec.decode(m.payload().unwrap()).await.unwrap());
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (_, _, mut c) in procs {
        let _ = c.kill();
        let _ = c.wait();
    }

    // Exactly the independent sessions, each once.
    let mut by_id: BTreeMap<String, Session> = BTreeMap::new();
    for s in &got {
        assert!(
            by_id.insert(s.session_id.clone(), s.clone()).is_none(),
            "session emitted twice: {}",
            s.session_id
        );
    }
    assert!(
        !by_id.keys().any(|k| k.starts_with(FLUSH_SESSION)),
        "the end-of-input session cannot be closed yet"
    );
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !by_id.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = by_id
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?} ({} expected, {} got)",
        expected.len(),
        by_id.len()
    );
    for (id, want) in &expected {
        assert_eq!(&by_id[id], want, "session {id}");
    }

    // And the producer's ground truth: one session per user_session, the same conversions,
    // events and revenue per currency (in cents).
    assert_eq!(
        by_id.len() as u64,
        truth["sessions"]["total"].as_u64().unwrap(),
        "sessions"
    );
    assert_eq!(
        by_id.values().filter(|s| s.converted).count() as u64,
        truth["sessions"]["converted"].as_u64().unwrap()
    );
    let t = &truth["totals"];
    for (field, value) in [
        ("views", by_id.values().map(|s| s.views).sum::<i64>()),
        ("carts", by_id.values().map(|s| s.carts).sum()),
        ("removals", by_id.values().map(|s| s.removals).sum()),
        ("purchases", by_id.values().map(|s| s.purchases).sum()),
    ] {
        assert_eq!(value as u64, t[field].as_u64().unwrap(), "{field}");
    }
    let mut cents: BTreeMap<String, i64> = BTreeMap::new();
    for s in by_id.values() {
        *cents.entry(s.currency.clone()).or_default() += (s.revenue * 100.0).round() as i64;
    }
    cents.retain(|_, c| *c != 0);
    let truth_cents: BTreeMap<String, i64> = t["revenue_cents"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
        .filter(|(_, c)| *c != 0)
        .collect();
    assert_eq!(cents, truth_cents, "revenue per currency");

    // Nothing was too late for the grace.
    let dlq = Decoder::<DeadLetter>::new(registry.clone());
    for m in read_all(&kafka, &names.name(Topic::DeadLetters)) {
        let d = dlq.decode(m.payload().unwrap()).await.unwrap();
        assert_ne!(
            d.stage, "sessionizer",
            "dead-lettered: {} {}",
            d.error_code, d.message
        );
    }
    eprintln!(
        "{tag}: {} events, {} sessions ({} converted), {kills} kills, {sessionizers} sessionizer(s), all equal",
        events.len(),
        by_id.len(),
        by_id.values().filter(|s| s.converted).count()
    );
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
