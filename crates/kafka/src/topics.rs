//! The topic catalog: every topic cartstream reads or writes, with its partitions, configs and
//! the contracts registered for its values (subject `<topic>-value`, in registration order).
//!
//! Names follow `<domain>.<stage>`. A [`TopicNames`] prefix puts a whole pipeline in its own
//! namespace: a replay generation (`gen2.`) or one integration test (`it-<uuid>.`).

use cartstream_events::Contract;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// `max.message.bytes` of the dead-letter topic, set when it is created, and the bound every
/// writer of dead letters keeps to (`cartstream_stream::dead`): a dead letter that would be
/// larger carries a prefix of the record and its size instead of the whole record (code
/// `oversized`), so one huge record cannot fail its batch forever. 1,000,000 bytes is
/// librdkafka's default `message.max.bytes` (the largest record a producer sends unless told
/// otherwise) and below the broker's default limit (1,048,588).
pub const DLQ_MAX_MESSAGE_BYTES: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Raw events as sent by producers; kept forever, it is what Kappa replays start from.
    Raw,
    Clean,
    Enriched,
    /// Rejected records with their reasons.
    DeadLetters,
    /// Compacted product dimension.
    Products,
    /// Compacted user dimension.
    Users,
    KpiWindows,
    Sessions,
    Alerts,
    /// Enriched events later than the windower's grace, with how late they were.
    Late,
}

impl Topic {
    pub const ALL: [Topic; 10] = [
        Topic::Raw,
        Topic::Clean,
        Topic::Enriched,
        Topic::DeadLetters,
        Topic::Products,
        Topic::Users,
        Topic::KpiWindows,
        Topic::Sessions,
        Topic::Alerts,
        Topic::Late,
    ];

    /// The sources of truth every derived topic is rebuilt from: raw events and the dimensions.
    pub fn is_source(self) -> bool {
        matches!(self, Topic::Raw | Topic::Products | Topic::Users)
    }

    pub fn base_name(self) -> &'static str {
        match self {
            Topic::Raw => "purchases.raw",
            Topic::Clean => "purchases.clean",
            Topic::Enriched => "purchases.enriched",
            Topic::DeadLetters => "purchases.dlq",
            Topic::Products => "catalog.products",
            Topic::Users => "catalog.users",
            Topic::KpiWindows => "kpi.windows",
            Topic::Sessions => "sessions.closed",
            Topic::Alerts => "alerts.raised",
            Topic::Late => "purchases.late",
        }
    }

    /// Value contracts, oldest first; the last one is what writers use.
    pub fn contracts(self) -> &'static [Contract] {
        match self {
            Topic::Raw => &[Contract::PurchaseEventV1, Contract::PurchaseEventV2],
            Topic::Clean => &[Contract::CleanEvent],
            Topic::Enriched => &[Contract::EnrichedEvent],
            Topic::DeadLetters => &[Contract::DeadLetter],
            Topic::Products => &[Contract::Product],
            Topic::Users => &[Contract::User],
            Topic::KpiWindows => &[Contract::KpiWindow],
            Topic::Sessions => &[Contract::Session],
            Topic::Alerts => &[Contract::Alert],
            Topic::Late => &[Contract::LateEvent],
        }
    }

    /// Partitions when `data_partitions` is the count chosen for the event topics. Dimension,
    /// dead-letter and alert topics are small and keep 3.
    pub fn partitions(self, data_partitions: i32) -> i32 {
        match self {
            Topic::DeadLetters | Topic::Products | Topic::Users | Topic::Alerts => {
                3.min(data_partitions.max(1))
            }
            _ => data_partitions.max(1),
        }
    }

    /// Topic-level configs.
    pub fn configs(self) -> Vec<(&'static str, String)> {
        let retention = |ms: i64| {
            vec![
                ("cleanup.policy", "delete".to_string()),
                ("retention.ms", ms.to_string()),
            ]
        };
        match self {
            Topic::Raw => retention(-1),
            Topic::Clean | Topic::Enriched | Topic::Sessions => retention(7 * DAY_MS),
            Topic::DeadLetters => {
                let mut c = retention(30 * DAY_MS);
                c.push(("max.message.bytes", DLQ_MAX_MESSAGE_BYTES.to_string()));
                c
            }
            Topic::KpiWindows | Topic::Alerts | Topic::Late => retention(30 * DAY_MS),
            // Compacted tables: the latest value per key lives forever; compaction may run an
            // hour after a write, so a restart reloads few superseded values.
            Topic::Products | Topic::Users => vec![
                ("cleanup.policy", "compact".to_string()),
                ("min.compaction.lag.ms", "0".to_string()),
                ("segment.ms", (3600 * 1000).to_string()),
                ("min.cleanable.dirty.ratio", "0.1".to_string()),
            ],
        }
    }
}

