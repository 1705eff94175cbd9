//! The lake as a star schema, queried with SQL: known records on the real topics (enriched
//! events, closed sessions, KPI windows early and final, alerts, two versions of every product
//! and of many users, end-of-input marks on every fact topic) -> the real `cartstream-lake-sink`
//! with its default topics, SIGKILLed once mid-run, compacting on a 2 s schedule -> every query
//! of `sql/`, run by DuckDB (PyPI, `sql/setup.sh`) through `cartstream-admin lake-query`'s
//! library call, checked row by row against the same figures computed here from the records
//! sent (never from the lake).
//!
//! Also checked: only final KPI windows reach the lake, the dimension snapshots hold each key
//! once with its latest value for both dates of the facts, and the scheduled compaction left one
//! file per partition in every hour.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cartstream_admin::lake_query::{self, Format, LakeQuery};
use cartstream_events::types::AvroRecord;
use cartstream_events::types::{
    Alert, AlertType, Dimension, EnrichedEvent, EventType, KpiWindow, Product, Session, Severity,
    User,
};
use cartstream_events::Encoder;
use cartstream_kafka::{Topic, TopicNames};
use cartstream_testkit as kit;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cartstream-lake-sink");
/// 2026-11-19T21:00:00Z: the facts span two UTC dates.
const BASE: i64 = common::T0 - 3 * 3_600_000;
const HOUR: i64 = 3_600_000;
const BRANDS: [&str; 5] = ["acme", "bolt", "crux", "dyna", "evo"];
const CATEGORIES: [&str; 3] = ["apparel.shoes", "electronics.audio", "kids.toys"];
const COUNTRIES: [&str; 4] = ["DE", "FR", "PL", "US"];
const DEVICES: [&str; 3] = ["desktop", "mobile", "tablet"];
const SEGMENTS: [&str; 3] = ["new", "regular", "vip"];
const N_PRODUCTS: i64 = 30;
const N_USERS: i64 = 40;
const N_SESSIONS: i64 = 120;

fn product(id: i64, latest: bool) -> Product {
    let i = id as usize;
    Product {
        product_id: id,
        name: if latest {
            format!("{} item {id}", BRANDS[i % 5])
        } else {
            format!("old {id}")
        },
        category_id: (i % 3) as i64,
        category_code: CATEGORIES[i % 3].into(),
        brand: BRANDS[i % 5].into(),
        // Cents-exact prices; the old version's price differs.
        price: if latest {
            (199 + 137 * id) as f64 / 100.0
        } else {
            1.0
        },
        currency: "USD".into(),
        catalog: "it".into(),
        release_date: None,
        genres: vec![],
        tags: vec![],
        updated_at: BASE - if latest { 1000 } else { 2000 },
    }
}

fn user(id: i64, latest: bool) -> User {
    let i = id as usize;
    User {
        user_id: id,
        country: if latest {
            COUNTRIES[i % 4].into()
        } else {
            "XX".into()
        },
        device: DEVICES[(i / 2) % 3].into(),
        segment: SEGMENTS[(i / 3) % 3].into(),
        updated_at: BASE - 1000,
    }
}

fn date(ms: i64) -> String {
    cartstream_events::time::utc_date(ms)
}

fn cents(x: f64) -> i64 {
    (x * 100.0).round() as i64
}

/// Everything sent, as the test keeps it.
struct Input {
    events: Vec<EnrichedEvent>,
    sessions: Vec<Session>,
    windows: Vec<KpiWindow>,
    alerts: Vec<Alert>,
}

