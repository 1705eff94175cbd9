//! A bounded file replayed through the whole pipeline twice: the same state at any speed, and
//! exact once the end of input is declared.
//!
//! The test writes a REES46-layout file of six hours of shop traffic (sessions of 1-15 events
//! 20 s-6 min apart, one in ten with a pause over the 30-minute gap inside — two sessions under one
//! `user_session` —, guest checkouts without a user id, exact double-logged rows, a few rows with a
//! negative price) and a flash sale of one product, in event-time order like a real export. Two generations of the whole pipeline
//! (`scripts/pipeline.sh`: all eight services) each replay it into their own namespace with
//! `cartstream-producer replay --end-of-input max`:
//!
//! - **A, as fast as possible, the windower started a minute late**: the whole file waits in
//!   `purchases.enriched` (a backlog of skewed partitions) when the windower comes up;
//! - **B, paced** (`--speed 480`: the six hours in 45 s).
//!
//! Checked: in A, every one-minute window of every dimension and every session (split at the
//! 30-minute gap) equals an independent computation over the file, nothing is left open, no event
//! is late; and A and B hold the same records in `kpi.windows`, `sessions.closed`,
//! `alerts.raised` and the dead letters (emission times aside), the same rows in every CQL table
//! and in the lake.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cartstream_events::types::{Alert, DeadLetter, Dimension, KpiWindow, Session};
use cartstream_events::Decoder;
use cartstream_kafka::Topic;
use cartstream_testkit as kit;
use common::{
    bin_dir, free_ports, is_quality_alert, lake_records, repo_root, table_rows, topic_records,
    without_quality_alerts, Generation,
};
use rdkafka::Message;

const START: i64 = 1_790_841_600_000; // 2026-10-01T08:00:00Z
const SPAN: i64 = 6 * 3_600_000;
const GAP: i64 = 30 * 60_000;
const MINUTE: i64 = 60_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    View,
    Cart,
    Remove,
    Purchase,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Cart => "cart",
            Kind::Remove => "remove_from_cart",
            Kind::Purchase => "purchase",
        }
    }
}

/// One row of the file.
#[derive(Debug, Clone)]
struct Row {
    t: i64,
    kind: Kind,
    product: i64,
    /// `None`: a guest checkout (empty `user_id`).
    user: Option<i64>,
    session: String,
    /// A negative price: the cleaner rejects the row.
    bad: bool,
}

