//! Reading a topic from its beginning to its current end, outside any consumer group.
//!
//! For tools, tests and the demo: it assigns every partition itself, commits nothing, and stops
//! once it has reached the end offsets seen at start (with `read_committed`, the last stable
//! offsets: aborted and open transactions are never returned). Control records (end-of-input
//! marks, see [`crate::control`]) are left out unless asked for with [`read_all_to_end`].

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Every data record of `topic` up to its end offsets at call time. Fails after `timeout`,
/// reporting how far it got, rather than waiting forever on a partition that never delivers.
pub fn read_to_end(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    read_partitions_to_end(config, topic, None, timeout)
}

/// Like [`read_to_end`], control records included.
pub fn read_all_to_end(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    read_impl(config, topic, None, timeout, true)
}

/// Like [`read_to_end`] for some partitions only (`None`: all of them).
pub fn read_partitions_to_end(
    config: &ClientConfig,
    topic: &str,
    only: Option<&[i32]>,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    read_impl(config, topic, only, timeout, false)
}

fn read_impl(
    config: &ClientConfig,
    topic: &str,
    only: Option<&[i32]>,
    timeout: Duration,
    controls: bool,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let mut config = config.clone();
    // A group id is required by librdkafka even for assign(); nothing is committed under it.
    if config.get("group.id").is_none() {
        config.set("group.id", "cartstream-reader");
    }
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| anyhow::anyhow!("cannot read metadata of {topic}: {e}"))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        anyhow::bail!("topic {topic} not found");
    };
    if let Some(e) = t.error() {
        anyhow::bail!("topic {topic}: {e:?}");
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in t.partitions() {
        if only.is_some_and(|o| !o.contains(&p.id())) {
            continue;
        }
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            ends.push((p.id(), high));
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        if let Some(r) = consumer.poll(Duration::from_millis(200)) {
            let m = r?;
            if controls || !matches!(crate::control::control_of(&m), Ok(Some(_))) {
                out.push(m.detach());
            }
        }
        let done = ends.iter().all(|(p, high)| {
            consumer
                .position()
                .ok()
                .and_then(|pos| pos.find_partition(topic, *p).map(|e| e.offset()))
                .is_some_and(|o| matches!(o, Offset::Offset(x) if x >= *high))
        });
        if done {
            return Ok(out);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "read {} records of {topic} but did not reach its end within {timeout:?}",
                out.len()
            );
        }
    }
}

/// The key of a message as UTF-8 text, if it has one.
pub fn key_str(m: &OwnedMessage) -> Option<&str> {
    m.key().and_then(|k| std::str::from_utf8(k).ok())
}