fn input() -> Input {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut events = Vec::new();
    let mut sessions = Vec::new();
    for s in 0..N_SESSIONS {
        let uid = 1 + s % N_USERS;
        let u = user(uid, true);
        let sid = format!("sess-{s}");
        let start = BASE + s * 240_000 + rng.random_range(0..60_000);
        let mut t = start;
        let mut evs: Vec<EnrichedEvent> = Vec::new();
        let push = |t: i64, ty: EventType, pid: i64, qty: i32, evs: &mut Vec<EnrichedEvent>| {
            let p = product(pid, true);
            evs.push(EnrichedEvent {
                event_id: format!("{sid}-{}", evs.len()),
                event_time: t,
                event_type: ty,
                product_id: pid,
                category_id: p.category_id,
                category_code: p.category_code.clone(),
                brand: p.brand.clone(),
                price: p.price,
                currency: "USD".into(),
                quantity: qty,
                user_id: uid,
                user_session: sid.clone(),
                channel: None,
                source_system: "it".into(),
                product_known: true,
                product_name: p.name.clone(),
                catalog_price: Some(p.price),
                user_known: true,
                user_country: u.country.clone(),
                user_device: u.device.clone(),
                user_segment: u.segment.clone(),
            });
        };
        let viewed: Vec<i64> = (0..rng.random_range(1..5))
            .map(|_| rng.random_range(1..=N_PRODUCTS))
            .collect();
        for p in &viewed {
            push(t, EventType::View, *p, 1, &mut evs);
            t += rng.random_range(5_000..40_000);
        }
        let carted: Vec<i64> = viewed
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.5))
            .take(2)
            .collect();
        for p in &carted {
            let q = rng.random_range(1..3);
            push(t, EventType::Cart, *p, q, &mut evs);
            t += rng.random_range(5_000..40_000);
        }
        if !carted.is_empty() && rng.random_bool(0.2) {
            push(t, EventType::RemoveFromCart, carted[0], 1, &mut evs);
            t += 10_000;
        }
        let mut order = None;
        if let Some(p) = carted.last().filter(|_| rng.random_bool(0.6)) {
            order = Some(format!("{sid}-{}", evs.len()));
            push(t, EventType::Purchase, *p, rng.random_range(1..4), &mut evs);
        }
        let count = |ty: EventType| evs.iter().filter(|e| e.event_type == ty).count() as i64;
        let end = evs.iter().map(|e| e.event_time).max().unwrap();
        let revenue_cents: i64 = evs
            .iter()
            .filter(|e| e.event_type == EventType::Purchase)
            .map(|e| cents(e.price) * i64::from(e.quantity))
            .sum();
        sessions.push(Session {
            session_id: sid.clone(),
            user_id: uid,
            user_country: u.country.clone(),
            user_device: u.device.clone(),
            user_segment: u.segment.clone(),
            session_start: start,
            session_end: end,
            duration_ms: end - start,
            views: count(EventType::View),
            carts: count(EventType::Cart),
            removals: count(EventType::RemoveFromCart),
            purchases: count(EventType::Purchase),
            revenue: revenue_cents as f64 / 100.0,
            currency: "USD".into(),
            converted: order.is_some(),
            order_id: order,
        });
        events.extend(evs);
    }
    // KPI windows: per category and hour an early update then the final window; a final hopping
    // window and a final product window the category query must leave out.
    let mut windows = Vec::new();
    let w = |start: i64, size: i64, slide: i64, dim: Dimension, value: &str, n: i64, fin: bool| {
        KpiWindow {
            window_start: start,
            window_end: start + size,
            window_size_ms: size,
            window_slide_ms: slide,
            dimension: dim,
            dimension_value: value.into(),
            views: 10 * n,
            carts: 3 * n,
            removals: n / 2,
            purchases: n,
            units: n + 1,
            revenue: (n * 1234 + 5) as f64 / 100.0,
            currency: "USD".into(),
            avg_price: Some(12.34),
            conversion_rate: Some(0.1),
            distinct_users: n,
            is_final: fin,
            emitted_at: start + size,
        }
    };
    for h in 0..8 {
        for (c, cat) in CATEGORIES.iter().enumerate() {
            let n = 1 + h + 2 * c as i64;
            windows.push(w(
                BASE + h * HOUR,
                HOUR,
                HOUR,
                Dimension::Category,
                cat,
                n + 50,
                false,
            ));
            windows.push(w(
                BASE + h * HOUR,
                HOUR,
                HOUR,
                Dimension::Category,
                cat,
                n,
                true,
            ));
        }
        windows.push(w(
            BASE + h * HOUR,
            HOUR,
            HOUR / 2,
            Dimension::Category,
            CATEGORIES[0],
            99,
            true,
        ));
        windows.push(w(
            BASE + h * HOUR,
            HOUR,
            HOUR,
            Dimension::Product,
            "7",
            42,
            true,
        ));
    }
    let alerts = (0..12)
        .map(|i: i64| Alert {
            alert_id: format!("alert-{i}"),
            alert_type: [
                AlertType::Trend,
                AlertType::SuspiciousUser,
                AlertType::PriceAnomaly,
            ][(i % 3) as usize],
            severity: [Severity::Info, Severity::Warning, Severity::Critical]
                [((i / 3) % 3) as usize],
            subject_kind: "product".into(),
            subject_id: (i % 5).to_string(),
            window_start: BASE + i * 40 * 60_000,
            window_end: BASE + i * 40 * 60_000 + 60_000,
            observed: i as f64,
            baseline: 1.0,
            threshold: 2.0,
            message: format!("alert {i}"),
            detected_at: BASE + i * 40 * 60_000 + 61_000,
        })
        .collect();
    Input {
        events,
        sessions,
        windows,
        alerts,
    }
}

