//! `cartstream-model-service`: demand forecasts per category that watch their accuracy and input
//! drift and retrain themselves. `run` is the service; `train`, `models` and `rollback` work on
//! the model registry offline; `backtest` judges the model against the baselines on a history
//! (kpi.windows or synthetic) at several origins. See model-service/README.md.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};

use anyhow::Context;
use cartstream_events::types::KpiWindow;
use cartstream_events::{Decoder, RegistryArgs};
use cartstream_kafka::{KafkaArgs, Topic, TopicNames};
use cartstream_model_service::model::{self, Family};
use cartstream_model_service::monitor::Engine;
use cartstream_model_service::registry::ModelRegistry;
use cartstream_model_service::series::{History, Obs};
use cartstream_model_service::service::{self, EngineLoop, ForecastStoreArgs, ModelArgs, Shared};
use cartstream_model_service::synth::{Synth, RETAIL_START};
use cartstream_model_service::{api, telemetry};
use cartstream_runtime::ServiceArgs;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "cartstream-model-service",
    version,
    about = "Demand forecasts per category from kpi.windows: serves them, watches accuracy and drift, retrains itself"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service: replay kpi.windows, train, serve the API, monitor and retrain.
    Run(Box<RunArgs>),
    /// Train once from kpi.windows (read to its end) or synthetic history; store the model and
    /// promote it if it beats seasonal-naive and the moving average on every target (and the
    /// champion by the margin).
    Train(Box<TrainArgs>),
    /// Rolling-origin backtest over kpi.windows (read to its end) or synthetic history: per target
    /// and horizon step, the model's MAE next to seasonal-naive's and the moving average's over
    /// several origins, refitted at each. Stores nothing.
    Backtest(Box<BacktestArgs>),
    /// List the stored models with their hold-out metrics.
    Models(StoreArgs),
    /// Move the champion pointer back to the previous champion (a running service picks it up
    /// at its next start; use POST /v1/rollback for a running one).
    Rollback(StoreArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    schema_registry: RegistryArgs,
    #[command(flatten)]
    names: TopicNames,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cql: ForecastStoreArgs,
    /// Address of the forecast API (loopback by default; give a token before exposing it).
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8088")]
    http_addr: String,
    /// Bearer token required by the mutating routes (POST /v1/retrain, /v1/rollback); reads
    /// stay open. Unset: those routes are open too (fine on loopback). Prefer the environment
    /// variable: a flag's value is visible in `ps`.
    #[arg(long, env = "MODEL_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Seconds after a manual retrain before the API accepts the next one (429 with
    /// Retry-After before that, and while one runs).
    #[arg(long, env = "MODEL_API_RETRAIN_COOLDOWN_SECS", default_value_t = 60)]
    api_retrain_cooldown_secs: u64,
    /// Deadline of every API request, in seconds (503 after it).
    #[arg(long, env = "MODEL_API_TIMEOUT_SECS", default_value_t = 60)]
    api_timeout_secs: u64,
    /// Caught up means: every kpi.windows partition keeps reaching its end (a busy live topic
    /// too); one that goes this many ms without reaching it reads a backlog. Automatic retrains
    /// wait until caught up (or for the end of input), so a backlog is read without training
    /// challengers on outdated history.
    #[arg(long, env = "MODEL_IDLE_TIMEOUT_MS", default_value_t = 2000)]
    idle_timeout_ms: u64,
    /// Categories exported as forecast gauges at most.
    #[arg(long, env = "GAUGE_SERIES_MAX", default_value_t = 200)]
    gauge_series_max: usize,
}

