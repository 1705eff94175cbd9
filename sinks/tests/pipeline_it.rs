//! Both sinks at the end of the real pipeline, against the producer's ground truth:
//! `cartstream-producer` (simulate, with duplicates, late and malformed records, writing its
//! ground truth) -> `cartstream-cleaner` -> `cartstream-enricher` -> `cartstream-scylla-sink` and
//! `cartstream-lake-sink`, each sink SIGKILLed twice mid-run. Then the events table and the lake
//! (read by pyarrow) hold exactly the ground truth's events: the same count per event type and the
//! same purchase revenue per currency, each event once; the lake's SQL (`sql/`, DuckDB) finds
//! the same counts and revenue, and a product and user snapshot with every key once per date.
//!
//! The producer and processor binaries come from the same target directory; when they are not
//! built yet, the test builds them with cargo first.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cartstream_admin::lake_query::{self, Format, LakeQuery};
use cartstream_kafka::{Topic, TopicNames};
use cartstream_sinks::cql::{self, CqlArgs};
use cartstream_testkit as kit;
use futures::TryStreamExt;

const SCYLLA: &str = env!("CARGO_BIN_EXE_cartstream-scylla-sink");
const LAKE: &str = env!("CARGO_BIN_EXE_cartstream-lake-sink");

/// A binary of another package of the workspace, built if missing.
fn sibling(name: &str) -> PathBuf {
    let path = PathBuf::from(SCYLLA).with_file_name(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--bin",
                "cartstream-producer",
                "--bin",
                "cartstream-cleaner",
                "--bin",
                "cartstream-enricher",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .unwrap();
        assert!(status.success(), "building the pipeline binaries");
    }
    assert!(path.exists(), "{} is not built", path.display());
    path
}

