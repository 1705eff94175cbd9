//! Event time under a backlog and at the end of input, on the real stack.
//!
//! A bounded history is written to `purchases.enriched` *before* any stage starts, skewed: 30 000
//! events on partition 0 and 3 000 on each of the three others, all over the same two hours, in
//! event-time order within each partition, then an end-of-input mark (`max`) on every partition.
//! The windower and the sessionizer then start with an idle timeout of 100 ms: partitions 1-3 are
//! read to their end long before partition 0, which always has unread records.
//!
//! - With "idle means caught up", partition 0 is never idle, so none of its in-order events is
//!   late (a wall-clock rule — "no record of it for 100 ms" — judges it idle while the loop is busy
//!   with the others, and its events then come out late).
//! - The end-of-input mark closes everything: every one-minute window of every dimension and every
//!   session (split at the 30-minute gap) equals an independent computation over the events, and
//!   `kpi.windows` and `sessions.closed` end with a forwarded mark on every partition.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use cartstream_events::types::{DeadLetter, EnrichedEvent, EventType, KpiWindow, Session};
use cartstream_events::{Decoder, Encoder};
use cartstream_kafka::control::{self, EndOfInput, CONTROL_KEY};
use cartstream_kafka::{read, KafkaArgs, Topic, TopicNames};
use cartstream_testkit as kit;
use cartstream_testkit::StackEnv;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const START: i64 = 1_793_527_200_000; // 2026-11-01T10:00:00Z
const SPAN: i64 = 2 * 3_600_000;
const GAP: i64 = 30 * 60_000;
const PARTITIONS: i32 = 4;

fn spawn(bin: &str, prefix: &str, extra: &[&str]) -> kit::ChildGuard {
    kit::ChildGuard(
        Command::new(bin)
            .args([
                "--topic-prefix",
                prefix,
                "--metrics-addr",
                "off",
                "--instance-id",
                "e0",
                "--batch-size",
                "500",
                "--idle-timeout",
                "100ms",
            ])
            .args(extra)
            .stack_env()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}")),
    )
}

fn read_all(kafka: &KafkaArgs, topic: &str, controls: bool) -> Vec<OwnedMessage> {
    let config = kafka.consumer("it-verify").unwrap();
    if controls {
        read::read_all_to_end(&config, topic, Duration::from_secs(120)).unwrap()
    } else {
        read::read_to_end(&config, topic, Duration::from_secs(120)).unwrap()
    }
}

/// A small deterministic generator (xorshift), so the history is the same in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` events on one partition over the span, in event-time order: shoppers with sessions whose
/// events are 1-12 minutes apart, now and then a pause over the gap (a new session, same key).
fn history(partition: i32, n: usize, rng: &mut Rng) -> Vec<EnrichedEvent> {
    let mut out = Vec::with_capacity(n);
    let mut shopper = 0;
    while out.len() < n {
        shopper += 1;
        let key = format!("p{partition}-s{shopper}");
        let user = i64::from(partition) * 1_000_000 + shopper;
        let mut t = START + rng.below(SPAN as u64) as i64;
        let events = 1 + rng.below(12) as usize;
        for i in 0..events {
            if t >= START + SPAN || out.len() >= n {
                break;
            }
            let product = 1 + rng.below(40) as i64;
            let event_type = match rng.below(10) {
                0..=5 => EventType::View,
                6..=7 => EventType::Cart,
                8 => EventType::RemoveFromCart,
                _ => EventType::Purchase,
            };
            out.push(EnrichedEvent {
                event_id: format!("{key}-{i}"),
                event_time: t,
                event_type,
                product_id: product,
                category_id: product % 5,
                category_code: format!("cat.{}", product % 5),
                brand: if product % 7 == 0 {
                    String::new()
                } else {
                    format!("brand{}", product % 3)
                },
                price: 1.25 * product as f64,
                currency: "USD".into(),
                quantity: 1 + (product % 3) as i32,
                user_id: user,
                user_session: key.clone(),
                channel: None,
                source_system: "it".into(),
                product_known: true,
                product_name: format!("product {product}"),
                catalog_price: Some(1.25 * product as f64),
                user_known: true,
                user_country: "DE".into(),
                user_device: "web".into(),
                user_segment: "new".into(),
            });
            t += if rng.below(8) == 0 {
                GAP + 60_000 + rng.below(600_000) as i64
            } else {
                60_000 + rng.below(11 * 60_000) as i64
            };
        }
    }
    out.sort_by_key(|e| e.event_time);
    out
}

