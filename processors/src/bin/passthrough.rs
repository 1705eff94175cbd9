//! `cartstream-passthrough`: copies one topic to another unchanged, on the same loop as every
//! processor (batches, transactions or at-least-once). It is the baseline of the processor
//! benchmarks — what consume→produce costs on a machine before any decoding or logic — and a
//! handy tool to mirror a topic.

use std::process::ExitCode;

use cartstream_events::RegistryArgs;
use cartstream_kafka::{KafkaArgs, Topic, TopicNames};
use cartstream_runtime::ServiceArgs;
use cartstream_stream::{Input, LoopArgs, Output, ProcessError, Processor, Topology};
use clap::Parser;

const STAGE: &str = "passthrough";

#[derive(Parser)]
#[command(
    name = "cartstream-passthrough",
    version,
    about = "Copy a topic to another unchanged, on the processors' loop (benchmark baseline)"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    names: TopicNames,
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    stream: LoopArgs,
    /// Topic to read (with the prefix applied).
    #[arg(long, default_value = "purchases.raw")]
    from: String,
    /// Topic to write (with the prefix applied); must exist.
    #[arg(long)]
    to: String,
}

struct Copy {
    to: String,
}

impl Processor for Copy {
    async fn on_assigned(&mut self, _: &[(String, i32)]) -> anyhow::Result<()> {
        Ok(())
    }
    fn on_revoked(&mut self, _: &[(String, i32)]) {}
    async fn process(&mut self, input: &Input<'_>, out: &mut Output) -> Result<(), ProcessError> {
        out.send(
            &self.to,
            input.key,
            input.payload.unwrap_or_default().to_vec(),
        );
        Ok(())
    }
    fn commit(&mut self) {}
    fn rollback(&mut self) {}
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = async {
        let service = cli.service.init("cartstream-passthrough").await?;
        let registry = cli.registry.connect()?;
        let names = &cli.names;
        let group = cli.stream.group(STAGE, &names.topic_prefix);
        let inputs = [format!("{}{}", names.topic_prefix, cli.from)];
        cartstream_stream::run(
            Topology {
                stage: STAGE,
                group: &group,
                inputs: &inputs,
                dead_letter_topic: &names.name(Topic::DeadLetters),
                dead_letter_subject: &names.subject(Topic::DeadLetters),
            },
            &cli.stream,
            &cli.kafka,
            &registry,
            Copy {
                to: format!("{}{}", names.topic_prefix, cli.to),
            },
            &service.shutdown,
            &service.health,
        )
        .await
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
