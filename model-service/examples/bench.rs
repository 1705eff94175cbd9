//! Benchmark of the model service (run by `scripts/bench-model.sh`, in release):
//! 1. training time of one year of hourly history for 50 categories (synthetic: the simulator's
//!    shape and the retail shape of `synth`), with the default settings and with the training
//!    window covering the whole year and every row, for the default family (`ridge_profile_log`)
//!    and the first model (`ridge_lags`, the figures before issue 16);
//! 2. forecast request latency on loopback: the real API router serving the champion's forecasts
//!    (50 categories), a load generator of `BENCH_CONNECTIONS` concurrent keep-alive clients
//!    sending `BENCH_REQUESTS` requests in total. Client and server share the machine's cores.

#![allow(clippy::unwrap_used)]

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cartstream_model_service::api;
use cartstream_model_service::model::{self, TrainConfig};
use cartstream_model_service::monitor::{Champion, Engine, MonitorConfig};
use cartstream_model_service::registry::ModelRegistry;
use cartstream_model_service::service::Shared;
use cartstream_model_service::synth::Synth;

fn env(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let categories = env("BENCH_CATEGORIES", 50);
    let periods = env("BENCH_PERIODS", 24 * 365);
    let start = 24 * 20_000i64;
    let t = Instant::now();
    let history = Synth::new(categories, 7).history(3_600_000, start, start + periods as i64);
    println!(
        "history: {categories} categories x {periods} hourly periods generated in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let retail = Synth::retail(categories, 7).history(
        3_600_000,
        cartstream_model_service::synth::RETAIL_START,
        cartstream_model_service::synth::RETAIL_START + periods as i64,
    );
    for (shape, h) in [("today", &history), ("retail", &retail)] {
        for family in [model::Family::RidgeProfileLog, model::Family::RidgeLags] {
            for (name, cfg) in [
                (
                    "default (window 672 origins, <= 60000 rows per fit)",
                    TrainConfig {
                        family,
                        ..TrainConfig::default()
                    },
                ),
                (
                    "whole year, every row",
                    TrainConfig {
                        family,
                        train_window_periods: periods,
                        max_rows: usize::MAX,
                        ..TrainConfig::default()
                    },
                ),
            ] {
                let t = Instant::now();
                let trained = model::train(h, &cfg, "bench", 0).unwrap();
                let secs = t.elapsed().as_secs_f64();
                let (p, r) = (
                    &trained.meta.holdout.purchases,
                    &trained.meta.holdout.revenue,
                );
                println!(
                    "training {shape} {} [{name}]: {secs:.2} s, {} rows per fit; hold-out relative to seasonal-naive purchases {:.3} revenue {:.3}, to moving-average {:.3} / {:.3}, coverage {:.3} / {:.3}",
                    family.label(),
                    trained.meta.rows_per_fit,
                    p.relative_to_seasonal_naive.unwrap_or(f64::NAN),
                    r.relative_to_seasonal_naive.unwrap_or(f64::NAN),
                    p.relative_to_moving_average.unwrap_or(f64::NAN),
                    r.relative_to_moving_average.unwrap_or(f64::NAN),
                    p.coverage.unwrap_or(f64::NAN),
                    r.coverage.unwrap_or(f64::NAN),
                );
            }
        }
    }

    // Serving: an engine with the champion installed over the last three weeks.
    let cfg = TrainConfig::default();
    let mut engine = Engine::new(cfg.clone(), MonitorConfig::default(), 3_600_000);
    let tail = periods.min(24 * 35);
    for i in history.len - tail..history.len {
        let obs = history
            .series
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    cartstream_model_service::series::Obs {
                        purchases: s.purchases[i],
                        units: s.purchases[i],
                        revenue: s.revenue[i],
                    },
                )
            })
            .collect();
        engine.close_period(history.index_of(i), &obs);
    }
    let mut cand = engine.retrain("bench", 0).unwrap();
    cand.meta.version = "v000001".into();
    engine.install(Champion {
        model: Arc::new(cand.model),
        meta: cand.meta.clone(),
    });
    let dir = std::env::temp_dir().join(format!("cartstream-model-bench-{}", std::process::id()));
    let registry = ModelRegistry::open(dir.to_str().unwrap()).unwrap();
    let (tx, _rx) = mpsc::channel();
    let shared = Arc::new(Shared::new(registry, tx));
    *shared.forecasts.write().unwrap() = engine.forecasts();
    *shared.champion.write().unwrap() = Some(cand.meta);

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = server_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = api::router(shared);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    });

    let connections = env("BENCH_CONNECTIONS", 16);
    let requests = env("BENCH_REQUESTS", 40_000);
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Baseline first: the same HTTP stack and load on /healthz (no forecast work).
    for (name, forecast) in [("/healthz (baseline)", false), ("/v1/forecast", true)] {
        let (mut lat, wall) =
            client_rt.block_on(load(addr, connections, requests, categories, forecast));
        lat.sort_by(f64::total_cmp);
        println!(
            "{name:20} loopback: {} requests, {connections} connections, {:>6.0} req/s; latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            lat.len(),
            lat.len() as f64 / wall.as_secs_f64(),
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(0.0)
        );
    }
    // The handler's own time, from the service's histogram (same process).
    let h = cartstream_model_service::telemetry::HTTP_SECONDS.with_label_values(&["forecast"]);
    let total = h.get_sample_count();
    let proto = prometheus::core::Metric::metric(&h);
    let buckets = proto.get_histogram().get_bucket().to_vec();
    let p99 = buckets
        .iter()
        .find(|b| b.cumulative_count() as f64 >= 0.99 * total as f64)
        .map_or(f64::INFINITY, |b| b.upper_bound() * 1000.0);
    let under = buckets.first().map_or(0, |b| b.cumulative_count());
    println!(
        "forecast handler time (cartstream_model_http_request_duration_seconds): {total} requests, {:.1} % under {:.2} ms, p99 <= {p99:.2} ms",
        100.0 * under as f64 / total.max(1) as f64,
        buckets.first().map_or(0.0, |b| b.upper_bound() * 1000.0),
    );
    let _ = std::fs::remove_dir_all(dir);
    server_rt.shutdown_timeout(Duration::from_secs(1));
}

async fn load(
    addr: std::net::SocketAddr,
    connections: usize,
    requests: usize,
    categories: usize,
    forecast: bool,
) -> (Vec<f64>, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let url = |c: usize, i: usize| {
        if forecast {
            format!(
                "http://{addr}/v1/forecast?category={}&horizon={}",
                Synth::name(c),
                1 + i % 6
            )
        } else {
            format!("http://{addr}/healthz")
        }
    };
    for c in 0..categories.min(20) {
        assert_eq!(client.get(url(c, 0)).send().await.unwrap().status(), 200);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..connections {
        let client = client.clone();
        let urls: Vec<String> = (0..requests / connections)
            .map(|i| url((w * 7 + i) % categories, i))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(urls.len());
            for u in urls {
                let t = Instant::now();
                let r = client.get(&u).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all, started.elapsed())
}