type WinKey = (String, String, i64); // dimension, value, start
/// views, carts, removals, purchases, units, revenue cents, distinct users
type Kpis = (i64, i64, i64, i64, i64, i64, BTreeSet<i64>);

fn dims(e: &EnrichedEvent) -> [(&'static str, String); 5] {
    let text = |s: &str| {
        if s.trim().is_empty() {
            "unknown".to_string()
        } else {
            s.trim().to_string()
        }
    };
    [
        ("all", "all".into()),
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
            .into(),
        ),
    ]
}

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

/// Sessions computed here: per key, in time order, a new one after a pause of at least the gap.
/// (user, start, end, views, carts, removals, purchases)
fn sessions_of(events: &[EnrichedEvent]) -> BTreeSet<(i64, i64, i64, i64, i64, i64, i64)> {
    let mut by_key: BTreeMap<&str, Vec<&EnrichedEvent>> = BTreeMap::new();
    for e in events {
        by_key.entry(&e.user_session).or_default().push(e);
    }
    let mut out = BTreeSet::new();
    for evs in by_key.values_mut() {
        evs.sort_by_key(|e| e.event_time);
        let mut cur: Option<(i64, i64, i64, i64, i64, i64, i64)> = None;
        for e in evs.iter() {
            if let Some(c) = cur {
                if e.event_time - c.2 >= GAP {
                    out.insert(c);
                    cur = None;
                }
            }
            let c = cur.get_or_insert((e.user_id, e.event_time, e.event_time, 0, 0, 0, 0));
            c.2 = e.event_time;
            match e.event_type {
                EventType::View => c.3 += 1,
                EventType::Cart => c.4 += 1,
                EventType::RemoveFromCart => c.5 += 1,
                EventType::Purchase => c.6 += 1,
            }
        }
        out.extend(cur);
    }
    out
}