#[derive(clap::Args)]
struct TrainArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    schema_registry: RegistryArgs,
    #[command(flatten)]
    names: TopicNames,
    #[command(flatten)]
    model: ModelArgs,
    /// Train on synthetic history of this many categories instead of kpi.windows.
    #[arg(long, env = "SYNTHETIC_CATEGORIES")]
    synthetic_categories: Option<usize>,
    /// Periods of synthetic history.
    #[arg(long, env = "SYNTHETIC_PERIODS", default_value_t = 24 * 365)]
    synthetic_periods: usize,
    /// Shape of the synthetic history: today (the simulator's: open around the clock, daily and
    /// weekly seasonality, promotions) or retail (store hours, closed on Saturdays, yearly
    /// season, Christmas peak).
    #[arg(long, env = "SYNTHETIC_PROFILE", value_enum, default_value_t = SynthProfile::Today)]
    synthetic_profile: SynthProfile,
    /// Store the model without promoting it.
    #[arg(long, env = "NO_PROMOTE")]
    no_promote: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SynthProfile {
    Today,
    Retail,
}

fn synthetic(profile: SynthProfile, categories: usize, periods: usize, period_ms: i64) -> History {
    match profile {
        SynthProfile::Today => {
            let start = 24 * 20_000; // 2024-10-04, a fixed origin keeps runs comparable
            Synth::new(categories, 7).history(period_ms, start, start + periods as i64)
        }
        // 2025-12-01 onwards: a year ends in the run-up to Christmas
        SynthProfile::Retail => Synth::retail(categories, 7).history(
            period_ms,
            RETAIL_START,
            RETAIL_START + periods as i64,
        ),
    }
}

#[derive(clap::Args)]
struct BacktestArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    schema_registry: RegistryArgs,
    #[command(flatten)]
    names: TopicNames,
    #[command(flatten)]
    model: ModelArgs,
    /// Backtest synthetic history of this shape instead of kpi.windows.
    #[arg(long, env = "SYNTHETIC_PROFILE", value_enum)]
    synthetic: Option<SynthProfile>,
    /// Categories of synthetic history.
    #[arg(long, env = "SYNTHETIC_CATEGORIES", default_value_t = 50)]
    synthetic_categories: usize,
    /// Periods of synthetic history.
    #[arg(long, env = "SYNTHETIC_PERIODS", default_value_t = 24 * 365)]
    synthetic_periods: usize,
    /// Origins (folds): each evaluates the hold-out (--holdout-periods) ending at its end.
    #[arg(long, env = "BACKTEST_FOLDS", default_value_t = 4)]
    folds: usize,
    /// Periods between the ends of two folds (168: a week).
    #[arg(long, env = "BACKTEST_FOLD_STEP", default_value_t = 168)]
    fold_step: usize,
    /// Backtest every model family, not only --family.
    #[arg(long, env = "BACKTEST_ALL_FAMILIES")]
    all_families: bool,
}

#[derive(clap::Args)]
struct StoreArgs {
    /// Where models live: a directory, file:///dir or s3://bucket/prefix (AWS_* variables).
    #[arg(long, env = "MODEL_STORE_URL", default_value = "./.models")]
    model_store: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cartstream_runtime::exit_code(match cli.command {
        Cmd::Run(a) => run(*a).await,
        Cmd::Train(a) => train(*a).await,
        Cmd::Backtest(a) => backtest(*a).await,
        Cmd::Models(a) => models(a).await,
        Cmd::Rollback(a) => rollback(a).await,
    })
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let svc = a.service.init("cartstream-model-service").await?;
    telemetry::register_all();
    let train_cfg = a.model.train_config()?;
    let aggregator = a.model.aggregator()?;
    a.kafka.check(std::time::Duration::from_secs(15))?;
    let schema_registry = a.schema_registry.connect()?;
    let registry = ModelRegistry::open(&a.model.model_store)?;
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let guard = api::ApiGuard::new(
        a.api_token.clone(),
        std::time::Duration::from_secs(a.api_retrain_cooldown_secs),
        std::time::Duration::from_secs(a.api_timeout_secs.max(1)),
    );
    let token_set = guard.has_token();
    let shared = Arc::new(Shared::with_guard(registry.clone(), cmd_tx, guard));
    let (f_tx, f_rx) = watch::channel(None);

