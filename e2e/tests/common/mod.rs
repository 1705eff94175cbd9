//! Scaffolding shared by the end-to-end tests: one pipeline generation started with
//! `scripts/pipeline.sh`, and readers of what it wrote (CQL tables, the lake, topics) that use
//! the drivers' own readers, not the sinks' code.

#![allow(dead_code)] // each test binary uses a part
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cartstream_testkit as kit;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Directory of the workspace binaries (the test executable lives in `<target>/<profile>/deps`).
pub fn bin_dir() -> PathBuf {
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
pub fn free_ports(n: u16) -> u16 {
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

pub fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) as u16
}

/// One generation of the pipeline: its namespace, keyspace, lake and ports.
pub struct Generation {
    pub name: String,
    pub prefix: String,
    pub source_prefix: String,
    pub keyspace: String,
    pub lake: PathBuf,
    pub models: PathBuf,
    pub port_base: u16,
}

impl Generation {
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("TOPIC_PREFIX", &self.prefix)
            .env("SOURCE_TOPIC_PREFIX", &self.source_prefix)
            .env("NAME", &self.name)
            .env("PORT_BASE", self.port_base.to_string())
            .env("SCYLLA_KEYSPACE", &self.keyspace)
            .env("LAKE_URL", format!("file://{}", self.lake.display()))
            .env("MODEL_URL", format!("file://{}", self.models.display()))
            .env("BIN", bin_dir())
            .env("PROFILE_ARGS", "--batch-linger-ms 50")
            // The lake's files close 10 s after their first record (60 s by default), so a
            // generation's last sessions and windows are committed well within `wait`'s budget.
            .env("MAX_FILE_AGE_SECS", "10")
            .env("MODEL_PERIOD_MS", "60000");
    }

    pub fn script(&self, action: &str) -> std::process::Output {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/pipeline.sh"))
            .arg(action)
            .current_dir(repo_root());
        self.env(&mut cmd);
        cmd.output().unwrap()
    }

    pub fn start(&self) {
        let out = self.script("start");
        assert!(
            out.status.success(),
            "pipeline.sh start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn wait_caught_up(&self) {
        let out = self.script("wait");
        assert!(
            out.status.success(),
            "pipeline did not catch up:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs_tail()
        );
    }

    pub fn logs_tail(&self) -> String {
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

    pub fn stop(&self) {
        let _ = self.script("stop");
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn sh(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

/// Every row of every derived table of a keyspace, as sorted strings, without the columns that
/// record when a row was computed or written (a replay computes them again, later).
pub async fn table_rows(keyspace: &str) -> BTreeMap<String, BTreeSet<String>> {
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

pub fn is_time_of_computation(column: &str) -> bool {
    matches!(
        column,
        "emitted_at" | "detected_at" | "written_at" | "created_at" | "failed_at" | "updated_at"
    )
}

/// Every record of the lake as (topic, partition, offset) — read with the `parquet` crate's own
/// reader, not the sink's code.
pub fn lake_records(root: &Path) -> BTreeMap<String, BTreeMap<String, usize>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
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
                    *out.entry(topic.clone())
                        .or_default()
                        .entry(text.join(" "))
                        .or_default() += 1;
                }
            }
        }
    }
    out
}

/// Records in the raw topic of a namespace.
pub async fn raw_count(prefix: &str) -> usize {
    let config = kit::kafka().consumer("cartstream-e2e-count").unwrap();
    let topic = format!("{prefix}purchases.raw");
    tokio::task::spawn_blocking(move || {
        cartstream_kafka::read::read_to_end(&config, &topic, Duration::from_secs(120))
            .map(|v| v.len())
            .unwrap()
    })
    .await
    .unwrap()
}

/// Whether a CQL row or a lake row (as [`table_rows`] and [`lake_records`] render them) is a
/// `data_quality` alert. The quality gates' judgement of a window still depends on the speed of
/// the replay (a gate can judge a window before the partial counts of a slower partition reach
/// it: issue "quality gates judge a replay differently"), so the replay-equality tests compare
/// every other record exactly and print the quality alerts' differences instead of failing on
/// them.
pub fn is_quality_alert(row: &str) -> bool {
    row.contains("data_quality")
}

/// `rows` without the `data_quality` alerts ([`is_quality_alert`]), and how many were left out.
pub fn without_quality_alerts(rows: &BTreeSet<String>) -> (BTreeSet<String>, usize) {
    let kept: BTreeSet<String> = rows
        .iter()
        .filter(|r| !is_quality_alert(r))
        .cloned()
        .collect();
    let n = rows.len() - kept.len();
    (kept, n)
}

/// Every data record of `topic` in the namespace `prefix` (control records left out), read to
/// its end with a reader of the test's own.
pub async fn topic_records(
    prefix: &str,
    topic: cartstream_kafka::Topic,
) -> Vec<rdkafka::message::OwnedMessage> {
    let config = kit::kafka().consumer("cartstream-e2e-read").unwrap();
    let name = cartstream_kafka::TopicNames::with_prefix(prefix).name(topic);
    tokio::task::spawn_blocking(move || {
        cartstream_kafka::read::read_to_end(&config, &name, Duration::from_secs(120)).unwrap()
    })
    .await
    .unwrap()
}
