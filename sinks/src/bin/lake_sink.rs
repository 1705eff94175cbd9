//! `cartstream-lake-sink`: the Parquet history lake of cartstream.
//!
//! `run` writes the input topics to Parquet files on an object store, exactly once per record
//! (see `cartstream_sinks::lake` for the layout and the commit protocol); `compact` merges the
//! small files of closed hours.

use std::process::ExitCode;

use cartstream_events::RegistryArgs;
use cartstream_kafka::{KafkaArgs, TopicNames};
use cartstream_runtime::ServiceArgs;
use cartstream_sinks::lake::{self, CompactArgs, LakeSinkArgs, StoreArgs};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cartstream-lake-sink",
    version,
    about = "Write cartstream's topics to Parquet files on an object store, exactly once, and compact them"
)]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Consume the topics and write Parquet files until SIGTERM (which flushes).
    Run {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        names: TopicNames,
        #[command(flatten)]
        service: ServiceArgs,
        #[command(flatten)]
        sink: LakeSinkArgs,
    },
    /// Merge the small files of every closed hour of a topic into large ones (crash-safe).
    Compact {
        #[command(flatten)]
        args: CompactArgs,
        /// Log line format; the level comes from RUST_LOG.
        #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = cartstream_runtime::LogFormat::Text)]
        log_format: cartstream_runtime::LogFormat,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    cartstream_runtime::exit_code(run(Cli::parse()).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            kafka,
            registry,
            names,
            service,
            sink,
        } => {
            let svc = service.init("cartstream-lake-sink").await?;
            let lake = cli.store.open()?;
            lake::run(lake::Context {
                kafka: &kafka,
                registry: registry.connect()?,
                names: &names,
                lake,
                args: &sink,
                shutdown: &svc.shutdown,
                health: &svc.health,
            })
            .await
        }
        Command::Compact { args, log_format } => {
            cartstream_runtime::telemetry::init_logging(log_format);
            let lake = cli.store.open()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            let r = lake::compact(&lake, &args, now).await?;
            println!(
                "compacted {} closed hour(s) of {}: {} merged file(s) from {} input(s), {} rows; {} covered leftover(s) deleted",
                r.hours, args.topic, r.merged_files, r.inputs_merged, r.rows, r.covered_deleted
            );
            Ok(())
        }
    }
}
