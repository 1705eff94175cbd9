//! `cartstream-scylla-sink`: the ScyllaDB side of cartstream.
//!
//! `migrate` creates the keyspace and applies the CQL migrations of `sinks/cql/` (idempotent);
//! `run` consumes the enriched events, KPI windows, sessions and alerts and upserts them (see
//! `cartstream_sinks::scylla` for the commit protocol).

use std::process::ExitCode;

use cartstream_events::RegistryArgs;
use cartstream_kafka::{KafkaArgs, TopicNames};
use cartstream_runtime::{LogFormat, ServiceArgs};
use cartstream_sinks::cql::{self, CqlArgs};
use cartstream_sinks::scylla::{self, ScyllaSinkArgs};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cartstream-scylla-sink",
    version,
    about = "Write cartstream's real-time tables to ScyllaDB or Cassandra"
)]
struct Cli {
    #[command(flatten)]
    cql: CqlArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Create the keyspace and tables (safe to run again: applied migrations are skipped).
    Migrate {
        /// Log line format (level from RUST_LOG).
        #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Consume the topics and upsert them into the tables until SIGTERM.
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
        sink: ScyllaSinkArgs,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    cartstream_runtime::exit_code(run(Cli::parse()).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate { log_format } => {
            cartstream_runtime::telemetry::init_logging(log_format);
            let session = cli.cql.connect().await?;
            let report = cql::migrate(&session, &cli.cql).await?;
            println!(
                "keyspace {} at {}: applied {:?}, already applied {:?}",
                cli.cql.keyspace, cli.cql.uri, report.applied, report.already_applied
            );
            Ok(())
        }
        Command::Run {
            kafka,
            registry,
            names,
            service,
            sink,
        } => {
            let svc = service.init("cartstream-scylla-sink").await?;
            scylla::run(scylla::Context {
                kafka: &kafka,
                registry: registry.connect()?,
                names: &names,
                cql: &cli.cql,
                args: &sink,
                shutdown: &svc.shutdown,
                health: &svc.health,
            })
            .await
        }
    }
}
