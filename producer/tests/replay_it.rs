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