async fn send<T: AvroRecord>(
    tx: &mut common::Sender,
    names: &TopicNames,
    topic: Topic,
    rows: impl IntoIterator<Item = (String, T)>,
) {
    let enc: Encoder<T> = Encoder::register(&kit::registry(), &names.subject(topic))
        .await
        .unwrap();
    let name = names.name(topic);
    for (key, v) in rows {
        tx.send(&name, &key, &enc.encode(&v).unwrap()).await;
    }
    tx.flush().await;
}

// ------------------------------------------------------------------------------------------
// Ground truth, from the records sent

type Rows = Vec<Vec<Value>>;
/// Purchases, units, revenue in cents, buyers, products.
type Sales = (i64, i64, i64, BTreeSet<i64>, BTreeSet<i64>);
/// Purchases, units, revenue in cents, sum of unit prices.
type HourSales = (i64, i64, i64, f64);

fn rate(a: i64, b: i64) -> Value {
    if b == 0 {
        Value::Null
    } else {
        json!(a as f64 / b as f64)
    }
}

fn money(c: i64) -> Value {
    json!(c as f64 / 100.0)
}

fn funnel(inp: &Input) -> Rows {
    #[derive(Default)]
    struct F {
        n: [i64; 4],
        s: [BTreeSet<String>; 4],
    }
    let mut by: BTreeMap<(String, String), F> = BTreeMap::new();
    for e in &inp.events {
        let f = by
            .entry((date(e.event_time), e.category_code.clone()))
            .or_default();
        let i = e.event_type as usize;
        f.n[i] += 1;
        f.s[i].insert(e.user_session.clone());
    }
    by.into_iter()
        .map(|((d, c), f)| {
            let (vs, cs, ps) = (
                f.s[0].len() as i64,
                f.s[1].len() as i64,
                f.s[3].len() as i64,
            );
            vec![
                json!(d),
                json!(c),
                json!(f.n[0]),
                json!(f.n[1]),
                json!(f.n[2]),
                json!(f.n[3]),
                json!(vs),
                json!(cs),
                json!(ps),
                rate(cs, vs),
                rate(ps, cs),
            ]
        })
        .collect()
}

/// (day, key) -> (purchases, units, revenue cents, buyers, products) of the purchases.
fn sales<K: Ord + Clone>(
    inp: &Input,
    key: impl Fn(&EnrichedEvent) -> K,
) -> BTreeMap<(String, K), Sales> {
    let mut by = BTreeMap::new();
    for e in inp
        .events
        .iter()
        .filter(|e| e.event_type == EventType::Purchase)
    {
        let s: &mut Sales = by.entry((date(e.event_time), key(e))).or_default();
        s.0 += 1;
        s.1 += i64::from(e.quantity);
        s.2 += cents(e.price) * i64::from(e.quantity);
        s.3.insert(e.user_id);
        s.4.insert(e.product_id);
    }
    by
}

