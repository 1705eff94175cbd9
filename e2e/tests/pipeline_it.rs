//! The whole pipeline on the real local stack, started the way users start it
//! (`scripts/pipeline.sh`), scraped by the real Prometheus:
//!
//! 1. **Dashboards**: every panel query of every dashboard in `grafana/dashboards/` is evaluated
//!    through Prometheus' HTTP API while the pipeline runs; each must be valid and return data.
//! 2. **Kappa replay**: a second generation (`<prefix>g2.` topics, new groups, new keyspace, new
//!    lake) rebuilds everything from the first generation's raw topic; its CQL tables and lake equal
//!    the first generation's. The replay rate is printed next to the live rate.
//!
//! Needs the stack (`make up`) and the binaries (`cargo build --workspace --bins`, which
//! `make test` does first). Scale by `CARTSTREAM_PIPELINE_EVENTS` (default 20 000).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cartstream_testkit as kit;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Directory of the workspace binaries (the test executable lives in `<target>/<profile>/deps`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    for b in [
        "cartstream-producer",
        "cartstream-windower",
        "cartstream-lake-sink",
    ] {
        assert!(
            dir.join(b).is_file(),
            "{} is not built: run `cargo build --workspace --bins` (make test does)",
            dir.join(b).display()
        );
    }
    dir
}

/// `n` consecutive free TCP ports on loopback.
fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (rand_u16() % 30_000);
        let listeners: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if listeners.len() == n as usize {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) as u16
}

/// One generation of the pipeline: its namespace, keyspace, lake and ports.
struct Generation {
    name: String,
    prefix: String,
    source_prefix: String,
    keyspace: String,
    lake: PathBuf,
    models: PathBuf,
    port_base: u16,
}

impl Generation {
    fn env(&self, cmd: &mut Command) {
        cmd.env("TOPIC_PREFIX", &self.prefix)
            .env("SOURCE_TOPIC_PREFIX", &self.source_prefix)
            .env("NAME", &self.name)
            .env("PORT_BASE", self.port_base.to_string())
            .env("SCYLLA_KEYSPACE", &self.keyspace)
            .env("LAKE_URL", format!("file://{}", self.lake.display()))
            .env("MODEL_URL", format!("file://{}", self.models.display()))
            .env("BIN", bin_dir())
            .env("PROFILE_ARGS", "--batch-linger-ms 50")
            .env("MODEL_PERIOD_MS", "60000");
    }

    fn script(&self, action: &str) -> std::process::Output {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/pipeline.sh"))
            .arg(action)
            .current_dir(repo_root());
        self.env(&mut cmd);
        cmd.output().unwrap()
    }

