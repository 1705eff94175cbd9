//! `cartstream-passthrough`: copies one topic to another unchanged, on the same loop as every
//! processor (batches, transactions or at-least-once). It is the baseline of the processor
//! benchmarks — what consume→produce costs on a machine before any decoding or logic — and a
//! handy tool to mirror a topic.

use std::process::ExitCode;

use cartstream_stream::{Input, Output, ProcessError, Processor, ProcessorArgs};
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
    common: ProcessorArgs,
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
    /// Stateless for event time: the end of input goes downstream as it came.
    async fn on_end_of_input(
        &mut self,
        input: &Input<'_>,
        end: i64,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        out.forward_end(&self.to, input, end);
        Ok(())
    }
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
    cartstream_runtime::exit_code(run(Cli::parse()).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = &cli.common;
    let service = c.service.init("cartstream-passthrough").await?;
    let registry = c.registry.connect()?;
    let prefix = &c.names.topic_prefix;
    let copy = Copy {
        to: format!("{prefix}{}", cli.to),
    };
    c.run(
        STAGE,
        &[format!("{prefix}{}", cli.from)],
        &registry,
        copy,
        &service,
    )
    .await
}
