//! The command line every processor shares.

use cartstream_events::{Registry, RegistryArgs};
use cartstream_kafka::{KafkaArgs, Topic, TopicNames};
use cartstream_runtime::{Service, ServiceArgs};

use crate::run::{run, LoopArgs, Processor, Topology};

/// Kafka, registry, topic namespace, service and loop flags, flattened into each processor's CLI.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessorArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub names: TopicNames,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub stream: LoopArgs,
}

impl ProcessorArgs {
    /// The consumer group of `stage` in this topic namespace.
    pub fn group(&self, stage: &str) -> String {
        self.stream.group(stage, &self.names.topic_prefix)
    }

    /// Runs `processor` on the shared loop, reading `inputs` and dead-lettering to the
    /// namespace's dead-letter topic, until shutdown.
    pub async fn run<P: Processor>(
        &self,
        stage: &'static str,
        inputs: &[String],
        registry: &Registry,
        processor: P,
        service: &Service,
    ) -> anyhow::Result<()> {
        let group = self.group(stage);
        run(
            Topology {
                stage,
                group: &group,
                inputs,
                dead_letter_topic: &self.names.name(Topic::DeadLetters),
                dead_letter_subject: &self.names.subject(Topic::DeadLetters),
            },
            &self.stream,
            &self.kafka,
            registry,
            processor,
            &service.shutdown,
            &service.health,
        )
        .await
    }
}
