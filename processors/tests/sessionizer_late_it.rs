//! The sessionizer's edges on the real broker, with events written straight to the enriched topic
//! (one partition, so the order of arrival is the order written):
//! - an event more than the grace behind the watermark is dead-lettered as `late_event`, with its
//!   bytes, and is in no session;
//! - with `--idle-wall-advance`, the last session of a silent stream closes once the wall clock
//!   has moved its end + gap + grace past (without it, it would wait for more events).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cartstream_events::types::{DeadLetter, EnrichedEvent, EventType, Session};
use cartstream_events::{Decoder, Encoder};
use cartstream_kafka::{Topic, TopicNames};
use cartstream_testkit as kit;
use cartstream_testkit::read_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

fn event(id: &str, session: &str, t: i64, kind: EventType) -> EnrichedEvent {
    EnrichedEvent {
        event_id: id.into(),
        event_time: t,
        event_type: kind,
        product_id: 1,
        category_id: 1,
        category_code: "kids.toys".into(),
        brand: "acme".into(),
        price: 12.5,
        currency: "EUR".into(),
        quantity: 2,
        user_id: 7,
        user_session: session.into(),
        channel: None,
        source_system: "it".into(),
        product_known: true,
        product_name: "p".into(),
        catalog_price: Some(12.5),
        user_known: true,
        user_country: "DE".into(),
        user_device: "mobile".into(),
        user_segment: "vip".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_are_dead_lettered_and_a_silent_stream_closes_by_the_wall_clock() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("sesslate");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 1, 1)
        .await
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cartstream-sessionizer"))
        .args([
            "--topic-prefix",
            &prefix,
            "--metrics-addr",
            "off",
            "--instance-id",
            "late-0",
            "--gap",
            "2s",
            "--grace",
            "1s",
            "--idle-timeout",
            "1s",
            "--idle-wall-advance",
        ])
        .env("KAFKA_BROKERS", kit::brokers())
        .env("SCHEMA_REGISTRY_URL", kit::registry_url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let t0 = 1_790_000_000_000_i64;
    let evs = [
        event("a1", "a", t0, EventType::View),
        event("a2", "a", t0 + 500, EventType::Purchase),
        event("b1", "b", t0 + 1_000, EventType::Cart),
        event("c1", "c", t0 + 10_000, EventType::View),
        // 10 s behind the watermark, grace 1 s: late.
        event("d1", "d", t0, EventType::View),
        event("c2", "c", t0 + 10_200, EventType::Purchase),
    ];
    let enc: Encoder<EnrichedEvent> = Encoder::register(&registry, &names.subject(Topic::Enriched))
        .await
        .unwrap();
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    for e in &evs {
        producer
            .send(
                FutureRecord::to(&names.name(Topic::Enriched))
                    .partition(0)
                    .key(&e.user_session)
                    .payload(&enc.encode(e).unwrap()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let sent_at = Instant::now();

    // a and b close by the watermark of c; c only by the wall clock (about 3 s after its end).
    let dec = Decoder::<Session>::new(registry.clone());
    let mut sessions: Vec<Session> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && sessions.len() < 3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (k, t) = (kafka.clone(), names.name(Topic::Sessions));
        let msgs = tokio::task::spawn_blocking(move || read_all(&k, &t))
            .await
            .unwrap();
        sessions.clear();
        for m in &msgs {
            sessions.push(dec.decode(m.payload().unwrap()).await.unwrap());
        }
    }
    let waited = sent_at.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    let ids: Vec<&str> = sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            format!("a@{t0}"),
            format!("b@{}", t0 + 1_000),
            format!("c@{}", t0 + 10_000)
        ],
        "after {waited:?}"
    );
    let a = &sessions[0];
    assert_eq!((a.views, a.purchases, a.converted), (1, 1, true));
    assert_eq!((a.revenue, a.currency.as_str()), (25.0, "EUR"));
    assert_eq!(a.order_id.as_deref(), Some("a2"));
    assert_eq!((a.duration_ms, a.user_segment.as_str()), (500, "vip"));
    assert_eq!(sessions[2].duration_ms, 200);

    // d is dead-lettered as late, with its bytes, and is in no session.
    let dlq = Decoder::<DeadLetter>::new(registry.clone());
    let mut late = Vec::new();
    for m in read_all(&kafka, &names.name(Topic::DeadLetters)) {
        late.push(dlq.decode(m.payload().unwrap()).await.unwrap());
    }
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(
        (late[0].error_code.as_str(), late[0].stage.as_str()),
        ("late_event", "sessionizer")
    );
    assert!(
        late[0].message.contains("10000 ms behind"),
        "{}",
        late[0].message
    );
    let back = Decoder::<EnrichedEvent>::new(registry.clone())
        .decode(late[0].payload.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(back.event_id, "d1");
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
