//! Bootstrap against the real broker and registry, and Avro events through both.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::time::Duration;

use cartstream_admin::bootstrap;
use cartstream_events::types::{RawEvent, SourceMeta};
use cartstream_events::{Contract, Decoder, Encoder};
use cartstream_kafka::admin::{self, Outcome};
use cartstream_kafka::{read, Topic, TopicNames};
use cartstream_testkit as kit;
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

#[tokio::test]
async fn bootstrap_is_idempotent_and_sets_topic_configs() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("boot");
    let names = TopicNames::with_prefix(&prefix);

    let first = bootstrap(&kafka, &registry, &names, 4, 1)
        .await
        .expect("first bootstrap");
    assert_eq!(first.topics.len(), Topic::ALL.len());
    assert!(
        first.topics.iter().all(|(_, o)| *o == Outcome::Created),
        "{:?}",
        first.topics
    );
    assert_eq!(
        first.schemas.len(),
        Contract::ALL.len(),
        "every contract registered"
    );

    let second = bootstrap(&kafka, &registry, &names, 4, 1)
        .await
        .expect("second bootstrap");
    assert!(
        second.topics.iter().all(|(_, o)| *o == Outcome::Unchanged),
        "{:?}",
        second.topics
    );
    let ids =
        |r: &cartstream_admin::BootstrapReport| r.schemas.iter().map(|s| s.2).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&second), "schema ids are stable");

    // Partitions and configs are what the catalog says.
    let client = admin::admin_client(&kafka.admin().unwrap()).unwrap();
    let counts = admin::partition_counts(&client, Duration::from_secs(10)).unwrap();
    assert_eq!(counts[&names.name(Topic::Raw)], 4);
    assert_eq!(counts[&names.name(Topic::Products)], 3);
    let products = names.name(Topic::Products);
    let described = client
        .describe_configs([&ResourceSpecifier::Topic(&products)], &AdminOptions::new())
        .await
        .unwrap();
    let entries: HashMap<_, _> = described[0]
        .as_ref()
        .unwrap()
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    assert_eq!(entries["cleanup.policy"].as_deref(), Some("compact"));

    // A config drifted by hand is put back, and more partitions are added on request.
    let raw = names.name(Topic::Raw);
    let alter = rdkafka::admin::AlterConfig::new(ResourceSpecifier::Topic(&raw))
        .set("retention.ms", "1000");
    client
        .alter_configs([&alter], &AdminOptions::new())
        .await
        .unwrap();
    let third = bootstrap(&kafka, &registry, &names, 6, 1)
        .await
        .expect("third bootstrap");
    let raw_outcome = &third.topics.iter().find(|(n, _)| *n == raw).unwrap().1;
    assert_eq!(
        *raw_outcome,
        Outcome::Updated {
            partitions_from: Some(4),
            configs: vec!["retention.ms".into()]
        }
    );

    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}

fn event(i: usize) -> RawEvent {
    RawEvent {
        event_id: format!("ev-{i}"),
        event_time: "2026-11-24T10:00:00.000Z".into(),
        event_type: ["view", "cart", "purchase"][i % 3].into(),
        product_id: i as i64,
        category_id: 1,
        category_code: Some("kids.toys".into()),
        brand: None,
        price: 1.5 + i as f64,
        currency: "USD".into(),
        quantity: 1,
        user_id: 10,
        user_session: Some(format!("s-{}", i % 7)),
        channel: if i.is_multiple_of(2) {
            Some("web".into())
        } else {
            None
        },
        source: SourceMeta {
            system: "it".into(),
            producer_id: "it".into(),
            file: None,
            line: Some(i as i64),
            sent_at: 0,
        },
    }
}