    if a.cql.write_forecasts {
        // The database may be starting along with us: retry for a while before giving up.
        let mut attempt = 0;
        let (session, insert) = loop {
            attempt += 1;
            match a.cql.connect().await {
                Ok(c) => break c,
                Err(e) if attempt < 10 && !svc.shutdown.is_triggered() => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "CQL database not reachable yet, retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                }
                Err(e) => return Err(e),
            }
        };
        tokio::spawn(service::write_forecasts(
            session,
            insert,
            a.cql.forecast_ttl_secs,
            f_rx,
            svc.shutdown.clone(),
        ));
    }

    let listener = tokio::net::TcpListener::bind(&a.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the API", a.http_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, mutating_routes = if token_set { "bearer token" } else { "open" }, "forecast API listening");
    if !token_set && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the API listens beyond loopback without --api-token: anyone who reaches it can retrain and roll back");
    }
    let app = api::router(shared.clone());
    let stop = svc.shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
        {
            tracing::error!(error = %e, "API stopped");
        }
    });

    let mut engine_loop = EngineLoop {
        kafka: a.kafka.clone(),
        topic: a.names.name(Topic::KpiWindows),
        group: format!("{}cartstream-model-service", a.names.topic_prefix),
        decoder: Decoder::<KpiWindow>::new(schema_registry),
        engine: Engine::new(train_cfg, a.model.monitor_config(), a.model.period_ms),
        aggregator,
        window_stream: a.model.window_stream(),
        shared,
        forecasts_tx: f_tx,
        commands: cmd_rx,
        shutdown: svc.shutdown.clone(),
        health: svc.health.clone(),
        handle: tokio::runtime::Handle::current(),
        gauge_series_max: a.gauge_series_max,
        idle_timeout: std::time::Duration::from_millis(a.idle_timeout_ms),
    };
    match registry.load_champion().await? {
        Some((m, meta)) => {
            if meta.period_ms != a.model.period_ms || m.horizon != a.model.horizon {
                tracing::warn!(version = %meta.version, "the champion was trained with another period or horizon; it serves until a retrain replaces it");
            }
            tracing::info!(version = %meta.version, store = registry.url(), "champion loaded");
            engine_loop.install(m, meta);
        }
        None => tracing::info!(
            store = registry.url(),
            "no champion yet: the first model is trained once the history is long enough"
        ),
    }
    let shutdown = svc.shutdown.clone();
    let result = tokio::task::spawn_blocking(move || engine_loop.run())
        .await
        .context("engine thread")?;
    shutdown.trigger();
    result
}

