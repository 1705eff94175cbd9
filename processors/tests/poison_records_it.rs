//! Poison records in the middle of a stream, through the real broker, registry and cleaner
//! binary: a price above `--max-price`, a quantity above `--max-quantity`, and a raw record
//! larger than the dead-letter topic's limit (`DLQ_MAX_MESSAGE_BYTES`), each between runs of good
//! events on one partition. Every good event after them must reach `purchases.clean` (once), and
//! each poison record must be in `purchases.dlq` with its reason: `out_of_range` with the
//! original bytes for the first two, `oversized` with the original size, code and a prefix of the
//! bytes for the third. Before the oversized handling, its dead letter failed the cleaner's
//! transaction with `MsgSizeTooLarge` forever and nothing after it came through.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use cartstream_events::types::{CleanEvent, DeadLetter, RawEvent, SourceMeta};
use cartstream_events::{Decoder, Encoder};
use cartstream_kafka::admin::{self, TopicSpec};
use cartstream_kafka::topics::DLQ_MAX_MESSAGE_BYTES;
use cartstream_kafka::{Topic, TopicNames};
use cartstream_stream::dead;
use cartstream_testkit as kit;
use cartstream_testkit::{read_all, StackEnv};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

/// Good events in each run between the poison records.
const RUN: usize = 100;
/// The oversized raw record: half as large again as the dead-letter limit.
const HUGE: usize = DLQ_MAX_MESSAGE_BYTES * 3 / 2;

fn raw(i: usize, now: i64) -> RawEvent {
    RawEvent {
        event_id: format!("ev-{i}"),
        event_time: format!("{}", now + i as i64),
        event_type: ["view", "cart", "purchase"][i % 3].into(),
        product_id: 1 + (i % 20) as i64,
        category_id: 1,
        category_code: None,
        brand: Some("acme".into()),
        price: 5.0 + (i % 7) as f64,
        currency: "usd".into(),
        quantity: 1 + (i % 4) as i32,
        user_id: 1 + (i % 30) as i64,
        user_session: Some(format!("s-{}", i % 13)),
        channel: None,
        source: SourceMeta {
            system: "it".into(),
            producer_id: "it".into(),
            file: None,
            line: None,
            sent_at: now + i as i64,
        },
    }
}

fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_the_partition_goes_on() {
    let started = Instant::now();
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("poison");
    let names = TopicNames::with_prefix(&prefix);
    // One partition: every poison record sits in the same partition as the good events after it.
    cartstream_admin::bootstrap(&kafka, &registry, &names, 1, 1)
        .await
        .unwrap();
    // The raw topic takes records larger than the dead-letter topic does (as a broker with a
    // larger message.max.bytes would): the case the dead letters must survive.
    let client = admin::admin_client(&kafka.admin().unwrap()).unwrap();
    let mut raw_configs = Topic::Raw.configs();
    raw_configs.push(("max.message.bytes", (4 * HUGE).to_string()));
    admin::ensure_topics(
        &client,
        &[TopicSpec {
            name: names.name(Topic::Raw),
            partitions: 1,
            replication: 1,
            configs: raw_configs,
        }],
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let enc: Encoder<RawEvent> = Encoder::register(&registry, &names.subject(Topic::Raw))
        .await
        .unwrap();
    let mut config = kafka.producer().unwrap();
    config.set("message.max.bytes", (4 * HUGE).to_string());
    let producer: FutureProducer = config.create().unwrap();
    let topic = names.name(Topic::Raw);
    let send = |key: String, payload: Vec<u8>| {
        let p = producer.clone();
        let topic = topic.clone();
        async move {
            let r = FutureRecord::to(&topic).key(&key).payload(&payload);
            p.send(r, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap()
        }
    };

    let now = 1_795_000_000_000_i64;
    let mut good = BTreeSet::new();
    // (offset, expected code, original bytes)
    let mut poison: Vec<(i64, &str, Vec<u8>)> = Vec::new();
    let mut i = 0;
    for stage in 0..4 {
        for _ in 0..RUN {
            let e = raw(i, now);
            good.insert(e.event_id.clone());
            send(e.user_session.clone().unwrap(), enc.encode(&e).unwrap()).await;
            i += 1;
        }
        let (code, bytes) = match stage {
            0 => {
                let mut e = raw(i, now);
                e.price = 1_000_000.5;
                ("out_of_range", enc.encode(&e).unwrap())
            }
            1 => {
                let mut e = raw(i, now);
                e.quantity = 10_001;
                ("out_of_range", enc.encode(&e).unwrap())
            }
            2 => {
                // Not a framed record at all (first byte 0x01): bad_magic, 1.5 MB of it.
                let b: Vec<u8> = (0..HUGE).map(|k| (k % 251) as u8 | 1).collect();
                ("oversized", b)
            }
            _ => break,
        };
        i += 1;
        let offset = send(format!("poison-{stage}"), bytes.clone()).await.offset;
        poison.push((offset, code, bytes));
    }
    let last_good = format!("ev-{}", i - 1);
    assert_eq!(good.len(), 4 * RUN);

    let _cleaner = kit::ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_cartstream-cleaner"))
            .args(["--topic-prefix", &prefix, "--metrics-addr", "off"])
            .stack_env()
            .spawn()
            .unwrap(),
    );

    // Every good event, the ones after the poison records included, reaches purchases.clean.
    let clean_dec = Decoder::<CleanEvent>::new(registry.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut clean_ids: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        let k = kafka.clone();
        let t = names.name(Topic::Clean);
        let msgs = tokio::task::spawn_blocking(move || read_all(&k, &t))
            .await
            .unwrap();
        clean_ids.clear();
        for m in &msgs {
            clean_ids.push(
                clean_dec
                    .decode(m.payload().unwrap())
                    .await
                    .unwrap()
                    .event_id,
            );
        }
        if clean_ids.len() >= good.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        clean_ids.contains(&last_good),
        "the partition stalled: {} of {} good events on purchases.clean, the last one missing",
        clean_ids.len(),
        good.len()
    );
    assert_eq!(clean_ids.len(), good.len(), "every good event once");
    assert_eq!(clean_ids.iter().cloned().collect::<BTreeSet<_>>(), good);

    // Each poison record is dead-lettered with its reason.
    let dlq_dec = Decoder::<DeadLetter>::new(registry.clone());
    let dlq = read_all(&kafka, &names.name(Topic::DeadLetters));
    let mut by_offset: HashMap<i64, (DeadLetter, OwnedMessage)> = HashMap::new();
    for m in dlq {
        let d = dlq_dec.decode(m.payload().unwrap()).await.unwrap();
        assert_eq!(d.stage, "cleaner");
        assert_eq!(d.source_topic, names.name(Topic::Raw));
        assert!(
            m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len)
                <= DLQ_MAX_MESSAGE_BYTES,
            "a dead letter within the topic's limit"
        );
        assert!(by_offset.insert(d.source_offset, (d, m)).is_none());
    }
    assert_eq!(by_offset.len(), 3, "exactly the three poison records");
    let (price, quantity, huge) = (&poison[0], &poison[1], &poison[2]);

    let (d, _) = &by_offset[&price.0];
    assert_eq!(d.error_code, "out_of_range");
    assert!(d.message.contains("price 1000000.5"), "{}", d.message);
    assert_eq!(d.payload.as_deref(), Some(price.2.as_slice()));

    let (d, _) = &by_offset[&quantity.0];
    assert_eq!(d.error_code, "out_of_range");
    assert!(d.message.contains("quantity 10001"), "{}", d.message);
    assert_eq!(d.payload.as_deref(), Some(quantity.2.as_slice()));

    let (d, m) = &by_offset[&huge.0];
    assert_eq!(d.error_code, dead::OVERSIZED);
    assert_eq!(
        d.payload.as_deref(),
        Some(&huge.2[..dead::PREFIX_BYTES]),
        "a prefix of the original bytes"
    );
    assert_eq!(
        header(m, dead::ORIGINAL_SIZE_HEADER),
        Some(HUGE.to_string())
    );
    assert_eq!(
        header(m, dead::ORIGINAL_CODE_HEADER).as_deref(),
        Some("bad_magic")
    );
    assert!(
        d.message.starts_with("bad_magic: ") && d.message.contains(&format!("{HUGE} bytes")),
        "{}",
        d.message
    );
    eprintln!(
        "poison: {} good events through, 3 dead letters (out_of_range x2, oversized of {HUGE} bytes), {:.1} s",
        clean_ids.len(),
        started.elapsed().as_secs_f64()
    );
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
