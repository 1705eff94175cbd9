//! `cartstream-admin`: bootstrap a deployment, inspect topics, check schema changes.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cartstream_events::RegistryArgs;
use cartstream_kafka::{KafkaArgs, Topic, TopicNames};
use cartstream_runtime::LogFormat;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cartstream-admin",
    version,
    about = "Bootstrap cartstream topics and schemas, inspect topics, check schema changes"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    names: TopicNames,
    /// Log line format (level from RUST_LOG).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create every topic (partitions, retention, compaction) and register every schema with
    /// BACKWARD compatibility. Safe to run again: existing topics and schemas are kept.
    Bootstrap {
        /// Partitions of the event topics (dimension, dead-letter and alert topics keep 3).
        #[arg(long, env = "CARTSTREAM_PARTITIONS", default_value_t = 6)]
        partitions: i32,
        /// Replication factor of new topics.
        #[arg(long, env = "CARTSTREAM_REPLICATION", default_value_t = 1)]
        replication: i32,
    },
    /// Read a topic from the beginning to its current end and print a summary.
    Inspect {
        /// Topic to read (without the prefix).
        #[arg(long, default_value = "purchases.raw")]
        topic: String,
        /// How many decoded records to print as JSON.
        #[arg(long, default_value_t = 0)]
        samples: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Ask the registry whether a schema file may be registered for a topic's values.
    CheckSchema {
        /// Topic whose value subject to check against (without the prefix).
        #[arg(long)]
        topic: String,
        /// The .avsc file of the proposed schema.
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// List the topics of the catalog with their subjects.
    Topics,
    /// Declare the end of input of a topic: write an end-of-input control record to every
    /// partition (stages close every window and session the mark allows and forward it).
    EndInput {
        /// Topic (without the prefix), e.g. purchases.raw.
        #[arg(long)]
        topic: String,
        /// max (nothing more will come) or epoch milliseconds (nothing before that time).
        #[arg(long, default_value = "max", value_parser = parse_watermark)]
        watermark: i64,
    },
    /// Run one of the lake's SQL queries (sql/NAME.sql) with DuckDB over the Parquet lake and
    /// print the result. The queries read the star schema's views: fact_events, fact_sessions,
    /// fact_kpi_windows, fact_alerts, dim_product, dim_user (daily snapshots); the views apply
    /// the lake's reader rule. DuckDB comes from PyPI, installed on first use into
    /// .stack/sql-venv by sql/setup.sh. `--list` names the queries.
    LakeQuery {
        /// Query name (sql/NAME.sql), e.g. funnel_by_day_category.
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        /// The lake directory (or file:// URL) the lake sink writes.
        #[arg(long, env = "LAKE_DIR", default_value = ".stack/lake")]
        lake: String,
        /// Output: an aligned table, CSV, or JSON ({"columns": [...], "rows": [[...]]}).
        #[arg(long, value_enum, default_value_t = cartstream_admin::lake_query::Format::Table)]
        format: cartstream_admin::lake_query::Format,
        /// The folder of the queries and of their runner [default: the repository's sql/].
        #[arg(long, env = "CARTSTREAM_SQL_DIR")]
        sql_dir: Option<std::path::PathBuf>,
        /// List the queries with what each computes.
        #[arg(long)]
        list: bool,
    },
    /// Move a stopped consumer group's offsets (replay from the start or from a time). Prints the
    /// plan; writes it only with --execute. Refuses while the group has active members.
    ResetOffsets {
        /// Consumer group, e.g. cartstream-scylla-sink.
        #[arg(long)]
        group: String,
        /// Topic (without the prefix), repeatable.
        #[arg(long = "topic", required = true)]
        topics: Vec<String>,
        /// earliest, latest, or an RFC 3339 time (first record at or after it).
        #[arg(long, default_value = "earliest")]
        to: cartstream_admin::offsets::ResetTo,
        /// Commit the new offsets (without it, only the plan is printed).
        #[arg(long)]
        execute: bool,
    },
}

fn parse_watermark(s: &str) -> Result<i64, String> {
    cartstream_kafka::control::parse_watermark(s)
        .ok_or_else(|| format!("expected max or epoch milliseconds, got {s:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cartstream_runtime::telemetry::init_logging(cli.log_format);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Bootstrap {
            partitions,
            replication,
        } => {
            let registry = cli.registry.connect()?;
            let report = cartstream_admin::bootstrap(
                &cli.kafka,
                &registry,
                &cli.names,
                partitions,
                replication,
            )
            .await?;
            println!("topics on {}:", cli.kafka.brokers);
            for (name, outcome) in &report.topics {
                println!("  {name:<32} {outcome:?}");
            }
            println!("schemas in {}:", registry.url());
            for (subject, file, id) in &report.schemas {
                println!("  {subject:<38} {file:<26} id {id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ResetOffsets {
            group,
            topics,
            to,
            execute,
        } => {
            let full: Vec<String> = topics
                .iter()
                .map(|t| format!("{}{}", cli.names.topic_prefix, t))
                .collect();
            let kafka = cli.kafka.clone();
            let g = group.clone();
            let plan = tokio::task::spawn_blocking(move || {
                cartstream_admin::offsets::reset_offsets(
                    &kafka,
                    &g,
                    &full,
                    to,
                    execute,
                    Duration::from_secs(30),
                )
            })
            .await??;
            println!(
                "group {group}: {}",
                if execute {
                    "offsets moved"
                } else {
                    "plan (dry run: add --execute to apply)"
                }
            );
            println!(
                "  {:<40} {:>12} {:>12} {:>12}",
                "topic/partition", "committed", "new", "replayed"
            );
            let mut total = 0;
            for m in &plan {
                let from = m.from.map_or("-".to_string(), |o| o.to_string());
                println!(
                    "  {:<40} {:>12} {:>12} {:>12}",
                    format!("{}/{}", m.topic, m.partition),
                    from,
                    m.to,
                    m.replayed()
                );
                total += m.replayed();
            }
            println!("  records to read again: {total}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            topic,
            samples,
            timeout_secs,
        } => {
            let registry = cli.registry.connect()?;
            let full = format!("{}{}", cli.names.topic_prefix, topic);
            let s = cartstream_admin::inspect(
                &cli.kafka,
                registry,
                &full,
                samples,
                Duration::from_secs(timeout_secs),
            )
            .await?;
            println!("{full}: {} records", s.records);
            println!("  per partition: {:?}", s.by_partition);
            println!("  per writer schema id: {:?}", s.by_schema_id);
            if !s.by_event_type.is_empty() {
                println!("  per event type (count, revenue):");
                for (t, (n, revenue)) in &s.by_event_type {
                    println!("    {t:<18} {n:>8} {revenue:>14.2}");
                }
            }
            if !s.by_error_code.is_empty() {
                println!("  dead letters by reason: {:?}", s.by_error_code);
            }
            if !s.decode_errors.is_empty() {
                println!("  undecodable records by reason: {:?}", s.decode_errors);
            }
            for sample in &s.samples {
                println!("  {sample}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckSchema { topic, file } => {
            let registry = cli.registry.connect()?;
            let avsc = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            apache_avro::Schema::parse_str(&avsc)
                .with_context(|| format!("{} is not a valid Avro schema", file.display()))?;
            let subject = format!("{}{}-value", cli.names.topic_prefix, topic);
            if registry.is_compatible(&subject, &avsc).await? {
                println!("{} is compatible with {subject}", file.display());
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{} is NOT compatible with {subject}", file.display());
                Ok(ExitCode::from(3))
            }
        }
        Command::EndInput { topic, watermark } => {
            let full = format!("{}{}", cli.names.topic_prefix, topic);
            let marks =
                cartstream_admin::end_input(&cli.kafka, &full, watermark, Duration::from_secs(30))
                    .await?;
            println!(
                "{full}: end of input {} written to {} partitions",
                cartstream_kafka::control::format_watermark(watermark),
                marks.len()
            );
            for (p, offset) in &marks {
                println!("  {full}/{p} at offset {offset}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::LakeQuery {
            name,
            lake,
            format,
            sql_dir,
            list,
        } => {
            let q = cartstream_admin::lake_query::LakeQuery {
                sql_dir: sql_dir.unwrap_or_else(cartstream_admin::lake_query::default_sql_dir),
                lake,
                prefix: cli.names.topic_prefix.clone(),
                format,
            };
            let status = if list {
                q.list()?
            } else {
                q.run(name.as_deref().unwrap_or_default())?
            };
            Ok(ExitCode::from(status))
        }
        Command::Topics => {
            for t in Topic::ALL {
                let contracts: Vec<_> = t.contracts().iter().map(|c| c.file_name()).collect();
                println!(
                    "{:<32} {:<40} {}",
                    cli.names.name(t),
                    cli.names.subject(t),
                    contracts.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
