//! `end-input` against the real broker: every partition of a topic gets the mark, after its data.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::time::Duration;

use cartstream_kafka::admin;
use cartstream_kafka::control::{control_of, EndOfInput, CONTROL_KEY};
use cartstream_kafka::read::{read_all_to_end, read_to_end};
use cartstream_testkit as kit;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_partition_ends_with_the_mark() {
    let kafka = kit::kafka();
    let prefix = kit::unique("endinput");
    let topic = format!("{prefix}events");
    let client = admin::admin_client(&kafka.admin().unwrap()).unwrap();
    client
        .create_topics(
            [&NewTopic::new(&topic, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    for i in 0..10 {
        producer
            .send(
                FutureRecord::<(), _>::to(&topic)
                    .partition(i % 3)
                    .payload("x"),
                T,
            )
            .await
            .unwrap();
    }
    let marks = cartstream_admin::end_input(&kafka, &topic, 1_795_543_200_000, T)
        .await
        .unwrap();
    assert_eq!(
        marks.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    cartstream_admin::end_input(&kafka, &topic, i64::MAX, T)
        .await
        .unwrap();

    let config = kafka.consumer("it-end-input").unwrap();
    assert_eq!(
        read_to_end(&config, &topic, T).unwrap().len(),
        10,
        "data only"
    );
    let all = read_all_to_end(&config, &topic, T).unwrap();
    assert_eq!(all.len(), 18);
    let mut per: BTreeMap<i32, Vec<Option<EndOfInput>>> = BTreeMap::new();
    for m in &all {
        per.entry(m.partition())
            .or_default()
            .push(control_of(m).unwrap());
        if control_of(m).unwrap().is_some() {
            assert_eq!(m.key(), Some(CONTROL_KEY));
        }
    }
    for (p, recs) in &per {
        let n = recs.len();
        assert_eq!(
            &recs[n - 2..],
            &[
                Some(EndOfInput::at(1_795_543_200_000)),
                Some(EndOfInput::end())
            ],
            "partition {p}"
        );
        assert!(recs[..n - 2].iter().all(Option::is_none), "partition {p}");
    }
    assert!(cartstream_admin::end_input(
        &kafka,
        &format!("{prefix}missing"),
        0,
        Duration::from_secs(5)
    )
    .await
    .is_err());
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
