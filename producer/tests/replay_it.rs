//! Replaying REES46-format files with the messy rows of real exports: every good row is sent
//! once, every bad one is reported with its reason and line, nothing crashes.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use cartstream_events::types::RawEvent;
use cartstream_events::Decoder;
use cartstream_kafka::read::key_str;
use cartstream_kafka::Topic;
use common::{stdout, temp_path, Namespace};
use rdkafka::Message;

const HEADER: &str =
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";

/// The messy file: (content, lines that must be sent, lines that must be skipped with reasons).
fn messy() -> (String, Vec<i64>, BTreeMap<&'static str, Vec<u64>>) {
    let text = format!(
        "{HEADER}\r\n\
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-8bb3-4e00-8c23-a032dfb2b4f5\r\n\
2019-10-01 00:00:00 UTC,view,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc\r\n\
2019-10-01 00:00:00 UTC,view,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc\r\n\
\r\n\
2019-10-01 00:00:01 UTC,purchase,17200506,2053013559792632471,furniture.living_room.sofa,,0,513649734,0bd7f91f-2d5c-4ddb-b2a6-3b5b2a29bbd4\n\
2019-10-01 00:00:01 UTC,cart,1307067,2053013558920217191,computers.notebook,lenovo,251.74,550050854,\n\
2019-10-01 00:00:02 UTC,view,,2053013558920217191,computers.notebook,lenovo,251.74,550050854,7c90fc70-0e80-4590-96f3-7a5a3f7e1b8a\n\
2019-10-01 00:00:02 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,abc,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d\n\
{HEADER}\n\
2019-10-01 00:00:03 UTC,purchase,1004237,2053013555631882655,electronics.smartphone,\"apple, inc\",1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d\n\
2019-10-01 00:00:03 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d,extra\n\
2019-10-01 00:00:04 UTC,remove_from_cart,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,5358"
    );
    let sent = vec![2, 3, 4, 6, 7, 11];
    let skipped = BTreeMap::from([
        ("bad_product_id", vec![8]),
        ("bad_price", vec![9]),
        ("repeated_header", vec![10]),
        ("too_many_fields", vec![12]),
        ("too_few_fields", vec![13]),
    ]);
    (text, sent, skipped)
}