/// Asserts every partition of `topic` ends with a forwarded end-of-input mark at `max`.
fn ends_with_marks(kafka: &KafkaArgs, topic: &str) {
    let all = read_all(kafka, topic, true);
    for p in 0..PARTITIONS {
        let last = all
            .iter()
            .filter(|m| m.partition() == p)
            .max_by_key(|m| m.offset())
            .unwrap_or_else(|| panic!("{topic}[{p}] is empty"));
        let mark = control::control_of(last)
            .unwrap()
            .unwrap_or_else(|| panic!("{topic}[{p}] does not end with an end-of-input mark"));
        assert_eq!(mark.watermark, i64::MAX, "{topic}[{p}]");
        assert!(mark.source.is_some(), "a forwarded mark names its source");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_skewed_backlog_has_no_late_event_and_the_end_of_input_closes_everything() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("eoi");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, PARTITIONS, 1)
        .await
        .unwrap();
    let enriched = names.name(Topic::Enriched);

    // The whole bounded history first, then the marks: a backlog for every stage.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut events: Vec<(i32, EnrichedEvent)> = Vec::new();
    for p in 0..PARTITIONS {
        let n = if p == 0 { 30_000 } else { 3_000 };
        events.extend(history(p, n, &mut rng).into_iter().map(|e| (p, e)));
    }
    let enc: Encoder<EnrichedEvent> = Encoder::register(&registry, &names.subject(Topic::Enriched))
        .await
        .unwrap();
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    let mut acks = Vec::with_capacity(events.len());
    for (p, e) in &events {
        let payload = enc.encode(e).unwrap();
        let ack = producer
            .send_result(
                FutureRecord::<str, Vec<u8>>::to(&enriched)
                    .partition(*p)
                    .key(&e.user_session)
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        acks.push(ack);
    }
    for a in futures::future::join_all(acks).await {
        a.unwrap().unwrap();
    }
    for p in 0..PARTITIONS {
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to(&enriched)
                    .partition(p)
                    .key(CONTROL_KEY)
                    .payload(&[][..])
                    .headers(control::owned_headers(&EndOfInput::end())),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let _windower = spawn(
        env!("CARGO_BIN_EXE_cartstream-windower"),
        &prefix,
        &[
            "--window-size",
            "1m",
            "--window-slide",
            "1m",
            "--grace",
            "10s",
            "--max-out-of-order",
            "0ms",
        ],
    );
    let _sessionizer = spawn(
        env!("CARGO_BIN_EXE_cartstream-sessionizer"),
        &prefix,
        &["--gap", "30m", "--grace", "10s"],
    );

    // Expected: every window of every dimension, every session.
    let mut expect: BTreeMap<WinKey, Kpis> = BTreeMap::new();
    for (_, e) in &events {
        let start = e.event_time.div_euclid(60_000) * 60_000;
        for (d, v) in dims(e) {
            let x = expect.entry((d.into(), v, start)).or_default();
            match e.event_type {
                EventType::View => x.0 += 1,
                EventType::Cart => x.1 += 1,
                EventType::RemoveFromCart => x.2 += 1,
                EventType::Purchase => {
                    x.3 += 1;
                    x.4 += i64::from(e.quantity);
                    x.5 += (e.price * 100.0).round() as i64 * i64::from(e.quantity);
                }
            }
            x.6.insert(e.user_id);
        }
    }
    let all_events: Vec<EnrichedEvent> = events.iter().map(|(_, e)| e.clone()).collect();
    let expect_sessions = sessions_of(&all_events);

    let kpi_dec = Decoder::<KpiWindow>::new(registry.clone());
    let ses_dec = Decoder::<Session>::new(registry.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    let (windows, sessions) = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut windows: BTreeMap<WinKey, KpiWindow> = BTreeMap::new();
        for m in read_all(&kafka, &names.name(Topic::KpiWindows), false) {
            let w = kpi_dec.decode(m.payload().unwrap()).await.unwrap();
            let k = (
                dim_name(w.dimension).to_string(),
                w.dimension_value.clone(),
                w.window_start,
            );
            assert!(
                windows.insert(k.clone(), w).is_none(),
                "window twice: {k:?}"
            );
        }
        let mut sessions = Vec::new();
        for m in read_all(&kafka, &names.name(Topic::Sessions), false) {
            sessions.push(ses_dec.decode(m.payload().unwrap()).await.unwrap());
        }
        if (windows.len() >= expect.len() && sessions.len() >= expect_sessions.len())
            || Instant::now() > deadline
        {
            break (windows, sessions);
        }
    };
    eprintln!(
        "end of input: {} events, {} windows and {} sessions closed in {:.1}s",
        events.len(),
        windows.len(),
        sessions.len(),
        started.elapsed().as_secs_f64()
    );

    // Nothing late anywhere: the late topic and the dead letters are empty of late events.
    let late = read_all(&kafka, &names.name(Topic::Late), false);
    let dlq_dec = Decoder::<DeadLetter>::new(registry.clone());
    let mut late_dead = 0;
    for m in read_all(&kafka, &names.name(Topic::DeadLetters), false) {
        let d = dlq_dec.decode(m.payload().unwrap()).await.unwrap();
        assert_eq!(d.error_code, "late_event", "unexpected dead letter: {d:?}");
        late_dead += 1;
    }
    assert_eq!(
        (late.len(), late_dead),
        (0, 0),
        "in-order events judged late (windower, sessionizer)"
    );

    // Every window of every dimension, exactly.
    let missing: Vec<_> = expect
        .keys()
        .filter(|k| !windows.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "windows never closed: {missing:?} of {}",
        expect.len()
    );
    assert_eq!(windows.len(), expect.len(), "no window beyond the expected");
    for (k, x) in &expect {
        let w = &windows[k];
        assert!(w.is_final);
        let got = (
            w.views,
            w.carts,
            w.removals,
            w.purchases,
            w.units,
            (w.revenue * 100.0).round() as i64,
            w.distinct_users,
        );
        let want = (x.0, x.1, x.2, x.3, x.4, x.5, x.6.len() as i64);
        assert_eq!(got, want, "window {k:?}");
    }

    // Every session, closed, exactly.
    let got_sessions: BTreeSet<_> = sessions
        .iter()
        .map(|s| {
            (
                s.user_id,
                s.session_start,
                s.session_end,
                s.views,
                s.carts,
                s.removals,
                s.purchases,
            )
        })
        .collect();
    assert_eq!(sessions.len(), got_sessions.len(), "a session twice");
    assert_eq!(
        got_sessions.len(),
        expect_sessions.len(),
        "sessions closed vs expected"
    );
    assert_eq!(got_sessions, expect_sessions);

    // The marks went on downstream, after the results.
    ends_with_marks(&kafka, &names.name(Topic::KpiWindows));
    ends_with_marks(&kafka, &names.name(Topic::Sessions));
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