impl Row {
    fn category(&self) -> String {
        format!("cat{}.sub{}", self.product % 6, self.product % 4)
    }
    /// Empty for one product in nine (the pipeline counts it as `unknown`).
    fn brand(&self) -> String {
        if self.product % 9 == 0 {
            String::new()
        } else {
            format!("brand{}", self.product % 5)
        }
    }
    fn cents(&self) -> i64 {
        199 + 37 * self.product
    }
    fn csv(&self) -> String {
        let secs = self.t / 1000;
        let time = chrono_like(secs);
        let price = if self.bad {
            "-1.00".to_string()
        } else {
            format!("{}.{:02}", self.cents() / 100, self.cents() % 100)
        };
        format!(
            "{time},{},{},{},{},{},{price},{},{}",
            self.kind.name(),
            self.product,
            2_053_013_550_000 + self.product % 6,
            self.category(),
            self.brand(),
            self.user.map_or(String::new(), |u| u.to_string()),
            self.session
        )
    }
    /// Who the row's user is, as the pipeline tells users apart: a guest is one anonymous user
    /// per session.
    fn who(&self) -> String {
        match self.user {
            Some(u) => format!("u{u}"),
            None => format!("guest:{}", self.session),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of epoch seconds (the REES46 time format), without a date crate.
fn chrono_like(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The file's rows in event-time order (ties in generation order), and how many are exact
/// copies of the row before them.
fn history() -> (Vec<Row>, usize) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut rows = Vec::new();
    for s in 0..1_600 {
        let guest = rng.below(20) == 0;
        let user = (!guest).then(|| 1 + rng.below(400) as i64);
        let session = format!("sess-{s:05}");
        let mut t = START + rng.below(SPAN as u64) as i64 / 1000 * 1000;
        for _ in 0..1 + rng.below(15) {
            if t >= START + SPAN {
                break;
            }
            let kind = match rng.below(20) {
                0..=12 => Kind::View,
                13..=15 => Kind::Cart,
                16 => Kind::Remove,
                _ => Kind::Purchase,
            };
            rows.push(Row {
                t,
                kind,
                product: 1 + rng.below(120) as i64,
                user,
                session: session.clone(),
                bad: kind == Kind::Purchase && rng.below(60) == 0,
            });
            t += if rng.below(10) == 0 {
                GAP + MINUTE + rng.below(15 * 60) as i64 * 1000
            } else {
                (20 + rng.below(340) as i64) * 1000
            };
        }
    }
    // A flash sale: 40 shoppers buy product 7 within one minute, four hours in (a trend alert
    // for the product and its category, the same in every replay).
    for i in 0..40 {
        let t = START + 4 * 3_600_000 + i * 1_000;
        let session = format!("sale-{i:02}");
        for (dt, kind) in [(0, Kind::View), (1_000, Kind::Purchase)] {
            rows.push(Row {
                t: t + dt,
                kind,
                product: 7,
                user: Some(1_000 + i),
                session: session.clone(),
                bad: false,
            });
        }
    }
    rows.sort_by_key(|r| r.t);
    // Double-logged events: an exact copy right after the row.
    let mut out = Vec::with_capacity(rows.len() + 64);
    let mut copies = 0;
    for (i, r) in rows.into_iter().enumerate() {
        let again = i % 97 == 0 && !r.bad;
        out.push(r.clone());
        if again {
            out.push(r);
            copies += 1;
        }
    }
    (out, copies)
}

fn write_file(path: &Path, rows: &[Row]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        f,
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
    )
    .unwrap();
    for r in rows {
        writeln!(f, "{}", r.csv()).unwrap();
    }
}

type WinKey = (String, String, i64); // dimension, value, start
/// views, carts, removals, purchases, revenue cents, distinct users
type Kpis = (i64, i64, i64, i64, i64, BTreeSet<String>);
/// start, end, views, carts, removals, purchases
type SessionKey = (i64, i64, i64, i64, i64, i64);

fn dim_name(d: Dimension) -> &'static str {
    match d {
        Dimension::All => "all",
        Dimension::Category => "category",
        Dimension::Product => "product",
        Dimension::Brand => "brand",
        Dimension::EventType => "event_type",
    }
}

/// Every one-minute window of every dimension, from the rows the cleaner keeps.
fn expected_windows(rows: &[Row]) -> BTreeMap<WinKey, Kpis> {
    let mut out: BTreeMap<WinKey, Kpis> = BTreeMap::new();
    for r in rows {
        let start = r.t.div_euclid(MINUTE) * MINUTE;
        let brand = r.brand();
        let dims = [
            ("all", "all".to_string()),
            ("category", r.category()),
            ("product", r.product.to_string()),
            (
                "brand",
                if brand.is_empty() {
                    "unknown".into()
                } else {
                    brand
                },
            ),
            ("event_type", r.kind.name().to_string()),
        ];
        for (d, v) in dims {
            let x = out.entry((d.to_string(), v, start)).or_default();
            match r.kind {
                Kind::View => x.0 += 1,
                Kind::Cart => x.1 += 1,
                Kind::Remove => x.2 += 1,
                Kind::Purchase => {
                    x.3 += 1;
                    x.4 += r.cents();
                }
            }
            x.5.insert(r.who());
        }
    }
    out
}

/// Sessions: per `user_session`, in time order, a new one after a pause of at least the gap.
fn expected_sessions(rows: &[Row]) -> BTreeMap<SessionKey, usize> {
    let mut by_key: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_key.entry(&r.session).or_default().push(r);
    }
    let mut out: BTreeMap<SessionKey, usize> = BTreeMap::new();
    for evs in by_key.values() {
        let mut cur: Option<SessionKey> = None;
        for r in evs {
            if let Some(c) = cur {
                if r.t - c.1 >= GAP {
                    *out.entry(c).or_default() += 1;
                    cur = None;
                }
            }
            let c = cur.get_or_insert((r.t, r.t, 0, 0, 0, 0));
            c.1 = r.t;
            match r.kind {
                Kind::View => c.2 += 1,
                Kind::Cart => c.3 += 1,
                Kind::Remove => c.4 += 1,
                Kind::Purchase => c.5 += 1,
            }
        }
        if let Some(c) = cur {
            *out.entry(c).or_default() += 1;
        }
    }
    out
}

