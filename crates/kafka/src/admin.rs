//! Idempotent topic creation.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::context::ErrorContext;

/// A topic as it should be.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub configs: Vec<(&'static str, String)>,
}

/// What [`ensure_topics`] did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// Existed with the wanted partitions and configs.
    Unchanged,
    /// Existed; partitions were added and/or configs corrected.
    Updated {
        partitions_from: Option<i32>,
        configs: Vec<String>,
    },
    /// Existed with more partitions than asked; Kafka cannot shrink a topic, so it was left alone.
    MorePartitions(i32),
}

pub type Admin = AdminClient<ErrorContext>;

pub fn admin_client(config: &ClientConfig) -> anyhow::Result<Admin> {
    Ok(config.create_with_context(ErrorContext::default())?)
}

/// Creates the missing topics, adds partitions where there are fewer than asked, and corrects
/// configs that differ. Safe to run any number of times.
pub async fn ensure_topics(
    admin: &Admin,
    specs: &[TopicSpec],
    timeout: Duration,
) -> anyhow::Result<Vec<(String, Outcome)>> {
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let existing = partition_counts(admin, timeout)?;
    let mut out = Vec::new();

    let configs: Vec<Vec<(&str, &str)>> = specs
        .iter()
        .map(|s| s.configs.iter().map(|(k, v)| (*k, v.as_str())).collect())
        .collect();
    let new: Vec<NewTopic> = specs
        .iter()
        .zip(&configs)
        .filter(|(s, _)| !existing.contains_key(&s.name))
        .map(|(s, c)| {
            c.iter().fold(
                NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    if !new.is_empty() {
        for result in admin.create_topics(&new, &opts).await? {
            match result {
                Ok(name) => out.push((name, Outcome::Created)),
                // Another instance created it between our look-up and our request.
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    out.push((name, Outcome::Unchanged))
                }
                Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
            }
        }
    }

    for spec in specs {
        let Some(&have) = existing.get(&spec.name) else {
            continue;
        };
        let mut partitions_from = None;
        if have < spec.partitions {
            let np = NewPartitions::new(&spec.name, spec.partitions as usize);
            for r in admin.create_partitions(&[np], &opts).await? {
                r.map_err(|(n, c)| anyhow::anyhow!("cannot add partitions to {n}: {c}"))?;
            }
            partitions_from = Some(have);
        }
        let changed = correct_configs(admin, spec, &opts).await?;
        let outcome = match (partitions_from, changed.is_empty(), have > spec.partitions) {
            (None, true, true) => Outcome::MorePartitions(have),
            (None, true, false) => Outcome::Unchanged,
            _ => Outcome::Updated {
                partitions_from,
                configs: changed,
            },
        };
        out.push((spec.name.clone(), outcome));
    }
    Ok(out)
}

/// Sets the spec's configs where the topic differs; returns the keys that changed.
async fn correct_configs(
    admin: &Admin,
    spec: &TopicSpec,
    opts: &AdminOptions,
) -> anyhow::Result<Vec<String>> {
    let resource = ResourceSpecifier::Topic(&spec.name);
    let described = admin.describe_configs([&resource], opts).await?;
    let current: HashMap<String, Option<String>> = match described.into_iter().next() {
        Some(Ok(r)) => r.entries.into_iter().map(|e| (e.name, e.value)).collect(),
        Some(Err(e)) => anyhow::bail!("cannot describe topic {}: {e}", spec.name),
        None => HashMap::new(),
    };
    let differing: Vec<String> = spec
        .configs
        .iter()
        .filter(|(k, v)| current.get(*k).and_then(|c| c.as_deref()) != Some(v.as_str()))
        .map(|(k, _)| k.to_string())
        .collect();
    if differing.is_empty() {
        return Ok(differing);
    }
    // AlterConfigs replaces the topic's whole override set; the spec holds every override we
    // manage, so this converges to exactly the spec.
    let alter = spec.configs.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(&spec.name)),
        |a, (k, v)| a.set(k, v),
    );
    for r in admin.alter_configs([&alter], opts).await? {
        r.map_err(|(_, c)| anyhow::anyhow!("cannot set configs of {}: {c}", spec.name))?;
    }
    Ok(differing)
}

/// Partition count of every topic of the cluster.
/// Partitions of an input topic, for internal topics co-partitioned with it (changelogs,
/// repartitions); a missing input is a clear error.
pub fn input_partitions(admin: &Admin, input: &str) -> anyhow::Result<i32> {
    let counts = partition_counts(admin, Duration::from_secs(30))?;
    counts.get(input).copied().ok_or_else(|| {
        anyhow::anyhow!("input topic {input} does not exist: run cartstream-admin bootstrap")
    })
}

/// Replication factor of internal topics: the broker count, at most 3.
pub fn internal_replication(admin: &Admin) -> anyhow::Result<i32> {
    let brokers = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?
        .brokers()
        .len();
    Ok(i32::try_from(brokers.min(3))?)
}

/// The partition count of one existing topic, read with any client (producer, consumer, admin).
/// Fails when the topic does not exist or has no partitions.
pub fn topic_partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| anyhow::anyhow!("reading the metadata of {topic}: {e}"))?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if n == 0 {
        anyhow::bail!("topic {topic} does not exist or has no partitions");
    }
    Ok(i32::try_from(n)?)
}

pub fn partition_counts(admin: &Admin, timeout: Duration) -> anyhow::Result<HashMap<String, i32>> {
    let md = admin.inner().fetch_metadata(None, timeout).map_err(|e| {
        admin
            .inner()
            .context()
            .explain(format!("cannot read metadata from Kafka: {e}"))
    })?;
    Ok(md
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// Deletes topics (tests clean up their namespace with this); missing topics are not an error.
pub async fn delete_topics(admin: &Admin, names: &[&str], timeout: Duration) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    for r in admin.delete_topics(names, &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((n, c)) => anyhow::bail!("cannot delete topic {n}: {c}"),
        }
    }
    Ok(())
}
