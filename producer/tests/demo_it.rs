//! The two defects `make demo` had (issue 17), each with the test that would have caught it:
//!
//! - its live producer priced from the seed's catalog while the detector saw the history run's
//!   price changes on `catalog.products`: ordinary purchases raised price anomalies. A live run
//!   with `--prices-from-topic` after a history run must pass the detector's own price rule
//!   (the cleaner, the enricher's join and `price_anomaly` of `cartstream-processors`, tolerance
//!   0.5) on every purchase, against the product table as the enricher holds it;
//! - its "top products of the latest window" came in product-id order: `scripts/demo.sh
//!   top-products`, the summary's own query, must list the best sellers by purchases, most
//!   first, as the real Prometheus evaluates it.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::HashSet;

use cartstream_events::types::{Product, RawEvent};
use cartstream_events::Decoder;
use cartstream_kafka::Topic;
use cartstream_processors::clean::{clean, Rules};
use cartstream_processors::detect::{price_anomaly, PriceCheck, PriceConfig};
use cartstream_processors::enrich::{enrich, Tables};
use cartstream_producer::catalog::Catalog;
use cartstream_producer::clock::parse_event_time;
use common::{stdout, Namespace};
use rdkafka::Message;

async fn products_on_topic(ns: &Namespace) -> Vec<((i32, i64), Product)> {
    let decoder = Decoder::<Product>::new(ns.registry.clone());
    let mut out = Vec::new();
    for m in ns.read(Topic::Products) {
        let p = decoder.decode(m.payload().unwrap()).await.unwrap();
        out.push(((m.partition(), m.offset()), p));
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_after_a_history_prices_from_the_catalog_the_detector_sees() {
    let ns = Namespace::new("pdemo").await;
    // The demo's shape, smaller: a history run publishes the catalog and moves prices often
    // (one change every 5 s of event time, 400 in all: the popular products' prices drift far),
    // then a live run with the same seed and catalog flags, without publishing dimensions.
    let shop = [
        "--seed",
        "42",
        "--products",
        "300",
        "--users",
        "500",
        "--no-seasonality",
    ];
    let mut history = vec![
        "simulate",
        "--start-time",
        "2026-11-01T00:00:00Z",
        "--speed",
        "100",
        "--rate",
        "0",
        "--count",
        "20000",
        "--price-change-every",
        "5s",
    ];
    history.extend(shop);
    ns.run(&history);
    let before = products_on_topic(&ns).await;
    let live_start = parse_event_time("2026-11-01T01:00:00Z").unwrap();
    let mut live = vec![
        "simulate",
        "--start-time",
        "2026-11-01T01:00:00Z",
        "--speed",
        "100",
        "--rate",
        "0",
        "--count",
        "10000",
        "--price-change-every",
        "30s",
        "--skip-dimensions",
        "--prices-from-topic",
    ];
    live.extend(shop);
    let out = ns.run(&live);
    let text = stdout(&out);
    assert!(text.contains("prices: 300 of 300 products found"), "{text}");

    // The enricher's product table: everything published before the live run, then the live
    // run's price changes as event time reaches them (a change comes before the events at its
    // time).
    let seen: HashSet<(i32, i64)> = before.iter().map(|(at, _)| *at).collect();
    let mut changes: Vec<Product> = products_on_topic(&ns)
        .await
        .into_iter()
        .filter(|(at, _)| !seen.contains(at))
        .map(|(_, p)| p)
        .collect();
    changes.sort_by_key(|p| p.updated_at);
    assert!(
        changes.len() >= 30,
        "the live run changed prices: {}",
        changes.len()
    );
    let mut tables = Tables::default();
    for (_, p) in &before {
        tables.apply_product(p.product_id, Some(p.clone()));
    }
    let history_prices = tables.products.clone();

    let decoder = Decoder::<RawEvent>::new(ns.registry.clone());
    let mut live_events = Vec::new();
    for m in ns.read(Topic::Raw) {
        let ev = decoder.decode(m.payload().unwrap()).await.unwrap();
        let t = parse_event_time(&ev.event_time).unwrap();
        if t >= live_start {
            live_events.push((t, ev));
        }
    }
    assert_eq!(live_events.len(), 10_000, "the live run's events");
    live_events.sort_by_key(|(t, _)| *t);

    let cfg = PriceConfig {
        tolerance: 0.5,
        catalog_currency: "USD".into(),
    };
    let seed_catalog = Catalog::synthetic(42, 300, 0, 0);
    let seed_price = |id: i64| {
        seed_catalog
            .products
            .iter()
            .find(|p| p.product_id == id)
            .unwrap()
            .price
    };
    let (mut purchases, mut anomalies, mut exact, mut seed_would_alert) = (0, 0, 0, 0);
    let mut next_change = 0;
    for (t, raw) in &live_events {
        while next_change < changes.len() && changes[next_change].updated_at <= *t {
            let p = changes[next_change].clone();
            tables.apply_product(p.product_id, Some(p));
            next_change += 1;
        }
        let clean = clean(raw, &Rules::default()).expect("a clean run has no rejects");
        let enriched = enrich(clean, &tables);
        match price_anomaly(&enriched, &cfg, 0) {
            PriceCheck::NotApplicable => continue,
            PriceCheck::Normal => purchases += 1,
            PriceCheck::Anomaly(a) => {
                purchases += 1;
                anomalies += 1;
                eprintln!("{}", a.message);
            }
            PriceCheck::OtherCurrency => panic!("every purchase is in USD"),
        }
        if enriched.catalog_price == Some(raw.price) {
            exact += 1;
        }
        // What the demo did before: the seed's price, against the history's catalog.
        let catalog = history_prices[&raw.product_id].price;
        if ((seed_price(raw.product_id) - catalog) / catalog).abs() > cfg.tolerance {
            seed_would_alert += 1;
        }
    }
    eprintln!(
        "live purchases {purchases}, price anomalies {anomalies}, at the catalog price {exact}, \
         would have alerted at the seed's prices {seed_would_alert}"
    );
    assert!(purchases > 100, "purchases {purchases}");
    assert_eq!(anomalies, 0, "no false price anomaly");
    assert_eq!(exact, purchases, "every purchase at the catalog's price");
    assert!(
        seed_would_alert > 0,
        "the history moved prices past the tolerance, so the test can tell the defect"
    );
    ns.cleanup().await;
}

/// A Prometheus expression with the windower's gauge shape (`rank`, `product`), built from
/// literals so the real Prometheus evaluates the summary's query over known values.
fn gauge(series: &[(&str, &str, u32)]) -> String {
    series
        .iter()
        .map(|(rank, product, n)| {
            format!(
                "label_replace(label_replace(vector({n}), \"product\", \"{product}\", \"\", \"\"), \
                 \"rank\", \"{rank}\", \"\", \"\")"
            )
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn top_products(expr: &str, n: &str) -> Vec<(String, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo.sh");
    let out = std::process::Command::new("bash")
        .args([script, "top-products", expr, n])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let product = f.next().unwrap().to_string();
            let value = f.next().unwrap().replace(',', "").parse().unwrap();
            (product, value)
        })
        .collect()
}

#[test]
fn the_demo_summary_lists_top_products_by_purchases_most_first() {
    let url = std::env::var("PROMETHEUS_URL").unwrap_or_else(|_| "http://127.0.0.1:9090".into());
    cartstream_testkit::require("Prometheus", url.trim_start_matches("http://"));
    // Product ids in one order, purchases in another; 1000003 has two ranks (two windower
    // instances' views of it): one line, its highest count.
    let expr = gauge(&[
        ("5", "1000001", 1),
        ("2", "1000002", 4),
        ("4", "1000003", 2),
        ("1", "1000004", 7),
        ("3", "1000005", 3),
        ("6", "1000003", 5),
        ("7", "1000006", 1200),
    ]);
    let got = top_products(&expr, "4");
    let want: Vec<(String, f64)> = [
        ("1000006", 1200.0),
        ("1000004", 7.0),
        ("1000003", 5.0),
        ("1000002", 4.0),
    ]
    .iter()
    .map(|(p, n)| (p.to_string(), *n))
    .collect();
    assert_eq!(got, want);
    // Without a limit: all six, still most first.
    let all = top_products(&expr, "10");
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].1 >= w[1].1), "{all:?}");
}
