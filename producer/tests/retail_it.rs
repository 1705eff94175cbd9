//! The retail profile on the real broker: a bounded run over a few simulated weeks of November,
//! as fast as possible, then what is on the topics: no event (so no purchase) while the shop is
//! closed (nights, Saturdays), a quarter of guest sessions with replay's anonymous ids, SKU ids of
//! the published retail catalog, products bought again in one order at other quantities (each
//! line its own event id), and the end-of-input mark closing every partition.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use cartstream_events::types::{Product, RawEvent};
use cartstream_events::Decoder;
use cartstream_kafka::control::{control_of, EndOfInput};
use cartstream_kafka::Topic;
use cartstream_producer::clock::parse_event_time;
use cartstream_producer::replay::{guest_user_id, GUEST_ID_BASE, SKU_ID_BASE};
use cartstream_producer::retail::{weekday, StoreHours};
use common::{stdout, temp_path, Namespace};
use rdkafka::Message;

const DAY_MS: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retail_run_sells_only_in_store_hours_with_guests_repeated_lines_and_ends_its_input() {
    let ns = Namespace::new("pretail").await;
    let truth_path = temp_path("truth.json");
    let dry_truth_path = temp_path("dry-truth.json");
    let n: u64 = 60_000;
    // From Thursday 2026-11-05 00:00 (closed until 07:00). With --rate 0 the world has --rate
    // 1000's density, here 1000 / 50000 events per second of event time on average (more in
    // November): 60,000 events are about two and a half weeks, two or three Saturdays.
    let args = |truth: &str| -> Vec<String> {
        [
            "simulate",
            "--profile",
            "retail",
            "--start-time",
            "2026-11-05T00:00:00Z",
            "--speed",
            "50000",
            "--rate",
            "0",
            "--think-secs",
            "300",
            "--count",
            &n.to_string(),
            "--seed",
            "5",
            "--products",
            "800",
            "--users",
            "2000",
            "--price-change-every",
            "1h",
            "--end-of-input",
            "max",
            "--ground-truth",
            truth,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run_args = args(truth_path.to_str().unwrap());
    let refs: Vec<&str> = run_args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let out = ns.run(&refs);
    let took = started.elapsed().as_secs_f64();
    let text = stdout(&out);
    assert!(text.contains("failed 0"), "{text}");
    assert!(
        text.contains("end of input: watermark max written to 3 partitions"),
        "{text}"
    );

    // The catalog: retail products with SKU ids, in pounds.
    let pdec = Decoder::<Product>::new(ns.registry.clone());
    let mut catalog: HashMap<i64, Product> = HashMap::new();
    for m in ns.read(Topic::Products) {
        let p = pdec.decode(m.payload().unwrap()).await.unwrap();
        catalog.insert(p.product_id, p);
    }
    assert_eq!(catalog.len(), 800);
    assert!(catalog.values().all(|p| p.catalog == "retail"
        && p.currency == "GBP"
        && (SKU_ID_BASE..2 * SKU_ID_BASE).contains(&p.product_id)));

    let decoder = Decoder::<RawEvent>::new(ns.registry.clone());
    let hours = StoreHours::online_retail();
    let mut events: Vec<(i64, RawEvent)> = Vec::new();
    for m in ns.read(Topic::Raw) {
        let ev = decoder.decode(m.payload().unwrap()).await.unwrap();
        assert_eq!(m.key(), ev.user_session.as_deref().map(str::as_bytes));
        events.push((parse_event_time(&ev.event_time).unwrap(), ev));
    }
    assert_eq!(events.len() as u64, n);
    let ids: HashSet<&str> = events.iter().map(|(_, e)| e.event_id.as_str()).collect();
    assert_eq!(ids.len() as u64, n, "every event its own id");

    let (first, last) = (
        events.iter().map(|(t, _)| *t).min().unwrap(),
        events.iter().map(|(t, _)| *t).max().unwrap(),
    );
    let span_days = (last - first) as f64 / DAY_MS as f64;
    let mut closed_events = 0;
    let mut closed_purchases = 0;
    let mut per_weekday = [0u64; 7];
    let mut purchases = 0;
    let mut user_of: HashMap<&str, i64> = HashMap::new();
    let mut lines: HashMap<(&str, i64), Vec<(i32, &str)>> = HashMap::new();
    for (t, e) in &events {
        if !hours.is_open(*t) {
            closed_events += 1;
            if e.event_type == "purchase" {
                closed_purchases += 1;
            }
        }
        per_weekday[weekday(t.div_euclid(DAY_MS))] += 1;
        assert!(catalog.contains_key(&e.product_id), "a catalog product");
        assert_eq!(e.currency, "GBP");
        let session = e.user_session.as_deref().unwrap();
        assert_eq!(*user_of.entry(session).or_insert(e.user_id), e.user_id);
        if e.event_type == "purchase" {
            purchases += 1;
            lines
                .entry((session, e.product_id))
                .or_default()
                .push((e.quantity, &e.event_id));
        }
    }
    let saturdays = (0..=(last - first) / DAY_MS + 1)
        .filter(|d| weekday((first + d * DAY_MS).div_euclid(DAY_MS)) == 5)
        .count();
    let guests = user_of
        .iter()
        .filter(|(_, u)| (GUEST_ID_BASE..SKU_ID_BASE).contains(*u))
        .inspect(|(s, u)| assert_eq!(**u, guest_user_id(Some(s)), "replay's guest id"))
        .count();
    let guest_share = guests as f64 / user_of.len() as f64;
    let orders: HashSet<&str> = lines.keys().map(|(s, _)| *s).collect();
    let repeated: Vec<&Vec<(i32, &str)>> = lines
        .values()
        .filter(|l| l.iter().map(|(q, _)| q).collect::<HashSet<_>>().len() > 1)
        .collect();
    let repeated_lines: usize = repeated.iter().map(|l| l.len()).sum();
    let repeated_ids: HashSet<&str> = repeated
        .iter()
        .flat_map(|l| l.iter().map(|(_, id)| *id))
        .collect();
    eprintln!(
        "retail run: {n} events in {took:.1} s over {span_days:.1} simulated days \
         ({saturdays} Saturdays), {purchases} purchases in {} orders; closed-hour events \
         {closed_events}, closed-hour purchases {closed_purchases}; per weekday (Mon..Sun) \
         {per_weekday:?}; sessions {}, guest share {guest_share:.3}; products bought at several \
         quantities in one order {} ({repeated_lines} lines, {} distinct ids)",
        orders.len(),
        user_of.len(),
        repeated.len(),
        repeated_ids.len()
    );
    assert!(span_days > 14.0, "a few weeks: {span_days:.1} days");
    assert!(saturdays >= 2);
    assert_eq!(closed_events, 0, "nothing happens while the shop is closed");
    assert_eq!(closed_purchases, 0);
    assert_eq!(per_weekday[5], 0, "closed on Saturdays");
    assert!(per_weekday
        .iter()
        .enumerate()
        .all(|(d, n)| d == 5 || *n > 0));
    assert!(
        (0.2..0.3).contains(&guest_share),
        "guest share {guest_share}"
    );
    assert!(repeated.len() > 50, "repeated lines {}", repeated.len());
    assert_eq!(
        repeated_ids.len(),
        repeated_lines,
        "every repeated line is on the topic with its own id"
    );

    // Every partition ends with the end-of-input mark.
    let config = ns.kafka.consumer("it-producer-reader").unwrap();
    let all = cartstream_kafka::read::read_all_to_end(
        &config,
        &ns.names.name(Topic::Raw),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let mut tail: BTreeMap<i32, &rdkafka::message::OwnedMessage> = BTreeMap::new();
    for m in &all {
        let e = tail.entry(m.partition()).or_insert(m);
        if m.offset() > e.offset() {
            *e = m;
        }
    }
    assert_eq!(tail.len(), 3);
    for m in tail.values() {
        assert_eq!(control_of(*m).unwrap(), Some(EndOfInput::end()));
    }
    assert_eq!(all.len() as u64, n + 3, "one mark per partition");

    // Same seed and flags: the same events (the dry run's ground truth equals the real run's).
    let dry = args(dry_truth_path.to_str().unwrap());
    let mut dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    dry.push("--dry-run");
    ns.run(&dry);
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    let dry_truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dry_truth_path).unwrap()).unwrap();
    for section in ["per_minute", "per_category", "totals", "sessions"] {
        assert_eq!(truth[section], dry_truth[section], "{section}");
    }
    assert_eq!(truth["event_time_max"].as_i64(), Some(last));
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retail_week_bounded_by_end_time_ends_at_its_last_event() {
    let ns = Namespace::new("pretailwk").await;
    let out = ns.run(&[
        "simulate",
        "--profile",
        "retail",
        "--start-time",
        "2026-11-05T00:00:00Z",
        "--end-time",
        "+7d",
        "--speed",
        "100000",
        "--rate",
        "0",
        "--seed",
        "9",
        "--products",
        "300",
        "--users",
        "500",
        "--skip-dimensions",
        "--end-of-input",
        "last",
    ]);
    let text = stdout(&out);
    assert!(text.contains("failed 0"), "{text}");
    let end = parse_event_time("2026-11-12T00:00:00Z").unwrap();
    let hours = StoreHours::online_retail();
    let decoder = Decoder::<RawEvent>::new(ns.registry.clone());
    let config = ns.kafka.consumer("it-producer-reader").unwrap();
    let all = cartstream_kafka::read::read_all_to_end(
        &config,
        &ns.names.name(Topic::Raw),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let (mut times, mut marks) = (Vec::new(), Vec::new());
    for m in &all {
        match control_of(m).unwrap() {
            Some(mark) => marks.push(mark.watermark),
            None => {
                let ev = decoder.decode(m.payload().unwrap()).await.unwrap();
                times.push(parse_event_time(&ev.event_time).unwrap());
            }
        }
    }
    let last = *times.iter().max().unwrap();
    eprintln!(
        "retail week to --end-time: {} events, last at {}, marks {marks:?}",
        times.len(),
        cartstream_producer::clock::format_rfc3339(last)
    );
    assert!(times.len() > 10_000, "{}", times.len());
    assert!(times.iter().all(|t| *t < end && hours.is_open(*t)));
    // The week's last open hour is Wednesday 19:00-20:00: the run went on to the end.
    assert!(last >= end - 5 * 3_600_000, "stopped early at {last}");
    assert_eq!(
        marks,
        vec![last; 3],
        "--end-of-input last: the last event time"
    );
    ns.cleanup().await;
}
