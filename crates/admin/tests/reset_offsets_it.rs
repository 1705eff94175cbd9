//! `reset-offsets` against the real broker: to a time, to the start, refusal while the group runs.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use cartstream_admin::offsets::{reset_offsets, ResetTo};
use cartstream_kafka::admin;
use cartstream_testkit as kit;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn moves_a_stopped_group_to_a_time_or_the_start_and_refuses_a_running_one() {
    let kafka = kit::kafka();
    let prefix = kit::unique("reset");
    let topic = format!("{prefix}events");
    let client = admin::admin_client(&kafka.admin().unwrap()).unwrap();
    client
        .create_topics(
            [&NewTopic::new(&topic, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();

    // 50 records per partition, timestamps 1 s apart from a fixed time.
    let base: i64 = 1_795_543_200_000;
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    for p in 0..2 {
        for i in 0..50i64 {
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic)
                        .partition(p)
                        .payload("x")
                        .timestamp(base + i * 1000),
                    T,
                )
                .await
                .unwrap();
        }
    }
    let group = format!("{prefix}group");
    let topics = vec![topic.clone()];

    // The group has consumed everything.
    {
        let c: BaseConsumer = kafka.consumer(&group).unwrap().create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(50))
            .unwrap();
        tpl.add_partition_offset(&topic, 1, Offset::Offset(50))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }

    // Dry run: a plan, nothing written.
    let k = kafka.clone();
    let (g, ts) = (group.clone(), topics.clone());
    let plan = tokio::task::spawn_blocking(move || {
        reset_offsets(&k, &g, &ts, ResetTo::Time(base + 20_500), false, T)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(plan.len(), 2);
    for m in &plan {
        assert_eq!(
            (m.from, m.to, m.low, m.high),
            (Some(50), 21, 0, 50),
            "{m:?}"
        );
        assert_eq!(m.replayed(), 29);
    }
    let committed = |group: String| {
        let k = kafka.clone();
        let topic = topic.clone();
        move || {
            let c: BaseConsumer = k.consumer(&group).unwrap().create().unwrap();
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, 0);
            tpl.add_partition(&topic, 1);
            c.committed_offsets(tpl, T)
                .unwrap()
                .elements()
                .iter()
                .map(|e| e.offset())
                .collect::<Vec<_>>()
        }
    };
    let now = tokio::task::spawn_blocking(committed(group.clone()))
        .await
        .unwrap();
    assert_eq!(
        now,
        vec![Offset::Offset(50), Offset::Offset(50)],
        "dry run wrote"
    );

    // Executed: the first record at or after the time (21 s after the base).
    let k = kafka.clone();
    let (g, ts) = (group.clone(), topics.clone());
    tokio::task::spawn_blocking(move || {
        reset_offsets(&k, &g, &ts, ResetTo::Time(base + 20_500), true, T)
    })
    .await
    .unwrap()
    .unwrap();
    let now = tokio::task::spawn_blocking(committed(group.clone()))
        .await
        .unwrap();
    assert_eq!(now, vec![Offset::Offset(21), Offset::Offset(21)]);

    // To the start.
    let k = kafka.clone();
    let (g, ts) = (group.clone(), topics.clone());
    tokio::task::spawn_blocking(move || reset_offsets(&k, &g, &ts, ResetTo::Earliest, true, T))
        .await
        .unwrap()
        .unwrap();
    let now = tokio::task::spawn_blocking(committed(group.clone()))
        .await
        .unwrap();
    assert_eq!(now, vec![Offset::Offset(0), Offset::Offset(0)]);

    // A time after the last record: the end.
    let k = kafka.clone();
    let (g, ts) = (group.clone(), topics.clone());
    let plan = tokio::task::spawn_blocking(move || {
        reset_offsets(&k, &g, &ts, ResetTo::Time(base + 3_600_000), false, T)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(plan.iter().all(|m| m.to == 50), "{plan:?}");

    // A running member: refused, offsets untouched.
    let member: BaseConsumer = kafka.consumer(&group).unwrap().create().unwrap();
    member.subscribe(&[&topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while member.assignment().unwrap().count() == 0 && std::time::Instant::now() < deadline {
        let _ = member.poll(Duration::from_millis(200));
    }
    assert!(
        member.assignment().unwrap().count() > 0,
        "member never joined"
    );
    let k = kafka.clone();
    let (g, ts) = (group.clone(), topics.clone());
    let err =
        tokio::task::spawn_blocking(move || reset_offsets(&k, &g, &ts, ResetTo::Latest, true, T))
            .await
            .unwrap()
            .unwrap_err();
    assert!(format!("{err:#}").contains("active member"), "{err:#}");
    drop(member);

    // Unknown topic: a clear error.
    let k = kafka.clone();
    let g = group.clone();
    let err = tokio::task::spawn_blocking(move || {
        reset_offsets(
            &k,
            &g,
            &["no-such-topic-xyz".to_string()],
            ResetTo::Earliest,
            false,
            T,
        )
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");

    admin::delete_topics(&client, &[topic.as_str()], T)
        .await
        .unwrap();
}