    fn start(&self) {
        let out = self.script("start");
        assert!(
            out.status.success(),
            "pipeline.sh start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn wait_caught_up(&self) {
        let out = self.script("wait");
        assert!(
            out.status.success(),
            "pipeline did not catch up:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs_tail()
        );
    }

    fn logs_tail(&self) -> String {
        let dir = repo_root().join(".stack/services");
        let mut s = String::new();
        for svc in [
            "cleaner",
            "enricher",
            "windower",
            "sessionizer",
            "detector",
            "scylla-sink",
            "lake-sink",
            "model-service",
        ] {
            let f = dir.join(format!("{}{svc}.log", self.name));
            if let Ok(text) = std::fs::read_to_string(&f) {
                let lines: Vec<&str> = text.lines().collect();
                s.push_str(&format!("--- {}\n", f.display()));
                for l in &lines[lines.len().saturating_sub(8)..] {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    fn stop(&self) {
        let _ = self.script("stop");
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.stop();
    }
}

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

fn producer(gen: &Generation, events: u64, rate: u64, metrics_port: u16) -> std::process::Child {
    Command::new(bin_dir().join("cartstream-producer"))
        .args(["simulate", "--topic-prefix", &gen.prefix])
        .args(["--count", &events.to_string(), "--rate", &rate.to_string()])
        .args(["--speed", "60", "--products", "300", "--users", "2000"])
        .args(["--sessions", "300", "--currencies", "USD"])
        .args(["--duplicate-ratio", "0.02", "--malformed-ratio", "0.01"])
        .args(["--trend-at", "+20m", "--trend-for", "10m"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--progress", "off"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Every row of every derived table of a keyspace, as sorted strings, without the columns that
/// record when a row was computed or written (a replay computes them again, later).
async fn table_rows(keyspace: &str) -> BTreeMap<String, BTreeSet<String>> {
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(kit::scylla_uri())
        .build()
        .await
        .unwrap();
    let tables = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let mut out = BTreeMap::new();
    for row in tables.rows::<(String,)>().unwrap() {
        let (table,) = row.unwrap();
        // Bookkeeping, and forecasts (a model trained later forecasts differently).
        if table.starts_with("schema_") || table.starts_with("forecasts") {
            continue;
        }
        let rows = session
            .query_unpaged(format!("SELECT * FROM {keyspace}.{table}"), ())
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let mut set = BTreeSet::new();
        for r in rows.rows::<scylla::value::Row>().unwrap() {
            let r = r.unwrap();
            let cols: Vec<String> = names
                .iter()
                .zip(r.columns.iter())
                .filter(|(n, _)| !is_time_of_computation(n))
                .map(|(n, v)| format!("{n}={v:?}"))
                .collect();
            set.insert(cols.join(" "));
        }
        out.insert(table, set);
    }
    out
}

fn is_time_of_computation(column: &str) -> bool {
    matches!(
        column,
        "emitted_at" | "detected_at" | "written_at" | "created_at" | "failed_at" | "updated_at"
    )
}

/// Every record of the lake as (topic, partition, offset) — read with the `parquet` crate's own
/// reader, not the sink's code.
fn lake_records(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                let topic = p
                    .strip_prefix(root)
                    .unwrap()
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned();
                let reader = SerializedFileReader::new(std::fs::File::open(&p).unwrap()).unwrap();
                for row in reader.get_row_iter(None).unwrap() {
                    let row = row.unwrap();
                    let text: Vec<String> = row
                        .get_column_iter()
                        .filter(|(n, _)| !is_time_of_computation(n))
                        .map(|(n, v)| format!("{n}={v}"))
                        .collect();
                    out.entry(topic.clone()).or_default().insert(text.join(" "));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs every service of issues 5-7 built; enabled when they land"]
async fn pipeline_serves_every_dashboard_panel_and_a_replay_rebuilds_the_same_state() {
    let kafka = kit::kafka();
    let events: u64 = std::env::var("CARTSTREAM_PIPELINE_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
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
    gen1.start();

    // --- live run, scraped by Prometheus.
    let live_started = Instant::now();
    let status = producer(&gen1, events, 2_000, base + 20).wait().unwrap();
    assert!(status.success(), "producer failed");
    gen1.wait_caught_up();
    let live_secs = live_started.elapsed().as_secs_f64();

    // Two scrapes after the last records (scrape interval 5 s), then every panel.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let http = reqwest::Client::new();
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
        "live: {events} events in {live_secs:.1} s ({:.0} ev/s, producer-paced); replay: {replay_secs:.1} s ({:.0} ev/s)",
        events as f64 / live_secs,
        events as f64 / replay_secs
    );
    for (table, rows) in &original_tables {
        let other = &rebuilt_tables[table];
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
    let strip = |lake: &BTreeMap<String, BTreeSet<String>>, p: &str| {
        lake.iter()
            .map(|(k, v)| (k.replace(p, ""), v.clone()))
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
            b.get(topic).map(BTreeSet::len)
        );
        println!("lake {topic}: {} rows, rebuilt equal", rows.len());
    }

    drop(gen2);
    drop(gen1);
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
    let _ = std::fs::remove_dir_all(&work);
}
