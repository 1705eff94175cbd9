//! The whole pipeline on the real local stack, started the way users start it
//! (`scripts/pipeline.sh`), scraped by the real Prometheus:
//!
//! 1. **Dashboards**: every panel query of every dashboard in `grafana/dashboards/` is evaluated
//!    through Prometheus' HTTP API while the pipeline runs; each must be valid and return data.
//! 2. **Kappa replay**: a second generation (`<prefix>g2.` topics, new groups, new keyspace, new
//!    lake) rebuilds everything from the first generation's raw topic; its CQL tables and lake equal
//!    the first generation's. The replay rate is printed next to the live rate.
//!
//! Input: 7 simulated hours of history at 840x (about 45 000 events, for the model to train on), then
//! 45 s of live traffic at 60x with a trend burst, duplicates and malformed records.
//!
//! Needs the stack (`make up`) and the binaries (`cargo build --workspace --bins`, which
//! `make test` does first).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use cartstream_testkit as kit;
use common::{
    bin_dir, free_ports, is_quality_alert, lake_records, raw_count, repo_root, sh, table_rows,
    without_quality_alerts, Generation,
};
use serde_json::Value;

async fn prom_query(http: &reqwest::Client, expr: &str) -> Result<Vec<Value>, String> {
    let r: Value = http
        .get(
            reqwest::Url::parse_with_params(
                "http://127.0.0.1:9090/api/v1/query",
                &[("query", expr)],
            )
            .unwrap(),
        )
        .send()
        .await
        .map_err(|e| format!("request: {e}"))?
        .json()
        .await
        .map_err(|e| format!("response: {e}"))?;
    if r["status"] != "success" {
        return Err(format!(
            "{}: {}",
            r["errorType"].as_str().unwrap_or("?"),
            r["error"].as_str().unwrap_or("?")
        ));
    }
    Ok(r["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Every (dashboard, panel title, expr) of the provisioned dashboards.
fn panel_queries() -> Vec<(String, String, String)> {
    let dir = repo_root().join("grafana/dashboards");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for f in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((
                        f.file_name().unwrap().to_string_lossy().into_owned(),
                        p["title"].as_str().unwrap_or("?").to_string(),
                        expr.to_string(),
                    ));
                }
            }
        }
    }
    out
}