fn replay(gen: &Generation, file: &Path, speed: &str) {
    let out = Command::new(bin_dir().join("cartstream-producer"))
        .args(["replay", "--topic-prefix", &gen.prefix])
        .args(["--file", &file.to_string_lossy(), "--speed", speed])
        .args(["--end-of-input", "max", "--metrics-addr", "off"])
        .args(["--progress", "off"])
        .env("KAFKA_BROKERS", kit::brokers())
        .env("SCHEMA_REGISTRY_URL", kit::registry_url())
        .output()
        .unwrap();
    assert!(out.status.success(), "replay failed: {out:?}");
}

async fn records(gen: &Generation, topic: Topic) -> Vec<rdkafka::message::OwnedMessage> {
    topic_records(&gen.prefix, topic).await
}

/// What a generation derived, emission times aside.
#[derive(Debug, PartialEq)]
struct Derived {
    windows: BTreeMap<(String, String, i64, i64, String), KpiWindow>,
    sessions: BTreeMap<String, Session>,
    alerts: BTreeMap<String, Alert>,
    /// (stage, error code, source topic without the namespace, partition, offset in the raw
    /// topic or -1) -> count. Not the payload: a raw record carries its producer's id and send
    /// time.
    dead: BTreeMap<(String, String, String, i32, i64), usize>,
    late: usize,
}

async fn derived(gen: &Generation) -> Derived {
    let registry = kit::registry();
    let kd = Decoder::<KpiWindow>::new(registry.clone());
    let sd = Decoder::<Session>::new(registry.clone());
    let ad = Decoder::<Alert>::new(registry.clone());
    let dd = Decoder::<DeadLetter>::new(registry.clone());
    let mut windows = BTreeMap::new();
    for m in records(gen, Topic::KpiWindows).await {
        let mut w = kd.decode(m.payload().unwrap()).await.unwrap();
        w.emitted_at = 0;
        let k = (
            dim_name(w.dimension).to_string(),
            w.dimension_value.clone(),
            w.window_start,
            w.window_size_ms,
            w.currency.clone(),
        );
        assert!(w.is_final, "an early result in kpi.windows: {w:?}");
        assert!(
            windows.insert(k.clone(), w).is_none(),
            "window twice: {k:?}"
        );
    }
    let mut sessions = BTreeMap::new();
    for m in records(gen, Topic::Sessions).await {
        let s = sd.decode(m.payload().unwrap()).await.unwrap();
        assert!(
            sessions.insert(s.session_id.clone(), s.clone()).is_none(),
            "session twice: {s:?}"
        );
    }
    let mut alerts = BTreeMap::new();
    for m in records(gen, Topic::Alerts).await {
        let mut a = ad.decode(m.payload().unwrap()).await.unwrap();
        a.detected_at = 0;
        assert!(
            alerts.insert(a.alert_id.clone(), a).is_none(),
            "alert twice"
        );
    }
    let mut dead: BTreeMap<(String, String, String, i32, i64), usize> = BTreeMap::new();
    for m in records(gen, Topic::DeadLetters).await {
        let d = dd.decode(m.payload().unwrap()).await.unwrap();
        let topic = d.source_topic.replace(&gen.prefix, "");
        let offset = if topic == "purchases.raw" {
            d.source_offset
        } else {
            -1
        };
        *dead
            .entry((d.stage, d.error_code, topic, d.source_partition, offset))
            .or_default() += 1;
    }
    let late = records(gen, Topic::Late).await.len();
    Derived {
        windows,
        sessions,
        alerts,
        dead,
        late,
    }
}