/// Per day, the keys ranked by revenue (descending), ties by key; the first 10.
fn top<K: Ord + Clone>(
    by: BTreeMap<(String, K), Sales>,
    row: impl Fn(&str, usize, &K, &Sales) -> Vec<Value>,
) -> Rows {
    let mut days: BTreeMap<String, Vec<(K, Sales)>> = BTreeMap::new();
    for ((d, k), v) in by {
        days.entry(d).or_default().push((k, v));
    }
    let mut out = Vec::new();
    for (d, mut v) in days {
        v.sort_by(|a, b| b.1 .2.cmp(&a.1 .2).then(a.0.cmp(&b.0)));
        for (i, (k, s)) in v.iter().take(10).enumerate() {
            out.push(row(&d, i + 1, k, s));
        }
    }
    out
}

fn top_products(inp: &Input) -> Rows {
    top(sales(inp, |e| e.product_id), |d, rank, pid, s| {
        let p = product(*pid, true);
        vec![
            json!(d),
            json!(rank),
            json!(pid),
            json!(p.name),
            json!(p.brand),
            json!(p.category_code),
            json!(p.price),
            json!(s.0),
            json!(s.1),
            money(s.2),
            json!(s.3.len()),
        ]
    })
}

fn top_brands(inp: &Input) -> Rows {
    top(sales(inp, |e| e.brand.clone()), |d, rank, b, s| {
        vec![
            json!(d),
            json!(rank),
            json!(b),
            json!(s.0),
            json!(s.1),
            money(s.2),
            json!(s.3.len()),
            json!(s.4.len()),
        ]
    })
}

fn revenue_by_hour(inp: &Input) -> Rows {
    let mut by: BTreeMap<(String, String, String), HourSales> = BTreeMap::new();
    for e in inp
        .events
        .iter()
        .filter(|e| e.event_type == EventType::Purchase)
    {
        let h = e.event_time.div_euclid(HOUR) % 24;
        let s = by
            .entry((
                format!("{} {h:02}:00", date(e.event_time)),
                e.category_code.clone(),
                e.currency.clone(),
            ))
            .or_default();
        s.0 += 1;
        s.1 += i64::from(e.quantity);
        s.2 += cents(e.price) * i64::from(e.quantity);
        s.3 += e.price;
    }
    by.into_iter()
        .map(|((h, c, cur), s)| {
            vec![
                json!(h),
                json!(c),
                json!(cur),
                json!(s.0),
                json!(s.1),
                money(s.2),
                json!(s.3 / s.0 as f64),
            ]
        })
        .collect()
}

fn sessions_daily(inp: &Input) -> Rows {
    let mut by: BTreeMap<String, Vec<&Session>> = BTreeMap::new();
    for s in &inp.sessions {
        by.entry(date(s.session_start)).or_default().push(s);
    }
    by.into_iter()
        .map(|(d, ss)| {
            let n = ss.len() as i64;
            let conv = ss.iter().filter(|s| s.converted).count() as i64;
            let dur: i64 = ss.iter().map(|s| s.duration_ms).sum();
            let events: i64 = ss
                .iter()
                .map(|s| s.views + s.carts + s.removals + s.purchases)
                .sum();
            vec![
                json!(d),
                json!(n),
                json!(dur as f64 / n as f64 / 1000.0),
                json!(ss.iter().map(|s| s.duration_ms).max().unwrap() as f64 / 1000.0),
                json!(events as f64 / n as f64),
                json!(conv),
                rate(conv, n),
                money(ss.iter().map(|s| cents(s.revenue)).sum()),
            ]
        })
        .collect()
}