/// Topic names in one namespace.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TopicNames {
    /// Prefix of every topic name (a replay generation such as "gen2.", or a test namespace).
    #[arg(long, env = "TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Prefix of the source-of-truth topics (purchases.raw, catalog.products, catalog.users) when
    /// they live in another namespace than this pipeline's own topics: a replay generation
    /// (--topic-prefix gen2.) rebuilding everything from the main pipeline's raw events sets
    /// --source-topic-prefix "" [default: the topic prefix].
    #[arg(long, env = "SOURCE_TOPIC_PREFIX")]
    pub source_topic_prefix: Option<String>,
}

impl TopicNames {
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        TopicNames {
            topic_prefix: prefix.into(),
            source_topic_prefix: None,
        }
    }

    /// A namespace whose source topics are read from another one (a replay generation).
    pub fn with_source(prefix: impl Into<String>, source_prefix: impl Into<String>) -> Self {
        TopicNames {
            topic_prefix: prefix.into(),
            source_topic_prefix: Some(source_prefix.into()),
        }
    }

    /// Whether this namespace writes `topic` (false for source topics read from another namespace):
    /// bootstrap creates and configures only these.
    pub fn owns(&self, topic: Topic) -> bool {
        !topic.is_source()
            || self
                .source_topic_prefix
                .as_ref()
                .is_none_or(|s| *s == self.topic_prefix)
    }

    pub fn name(&self, topic: Topic) -> String {
        let prefix = match &self.source_topic_prefix {
            Some(source) if topic.is_source() => source,
            _ => &self.topic_prefix,
        };
        format!("{prefix}{}", topic.base_name())
    }

    /// Registry subject of the topic's values (TopicNameStrategy).
    pub fn subject(&self, topic: Topic) -> String {
        format!("{}-value", self.name(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_reads_the_sources_of_another_namespace() {
        let g = TopicNames::with_source("gen2.", "");
        assert_eq!(g.name(Topic::Raw), "purchases.raw");
        assert_eq!(g.name(Topic::Products), "catalog.products");
        assert_eq!(g.name(Topic::Users), "catalog.users");
        assert_eq!(g.name(Topic::Clean), "gen2.purchases.clean");
        assert_eq!(g.name(Topic::Enriched), "gen2.purchases.enriched");
        assert!(!g.owns(Topic::Raw) && g.owns(Topic::Enriched));
        let derived: Vec<_> = Topic::ALL.iter().filter(|t| !t.is_source()).collect();
        assert!(derived.iter().all(|t| g.name(**t).starts_with("gen2.")));
        assert_eq!(
            Topic::ALL.iter().filter(|t| t.is_source()).count(),
            3,
            "raw events and the two dimensions are the sources of truth"
        );
        let same = TopicNames::with_source("x.", "x.");
        assert!(Topic::ALL.iter().all(|t| same.owns(*t)));
        assert!(Topic::ALL
            .iter()
            .all(|t| TopicNames::with_prefix("y.").owns(*t)));
    }

    #[test]
    fn names_are_dotted_and_unique() {
        let names = TopicNames::with_prefix("gen2.");
        let all: std::collections::HashSet<_> = Topic::ALL.iter().map(|t| names.name(*t)).collect();
        assert_eq!(all.len(), Topic::ALL.len());
        assert!(all
            .iter()
            .all(|n| n.starts_with("gen2.") && !n.contains('_')));
        assert_eq!(names.subject(Topic::Raw), "gen2.purchases.raw-value");
    }

    #[test]
    fn dimension_topics_are_compacted_and_raw_is_kept() {
        for t in [Topic::Products, Topic::Users] {
            assert!(t.configs().contains(&("cleanup.policy", "compact".into())));
        }
        assert!(Topic::Raw
            .configs()
            .contains(&("retention.ms", "-1".into())));
        assert_eq!(Topic::Raw.partitions(12), 12);
        assert_eq!(Topic::Products.partitions(12), 3);
        assert_eq!(Topic::Products.partitions(1), 1);
    }

    #[test]
    fn the_dead_letter_topic_has_the_size_limit_the_writers_keep_to() {
        assert!(Topic::DeadLetters
            .configs()
            .contains(&("max.message.bytes", DLQ_MAX_MESSAGE_BYTES.to_string())));
        assert!(Topic::ALL
            .iter()
            .filter(|t| **t != Topic::DeadLetters)
            .all(|t| t.configs().iter().all(|(k, _)| *k != "max.message.bytes")));
    }
}
