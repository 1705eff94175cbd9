//! `cartstream-scylla-sink`: the ScyllaDB side of cartstream.
//!
//! `migrate` creates the keyspace and applies the CQL migrations of `sinks/cql/` (idempotent).

use std::process::ExitCode;

use cartstream_runtime::LogFormat;
use cartstream_sinks::cql::{self, CqlArgs};
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
    /// Log line format (level from RUST_LOG).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the keyspace and tables (safe to run again: applied migrations are skipped).
    Migrate,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cartstream_runtime::telemetry::init_logging(cli.log_format);
    cartstream_runtime::exit_code(run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate => {
            let session = cli.cql.connect().await?;
            let report = cql::migrate(&session, &cli.cql).await?;
            println!(
                "keyspace {} at {}: applied {:?}, already applied {:?}",
                cli.cql.keyspace, cli.cql.uri, report.applied, report.already_applied
            );
            Ok(())
        }
    }
}
