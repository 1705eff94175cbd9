//! Moving a consumer group's committed offsets: the "reset a service to the earliest offset or to a
//! time" half of a Kappa replay (the other half, a new generation, is `scripts/replay.sh`).
//!
//! Safe by construction:
//! - the group must have no active member (a running instance would overwrite the offsets with
//!   its next commit, or have its batch fenced half way): stop the service first;
//! - without `execute` nothing is written, the plan is only returned;
//! - a time beyond the end of a partition resets it to its end (nothing to replay there).
//!
//! Stateful processors keep state in `<group>.changelog` topics: rewinding them alone would replay
//! input into state that already saw it (the cleaner would drop every replayed event as a
//! duplicate). Rewind them with their changelog deleted, or — simpler and what `scripts/replay.sh`
//! does — start a new generation with new groups. Sinks hold no state but their offsets: their
//! upserts and offset-named files make a rewind safe at any time.

use std::time::Duration;

use anyhow::{bail, Context};
use cartstream_kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Where to move the offsets to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    /// The first offset whose record timestamp is at or after this time (ms since the epoch).
    Time(i64),
}

impl std::str::FromStr for ResetTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            other => chrono::DateTime::parse_from_rfc3339(other)
                .map(|t| Self::Time(t.timestamp_millis()))
                .map_err(|e| {
                    format!(
                        "expected earliest, latest or an RFC 3339 time such as 2026-11-24T18:00:00Z ({e})"
                    )
                }),
        }
    }
}

/// One partition of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub topic: String,
    pub partition: i32,
    /// Committed offset now, if any.
    pub from: Option<i64>,
    pub to: i64,
    /// Offsets of the partition: [low, high).
    pub low: i64,
    pub high: i64,
}

impl Move {
    /// Records that will be read again (negative: skipped forward).
    pub fn replayed(&self) -> i64 {
        self.from.unwrap_or(self.low) - self.to
    }
}

/// Computes (and with `execute`, commits) new offsets of `group` on every partition of `topics`.
pub fn reset_offsets(
    kafka: &KafkaArgs,
    group: &str,
    topics: &[String],
    to: ResetTo,
    execute: bool,
    timeout: Duration,
) -> anyhow::Result<Vec<Move>> {
    if topics.is_empty() {
        bail!("name at least one topic");
    }
    let mut conf = kafka.consumer(group)?;
    conf.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = conf.create().context("creating a Kafka client")?;

    // An active member would commit over us: refuse.
    let groups = consumer
        .fetch_group_list(Some(group), timeout)
        .context("describing the consumer group")?;
    if let Some(g) = groups.groups().iter().find(|g| g.name() == group) {
        if !g.members().is_empty() {
            let members: Vec<String> = g
                .members()
                .iter()
                .map(|m| format!("{} ({})", m.client_id(), m.client_host()))
                .collect();
            bail!(
                "group {group} has {} active member(s): {}; stop its instances first",
                members.len(),
                members.join(", ")
            );
        }
    }

    let metadata = consumer
        .fetch_metadata(None, timeout)
        .context("reading the topic metadata")?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let Some(meta) = metadata.topics().iter().find(|m| m.name() == t) else {
            bail!("topic {t} does not exist");
        };
        if meta.partitions().is_empty() {
            bail!("topic {t} has no partitions (does it exist?)");
        }
        for p in meta.partitions() {
            tpl.add_partition(t, p.id());
        }
    }
    let committed = consumer
        .committed_offsets(tpl.clone(), timeout)
        .context("reading the committed offsets")?;

    let mut by_time = None;
    if let ResetTo::Time(ms) = to {
        let mut q = TopicPartitionList::new();
        for e in tpl.elements() {
            q.add_partition_offset(e.topic(), e.partition(), Offset::Offset(ms))?;
        }
        by_time = Some(
            consumer
                .offsets_for_times(q, timeout)
                .context("looking up offsets by time")?,
        );
    }

    let mut plan = Vec::new();
    let mut commit = TopicPartitionList::new();
    for e in tpl.elements() {
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), timeout)
            .with_context(|| format!("reading the offsets of {}/{}", e.topic(), e.partition()))?;
        let from = committed
            .find_partition(e.topic(), e.partition())
            .and_then(|c| match c.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let target = match to {
            ResetTo::Earliest => low,
            ResetTo::Latest => high,
            ResetTo::Time(_) => by_time
                .as_ref()
                .and_then(|t| t.find_partition(e.topic(), e.partition()))
                .and_then(|r| match r.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(high),
        }
        .clamp(low, high);
        commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(target))?;
        plan.push(Move {
            topic: e.topic().to_string(),
            partition: e.partition(),
            from,
            to: target,
            low,
            high,
        });
    }
    if execute {
        consumer
            .commit(&commit, CommitMode::Sync)
            .with_context(|| format!("committing the new offsets of {group}"))?;
        // Read back: the commit must be what we planned.
        let now = consumer.committed_offsets(tpl, timeout)?;
        for m in &plan {
            let got = now
                .find_partition(&m.topic, m.partition)
                .map(|e| e.offset());
            if got != Some(Offset::Offset(m.to)) {
                bail!(
                    "offset of {}/{} is {got:?} after the commit, expected {}",
                    m.topic,
                    m.partition,
                    m.to
                );
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!("earliest".parse(), Ok(ResetTo::Earliest));
        assert_eq!("latest".parse(), Ok(ResetTo::Latest));
        assert_eq!(
            "2026-11-24T18:00:00Z".parse(),
            Ok(ResetTo::Time(1_795_543_200_000))
        );
        assert_eq!(
            "2026-11-24T19:00:00+01:00".parse(),
            Ok(ResetTo::Time(1_795_543_200_000))
        );
        let err = "yesterday".parse::<ResetTo>().unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn replayed_counts_from_the_committed_offset_or_the_start() {
        let m = Move {
            topic: "t".into(),
            partition: 0,
            from: Some(900),
            to: 100,
            low: 100,
            high: 1000,
        };
        assert_eq!(m.replayed(), 800);
        let fresh = Move {
            from: None,
            ..m.clone()
        };
        assert_eq!(fresh.replayed(), 0);
        let forward = Move { to: 1000, ..m };
        assert_eq!(forward.replayed(), -100);
    }
}