fn read_lake(lake: &str, topic: &str) -> serde_json::Value {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lake_reader");
    let setup = Command::new("bash")
        .arg(format!("{root}/setup.sh"))
        .output()
        .unwrap();
    assert!(setup.status.success(), "installing pyarrow failed");
    let python = String::from_utf8(setup.stdout).unwrap().trim().to_string();
    let out = Command::new(python)
        .args([&format!("{root}/read_lake.py"), lake, topic])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sinks_hold_the_ground_truth_after_kills() {
    let producer = sibling("cartstream-producer");
    let cleaner = sibling("cartstream-cleaner");
    let enricher = sibling("cartstream-enricher");
    let kafka = kit::kafka();
    let registry = kit::registry();
    kit::require("the CQL database", &kit::scylla_uri());
    let prefix = kit::unique("sinkpipe");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 3, 1)
        .await
        .unwrap();
    let ks = kit::unique_ident("sinkpipe");
    let mut cargs = CqlArgs::local(&ks);
    cargs.uri = kit::scylla_uri();
    let session = cargs.connect().await.unwrap();
    cql::migrate(&session, &cargs).await.unwrap();
    let tmp = std::env::temp_dir().join(format!("cartstream-{prefix}pipe"));
    std::fs::create_dir_all(&tmp).unwrap();
    let truth_path = tmp.join("truth.json");
    let lake = tmp.join("lake").to_str().unwrap().to_string();

    // The processors and sinks start first; the producer sends while they run and are killed.
    let procs = [
        common::Guard(common::spawn(
            cleaner.to_str().unwrap(),
            &[
                "--topic-prefix",
                &prefix,
                "--metrics-addr",
                "off",
                "--instance-id",
                "pipe",
            ],
            &[],
        )),
        common::Guard(common::spawn(
            enricher.to_str().unwrap(),
            &[
                "--topic-prefix",
                &prefix,
                "--metrics-addr",
                "off",
                "--instance-id",
                "pipe",
            ],
            &[],
        )),
    ];
    let scylla_args = [
        "--scylla-keyspace",
        ks.as_str(),
        "run",
        "--topic-prefix",
        prefix.as_str(),
        "--metrics-addr",
        "off",
        "--instance-id",
        "pipe",
        "--topics",
        "purchases.enriched",
        "--consistency",
        "one",
        "--batch-size",
        "300",
    ];
    let lake_args = [
        "--lake-url",
        lake.as_str(),
        "run",
        "--topic-prefix",
        prefix.as_str(),
        "--metrics-addr",
        "off",
        "--instance-id",
        "pipe",
        "--max-file-records",
        "400",
        "--max-file-age-secs",
        "1",
    ];
    let mut sinks = [
        (
            SCYLLA,
            &scylla_args[..],
            common::Guard(common::spawn(SCYLLA, &scylla_args, &[])),
        ),
        (
            LAKE,
            &lake_args[..],
            common::Guard(common::spawn(LAKE, &lake_args, &[])),
        ),
    ];
    let mut sim = Command::new(&producer);
    sim.args([
        "--topic-prefix",
        &prefix,
        "--count",
        "6000",
        "--rate",
        "600",
        "--metrics-addr",
        "off",
        "--progress",
        "off",
        "--products",
        "300",
        "--users",
        "500",
        "--duplicate-ratio",
        "0.02",
        "--late-ratio",
        "0.03",
        "--malformed-ratio",
        "0.01",
        "--ground-truth",
        truth_path.to_str().unwrap(),
    ])
    .env("KAFKA_BROKERS", kit::brokers())
    .env("SCHEMA_REGISTRY_URL", kit::registry_url())
    .env("RUST_LOG", "warn");
    let mut sim = common::Guard(sim.spawn().unwrap());
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1800)).await;
        let (bin, args, child) = &mut sinks[round % 2];
        common::kill9(&mut child.0);
        child.0 = common::spawn(bin, args, &[]);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = sim.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the producer did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.success(), "producer");
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    let expected = truth["events"].as_u64().unwrap();
    assert!(
        truth["duplicates"].as_u64().unwrap() > 0 && truth["rejected_total"].as_u64().unwrap() > 0
    );

    let enriched = names.name(Topic::Enriched);
    let groups = [
        (
            format!("{prefix}cartstream-enricher"),
            names.name(Topic::Clean),
        ),
        (format!("{prefix}cartstream-scylla-sink"), enriched.clone()),
        (format!("{prefix}cartstream-lake-sink"), enriched.clone()),
    ];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // The cleaner first: the clean topic is complete once it caught up on raw.
        let cleaner_done = common::caught_up(
            &kafka,
            &format!("{prefix}cartstream-cleaner"),
            &[names.name(Topic::Raw)],
        );
        if cleaner_done
            && groups
                .iter()
                .all(|(g, t)| common::caught_up(&kafka, g, std::slice::from_ref(t)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the pipeline did not catch up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (_, _, child) in &mut sinks {
        assert!(common::terminate(&mut child.0).success(), "graceful exit");
    }
    drop(procs);

    let totals = &truth["totals"];
    let want_types: BTreeMap<String, u64> = [
        ("view", "views"),
        ("cart", "carts"),
        ("remove_from_cart", "removals"),
        ("purchase", "purchases"),
    ]
    .iter()
    .map(|(t, k)| (t.to_string(), totals[*k].as_u64().unwrap()))
    .filter(|(_, n)| *n > 0)
    .collect();
    let want_revenue: BTreeMap<String, i64> =
        serde_json::from_value(totals["revenue_cents"].clone()).unwrap();

    // ScyllaDB: one row per ground-truth event.
    let rows: Vec<(String, String, f64, i32, String)> = session
        .query_iter(
            format!(
                "SELECT event_id, event_type, price, quantity, currency FROM {ks}.events_by_user"
            ),
            &[],
        )
        .await
        .unwrap()
        .rows_stream::<(String, String, f64, i32, String)>()
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len() as u64, expected, "events_by_user rows");
    let mut types: BTreeMap<String, u64> = BTreeMap::new();
    let mut revenue: BTreeMap<String, i64> = BTreeMap::new();
    for (_, t, price, qty, cur) in &rows {
        *types.entry(t.clone()).or_default() += 1;
        if t == "purchase" {
            *revenue.entry(cur.trim().to_uppercase()).or_default() +=
                (price * 100.0).round() as i64 * i64::from(*qty);
        }
    }
    assert_eq!(types, want_types);
    assert_eq!(revenue, want_revenue);

    // The lake, read by pyarrow: each event once, same counts and revenue.
    let r = read_lake(&lake, &enriched);
    assert_eq!(r["duplicates"], serde_json::json!({}));
    assert_eq!(r["rows"].as_u64().unwrap(), expected, "lake rows");
    let lake_types: BTreeMap<String, u64> = serde_json::from_value(r["by_type"].clone()).unwrap();
    assert_eq!(lake_types, want_types);
    let lake_revenue: BTreeMap<String, i64> =
        serde_json::from_value(r["revenue_cents"].clone()).unwrap();
    assert_eq!(lake_revenue, want_revenue);
    // The lake's SQL (DuckDB through lake-query's library call) over this pipeline-written lake:
    // the funnel's events per type and the revenue per currency are the producer's ground truth;
    // the product and user snapshots hold every key once on every date of the facts.
    let q = LakeQuery {
        sql_dir: lake_query::default_sql_dir(),
        lake: lake.clone(),
        prefix: prefix.clone(),
        format: Format::Json,
    };
    let run = |name: &str| -> serde_json::Value {
        serde_json::from_str(&q.output(name).unwrap()).unwrap()
    };
    let funnel = run("funnel_by_day_category");
    let mut sql_types: BTreeMap<String, u64> = BTreeMap::new();
    let mut days = std::collections::BTreeSet::new();
    for row in funnel["rows"].as_array().unwrap() {
        days.insert(row[0].as_str().unwrap().to_string());
        for (i, t) in ["view", "cart", "remove_from_cart", "purchase"]
            .iter()
            .enumerate()
        {
            *sql_types.entry(t.to_string()).or_default() += row[2 + i].as_u64().unwrap();
        }
    }
    sql_types.retain(|_, n| *n > 0);
    assert_eq!(sql_types, want_types, "funnel_by_day_category");
    let mut sql_revenue: BTreeMap<String, i64> = BTreeMap::new();
    for row in run("revenue_by_category_hour")["rows"].as_array().unwrap() {
        let cur = row[2].as_str().unwrap().trim().to_uppercase();
        *sql_revenue.entry(cur).or_default() += (row[5].as_f64().unwrap() * 100.0).round() as i64;
    }
    assert_eq!(sql_revenue, want_revenue, "revenue_by_category_hour");
    let snaps = run("dimension_snapshots");
    let mut snap_days = std::collections::BTreeSet::new();
    for row in snaps["rows"].as_array().unwrap() {
        snap_days.insert(row[0].as_str().unwrap().to_string());
        assert_eq!(row[2], row[3], "each key once: {row:?}");
        let want = if row[1] == "product" { 300 } else { 500 };
        assert_eq!(row[3].as_u64().unwrap(), want, "snapshot keys: {row:?}");
    }
    assert_eq!(snap_days, days, "a snapshot for every date of the facts");
    eprintln!(
        "pipeline: {} records sent, {expected} events ({} duplicates, {} rejected) in both sinks after 4 sink kills",
        truth["records_sent"], truth["duplicates"], truth["rejected_total"]
    );

    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), &[])
        .await
        .unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