async fn sent_events(ns: &Namespace) -> Vec<(Option<String>, RawEvent)> {
    let decoder = Decoder::<RawEvent>::new(ns.registry.clone());
    let mut out = Vec::new();
    for m in ns.read(Topic::Raw) {
        let ev = decoder.decode(m.payload().unwrap()).await.expect("decodes");
        out.push((key_str(&m).map(str::to_string), ev));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messy_file_sends_every_good_row_once_and_reports_every_bad_one() {
    let ns = Namespace::new("preplay").await;
    let (text, want_sent, want_skipped) = messy();
    let file = temp_path("2019-Oct-sample.csv");
    std::fs::write(&file, &text).unwrap();
    let report_path = temp_path("report.json");
    let truth_path = temp_path("truth.json");
    let out = ns.run(&[
        "replay",
        "--file",
        file.to_str().unwrap(),
        "--report",
        report_path.to_str().unwrap(),
        "--ground-truth",
        truth_path.to_str().unwrap(),
    ]);
    let shown = stdout(&out);
    assert!(shown.contains("11 rows, 6 sent, 5 skipped"), "{shown}");
    assert!(
        shown.contains("skipped too_few_fields: 1 (lines [13])"),
        "{shown}"
    );

    let events = sent_events(&ns).await;
    let mut lines: Vec<i64> = events.iter().map(|(_, e)| e.source.line.unwrap()).collect();
    lines.sort_unstable();
    assert_eq!(lines, want_sent, "every good row exactly once");
    let by_line: HashMap<i64, &RawEvent> = events
        .iter()
        .map(|(_, e)| (e.source.line.unwrap(), e))
        .collect();
    for (key, e) in &events {
        assert_eq!(
            key.as_deref(),
            e.user_session.as_deref(),
            "keyed by session"
        );
        assert_eq!(e.source.system, "replay");
        assert_eq!(e.source.file.as_deref(), Some("2019-Oct-sample.csv"));
        assert_eq!(e.currency, "USD");
        assert_eq!(
            e.event_time.len(),
            "2019-10-01 00:00:00 UTC".len(),
            "time as written"
        );
    }
    assert_eq!(
        by_line[&3].event_id, by_line[&4].event_id,
        "exact duplicates share an id"
    );
    assert_ne!(by_line[&2].event_id, by_line[&3].event_id);
    assert_eq!(by_line[&2].category_code, None);
    assert_eq!(by_line[&6].price, 0.0);
    assert_eq!(by_line[&7].user_session, None);
    assert_eq!(by_line[&11].brand.as_deref(), Some("apple, inc"));

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let skipped: BTreeMap<String, Vec<u64>> = report["skipped"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let lines = v["lines"].as_array().unwrap();
            (
                k.clone(),
                lines.iter().map(|l| l.as_u64().unwrap()).collect(),
            )
        })
        .collect();
    let want: BTreeMap<String, Vec<u64>> = want_skipped
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(skipped, want);
    assert_eq!(report["cleaner_will_reject"]["invalid_price"], 1);
    assert_eq!(report["cleaner_will_reject"]["missing_user_session"], 1);

    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    assert_eq!(truth["records_sent"], 6);
    assert_eq!(truth["events"], 3);
    assert_eq!(truth["duplicates"], 1);
    assert_eq!(truth["totals"]["revenue"]["USD"], 1081.98);
    assert_eq!(truth["sessions"]["converted"], 1);

    // A second replay of the same rows in another column order gives the same ids.
    let reordered = temp_path("reordered.csv");
    std::fs::write(
        &reordered,
        "user_session,price,brand,category_code,category_id,product_id,event_type,ts,user_id\n\
72d76fde-8bb3-4e00-8c23-a032dfb2b4f5,35.79,shiseido,,2103807459595387724,44600062,view,2019-10-01 00:00:00 UTC,541312140\n",
    )
    .unwrap();
    ns.run(&[
        "replay",
        "--file",
        reordered.to_str().unwrap(),
        "--column",
        "event_time=ts",
    ]);
    let again = sent_events(&ns).await;
    let ids: Vec<&str> = again
        .iter()
        .filter(|(_, e)| e.source.file.as_deref() == Some("reordered.csv"))
        .map(|(_, e)| e.event_id.as_str())
        .collect();
    assert_eq!(ids, vec![by_line[&2].event_id.as_str()]);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_files_replay_at_a_speed_and_a_truncated_stream_ends_cleanly() {
    let ns = Namespace::new("pgzip").await;
    // 40 rows, one event-time second apart: at 20x real time about 2 s.
    let rows: String = (0..40)
        .map(|i| {
            format!(
                "2019-10-01 00:00:{i:02} UTC,view,{},2053013555631882655,electronics.smartphone,apple,10.5,7,s{}\n",
                1000 + i,
                i % 4
            )
        })
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(format!("{HEADER}\n{rows}").as_bytes())
        .unwrap();
    let bytes = gz.finish().unwrap();
    let file = temp_path("events.csv.gz");
    std::fs::write(&file, &bytes).unwrap();
    let started = std::time::Instant::now();
    let out = ns.run(&["replay", "--file", file.to_str().unwrap(), "--speed", "20"]);
    let took = started.elapsed().as_secs_f64();
    assert!(
        stdout(&out).contains("40 rows, 40 sent, 0 skipped"),
        "{}",
        stdout(&out)
    );
    assert!(
        took >= 1.9,
        "39 s of event time at 20x take about 2 s, took {took:.2}"
    );
    assert_eq!(ns.read(Topic::Raw).len(), 40);

    // Cut the gzip stream: what was read is sent, the rest reported, exit 0.
    let cut = temp_path("cut.csv.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = ns.run(&["replay", "--file", cut.to_str().unwrap()]);
    let shown = stdout(&out);
    assert!(
        shown.contains("the rest of the file could not be read"),
        "{shown}"
    );
    ns.cleanup().await;
}

/// An order export in the UCI Online Retail layout: `invoices` invoices of 1-5 lines, a quarter
/// of them guest checkouts (no customer), SKUs such as `85123A`, the same SKU repeated within an
/// invoice at another quantity, and some exact duplicate lines. Returns the file and the number
/// of exact duplicate lines.
fn order_export(invoices: usize) -> (String, usize) {
    let skus = [
        "85123A", "71053", "84406B", "84029G", "22752", "21730", "POST", "DOT",
    ];
    let mut text =
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
            .to_string();
    let mut dups = 0;
    for i in 0..invoices {
        let invoice = 536_365 + i;
        let customer = if i % 4 == 3 {
            String::new()
        } else {
            format!("{}.0", 12_000 + i % 37)
        };
        let (day, minute) = (1 + i / 200, i % 200);
        let time = format!("12/{day}/2010 {}:{:02}", 8 + minute / 60, minute % 60);
        let mut lines = Vec::new();
        for l in 0..(1 + i % 5) {
            let sku = skus[(i + l) % skus.len()];
            let quantity = 1 + (i + 3 * l) % 12;
            lines.push(format!(
                "{invoice},{sku},\"ITEM {sku}, BOXED\",{quantity},{time},{}.{:02},{customer},United Kingdom\n",
                1 + l,
                (i * 7) % 100
            ));
            if l == 0 && i % 3 == 0 {
                // The same SKU again at another quantity: a distinct line.
                lines.push(format!(
                    "{invoice},{sku},\"ITEM {sku}, BOXED\",{},{time},1.{:02},{customer},United Kingdom\n",
                    quantity + 12,
                    (i * 7) % 100
                ));
            }
        }
        if i % 10 == 5 {
            lines.push(lines[0].clone());
            dups += 1;
        }
        text.extend(lines);
    }
    (text, dups)
}

fn order_args(file: &str) -> Vec<String> {
    [
        "replay",
        "--file",
        file,
        "--column",
        "event_time=InvoiceDate",
        "--column",
        "product_id=StockCode",
        "--column",
        "quantity=Quantity",
        "--column",
        "price=UnitPrice",
        "--column",
        "user_id=CustomerID",
        "--column",
        "user_session=InvoiceNo",
        "--set",
        "event_type=purchase",
        "--currency",
        "GBP",
        "--product-ids",
        "sku",
        "--time-format",
        "%m/%d/%Y %H:%M",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_export_replays_with_no_line_lost_and_ends_every_partition() {
    let ns = Namespace::new("porders").await;
    let (text, dups) = order_export(400);
    let lines = text.lines().count() - 1;
    let file = temp_path("online_retail.csv");
    std::fs::write(&file, &text).unwrap();

    // A dry run: the mapping, sample rows and the rejections to expect, and nothing sent.
    let mut dry = order_args(file.to_str().unwrap());
    dry.extend([
        "--dry-run".to_string(),
        "--sample-rows".to_string(),
        "2".to_string(),
    ]);
    let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    let shown = stdout(&ns.run(&dry));
    assert!(
        shown.contains("event_type     <- constant \"purchase\""),
        "{shown}"
    );
    assert!(
        shown.contains("product_id     <- column \"StockCode\" (#2) as a SKU"),
        "{shown}"
    );
    assert!(
        shown.contains("unused columns: Description, Country"),
        "{shown}"
    );
    assert_eq!(shown.matches("as sent (key").count(), 2, "{shown}");
    assert!(
        shown.contains(&format!("will drop as exact duplicates: {dups}")),
        "{shown}"
    );
    assert!(shown.contains("would write watermark max"), "{shown}");
    assert_eq!(ns.read(Topic::Raw).len(), 0, "a dry run sends nothing");

    let args = order_args(file.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let shown = stdout(&ns.run(&args));
    assert!(
        shown.contains(&format!("{lines} rows, {lines} sent, 0 skipped")),
        "{shown}"
    );
    assert!(
        shown.contains("end of input: watermark max written to 3 partitions"),
        "{shown}"
    );
    let events = sent_events(&ns).await;
    assert_eq!(events.len(), lines, "every line is on the raw topic");
    let mut by_line: Vec<i64> = events.iter().map(|(_, e)| e.source.line.unwrap()).collect();
    by_line.sort_unstable();
    assert_eq!(by_line, (2..=lines as i64 + 1).collect::<Vec<_>>());
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|(_, e)| e.event_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        lines - dups,
        "one id per line that is not an exact duplicate"
    );
    // Every line passes the cleaner's rules: none is lost to a rejection either.
    for (key, e) in &events {
        assert_eq!(cartstream_producer::truth::validate(e).err(), None, "{e:?}");
        assert_eq!(key.as_deref(), e.user_session.as_deref());
        assert_eq!(e.event_type, "purchase");
        assert_eq!(e.currency, "GBP");
    }
    let guests = events
        .iter()
        .filter(|(_, e)| e.user_id >= cartstream_producer::replay::GUEST_ID_BASE)
        .count();
    assert!(guests > lines / 8, "guest checkouts kept: {guests}");

    // Every partition ends with the end-of-input mark, after its data records.
    let config = ns.kafka.consumer("it-producer-reader").unwrap();
    let all = cartstream_kafka::read::read_all_to_end(
        &config,
        &ns.names.name(Topic::Raw),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let mut last: BTreeMap<i32, &rdkafka::message::OwnedMessage> = BTreeMap::new();
    for m in &all {
        let e = last.entry(m.partition()).or_insert(m);
        if m.offset() > e.offset() {
            *e = m;
        }
    }
    assert_eq!(last.len(), 3);
    for m in last.values() {
        let mark = cartstream_kafka::control::control_of(*m).unwrap();
        assert_eq!(
            mark,
            Some(cartstream_kafka::control::EndOfInput::end()),
            "partition {}",
            m.partition()
        );
        assert_eq!(m.key(), Some(cartstream_kafka::control::CONTROL_KEY));
    }
    assert_eq!(all.len(), lines + 3, "one mark per partition");

    // Replayed again: the same ids, and with --end-of-input last the mark is the last time.
    let mut again = order_args(file.to_str().unwrap());
    again.extend(["--end-of-input".to_string(), "last".to_string()]);
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    ns.run(&again);
    let events2 = sent_events(&ns).await;
    let ids2: std::collections::HashSet<&str> =
        events2.iter().map(|(_, e)| e.event_id.as_str()).collect();
    assert_eq!(ids2, ids, "a second replay gives the same ids");
    let max_time = events
        .iter()
        .map(|(_, e)| cartstream_producer::clock::parse_event_time(&e.event_time).unwrap())
        .max()
        .unwrap();
    let all = cartstream_kafka::read::read_all_to_end(
        &config,
        &ns.names.name(Topic::Raw),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let marks: Vec<i64> = all
        .iter()
        .filter_map(|m| cartstream_kafka::control::control_of(m).unwrap())
        .map(|m| m.watermark)
        .collect();
    assert_eq!(marks.len(), 6);
    assert_eq!(
        marks.iter().filter(|w| **w == max_time).count(),
        3,
        "{marks:?}"
    );
    ns.cleanup().await;
}