fn conversion_by_segment(inp: &Input) -> Rows {
    let mut by: BTreeMap<(String, String), (i64, i64, i64, i64)> = BTreeMap::new();
    for s in &inp.sessions {
        for (a, v) in [
            ("country", &s.user_country),
            ("device", &s.user_device),
            ("segment", &s.user_segment),
        ] {
            let x = by.entry((a.to_string(), v.clone())).or_default();
            x.0 += 1;
            x.1 += i64::from(s.converted);
            x.2 += cents(s.revenue);
            x.3 += s.duration_ms;
        }
    }
    by.into_iter()
        .map(|((a, v), x)| {
            vec![
                json!(a),
                json!(v),
                json!(x.0),
                json!(x.1),
                rate(x.1, x.0),
                money(x.2),
                json!(x.3 as f64 / x.0 as f64 / 1000.0),
            ]
        })
        .collect()
}

fn abandoned_carts(inp: &Input) -> Rows {
    let mut carted: BTreeMap<&str, i64> = BTreeMap::new();
    for e in inp
        .events
        .iter()
        .filter(|e| e.event_type == EventType::Cart)
    {
        *carted.entry(&e.user_session).or_default() += cents(e.price) * i64::from(e.quantity);
    }
    let mut by: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for s in inp.sessions.iter().filter(|s| s.carts > 0) {
        let x = by.entry(date(s.session_start)).or_default();
        x.0 += 1;
        if !s.converted {
            x.1 += 1;
            x.2 += carted.get(s.session_id.as_str()).copied().unwrap_or(0);
        }
    }
    by.into_iter()
        .map(|(d, x)| vec![json!(d), json!(x.0), json!(x.1), rate(x.1, x.0), money(x.2)])
        .collect()
}

fn kpi_daily(inp: &Input) -> Rows {
    let mut by: BTreeMap<(String, i64, String, String), [i64; 6]> = BTreeMap::new();
    for w in inp.windows.iter().filter(|w| {
        w.is_final && w.dimension == Dimension::Category && w.window_size_ms == w.window_slide_ms
    }) {
        let x = by
            .entry((
                date(w.window_start),
                w.window_size_ms / 60_000,
                w.dimension_value.clone(),
                w.currency.clone(),
            ))
            .or_default();
        x[0] += 1;
        x[1] += w.views;
        x[2] += w.carts;
        x[3] += w.purchases;
        x[4] += w.units;
        x[5] += cents(w.revenue);
    }
    by.into_iter()
        .map(|((d, m, c, cur), x)| {
            vec![
                json!(d),
                json!(m),
                json!(c),
                json!(cur),
                json!(x[0]),
                json!(x[1]),
                json!(x[2]),
                json!(x[3]),
                json!(x[4]),
                money(x[5]),
            ]
        })
        .collect()
}

fn alerts_daily(inp: &Input) -> Rows {
    let mut by: BTreeMap<(String, String, String), (i64, BTreeSet<String>)> = BTreeMap::new();
    for a in &inp.alerts {
        let x = by
            .entry((
                date(a.detected_at),
                serde_json::to_value(a.alert_type)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
                serde_json::to_value(a.severity)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
            ))
            .or_default();
        x.0 += 1;
        x.1.insert(format!("{}:{}", a.subject_kind, a.subject_id));
    }
    by.into_iter()
        .map(|((d, t, s), x)| vec![json!(d), json!(t), json!(s), json!(x.0), json!(x.1.len())])
        .collect()
}

fn dimension_snapshots(inp: &Input) -> Rows {
    let days: BTreeSet<String> = inp
        .events
        .iter()
        .map(|e| date(e.event_time))
        .chain(inp.sessions.iter().map(|s| date(s.session_start)))
        .chain(
            inp.windows
                .iter()
                .filter(|w| w.is_final)
                .map(|w| date(w.window_start)),
        )
        .chain(inp.alerts.iter().map(|a| date(a.detected_at)))
        .collect();
    let products: Vec<Product> = (1..=N_PRODUCTS).map(|i| product(i, true)).collect();
    let users: Vec<User> = (1..=N_USERS).map(|i| user(i, true)).collect();
    let distinct = |it: Vec<&str>| it.into_iter().collect::<BTreeSet<_>>().len();
    let mut out = Vec::new();
    for d in days {
        out.push(vec![
            json!(d),
            json!("product"),
            json!(products.len()),
            json!(products.len()),
            json!(distinct(
                products.iter().map(|p| p.brand.as_str()).collect()
            )),
            json!(distinct(
                products.iter().map(|p| p.category_code.as_str()).collect()
            )),
        ]);
        out.push(vec![
            json!(d),
            json!("user"),
            json!(users.len()),
            json!(users.len()),
            json!(distinct(users.iter().map(|u| u.country.as_str()).collect())),
            json!(distinct(users.iter().map(|u| u.segment.as_str()).collect())),
        ]);
    }
    out
}