/// Until `gen` has closed every expected window and session (or three minutes), then until every
/// consumer has caught up.
async fn wait_closed(gen: &Generation, windows: usize, sessions: usize) -> f64 {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    loop {
        let w = records(gen, Topic::KpiWindows).await.len();
        let s = records(gen, Topic::Sessions).await.len();
        if (w >= windows && s >= sessions) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    gen.wait_caught_up();
    secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_file_replayed_fast_with_a_late_stage_or_paced_rebuilds_the_same_exact_state() {
    let kafka = kit::kafka();
    let prefix = kit::unique("hist");
    let work = repo_root()
        .join("target/e2e")
        .join(prefix.trim_end_matches('.'));
    std::fs::create_dir_all(&work).unwrap();
    let (rows, copies) = history();
    let file = work.join("history.csv");
    write_file(&file, &rows);
    // What the cleaner keeps: no exact copy (same content, same event id), no negative price.
    let mut kept: Vec<Row> = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let copy = i > 0 && rows[i - 1].csv() == r.csv();
        if !copy && !r.bad {
            kept.push(r.clone());
        }
    }
    let bad = rows.iter().filter(|r| r.bad).count();
    let guests = kept.iter().filter(|r| r.user.is_none()).count();
    let want_windows = expected_windows(&kept);
    let want_sessions = expected_sessions(&kept);
    let n_sessions: usize = want_sessions.values().sum();
    println!(
        "file: {} rows ({copies} exact copies, {bad} negative prices, {guests} guest rows kept), \
         {} one-minute windows and {n_sessions} sessions expected",
        rows.len(),
        want_windows.len()
    );

    let base = free_ports(20);
    let gen = |tag: &str, port_base: u16| {
        let p = format!("{prefix}{tag}.");
        Generation {
            name: format!("{}{tag}-", prefix.trim_end_matches('.')),
            prefix: p.clone(),
            source_prefix: p,
            keyspace: kit::unique_ident(&format!("hist{tag}")),
            lake: work.join(format!("lake-{tag}")),
            models: work.join(format!("models-{tag}")),
            port_base,
        }
    };

    // --- A: as fast as possible, the windower a minute late.
    let a = gen("a", base);
    a.start();
    let out = Command::new("bash")
        .args([
            "scripts/services.sh",
            "stop",
            &format!("{}windower", a.name),
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "stopping the windower: {out:?}");
    let replay_started = Instant::now();
    replay(&a, &file, "0");
    let sent_secs = replay_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(60)).await;
    a.start(); // starts what is not running: the windower
    let a_secs = wait_closed(&a, want_windows.len(), n_sessions).await;
    a.stop();

    // --- B: paced, the six hours in 45 s.
    let b = gen("b", base + 10);
    b.start();
    let b_started = Instant::now();
    replay(&b, &file, "480");
    let b_secs =
        b_started.elapsed().as_secs_f64() + wait_closed(&b, want_windows.len(), n_sessions).await;
    b.stop();
    println!(
        "A: replayed in {sent_secs:.1} s, closed {a_secs:.1} s after the windower's late start; \
         B: paced, replayed and closed in {b_secs:.1} s"
    );

    // --- A against the file.
    let mut got = derived(&a).await;
    assert_eq!(got.late, 0, "events set aside as late");
    let late_dead = got
        .dead
        .keys()
        .filter(|(_, code, _, _, _)| code == "late_event")
        .count();
    assert_eq!(
        late_dead,
        0,
        "events dead-lettered as late: {:?}",
        got.dead.keys()
    );
    let mut windows: BTreeMap<WinKey, Kpis> = BTreeMap::new();
    for ((d, v, start, size, _), w) in &got.windows {
        assert_eq!(*size, MINUTE);
        let x = windows.entry((d.clone(), v.clone(), *start)).or_default();
        x.0 += w.views;
        x.1 += w.carts;
        x.2 += w.removals;
        x.3 += w.purchases;
        x.4 += (w.revenue * 100.0).round() as i64;
        // Distinct users are checked below, one window per dimension value (one currency).
    }
    let missing: Vec<_> = want_windows
        .keys()
        .filter(|k| !windows.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "windows never closed: {missing:?} of {}",
        want_windows.len()
    );
    assert_eq!(
        windows.len(),
        want_windows.len(),
        "windows beyond the file's"
    );
    for (k, x) in &want_windows {
        let g = &windows[k];
        assert_eq!(
            (g.0, g.1, g.2, g.3, g.4),
            (x.0, x.1, x.2, x.3, x.4),
            "window {k:?}"
        );
    }
    for ((d, v, start, _, _), w) in &got.windows {
        let want = want_windows[&(d.clone(), v.clone(), *start)].5.len() as i64;
        assert_eq!(
            w.distinct_users, want,
            "distinct users of {d}/{v} at {start}"
        );
    }
    let mut sessions: BTreeMap<SessionKey, usize> = BTreeMap::new();
    for s in got.sessions.values() {
        *sessions
            .entry((
                s.session_start,
                s.session_end,
                s.views,
                s.carts,
                s.removals,
                s.purchases,
            ))
            .or_default() += 1;
    }
    let missing: Vec<_> = want_sessions
        .iter()
        .filter(|(k, n)| sessions.get(*k) != Some(*n))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && sessions.len() == want_sessions.len(),
        "sessions differ from the file's: e.g. {missing:?}; {} closed, {n_sessions} expected",
        got.sessions.len()
    );
    assert!(
        got.alerts
            .keys()
            .any(|id| id.starts_with("trend/product/7/")),
        "the flash sale raised no trend alert: {:?}",
        got.alerts.keys()
    );
    let rejected: usize = got
        .dead
        .iter()
        .filter(|((stage, _, _, _, _), _)| stage == "cleaner")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        rejected, bad,
        "the cleaner's dead letters are the negative prices"
    );
    println!(
        "A: {} windows, {} sessions, {} alerts, {} dead letters, 0 late: equal to the file's",
        got.windows.len(),
        got.sessions.len(),
        got.alerts.len(),
        rejected
    );

    // --- B against A: the same records, rows and lake (data_quality alerts compared apart:
    // see common::is_quality_alert).
    let mut other = derived(&b).await;
    let quality = |d: &mut Derived| -> BTreeSet<String> {
        let ids: BTreeSet<String> = d
            .alerts
            .keys()
            .filter(|k| k.starts_with("data_quality/"))
            .cloned()
            .collect();
        d.alerts.retain(|k, _| !k.starts_with("data_quality/"));
        ids
    };
    let (qa, qb) = (quality(&mut got), quality(&mut other));
    println!(
        "data_quality alerts: {} fast, {} paced; only fast {:?}, only paced {:?}",
        qa.len(),
        qb.len(),
        qa.difference(&qb).collect::<Vec<_>>(),
        qb.difference(&qa).collect::<Vec<_>>()
    );
    for (what, x, y) in [
        ("kpi.windows", got.windows.len(), other.windows.len()),
        ("sessions.closed", got.sessions.len(), other.sessions.len()),
        ("alerts.raised", got.alerts.len(), other.alerts.len()),
        ("dead letters", got.dead.len(), other.dead.len()),
    ] {
        assert_eq!(x, y, "{what}: {x} records fast, {y} paced");
    }
    assert!(got.windows == other.windows, "kpi.windows differ");
    assert!(got.sessions == other.sessions, "sessions.closed differ");
    assert!(got.alerts == other.alerts, "alerts.raised differ");
    assert!(got.dead == other.dead, "dead letters differ");
    let (ta, tb) = (table_rows(&a.keyspace).await, table_rows(&b.keyspace).await);
    assert!(ta.values().any(|r| !r.is_empty()), "A wrote no CQL rows");
    for (table, rows) in &ta {
        let (rows, _) = without_quality_alerts(rows);
        let (other, _) = without_quality_alerts(&tb[table]);
        let (rows, other) = (&rows, &other);
        let missing: Vec<_> = rows.difference(other).take(2).collect();
        let extra: Vec<_> = other.difference(rows).take(2).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "table {table}: {} rows fast, {} paced; e.g. only fast {missing:?}, only paced {extra:?}",
            rows.len(),
            other.len()
        );
    }
    let strip = |lake: BTreeMap<String, BTreeMap<String, usize>>, p: &str| {
        lake.into_iter()
            .map(|(k, v)| {
                let v = v
                    .into_iter()
                    .filter(|(r, _)| !is_quality_alert(r))
                    .map(|(r, n)| (r.replace(p, ""), n))
                    .collect();
                (k.replace(p, ""), v)
            })
            .collect::<BTreeMap<String, BTreeMap<String, usize>>>()
    };
    let la = strip(lake_records(&a.lake), &a.prefix);
    let lb = strip(lake_records(&b.lake), &b.prefix);
    assert!(!la.is_empty(), "A wrote no Parquet files");
    assert!(
        la == lb,
        "the lakes differ: {} vs {} topics",
        la.len(),
        lb.len()
    );
    println!(
        "B equals A: {} CQL tables, {} lake topics",
        ta.len(),
        la.len()
    );

    drop(b);
    drop(a);
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
    let _ = std::fs::remove_dir_all(&work);
}