#[tokio::test]
async fn avro_events_round_trip_through_kafka_with_mixed_schema_versions() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("rt");
    let names = TopicNames::with_prefix(&prefix);
    bootstrap(&kafka, &registry, &names, 3, 1)
        .await
        .expect("bootstrap");
    let topic = names.name(Topic::Raw);
    let subject = names.subject(Topic::Raw);

    let v2: Encoder<RawEvent> = Encoder::register(&registry, &subject).await.unwrap();
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    let sent: Vec<RawEvent> = (0..300).map(event).collect();
    for (i, ev) in sent.iter().enumerate() {
        // Every third record is written as an old producer would (v1: no channel field).
        let payload = if i.is_multiple_of(3) {
            let v1 = Encoder::<RawEvent>::with_id(
                Contract::PurchaseEventV1,
                registry
                    .register(&subject, Contract::PurchaseEventV1.avsc())
                    .await
                    .unwrap(),
            );
            let mut bytes = Vec::new();
            encode_as_v1(&v1, ev, &mut bytes);
            bytes
        } else {
            v2.encode(ev).unwrap()
        };
        let key = ev.user_session.clone().unwrap();
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
    // Garbage on the same topic must not stop the reader: it is reported, not fatal.
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&topic).payload(b"not avro".as_slice()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let config = kafka.consumer("it-reader").unwrap();
    let t = topic.clone();
    let messages = tokio::task::spawn_blocking(move || {
        read::read_to_end(&config, &t, Duration::from_secs(60))
    })
    .await
    .unwrap()
    .expect("read back");
    assert_eq!(messages.len(), 301);

    let decoder = Decoder::<RawEvent>::new(kit::registry());
    let mut got = Vec::new();
    let mut errors = Vec::new();
    for m in &messages {
        match decoder.decode(m.payload().unwrap_or_default()).await {
            Ok(ev) => got.push(ev),
            Err(e) => errors.push(e.code()),
        }
    }
    assert_eq!(errors, vec!["bad_magic"]);
    got.sort_by_key(|e| e.product_id);
    let expected: Vec<RawEvent> = sent
        .iter()
        .enumerate()
        .map(|(i, e)| RawEvent {
            channel: if i.is_multiple_of(3) {
                None
            } else {
                e.channel.clone()
            },
            ..e.clone()
        })
        .collect();
    assert_eq!(
        got, expected,
        "every event decoded once, v1 records with the default channel"
    );

    // Per-session order is kept: keys map each session to one partition.
    let mut partitions: HashMap<String, i32> = HashMap::new();
    for m in messages.iter().filter(|m| m.key().is_some()) {
        let k = read::key_str(m).unwrap().to_string();
        assert_eq!(*partitions.entry(k).or_insert(m.partition()), m.partition());
    }
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}

/// Writes `ev` with the v1 schema: the writer takes the v1 field list, so the v2-only field must
/// be absent from the serialized struct.
fn encode_as_v1(enc: &Encoder<RawEvent>, ev: &RawEvent, out: &mut Vec<u8>) {
    #[derive(serde::Serialize)]
    #[serde(rename = "PurchaseEvent")]
    struct V1<'a> {
        event_id: &'a str,
        event_time: &'a str,
        event_type: &'a str,
        product_id: i64,
        category_id: i64,
        category_code: &'a Option<String>,
        brand: &'a Option<String>,
        price: f64,
        currency: &'a str,
        quantity: i32,
        user_id: i64,
        user_session: &'a Option<String>,
        source: &'a SourceMeta,
    }
    let v1 = V1 {
        event_id: &ev.event_id,
        event_time: &ev.event_time,
        event_type: &ev.event_type,
        product_id: ev.product_id,
        category_id: ev.category_id,
        category_code: &ev.category_code,
        brand: &ev.brand,
        price: ev.price,
        currency: &ev.currency,
        quantity: ev.quantity,
        user_id: ev.user_id,
        user_session: &ev.user_session,
        source: &ev.source,
    };
    let writer =
        apache_avro::writer::datum::GenericDatumWriter::builder(Contract::PurchaseEventV1.schema())
            .human_readable(false)
            .build()
            .unwrap();
    cartstream_events::wire::write_header(out, enc.schema_id());
    writer.write_ser(out, &v1).unwrap();
}