fn same(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => {
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-3
        }
        _ => got == want,
    }
}

fn check(name: &str, got: &Value, want: &Rows) {
    let rows = got["rows"].as_array().unwrap();
    assert!(!want.is_empty(), "{name}: the ground truth is empty");
    assert_eq!(
        rows.len(),
        want.len(),
        "{name}: {} rows, ground truth {}\n got {rows:?}\nwant {want:?}",
        rows.len(),
        want.len()
    );
    for (i, (g, w)) in rows.iter().zip(want).enumerate() {
        let g = g.as_array().unwrap();
        assert_eq!(
            g.len(),
            w.len(),
            "{name} row {i}: columns {:?}",
            got["columns"]
        );
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                same(a, b),
                "{name} row {i} column {}: lake {a}, ground truth {b}\n row {g:?}\nwant {w:?}",
                got["columns"][j]
            );
        }
    }
}

/// Parquet files per (table, hour directory, partition).
fn files_per_partition(lake: &std::path::Path) -> BTreeMap<(String, i32), usize> {
    let mut out = BTreeMap::new();
    let mut stack = vec![lake.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some((part, _, _)) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(cartstream_sinks::lake::parse_file_name)
            {
                let dir = p.parent().unwrap().to_string_lossy().to_string();
                *out.entry((dir, part)).or_default() += 1;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_over_the_star_schema_matches_the_ground_truth() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("lakesql");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 3, 1)
        .await
        .unwrap();
    let inp = input();
    let mut tx = common::Sender::new(&kafka);
    // Dimensions first (two versions: the snapshots must hold the latest), then the facts.
    let products = (1..=N_PRODUCTS)
        .flat_map(|i| [product(i, false), product(i, true)])
        .map(|p| (p.product_id.to_string(), p));
    send(&mut tx, &names, Topic::Products, products).await;
    let users = (1..=N_USERS)
        .flat_map(|i| {
            let mut v = vec![user(i, true)];
            if i % 2 == 0 {
                v.insert(0, user(i, false));
            }
            v
        })
        .map(|u| (u.user_id.to_string(), u));
    send(&mut tx, &names, Topic::Users, users).await;
    let ev = inp
        .events
        .iter()
        .cloned()
        .map(|e| (e.user_session.clone(), e));
    send(&mut tx, &names, Topic::Enriched, ev).await;
    let ss = inp
        .sessions
        .iter()
        .cloned()
        .map(|s| (s.session_id.clone(), s));
    send(&mut tx, &names, Topic::Sessions, ss).await;
    let ws = inp
        .windows
        .iter()
        .cloned()
        .map(|w| (format!("{}/{}", w.dimension_value, w.window_start), w));
    send(&mut tx, &names, Topic::KpiWindows, ws).await;
    let al = inp
        .alerts
        .iter()
        .cloned()
        .map(|a| (a.subject_id.clone(), a));
    send(&mut tx, &names, Topic::Alerts, al).await;
    let facts = [
        Topic::Enriched,
        Topic::Sessions,
        Topic::KpiWindows,
        Topic::Alerts,
    ];
    for t in facts {
        cartstream_admin::end_input(&kafka, &names.name(t), i64::MAX, Duration::from_secs(30))
            .await
            .unwrap();
    }

    let tmp = std::env::temp_dir().join(format!("cartstream-{prefix}sql"));
    std::fs::create_dir_all(&tmp).unwrap();
    let lake = tmp.join("lake");
    let lake_s = lake.to_str().unwrap().to_string();
    // Default topics and snapshots; small files; compaction every 2 s of every hour (the test's
    // hours are long closed).
    let args = [
        "--lake-url",
        lake_s.as_str(),
        "run",
        "--topic-prefix",
        prefix.as_str(),
        "--metrics-addr",
        "off",
        "--instance-id",
        "sql",
        "--max-file-records",
        "40",
        "--max-file-age-secs",
        "1",
        "--compact-every-secs",
        "2",
        "--compact-closed-after-secs",
        "0",
    ];
    let mut sink = common::Guard(common::spawn(BIN, &args, &[]));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    common::kill9(&mut sink.0);
    sink.0 = common::spawn(BIN, &args, &[]);

    let group = format!("{prefix}cartstream-lake-sink");
    let topics: Vec<String> = facts.iter().map(|t| names.name(*t)).collect();
    let snapshot_files: Vec<std::path::PathBuf> = ["catalog.products", "catalog.users"]
        .iter()
        .flat_map(|t| {
            ["2026-11-19", "2026-11-20"]
                .map(|d| lake.join(format!("snapshot={prefix}{t}/date={d}/snapshot.parquet")))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let merged = lake.exists()
            && files_per_partition(&lake).values().all(|n| *n == 1)
            && !files_per_partition(&lake).is_empty();
        if common::caught_up(&kafka, &group, &topics)
            && snapshot_files.iter().all(|f| f.exists())
            && merged
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lake sink did not catch up, snapshot and compact: snapshots {:?}, files {:?}",
            snapshot_files
                .iter()
                .map(|f| f.exists())
                .collect::<Vec<_>>(),
            lake.exists().then(|| files_per_partition(&lake)
                .values()
                .filter(|n| **n > 1)
                .count())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(common::terminate(&mut sink.0).success(), "graceful exit");
    let per_partition = files_per_partition(&lake);
    assert!(
        per_partition.values().all(|n| *n == 1),
        "one file per partition and hour after compaction: {per_partition:?}"
    );

    let q = LakeQuery {
        sql_dir: lake_query::default_sql_dir(),
        lake: lake_s.clone(),
        prefix: prefix.clone(),
        format: Format::Json,
    };
    let truth: BTreeMap<&str, Rows> = [
        ("abandoned_carts", abandoned_carts(&inp)),
        ("alerts_daily", alerts_daily(&inp)),
        ("conversion_by_segment", conversion_by_segment(&inp)),
        ("dimension_snapshots", dimension_snapshots(&inp)),
        ("funnel_by_day_category", funnel(&inp)),
        ("kpi_daily_by_category", kpi_daily(&inp)),
        ("revenue_by_category_hour", revenue_by_hour(&inp)),
        ("sessions_daily", sessions_daily(&inp)),
        ("top_brands", top_brands(&inp)),
        ("top_products", top_products(&inp)),
    ]
    .into_iter()
    .collect();
    let names_in_sql = q.names().unwrap();
    assert_eq!(
        names_in_sql,
        truth.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        "every query of sql/ has its ground truth here"
    );
    let mut checked = 0;
    for (name, want) in &truth {
        let got: Value = serde_json::from_str(&q.output(name).unwrap()).unwrap();
        check(name, &got, want);
        checked += want.len();
    }
    eprintln!(
        "lake sql: {} events, {} sessions, {} windows sent ({} final), {} alerts; {} queries, {checked} rows matched; {} files after compaction",
        inp.events.len(),
        inp.sessions.len(),
        inp.windows.len(),
        inp.windows.iter().filter(|w| w.is_final).count(),
        inp.alerts.len(),
        truth.len(),
        per_partition.len()
    );

    if std::env::var_os("CARTSTREAM_KEEP_LAKE").is_none() {
        std::fs::remove_dir_all(&tmp).unwrap();
    }
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
