//! Exactly-once through the real broker: the cleaner and enricher binaries are killed with
//! SIGKILL again and again while they work, restarted, and the enriched topic (read with
//! `read_committed`) must hold every expected event exactly once; every malformed record must be
//! in the dead-letter topic with its reason; and `consumed = produced + deduplicated +
//! dead-lettered` must hold exactly when counted on the topics.
//!
//! Size: `CARTSTREAM_EOS_EVENTS` events (default 20 000, enough for every kill to land mid-batch;
//! the 200 000-event run uses the same test with the variable set).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cartstream_events::types::{
    CleanEvent, DeadLetter, EnrichedEvent, Product, RawEvent, SourceMeta, User,
};
use cartstream_events::{Decoder, Encoder};
use cartstream_kafka::{read, KafkaArgs, Topic, TopicNames};
use cartstream_testkit as kit;
use cartstream_testkit::StackEnv;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

fn events() -> usize {
    std::env::var("CARTSTREAM_EOS_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// What was sent and what a correct pipeline must output.
struct Sent {
    unique_good: HashSet<String>,
    duplicates: usize,
    malformed: BTreeMap<&'static str, usize>,
    total: usize,
}

fn raw(i: usize, now: i64) -> RawEvent {
    RawEvent {
        event_id: format!("ev-{i}"),
        event_time: format!("{}", now + i as i64),
        event_type: ["view", "view", "cart", "purchase"][i % 4].into(),
        product_id: 1 + (i % 50) as i64,
        category_id: 1,
        category_code: None,
        brand: Some("acme".into()),
        price: 5.0 + (i % 7) as f64,
        currency: "usd".into(),
        quantity: 1,
        user_id: 1 + (i % 30) as i64,
        user_session: Some(format!("s-{}", i % 997)),
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

/// Sends `n` events spread over about `spread`, so the processors are busy the whole time.
async fn produce(kafka: KafkaArgs, names: TopicNames, n: usize, spread: Duration) -> Sent {
    let (kafka, names) = (&kafka, &names);
    let started = Instant::now();
    let registry = kit::registry();
    let enc: Encoder<RawEvent> = Encoder::register(&registry, &names.subject(Topic::Raw))
        .await
        .unwrap();
    let products: Encoder<Product> = Encoder::register(&registry, &names.subject(Topic::Products))
        .await
        .unwrap();
    let users: Encoder<User> = Encoder::register(&registry, &names.subject(Topic::Users))
        .await
        .unwrap();
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    let send = |topic: String, key: Option<String>, payload: Vec<u8>| {
        let p = producer.clone();
        async move {
            let mut r = FutureRecord::<String, Vec<u8>>::to(&topic).payload(&payload);
            if let Some(k) = &key {
                r = r.key(k);
            }
            p.send(r, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    // Dimensions for half the products and users: the rest must come out as explicit unknowns.
    for id in 1..=25_i64 {
        let p = Product {
            product_id: id,
            name: format!("p{id}"),
            category_id: 1,
            category_code: "kids.toys".into(),
            brand: "acme".into(),
            price: 5.0,
            currency: "USD".into(),
            catalog: "it".into(),
            release_date: None,
            genres: vec![],
            tags: vec![],
            updated_at: 0,
        };
        send(
            names.name(Topic::Products),
            Some(id.to_string()),
            products.encode(&p).unwrap(),
        )
        .await;
    }
    for id in 1..=15_i64 {
        let u = User {
            user_id: id,
            country: "DE".into(),
            device: "mobile".into(),
            segment: "new".into(),
            updated_at: 0,
        };
        send(
            names.name(Topic::Users),
            Some(id.to_string()),
            users.encode(&u).unwrap(),
        )
        .await;
    }

    let now = 1_795_000_000_000_i64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut sent = Sent {
        unique_good: HashSet::new(),
        duplicates: 0,
        malformed: BTreeMap::new(),
        total: 0,
    };
    let mut resend: Vec<RawEvent> = Vec::new();
    let topic = names.name(Topic::Raw);
    let mut futures = Vec::new();
    for i in 0..n {
        let r: f64 = rng.random();
        let (key, payload, kind): (Option<String>, Vec<u8>, Option<&'static str>) = if r < 0.002 {
            (None, b"\x01garbage".to_vec(), Some("bad_magic"))
        } else if r < 0.004 {
            (
                None,
                vec![0, 0x7f, 0xff, 0xff, 0x01, 2, 3],
                Some("unknown_schema_id"),
            )
        } else if r < 0.006 {
            let mut e = raw(i, now);
            e.price = 0.0;
            (
                e.user_session.clone(),
                enc.encode(&e).unwrap(),
                Some("invalid_price"),
            )
        } else if r < 0.008 {
            let mut e = raw(i, now);
            e.event_type = "wishlist".into();
            (
                e.user_session.clone(),
                enc.encode(&e).unwrap(),
                Some("unknown_event_type"),
            )
        } else if r < 0.010 {
            let mut e = raw(i, now);
            e.user_session = None;
            (None, enc.encode(&e).unwrap(), Some("missing_user_session"))
        } else if r < 0.06 && !resend.is_empty() {
            // A duplicate of an earlier event, sometimes much earlier.
            let e = resend[rng.random_range(0..resend.len())].clone();
            sent.duplicates += 1;
            (e.user_session.clone(), enc.encode(&e).unwrap(), None)
        } else {
            let e = raw(i, now);
            sent.unique_good.insert(e.event_id.clone());
            resend.push(e.clone());
            (e.user_session.clone(), enc.encode(&e).unwrap(), None)
        };
        if let Some(k) = kind {
            *sent.malformed.entry(k).or_default() += 1;
        }
        sent.total += 1;
        futures.push(send(topic.clone(), key, payload));
        if futures.len() >= 500 {
            futures::future::join_all(futures.drain(..)).await;
            let due = started + spread.mul_f64(i as f64 / n as f64);
            tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
        }
    }
    futures::future::join_all(futures).await;
    sent
}

fn spawn(bin: &str, prefix: &str, instance: &str) -> Child {
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
        .stack_env()
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

fn count_ids(kafka: &KafkaArgs, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    read::read_to_end(
        &kafka.consumer("it-verify").unwrap(),
        topic,
        Duration::from_secs(120),
    )
    .unwrap()
}

async fn chaos_run(instances: usize, kills: usize, tag: &str) {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique(tag);
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 4, 1)
        .await
        .unwrap();
    let n = events();
    // Processors start first and the events trickle in while they are being killed, so kills land
    // in the middle of batches and transactions.
    let producing = tokio::spawn(produce(
        kafka.clone(),
        names.clone(),
        n,
        Duration::from_secs(20),
    ));

    let bins = [
        env!("CARGO_BIN_EXE_cartstream-cleaner"),
        env!("CARGO_BIN_EXE_cartstream-enricher"),
    ];
    let mut procs: Vec<(usize, usize, Child)> = Vec::new();
    for (b, bin) in bins.iter().enumerate() {
        for i in 0..instances {
            procs.push((b, i, spawn(bin, &prefix, &format!("{tag}-{i}"))));
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let enriched_topic = names.name(Topic::Enriched);
    let mut producing = Some(producing);
    let mut sent: Option<Sent> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut killed = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2500))).await;
        if killed < kills {
            // SIGKILL one process at a random moment; with two instances the survivor takes over
            // its partitions, and the killed one comes back (with the same instance id).
            let k = rng.random_range(0..procs.len());
            let (b, i, child) = &mut procs[k];
            child.kill().unwrap();
            child.wait().unwrap();
            killed += 1;
            if instances == 1 || killed % 2 == 0 {
                *child = spawn(bins[*b], &prefix, &format!("{tag}-{i}"));
            } else {
                // Two instances: leave it dead past the session timeout (10 s) so the other one
                // has to take its partitions over.
                tokio::time::sleep(Duration::from_secs(12)).await;
                *child = spawn(bins[*b], &prefix, &format!("{tag}-{i}"));
            }
            continue;
        }
        if let Some(p) = producing.take() {
            sent = Some(p.await.unwrap());
        }
        let expected = sent.as_ref().map_or(usize::MAX, |s| s.unique_good.len());
        let k = kafka.clone();
        let t = enriched_topic.clone();
        let done = tokio::task::spawn_blocking(move || count_ids(&k, &t).len())
            .await
            .unwrap();
        if done >= expected || Instant::now() > deadline {
            // Give a last in-flight transaction the chance to commit a (wrong) extra record.
            tokio::time::sleep(Duration::from_secs(3)).await;
            break;
        }
    }
    for (_, _, mut c) in procs {
        let _ = c.kill();
        let _ = c.wait();
    }
    let sent = sent.expect("production finished");
    let expected = sent.unique_good.len();

    // The enriched topic: every good event exactly once.
    let dec = Decoder::<EnrichedEvent>::new(registry.clone());
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut unknown_products = 0;
    for m in count_ids(&kafka, &enriched_topic) {
        let e = dec.decode(m.payload().unwrap()).await.unwrap();
        if !e.product_known {
            unknown_products += 1;
            assert_eq!(e.product_name, "unknown");
        }
        *seen.entry(e.event_id).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(
        doubled.is_empty(),
        "duplicated on the enriched topic: {doubled:?}"
    );
    let got: HashSet<String> = seen.into_keys().collect();
    let missing: Vec<_> = sent.unique_good.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "lost: {missing:?} ({} of {})",
        sent.unique_good.len() - got.len(),
        expected
    );
    assert_eq!(got, sent.unique_good);
    assert!(
        unknown_products > 0,
        "products 26-50 have no dimension record"
    );

    // The clean topic, too (the cleaner's own output).
    let clean_dec = Decoder::<CleanEvent>::new(registry.clone());
    let clean = count_ids(&kafka, &names.name(Topic::Clean));
    let mut clean_ids = HashSet::new();
    for m in &clean {
        assert!(clean_ids.insert(
            clean_dec
                .decode(m.payload().unwrap())
                .await
                .unwrap()
                .event_id
        ));
    }

    // Every malformed record is dead-lettered with its reason.
    let dlq_dec = Decoder::<DeadLetter>::new(registry.clone());
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let dlq = count_ids(&kafka, &names.name(Topic::DeadLetters));
    for m in &dlq {
        let d = dlq_dec.decode(m.payload().unwrap()).await.unwrap();
        assert_eq!(d.stage, "cleaner");
        assert_eq!(d.source_topic, names.name(Topic::Raw));
        assert!(d.payload.is_some() && !d.message.is_empty());
        *reasons.entry(d.error_code).or_default() += 1;
    }
    let expected_reasons: BTreeMap<String, usize> = sent
        .malformed
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(reasons, expected_reasons);

    // consumed = produced + deduplicated + dead-lettered, on the topics.
    assert_eq!(sent.total, clean.len() + sent.duplicates + dlq.len());
    eprintln!(
        "{tag}: {} events, {} unique, {} duplicates, {} dead letters, {killed} kills, {instances} instance(s) per stage",
        sent.total, expected, sent.duplicates, dlq.len()
    );
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_repeated_kill_9() {
    let kills = std::env::var("CARTSTREAM_EOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    chaos_run(1, kills, "eos").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_partitions_and_survive_kills() {
    chaos_run(2, 4, "scale").await;
}
