//! Helpers shared by the sinks' integration tests: records, producing, running the binaries.

#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cartstream_events::types::{EnrichedEvent, EventType};
use cartstream_kafka::KafkaArgs;
use cartstream_testkit::StackEnv;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// 2026-11-20T00:00:00Z: event times of the tests lie in closed hours.
pub const T0: i64 = 1_795_132_800_000;

pub fn event(i: usize) -> EnrichedEvent {
    EnrichedEvent {
        event_id: format!("ev-{i}"),
        // Spread over three hours.
        event_time: T0 + (i as i64 * 997) % (3 * 3_600_000),
        event_type: [
            EventType::View,
            EventType::View,
            EventType::Cart,
            EventType::Purchase,
        ][i % 4],
        product_id: 1 + (i % 50) as i64,
        category_id: 1,
        category_code: "kids.toys".into(),
        brand: "acme".into(),
        price: 5.0 + (i % 7) as f64,
        currency: "USD".into(),
        quantity: 1,
        user_id: 1 + (i % 300) as i64,
        user_session: format!("s-{}", i % 997),
        channel: None,
        source_system: "it".into(),
        product_known: true,
        product_name: "brick".into(),
        catalog_price: Some(5.0),
        user_known: true,
        user_country: "DE".into(),
        user_device: "mobile".into(),
        user_segment: "new".into(),
    }
}

/// Sends records, waiting for every delivery.
pub struct Sender {
    producer: FutureProducer,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
}

impl Sender {
    pub fn new(kafka: &KafkaArgs) -> Self {
        Sender {
            producer: kafka.producer().unwrap().create().unwrap(),
            pending: Vec::new(),
        }
    }

    pub async fn send(&mut self, topic: &str, key: &str, payload: &[u8]) {
        let rec = FutureRecord::to(topic).key(key).payload(payload);
        let f = self.producer.send_result(rec).map_err(|(e, _)| e).unwrap();
        self.pending.push(f);
        if self.pending.len() >= 500 {
            self.flush().await;
        }
    }

    pub async fn flush(&mut self) {
        for f in self.pending.drain(..) {
            f.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
}

/// A running sink binary.
pub fn spawn(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(bin);
    c.args(args).stack_env();
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// Kills the child when dropped, so a failing test leaves no sink running.
pub use cartstream_testkit::ChildGuard as Guard;

pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM and wait for the exit status (graceful shutdown).
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "no exit 60 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `group` has committed past every data record of `topics`. Transactional topics end
/// with commit markers, which take offsets but are never delivered: a partition whose committed
/// offset is below its end is caught up when nothing but markers lies between the two.
pub fn caught_up(kafka: &KafkaArgs, group: &str, topics: &[String]) -> bool {
    let c: BaseConsumer = kafka.consumer(group).unwrap().create().unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for t in md
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|x| x == t.name()))
    {
        for p in t.partitions() {
            let (_, high) = c
                .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
                .unwrap();
            tpl.add_partition(t.name(), p.id());
            ends.push((t.name().to_string(), p.id(), high));
        }
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let mut behind = TopicPartitionList::new();
    let mut behind_ends = Vec::new();
    for (t, p, high) in &ends {
        if *high == 0 {
            continue;
        }
        match committed.find_partition(t, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= *high => {}
            Some(Offset::Offset(o)) if *high - o <= 5 => {
                behind
                    .add_partition_offset(t, *p, Offset::Offset(o))
                    .unwrap();
                behind_ends.push((t.clone(), *p, *high));
            }
            _ => return false,
        }
    }
    if behind_ends.is_empty() {
        return true;
    }
    // A reader outside the group (nothing is committed under its id).
    let r: BaseConsumer = kafka
        .consumer("it-caught-up-probe")
        .unwrap()
        .create()
        .unwrap();
    r.assign(&behind).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Some(m) = r.poll(Duration::from_millis(100)) {
            if m.is_ok() {
                return false;
            }
        }
        let pos = r.position().unwrap();
        let done = behind_ends.iter().all(|(t, p, high)| {
            pos.find_partition(t, *p)
                .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *high))
        });
        if done {
            return true;
        }
    }
    false
}

/// Distinct (source topic, partition, offset) of the dead letters a stage wrote.
pub async fn dead_letters(
    kafka: &KafkaArgs,
    registry: std::sync::Arc<cartstream_events::Registry>,
    topic: &str,
    stage: &str,
) -> std::collections::BTreeSet<(String, i32, i64, String)> {
    use rdkafka::Message;
    let msgs = cartstream_kafka::read::read_to_end(
        &kafka.consumer("it-verify").unwrap(),
        topic,
        Duration::from_secs(60),
    )
    .unwrap();
    let dec = cartstream_events::Decoder::<cartstream_events::types::DeadLetter>::new(registry);
    let mut out = std::collections::BTreeSet::new();
    for m in msgs {
        let d = dec.decode(m.payload().unwrap()).await.unwrap();
        if d.stage == stage {
            assert!(d.payload.is_some() && !d.message.is_empty());
            out.insert((
                d.source_topic,
                d.source_partition,
                d.source_offset,
                d.error_code,
            ));
        }
    }
    out
}