async fn train(a: TrainArgs) -> anyhow::Result<()> {
    let cfg = a.model.train_config()?;
    // The periods as the running service closes them: from the topic as they are (so the
    // figures are the service's to the last bit), synthetic history with units back from the
    // average price (so the price feature is the same).
    let periods: Vec<(i64, HashMap<String, Obs>)> = match a.synthetic_categories {
        Some(n) => {
            let history = synthetic(
                a.synthetic_profile,
                n,
                a.synthetic_periods,
                a.model.period_ms,
            );
            (0..history.len)
                .map(|i| {
                    let obs = history
                        .series
                        .iter()
                        .map(|(k, s)| {
                            let units = if s.price[i].is_finite() && s.price[i] > 0.0 {
                                s.revenue[i] / s.price[i]
                            } else {
                                0.0
                            };
                            let o = Obs {
                                purchases: s.purchases[i],
                                units,
                                revenue: s.revenue[i],
                            };
                            (k.clone(), o)
                        })
                        .collect();
                    (history.index_of(i), obs)
                })
                .collect()
        }
        None => periods_from_topic(&a.kafka, &a.schema_registry, &a.names, &a.model).await?,
    };
    let registry = ModelRegistry::open(&a.model.model_store)?;
    let mut engine = Engine::new(cfg.clone(), a.model.monitor_config(), a.model.period_ms);
    for (idx, obs) in &periods {
        engine.close_period(*idx, obs);
    }
    let history = engine.history();
    eprintln!(
        "training on {} series x {} periods (horizon {}, hold-out {})",
        history.series.len(),
        history.len,
        cfg.horizon,
        cfg.holdout_periods
    );
    if let Some((m, meta)) = registry.load_champion().await? {
        engine.install(cartstream_model_service::monitor::Champion {
            model: Arc::new(m),
            meta,
        });
    }
    let started = std::time::Instant::now();
    let mut cand = engine.retrain("offline", service::now_ms())?;
    let secs = started.elapsed().as_secs_f64();
    if a.no_promote && cand.promote {
        cand.promote = false;
        cand.meta.decision = "not_promoted_by_request".into();
    }
    let version = registry.save(&cand.model, &mut cand.meta).await?;
    if cand.promote {
        registry
            .promote(&version, "offline", service::now_ms())
            .await?;
    }
    let p = &cand.meta.holdout.purchases;
    let r = &cand.meta.holdout.revenue;
    println!(
        "version {version} ({}): {}",
        cfg.family.label(),
        cand.meta.decision
    );
    for r in &cand.meta.reasons {
        println!("  {r}");
    }
    println!(
        "training + evaluation: {secs:.2} s ({} rows per fit)",
        cand.meta.rows_per_fit
    );
    for (name, e) in [("purchases", p), ("revenue", r)] {
        println!(
            "{name:9} hold-out MAE {:.3} WAPE {:.3} sMAPE {:.3} ({} points with sales) | seasonal-naive MAE {:.3} | moving-average MAE {:.3} | relative to seasonal-naive {:.3}, to moving-average {:.3} | interval coverage {:.3} (nominal {:.2})",
            e.mae,
            e.wape.unwrap_or(f64::NAN),
            e.smape,
            e.smape_points,
            e.seasonal_naive_mae,
            e.moving_average_mae,
            e.relative_to_seasonal_naive.unwrap_or(f64::NAN),
            e.relative_to_moving_average.unwrap_or(f64::NAN),
            e.coverage.unwrap_or(f64::NAN),
            e.nominal_coverage
        );
    }
    Ok(())
}

async fn backtest(a: BacktestArgs) -> anyhow::Result<()> {
    let cfg = a.model.train_config()?;
    let history = match a.synthetic {
        Some(p) => synthetic(
            p,
            a.synthetic_categories,
            a.synthetic_periods,
            a.model.period_ms,
        ),
        None => {
            let capacity = cfg.history_capacity() + a.folds.max(1) * a.fold_step;
            history_from_topic(&a.kafka, &a.schema_registry, &a.names, &a.model, capacity).await?
        }
    };
    let families = if a.all_families {
        vec![
            Family::RidgeProfile,
            Family::RidgeProfileLog,
            Family::RidgeLags,
        ]
    } else {
        vec![cfg.family]
    };
    for family in families {
        let cfg = model::TrainConfig {
            family,
            ..cfg.clone()
        };
        let started = std::time::Instant::now();
        let b = model::backtest(&history, &cfg, a.folds, a.fold_step)?;
        println!(
            "backtest of {} on {} series x {} periods: {} folds of {} hold-out periods, {} periods apart, horizon {} ({:.1} s)",
            family.label(),
            history.series.len(),
            history.len,
            b.folds.len(),
            cfg.holdout_periods,
            a.fold_step,
            cfg.horizon,
            started.elapsed().as_secs_f64()
        );
        print!("{}", b.table());
        println!();
    }
    Ok(())
}

async fn history_from_topic(
    kafka: &KafkaArgs,
    schema_registry: &RegistryArgs,
    names: &TopicNames,
    model: &ModelArgs,
    capacity: usize,
) -> anyhow::Result<History> {
    let mut h = History::new(model.period_ms, capacity);
    for (idx, obs) in periods_from_topic(kafka, schema_registry, names, model).await? {
        h.push(idx, &obs);
    }
    Ok(h)
}