/// Grafana's variables, as Grafana would fill them for a 30-minute view.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "30m")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The simulator on a simulated clock from `start_ms`, `speed` times faster than the wall clock,
/// for `secs` wall seconds at `rate` events/s.
fn producer(gen: &Generation, start_ms: i64, speed: u32, secs: u32, rate: u32) -> Command {
    let mut cmd = Command::new(bin_dir().join("cartstream-producer"));
    cmd.args(["simulate", "--topic-prefix", &gen.prefix])
        .args([
            "--start-time",
            &start_ms.to_string(),
            "--speed",
            &speed.to_string(),
        ])
        .args([
            "--duration-secs",
            &secs.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .args(["--products", "300", "--users", "2000", "--sessions", "300"])
        .args(["--skip-dimensions", "--price-change-every", "0"])
        .args(["--duplicate-ratio", "0.02", "--malformed-ratio", "0.01"])
        .args(["--progress", "off"]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_serves_every_dashboard_panel_and_a_replay_rebuilds_the_same_state() {
    let kafka = kit::kafka();
    let prefix = kit::unique("pipe");
    let work = repo_root()
        .join("target/e2e")
        .join(prefix.trim_end_matches('.'));
    std::fs::create_dir_all(&work).unwrap();
    let base = free_ports(21);
    let gen1 = Generation {
        name: prefix.clone(),
        prefix: prefix.clone(),
        source_prefix: prefix.clone(),
        keyspace: kit::unique_ident("pipe"),
        lake: work.join("lake"),
        models: work.join("models"),
        port_base: base,
    };
    // The catalog first, and fixed: the enricher joins with the dimensions as they are when it
    // processes an event (a replay re-enriches with the catalog of replay time), so the rebuilt
    // state can only equal the original if the catalog did not change in between.
    for args in [
        vec![
            "cartstream-admin",
            "--topic-prefix",
            prefix.as_str(),
            "bootstrap",
        ],
        vec![
            "cartstream-producer",
            "load-catalog",
            "--topic-prefix",
            prefix.as_str(),
            "--products",
            "300",
            "--users",
            "2000",
            "--metrics-addr",
            "off",
        ],
    ] {
        let out = Command::new(bin_dir().join(args[0]))
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    gen1.start();

    // --- history: 7 simulated hours in 30 s (the model trains on it), ending an hour ago.
    let live_started = Instant::now();
    let history_start = now_ms() - 8 * 3_600_000;
    let out = producer(&gen1, history_start, 840, 30, 1_500)
        .args(["--metrics-addr", "off"])
        .output()
        .unwrap();
    assert!(out.status.success(), "history producer failed: {out:?}");

    // --- live: the last hour at 60x with a trend on kids.toys, scraped by Prometheus as a
    // service of the pipeline, while a client asks the model service for forecasts.
    let producer_name = format!("{}producer", gen1.name);
    let mut live = producer(&gen1, now_ms() - 3_600_000, 60, 45, 500);
    live.args([
        "--trend-at",
        "+10m",
        "--trend-for",
        "15m",
        "--trend-category",
        "kids.toys",
    ]);
    let program = live.get_program().to_string_lossy().into_owned();
    let live_args: Vec<String> = live
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let port = (base + 20).to_string();
    let mut start = vec![
        "scripts/services.sh",
        "start",
        &producer_name,
        &port,
        "--",
        &program,
    ];
    start.extend(live_args.iter().map(String::as_str));
    let out = sh(&start);
    assert!(out.status.success(), "live producer: {out:?}");
    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{}", base + 9);
    let mut forecasts_ok = 0;
    for _ in 0..30 {
        let r = http
            .get(format!("{api}/v1/forecast?category=kids.toys&horizon=3"))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            forecasts_ok += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        forecasts_ok > 0,
        "the model service never served a forecast"
    );

    // Every panel, while the producer still runs (30 s of its 45 s: two scrapes or more of all).
    let mut problems = Vec::new();
    let queries = panel_queries();
    assert!(
        queries.len() >= 30,
        "only {} panel queries found",
        queries.len()
    );
    for (file, title, expr) in &queries {
        match prom_query(&http, &substitute(expr)).await {
            Ok(r) if r.is_empty() => {
                problems.push(format!("{file}: `{title}`: no data for {expr}"))
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("{file}: `{title}`: invalid query {expr}: {e}")),
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} panel queries failed:\n{}",
        problems.len(),
        queries.len(),
        problems.join("\n")
    );
    println!(
        "dashboards: all {} panel queries return data",
        queries.len()
    );

    let pid: i32 =
        std::fs::read_to_string(repo_root().join(format!(".stack/services/{producer_name}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    while Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .unwrap()
        .success()
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = sh(&["scripts/services.sh", "stop", &producer_name]);
    gen1.wait_caught_up();
    let live_secs = live_started.elapsed().as_secs_f64();
    let raw_events = raw_count(&gen1.prefix).await;

    // --- replay: generation 2 rebuilds everything from generation 1's raw topic.
    gen1.stop();
    let original_tables = table_rows(&gen1.keyspace).await;
    let original_lake = lake_records(&gen1.lake);
    assert!(
        original_tables.values().any(|rows| !rows.is_empty()),
        "generation 1 wrote no rows: {original_tables:?}"
    );
    let gen2 = Generation {
        name: format!("{prefix}g2-"),
        prefix: format!("{prefix}g2."),
        source_prefix: prefix.clone(),
        keyspace: format!("{}_g2", gen1.keyspace),
        lake: work.join("lake-g2"),
        models: work.join("models-g2"),
        port_base: base + 10,
    };
    let replay_started = Instant::now();
    gen2.start();
    gen2.wait_caught_up();
    let replay_secs = replay_started.elapsed().as_secs_f64();
    gen2.stop();
    let rebuilt_tables = table_rows(&gen2.keyspace).await;
    let rebuilt_lake = lake_records(&gen2.lake);
    println!(
        "live: {raw_events} raw records in {live_secs:.1} s ({:.0} rec/s, paced by the producer); \
         replay: {replay_secs:.1} s ({:.0} rec/s, the whole pipeline from the raw topic)",
        raw_events as f64 / live_secs,
        raw_events as f64 / replay_secs
    );
    for (table, rows) in &original_tables {
        // data_quality alerts compared apart (see common::is_quality_alert)
        let (rows, q1) = without_quality_alerts(rows);
        let (other, q2) = without_quality_alerts(&rebuilt_tables[table]);
        if q1 + q2 > 0 {
            println!("table {table}: data_quality alerts {q1} originally, {q2} rebuilt");
        }
        let (rows, other) = (&rows, &other);
        let missing: Vec<_> = rows.difference(other).take(3).collect();
        let extra: Vec<_> = other.difference(rows).take(3).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "table {table}: {} rows originally, {} rebuilt; missing e.g. {missing:?}, extra e.g. {extra:?}",
            rows.len(),
            other.len()
        );
        println!("table {table}: {} rows, rebuilt equal", rows.len());
    }
    let strip = |lake: &BTreeMap<String, BTreeMap<String, usize>>, p: &str| {
        lake.iter()
            .map(|(k, v)| {
                let v: BTreeMap<String, usize> = v
                    .iter()
                    .filter(|(r, _)| !is_quality_alert(r))
                    .map(|(r, n)| (r.clone(), *n))
                    .collect();
                (k.replace(p, ""), v)
            })
            .collect::<BTreeMap<_, _>>()
    };
    let (a, b) = (
        strip(&original_lake, &gen1.prefix),
        strip(&rebuilt_lake, &gen2.prefix),
    );
    assert!(!a.is_empty(), "generation 1 wrote no Parquet files");
    for (topic, rows) in &a {
        assert_eq!(
            Some(rows),
            b.get(topic),
            "lake {topic}: {} rows originally, {:?} rebuilt",
            rows.len(),
            b.get(topic).map(BTreeMap::len)
        );
        let dup = rows.values().filter(|n| **n > 1).count();
        assert_eq!(dup, 0, "lake {topic}: {dup} rows written more than once");
        println!("lake {topic}: {} rows, rebuilt equal", rows.len());
    }

    drop(gen2);
    drop(gen1);
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
    let _ = std::fs::remove_dir_all(&work);
}
