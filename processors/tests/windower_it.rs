//! The windower on the real stack: producer (simulate, with late, duplicate and malformed events,
//! three currencies) -> cleaner -> enricher -> windower, the windower killed with SIGKILL several
//! times while windows are open. Then:
//!
//! - every final window on `kpi.windows` appears once and equals the window computed here,
//!   independently, from the enriched events minus those on the late topic (all five dimensions,
//!   every KPI, distinct users exact);
//! - every window that must be closed by the end is there, including the last ones, which only
//!   close because three silent input partitions adopt the watermark of the one still receiving
//!   events (idle-partition handling);
//! - every late event on `purchases.late` is justified (its partition's watermark had passed its
//!   first window's end plus grace) and an event sent far too late is there;
//! - for dimension `all` with tumbling windows, on-time windows plus late events per minute equal
//!   the producer's ground truth (`per_minute`).
//!
//! Size: `CARTSTREAM_WIN_IT_EVENTS` events (default 12 000); `CARTSTREAM_WIN_IT_SLIDE_SECS` runs
//! hopping windows of 2 minutes with that slide instead of 1-minute tumbling ones;
//! `CARTSTREAM_WIN_IT_INSTANCES=2` runs two windower instances (one group, partitions shared,
//! killed in turn) — both by hand.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cartstream_events::types::{EnrichedEvent, EventType, KpiWindow, LateEvent};
use cartstream_events::{Decoder, Encoder};
use cartstream_kafka::{Topic, TopicNames};
use cartstream_producer::cli::{Cli, Command as ProducerCommand};
use cartstream_testkit as kit;
use cartstream_testkit::{read_all, StackEnv};
use clap::Parser;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const GRACE_MS: i64 = 10_000;
const OOO_MS: i64 = 5_000;