/// The closed periods of kpi.windows read to its end, oldest first, as the running service
/// closes them (the same aggregator, end-of-input marks included).
async fn periods_from_topic(
    kafka: &KafkaArgs,
    schema_registry: &RegistryArgs,
    names: &TopicNames,
    model: &ModelArgs,
) -> anyhow::Result<Vec<(i64, HashMap<String, Obs>)>> {
    let topic = names.name(Topic::KpiWindows);
    let config = kafka.consumer(&format!("{}cartstream-model-train", names.topic_prefix))?;
    let records = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || {
            cartstream_kafka::read::read_all_to_end(
                &config,
                &topic,
                std::time::Duration::from_secs(300),
            )
        }
    })
    .await??;
    let decoder = Decoder::<KpiWindow>::new(schema_registry.connect()?);
    let mut agg = model.aggregator()?;
    let stream = model.window_stream();
    let mut watermarks = cartstream_kafka::control::EndMarks::default();
    let mut bad = 0usize;
    let mut partitions = std::collections::HashSet::new();
    for m in &records {
        use rdkafka::Message;
        partitions.insert(m.partition());
    }
    // Every record is at hand: periods close only at the end.
    agg.expect_partitions(&partitions.iter().copied().collect::<Vec<_>>());
    let mut marks = cartstream_kafka::control::EndMarks::default();
    for m in &records {
        use rdkafka::Message;
        // End-of-input marks close what they allow, as in the running service.
        match cartstream_kafka::control::control_of(m) {
            Ok(Some(mark)) => {
                if mark.is_end_of_input() {
                    if let Some(end) = marks.observe(&topic, m.partition(), &mark) {
                        agg.end_of_input(m.partition(), end);
                    }
                } else if cartstream_kafka::control::stream_of(m).as_deref() == Some(&stream) {
                    if let Some(before) = watermarks.observe(&topic, m.partition(), &mark) {
                        agg.watermark_mark(m.partition(), before);
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(_) => {
                bad += 1;
                continue;
            }
        }
        match m.payload() {
            Some(b) => match decoder.decode(b).await {
                Ok(w) => {
                    agg.accept(m.partition(), &w);
                }
                Err(_) => bad += 1,
            },
            None => bad += 1,
        }
    }
    for p in partitions {
        agg.partition_at_end(p);
    }
    let closed = agg.drain_closed();
    if bad > 0 {
        eprintln!("{bad} records of {topic} could not be decoded and were skipped");
    }
    Ok(closed)
}

async fn models(a: StoreArgs) -> anyhow::Result<()> {
    let registry = ModelRegistry::open(&a.model_store)?;
    let champion = registry.pointer().await?.map(|p| p.version);
    for m in registry.list().await? {
        let mark = if champion.as_deref() == Some(m.version.as_str()) {
            "*"
        } else {
            " "
        };
        println!(
            "{mark} {} {:18} trigger {:8} hold-out MAE purchases {:.3} (seasonal-naive {:.3}, relative {:.3}), revenue {:.3} (seasonal-naive {:.3}, relative {:.3}) fingerprint {}",
            m.version,
            m.decision,
            m.trigger,
            m.holdout.purchases.mae,
            m.holdout.purchases.seasonal_naive_mae,
            m.holdout.purchases.relative_to_seasonal_naive.unwrap_or(f64::NAN),
            m.holdout.revenue.mae,
            m.holdout.revenue.seasonal_naive_mae,
            m.holdout.revenue.relative_to_seasonal_naive.unwrap_or(f64::NAN),
            m.data_fingerprint
        );
        for r in &m.reasons {
            println!("    {r}");
        }
    }
    Ok(())
}

async fn rollback(a: StoreArgs) -> anyhow::Result<()> {
    let registry = ModelRegistry::open(&a.model_store)?;
    let p = registry.rollback(service::now_ms()).await?;
    println!("champion is now {} ({})", p.version, p.reason);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