fn env_or(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spawn(bin: &str, prefix: &str, instance: &str, extra: &[String]) -> Child {
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
        "9",
        "--count",
        &count,
        "--rate",
        "1200",
        "--start-time",
        "2026-11-01T10:00:00Z",
        "--speed",
        "30",
        "--no-seasonality",
        "--products",
        "300",
        "--users",
        "2000",
        "--currencies",
        "USD,EUR,GBP",
        "--late-ratio",
        "0.03",
        "--late-delay",
        "5s..3m",
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

/// What the test computes for one window, independently of the windower's code.
#[derive(Debug, Default, Clone, PartialEq)]
struct Expect {
    views: i64,
    carts: i64,
    removals: i64,
    purchases: i64,
    units: i64,
    revenue_cents: i64,
    users: BTreeSet<i64>,
}

fn dims(e: &EnrichedEvent) -> [(&'static str, String); 5] {
    let text = |s: &str| {
        let s = s.trim();
        if s.is_empty() {
            "unknown".to_string()
        } else {
            s.to_string()
        }
    };
    [
        ("all", "all".to_string()),
        ("category", text(&e.category_code)),
        ("product", e.product_id.to_string()),
        ("brand", text(&e.brand)),
        (
            "event_type",
            match e.event_type {
                EventType::View => "view",
                EventType::Cart => "cart",
                EventType::RemoveFromCart => "remove_from_cart",
                EventType::Purchase => "purchase",
            }
            .to_string(),
        ),
    ]
}

fn add(x: &mut Expect, e: &EnrichedEvent) {
    match e.event_type {
        EventType::View => x.views += 1,
        EventType::Cart => x.carts += 1,
        EventType::RemoveFromCart => x.removals += 1,
        EventType::Purchase => {
            x.purchases += 1;
            x.units += i64::from(e.quantity);
            x.revenue_cents += (e.price * 100.0).round() as i64 * i64::from(e.quantity);
        }
    }
    x.users.insert(e.user_id);
}

type WinKey = (String, String, String, i64); // dimension, value, currency, start
/// views, carts, removals, purchases, units, revenue cents per currency
type Minute = (i64, i64, i64, i64, i64, BTreeMap<String, i64>);

fn dim_name(d: cartstream_events::types::Dimension) -> &'static str {
    use cartstream_events::types::Dimension::*;
    match d {
        All => "all",
        Category => "category",
        Product => "product",
        Brand => "brand",
        EventType => "event_type",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windows_are_exact_through_kills_late_events_and_a_silent_partition() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("win");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 4, 1)
        .await
        .unwrap();
    let n = env_or("CARTSTREAM_WIN_IT_EVENTS", 12_000) as usize;
    let (size, slide) = match std::env::var("CARTSTREAM_WIN_IT_SLIDE_SECS") {
        Ok(s) => (120_000, s.parse::<i64>().unwrap() * 1000),
        Err(_) => (60_000, 60_000),
    };
    let windower_args: Vec<String> = [
        "--window-size".to_string(),
        format!("{size}ms"),
        "--window-slide".into(),
        format!("{slide}ms"),
        "--grace".into(),
        format!("{GRACE_MS}ms"),
        "--max-out-of-order".into(),
        format!("{OOO_MS}ms"),
        "--idle-timeout".into(),
        "3s".into(),
    ]
    .to_vec();
    let windower_bin = env!("CARGO_BIN_EXE_cartstream-windower");
    let mut cleaner = spawn(env!("CARGO_BIN_EXE_cartstream-cleaner"), &prefix, "w0", &[]);
    let mut enricher = spawn(
        env!("CARGO_BIN_EXE_cartstream-enricher"),
        &prefix,
        "w0",
        &[],
    );
    let instances = env_or("CARTSTREAM_WIN_IT_INSTANCES", 1) as usize;
    let mut windowers: Vec<Child> = (0..instances)
        .map(|i| spawn(windower_bin, &prefix, &format!("w{i}"), &windower_args))
        .collect();
    // kill -9 one windower instance (in turn) and restart it with the same instance id.
    let mut kill_one = |k: usize| {
        let i = k % instances;
        windowers[i].kill().unwrap();
        windowers[i].wait().unwrap();
        windowers[i] = spawn(windower_bin, &prefix, &format!("w{i}"), &windower_args);
    };

    let dir = std::env::temp_dir().join(format!("windower-it-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let truth_path = dir.join("truth.json");
    let producing = tokio::spawn(simulate(prefix.clone(), n, truth_path.clone()));

    // kill -9 the windower while events flow (windows open, batches and transactions in flight).
    let mut kills = 0;
    while !producing.is_finished() || kills < 3 {
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        kill_one(kills);
        kills += 1;
    }
    producing.await.unwrap();
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    let expected_events = truth["events"].as_u64().unwrap() as usize;

    // Wait for the enricher to have written every event.
    let dec = Decoder::<EnrichedEvent>::new(registry.clone());
    let enriched_topic = names.name(Topic::Enriched);
    let deadline = Instant::now() + Duration::from_secs(90);
    let enriched = loop {
        let k = kafka.clone();
        let t = enriched_topic.clone();
        let msgs = tokio::task::spawn_blocking(move || read_all(&k, &t))
            .await
            .unwrap();
        if msgs.len() >= expected_events || Instant::now() > deadline {
            break msgs;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(enriched.len(), expected_events, "enriched events");
    let mut events: Vec<(i32, EnrichedEvent)> = Vec::new();
    for m in &enriched {
        events.push((
            m.partition(),
            dec.decode(m.payload().unwrap()).await.unwrap(),
        ));
    }
    let max_time = events.iter().map(|(_, e)| e.event_time).max().unwrap();
    let min_time = events.iter().map(|(_, e)| e.event_time).min().unwrap();

    // Partitions 1..3 go silent; partition 0 gets one event far ahead, then one far too late.
    let flush_time = max_time + 5 * 60_000;
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    let enc: Encoder<EnrichedEvent> = Encoder::register(&registry, &names.subject(Topic::Enriched))
        .await
        .unwrap();
    let mut flush = events[0].1.clone();
    flush.event_id = "it-flush".into();
    flush.event_time = flush_time;
    let mut too_late = events[0].1.clone();
    too_late.event_id = "it-too-late".into();
    too_late.event_time = min_time;
    for e in [&flush, &too_late] {
        let payload = enc.encode(e).unwrap();
        producer
            .send(
                FutureRecord::<str, Vec<u8>>::to(&enriched_topic)
                    .partition(0)
                    .key(&e.user_session)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // One more crash while the last windows wait for the idle partitions.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    kill_one(kills);
    kills += 1;

    // Expected windows: every enriched event that is not on the late topic.
    let closed_by = flush_time - OOO_MS; // the watermark the silent partitions adopt
    let windows_of = |t: i64| {
        let last = t.div_euclid(slide) * slide;
        (0..size / slide).map(move |k| last - k * slide)
    };
    let kpi_dec = Decoder::<KpiWindow>::new(registry.clone());
    let late_dec = Decoder::<LateEvent>::new(registry.clone());
    let deadline = Instant::now() + Duration::from_secs(90);
    let (finals, late, expect) = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let late_msgs = read_all(&kafka, &names.name(Topic::Late));
        let mut late: HashMap<String, LateEvent> = HashMap::new();
        for m in &late_msgs {
            let l = late_dec.decode(m.payload().unwrap()).await.unwrap();
            assert!(
                late.insert(l.event.event_id.clone(), l).is_none(),
                "late event twice"
            );
        }
        let mut expect: BTreeMap<WinKey, Expect> = BTreeMap::new();
        for (_, e) in &events {
            if late.contains_key(&e.event_id) {
                continue;
            }
            for s in windows_of(e.event_time) {
                if s + size + GRACE_MS <= closed_by {
                    for (d, v) in dims(e) {
                        add(
                            expect
                                .entry((d.to_string(), v, e.currency.clone(), s))
                                .or_default(),
                            e,
                        );
                    }
                }
            }
        }
        let mut finals: BTreeMap<WinKey, KpiWindow> = BTreeMap::new();
        for m in read_all(&kafka, &names.name(Topic::KpiWindows)) {
            let w = kpi_dec.decode(m.payload().unwrap()).await.unwrap();
            assert!(w.is_final, "no early updates were asked for");
            let k = (
                dim_name(w.dimension).to_string(),
                w.dimension_value.clone(),
                w.currency.clone(),
                w.window_start,
            );
            assert!(
                finals.insert(k.clone(), w).is_none(),
                "final window twice: {k:?}"
            );
        }
        let complete =
            expect.keys().all(|k| finals.contains_key(k)) && late.contains_key("it-too-late");
        if complete || Instant::now() > deadline {
            break (finals, late, expect);
        }
    };
    for w in &mut windowers {
        w.kill().unwrap();
        let _ = w.wait();
    }
    // SIGTERM for the others: a clean exit.
    for c in [&mut cleaner, &mut enricher] {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let status = c.wait().unwrap();
        assert!(status.success(), "graceful exit: {status}");
    }

    // Late events: the injected one, the producer's, each one justified.
    let too_late = late.get("it-too-late").expect("the far too late event");
    assert_eq!(too_late.source_partition, 0);
    assert!(too_late.watermark >= flush_time - OOO_MS);
    let ids: HashSet<&str> = events.iter().map(|(_, e)| e.event_id.as_str()).collect();
    for (id, l) in &late {
        assert!(id == "it-too-late" || ids.contains(id.as_str()), "{id}");
        let t = l.event.event_time;
        assert_eq!(l.window_end - l.window_start, size);
        assert!(
            l.window_start <= t && t < l.window_end && t >= l.window_end - slide,
            "the oldest window holding the event (t in its last pane)"
        );
        assert_eq!(l.lateness_ms, l.watermark - (l.window_end + GRACE_MS));
        assert!(l.lateness_ms >= 0);
    }
    let producer_late = late.len() - 1;
    assert!(
        producer_late > 0,
        "the input has events later than the grace"
    );

    // Final windows: exactly the expected ones (all of them up to the silent partitions' adopted
    // watermark), nothing else final.
    let last_needs_idle = expect
        .keys()
        .filter(|k| k.0 == "all")
        .map(|k| k.3)
        .max()
        .unwrap();
    let silent_max = events
        .iter()
        .filter(|(p, _)| *p != 0)
        .map(|(_, e)| e.event_time)
        .max()
        .unwrap();
    assert!(
        last_needs_idle + size + GRACE_MS > silent_max - OOO_MS,
        "the last expected window closes only through idle-partition handling"
    );
    let missing: Vec<_> = expect
        .keys()
        .filter(|k| !finals.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "windows not closed: {missing:?} of {}",
        expect.len()
    );
    let mut checked = 0;
    for (k, w) in &finals {
        if k.3 + size > flush_time - size {
            // The flush event's own windows.
            continue;
        }
        let x = expect
            .get(k)
            .unwrap_or_else(|| panic!("unexpected window {k:?}"));
        let got = (
            w.views,
            w.carts,
            w.removals,
            w.purchases,
            w.units,
            (w.revenue * 100.0).round() as i64,
            w.distinct_users,
        );
        let want = (
            x.views,
            x.carts,
            x.removals,
            x.purchases,
            x.units,
            x.revenue_cents,
            x.users.len() as i64,
        );
        assert_eq!(got, want, "window {k:?}");
        assert_eq!(w.window_end, w.window_start + size);
        assert_eq!(
            w.conversion_rate,
            (x.views > 0).then(|| x.purchases as f64 / x.views as f64)
        );
        checked += 1;
    }
    assert_eq!(checked, expect.len());

    // Against the producer's ground truth (tumbling only): on-time + late per minute.
    if size == slide {
        let mut per_minute: BTreeMap<i64, Minute> = BTreeMap::new();
        for ((d, _, cur, start), w) in &finals {
            if d != "all" || *start + size > flush_time - size {
                continue;
            }
            let e = per_minute.entry(*start).or_default();
            e.0 += w.views;
            e.1 += w.carts;
            e.2 += w.removals;
            e.3 += w.purchases;
            e.4 += w.units;
            *e.5.entry(cur.clone()).or_default() += (w.revenue * 100.0).round() as i64;
        }
        for l in late.values() {
            if l.event.event_id == "it-too-late" {
                continue;
            }
            let e = per_minute
                .entry(l.event.event_time.div_euclid(60_000) * 60_000)
                .or_default();
            let mut x = Expect::default();
            add(&mut x, &l.event);
            e.0 += x.views;
            e.1 += x.carts;
            e.2 += x.removals;
            e.3 += x.purchases;
            e.4 += x.units;
            if x.revenue_cents != 0 {
                *e.5.entry(l.event.currency.clone()).or_default() += x.revenue_cents;
            }
        }
        for m in truth["per_minute"].as_array().unwrap() {
            let minute = m["minute"].as_i64().unwrap();
            let got = per_minute.get(&minute).cloned().unwrap_or_default();
            let mut cents: BTreeMap<String, i64> = BTreeMap::new();
            for (c, v) in m["revenue_cents"].as_object().unwrap() {
                if v.as_i64().unwrap() != 0 {
                    cents.insert(c.clone(), v.as_i64().unwrap());
                }
            }
            let mut got_cents = got.5.clone();
            got_cents.retain(|_, v| *v != 0);
            assert_eq!(
                (got.0, got.1, got.2, got.3, got.4, got_cents),
                (
                    m["views"].as_i64().unwrap(),
                    m["carts"].as_i64().unwrap(),
                    m["removals"].as_i64().unwrap(),
                    m["purchases"].as_i64().unwrap(),
                    m["units"].as_i64().unwrap(),
                    cents
                ),
                "minute {}",
                m["minute_utc"]
            );
        }
    }
    eprintln!(
        "windower_it: {} events, {} late (+1 injected), {} final windows checked, {kills} kills, {instances} instance(s), size {size} slide {slide}",
        events.len(),
        producer_late,
        checked
    );
    let _ = std::fs::remove_dir_all(&dir);
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
